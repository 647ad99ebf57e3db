"""The reads of an ``examples`` run: which examples a model's stats run stored, which partner neuron
is a reference neuron's best in each other seed, and the dataset rows the examples sit in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import polars as pl
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError

_EXAMPLE_SCHEMA = {"layer": pl.Int64, "idx": pl.Int64, "kind": pl.Utf8, "rank": pl.Int64, "row_idx": pl.Int64,
                   "position": pl.Int64}


def newest_stats_run(engine: Engine, model_id: int, dataset_id: int) -> int | None:
    """The newest finished stats run of the model on this dataset (None: none)."""
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            "SELECT id FROM run WHERE kind = 'stats' AND status = 'done' AND model_id = :m AND dataset_id = :d "
            "ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT 1"), {"m": model_id, "d": dataset_id}).scalar()
    return None if found is None else int(found)


def stored_examples(engine: Engine, stats_run_id: int, *, max_top_rank: int | None = None) -> pl.DataFrame:
    """The examples a stats run stored: ``layer, idx, kind`` ('top' | 'quantile' | 'bottom'), ``rank,
    row_idx, position``; top examples up to ``max_top_rank`` only when given."""
    top_filter = "" if max_top_rank is None else " AND rank <= :k"
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"""
            SELECT layer::int, idx, 'top' AS kind, rank::int, row_idx, position::int
            FROM top_example WHERE run_id = :r{top_filter}
            UNION ALL
            SELECT layer::int, idx, kind, rank::int, row_idx, position::int
            FROM sampled_example WHERE run_id = :r AND :all_kinds
        """), {"r": stats_run_id, "k": max_top_rank, "all_kinds": max_top_rank is None}).all()
    return pl.DataFrame([tuple(r) for r in got], schema=_EXAMPLE_SCHEMA, orient="row")


@dataclass(frozen=True)
class Correlation:
    """A finished correlation run: its id, reference model and partner models."""

    run_id: int
    reference_id: int
    partner_ids: tuple[int, ...]


def newest_correlation(engine: Engine, cohort_id: int, dataset_id: int) -> Correlation | None:
    """The newest finished correlation run of the cohort on this dataset (None: none)."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT id, model_id FROM run WHERE kind = 'correlation' AND status = 'done' AND cohort_id = :c "
            "AND dataset_id = :d ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT 1"),
            {"c": cohort_id, "d": dataset_id}).first()
        if row is None:
            return None
        partners = conn.execute(sa.text(
            "SELECT DISTINCT other_model_id FROM pair_correlation WHERE run_id = :r AND model_id = :m ORDER BY 1"),
            {"r": row.id, "m": row.model_id}).scalars().all()
    return Correlation(int(row.id), int(row.model_id), tuple(int(p) for p in partners))


def best_partner_neurons(engine: Engine, correlation: Correlation, partner_id: int) -> pl.DataFrame:
    """Per reference neuron, its best-correlated neuron in ``partner_id``: ``layer, idx, best_layer,
    best_idx`` (dead neurons, which have none, left out)."""
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT layer::int, idx, best_layer::int, best_idx FROM pair_correlation WHERE run_id = :r "
            "AND model_id = :m AND other_model_id = :p AND best_layer IS NOT NULL"),
            {"r": correlation.run_id, "m": correlation.reference_id, "p": partner_id}).all()
    return pl.DataFrame([tuple(r) for r in got], orient="row",
                        schema={"layer": pl.Int64, "idx": pl.Int64, "best_layer": pl.Int64, "best_idx": pl.Int64})


def dataset_rows(engine: Engine, dataset_id: int, row_idxs: Sequence[int]) -> torch.Tensor:
    """The token rows ``row_idxs`` of a dataset, in that order: ``LongTensor[len(row_idxs), ctx]``."""
    wanted = [int(r) for r in row_idxs]
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT row_idx, tokens FROM dataset_row WHERE dataset_id = :d "
                                        "AND row_idx = ANY(:rows)"), {"d": dataset_id, "rows": wanted}).all())
    missing = [r for r in wanted if r not in got]
    if missing:
        raise AtlasError(f"dataset row {missing[0]} is missing — rebuild the dataset with `atlas dataset build`")
    return torch.tensor([got[r] for r in wanted], dtype=torch.long)
