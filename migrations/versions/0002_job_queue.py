"""Job queue: procrastinate's tables, in their own PostgreSQL schema ``procrastinate``.

Keeping the queue in its own schema keeps the atlas tables and views readable (``\\dt`` in psql)
and makes the downgrade one statement. The SQL comes from the installed procrastinate package
(its documented way to create its schema); its workers connect with
``search_path=procrastinate,public`` (app/queue.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from procrastinate.schema import SchemaManager

    op.execute("CREATE SCHEMA IF NOT EXISTS procrastinate")
    op.execute("SET LOCAL search_path = procrastinate, public")
    op.execute(SchemaManager.get_schema())
    op.execute("SET LOCAL search_path = public")


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS procrastinate CASCADE")
