"""End to end: `correlate` on the tiny trained cohort (real models, real PostgreSQL).

Stored results equal a float64 two-pass computation on the same activations (and an explicit
rotate-then-correlate baseline); a repeat is a no-op; an interrupted run resumes from its
checkpoint to the same rows as an uninterrupted one; reference blocks change nothing; a cohort
whose tokenizers differ is refused before anything runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
import torch

pytestmark = pytest.mark.slow

TOL = 1e-4


@pytest.fixture
def cohort(engine, tiny_cohort, tmp_path, monkeypatch):
    """The tiny cohort registered as cohort "tiny", its held-out rows as dataset "tiny", and the
    float64 hook_post activations of every model at the kept positions."""
    from atlas.ingest.models import load_model
    from atlas.ingest.store import register_model
    from tests.reference import hf_mlp_activations

    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))  # checkpoints go here
    info = tiny_cohort.store_dataset(engine)
    ids, posts = [], []
    keep = ~np.isin(tiny_cohort.rows.numpy(), tiny_cohort.filter_rule["exclude_token_ids"]).reshape(-1)
    n_neurons = tiny_cohort.config.n_layers * tiny_cohort.config.d_mlp
    for path, label in zip(tiny_cohort.paths, tiny_cohort.labels):
        ids.append(register_model(engine, load_model(str(path)), cohort="tiny", seed_label=label))
        # float64 hook_post from plain transformers (not the code under test); neuron = layer * d_mlp + idx
        post = hf_mlp_activations(path, tiny_cohort.rows)["post"]
        posts.append(post.reshape(-1, n_neurons)[keep])
    shape = (tiny_cohort.config.n_layers, tiny_cohort.config.d_mlp)
    return {"engine": engine, "info": info, "ids": ids, "posts": posts, "shape": shape, "home": tmp_path}


def rho64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (xc.T @ yc) / np.sqrt((xc**2).sum(0))[:, None] / np.sqrt((yc**2).sum(0))[None, :]


def rows(engine, table: str, run_id: int) -> pl.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {table} WHERE run_id = :r"), {"r": run_id})
        frame = pl.DataFrame([dict(r._mapping) for r in result], infer_schema_length=None)
    keys = [c for c in ("model_id", "layer", "idx", "other_model_id", "partner_model_id", "rank") if c in frame.columns]
    return frame.drop("run_id").sort(keys)


def correlate(c, **kwargs):
    """Run the correlation of cohort "tiny" on dataset "tiny"; its run id (None when already done)."""
    from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation

    kwargs = {"device": "cpu", "progress": False, "log": lambda message: None, "batch_size": 16, **kwargs}
    return run_correlation(c["engine"], "tiny", "tiny", CorrelateOptions(**kwargs)).run_id


def test_stored_results_equal_float64_reference_and_repeat_is_noop(cohort):
    from atlas.ingest.math.correlation import build_rotation

    engine, ids, posts, (n_layers, d_mlp) = cohort["engine"], cohort["ids"], cohort["posts"], cohort["shape"]
    n = n_layers * d_mlp
    run_id = correlate(cohort, seed=3)
    assert run_id is not None

    pairs = rows(engine, "pair_correlation", run_id)
    uni = rows(engine, "neuron_universality", run_id)
    edges = rows(engine, "correlation_edge", run_id)
    ref = posts[0]
    live_ref = ref.std(0) > 1e-6
    best, base = [], []
    rot_ref = build_rotation(3, "orthogonal", 0, (n_layers, d_mlp), reference=True).numpy()
    rotated_ref = np.einsum("ljk,tlk->tlj", rot_ref, ref.reshape(-1, n_layers, d_mlp)).reshape(-1, n)
    for m, pid in enumerate(ids[1:]):
        want = rho64(ref, posts[m + 1])
        rot = build_rotation(3, "orthogonal", m, (n_layers, d_mlp)).numpy()
        rotated = np.einsum("ljk,tlk->tlj", rot, posts[m + 1].reshape(-1, n_layers, d_mlp)).reshape(-1, n)
        want_rot = rho64(ref, rotated)
        got = pairs.filter((pl.col("model_id") == ids[0]) & (pl.col("other_model_id") == pid))
        assert got.height == n
        flat_best = (got["best_layer"] * d_mlp + got["best_idx"]).to_numpy()
        wmax = np.nanmax(np.where(np.isnan(want), -2, want), axis=1)
        np.testing.assert_allclose(got["max_corr"].to_numpy()[live_ref], wmax[live_ref], atol=TOL)
        # the best partner is the float64 argmax unless the top two are tied within the tolerance
        top2 = np.sort(np.nan_to_num(want, nan=-2), axis=1)[:, -2:]
        clear = live_ref & (top2[:, 1] - top2[:, 0] > 2 * TOL)
        assert (flat_best[clear] == np.nanargmax(np.nan_to_num(want, nan=-2), axis=1)[clear]).all()
        np.testing.assert_allclose(got["baseline_max"].to_numpy()[live_ref],
                                   np.nanmax(np.nan_to_num(want_rot, nan=-2), axis=1)[live_ref], atol=TOL)
        # partner side: column maxima, pointing back into the reference
        back = pairs.filter((pl.col("model_id") == pid) & (pl.col("other_model_id") == ids[0]))
        live_p = posts[m + 1].std(0) > 1e-6
        np.testing.assert_allclose(back["max_corr"].to_numpy()[live_p],
                                   np.nanmax(np.nan_to_num(want, nan=-2), axis=0)[live_p], atol=TOL)
        # ... and their baseline: best correlation with the REFERENCE's layers rotated at random
        want_pbase = rho64(rotated_ref, posts[m + 1])
        np.testing.assert_allclose(back["baseline_max"].to_numpy()[live_p],
                                   np.nanmax(np.nan_to_num(want_pbase, nan=-2), axis=0)[live_p], atol=TOL)
        # edges: rank 1 is the best partner, ranks descend
        mine = edges.filter(pl.col("partner_model_id") == pid)
        assert mine["rank"].max() == 10
        first = mine.filter(pl.col("rank") == 1)
        np.testing.assert_allclose(first["rho"].to_numpy(), got["max_corr"].drop_nulls().to_numpy(), atol=1e-6)
        assert mine.group_by("layer", "idx").agg(ok=pl.col("rho").diff().drop_nulls().le(1e-7).all())["ok"].all()
        best.append(wmax)
        base.append(np.nanmax(np.nan_to_num(want_rot, nan=-2), axis=1))

    assert uni.height == n and (uni["n_partners"] == len(ids) - 1).all()
    excess = np.mean(best, axis=0) - np.mean(base, axis=0)
    np.testing.assert_allclose(uni["excess"].to_numpy()[live_ref], excess[live_ref], atol=2 * TOL)
    assert uni["excess"].null_count() == int((~live_ref).sum())  # dead: NULL, never NaN
    with engine.connect() as conn:
        nans = conn.execute(sa.text("SELECT count(*) FROM neuron_universality WHERE excess = 'NaN' OR max_corr = 'NaN'")).scalar()
        run = conn.execute(sa.text("SELECT status, params, tokens_done FROM run WHERE id = :r"), {"r": run_id}).one()
    assert nans == 0
    assert run.status == "done" and run.tokens_done == ref.shape[0]
    assert run.params["rotation"] == "orthogonal" and run.params["rotation_seed"] == 3
    assert run.params["engine"]["precision"] == "fp32" and run.params["engine"]["n_tokens"] == ref.shape[0]
    assert run.params["engine"]["partner_baseline"].startswith("max correlation with the reference's layers")

    # the same cohort + dataset again: nothing to do, nothing changes
    assert correlate(cohort, seed=3) is None
    assert rows(engine, "neuron_universality", run_id).equals(uni)
    # the universality threshold is a query parameter, not baked into rows
    from atlas import queries

    loose = queries.universal_neurons(engine, threshold=-1.0, cohort="tiny")
    assert loose.height == int(live_ref.sum())

    # fp16 inputs (emulated on the CPU): the run records how many batches needed re-estimated
    # scales and how many fell back to bf16
    fp16 = correlate(cohort, seed=3, precision="fp16", force=True)
    with engine.connect() as conn:
        engine_params = conn.execute(sa.text("SELECT params FROM run WHERE id = :r"), {"r": fp16}).scalar()["engine"]
    assert engine_params["precision"] == "fp16" and engine_params["fp16_fallback_batches"] == 0
    assert engine_params["fp16_rescaled_batches"] >= 0
    np.testing.assert_allclose(rows(engine, "neuron_universality", fp16)["excess"].to_numpy(), uni["excess"].to_numpy(),
                               atol=2e-3)


def test_interrupted_run_resumes_to_identical_rows_and_blocks_change_nothing(cohort):
    engine = cohort["engine"]
    kept = cohort["posts"][0].shape[0]
    settings = {"block_size": 50, "checkpoint_tokens": 600, "rotation": "gaussian_unit_rows"}
    first = correlate(cohort, **settings)
    whole = {t: rows(engine, t, first) for t in ("pair_correlation", "correlation_edge", "neuron_universality")}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT params FROM run WHERE id = :r"), {"r": first}).scalar()["engine"]["blocks"] == 3

    class Killed(Exception):
        pass

    def kill(tokens_done: int) -> None:
        if tokens_done > kept + kept // 2:  # halfway through the second block
            raise Killed("simulated crash")

    with pytest.raises(Killed):
        correlate(cohort, force=True, on_batch=kill, **settings)
    with engine.connect() as conn:
        status, error, done = conn.execute(sa.text("SELECT status, error, tokens_done FROM run WHERE id = :r"),
                                           {"r": first}).one()
    assert status == "failed" and "simulated crash" in error
    checkpoints = list((cohort["home"] / "checkpoints").glob("correlation-*.pt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=True)["state"]
    assert state["block"] == 1 and 0 < state["next_row"] and len(state["results"]) == 1

    resumed = correlate(cohort, **settings)
    assert resumed == first
    for table, frame in whole.items():
        assert rows(engine, table, first).equals(frame), table  # bit-identical to the uninterrupted run
    assert not list((cohort["home"] / "checkpoints").glob("correlation-*.pt"))  # removed at publish

    # one block (no splitting) gives the same results up to float32 summation order
    correlate(cohort, force=True, rotation="gaussian_unit_rows")
    unsplit = rows(engine, "neuron_universality", first)
    for col in ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess"):
        np.testing.assert_allclose(unsplit[col].to_numpy(), whole["neuron_universality"][col].to_numpy(), atol=1e-5)


def test_cohort_with_differing_tokenizers_is_refused(cohort):
    from atlas.errors import AtlasError

    engine = cohort["engine"]
    with engine.begin() as conn:
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES "
                                   "('other', 'sha256:other', 10) RETURNING id")).scalar_one()
        cohort_id = conn.execute(sa.text("SELECT id FROM cohort WHERE name = 'tiny'")).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, cohort_id, seed_label, n_layers, d_model, d_mlp, n_heads, "
            "d_head, n_ctx, d_vocab, act_fn, tokenizer_id) VALUES ('odd-one', '/nowhere', 'GPT2LMHeadModel', :c, 'z', "
            "2, 32, 64, 4, 8, 32, 10, 'gelu_new', :t)"), {"c": cohort_id, "t": tok})
    with pytest.raises(AtlasError, match="different tokenizers") as err:
        correlate(cohort)
    assert "\n" not in str(err.value) and "odd-one" in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run WHERE kind = 'correlation'")).scalar() == 0


def test_cli_correlate_runs_and_repeats_as_noop(cohort, db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({"ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(cohort["home"])})
    cmd = [sys.executable, "-m", "atlas.app.cli", "correlate", "--cohort", "tiny", "--dataset", "tiny", "--device", "cpu",
           "--quiet", "--top-k", "5"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "done: run" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "already done" in again.stdout
    bad = subprocess.run([*cmd[:5], "nope", *cmd[6:]], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "no cohort named nope" in bad.stderr and "Traceback" not in bad.stderr
    with cohort["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT max(rank) FROM correlation_edge")).scalar() == 5


def test_cohort_with_differing_shapes_is_refused_unless_asked(cohort):
    from atlas.errors import AtlasError

    engine = cohort["engine"]
    with engine.begin() as conn:
        tok, cohort_id = conn.execute(sa.text("SELECT tokenizer_id, id FROM cohort WHERE name = 'tiny'")).one()
        conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, cohort_id, seed_label, n_layers, d_model, d_mlp, n_heads, "
            "d_head, n_ctx, d_vocab, act_fn, tokenizer_id) VALUES ('wide-one', '/nowhere', 'GPT2LMHeadModel', :c, 'z', "
            "1, 32, 256, 4, 8, 32, 384, 'gelu_new', :t)"), {"c": cohort_id, "t": tok})
    with pytest.raises(AtlasError, match="differ in shape") as err:
        correlate(cohort)
    assert "wide-one 1×256" in str(err.value) and "--allow-mixed-shapes" in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run WHERE kind = 'correlation'")).scalar() == 0
    with pytest.raises(AtlasError, match="no model checkpoint directory"):  # allowed: it gets as far as loading
        correlate(cohort, allow_mixed_shapes=True)
