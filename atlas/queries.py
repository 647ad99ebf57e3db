"""The query layer: questions about the atlas, answered as polars DataFrames.

Every function takes an engine first and returns a ``polars.DataFrame``; filters are bound
parameters, never pasted into SQL.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine


def frame(engine: Engine, statement: str | sa.sql.Executable, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run a read query and return its rows as a DataFrame (columns in SELECT order)."""
    if isinstance(statement, str):
        statement = sa.text(statement)
    with engine.connect() as conn:
        result = conn.execute(statement, params or {})
        columns = list(result.keys())
        rows = result.fetchall()
    if not rows:
        return pl.DataFrame(schema={c: pl.Null for c in columns})
    return pl.DataFrame([tuple(r) for r in rows], schema=columns, orient="row", infer_schema_length=None)


def models(engine: Engine) -> pl.DataFrame:
    """One row per model: name, cohort, seed label, shapes and neuron count.

    >>> models(engine).select("model", "cohort", "n_layers", "d_mlp")  # doctest: +SKIP
    """
    return frame(engine, """
        SELECT m.id AS model_id, m.name AS model, c.name AS cohort, m.seed_label, m.architecture,
               m.n_layers, m.d_model, m.d_mlp, m.n_heads, m.d_vocab, m.act_fn, m.source,
               m.n_layers * m.d_mlp AS n_neurons
        FROM model m LEFT JOIN cohort c ON c.id = m.cohort_id
        ORDER BY c.name NULLS LAST, m.name
    """)


def datasets(engine: Engine) -> pl.DataFrame:
    """One row per token dataset with how it was made."""
    return frame(engine, """
        SELECT d.id AS dataset_id, d.name AS dataset, d.source, t.name AS tokenizer, d.context_length,
               d.n_rows, d.n_tokens, d.n_kept_tokens, d.content_hash, d.created_at
        FROM dataset d JOIN tokenizer t ON t.id = d.tokenizer_id ORDER BY d.name
    """)


def runs(engine: Engine, *, limit: int = 200) -> pl.DataFrame:
    """Recent runs, newest first, with progress and timings."""
    return frame(engine, """
        SELECT r.id AS run_id, r.kind, r.status, m.name AS model, c.name AS cohort, d.name AS dataset,
               r.tokens_done, r.tokens_total, r.device, r.error, r.started_at, r.finished_at,
               extract(epoch FROM (coalesce(r.finished_at, now()) - r.started_at)) AS seconds
        FROM run r LEFT JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = r.cohort_id
        LEFT JOIN dataset d ON d.id = r.dataset_id
        ORDER BY r.id DESC LIMIT :limit
    """, {"limit": limit})


def layer_universality(engine: Engine, *, threshold: float = 0.5) -> pl.DataFrame:
    """Per reference model and layer: neuron count, universal count and share at ``threshold``."""
    return frame(engine, """
        SELECT m.name AS model, c.name AS cohort, u.layer, count(*) AS n_neurons,
               count(*) FILTER (WHERE u.excess > :t) AS n_universal,
               avg((coalesce(u.excess, 0) > :t)::int)::float8 AS universal_share
        FROM neuron_universality u JOIN latest_run r ON r.id = u.run_id
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        GROUP BY m.name, c.name, u.layer ORDER BY m.name, u.layer
    """, {"t": threshold})


def status_report(engine: Engine) -> str:
    """A plain-text summary for ``atlas status``."""
    lines: list[str] = []
    ms = models(engine)
    if ms.height == 0:
        return "the atlas is empty — run `make demo`, or `atlas zoo train` then `atlas ingest` (see README)"
    with pl.Config(tbl_rows=50, tbl_cols=12, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        lines += ["Models", str(ms.select("model", "cohort", "seed_label", "n_layers", "d_mlp", "n_neurons"))]
        ds = datasets(engine)
        if ds.height:
            lines += ["", "Datasets", str(ds.select("dataset", "tokenizer", "context_length", "n_rows", "n_tokens"))]
        rs = runs(engine, limit=30)
        lines += ["", "Runs (newest first)", str(rs.select("run_id", "kind", "status", "model", "dataset", "tokens_done", "seconds"))]
        lu = layer_universality(engine)
        if lu.height:
            lines += ["", "Universal neurons per layer (excess correlation > 0.5)", str(lu)]
    return "\n".join(lines)
