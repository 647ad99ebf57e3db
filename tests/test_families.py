"""Labelling rules and duplicate families: the labels on a planted GPT-2 are exactly the planted
roles; rule boundaries; families across seeds through partner edges."""

from __future__ import annotations

import json

import polars as pl
import pytest

from atlas.ingest.math.families import build_families
from atlas.ingest.math.labels import LabelThresholds, label_neurons, topic_match


# ---------------------------------------------------------------- the planted model, end to end

@pytest.fixture(scope="module")
def planted_labels(tmp_path_factory):
    from atlas.ingest.math.activation_sums import FeatureAccumulator
    from atlas.ingest.math.features import position_features, token_features
    from atlas.ingest.math.variance_reduction import neuron_table, score_features
    from atlas.ingest.math.roles import (
        attention_deactivation, bos_keys, entropy_effect, entropy_intervention, mark_entropy_candidates, role_table,
    )
    from tests.planted_gpt2 import D_MLP, N_CTX, V, build_planted, layer_acts, load_bridge

    p = build_planted(tmp_path_factory.mktemp("planted") / "model")
    bridge = load_bridge(p)
    t = LabelThresholds()
    acts = layer_acts(bridge, p.tokens)
    tf = token_features(p.vocab, frequent_token_ids=range(1, V))
    pf = position_features(N_CTX)
    tables = []
    for layer in range(2):
        acc = FeatureAccumulator(D_MLP, V, N_CTX)
        for s in range(0, p.tokens.shape[0], 16):
            sl = slice(s, s + 16)
            acc.update(p.tokens[sl], acts["post"][layer][sl], p.keep[sl], pre=acts["pre"][layer][sl])
        tables.append(neuron_table(layer, acc, score_features(acc, tf, pf), p.vocab, min_count=3))
    att = attention_deactivation(bridge.W_out, bridge.W_Q, bos_keys(bridge, 0))
    roles = role_table(bridge.W_out, bridge.W_U, p.vocab, W_in=bridge.W_in, attention=att)
    table = pl.concat(tables).join(roles, on=["layer", "idx"]).with_columns(pl.lit(7, dtype=pl.Int64).alias("model_id"))
    table = mark_entropy_candidates(table, t, n_layers=2)
    effects = {}
    for r in table.filter(pl.col("entropy_candidate")).iter_rows(named=True):
        frame = entropy_intervention(bridge, p.tokens[:16], r["layer"], r["idx"], [0.0, 0.5, 1.0, 2.0], keep=p.keep[:16])
        effects[(7, r["layer"], r["idx"])] = entropy_effect(frame, min_relative_change=t.entropy_min_relative_change)
    return p, table, label_neurons(table, t, entropy_effects=effects)


@pytest.mark.slow
def test_planted_labels_are_exactly_the_planted_roles(planted_labels):
    p, table, labels = planted_labels
    found: dict[str, set] = {}
    for r in labels.iter_rows(named=True):
        found.setdefault(r["label"], set()).add((r["layer"], r["idx"]))
        assert r["model_id"] == 7
    assert found == p.truth


@pytest.mark.slow
def test_planted_label_evidence(planted_labels):
    _, table, labels = planted_labels

    def get(label: str) -> dict:
        row = labels.filter(pl.col("label") == label).row(0, named=True)
        return {**row, "evidence": json.loads(row["evidence"])}

    unigram = labels.filter(pl.col("label") == "unigram")
    uni = {r["family_key"]: {**r, "evidence": json.loads(r["evidence"])} for r in unigram.iter_rows(named=True)}
    assert set(uni) == {"token=' of'", "starts_with=b", "topic=colours"}
    uni = uni["token=' of'"]
    assert uni["score"] > 0.99 and uni["evidence"]["feature"] == "token=' of'" and uni["idx"] == 0
    alpha = get("alphabet")
    assert alpha["family_key"] == "letter=b" and alpha["evidence"]["feature"] == "starts_with=b"
    prev = get("previous_token")
    assert prev["family_key"] == "previous token=' and'" and prev["evidence"]["feature"] == "token=' and'"
    pos = get("position")
    assert pos["evidence"]["kurtosis"] < 2 and pos["score"] == pytest.approx(pos["evidence"]["position_mi"])
    sem = get("semantic")
    assert sem["family_key"] == "topic=colours" and len(sem["evidence"]["matching_words"]) == 5
    assert get("prediction")["family_key"] in ("boosts ' cat'", "boosts ' dog'")
    ent = get("entropy")
    assert ent["evidence"]["intervention"]["confirmed"] and ent["family_key"] == "increases entropy"
    att = get("attention_deactivation")
    assert att["family_key"] == "L1H0" and att["evidence"]["z"] >= 5 and att["evidence"]["sign"] == 1
    # each label's score is the number its rule thresholds
    row = table.filter((pl.col("layer") == 0) & (pl.col("idx") == 0)).row(0, named=True)
    assert uni["score"] == pytest.approx(row["cur_vr"])


FAR = 1.25  # planted ground truth beats every threshold by this factor, and every other neuron misses it by as much


def _above(x, threshold: float) -> bool:
    return x is not None and x >= FAR * threshold


def _below(x, threshold: float) -> bool:
    return x is not None and x <= threshold / FAR


@pytest.mark.slow
def test_planted_ground_truth_is_far_from_every_threshold(planted_labels):
    """A label that comes out right only because a score landed just on the right side of a cut
    proves little: each planted neuron passes each condition of its rule by a factor FAR, and
    every other neuron fails at least one condition of that rule by the same factor."""
    p, table, labels = planted_labels
    t = LabelThresholds()
    n_layers = table["layer"].max() + 1
    effect = {(r["layer"], r["idx"]): r["score"] for r in labels.filter(pl.col("label") == "entropy").iter_rows(named=True)}

    def topic(r):
        _, share, words = topic_match(list(r["top_tokens"])[: t.topic_top_k])
        return share, len(words)

    def depth(r):
        return r["layer"] / (n_layers - 1)

    def attn(r):
        return None if r["attn_z"] is None else abs(r["attn_z"])

    # rule (ingest/math/labels.py, the paper's) → (planted: far inside, any other neuron: far outside)
    rules = {
        "unigram": (lambda r: _above(r["cur_vr"], t.unigram_vr),
                    lambda r: _below(r["cur_vr"], t.unigram_vr)),
        "alphabet": (lambda r: _above(r["alphabet_vr"], t.alphabet_vr),
                     lambda r: r["alphabet_vr"] is None or _below(r["alphabet_vr"], t.alphabet_vr)),
        "previous_token": (lambda r: _above(r["prev_vr"], t.previous_token_vr),
                           lambda r: _below(r["prev_vr"], t.previous_token_vr)),
        "position": (lambda r: _below(r["kurtosis"], t.position_kurtosis) and _above(r["position_mi"], t.position_mi),
                     lambda r: _above(r["kurtosis"], t.position_kurtosis) or _below(r["position_mi"], t.position_mi)),
        "semantic": (lambda r: _above(topic(r)[0], t.topic_share) and topic(r)[1] >= FAR * t.topic_min_tokens,
                     lambda r: _below(topic(r)[0], t.topic_share) or topic(r)[1] <= t.topic_min_tokens / FAR),
        "prediction": (lambda r: _above(r["vocab_kurtosis"], t.prediction_kurtosis) and r["vocab_skew"] >= 1,
                       lambda r: _below(r["vocab_kurtosis"], t.prediction_kurtosis) or r["vocab_skew"] <= -1),
        "suppression": (lambda r: _above(r["vocab_kurtosis"], t.suppression_kurtosis) and r["vocab_skew"] <= -1,
                        lambda r: _below(r["vocab_kurtosis"], t.suppression_kurtosis) or r["vocab_skew"] >= 1),
        "partition": (lambda r: _above(r["vocab_var"], t.partition_vocab_var)
                      and _above(r["vocab_var_ratio"], t.partition_min_var_ratio),
                      lambda r: _below(r["vocab_var"], t.partition_vocab_var)
                      or _below(r["vocab_var_ratio"], t.partition_min_var_ratio)),
        "entropy": (lambda r: depth(r) >= t.entropy_min_depth
                    and _above(r["l2_ratio"], t.entropy_l2_ratio)
                    and _below(r["vocab_var_ratio"], t.entropy_var_ratio)
                    and _above(effect.get((r["layer"], r["idx"])), t.entropy_min_relative_change),
                    lambda r: depth(r) <= t.entropy_min_depth / FAR
                    or _below(r["l2_ratio"], t.entropy_l2_ratio)
                    or _above(r["vocab_var_ratio"], t.entropy_var_ratio)),
        "attention_deactivation": (lambda r: _above(attn(r), t.attention_z) and r["attn_score"] > 0,
                                   lambda r: attn(r) is None or _below(attn(r), t.attention_z)),
    }
    assert set(rules) == set(p.truth)
    close = []
    for label, (far_inside, far_outside) in rules.items():
        for r in table.iter_rows(named=True):
            planted = (r["layer"], r["idx"]) in p.truth[label]
            if not (far_inside(r) if planted else far_outside(r)):
                close.append((label, "planted" if planted else "other", r["layer"], r["idx"]))
    assert not close, f"neurons within a factor {FAR} of a labelling threshold: {close}"


# ---------------------------------------------------------------- rules on hand-made rows

def _row(**kw) -> dict:
    base = {"model_id": 1, "layer": 0, "idx": 0}
    base.update(kw)
    return base


def _labels(rows: list[dict], **thresholds) -> list[str]:
    out = label_neurons(pl.DataFrame(rows), LabelThresholds(**thresholds))
    return sorted(out["label"].to_list())


def test_rule_boundaries():
    assert _labels([_row(cur_feature="token=' the'", cur_kind="unigram", cur_vr=0.5)]) == []
    assert _labels([_row(cur_feature="token=' the'", cur_kind="unigram", cur_vr=0.51)]) == ["unigram"]
    assert _labels([_row(cur_feature="suffix=ing", cur_kind="class", cur_vr=0.51)]) == ["unigram"]  # any kind
    assert _labels([_row(cur_feature="token=' the'", cur_kind="unigram", cur_vr=0.51)], unigram_vr=0.6) == []
    assert _labels([_row(alphabet_letter="a", alphabet_feature="starts_with=a", alphabet_vr=0.36)]) == ["alphabet"]
    assert _labels([_row(alphabet_letter="a", alphabet_feature="starts_with=a", alphabet_vr=0.34)]) == []
    assert _labels([_row(prev_feature="token=' and'", prev_kind="unigram", prev_vr=0.3)]) == ["previous_token"]
    assert _labels([_row(prev_feature="token=' and'", prev_kind="unigram", prev_vr=0.2)]) == []
    # the paper's top 25 by previous-token VR, per model
    many = [_row(idx=i, prev_feature="token=' and'", prev_kind="unigram", prev_vr=0.9 - i / 100) for i in range(30)]
    assert _labels(many) == ["previous_token"] * 25
    assert _labels(many, previous_token_top=0) == ["previous_token"] * 30
    assert _labels([_row(kurtosis=1.9, position_mi=0.09, pos_feature="position>=8")]) == ["position"]
    assert _labels([_row(kurtosis=2.1, position_mi=0.2)]) == []
    assert _labels([_row(kurtosis=1.5, position_mi=0.05)]) == []
    assert _labels([_row(kurtosis=None, position_mi=0.5)]) == []
    assert _labels([_row(vocab_kurtosis=12.0, vocab_skew=1.0, vocab_var=0.001, vocab_var_ratio=1.0)]) == ["prediction"]
    assert _labels([_row(vocab_kurtosis=12.0, vocab_skew=-1.0, vocab_var=0.001, vocab_var_ratio=1.0)]) == ["suppression"]
    assert _labels([_row(vocab_kurtosis=9.0, vocab_skew=-1.0, vocab_var=0.001, vocab_var_ratio=1.0)]) == []
    assert _labels([_row(vocab_kurtosis=1.5, vocab_skew=0.0, vocab_var=0.03, vocab_var_ratio=30.0)]) == ["partition"]
    # the paper's absolute cut, but never for a direction no more spread than ~3 random ones (small d_model)
    assert _labels([_row(vocab_kurtosis=1.5, vocab_skew=0.0, vocab_var=0.01, vocab_var_ratio=1.3)]) == []
    assert _labels([_row(attn_z=6.0, attn_score=1.0, attn_percentile=1.0, attn_head_layer=3, attn_head=2)]) == ["attention_deactivation"]
    assert _labels([_row(attn_z=-6.0, attn_score=-1.0, attn_percentile=0.0, attn_head_layer=3, attn_head=2)]) == ["attention_activation"]
    assert _labels([_row(attn_z=4.0, attn_score=1.0, attn_percentile=1.0, attn_head_layer=3, attn_head=2)]) == []
    assert _labels([_row(entropy_candidate=True, l2_ratio=3.0)]) == ["entropy_candidate"]
    assert _labels([_row(syntax_vr=0.4, best_feature="pos=ADP", best_kind="syntax", best_on_previous=False, best_vr=0.4)]) == ["syntax"]
    assert _labels([_row(syntax_vr=0.4, best_feature="token=' of'", best_kind="unigram", best_vr=0.6)]) == []
    top = [" red", " green", " blue", "ing", " cat", " yellow"]
    assert _labels([_row(top_tokens=top)]) == ["semantic"]
    assert _labels([_row(top_tokens=top[:2] + ["x", "y"])]) == []  # only 2 colour words


def test_evaluated_labels_follow_the_inputs():
    from atlas.ingest.math.labels import LABELS, evaluated_labels

    assert evaluated_labels(["layer", "idx"]) == []
    assert evaluated_labels(["cur_vr", "kurtosis", "position_mi"]) == ["unigram", "position"]
    every = {"cur_vr", "alphabet_vr", "prev_vr", "kurtosis", "position_mi", "syntax_vr", "top_tokens", "vocab_kurtosis",
             "vocab_skew", "vocab_var", "vocab_var_ratio", "entropy_candidate", "attn_z", "attn_score"}
    assert evaluated_labels(every) == list(LABELS)


def test_labels_without_inputs_and_nan():
    assert _labels([_row()]) == []
    assert _labels([_row(cur_feature=None, cur_vr=float("nan"))]) == []
    out = label_neurons(pl.DataFrame([_row(vocab_kurtosis=12.0, vocab_skew=1.0, vocab_var_ratio=float("nan"),
                                           top_token_text=" x")]))
    ev = json.loads(out["evidence"][0])
    assert ev["vocab_var_ratio"] is None and out["family_key"][0] == "boosts ' x'"


def test_thresholds_roundtrip_and_validation():
    t = LabelThresholds(unigram_vr=0.6)
    assert LabelThresholds.from_dict(t.as_dict()) == t
    assert LabelThresholds.from_dict(None) == LabelThresholds()
    with pytest.raises(ValueError, match="unknown"):
        LabelThresholds.from_dict({"unigram": 0.5})
    d = LabelThresholds().as_dict()
    assert d["unigram_vr"] == 0.5 and d["alphabet_vr"] == 0.35 and d["position_kurtosis"] == 2.0
    assert d["prediction_kurtosis"] == 10.0 and d["suppression_kurtosis"] == 10.0


def test_topic_match():
    assert topic_match([" Monday", "Friday", " red"]) == ("days", pytest.approx(2 / 3), ["friday", "monday"])
    assert topic_match([]) == (None, 0.0, [])
    assert topic_match(["zzz"])[0] is None


# ---------------------------------------------------------------- families

def _lab(model, layer, idx, label, key, score=1.0) -> dict:
    return {"model_id": model, "layer": layer, "idx": idx, "label": label, "family_key": key, "score": score}


def _edge(m, l, i, pm, pl_, pi, rho) -> dict:
    return {"model_id": m, "layer": l, "idx": i, "partner_model_id": pm, "partner_layer": pl_, "partner_idx": pi, "rho": rho}


def test_families_across_seeds_through_partner_edges():
    labels = pl.DataFrame([
        _lab(1, 0, 5, "unigram", "token=' the'", 0.9), _lab(2, 0, 9, "unigram", "token=' the'", 0.8),
        _lab(3, 1, 2, "unigram", "token=' the'", 0.7),
        _lab(1, 0, 6, "unigram", "token=' of'"), _lab(2, 0, 3, "unigram", "token=' of'"),  # edge too weak
        _lab(1, 4, 1, "prediction", "boosts ' the'"), _lab(1, 5, 1, "prediction", "boosts ' the'"),  # same model
        _lab(2, 4, 1, "prediction", "boosts ' a'"),  # different key: not linked
        _lab(3, 2, 2, "position", None), _lab(1, 2, 2, "position", None),
    ])
    edges = pl.DataFrame([
        _edge(1, 0, 5, 2, 0, 9, 0.9), _edge(1, 0, 5, 3, 1, 2, 0.8),
        _edge(1, 0, 6, 2, 0, 3, 0.3),
        _edge(1, 4, 1, 2, 4, 1, 0.95),
        _edge(1, 2, 2, 3, 2, 2, 0.7),
        _edge(1, 0, 5, 2, 7, 7, 0.99),  # partner without that label
    ])
    fams, members = build_families(labels, edges, min_rho=0.5, n_models_total=3)
    by_name = {r["name"]: r for r in fams.iter_rows(named=True)}
    assert set(by_name) == {"unigram: token=' the'", "prediction: boosts ' the'", "position"}
    the = by_name["unigram: token=' the'"]
    assert (the["n_members"], the["n_models"]) == (3, 3)
    ev = json.loads(the["evidence"])
    assert ev["every_seed"] is True and ev["n_cross_seed_edges"] == 2 and ev["mean_edge_rho"] == pytest.approx(0.85)
    m = members.filter(pl.col("family") == the["family"])
    assert sorted(m.select("model_id", "layer", "idx").rows()) == [(1, 0, 5), (2, 0, 9), (3, 1, 2)]
    assert sorted(m["score"].to_list()) == [0.7, 0.8, 0.9]
    pred = by_name["prediction: boosts ' the'"]
    assert (pred["n_members"], pred["n_models"]) == (2, 1)  # within one model
    assert json.loads(pred["evidence"])["every_seed"] is False
    assert by_name["position"]["n_models"] == 2
    # lower threshold links ' of'
    fams2, _ = build_families(labels, edges, min_rho=0.2)
    assert "unigram: token=' of'" in fams2["name"].to_list()
    # no edges: within-model families only
    fams3, _ = build_families(labels, None)
    assert fams3["name"].to_list() == ["prediction: boosts ' the'"]
    # min_members=1 keeps singletons; every labelled neuron is in exactly one family per label
    fams4, mem4 = build_families(labels, edges, min_members=1)
    assert mem4.height == labels.height


def test_families_empty():
    fams, members = build_families(label_neurons(pl.DataFrame([_row()])), None)
    assert fams.height == 0 and members.height == 0
