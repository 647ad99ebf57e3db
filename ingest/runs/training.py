"""Universality over training: training checkpoints as models, the seeds at one step as a cohort.

A checkpoint saved during a model's training is registered as a model of its own with
``model.step``, ``model.train_tokens`` and ``model.checkpoint_of`` (the final model of that
training), named ``<final>@step<N>``; the seeds' checkpoints at one step form the cohort
``<cohort>@step<N>``. Each such cohort is correlated by the ordinary correlation run
(``atlas.ingest.runs.correlate.run_correlation``), and ``atlas.queries.training`` lines the steps up
against training tokens.

- ``register_checkpoint``: one checkpoint, a local directory or a hub model at a ``revision``
  (Pythia publishes its training checkpoints as revisions ``step1000``, ``step2000``, …).
- ``register_zoo_cohort``: the zoo's final models (with their final step) and every intermediate
  checkpoint the zoo saved with them (``atlas.ingest.zoo.checkpoint_dirs``).
- ``step_cohorts`` (``atlas.ingest.store``): the per-step cohorts of a cohort's models, by step.
- ``correlate_over_training``: correlate every step cohort, then the cohort itself.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.runs.common import RunOutcome
from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation
from atlas.ingest.runs.stats import StatsOptions, TrainingStep, ingest_model
from atlas.ingest.store import checkpoint_at, model_id_by_name, step_cohorts


def register_checkpoint(engine: Engine, source: str, checkpoint: TrainingStep, *, name: str | None = None,
                        cohort: str | None = None, seed_label: str | None = None, dataset: str | None = None,
                        stats: bool = False, weights: bool = False,
                        options: StatsOptions | None = None) -> tuple[int, list[RunOutcome]]:
    """Register the checkpoint in ``source`` (a local directory, or a hub name at
    ``checkpoint.revision``) as a model at ``checkpoint.step``; ``checkpoint.checkpoint_of`` names the
    (already registered) model whose training it belongs to — None for that final model itself.
    With ``weights``/``stats`` (and ``dataset``) its statistics are ingested too. Returns the model
    id and the runs' outcomes."""
    outcomes = ingest_model(engine, source, dataset=dataset, name=name, cohort=cohort, seed_label=seed_label,
                            options=options or StatsOptions(), weights=weights, stats=stats, checkpoint=checkpoint)
    registered = model_id_by_name(engine, name or _default_name(source, checkpoint))
    return int(registered) if registered is not None else -1, outcomes


def _default_name(source: str, checkpoint: TrainingStep) -> str:
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve().name
    return f"{source}@{checkpoint.revision}" if checkpoint.revision else source


def register_zoo_cohort(engine: Engine, paths: Sequence[Path], *, cohort: str, labels: Sequence[str],
                        options: StatsOptions | None = None, log=None) -> dict[str, int]:
    """Register zoo models (``paths``: their checkpoint directories, seed ``labels``) in ``cohort``
    with their final step, and every intermediate checkpoint saved with them in ``<cohort>@step<N>``.
    Idempotent. Returns ``{model name: id}``."""
    from atlas.ingest.zoo import checkpoint_dirs, checkpoint_name

    ids: dict[str, int] = {}
    for path, label in zip(paths, labels):
        meta = _zoo_meta(Path(path))
        final = Path(path).name
        ids[final], _ = register_checkpoint(
            engine, str(path), TrainingStep(int(meta["train_steps"]), int(meta["train_tokens"])), cohort=cohort,
            seed_label=label, options=options)
        checkpoints = checkpoint_dirs(Path(path))
        for ckpt in checkpoints:
            name = checkpoint_name(final, ckpt.step)
            ids[name], _ = register_checkpoint(
                engine, str(ckpt.path), TrainingStep(ckpt.step, ckpt.train_tokens, checkpoint_of=final), name=name,
                cohort=checkpoint_name(cohort, ckpt.step), seed_label=label, options=options)
        if log:
            log(f"{final}: {len(checkpoints)} training checkpoint(s) registered")
    return ids


def _zoo_meta(path: Path) -> dict:
    meta_file = path / "zoo.json"
    if not meta_file.is_file():
        raise AtlasError(f"{path} has no zoo.json — it is not a model trained by `atlas zoo train`")
    return json.loads(meta_file.read_text())


def correlate_over_training(engine: Engine, cohort: str, dataset: str,
                            options: CorrelateOptions | None = None) -> list[tuple[int | None, RunOutcome]]:
    """Correlate the seeds of every step cohort of ``cohort`` (the reference is ``options.reference``'s
    checkpoint at that step; default the first seed), then ``cohort`` itself. Returns ``(step,
    outcome)`` per correlation (step None: the cohort's own models)."""
    options = options or CorrelateOptions()
    done: list[tuple[int | None, RunOutcome]] = []
    for step, step_cohort in step_cohorts(engine, cohort):
        ref = None
        if options.reference:
            ref = checkpoint_at(engine, options.reference, step)
            if ref is None:
                raise AtlasError(f"model {options.reference} has no checkpoint at step {step} — its cohort's other "
                                 "seeds do")
        done.append((step, run_correlation(engine, step_cohort, dataset, replace(options, reference=ref))))
    done.append((None, run_correlation(engine, cohort, dataset, options)))
    return done
