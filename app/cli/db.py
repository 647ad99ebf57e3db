"""``atlas db …``: the database — migrations, the embedded server, the read-only role."""

from __future__ import annotations

import click

from atlas.app.cli import main
from atlas.errors import AtlasError


@main.group()
def db() -> None:
    """Manage the database: start/stop the embedded server, apply migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target migration.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the atlas schema (safe to run repeatedly and concurrently)."""
    from atlas import db as dbm

    engine = dbm.get_engine()
    before = dbm.current_revision(engine)
    dbm.upgrade(engine, revision)
    after = dbm.current_revision(engine)
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("status")
def db_status() -> None:
    """Show which server is used, its version and the schema's migration state."""
    from atlas import db as dbm
    from atlas.settings import get_settings, redact

    settings = get_settings()
    engine = dbm.get_engine()
    major = dbm.check_connection(engine)
    current, head = dbm.current_revision(engine), dbm.head_revision()
    where = f"embedded, data in {settings.pgdata}" if settings.embedded else "ATLAS_DATABASE_URL"
    click.echo(f"server:    PostgreSQL {major} ({where})")
    click.echo(f"url:       {redact(engine.url.render_as_string(hide_password=False))}")
    state = "up to date" if current == head else "BEHIND — run `atlas db upgrade`"
    click.echo(f"migration: {current or 'none'} (head {head}, {state})")


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (no-op when it runs, or when ATLAS_DATABASE_URL is set)."""
    from atlas import db as dbm
    from atlas.settings import get_settings, redact

    settings = get_settings()
    url = dbm.resolve_url(settings)
    click.echo(f"database ready at {redact(url)}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (its data stays under ATLAS_HOME)."""
    from atlas import embedded
    from atlas.settings import get_settings

    settings = get_settings()
    if not settings.embedded:
        raise AtlasError("ATLAS_DATABASE_URL is set: the atlas does not manage that server — stop it with its own tools")
    stopped = embedded.stop(settings.pgdata)
    click.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db.command("url")
@click.option("--show-password", is_flag=True, help="Print the password too.")
def db_url(show_password: bool) -> None:
    """Print the database URL in libpq form, e.g. for `psql "$(atlas db url)"`."""
    from atlas import db as dbm
    from atlas.settings import redact

    url = dbm.resolve_url().replace("postgresql+psycopg://", "postgresql://", 1)
    click.echo(url if show_password else redact(url))




@db.command("create-reader")
@click.option("--role", default=None, help="Role name (default: <database>_reader, e.g. atlas_reader).")
def db_create_reader(role: str | None) -> None:
    """Create or refresh the read-only role the UI and its SQL page use (idempotent)."""
    from atlas import db as dbm
    from atlas import readonly
    from atlas.settings import redact

    url = readonly.ensure_reader(dbm.connect(), role)
    click.echo(f"read-only role ready: {redact(url)}")


