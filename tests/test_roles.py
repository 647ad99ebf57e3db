"""Roles from weights (vocabulary composition, attention deactivation, entropy) against direct
numpy/scipy computations, and on a GPT-2 whose weights plant each role in a known neuron."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import scipy.stats
import torch

from atlas.ingest.math.labels import LabelThresholds
from atlas.ingest.math.roles import (
    attention_deactivation, bos_keys, entropy_effect, entropy_intervention, mark_entropy_candidates, role_table,
    vocab_composition,
)


def test_vocab_composition_matches_scipy():
    rng = np.random.default_rng(0)
    W_out = rng.normal(size=(7, 12))
    W_U = rng.normal(size=(12, 40)) + 0.3
    W_out[3] = W_U[:, 5] + W_U[:, 9]  # a prediction-like direction
    comp = vocab_composition(torch.from_numpy(W_out), torch.from_numpy(W_U))
    U_hat = W_U / np.linalg.norm(W_U, axis=0)
    z = (W_out / np.linalg.norm(W_out, axis=1, keepdims=True)) @ U_hat
    np.testing.assert_allclose(comp.mean.numpy(), z.mean(1), rtol=1e-10)
    np.testing.assert_allclose(comp.var.numpy(), z.var(1), rtol=1e-10)
    np.testing.assert_allclose(comp.skew.numpy(), scipy.stats.skew(z, axis=1), rtol=1e-8)
    np.testing.assert_allclose(comp.kurtosis.numpy(), scipy.stats.kurtosis(z, axis=1, fisher=False), rtol=1e-8)
    baseline = (1 - np.linalg.norm(U_hat.mean(1)) ** 2) / 12
    np.testing.assert_allclose(comp.var_ratio.numpy(), z.var(1) / baseline, rtol=1e-10)
    assert comp.top_token.tolist() == (W_out @ W_U).argmax(1).tolist()
    assert comp.bottom_token.tolist() == (W_out @ W_U).argmin(1).tolist()
    np.testing.assert_allclose(comp.norm.numpy(), np.linalg.norm(W_out, axis=1))
    # the random-direction baseline is what random unit vectors give on average
    R = rng.normal(size=(4000, 12))
    zr = (R / np.linalg.norm(R, axis=1, keepdims=True)) @ U_hat
    assert zr.var(1).mean() == pytest.approx(baseline, rel=0.05)


def test_attention_deactivation_matches_numpy():
    rng = np.random.default_rng(1)
    L, N, H, d_model, d_head = 3, 5, 2, 16, 4
    W_out = rng.normal(size=(L, N, d_model))
    W_Q = rng.normal(size=(L, H, d_model, d_head))
    k_bos = rng.normal(size=(L, H, d_head))
    res = attention_deactivation(torch.from_numpy(W_out), torch.from_numpy(W_Q), torch.from_numpy(k_bos),
                                 n_random=500, seed=7)
    g = torch.Generator().manual_seed(7)
    R = torch.randn(500, d_model, generator=g, dtype=torch.float64).numpy()
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    for l in range(L):
        for n in range(N):
            w = W_out[l, n] / np.linalg.norm(W_out[l, n])
            for hl in range(L):
                for h in range(H):
                    got = res.score[l, n, hl, h].item()
                    if hl <= l:
                        assert math.isnan(got) and math.isnan(res.z[l, n, hl, h].item())
                        continue
                    v = W_Q[hl, h] @ k_bos[hl, h] / np.sqrt(d_head)
                    assert got == pytest.approx(w @ v, rel=1e-10)
                    rand = R @ v
                    assert res.z[l, n, hl, h].item() == pytest.approx((w @ v - rand.mean()) / rand.std(ddof=1), rel=1e-8)
                    assert res.percentile[l, n, hl, h].item() == pytest.approx(np.mean(rand < w @ v))
    best = res.best()
    assert torch.isnan(best["z"][L - 1]).all()  # nothing after the last layer
    s0 = res.score[0, 2].reshape(-1).abs()  # the paper ranks by |score|
    j = int(torch.nan_to_num(s0, nan=-math.inf).argmax())
    assert (best["head_layer"][0, 2].item(), best["head"][0, 2].item()) == (j // H, j % H)


def _frame(values, entropy, scale, base=(2.0, 1.0)):
    return pl.DataFrame({"value": [None, *values], "mean_entropy": [base[0], *entropy], "mean_ln_scale": [base[1], *scale]},
                        schema={"value": pl.Float64, "mean_entropy": pl.Float64, "mean_ln_scale": pl.Float64})


def test_entropy_effect_confirmation():
    up = entropy_effect(_frame([0, 1, 2], [1.8, 2.2, 2.9], [0.8, 1.2, 2.0]), min_relative_change=0.05)
    assert up["confirmed"] and up["direction"] == "increases entropy"
    assert up["relative_entropy_change"] == pytest.approx((2.9 - 1.8) / 2.0)
    tiny = entropy_effect(_frame([0, 1, 2], [2.0, 2.01, 2.02], [1.0, 1.1, 1.2]), min_relative_change=0.05)
    assert not tiny["confirmed"]
    scale_disagrees = entropy_effect(_frame([0, 1, 2], [1.8, 2.2, 2.9], [1.2, 1.0, 0.8]), min_relative_change=0.05)
    assert not scale_disagrees["confirmed"]
    not_monotone = entropy_effect(_frame([0, 1, 2], [1.8, 3.5, 2.9], [0.8, 1.2, 2.0]), min_relative_change=0.05)
    assert not not_monotone["confirmed"]
    assert not entropy_effect(_frame([0], [1.8], [0.8]), min_relative_change=0.05)["confirmed"]


# ---------------------------------------------------------------- planted ground truth

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from tests.planted_gpt2 import build_planted, load_bridge

    p = build_planted(tmp_path_factory.mktemp("planted") / "model")
    return p, load_bridge(p)


def _labelled(table: pl.DataFrame, mask: pl.Expr) -> set[tuple[int, int]]:
    return {(r["layer"], r["idx"]) for r in table.filter(mask).iter_rows(named=True)}


@pytest.mark.slow
def test_planted_roles_are_found_exactly(planted):
    from tests.planted_gpt2 import BOSQ, VOCAB

    p, bridge = planted
    t = LabelThresholds()
    k_bos = bos_keys(bridge, 0)
    assert k_bos.shape == (2, 2, 64)
    att = attention_deactivation(bridge.W_out, bridge.W_Q, k_bos)
    table = role_table(bridge.W_out, bridge.W_U, VOCAB, W_in=bridge.W_in, attention=att)
    assert table.height == 2 * 16
    k, s = pl.col("vocab_kurtosis"), pl.col("vocab_skew")
    assert _labelled(table, (k > t.prediction_kurtosis) & (s > 0)) == p.truth["prediction"]
    assert _labelled(table, (k > t.suppression_kurtosis) & (s < 0)) == p.truth["suppression"]
    assert _labelled(table, (pl.col("vocab_var") > t.partition_vocab_var)
                     & (pl.col("vocab_var_ratio") >= t.partition_min_var_ratio)) == p.truth["partition"]
    # weights only here: an activation kurtosis of 3 (Gaussian) lets the weight filters decide
    marked = mark_entropy_candidates(table.with_columns(pl.lit(3.0).alias("kurtosis")), t, n_layers=2)
    assert _labelled(marked, pl.col("entropy_candidate")) == p.truth["entropy"]
    assert _labelled(table, pl.col("attn_z").abs() >= t.attention_z) == p.truth["attention_deactivation"]
    row = table.filter((pl.col("layer") == 0) & (pl.col("idx") == 4)).row(0, named=True)
    assert (row["attn_head_layer"], row["attn_head"]) == (1, 0) and row["attn_percentile"] == 1.0
    pred = table.filter((pl.col("layer") == 1) & (pl.col("idx") == 1)).row(0, named=True)
    assert pred["top_token_text"] in (" cat", " dog")
    supp = table.filter((pl.col("layer") == 1) & (pl.col("idx") == 2)).row(0, named=True)
    assert supp["bottom_token_text"] in (" the", ",")
    # the score is the formula on the processed weights
    W_Q, W_out = bridge.W_Q.detach().double(), bridge.W_out.detach().double()
    w = W_out[0, 4] / W_out[0, 4].norm()
    direct = float(w @ W_Q[1, 0] @ k_bos[1, 0] / math.sqrt(64))
    assert row["attn_score"] == pytest.approx(direct, rel=1e-9)
    assert abs(float(W_out[0, 4, BOSQ])) > 0.9  # the planted direction survived weight processing


@pytest.mark.slow
def test_entropy_intervention_confirms_only_the_entropy_neuron(planted):
    p, bridge = planted
    t = LabelThresholds()
    values = [0.0, 0.5, 1.0, 2.0]
    frame = entropy_intervention(bridge, p.tokens[:16], 1, 3, values, keep=p.keep[:16], batch_size=8)
    assert frame.height == len(values) + 1 and frame["value"][0] is None
    effect = entropy_effect(frame, min_relative_change=t.entropy_min_relative_change)
    assert effect["confirmed"] and effect["direction"] == "increases entropy"
    assert effect["ln_scale_change"] > 0
    # the unmodified row is the plain model's mean entropy
    with torch.no_grad():
        logp = torch.log_softmax(bridge(p.tokens[:16]).double(), -1)
    ent = -(logp.exp() * logp).sum(-1)[p.keep[:16]].mean().item()
    assert frame["mean_entropy"][0] == pytest.approx(ent, rel=1e-6)
    # a distractor in the same layer does not move entropy like that
    other = entropy_effect(entropy_intervention(bridge, p.tokens[:16], 1, 7, values, keep=p.keep[:16]),
                           min_relative_change=t.entropy_min_relative_change)
    assert not other["confirmed"]


# ---------------------------------------------------------------- the paper's definitions (issue 10)

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_attention_scores_rank_by_raw_effect_and_keep_the_sign():
    """Paper: score = ŵ_outᵀ W_Q k_BOS / sqrt(d_head), the raw effect (not a cosine), neurons ranked
    by |score| with the sign kept: positive switches the head off (deactivation), negative on."""
    from atlas.ingest.math.labels import label_neurons

    rng = np.random.default_rng(5)
    L, N, H, d_model, d_head = 3, 4, 2, 64, 8
    W_Q = rng.normal(size=(L, H, d_model, d_head))
    k_bos = rng.normal(size=(L, H, d_head))
    qdir = np.einsum("lhdk,lhk->lhd", W_Q, k_bos) / np.sqrt(d_head)
    for (hl, h), norm in {(1, 0): 10.0, (1, 1): 1.0, (2, 0): 3.0, (2, 1): 3.0}.items():
        W_Q[hl, h] *= norm / np.linalg.norm(qdir[hl, h])
    qdir = np.einsum("lhdk,lhk->lhd", W_Q, k_bos) / np.sqrt(d_head)
    W_out = rng.normal(size=(L, N, d_model))
    W_out[0, 0] = -_unit(qdir[2, 1]) + 0.01 * rng.normal(size=d_model)  # pulls head L2H1 off BOS
    W_out[0, 1] = _unit(qdir[1, 0])  # pushes head L1H0 onto BOS
    W_out[0, 2] = _unit(qdir[1, 0]) * 0.7 + _unit(qdir[1, 1]) * 0.75  # most cosine on L1H1, most effect on L1H0
    res = attention_deactivation(torch.from_numpy(W_out), torch.from_numpy(W_Q), torch.from_numpy(k_bos), n_random=2000)
    best = res.best()
    for n in range(N):
        w = _unit(W_out[0, n])
        raw = {(hl, h): float(w @ qdir[hl, h]) for hl in (1, 2) for h in range(H)}
        head = max(raw, key=lambda k: abs(raw[k]))
        assert (best["head_layer"][0, n].item(), best["head"][0, n].item()) == head
        assert best["score"][0, n].item() == pytest.approx(raw[head], rel=1e-9)
    w2 = _unit(W_out[0, 2])
    cos = {k: float(w2 @ _unit(qdir[k])) for k in ((1, 0), (1, 1))}
    assert cos[(1, 1)] > cos[(1, 0)]  # a cosine ranking would pick the other head

    W_U = rng.normal(size=(d_model, 30))
    table = role_table(torch.from_numpy(W_out), torch.from_numpy(W_U), [str(i) for i in range(30)],
                       W_in=torch.from_numpy(rng.normal(size=(L, d_model, N))), attention=res)
    labels = label_neurons(table.with_columns(pl.lit(1).alias("model_id"), pl.lit(1.0).alias("kurtosis")))
    att = {r["idx"]: r for r in labels.filter((pl.col("layer") == 0) & pl.col("label").str.starts_with("attention"))
           .iter_rows(named=True)}
    assert att[0]["label"] == "attention_activation" and att[0]["family_key"] == "L2H1"
    assert json.loads(att[0]["evidence"])["sign"] == -1 and json.loads(att[0]["evidence"])["score"] < 0
    assert att[1]["label"] == "attention_deactivation" and att[1]["family_key"] == "L1H0"
    assert att[2]["family_key"] == "L1H0"
    assert 3 not in att


def test_entropy_candidates_use_the_papers_weight_filters():
    """Paper: last-layer neurons with a large weight-decay penalty ‖w_in‖² + ‖w_out‖², tiny
    vocabulary variance, vocab kurtosis ≤ 10 and activation kurtosis ≤ 10 (then the intervention)."""
    from atlas.ingest.math.labels import LabelThresholds
    from atlas.ingest.math.roles import mark_entropy_candidates

    rng = np.random.default_rng(2)
    L, N, d_model, d_vocab = 2, 12, 32, 200
    W_U = np.zeros((d_model, d_vocab))
    W_U[:30] = rng.normal(size=(30, d_vocab))  # dimension 31 is read by no token, 30 by token 7 alone
    W_U[:, 7] = 0.0
    W_U[30, 7] = 5.0
    null = np.eye(d_model)[31]
    W_in = rng.normal(size=(L, d_model, N)) / np.sqrt(d_model)
    W_out = rng.normal(size=(L, N, d_model)) / np.sqrt(d_model)
    W_in[1, :, 0] *= 4.0  # large input norm, ordinary output norm, writes the null direction
    W_out[1, 0] = null * np.linalg.norm(W_out[1, 1])
    W_out[1, 1] = null * 4.0  # large output norm along the null direction: the classic case
    W_out[1, 2] = null * 4.0 + np.eye(d_model)[30] * 0.3  # also boosts token 7 alone: vocab kurtosis ≫ 10
    W_out[1, 3] = null * 4.0  # like 1, but its activation is heavy-tailed (kurtosis 40)
    table = role_table(torch.from_numpy(W_out), torch.from_numpy(W_U), [str(i) for i in range(d_vocab)],
                       W_in=torch.from_numpy(W_in))
    row = table.filter((pl.col("layer") == 1) & (pl.col("idx") == 0)).row(0, named=True)
    assert row["l2_penalty"] == pytest.approx(np.linalg.norm(W_in[1, :, 0]) ** 2 + np.linalg.norm(W_out[1, 0]) ** 2)
    kurt = [40.0 if (l, i) == (1, 3) else 3.0 for l in range(L) for i in range(N)]
    marked = mark_entropy_candidates(table.with_columns(pl.Series("kurtosis", kurt)), LabelThresholds(), n_layers=L)
    cands = {(r["layer"], r["idx"]) for r in marked.filter(pl.col("entropy_candidate")).iter_rows(named=True)}
    assert cands == {(1, 0), (1, 1)}
