"""One neuron: its record, histogram, vocabulary effects, tokens, partners, labels, features and
families, and everything the UI's neuron page shows at once (examples: ``atlas.queries.examples``).

A neuron is ``(model, layer, idx)``: ``blocks.{layer}.mlp.hook_post[..., idx]``. Each query reads
the current runs; those of a single run kind also take ``run_id`` to read an older run.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from sqlalchemy.engine import Connection, Engine

from atlas.queries._sql import ModelRef, connect, frame, model_id, neuron_params, rows_of
from atlas.queries.examples import partner_examples as _partner_examples
from atlas.queries.examples import sampled_examples, top_examples


def neuron(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """A neuron's full record as ONE row: the ``neuron_overview`` columns (activation and weight
    statistics, universality, labels, and the run ids that filled them) plus the histogram and the
    vocabulary arrays.

    Columns include ``model, cohort, layer, idx, mean, variance, skew, kurtosis, act_frequency,
    post_max, w_out_norm, input_bias, vocab_kurtosis, max_corr, mean_corr, mean_baseline, excess,
    labels, stats_run_id, histogram, histogram_edges, top_token_ids, top_token_values,
    bottom_token_ids, bottom_token_values, dataset``. Statistics not computed yet are null. Zero
    rows when the model has no such neuron.

    >>> rec = neuron(engine, "synth-a", 0, 3).row(0, named=True)   # doctest: +SKIP
    >>> rec["excess"] > 0.5, rec["labels"]                          # doctest: +SKIP
    (True, ['unigram'])
    """
    return frame(engine, """
        SELECT o.*, a.histogram, rs.params -> 'histogram_edges' AS histogram_edges, d.name AS dataset,
               w.top_token_ids, w.top_token_values, w.bottom_token_ids, w.bottom_token_values
        FROM neuron_overview o
        LEFT JOIN activation_stats a
               ON a.run_id = o.stats_run_id AND a.model_id = o.model_id AND a.layer = o.layer AND a.idx = o.idx
        LEFT JOIN run rs ON rs.id = o.stats_run_id
        LEFT JOIN dataset d ON d.id = rs.dataset_id
        LEFT JOIN weight_stats w
               ON w.run_id = o.weights_run_id AND w.model_id = o.model_id AND w.layer = o.layer AND w.idx = o.idx
        WHERE o.model_id = :m AND o.layer = :l AND o.idx = :i
    """, neuron_params(engine, model, layer, idx))


def histogram(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """The ``hook_pre`` histogram of a neuron: ``bin_lo, bin_hi, count`` (edges from the stats run's
    ``params["histogram_edges"]``; bins are numbered when a run recorded none).

    >>> histogram(engine, "synth-a", 0, 3).filter(pl.col("count") > 0)   # doctest: +SKIP
    """
    return _histogram_of(neuron(engine, model, layer, idx))


def _histogram_of(rec: pl.DataFrame) -> pl.DataFrame:
    if rec.height == 0 or "histogram" not in rec.columns or rec["histogram"][0] is None:
        return pl.DataFrame(schema={"bin_lo": pl.Float64, "bin_hi": pl.Float64, "count": pl.Int64})
    counts = rec["histogram"][0].to_list()
    spec = rec["histogram_edges"][0]
    edges = _edges(spec.to_list() if isinstance(spec, pl.Series) else spec, len(counts))
    return pl.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "count": counts},
                        schema={"bin_lo": pl.Float64, "bin_hi": pl.Float64, "count": pl.Int64})


def _edges(spec: Any, n_bins: int) -> list[float]:
    """Bin edges from a run's recorded histogram spec: a list of edges, or {lo, hi[, bins]}."""
    if isinstance(spec, (list, tuple)) and len(spec) == n_bins + 1:
        return [float(x) for x in spec]
    if isinstance(spec, dict):
        lo, hi = spec.get("lo", spec.get("min")), spec.get("hi", spec.get("max"))
        if lo is not None and hi is not None:
            step = (float(hi) - float(lo)) / n_bins
            return [float(lo) + i * step for i in range(n_bins + 1)]
    return [float(i) for i in range(n_bins + 1)]


def vocab_effects(engine: Engine, model: ModelRef, layer: int, idx: int, *, run_id: int | None = None) -> pl.DataFrame:
    """The tokens a neuron's output boosts and suppresses most (``W_U · w_out``, processed weights):
    ``direction`` ('top'|'bottom'), ``rank`` (1 = strongest), ``token_id``, ``token``, ``value``.
    ``run_id``: read that weights run instead of the current one.

    >>> vocab_effects(engine, "synth-a", 0, 1).filter(pl.col("direction") == "top").head(3)  # doctest: +SKIP
    """
    p = neuron_params(engine, model, layer, idx)
    return frame(engine, f"""
        SELECT s.direction, s.rank::int AS rank, s.token_id, v.text AS token, s.value::float8 AS value
        FROM {rows_of(engine, "weight_stats", run_id, p)} w
        JOIN model m ON m.id = w.model_id
        CROSS JOIN LATERAL (
            SELECT 'top' AS direction, t.ord AS rank, t.tok AS token_id, t.val AS value
              FROM unnest(w.top_token_ids, w.top_token_values) WITH ORDINALITY AS t(tok, val, ord)
            UNION ALL
            SELECT 'bottom', t.ord, t.tok, t.val
              FROM unnest(w.bottom_token_ids, w.bottom_token_values) WITH ORDINALITY AS t(tok, val, ord)
        ) s
        LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = s.token_id
        WHERE w.model_id = :m AND w.layer = :l AND w.idx = :i
        ORDER BY s.direction DESC, s.rank
    """, p)


def token_activations(engine: Engine, model: ModelRef, layer: int, idx: int, *, limit: int = 20,
                      run_id: int | None = None) -> pl.DataFrame:
    """The vocabulary tokens on which a neuron fires most (mean ``hook_post`` when the token is
    current): ``token_id, token, count, mean_act, max_act``. ``run_id``: read that stats run.

    >>> token_activations(engine, "synth-a", 0, 3).head(1)["token"][0]   # doctest: +SKIP
    ' the'
    """
    p = neuron_params(engine, model, layer, idx) | {"limit": int(limit)}
    return frame(engine, f"""
        SELECT ta.token_id, v.text AS token, ta.count, ta.mean_act::float8 AS mean_act, ta.max_act::float8 AS max_act
        FROM {rows_of(engine, "token_activation", run_id, p)} ta
        JOIN model m ON m.id = ta.model_id
        LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = ta.token_id
        WHERE ta.model_id = :m AND ta.layer = :l AND ta.idx = :i
        ORDER BY ta.mean_act DESC LIMIT :limit
    """, p)


def best_partners(engine: Engine, model: ModelRef, layer: int, idx: int, *, run_id: int | None = None) -> pl.DataFrame:
    """The neuron's best-correlated neuron in every other model it was correlated with (the
    ``best_partner`` view; with ``run_id``, that correlation run's rows): ``other_model, other_seed,
    max_corr, best_layer, best_idx, baseline_max, excess`` (= max_corr − baseline_max), ordered by
    the other model's seed.

    >>> best_partners(engine, "synth-a", 0, 3).select("other_model", "best_layer", "best_idx", "max_corr")  # doctest: +SKIP
    """
    p = neuron_params(engine, model, layer, idx)
    source = "best_partner"
    if run_id is not None:  # one run has one row per pair: no newest-of-several to pick
        source = f"""(SELECT p.*, om.name AS other_model, om.seed_label AS other_seed,
                             p.max_corr - p.baseline_max AS excess
                      FROM {rows_of(engine, "pair_correlation", run_id, p)} p
                      JOIN model om ON om.id = p.other_model_id)"""
    return frame(engine, f"""
        SELECT other_model, other_seed, other_model_id, max_corr::float8 AS max_corr, best_layer::int AS best_layer,
               best_idx, baseline_max::float8 AS baseline_max, excess::float8 AS excess, run_id
        FROM {source} b
        WHERE model_id = :m AND layer = :l AND idx = :i
        ORDER BY other_seed NULLS LAST, other_model
    """, p)


def partner_edges(engine: Engine, model: ModelRef, layer: int, idx: int, *, k: int = 10,
                  run_id: int | None = None) -> pl.DataFrame:
    """The top-``k`` correlated neurons of a reference neuron in each partner model:
    ``partner_model, rank, partner_layer, partner_idx, rho`` (stored for reference neurons only).

    >>> partner_edges(engine, "synth-a", 0, 3, k=2)   # doctest: +SKIP
    """
    p = neuron_params(engine, model, layer, idx) | {"k": int(k)}
    return frame(engine, f"""
        SELECT pm.name AS partner_model, pm.seed_label AS partner_seed, e.rank::int AS rank,
               e.partner_layer::int AS partner_layer, e.partner_idx, e.rho::float8 AS rho
        FROM {rows_of(engine, "correlation_edge", run_id, p)} e
        JOIN model pm ON pm.id = e.partner_model_id
        WHERE e.model_id = :m AND e.layer = :l AND e.idx = :i AND e.rank <= :k
        ORDER BY pm.seed_label NULLS LAST, pm.name, e.rank
    """, p)


def labels(engine: Engine, model: ModelRef, layer: int, idx: int, *, run_id: int | None = None) -> pl.DataFrame:
    """A neuron's family/role labels with score and evidence (``evidence`` is JSON text), best first.

    >>> import json; json.loads(labels(engine, "synth-a", 0, 3)["evidence"][0])["feature"]  # doctest: +SKIP
    "token=' the'"
    """
    p = neuron_params(engine, model, layer, idx)
    return frame(engine, f"""
        SELECT l.label, l.score, l.evidence::text AS evidence, l.run_id
        FROM {rows_of(engine, "neuron_label", run_id, p)} l
        WHERE l.model_id = :m AND l.layer = :l AND l.idx = :i
        ORDER BY l.score DESC, l.label
    """, p)


def features(engine: Engine, model: ModelRef, layer: int, idx: int, *, run_id: int | None = None) -> pl.DataFrame:
    """The binary token features that best explain a neuron (variance reduction), best first."""
    p = neuron_params(engine, model, layer, idx)
    return frame(engine, f"""
        SELECT f.rank::int AS rank, f.feature, f.feature_kind, f.on_previous,
               f.variance_reduction::float8 AS variance_reduction
        FROM {rows_of(engine, "neuron_feature", run_id, p)} f
        WHERE f.model_id = :m AND f.layer = :l AND f.idx = :i
        ORDER BY f.rank
    """, p)


def neuron_families(engine: Engine, model: ModelRef, layer: int, idx: int, *,
                    run_id: int | None = None) -> pl.DataFrame:
    """The families a neuron belongs to: ``family_id, label, family, n_members, n_models, score``."""
    p = neuron_params(engine, model, layer, idx)
    return frame(engine, f"""
        SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models, fm.score
        FROM family_member fm JOIN {rows_of(engine, "family", run_id, p)} f ON f.id = fm.family_id
        WHERE fm.model_id = :m AND fm.layer = :l AND fm.idx = :i
        ORDER BY f.label, f.name
    """, p)


def neuron_page(engine: Engine, model: ModelRef, layer: int, idx: int, *, k: int = 20, before: int = 12,
                after: int = 4, partner_examples: int = 5) -> dict[str, pl.DataFrame]:
    """Everything the neuron page shows, as a dict of frames: ``neuron, histogram, vocab_effects,
    top_examples, quantile_examples, bottom_examples, token_activations, partners, edges, labels,
    features, families``, plus ``partner_examples`` (each best partner's activations over this
    neuron's top ``partner_examples`` examples, where an examples run stored them) and
    ``partner_top_examples`` (the partners' own top examples, for partners without the former),
    both with an ``other_model`` column.

    >>> page = neuron_page(engine, "synth-a", 0, 3)      # doctest: +SKIP
    >>> sorted(page)                                     # doctest: +SKIP
    """
    with connect(engine) as conn:  # one connection for the whole page
        return _neuron_page(conn, model_id(conn, model), layer, idx, k=k, before=before, after=after,
                            partner_k=partner_examples)


def _neuron_page(engine: Connection, model: int, layer: int, idx: int, *, k: int, before: int, after: int,
                 partner_k: int) -> dict[str, pl.DataFrame]:
    record = neuron(engine, model, layer, idx)
    window = {"before": before, "after": after}
    page = {
        "neuron": record,
        "histogram": _histogram_of(record),
        "vocab_effects": vocab_effects(engine, model, layer, idx),
        "top_examples": top_examples(engine, model, layer, idx, k=k, **window),
        "quantile_examples": sampled_examples(engine, model, layer, idx, "quantile", **window),
        "bottom_examples": sampled_examples(engine, model, layer, idx, "bottom", **window),
        "token_activations": token_activations(engine, model, layer, idx),
        "partners": best_partners(engine, model, layer, idx),
        "edges": partner_edges(engine, model, layer, idx),
        "labels": labels(engine, model, layer, idx),
        "features": features(engine, model, layer, idx),
        "families": neuron_families(engine, model, layer, idx),
        "partner_examples": _partner_examples(engine, model, layer, idx, k=partner_k, **window),
    }
    covered = set(page["partner_examples"]["other_model"].to_list()) if page["partner_examples"].height else set()
    examples = []
    for row in page["partners"].iter_rows(named=True):
        if row["best_layer"] is None or row["other_model"] in covered:
            continue
        ex = top_examples(engine, int(row["other_model_id"]), row["best_layer"], row["best_idx"], k=partner_k, **window)
        if ex.height:
            examples.append(ex.with_columns(pl.lit(row["other_model"]).alias("other_model")))
    page["partner_top_examples"] = pl.concat(examples, how="diagonal_relaxed") if examples else pl.DataFrame()
    return page
