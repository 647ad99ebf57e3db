"""The read-only role, used directly (psql, a notebook), not only through the UI's guarded runner:
every way to write, to hold a run's lock or to linger is closed, and each refusal has its SQLSTATE."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from atlas import readonly


@pytest.fixture
def reader(engine):
    url = make_url(readonly.ensure_reader(engine)).set(drivername="postgresql").render_as_string(hide_password=False)
    yield url
    readonly.drop_reader(engine)


def _sqlstate(url: str, *statements: str) -> str | None:
    """Run the statements in one session as the reader; the SQLSTATE of the first refusal, or None."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            for statement in statements:
                conn.execute(statement)
        except psycopg.Error as err:
            return err.sqlstate
    return None


def test_the_reader_reads(reader):
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0].endswith("_reader")
        assert conn.execute("SELECT count(*) FROM model").fetchone()[0] == 0


def test_the_roles_defaults_hold_in_a_fresh_session(reader):
    with psycopg.connect(reader) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
            "default_transaction_read_only", "statement_timeout", "idle_in_transaction_session_timeout",
            "lock_timeout")}
    assert settings == {"default_transaction_read_only": "on", "statement_timeout": "10s",
                        "idle_in_transaction_session_timeout": "1min", "lock_timeout": "5s"}


@pytest.mark.parametrize("statements", [
    ("BEGIN READ WRITE", "INSERT INTO cohort (name) VALUES ('evil')"),
    ("BEGIN READ WRITE", "CREATE TEMP TABLE scratch (x int)"),
    ("SET default_transaction_read_only = off", "CREATE TEMP TABLE scratch (x int)"),
    ("BEGIN READ WRITE", "CREATE TABLE evil (x int)"),
], ids=["insert", "temp-table", "temp-table-after-set", "create-table"])
def test_read_write_transactions_still_cannot_write(reader, statements):
    assert _sqlstate(reader, *statements) == "42501"  # insufficient_privilege


@pytest.mark.parametrize("call", [
    "pg_advisory_lock(7212, 1)", "pg_try_advisory_lock(7212, 1)", "pg_advisory_lock(1)",
    "pg_advisory_lock_shared(7212, 1)", "pg_advisory_xact_lock(7212, 1)", "pg_try_advisory_xact_lock(1)",
])
def test_the_reader_cannot_take_advisory_locks(reader, call):
    """Run locks (class 7212) could otherwise be taken by a reader: blocking a run, or faking a live one."""
    assert _sqlstate(reader, f"SELECT {call}") == "42501"


def test_the_admin_keeps_its_locks_and_runs_still_work(engine, reader, atlas_home):
    import sqlalchemy as sa

    from atlas.runs import begin_run

    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_try_advisory_lock(99, 1)")).scalar() is True
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('t','h',4) "
                                   "RETURNING id")).scalar()
        model = conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
            " act_fn, tokenizer_id) VALUES ('m', 'src', 'GPT2', 1, 4, 2, 1, 4, 8, 4, 'gelu', :t) RETURNING id"),
            {"t": tok}).scalar()
    run = begin_run(engine, "weights", model_id=model, params={})
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT state FROM run_state WHERE id = %s", (run.id,)).fetchone()[0] == "running"
    run.close()
