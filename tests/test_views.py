"""atlas/views.py is what a migrated database has, and the database documents itself.

(a) A database migrated to head has exactly the views, functions and comments that a scratch
    database built from atlas/schema.py + atlas/views.py has (migrations copy the SQL they apply,
    so this is what catches a copy that drifted, or a view changed without a migration).
(b) Every table, view and column of the public schema, and every function there, has a comment.
"""

from __future__ import annotations

import sqlalchemy as sa

from atlas import views
from atlas.schema import Base

# relkinds: r table, p partitioned table, v view, m materialised view
_CATALOG = """
SELECT c.relkind::text AS kind, c.relname AS name, a.attname AS column,
       CASE WHEN c.relkind IN ('v', 'm') AND a.attname IS NULL THEN pg_get_viewdef(c.oid, true) END AS definition,
       CASE WHEN a.attname IS NULL THEN obj_description(c.oid, 'pg_class') ELSE col_description(c.oid, a.attnum) END AS comment
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
LEFT JOIN LATERAL (
    SELECT NULL::name AS attname, NULL::int2 AS attnum
    UNION ALL
    SELECT attname, attnum FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
) a ON true
WHERE c.relkind IN ('r', 'p', 'v', 'm')
UNION ALL
SELECT 'f', p.oid::regprocedure::text, NULL, pg_get_functiondef(p.oid), obj_description(p.oid, 'pg_proc')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public'
"""


def _catalog(engine) -> dict[tuple[str, str, str | None], tuple[str | None, str | None]]:
    """(kind, name, column) -> (definition, comment) for every relation, column and function in public."""
    with engine.connect() as conn:
        return {(r.kind, r.name, r.column): (r.definition, r.comment) for r in conn.execute(sa.text(_CATALOG))}


def test_migrated_database_has_exactly_the_views_of_views_py(engine, empty_db_url):
    scratch = sa.create_engine(empty_db_url)
    try:
        Base.metadata.create_all(scratch)
        with scratch.begin() as conn:
            from procrastinate.schema import SchemaManager

            # the job queue's own tables (queue_job reads them), as migration 0002 installs them
            raw = conn.connection.driver_connection
            raw.execute("CREATE SCHEMA procrastinate")
            raw.execute("SET LOCAL search_path = procrastinate, public")
            raw.execute(SchemaManager.get_schema())
            raw.execute("SET LOCAL search_path = public")
            for statement in views.create_statements():
                conn.execute(sa.text(statement))
        wanted = _catalog(scratch)
    finally:
        scratch.dispose()
    migrated = {k: v for k, v in _catalog(engine).items() if k[1] != "alembic_version"}
    view_names = {name for kind, name, _ in migrated if kind == "v"}
    assert view_names == {v.name for v in views.VIEWS if not v.function}
    assert {name for kind, name, _ in migrated if kind == "f"} == {v.function for v in views.VIEWS if v.function}
    for key in sorted(set(wanted) | set(migrated), key=str):
        assert migrated.get(key) == wanted.get(key), f"{key}: migrated database differs from atlas/views.py"


def test_every_table_view_column_and_function_has_a_comment(engine):
    catalog = _catalog(engine)
    kinds = {kind for kind, _, _ in catalog}
    assert {"r", "v", "f"} <= kinds
    missing = sorted(f"{name}.{column}" if column else name
                     for (kind, name, column), (_, comment) in catalog.items() if not (comment or "").strip())
    assert missing == [], f"no COMMENT on: {', '.join(missing)}"

