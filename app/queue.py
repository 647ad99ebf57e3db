"""Scheduled ingestion on a PostgreSQL-backed job queue (procrastinate, schema ``procrastinate``).

Workers on any number of machines share the one database. ``atlas worker`` claims queued steps
(the typed tasks of ``atlas.ingest.tasks``) and runs them. With a manifest (``ATLAS_MANIFEST``):

- after every finished step the worker asks the planner what became possible and enqueues it
  (a task middleware), so a cohort flows from dataset to families without waiting;
- the periodic task ``atlas.reconcile`` (every ``ATLAS_RECONCILE_EVERY_S``) retries the jobs of
  workers that stopped sending heartbeats (killed, machine lost) and enqueues what is missing or
  stale, e.g. a model added to the manifest, or a new checkpoint directory matching a glob.

A job whose worker died is retried at most ``stalled_after + worker_heartbeat + reconcile_every``
seconds after the worker's last heartbeat (≤ 2 min by default) and resumes from its run's
checkpoint. A step is queued at most once (queueing lock = its key) and never runs twice at once
(job lock = its key; the run's advisory lock on top). A step that failed for good (bad input) is
not re-queued by the schedule: ``atlas schedule`` after fixing the cause queues it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc

from atlas.app.manifest import Manifest, load_manifest
from atlas.app.planner import Step, plan
from atlas.errors import AtlasError
from atlas.ingest import tasks
from atlas.settings import get_settings

log = logging.getLogger("atlas.app.queue")

QUEUE = tasks.QUEUE
NAMESPACE = "ingest"


def reconcile_cron(every_s: int) -> str:
    """A procrastinate cron (six fields: the last is seconds) firing every ``every_s`` seconds."""
    if every_s < 60 and 60 % every_s == 0:
        return f"* * * * * */{every_s}"
    if every_s % 60 == 0 and 60 % (every_s // 60) == 0:
        return f"*/{every_s // 60} * * * *"
    raise AtlasError(f"ATLAS_RECONCILE_EVERY_S={every_s} must divide 60 (seconds) or be 60 × a divisor of 60 — "
                     "e.g. 10, 30, 60, 300")


def _conninfo() -> str:
    from atlas.db import resolve_url

    return resolve_url().replace("postgresql+psycopg://", "postgresql://", 1)


app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["atlas.app.queue"])
app.add_tasks_from(tasks.blueprint, namespace=NAMESPACE)


def task_name(step: Step) -> str:
    return f"{NAMESPACE}:{step.task}"


# ---------------------------------------------------------------- enqueueing

async def _step_keys(bound: procrastinate.App) -> tuple[set[str], set[str]]:
    """(keys of steps queued or running, keys of steps whose newest job failed for good)."""
    rows = await bound.connector.execute_query_all_async(
        "SELECT DISTINCT ON (queueing_lock) queueing_lock AS key, status::text AS status FROM procrastinate_jobs "
        "WHERE queue_name = %(q)s AND queueing_lock IS NOT NULL ORDER BY queueing_lock, id DESC", q=QUEUE)
    return ({r["key"] for r in rows if r["status"] in ("todo", "doing")},
            {r["key"] for r in rows if r["status"] == "failed"})


async def enqueue_async(bound: procrastinate.App, steps: list[Step], *,
                        retry_failed: bool = False) -> list[tuple[Step, str]]:
    """Defer each step as a job of its task (on an app opened with ``open_async``); returns
    (step, outcome) pairs for display."""
    active, failed = await _step_keys(bound)
    outcomes: list[tuple[Step, str]] = []
    for step in steps:
        if step.key in active:
            outcomes.append((step, "already queued or running"))
        elif step.key in failed and not retry_failed:
            outcomes.append((step, "failed before — fix the cause, then `atlas schedule` queues it again"))
        else:
            try:
                job_id = await bound.configure_task(task_name(step), queueing_lock=step.key,
                                                    lock=step.key).defer_async(**step.kwargs)
                outcomes.append((step, f"enqueued as job {job_id}"))
            except pexc.AlreadyEnqueued:
                outcomes.append((step, "already queued or running"))
    return outcomes


async def _plan_async(manifest: Manifest) -> list[Step]:
    from atlas.db import connect

    return await asyncio.to_thread(lambda: plan(connect(), manifest))


def _manifest() -> Manifest | None:
    path = os.environ.get("ATLAS_MANIFEST")
    return load_manifest(path) if path else None


def enqueue(steps: list[Step], *, retry_failed: bool = False, conninfo: str | None = None) -> list[tuple[Step, str]]:
    """``enqueue_async`` from synchronous code (``atlas schedule``)."""
    async def go() -> list[tuple[Step, str]]:
        with app.replace_connector(connector(conninfo)) as bound:
            async with bound.open_async():
                return await enqueue_async(bound, steps, retry_failed=retry_failed)

    return asyncio.run(go())


# ---------------------------------------------------------------- faults: jobs of dead workers

async def retry_stalled_jobs(bound: procrastinate.App, stalled_after_s: float) -> list[str]:
    """Put the ``doing`` jobs of workers silent for ``stalled_after_s`` back to ``todo`` (they resume
    from their run's checkpoint). When a copy of the step was queued meanwhile, the stalled job is
    marked failed instead, so the copy runs and nothing waits on a lock forever."""
    manager = bound.job_manager
    done: list[str] = []
    for job in await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=stalled_after_s):
        try:
            await manager.retry_job(job)
            done.append(f"job {job.id} ({job.queueing_lock or job.task_name}) of a dead worker: retried")
        except pexc.UniqueViolation:
            await manager.finish_job(job, status=procrastinate.jobs.Status.FAILED, delete_job=False)
            done.append(f"job {job.id} ({job.queueing_lock or job.task_name}) of a dead worker: superseded by a "
                        "queued copy")
    for line in done:
        log.warning(line)
    return done


async def reconcile_once(bound: procrastinate.App) -> None:
    """Retry the jobs of dead workers, then enqueue what the manifest (``ATLAS_MANIFEST``) still lacks."""
    await retry_stalled_jobs(bound, get_settings().stalled_after_s)
    manifest = _manifest()
    if manifest is not None:
        for step, outcome in await enqueue_async(bound, await _plan_async(manifest)):
            if outcome.startswith("enqueued"):
                log.info("%s %s", step.key, outcome)


@app.periodic(cron=reconcile_cron(get_settings().reconcile_every_s), periodic_id="reconcile")
@app.task(name="atlas.reconcile", queue=QUEUE, queueing_lock="atlas.reconcile", pass_context=True)
async def reconcile(context: procrastinate.JobContext, timestamp: int) -> None:
    """Periodic: retry the jobs of dead workers, then enqueue what the manifest still lacks."""
    await reconcile_once(context.app)


async def advance_after_step(call_next, context: procrastinate.JobContext, worker) -> Any:
    """Worker middleware: once a step succeeds, enqueue what it made possible (its successors)."""
    result = await call_next()
    manifest = _manifest()
    if manifest is not None and context.job.task_name.startswith(f"{NAMESPACE}:"):
        for step, outcome in await enqueue_async(context.app, await _plan_async(manifest)):
            if outcome.startswith("enqueued"):
                log.info("next: %s %s", step.key, outcome)
    return result


# ---------------------------------------------------------------- app, workers, the queue's state

def connector(conninfo: str | None = None) -> procrastinate.PsycopgConnector:
    """A connector to the atlas database with the queue schema first on the search path."""
    return procrastinate.PsycopgConnector(
        conninfo=conninfo or _conninfo(), kwargs={"options": "-c search_path=procrastinate,public"},
    )


def _worker_options(concurrency: int, wait: bool, name: str | None) -> dict[str, Any]:
    settings = get_settings()
    return dict(queues=[QUEUE], concurrency=concurrency, wait=wait, install_signal_handlers=wait, name=name,
                update_heartbeat_interval=settings.worker_heartbeat_s,
                stalled_worker_timeout=settings.stalled_after_s,
                worker_middleware=[advance_after_step])


def run_worker(*, concurrency: int = 1, name: str | None = None, conninfo: str | None = None) -> None:
    """Run a worker until stopped (Ctrl-C / SIGTERM finish the current job first)."""
    with app.replace_connector(connector(conninfo)) as bound:
        bound.run_worker(**_worker_options(concurrency, True, name))


def drain(*, concurrency: int = 1, name: str | None = None, poll_s: float = 1.0,
          conninfo: str | None = None) -> list[str]:
    """Run jobs until none is queued or running (with a manifest: until nothing is missing); retry
    dead workers' jobs meanwhile. Returns the steps whose newest job failed for good."""
    from atlas import queries
    from atlas.db import connect

    async def drained() -> bool:
        async with bound.open_async():
            await reconcile_once(bound)
            counts = await _counts(bound)
            if counts.get("todo", 0):
                await bound.run_worker_async(**_worker_options(concurrency, False, name))
                return False
        return not counts.get("doing", 0)

    with app.replace_connector(connector(conninfo)) as bound:
        while not asyncio.run(drained()):
            time.sleep(poll_s)  # jobs are running elsewhere (or were just run): their successors may follow
    jobs = queries.queue_jobs(connect(), current_only=True, limit=100_000)
    return sorted(jobs.filter(jobs["state"] == "failed")["step"].to_list()) if jobs.height else []


async def _counts(bound: procrastinate.App) -> dict[str, int]:
    rows = await bound.connector.execute_query_all_async(
        "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs WHERE queue_name = %(q)s "
        "AND task_name <> 'atlas.reconcile' GROUP BY status", q=QUEUE)
    return {r["status"]: int(r["n"]) for r in rows}
