"""Questions about universality over training, answered as polars DataFrames.

A model's training checkpoints are models of the atlas with a ``step`` and ``train_tokens``, and
``checkpoint_of`` = the final model (migration 0006; ``atlas.ingest.runs.training``). Each
checkpoint's seeds were correlated as a cohort, so every reference checkpoint has its own
``neuron_universality`` rows (from its current correlation run, view ``current_neuron_universality``).
A *training* is named by its final model (``trained_model``); any checkpoint's name finds it too.

    >>> from atlas import queries as q
    >>> q.universality_over_training(engine, cohort="demo")      # doctest: +SKIP
    >>> q.neuron_over_training(engine, "demo-a", 0, 39)          # doctest: +SKIP

The SQL view ``universality_over_training`` answers the first question at the paper's threshold.
"""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atlas.queries._sql import ModelRef, connect, frame, model_id


def universality_over_training(engine: Engine, *, cohort: str | None = None, model: ModelRef | None = None,
                               threshold: float = 0.5) -> pl.DataFrame:
    """Per reference model with a known step (a final model and its checkpoints) and layer: the
    universal share at ``threshold`` against training steps and tokens.

    Columns: ``trained_model, model, cohort, seed_label, step, train_tokens, layer, n_partners,
    n_neurons, n_universal, universal_share, avg_excess, avg_mean_corr, avg_mean_baseline``, ordered by
    training, step and layer. ``cohort`` keeps the trainings of that cohort's models (the per-step
    cohorts included); ``model`` one training (any of its checkpoints names it). Dead neurons
    (NULL excess) count as not universal.

    >>> universality_over_training(engine, cohort="demo", threshold=0.5)  # doctest: +SKIP
    """
    where, params = [], {"t": float(threshold)}
    if cohort is not None:
        where.append("fc.name = :cohort")
        params["cohort"] = str(cohort)
    if model is not None:
        where.append("f.id = :trained")
        params["trained"] = _trained_model_id(engine, model)
    condition = " AND ".join(["m.step IS NOT NULL", *where])
    return frame(engine, f"""
        SELECT f.name AS trained_model, m.name AS model, c.name AS cohort, m.seed_label, m.step,
               m.train_tokens, u.layer::int AS layer, max(u.n_partners)::int AS n_partners, count(*) AS n_neurons,
               count(*) FILTER (WHERE u.excess > :t) AS n_universal,
               avg((coalesce(u.excess, 0) > :t)::int)::float8 AS universal_share,
               avg(u.excess)::float8 AS avg_excess, avg(u.mean_corr)::float8 AS avg_mean_corr,
               avg(u.mean_baseline)::float8 AS avg_mean_baseline
        FROM current_neuron_universality u
        JOIN model m ON m.id = u.model_id
        JOIN model f ON f.id = coalesce(m.checkpoint_of, m.id)
        LEFT JOIN cohort c ON c.id = m.cohort_id
        LEFT JOIN cohort fc ON fc.id = f.cohort_id
        WHERE {condition}
        GROUP BY f.name, m.name, c.name, m.seed_label, m.step, m.train_tokens, u.layer
        ORDER BY f.name, m.step, u.layer
    """, params)


def neuron_over_training(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """One neuron through its model's training: at every step its model was correlated at, the
    neuron's ``max_corr, mean_corr, min_corr, mean_baseline, excess`` (NULL: dead at that step).

    The neuron is ``(layer, idx)`` of the training ``model`` names (the final model or any of its
    checkpoints): the same parameters, earlier in training. Columns: ``model, step, train_tokens,
    n_partners, max_corr, mean_corr, min_corr, mean_baseline, excess``, by step.

    >>> neuron_over_training(engine, "demo-a", 0, 39).select("train_tokens", "excess")  # doctest: +SKIP
    """
    trained = _trained_model_id(engine, model)
    return frame(engine, """
        SELECT m.name AS model, m.step, m.train_tokens, u.n_partners::int AS n_partners, u.max_corr,
               u.mean_corr, u.min_corr, u.mean_baseline, u.excess
        FROM model m
        JOIN current_neuron_universality u ON u.model_id = m.id AND u.layer = :l AND u.idx = :i
        WHERE coalesce(m.checkpoint_of, m.id) = :f AND m.step IS NOT NULL
        ORDER BY m.step
    """, {"f": trained, "l": int(layer), "i": int(idx)})


def _trained_model_id(engine: Engine, model: ModelRef) -> int:
    """The final model of the training that ``model`` (a final model or a checkpoint) belongs to."""
    mid = model_id(engine, model)
    with connect(engine) as conn:
        found = conn.execute(sa.text("SELECT coalesce(checkpoint_of, id) FROM model WHERE id = :m"), {"m": mid}).scalar()
    return int(found) if found is not None else mid


def checkpoint_models(engine: Engine) -> list[str]:
    """Names of the models that are training checkpoints of another model (pages that summarise
    the atlas leave them to the over-training view)."""
    return frame(engine, "SELECT name FROM model WHERE checkpoint_of IS NOT NULL ORDER BY name")["name"].to_list()
