"""Views of the pipeline's state: ``run_state`` (a run whose process died shows as ``stale``) and
``queue_job`` (the job queue's jobs, readable without access to the ``procrastinate`` schema).

A ``running`` run is stale when no session holds its advisory lock (class 7212, object = run id):
the process that computed it is gone (killed, machine lost, database restarted under it). The
next caller of the same run resumes it from its checkpoint.

The SQL and comments are a COPY of atlas/views.py at this revision (migrations are frozen history).

Revision ID: 0004_run_state
Revises: 0003_view_comments
"""

from __future__ import annotations

from alembic import op

revision = "0004_run_state"
down_revision = "0003_view_comments"
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

COMMENTS: dict[str, tuple[str, dict[str, str]]] = {'run_state': ("Every run with its live state: the status, or 'stale' for a running run whose process died (no "
               'session holds its advisory lock); the next caller of the same run resumes it from its checkpoint.',
               {'id': "the run's id (run_id in other tables)",
                'kind': 'what it computes: stats | weights | correlation | classify',
                'model_id': 'its subject model: the model (stats, weights), the reference model (correlation), the '
                            'one model (classify)',
                'cohort_id': 'its subject cohort (correlation, classify; null otherwise)',
                'dataset_id': 'the token dataset it read (null: weights runs need none)',
                'status': 'queued | running | done | failed',
                'tokens_done': 'dataset tokens processed so far',
                'tokens_total': 'dataset tokens to process (null: unknown)',
                'error': 'one-line error of a failed run',
                'device': 'where it ran (cpu, cuda:0)',
                'code_version': 'package version and git commit that computed it',
                'created_at': 'when the row was written',
                'started_at': 'when it (last) started',
                'heartbeat_at': 'last sign of life of the process computing it',
                'finished_at': 'when it became done or failed (newest done wins)',
                'state': "status, or 'stale' for a running run whose process is gone (nobody holds its lock)",
                'heartbeat_age_s': "seconds since the run's process last reported it was alive"}),
 'queue_job': ('The jobs of the ingestion queue (procrastinate), readable without access to its schema: one row per '
               'job of a pipeline step (the periodic reconcile left out), newest last.',
               {'id': "the job's id (procrastinate_jobs.id)",
                'step': "the pipeline step, e.g. ingest:demo-a:demo (the job's queueing lock)",
                'task': 'the task that runs it, e.g. ingest:ingest_model',
                'status': "todo | doing | succeeded | failed | cancelled | aborted (procrastinate's)",
                'attempts': 'how many times the job was tried',
                'worker_id': 'the worker holding it while doing (procrastinate_workers.id)',
                'worker_heartbeat_at': 'when that worker last said it was alive',
                'worker_heartbeat_age_s': 'seconds since then: a doing job of a silent worker is retried by the '
                                          'reconcile',
                'scheduled_at': 'not before this time (retries wait)',
                'queue_name': 'the queue (atlas)',
                'current': 'true for the newest job of its step',
                'updated_at': "the job's last event"})}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute(RUN_STATE)
    op.execute(QUEUE_JOB)
    for view, (comment, columns) in COMMENTS.items():
        op.execute(f"COMMENT ON VIEW {view} IS {_quote(comment)}")
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_quote(text)}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS queue_job")
    op.execute("DROP VIEW IF EXISTS run_state")
