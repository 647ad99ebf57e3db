"""The atlas as a researcher uses it, in a real browser (issue 11's "done when", issue 15's claims
about live refresh and downloads): overview → universal list at threshold 0.2 (typed into the
address) → a neuron → its partner → Back → Back, checking the address and the content at every
step and saving a screenshot of each; the runs page refreshing by itself while a run progresses;
and the CSV downloads holding what the query layer answers."""

from __future__ import annotations

import io
import re
from urllib.parse import parse_qs, urlparse

import polars as pl
import pytest
import sqlalchemy as sa

from atlas import queries
from tests.browser import artifacts, browser, chromium, served_atlas, settle  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}


def _heading(page, expected: str) -> str:
    """The neuron heading, once it reads ``expected`` (a page under load may still be drawing)."""
    page.locator("h3", has_text=expected).first.wait_for(timeout=30_000)
    return page.locator("h3", has_text=expected).first.inner_text()


def _coloured_tokens(page) -> int:
    """Tokens of the examples on the page that show an activation on hover."""
    return page.locator('.examples .tok[title*="activation"]').count()


def test_overview_universal_neuron_partner_back_back(served_atlas, browser, engine, artifacts):
    base, atlas = served_atlas
    page = browser.new_context(viewport={"width": 1400, "height": 1500}).new_page()
    shots = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=str(artifacts / f"walk-{next(shots):02d}-{name}.png"), full_page=True)

    # 1. the overview: the headline counts and the paper's figures
    page.goto(f"{base}/")
    settle(page)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
    assert urlparse(page.url).path in ("/", "/overview")
    assert page.get_by_text("Universal share per layer").is_visible()
    assert page.get_by_text("What distinguishes universal neurons").is_visible()
    assert page.title() == "Neuron Atlas"
    shot("overview")

    # 2. the universal list, threshold 0.2 typed into the address
    page.goto(f"{base}/universal?threshold=0.2")
    settle(page)
    assert _query(page.url) == {"threshold": "0.2"}
    assert "0.20" in page.locator('[data-testid="stSlider"]').first.inner_text()
    expected = queries.universal_neurons(engine, threshold=0.2, limit=2000)
    assert page.get_by_text(f"{expected.height:,} neurons with excess correlation above 0.2").is_visible()
    shot("universal")

    # 3. the strongest neuron: select its row, open it in this tab
    first = expected.row(0, named=True)
    frame = page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    box = frame.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)
    label = f"synth-a · L{first['layer']} · N{first['idx']}"
    page.get_by_role("link", name=f"Open {label}").click()
    page.wait_for_url(re.compile(r"/neuron\?"), timeout=30_000)
    settle(page)
    neuron_url = page.url
    assert _query(neuron_url) == {"model": "synth-a", "layer": str(first["layer"]), "idx": str(first["idx"]),
                                  "threshold": "0.2"}
    assert _heading(page, label).startswith(label) and "universal (excess > 0.2)" in _heading(page, label)
    assert page.title() == f"{label} — Neuron Atlas"
    assert _coloured_tokens(page) > 5 * 3  # every token of the top examples, not only the peak
    assert page.get_by_text("Best partner in every other seed").is_visible()
    shot("neuron")

    # 4. its partner in synth-b, from the partner card
    feature = next(f for f, where in atlas.planted.items() if where["synth-a"] == (first["layer"], first["idx"]))
    layer, idx = atlas.planted[feature]["synth-b"]
    partner = f"synth-b · L{layer} · N{idx}"
    page.get_by_role("link", name=partner).first.click()
    page.wait_for_url(re.compile(rf"model=synth-b&layer={layer}&idx={idx}"), timeout=30_000)
    settle(page)
    assert _query(page.url) == {"model": "synth-b", "layer": str(layer), "idx": str(idx), "threshold": "0.2"}
    assert _heading(page, partner).startswith(partner)
    shot("partner")

    # 5. Back: the neuron again
    page.go_back()
    page.wait_for_url(neuron_url, timeout=30_000)
    settle(page)
    assert _heading(page, label).startswith(label)
    shot("back-to-neuron")

    # 6. Back: the universal list as it was, threshold 0.2
    page.go_back()
    page.wait_for_url(re.compile(r"/universal\?"), timeout=30_000)
    settle(page)
    assert _query(page.url) == {"threshold": "0.2"}
    assert "0.20" in page.locator('[data-testid="stSlider"]').first.inner_text()
    assert page.get_by_text(f"{expected.height:,} neurons with excess correlation above 0.2").is_visible()
    shot("back-to-universal")


def test_runs_page_refreshes_by_itself_while_a_run_progresses(served_atlas, browser, engine, artifacts):
    base, atlas = served_atlas
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(f"{base}/runs")
    settle(page)
    running = atlas.run_ids["running"]
    progress = page.locator('[data-testid="stProgress"]')  # redrawn every 2 s: wait, never a one-off look
    progress.filter(has_text=f"run {running} · stats").filter(has_text="300 / 1,000 tokens").first.wait_for(
        timeout=15_000)
    with engine.begin() as conn:  # the run advances, and another one fails, while the page stays open
        conn.execute(sa.text("UPDATE run SET tokens_done = 700 WHERE id = :r"), {"r": running})
        conn.execute(sa.text("UPDATE run SET status = 'failed', error = 'planted failure for the live test', "
                             "finished_at = now() WHERE id = :r"), {"r": atlas.run_ids["examples"]})
    progress.filter(has_text="700 / 1,000 tokens").first.wait_for(timeout=15_000)  # no reload
    page.get_by_text("planted failure for the live test").first.wait_for(timeout=15_000)
    page.screenshot(path=str(artifacts / "runs-live.png"))

    # with live refresh off (in the address) the page waits for the user
    page.goto(f"{base}/runs?live=false")
    settle(page)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE run SET tokens_done = 900 WHERE id = :r"), {"r": running})
    page.wait_for_timeout(5000)
    assert progress.filter(has_text="700 / 1,000 tokens").count() == 1
    assert progress.filter(has_text="900 / 1,000 tokens").count() == 0


def _download(page, button) -> pl.DataFrame:
    with page.expect_download(timeout=30_000) as info:
        button.click()
    return pl.read_csv(io.BytesIO(open(info.value.path(), "rb").read()))


def test_downloads_hold_what_the_query_layer_answers(served_atlas, browser, engine):
    base, _ = served_atlas
    page = browser.new_context(viewport={"width": 1400, "height": 1300}, accept_downloads=True).new_page()
    page.goto(f"{base}/universal?threshold=0.2&layers=0")
    settle(page)
    got = _download(page, page.get_by_role("button", name="⬇ CSV").first)
    want = queries.universal_neurons(engine, threshold=0.2, layer=[0], limit=2000)
    assert got.select("model", "layer", "idx").rows() == want.select("model", "layer", "idx").rows()
    assert got["excess"].to_list() == pytest.approx(want["excess"].to_list(), abs=1e-6)

    page.goto(f"{base}/")
    settle(page)
    got = _download(page, page.get_by_role("button", name="⬇ CSV").first)  # the first figure: share per layer
    want = queries.layer_universality(engine, threshold=0.5)
    assert got.select("model", "layer", "n_neurons", "n_universal").rows() == \
        want.select("model", "layer", "n_neurons", "n_universal").rows()
