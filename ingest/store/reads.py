"""Database reads of ingestion: datasets and their token rows, model and cohort records, the
vocabulary, and the earlier results a run builds on (partner edges, universal neurons).

With ``writes.py`` this is the only ingest code that speaks SQL. Every "current" result is taken
from the NEWEST finished run of its kind (the views do the same), so a cohort re-correlated after
it gained a model is read from its latest correlation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import polars as pl
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError


# ---------------------------------------------------------------- models and cohorts

@dataclass(frozen=True)
class ModelRecord:
    """A model as the atlas registered it (the ``model`` row)."""

    id: int
    name: str
    source: str
    revision: str | None
    seed_label: str | None
    cohort_id: int | None
    tokenizer_id: int
    n_layers: int
    d_mlp: int
    d_vocab: int

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


_MODEL_COLUMNS = "m.id, m.name, m.source, m.revision, m.seed_label, m.cohort_id, m.tokenizer_id, m.n_layers, m.d_mlp, m.d_vocab"


def cohort_id(engine: Engine, cohort: str) -> int:
    """The id of ``cohort``, or a one-line error listing the cohorts that exist."""
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id FROM cohort WHERE name = :n"), {"n": cohort}).scalar()
        if found is None:
            known = conn.execute(sa.text("SELECT name FROM cohort ORDER BY name")).scalars().all()
    if found is None:
        raise AtlasError(f"no cohort named {cohort} (known: {', '.join(known) or 'none'}) — ingest its models with "
                         "--cohort first")
    return int(found)


def cohort_models(engine: Engine, cohort: str) -> tuple[int, list[ModelRecord]]:
    """The cohort's id and its models, ordered by seed label, then name."""
    cid = cohort_id(engine, cohort)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {_MODEL_COLUMNS} FROM model m WHERE m.cohort_id = :c "
                                    "ORDER BY m.seed_label NULLS LAST, m.name"), {"c": cid}).all()
    return cid, [ModelRecord(*row) for row in rows]


def models_by_name(engine: Engine, names: Sequence[str]) -> list[ModelRecord]:
    """The named models in the given order; a one-line error names those that are not registered."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {_MODEL_COLUMNS} FROM model m WHERE m.name = ANY(:n)"),
                            {"n": list(names)}).all()
    found = {row.name: ModelRecord(*row) for row in rows}
    missing = [n for n in names if n not in found]
    if missing:
        raise AtlasError(f"no model named {', '.join(missing)} in the atlas — register it first (atlas ingest)")
    return [found[n] for n in names]


def model_id_by_name(engine: Engine, name: str) -> int | None:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id FROM model WHERE name = :n"), {"n": name}).scalar()
    return None if found is None else int(found)


# ---------------------------------------------------------------- datasets

@dataclass(frozen=True)
class DatasetInfo:
    """A stored token dataset (the ``dataset`` row, plus its tokenizer's content hash)."""

    id: int
    name: str
    source: str
    tokenizer_id: int
    tokenizer_hash: str
    context_length: int
    n_rows: int
    n_tokens: int
    n_kept_tokens: int
    filter_rule: dict[str, Any]
    content_hash: str
    seed: int | None
    params: dict[str, Any] = field(default_factory=dict)


_DATASET_SELECT = """
    SELECT d.id, d.name, d.source, d.tokenizer_id, t.content_hash AS tokenizer_hash, d.context_length, d.n_rows,
           d.n_tokens, d.n_kept_tokens, d.filter_rule, d.content_hash, d.seed, d.params
    FROM dataset d JOIN tokenizer t ON t.id = d.tokenizer_id
"""


def get_dataset(engine: Engine, name: str) -> DatasetInfo:
    """The dataset called ``name``, or an AtlasError listing the ones that exist."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(_DATASET_SELECT + " WHERE d.name = :n"), {"n": name}).mappings().first()
        if row is None:
            names = conn.execute(sa.text("SELECT name FROM dataset ORDER BY name")).scalars().all()
    if row is None:
        known = f"known: {', '.join(names)}" if names else "there are none yet"
        raise AtlasError(f"no dataset named {name} ({known}) — build it with `atlas dataset build {name} ...`")
    return DatasetInfo(**row)


def resolve_dataset(engine: Engine, dataset: DatasetInfo | int | str) -> DatasetInfo:
    """A ``DatasetInfo`` from a name, an id, or an info object (returned as is)."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    if isinstance(dataset, int):
        with engine.connect() as conn:
            row = conn.execute(sa.text(_DATASET_SELECT + " WHERE d.id = :i"), {"i": dataset}).mappings().first()
        if row is None:
            raise AtlasError(f"no dataset with id {dataset} — list them with `atlas status`")
        return DatasetInfo(**row)
    return get_dataset(engine, str(dataset))


def dataset_exists(engine: Engine, name: str) -> DatasetInfo | None:
    try:
        return get_dataset(engine, name)
    except AtlasError:
        return None



def load_dataset_rows(engine: Engine, dataset: DatasetInfo | int | str) -> torch.Tensor:
    """All token rows of a dataset as ``LongTensor[n_rows, context_length]`` (small datasets, tests)."""
    info = resolve_dataset(engine, dataset)
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT tokens FROM dataset_row WHERE dataset_id = :d ORDER BY row_idx"),
                           {"d": info.id}).scalars().all()
    return torch.tensor(got, dtype=torch.long).reshape(len(got), info.context_length)



def iter_dataset_batches(engine: Engine, dataset: DatasetInfo | int | str, batch_size: int,
                         start_row: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row_idx, LongTensor[batch, ctx])`` over a stored dataset's rows in ``row_idx`` order,
    from ``start_row``."""
    if batch_size < 1:
        raise AtlasError(f"batch size must be positive, got {batch_size}")
    info = resolve_dataset(engine, dataset)
    query = sa.text("SELECT row_idx, tokens FROM dataset_row WHERE dataset_id = :d AND row_idx >= :s "
                    "AND row_idx < :e ORDER BY row_idx")
    for start in range(start_row, info.n_rows, batch_size):
        with engine.connect() as conn:
            got = conn.execute(query, {"d": info.id, "s": start, "e": start + batch_size}).all()
        if [r.row_idx for r in got] != list(range(start, min(start + batch_size, info.n_rows))):
            raise AtlasError(f"dataset {info.name} is missing rows from {start} — rebuild it with `atlas dataset build`")
        yield start, torch.tensor([r.tokens for r in got], dtype=torch.long)


# ---------------------------------------------------------------- tokenizers

def vocabulary(engine: Engine, tokenizer_id: int, d_vocab: int) -> list[str]:
    """Token texts by id (at least ``d_vocab`` entries; ids without a stored text are '')."""
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT token_id, text FROM vocab_token WHERE tokenizer_id = :t"),
                           {"t": tokenizer_id}).all()
    size = max([d_vocab] + [r.token_id + 1 for r in got])
    vocab = [""] * size
    for r in got:
        vocab[r.token_id] = r.text
    return vocab


def special_token_ids(engine: Engine, tokenizer_id: int) -> dict[str, int | None]:
    """``{"bos": id, "eos": id, "pad": id}`` of a registered tokenizer (None where it has none)."""
    with engine.connect() as conn:
        r = conn.execute(sa.text("SELECT bos_token_id, eos_token_id, pad_token_id FROM tokenizer WHERE id = :t"),
                         {"t": tokenizer_id}).first()
    return {"bos": r.bos_token_id, "eos": r.eos_token_id, "pad": r.pad_token_id}


# ---------------------------------------------------------------- earlier results

_NEWEST_CORRELATIONS = """
    SELECT DISTINCT ON (r.model_id, r.dataset_id) r.id
    FROM run r
    WHERE r.kind = 'correlation' AND r.status = 'done' AND r.dataset_id = :d
    ORDER BY r.model_id, r.dataset_id, r.finished_at DESC, r.id DESC
"""


def correlations_read(engine: Engine, dataset_id: int, model_ids: list[int]) -> list[int]:
    """Ids of the newest finished correlation runs on the dataset that involve ``model_ids`` (as the
    reference or as a partner): the runs ``universal_neurons`` and ``partner_edges`` read for them."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"""
            SELECT r.id FROM run r WHERE r.id IN ({_NEWEST_CORRELATIONS})
              AND (r.model_id = ANY(:m) OR EXISTS (
                   SELECT 1 FROM pair_correlation p WHERE p.run_id = r.id AND p.model_id = ANY(:m)))
            ORDER BY r.id"""), {"d": dataset_id, "m": list(model_ids)}).scalars())


def partner_edges(engine: Engine, cohort_id: int, dataset_id: int, model_ids: list[int]) -> pl.DataFrame:
    """Partner edges among ``model_ids`` from the newest finished correlation run of each reference
    model of the cohort on this dataset: columns model_id, layer, idx, partner_model_id,
    partner_layer, partner_idx, rho."""
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"""
            SELECT e.model_id, e.layer::int AS layer, e.idx, e.partner_model_id, e.partner_layer::int AS partner_layer,
                   e.partner_idx, e.rho::float8 AS rho
            FROM correlation_edge e JOIN run r ON r.id = e.run_id
            WHERE r.id IN ({_NEWEST_CORRELATIONS}) AND r.cohort_id = :c
              AND e.model_id = ANY(:m) AND e.partner_model_id = ANY(:m)
        """), {"c": cohort_id, "d": dataset_id, "m": model_ids}).all()
    schema = {"model_id": pl.Int64, "layer": pl.Int64, "idx": pl.Int64, "partner_model_id": pl.Int64,
              "partner_layer": pl.Int64, "partner_idx": pl.Int64, "rho": pl.Float64}
    return pl.DataFrame([tuple(r) for r in got], schema=schema, orient="row").unique(
        subset=["model_id", "layer", "idx", "partner_model_id", "partner_layer", "partner_idx"])


def universal_neurons(engine: Engine, model_id: int, dataset_id: int, threshold: float) -> dict[int, list[int]]:
    """``{layer: [idx, ...]}`` of the model's neurons above ``threshold``: excess correlation where it
    is a reference, best-partner excess (max_corr − baseline_max) where it is a partner, from the
    newest finished correlation runs on the dataset. A one-line error when there is none."""
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"""
            SELECT u.layer::int AS layer, u.idx FROM neuron_universality u
            WHERE u.run_id IN ({_NEWEST_CORRELATIONS}) AND u.model_id = :m AND u.excess > :t
            UNION
            SELECT p.layer::int, p.idx FROM pair_correlation p JOIN run r ON r.id = p.run_id
            WHERE r.id IN ({_NEWEST_CORRELATIONS}) AND p.model_id = :m AND r.model_id <> :m
              AND p.max_corr - p.baseline_max > :t
        """), {"d": dataset_id, "m": model_id, "t": threshold}).all()
        if not got:
            any_corr = conn.execute(sa.text(_NEWEST_CORRELATIONS + " LIMIT 1"), {"d": dataset_id}).first()
            if any_corr is None:
                raise AtlasError("classify labels universal neurons by default and needs a finished correlation run "
                                 "on this dataset — run `atlas correlate` first, or pass --all-neurons")
    subset: dict[int, list[int]] = {}
    for layer, idx in got:
        subset.setdefault(int(layer), []).append(int(idx))
    return subset


# ---------------------------------------------------------------- what is done (the planner's view)

def finished_runs(engine: Engine) -> list[dict[str, Any]]:
    """Every finished run with its subject's names: kind, model, cohort, dataset, params, finished_at."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT r.id, r.kind, m.name AS model, c.name AS cohort, d.name AS dataset, r.params, r.finished_at
            FROM run r LEFT JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = r.cohort_id
            LEFT JOIN dataset d ON d.id = r.dataset_id WHERE r.status = 'done' ORDER BY r.finished_at, r.id
        """)).mappings().all()
    return [dict(r) for r in rows]


def dataset_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT name FROM dataset")).scalars())


def run_subject(engine: Engine, run_id: int) -> tuple[str | None, str | None]:
    """(cohort name, dataset name) of a run; a one-line error when there is no such run."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT c.name AS cohort, d.name AS dataset FROM run r LEFT JOIN cohort c ON "
                                   "c.id = r.cohort_id LEFT JOIN dataset d ON d.id = r.dataset_id WHERE r.id = :i"),
                           {"i": run_id}).first()
    if row is None:
        raise AtlasError(f"no run {run_id} — list the runs with `atlas status`")
    return row.cohort, row.dataset


# ---------------------------------------------------------------- training checkpoints

def step_cohorts(engine: Engine, cohort: str) -> list[tuple[int, str]]:
    """``(step, cohort name)`` of the cohorts that hold checkpoints of ``cohort``'s models, by step."""
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id FROM cohort WHERE name = :n"), {"n": cohort}).scalar()
        if found is None:
            raise AtlasError(f"no cohort named {cohort} — register its models first")
        rows = conn.execute(sa.text(
            "SELECT DISTINCT m.step, c.name FROM model m JOIN model f ON f.id = m.checkpoint_of "
            "JOIN cohort c ON c.id = m.cohort_id WHERE f.cohort_id = :c AND m.step IS NOT NULL "
            "ORDER BY m.step, c.name"), {"c": found}).all()
    return [(int(r.step), str(r.name)) for r in rows]


def checkpoint_at(engine: Engine, model: str, step: int) -> str | None:
    """The name of ``model``'s training checkpoint at ``step`` (None: there is none)."""
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            "SELECT m.name FROM model m JOIN model f ON f.id = m.checkpoint_of WHERE f.name = :n AND m.step = :s"),
            {"n": model, "s": step}).scalar()
    return None if found is None else str(found)
