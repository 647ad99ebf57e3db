"""The manifest: what should be in the atlas (TOML), validated by a schema.

Example ``atlas.toml`` (paths and globs are relative to the manifest's directory)::

    [datasets.austen]
    tokenizer_from = "demo-a"                 # a model of this manifest whose tokenizer tokenises it
    inputs = ["corpora/austen/*.txt"]         # text / JSONL / Parquet files; globs are expanded
    # hf_dataset = "NeelNanda/pile-10k"       # or a Hugging Face dataset (needs the hub)
    context_length = 128
    max_tokens = 500_000

    [cohorts.demo]
    dataset = "austen"
    reference = "demo-a"                      # default: the first model
    correlate = true                          # cross-seed correlations once every model is in
    classify = true                           # families and roles once correlated
    rotation = "orthogonal"                   # the baseline: Haar rotations, or "gaussian_unit_rows" (the paper's)
    models = [
      { name = "demo-a", source = "models/demo/demo-a", seed = "a" },
      { name = "demo-b", source = "models/demo/demo-b", seed = "b" },
    ]

    [cohorts."demo@step977"]                  # the seeds at one training step (universality over training)
    dataset = "austen"
    stats = false                             # weights only: correlation needs no activation statistics
    classify = false                          # families and roles only for the final models
    examples = false                          # nor the stored examples' activations
    models = [
      { name = "demo-a@step977", source = "models/demo/demo-a/steps/step-0000977", seed = "a",
        step = 977, train_tokens = 1000448, checkpoint_of = "demo-a" },
      { name = "demo-b@step977", source = "models/demo/demo-b/steps/step-0000977", seed = "b",
        step = 977, train_tokens = 1000448, checkpoint_of = "demo-b" },
    ]

    [cohorts.exp1]                            # a training run's checkpoints, as they appear
    dataset = "austen"
    correlate = false
    models = [{ glob = "runs/exp1/step-*", name = "exp1-{dir}" }]

A model with ``step`` is a training checkpoint (``train_tokens`` seen by then, ``checkpoint_of``
the final model of its training, ingested first); a final model may carry its own last ``step``.
A ``glob`` entry stands for every matching checkpoint directory (one with ``config.json`` and its
weights), named by the template (``{dir}`` is the directory's name); it is expanded each time the
planner looks, so a checkpoint written later is ingested by the next reconcile.

Every mistake is one line naming the file, the table and the key (``load_manifest``).
"""

from __future__ import annotations

import glob as globbing
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from atlas.errors import AtlasError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[^\s{}]+$")]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelEntry(_Entry):
    """One model (``source``: hub name or checkpoint directory) or a glob of checkpoint directories."""

    name: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)] | None = None
    glob: Annotated[str, Field(min_length=1)] | None = None
    seed: str | None = None
    step: Annotated[int, Field(strict=True, ge=0)] | None = None
    train_tokens: Annotated[int, Field(strict=True, ge=0)] | None = None
    checkpoint_of: Name | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if self.step is None and (self.train_tokens is not None or self.checkpoint_of is not None):
            raise ValueError("train_tokens / checkpoint_of mark a training checkpoint: give its step = <n> too")
        if (self.source is None) == (self.glob is None):
            raise ValueError("give exactly one of source = \"<hub name or directory>\" or glob = \"<dir pattern>\"")
        if self.glob is None and ("{" in self.name or "}" in self.name):
            raise ValueError("a name with {dir} is a template: it needs glob = \"...\" instead of source")
        if self.glob is not None and "{dir}" not in self.name:
            raise ValueError("a glob entry's name must contain {dir} (e.g. name = \"exp1-{dir}\"), one model per directory")
        return self


class DatasetEntry(_Entry):
    tokenizer_from: Name
    inputs: list[Annotated[str, Field(min_length=1)]] = []
    hf_dataset: str | None = None
    context_length: PositiveInt = 128
    max_tokens: PositiveInt | None = None

    @model_validator(mode="after")
    def _has_text(self) -> DatasetEntry:
        if not self.inputs and not self.hf_dataset:
            raise ValueError("needs inputs = [\"<files or globs>\"] or hf_dataset = \"<name>\"")
        return self


class CohortEntry(_Entry):
    dataset: Name
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    reference: Name | None = None
    correlate: bool = True
    classify: bool = True
    examples: bool = True
    stats: bool = True  # activation statistics of its models (false: weight statistics only)
    rotation: Literal["orthogonal", "gaussian_unit_rows"] = "orthogonal"  # the baseline's random rotations


class _ManifestFile(_Entry):
    datasets: dict[Name, DatasetEntry] = {}
    cohorts: dict[Name, CohortEntry] = {}


# ---------------------------------------------------------------- the loaded manifest

@dataclass(frozen=True)
class Model:
    """A model the manifest asks for, with its source resolved."""

    name: str
    source: str
    seed: str | None
    step: int | None = None
    train_tokens: int | None = None
    checkpoint_of: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    tokenizer_from: str
    inputs: tuple[str, ...]
    hf_dataset: str | None
    context_length: int
    max_tokens: int | None


@dataclass(frozen=True)
class Cohort:
    name: str
    dataset: str
    entries: tuple[ModelEntry, ...]
    reference: str | None
    correlate: bool
    classify: bool
    base: Path
    examples: bool = True
    stats: bool = True
    rotation: str = "orthogonal"  # "gaussian_unit_rows": the paper's baseline

    def models(self) -> list[Model]:
        """The cohort's models now: fixed entries, and one per checkpoint directory a glob matches today."""
        found: list[Model] = []
        for entry in self.entries:
            if entry.source is not None:
                found.append(Model(entry.name, _resolve_source(self.base, entry.source), entry.seed, entry.step,
                                   entry.train_tokens, entry.checkpoint_of))
                continue
            for directory in sorted(globbing.glob(str(self.base / entry.glob))):
                path = Path(directory)
                if path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES):
                    found.append(Model(entry.name.replace("{dir}", path.name), str(path.resolve()), entry.seed,
                                       entry.step, entry.train_tokens, entry.checkpoint_of))
        return found


@dataclass(frozen=True)
class Manifest:
    path: Path
    datasets: dict[str, Dataset]
    cohorts: dict[str, Cohort]

    def model(self, name: str) -> tuple[Cohort, Model]:
        for cohort in self.cohorts.values():
            for model in cohort.models():
                if model.name == name:
                    return cohort, model
        raise AtlasError(f"model {name!r} is not in the manifest {self.path} — add it under a [cohorts.*] table")


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest; every error is one line naming the file, the table and the key."""
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise AtlasError(f"manifest {path} does not exist — pass the path of an atlas TOML manifest") from None
    except IsADirectoryError:
        raise AtlasError(f"manifest {path} is a directory — pass the path of an atlas TOML manifest") from None
    except tomllib.TOMLDecodeError as err:
        raise AtlasError(f"manifest {path} is not valid TOML ({err}) — fix the file") from None
    try:
        parsed = _ManifestFile.model_validate(data)
    except ValidationError as err:
        raise AtlasError(_describe(path, err)) from None
    base = path.parent
    manifest = Manifest(
        path=path,
        datasets={name: _dataset(path, name, entry) for name, entry in parsed.datasets.items()},
        cohorts={name: Cohort(name, e.dataset, tuple(e.models), e.reference, e.correlate, e.classify, base, e.examples,
                              e.stats, e.rotation)
                 for name, e in parsed.cohorts.items()},
    )
    _check_references(manifest, parsed)
    return manifest


def _dataset(path: Path, name: str, entry: DatasetEntry) -> Dataset:
    inputs: list[str] = []
    for i, pattern in enumerate(entry.inputs):
        full = str(path.parent / Path(pattern).expanduser())
        matches = sorted(globbing.glob(full)) if globbing.has_magic(full) else [full]
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            what = "matches no file" if globbing.has_magic(full) else "is not a file"
            raise AtlasError(f"manifest {path}: [datasets.{name}] inputs[{i}] = {pattern!r} {what} (relative to "
                             f"{path.parent}) — fix the path or the pattern")
        inputs.extend(str(Path(f).resolve()) for f in files)
    return Dataset(name, entry.tokenizer_from, tuple(inputs), entry.hf_dataset, entry.context_length, entry.max_tokens)


def _check_references(manifest: Manifest, parsed: _ManifestFile) -> None:
    where = f"manifest {manifest.path}"
    seen: dict[str, str] = {}
    for cname, cohort in parsed.cohorts.items():
        if cohort.dataset not in parsed.datasets:
            raise AtlasError(f"{where}: [cohorts.{cname}] dataset = {cohort.dataset!r} is not defined — add a "
                             f"[datasets.{cohort.dataset}] table or fix the name")
        names = [m.name for m in cohort.models]
        if cohort.reference is not None and cohort.reference not in names:
            raise AtlasError(f"{where}: [cohorts.{cname}] reference = {cohort.reference!r} is not one of its models "
                             f"({', '.join(names)})")
        for i, model in enumerate(cohort.models):
            if model.name in seen:
                raise AtlasError(f"{where}: [cohorts.{cname}] models[{i}].name = {model.name!r} is also in "
                                 f"[cohorts.{seen[model.name]}] — model names are unique in the atlas")
            seen[model.name] = cname
            if model.source is not None and _meant_as_path(manifest.path.parent, model.source):
                resolved = Path(_resolve_source(manifest.path.parent, model.source))
                if not resolved.is_dir():
                    raise AtlasError(f"{where}: [cohorts.{cname}] models[{i}].source = {model.source!r}: no checkpoint "
                                     f"directory at {resolved} — fix the path (relative to the manifest) or use a hub "
                                     "name like EleutherAI/pythia-160m")
    for dname, dataset in parsed.datasets.items():
        if dataset.tokenizer_from not in seen:
            raise AtlasError(f"{where}: [datasets.{dname}] tokenizer_from = {dataset.tokenizer_from!r} is not in the "
                             "manifest — name one of its models (its tokenizer tokenises the dataset)")


def _meant_as_path(base: Path, source: str) -> bool:
    """A local path rather than a hub name: written like a path, or ``dir/x`` where ``dir`` exists beside
    the manifest (a hub name ``owner/name`` has no such directory)."""
    from atlas.ingest.models import is_local_source

    first = Path(source).parts[0] if Path(source).parts else source
    return is_local_source(source) or (base / first).is_dir()


def _resolve_source(base: Path, source: str) -> str:
    """A source relative to the manifest becomes an absolute path when it exists there; else as written
    (a hub name such as ``EleutherAI/pythia-160m``)."""
    candidate = (base / source).expanduser()
    return str(candidate.resolve()) if not Path(source).is_absolute() and candidate.exists() else source


def _describe(path: Path, err: ValidationError) -> str:
    """The first schema error as one line: ``manifest F: [table.name] key: problem (got value)``."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if len(loc) >= 2 and loc[0] in ("datasets", "cohorts"):
        table, rest = f"[{loc[0]}.{loc[1]}]", loc[2:]
    else:
        table, rest = "(top level)", loc
    key = ""
    for part in rest:
        key += f"[{part}]" if part.isdigit() else (f".{part}" if key else part)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "is not a known key — check its spelling (see the manifest example in the README)"
    elif first["type"] == "missing":
        message = "is missing — it is required"
    got = first.get("input")
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)) else f" (got {got!r})"
    more = len(err.errors()) - 1
    return (f"manifest {path}: {table} {key + ': ' if key else ''}{message}{shown}"
            + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))
