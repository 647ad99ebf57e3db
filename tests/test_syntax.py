"""Syntax features (the paper's spaCy part-of-speech / dependency tags): tags of a model's tokens
from an English spaCy pipeline, variance reduction on them, and the syntax label.

The spaCy tests run when spaCy and an English pipeline are installed (the ``syntax`` extra, which
``make setup`` and CI install); the variance-reduction tests need neither."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from atlas.ingest.math.activation_sums import FeatureAccumulator
from atlas.ingest.math.features import position_features, token_features
from atlas.ingest.math.labels import LabelThresholds, label_neurons
from atlas.ingest.math.variance_reduction import neuron_table, score_features
from atlas.ingest.syntax import POS_TAGS, english_pipelines, syntax_status

VOCAB = ["<|endoftext|>", " The", " the", " cat", " dog", " sat", " ran", " on", " in", " mat", ".", " that", " run",
         " a", " she", " saw", " it"]


def test_a_neuron_explained_by_a_part_of_speech_is_a_syntax_neuron():
    """Same tokens, different parts of speech: the tag explains the neuron, no token feature does."""
    rng = np.random.default_rng(0)
    rows, ctx = 200, 24
    tokens = rng.integers(1, len(VOCAB), size=(rows, ctx))
    tokens[:, 0] = 0
    pos = rng.integers(0, len(POS_TAGS) - 1, size=(rows, ctx))  # tags independent of the token here
    noun = POS_TAGS.index("NOUN")
    acts = np.stack([2.0 * (pos == noun) + rng.normal(0, 0.1, (rows, ctx)),  # a noun neuron
                     rng.normal(0, 1, (rows, ctx))], -1)
    keep = np.ones((rows, ctx), dtype=bool)
    keep[:, 0] = False
    acc = FeatureAccumulator(2, len(VOCAB), ctx, tag_sizes={"pos": len(POS_TAGS)})
    for s in range(0, rows, 50):
        sl = slice(s, s + 50)
        acc.update(torch.from_numpy(tokens[sl]), torch.from_numpy(acts[sl]), torch.from_numpy(keep[sl]),
                   tags={"pos": torch.from_numpy(pos[sl])})
    scores = score_features(acc, token_features(VOCAB, range(1, len(VOCAB)), special_token_ids=[0]), position_features(ctx),
                            tag_names={"pos": list(POS_TAGS)})
    # VR of the tag feature equals the direct computation
    a, f = acts[..., 0][keep], (pos == noun)[keep]
    want = (a.var() - ((1 - f.mean()) * a[~f].var() + f.mean() * a[f].var())) / a.var()
    row = scores.names.index("pos=NOUN")
    assert not scores.on_previous[row] and scores.kinds[row] == "syntax"
    assert scores.vr[row, 0].item() == pytest.approx(want, abs=1e-9)
    table = neuron_table(0, acc, scores, VOCAB, min_count=1)
    labels = label_neurons(table.with_columns(pl.lit(1).alias("model_id")), LabelThresholds())
    syntax = labels.filter(pl.col("label") == "syntax")
    assert syntax["idx"].to_list() == [0] and syntax["family_key"][0] == "pos=NOUN"
    assert json.loads(syntax["evidence"][0])["variance_reduction"] == pytest.approx(want, abs=1e-9)


spacy_ready = pytest.mark.skipif(not syntax_status()[0], reason="needs spaCy and an English pipeline (the syntax extra)")


@spacy_ready
def test_tags_of_model_tokens_come_from_the_spacy_parse():
    from atlas.ingest.syntax import load_pipeline, tag_names, tag_rows

    nlp = load_pipeline()
    names = tag_names(nlp)
    ids = [VOCAB.index(t) for t in (" The", " cat", " sat", " on", " the", " mat", ".")]
    rows = torch.tensor([[0, *ids]])
    tags = tag_rows(rows, VOCAB, nlp, special_token_ids=[0])
    got = [names["pos"][i] for i in tags["pos"][0].tolist()]
    assert got == ["NONE", "DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"]
    deps = [names["dep"][i] for i in tags["dep"][0].tolist()]
    assert deps[2] == "nsubj" and deps[3] == "ROOT" and deps[0] == "NONE"
    # a token split into pieces takes the tags of the word it starts
    pieces = VOCAB + [" ca", "t"]
    split = torch.tensor([[0, 1, len(VOCAB), len(VOCAB) + 1, 5]])  # " The" " ca" "t" " sat"
    tags = tag_rows(split, pieces, nlp, special_token_ids=[0])
    assert [names["pos"][i] for i in tags["pos"][0].tolist()][1:] == ["DET", "NOUN", "NOUN", "VERB"]


@spacy_ready
def test_syntax_status_names_the_pipeline():
    ok, message = syntax_status()
    assert ok and english_pipelines()[0] in message


def test_syntax_status_without_spacy_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))
    ok, message = syntax_status()
    assert not ok and "spaCy is not installed" in message and "[syntax]" in message
