"""The SQL views of the atlas: the current definition of each, and what every view column means.

Result rows belong to runs, and a subject (a model, a cohort, a cohort's reference model: the
run's ``kind, model_id, cohort_id``) can have several done runs of one kind, e.g. a stats run
recomputed, or a cohort re-correlated after a model joined it. **The newest done run of each
subject is the current one** (view ``latest_run``); every other view reads only current runs,
through the ``current_<table>`` views, one per result table. Older runs stay in the tables
(``WHERE run_id = …``; the query layer's ``run_id=`` parameters).

Layers, each built on the one before:

- ``latest_run``: the current run of each subject;
- ``current_activation_stats`` … ``current_family``: a result table's rows of current runs;
- ``neuron_overview``, ``universal_neurons(threshold)``, ``universal_neuron``, ``layer_universality``,
  ``best_partner``, ``token_neuron``, ``top_example_text``, ``family_members``,
  ``neuron_property_percentile``, ``universality_over_training``: the documented views
  (docs/queries.md), each with the run id(s) that filled it.

Every view and view column gets a COMMENT (table comments live in atlas/schema.py), so ``\\d+``
in psql and the UI's SQL page explain them. Migrations COPY the SQL they apply from here (a
migration is frozen history; this module is the present): tests/test_views.py checks that a
database migrated to head has exactly these views, functions and comments.

Changing a table? ``latest_run`` and the ``current_<table>`` views select ``*``, which PostgreSQL
expands when a view is created: a migration that adds a column to ``run`` or to a result table
must also ``CREATE OR REPLACE VIEW`` the view over it (new columns go last, dependents stay) and
COMMENT the new column, or tests/test_views.py fails.

(Over 400 lines for the reason schema.py is: one definition per view, one documented line per column.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from atlas.schema import Base

# result table -> the run kind that writes it (family_member hangs off family)
RESULT_TABLES: dict[str, str] = {
    "activation_stats": "stats", "top_example": "stats", "token_activation": "stats",
    "weight_stats": "weights",
    "pair_correlation": "correlation", "correlation_edge": "correlation", "neuron_universality": "correlation",
    "neuron_feature": "classify", "neuron_label": "classify", "family": "classify",
    "sampled_example": "stats", "example_activation": "examples",
}


@dataclass(frozen=True)
class View:
    """A view (or, with ``function``, a SQL function) with its comment and its columns' comments."""

    name: str
    comment: str
    sql: str  # CREATE VIEW / CREATE FUNCTION statement
    columns: Mapping[str, str]
    function: str | None = None  # the function's signature, e.g. "universal_neurons(real)"


def _about(table: str, *columns: str, note: str = "") -> dict[str, str]:
    """The comments of ``table``'s columns (atlas/schema.py), reused for view columns of the same meaning."""
    cols = Base.metadata.tables[table].c
    return {c: cols[c].comment + note for c in columns}


def _neuron_columns() -> dict[str, str]:
    return {"model": "the model's name", "model_id": "the model (model.id)",
            "layer": "the neuron's transformer block, 0-based",
            "idx": "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based"}


def _current(table: str) -> View:
    kind = RESULT_TABLES[table]
    columns = [c.name for c in Base.metadata.tables[table].columns]
    return View(
        name=f"current_{table}",
        comment=f"{table} of current runs only (the newest done {kind} run of each subject, view latest_run); "
                f"older runs: {table} WHERE run_id = …",
        # ANY(ARRAY(...)) is computed once per query, so a join to this view on (model_id, layer,
        # idx) stays an index probe; written as a join to latest_run, the planner hashes whole tables
        sql=f"""CREATE VIEW current_{table} AS
SELECT x.*
FROM {table} x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = '{kind}'))""",
        columns=_about(table, *columns))


_RUN_COLUMNS = [c.name for c in Base.metadata.tables["run"].columns]

LATEST_RUN = View(
    name="latest_run",
    comment="The current run of each subject: the newest done run per (kind, model_id, cohort_id), by finished_at "
            "then id. Every other view reads only these runs.",
    sql="""CREATE VIEW latest_run AS
SELECT DISTINCT ON (r.kind, r.model_id, r.cohort_id) r.*
FROM run r
WHERE r.status = 'done'
ORDER BY r.kind, r.model_id, r.cohort_id, r.finished_at DESC NULLS LAST, r.id DESC""",
    columns=_about("run", *_RUN_COLUMNS))

_STATS = ("mean", "variance", "skew", "kurtosis", "act_frequency", "pre_min", "pre_max", "post_max", "post_mean")
_WEIGHTS = ("w_in_norm", "w_out_norm", "input_bias", "in_out_sim", "l2_penalty", "vocab_mean", "vocab_var", "vocab_skew",
            "vocab_kurtosis")
_UNIVERSALITY = ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess", "n_partners")

_OVERVIEW_COLUMNS = (
    _neuron_columns() | {"cohort": "the model's cohort", "seed_label": "the model's seed within its cohort"}
    | _about("activation_stats", *_STATS, note=" (current stats run)")
    | {"n_tokens": "dataset tokens the activation statistics are over (current stats run)"}
    | _about("weight_stats", *_WEIGHTS, note=" (current weights run)")
    | _about("neuron_universality", *_UNIVERSALITY, note=" (current correlation run; reference models only)")
    | {"labels": "labels of the current classify runs, best score first",
       "stats_run_id": "the stats run of the activation columns (run.id)",
       "weights_run_id": "the weights run of the weight columns (run.id)",
       "correlation_run_id": "the correlation run of the universality columns (run.id)"})

NEURON_OVERVIEW = View(
    name="neuron_overview",
    comment="One row per neuron: its current activation statistics, weight statistics, universality and labels "
            "(null where that run kind has not run), with the ids of the runs that filled them.",
    sql="""CREATE VIEW neuron_overview AS
SELECT m.name AS model, c.name AS cohort, m.seed_label, n.model_id, n.layer, n.idx,
       a.mean, a.variance, a.skew, a.kurtosis, a.act_frequency, a.pre_min, a.pre_max, a.post_max,
       a.post_mean, a.count AS n_tokens,
       w.w_in_norm, w.w_out_norm, w.input_bias, w.in_out_sim, w.l2_penalty,
       w.vocab_mean, w.vocab_var, w.vocab_skew, w.vocab_kurtosis,
       u.max_corr, u.mean_corr, u.min_corr, u.mean_baseline, u.excess, u.n_partners,
       (SELECT array_agg(l.label ORDER BY l.score DESC, l.label)
          FROM current_neuron_label l
         WHERE l.model_id = n.model_id AND l.layer = n.layer AND l.idx = n.idx) AS labels,
       a.run_id AS stats_run_id, w.run_id AS weights_run_id, u.run_id AS correlation_run_id
FROM neuron n
JOIN model m ON m.id = n.model_id
LEFT JOIN cohort c ON c.id = m.cohort_id
LEFT JOIN current_activation_stats a ON a.model_id = n.model_id AND a.layer = n.layer AND a.idx = n.idx
LEFT JOIN current_weight_stats w ON w.model_id = n.model_id AND w.layer = n.layer AND w.idx = n.idx
LEFT JOIN current_neuron_universality u ON u.model_id = n.model_id AND u.layer = n.layer AND u.idx = n.idx""",
    columns=_OVERVIEW_COLUMNS)

UNIVERSAL_NEURONS = View(
    name="universal_neurons",
    function="universal_neurons(real)",
    comment="neuron_overview rows whose excess correlation is above threshold (default 0.5, the paper's), "
            "strongest first. Dead neurons (null excess) are never universal.",
    sql="""CREATE FUNCTION universal_neurons(threshold real DEFAULT 0.5)
RETURNS SETOF neuron_overview LANGUAGE sql STABLE AS $$
    SELECT * FROM neuron_overview WHERE excess > threshold ORDER BY excess DESC
$$""",
    columns={})

UNIVERSAL_NEURON = View(
    name="universal_neuron",
    comment="universal_neurons(0.5): the neurons the paper calls universal, strongest first.",
    sql="""CREATE VIEW universal_neuron AS
SELECT * FROM universal_neurons(0.5)""",
    columns=_OVERVIEW_COLUMNS)

LAYER_UNIVERSALITY = View(
    name="layer_universality",
    comment="Per reference model and layer of the current correlation runs: neurons, universal neurons "
            "(excess > 0.5) and their share, and the layer's average correlation and baseline.",
    sql="""CREATE VIEW layer_universality AS
SELECT m.name AS model, c.name AS cohort, u.model_id, u.layer, u.run_id,
       count(*) AS n_neurons,
       count(*) FILTER (WHERE u.excess > 0.5) AS n_universal,
       (count(*) FILTER (WHERE u.excess > 0.5))::float8 / count(*) AS universal_share,
       avg(u.mean_corr) AS avg_mean_corr,
       avg(u.mean_baseline) AS avg_mean_baseline
FROM current_neuron_universality u
JOIN model m ON m.id = u.model_id
LEFT JOIN cohort c ON c.id = m.cohort_id
GROUP BY m.name, c.name, u.model_id, u.layer, u.run_id""",
    columns={"model": "the reference model's name", "cohort": "its cohort", "model_id": "the reference model (model.id)",
             "layer": "the layer, 0-based", "run_id": "the correlation run (run.id)",
             "n_neurons": "neurons of the layer with a universality row",
             "n_universal": "of them, neurons with excess > 0.5",
             "universal_share": "n_universal / n_neurons, 0..1",
             "avg_mean_corr": "average over the layer of mean_corr (best-partner rho averaged over partners)",
             "avg_mean_baseline": "average over the layer of mean_baseline (the rotation baseline)"})

BEST_PARTNER = View(
    name="best_partner",
    comment="A neuron's best-correlated neuron in every other model it was correlated with, from the current "
            "correlation runs (the newest where two cover the same pair). Reference neurons have one row per "
            "partner model; partner neurons one (the reference).",
    sql="""CREATE VIEW best_partner AS
SELECT DISTINCT ON (p.model_id, p.layer, p.idx, p.other_model_id)
       m.name AS model, p.model_id, p.layer, p.idx,
       om.name AS other_model, om.seed_label AS other_seed, p.other_model_id,
       p.max_corr, p.best_layer, p.best_idx, p.baseline_max,
       p.max_corr - p.baseline_max AS excess, p.run_id
FROM pair_correlation p
JOIN latest_run r ON r.id = p.run_id
JOIN model m ON m.id = p.model_id
JOIN model om ON om.id = p.other_model_id
ORDER BY p.model_id, p.layer, p.idx, p.other_model_id, r.finished_at DESC NULLS LAST, r.id DESC""",
    columns=_neuron_columns()
    | {"other_model": "the other model's name", "other_seed": "the other model's seed label",
       "other_model_id": "the other model (model.id)"}
    | _about("pair_correlation", "max_corr", "best_layer", "best_idx", "baseline_max")
    | {"excess": "max_corr - baseline_max: how far the best partner beats the rotation baseline",
       "run_id": "the correlation run (run.id)"})

TOKEN_NEURON = View(
    name="token_neuron",
    comment="Which neurons fire on a token: per vocabulary token, the neurons of the current stats runs that keep "
            "it among their top tokens, with their mean and max hook_post when it is the current token.",
    sql="""CREATE VIEW token_neuron AS
SELECT v.text AS token, ta.token_id, m.name AS model, ta.model_id, ta.layer, ta.idx,
       ta.count, ta.mean_act, ta.max_act, ta.run_id
FROM current_token_activation ta
JOIN model m ON m.id = ta.model_id
JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = ta.token_id""",
    columns={"token": "the token's text, leading space included (' the')"}
    | _about("token_activation", "token_id", "count", "mean_act", "max_act") | _neuron_columns()
    | {"run_id": "the stats run (run.id)"})

TOP_EXAMPLE_TEXT = View(
    name="top_example_text",
    comment="Top activating examples of the current stats runs as text: up to 10 tokens before the activating "
            "token, the token, and 3 after, decoded from the stored dataset rows.",
    sql="""CREATE VIEW top_example_text AS
SELECT m.name AS model, e.model_id, e.layer, e.idx, e.rank, e.value, e.row_idx, e.position,
       r.dataset_id, ctx.before, ctx.token, ctx.after, e.run_id
FROM current_top_example e
JOIN run r ON r.id = e.run_id
JOIN model m ON m.id = e.model_id
JOIN dataset_row dr ON dr.dataset_id = r.dataset_id AND dr.row_idx = e.row_idx
CROSS JOIN LATERAL (
    SELECT string_agg(v.text, '' ORDER BY t.pos) FILTER (WHERE t.pos < e.position) AS before,
           string_agg(v.text, '' ORDER BY t.pos) FILTER (WHERE t.pos = e.position) AS token,
           string_agg(v.text, '' ORDER BY t.pos) FILTER (WHERE t.pos > e.position) AS after
    FROM (SELECT greatest(e.position - 10, 0) + o.ord - 1 AS pos, o.tok
          FROM unnest(dr.tokens[greatest(e.position - 10, 0) + 1 : e.position + 4])
               WITH ORDINALITY AS o(tok, ord)) t
    LEFT JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = t.tok
) ctx""",
    columns=_neuron_columns() | _about("top_example", "rank", "row_idx", "position", "value")
    | {"dataset_id": "the dataset the example's row belongs to (dataset.id)",
       "before": "decoded text of up to 10 tokens before the activating token",
       "token": "the activating token's text", "after": "decoded text of up to 3 tokens after it",
       "run_id": "the stats run (run.id)"})

FAMILY_MEMBERS = View(
    name="family_members",
    comment="Families of the current classify runs with one row per member neuron.",
    sql="""CREATE VIEW family_members AS
SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models,
       m.name AS model, m.seed_label, fm.model_id, fm.layer, fm.idx, fm.score, f.run_id
FROM current_family f
JOIN family_member fm ON fm.family_id = f.id
JOIN model m ON m.id = fm.model_id""",
    columns={"family_id": "the family (family.id)", "family": "the family's name"}
    | _about("family", "label", "n_members", "n_models") | _neuron_columns()
    | {"seed_label": "the member model's seed label", "score": "the member's label score",
       "run_id": "the classify run (run.id)"})

# The paper's comparison of universal and other neurons: each property ranked within its layer.
PROPERTIES: dict[str, tuple[str, str]] = {  # property -> (source column, what it is)
    "act_frequency": ("a.act_frequency", "activation frequency: share of tokens with hook_post > 0"),
    "mean": ("a.mean", "mean of hook_pre"),
    "skew": ("a.skew", "skewness of hook_pre"),
    "kurtosis": ("a.kurtosis", "kurtosis of hook_pre"),
    "input_bias": ("w.input_bias", "the input bias b_in"),
    "in_out_sim": ("w.in_out_sim", "cos(w_in, w_out)"),
    "l2_penalty": ("w.l2_penalty", "weight norm: ‖w_in‖² + ‖w_out‖² (the weight-decay penalty)"),
    "w_out_norm": ("w.w_out_norm", "‖w_out‖"),
    "vocab_kurtosis": ("w.vocab_kurtosis", "kurtosis of cos(w_out, W_U) over the vocabulary"),
    "vocab_skew": ("w.vocab_skew", "skewness of cos(w_out, W_U) over the vocabulary"),
}
_VALUES = ",\n                                   ".join(
    f"('{name}', {column}::float8)" for name, (column, _) in PROPERTIES.items())

NEURON_PROPERTY_PERCENTILE = View(
    name="neuron_property_percentile",
    comment="Every reference neuron of the current correlation runs, one row per property (activation frequency, "
            "skew, kurtosis, input bias, weight norms, vocab kurtosis and skew, …): its value and its percentile "
            "within its layer, as the paper normalises (scipy percentileofscore, kind 'rank', over the layer's "
            "neurons), with its excess correlation: compare universal neurons (excess > a threshold) with the rest.",
    sql=f"""CREATE VIEW neuron_property_percentile AS
WITH p AS (
    SELECT u.model_id, u.layer, u.idx, u.excess, u.run_id, v.property, v.value
    FROM current_neuron_universality u
    LEFT JOIN current_activation_stats a ON a.model_id = u.model_id AND a.layer = u.layer AND a.idx = u.idx
    LEFT JOIN current_weight_stats w ON w.model_id = u.model_id AND w.layer = u.layer AND w.idx = u.idx
    CROSS JOIN LATERAL (VALUES {_VALUES}) AS v(property, value)
)
SELECT m.name AS model, p.model_id, p.layer, p.idx, p.excess, p.property, p.value,
       CASE WHEN p.value IS NOT NULL THEN
            50.0 * ((rank() OVER ordered - 1) + cume_dist() OVER ordered * count(*) OVER layer_property + 1)
                 / count(p.value) OVER layer_property END AS percentile,
       p.run_id
FROM p
JOIN model m ON m.id = p.model_id
WINDOW layer_property AS (PARTITION BY p.model_id, p.layer, p.property),
       ordered AS (PARTITION BY p.model_id, p.layer, p.property ORDER BY p.value NULLS LAST)""",
    columns=_neuron_columns() | {
        "excess": "the neuron's excess correlation (current correlation run): universal when above a threshold",
        "property": "which property: " + "; ".join(f"{k} = {v[1]}" for k, v in PROPERTIES.items()),
        "value": "the property's value (current stats and weights runs; null: not computed or undefined)",
        "percentile": "percentile of value among the neurons of the same model and layer, 0..100 (scipy "
                      "percentileofscore, kind 'rank': ties get the mean rank; null when value is null)",
        "run_id": "the correlation run of the excess (run.id)"})

UNIVERSALITY_OVER_TRAINING = View(
    name="universality_over_training",
    comment="Universality against training: per reference model with a known training step (a final model and its "
            "training checkpoints, each the reference of its step's cohort) and layer, the share of neurons "
            "universal at the paper's threshold (excess > 0.5) in the model's current correlation run, with the "
            "step and training tokens. Dead neurons (null excess) count as not universal; other thresholds: "
            "atlas.queries.universality_over_training.",
    sql="""CREATE VIEW universality_over_training AS
SELECT coalesce(f.name, m.name) AS trained_model, m.name AS model, c.name AS cohort, m.seed_label,
       m.step, m.train_tokens, u.layer, u.run_id, max(u.n_partners) AS n_partners,
       count(*) AS n_neurons,
       count(*) FILTER (WHERE u.excess > 0.5) AS n_universal,
       avg((coalesce(u.excess, 0) > 0.5)::int)::float8 AS universal_share,
       avg(u.excess)::float8 AS avg_excess,
       avg(u.mean_corr)::float8 AS avg_mean_corr,
       avg(u.mean_baseline)::float8 AS avg_mean_baseline
FROM current_neuron_universality u
JOIN model m ON m.id = u.model_id
LEFT JOIN model f ON f.id = m.checkpoint_of
LEFT JOIN cohort c ON c.id = m.cohort_id
WHERE m.step IS NOT NULL
GROUP BY coalesce(f.name, m.name), m.name, c.name, m.seed_label, m.step, m.train_tokens, u.layer, u.run_id""",
    columns={
        "trained_model": "the training the row belongs to: the final model's name (model.checkpoint_of, else itself)",
        "model": "the reference model at this step (a checkpoint, or the final model)",
        "cohort": "the cohort that was correlated (the seeds at this step)",
        "seed_label": "the reference model's seed within its cohort",
        "step": "the optimizer step of the reference model (model.step)",
        "train_tokens": "training tokens seen by then (model.train_tokens)",
        "layer": "the transformer block, 0-based",
        "run_id": "the correlation run the shares are from (run.id)",
        "n_partners": "how many partner seeds the excess is over (step cohorts may hold fewer seeds)",
        "n_neurons": "neurons of the layer",
        "n_universal": "neurons with excess > 0.5",
        "universal_share": "n_universal / n_neurons",
        "avg_excess": "mean excess correlation of the layer (dead neurons left out)",
        "avg_mean_corr": "mean of mean_corr over the layer",
        "avg_mean_baseline": "mean of mean_baseline over the layer (the rotation baseline)"})

# In dependency order: each view reads only views defined before it.
RUN_LOCK_CLASS = 7212  # advisory-lock class of runs: pg_try_advisory_lock(RUN_LOCK_CLASS, run_id) in atlas/runs.py

RUN_STATE = View(
    name="run_state",
    comment="Every run with its live state: the status, or 'stale' for a running run whose process died (no "
            "session holds its advisory lock); the next caller of the same run resumes it from its checkpoint.",
    sql=f"""CREATE VIEW run_state AS
SELECT r.id, r.kind, r.model_id, r.cohort_id, r.dataset_id, r.status,
       CASE WHEN r.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {RUN_LOCK_CLASS} AND l.objsubid = 2
                  AND l.objid::bigint = r.id
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
            THEN 'stale' ELSE r.status END AS state,
       r.tokens_done, r.tokens_total, r.error, r.device, r.code_version,
       r.created_at, r.started_at, r.heartbeat_at, r.finished_at,
       extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_s
FROM run r""",
    columns=_about("run", "id", "kind", "model_id", "cohort_id", "dataset_id", "status", "tokens_done", "tokens_total",
                   "error", "device", "code_version", "created_at", "started_at", "heartbeat_at", "finished_at")
    | {"state": "status, or 'stale' for a running run whose process is gone (nobody holds its lock)",
       "heartbeat_age_s": "seconds since the run's process last reported it was alive"})

QUEUE_JOB = View(
    name="queue_job",
    comment="The jobs of the ingestion queue (procrastinate), readable without access to its schema: one row per job "
            "of a pipeline step (the periodic reconcile left out), newest last.",
    sql="""CREATE VIEW queue_job AS
SELECT j.id, coalesce(j.queueing_lock, j.lock, j.task_name) AS step, j.task_name AS task,
       j.status::text AS status, j.attempts, j.worker_id, w.last_heartbeat AS worker_heartbeat_at,
       extract(epoch FROM now() - w.last_heartbeat)::float8 AS worker_heartbeat_age_s,
       j.scheduled_at, j.queue_name,
       NOT EXISTS (SELECT 1 FROM procrastinate.procrastinate_jobs n
                   WHERE n.queueing_lock = j.queueing_lock AND n.id > j.id) AS current,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events e WHERE e.job_id = j.id) AS updated_at
FROM procrastinate.procrastinate_jobs j
LEFT JOIN procrastinate.procrastinate_workers w ON w.id = j.worker_id
WHERE j.task_name <> 'atlas.reconcile'""",
    columns={
        "id": "the job's id (procrastinate_jobs.id)",
        "step": "the pipeline step, e.g. ingest:demo-a:demo (the job's queueing lock)",
        "task": "the task that runs it, e.g. ingest:ingest_model",
        "status": "todo | doing | succeeded | failed | cancelled | aborted (procrastinate's)",
        "attempts": "how many times the job was tried",
        "worker_id": "the worker holding it while doing (procrastinate_workers.id)",
        "worker_heartbeat_at": "when that worker last said it was alive",
        "worker_heartbeat_age_s": "seconds since then: a doing job of a silent worker is retried by the reconcile",
        "scheduled_at": "not before this time (retries wait)",
        "queue_name": "the queue (atlas)",
        "current": "true for the newest job of its step",
        "updated_at": "the job's last event",
    })


VIEWS: tuple[View, ...] = (
    LATEST_RUN, *(_current(t) for t in RESULT_TABLES), NEURON_OVERVIEW, UNIVERSAL_NEURONS, UNIVERSAL_NEURON,
    LAYER_UNIVERSALITY, BEST_PARTNER, TOKEN_NEURON, TOP_EXAMPLE_TEXT, FAMILY_MEMBERS, RUN_STATE, QUEUE_JOB,
    NEURON_PROPERTY_PERCENTILE, UNIVERSALITY_OVER_TRAINING,
)


def quote(text: str) -> str:
    """A SQL string literal (COMMENT takes no bind parameters)."""
    return "'" + text.replace("'", "''") + "'"


def create_statements() -> list[str]:
    """CREATE and COMMENT statements for every view and function, in dependency order."""
    out: list[str] = []
    for view in VIEWS:
        out.append(view.sql)
        if view.function:
            out.append(f"COMMENT ON FUNCTION {view.function} IS {quote(view.comment)}")
            continue
        out.append(f"COMMENT ON VIEW {view.name} IS {quote(view.comment)}")
        out += [f"COMMENT ON COLUMN {view.name}.{column} IS {quote(text)}" for column, text in view.columns.items()]
    return out


def drop_statements() -> list[str]:
    """DROP statements for every view and function, dependents first."""
    return [f"DROP FUNCTION IF EXISTS {v.function}" if v.function else f"DROP VIEW IF EXISTS {v.name}"
            for v in reversed(VIEWS)]
