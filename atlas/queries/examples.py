"""A neuron's examples as text: its top activations, examples sampled across the quantiles of its
firing distribution, its most negative activations, and its best partners' activations over its
own top examples (the same text, side by side).

Each example is a window of a stored dataset row around one token: ``start`` (the first window
position in the row), ``center`` (the example token's index in the window), ``token_ids``,
``tokens`` (decoded) and ``activations``: ``hook_post`` of the neuron at every window token where
an ``examples`` run stored them (table ``example_activation``), else only at positions that are
themselves stored examples (null elsewhere).
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from sqlalchemy.engine import Connection, Engine

from atlas.errors import AtlasError
from atlas.queries._sql import ModelRef, frame, neuron_params, rows_of

SampleKind = Literal["quantile", "bottom"]



def _window(e: str = "e") -> str:
    """The window and its decoded tokens, for an example ``e`` (row_idx, position) of dataset row ``dr``."""
    return f"""
       w.start, {e}.position - w.start AS center,
       dr.tokens[w.start + 1 : {e}.position + 1 + :after] AS token_ids,
       ARRAY(SELECT coalesce(v.text, '�')
               FROM unnest(dr.tokens[w.start + 1 : {e}.position + 1 + :after]) WITH ORDINALITY AS t(tok, ord)
               LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = t.tok
              ORDER BY t.ord) AS tokens"""



def _stored_examples(engine: Engine | Connection, source: str, p: dict[str, Any], *, order: str,
                     sampled: bool = False) -> pl.DataFrame:
    """Examples of ``:kind`` from ``source`` (top_example rows, or with ``sampled`` sampled_example
    rows) with their windows, and the neuron's own stored activations over them (null when no
    examples run stored them)."""
    kind = " AND e.kind = :kind" if sampled else ""
    out = frame(engine, f"""
        SELECT e.rank::int AS rank, e.value::float8 AS value, {"e.quantile::float8 AS quantile, " if sampled else ""}
               e.row_idx, e.position::int AS position, {_window()}, act.stored_start, act.stored
        FROM {source} e
        JOIN run r ON r.id = e.run_id
        JOIN model m ON m.id = e.model_id
        JOIN dataset_row dr ON dr.dataset_id = r.dataset_id AND dr.row_idx = e.row_idx
        CROSS JOIN LATERAL (SELECT greatest(e.position - :before, 0) AS start) w
        LEFT JOIN LATERAL (
            SELECT a.start AS stored_start, a.activations AS stored
            FROM current_example_activation a
            WHERE a.model_id = e.model_id AND a.layer = e.layer AND a.idx = e.idx AND a.kind = :kind
              AND a.rank = e.rank AND a.source_model_id = e.model_id AND a.row_idx = e.row_idx
              AND a.position = e.position
            LIMIT 1) act ON true
        WHERE e.model_id = :m AND e.layer = :l AND e.idx = :i{kind}
        ORDER BY {order}
    """, p)
    return _with_activations(out)


def top_examples(engine: Engine | Connection, model: ModelRef, layer: int, idx: int, *, k: int = 20,
                 before: int = 12, after: int = 4, run_id: int | None = None) -> pl.DataFrame:
    """A neuron's top activating examples with decoded context, best first.

    One row per example: ``rank, value`` (the stored ``hook_post`` at the position), ``row_idx,
    position`` (0-based within the dataset row), ``start, center, token_ids, tokens`` (the window:
    up to ``before`` tokens before and ``after`` after) and ``activations`` (per window token; see
    the module docstring). ``run_id``: read that stats run instead of the current one.

    >>> ex = top_examples(engine, "synth-a", 0, 3, k=5, before=6)          # doctest: +SKIP
    >>> ex.row(0, named=True)["tokens"][ex["center"][0]]                 # doctest: +SKIP
    ' the'
    """
    p = _params(engine, model, layer, idx, before, after) | {"k": int(k), "kind": "top"}
    return _stored_examples(engine, rows_of(engine, "top_example", run_id, p), p, order="e.rank LIMIT :k")


def sampled_examples(engine: Engine | Connection, model: ModelRef, layer: int, idx: int, kind: SampleKind, *,
                     before: int = 12, after: int = 4, run_id: int | None = None) -> pl.DataFrame:
    """A neuron's ``quantile`` examples (drawn evenly across the quantiles of the tokens where it
    fires, lowest first, with their ``quantile`` in 0..1) or its ``bottom`` examples (most negative
    ``hook_post`` first), with the columns of :func:`top_examples`.

    >>> sampled_examples(engine, "synth-a", 0, 3, "quantile").select("quantile", "value")   # doctest: +SKIP
    """
    if kind not in ("quantile", "bottom"):
        raise AtlasError(f"no {kind!r} examples — use 'quantile' or 'bottom'")
    p = _params(engine, model, layer, idx, before, after) | {"kind": kind}
    return _stored_examples(engine, rows_of(engine, "sampled_example", run_id, p), p, order="e.rank", sampled=True)


def partner_examples(engine: Engine | Connection, model: ModelRef, layer: int, idx: int, *, k: int = 5,
                     before: int = 12, after: int = 4) -> pl.DataFrame:
    """Each best partner's activations over this neuron's own top ``k`` examples (stored by the
    current examples run for reference neurons): the same text, coloured by the partner.

    One row per (partner model, example): ``other_model, other_seed, partner_layer, partner_idx``
    (the partner neuron), ``rank, row_idx, position``, ``reference_value`` (this neuron's
    ``hook_post`` there), ``value`` (the partner's), and the window columns of :func:`top_examples`
    with ``activations`` the partner's. Empty when no examples run covered this neuron.

    >>> partner_examples(engine, "synth-a", 0, 3, k=3).select("other_model", "rank", "value")  # doctest: +SKIP
    """
    p = _params(engine, model, layer, idx, before, after) | {"k": int(k)}
    out = frame(engine, f"""
        SELECT om.name AS other_model, om.seed_label AS other_seed, a.source_layer::int AS partner_layer,
               a.source_idx AS partner_idx, a.rank::int AS rank, a.row_idx, a.position::int AS position,
               te.value::float8 AS reference_value, a.activations[a.position - a.start + 1]::float8 AS value,
               {_window("a")}, a.start AS stored_start, a.activations AS stored
        FROM current_example_activation a
        JOIN run r ON r.id = a.run_id
        JOIN model m ON m.id = a.model_id
        JOIN model om ON om.id = a.source_model_id
        JOIN dataset_row dr ON dr.dataset_id = r.dataset_id AND dr.row_idx = a.row_idx
        LEFT JOIN current_top_example te ON te.model_id = a.model_id AND te.layer = a.layer AND te.idx = a.idx
                                        AND te.rank = a.rank AND te.row_idx = a.row_idx AND te.position = a.position
        CROSS JOIN LATERAL (SELECT greatest(a.position - :before, 0) AS start) w
        WHERE a.model_id = :m AND a.layer = :l AND a.idx = :i AND a.kind = 'top'
          AND a.source_model_id <> a.model_id AND a.rank <= :k
        ORDER BY om.seed_label NULLS LAST, om.name, a.rank
    """, p)
    return _with_activations(out, own=False)


def _params(engine: Engine | Connection, model: ModelRef, layer: int, idx: int, before: int,
            after: int) -> dict[str, Any]:
    return neuron_params(engine, model, layer, idx) | {"before": max(int(before), 0), "after": max(int(after), 0)}


def _with_activations(out: pl.DataFrame, own: bool = True) -> pl.DataFrame:
    """Replace the stored window (``stored_start``, ``stored``) by ``activations`` aligned with
    ``tokens``: the stored value at each window position, else (``own``: the neuron's own examples)
    the value of any example of the frame at that position, else null."""
    if out.height == 0:
        return out.drop("stored_start", "stored", strict=False).with_columns(
            pl.lit(None, dtype=pl.List(pl.Float64)).alias("activations"))
    known: dict[tuple[int, int], float] = {
        (r, pos): v for r, pos, v in zip(out["row_idx"], out["position"], out["value"]) if v is not None}
    acts = []
    for row in out.iter_rows(named=True):
        stored, first = row["stored"], row["stored_start"]
        window = []
        for j in range(len(row["tokens"] or [])):
            pos = row["start"] + j
            if stored is not None and first is not None and 0 <= pos - first < len(stored):
                window.append(stored[pos - first])
            else:
                window.append(known.get((row["row_idx"], pos)) if own else None)
        acts.append(window)
    return out.drop("stored_start", "stored").with_columns(pl.Series("activations", acts, dtype=pl.List(pl.Float64)))
