"""docs/queries.md runs, and says what is true (issue 15 item 3).

Every example on the page is executed against the synthetic atlas (tests/atlas_fixtures.py), with
the docs' demo names mapped to the synthetic ones: `demo-a` neuron `0, 3` becomes synth-a's planted
`' the'` neuron. Each Python expression, SQL block and shell command has a check below of what it
must answer there (the planted token, the planted partners, the planted universal set, ...); an
example without a check, or a check whose example left the page, fails the test.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pytest
import sqlalchemy as sa

from tests.atlas_fixtures import MODEL_NAMES, THE, build_synthetic_atlas

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "queries.md"


@pytest.fixture
def atlas(engine):
    return build_synthetic_atlas(engine)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def _as_synthetic(code: str) -> str:
    """The docs speak of the demo cohort; the test atlas is the synthetic one."""
    return code.replace("demo-", "synth-").replace('"demo"', '"synth"').replace("'demo'", "'synth'").replace(
        "=demo ", "=synth ")


def _the_share(engine) -> float:
    """Share of dataset tokens that are ' the', counted from the stored rows (not from any statistic)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT tokens FROM dataset_row")).scalars().all()
    return sum(t == THE for row in rows for t in row) / sum(len(row) for row in rows)


def _cells(frame: pl.DataFrame, *columns: str) -> set[tuple]:
    return set(frame.select(*columns).iter_rows())


def _python_checks(atlas, engine, ns: dict[str, Any]) -> dict[str, Callable[[Any], None]]:
    """Expression (its start, demo names mapped) -> the assertions its value must pass."""
    ref = atlas.planted_in("synth-a")
    the = atlas.planted["the"]

    def models(v):
        assert v["model"].to_list() == list(MODEL_NAMES) and (v["n_neurons"] == 32).all()

    def cohorts(v):
        assert v.rows() == [("synth", 3, "synth-a", 5)]

    def running(v):
        assert v.select("kind", "model").rows() == [("stats", "synth-b")] and v["progress"][0] == pytest.approx(0.3)

    def datasets(v):
        assert v.select("dataset", "n_rows", "context_length").rows() == [("synth-tokens", 24, 16)]

    def correlation_runs(v):
        assert v.height == 1 and v["status"][0] == "done" and v["current"][0] is True

    def universal_of_run(v):
        assert _cells(v, "layer", "idx") == ref and (v["n_partners"] == 2).all()

    def universal(v):
        assert v.height == 5 and _cells(v, "layer", "idx") == ref and (v["excess"] > 0.5).all()

    def filtered(v):
        unigram = {atlas.planted[f]["synth-a"] for f in ("the", "newline", "punct")}
        assert _cells(v, "layer", "idx") == unigram and v["kurtosis"].is_sorted(descending=True)

    def per_layer(v):
        assert v.rows() == [("synth-a", 0, 3, 3 / 16), ("synth-a", 1, 2, 2 / 16)]

    def record(v):
        excess, kurtosis, act_frequency, labels = v
        assert excess > 0.5 and kurtosis is not None and labels == ["unigram"]
        # hook_post > 0 exactly on ' the' (planted: pre = 4 ± 0.25 there, -2 ± 0.25 elsewhere)
        assert act_frequency == pytest.approx(_the_share(engine), abs=1e-12)

    def hist(v):
        assert v["count"].sum() == 24 * 16
        # planted hook_pre: -2 or 4, plus noise of sd 0.25: nothing outside 6 sd of either
        near = ((v["bin_lo"] >= -3.5) & (v["bin_hi"] <= -0.5)) | ((v["bin_lo"] >= 2.5) & (v["bin_hi"] <= 5.5))
        assert v.filter(~near)["count"].sum() == 0 and v.filter(near)["count"].sum() == 24 * 16

    def vocab(v):
        top = v.filter(pl.col("direction") == "top")
        assert top.height == 20 == v.height - 20 and top["value"].is_sorted(descending=True)

    def fires_on(v):
        assert v["token"][0] == " the" and v["mean_act"][0] > 3.5

    def labels(v):
        assert v["label"].to_list() == ["unigram"] and json.loads(v["evidence"][0])["feature"] == "token=' the'"

    def features(v):
        assert v["feature"][0] == "token=' the'" and v["variance_reduction"][0] > 0.9

    def partners(v):
        assert {r["other_model"]: (r["best_layer"], r["best_idx"]) for r in v.iter_rows(named=True)} == \
            {m: the[m] for m in MODEL_NAMES[1:]}

    def edges(v):
        first = v.filter(pl.col("rank") == 1)
        assert _cells(first, "partner_model", "partner_layer", "partner_idx") == {(m, *the[m]) for m in MODEL_NAMES[1:]}

    def partner_examples(v):
        assert set(v["other_model"]) == {"synth-b", "synth-c"}
        examples = ns["page"]["partner_examples"]
        assert all(row["tokens"][row["center"]] == " the" for row in examples.iter_rows(named=True))

    def fams(v):
        assert set(v["family"]) == {"unigram: is_newline", "unigram: is_punctuation", "unigram: token=' the'"}
        assert (v["n_models"] == 3).all()

    def layer_counts(v):
        assert v["n_members"].sum() == 15 and set(v["label"]) == {"unigram", "previous_token", "position"}

    def members(v):  # the first family by name is is_newline
        assert _cells(v, "model", "layer", "idx") == {(m, *atlas.planted["newline"][m]) for m in MODEL_NAMES}

    def tokens(v):
        assert set(v["token"]) == {" the", "The", " The"}

    def for_token(v):
        assert _cells(v.head(3), "model", "layer", "idx") == {(m, *the[m]) for m in MODEL_NAMES}

    def summary(v):
        assert v["n_universal"].to_list() == [3, 2] and v["n_neurons"].to_list() == [16, 16]

    def distribution(v):
        excess = v.filter(pl.col("measure") == "excess")
        assert excess["count"].sum() == 31 and excess.filter(pl.col("bin_lo") >= 0.5)["count"].sum() == 5

    def scatter(v):
        assert v.height == 31 and _cells(v.head(5), "layer", "idx") == ref

    def properties(v):
        p = {(r["property"], r["group"]): r for r in v.iter_rows(named=True)}
        assert v["layer"].null_count() == v.height  # pooled, as the paper's figure
        assert p["kurtosis", "universal"]["n"] == 5 and p["act_frequency", "universal"]["n"] == 5
        assert p["act_frequency", "universal"]["median"] < p["act_frequency", "other"]["median"]

    def percentiles(v):
        assert v.height == 32 and set(v["property"]) == {"kurtosis"}
        assert v["percentile"].drop_nulls().is_between(0, 100).all() and v["percentile"].null_count() == 1  # dead

    def why(v):
        row = v.row(0, named=True)
        assert row["model"] == "synth-a" and row["n_universal"] == 5 and row["top_threshold"] <= row["max_excess"]

    def family_counts(v):
        among = v.group_by("label").agg(pl.col("n").sum())
        assert dict(among.iter_rows()) == {"unigram": 3, "previous_token": 1, "position": 1, "prediction": 0,
                                           "alphabet": 0, "suppression": 0}  # synth-a's universal neurons only

    def quantile_examples(v):
        assert v.height == 5 and (v["value"] > 0).all() and v["quantile"].is_sorted()

    def on_the_same_text(v):
        assert set(v["other_model"]) == {"synth-b", "synth-c"} and v.height == 6
        assert all(row["tokens"][row["center"]] == " the" for row in v.iter_rows(named=True))

    def no_checkpoints(v):  # the synthetic atlas has no model with a training step
        assert v.is_empty() and {"step", "train_tokens"} <= set(v.columns)

    def no_checkpoint_models(v):
        assert v == []

    return {
        "q.universality_over_training(": no_checkpoints, "q.neuron_over_training(": no_checkpoints,
        "q.checkpoint_models(": no_checkpoint_models,
        "q.models(engine)": models, "q.cohorts(engine)": cohorts, 'q.runs(engine, status="running")': running,
        "q.datasets(engine)": datasets,
        'q.runs(engine, kind="correlation")': correlation_runs,
        "q.universal_neurons(engine, run_id=first)": universal_of_run,
        "universal.select(": universal, 'q.universal_neurons(engine, cohort="synth", layer=[0, 1]': filtered,
        "q.layer_universality(": per_layer, 'rec["excess"]': record, "q.histogram(": hist, "q.vocab_effects(": vocab,
        "q.token_activations(": fires_on, "q.labels(": labels, "q.features(": features, "q.best_partners(": partners,
        "q.partner_edges(": edges, 'page["partner_examples"]': partner_examples, "fams.select(": fams,
        "q.family_layer_counts(": layer_counts, "q.family_members(": members, "q.search_tokens(": tokens,
        "q.neurons_for_token(": for_token, "q.layer_summary(": summary, "q.correlation_distribution(": distribution,
        "q.correlation_scatter(": scatter, "q.universal_properties(": properties,
        "q.property_percentiles(": percentiles, "q.universality_summary(": why, "q.family_counts(": family_counts,
        "q.sampled_examples(": quantile_examples, "q.partner_examples(": on_the_same_text,
    }


def _run_block(code: str, ns: dict[str, Any]) -> list[tuple[str, Any]]:
    """Execute a block statement by statement; return (source, value) of each bare expression."""
    tree = ast.parse(code)
    values = []
    for node in tree.body:
        source = ast.get_source_segment(code, node)
        if isinstance(node, ast.Expr):
            values.append((source, eval(compile(ast.Expression(node.value), "docs/queries.md", "eval"), ns)))  # noqa: S307
        else:
            exec(compile(ast.Module([node], type_ignores=[]), "docs/queries.md", "exec"), ns)  # noqa: S102
    return values


def _match(source: str, checks: dict[str, Any]) -> str:
    keys = [k for k in checks if source.startswith(k) or k in source]
    assert len(keys) == 1, f"docs/queries.md example {source!r} has {len(keys)} checks ({keys}) — give it one"
    return keys[0]


def test_docs_python_examples_answer_what_the_planted_atlas_holds(engine, atlas, capsys):
    ns: dict[str, Any] = {"engine": engine}
    checks = _python_checks(atlas, engine, ns)
    used = set()
    for block in _blocks("python"):
        for source, value in _run_block(_as_synthetic(block), ns):
            key = _match(source, checks)
            checks[key](value)
            used.add(key)
    assert used == set(checks), f"checks without an example on the page: {set(checks) - used}"
    # the top-examples loop prints each example with its activating token in brackets
    printed = [line for line in capsys.readouterr().out.splitlines() if "[" in line]
    assert len(printed) == 5 and all("[' the']" in line for line in printed)
    assert all(row["tokens"][row["center"]] == " the" for row in ns["ex"].iter_rows(named=True))


def _sql_checks(atlas, run_ids: dict[str, int]) -> dict[str, Callable[[pl.DataFrame], None]]:
    ref = atlas.planted_in("synth-a")
    the = atlas.planted["the"]

    def universal(v):
        assert _cells(v, "layer", "idx") == ref and (v["model"] == "synth-a").all()
        assert ["unigram"] in v["labels"].to_list()

    def per_layer(v):
        assert v.filter(pl.col("model") == "synth-a")["n_universal"].to_list() == [3, 2]

    def overview(v):
        row = v.row(0, named=True)
        assert v.height == 1 and row["excess"] > 0.5 and row["labels"] == ["unigram"]
        assert row["stats_run_id"] == run_ids["stats:synth-a"] and row["correlation_run_id"] == run_ids["correlation"]

    def example_text(v):
        assert v["rank"].to_list() == [1, 2, 3, 4, 5] and (v["token"] == " the").all()

    def partners(v):
        assert {r["other_model"]: (r["best_layer"], r["best_idx"]) for r in v.iter_rows(named=True)} == \
            {m: the[m] for m in MODEL_NAMES[1:]}

    def token_neuron(v):
        assert _cells(v.head(3), "model", "layer", "idx") == {(m, *the[m]) for m in MODEL_NAMES}

    def family_members(v):
        assert v.height == 15
        for family, members in v.group_by("family"):
            feature = {"unigram: token=' the'": "the", "unigram: is_newline": "newline",
                       "unigram: is_punctuation": "punct", "previous_token: previous token=' the'": "prev_the",
                       "position: position>=8": "position"}[family[0]]
            assert _cells(members, "model", "layer", "idx") == {(m, *atlas.planted[feature][m]) for m in MODEL_NAMES}

    def ranked(v):
        rows = {r["universal"]: r for r in v.iter_rows(named=True)}
        assert rows[True]["neurons"] == 5 and rows[False]["neurons"] == 26
        assert rows[True]["kurtosis_pct"] > rows[False]["kurtosis_pct"]

    def property_view(v):
        rows = {(r["property"], r["universal"]): r for r in v.iter_rows(named=True)}
        assert rows["kurtosis", True]["neurons"] == 5 and rows["kurtosis", False]["neurons"] == 26
        assert rows["kurtosis", True]["median_percentile"] > rows["kurtosis", False]["median_percentile"]
        assert rows["act_frequency", True]["median_percentile"] < rows["act_frequency", False]["median_percentile"]

    def meanings(v):
        meaning = dict(v.select("column", "meaning").iter_rows())
        assert v["meaning"].null_count() == 0 and "mean_corr - mean_baseline" in meaning["excess"]

    def latest(v):
        done = {k: i for k, i in run_ids.items() if k not in ("running", "failed")}
        assert set(v["id"]) == set(done.values())

    def older(v):
        assert _cells(v, "layer", "idx") == ref and set(v["run_id"]) == {run_ids["correlation"]}

    return {"FROM universal_neurons(0.5)": universal, "FROM layer_universality": per_layer,
            "FROM neuron_overview WHERE": overview, "FROM top_example_text": example_text, "FROM best_partner": partners,
            "FROM token_neuron": token_neuron, "FROM family_members": family_members, "WITH ranked AS": ranked,
            "FROM neuron_property_percentile": property_view,
            "col_description": meanings, "FROM latest_run": latest, "FROM neuron_universality u": older}


def test_docs_sql_examples_answer_as_the_reader(engine, atlas):
    from atlas import readonly

    url = readonly.ensure_reader(engine)
    try:
        checks = _sql_checks(atlas, atlas.run_ids)
        used = set()
        for block in _blocks("sql"):
            key = _match(block, checks)
            checks[key](readonly.run_sql(url, _as_synthetic(block)).frame)
            used.add(key)
        assert used == set(checks), f"checks without an example on the page: {set(checks) - used}"
        for example in readonly.SQL_EXAMPLES.values():  # the SQL page's starting points
            assert readonly.run_sql(url, example).frame.height > 0, example
    finally:
        readonly.drop_reader(engine)


def test_docs_shell_examples_write_what_they_say(db_url, engine, atlas, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from atlas import readonly
    from atlas.app.cli import main

    ref = atlas.planted_in("synth-a")
    checks: dict[str, Callable[[Path], None]] = {
        "universal-neurons": lambda out: _assert_universal(pl.read_parquet(out), ref),
        "top-examples": lambda out: _assert_examples(pl.read_csv(out)),
        "sql": lambda out: _assert_equal(pl.read_csv(out)["n_universal"].sum(), 5),
    }
    monkeypatch.chdir(tmp_path)
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("atlas export")]
    assert {shlex.split(c)[2] for c in commands} == set(checks)
    try:
        for command in commands:
            args = shlex.split(_as_synthetic(command))
            result = CliRunner().invoke(main, args[1:])
            assert result.exit_code == 0, result.output
            checks[args[2]](tmp_path / args[args.index("--out") + 1])
    finally:
        readonly.drop_reader(engine)


def _assert_universal(frame: pl.DataFrame, ref: set[tuple[int, int]]) -> None:
    assert 3 <= frame.height < 5 and _cells(frame, "layer", "idx") < ref and (frame["excess"] > 0.6).all()


def _assert_examples(frame: pl.DataFrame) -> None:
    centers = [json.loads(tokens)[center] for tokens, center in frame.select("tokens", "center").iter_rows()]
    assert frame.height == 5 and centers == [" the"] * 5


def _assert_equal(got: Any, want: Any) -> None:
    assert got == want
