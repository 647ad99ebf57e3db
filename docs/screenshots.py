"""Renew the screenshots in docs/img/ from the atlas the UI is serving (normally the demo's).

    make demo                                  # fills the atlas and serves it (leave it running)
    .venv/bin/python docs/screenshots.py http://localhost:8501

It opens the overview, the universal list, the page of the reference model's most universal
neuron (from the query layer, so the picture shows a real universal neuron), the families page and
the over-training page in headless chromium (the Debian package `make test` installs) and writes
one PNG each into docs/img/. The threshold is the paper's 0.5 unless ``--threshold``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

IMG = Path(__file__).parent / "img"
WIDTH, HEIGHT = 1400, 1700  # Streamlit scrolls inside its container: a tall viewport shows the page


def _settle(page) -> None:
    """Wait until Streamlit has finished its script run and drawn the page."""
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=60_000)
    page.wait_for_timeout(800)
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stSkeleton"]')
                 && !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')""", timeout=60_000)
    page.wait_for_timeout(2500)  # charts (Vega) draw after the script run ends


def _most_universal(engine, cohort: str) -> tuple[str, int, int]:
    """(model, layer, idx) of the reference neuron of ``cohort`` with the largest excess correlation."""
    from atlas import queries

    top = queries.universal_neurons(engine, threshold=-1.0, cohort=cohort, limit=1)
    if top.is_empty():
        raise SystemExit(f"cohort {cohort!r} has no correlated neuron: run `make demo` first, or pass --cohort")
    row = top.row(0, named=True)
    return row["model"], row["layer"], row["idx"]


def main(argv: list[str] | None = None, engine=None) -> int:
    """``engine``: the atlas the UI serves (default: the one ATLAS_DATABASE_URL / ATLAS_HOME name)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the UI's address, e.g. http://localhost:8501")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--cohort", default="demo", help="cohort whose most universal neuron is shown")
    parser.add_argument("--out", type=Path, default=IMG, help="where the PNGs go [default: docs/img]")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    if engine is None:
        from atlas import db

        engine = db.connect()
    model, layer, idx = _most_universal(engine, args.cohort)
    t = f"threshold={args.threshold}"
    shots = {
        "overview": f"/?{t}",
        "universal": f"/universal?{t}",
        "neuron": f"/neuron?model={model}&layer={layer}&idx={idx}&{t}",
        "families": f"/families?{t}",
        "training": f"/training?{t}",
    }
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, path in shots.items():
            page.goto(args.base.rstrip("/") + path)
            _settle(page)
            page.screenshot(path=str(args.out / f"{name}.png"))
            print(f"{args.out / name}.png ← {path}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
