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


@pytest.mark.slow
def test_two_processes_starting_the_embedded_server_share_one(tmp_path):
    home = Path("/tmp") / f"atlas-cli-{os.getpid()}"  # short: the unix socket lives in the data dir
    env = {"ATLAS_HOME": str(home)}
    try:
        procs = [subprocess.Popen([*ATLAS, "db", "upgrade"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        assert len(_postmasters((home / "pg").resolve())) == 1
        status = _atlas("db", "status", env=env)
        assert "embedded" in status.stdout and "up to date" in status.stdout
        # data persists across a stop/start
        assert "stopped" in _atlas("db", "stop", env=env).stdout
        assert _postmasters((home / "pg").resolve()) == []
        assert "up to date" in _atlas("db", "status", env=env).stdout
    finally:
        _atlas("db", "stop", env=env)
        subprocess.run(["rm", "-rf", str(home)])
