"""Links, addresses and the Back button in a real browser (issue 11, bugs 1 and 3): the URL always
names what is shown, and Back restores the view the user left."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser import artifacts, browser, chromium, served_atlas, settle  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(url).query)


def _heading(page, expected: str = "") -> str:
    """The neuron heading, once it reads ``expected`` (a page under load may still be drawing)."""
    page.locator("h3", has_text=expected).first.wait_for(timeout=30_000)
    return page.locator("h3", has_text=expected).first.inner_text()


def test_a_partner_link_puts_the_partner_in_the_address_bar_and_back_returns(served_atlas, browser, artifacts):
    base, atlas = served_atlas
    page = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
    ref = atlas.planted["the"]["synth-a"]
    partner = atlas.planted["the"]["synth-b"]
    page.goto(f"{base}/neuron?model=synth-a&layer={ref[0]}&idx={ref[1]}")
    settle(page)
    assert _heading(page, "synth-a ·").startswith(f"synth-a · L{ref[0]} · N{ref[1]}")

    page.get_by_role("link", name=f"synth-b · L{partner[0]} · N{partner[1]}").first.click()
    page.wait_for_url(re.compile(rf"model=synth-b&layer={partner[0]}&idx={partner[1]}"), timeout=30_000)
    settle(page)
    assert _heading(page, "synth-b ·").startswith(f"synth-b · L{partner[0]} · N{partner[1]}")
    page.screenshot(path=str(artifacts / "partner.png"))
    page.reload()  # the address alone names the neuron shown
    settle(page)
    assert _heading(page, "synth-b ·").startswith(f"synth-b · L{partner[0]} · N{partner[1]}")

    page.go_back()
    page.wait_for_url(re.compile(rf"model=synth-a&layer={ref[0]}&idx={ref[1]}"), timeout=30_000)
    settle(page)
    assert _heading(page, "synth-a ·").startswith(f"synth-a · L{ref[0]} · N{ref[1]}")


def open_selected_neuron(page) -> None:
    """Select the first row of the universal list and open its neuron page in this tab."""
    frame = page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.wait_for_timeout(800)
    box = frame.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + 35 + 17)  # the row's selection cell (header 35 px)
    page.wait_for_timeout(1500)
    if "/neuron" not in page.url:
        page.get_by_role("link", name=re.compile(r"^Open synth-")).click()
    page.wait_for_url("**/neuron?**", timeout=30_000)
    settle(page)


def test_back_from_a_neuron_restores_every_filter_of_the_universal_list(served_atlas, browser, artifacts):
    base, _ = served_atlas
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(f"{base}/universal?threshold=0.2&layers=1&sort=layer&limit=50")
    settle(page)
    before = _query(page.url)
    assert before["threshold"] == ["0.2"] and before["layers"] == ["1"]
    assert "0.20" in page.locator('[data-testid="stSlider"]').first.inner_text()
    page.screenshot(path=str(artifacts / "universal-filtered.png"))

    open_selected_neuron(page)
    assert _query(page.url)["layer"] == ["1"]  # the first row of the layer-1 list

    page.go_back()
    page.wait_for_url("**/universal?**", timeout=30_000)
    settle(page)
    after = _query(page.url)
    assert "model" not in after and "idx" not in after, page.url
    assert {k: after.get(k) for k in before} == before, page.url
    assert "0.20" in page.locator('[data-testid="stSlider"]').first.inner_text()
    page.screenshot(path=str(artifacts / "universal-after-back.png"))
