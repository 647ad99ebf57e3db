"""Scheduled ingestion: ``schedule``, ``worker``, ``queue``."""

from __future__ import annotations

import logging
import sys

import click

from atlas.app.cli import check_device, main
from atlas.errors import AtlasError


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only print what would be enqueued.")
def schedule(manifest: str, dry_run: bool) -> None:
    """Enqueue what MANIFEST (TOML) says should be in the atlas and is not yet.

    The manifest is validated first (one line naming the file, the table and the key of the first
    mistake). Each missing step whose prerequisites are done (build a dataset, ingest a model,
    correlate a cohort, classify it) becomes a job that `atlas worker` picks up; a step already
    queued or running is not queued twice; a step that failed before is queued again.
    """
    from atlas import db as dbm
    from atlas.app.manifest import load_manifest
    from atlas.app.planner import plan
    from atlas.app.queue import enqueue

    loaded = load_manifest(manifest)
    steps = plan(dbm.connect(migrate=True), loaded)
    if dry_run:
        outcomes = [(s, "would enqueue") for s in steps]
    else:
        outcomes = enqueue(steps, retry_failed=True)
    if not outcomes:
        click.echo("nothing to do: the atlas has everything the manifest lists (or waits for steps in progress)")
    for step, outcome in outcomes:
        click.echo(f"{step.key:<50} {outcome}")


class _OneLine(logging.Formatter):
    """Log records as one line each: an exception shows as its first line, not a traceback."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        from atlas.runs import error_line

        return f"  ({type(ei[1]).__name__}: {error_line(ei[1])})"

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " ")


def _logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if debug else _OneLine(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema checks before every step


@main.command()
@click.option("--manifest", type=click.Path(dir_okay=False), envvar="ATLAS_MANIFEST",
              help="Manifest the schedule keeps the atlas up to date with (default: $ATLAS_MANIFEST).")
@click.option("--device", default=None, callback=check_device, envvar="ATLAS_DEVICE",
              help="Device of this worker's steps: cpu, cuda, cuda:N or auto [default: $ATLAS_DEVICE or auto].")
@click.option("--concurrency", default=1, type=click.IntRange(min=1), show_default=True,
              help="Jobs run at once by this worker (keep 1 per GPU).")
@click.option("--name", default=None, help="This worker's name in the logs (default: host and pid).")
@click.option("--until-idle", is_flag=True,
              help="Batch use: run until nothing is queued or running (with a manifest: until nothing is missing), "
                   "then exit; non-zero when a step failed.")
@click.pass_context
def worker(ctx: click.Context, manifest: str | None, device: str | None, concurrency: int, name: str | None,
           until_idle: bool) -> None:
    """Run queued ingestion steps. Start one per GPU, on any number of machines: they share the
    database given by ATLAS_DATABASE_URL.

    \b
    With a manifest, the worker keeps the atlas up to date with it:
      - after each finished step it enqueues what became possible (e.g. correlate once the last
        model of a cohort is in);
      - every ATLAS_RECONCILE_EVERY_S (60 s) it retries the steps of workers that died (silent for
        ATLAS_STALLED_AFTER_S, 45 s; they resume from their checkpoints) and enqueues what the
        manifest gained: new models, new checkpoint directories matching a glob.
    """
    import os
    import socket

    from atlas import db as dbm
    from atlas.app import queue
    from atlas.app.manifest import load_manifest

    dbm.connect(migrate=True)
    if manifest:
        load_manifest(manifest)  # a broken manifest is refused now, in one line, not in every reconcile
        os.environ["ATLAS_MANIFEST"] = str(click.format_filename(manifest))
    if device:
        os.environ["ATLAS_DEVICE"] = device
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # worker logs: one line per event, no bars
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    _logging(ctx.obj.get("debug", False))
    mode = "until idle" if until_idle else "Ctrl-C to stop"
    click.echo(f"worker {name} started (device {device or 'auto'}, concurrency {concurrency}"
               f"{', manifest ' + manifest if manifest else ''}); {mode}", err=True)
    if not until_idle:
        queue.run_worker(concurrency=concurrency, name=name)
        return
    failed = queue.drain(concurrency=concurrency, name=name)
    if failed:
        raise AtlasError(f"{len(failed)} step(s) failed for good: {', '.join(failed)} — `atlas status` shows each "
                         "run's error; "
                         "fix the cause, then `atlas schedule MANIFEST` queues them again")
    click.echo("queue drained: nothing queued or running", err=True)


@main.command("queue")
@click.option("--all", "show_all", is_flag=True, help="Also jobs that succeeded or were superseded by a newer one.")
@click.option("--limit", default=50, type=click.IntRange(min=1), show_default=True, help="At most this many jobs.")
def queue_cmd(show_all: bool, limit: int) -> None:
    """The queue's jobs by state (todo, doing, stale = its worker stopped answering, failed, ...),
    with their step and worker, newest first."""
    from atlas import db as dbm
    from atlas import queries

    found = queries.queue_jobs(dbm.connect(), pending_only=not show_all, limit=limit)
    if not found.height:
        click.echo("the queue is empty" + ("" if show_all else " of pending, running and failed steps "
                                                               "(--all shows finished ones)"))
        return
    counts = found.group_by("state").len().sort("state")
    click.echo(", ".join(f"{n} {state}" for state, n in counts.iter_rows()))
    click.echo(f"{'job':>6}  {'state':<9} {'attempts':>8}  {'worker':<10} step")
    for j in found.iter_rows(named=True):
        click.echo(f"{j['id']:>6}  {j['state']:<9} {j['attempts']:>8}  {j['worker'] or '-':<10} {j['step']}")
