"""The migrations build exactly the schema that atlas/schema.py declares, and unwind cleanly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from atlas import db
from atlas.schema import Base


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def test_upgrade_to_head_matches_models_and_downgrade_to_base(empty_db_url):
    engine = sa.create_engine(empty_db_url)
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert _diff(engine) == []

    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    with engine.connect() as conn:
        left = sa.inspect(conn).get_table_names()
        views = sa.inspect(conn).get_view_names()
    assert set(left) <= {"alembic_version"} and views == []
    engine.dispose()


def test_views_exist_and_answer_on_empty_atlas(engine):
    with engine.connect() as conn:
        for view in ("neuron_overview", "universal_neuron", "layer_universality", "family_members", "latest_run",
                     "run_state", "queue_job"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {view}")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM universal_neurons(0.3)")).scalar_one() == 0


def test_schema_behind_is_reported_with_the_fix(empty_db_url):
    import pytest

    from atlas.errors import SchemaOutOfDate

    engine = sa.create_engine(empty_db_url)
    with pytest.raises(SchemaOutOfDate, match="atlas db upgrade"):
        db.require_current_schema(engine)
    engine.dispose()
