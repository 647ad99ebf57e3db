"""What the real-browser UI tests share: chromium, where artifacts go, `atlas ui` serving an atlas.

Without chromium a browser test skips with the reason, except in CI (``CI=true``), where a missing
browser fails the run. Screenshots and the server log are written under pytest's tmp path; set
``ATLAS_TEST_ARTIFACTS`` to a directory to keep them (e.g. as CI artifacts). Test modules import
the fixtures they use from here.
"""

from __future__ import annotations

import contextlib
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
def artifacts(tmp_path, request):
    """Where screenshots go: under tmp_path, copied to $ATLAS_TEST_ARTIFACTS/<test> (if set) afterwards."""
    out = tmp_path / "artifacts"
    out.mkdir()
    yield out
    keep = os.environ.get("ATLAS_TEST_ARTIFACTS")
    if keep:
        shutil.copytree(out, Path(keep) / request.node.name, dirs_exist_ok=True)


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


@contextlib.contextmanager
def serving(engine, db_url: str, home: Path, log_path: Path):
    """`atlas ui` serving the atlas at ``db_url`` (as a user starts it); yields its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {
        "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(home)}
    proc, base = _start_ui(env, log_path)
    try:
        yield base
    finally:
        _stop(proc)
        readonly.drop_reader(engine)


@pytest.fixture
def served_atlas(engine, db_url, tmp_path, artifacts):
    """`atlas ui` serving the synthetic atlas; yields (base URL, planted truth)."""
    atlas = build_synthetic_atlas(engine)
    with serving(engine, db_url, tmp_path / "home", artifacts / "ui-server.log") as base:
        yield base, atlas


@pytest.fixture
def browser(chromium):
    """A headless chromium (Playwright); closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def settle(page) -> None:
    """Wait until Streamlit has finished the script run and drawn its elements."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=30_000)
    page.wait_for_timeout(500)
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]')
                 && !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')""", timeout=30_000)
    page.wait_for_timeout(1200)


def first_row(page):
    frame = page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    page.wait_for_timeout(800)
    box = frame.bounding_box()
    return box["x"], box["y"] + 35 + 17  # header row is 35 px, rows 35 px


