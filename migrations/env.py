"""Alembic environment. Run through ``atlas db upgrade`` (or atlas.db.upgrade), which passes a
connection in ``config.attributes["connection"]``; a plain ``alembic`` call uses sqlalchemy.url."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from atlas.schema import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):
    # Views are created by migrations with op.execute and are not part of the metadata.
    if type_ == "table" and reflected and compare_to is None and name not in target_metadata.tables:
        return False
    return True


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        run_migrations(conn)


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `atlas db upgrade`")
main()
