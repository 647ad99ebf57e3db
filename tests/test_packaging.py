"""The installed package is one namespace, ``atlas``: the wheel must not put ``ingest``, ``ui``,
``migrations`` or ``app`` into site-packages, where they would collide with other projects."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_one_top_level_namespace(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in tracked:  # build from a copy: setuptools writes build/ and *.egg-info into the tree
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(out)],
                   check=True, capture_output=True, text=True)
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"atlas"}, f"top-level names in the wheel: {sorted(top)}"
    # every module of the tree is in the wheel, under its installed name (a package missing from
    # pyproject's list would otherwise only show when someone installs the wheel)
    installed = {"atlas": "atlas", "app": "atlas/app", "ingest": "atlas/ingest", "ui": "atlas/ui",
                 "migrations": "atlas/migrations"}
    expected = {f"{installed[Path(n).parts[0]]}/{Path(*Path(n).parts[1:])}" for n in tracked
                if Path(n).parts[0] in installed and (n.endswith(".py") or n.endswith(".mako")
                                                      or "/demo_cohort/" in n)}  # the shipped demo cohort
    missing = sorted(expected - set(names))
    assert missing == [], f"missing from the wheel: {missing}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "atlas = atlas.app.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
