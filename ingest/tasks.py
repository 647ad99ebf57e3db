"""The pipeline's steps as typed procrastinate tasks (a Blueprint).

Each task is one step with typed keyword arguments and runs one kind of ingestion run against the
atlas database (``atlas.db.connect``) on the worker's device (``ATLAS_DEVICE``, default auto). A
step is an atlas run: a retried step resumes from the run's checkpoint, and a step whose run is
done is a no-op. Which steps are missing, and in which order they come, is decided in one place
only: the planner (``atlas.app.planner``); the app layer registers this blueprint on its queue
under the namespace ``ingest`` (task names ``ingest:build_dataset``, ...).

Calling a task directly (``ingest_model(source=..., ...)``) runs the step in this process; that is
how ``atlas demo`` drives the same steps without a queue.
"""

from __future__ import annotations

import os

import procrastinate
import psycopg
import sqlalchemy as sa

from atlas.errors import DatabaseUnavailable
from atlas.runs import RunBusy

QUEUE = "atlas"
#: Retried: a database that went away, and a run another process still holds. Bad input is not
#: (it fails at once, with its one-line error, until the manifest is fixed).
TRANSIENT = (sa.exc.OperationalError, psycopg.OperationalError, DatabaseUnavailable, RunBusy)
RETRY = procrastinate.RetryStrategy(max_attempts=6, wait=5, exponential_wait=2, retry_exceptions=TRANSIENT)

blueprint = procrastinate.Blueprint()


def _engine():
    from atlas.db import connect

    return connect()


def _device() -> str:
    from atlas.settings import get_settings

    return get_settings().device


def _checkpoint_every() -> int | None:
    from atlas.settings import get_settings

    return get_settings().checkpoint_every


def _drill_delay() -> float:
    """Seconds to sleep per batch: fault drills (tests) use it to kill a worker mid-step. Not for users."""
    return float(os.environ.get("ATLAS_DRILL_BATCH_DELAY_S") or 0.0)


@blueprint.task(name="build_dataset", queue=QUEUE, retry=RETRY)
def build_dataset(*, name: str, tokenizer_from: str, inputs: list[str], hf_dataset: str | None,
                  context_length: int, max_tokens: int | None) -> None:
    """Tokenise ``inputs`` (files) or ``hf_dataset`` with the tokenizer of the model ``tokenizer_from``
    (a source: hub name or checkpoint directory) into the dataset ``name``."""
    from atlas.ingest.datasets import build_dataset as build

    build(_engine(), name, tokenizer_source=tokenizer_from, inputs=inputs, hf_dataset=hf_dataset,
          context_length=context_length, max_tokens=max_tokens)


@blueprint.task(name="ingest_model", queue=QUEUE, retry=RETRY)
def ingest_model(*, source: str, name: str, cohort: str, seed_label: str | None, dataset: str,
                 step: int | None = None, train_tokens: int | None = None, checkpoint_of: str | None = None,
                 stats: bool = True) -> None:
    """Register the model ``name`` (from ``source``) in ``cohort``; its weights and (unless not
    ``stats``) stats runs on ``dataset``. With ``step``: a training checkpoint (of the registered
    model ``checkpoint_of``, when given)."""
    from atlas.ingest.runs.stats import StatsOptions, TrainingStep
    from atlas.ingest.runs.stats import ingest_model as ingest

    checkpoint = None if step is None else TrainingStep(step, train_tokens, checkpoint_of)
    for outcome in ingest(_engine(), source, dataset=dataset, name=name, cohort=cohort, seed_label=seed_label,
                          checkpoint=checkpoint, stats=stats,
                          options=StatsOptions(device=_device(), progress=False, checkpoint_every=_checkpoint_every(),
                                               batch_delay=_drill_delay())):
        print(outcome.describe(), flush=True)


@blueprint.task(name="correlate_cohort", queue=QUEUE, retry=RETRY)
def correlate_cohort(*, cohort: str, dataset: str, reference: str | None, models: list[str],
                     rotation: str = "orthogonal") -> None:
    """Correlate ``models`` of ``cohort`` (reference first) over ``dataset`` with the ``rotation``
    baseline: a new run when the set or the baseline changed."""
    from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation

    every = _checkpoint_every()
    run_correlation(_engine(), cohort, dataset, CorrelateOptions(
        reference=reference, models=tuple(models), rotation=rotation, device=_device(), progress=False,
        **({"checkpoint_tokens": every} if every else {})))


@blueprint.task(name="examples_cohort", queue=QUEUE, retry=RETRY)
def examples_cohort(*, cohort: str, dataset: str) -> None:
    """Store every token's activation around each stored example of the cohort's models, and the
    reference's best partners on its top examples (after the correlation)."""
    from atlas.ingest.runs.examples import ExamplesOptions, run_examples

    print(run_examples(_engine(), cohort, dataset, ExamplesOptions(device=_device(), progress=False)).describe(),
          flush=True)


@blueprint.task(name="classify_cohort", queue=QUEUE, retry=RETRY)
def classify_cohort(*, cohort: str, dataset: str, models: list[str]) -> None:
    """Label the neurons of ``models`` of ``cohort`` on ``dataset`` (families across their seeds)."""
    from atlas.ingest.runs.classify import ClassifyOptions, ClassifySubject, run_classify

    # Every neuron is labelled: the atlas counts families among universal neurons at query time, where
    # the excess threshold is a parameter (the paper's 0.5 by default), not baked into stored rows.
    run_classify(_engine(), ClassifySubject(cohort=cohort, models=tuple(models)), dataset,
                 ClassifyOptions(device=_device(), progress=False, universal_only=False))


STEPS = {task.name: task for task in (build_dataset, ingest_model, correlate_cohort, examples_cohort, classify_cohort)}
