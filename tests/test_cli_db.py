"""The `atlas` command's database handling: one-line errors, the embedded server's lifecycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ATLAS = [sys.executable, "-m", "atlas.app.cli"]


def _atlas(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    full_env.update(env or {})
    return subprocess.run([*ATLAS, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def test_unreachable_database_is_one_line_without_password():
    res = _atlas("status", env={"ATLAS_DATABASE_URL": "postgresql://alice:s3cret@127.0.0.1:1/atlas"})
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip() and "Warning" not in line and "return Path" not in line]
    assert len(lines) == 1, res.stderr
    assert "cannot connect" in lines[0] and "s3cret" not in lines[0] and "***" in lines[0]
    assert "Traceback" not in res.stderr


def test_debug_shows_the_traceback():
    res = _atlas("--debug", "status", env={"ATLAS_DATABASE_URL": "postgresql://alice:x@127.0.0.1:1/atlas"})
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_missing_database_says_how_to_create_it(pg_server):
    from sqlalchemy.engine import make_url

    url = make_url(pg_server).set(database="no_such_database_here").render_as_string(hide_password=False)
    res = _atlas("status", env={"ATLAS_DATABASE_URL": url})
    assert res.returncode != 0 and "does not exist" in res.stderr and "createdb" in res.stderr


def test_schema_behind_tells_to_upgrade(empty_db_url):
    res = _atlas("status", env={"ATLAS_DATABASE_URL": empty_db_url})
    assert res.returncode != 0 and "atlas db upgrade" in res.stderr
    up = _atlas("db", "upgrade", env={"ATLAS_DATABASE_URL": empty_db_url})
    assert up.returncode == 0, up.stderr
    ok = _atlas("status", env={"ATLAS_DATABASE_URL": empty_db_url})
    assert ok.returncode == 0 and "atlas is empty" in ok.stdout


def _postmasters(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(pgdata) in " ".join(cmdline) and "-D" in cmdline:
            found.append(proc)
    return found


def _query(url: str, sql: str) -> str:
    """Run ``sql`` at a libpq URL as the README does (psql), or through libpq from Python without psql."""
    import shutil

    if shutil.which("psql"):
        res = subprocess.run(["psql", url, "-XAtc", sql], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return "|".join(str(v) for v in conn.execute(sql).fetchone())


@pytest.mark.slow
def test_embedded_server_lifecycle_as_a_user_runs_it():
    """In a private ATLAS_HOME: two processes starting the server at once share one; `atlas db
    start`, `psql "$(atlas db url)"`, `atlas db stop`, and the data survives a stop/start."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="atlas-life-", dir="/tmp"))  # short: the unix socket lives in the data dir
    env = {"ATLAS_HOME": str(home)}
    pgdata = (home / "pg").resolve()
    try:
        assert _atlas("db", "stop", env=env).stdout.strip() == "embedded PostgreSQL was not running"
        assert _atlas("db", "url", "--help", env=env).returncode == 0 and not (home / "pg").exists()

        procs = [subprocess.Popen([*ATLAS, "db", "upgrade"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        assert len(_postmasters(pgdata)) == 1
        status = _atlas("db", "status", env=env)
        assert "embedded" in status.stdout and "up to date" in status.stdout

        started = _atlas("db", "start", env=env)  # a running server is reused, not started twice
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("database ready at postgresql") and str(pgdata).replace("/", "%2F") in started.stdout
        assert len(_postmasters(pgdata)) == 1

        url = _atlas("db", "url", env=env).stdout.strip()
        assert url.startswith("postgresql://") and "+psycopg" not in url  # libpq form, for psql
        assert _query(url, "SELECT current_database()") == "atlas"
        _query(url, "CREATE TABLE lifecycle_mark (x int); INSERT INTO lifecycle_mark VALUES (42)")

        stopped = _atlas("db", "stop", env=env)
        assert stopped.returncode == 0 and stopped.stdout.strip() == "embedded PostgreSQL stopped"
        assert _postmasters(pgdata) == []
        assert _atlas("db", "stop", env=env).stdout.strip() == "embedded PostgreSQL was not running"

        # the data stays: the next start serves it again
        again = _atlas("db", "start", env=env)
        assert again.returncode == 0 and again.stdout == started.stdout and len(_postmasters(pgdata)) == 1
        assert _query(_atlas("db", "url", env=env).stdout.strip(), "SELECT x FROM lifecycle_mark") == "42"
        assert "up to date" in _atlas("db", "status", env=env).stdout
    finally:
        _atlas("db", "stop", env=env)
        subprocess.run(["rm", "-rf", str(home)])


def test_db_commands_leave_a_server_given_by_url_alone(pg_server):
    from sqlalchemy.engine import make_url

    url = make_url(pg_server).set(database="postgres").render_as_string(hide_password=False)
    env = {"ATLAS_DATABASE_URL": url}
    stop = _atlas("db", "stop", env=env)
    assert stop.returncode == 2 and "does not manage that server" in stop.stderr and "Traceback" not in stop.stderr
    start = _atlas("db", "start", env=env)
    assert start.returncode == 0 and start.stdout.startswith("database ready at postgresql")
    # (printed redacted, a password would read `***`: a password-protected server needs --show-password)
    shown = _atlas("db", "url", *(["--show-password"] if make_url(url).password else []), env=env).stdout.strip()
    assert shown.startswith("postgresql://") and _query(shown, "SELECT current_database()") == "postgres"
