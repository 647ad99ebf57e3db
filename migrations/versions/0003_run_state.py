"""Views of the pipeline's state: ``run_state`` (a run whose process died shows as ``stale``) and
``queue_job`` (the job queue's jobs, readable without access to the ``procrastinate`` schema).

A ``running`` run is stale when no session holds its advisory lock (class 7212, object = run id):
the process that computed it is gone (killed, machine lost, database restarted under it). The
next caller of the same run resumes it from its checkpoint.

Revision ID: 0003_run_state
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003_run_state"
down_revision = "0002"
branch_labels = None
depends_on = None

RUN_STATE = """
CREATE VIEW run_state AS
SELECT r.id, r.kind, r.model_id, r.cohort_id, r.dataset_id, r.status,
       CASE WHEN r.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 7212 AND l.objsubid = 2
                  AND l.objid::bigint = r.id
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
            THEN 'stale' ELSE r.status END AS state,
       r.tokens_done, r.tokens_total, r.error, r.device, r.code_version,
       r.created_at, r.started_at, r.heartbeat_at, r.finished_at,
       extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_s
FROM run r
"""

QUEUE_JOB = """
CREATE VIEW queue_job AS
SELECT j.id, coalesce(j.queueing_lock, j.lock, j.task_name) AS step, j.task_name AS task,
       j.status::text AS status, j.attempts, j.worker_id, w.last_heartbeat AS worker_heartbeat_at,
       extract(epoch FROM now() - w.last_heartbeat)::float8 AS worker_heartbeat_age_s,
       j.scheduled_at, j.queue_name,
       NOT EXISTS (SELECT 1 FROM procrastinate.procrastinate_jobs n
                   WHERE n.queueing_lock = j.queueing_lock AND n.id > j.id) AS current,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events e WHERE e.job_id = j.id) AS updated_at
FROM procrastinate.procrastinate_jobs j
LEFT JOIN procrastinate.procrastinate_workers w ON w.id = j.worker_id
WHERE j.task_name <> 'atlas.reconcile'
"""


def upgrade() -> None:
    op.execute(RUN_STATE)
    op.execute(QUEUE_JOB)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS queue_job")
    op.execute("DROP VIEW IF EXISTS run_state")
