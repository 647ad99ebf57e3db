"""What distinguishes universal neurons: the paper's comparison of their properties with the other
neurons of the same layer (Gurnee et al. 2024, §4.1 and its "properties of universal neurons"
figure).

The authors rank every property of a neuron among the neurons of its layer (scipy
``percentileofscore``, kind 'rank') and compare the percentiles of universal neurons (excess
correlation > 0.5) with the rest: universal neurons fire rarely, have high activation skew and
kurtosis, negative input bias and large weight norm. The view ``neuron_property_percentile``
(atlas/views.py) holds the per-neuron percentiles for the reference models of the current
correlation runs; these queries read it, with the threshold chosen at query time.
"""

from __future__ import annotations

from typing import Sequence

import polars as pl
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.queries._sql import ModelRef, Where, frame, model_id
from atlas.views import PROPERTIES

#: The properties the paper compares (the issue's list: activation frequency, skew, kurtosis, weight
#: norm, input bias, vocab kurtosis and skew); PROPERTIES has a few more (mean, in_out_sim, w_out_norm).
PAPER_PROPERTIES = ("act_frequency", "skew", "kurtosis", "l2_penalty", "input_bias", "vocab_kurtosis", "vocab_skew")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _properties(properties: Sequence[str] | None) -> list[str]:
    chosen = list(properties or PAPER_PROPERTIES)
    unknown = [p for p in chosen if p not in PROPERTIES]
    if unknown:
        raise AtlasError(f"no property {unknown[0]!r} — use one of {', '.join(PROPERTIES)}")
    return chosen


def _models(engine: Engine, model: ModelRef | None, cohort: str | None) -> Where:
    where = Where().scope(engine, model=model, model_column="v.model_id")
    if cohort is not None:  # ids first: a filter on the window's partition column keeps it per model
        ids = frame(engine, "SELECT m.id FROM model m JOIN cohort c ON c.id = m.cohort_id WHERE c.name = :c",
                    {"c": str(cohort)})
        where.add("v.model_id = ANY(:model_ids)", model_ids=[int(i) for i in ids["id"]] if ids.height else [])
    return where


def property_percentiles(engine: Engine, *, model: ModelRef | None = None, cohort: str | None = None,
                         properties: Sequence[str] | None = None) -> pl.DataFrame:
    """Per reference neuron and property: ``model, layer, idx, excess, property, value, percentile``
    (within its layer, 0–100), from the view ``neuron_property_percentile``.

    >>> property_percentiles(engine, model="synth-a", properties=["kurtosis"])   # doctest: +SKIP
    """
    where = _models(engine, model, cohort).add("v.property = ANY(:props)", props=_properties(properties))
    return frame(engine, f"""
        SELECT v.model, v.layer::int AS layer, v.idx, v.excess::float8 AS excess, v.property, v.value,
               v.percentile::float8 AS percentile
        FROM neuron_property_percentile v
        WHERE true {where.sql}
        ORDER BY v.model, v.layer, v.idx, v.property
    """, where.params)


def universal_properties(engine: Engine, *, model: ModelRef | None = None, cohort: str | None = None,
                         threshold: float = 0.5, by_layer: bool = True,
                         properties: Sequence[str] | None = None) -> pl.DataFrame:
    """The distributions of within-layer percentiles, universal neurons (excess > ``threshold``) vs
    the others (the rest, dead neurons included), per reference model, property and — with
    ``by_layer`` — layer (else pooled over layers, as the paper's figure): ``model, layer`` (null
    when pooled), ``property, group`` ('universal' | 'other'), ``n`` (neurons with a value),
    ``p10, p25, median, p75, p90, mean`` (of the percentile, 0–100).

    >>> universal_properties(engine, model="synth-a", by_layer=False).filter(pl.col("group") == "universal")  # doctest: +SKIP
    """
    where = _models(engine, model, cohort).add("v.property = ANY(:props)", props=_properties(properties))
    where.add("v.percentile IS NOT NULL")
    layer = "v.layer::int" if by_layer else "NULL::int"
    return frame(engine, f"""
        SELECT model, layer, property, "group", n, q[1] AS p10, q[2] AS p25, q[3] AS median, q[4] AS p75,
               q[5] AS p90, mean
        FROM (
            SELECT v.model, {layer} AS layer, v.property,
                   CASE WHEN v.excess > :t THEN 'universal' ELSE 'other' END AS "group",
                   count(*) AS n, avg(v.percentile)::float8 AS mean,
                   percentile_cont(ARRAY[{", ".join(map(str, QUANTILES))}]) WITHIN GROUP (ORDER BY v.percentile) AS q
            FROM neuron_property_percentile v
            WHERE true {where.sql}
            GROUP BY 1, 2, 3, 4
        ) d
        ORDER BY model, layer NULLS FIRST, property, "group" DESC
    """, where.params | {"t": float(threshold)})
