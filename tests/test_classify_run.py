"""End to end: `classify` on the tiny trained cohort stores features, labels and cross-seed
families in one run; stored VR equals a direct numpy computation; a repeat is a no-op."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
import torch

pytestmark = pytest.mark.slow
CONTEXT = 32  # the tiny cohort's context length


def _post(checkpoint, rows: torch.Tensor) -> np.ndarray:
    """float64 hook_post from plain transformers (not the code under test): [rows, ctx, L, d_mlp]."""
    from tests.reference import hf_mlp_activations

    return hf_mlp_activations(checkpoint, rows)["post"]


def _feature_mask(name: str, vocab: list[str], special: set[int]) -> np.ndarray | None:
    """The indicator over vocabulary ids (or positions) of a feature, built from its name as the
    features docstring defines it (``token='x'``, ``word=w``, ``starts_with=c``, ``letter=c``,
    ``leading_space``, ``capitalised``, ``position=p``, ``position in [lo,hi)``, ``position>=k``);
    None for features without a one-line definition (topics, suffixes, …)."""
    import ast
    import re

    words = ["" if i in special else t.strip() for i, t in enumerate(vocab)]
    if name.startswith("token="):
        text = ast.literal_eval(name[len("token="):])
        return np.array([t == text for t in vocab])
    if name.startswith("word="):
        return np.array([w.lower() == name[len("word="):] for w in words])
    if name.startswith("starts_with="):
        return np.array([w[:1].lower() == name[-1] for w in words])
    if name.startswith("letter="):
        return np.array([w.lower() == name[-1] for w in words])
    if name == "leading_space":
        return np.array([i not in special and t.startswith(" ") and t.strip() != "" for i, t in enumerate(vocab)])
    if name == "capitalised":
        return np.array([w[:1].isupper() for w in words])
    positions = np.arange(CONTEXT)
    if m := re.fullmatch(r"position=(\d+)", name):
        return positions == int(m[1])
    if m := re.fullmatch(r"position in \[(\d+),(\d+)\)", name):
        return (positions >= int(m[1])) & (positions < int(m[2]))
    if m := re.fullmatch(r"position>=(\d+)", name):
        return positions >= int(m[1])
    return None


def _store_correlation(engine, cohort_id: int, dataset_id: int, ids: list[int], posts: list[np.ndarray],
                       keep: np.ndarray, k: int = 5) -> int:
    """A correlation run whose partner edges are exact float64 Pearson correlations (reference = ids[0])."""
    from atlas.runs import begin_run

    flat = [p[keep].reshape(int(keep.sum()), -1) for p in posts]
    d_mlp = posts[0].shape[-1]

    def z(x: np.ndarray) -> np.ndarray:
        sd = x.std(0)
        return np.where(sd > 1e-8, (x - x.mean(0)) / np.where(sd > 1e-8, sd, 1), np.nan)

    za = z(flat[0])
    edges = []
    for m, pid in enumerate(ids[1:], start=1):
        rho = (za.T @ z(flat[m])) / za.shape[0]  # [N_a, N_m]
        for i in range(rho.shape[0]):
            if np.isnan(rho[i]).all():
                continue
            order = np.argsort(-np.nan_to_num(rho[i], nan=-2))[:k]
            for rank, j in enumerate(order, start=1):
                edges.append({"model_id": ids[0], "layer": i // d_mlp, "idx": i % d_mlp, "partner_model_id": pid,
                              "rank": rank, "partner_layer": int(j) // d_mlp, "partner_idx": int(j) % d_mlp,
                              "rho": float(rho[i, j])})
    run = begin_run(engine, "correlation", model_id=ids[0], cohort_id=cohort_id, dataset_id=dataset_id,
                    params={"test": "exact edges"}, device="cpu")
    with run:
        run.publish({"correlation_edge": pl.DataFrame(edges)})
    return run.id


@pytest.fixture
def classified(engine, tiny_cohort, atlas_home):
    from atlas.ingest.runs.classify import ClassifyOptions, ClassifySubject, run_classify
    from atlas.ingest.models import load_model
    from atlas.ingest.store import register_model

    info = tiny_cohort.store_dataset(engine)
    loaded, ids = [], []
    for path, label in zip(tiny_cohort.paths, tiny_cohort.labels):
        m = load_model(str(path))
        ids.append(register_model(engine, m, cohort="tiny", seed_label=label))
        loaded.append(m)
    rows = tiny_cohort.rows
    keep = ~np.isin(rows.numpy(), tiny_cohort.filter_rule["exclude_token_ids"])
    posts = [_post(path, rows) for path in tiny_cohort.paths]
    with engine.connect() as conn:
        cohort_id = conn.execute(sa.text("SELECT id FROM cohort WHERE name = 'tiny'")).scalar_one()
    _store_correlation(engine, cohort_id, info.id, ids, posts, keep)
    messages: list[str] = []
    config = ClassifyOptions(min_token_count=3, batch_size=32, device="cpu", universal_only=False, log=messages.append)
    run_id = run_classify(engine, ClassifySubject(cohort="tiny"), info.name, config).run_id
    return {"engine": engine, "info": info, "ids": ids, "loaded": loaded, "posts": posts, "keep": keep,
            "rows": rows, "run_id": run_id, "config": config, "messages": messages, "cohort": tiny_cohort}


def test_classify_stores_features_labels_families(classified):
    engine, run_id, ids = classified["engine"], classified["run_id"], classified["ids"]
    assert run_id is not None
    with engine.connect() as conn:
        run = conn.execute(sa.text("SELECT kind, status, cohort_id, model_id, params FROM run WHERE id = :i"),
                           {"i": run_id}).mappings().one()
        n_feat = conn.execute(sa.text("SELECT model_id, count(*) FROM neuron_feature WHERE run_id = :i GROUP BY model_id"),
                              {"i": run_id}).all()
        labels = pl.DataFrame(conn.execute(sa.text(
            "SELECT model_id, layer::int AS layer, idx, label, score, evidence::text AS evidence FROM neuron_label "
            "WHERE run_id = :i"), {"i": run_id}).mappings().all())
        fams = conn.execute(sa.text("SELECT id, label, name, n_members, n_models, evidence FROM family WHERE run_id = :i"),
                            {"i": run_id}).mappings().all()
        members = conn.execute(sa.text("SELECT family_id, model_id, layer, idx FROM family_member fm "
                                       "JOIN family f ON f.id = fm.family_id WHERE f.run_id = :i"), {"i": run_id}).all()
    assert (run["kind"], run["status"], run["model_id"]) == ("classify", "done", None)
    params = run["params"]
    assert params["thresholds"]["unigram_vr"] == 0.5 and params["thresholds"]["alphabet_vr"] == 0.35
    assert params["models"] == [m.name for m in classified["loaded"]]
    assert "syntax" in params["result"] and params["result"]["n_labels"] == labels.height
    # every label kind that was evaluated is listed, with 0 when it found nothing; the others say why
    result = params["result"]
    assert result["counted_among"] == "all neurons"
    for label in ("unigram", "alphabet", "previous_token", "position", "semantic", "prediction", "suppression",
                  "partition", "entropy", "entropy_candidate", "attention_deactivation", "attention_activation"):
        assert label in result["label_counts"], label
    assert 0 in result["label_counts"].values()
    assert sum(result["label_counts"].values()) == labels.height
    assert ("syntax" in result["label_counts"]) != ("syntax" in result["not_evaluated"])
    assert set(result["label_counts"]) | set(result["not_evaluated"]) == set(
        __import__("atlas.ingest.math.labels", fromlist=["LABELS"]).LABELS)
    assert {m for m, _ in n_feat} == set(ids)
    assert all(n <= 2 * 64 * classified["config"].top_k_features for _, n in n_feat)
    # labels carry evidence; the trained cohort has clear unigram neurons in every seed
    assert labels.height > 0
    assert all(isinstance(json.loads(e), dict) and "rule" in json.loads(e) for e in labels["evidence"])
    unigram_models = set(labels.filter(pl.col("label") == "unigram")["model_id"].to_list())
    assert unigram_models == set(ids)
    # families: every member is a labelled neuron with the family's label; some span seeds
    assert fams
    label_set = set(labels.select("model_id", "layer", "idx", "label").iter_rows())
    fam_label = {f["id"]: f["label"] for f in fams}
    for fid, m, l, i in members:
        assert (m, l, i, fam_label[fid]) in label_set
    assert max(f["n_models"] for f in fams) >= 2
    assert sum(1 for f in fams if f["evidence"]["n_cross_seed_edges"] > 0) >= 1
    for f in fams:
        assert f["n_members"] == sum(1 for fid, *_ in members if fid == f["id"])
    print("\nlabel counts:", params["result"]["label_counts"], "families:",
          sorted((f["name"], f["n_members"], f["n_models"]) for f in fams)[:40])

    # a repeat is a no-op, through the API and the CLI
    from click.testing import CliRunner

    from atlas import queries
    from atlas.app.cli import main
    from atlas.ingest.runs.classify import ClassifySubject, run_classify

    again = run_classify(engine, ClassifySubject(cohort="tiny"), classified["info"].name, classified["config"])
    assert again.status == "skipped" and again.run_id is None
    result = CliRunner().invoke(main, ["classify", "--cohort", "tiny", "--dataset", "tiny", "--min-token-count", "3",
                                       "--batch-size", "32", "--all-neurons"])
    assert result.exit_code == 0, result.output
    assert "already done" in result.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run WHERE kind = 'classify'")).scalar() == 1
    # the query layer sees the families and per-layer counts
    assert queries.families(engine).height == len(fams)
    counts = queries.family_layer_counts(engine, cohort="tiny")
    assert counts.height > 0 and set(counts["layer"].to_list()) <= {0, 1}
    assert counts["n_members"].sum() == len(members)


def test_stored_variance_reduction_matches_numpy(classified):
    engine, run_id = classified["engine"], classified["run_id"]
    rows, keep = classified["rows"].numpy(), classified["keep"]
    loaded, ids, posts = classified["loaded"], classified["ids"], classified["posts"]
    tok = classified["cohort"].tokenizer
    vocab = [tok.decode([i]) for i in range(loaded[0].d_vocab)]
    special = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
    assert rows.shape[1] == CONTEXT
    prev = np.concatenate([np.full((rows.shape[0], 1), -1), rows[:, :-1]], 1)
    pos = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT model_id, layer::int, idx, feature, on_previous, feature_kind, variance_reduction::float8 "
            "FROM neuron_feature WHERE run_id = :i AND rank <= 2 ORDER BY model_id, layer, idx, rank"),
            {"i": run_id}).all()
    checked: dict[str, int] = {}
    for model_id, layer, idx, feature, on_previous, kind, vr in stored:
        a = posts[ids.index(model_id)][..., layer, idx][keep]
        if kind == "syntax":  # a part-of-speech / dependency tag of the token (spaCy installed)
            from atlas.ingest.syntax import load_pipeline, tag_names, tag_rows

            if "tags" not in locals():
                nlp = load_pipeline()
                tags, names = tag_rows(torch.from_numpy(rows), vocab, nlp, special_token_ids=special), tag_names(nlp)
            tag, value = feature.split("=", 1)
            on = (tags[tag] == names[tag].index(value)).numpy()
            on_prev = np.concatenate([np.zeros((rows.shape[0], 1), dtype=bool), on[:, :-1]], 1)
            f = (on_prev if on_previous else on)[keep]
            p1 = f.mean()
            ref = (a.var() - ((1 - p1) * a[~f].var() + p1 * a[f].var())) / a.var()
            assert vr == pytest.approx(ref, abs=2e-6), (feature, on_previous)
            checked[kind] = checked.get(kind, 0) + 1
            continue
        mask = _feature_mask(feature, vocab, special)
        if mask is None:
            continue
        if kind == "position":
            f = mask[pos[keep]]
        else:
            src = prev[keep] if on_previous else rows[keep]
            f = np.where(src >= 0, mask[np.maximum(src, 0)], False)
        p1 = f.mean()
        ref = (a.var() - ((1 - p1) * a[~f].var() + p1 * a[f].var())) / a.var()
        assert vr == pytest.approx(ref, abs=2e-6), (feature, on_previous)  # float4 column
        checked[kind] = checked.get(kind, 0) + 1
    assert sum(checked.values()) >= 20 and {"unigram", "alphabet", "class"} <= set(checked), checked


def test_cli_errors_are_one_line(engine):
    from click.testing import CliRunner

    from atlas.app.cli import main

    result = CliRunner().invoke(main, ["classify", "--cohort", "nope", "--dataset", "nope"])
    assert result.exit_code != 0
    assert "no dataset named nope" in result.output or "no cohort named nope" in result.output
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["classify", "--cohort", "x", "--dataset", "y", "--threshold", "bogus=1"])
    assert bad.exit_code != 0 and "bad --threshold" in bad.output


def test_killed_run_resumes_from_checkpoint(engine, tiny_cohort, atlas_home, tmp_path):
    import shutil

    from atlas.errors import AtlasError
    from atlas.ingest.runs.classify import ClassifyOptions, ClassifySubject, run_classify
    from atlas.ingest.models import load_model
    from atlas.ingest.store import register_model

    info = tiny_cohort.store_dataset(engine)
    copy = tmp_path / "models" / tiny_cohort.names[1]
    shutil.copytree(tiny_cohort.paths[1], copy)
    register_model(engine, load_model(str(tiny_cohort.paths[0])), cohort="pair", seed_label="a")
    register_model(engine, load_model(str(copy)), cohort="pair", seed_label="b")
    messages: list[str] = []
    config = ClassifyOptions(min_token_count=3, batch_size=32, max_rows=64, device="cpu", universal_only=False,
                             log=messages.append)

    copy.rename(tmp_path / "gone")  # the second model's checkpoint disappears mid-run
    with pytest.raises(AtlasError, match="no model checkpoint directory"):
        run_classify(engine, ClassifySubject(cohort="pair"), info.name, config)
    with engine.connect() as conn:
        status, error = conn.execute(sa.text("SELECT status, error FROM run WHERE kind = 'classify'")).one()
    assert status == "failed" and "no model checkpoint directory" in error
    assert list((atlas_home / "checkpoints").glob("classify-*.pt"))

    (tmp_path / "gone").rename(copy)
    messages.clear()
    run_id = run_classify(engine, ClassifySubject(cohort="pair"), info.name, config).run_id
    assert any("restored from checkpoint" in m for m in messages)
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM run WHERE id = :i"), {"i": run_id}).scalar_one()
        models = conn.execute(sa.text("SELECT DISTINCT model_id FROM neuron_feature WHERE run_id = :i"), {"i": run_id}).all()
    assert status == "done" and len(models) == 2
    assert not list((atlas_home / "checkpoints").glob(f"classify-*-run{run_id}-*.pt"))


def test_families_are_counted_among_universal_neurons_by_default(engine, tiny_cohort, atlas_home):
    """The paper explains and counts families among universal neurons (excess correlation above
    the threshold); every other neuron gets no features and no labels. Without a correlation run
    the default refuses with a one-line hint."""
    from atlas.errors import AtlasError
    from atlas.ingest.models import load_model
    from atlas.ingest.runs.classify import ClassifyOptions, ClassifySubject, run_classify
    from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation
    from atlas.ingest.store import register_model

    info = tiny_cohort.store_dataset(engine)
    for path, label in zip(tiny_cohort.paths, tiny_cohort.labels):
        register_model(engine, load_model(str(path)), cohort="tiny", seed_label=label)
    config = ClassifyOptions(min_token_count=3, batch_size=32, universal_threshold=0.05, device="cpu",
                             log=lambda m: None)
    with pytest.raises(AtlasError, match="run `atlas correlate` first, or pass --all-neurons"):
        run_classify(engine, ClassifySubject(cohort="tiny"), info.name, config)
    run_correlation(engine, "tiny", info.name, CorrelateOptions(device="cpu", progress=False, log=lambda m: None))
    run_id = run_classify(engine, ClassifySubject(cohort="tiny"), info.name, config).run_id
    with engine.connect() as conn:
        universal = set(conn.execute(sa.text("""
            SELECT model_id, layer::int, idx FROM neuron_universality WHERE excess > 0.05
            UNION SELECT model_id, layer::int, idx FROM pair_correlation p
            WHERE p.model_id <> (SELECT model_id FROM run WHERE kind = 'correlation') AND max_corr - baseline_max > 0.05
        """)).all())
        featured = set(conn.execute(sa.text("SELECT DISTINCT model_id, layer::int, idx FROM neuron_feature WHERE run_id = :r"),
                                    {"r": run_id}).all())
        labelled = set(conn.execute(sa.text("SELECT DISTINCT model_id, layer::int, idx FROM neuron_label WHERE run_id = :r"),
                                    {"r": run_id}).all())
        result = conn.execute(sa.text("SELECT params->'result' FROM run WHERE id = :r"), {"r": run_id}).scalar()
    assert universal and featured and featured <= universal and labelled <= universal
    assert len(universal) < 3 * 2 * 64  # a real subset
    assert result["counted_among"] == "universal neurons (excess correlation > 0.05)"
