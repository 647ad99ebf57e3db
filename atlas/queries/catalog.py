"""What is in the atlas: models, cohorts, datasets, runs, and whether anything changed."""

from __future__ import annotations

from typing import Literal

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from atlas.queries._sql import Where, connect, frame

RunStatus = Literal["queued", "running", "done", "failed"]


def is_empty(engine: Engine) -> bool:
    """True when the atlas holds no model yet (every UI page then says what to run)."""
    with connect(engine) as conn:
        return conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM model)")).scalar_one()


def data_version(engine: Engine | Connection) -> str:
    """A string that changes whenever a run finishes or is removed (for caching summaries)."""
    with connect(engine) as conn:
        row = conn.execute(sa.text(
            "SELECT count(*), max(id), max(finished_at) FROM run WHERE status = 'done'")).one()
    return f"{row[0]}:{row[1]}:{row[2]}"


def models(engine: Engine, *, cohort: str | None = None) -> pl.DataFrame:
    """One row per model: name, cohort, seed label, shapes and neuron count.

    >>> models(engine).select("model", "cohort", "n_layers", "d_mlp")  # doctest: +SKIP
    """
    where = Where().scope(engine, cohort=cohort)
    return frame(engine, f"""
        SELECT m.id AS model_id, m.name AS model, c.name AS cohort, m.seed_label, m.architecture,
               m.n_layers, m.d_model, m.d_mlp, m.n_heads, m.d_vocab, m.act_fn, m.source, m.revision,
               m.n_layers * m.d_mlp AS n_neurons
        FROM model m LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {where.sql}
        ORDER BY c.name NULLS LAST, m.name
    """, where.params)


def cohorts(engine: Engine, *, threshold: float = 0.5) -> pl.DataFrame:
    """One row per cohort: tokenizer, its models (seed order), neuron count, and — from the current
    correlation runs — the reference model(s) and the universal count at excess > ``threshold``
    (the paper: 0.5).

    >>> cohorts(engine, threshold=0.3).select("cohort", "n_models", "reference", "n_universal")  # doctest: +SKIP
    """
    return frame(engine, """
        SELECT c.id AS cohort_id, c.name AS cohort, t.name AS tokenizer, c.description,
               count(m.id) AS n_models,
               array_agg(m.name ORDER BY m.seed_label NULLS LAST, m.name) FILTER (WHERE m.id IS NOT NULL) AS models,
               sum(m.n_layers * m.d_mlp) AS n_neurons,
               (SELECT string_agg(rm.name, ', ' ORDER BY rm.name) FROM latest_run r JOIN model rm ON rm.id = r.model_id
                 WHERE r.kind = 'correlation' AND r.cohort_id = c.id) AS reference,
               (SELECT count(*) FROM current_neuron_universality u JOIN run r ON r.id = u.run_id
                 WHERE r.cohort_id = c.id AND u.excess > :t) AS n_universal
        FROM cohort c
        LEFT JOIN tokenizer t ON t.id = c.tokenizer_id
        LEFT JOIN model m ON m.cohort_id = c.id
        GROUP BY c.id, c.name, t.name, c.description
        ORDER BY c.name
    """, {"t": float(threshold)})


def datasets(engine: Engine) -> pl.DataFrame:
    """One row per token dataset with how it was made."""
    return frame(engine, """
        SELECT d.id AS dataset_id, d.name AS dataset, d.source, t.name AS tokenizer, d.context_length,
               d.n_rows, d.n_tokens, d.n_kept_tokens, d.content_hash, d.created_at
        FROM dataset d JOIN tokenizer t ON t.id = d.tokenizer_id ORDER BY d.name
    """)


def runs(engine: Engine, *, limit: int = 200, status: RunStatus | None = None, kind: str | None = None) -> pl.DataFrame:
    """Recent runs, newest first, with progress (``progress`` in 0..1 when the total is known), timings,
    ``state`` (the status, or ``stale`` for a running run whose process died: view ``run_state``) and
    ``current`` (true for the newest done run of its subject: the one the views and queries show).

    >>> runs(engine, status="running").select("run_id", "kind", "model", "progress")  # doctest: +SKIP
    """
    where = Where()
    if status is not None:
        where.add("r.status = :status", status=status)
    if kind is not None:
        where.add("r.kind = :kind", kind=kind)
    return frame(engine, f"""
        SELECT r.id AS run_id, r.kind, r.status, r.state, m.name AS model, c.name AS cohort, d.name AS dataset,
               r.tokens_done, r.tokens_total,
               CASE WHEN r.status = 'done' THEN 1.0
                    WHEN r.tokens_total > 0 THEN least(r.tokens_done::float8 / r.tokens_total, 1.0) END AS progress,
               r.device, r.code_version, r.error, r.created_at, r.started_at, r.heartbeat_at, r.finished_at,
               extract(epoch FROM (coalesce(r.finished_at, now()) - r.started_at))::float8 AS seconds,
               EXISTS (SELECT 1 FROM latest_run lr WHERE lr.id = r.id) AS current
        FROM run_state r LEFT JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = r.cohort_id
        LEFT JOIN dataset d ON d.id = r.dataset_id
        WHERE true {where.sql}
        ORDER BY r.id DESC LIMIT :limit
    """, where.params | {"limit": int(limit)})
