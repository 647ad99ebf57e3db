"""The query layer: questions about the atlas, answered as polars DataFrames.

Every function takes an engine first and returns a ``polars.DataFrame`` (one exception:
:func:`neuron_page` returns a dict of frames). Filters are bound parameters, never pasted into
SQL; the optional WHERE fragments below are fixed strings chosen in Python. A model is named by
its ``name`` (what neuron URLs carry) or its integer id. Results come from each model's newest
*done* run of a kind (the ``latest_run`` view), so a rerun replaces what you see.

    >>> from atlas import queries as q
    >>> q.universal_neurons(engine, threshold=0.5, cohort="synth").head(3)   # doctest: +SKIP
    >>> q.neuron(engine, "synth-a", 0, 3).row(0, named=True)["excess"]       # doctest: +SKIP

``docs/queries.md`` shows every question with its Python call and the SQL to paste into psql;
``tests/test_queries.py`` runs those examples against a real database.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Sequence

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from atlas.errors import AtlasError

ModelRef = str | int
EMPTY_HINT = "the atlas is empty — run `make demo`, or `atlas zoo train` then `atlas ingest` (see README)"


# ---------------------------------------------------------------- plumbing

def connect(engine: Engine | Connection) -> contextlib.AbstractContextManager[Connection]:
    """A connection for reads: ``engine``'s, in autocommit mode, or the given connection as is.

    Autocommit matters for speed: psycopg forgets its prepared statements on every ROLLBACK,
    which ends each transactional checkout, so without it no query is ever prepared and every
    call pays the planner again (several ms for the views). Single SELECTs need no transaction.
    """
    if isinstance(engine, Connection):
        return contextlib.nullcontext(engine)
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def frame(engine: Engine | Connection, statement: str | sa.sql.Executable,
          params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run a read query and return its rows as a DataFrame (columns in SELECT order).

    ``engine`` may also be an open connection (several queries then share it). An empty result
    keeps the column names (dtype ``Null``).

    >>> frame(engine, "SELECT name FROM model WHERE id = :id", {"id": 1})  # doctest: +SKIP
    """
    if isinstance(statement, str):
        statement = sa.text(statement)
    with connect(engine) as conn:
        result = conn.execute(statement, params or {})
        columns = list(result.keys())
        rows = result.fetchall()
    if not rows:
        return pl.DataFrame(schema={c: pl.Null for c in columns})
    return pl.DataFrame([tuple(r) for r in rows], schema=columns, orient="row", infer_schema_length=None)


def _where(conditions: Sequence[str]) -> str:
    return (" AND " + " AND ".join(conditions)) if conditions else ""


def model_id(engine: Engine, model: ModelRef) -> int:
    """The id of a model given its name (an int is returned as is); a one-line AtlasError naming
    the known models when no model has that name."""
    if isinstance(model, int) and not isinstance(model, bool):
        return model  # ids are taken as given: an unknown id simply matches nothing
    with connect(engine) as conn:
        found = conn.execute(sa.text("SELECT id FROM model WHERE name = :m"), {"m": str(model)}).scalar()
        if found is None:
            names = conn.execute(sa.text("SELECT name FROM model ORDER BY name LIMIT 20")).scalars().all()
    if found is None:
        known = f"known: {', '.join(names)}" if names else EMPTY_HINT
        raise AtlasError(f"no model {model!r} in the atlas ({known})")
    return int(found)


def is_empty(engine: Engine) -> bool:
    """True when the atlas holds no model yet (every UI page then says what to run)."""
    with connect(engine) as conn:
        return conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM model)")).scalar_one()


# ---------------------------------------------------------------- models, cohorts, datasets, runs


def _add_scope(engine: Engine, where: list[str], params: dict[str, Any], *, cohort: str | None,
               model: ModelRef | None, model_column: str) -> None:
    """Append the cohort-name and model filters (bound parameters) that many queries share."""
    if cohort is not None:
        where.append("c.name = :cohort")
        params["cohort"] = str(cohort)
    if model is not None:
        where.append(f"{model_column} = :m")
        params["m"] = model_id(engine, model)

def models(engine: Engine, *, cohort: str | None = None) -> pl.DataFrame:
    """One row per model: name, cohort, seed label, shapes and neuron count.

    >>> models(engine).select("model", "cohort", "n_layers", "d_mlp")  # doctest: +SKIP
    """
    where = ["c.name = :cohort"] if cohort is not None else []
    return frame(engine, f"""
        SELECT m.id AS model_id, m.name AS model, c.name AS cohort, m.seed_label, m.architecture,
               m.n_layers, m.d_model, m.d_mlp, m.n_heads, m.d_vocab, m.act_fn, m.source, m.revision,
               m.n_layers * m.d_mlp AS n_neurons
        FROM model m LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {_where(where)}
        ORDER BY c.name NULLS LAST, m.name
    """, {"cohort": cohort})


def cohorts(engine: Engine) -> pl.DataFrame:
    """One row per cohort: tokenizer, its models (seed order), neuron count, and — when a
    correlation run is done — the reference model and its universal count at excess > 0.5.

    >>> cohorts(engine).select("cohort", "n_models", "reference", "n_universal")  # doctest: +SKIP
    """
    return frame(engine, """
        SELECT c.id AS cohort_id, c.name AS cohort, t.name AS tokenizer, c.description,
               count(m.id) AS n_models,
               array_agg(m.name ORDER BY m.seed_label NULLS LAST, m.name) FILTER (WHERE m.id IS NOT NULL) AS models,
               sum(m.n_layers * m.d_mlp) AS n_neurons,
               (SELECT string_agg(rm.name, ', ' ORDER BY rm.name) FROM latest_run r JOIN model rm ON rm.id = r.model_id
                 WHERE r.kind = 'correlation' AND r.cohort_id = c.id) AS reference,
               (SELECT count(*) FROM neuron_universality u JOIN latest_run r ON r.id = u.run_id
                 WHERE r.kind = 'correlation' AND r.cohort_id = c.id AND u.excess > 0.5) AS n_universal
        FROM cohort c
        LEFT JOIN tokenizer t ON t.id = c.tokenizer_id
        LEFT JOIN model m ON m.cohort_id = c.id
        GROUP BY c.id, c.name, t.name, c.description
        ORDER BY c.name
    """)


def datasets(engine: Engine) -> pl.DataFrame:
    """One row per token dataset with how it was made."""
    return frame(engine, """
        SELECT d.id AS dataset_id, d.name AS dataset, d.source, t.name AS tokenizer, d.context_length,
               d.n_rows, d.n_tokens, d.n_kept_tokens, d.content_hash, d.created_at
        FROM dataset d JOIN tokenizer t ON t.id = d.tokenizer_id ORDER BY d.name
    """)


RunStatus = Literal["queued", "running", "done", "failed"]


def runs(engine: Engine, *, limit: int = 200, status: RunStatus | None = None, kind: str | None = None) -> pl.DataFrame:
    """Recent runs, newest first, with progress (``progress`` in 0..1 when the total is known) and timings.
    ``state`` is the status, or ``stale`` for a running run whose process died (the ``run_state`` view).

    >>> runs(engine, status="running").select("run_id", "kind", "model", "progress")  # doctest: +SKIP
    """
    where = []
    if status is not None:
        where.append("r.status = :status")
    if kind is not None:
        where.append("r.kind = :kind")
    return frame(engine, f"""
        SELECT r.id AS run_id, r.kind, r.status, r.state, m.name AS model, c.name AS cohort, d.name AS dataset,
               r.tokens_done, r.tokens_total,
               CASE WHEN r.status = 'done' THEN 1.0
                    WHEN r.tokens_total > 0 THEN least(r.tokens_done::float8 / r.tokens_total, 1.0) END AS progress,
               r.device, r.code_version, r.error, r.created_at, r.started_at, r.heartbeat_at, r.finished_at,
               extract(epoch FROM (coalesce(r.finished_at, now()) - r.started_at))::float8 AS seconds
        FROM run_state r LEFT JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = r.cohort_id
        LEFT JOIN dataset d ON d.id = r.dataset_id
        WHERE true {_where(where)}
        ORDER BY r.id DESC LIMIT :limit
    """, {"limit": int(limit), "status": status, "kind": kind})


# ---------------------------------------------------------------- one neuron

_NEURON = "model_id = :m AND layer = :l AND idx = :i"


def _nparams(engine: Engine, model: ModelRef, layer: int, idx: int) -> dict[str, int]:
    return {"m": model_id(engine, model), "l": int(layer), "i": int(idx)}


def neuron(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """A neuron's full record as ONE row: the ``neuron_overview`` columns (activation and weight
    statistics, universality, labels) plus the histogram and the vocabulary arrays.

    Columns include ``model, cohort, layer, idx, mean, variance, skew, kurtosis, act_frequency,
    post_max, w_out_norm, input_bias, vocab_kurtosis, max_corr, mean_corr, mean_baseline, excess,
    labels, histogram, histogram_edges, top_token_ids, top_token_values, bottom_token_ids,
    bottom_token_values, dataset``. Statistics not computed yet are null. Zero rows when the model
    has no such neuron.

    >>> rec = neuron(engine, "synth-a", 0, 3).row(0, named=True)   # doctest: +SKIP
    >>> rec["excess"] > 0.5, rec["labels"]                          # doctest: +SKIP
    (True, ['unigram'])
    """
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT o.*, a.histogram, rs.params -> 'histogram_edges' AS histogram_edges, d.name AS dataset,
               rs.id AS stats_run_id, w.top_token_ids, w.top_token_values, w.bottom_token_ids, w.bottom_token_values
        FROM neuron_overview o
        LEFT JOIN latest_run rs ON rs.kind = 'stats' AND rs.model_id = o.model_id
        LEFT JOIN activation_stats a ON a.run_id = rs.id AND a.model_id = o.model_id AND a.layer = o.layer AND a.idx = o.idx
        LEFT JOIN dataset d ON d.id = rs.dataset_id
        LEFT JOIN latest_run rw ON rw.kind = 'weights' AND rw.model_id = o.model_id
        LEFT JOIN weight_stats w ON w.run_id = rw.id AND w.model_id = o.model_id AND w.layer = o.layer AND w.idx = o.idx
        WHERE o.model_id = :m AND o.layer = :l AND o.idx = :i
    """, p)


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


def vocab_effects(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """The tokens a neuron's output boosts and suppresses most (``W_U · w_out``, processed weights):
    ``direction`` ('top'|'bottom'), ``rank`` (1 = strongest), ``token_id``, ``token``, ``value``.

    >>> vocab_effects(engine, "synth-a", 0, 1).filter(pl.col("direction") == "top").head(3)  # doctest: +SKIP
    """
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT s.direction, s.rank::int AS rank, s.token_id, v.text AS token, s.value::float8 AS value
        FROM latest_run rw
        JOIN weight_stats w ON w.run_id = rw.id AND w.model_id = rw.model_id
        JOIN model m ON m.id = w.model_id
        CROSS JOIN LATERAL (
            SELECT 'top' AS direction, t.ord AS rank, t.tok AS token_id, t.val AS value
              FROM unnest(w.top_token_ids, w.top_token_values) WITH ORDINALITY AS t(tok, val, ord)
            UNION ALL
            SELECT 'bottom', t.ord, t.tok, t.val
              FROM unnest(w.bottom_token_ids, w.bottom_token_values) WITH ORDINALITY AS t(tok, val, ord)
        ) s
        LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = s.token_id
        WHERE rw.kind = 'weights' AND rw.model_id = :m AND w.layer = :l AND w.idx = :i
        ORDER BY s.direction DESC, s.rank
    """, p)


def top_examples(engine: Engine, model: ModelRef, layer: int, idx: int, *, k: int = 20,
                 before: int = 12, after: int = 4) -> pl.DataFrame:
    """A neuron's top activating examples with decoded context, best first.

    One row per example: ``rank, value`` (the stored ``hook_post`` at the position), ``row_idx,
    position`` (0-based within the dataset row), ``start`` (position of the first window token),
    ``center`` (index of the activating token inside the window), ``token_ids`` and ``tokens``
    (the window: up to ``before`` tokens before and ``after`` after, decoded from the stored
    dataset rows), and ``activations``: per window token the neuron's stored value where one is
    known (the example itself and any other top example in that window), else null. Per-token
    activations of the rest of the window are not stored (recomputing them needs the model).

    >>> ex = top_examples(engine, "synth-a", 0, 3, k=5, before=6)          # doctest: +SKIP
    >>> ex.row(0, named=True)["tokens"][ex["center"][0]]                 # doctest: +SKIP
    ' the'
    """
    p = _nparams(engine, model, layer, idx) | {"k": int(k), "before": max(int(before), 0), "after": max(int(after), 0)}
    out = frame(engine, """
        SELECT e.rank::int AS rank, e.value::float8 AS value, e.row_idx, e.position::int AS position,
               w.start, e.position - w.start AS center,
               dr.tokens[w.start + 1 : e.position + 1 + :after] AS token_ids,
               ARRAY(SELECT coalesce(v.text, '�')
                       FROM unnest(dr.tokens[w.start + 1 : e.position + 1 + :after]) WITH ORDINALITY AS t(tok, ord)
                       LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = t.tok
                      ORDER BY t.ord) AS tokens
        FROM latest_run r
        JOIN top_example e ON e.run_id = r.id AND e.model_id = r.model_id
        JOIN model m ON m.id = e.model_id
        JOIN dataset_row dr ON dr.dataset_id = r.dataset_id AND dr.row_idx = e.row_idx
        CROSS JOIN LATERAL (SELECT greatest(e.position - :before, 0) AS start) w
        WHERE r.kind = 'stats' AND r.model_id = :m AND e.layer = :l AND e.idx = :i
        ORDER BY e.rank LIMIT :k
    """, p)
    if out.height == 0:
        return out.with_columns(pl.lit(None).alias("activations"))
    known: dict[tuple[int, int], float] = {
        (r, pos): v for r, pos, v in zip(out["row_idx"], out["position"], out["value"])}
    acts = []
    for row in out.iter_rows(named=True):
        acts.append([known.get((row["row_idx"], row["start"] + j)) for j in range(len(row["tokens"]))])
    return out.with_columns(pl.Series("activations", acts, dtype=pl.List(pl.Float64)))


def token_activations(engine: Engine, model: ModelRef, layer: int, idx: int, *, limit: int = 20) -> pl.DataFrame:
    """The vocabulary tokens on which a neuron fires most (mean ``hook_post`` when the token is
    current): ``token_id, token, count, mean_act, max_act``.

    >>> token_activations(engine, "synth-a", 0, 3).head(1)["token"][0]   # doctest: +SKIP
    ' the'
    """
    p = _nparams(engine, model, layer, idx) | {"limit": int(limit)}
    return frame(engine, """
        SELECT ta.token_id, v.text AS token, ta.count, ta.mean_act::float8 AS mean_act, ta.max_act::float8 AS max_act
        FROM latest_run r
        JOIN token_activation ta ON ta.run_id = r.id AND ta.model_id = r.model_id
        JOIN model m ON m.id = ta.model_id
        LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = ta.token_id
        WHERE r.kind = 'stats' AND r.model_id = :m AND ta.layer = :l AND ta.idx = :i
        ORDER BY ta.mean_act DESC LIMIT :limit
    """, p)


def best_partners(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """The neuron's best-correlated neuron in every other model it was correlated with (the
    ``best_partner`` view): ``other_model, other_seed, max_corr, best_layer, best_idx,
    baseline_max, excess`` (= max_corr − baseline_max), ordered by the other model's seed.

    >>> best_partners(engine, "synth-a", 0, 3).select("other_model", "best_layer", "best_idx", "max_corr")  # doctest: +SKIP
    """
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT other_model, other_seed, other_model_id, max_corr::float8 AS max_corr, best_layer::int AS best_layer,
               best_idx, baseline_max::float8 AS baseline_max, excess::float8 AS excess, run_id
        FROM best_partner
        WHERE model_id = :m AND layer = :l AND idx = :i
        ORDER BY other_seed NULLS LAST, other_model
    """, p)


def partner_edges(engine: Engine, model: ModelRef, layer: int, idx: int, *, k: int = 10) -> pl.DataFrame:
    """The top-``k`` correlated neurons of a reference neuron in each partner model:
    ``partner_model, rank, partner_layer, partner_idx, rho`` (stored for reference neurons only).

    >>> partner_edges(engine, "synth-a", 0, 3, k=2)   # doctest: +SKIP
    """
    p = _nparams(engine, model, layer, idx) | {"k": int(k)}
    return frame(engine, """
        SELECT pm.name AS partner_model, pm.seed_label AS partner_seed, e.rank::int AS rank,
               e.partner_layer::int AS partner_layer, e.partner_idx, e.rho::float8 AS rho
        FROM latest_run r
        JOIN correlation_edge e ON e.run_id = r.id AND e.model_id = r.model_id
        JOIN model pm ON pm.id = e.partner_model_id
        WHERE r.kind = 'correlation' AND r.model_id = :m AND e.layer = :l AND e.idx = :i AND e.rank <= :k
        ORDER BY pm.seed_label NULLS LAST, pm.name, e.rank
    """, p)


def labels(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """A neuron's family/role labels with score and evidence (``evidence`` is JSON text), best first.

    >>> import json; json.loads(labels(engine, "synth-a", 0, 3)["evidence"][0])["feature"]  # doctest: +SKIP
    "token=' the'"
    """
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT l.label, l.score, l.evidence::text AS evidence, l.run_id
        FROM neuron_label l JOIN latest_run r ON r.id = l.run_id AND r.kind = 'classify'
        WHERE l.model_id = :m AND l.layer = :l AND l.idx = :i
        ORDER BY l.score DESC
    """, p)


def features(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """The binary token features that best explain a neuron (variance reduction), best first."""
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT f.rank::int AS rank, f.feature, f.feature_kind, f.on_previous, f.variance_reduction::float8 AS variance_reduction
        FROM neuron_feature f JOIN latest_run r ON r.id = f.run_id AND r.kind = 'classify'
        WHERE f.model_id = :m AND f.layer = :l AND f.idx = :i
        ORDER BY f.rank
    """, p)


def neuron_families(engine: Engine, model: ModelRef, layer: int, idx: int) -> pl.DataFrame:
    """The families a neuron belongs to: ``family_id, label, family, n_members, n_models, score``."""
    p = _nparams(engine, model, layer, idx)
    return frame(engine, """
        SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models, fm.score
        FROM family_member fm JOIN family f ON f.id = fm.family_id
        JOIN latest_run r ON r.id = f.run_id
        WHERE fm.model_id = :m AND fm.layer = :l AND fm.idx = :i
        ORDER BY f.label, f.name
    """, p)


def neuron_page(engine: Engine, model: ModelRef, layer: int, idx: int, *, k: int = 20, before: int = 12,
                after: int = 4, partner_examples: int = 5) -> dict[str, pl.DataFrame]:
    """Everything the neuron page shows, as a dict of frames: ``neuron, histogram, vocab_effects,
    top_examples, token_activations, partners, edges, labels, features, families``, plus
    ``partner_examples`` (the top examples of each best partner, with an ``other_model`` column).

    >>> page = neuron_page(engine, "synth-a", 0, 3)      # doctest: +SKIP
    >>> sorted(page)                                     # doctest: +SKIP
    """
    with connect(engine) as conn:  # one connection for the whole page
        return _neuron_page(conn, model_id(conn, model), layer, idx, k=k, before=before, after=after,
                            partner_examples=partner_examples)


def _neuron_page(engine: Connection, model: int, layer: int, idx: int, *, k: int, before: int, after: int,
                 partner_examples: int) -> dict[str, pl.DataFrame]:
    record = neuron(engine, model, layer, idx)
    page = {
        "neuron": record,
        "histogram": _histogram_of(record),
        "vocab_effects": vocab_effects(engine, model, layer, idx),
        "top_examples": top_examples(engine, model, layer, idx, k=k, before=before, after=after),
        "token_activations": token_activations(engine, model, layer, idx),
        "partners": best_partners(engine, model, layer, idx),
        "edges": partner_edges(engine, model, layer, idx),
        "labels": labels(engine, model, layer, idx),
        "features": features(engine, model, layer, idx),
        "families": neuron_families(engine, model, layer, idx),
    }
    examples = []
    for row in page["partners"].iter_rows(named=True):
        if row["best_layer"] is None:
            continue
        ex = top_examples(engine, int(row["other_model_id"]), row["best_layer"], row["best_idx"], k=partner_examples,
                          before=before, after=after)
        if ex.height:
            examples.append(ex.with_columns(pl.lit(row["other_model"]).alias("other_model")))
    page["partner_examples"] = pl.concat(examples, how="diagonal_relaxed") if examples else pl.DataFrame()
    return page


# ---------------------------------------------------------------- universal neurons

UNIVERSAL_ORDER = ("excess", "mean_corr", "min_corr", "max_corr", "mean_baseline", "layer", "kurtosis", "skew",
                   "act_frequency", "w_out_norm", "input_bias")


def universal_neurons(
    engine: Engine, *, threshold: float = 0.5, cohort: str | None = None, model: ModelRef | None = None,
    layer: int | Sequence[int] | None = None, label: str | None = None, family: str | None = None,
    order_by: str = "excess", descending: bool = True, limit: int | None = None,
) -> pl.DataFrame:
    """Reference neurons whose excess correlation (mean over partners of best rho minus the
    rotation baseline) is above ``threshold`` (the paper: 0.5), with their statistics and labels.

    Filters: ``cohort`` name, ``model`` (reference model), ``layer`` (one or several), ``label``
    (e.g. 'unigram'), ``family`` (a family's name, e.g. "unigram: token=' the'", or a label).
    ``order_by`` is one of ``UNIVERSAL_ORDER``. Dead neurons (null excess) are never universal.

    >>> universal_neurons(engine, cohort="synth", layer=0, label="unigram")   # doctest: +SKIP
    """
    if order_by not in UNIVERSAL_ORDER:
        raise AtlasError(f"cannot order universal neurons by {order_by!r} — use one of {', '.join(UNIVERSAL_ORDER)}")
    run_where, where, params = [], ["u.excess > :t"], {"t": float(threshold)}
    _add_scope(engine, run_where, params, cohort=cohort, model=model, model_column="r.model_id")
    if layer is not None:
        layers = [int(layer)] if isinstance(layer, (int, str)) else [int(x) for x in layer]
        where.append("u.layer = ANY(:layers)")
        params["layers"] = layers
    if label is not None:
        where.append("""EXISTS (SELECT 1 FROM neuron_label l WHERE l.run_id = ANY(ARRAY(SELECT id FROM classify))
                         AND l.model_id = u.model_id AND l.layer = u.layer AND l.idx = u.idx AND l.label = :label)""")
        params["label"] = str(label)
    if family is not None:
        where.append("""EXISTS (SELECT 1 FROM family_member fm JOIN family f ON f.id = fm.family_id
                         WHERE f.run_id = ANY(ARRAY(SELECT id FROM classify))
                           AND fm.model_id = u.model_id AND fm.layer = u.layer AND fm.idx = u.idx
                           AND (f.name = :family OR f.label = :family))""")
        params["family"] = str(family)
    stats_order = {"kurtosis": "a.kurtosis", "skew": "a.skew", "act_frequency": "a.act_frequency",
                   "w_out_norm": "w.w_out_norm", "input_bias": "w.input_bias"}
    direction = "DESC NULLS LAST" if descending else "ASC NULLS LAST"
    order_col = stats_order.get(order_by, f"u.{order_by}")
    tie = "u.model_id, u.layer, u.idx"
    limit_sql = "LIMIT :limit" if limit is not None else ""
    if limit is not None:
        params["limit"] = int(limit)
    # Limit first when the order is a universality column: each reference run contributes its own
    # best `limit` rows (an index scan on (run_id, excess) for the default order), and only the
    # survivors are joined to their statistics. Ordering by a statistic joins first.
    inner_limit = limit_sql if order_by not in stats_order else ""
    inner_col = order_by if order_by not in stats_order else "excess"  # matches the (run_id, excess) index
    return frame(engine, f"""
        WITH runs AS MATERIALIZED (
            SELECT r.id FROM latest_run r
            JOIN model m ON m.id = r.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
            WHERE r.kind = 'correlation' {_where(run_where)}
        ),
        classify AS MATERIALIZED (SELECT id FROM latest_run WHERE kind = 'classify'),
        stats_runs AS MATERIALIZED (SELECT id, model_id FROM latest_run WHERE kind = 'stats'),
        weight_runs AS MATERIALIZED (SELECT id, model_id FROM latest_run WHERE kind = 'weights'),
        top AS MATERIALIZED (
            SELECT u.* FROM runs CROSS JOIN LATERAL (
                SELECT u.* FROM neuron_universality u
                WHERE u.run_id = runs.id {_where(where)}
                ORDER BY u.{inner_col} {"DESC" if descending else "ASC"} {inner_limit}) u
            ORDER BY u.{inner_col} {direction}, {tie} {inner_limit}
        )
        SELECT m.name AS model, c.name AS cohort, u.layer::int AS layer, u.idx,
               u.excess::float8 AS excess, u.mean_corr::float8 AS mean_corr, u.min_corr::float8 AS min_corr,
               u.max_corr::float8 AS max_corr, u.mean_baseline::float8 AS mean_baseline, u.n_partners::int AS n_partners,
               a.act_frequency, a.skew, a.kurtosis, w.w_out_norm, w.input_bias,
               (SELECT array_agg(l.label ORDER BY l.score DESC) FROM neuron_label l
                 WHERE l.run_id = ANY(ARRAY(SELECT id FROM classify))
                   AND l.model_id = u.model_id AND l.layer = u.layer AND l.idx = u.idx) AS labels
        FROM top u
        JOIN model m ON m.id = u.model_id
        LEFT JOIN cohort c ON c.id = m.cohort_id
        LEFT JOIN stats_runs rs ON rs.model_id = u.model_id
        LEFT JOIN activation_stats a ON a.run_id = rs.id AND a.model_id = u.model_id AND a.layer = u.layer AND a.idx = u.idx
        LEFT JOIN weight_runs rw ON rw.model_id = u.model_id
        LEFT JOIN weight_stats w ON w.run_id = rw.id AND w.model_id = u.model_id AND w.layer = u.layer AND w.idx = u.idx
        ORDER BY {order_col} {direction}, {tie}
        {limit_sql}
    """, params)


def layer_universality(engine: Engine, *, threshold: float = 0.5, cohort: str | None = None) -> pl.DataFrame:
    """Per reference model and layer: neuron count, universal count and share at ``threshold``, and
    the layer's average mean_corr and mean_baseline (the paper's per-layer figure).

    >>> layer_universality(engine, threshold=0.5).select("model", "layer", "universal_share")  # doctest: +SKIP
    """
    where = ["c.name = :cohort"] if cohort is not None else []
    return frame(engine, f"""
        SELECT m.name AS model, c.name AS cohort, u.layer::int AS layer, count(*) AS n_neurons,
               count(*) FILTER (WHERE u.excess > :t) AS n_universal,
               avg((coalesce(u.excess, 0) > :t)::int)::float8 AS universal_share,
               avg(u.mean_corr)::float8 AS avg_mean_corr, avg(u.mean_baseline)::float8 AS avg_mean_baseline
        FROM latest_run r JOIN neuron_universality u ON u.run_id = r.id
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE r.kind = 'correlation' {_where(where)}
        GROUP BY m.name, c.name, u.layer ORDER BY m.name, u.layer
    """, {"t": float(threshold), "cohort": cohort})


def correlation_distribution(engine: Engine, *, cohort: str | None = None, model: ModelRef | None = None,
                             bins: int = 50, lo: float = 0.0, hi: float = 1.0,
                             threshold: float | None = None) -> pl.DataFrame:
    """Histograms of ``mean_corr``, ``mean_baseline`` and ``excess`` over reference neurons (the
    paper's "max correlation vs baseline" figure): ``model, measure, bin_lo, bin_hi, count``.
    Values outside ``[lo, hi]`` fall into the edge bins. With ``threshold`` only neurons above it
    (universal ones) are counted.

    >>> correlation_distribution(engine, bins=20).filter(pl.col("measure") == "mean_corr")  # doctest: +SKIP
    """
    if bins < 1 or hi <= lo:
        raise AtlasError("correlation_distribution needs bins ≥ 1 and hi > lo")
    where, params = [], {"bins": int(bins), "lo": float(lo), "hi": float(hi)}
    _add_scope(engine, where, params, cohort=cohort, model=model, model_column="u.model_id")
    if threshold is not None:
        where.append("u.excess > :t")
        params["t"] = float(threshold)
    return frame(engine, f"""
        WITH v AS (
            SELECT m.name AS model, s.measure,
                   least(greatest(width_bucket(s.value, :lo, :hi, :bins), 1), :bins) AS bin
            FROM latest_run r JOIN neuron_universality u ON u.run_id = r.id
            JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
            CROSS JOIN LATERAL (VALUES ('mean_corr', u.mean_corr::float8), ('mean_baseline', u.mean_baseline::float8),
                                       ('excess', u.excess::float8)) AS s(measure, value)
            WHERE r.kind = 'correlation' AND s.value IS NOT NULL {_where(where)}
        )
        SELECT model, measure, :lo + (bin - 1) * (:hi - :lo) / :bins AS bin_lo,
               :lo + bin * (:hi - :lo) / :bins AS bin_hi, count(*) AS count
        FROM v GROUP BY model, measure, bin ORDER BY model, measure, bin
    """, params)


def correlation_scatter(engine: Engine, *, cohort: str | None = None, model: ModelRef | None = None,
                        limit: int = 20000) -> pl.DataFrame:
    """Per reference neuron ``mean_corr`` against ``mean_baseline`` (a sample of at most ``limit``
    neurons, highest excess first): ``model, layer, idx, mean_corr, mean_baseline, excess``."""
    where, params = [], {"limit": int(limit)}
    _add_scope(engine, where, params, cohort=cohort, model=model, model_column="u.model_id")
    return frame(engine, f"""
        SELECT m.name AS model, u.layer::int AS layer, u.idx, u.mean_corr::float8 AS mean_corr,
               u.mean_baseline::float8 AS mean_baseline, u.excess::float8 AS excess
        FROM latest_run r JOIN neuron_universality u ON u.run_id = r.id
        JOIN model m ON m.id = u.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE r.kind = 'correlation' AND u.excess IS NOT NULL {_where(where)}
        ORDER BY u.excess DESC LIMIT :limit
    """, params)


def layer_summary(engine: Engine, *, model: ModelRef | None = None, threshold: float = 0.5) -> pl.DataFrame:
    """Per model and layer: neuron count, mean firing rate, median activation kurtosis and skew,
    mean output-weight norm, number of labelled neurons, and universal count/share (reference
    models only; null elsewhere).

    >>> layer_summary(engine, model="synth-a")   # doctest: +SKIP
    """
    where, params = [], {"t": float(threshold)}
    if model is not None:
        where.append("m.id = :m")
        params["m"] = model_id(engine, model)
    return frame(engine, f"""
        SELECT m.name AS model, c.name AS cohort, l.layer::int AS layer, m.d_mlp AS n_neurons,
               st.mean_act_frequency, st.median_kurtosis, st.median_skew, ws.mean_w_out_norm,
               lb.n_labelled, un.n_universal, un.n_universal::float8 / nullif(un.n_correlated, 0) AS universal_share
        FROM model m
        LEFT JOIN cohort c ON c.id = m.cohort_id
        CROSS JOIN LATERAL generate_series(0, m.n_layers - 1) AS l(layer)
        LEFT JOIN latest_run rs ON rs.kind = 'stats' AND rs.model_id = m.id
        LEFT JOIN LATERAL (
            SELECT avg(a.act_frequency)::float8 AS mean_act_frequency,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.kurtosis) AS median_kurtosis,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.skew) AS median_skew
            FROM activation_stats a WHERE a.run_id = rs.id AND a.model_id = m.id AND a.layer = l.layer) st ON true
        LEFT JOIN latest_run rw ON rw.kind = 'weights' AND rw.model_id = m.id
        LEFT JOIN LATERAL (
            SELECT avg(w.w_out_norm)::float8 AS mean_w_out_norm
            FROM weight_stats w WHERE w.run_id = rw.id AND w.model_id = m.id AND w.layer = l.layer) ws ON true
        LEFT JOIN LATERAL (
            SELECT count(DISTINCT nl.idx) AS n_labelled
            FROM neuron_label nl JOIN latest_run lr ON lr.id = nl.run_id AND lr.kind = 'classify'
            WHERE nl.model_id = m.id AND nl.layer = l.layer) lb ON true
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE u.excess > :t) AS n_universal, count(*) AS n_correlated
            FROM latest_run rc JOIN neuron_universality u ON u.run_id = rc.id
            WHERE rc.kind = 'correlation' AND rc.model_id = m.id AND u.model_id = m.id AND u.layer = l.layer
            HAVING count(*) > 0) un ON true
        WHERE true {_where(where)}
        ORDER BY c.name NULLS LAST, m.name, l.layer
    """, params)


def universal_properties(engine: Engine, *, model: ModelRef | None = None, threshold: float = 0.5) -> pl.DataFrame:
    """What distinguishes universal neurons (the paper's §3 check): for each property, the median
    within-layer percentile (0–100) of the universal neurons vs all others.
    ``model, property, universal_median_pct, other_median_pct, n_universal``.

    >>> universal_properties(engine, model="synth-a")   # doctest: +SKIP
    """
    where, params = [], {"t": float(threshold)}
    if model is not None:
        where.append("u.model_id = :m")
        params["m"] = model_id(engine, model)
    return frame(engine, f"""
        WITH n AS (
            SELECT m.name AS model, u.excess > :t AS universal,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY a.skew) AS skew,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY a.kurtosis) AS kurtosis,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY a.act_frequency) AS act_frequency,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY w.input_bias) AS input_bias,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY w.l2_penalty) AS l2_penalty,
                   100 * percent_rank() OVER (PARTITION BY u.model_id, u.layer ORDER BY w.vocab_kurtosis) AS vocab_kurtosis
            FROM latest_run r JOIN neuron_universality u ON u.run_id = r.id
            JOIN model m ON m.id = u.model_id
            JOIN latest_run rs ON rs.kind = 'stats' AND rs.model_id = u.model_id
            JOIN activation_stats a ON a.run_id = rs.id AND a.model_id = u.model_id AND a.layer = u.layer AND a.idx = u.idx
            LEFT JOIN latest_run rw ON rw.kind = 'weights' AND rw.model_id = u.model_id
            LEFT JOIN weight_stats w ON w.run_id = rw.id AND w.model_id = u.model_id AND w.layer = u.layer AND w.idx = u.idx
            WHERE r.kind = 'correlation' AND u.excess IS NOT NULL {_where(where)}
        )
        SELECT model, p.property,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY p.value) FILTER (WHERE universal) AS universal_median_pct,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY p.value) FILTER (WHERE NOT universal) AS other_median_pct,
               count(*) FILTER (WHERE universal) AS n_universal
        FROM n CROSS JOIN LATERAL (VALUES ('skew', skew), ('kurtosis', kurtosis), ('act_frequency', act_frequency),
                                          ('input_bias', input_bias), ('l2_penalty', l2_penalty),
                                          ('vocab_kurtosis', vocab_kurtosis)) AS p(property, value)
        GROUP BY model, p.property ORDER BY model, p.property
    """, params)


# ---------------------------------------------------------------- families and labels

def families(engine: Engine, *, label: str | None = None, cohort: str | None = None) -> pl.DataFrame:
    """Families of the newest classify runs: ``family_id, label, family, n_members, n_models,
    layers`` (the layers its members sit in), ``models``, ``evidence`` (JSON text), largest first.

    >>> families(engine, label="unigram").select("family", "n_members", "n_models")  # doctest: +SKIP
    """
    where, params = [], {}
    if label is not None:
        where.append("f.label = :label")
        params["label"] = str(label)
    if cohort is not None:
        where.append("EXISTS (SELECT 1 FROM family_member x JOIN model xm ON xm.id = x.model_id"
                     " JOIN cohort xc ON xc.id = xm.cohort_id WHERE x.family_id = f.id AND xc.name = :cohort)")
        params["cohort"] = str(cohort)
    return frame(engine, f"""
        SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models,
               (SELECT array_agg(DISTINCT fm.layer::int ORDER BY fm.layer::int) FROM family_member fm
                 WHERE fm.family_id = f.id) AS layers,
               (SELECT array_agg(DISTINCT m.name ORDER BY m.name) FROM family_member fm JOIN model m ON m.id = fm.model_id
                 WHERE fm.family_id = f.id) AS models,
               f.evidence::text AS evidence, f.run_id
        FROM family f JOIN latest_run r ON r.id = f.run_id
        WHERE true {_where(where)}
        ORDER BY f.n_models DESC, f.n_members DESC, f.label, f.name
    """, params)


def family_layer_counts(engine: Engine, *, cohort: str | None = None) -> pl.DataFrame:
    """Family members per label and layer (the paper's "families by layer" counts):
    ``label, layer, n_members, n_families``.

    >>> family_layer_counts(engine)   # doctest: +SKIP
    """
    where = ["c.name = :cohort"] if cohort is not None else []
    return frame(engine, f"""
        SELECT f.label, fm.layer::int AS layer, count(*) AS n_members, count(DISTINCT f.id) AS n_families
        FROM family f JOIN latest_run r ON r.id = f.run_id
        JOIN family_member fm ON fm.family_id = f.id
        JOIN model m ON m.id = fm.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {_where(where)}
        GROUP BY f.label, fm.layer ORDER BY f.label, fm.layer
    """, {"cohort": cohort})


def label_counts(engine: Engine, *, model: ModelRef | None = None) -> pl.DataFrame:
    """Labelled neurons per model, label and layer: ``model, label, layer, n``."""
    where, params = [], {}
    if model is not None:
        where.append("l.model_id = :m")
        params["m"] = model_id(engine, model)
    return frame(engine, f"""
        SELECT m.name AS model, l.label, l.layer::int AS layer, count(*) AS n
        FROM neuron_label l JOIN latest_run r ON r.id = l.run_id AND r.kind = 'classify'
        JOIN model m ON m.id = l.model_id
        WHERE true {_where(where)}
        GROUP BY m.name, l.label, l.layer ORDER BY m.name, l.label, l.layer
    """, params)


def family_members(engine: Engine, family: int | str) -> pl.DataFrame:
    """Members of a family (by id or name): ``model, seed_label, layer, idx, score, excess, labels``.

    >>> family_members(engine, "unigram: token=' the'")   # doctest: +SKIP
    """
    if isinstance(family, int) and not isinstance(family, bool):
        cond, params = "f.id = :f", {"f": family}
    else:
        cond, params = "f.name = :f", {"f": str(family)}
    return frame(engine, f"""
        SELECT f.id AS family_id, f.name AS family, f.label, m.name AS model, m.seed_label, fm.layer::int AS layer,
               fm.idx, fm.score, o.excess::float8 AS excess, o.act_frequency, o.labels
        FROM family f JOIN latest_run r ON r.id = f.run_id
        JOIN family_member fm ON fm.family_id = f.id
        JOIN model m ON m.id = fm.model_id
        LEFT JOIN neuron_overview o ON o.model_id = fm.model_id AND o.layer = fm.layer AND o.idx = fm.idx
        WHERE {cond}
        ORDER BY m.seed_label NULLS LAST, m.name, fm.layer, fm.idx
    """, params)


def label_names(engine: Engine) -> list[str]:
    """The labels present in the newest classify runs (for filter menus)."""
    out = frame(engine, """
        SELECT DISTINCT l.label FROM neuron_label l JOIN latest_run r ON r.id = l.run_id AND r.kind = 'classify'
        ORDER BY l.label""")
    return [str(x) for x in out["label"]] if out.height else []


# ---------------------------------------------------------------- search by token

TokenMatch = Literal["exact", "word", "contains"]


def _token_condition(match: TokenMatch, text: str) -> tuple[str, dict[str, str]]:
    if match == "exact":
        return "v.text = :q", {"q": text}
    if match == "word":  # ' The', 'the', 'THE' all match "the"
        return "lower(btrim(v.text)) = lower(btrim(:q))", {"q": text}
    if match == "contains":
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "v.text ILIKE :q ESCAPE '\\'", {"q": f"%{escaped}%"}
    raise AtlasError(f"unknown token match {match!r} — use exact, word or contains")


def search_tokens(engine: Engine, text: str, *, match: TokenMatch = "word", limit: int = 50) -> pl.DataFrame:
    """Vocabulary entries matching ``text``: ``tokenizer, token_id, token``.

    ``match``: ``exact`` (the stored text, leading space included: ``' the'``), ``word``
    (trimmed, case-insensitive: "the" finds ' the', 'The', ' The'), ``contains`` (substring,
    case-insensitive; % and _ are literal).

    >>> search_tokens(engine, "the", match="word")   # doctest: +SKIP
    """
    cond, params = _token_condition(match, text)
    return frame(engine, f"""
        SELECT t.name AS tokenizer, v.token_id, v.text AS token
        FROM vocab_token v JOIN tokenizer t ON t.id = v.tokenizer_id
        WHERE {cond}
        ORDER BY length(v.text), v.token_id LIMIT :limit
    """, params | {"limit": int(limit)})


def neurons_for_token(engine: Engine, text: str, *, match: TokenMatch = "word", model: ModelRef | None = None,
                      cohort: str | None = None, limit: int = 100) -> pl.DataFrame:
    """"Which neurons fire on ' the'?": neurons that keep a matching token among their top tokens,
    by mean ``hook_post`` when it is the current token: ``model, layer, idx, token, token_id,
    mean_act, max_act, count, excess, labels``.

    >>> neurons_for_token(engine, " the", match="exact").head(3)   # doctest: +SKIP
    """
    cond, params = _token_condition(match, text)
    where = []
    if model is not None:
        where.append("m.id = :m")
        params["m"] = model_id(engine, model)
    if cohort is not None:
        where.append("c.name = :cohort")
        params["cohort"] = str(cohort)
    # Materialised steps keep the plan small: the matching tokens (few), their activation rows via
    # the (token_id, model_id) index, the best `limit` of them, and only then universality and labels.
    return frame(engine, f"""
        WITH tok AS MATERIALIZED (SELECT v.tokenizer_id, v.token_id, v.text FROM vocab_token v WHERE {cond} LIMIT 500),
        stats_runs AS MATERIALIZED (SELECT id, model_id FROM latest_run WHERE kind = 'stats'),
        hits AS MATERIALIZED (
            SELECT ta.model_id, ta.layer, ta.idx, ta.token_id, tok.text, ta.mean_act, ta.max_act, ta.count
            FROM tok
            JOIN model m ON m.tokenizer_id = tok.tokenizer_id
            LEFT JOIN cohort c ON c.id = m.cohort_id
            JOIN stats_runs r ON r.model_id = m.id
            JOIN token_activation ta ON ta.token_id = tok.token_id AND ta.model_id = m.id AND ta.run_id = r.id
            WHERE true {_where(where)}
            ORDER BY ta.mean_act DESC, ta.model_id, ta.layer, ta.idx LIMIT :limit
        )
        SELECT m.name AS model, c.name AS cohort, h.layer::int AS layer, h.idx, h.text AS token, h.token_id,
               h.mean_act::float8 AS mean_act, h.max_act::float8 AS max_act, h.count,
               (SELECT u.excess::float8 FROM latest_run rc JOIN neuron_universality u ON u.run_id = rc.id
                 WHERE rc.kind = 'correlation' AND rc.model_id = h.model_id AND u.model_id = h.model_id
                   AND u.layer = h.layer AND u.idx = h.idx LIMIT 1) AS excess,
               (SELECT array_agg(l.label ORDER BY l.score DESC)
                  FROM neuron_label l JOIN latest_run lr ON lr.id = l.run_id AND lr.kind = 'classify'
                 WHERE l.model_id = h.model_id AND l.layer = h.layer AND l.idx = h.idx) AS labels
        FROM hits h JOIN model m ON m.id = h.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        ORDER BY h.mean_act DESC, m.name, h.layer, h.idx
    """, params | {"limit": int(limit)})


def data_version(engine: Engine | Connection) -> str:
    """A string that changes whenever a run finishes or is removed (for caching summaries)."""
    with connect(engine) as conn:
        row = conn.execute(sa.text(
            "SELECT count(*), max(id), max(finished_at) FROM run WHERE status = 'done'")).one()
    return f"{row[0]}:{row[1]}:{row[2]}"


# ---------------------------------------------------------------- text report

def status_report(engine: Engine) -> str:
    """A plain-text summary for ``atlas status``."""
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
        lines += ["", "Runs (newest first)", str(rs.select("run_id", "kind", "state", "model", "cohort", "dataset", "tokens_done", "seconds"))]
        lu = layer_universality(engine)
        if lu.height:
            lines += ["", "Universal neurons per layer (excess correlation > 0.5)",
                      str(lu.select("model", "cohort", "layer", "n_neurons", "n_universal", "universal_share"))]
    return "\n".join(lines)
