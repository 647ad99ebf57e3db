""""Newest wins": when a subject has two finished runs of one kind, every query and every view shows
the newest, and the older one stays readable by its run id (issue 15; issue 9's growing cohorts).

The scenario is the one issue 9 describes. On top of the synthetic atlas (its runs are the OLD
ones), a fourth model ``synth-d`` joins the cohort and the cohort is re-correlated with the new
partner set; synth-a's statistics and weights are recomputed; the cohort is re-classified. Each
NEW run's rows are the old run's rows with a change no query could produce by itself (values
shifted by +100, correlations halved, a fourth partner, family names suffixed " v2", only one
universal neuron), so every assertion tells old from new.
"""

from __future__ import annotations

import polars as pl
import pytest
import sqlalchemy as sa

from atlas import queries as q
from atlas.errors import AtlasError
from atlas.runs import begin_run
from tests.atlas_fixtures import MODEL_NAMES, build_synthetic_atlas

SHIFT = 100.0


def _publish(engine, kind: str, statements: list[str], **subject) -> int:
    """A finished run of ``kind`` whose rows are written by ``statements`` (``%(run)s`` = its id)."""
    run = begin_run(engine, kind, params={"rerun": 2}, device="cpu", **subject)
    assert run is not None

    def write(conn) -> None:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql, {"run": run.id})

    run.publish(write)
    return run.id


@pytest.fixture
def rerun(engine):
    atlas = build_synthetic_atlas(engine, include_unfinished=False)
    old = dict(atlas.run_ids)
    a = atlas.model_ids["synth-a"]
    c = atlas.model_ids["synth-c"]
    with engine.begin() as conn:  # the seeds' training step is known: universality_over_training has rows too
        conn.execute(sa.text("UPDATE model SET step = 1000, train_tokens = 1024000"))
    with engine.begin() as conn:  # a fourth seed joins the cohort
        d = conn.execute(sa.text("""
            INSERT INTO model (name, source, architecture, cohort_id, seed_label, n_layers, d_model, d_mlp, n_heads,
                               d_head, n_ctx, d_vocab, act_fn, tokenizer_id)
            SELECT 'synth-d', 'synthetic://synth-d', architecture, cohort_id, 'd', n_layers, d_model, d_mlp, n_heads,
                   d_head, n_ctx, d_vocab, act_fn, tokenizer_id FROM model WHERE id = :c RETURNING id"""),
            {"c": c}).scalar_one()
        conn.execute(sa.text("INSERT INTO neuron SELECT :d, layer, idx FROM neuron WHERE model_id = :c"), {"d": d, "c": c})
    the = atlas.planted["the"]["synth-a"]
    new: dict[str, int] = {}
    s, w, k, cl = old[f"stats:synth-a"], old[f"weights:synth-a"], old["correlation"], old["classify"]
    new["stats:synth-a"] = _publish(engine, "stats", [
        f"""INSERT INTO activation_stats SELECT %(run)s, model_id, layer, idx, count, mean + {SHIFT}, variance, skew,
                   kurtosis + {SHIFT}, pre_min, pre_max, post_mean, post_max, act_frequency, histogram
            FROM activation_stats WHERE run_id = {s}""",
        f"""INSERT INTO top_example SELECT %(run)s, model_id, layer, idx, rank, row_idx, position, value + {SHIFT}
            FROM top_example WHERE run_id = {s}""",
        f"""INSERT INTO token_activation SELECT %(run)s, model_id, layer, idx, token_id, count, mean_act + {SHIFT},
                   max_act + {SHIFT} FROM token_activation WHERE run_id = {s}""",
    ], model_id=a, dataset_id=atlas.dataset_id)
    new["weights:synth-a"] = _publish(engine, "weights", [
        f"""INSERT INTO weight_stats SELECT %(run)s, model_id, layer, idx, w_in_norm, w_out_norm + {SHIFT}, input_bias,
                   in_out_sim, l2_penalty, vocab_mean, vocab_var, vocab_skew, vocab_kurtosis, top_token_ids,
                   ARRAY(SELECT v + {SHIFT} FROM unnest(top_token_values) v)::real[], bottom_token_ids,
                   bottom_token_values FROM weight_stats WHERE run_id = {w}"""
    ], model_id=a)
    # the cohort re-correlated with partners b, c and the new d (d's rows copy c's); correlations
    # halved, so only the planted ' the' neuron (its excess kept) stays universal
    new["correlation"] = _publish(engine, "correlation", [
        f"""INSERT INTO pair_correlation SELECT %(run)s, model_id, layer, idx, other_model_id, max_corr / 2, best_layer,
                   best_idx, baseline_max FROM pair_correlation WHERE run_id = {k}""",
        f"""INSERT INTO pair_correlation SELECT %(run)s, model_id, layer, idx, {d}, max_corr / 2, best_layer, best_idx,
                   baseline_max FROM pair_correlation WHERE run_id = {k} AND other_model_id = {c}""",
        f"""INSERT INTO pair_correlation SELECT %(run)s, {d}, layer, idx, other_model_id, max_corr / 2, best_layer,
                   best_idx, baseline_max FROM pair_correlation WHERE run_id = {k} AND model_id = {c}""",
        f"""INSERT INTO correlation_edge SELECT %(run)s, model_id, layer, idx, partner_model_id, rank, partner_layer,
                   partner_idx, rho / 2 FROM correlation_edge WHERE run_id = {k}""",
        f"""INSERT INTO correlation_edge SELECT %(run)s, model_id, layer, idx, {d}, rank, partner_layer, partner_idx,
                   rho / 2 FROM correlation_edge WHERE run_id = {k} AND partner_model_id = {c}""",
        f"""INSERT INTO neuron_universality SELECT %(run)s, model_id, layer, idx, 3, max_corr / 2, mean_corr / 2,
                   min_corr / 2, mean_baseline,
                   CASE WHEN (layer, idx) = ({the[0]}, {the[1]}) THEN excess ELSE mean_corr / 2 - mean_baseline END
            FROM neuron_universality WHERE run_id = {k}""",
    ], model_id=a, cohort_id=atlas.cohort_id, dataset_id=atlas.dataset_id)
    new["classify"] = _publish(engine, "classify", [
        f"""INSERT INTO neuron_feature SELECT %(run)s, model_id, layer, idx, rank, feature || ' v2', feature_kind,
                   on_previous, variance_reduction FROM neuron_feature WHERE run_id = {cl}""",
        f"""INSERT INTO neuron_label SELECT %(run)s, model_id, layer, idx, label || '_v2', score, evidence
            FROM neuron_label WHERE run_id = {cl}""",
        f"""WITH copied AS (
                INSERT INTO family (run_id, label, name, n_members, n_models, evidence)
                SELECT %(run)s, label || '_v2', name || ' v2', n_members, n_models, evidence FROM family
                WHERE run_id = {cl} RETURNING id, name)
            INSERT INTO family_member SELECT copied.id, fm.model_id, fm.layer, fm.idx, fm.score
            FROM copied JOIN family f ON f.run_id = {cl} AND f.name || ' v2' = copied.name
            JOIN family_member fm ON fm.family_id = f.id""",
    ], cohort_id=atlas.cohort_id, dataset_id=atlas.dataset_id)
    return atlas, old, new


def test_every_view_reads_only_the_newest_run_of_each_subject(engine, rerun):
    atlas, old, new = rerun
    superseded = {old[key] for key in new}
    current = set(new.values()) | {old[key] for key in old if key not in new}
    with engine.connect() as conn:
        views = conn.execute(sa.text(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'public' ORDER BY 1")).scalars().all()
        assert "current_activation_stats" in views and len(views) >= 15
        # the pipeline's state views list every run and job on purpose (run_state: stale runs too)
        for view in sorted(set(views) - {"run_state", "queue_job"}):
            columns = conn.execute(sa.text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :v"
                " AND (column_name = 'run_id' OR column_name LIKE :pattern OR (:v = 'latest_run' AND column_name = 'id'))"),
                {"v": view, "pattern": "%\\_run\\_id"}).scalars().all()
            assert columns, f"view {view} does not say which run filled it (no run_id column)"
            for column in columns:
                seen = set(conn.execute(sa.text(f"SELECT DISTINCT {column} FROM {view} WHERE {column} IS NOT NULL")).scalars())
                assert seen, f"{view}.{column} is empty"
                assert not seen & superseded, f"{view}.{column} shows superseded runs {sorted(seen & superseded)}"
                assert seen <= current, f"{view}.{column}"

        the = atlas.planted["the"]["synth-a"]
        row = conn.execute(sa.text("SELECT * FROM neuron_overview WHERE model = 'synth-a' AND layer = :l AND idx = :i"),
                           {"l": the[0], "i": the[1]}).mappings().one()
        assert row["stats_run_id"] == new["stats:synth-a"] and row["mean"] > SHIFT - 10
        assert row["w_out_norm"] > SHIFT and row["n_partners"] == 3 and row["labels"] == ["unigram_v2"]
        assert conn.execute(sa.text("SELECT count(*) FROM universal_neuron")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT sum(n_universal) FROM layer_universality")).scalar_one() == 1
        partners = conn.execute(sa.text("SELECT other_model FROM best_partner WHERE model = 'synth-a' AND layer = :l"
                                        " AND idx = :i ORDER BY 1"), {"l": the[0], "i": the[1]}).scalars().all()
        assert partners == ["synth-b", "synth-c", "synth-d"]
        assert conn.execute(sa.text("SELECT min(value) FROM top_example_text WHERE model = 'synth-a'")).scalar_one() > SHIFT - 1
        assert conn.execute(sa.text("SELECT bool_and(family LIKE :v2) FROM family_members"), {"v2": "% v2"}).scalar_one()


def test_every_query_shows_the_newest_run_and_older_runs_stay_readable(engine, rerun):
    atlas, old, new = rerun
    the = atlas.planted["the"]["synth-a"]
    newline = atlas.planted["newline"]["synth-a"]

    rec = q.neuron(engine, "synth-a", *the).row(0, named=True)
    assert rec["mean"] > SHIFT - 10 and rec["kurtosis"] > SHIFT and rec["w_out_norm"] > SHIFT
    assert rec["n_partners"] == 3 and rec["labels"] == ["unigram_v2"] and rec["stats_run_id"] == new["stats:synth-a"]
    assert q.histogram(engine, "synth-a", *the)["count"].sum() == rec["n_tokens"]
    assert q.vocab_effects(engine, "synth-a", *the).filter(pl.col("direction") == "top")["value"].min() > SHIFT - 50
    assert q.top_examples(engine, "synth-a", *the)["value"].min() > SHIFT
    assert q.token_activations(engine, "synth-a", *the)["mean_act"].min() > SHIFT - 10

    partners = q.best_partners(engine, "synth-a", *the)
    was = q.best_partners(engine, "synth-a", *the, run_id=old["correlation"])
    assert partners["other_model"].to_list() == ["synth-b", "synth-c", "synth-d"]
    assert was["other_model"].to_list() == ["synth-b", "synth-c"]
    assert partners["max_corr"][:2].to_list() == pytest.approx([x / 2 for x in was["max_corr"]], abs=1e-6)
    assert set(q.partner_edges(engine, "synth-a", *the)["partner_model"]) == {"synth-b", "synth-c", "synth-d"}
    assert q.best_partners(engine, "synth-d", *atlas.planted["the"]["synth-c"])["other_model"].to_list() == ["synth-a"]
    assert q.labels(engine, "synth-a", *the)["label"].to_list() == ["unigram_v2"]
    assert q.labels(engine, "synth-a", *the, run_id=old["classify"])["label"].to_list() == ["unigram"]
    assert q.features(engine, "synth-a", *the)["feature"].str.ends_with(" v2").all()
    assert q.neuron_families(engine, "synth-a", *the)["label"].to_list() == ["unigram_v2"]
    page = q.neuron_page(engine, "synth-a", *the, k=3, partner_examples=1)
    assert page["partners"].height == 3 and page["top_examples"]["value"].min() > SHIFT

    universal = q.universal_neurons(engine)
    assert [(r["layer"], r["idx"]) for r in universal.iter_rows(named=True)] == [the]
    assert universal["n_partners"].to_list() == [3] and universal["kurtosis"][0] > SHIFT
    assert universal["labels"][0].to_list() == ["unigram_v2"]
    before = q.universal_neurons(engine, run_id=old["correlation"])
    assert {(r["layer"], r["idx"]) for r in before.iter_rows(named=True)} == \
        {atlas.planted[f]["synth-a"] for f in atlas.planted}
    assert q.universal_neurons(engine, label="unigram_v2").height == 1 and q.universal_neurons(engine, label="unigram").height == 0
    assert q.layer_universality(engine)["n_universal"].sum() == 1
    assert q.layer_universality(engine, run_id=old["correlation"])["n_universal"].sum() == 5
    dist = q.correlation_distribution(engine, threshold=0.5)
    assert set(dist.group_by("measure").agg(pl.col("count").sum())["count"]) == {1}
    assert q.correlation_distribution(engine, threshold=0.5, run_id=old["correlation"])["count"].sum() == 3 * 5
    scatter = q.correlation_scatter(engine)
    assert scatter.filter((pl.col("layer") == newline[0]) & (pl.col("idx") == newline[1]))["excess"][0] < 0.5
    summary = q.layer_summary(engine).filter(pl.col("model") == "synth-a")
    assert summary["n_universal"].sum() == 1 and summary["median_kurtosis"].min() > SHIFT
    props = q.universal_properties(engine, model="synth-a", by_layer=False)
    assert props.filter(pl.col("group") == "universal")["n"].max() == 1

    cohort = q.cohorts(engine).row(0, named=True)
    assert cohort["reference"] == "synth-a" and cohort["n_universal"] == 1 and cohort["n_models"] == 4

    fams = q.families(engine)
    assert fams.height == 5 and fams["family"].str.ends_with(" v2").all()
    assert not q.families(engine, run_id=old["classify"])["family"].str.ends_with(" v2").any()
    assert q.family_members(engine, "unigram: token=' the' v2").height == 3
    assert q.family_members(engine, "unigram: token=' the'").height == 0  # superseded: by name, gone
    assert q.family_layer_counts(engine)["label"].str.ends_with("_v2").all()
    assert q.label_counts(engine)["label"].str.ends_with("_v2").all()
    assert q.label_names(engine) == sorted(q.label_names(engine)) and all(x.endswith("_v2") for x in q.label_names(engine))

    current = dict(q.runs(engine).select("run_id", "current").iter_rows())
    assert not any(current[old[key]] for key in new) and all(current[i] for i in new.values())
    hits = q.neurons_for_token(engine, " the", match="exact", model="synth-a")
    assert hits["mean_act"].min() > SHIFT - 10
    assert q.top_examples(engine, "synth-a", *the, run_id=old["stats:synth-a"])["value"].max() < SHIFT
    assert set(MODEL_NAMES) < set(q.models(engine)["model"])


def test_a_run_id_of_the_wrong_kind_or_unfinished_is_refused(engine, rerun):
    atlas, old, new = rerun
    the = atlas.planted["the"]["synth-a"]
    with pytest.raises(AtlasError, match="is a stats run"):
        q.best_partners(engine, "synth-a", *the, run_id=old["stats:synth-a"])
    with pytest.raises(AtlasError, match="no run 999999"):
        q.universal_neurons(engine, run_id=999999)
