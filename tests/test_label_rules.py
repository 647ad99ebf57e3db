"""The family rules as the paper defines them (method.md §4, Gurnee et al. 2024), checked on
synthetic activations whose structure is planted, through the whole pipeline: token features →
streaming sums → variance reduction → per-neuron table → labels.

The vocabulary is BPE-like: every letter has several spellings ('a', ' a', 'A', ' A') and words
that start with it, so a "word = a" feature and the letter feature cover the same tokens, as in
GPT-2's vocabulary."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import scipy.stats
import torch

from atlas.ingest.math.activation_sums import FeatureAccumulator
from atlas.ingest.math.features import position_features, token_features
from atlas.ingest.math.labels import LabelThresholds, label_neurons
from atlas.ingest.math.variance_reduction import neuron_table, score_features

VOCAB = ["<|endoftext|>", "a", " a", "A", " A", " and", " apple", " an", " as", "b", " b", "B", " B", " big",
         " bat", " the", " The", "the", ",", ".", " 1999", " 2001", " 1850", " 42", "7", " 300", " of", " on", " one",
         " or", " x", " quite", " red", "ing", " very", " cat", " can", " come", " car", "C", " dog", " house",
         " run", " said", " when", " it"]
V = len(VOCAB)
N_CTX = 64
ROWS = 400
LETTER_A = [VOCAB.index(t) for t in ("a", " a", "A", " A")]
YEARS = [VOCAB.index(t) for t in (" 1999", " 2001", " 1850")]
OF, CAT = VOCAB.index(" of"), VOCAB.index(" cat")

# planted neurons: column -> what it is
ALPHA, YEAR, PREV, EVEN, HALF, BOS_RAMP, RAMP, QUIET = range(8)


def _planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, size=(ROWS, N_CTX))
    tokens[:, 0] = 0  # BOS
    prev = np.concatenate([np.full((ROWS, 1), -1), tokens[:, :-1]], 1)
    pos = np.broadcast_to(np.arange(N_CTX), (ROWS, N_CTX))
    noise = lambda: rng.normal(0, 0.05, size=(ROWS, N_CTX))  # noqa: E731
    acts = np.zeros((ROWS, N_CTX, 8))
    acts[..., ALPHA] = 3.0 * np.isin(tokens, LETTER_A) + noise()
    acts[..., YEAR] = 3.0 * np.isin(tokens, YEARS) + noise()
    # previous-token neuron whose best feature is a CURRENT token: VR(prev ' of') ≈ 0.38, VR(cur ' cat') ≈ 0.58
    acts[..., PREV] = 2.0 * (prev == OF) + 2.5 * (tokens == CAT) + noise()
    # fires at even positions only: per-position MI = ln 2, but 0 over buckets of two positions
    acts[..., EVEN] = np.where(pos % 2 == 0, 1.0, -0.5) + noise()
    # fires with probability 0.71 in the first half of the context and 0.29 in the second:
    # per-position MI ≈ 0.09 nats, like the paper's position neuron L5.386
    q = np.where(pos < N_CTX // 2, 0.71, 0.29)
    acts[..., HALF] = np.where(rng.random((ROWS, N_CTX)) < q, 1.0, -0.5) + noise()
    # a position ramp (kurtosis ≈ 1.8 on kept tokens) with a huge activation on the BOS position
    acts[..., BOS_RAMP] = (pos - 31.5) / 16 + noise()
    acts[:, 0, BOS_RAMP] = 40.0
    acts[..., RAMP] = (pos - 31.5) / 16 + noise()  # the same ramp without the BOS outlier
    acts[..., QUIET] = noise()
    keep = np.ones((ROWS, N_CTX), dtype=bool)
    keep[:, 0] = False
    return tokens, acts, keep, prev, pos


@pytest.fixture(scope="module")
def planted():
    tokens, acts, keep, prev, pos = _planted()
    acc = FeatureAccumulator(acts.shape[-1], V, N_CTX)
    for s in range(0, ROWS, 50):
        sl = slice(s, s + 50)
        acc.update(torch.from_numpy(tokens[sl]), torch.from_numpy(acts[sl]), torch.from_numpy(keep[sl]),
                   pre=torch.from_numpy(acts[sl]))
    tf = token_features(VOCAB, frequent_token_ids=range(1, V), special_token_ids=[0])
    pf = position_features(N_CTX)
    table = neuron_table(0, acc, score_features(acc, tf, pf), VOCAB, min_count=1)
    labels = label_neurons(table.with_columns(pl.lit(1, dtype=pl.Int64).alias("model_id")), LabelThresholds())
    return {"tokens": tokens, "acts": acts, "keep": keep, "table": table, "labels": labels, "features": tf}


def _labels_of(labels: pl.DataFrame, idx: int) -> dict[str, dict]:
    rows = labels.filter(pl.col("idx") == idx)
    return {r["label"]: {**r, "evidence": json.loads(r["evidence"])} for r in rows.iter_rows(named=True)}


def test_vocabulary_has_a_word_feature_that_equals_the_letter_feature(planted):
    """The shadowing case of issue 10: 'word=a' covers exactly the letter-a tokens."""
    tf = planted["features"]
    word = tf.matrix[:, tf.names.index("word=a")]
    letter = tf.matrix[:, tf.names.index("letter=a")]
    assert torch.equal(word, letter) and int(word.sum()) == 4


def test_alphabet_neuron_is_labelled_whatever_its_best_feature(planted):
    """Paper: for each letter, every neuron whose VR on that letter's feature exceeds 0.35."""
    got = _labels_of(planted["labels"], ALPHA)
    assert "alphabet" in got, f"labels of the letter-a neuron: {sorted(got)}"
    alpha = got["alphabet"]
    assert alpha["family_key"] == "letter=a"
    assert alpha["evidence"]["letter"] == "a" and alpha["score"] > 0.9
    # no other neuron is an alphabet neuron
    assert set(planted["labels"].filter(pl.col("label") == "alphabet")["idx"].to_list()) == {ALPHA}


def test_unigram_takes_the_best_current_token_feature_of_any_kind(planted):
    """Paper: the best current-token feature, single token or token class, with VR > 0.5."""
    got = _labels_of(planted["labels"], YEAR)
    assert "unigram" in got, f"labels of the year neuron: {sorted(got)}"
    assert got["unigram"]["family_key"] == "year" and got["unigram"]["score"] > 0.9


def test_previous_token_ranks_by_previous_token_vr_even_when_a_current_feature_is_better(planted):
    row = planted["table"].filter(pl.col("idx") == PREV).row(0, named=True)
    assert row["best_on_previous"] is False  # its best feature is the current token ' cat'
    got = _labels_of(planted["labels"], PREV)
    assert "previous_token" in got, f"labels of the previous-token neuron: {sorted(got)}"
    ev = got["previous_token"]["evidence"]
    assert ev["feature"] == "token=' of'" and ev["rank"] == 1
    assert got["previous_token"]["score"] == pytest.approx(0.38, abs=0.05)


def _mi_per_position(fire: np.ndarray) -> float:
    """Mutual information (nats) between firing and the exact position, from the joint counts."""
    f = fire.mean()
    mi = 0.0
    for p in range(fire.shape[1]):
        q = fire[:, p].mean()
        for x, px in ((q, f), (1 - q, 1 - f)):
            if x > 0:
                mi += x * math.log(x / px) / fire.shape[1]
    return mi


def test_position_mutual_information_is_per_position(planted):
    """Paper: MI between firing and the absolute position, every position its own value."""
    acts = planted["acts"]
    table = planted["table"].sort("idx")
    for idx in (EVEN, HALF, RAMP):
        want = _mi_per_position(acts[..., idx] > 0)
        assert table["position_mi"][idx] == pytest.approx(want, abs=1e-9)
    assert table["position_mi"][EVEN] == pytest.approx(math.log(2), abs=0.01)


def test_position_threshold_admits_the_papers_example(planted):
    """A neuron with the MI of the paper's L5.386 (≈ 0.09 nats) and kurtosis < 2 is a position neuron."""
    table = planted["table"].sort("idx")
    assert 0.08 < table["position_mi"][HALF] < 0.1
    labelled = set(planted["labels"].filter(pl.col("label") == "position")["idx"].to_list())
    assert {EVEN, HALF, RAMP} <= labelled


def test_position_kurtosis_is_taken_on_the_papers_token_set(planted):
    """The paper's activation kurtosis counts every position of every context (BOS included):
    a ramp with a huge BOS activation has kurtosis ≫ 2 and is no position neuron."""
    acts = planted["acts"]
    table = planted["table"].sort("idx")
    for idx in (BOS_RAMP, RAMP, EVEN):
        want = scipy.stats.kurtosis(acts[..., idx].ravel(), fisher=False)
        assert table["kurtosis"][idx] == pytest.approx(want, rel=1e-9)
    assert table["kurtosis"][BOS_RAMP] > 10
    labelled = set(planted["labels"].filter(pl.col("label") == "position")["idx"].to_list())
    assert BOS_RAMP not in labelled and QUIET not in labelled


# ---------------------------------------------------------------- weight-based rules on rows

def _rows(**kw) -> pl.DataFrame:
    base = {"model_id": 1, "layer": 0, "idx": 0}
    base.update(kw)
    return pl.DataFrame([base])


def test_partition_is_vocab_variance_above_the_papers_cut():
    """Paper: vocabulary variance > 0.005 (≈ 4× a random direction's in GPT-2, d_model 768)."""
    random_var = 1 / 768
    row = dict(vocab_kurtosis=3.0, vocab_skew=0.1, top_token_text=" a", bottom_token_text=" b")
    got = label_neurons(_rows(vocab_var=0.006, vocab_var_ratio=0.006 / random_var, **row))
    assert got["label"].to_list() == ["partition"]
    assert json.loads(got["evidence"][0])["vocab_var"] == pytest.approx(0.006)
    assert label_neurons(_rows(vocab_var=0.004, vocab_var_ratio=0.004 / random_var, **row)).height == 0
    # a high-kurtosis neuron with a large variance is a prediction AND a partition neuron
    both = label_neurons(_rows(vocab_var=0.02, vocab_var_ratio=0.02 / random_var,
                               **{**row, "vocab_kurtosis": 40.0, "vocab_skew": 3.0}))
    assert sorted(both["label"].to_list()) == ["partition", "prediction"]
