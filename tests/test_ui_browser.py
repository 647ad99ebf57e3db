"""A real browser (Debian chromium driven by Playwright) against `atlas ui` on the synthetic atlas:
overview, the universal list, a click through to a neuron page, row selection, and a shared link.
Fixtures (chromium, artifacts under pytest's tmp path, the served atlas) come from tests/browser.py."""

from __future__ import annotations

import re

import pytest

from tests.browser import CHROMIUM_ARGS, artifacts, chromium, first_row, served_atlas, settle  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_universal_list_to_neuron_page_and_shared_link(chromium, served_atlas, artifacts):
    from playwright.sync_api import sync_playwright

    base, atlas = served_atlas
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()

            page.goto(f"{base}/")
            settle(page)
            page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            assert page.get_by_text("Universal share per layer").is_visible()
            page.screenshot(path=str(artifacts / "overview.png"))

            page.goto(f"{base}/universal")
            settle(page)
            x, y = first_row(page)
            page.screenshot(path=str(artifacts / "universal.png"))

            # the link column opens the neuron page (a new tab, as links in tables do)
            page.mouse.move(x + 50, y)  # the grid is a canvas: hover the cell, then click its link
            page.wait_for_timeout(400)
            with context.expect_page() as opened:
                page.mouse.click(x + 50, y)
            neuron = opened.value
            settle(neuron)
            assert "/neuron?model=synth-a&layer=" in neuron.url
            params = dict(p.split("=") for p in neuron.url.split("?", 1)[1].split("&"))
            assert neuron.get_by_text(f"synth-a · L{params['layer']} · N{params['idx']}").is_visible()
            assert (int(params["layer"]), int(params["idx"])) in {w["synth-a"] for w in atlas.planted.values()}
            neuron.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            neuron.screenshot(path=str(artifacts / "neuron.png"))
            neuron.close()

            # selecting a row offers its neuron page in the same tab
            page.mouse.click(x + 12, y + 35)
            page.get_by_role("link", name=re.compile(r"^Open synth-a")).click()
            page.wait_for_url("**/neuron?model=synth-a&layer=*&idx=*", timeout=30_000)
            settle(page)
            assert page.get_by_text("Best partner in every other seed").is_visible()

            # a shared link opens the right neuron in a fresh browser
            layer, idx = atlas.planted["prev_the"]["synth-c"]
            fresh = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
            fresh.goto(f"{base}/neuron?model=synth-c&layer={layer}&idx={idx}")
            settle(fresh)
            fresh.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            assert fresh.get_by_text(f"synth-c · L{layer} · N{idx}").is_visible()
            assert fresh.get_by_text("previous_token").first.is_visible()
            assert fresh.url.endswith(f"/neuron?model=synth-c&layer={layer}&idx={idx}")
            fresh.screenshot(path=str(artifacts / "neuron-shared-link.png"))

            for path, name in (("families", "families"), ("search?q=the", "search"), ("runs", "runs"), ("sql", "sql")):
                page.goto(f"{base}/{path}")
                settle(page)
                assert not page.query_selector('[data-testid="stException"]'), path
                page.screenshot(path=str(artifacts / f"{name}.png"))
        finally:
            browser.close()
