"""What a researcher reads on the UI pages, checked headless with Streamlit's AppTest on the synthetic
atlas (issue 11): charts that keep one bar per token, one threshold for every count, bad URL values
named in a warning, messages that fit the situation."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import sqlalchemy as sa

from streamlit.testing.v1 import AppTest

from tests.test_ui_apptest import APP, _ok, _text, atlas, ui_env  # noqa: F401


def _open(page: str, **query: str) -> AppTest:
    """The page as a browser opens an address: the URL's parameters are there from the first run
    (AppTest's first run is the default page, which keeps only its own parameters: give them again)."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(query)
    at.run()
    _ok(at)
    at.query_params.clear()
    at.query_params.update(query)
    return at.switch_page(page).run()


def _charts(at) -> list[tuple[dict, list[dict]]]:
    """Every Vega-Lite chart on the page: (its spec, the rows of its data)."""
    out = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        rows = []
        for named in chart.proto.datasets:
            rows += pa.ipc.open_stream(named.data.data).read_all().to_pylist()
        out.append((spec, rows))
    return out


def _frames(at) -> list:
    return [d.value for d in at.dataframe]


# ---------------------------------------------------------------- bug 2: one bar per token id

def test_vocabulary_chart_keeps_one_bar_per_token_and_a_table(atlas, ui_env):
    """Six byte tokens that decode alone to '�' (as GPT-2's do) among a neuron's strongest
    suppressed tokens: the chart must still draw one bar per token id, not one summed '�' bar."""
    layer, idx = atlas.prediction["synth-a"]
    with ui_env.begin() as conn:
        bottom = conn.execute(sa.text(
            "SELECT bottom_token_ids[1:10], bottom_token_values[1:10] FROM current_weight_stats "
            "WHERE model_id = :m AND layer = :l AND idx = :i"),
            {"m": atlas.model_ids["synth-a"], "l": layer, "i": idx}).one()
        conn.execute(sa.text("UPDATE vocab_token SET text = '\ufffd' WHERE tokenizer_id = :t AND token_id = ANY(:ids)"),
                     {"t": atlas.tokenizer_id, "ids": list(bottom[0][:6])})
    at = _open("views/neuron.py", model="synth-a", layer=str(layer), idx=str(idx))
    _ok(at)
    bars = [(spec, rows) for spec, rows in _charts(at) if spec.get("encoding", {}).get("x", {}).get("title") == "W_U · w_out"]
    assert len(bars) == 2, "a chart of the boosted and one of the suppressed tokens"
    for spec, rows in bars:
        y = spec["encoding"]["y"]["field"]
        assert len(rows) == 10 and len({r[y] for r in rows}) == 10, "one bar per token id"
    suppressed = next(rows for spec, rows in bars if all(r["value"] < 0 for r in rows))
    assert sorted(r["value"] for r in suppressed) == pytest.approx(sorted(bottom[1]))  # each its own value, none summed
    # the values are readable in a table too: token id, token, value
    tables = [f for f in _frames(at) if {"token_id", "token", "value"} <= set(f.columns)]
    assert tables and set(bottom[0]) <= set().union(*(set(t["token_id"]) for t in tables))


# ---------------------------------------------------------------- bug 4: one threshold for every count

def test_overview_counts_every_number_at_the_threshold_in_the_url(atlas):
    for threshold in ("0.95", "0.3"):
        at = _open("views/overview.py", threshold=threshold)
        _ok(at)
        metrics = {m.label: m.value for m in at.metric}
        cohorts = next(f for f in _frames(at) if "n_universal" in f.columns and "tokenizer" in f.columns)
        assert int(metrics["Universal neurons"].replace(",", "")) == int(cohorts["n_universal"].sum()), threshold
    assert at.sidebar.slider[0].value == 0.3


# ---------------------------------------------------------------- bug 5: bad URL values are named

def _warnings(at) -> str:
    return "\n".join(w.value for w in at.warning)


def test_neuron_page_names_a_bad_url_value_and_what_it_shows_instead(atlas):
    at = _open("views/neuron.py", model="synth-a", layer="abc", idx="3")
    _ok(at)
    assert "layer='abc'" in _warnings(at) and "layer 0" in _warnings(at)
    assert at.query_params["layer"] == "0"
    at = _open("views/neuron.py", model="synth-a", layer="1", idx="1e9")
    _ok(at)
    assert "idx='1e9'" in _warnings(at) and "N0" in _warnings(at)
    at = _open("views/neuron.py", model="synth-a", layer="1", idx="16")  # d_mlp is 16: 0..15
    _ok(at)
    assert "idx=16" in _warnings(at) and "0–15" in _warnings(at) and "N15" in _warnings(at)
    assert at.query_params == {"model": "synth-a", "layer": "1", "idx": "15"}
    at = _open("views/neuron.py", model="synth-a", layer="0", idx="3")  # a good link: no warning
    _ok(at)
    assert not at.warning


def test_a_bad_threshold_is_named_on_the_page_the_address_opens(atlas):
    for raw in ("banana", "7"):
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params["threshold"] = raw
        at.run()  # the page the address opens (the overview): the sidebar's threshold is on every page
        _ok(at)
        assert f"threshold='{raw}'" in _warnings(at) and "showing 0.5" in _warnings(at), raw
        assert at.sidebar.slider[0].value == 0.5


def test_universal_page_names_bad_filters_in_the_address(atlas):
    at = _open("views/universal.py", layers="9", sort="banana")
    _ok(at)
    assert "layers='9'" in _warnings(at) and "showing all layers" in _warnings(at)
    assert "sort='banana'" in _warnings(at) and "showing excess" in _warnings(at)
    at = _open("views/universal.py", threshold="0.2", layers="1", sort="layer")
    _ok(at)
    assert not at.warning
    table = at.dataframe[0].value
    assert set(table["layer"]) == {1} and (table["excess"] > 0.2).all()


# ---------------------------------------------------------------- bug 6: messages that fit

def test_search_messages_fit_a_full_atlas_and_shorten_what_they_echo(atlas, ui_env):
    lonely = " O'Neil"  # a vocabulary token no neuron keeps among the tokens it fires on most
    with ui_env.begin() as conn:
        conn.execute(sa.text("DELETE FROM token_activation WHERE token_id = (SELECT token_id FROM vocab_token "
                             "WHERE tokenizer_id = :t AND text = :x)"), {"t": atlas.tokenizer_id, "x": lonely})
    at = _open("views/search.py", q=lonely, match="exact")
    _ok(at)
    text = _text(at)
    assert "make demo" not in text and "No neuron" in text, text
    long_query = "x" * 5000
    at = _open("views/search.py", q=long_query)
    _ok(at)
    text = _text(at)
    assert "make demo" not in text and "x" * 200 not in text and "…" in text, text[:300]


# ---------------------------------------------------------------- what researchers expect

def test_family_counts_among_universal_neurons_by_default_every_label_listed(atlas):
    def counts(at) -> dict[str, dict[str, int]]:
        """model (from the chart's rows) -> label -> labelled neurons, from each family-count chart."""
        out: dict[str, dict[str, int]] = {}
        for spec, rows in _charts(at):
            for r in rows:
                if {"label", "n", "n_neurons", "model"} <= set(r):
                    out.setdefault(r["model"], {}).setdefault(r["label"], 0)
                    out[r["model"]][r["label"]] += r["n"]
        return out

    at = _open("views/families.py")
    _ok(at)
    universal = counts(at)
    assert list(universal) == ["synth-a"]  # only a reference model has universal neurons
    assert universal["synth-a"] == {"unigram": 3, "previous_token": 1, "position": 1, "prediction": 0, "alphabet": 0,
                                    "suppression": 0}  # tested and found nothing: listed with 0
    at.radio(key="families.among").set_value("all neurons").run()
    _ok(at)
    everything = counts(at)
    assert set(everything) == {"synth-a", "synth-b", "synth-c"} and everything["synth-a"]["prediction"] == 1
    assert at.query_params["among"] == "all neurons"
    at = _open("views/families.py", threshold="0.95")
    _ok(at)
    assert "No universal neuron (excess > 0.95)" in _text(at)


def test_family_evidence_reads_as_a_sentence_with_model_names(atlas):
    at = _open("views/families.py", family="unigram: token=' the'")
    _ok(at)
    text = _text(at)
    assert "3 neurons in 3 models (synth-a, synth-b, synth-c)" in text and "in every seed of the cohort" in text


def test_neuron_page_colours_every_token_explains_labels_and_compares_partners_on_the_same_text(atlas):
    layer, idx = atlas.planted["the"]["synth-a"]
    at = _open("views/neuron.py", model="synth-a", layer=str(layer), idx=str(idx))
    _ok(at)
    html = [m.value for m in at.markdown if 'class="examples"' in m.value]
    top = html[0]
    assert top.count("activation ") >= 5 * 10 and "no activation stored" not in top  # every token, 5 examples
    assert len(html) >= 3 + 2  # top, quantile, most negative, and one card per partner
    partner_cards = [h for h in html if "→" in h]
    assert len(partner_cards) == 2 and all(">the<" in h.replace("> the<", ">the<") for h in partner_cards)
    text = _text(at)
    assert "The current token explains it: the feature token=' the' removes" in text
    assert '"variance_reduction"' not in "\n".join(m.value for m in at.markdown)  # no raw JSON in the text



def test_overview_says_why_nothing_passes_and_which_threshold_shows_the_strongest(atlas):
    at = _open("views/overview.py", threshold="0.95")
    _ok(at)
    text = _text(at)
    assert "No neuron of **synth-a** has excess correlation above 0.95" in text
    assert "median best-partner correlation is 0.13 against a median rotation baseline of 0.11" in text
    links = {link.label: link for link in at.get("page_link")}
    strongest = next(label for label in links if label.startswith("synth-a: the 20 strongest neurons (threshold "))
    assert float(strongest.rsplit(" ", 1)[1].rstrip(")")) < 0.1  # the 20th strongest of 31 sits near 0


def test_sql_page_examples_load_with_a_click_and_the_first_returns_rows(atlas):
    at = _open("views/sql.py")
    _ok(at)
    run = next(b for b in at.button if b.label == "Run")
    run.click().run()
    _ok(at)
    assert len(at.dataframe[0].value) == 31  # every correlated reference neuron but the dead one
    family = next(b for b in at.button if b.label == "Family members")
    family.click().run()
    assert "FROM family_members" in at.text_area(key="statement").value


def test_the_address_knows_every_page_of_the_app():
    """ui/state.PAGE_PATHS decides which page an address is on (one history entry per change of view);
    a page missing from it is taken for the overview (the Over training page was)."""
    import re

    from atlas.ui.state import PAGE_PATHS
    from tests.browser import ROOT

    pages = set(re.findall(r'url_path="([a-z_]+)"', (ROOT / "ui" / "app.py").read_text()))
    assert pages == set(PAGE_PATHS) | {"overview"}
