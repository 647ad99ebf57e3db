"""The run lifecycle: every computation is a ``run`` row; its results appear whole or not at all.

Typical use by an ingestion job::

    run = begin_run(engine, "stats", model_id=m, dataset_id=d, params=params, device="cpu")
    if run is None:                      # the same computation is already done: no-op
        return
    with run:                            # marks the run failed (one-line error) on an exception
        ...                              # compute; run.progress(tokens_done); save checkpoints
        run.publish({"activation_stats": frame, "top_example": examples})

While a run executes, its process holds a PostgreSQL advisory lock on the run id and a thread
refreshes the run's ``heartbeat_at`` every few seconds. A second process asking for the same run
gets a clear error; a killed process loses the lock with its connection, so the run can be
resumed (from its checkpoint) by the next caller. A ``running`` run whose lock nobody holds is
*stale* (its process died): the ``run_state`` view says so. When the database goes away mid-run,
the failure is recorded as soon as it is back (``fail`` retries for ``FAIL_RETRY_S``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import polars as pl

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from atlas.copy import copy_frame
from atlas.errors import AtlasError

from atlas.views import RESULT_TABLES  # every result table (family_member hangs off family)
from atlas.views import RUN_LOCK_CLASS as _LOCK_NAMESPACE

HEARTBEAT_EVERY_S = 5.0  # a running run's heartbeat_at is at most this old while its process lives
FAIL_RETRY_S = 60.0  # how long a failing run keeps trying to record its failure while the database is away

log = logging.getLogger("atlas.runs")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (computed once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("neuron-atlas")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{base}+g{sha}" if sha else base


def run_key(kind: str, *, model_id: int | None, cohort_id: int | None, dataset_id: int | None,
            params: dict[str, Any]) -> str:
    """What identifies a computation: same key, same results (so a repeat is a no-op)."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{kind}:model={model_id}:cohort={cohort_id}:dataset={dataset_id}:params={digest}"


class RunBusy(AtlasError):
    """Another live process holds this run (its advisory lock)."""


@dataclass
class RunHandle:
    """A run this process owns until ``publish``/``fail``/``close``."""

    id: int
    key: str
    kind: str
    params: dict[str, Any]
    engine: Engine
    tokens_done: int = 0
    _lock_conn: Connection | None = field(default=None, repr=False)
    _heartbeat: _Heartbeat | None = field(default=None, repr=False)

    def progress(self, tokens_done: int, tokens_total: int | None = None) -> None:
        self.tokens_done = tokens_done
        values: dict[str, Any] = {"tokens_done": tokens_done, "heartbeat_at": sa.func.now()}
        if tokens_total is not None:
            values["tokens_total"] = tokens_total
        with self.engine.begin() as conn:
            conn.execute(sa.update(_run_table()).where(_run_table().c.id == self.id).values(**values))

    def publish(self, results: Mapping[str, pl.DataFrame] | Callable[[psycopg.Connection], Any]) -> None:
        """In ONE transaction: clear any rows of this run, write the results, mark the run done.

        ``results`` is either ``{table: frame}`` (COPY-loaded in order; a ``run_id`` column is added
        when the frame has none) or a function ``write(conn)`` that does its own writes on the
        psycopg connection of the transaction (e.g. rows that need generated ids).
        """
        with self.engine.begin() as conn:
            _clear_results(conn, self.id)
            raw = conn.connection.driver_connection
            if callable(results):
                results(raw)
            else:
                for table, frame in results.items():
                    if "run_id" not in frame.columns:
                        frame = frame.with_columns(pl.lit(self.id, dtype=pl.Int64).alias("run_id"))
                    copy_frame(raw, table, frame)
            conn.execute(
                sa.update(_run_table()).where(_run_table().c.id == self.id).values(
                    status="done", finished_at=sa.func.now(), heartbeat_at=sa.func.now(), error=None,
                    tokens_done=self.tokens_done,
                )
            )
        self.close()

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed with a one-line message; waits up to FAIL_RETRY_S for a database that is away."""
        message = error_line(error)
        deadline = time.monotonic() + FAIL_RETRY_S
        self._stop_heartbeat()
        while True:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        sa.update(_run_table()).where(_run_table().c.id == self.id).values(
                            status="failed", error=message[:2000], finished_at=sa.func.now()
                        )
                    )
                break
            except sa.exc.DBAPIError as err:
                if not err.connection_invalidated and not isinstance(err, sa.exc.OperationalError) \
                        or time.monotonic() > deadline:
                    log.warning("run %s failed (%s) and the failure could not be recorded: %s", self.id, message,
                                error_line(err))
                    break
                time.sleep(1.0)
        self.close()

    def close(self) -> None:
        self._stop_heartbeat()
        if self._lock_conn is not None:
            try:  # the connection goes back to the pool, so unlock explicitly
                self._lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": _LOCK_NAMESPACE, "id": self.id})
                self._lock_conn.commit()
            except sa.exc.DBAPIError:
                self._lock_conn.invalidate()  # a broken connection: discard it (the server drops the lock)
            finally:
                self._lock_conn.close()
                self._lock_conn = None

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._lock_conn is not None:
            if isinstance(exc, KeyboardInterrupt):
                exc = AtlasError("interrupted — rerun the same command to resume from the last checkpoint")
            self.fail(exc)
        self.close()


class _Heartbeat(threading.Thread):
    """Refreshes ``run.heartbeat_at`` every ``HEARTBEAT_EVERY_S`` while the run's process lives (also
    while it loads a model or publishes, when no progress is reported)."""

    def __init__(self, engine: Engine, run_id: int):
        super().__init__(name=f"atlas-run-{run_id}-heartbeat", daemon=True)
        self.engine, self.run_id = engine, run_id
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(HEARTBEAT_EVERY_S):
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.update(_run_table()).where(
                        (_run_table().c.id == self.run_id) & (_run_table().c.status == "running")
                    ).values(heartbeat_at=sa.func.now()))
            except Exception:  # noqa: BLE001 - the database is away: the run itself notices and fails
                pass

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def error_line(error: BaseException | str) -> str:
    """One line for the user: the first line of the message, with the database's own words for DB errors."""
    if isinstance(error, sa.exc.DBAPIError) and error.orig is not None:
        text = str(error.orig).strip()
        first = text.splitlines()[0] if text else type(error.orig).__name__
        if isinstance(error, sa.exc.OperationalError):
            return (f"lost the database connection ({first}) — when the database is back, rerun the same step "
                    "(it resumes from its last checkpoint)")
        return first
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _clear_results(conn: Connection, run_id: int) -> None:
    """Delete every result row of a run (before publishing it again, or when forced)."""
    for table in RESULT_TABLES:
        conn.execute(sa.text(f"DELETE FROM {table} WHERE run_id = :id"), {"id": run_id})


def _run_table() -> sa.Table:
    from atlas.schema import Run

    return Run.__table__


def begin_run(
    engine: Engine,
    kind: str,
    *,
    params: dict[str, Any],
    model_id: int | None = None,
    cohort_id: int | None = None,
    dataset_id: int | None = None,
    device: str | None = None,
    tokens_total: int | None = None,
    force: bool = False,
) -> RunHandle | None:
    """Claim the run for this computation, or return None if it is already done (and not ``force``).

    A failed or interrupted run with the same key is taken over (its checkpoint can be resumed).
    ``force`` deletes a finished run's results and computes them again.
    """
    run = _run_table()
    key = run_key(kind, model_id=model_id, cohort_id=cohort_id, dataset_id=dataset_id, params=params)
    with engine.begin() as conn:
        row = conn.execute(sa.select(run.c.id, run.c.status, run.c.tokens_done).where(run.c.key == key)).first()
        if row is not None and row.status == "done" and not force:
            return None
        if row is None:
            # two callers creating the same run: the loser finds the winner's row (ON CONFLICT)
            run_id = conn.execute(
                pg_insert(run).values(
                    kind=kind, key=key, model_id=model_id, cohort_id=cohort_id, dataset_id=dataset_id,
                    params=params, code_version=code_version(), device=device, status="queued",
                    tokens_total=tokens_total,
                ).on_conflict_do_nothing(index_elements=["key"]).returning(run.c.id)
            ).scalar()
            if run_id is None:
                run_id = conn.execute(sa.select(run.c.id).where(run.c.key == key)).scalar_one()
            tokens_done = 0
        else:
            run_id, tokens_done = row.id, row.tokens_done

    lock_conn = engine.connect()
    got = lock_conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, :id)"), {"ns": _LOCK_NAMESPACE, "id": run_id}).scalar()
    lock_conn.commit()
    if not got:
        lock_conn.close()
        raise RunBusy(f"run {run_id} ({kind}) is being computed by another process — wait for it, or stop that worker")

    with engine.begin() as conn:
        if force and row is not None:
            _clear_results(conn, run_id)
            tokens_done = 0
        conn.execute(
            sa.update(run).where(run.c.id == run_id).values(
                status="running", error=None, started_at=sa.func.now(), heartbeat_at=sa.func.now(),
                finished_at=None, device=device, code_version=code_version(), tokens_done=tokens_done,
                tokens_total=tokens_total,
            )
        )
    handle = RunHandle(id=run_id, key=key, kind=kind, params=params, engine=engine,
                       tokens_done=tokens_done, _lock_conn=lock_conn)
    handle._heartbeat = _Heartbeat(engine, run_id)
    handle._heartbeat.start()
    return handle
