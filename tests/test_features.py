"""Token features and streaming variance reduction, checked against direct float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from atlas.ingest.math.activation_sums import FeatureAccumulator
from atlas.ingest.math.features import (
    FeatureSet, bucket_edges, frequent_token_ids, position_features, token_features,
)
from atlas.ingest.math.variance_reduction import neuron_table, score_features, top_tokens

VOCAB = ["<|endoftext|>", " the", "the", " The", " NASA", " 1999", "1489", "2200", ",", " b", "running",
         " red", " green", " blue", "\n", " (", "ly", " unhappy", " 42", " x"]


def col(fs: FeatureSet, name: str) -> np.ndarray:
    return fs.matrix[:, fs.names.index(name)].numpy()


def members(fs: FeatureSet, name: str) -> set[str]:
    return {VOCAB[i] for i in np.flatnonzero(col(fs, name))}


def test_token_feature_classes():
    fs = token_features(VOCAB, frequent_token_ids=[1, 8])
    assert fs.matrix.shape == (len(VOCAB), fs.n_features) and fs.matrix.dtype == torch.bool
    assert len(set(fs.names)) == fs.n_features
    assert [n for n, k in zip(fs.names, fs.kinds) if k == "unigram"] == ["token=' the'", "token=','", "word=the"]
    assert members(fs, "word=the") == {" the", "the", " The"}
    assert members(fs, "year") == {" 1999", "2200"}  # 1490–2200 inclusive
    assert members(fs, "all_caps") == {" NASA"}
    assert members(fs, "capitalised") == {" The", " NASA"}
    assert members(fs, "punct=comma") == {","}
    assert members(fs, "punct=open_bracket") == {" ("}
    assert members(fs, "newline") == {"\n"}
    assert members(fs, "single_letter") == {" b", " x"}
    assert members(fs, "letter=b") == {" b"}
    assert members(fs, "starts_with=r") == {"running", " red"}
    assert members(fs, "suffix=ing") == {"running"}
    assert members(fs, "prefix=un") == {" unhappy"}
    assert members(fs, "topic=colours") == {" red", " green", " blue"}
    assert members(fs, "digits=2") == {" 42"}
    assert "leading_space" in fs.names and " the" in members(fs, "leading_space") and "the" not in members(fs, "leading_space")
    assert set(fs.kinds) == {"unigram", "class", "alphabet", "topic"}
    assert "letter=q" not in fs.names  # no token has it: dropped
    with pytest.raises(ValueError):
        token_features(VOCAB, frequent_token_ids=[len(VOCAB)])


def test_position_features_and_buckets():
    assert bucket_edges(512, 16) == list(range(0, 513, 32))
    assert bucket_edges(5, 16) == [0, 1, 2, 3, 4, 5]
    fs = position_features(64, n_exact=4, n_buckets=8)
    assert fs.matrix.shape[0] == 64 and set(fs.kinds) == {"position"}
    assert np.flatnonzero(col(fs, "position=2")).tolist() == [2]
    assert np.flatnonzero(col(fs, "position in [8,16)")).tolist() == list(range(8, 16))
    assert np.flatnonzero(col(fs, "position>=32")).tolist() == list(range(32, 64))
    # no duplicate or constant columns
    cols = {fs.matrix[:, j].numpy().tobytes() for j in range(fs.n_features)}
    assert len(cols) == fs.n_features
    assert not fs.matrix.all(0).any() and fs.matrix.any(0).all()


def test_frequent_token_ids():
    counts = torch.tensor([100.0, 5, 0, 50, 7, 1])
    assert frequent_token_ids(counts, min_count=2, exclude=[0]) == [1, 3, 4]
    assert frequent_token_ids(counts, max_tokens=2) == [0, 3]


# ---------------------------------------------------------------- VR vs numpy

def _data(seed: int, rows: int = 12, n_ctx: int = 10, d_vocab: int = len(VOCAB), n: int = 6, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, d_vocab, size=(rows, n_ctx))
    tokens[:, 0] = 0
    acts = rng.normal(size=(rows, n_ctx, n))
    prev = np.concatenate([np.full((rows, 1), -1), tokens[:, :-1]], 1)
    pos = np.broadcast_to(np.arange(n_ctx), (rows, n_ctx))
    acts[..., 0] += 3.0 * (tokens == 1)  # current-token structure
    acts[..., 1] += 2.0 * np.isin(prev, [8, 11])  # previous-token structure
    acts[..., 2] += 0.5 * pos  # position ramp
    acts[..., 3] = np.maximum(acts[..., 3], 0)  # GELU-like, fires half the time
    acts += offset
    keep = rng.random((rows, n_ctx)) < 0.85
    keep[:, 0] = False
    return tokens, acts, keep, prev, pos


def _ref_vr(a: np.ndarray, f: np.ndarray) -> float:
    if f.all() or not f.any():
        return 0.0
    p1 = f.mean()
    return (a.var() - ((1 - p1) * a[~f].var() + p1 * a[f].var())) / a.var()


def _accumulate(tokens, acts, keep, batch: int = 5, **kw) -> FeatureAccumulator:
    acc = FeatureAccumulator(acts.shape[-1], len(VOCAB), tokens.shape[1], **kw)
    for s in range(0, tokens.shape[0], batch):
        acc.update(torch.from_numpy(tokens[s:s + batch]), torch.from_numpy(acts[s:s + batch]).float(),
                   torch.from_numpy(keep[s:s + batch]))
    return acc


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_variance_reduction_matches_numpy(offset):
    tokens, acts, keep, prev, pos = _data(0, offset=offset)
    acts = acts.astype(np.float32).astype(np.float64)  # what the accumulator sees
    tf = token_features(VOCAB, frequent_token_ids=range(1, len(VOCAB)))
    pf = position_features(tokens.shape[1], n_exact=3, n_buckets=4)
    acc = _accumulate(tokens, acts, keep)
    scores = score_features(acc, tf, pf)
    T = tf.n_features
    assert scores.vr.shape == (2 * T + pf.n_features, acts.shape[-1])
    assert scores.on_previous == [False] * T + [True] * T + [False] * pf.n_features

    a = acts[keep]  # [n_kept, N]
    tok, prv, ps = tokens[keep], prev[keep], pos[keep]
    F = tf.matrix.numpy()
    tol = 1e-9 if offset == 0 else 1e-6
    for j in range(T):
        f_cur = F[tok, j]
        f_prev = np.where(prv >= 0, F[np.maximum(prv, 0), j], False)
        for i in range(a.shape[1]):
            assert scores.vr[j, i].item() == pytest.approx(_ref_vr(a[:, i], f_cur), abs=tol)
            assert scores.vr[T + j, i].item() == pytest.approx(_ref_vr(a[:, i], f_prev), abs=tol)
    P = pf.matrix.numpy()
    for j in range(pf.n_features):
        for i in range(a.shape[1]):
            assert scores.vr[2 * T + j, i].item() == pytest.approx(_ref_vr(a[:, i], P[ps, j]), abs=tol)

    # the planted structure is what the summary finds
    summary = scores.summary()
    assert summary["cur_feature"][0] == "token=' the'"
    assert summary["best_on_previous"][1] is True
    assert summary["pos_feature"][2].startswith("position")


def test_dead_neuron_is_nan_not_zero():
    tokens, acts, keep, *_ = _data(1)
    acts[..., 4] = 0.25  # constant: zero variance
    acc = _accumulate(tokens, acts, keep)
    scores = score_features(acc, token_features(VOCAB, frequent_token_ids=[1, 2]), position_features(10))
    assert torch.isnan(scores.vr[:, 4]).all()
    assert not torch.isnan(scores.vr[:, :4]).any()
    assert acc.dead().tolist() == [False, False, False, False, True, False]
    top = scores.top(3)
    assert 4 not in top["neuron"].to_list()
    assert set(top["neuron"].to_list()) == {0, 1, 2, 3, 5}
    assert math.isnan(acc.kurtosis()[4].item())
    row = scores.summary().row(4, named=True)
    assert row["best_vr"] is None and row["best_feature"] is None


def test_moments_mutual_information_and_top_tokens():
    tokens, acts, keep, prev, pos = _data(2, rows=20)
    pre = acts * 1.5 - 0.2
    acc = FeatureAccumulator(acts.shape[-1], len(VOCAB), tokens.shape[1])
    for s in range(0, 20, 7):
        acc.update(torch.from_numpy(tokens[s:s + 7]), torch.from_numpy(acts[s:s + 7]),
                   torch.from_numpy(keep[s:s + 7]), pre=torch.from_numpy(pre[s:s + 7]))
    a = acts[keep]
    # moments and firing over EVERY position (the paper's token set); VR sums over kept tokens
    m_all, a_all = pre.reshape(-1, pre.shape[-1]), acts.reshape(-1, acts.shape[-1])
    np.testing.assert_allclose(acc.kurtosis().numpy(), scipy.stats.kurtosis(m_all, axis=0, fisher=False), rtol=1e-9)
    np.testing.assert_allclose(acc.firing_rate().numpy(), (a_all > 0).mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.variance().numpy(), a.var(0), rtol=1e-9)
    np.testing.assert_allclose(acc.mean().numpy(), a.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(acc.act_max.numpy(), a.max(0))

    # mutual information between firing and the exact position, from the joint distribution
    position = pos.reshape(-1)
    mi = acc.position_mutual_information().numpy()
    for i in range(a_all.shape[1]):
        fire = a_all[:, i] > 0
        ref = 0.0
        for p in np.unique(position):
            for f in (False, True):
                pj = np.mean((position == p) & (fire == f))
                if pj > 0:
                    ref += pj * np.log(pj / (np.mean(position == p) * np.mean(fire == f)))
        assert mi[i] == pytest.approx(ref, abs=1e-12)
    assert mi[2] > 5 * np.median(mi)  # the position ramp

    means = acc.token_means(min_count=1).numpy()
    for v in range(1, 6):
        sel = tokens[keep] == v
        if sel.any():
            np.testing.assert_allclose(means[v], a[sel].mean(0), rtol=1e-9, atol=1e-12)
    tops = top_tokens(acc, VOCAB, k=3, min_count=1, rel=0.0)
    assert tops[0][0] == " the"  # neuron 0 fires on ' the'


def test_checkpoint_roundtrip_equals_one_pass():
    tokens, acts, keep, *_ = _data(3)
    whole = _accumulate(tokens, acts, keep)
    first = _accumulate(tokens[:6], acts[:6], keep[:6])
    resumed = FeatureAccumulator.from_state_dict(first.state_dict())
    for s in range(6, tokens.shape[0], 5):
        resumed.update(torch.from_numpy(tokens[s:s + 5]), torch.from_numpy(acts[s:s + 5]).float(),
                       torch.from_numpy(keep[s:s + 5]))
    tf = token_features(VOCAB, frequent_token_ids=range(1, 6))
    a, b = score_features(whole, tf).vr, score_features(resumed, tf).vr
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert resumed.n == whole.n


def test_neuron_table_columns():
    tokens, acts, keep, *_ = _data(4)
    acc = _accumulate(tokens, acts, keep)
    scores = score_features(acc, token_features(VOCAB, frequent_token_ids=range(1, 6)), position_features(10))
    table = neuron_table(3, acc, scores, VOCAB, min_count=1)
    assert table.height == acts.shape[-1]
    assert table["layer"].unique().to_list() == [3] and table["idx"].to_list() == list(range(acts.shape[-1]))
    for c in ("best_feature", "cur_vr", "alphabet_vr", "prev_vr", "pos_vr", "kurtosis", "position_mi", "top_tokens"):
        assert c in table.columns
    top = scores.top(4)
    assert top["rank"].to_list()[:4] == [1, 2, 3, 4]
    best = top.filter(top["rank"] == 1).sort("neuron")
    assert best["variance_reduction"].to_list() == pytest.approx(table["best_vr"].to_list())


def test_update_rejects_bad_shapes():
    acc = FeatureAccumulator(3, 10, 4)
    with pytest.raises(ValueError):
        acc.update(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError):
        acc.update(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, 3))
