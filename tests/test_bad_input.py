"""Bad input as users type it: one line on stderr, a non-zero exit, and the database unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

ATLAS = [sys.executable, "-m", "atlas.app.cli"]


def _snapshot(engine) -> dict[str, int]:
    """Row counts of every table of the atlas schema and of the job queue."""
    with engine.connect() as conn:
        tables = conn.execute(sa.text(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname IN ('public', 'procrastinate')"
        )).scalars().all()
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def _atlas(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*ATLAS, *args], env=env, capture_output=True, text=True, timeout=180, **kwargs)


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "XDG_RUNTIME_DIR" not in line
             and "user_runtime_dir" not in line]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def env(db_url, atlas_home):
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    return {**clean, "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(atlas_home)}


@pytest.mark.parametrize("url, words", [
    ("mysql://x@y/z", ["mysql", "needs PostgreSQL"]),
    ("sqlite:///x.db", ["sqlite", "needs PostgreSQL"]),
    ("not a url", ["cannot be read"]),
    ("postgresql://u@h:notaport/db", ["cannot be read"]),
])
def test_a_database_url_that_is_not_postgresql(env, url, words):
    result = _atlas(["status"], {**env, "ATLAS_DATABASE_URL": url})
    _one_line_error(result, *words)
    assert url not in result.stderr or "@" not in url  # never echo a URL that may hold a password


@pytest.mark.parametrize("args, words", [
    (["ingest", "--model", "x", "--dataset", "d", "--top-k", "0"], ["--top-k", "0"]),
    (["ingest", "--model", "x", "--dataset", "d", "--top-k", "-3"], ["--top-k", "-3"]),
    (["correlate", "--cohort", "c", "--dataset", "d", "--block-size", "0"], ["--block-size", "0"]),
    (["classify", "--cohort", "c", "--dataset", "d", "--max-rows", "0"], ["--max-rows", "0"]),
    (["ingest", "--model", "x", "--dataset", "d", "--device", "tpu"], ["--device", "tpu"]),
    (["correlate", "--cohort", "c", "--dataset", "d", "--device", "gpu0"], ["--device", "gpu0"]),
    (["worker", "--concurrency", "0"], ["--concurrency"]),
])
def test_options_are_checked_before_a_run_exists(engine, env, args, words):
    before = _snapshot(engine)
    result = _atlas(args, env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert any(all(w in line for w in words) for line in result.stderr.splitlines()), result.stderr
    assert _snapshot(engine) == before


@pytest.mark.parametrize("out, words", [
    ("/proc/x.csv", ["cannot write"]),
    ("/etc/hostname/x.csv", ["is not a directory"]),
    ("/nonexistent/dir/x.parquet", ["does not exist", "create the directory"]),
])
def test_export_to_a_place_that_cannot_be_written(engine, env, out, words):
    before = _snapshot(engine)
    result = _atlas(["export", "layer-summary", "--out", out], env)
    _one_line_error(result, *words)
    assert not __import__("pathlib").Path("/nonexistent").exists()
    assert _snapshot(engine) == before


def test_export_sql_uses_the_configured_reader_url(engine, env):
    from atlas import readonly

    from sqlalchemy.engine import make_url

    reader = readonly.ensure_reader(engine)
    # a role that does not exist: if export sql uses this URL, it must fail saying so
    broken = make_url(reader).set(username="no_such_reader").render_as_string(hide_password=False)
    result = _atlas(["export", "sql", "SELECT 1 AS one", "--out", "/tmp/atlas-export-test.csv"],
                    {**env, "ATLAS_READER_URL": broken})
    _one_line_error(result, "no_such_reader")
    ok = _atlas(["export", "sql", "SELECT 1 AS one", "--out", "/tmp/atlas-export-test.csv"],
                {**env, "ATLAS_READER_URL": reader})
    assert ok.returncode == 0, ok.stderr
