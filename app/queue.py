"""Scheduled ingestion on a PostgreSQL-backed job queue (procrastinate).

Workers on any number of machines share the one database: ``atlas worker`` claims queued steps
(build a dataset, ingest a model, correlate a cohort, classify it) and runs them; a periodic task
re-reads the manifest (``ATLAS_MANIFEST``) and enqueues whatever is missing. Each step is an
atlas run, so a worker killed mid-step leaves a checkpoint; the step is retried (stalled-job
detection by heartbeat) and resumes from it.

Queue tables live in the PostgreSQL schema ``procrastinate`` (migration 0002).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc

from atlas.app.manifest import Step, load_manifest, plan

log = logging.getLogger("atlas.app.queue")

QUEUE = "atlas"
RECONCILE_CRON = os.environ.get("ATLAS_SCHEDULE_CRON", "*/5 * * * *")
STALLED_AFTER_S = 120


def _conninfo() -> str:
    from atlas.db import resolve_url

    return resolve_url().replace("postgresql+psycopg://", "postgresql://", 1)


app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=["atlas.app.queue"])


# ---------------------------------------------------------------- the steps


def run_step(kind: str, args: dict[str, Any]) -> None:
    """Execute one step in this process (workers call this; so can `atlas schedule --now`)."""
    from atlas.db import connect

    engine = connect()
    if kind == "build_dataset":
        from atlas.ingest.pipeline import build_dataset_step

        build_dataset_step(engine, **args)
    elif kind == "ingest_model":
        from atlas.ingest.pipeline import ingest_model_step

        ingest_model_step(engine, **args)
    elif kind == "correlate_cohort":
        from atlas.ingest.pipeline import correlate_cohort_step

        correlate_cohort_step(engine, **args)
    elif kind == "classify_cohort":
        from atlas.ingest.pipeline import classify_cohort_step

        classify_cohort_step(engine, **args)
    else:
        raise ValueError(f"unknown step kind {kind!r}")


@app.task(name="atlas.step", queue=QUEUE, retry=procrastinate.RetryStrategy(max_attempts=3, wait=10), pass_context=True)
def step_task(context: procrastinate.JobContext, kind: str, args: dict[str, Any]) -> None:
    log.info("job %s: %s %s", context.job.id, kind, args)
    run_step(kind, args)
    manifest = os.environ.get("ATLAS_MANIFEST")
    if manifest:  # enqueue what became possible (e.g. correlate once the last model is in)
        enqueue_plan(context.app, load_manifest(manifest))


@app.periodic(cron=RECONCILE_CRON, periodic_id="reconcile")
@app.task(name="atlas.reconcile", queue=QUEUE, queueing_lock="atlas.reconcile", pass_context=True)
def reconcile(context: procrastinate.JobContext, timestamp: int) -> None:
    """Periodic: retry jobs whose worker died, then enqueue what the manifest still lacks."""
    manager = context.app.job_manager
    for job in manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_S):
        log.warning("job %s stalled (worker gone): retrying", job.id)
        manager.retry_job(job)
    manifest = os.environ.get("ATLAS_MANIFEST")
    if manifest:
        enqueue_plan(context.app, load_manifest(manifest))


def enqueue_plan(bound_app: procrastinate.App, manifest, *, dry_run: bool = False) -> list[tuple[Step, str]]:
    """Enqueue every missing step of ``manifest``; return (step, outcome) pairs for display."""
    from atlas.db import connect

    steps = plan(connect(), manifest)
    outcomes: list[tuple[Step, str]] = []
    for step in steps:
        if dry_run:
            outcomes.append((step, "would enqueue"))
            continue
        try:
            job_id = bound_app.configure_task("atlas.step", queueing_lock=step.key, lock=step.key).defer(
                kind=step.kind, args=step.args)
            outcomes.append((step, f"enqueued as job {job_id}"))
        except pexc.AlreadyEnqueued:
            outcomes.append((step, "already queued"))
    return outcomes


def connector(conninfo: str | None = None) -> procrastinate.PsycopgConnector:
    """A connector to the atlas database with the queue schema first on the search path."""
    return procrastinate.PsycopgConnector(
        conninfo=conninfo or _conninfo(), kwargs={"options": "-c search_path=procrastinate,public"},
    )


@contextlib.contextmanager
def opened_app(conninfo: str | None = None) -> Iterator[procrastinate.App]:
    """The app with its tasks, bound to the atlas database and open (for enqueuing)."""
    with app.replace_connector(connector(conninfo)) as bound, bound.open():
        yield bound


def run_worker(*, concurrency: int = 1, wait: bool = True, conninfo: str | None = None) -> None:
    """Run a worker: claims atlas steps and the periodic reconcile until stopped (or idle, if not ``wait``)."""
    with app.replace_connector(connector(conninfo)) as bound:
        bound.run_worker(queues=[QUEUE], concurrency=concurrency, wait=wait, install_signal_handlers=wait)
