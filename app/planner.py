"""The pipeline's order, written once: what the manifest asks for that the atlas lacks.

For every dataset and cohort of a manifest, ``plan`` compares what should be there with the
finished runs in the database and returns the steps whose prerequisites are met, in order:

    build the dataset → ingest each model (weights + stats; a training checkpoint after the final
    model it is a checkpoint of) → correlate the cohort once all its models are in → then both:
    store the activations around every example (``examples``) and classify the cohort

Universality over training needs no step of its own: the seeds' checkpoints at one training step
are a cohort of the manifest (``atlas.app.demo`` writes one per shipped step), correlated like any
other; its models carry ``step`` and ``checkpoint_of``, and a cohort may skip activation statistics
(``stats = false``: weights only), examples and classify.

A cohort that gained a model is stale: its newest correlation, examples and classification cover
another model set, so all are planned again (new runs; the old ones stay queryable). A worker runs the
steps from the queue (``atlas.app.queue``); ``run_in_process`` runs them here until nothing is
missing (``atlas demo``). Each step is one typed task of ``atlas.ingest.tasks``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.engine import Engine

from atlas.app.manifest import Manifest
from atlas.errors import AtlasError
from atlas.ingest import store


@dataclass(frozen=True)
class Step:
    """One unit of work: the ingest task to run and its keyword arguments. ``key`` names the step;
    it is the queueing lock and the lock of its job (never queued twice, never run twice at once)."""

    task: str  # build_dataset | ingest_model | correlate_cohort | examples_cohort | classify_cohort
    kwargs: dict[str, Any] = field(hash=False)
    key: str = ""

    def describe(self) -> str:
        return self.key


@dataclass
class _Done:
    """What the database already holds (finished runs only)."""

    datasets: set[str]
    runs: list[dict[str, Any]]

    @classmethod
    def read(cls, engine: Engine) -> _Done:
        return cls(store.dataset_names(engine), store.finished_runs(engine))

    def _has(self, kind: str, **match: Any) -> bool:
        return any(r["kind"] == kind and all(r[k] == v for k, v in match.items()) for r in self.runs)

    def ingested(self, model: str, dataset: str, stats: bool = True) -> bool:
        return (not stats or self._has("stats", model=model, dataset=dataset)) and self._has("weights", model=model)

    def correlation(self, cohort: str, dataset: str, reference: str, models: list[str],
                    rotation: str = "orthogonal") -> dict[str, Any] | None:
        """The newest finished correlation of exactly this model set with this reference and baseline, if any."""
        found = [r for r in self.runs if r["kind"] == "correlation" and r["cohort"] == cohort
                 and r["dataset"] == dataset and r["params"].get("reference") == reference
                 and r["params"].get("rotation", "orthogonal") == rotation
                 and sorted([reference, *r["params"].get("partners", [])]) == models]
        return found[-1] if found else None

    def cohort_run(self, kind: str, cohort: str, dataset: str, models: list[str]) -> dict[str, Any] | None:
        """The newest finished ``kind`` run (examples, classify) of exactly this model set, if any."""
        found = [r for r in self.runs if r["kind"] == kind and r["cohort"] == cohort
                 and r["dataset"] == dataset and sorted(r["params"].get("models", [])) == models]
        return found[-1] if found else None


def _digest(names: list[str]) -> str:
    return hashlib.sha256("\0".join(names).encode()).hexdigest()[:10]


def _parent_registered(manifest: Manifest, done: _Done, parent: str) -> bool:
    """Whether the final model ``parent`` of a checkpoint is in: ingested on its own cohort's dataset
    when the manifest has it, else assumed registered already (ingest says so when it is not)."""
    try:
        cohort, _ = manifest.model(parent)
    except AtlasError:
        return True
    return done.ingested(parent, cohort.dataset, cohort.stats)


def plan(engine: Engine, manifest: Manifest) -> list[Step]:
    """The missing steps whose prerequisites are finished, in dependency order."""
    done = _Done.read(engine)
    steps: list[Step] = []
    for dataset in manifest.datasets.values():
        if dataset.name not in done.datasets:
            _, model = manifest.model(dataset.tokenizer_from)
            steps.append(Step("build_dataset", {
                "name": dataset.name, "tokenizer_from": model.source, "inputs": list(dataset.inputs),
                "hf_dataset": dataset.hf_dataset, "context_length": dataset.context_length,
                "max_tokens": dataset.max_tokens,
            }, key=f"dataset:{dataset.name}"))
    for cohort in manifest.cohorts.values():
        if cohort.dataset not in done.datasets:
            continue
        models = cohort.models()
        missing = [m for m in models if not done.ingested(m.name, cohort.dataset, cohort.stats)]
        for m in missing:
            if m.checkpoint_of is not None and not _parent_registered(manifest, done, m.checkpoint_of):
                continue  # a checkpoint names its final model, which must be in the atlas first
            extra: dict[str, Any] = {} if m.step is None else {
                "step": m.step, "train_tokens": m.train_tokens, "checkpoint_of": m.checkpoint_of}
            if not cohort.stats:
                extra["stats"] = False  # weight statistics only
            steps.append(Step("ingest_model", {
                "source": m.source, "name": m.name, "cohort": cohort.name, "seed_label": m.seed,
                "dataset": cohort.dataset, **extra,
            }, key=f"ingest:{m.name}:{cohort.dataset}"))
        if missing or not models:
            continue
        names = sorted(m.name for m in models)
        correlate = cohort.correlate and len(models) > 1
        if correlate:
            reference = cohort.reference or models[0].name
            correlation = done.correlation(cohort.name, cohort.dataset, reference, names, cohort.rotation)
            if correlation is None:
                steps.append(Step("correlate_cohort", {
                    "cohort": cohort.name, "dataset": cohort.dataset, "reference": reference, "models": names,
                    "rotation": cohort.rotation,
                }, key=f"correlate:{cohort.name}:{cohort.dataset}:{_digest(names)}"
                    + ("" if cohort.rotation == "orthogonal" else f":{cohort.rotation}")))
                continue

        def outdated(kind: str) -> bool:  # never run on this model set, or run before its newest correlation
            run = done.cohort_run(kind, cohort.name, cohort.dataset, names)
            return run is None or (correlate and run["finished_at"] < correlation["finished_at"])

        if cohort.examples and outdated("examples"):
            steps.append(Step("examples_cohort", {"cohort": cohort.name, "dataset": cohort.dataset},
                              key=f"examples:{cohort.name}:{cohort.dataset}:{_digest(names)}"))
        if cohort.classify and outdated("classify"):
            steps.append(Step("classify_cohort", {"cohort": cohort.name, "dataset": cohort.dataset, "models": names},
                              key=f"classify:{cohort.name}:{cohort.dataset}:{_digest(names)}"))
    return steps


def run_in_process(engine: Engine, manifest: Manifest, *, log: Callable[[str], Any] = print,
                   max_rounds: int = 100) -> int:
    """Run the planned steps here, in order, re-planning after each, until nothing is missing.

    Returns the number of steps run. A step that does not make progress (planned again right after
    it ran) is an error, never a loop.
    """
    from atlas.ingest.tasks import STEPS

    ran = 0
    last: str | None = None
    for _ in range(max_rounds):
        steps = plan(engine, manifest)
        if not steps:
            return ran
        step = steps[0]
        if step.key == last:
            raise AtlasError(f"step {step.key} ran but is still missing — check `atlas status` for its run's error")
        log(f"→ {step.key}")
        STEPS[step.task](**step.kwargs)
        ran, last = ran + 1, step.key
    raise AtlasError(f"the manifest {manifest.path} still has missing steps after {max_rounds} rounds")
