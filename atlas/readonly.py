"""The read-only role the UI and its SQL page connect as, and the guarded SQL runner.

``ensure_reader(admin_engine)`` creates (or refreshes — it is idempotent) a login role that can
only read: ``SELECT`` on the atlas tables and views of schema ``public``, nothing else, with
defaults ``default_transaction_read_only = on``, a ``statement_timeout``, an
``idle_in_transaction_session_timeout`` and a ``lock_timeout``. In the atlas database it also
closes what PUBLIC grants every role: TEMP tables and the advisory-lock functions (the runs'
locks), so a reader can neither write anywhere, even with ``BEGIN READ WRITE``, nor block or fake a
run. (A session may still raise its own ``statement_timeout``: PostgreSQL lets any session change
it; the SQL page sets its own limit per statement.) Its name defaults to
``<database>_reader`` (``atlas_reader`` for the embedded ``atlas`` database): roles are global to
a PostgreSQL cluster, so one per database keeps atlases on a shared server apart. Its password
is ``ATLAS_READER_PASSWORD`` or derived from the admin password (so no secret is stored); with a
password-less admin URL (the embedded server's local socket) the reader has none either.

``run_sql(reader_url, sql)`` is what the SQL page calls. Defence in depth:

1. it connects as the reader (SELECT privileges only: INSERT/UPDATE/DELETE/DDL are refused);
2. inside an explicit ``READ ONLY`` transaction that is always rolled back, on a fresh
   connection that is closed afterwards (no session state survives: ``SET`` tricks die with it);
3. the statement runs as ``DECLARE … CURSOR FOR <statement>``, sent with the extended protocol:
   only one statement is accepted (``SELECT 1; DROP TABLE model`` is a syntax error), it must be
   a query (``SELECT``/``VALUES``/``TABLE``/``WITH … SELECT``), and data-modifying ``WITH`` is refused;
4. a per-statement timeout and a row cap (rows are fetched from the cursor up to the cap).

Set ``ATLAS_READER_URL`` to use a reader you manage yourself (e.g. the UI on another host).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass

import polars as pl
import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Engine, make_url

from atlas.errors import AtlasError

log = logging.getLogger("atlas.readonly")

STATEMENT_TIMEOUT_MS = 10_000  # the reader's default per statement (the UI's own queries)
IDLE_IN_TRANSACTION_MS = 60_000  # a reader session idle inside a transaction is ended
LOCK_TIMEOUT_MS = 5_000  # a reader never queues behind a migration for long
#: Advisory-lock functions that take a lock. Revoked from PUBLIC in the atlas database (granted back
#: to the admin) so a reader can neither block a run (the runs' locks) nor fake a running one.
ADVISORY_LOCKS = [f"{name}({args})" for name in (
    "pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock_shared",
    "pg_advisory_xact_lock", "pg_try_advisory_xact_lock", "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock_shared") for args in ("bigint", "integer, integer")]
_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def reader_role_name(admin_url: str) -> str:
    """``<database>_reader`` (lower-cased, non-identifier characters replaced), or ``ATLAS_READER_ROLE``."""
    explicit = os.environ.get("ATLAS_READER_ROLE")
    if explicit:
        return _check_role(explicit)
    database = make_url(admin_url).database or "atlas"
    base = re.sub(r"[^a-z0-9_]", "_", database.lower())[:55]
    return _check_role(f"{base}_reader")


def _check_role(name: str) -> str:
    if not _ROLE_RE.match(name):
        raise AtlasError(f"invalid reader role name {name!r} — use lower-case letters, digits and _")
    return name


def reader_password(admin_url: str, role: str) -> str | None:
    """``ATLAS_READER_PASSWORD``, else an HMAC of the role keyed by the admin password, else None."""
    explicit = os.environ.get("ATLAS_READER_PASSWORD")
    if explicit:
        return explicit
    admin_password = make_url(admin_url).password
    if not admin_password:
        return None
    return hmac.new(str(admin_password).encode(), f"atlas-reader:{role}".encode(), hashlib.sha256).hexdigest()[:32]


def reader_url(admin_url: str, role: str | None = None) -> str:
    """The admin URL with the reader's user name and password (host, port, database unchanged)."""
    role = role or reader_role_name(admin_url)
    url = make_url(admin_url).set(username=role, password=reader_password(admin_url, role))
    return url.render_as_string(hide_password=False)


def ensure_reader(engine: Engine, role: str | None = None) -> str:
    """Create or refresh the read-only role for ``engine``'s database; return its SQLAlchemy URL.

    Idempotent and safe to run concurrently. Needs an admin that may create roles (the embedded
    server's superuser can); otherwise the error says what to ask a DBA for.
    """
    admin_url = engine.url.render_as_string(hide_password=False)
    role = _check_role(role) if role else reader_role_name(admin_url)
    password = reader_password(admin_url, role)
    database = engine.url.database
    ident = sql.Identifier(role)
    statements = [
        sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT "
                "PASSWORD {}").format(ident, sql.Literal(password)),
        sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident),
        sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(ident, sql.Literal(f"{STATEMENT_TIMEOUT_MS}ms")),
        sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
            ident, sql.Literal(f"{IDLE_IN_TRANSACTION_MS}ms")),
        sql.SQL("ALTER ROLE {} SET lock_timeout = {}").format(ident, sql.Literal(f"{LOCK_TIMEOUT_MS}ms")),
        sql.SQL("ALTER ROLE {} SET search_path = public").format(ident),
        sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database), ident),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(ident),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(ident),
    ]
    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(72120243)"))
            exists = raw.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists is None:
                raw.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
            else:
                attrs = raw.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
                                    (role,)).fetchone()
                if attrs[0] and role == engine.url.username:
                    raise AtlasError(f"the reader role {role} is the admin role — pick another ATLAS_READER_ROLE")
            for statement in statements:
                raw.execute(statement)
            for note in _close_public_doors(raw, database):
                log.warning(note)
    except psycopg.errors.InsufficientPrivilege as err:
        raise AtlasError(
            f"cannot create the read-only role {role} ({str(err).strip().splitlines()[0]}) — connect as a role with "
            "CREATEROLE, or have a DBA create it and set ATLAS_READER_URL") from err
    except sa.exc.DBAPIError as err:
        if isinstance(err.orig, psycopg.errors.InsufficientPrivilege):
            raise AtlasError(
                f"cannot create the read-only role {role} — connect as a role with CREATEROLE, or have a DBA "
                "create it and set ATLAS_READER_URL") from err
        raise
    return reader_url(admin_url, role)


def _close_public_doors(raw: psycopg.Connection, database: str) -> list[str]:
    """What every role gets through PUBLIC and a reader must not have, in this database: TEMP tables
    and advisory locks (kept for the admin running this). Needs the database's owner or a superuser;
    returns a note for each door it could not close (each in its own savepoint)."""
    me = sql.SQL("CURRENT_USER")
    statements = [
        (sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)),
         sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(sql.Identifier(database), me)),
        *[(sql.SQL(f"REVOKE EXECUTE ON FUNCTION pg_catalog.{f} FROM PUBLIC"),
           sql.SQL(f"GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {{}}").format(me)) for f in ADVISORY_LOCKS],
    ]
    notes: list[str] = []
    for revoke, grant in statements:
        try:
            with raw.transaction():
                raw.execute(grant)
                raw.execute(revoke)
        except psycopg.errors.InsufficientPrivilege:
            notes.append(f"could not run `{revoke.as_string(raw)}` (needs the database owner or a superuser): "
                         "readers keep that privilege — ask a DBA to run it")
    return notes


def drop_reader(engine: Engine, role: str | None = None) -> None:
    """Remove the reader role's privileges in this database and drop it (tests, uninstall)."""
    admin_url = engine.url.render_as_string(hide_password=False)
    role = _check_role(role) if role else reader_role_name(admin_url)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        if raw.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return
        raw.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        raw.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {}").format(
            sql.Identifier(role)))
    with engine.begin() as conn:
        conn.connection.driver_connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def reader_engine(url: str | None = None) -> Engine:
    """An engine for the read-only role: ``url``, else ``ATLAS_READER_URL``, else the reader of the
    configured atlas (created on first use). Cached per URL."""
    if url is None:
        url = os.environ.get("ATLAS_READER_URL") or None
    if url is None:
        from atlas import db

        admin = db.get_engine()
        db.require_current_schema(admin)
        url = ensure_reader(admin)
    from atlas.db import _engine_for
    from atlas.settings import normalize_url

    return _engine_for(normalize_url(url))


# ---------------------------------------------------------------- the SQL page

# Starting points shown on the SQL page (and in docs/queries.md); all use the documented views.
SQL_EXAMPLES: dict[str, str] = {
    "Strongest neurons by excess correlation": (
        "SELECT model, layer, idx, round(excess::numeric, 3) AS excess, round(mean_corr::numeric, 3) AS mean_corr,\n"
        "       round(mean_baseline::numeric, 3) AS baseline, labels\n"
        "FROM neuron_overview\nWHERE excess IS NOT NULL\nORDER BY excess DESC\nLIMIT 50"),
    "Universal neurons (excess > 0.5), strongest first": (
        "SELECT model, layer, idx, round(excess::numeric, 3) AS excess, round(mean_corr::numeric, 3) AS mean_corr,\n"
        "       round(mean_baseline::numeric, 3) AS baseline, labels\n"
        "FROM universal_neuron\nORDER BY excess DESC\nLIMIT 50"),
    "Universal share per layer": (
        "SELECT model, layer, n_neurons, n_universal, round(100 * universal_share::numeric, 2) AS percent\n"
        "FROM layer_universality\nORDER BY model, layer"),
    "Which neurons fire on ' the'?": (
        "SELECT model, layer, idx, mean_act, max_act\nFROM token_neuron\nWHERE token = ' the'\n"
        "ORDER BY mean_act DESC\nLIMIT 20"),
    "A neuron's top examples as text": (
        "SELECT rank, round(value::numeric, 3) AS value, before, token, after\nFROM top_example_text\n"
        "WHERE model = (SELECT name FROM model ORDER BY id LIMIT 1) AND layer = 0 AND idx = 3\nORDER BY rank"),
    "Best partner in every other seed": (
        "SELECT model, layer, idx, other_model, best_layer, best_idx, max_corr, baseline_max\nFROM best_partner\n"
        "WHERE max_corr > 0.8\nORDER BY max_corr DESC\nLIMIT 50"),
    "Family members": (
        "SELECT family, model, layer, idx, score\nFROM family_members\nORDER BY family, model, layer, idx"),
    "Universal vs other neurons: median percentile within layer": (
        "SELECT model, property, excess > 0.5 AS universal, count(*) AS neurons,\n"
        "       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY percentile)::numeric, 1) AS median_percentile\n"
        "FROM neuron_property_percentile\nWHERE percentile IS NOT NULL\nGROUP BY 1, 2, 3\nORDER BY 1, 2, 3"),
}

@dataclass(frozen=True)
class SqlResult:
    """A read-only query's rows (at most the cap), whether more were left, and how long it took."""

    frame: pl.DataFrame
    truncated: bool
    seconds: float


def run_sql(url: str, statement: str, *, row_cap: int = 1000, timeout_ms: int = 5000) -> SqlResult:
    """Run ONE read-only query as the reader; at most ``row_cap`` rows, ``timeout_ms`` per statement.

    Raises AtlasError with PostgreSQL's message for anything that is not a single query, that
    writes, that lacks privileges, or that times out.
    """
    text = statement.strip().rstrip(";").strip()
    if not text:
        raise AtlasError("the query is empty — write a SELECT")
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    started = time.perf_counter()
    try:
        with psycopg.connect(libpq, autocommit=False, connect_timeout=5,
                             options="-c default_transaction_read_only=on") as conn:
            try:
                conn.execute("BEGIN READ ONLY")
                # A query (not a SET) starts the snapshot, so SET TRANSACTION READ WRITE is refused too.
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout_ms)}ms",))
                with conn.cursor(name="atlas_sql_page") as cur:
                    cur.execute(text)
                    rows = cur.fetchmany(row_cap + 1)
                    columns = [d.name for d in cur.description or []]
            finally:
                conn.rollback()
    except psycopg.errors.QueryCanceled as err:
        raise AtlasError(f"the query ran longer than {timeout_ms / 1000:g} s and was cancelled — add filters or LIMIT") from err
    except psycopg.Error as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not _QUERY_START.match(_strip_comments(text)):
            raise AtlasError(f"query refused: {message} — only one read-only query (SELECT, WITH … SELECT, VALUES, "
                             "TABLE) runs here") from err
        if "multiple commands" in message:
            raise AtlasError("query refused: one statement at a time — remove the ';' between statements") from err
        raise AtlasError(f"query refused: {message}") from err
    truncated = len(rows) > row_cap
    rows = rows[:row_cap]
    seconds = time.perf_counter() - started
    columns = _unique(columns)
    if not rows:
        return SqlResult(pl.DataFrame(schema={c: pl.Null for c in columns}), False, seconds)
    try:
        out = pl.DataFrame([tuple(r) for r in rows], schema=columns, orient="row", infer_schema_length=None)
    except Exception:  # mixed or exotic types: show them as text
        out = pl.DataFrame([tuple(None if v is None else str(v) for v in r) for r in rows], schema=columns, orient="row")
    return SqlResult(out, truncated, seconds)


_QUERY_START = re.compile(r"^\s*(\(|select\b|with\b|values\b|table\b)", re.IGNORECASE)


def _strip_comments(text: str) -> str:
    """The statement without leading comments (for the error message only; the server decides)."""
    return re.sub(r"^(\s*(--[^\n]*\n|/\*.*?\*/))*", "", text, flags=re.DOTALL)


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        n = seen.get(c, 0)
        seen[c] = n + 1
        out.append(c if n == 0 else f"{c}_{n}")
    return out
