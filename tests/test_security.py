"""The UI's read-only access: the reader role cannot write, the SQL page's runner refuses writes,
DDL and multi-statement tricks, and filter inputs cannot inject SQL."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from atlas import queries as q
from atlas import readonly
from atlas.errors import AtlasError
from tests.atlas_fixtures import build_synthetic_atlas

# Each attack on the SQL page and the SQLSTATE the server refuses it with: the code says WHICH
# defence stopped it, so a page that fails for another reason (no connection, a bug) fails here.
CURSOR_ONLY_QUERIES = "42601"  # syntax_error: only a query can follow DECLARE … CURSOR FOR, and only one
ATTACKS = {
    "INSERT INTO cohort (name) VALUES ('evil')": CURSOR_ONLY_QUERIES,
    "UPDATE model SET name = 'evil'": CURSOR_ONLY_QUERIES,
    "DELETE FROM run": CURSOR_ONLY_QUERIES,
    "DROP TABLE model": CURSOR_ONLY_QUERIES,
    "TRUNCATE neuron_universality": CURSOR_ONLY_QUERIES,
    "CREATE TABLE evil (x int)": CURSOR_ONLY_QUERIES,
    "CREATE TEMP TABLE evil (x int)": CURSOR_ONLY_QUERIES,
    "ALTER TABLE model ADD COLUMN evil int": CURSOR_ONLY_QUERIES,
    "GRANT ALL ON model TO PUBLIC": CURSOR_ONLY_QUERIES,
    "SELECT 1; DROP TABLE model": CURSOR_ONLY_QUERIES,
    "SELECT 1; DELETE FROM run": CURSOR_ONLY_QUERIES,
    "COMMIT; DROP TABLE model": CURSOR_ONLY_QUERIES,
    "ROLLBACK; INSERT INTO cohort (name) VALUES ('evil')": CURSOR_ONLY_QUERIES,
    "SET TRANSACTION READ WRITE": CURSOR_ONLY_QUERIES,
    "SET ROLE postgres": CURSOR_ONLY_QUERIES,
    "RESET ROLE; DROP TABLE model": CURSOR_ONLY_QUERIES,
    "SELECT * FROM model; UPDATE model SET name = 'evil'": CURSOR_ONLY_QUERIES,
    "COPY model TO STDOUT": CURSOR_ONLY_QUERIES,
    "DO $$ BEGIN DELETE FROM run; END $$": CURSOR_ONLY_QUERIES,
    "EXPLAIN ANALYZE DELETE FROM run": CURSOR_ONLY_QUERIES,
    "PREPARE p AS DELETE FROM run": CURSOR_ONLY_QUERIES,
    "CALL nothing()": CURSOR_ONLY_QUERIES,
    # queries that get past the cursor, stopped by the next layers
    "WITH gone AS (DELETE FROM run RETURNING *) SELECT * FROM gone": "0A000",  # feature_not_supported in a cursor
    "SELECT lo_create(0)": "25006",  # read_only_sql_transaction
    "SELECT * FROM model FOR UPDATE": "25006",
    "SELECT set_config('transaction_read_only', 'off', true)": "25001",  # active_sql_transaction: too late to switch
    "SELECT nextval('run_id_seq')": "42501",  # insufficient_privilege: no USAGE on sequences
    "SELECT setval('run_id_seq', 5)": "42501",
    "SELECT * FROM pg_authid": "42501",
    "SELECT pg_read_file('/etc/passwd')": "42501",
    "SELECT pg_reload_conf()": "42501",
}
WRITES = ["INSERT INTO cohort (name) VALUES ('evil')", "UPDATE model SET name = 'evil'", "DELETE FROM run",
          "TRUNCATE neuron_universality", "CREATE TABLE evil (x int)", "DROP TABLE model",
          "ALTER TABLE model ADD COLUMN evil int"]


def _sqlstate(raised: pytest.ExceptionInfo) -> str | None:
    """The SQLSTATE of the server error behind an AtlasError (None when no server answered)."""
    cause = raised.value.__cause__
    return getattr(cause, "sqlstate", None)


@pytest.fixture
def atlas(engine):
    return build_synthetic_atlas(engine)


@pytest.fixture
def reader(engine):
    url = readonly.ensure_reader(engine)
    yield url
    readonly.reader_engine(url).dispose()
    readonly.drop_reader(engine)


def _snapshot(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("model", "cohort", "run", "neuron_universality", "top_example")}


def test_reader_role_is_read_only_and_creation_is_idempotent(engine, atlas, reader):
    assert readonly.ensure_reader(engine) == reader  # again: same role, same URL, no error
    role = make_url(reader).username
    assert role.endswith("_reader") and role != engine.url.username
    with engine.connect() as conn:
        attrs = conn.execute(sa.text("SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
                                     "WHERE rolname = :r"), {"r": role}).one()
        assert tuple(attrs) == (False, False, False, True)
        writable = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = :r "
            "AND privilege_type <> 'SELECT'"), {"r": role}).scalar_one()
        assert writable == 0
    before = _snapshot(engine)
    libpq = make_url(reader).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:  # the role reads, as itself
        assert conn.execute("SELECT current_user, count(*) FROM model").fetchone() == (role, 3)
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
    for statement in WRITES:
        # on a plain connection, outside the SQL page's guards: the role's read-only default refuses …
        with psycopg.connect(libpq, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(statement)
        # … and after lifting read-only mode, its privileges do
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert _snapshot(engine) == before


def test_sql_page_refuses_writes_ddl_and_multi_statement_tricks(engine, atlas, reader):
    # first: the page really runs queries as the reader (so the refusals below are the server's)
    answer = readonly.run_sql(reader, "SELECT current_user AS who, count(*) AS n FROM model")
    assert answer.frame.row(0) == (make_url(reader).username, 3)
    before = _snapshot(engine)
    refused = {}
    for attack in ATTACKS:
        with pytest.raises(AtlasError, match="refused") as raised:
            readonly.run_sql(reader, attack, timeout_ms=2000)
        refused[attack] = _sqlstate(raised)
    assert refused == ATTACKS
    assert _snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cohort WHERE name = 'evil'")).scalar_one() == 0


def test_session_tricks_do_not_survive_into_the_next_query(engine, atlas, reader):
    before = _snapshot(engine)
    tricks = ("SELECT set_config('default_transaction_read_only', 'off', false) AS s",
              "SELECT set_config('statement_timeout', '0', false) AS s")
    assert [readonly.run_sql(reader, t).frame["s"][0] for t in tricks] == ["off", "0"]  # they ran …
    # … and died with their connection: the next query is read-only again and times out again
    with pytest.raises(AtlasError) as raised:
        readonly.run_sql(reader, "WITH x AS (INSERT INTO cohort (name) VALUES ('evil') RETURNING 1) SELECT * FROM x")
    assert _sqlstate(raised) == "0A000"
    with pytest.raises(AtlasError, match="longer than") as raised:
        readonly.run_sql(reader, "SELECT pg_sleep(5)", timeout_ms=300)
    assert _sqlstate(raised) == "57014"  # query_canceled
    state = readonly.run_sql(reader, "SELECT current_setting('transaction_read_only') AS ro, "
                                     "current_setting('default_transaction_read_only') AS dro").frame
    assert state.row(0) == ("on", "on")
    assert _snapshot(engine) == before


def test_sql_page_row_cap_and_answers(engine, atlas, reader):
    capped = readonly.run_sql(reader, "SELECT * FROM generate_series(1, 5000) AS g", row_cap=100)
    assert capped.frame.height == 100 and capped.truncated
    full = readonly.run_sql(reader, "SELECT model, layer, idx FROM universal_neuron;", row_cap=100)
    assert full.frame.height == 5 and not full.truncated
    odd = readonly.run_sql(reader, "SELECT '%s' AS pct, '{x}' AS brace, name LIKE 'synth%' AS m FROM model LIMIT 1")
    assert odd.frame.row(0) == ("%s", "{x}", True)
    with pytest.raises(AtlasError, match="empty"):
        readonly.run_sql(reader, "  ;  ")
    with pytest.raises(AtlasError, match="permission denied") as raised:
        readonly.run_sql(reader, "SELECT * FROM pg_authid")
    assert _sqlstate(raised) == "42501"


INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE model; --",
    "synth' UNION SELECT name FROM model --",
    "%_%",
    "\\'; DELETE FROM run; --",
]


def test_filter_inputs_cannot_inject_sql(engine, atlas):
    before = _snapshot(engine)
    for payload in INJECTIONS:
        assert q.universal_neurons(engine, cohort=payload).height == 0
        assert q.universal_neurons(engine, label=payload).height == 0
        assert q.universal_neurons(engine, family=payload).height == 0
        assert q.models(engine, cohort=payload).height == 0
        assert q.families(engine, label=payload).height == 0
        assert q.family_members(engine, payload).height == 0
        assert q.layer_universality(engine, cohort=payload).height == 0
        assert q.neurons_for_token(engine, payload, match="exact").height == 0
        assert q.neurons_for_token(engine, payload, match="word").height == 0
        assert q.search_tokens(engine, payload, match="exact").height == 0
        with pytest.raises(AtlasError, match="no model"):
            q.neuron(engine, payload, 0, 0)
        with pytest.raises(AtlasError):
            q.universal_neurons(engine, order_by=payload)
    # `contains` treats % and _ literally: "%" matches only the token that is a percent sign
    assert q.search_tokens(engine, "%", match="contains")["token"].to_list() == ["%"]
    # a quote inside a real token is data, not syntax
    assert q.search_tokens(engine, "O'Neil", match="word")["token"].to_list() == [" O'Neil"]
    with pytest.raises((ValueError, TypeError)):
        q.neuron(engine, "synth-a", "0 OR 1=1", 0)  # type: ignore[arg-type]
    assert _snapshot(engine) == before


def test_token_text_is_escaped_in_the_ui(engine, atlas):
    from atlas.ui.tokens import tokens_html

    rendered = tokens_html(["<b>bold</b>", " & co", "\n"], [1.0, None, -0.5], center=0, vmax=1.0)
    assert "<b>bold</b>" not in rendered and "&lt;b&gt;bold&lt;/b&gt;" in rendered
    assert "&amp; co" in rendered and "↵" in rendered
    assert "rgba(214,39,40" in rendered and "rgba(31,119,180" in rendered  # red +, blue −
