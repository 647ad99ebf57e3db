"""Universal neurons (the paper's excess correlation above a threshold), per-layer summaries, the
distributions behind the paper's figures, and what explains a model's universal count.

``excess`` = mean over partners of (best-partner rho − best rho against a randomly rotated
partner); universal ⇔ ``excess > threshold`` (the paper: 0.5), chosen at query time. Dead neurons
(null excess) are never universal. Queries read the current correlation runs; those that read
only correlation results take ``run_id`` to read an older run instead.
"""

from __future__ import annotations

from typing import Sequence

import polars as pl
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.queries._sql import ModelRef, Where, check_run, frame, labels_of, rows_of

UNIVERSAL_ORDER = ("excess", "mean_corr", "min_corr", "max_corr", "mean_baseline", "layer", "kurtosis", "skew",
                   "act_frequency", "w_out_norm", "input_bias")
_STATS_ORDER = {"kurtosis": "a.kurtosis", "skew": "a.skew", "act_frequency": "a.act_frequency",
                "w_out_norm": "w.w_out_norm", "input_bias": "w.input_bias"}


def universal_neurons(
    engine: Engine, *, threshold: float = 0.5, cohort: str | None = None, model: ModelRef | None = None,
    layer: int | Sequence[int] | None = None, label: str | None = None, family: str | None = None,
    order_by: str = "excess", descending: bool = True, limit: int | None = None, run_id: int | None = None,
) -> pl.DataFrame:
    """Reference neurons whose excess correlation (mean over partners of best rho minus the
    rotation baseline) is above ``threshold`` (the paper: 0.5), with their statistics and labels.

    Filters: ``cohort`` name, ``model`` (reference model), ``layer`` (one or several), ``label``
    (e.g. 'unigram'), ``family`` (a family's name, e.g. "unigram: token=' the'", or a label).
    ``order_by`` is one of ``UNIVERSAL_ORDER``. ``run_id``: that correlation run instead of the
    current ones (statistics and labels stay the current ones).

    >>> universal_neurons(engine, cohort="synth", layer=0, label="unigram")   # doctest: +SKIP
    """
    if order_by not in UNIVERSAL_ORDER:
        raise AtlasError(f"cannot order universal neurons by {order_by!r} — use one of {', '.join(UNIVERSAL_ORDER)}")
    runs = Where().scope(engine, cohort=cohort, model=model, model_column="r.model_id")
    if run_id is None:
        runs.add("r.id IN (SELECT id FROM latest_run WHERE kind = 'correlation')")
    else:
        runs.add("r.id = :run_id", run_id=check_run(engine, run_id, "correlation"))
    where = Where().add("u.excess > :t", t=float(threshold)).scope(engine, layer=layer, layer_column="u.layer")
    if label is not None:
        where.add("""EXISTS (SELECT 1 FROM current_neuron_label l WHERE l.model_id = u.model_id AND l.layer = u.layer
                             AND l.idx = u.idx AND l.label = :label)""", label=str(label))
    if family is not None:
        where.add("""EXISTS (SELECT 1 FROM family_member fm JOIN current_family f ON f.id = fm.family_id
                             WHERE fm.model_id = u.model_id AND fm.layer = u.layer AND fm.idx = u.idx
                               AND (f.name = :family OR f.label = :family))""", family=str(family))
    direction = "DESC NULLS LAST" if descending else "ASC NULLS LAST"
    order_col = _STATS_ORDER.get(order_by, f"u.{order_by}")
    tie = "u.model_id, u.layer, u.idx"
    params = runs.params | where.params
    limit_sql = ""
    if limit is not None:
        limit_sql, params["limit"] = "LIMIT :limit", int(limit)
    # Limit first when the order is a universality column: each reference run contributes its own
    # best `limit` rows (an index scan on (run_id, excess) for the default order), and only the
    # survivors are joined to their statistics. Ordering by a statistic joins first.
    inner_limit = limit_sql if order_by not in _STATS_ORDER else ""
    inner_col = order_by if order_by not in _STATS_ORDER else "excess"  # matches the (run_id, excess) index
    return frame(engine, f"""
        WITH runs AS MATERIALIZED (
            SELECT r.id FROM run r JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
            WHERE true {runs.sql}
        ),
        top AS MATERIALIZED (
            SELECT u.* FROM runs CROSS JOIN LATERAL (
                SELECT u.* FROM neuron_universality u
                WHERE u.run_id = runs.id {where.sql}
                ORDER BY u.{inner_col} {"DESC" if descending else "ASC"} {inner_limit}) u
            ORDER BY u.{inner_col} {direction}, {tie} {inner_limit}
        )
        SELECT m.name AS model, c.name AS cohort, u.layer::int AS layer, u.idx,
               u.excess::float8 AS excess, u.mean_corr::float8 AS mean_corr, u.min_corr::float8 AS min_corr,
               u.max_corr::float8 AS max_corr, u.mean_baseline::float8 AS mean_baseline, u.n_partners::int AS n_partners,
               a.act_frequency, a.skew, a.kurtosis, w.w_out_norm, w.input_bias,
               {labels_of("u")} AS labels,
               u.run_id
        FROM top u
        JOIN model m ON m.id = u.model_id
        LEFT JOIN cohort c ON c.id = m.cohort_id
        LEFT JOIN current_activation_stats a ON a.model_id = u.model_id AND a.layer = u.layer AND a.idx = u.idx
        LEFT JOIN current_weight_stats w ON w.model_id = u.model_id AND w.layer = u.layer AND w.idx = u.idx
        ORDER BY {order_col} {direction}, {tie}
        {limit_sql}
    """, params)


def layer_universality(engine: Engine, *, threshold: float = 0.5, cohort: str | None = None,
                       run_id: int | None = None) -> pl.DataFrame:
    """Per reference model and layer: neuron count, universal count and share at ``threshold``, and
    the layer's average mean_corr and mean_baseline (the paper's per-layer figure).

    >>> layer_universality(engine, threshold=0.5).select("model", "layer", "universal_share")  # doctest: +SKIP
    """
    where = Where().scope(engine, cohort=cohort)
    params = where.params | {"t": float(threshold)}
    return frame(engine, f"""
        SELECT m.name AS model, c.name AS cohort, u.layer::int AS layer, count(*) AS n_neurons,
               count(*) FILTER (WHERE u.excess > :t) AS n_universal,
               (count(*) FILTER (WHERE u.excess > :t))::float8 / count(*) AS universal_share,
               avg(u.mean_corr)::float8 AS avg_mean_corr, avg(u.mean_baseline)::float8 AS avg_mean_baseline
        FROM {rows_of(engine, "neuron_universality", run_id, params)} u
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {where.sql}
        GROUP BY m.name, c.name, u.layer ORDER BY m.name, u.layer
    """, params)


def correlation_distribution(engine: Engine, *, cohort: str | None = None, model: ModelRef | None = None,
                             bins: int = 50, lo: float = 0.0, hi: float = 1.0,
                             threshold: float | None = None, run_id: int | None = None) -> pl.DataFrame:
    """Histograms of ``mean_corr``, ``mean_baseline`` and ``excess`` over reference neurons (the
    paper's "max correlation vs baseline" figure): ``model, measure, bin_lo, bin_hi, count``.
    Values outside ``[lo, hi]`` fall into the edge bins. With ``threshold`` only neurons above it
    (universal ones) are counted.

    >>> correlation_distribution(engine, bins=20).filter(pl.col("measure") == "mean_corr")  # doctest: +SKIP
    """
    if bins < 1 or hi <= lo:
        raise AtlasError("correlation_distribution needs bins ≥ 1 and hi > lo")
    where = Where().scope(engine, cohort=cohort, model=model)
    if threshold is not None:
        where.add("u.excess > :t", t=float(threshold))
    params = where.params | {"bins": int(bins), "lo": float(lo), "hi": float(hi)}
    return frame(engine, f"""
        WITH v AS (
            SELECT m.name AS model, s.measure,
                   least(greatest(width_bucket(s.value, :lo, :hi, :bins), 1), :bins) AS bin
            FROM {rows_of(engine, "neuron_universality", run_id, params)} u
            JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
            CROSS JOIN LATERAL (VALUES ('mean_corr', u.mean_corr::float8), ('mean_baseline', u.mean_baseline::float8),
                                       ('excess', u.excess::float8)) AS s(measure, value)
            WHERE s.value IS NOT NULL {where.sql}
        )
        SELECT model, measure, :lo + (bin - 1) * (:hi - :lo) / :bins AS bin_lo,
               :lo + bin * (:hi - :lo) / :bins AS bin_hi, count(*) AS count
        FROM v GROUP BY model, measure, bin ORDER BY model, measure, bin
    """, params)


def correlation_scatter(engine: Engine, *, cohort: str | None = None, model: ModelRef | None = None,
                        limit: int = 20000, run_id: int | None = None) -> pl.DataFrame:
    """Per reference neuron ``mean_corr`` against ``mean_baseline`` (a sample of at most ``limit``
    neurons, highest excess first): ``model, layer, idx, mean_corr, mean_baseline, excess``."""
    where = Where().scope(engine, cohort=cohort, model=model)
    params = where.params | {"limit": int(limit)}
    return frame(engine, f"""
        SELECT m.name AS model, u.layer::int AS layer, u.idx, u.mean_corr::float8 AS mean_corr,
               u.mean_baseline::float8 AS mean_baseline, u.excess::float8 AS excess
        FROM {rows_of(engine, "neuron_universality", run_id, params)} u
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE u.excess IS NOT NULL {where.sql}
        ORDER BY u.excess DESC LIMIT :limit
    """, params)


def layer_summary(engine: Engine, *, model: ModelRef | None = None, threshold: float = 0.5) -> pl.DataFrame:
    """Per model and layer: neuron count, mean firing rate, median activation kurtosis and skew,
    mean output-weight norm, number of labelled neurons, and universal count/share (reference
    models only; null elsewhere).

    >>> layer_summary(engine, model="synth-a")   # doctest: +SKIP
    """
    where = Where().scope(engine, model=model)
    return frame(engine, f"""
        SELECT m.name AS model, c.name AS cohort, l.layer::int AS layer, m.d_mlp AS n_neurons,
               st.mean_act_frequency, st.median_kurtosis, st.median_skew, ws.mean_w_out_norm,
               lb.n_labelled, un.n_universal, un.n_universal::float8 / nullif(un.n_correlated, 0) AS universal_share
        FROM model m
        LEFT JOIN cohort c ON c.id = m.cohort_id
        CROSS JOIN LATERAL generate_series(0, m.n_layers - 1) AS l(layer)
        LEFT JOIN LATERAL (
            SELECT avg(a.act_frequency)::float8 AS mean_act_frequency,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.kurtosis) AS median_kurtosis,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.skew) AS median_skew
            FROM current_activation_stats a WHERE a.model_id = m.id AND a.layer = l.layer) st ON true
        LEFT JOIN LATERAL (
            SELECT avg(w.w_out_norm)::float8 AS mean_w_out_norm
            FROM current_weight_stats w WHERE w.model_id = m.id AND w.layer = l.layer) ws ON true
        LEFT JOIN LATERAL (
            SELECT count(DISTINCT nl.idx) AS n_labelled
            FROM current_neuron_label nl WHERE nl.model_id = m.id AND nl.layer = l.layer) lb ON true
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE u.excess > :t) AS n_universal, count(*) AS n_correlated
            FROM current_neuron_universality u WHERE u.model_id = m.id AND u.layer = l.layer
            HAVING count(*) > 0) un ON true
        WHERE true {where.sql}
        ORDER BY c.name NULLS LAST, m.name, l.layer
    """, where.params | {"t": float(threshold)})


def universality_summary(engine: Engine, *, threshold: float = 0.5, cohort: str | None = None, top: int = 20,
                         run_id: int | None = None) -> pl.DataFrame:
    """Per reference model of the current correlation runs, what explains its universal count at
    ``threshold``: ``model, cohort, n_neurons, n_universal, median_mean_corr`` (best-partner rho,
    averaged over partners), ``median_mean_baseline`` (the rotation baseline), ``median_excess``,
    ``max_excess``, and ``top_threshold``: the excess of its ``top``-th strongest neuron (a
    threshold just under it shows the ``top`` strongest neurons). When nothing passes, compare the
    medians: a baseline close to the best correlation means the seeds barely agree beyond chance.

    >>> universality_summary(engine, threshold=0.5).select("model", "n_universal", "top_threshold")  # doctest: +SKIP
    """
    where = Where().scope(engine, cohort=cohort)
    params = where.params | {"t": float(threshold), "top": max(int(top), 1)}
    return frame(engine, f"""
        SELECT m.name AS model, c.name AS cohort, count(*) AS n_neurons,
               count(*) FILTER (WHERE u.excess > :t) AS n_universal,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY u.mean_corr) AS median_mean_corr,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY u.mean_baseline) AS median_mean_baseline,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY u.excess) AS median_excess,
               max(u.excess)::float8 AS max_excess,
               (array_agg(u.excess::float8 ORDER BY u.excess DESC) FILTER (WHERE u.excess IS NOT NULL))
                   [least(:top, count(u.excess))] AS top_threshold
        FROM {rows_of(engine, "neuron_universality", run_id, params)} u
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {where.sql}
        GROUP BY m.name, c.name ORDER BY m.name
    """, params)
