"""The manifest: what should be in the atlas (TOML), and the plan of what is missing.

Example ``atlas.toml``::

    [datasets.demo]
    tokenizer_from = "demo-s0"            # a model (name below) whose tokenizer tokenises it
    inputs = ["corpora/austen/*.txt"]     # local text/JSONL/Parquet files (globs, relative to the manifest)
    # hf_dataset = "NeelNanda/pile-10k"  # or a Hugging Face dataset name (needs the hub)
    context_length = 128
    max_tokens = 200_000

    [cohorts.demo]
    dataset = "demo"
    reference = "demo-s0"
    correlate = true
    classify = true
    models = [
      { name = "demo-s0", source = "models/demo/seed0", seed = "s0" },
      { name = "demo-s1", source = "models/demo/seed1", seed = "s1" },
    ]

``plan()`` compares the manifest with finished runs and returns the steps whose prerequisites
are met: build a dataset; ingest a model (statistics and weights); correlate a cohort once all its
models are in; classify once the correlation is in. A schedule (``atlas worker``) runs ``plan``
periodically and enqueues what it returns, so a model added to the manifest flows in by itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    seed: str | None = None


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    tokenizer_from: str
    inputs: tuple[str, ...] = ()
    hf_dataset: str | None = None
    context_length: int = 128
    max_tokens: int | None = None


@dataclass(frozen=True)
class CohortEntry:
    name: str
    dataset: str
    models: tuple[ModelEntry, ...]
    reference: str | None = None
    correlate: bool = True
    classify: bool = True


@dataclass(frozen=True)
class Manifest:
    path: Path
    datasets: dict[str, DatasetEntry]
    cohorts: dict[str, CohortEntry]

    def model(self, name: str) -> tuple[CohortEntry, ModelEntry]:
        for cohort in self.cohorts.values():
            for model in cohort.models:
                if model.name == name:
                    return cohort, model
        raise AtlasError(f"model {name!r} is not in the manifest {self.path} — add it under a [cohorts.*] table")


@dataclass(frozen=True)
class Step:
    """One unit of work for a worker. ``key`` doubles as the queueing lock (no duplicates queued)."""

    kind: str  # build_dataset | ingest_model | correlate_cohort | classify_cohort
    args: dict[str, Any] = field(hash=False)
    key: str = ""


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest file; errors name the file and the entry."""
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AtlasError(f"manifest {path} does not exist — pass the path of an atlas TOML manifest") from None
    except tomllib.TOMLDecodeError as err:
        raise AtlasError(f"manifest {path} is not valid TOML ({err}) — fix the file") from None
    base = path.parent

    def resolve(source: str) -> str:
        candidate = (base / source).expanduser()
        return str(candidate.resolve()) if not Path(source).is_absolute() and candidate.exists() else source

    datasets = {}
    for name, entry in (data.get("datasets") or {}).items():
        if "tokenizer_from" not in entry:
            raise AtlasError(f"manifest {path}: dataset {name!r} needs tokenizer_from = \"<model name>\"")
        inputs = tuple(str((base / p)) if not Path(p).is_absolute() else p for p in entry.get("inputs", []))
        if not inputs and not entry.get("hf_dataset"):
            raise AtlasError(f"manifest {path}: dataset {name!r} needs inputs = [...] or hf_dataset = \"...\"")
        datasets[name] = DatasetEntry(
            name=name, tokenizer_from=entry["tokenizer_from"], inputs=inputs, hf_dataset=entry.get("hf_dataset"),
            context_length=int(entry.get("context_length", 128)), max_tokens=entry.get("max_tokens"),
        )
    cohorts = {}
    for name, entry in (data.get("cohorts") or {}).items():
        models = tuple(
            ModelEntry(name=m["name"], source=resolve(m["source"]), seed=m.get("seed")) for m in entry.get("models", [])
        )
        if not models:
            raise AtlasError(f"manifest {path}: cohort {name!r} lists no models — add models = [{{name=..., source=...}}]")
        if entry.get("dataset") not in datasets:
            raise AtlasError(f"manifest {path}: cohort {name!r} uses dataset {entry.get('dataset')!r}, which is not defined")
        reference = entry.get("reference") or models[0].name
        if reference not in {m.name for m in models}:
            raise AtlasError(f"manifest {path}: cohort {name!r} reference {reference!r} is not one of its models")
        cohorts[name] = CohortEntry(
            name=name, dataset=entry["dataset"], models=models, reference=reference,
            correlate=bool(entry.get("correlate", True)), classify=bool(entry.get("classify", True)),
        )
    manifest = Manifest(path=path, datasets=datasets, cohorts=cohorts)
    for dataset in datasets.values():
        manifest.model(dataset.tokenizer_from)  # raises if unknown
    return manifest


def _done(engine: Engine) -> dict[str, set]:
    """What the database already holds: dataset names, and finished (kind, model, cohort, dataset) runs."""
    with engine.connect() as conn:
        datasets = set(conn.execute(sa.text("SELECT name FROM dataset")).scalars())
        runs = conn.execute(sa.text("""
            SELECT r.kind, m.name AS model, c.name AS cohort, d.name AS dataset
            FROM run r LEFT JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = r.cohort_id
            LEFT JOIN dataset d ON d.id = r.dataset_id WHERE r.status = 'done'
        """)).all()
        models = set(conn.execute(sa.text("SELECT name FROM model")).scalars())
    return {
        "datasets": datasets,
        "models": models,
        "runs": {(r.kind, r.model, r.cohort, r.dataset) for r in runs},
        "weights": {r.model for r in runs if r.kind == "weights"},
    }


def plan(engine: Engine, manifest: Manifest) -> list[Step]:
    """The steps that are missing and whose prerequisites are finished, in dependency order."""
    have = _done(engine)
    steps: list[Step] = []
    for dataset in manifest.datasets.values():
        if dataset.name not in have["datasets"]:
            _, model = manifest.model(dataset.tokenizer_from)
            steps.append(Step("build_dataset", {
                "name": dataset.name, "tokenizer_source": model.source, "inputs": list(dataset.inputs),
                "hf_dataset": dataset.hf_dataset, "context_length": dataset.context_length,
                "max_tokens": dataset.max_tokens,
            }, key=f"dataset:{dataset.name}"))
    for cohort in manifest.cohorts.values():
        if cohort.dataset not in have["datasets"]:
            continue
        all_in = True
        for model in cohort.models:
            stats_done = ("stats", model.name, None, cohort.dataset) in have["runs"] or any(
                k == "stats" and m == model.name and d == cohort.dataset for k, m, _, d in have["runs"])
            if not (stats_done and model.name in have["weights"]):
                all_in = False
                steps.append(Step("ingest_model", {
                    "source": model.source, "name": model.name, "cohort": cohort.name, "seed_label": model.seed,
                    "dataset": cohort.dataset,
                }, key=f"ingest:{model.name}:{cohort.dataset}"))
        if not all_in or len(cohort.models) < 2:
            continue
        correlated = any(k == "correlation" and c == cohort.name and d == cohort.dataset for k, _, c, d in have["runs"])
        if cohort.correlate and not correlated:
            steps.append(Step("correlate_cohort", {
                "cohort": cohort.name, "dataset": cohort.dataset, "reference": cohort.reference,
            }, key=f"correlate:{cohort.name}:{cohort.dataset}"))
            continue
        classified = ("classify", None, cohort.name, cohort.dataset) in have["runs"]  # one classify run per cohort
        if cohort.classify and (correlated or not cohort.correlate) and not classified:
            steps.append(Step("classify_cohort", {"cohort": cohort.name, "dataset": cohort.dataset},
                              key=f"classify:{cohort.name}:{cohort.dataset}"))
    return steps
