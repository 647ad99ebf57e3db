"""The query layer against a real PostgreSQL holding the synthetic atlas (planted ground truth) and
the export path. The examples of docs/queries.md are run by tests/test_docs_queries.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
import sqlalchemy as sa

from atlas import export, queries as q
from atlas.errors import AtlasError
from tests.atlas_fixtures import HIST_EDGES, MODEL_NAMES, THE, VOCAB, build_synthetic_atlas

@pytest.fixture
def atlas(engine):
    return build_synthetic_atlas(engine)


def test_neuron_record_matches_the_planted_truth(engine, atlas):
    layer, idx = atlas.planted["the"]["synth-a"]
    rec = q.neuron(engine, "synth-a", layer, idx).row(0, named=True)
    assert rec["excess"] > 0.5 and rec["mean_corr"] > 0.9 and rec["labels"] == ["unigram"]
    assert rec["n_partners"] == 2 and rec["cohort"] == "synth" and rec["dataset"] == "synth-tokens"
    # planted: hook_pre = 4 ± 0.25 on ' the', -2 ± 0.25 elsewhere, so hook_post > 0 exactly on ' the';
    # the share of ' the' is counted here from the stored token rows, not from any statistic
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT tokens FROM dataset_row")).scalars().all()
    the_share = sum(t == THE for row in rows for t in row) / (24 * 16)
    assert 0.05 < the_share < 0.5 and rec["act_frequency"] == pytest.approx(the_share, abs=1e-12)
    assert rec["mean"] == pytest.approx(-2 + 6 * the_share, abs=0.05) and rec["pre_max"] < 5.5 < rec["pre_max"] + 2
    hist = q.histogram(engine, "synth-a", layer, idx)
    assert hist.height == len(HIST_EDGES) - 1 and hist["count"].sum() == rec["n_tokens"] == 24 * 16
    assert hist["bin_lo"][0] == HIST_EDGES[0] and hist["bin_hi"][-1] == HIST_EDGES[-1]
    # by id as well as by name
    assert q.neuron(engine, atlas.model_ids["synth-a"], layer, idx)["excess"][0] == rec["excess"]

    dead = q.neuron(engine, "synth-a", *atlas.dead["synth-a"]).row(0, named=True)
    assert dead["excess"] is None and dead["skew"] is None and dead["kurtosis"] is None  # undefined, not 0
    assert q.neuron(engine, "synth-a", 0, 999).height == 0


def test_vocab_effects_and_token_activations(engine, atlas):
    layer, idx = atlas.prediction["synth-b"]
    top = q.vocab_effects(engine, "synth-b", layer, idx).filter(pl.col("direction") == "top").sort("rank")
    assert set(top["token"][:3]) == {" the", " cat", " dog"} and top["rank"][0] == 1
    assert top["value"].is_sorted(descending=True)
    bottom = q.vocab_effects(engine, "synth-b", layer, idx).filter(pl.col("direction") == "bottom")
    assert bottom.height == 20 and bottom["value"].is_sorted()
    layer, idx = atlas.planted["newline"]["synth-c"]
    fires_on = q.token_activations(engine, "synth-c", layer, idx)
    assert set(fires_on["token"][:2]) == {"\n", "\n\n"} and fires_on["mean_act"].is_sorted(descending=True)


def test_top_examples_decode_the_stored_window(engine, atlas):
    layer, idx = atlas.planted["the"]["synth-b"]
    ex = q.top_examples(engine, "synth-b", layer, idx, k=5, before=3, after=2)
    assert ex.height == 5 and ex["value"].is_sorted(descending=True) and ex["rank"].to_list() == [1, 2, 3, 4, 5]
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT row_idx, tokens FROM dataset_row")).all())
    for e in ex.iter_rows(named=True):
        full = rows[e["row_idx"]]
        lo = max(e["position"] - 3, 0)
        assert e["start"] == lo and e["token_ids"] == full[lo:e["position"] + 3]
        assert e["tokens"] == [VOCAB[t] for t in e["token_ids"]]
        assert e["tokens"][e["center"]] == " the" and e["token_ids"][e["center"]] == THE
        assert e["activations"][e["center"]] == pytest.approx(e["value"])
        assert sum(a is not None for a in e["activations"]) >= 1
    assert q.top_examples(engine, "synth-b", layer, idx, k=2).height == 2
    assert q.top_examples(engine, "synth-b", 0, 999).height == 0


def test_best_partners_find_the_planted_counterparts(engine, atlas):
    for feature, where in atlas.planted.items():
        partners = q.best_partners(engine, "synth-a", *where["synth-a"])
        assert partners["other_model"].to_list() == ["synth-b", "synth-c"], feature
        for p in partners.iter_rows(named=True):
            assert (p["best_layer"], p["best_idx"]) == where[p["other_model"]], feature
            # excess is computed by the best_partner view (the fixture writes only max_corr and baseline_max)
            assert p["max_corr"] > 0.9 and p["excess"] == pytest.approx(p["max_corr"] - p["baseline_max"], abs=1e-5)
        edges = q.partner_edges(engine, "synth-a", *where["synth-a"], k=3)
        first = edges.filter(pl.col("rank") == 1)
        assert [(r["partner_layer"], r["partner_idx"]) for r in first.iter_rows(named=True)] == \
            [where["synth-b"], where["synth-c"]]
        # a partner neuron's best partner is the reference neuron (the column maxima)
        back = q.best_partners(engine, "synth-b", *where["synth-b"])
        assert back["other_model"].to_list() == ["synth-a"]
        assert (back["best_layer"][0], back["best_idx"][0]) == where["synth-a"]
    dead = q.best_partners(engine, "synth-a", *atlas.dead["synth-a"])
    assert dead["max_corr"].is_null().all() and dead["best_layer"].is_null().all()


def test_universal_neurons_and_their_filters(engine, atlas):
    planted = {atlas.planted[f]["synth-a"] for f in atlas.planted}
    universal = q.universal_neurons(engine)
    assert {(r["layer"], r["idx"]) for r in universal.iter_rows(named=True)} == planted
    assert universal["excess"].is_sorted(descending=True) and (universal["model"] == "synth-a").all()
    assert q.universal_neurons(engine, threshold=0.99).height == 0
    assert q.universal_neurons(engine, threshold=-1).height == 32 - 1  # every neuron but the dead one
    assert q.universal_neurons(engine, cohort="synth").height == 5
    assert q.universal_neurons(engine, cohort="nope").height == 0
    assert set(q.universal_neurons(engine, layer=0)["layer"]) == {0}
    assert q.universal_neurons(engine, layer=[0, 1]).height == 5
    assert q.universal_neurons(engine, model="synth-a", limit=2).height == 2
    unigram = q.universal_neurons(engine, label="unigram")
    assert unigram.height == 3 and all("unigram" in labels for labels in unigram["labels"])
    the = q.universal_neurons(engine, family="unigram: token=' the'")
    assert [(r["layer"], r["idx"]) for r in the.iter_rows(named=True)] == [atlas.planted["the"]["synth-a"]]
    assert q.universal_neurons(engine, family="previous_token").height == 1
    by_layer = q.universal_neurons(engine, order_by="layer", descending=False)
    assert by_layer["layer"].is_sorted()
    with pytest.raises(AtlasError, match="cannot order"):
        q.universal_neurons(engine, order_by="excess; DROP TABLE model")
    with pytest.raises(AtlasError, match="no model 'nope'"):
        q.universal_neurons(engine, model="nope")


def test_layer_summaries_and_correlation_distributions(engine, atlas):
    layers = q.layer_universality(engine)
    assert layers["n_universal"].sum() == 5 and layers["n_neurons"].to_list() == [16, 16]
    assert q.layer_universality(engine, threshold=0.99)["n_universal"].sum() == 0
    assert q.layer_universality(engine, cohort="other").height == 0
    dist = q.correlation_distribution(engine, bins=20)
    assert set(dist["measure"]) == {"mean_corr", "mean_baseline", "excess"}
    for measure in ("mean_corr", "mean_baseline", "excess"):
        assert dist.filter(pl.col("measure") == measure)["count"].sum() == 31  # 32 minus the dead neuron
    assert dist["bin_lo"].min() >= 0.0 and dist["bin_hi"].max() <= 1.0
    top = q.correlation_distribution(engine, threshold=0.5).filter(pl.col("measure") == "mean_corr")
    assert top["count"].sum() == 5 and top["bin_lo"].min() >= 0.8
    scatter = q.correlation_scatter(engine)
    assert scatter.height == 31 and scatter["excess"].is_sorted(descending=True)
    summary = q.layer_summary(engine)
    assert summary.height == 3 * 2 and set(summary["model"]) == set(MODEL_NAMES)
    ref = summary.filter(pl.col("model") == "synth-a")
    assert ref["n_universal"].sum() == 5 and summary.filter(pl.col("model") == "synth-b")["n_universal"].is_null().all()
    props = {(r["property"], r["group"]): r for r in q.universal_properties(engine, by_layer=False).iter_rows(named=True)}
    assert props["kurtosis", "universal"]["n"] == 5 and props["kurtosis", "other"]["n"] == 26  # the dead one: no kurtosis
    assert props["act_frequency", "universal"]["median"] < props["act_frequency", "other"]["median"]


def test_families_members_and_labels(engine, atlas):
    fams = q.families(engine)
    assert fams.height == 5 and (fams["n_models"] == 3).all()
    assert q.families(engine, label="unigram").height == 3 and q.families(engine, cohort="x").height == 0
    members = q.family_members(engine, "unigram: token=' the'")
    assert {(r["model"], r["layer"], r["idx"]) for r in members.iter_rows(named=True)} == \
        {(m, *atlas.planted["the"][m]) for m in MODEL_NAMES}
    assert q.family_members(engine, int(members["family_id"][0])).height == 3
    counts = q.family_layer_counts(engine)
    assert counts["n_members"].sum() == 15
    assert q.label_counts(engine)["n"].sum() == 3 * 6 and set(q.label_names(engine)) == {
        "unigram", "previous_token", "position", "prediction"}
    layer, idx = atlas.planted["prev_the"]["synth-c"]
    lab = q.labels(engine, "synth-c", layer, idx)
    assert lab["label"].to_list() == ["previous_token"]
    assert json.loads(lab["evidence"][0])["feature"] == "previous token=' the'"
    feats = q.features(engine, "synth-c", layer, idx)
    assert feats["feature"][0] == "previous token=' the'" and feats["variance_reduction"].is_sorted(descending=True)
    assert q.neuron_families(engine, "synth-c", layer, idx)["label"].to_list() == ["previous_token"]


def test_search_by_token(engine, atlas):
    assert set(q.search_tokens(engine, "the")["token"]) == {" the", "The", " The"}
    assert q.search_tokens(engine, " the", match="exact")["token"].to_list() == [" the"]
    assert q.search_tokens(engine, "the", match="exact").height == 0
    # % and _ are literal in `contains`, not wildcards
    assert q.search_tokens(engine, "%", match="contains")["token"].to_list() == ["%"]
    assert q.search_tokens(engine, "_", match="contains")["token"].to_list() == ["_"]
    hits = q.neurons_for_token(engine, " the", match="exact")
    planted = {(m, *atlas.planted["the"][m]) for m in MODEL_NAMES}
    assert {(r["model"], r["layer"], r["idx"]) for r in hits.head(3).iter_rows(named=True)} == planted
    assert hits["mean_act"].is_sorted(descending=True)
    assert set(q.neurons_for_token(engine, "the", model="synth-b")["model"]) == {"synth-b"}
    assert q.neurons_for_token(engine, "zzz-no-such-token").height == 0
    with pytest.raises(AtlasError, match="unknown token match"):
        q.search_tokens(engine, "the", match="regex")  # type: ignore[arg-type]


def test_models_cohorts_runs(engine, atlas):
    assert q.models(engine)["model"].to_list() == list(MODEL_NAMES)
    assert q.models(engine, cohort="nope").height == 0
    cohort = q.cohorts(engine).row(0, named=True)
    assert cohort["n_models"] == 3 and cohort["reference"] == "synth-a" and cohort["n_universal"] == 5
    assert cohort["models"] == list(MODEL_NAMES)
    running = q.runs(engine, status="running").row(0, named=True)
    assert running["progress"] == pytest.approx(0.3) and running["tokens_total"] == 1000
    failed = q.runs(engine, status="failed").row(0, named=True)
    assert "out of memory" in failed["error"]
    assert set(q.runs(engine, kind="correlation")["status"]) == {"done"}
    assert (q.runs(engine, status="done")["progress"] == 1.0).all()
    assert "synth-a" in q.status_report(engine)


def test_neuron_page_bundle(engine, atlas):
    layer, idx = atlas.planted["punct"]["synth-a"]
    page = q.neuron_page(engine, "synth-a", layer, idx, k=4, partner_examples=2)
    assert set(page) == {"neuron", "histogram", "vocab_effects", "top_examples", "quantile_examples", "bottom_examples",
                         "token_activations", "partners", "edges", "labels", "features", "families", "partner_examples",
                         "partner_top_examples"}
    assert page["top_examples"].height == 4 and page["partners"].height == 2
    assert page["partner_examples"].height == 4 and set(page["partner_examples"]["other_model"]) == {"synth-b", "synth-c"}


def test_every_query_answers_on_an_empty_atlas(engine):
    assert q.is_empty(engine)
    assert "make demo" in q.status_report(engine)
    for frame in (q.models(engine), q.cohorts(engine), q.datasets(engine), q.runs(engine), q.universal_neurons(engine),
                  q.layer_universality(engine), q.correlation_distribution(engine), q.correlation_scatter(engine),
                  q.layer_summary(engine), q.universal_properties(engine), q.families(engine),
                  q.family_layer_counts(engine), q.label_counts(engine), q.family_members(engine, "x"),
                  q.search_tokens(engine, "the"), q.neurons_for_token(engine, "the")):
        assert frame.height == 0
    assert q.label_names(engine) == []
    with pytest.raises(AtlasError, match="make demo"):
        q.neuron(engine, "demo-a", 0, 0)


def test_export_to_parquet_and_csv(engine, atlas, tmp_path):
    universal = q.universal_neurons(engine)
    back = pl.read_parquet(export.write(universal, tmp_path / "u.parquet"))
    assert back.equals(universal)  # list columns (labels) survive
    csv = pl.read_csv(export.write(universal, tmp_path / "u.csv"))
    assert csv.height == universal.height and json.loads(csv["labels"][0]) == universal["labels"][0].to_list()
    examples = export.run_named(engine, "top-examples", {"model": "synth-a", "layer": "0", "idx": "3", "k": "3"})
    assert examples.height == 3
    assert export.run_named(engine, "universal-neurons", {"threshold": "0.6", "layer": "0,1"}).height == 3
    assert export.run_named(engine, "family-members", {"family": "1"}).height == 3
    with pytest.raises(AtlasError, match="takes no parameter"):
        export.run_named(engine, "models", {"bogus": "1"})
    with pytest.raises(AtlasError, match="needs -p model"):
        export.run_named(engine, "neuron", {"layer": "0", "idx": "1"})
    with pytest.raises(AtlasError, match="unknown query"):
        export.run_named(engine, "drop-everything", {})
    with pytest.raises(AtlasError, match="cannot tell the format"):
        export.write(universal, tmp_path / "u.txt")


@pytest.mark.slow
def test_atlas_export_command(db_url, atlas, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {"ATLAS_DATABASE_URL": db_url}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "atlas.app.cli", "export", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    res = run("universal-neurons", "-p", "threshold=0.5", "--out", str(tmp_path / "u.parquet"))
    assert res.returncode == 0, res.stderr
    assert "wrote 5 rows" in res.stdout and pl.read_parquet(tmp_path / "u.parquet").height == 5
    res = run("sql", "SELECT model, layer, n_universal FROM layer_universality", "--format", "csv",
              "--out", str(tmp_path / "layers.out"))
    assert res.returncode == 0, res.stderr
    assert pl.read_csv(tmp_path / "layers.out")["n_universal"].sum() == 5
    res = run("sql", "DELETE FROM model", "--out", str(tmp_path / "x.csv"))
    assert res.returncode != 0 and "query refused" in res.stderr and "Traceback" not in res.stderr
    res = run("neuron", "-p", "model=nope", "-p", "layer=0", "-p", "idx=0", "--out", str(tmp_path / "n.csv"))
    assert res.returncode != 0 and "no model 'nope'" in res.stderr
