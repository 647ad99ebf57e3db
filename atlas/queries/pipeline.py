"""The job queue's state, read with SQL only (view ``queue_job``; no queue library needed):
``atlas queue``, ``atlas worker --until-idle`` and the UI's runs page read it. Runs and their live
state (``stale``) are ``catalog.runs``.
"""

from __future__ import annotations

import polars as pl
from sqlalchemy.engine import Engine

from atlas.queries._sql import frame
from atlas.settings import get_settings


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
    return frame(engine, f"""
        SELECT id, step, task,
               CASE WHEN status = 'doing' AND (worker_heartbeat_age_s IS NULL OR worker_heartbeat_age_s > :after)
                    THEN 'stale' ELSE status END AS state,
               attempts, CASE WHEN worker_id IS NOT NULL THEN 'worker ' || worker_id END AS worker, updated_at
        FROM queue_job WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :n
    """, {"after": after, "n": limit})
