"""The layers of docs/architecture.md, checked on the import graph of the source tree.

atlas/ (core) ← ingest/ ← app/ ; ui/ reads through atlas/ only. Imports run downward, never up,
and the pure math of ingest/math/ touches neither the database nor files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> its installed package name
LAYERS = {"atlas": "atlas", "app": "atlas.app", "ingest": "atlas.ingest", "ui": "atlas.ui",
          "migrations": "atlas.migrations"}


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT).with_suffix("")
    package = [LAYERS.get(rel.parts[0], rel.parts[0]), *rel.parts[1:-1]]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _violations(folder: str, forbidden: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _modules(folder):
        if any(part in skip for part in path.relative_to(ROOT).parts):
            continue
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_core_imports_neither_compute_nor_app_nor_ui():
    core_only = ("atlas.ingest", "atlas.app", "atlas.ui", "torch", "transformer_lens", "transformers")
    assert _violations("atlas", core_only) == []


def test_ingest_never_imports_the_app_layer_or_the_ui():
    assert _violations("ingest", ("atlas.app", "atlas.ui", "streamlit")) == []


def test_ui_reads_through_the_core_only():
    assert _violations("ui", ("atlas.ingest", "atlas.app", "torch", "transformer_lens")) == []


def test_math_is_pure():
    """ingest/math/: tensors in, tensors or frames out; no database, no run lifecycle."""
    io = ("sqlalchemy", "psycopg", "atlas.db", "atlas.runs", "atlas.copy", "atlas.ingest.store", "atlas.ingest.runs")
    assert _violations("ingest/math", io) == []


@pytest.mark.parametrize("folder", [*LAYERS, "tests", "bench"])
def test_no_bare_top_level_imports(folder):
    """Installed, the folders are atlas.ingest, atlas.ui, ...: a bare `import ingest` would only work
    from a checkout (and would load a second copy of the module)."""
    if not (ROOT / folder).exists():
        pytest.skip(f"no {folder}/")
    assert _violations(folder, ("ingest", "ui", "migrations", "app")) == []


@pytest.mark.parametrize("folder", list(LAYERS))
def test_a_module_over_400_lines_says_why_at_its_top(folder):
    """Small modules; a long one states its reason in its docstring ("... 400 lines ...")."""
    long = []
    for path in _modules(folder):
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 400 and "400 lines" not in doc:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert long == []
