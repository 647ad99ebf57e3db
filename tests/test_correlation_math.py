"""The streaming correlation engine (ingest/math/correlation/) against float64 references and planted truth.

Fast, no database: every expectation is either a float64 two-pass numpy computation on the same
activations or a ground truth planted in synthetic activations.
"""

from __future__ import annotations

import io
import math

import numpy as np
import polars as pl
import pytest
import torch

from atlas.ingest.math.correlation import (
    CohortCorrelation,
    accumulator_bytes,
    build_rotation,
    combine_blocks,
    plan_ref_blocks,
    result_frames,
)

TOL = 1e-4  # method.md §2: |rho − rho_float64_two_pass| ≤ 1e-4


# ---------------------------------------------------------------- helpers

def gelu_acts(gen: torch.Generator, n_tokens: int, n_neurons: int) -> torch.Tensor:
    """GELU-like activations with per-neuron offsets and scales: ``[n_tokens, n_neurons] float32``."""
    z = torch.randn(n_tokens, n_neurons, generator=gen, dtype=torch.float64)
    shift = torch.rand(n_neurons, generator=gen, dtype=torch.float64) * 3 - 2
    scale = torch.rand(n_neurons, generator=gen, dtype=torch.float64) + 0.5
    return (torch.nn.functional.gelu(z + shift) * scale).float()


def batches(*tensors: torch.Tensor, sizes: list[int]):
    """Split aligned ``[n_tokens, ·]`` tensors into consecutive batches of the given sizes."""
    start = 0
    for size in sizes:
        yield [t[start:start + size] for t in tensors]
        start += size
    assert start == tensors[0].shape[0]


def run(acc: CohortCorrelation, ref: torch.Tensor, partners: list[torch.Tensor], sizes: list[int]) -> CohortCorrelation:
    for ref_b, *part_b in batches(ref, *partners, sizes=sizes):
        acc.update(ref_b, part_b)
    return acc


def rho_float64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-pass float64 Pearson correlation of every column of x with every column of y."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    cov = xc.T @ yc
    with np.errstate(divide="ignore", invalid="ignore"):
        return cov / np.sqrt((xc**2).sum(0))[:, None] / np.sqrt((yc**2).sum(0))[None, :]


def rotate(acts: torch.Tensor, rot: torch.Tensor) -> np.ndarray:
    """Explicitly rotate activations layer by layer: ``w_l = R_l v_l`` for every token."""
    n_layers, d_mlp, _ = rot.shape
    v = acts.double().numpy().reshape(-1, n_layers, d_mlp)
    return np.einsum("ljk,tlk->tlj", rot.numpy(), v).reshape(acts.shape[0], -1)


@pytest.fixture
def cohort():
    """A reference (3 layers × 16) and two partners of different shapes; some neurons have
    |mean| = 1000 × std, and the first (warm-up) batch is tiny."""
    gen = torch.Generator().manual_seed(1)
    n_tokens = 2400
    ref = gelu_acts(gen, n_tokens, 48)
    p0 = gelu_acts(gen, n_tokens, 2 * 24)
    p1 = gelu_acts(gen, n_tokens, 48)
    p0[:, 30] = ref[:, 5] * 0.7 + 0.3 * p0[:, 30]  # a few real correlations, across layers
    p1[:, 3] = -ref[:, 40] + 0.2 * p1[:, 3]
    for acts, cols in ((ref, [0, 17, 33]), (p0, [1, 30]), (p1, [47])):
        for c in cols:  # |mean| ≫ std: the case where the one-pass formula cancels
            acts[:, c] = 1000.0 * acts[:, c].std() * (1 + c % 3) + acts[:, c]
    sizes = [7, 500, 393, 700, 800]
    return ref, [p0, p1], [(3, 16), (2, 24), (3, 16)], sizes


# ---------------------------------------------------------------- exactness

@pytest.mark.parametrize("kwargs", [
    {},                                  # buffered fp32 partials, fp64 totals
    {"flush_every": 1},
    {"buffered": False, "direct_chunk_bytes": 512},  # direct float64, several row chunks
    {"precision": "fp16"},               # fp16 GEMM inputs (emulated on CPU), fp32 accumulation
])
def test_rho_matches_float64_two_pass_with_large_means(cohort, kwargs):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    acc = run(CohortCorrelation(ref_shape, p_shapes, flush_every=kwargs.pop("flush_every", 2), **kwargs),
              ref, partners, sizes)
    for m, part in enumerate(partners):
        want = rho_float64(ref.numpy(), part.numpy())
        got = acc.correlation_matrix(m).numpy()
        assert np.abs(got - want).max() <= TOL
    result = acc.finalize(top_k=5)
    for m, part in enumerate(partners):
        want = rho_float64(ref.numpy(), part.numpy())
        np.testing.assert_allclose(result.best_rho[m].numpy(), want.max(1), atol=TOL)
        np.testing.assert_array_equal(result.best_idx[m].numpy(), want.argmax(1))
        np.testing.assert_allclose(result.partner_best_rho[m].numpy(), want.max(0), atol=TOL)
        np.testing.assert_array_equal(result.partner_best_idx[m].numpy(), want.argmax(0))
        top = np.sort(want, axis=1)[:, ::-1][:, :5]
        np.testing.assert_allclose(result.topk_rho[m].numpy(), top, atol=TOL)
        assert (result.topk_idx[m, :, 0] == result.best_idx[m]).all()


def test_bf16_inputs_meet_the_target_at_realistic_token_counts():
    """bf16 rounding adds a random error ~0.013/sqrt(n): within 1e-4 from ~50k tokens."""
    gen = torch.Generator().manual_seed(3)
    n_tokens = 60_000
    ref, part = gelu_acts(gen, n_tokens, 32), gelu_acts(gen, n_tokens, 32)
    ref[:, 0] += 1000 * ref[:, 0].std()
    part[:, 5] = ref[:, 3] + 0.5 * part[:, 5]
    acc = run(CohortCorrelation((2, 16), [(2, 16)], precision="bf16"), ref, [part], [15_000] * 4)
    want = rho_float64(ref.numpy(), part.numpy())
    assert np.abs(acc.correlation_matrix(0).numpy() - want).max() <= TOL


def test_naive_float32_one_pass_would_fail_on_this_data(cohort):
    """The cohort is a real test of the guard: the textbook float32 one-pass formula is far off."""
    ref, partners, _, _ = cohort
    x, y = ref[:, [0]].float(), partners[0][:, [1]].float()
    n = x.shape[0]
    sx, sy, sxx, syy, sxy = x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()
    naive = (sxy - sx * sy / n) / torch.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))
    want = rho_float64(x.numpy(), y.numpy())[0, 0]
    assert not abs(float(naive) - want) <= 1e-2


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian_unit_rows"])
def test_analytic_baseline_equals_rotate_then_correlate(cohort, kind):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    acc = run(CohortCorrelation(ref_shape, p_shapes, rotation=kind, rotation_seed=11), ref, partners, sizes)
    result = acc.finalize()
    for m, part in enumerate(partners):
        rot = build_rotation(11, kind, m, p_shapes[m])
        want = rho_float64(ref.numpy(), rotate(part, rot))
        got = acc.correlation_matrix(m, rotated=True).numpy()
        assert np.abs(got - want).max() <= TOL
        np.testing.assert_allclose(result.baseline_rho[m].numpy(), want.max(1), atol=TOL)


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian_unit_rows"])
def test_partner_side_baseline_rotates_the_reference_layers(cohort, kind):
    """method.md §2: a partner neuron's baseline is its best correlation with the REFERENCE model's
    layers rotated at random (the same analytic form, C_a within each reference layer), never a
    column maximum of the rotated-partner matrix, whose columns are random directions."""
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    acc = run(CohortCorrelation(ref_shape, p_shapes, rotation=kind, rotation_seed=11), ref, partners, sizes)
    result = acc.finalize()
    rotated_ref = rotate(ref, build_rotation(11, kind, 0, ref_shape, reference=True))
    for m, part in enumerate(partners):
        want = rho_float64(rotated_ref, part.numpy()).max(0)
        np.testing.assert_allclose(result.partner_baseline_rho[m].numpy(), want, atol=TOL)
        column_max = rho_float64(ref.numpy(), rotate(part, build_rotation(11, kind, m, p_shapes[m]))).max(0)
        assert np.abs(want - column_max).max() > 0.05  # the two quantities really differ here
    # the reference rotations are their own: not any partner's
    assert not torch.allclose(build_rotation(11, kind, 0, ref_shape, reference=True), build_rotation(11, kind, 0, ref_shape))


def test_partner_side_baseline_survives_blocks_that_are_whole_reference_layers(cohort):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    whole = run(CohortCorrelation(ref_shape, p_shapes, rotation_seed=2), ref, partners, sizes).finalize()
    d = ref_shape[1]
    blocks = [run(CohortCorrelation(ref_shape, p_shapes, rotation_seed=2, ref_slice=(s, s + d)), ref, partners, sizes)
              .finalize() for s in range(0, ref_shape[0] * d, d)]
    merged = combine_blocks(blocks)
    for m in range(len(partners)):
        np.testing.assert_allclose(merged.partner_baseline_rho[m].numpy(), whole.partner_baseline_rho[m].numpy(), atol=1e-6)
    # a block that cuts a reference layer cannot rotate that layer: no number rather than a wrong one
    cut = [run(CohortCorrelation(ref_shape, p_shapes, rotation_seed=2, ref_slice=(s, min(s + 20, 48))), ref, partners,
               sizes).finalize() for s in range(0, 48, 20)]
    assert torch.isnan(combine_blocks(cut).partner_baseline_rho[0]).all()


def test_fp16_rescales_a_neuron_that_was_quiet_in_the_warm_up_batch():
    """A neuron almost silent in the warm-up batch gets a huge scale; when it fires later, fp16
    would overflow. The accumulator re-estimates that neuron's scale (rescaling what it has
    accumulated, exactly: powers of two) instead of sending the batch in as bf16."""
    gen = torch.Generator().manual_seed(9)
    n_tokens = 20_000
    ref, part = gelu_acts(gen, n_tokens, 32), gelu_acts(gen, n_tokens, 32)
    part[:, 7] = ref[:, 2] * 0.8 + 0.2 * part[:, 7]
    warm = 400
    ref[:warm, 5] *= 1e-6  # quiet while the scales are estimated
    part[:warm, 9] *= 1e-6
    part[:, 9] += 0.5 * ref[:, 5]  # ... and correlated with each other afterwards
    sizes = [warm] + [1960] * 10
    acc = run(CohortCorrelation((2, 16), [(2, 16)], precision="fp16"), ref, [part], sizes)
    assert acc.n_overflow_batches == 0, f"{acc.n_overflow_batches} of {acc.n_batches} batches fell back to bf16"
    assert acc.n_rescaled_batches == 1
    want = rho_float64(ref.numpy(), part.numpy())
    assert np.abs(acc.correlation_matrix(0).numpy() - want).max() <= TOL
    np.testing.assert_allclose(acc.finalize().partner_baseline_rho[0].numpy(),
                               rho_float64(rotate(ref, build_rotation(0, "orthogonal", 0, (2, 16), reference=True)),
                                           part.numpy()).max(0), atol=TOL)
    # a checkpoint carries the re-estimated scales and the counts
    resumed = CohortCorrelation((2, 16), [(2, 16)], precision="fp16")
    resumed.load_state_dict(acc.state_dict())
    assert resumed.n_rescaled_batches == 1 and torch.equal(resumed.inv_scale_ref, acc.inv_scale_ref)


def test_rotations_are_seeded_and_of_the_right_kind():
    orth = build_rotation(3, "orthogonal", 0, (2, 40))
    eye = torch.eye(40, dtype=torch.float64)
    for r in orth:
        assert torch.allclose(r @ r.T, eye, atol=1e-12) and torch.allclose(r.T @ r, eye, atol=1e-12)
    assert torch.equal(orth, build_rotation(3, "orthogonal", 0, (2, 40)))  # same seed, same R
    assert not torch.allclose(orth[0], orth[1])                             # layers differ
    assert not torch.allclose(orth, build_rotation(3, "orthogonal", 1, (2, 40)))  # partners differ
    assert not torch.allclose(orth, build_rotation(4, "orthogonal", 0, (2, 40)))  # seeds differ
    rows = build_rotation(3, "gaussian_unit_rows", 0, (2, 40))
    assert torch.allclose(rows.norm(dim=-1), torch.ones(2, 40, dtype=torch.float64))
    assert not torch.allclose(rows[0] @ rows[0].T, eye, atol=0.05)  # not orthogonal: the paper's choice
    # Haar, not just orthogonal: over many draws the entries have variance 1/d and no sign bias
    draws = torch.stack([build_rotation(s, "orthogonal", 0, (1, 8))[0] for s in range(400)])
    assert abs(draws.var().item() * 8 - 1) < 0.05
    assert abs(torch.diagonal(draws, dim1=1, dim2=2).mean().item()) < 0.05
    with pytest.raises(ValueError):
        build_rotation(0, "householder", 0, (1, 4))


# ---------------------------------------------------------------- planted universality

def test_planted_cohort_is_recovered():
    """Partners carry noisy, affinely transformed, permuted copies of chosen reference neurons
    (some moved to another layer). Those, and only those, come out universal."""
    gen = torch.Generator().manual_seed(7)
    n_layers, d_mlp, n_tokens, n_partners = 3, 64, 4000, 4
    n = n_layers * d_mlp
    ref = gelu_acts(gen, n_tokens, n)
    ref = (ref - ref.mean(0)) / ref.std(0)  # equal scales, so a copy does not dominate a rotation
    planted = torch.randperm(n, generator=gen)[:15]
    partners, where = [], []
    for _ in range(n_partners):
        part = gelu_acts(gen, n_tokens, n)
        part = (part - part.mean(0)) / part.std(0)
        perm = torch.randperm(n, generator=gen)
        for i in planted.tolist():
            noise = torch.randn(n_tokens, generator=gen)
            a = float(torch.empty(()).uniform_(0.8, 1.25, generator=gen))
            part[:, perm[i]] = a * (ref[:, i] + 0.15 * noise) / math.sqrt(1 + 0.15**2) + 3.0
        partners.append(part)
        where.append(perm)
    moved = sum(int(w[i] // d_mlp != i // d_mlp) for w in where for i in planted.tolist())
    assert moved > 0  # some copies sit in another layer

    acc = run(CohortCorrelation((n_layers, d_mlp), [(n_layers, d_mlp)] * n_partners, rotation_seed=5),
              ref, partners, [1000] * 4)
    result = acc.finalize()
    is_planted = torch.zeros(n, dtype=torch.bool)
    is_planted[planted] = True
    assert (result.excess[is_planted] > 0.5).all()
    assert (result.excess[~is_planted] < 0.5).all() and (result.excess[~is_planted].abs() < 0.2).all()
    for m in range(n_partners):
        assert torch.equal(result.best_idx[m, planted], where[m][planted])
        assert (result.best_rho[m, planted] > 0.95).all()
        # the partner side finds its way back to the reference neuron
        assert torch.equal(result.partner_best_idx[m][where[m][planted]], planted)
    assert (result.mean_baseline[is_planted] < 0.45).all()


# ---------------------------------------------------------------- dead neurons

def test_dead_neurons_are_nan_never_zero_and_never_universal(cohort):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    ref = ref.clone()
    partners = [p.clone() for p in partners]
    ref[:, 2] = 0.0                      # a dead ReLU
    ref[:, 20] = 3.25                    # a constant
    ref[:, 21] = 5.0 + 1e-9 * torch.arange(ref.shape[0]) % 2  # below min_std: dead too
    partners[0][:, 30] = -0.17           # dead partner neuron (was the planted best partner of ref 5)
    acc = run(CohortCorrelation(ref_shape, p_shapes), ref, partners, sizes)
    result = acc.finalize()
    dead = [2, 20, 21]
    assert result.ref_dead[dead].all() and result.ref_dead.sum() == 3
    for name in ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess"):
        assert torch.isnan(getattr(result, name)[dead]).all(), name
        assert not torch.isnan(getattr(result, name)[~result.ref_dead]).any(), name
    assert (result.best_idx[:, dead] == -1).all() and torch.isnan(result.best_rho[:, dead]).all()
    assert (result.topk_idx[:, dead] == -1).all()
    assert torch.isnan(acc.correlation_matrix(0)[:, 30]).all()
    assert torch.isnan(result.partner_best_rho[0][30]) and result.partner_best_idx[0][30] == -1
    assert result.partner_dead[0][30] and result.partner_dead[0].sum() == 1
    assert not (result.best_idx[0] == 30).any()  # a dead neuron is nobody's best partner
    assert not (result.topk_idx[0] == 30).any()
    # dead reference neurons are no one's best either
    assert not torch.isin(result.partner_best_idx[0], torch.tensor(dead)).any()

    frames = result_frames(result, model_id=1, partner_model_ids=[2, 3])
    uni = frames["neuron_universality"]
    dead_rows = uni.filter(pl.col("idx").is_in([2]) & (pl.col("layer") == 0))
    assert dead_rows["excess"].null_count() == 1  # NULL, not NaN: SQL's "excess > 0.5" skips it
    assert uni["excess"].null_count() == 3 and not uni["excess"].is_nan().any()
    assert uni.filter(pl.col("excess") > 0.5).height == 0
    edges = frames["correlation_edge"]
    assert edges.filter((pl.col("layer") == 0) & (pl.col("idx") == 2)).height == 0
    assert edges["rho"].null_count() == 0


# ---------------------------------------------------------------- blocks and checkpoints

def test_block_split_equals_unsplit(cohort):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    whole = run(CohortCorrelation(ref_shape, p_shapes, rotation_seed=2), ref, partners, sizes).finalize()
    n_ref = ref_shape[0] * ref_shape[1]
    budget = accumulator_bytes(20, p_shapes)
    plan = plan_ref_blocks(n_ref, p_shapes, budget_bytes=budget, buffered=True)
    assert len(plan.blocks) == 3 and plan.blocks[0][0] == 0 and plan.blocks[-1][1] == n_ref
    assert plan.block_bytes <= budget
    parts = [run(CohortCorrelation(ref_shape, p_shapes, ref_slice=b, rotation_seed=2), ref, partners, sizes).finalize()
             for b in plan.blocks]
    merged = combine_blocks(parts[::-1])  # order does not matter
    for name in ("best_rho", "baseline_rho", "topk_rho", "max_corr", "mean_corr", "min_corr",
                 "mean_baseline", "excess"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), atol=1e-6, rtol=0, equal_nan=True)
    for name in ("best_idx", "topk_idx", "ref_dead"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    for m in range(len(partners)):
        torch.testing.assert_close(merged.partner_best_rho[m], whole.partner_best_rho[m], atol=1e-6, rtol=0)
        torch.testing.assert_close(merged.partner_baseline_rho[m], whole.partner_baseline_rho[m], atol=1e-6, rtol=0)
        assert torch.equal(merged.partner_best_idx[m], whole.partner_best_idx[m])
    assert (merged.ref_start, merged.ref_stop) == (0, n_ref)
    with pytest.raises(ValueError):
        combine_blocks([parts[0], parts[2]])  # a gap


def test_checkpoint_resume_equals_uninterrupted(cohort):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    make = lambda: CohortCorrelation(ref_shape, p_shapes, flush_every=3, rotation_seed=9)  # noqa: E731
    chunks = list(batches(ref, *partners, sizes=sizes))

    uninterrupted = make()
    for i, (r, *p) in enumerate(chunks):
        uninterrupted.update(r, p)
        if i == 1:
            buffer = io.BytesIO()
            torch.save(uninterrupted.state_dict(), buffer)  # the run checkpoints, then goes on
    want = uninterrupted.finalize()

    resumed = make()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.n == sum(sizes[:2])
    for r, *p in chunks[2:]:
        resumed.update(r, p)
    got = resumed.finalize()
    for name in ("best_rho", "best_idx", "baseline_rho", "topk_rho", "topk_idx", "excess", "mean_corr"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for m in range(len(partners)):
        assert torch.equal(got.partner_best_rho[m], want.partner_best_rho[m])

    never_saved = run(make(), ref, partners, sizes).finalize()  # flushes elsewhere: equal to rounding
    torch.testing.assert_close(never_saved.best_rho, want.best_rho, atol=1e-6, rtol=0)

    other = CohortCorrelation(ref_shape, p_shapes, rotation_seed=10)
    with pytest.raises(ValueError, match="rotation_seed"):
        other.load_state_dict(uninterrupted.state_dict())


def test_checkpoint_before_any_data_resumes_cleanly(cohort):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    empty = CohortCorrelation(ref_shape, p_shapes).state_dict()
    acc = CohortCorrelation(ref_shape, p_shapes)
    acc.load_state_dict(empty)
    got = run(acc, ref, partners, sizes).finalize()
    want = run(CohortCorrelation(ref_shape, p_shapes), ref, partners, sizes).finalize()
    assert torch.equal(got.best_rho, want.best_rho)


def test_block_plan_fits_paper_cohorts_on_80_gb():
    gb80 = 80 * 10**9 - 12 * 2**30  # leave room for five models and a batch of activations
    small = [(12, 3072)] * 4
    plan = plan_ref_blocks(12 * 3072, small, budget_bytes=gb80)
    assert len(plan.blocks) == 1 and plan.block_bytes <= gb80  # GPT2-small × 5 seeds: one pass
    medium = [(24, 4096)] * 4
    plan = plan_ref_blocks(24 * 4096, medium, budget_bytes=gb80)
    assert 1 < len(plan.blocks) <= 8 and plan.block_bytes <= gb80
    assert sum(b - a for a, b in plan.blocks) == 24 * 4096
    assert plan_ref_blocks(100, [(2, 8)], budget_bytes=10**9, max_block=30).blocks == (
        (0, 25), (25, 50), (50, 75), (75, 100))
    from atlas.errors import AtlasError
    with pytest.raises(AtlasError, match="GiB"):
        plan_ref_blocks(24 * 4096, medium, budget_bytes=10**6)


# ---------------------------------------------------------------- frames

def test_result_frames_match_the_schema(cohort):
    from atlas.schema import Base

    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    result = run(CohortCorrelation(ref_shape, p_shapes), ref, partners, sizes).finalize(top_k=4)
    frames = result_frames(result, model_id=10, partner_model_ids=[11, 12])
    for table, frame in frames.items():
        columns = {c.name for c in Base.metadata.tables[table].columns} - {"run_id"}
        assert set(frame.columns) == columns, table
    n_ref = 48
    pairs = frames["pair_correlation"]
    assert pairs.height == 2 * n_ref + 48 + 48  # reference rows per partner + every partner neuron
    ref_rows = pairs.filter((pl.col("model_id") == 10) & (pl.col("other_model_id") == 11))
    row = ref_rows.filter((pl.col("layer") == 0) & (pl.col("idx") == 5)).row(0, named=True)
    assert (row["best_layer"], row["best_idx"]) == (1, 6)  # planted: ref 5 ↔ partner-0 flat 30 = L1.6
    back = pairs.filter((pl.col("model_id") == 11) & (pl.col("layer") == 1) & (pl.col("idx") == 6)).row(0, named=True)
    assert (back["other_model_id"], back["best_layer"], back["best_idx"]) == (10, 0, 5)
    edges = frames["correlation_edge"]
    assert edges.height == 2 * n_ref * 4 and edges["rank"].min() == 1 and edges["rank"].max() == 4
    assert not pairs.select(pl.col("model_id", "layer", "idx", "other_model_id")).is_duplicated().any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "tf32", "fp32"])
def test_cuda_half_precision_meets_accuracy_target(cohort, precision):
    ref, partners, (ref_shape, *p_shapes), sizes = cohort
    acc = run(CohortCorrelation(ref_shape, p_shapes, device="cuda", precision=precision), ref, partners, sizes)
    for m, part in enumerate(partners):
        want = rho_float64(ref.numpy(), part.numpy())
        assert np.abs(acc.correlation_matrix(m).numpy() - want).max() <= TOL
        rot = build_rotation(0, "orthogonal", m, p_shapes[m])
        want_rot = rho_float64(ref.numpy(), rotate(part, rot))
        assert np.abs(acc.correlation_matrix(m, rotated=True).numpy() - want_rot).max() <= TOL
    cpu = run(CohortCorrelation(ref_shape, p_shapes), ref, partners, sizes).finalize()
    gpu = acc.finalize()
    torch.testing.assert_close(gpu.excess, cpu.excess, atol=2 * TOL, rtol=0, equal_nan=True)
