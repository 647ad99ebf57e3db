"""docs/screenshots.py, which renews the README's screenshots (docs/ui.md says so), run against a
served atlas in a real browser: one PNG per page, and the neuron page is a planted universal neuron."""

from __future__ import annotations

import importlib.util
import re
import struct

import pytest

from tests.atlas_fixtures import COHORT
from tests.browser import ROOT, artifacts, chromium, served_atlas  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _script():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "docs" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshots_script_writes_every_page_and_shows_a_universal_neuron(served_atlas, chromium, engine, tmp_path,
                                                                            capsys):
    base, atlas = served_atlas
    script = _script()
    out = tmp_path / "img"
    assert script.main([base, "--cohort", COHORT, "--out", str(out)], engine=engine) == 0

    for name in ("overview", "universal", "neuron", "families", "training"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        assert struct.unpack(">II", png[16:24]) == (script.WIDTH, script.HEIGHT), name
    shown = re.search(r"/neuron\?model=([^&]+)&layer=(\d+)&idx=(\d+)", capsys.readouterr().out)
    assert shown and shown.group(1) == atlas.reference
    assert (int(shown.group(2)), int(shown.group(3))) in atlas.planted_in(atlas.reference)
