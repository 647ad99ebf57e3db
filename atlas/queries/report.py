"""The plain-text summary ``atlas status`` prints."""

from __future__ import annotations

import polars as pl
from sqlalchemy.engine import Engine

from atlas.queries._sql import EMPTY_HINT
from atlas.queries.catalog import datasets, models, runs
from atlas.queries.universality import layer_universality


def status_report(engine: Engine) -> str:
    """A plain-text summary for ``atlas status``: models, datasets, recent runs (``current`` marks the
    runs the views show), universal neurons per layer."""
    lines: list[str] = []
    ms = models(engine)
    if ms.height == 0:
        return EMPTY_HINT
    with pl.Config(tbl_rows=50, tbl_cols=12, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        lines += ["Models", str(ms.select("model", "cohort", "seed_label", "n_layers", "d_mlp", "n_neurons"))]
        ds = datasets(engine)
        if ds.height:
            lines += ["", "Datasets", str(ds.select("dataset", "tokenizer", "context_length", "n_rows", "n_tokens"))]
        rs = runs(engine, limit=30)
        lines += ["", "Runs (newest first)",
                  str(rs.select("run_id", "kind", "state", "current", "model", "cohort", "dataset", "tokens_done",
                                "seconds"))]
        lu = layer_universality(engine)
        if lu.height:
            lines += ["", "Universal neurons per layer (excess correlation > 0.5)",
                      str(lu.select("model", "cohort", "layer", "n_neurons", "n_universal", "universal_share"))]
    return "\n".join(lines)
