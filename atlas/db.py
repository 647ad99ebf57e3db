"""Database access: the engine, connectivity checks with one-line errors, and migrations.

``get_engine()`` is the one way in. It resolves the URL (``ATLAS_DATABASE_URL`` or the embedded
server), checks that the server answers and is new enough, and returns a SQLAlchemy engine.
``require_current_schema()`` refuses to work on a database whose migrations are behind.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atlas import embedded
from atlas.errors import DatabaseUnavailable, SchemaOutOfDate
from atlas.settings import Settings, get_settings, normalize_url, redact

MIN_SERVER_VERSION = 14


def resolve_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """The SQLAlchemy URL to use: the configured server, or the embedded one (started if needed)."""
    settings = settings or get_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    if not start:
        url = embedded.running_url(settings.pgdata)
        if url is None:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {settings.pgdata} is not running — run `atlas db start`"
            )
        return url
    return embedded.start(settings.pgdata)


def get_engine(url: str | None = None, *, check: bool = True) -> Engine:
    """An engine for ``url`` (default: ``resolve_url()``), checked to be reachable and new enough."""
    url = normalize_url(url) if url else resolve_url()
    engine = _engine_for(url)
    if check:
        check_connection(engine)
    return engine


@lru_cache(maxsize=16)
def _engine_for(url: str) -> Engine:
    # application_name says which atlas process a session belongs to (pg_stat_activity, pg_locks)
    name = f"atlas:{socket.gethostname()}:{os.getpid()}"[:63]
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "application_name": name})


def check_connection(engine: Engine) -> int:
    """Connect once; return the server's major version or raise a one-line ``DatabaseUnavailable``."""
    shown = redact(engine.url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            version_num = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
    except sa.exc.OperationalError as err:
        raise DatabaseUnavailable(_explain_connect_error(err, shown)) from err
    major = version_num // 10000
    if major < MIN_SERVER_VERSION:
        raise DatabaseUnavailable(
            f"PostgreSQL {major} at {shown} is too old — the atlas needs PostgreSQL {MIN_SERVER_VERSION} or newer"
        )
    return major


def _explain_connect_error(err: Exception, shown: str) -> str:
    text = str(getattr(err, "orig", err)).strip().splitlines()[0] if str(err).strip() else repr(err)
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        hint = "check the user and password in ATLAS_DATABASE_URL"
    elif "does not exist" in lowered and "database" in lowered:
        hint = "create the database (createdb) or fix its name in ATLAS_DATABASE_URL"
    elif "connection refused" in lowered or "no such file" in lowered or "could not connect" in lowered:
        hint = "start the server, fix ATLAS_DATABASE_URL, or unset it to use the embedded database"
    elif "timeout" in lowered:
        hint = "the server did not answer in time; check the host and port in ATLAS_DATABASE_URL"
    else:
        hint = "check ATLAS_DATABASE_URL and that the server is up"
    return f"cannot connect to PostgreSQL at {shown}: {text} — {hint}"


# ---------------------------------------------------------------- migrations

def migrations_dir() -> Path:
    from atlas import migrations

    return Path(migrations.__file__).parent


def alembic_config(url: str):
    """An Alembic config bound to ``url`` with the project's migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (serialised by an advisory lock, so concurrent callers are safe)."""
    from alembic import command

    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(72120241)"))
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    with engine.begin() as conn:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def require_current_schema(engine: Engine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at the head migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "empty" if current is None else f"at migration {current}"
        raise SchemaOutOfDate(
            f"the atlas database is {state} but this version needs {head} — run `atlas db upgrade`"
        )


def connect(*, migrate: bool = False) -> Engine:
    """The engine for everyday commands: reachable, and at the head migration (applied when ``migrate``)."""
    engine = get_engine()
    if migrate:
        upgrade(engine)
    else:
        require_current_schema(engine)
    return engine


# ---------------------------------------------------------------- identity

def database_identity(engine: Engine) -> str:
    """What tells this database apart from every other one: ``<cluster>/<database name>/<database oid>``.

    ``<cluster>`` is the server's system identifier (unique per ``initdb``) where the role may
    read it (superusers and ``pg_monitor``), else ``host:port``. The name and oid separate the
    databases of one cluster, including copies made from a template. Checkpoint files carry it, so
    two atlases sharing one ATLAS_HOME never resume each other's runs.
    """
    with engine.connect() as conn:
        name, oid = conn.execute(sa.text(
            "SELECT current_database(), (SELECT oid FROM pg_database WHERE datname = current_database())")).one()
        try:
            with conn.begin_nested():
                cluster = str(conn.execute(sa.text("SELECT system_identifier FROM pg_control_system()")).scalar_one())
        except sa.exc.DBAPIError:  # not allowed for this role
            cluster = conn.execute(sa.text(
                "SELECT coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port(), 0)")).scalar_one()
    return f"{cluster}/{name}/{oid}"
