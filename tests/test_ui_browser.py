"""A real browser (Debian chromium driven by Playwright) against `atlas ui` on the synthetic atlas:
overview, the universal list, a click through to a neuron page, row selection, and a shared link.

Without chromium the test skips with the reason, except in CI (``CI=true``), where a missing
browser fails the run. Screenshots and the server log are written under pytest's tmp path; set
``ATLAS_TEST_ARTIFACTS`` to a directory to keep them (e.g. as CI artifacts)."""

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
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PORT_ATTEMPTS = 5

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def chromium() -> str:
    """The chromium executable; a missing one skips the test with the reason, and fails it in CI."""
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install -y chromium; `make test` does it when run as root)"
        if in_ci():
            pytest.fail(f"CI=true and {reason}: the browser tests must run in CI")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
def artifacts(tmp_path):
    """Where screenshots go: under tmp_path, copied to $ATLAS_TEST_ARTIFACTS (if set) afterwards."""
    out = tmp_path / "artifacts"
    out.mkdir()
    yield out
    keep = os.environ.get("ATLAS_TEST_ARTIFACTS")
    if keep:
        shutil.copytree(out, Path(keep) / "ui-browser", dirs_exist_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _start_ui(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `atlas ui` on a free port. A port found free can be taken before the server binds it:
    then the server exits ("pass another --port" / address in use) and another port is tried. The
    server counts as up once it logged that it serves OUR port and answers its health check."""
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with open(log_path, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "atlas.app.cli", "ui", "--port", str(port)], env=env,
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if f"URL: {base}" in log_path.read_text() and _healthy(base):
                return proc, base
            time.sleep(0.3)
        _stop(proc)
        text = log_path.read_text()
        if "pass another --port" not in text and "already in use" not in text.lower():
            raise RuntimeError(f"atlas ui did not come up on port {port}:\n{text[-3000:]}")
    raise RuntimeError(f"atlas ui found no free port in {PORT_ATTEMPTS} attempts:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture
def served_atlas(engine, db_url, tmp_path, artifacts):
    """`atlas ui` serving the synthetic atlas; yields (base URL, planted truth)."""
    atlas = build_synthetic_atlas(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {
        "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(tmp_path / "home")}
    proc, base = _start_ui(env, artifacts / "ui-server.log")
    try:
        yield base, atlas
    finally:
        _stop(proc)
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


def test_universal_list_to_neuron_page_and_shared_link(chromium, served_atlas, artifacts):
    from playwright.sync_api import sync_playwright

    base, atlas = served_atlas
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()

            page.goto(f"{base}/")
            _settle(page)
            page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=30_000)
            assert page.get_by_text("Universal share per layer").is_visible()
            page.screenshot(path=str(artifacts / "overview.png"))

            page.goto(f"{base}/universal")
            _settle(page)
            x, y = _first_row(page)
            page.screenshot(path=str(artifacts / "universal.png"))

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
            neuron.screenshot(path=str(artifacts / "neuron.png"))
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
            fresh.screenshot(path=str(artifacts / "neuron-shared-link.png"))

            for path, name in (("families", "families"), ("search?q=the", "search"), ("runs", "runs"), ("sql", "sql")):
                page.goto(f"{base}/{path}")
                _settle(page)
                assert not page.query_selector('[data-testid="stException"]'), path
                page.screenshot(path=str(artifacts / f"{name}.png"))
        finally:
            browser.close()
