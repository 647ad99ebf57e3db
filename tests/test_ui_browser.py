"""A real browser (Debian chromium driven by Playwright) against `atlas ui` on the synthetic atlas:
overview, the universal list, a click through to a neuron page, row selection, and a shared link.
Screenshots go to test-artifacts/ (gitignored). Skipped only when chromium is not installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atlas import readonly
from tests.atlas_fixtures import build_synthetic_atlas

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; "
                                                "`make test` does it when run as root)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_atlas(engine, db_url, tmp_path):
    """`atlas ui` serving the synthetic atlas; yields (base URL, planted truth)."""
    atlas = build_synthetic_atlas(engine)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {
        "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(tmp_path / "home")}
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "ui-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "atlas.app.cli", "ui", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"atlas ui did not come up: see {ARTIFACTS / 'ui-server.log'}")
            time.sleep(0.3)
        yield base, atlas
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        readonly.drop_reader(engine)


def _settle(page) -> None:
    """Wait until Streamlit has finished the script run and drawn its elements."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=30_000)
    page.wait_for_timeout(500)
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]')
                 && !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')""", timeout=30_000)
    page.wait_for_timeout(1200)


def _first_row(page):
    frame = page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.wait_for_timeout(800)
    box = frame.bounding_box()
    return box["x"], box["y"] + 35 + 17  # header row is 35 px, rows 35 px


def test_universal_list_to_neuron_page_and_shared_link(served_atlas):
    from playwright.sync_api import sync_playwright

    base, atlas = served_atlas
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()

            page.goto(f"{base}/")
            _settle(page)
            page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            assert page.get_by_text("Universal share per layer").is_visible()
            page.screenshot(path=str(ARTIFACTS / "overview.png"))

            page.goto(f"{base}/universal")
            _settle(page)
            x, y = _first_row(page)
            page.screenshot(path=str(ARTIFACTS / "universal.png"))

            # the link column opens the neuron page (a new tab, as links in tables do)
            page.mouse.move(x + 50, y)  # the grid is a canvas: hover the cell, then click its link
            page.wait_for_timeout(400)
            with context.expect_page() as opened:
                page.mouse.click(x + 50, y)
            neuron = opened.value
            _settle(neuron)
            assert "/neuron?model=synth-a&layer=" in neuron.url
            params = dict(p.split("=") for p in neuron.url.split("?", 1)[1].split("&"))
            assert neuron.get_by_text(f"synth-a · L{params['layer']} · N{params['idx']}").is_visible()
            assert (int(params["layer"]), int(params["idx"])) in {w["synth-a"] for w in atlas.planted.values()}
            neuron.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            neuron.screenshot(path=str(ARTIFACTS / "neuron.png"))
            neuron.close()

            # selecting a row navigates in the same tab
            page.mouse.click(x + 12, y + 35)
            page.wait_for_url("**/neuron?model=synth-a&layer=*&idx=*", timeout=30_000)
            _settle(page)
            assert page.get_by_text("Best partner in every other seed").is_visible()

            # a shared link opens the right neuron in a fresh browser
            layer, idx = atlas.planted["prev_the"]["synth-c"]
            fresh = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
            fresh.goto(f"{base}/neuron?model=synth-c&layer={layer}&idx={idx}")
            _settle(fresh)
            fresh.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            assert fresh.get_by_text(f"synth-c · L{layer} · N{idx}").is_visible()
            assert fresh.get_by_text("previous_token").first.is_visible()
            assert fresh.url.endswith(f"/neuron?model=synth-c&layer={layer}&idx={idx}")
            fresh.screenshot(path=str(ARTIFACTS / "neuron-shared-link.png"))

            for path, name in (("families", "families"), ("search?q=the", "search"), ("runs", "runs"), ("sql", "sql")):
                page.goto(f"{base}/{path}")
                _settle(page)
                assert not page.query_selector('[data-testid="stException"]'), path
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        finally:
            browser.close()
