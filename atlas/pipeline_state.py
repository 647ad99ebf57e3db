"""The pipeline's state, read with SQL only (no queue library needed): runs with their live state
and the job queue's jobs. ``atlas status``, ``atlas queue`` and the UI's runs page read it.

- ``runs(engine)``: every run, newest first, with ``state`` = its status, or ``stale`` for a
  ``running`` run whose process died (nobody holds its lock; the ``run_state`` view).
- ``queue_jobs(engine)``: the queue's jobs, newest first, with ``state`` = todo | doing | stale
  (doing, but its worker stopped sending heartbeats) | succeeded | failed | cancelled | aborted.
"""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atlas.settings import get_settings


def _frame(engine: Engine, sql: str, params: dict) -> pl.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(sa.text(sql), params)
        return pl.DataFrame([dict(r._mapping) for r in result], schema=list(result.keys()), orient="row",
                            infer_schema_length=None)


def runs(engine: Engine, *, limit: int = 200) -> pl.DataFrame:
    """Runs, newest first: id, kind, subject (model or cohort), dataset, state, progress, error."""
    return _frame(engine, """
        SELECT s.id, s.kind, coalesce(c.name, m.name) AS subject, d.name AS dataset, s.state, s.tokens_done,
               s.tokens_total, s.device, s.heartbeat_age_s, s.started_at, s.finished_at, s.error
        FROM run_state s LEFT JOIN model m ON m.id = s.model_id LEFT JOIN cohort c ON c.id = s.cohort_id
        LEFT JOIN dataset d ON d.id = s.dataset_id
        ORDER BY s.id DESC LIMIT :n
    """, {"n": limit})


def queue_jobs(engine: Engine, *, current_only: bool = False, pending_only: bool = False,
               limit: int = 200, stalled_after_s: float | None = None) -> pl.DataFrame:
    """Jobs of the queue, newest first: id, step, task, state, attempts, worker, updated_at.

    ``current_only``: the newest job of each step; ``pending_only``: drop succeeded and superseded
    jobs. A ``doing`` job is ``stale`` when its worker has been silent for ``stalled_after_s``
    (default: the ``ATLAS_STALLED_AFTER_S`` setting)."""
    after = get_settings().stalled_after_s if stalled_after_s is None else stalled_after_s
    where = ["TRUE"]
    if current_only or pending_only:
        where.append("current")
    if pending_only:
        where.append("status NOT IN ('succeeded', 'cancelled')")
    return _frame(engine, f"""
        SELECT id, step, task,
               CASE WHEN status = 'doing' AND (worker_heartbeat_age_s IS NULL OR worker_heartbeat_age_s > :after)
                    THEN 'stale' ELSE status END AS state,
               attempts, CASE WHEN worker_id IS NOT NULL THEN 'worker ' || worker_id END AS worker, updated_at
        FROM queue_job WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :n
    """, {"after": after, "n": limit})
