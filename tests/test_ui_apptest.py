"""Every UI page, run headless with Streamlit's AppTest against a real PostgreSQL: on the synthetic
atlas and on an empty one. The pages connect as the read-only role, as under ``atlas ui``."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from atlas import readonly
from tests.atlas_fixtures import build_synthetic_atlas

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
PAGES = ["views/overview.py", "views/universal.py", "views/training.py", "views/neuron.py", "views/families.py",
         "views/search.py",
         "views/runs.py", "views/sql.py"]


@pytest.fixture
def ui_env(engine, monkeypatch):
    """The environment `atlas ui` gives the app (ATLAS_DATABASE_URL is already the test database)."""
    for name in ("ATLAS_READER_URL", "ATLAS_READER_ROLE", "ATLAS_READER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    yield engine
    from atlas.ui import common

    common._reader_engine.clear()
    url = readonly.reader_url(engine.url.render_as_string(hide_password=False))
    readonly.reader_engine(url).dispose()
    readonly.drop_reader(engine)


@pytest.fixture
def atlas(ui_env):
    return build_synthetic_atlas(ui_env)


def _open(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    at.query_params.clear()
    at.query_params.update(query)
    return at.switch_page(page).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [e.value for e in at.error] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_atlas_says_what_to_run(ui_env, page):
    at = _open(page)
    _ok(at)
    assert "make demo" in _text(at), page


def test_overview(atlas):
    at = _open("views/overview.py")
    _ok(at)
    assert [m.value for m in at.metric][:4] == ["3", "1", "96", "5"]
    assert {"Universal share per layer", "Excess correlation", "Best correlation vs baseline", "Cohorts", "Models"} <= {
        s.value for s in at.subheader}
    assert len(at.get("vega_lite_chart")) >= 2
    models = next(d.value for d in at.dataframe if "d_mlp" in d.value.columns)
    assert list(models["model"]) == ["synth-a", "synth-b", "synth-c"]
    at.sidebar.slider[0].set_value(0.9).run()  # threshold
    assert at.metric[3].value == "0"


def test_universal_list_and_filters(atlas):
    at = _open("views/universal.py")
    _ok(at)
    table = at.dataframe[0].value
    assert len(table) == 5 and list(table["neuron"])[0].startswith("neuron?model=synth-a&layer=")
    assert list(table["excess"]) == sorted(table["excess"], reverse=True)
    at.selectbox(key="universal.label").set_value("unigram").run()
    assert len(at.dataframe[0].value) == 3
    assert at.query_params["label"] == "unigram"  # every filter is in the URL
    at.selectbox(key="universal.label").set_value("any").run()
    at.slider(key="app.threshold").set_value(0.95).run()
    assert at.query_params["threshold"] == "0.95"
    assert not at.dataframe and "No neuron of **synth-a** has excess correlation above 0.95" in _text(at)


def test_training_page_without_checkpoints_says_how_to_get_them(atlas):
    at = _open("views/training.py")
    _ok(at)
    assert "No training checkpoints correlated yet" in _text(at) and "--over-training" in _text(at)


@pytest.mark.slow
def test_training_page_charts_the_checkpoints(ui_env, tiny_cohort, tmp_path, monkeypatch):
    from atlas import queries
    from atlas.ingest.runs.correlate import CorrelateOptions
    from atlas.ingest.runs.stats import StatsOptions
    from atlas.ingest.runs.training import correlate_over_training, register_zoo_cohort

    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))
    tiny_cohort.store_dataset(ui_env)
    register_zoo_cohort(ui_env, tiny_cohort.paths, cohort="tiny", labels=tiny_cohort.labels,
                        options=StatsOptions(device="cpu", progress=False))
    correlate_over_training(ui_env, "tiny", "tiny", CorrelateOptions(device="cpu", progress=False,
                                                                     log=lambda _m: None, batch_size=16))
    at = _open("views/training.py")
    _ok(at)
    assert {"Universal share of tiny-a's neurons (excess > 0.5)", "One neuron through training"} <= {
        s.value for s in at.subheader}
    assert len(at.get("vega_lite_chart")) == 2
    at.slider(key="app.threshold").set_value(0.1).run()
    _ok(at)
    assert "excess > 0.1" in " ".join(s.value for s in at.subheader)
    layer, idx = int(at.number_input(key="neuron_layer").value), int(at.number_input(key="neuron_idx").value)
    want = queries.neuron_over_training(ui_env, "tiny-a", layer, idx)
    assert want.height == 3  # two checkpoints and the final model
    at.number_input(key="neuron_idx").set_value((idx + 1) % 64).run()
    _ok(at)
    # the overview summarises the final models; the checkpoints are one link away
    at = _open("views/overview.py")
    _ok(at)
    assert at.metric[0].value == "3" and list(at.dataframe[0].value["cohort"]) == ["tiny"]
    assert "6 training checkpoints: universality over training →" in [link.label for link in at.get("page_link")]


def test_neuron_page_opens_the_neuron_named_in_the_url(atlas):
    layer, idx = atlas.planted["the"]["synth-b"]
    at = _open("views/neuron.py", model="synth-b", layer=str(layer), idx=str(idx))
    _ok(at)
    text = _text(at)
    assert f"synth-b · L{layer} · N{idx}" in text and "unigram" in text
    assert {"Activation histogram", "Vocabulary effects: W_U · w_out", "Examples", "Best partner in every other seed",
            "Labels and evidence"} <= {s.value for s in at.subheader}
    partner_links = [link.label for link in at.get("page_link")]
    ref_layer, ref_idx = atlas.planted["the"]["synth-a"]
    assert f"synth-a · L{ref_layer} · N{ref_idx}" in partner_links  # best partner in the other seed, linked
    assert at.query_params == {"model": "synth-b", "layer": str(layer), "idx": str(idx)}
    # the examples highlight ' the' at the activating position
    assert "outline" in text and ">the<" in text.replace("&nbsp;", " ").replace("> the<", ">the<")
    # picking another neuron rewrites the URL (all three parameters, so it can be shared)
    at.number_input(key="n_idx").set_value((idx + 1) % 16).run()
    _ok(at)
    assert at.query_params == {"model": "synth-b", "layer": str(layer), "idx": str((idx + 1) % 16)}
    # the context-width control changes the window
    at.slider(key="neuron.context").set_value(2).run()
    _ok(at)


def test_neuron_page_without_parameters_and_with_a_bad_link(atlas):
    at = _open("views/neuron.py")
    _ok(at)
    assert at.query_params["model"] == "synth-a"  # starts at the most universal neuron, URL filled in
    at = _open("views/neuron.py", model="no-such-model", layer="0", idx="0")
    _ok(at)
    assert "model='no-such-model' in the address is not a model of the atlas — showing synth-a" in _text(at)
    at = _open("views/neuron.py", model="synth-a", layer="7", idx="999")  # out of range: clamped
    _ok(at)
    assert at.query_params == {"model": "synth-a", "layer": "1", "idx": "15"}


def _frame_with(at: AppTest, *columns: str):
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def test_families_page(atlas):
    at = _open("views/families.py")
    _ok(at)
    families = _frame_with(at, "family_id", "n_members")
    assert len(families) == 5
    family_id = int(families["family_id"].iloc[-1])
    at = _open("views/families.py", family=str(family_id))
    _ok(at)
    members = _frame_with(at, "model", "seed_label", "score")
    assert len(members) == 3 and set(members["model"]) == {"synth-a", "synth-b", "synth-c"}


def test_search_page(atlas):
    at = _open("views/search.py", q=" the")
    at.radio(key="search.match").set_value("exact").run()
    _ok(at)
    hits = at.dataframe[0].value
    planted = {(m, *atlas.planted["the"][m]) for m in ("synth-a", "synth-b", "synth-c")}
    top3 = {(r.model, r.layer, r.idx) for r in hits.head(3).itertuples()}
    assert top3 == planted
    at.text_input(key="search.q").input("' OR 1=1; DROP TABLE model; --").run()
    _ok(at)
    assert "No vocabulary token matches" in _text(at)


def test_runs_page_shows_progress_and_failures(atlas):
    at = _open("views/runs.py")
    _ok(at)
    assert any("out of memory" in e.value for e in at.error)
    # running, stale, queued, done, failed: the fixture's "running" run has no live process holding it
    assert [m.value for m in at.metric] == ["0", "1", "0", "9", "1"]
    assert any("is stale" in w.value for w in at.warning)
    assert len(at.get("progress")) == 1 and at.get("progress")[0].value == 30


def test_sql_page_answers_queries_and_refuses_writes(atlas, ui_env):
    at = _open("views/sql.py")
    _ok(at)
    at.text_area(key="statement").set_value("SELECT model, layer, idx FROM universal_neuron")
    at.button[0].click().run()  # a form: set the text and submit in one run
    _ok(at)
    assert len(at.dataframe[0].value) == 5
    for attack in ("DROP TABLE model", "SELECT 1; DELETE FROM run", "UPDATE model SET name = 'evil'",
                   "INSERT INTO cohort (name) VALUES ('evil')", "CREATE TABLE evil (x int)"):
        at.text_area(key="statement").set_value(attack)
        at.button[0].click().run()
        _ok(at)
        assert at.error and ("refused" in at.error[0].value or "one statement" in at.error[0].value), attack
        assert not at.dataframe
    with ui_env.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model WHERE name LIKE 'synth-%'")).scalar_one() == 3
        assert conn.execute(sa.text("SELECT count(*) FROM run")).scalar_one() == 11
        assert conn.execute(sa.text("SELECT count(*) FROM cohort")).scalar_one() == 1


@pytest.mark.parametrize("reader_from", ["the app", "ATLAS_READER_URL"])
def test_the_ui_connects_as_the_reader_role(atlas, ui_env, monkeypatch, reader_from):
    """Whether the app creates the reader itself or `atlas ui` hands it ATLAS_READER_URL, its
    queries run as the read-only role, and a write through its engine is refused by the server."""
    from atlas.ui import common

    role = readonly.reader_role_name(ui_env.url.render_as_string(hide_password=False))
    assert role != ui_env.url.username
    if reader_from == "ATLAS_READER_URL":
        monkeypatch.setenv("ATLAS_READER_URL", readonly.ensure_reader(ui_env))
    at = _open("views/sql.py")
    at.text_area(key="statement").set_value("SELECT current_user AS who, session_user AS login")
    at.button[0].click().run()
    _ok(at)
    assert list(at.dataframe[0].value.iloc[0]) == [role, role]
    engine = common.engine()  # the engine every page queries through
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == role
        with pytest.raises(sa.exc.DBAPIError) as refused:
            conn.execute(sa.text("INSERT INTO cohort (name) VALUES ('evil')"))
    assert refused.value.orig.sqlstate == "25006"  # read_only_sql_transaction: the role's default
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION READ WRITE"))
        with pytest.raises(sa.exc.DBAPIError) as refused:
            conn.execute(sa.text("INSERT INTO cohort (name) VALUES ('evil')"))
    assert refused.value.orig.sqlstate == "42501"  # insufficient_privilege: and it may not write anyway
    with ui_env.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cohort")).scalar_one() == 1


def _atlas(db_url: str, *args: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {"ATLAS_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "atlas.app.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_create_reader_and_ui_commands(ui_env, db_url):
    import socket

    res = _atlas(db_url, "db", "create-reader")
    assert res.returncode == 0, res.stderr
    assert "read-only role ready" in res.stdout and "_reader" in res.stdout
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _atlas(db_url, "ui", "--port", str(port))
    assert res.returncode == 2 and "pass another --port" in res.stderr and "Traceback" not in res.stderr
