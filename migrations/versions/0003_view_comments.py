"""The database documents itself, and every view shows the newest done run of each subject.

- COMMENT ON every table and column (atlas/schema.py's docstrings and column comments at this
  revision), on alembic_version, and on every view, view column and function;
- the views are rebuilt on ``latest_run`` through one ``current_<table>`` view per result table,
  so no view reads a superseded run (before, ``family_members`` showed every classify run's
  families and ``best_partner`` any done run's pairs); ``neuron_overview``, ``token_neuron`` and
  ``top_example_text`` gain the ids of the runs that filled them; ``layer_universality``'s
  ``universal_share`` is now ``n_universal / n_neurons`` (dead neurons no longer left out of the
  denominator).

Everything below is a COPY of atlas/schema.py and atlas/views.py as they were at this revision:
migrations are frozen history and must not import code that changes later. tests/test_views.py
checks that the head revision matches the current atlas/views.py. (Over 400 lines: it is data.)

Revision ID: 0003_view_comments
Revises: 0002
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0003_view_comments"
down_revision = "0002"
branch_labels = None
depends_on = None

# table -> (comment, {column: comment})
TABLES: dict[str, tuple[str, dict[str, str]]] = {
    'tokenizer': ('A tokenizer, identified by a hash of its vocabulary and merges.', {
        'id': "the tokenizer's id (tokenizer_id in other tables)",
        'name': "the tokenizer's name (e.g. the hub name it was loaded from)",
        'content_hash': 'hash of the vocabulary and merges: same hash, same tokenizer',
        'vocab_size': 'number of tokens in the vocabulary',
        'bos_token_id': 'beginning-of-sequence token id (null: none)',
        'eos_token_id': 'end-of-sequence token id (null: none)',
        'pad_token_id': 'padding token id (null: none)',
        'created_at': 'when the row was written',
    }),
    'cohort': ('Models of one architecture and tokenizer that differ only by training seed.', {
        'id': "the cohort's id (cohort_id in other tables)",
        'name': "the cohort's name (e.g. demo)",
        'tokenizer_id': 'the tokenizer its models share (tokenizer.id)',
        'description': 'free text',
        'created_at': 'when the row was written',
    }),
    'dataset': ('Token rows of a fixed context length (BOS + tokens), with how they were made.', {
        'id': "the dataset's id (dataset_id in other tables)",
        'name': "the dataset's name in the atlas",
        'source': 'where the text came from (files, a hub dataset)',
        'tokenizer_id': 'the tokenizer (tokenizer.id)',
        'context_length': 'tokens per row, BOS included',
        'n_rows': 'number of rows (dataset_row)',
        'n_tokens': 'tokens in all rows (n_rows × context_length)',
        'n_kept_tokens': 'tokens left after filter_rule (used by correlations)',
        'filter_rule': 'positions dropped from correlations: {exclude_token_ids, description} (JSON)',
        'content_hash': 'hash of the token rows: same hash, same data',
        'seed': 'seed of the sampling that built it (null: none)',
        'params': 'how it was built (JSON)',
        'created_at': 'when the row was written',
    }),
    'vocab_token': ("One vocabulary entry: text is the decoded string (' the' with its leading space).", {
        'tokenizer_id': 'the tokenizer (tokenizer.id)',
        'token_id': "the token's id in the vocabulary",
        'text': "the token decoded alone, leading space included (' the')",
    }),
    'dataset_row': ('One context row of a dataset, as token ids (top examples point into these rows).', {
        'dataset_id': 'the dataset (dataset.id)',
        'row_idx': "the row's index in the dataset, 0-based",
        'tokens': "the row's token ids, BOS first (context_length of them)",
    }),
    'model': ('A transformer LM as loaded through TransformerLens, with shapes and provenance.', {
        'id': "the model's id (model_id in other tables)",
        'name': "the model's name in the atlas (what neuron links carry)",
        'source': 'hub name or local checkpoint path it was loaded from',
        'revision': 'hub revision or checkpoint content hash',
        'architecture': 'architecture name from its config (e.g. GPT2LMHeadModel)',
        'cohort_id': 'the seed cohort it belongs to (cohort.id; null: none)',
        'seed_label': 'its seed within the cohort (e.g. s0)',
        'n_layers': 'number of transformer blocks',
        'd_model': 'width of the residual stream',
        'd_mlp': 'MLP neurons per layer',
        'n_heads': 'attention heads per layer',
        'd_head': 'width of one attention head',
        'n_ctx': 'longest context the model accepts, in tokens',
        'd_vocab': "rows of the unembedding (may exceed the tokenizer's vocabulary)",
        'act_fn': 'MLP activation function (e.g. gelu_new)',
        'tokenizer_id': 'its tokenizer (tokenizer.id)',
        'weight_processing': 'how weights were processed before weight statistics (JSON)',
        'created_at': 'when the row was written',
    }),
    'neuron': ('One MLP neuron: blocks.{layer}.mlp.hook_post[..., idx].', {
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
    }),
    'run': ('One computation. key identifies what was computed (kind, subject, parameters), so repeating a done run is a no-op. Results appear in one transaction with status done. Its subject is (kind, model_id, cohort_id); the newest done run of a subject is the current one (view latest_run).', {
        'id': "the run's id (run_id in other tables)",
        'kind': 'what it computes: stats | weights | correlation | classify',
        'key': 'kind, subject and a hash of params: same key, same computation',
        'model_id': 'its subject model: the model (stats, weights), the reference model (correlation), the one model (classify)',
        'cohort_id': 'its subject cohort (correlation, classify; null otherwise)',
        'dataset_id': 'the token dataset it read (null: weights runs need none)',
        'params': 'its parameters (JSON; stats runs keep histogram_edges here)',
        'code_version': 'package version and git commit that computed it',
        'device': 'where it ran (cpu, cuda:0)',
        'status': 'queued | running | done | failed',
        'tokens_done': 'dataset tokens processed so far',
        'tokens_total': 'dataset tokens to process (null: unknown)',
        'error': 'one-line error of a failed run',
        'created_at': 'when the row was written',
        'started_at': 'when it (last) started',
        'heartbeat_at': 'last sign of life of the process computing it',
        'finished_at': 'when it became done or failed (newest done wins)',
    }),
    'activation_stats': ('Distribution of hook_pre (moments, histogram) and firing of hook_post over a dataset. Statistics undefined for a neuron (e.g. skew of a constant) are NULL, never 0. Written by stats runs.', {
        'run_id': 'the stats run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'count': 'dataset tokens the statistics are over',
        'mean': 'mean of hook_pre (the MLP pre-activation)',
        'variance': 'population variance of hook_pre',
        'skew': 'skewness of hook_pre (null: constant)',
        'kurtosis': 'non-excess kurtosis of hook_pre: a Gaussian gives 3 (null: constant)',
        'pre_min': 'smallest hook_pre',
        'pre_max': 'largest hook_pre',
        'post_mean': 'mean of hook_post (the activation after the nonlinearity)',
        'post_max': 'largest hook_post',
        'act_frequency': 'share of tokens with hook_post > 0, in 0..1',
        'histogram': "hook_pre counts between the stats run's params->histogram_edges (values outside not counted)",
    }),
    'correlation_edge': ('The top-k partner neurons of a reference neuron in one partner model, by rho. Written by correlation runs.', {
        'run_id': 'the correlation run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'partner_model_id': 'the partner model (model.id)',
        'rank': '1 = the most correlated partner neuron',
        'partner_layer': "the partner neuron's layer",
        'partner_idx': "the partner neuron's index",
        'rho': "Pearson correlation of the two neurons' hook_post, -1..1",
    }),
    'family': ('Neurons that share a label and a feature, across seeds (via partner edges) and within a model. Written by classify runs.', {
        'id': "the family's id (family_id in other tables)",
        'run_id': 'the classify run that computed the row (run.id)',
        'label': 'the label its members share',
        'name': "label and shared feature, e.g. unigram: token=' the'",
        'n_members': 'member neurons',
        'n_models': 'distinct models among the members',
        'evidence': 'the shared key, models, layers, every_seed (JSON)',
    }),
    'neuron_feature': ("A neuron's best-explaining binary token features, by variance reduction. Written by classify runs.", {
        'run_id': 'the classify run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'rank': '1 = the feature that explains most',
        'feature': "the binary token feature, e.g. token=' the', starts_with=a, position=3",
        'feature_kind': 'unigram | class | alphabet | position | ...',
        'on_previous': 'true: the feature is evaluated on the previous token',
        'variance_reduction': 'share of hook_post variance the feature explains, 0..1',
    }),
    'neuron_label': ('A family or functional-role label with its score and the evidence behind it. Written by classify runs.', {
        'run_id': 'the classify run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'label': 'unigram | alphabet | previous_token | position | semantic | prediction | ...',
        'score': "the statistic the label's rule thresholds (e.g. variance reduction)",
        'evidence': 'why: the rule, the feature or tokens, the numbers (JSON)',
    }),
    'neuron_universality': ("Aggregates over a reference neuron's partners. Universal ⇔ excess above a threshold (the paper: 0.5), chosen at query time. NULL excess: dead neuron, never universal. Written by correlation runs.", {
        'run_id': 'the correlation run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'n_partners': 'partner models it was correlated with',
        'max_corr': 'largest over partners of the best-partner rho',
        'mean_corr': 'mean over partners of the best-partner rho',
        'min_corr': 'smallest over partners of the best-partner rho',
        'mean_baseline': 'mean over partners of the best rho against the randomly rotated partner',
        'excess': 'mean_corr - mean_baseline: universal when above a threshold (the paper: 0.5); null: dead neuron',
    }),
    'pair_correlation': ('For a neuron of model_id and another model of its cohort: the best-correlated neuron there, its rho, and the best rho against the randomly rotated other model (baseline). Rows exist for reference neurons (other = each partner) and partner neurons (other = the reference: the column maxima). NULL rho: dead neuron (zero variance), undefined. Written by correlation runs.', {
        'run_id': 'the correlation run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'other_model_id': 'the other model of the cohort (model.id)',
        'max_corr': 'largest Pearson rho with a neuron of the other model, -1..1',
        'best_layer': 'layer of that best-correlated neuron',
        'best_idx': 'index of that best-correlated neuron',
        'baseline_max': "largest rho with the randomly rotated other model's neurons (the baseline)",
    }),
    'token_activation': ("Per neuron and vocabulary token: mean and max hook_post when that token is current. Only each neuron's top tokens (by mean) are kept. Written by stats runs.", {
        'run_id': 'the stats run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'token_id': 'the current token (vocab_token.token_id)',
        'count': 'dataset tokens equal to it',
        'mean_act': 'mean hook_post over those tokens',
        'max_act': 'largest hook_post over those tokens',
    }),
    'top_example': ("The k highest hook_post activations of a neuron, as positions in the dataset's rows. Written by stats runs.", {
        'run_id': 'the stats run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'rank': '1 = the highest activation',
        'row_idx': "the dataset row of the example (dataset_row.row_idx of the run's dataset)",
        'position': "the activating token's position in the row, 0-based",
        'value': 'hook_post at that token',
    }),
    'weight_stats': ('Statistics of processed weights (LayerNorm folded, writing weights and W_U centred). vocab_* describe z_v = cos(w_out, W_U[:, v]) over the vocabulary. Written by weights runs.', {
        'run_id': 'the weights run that computed the row (run.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'w_in_norm': "‖w_in‖: L2 norm of the neuron's input weights",
        'w_out_norm': "‖w_out‖: L2 norm of the neuron's output weights",
        'input_bias': "b_in: the neuron's input bias",
        'in_out_sim': 'cos(w_in, w_out) (null: a zero vector)',
        'l2_penalty': '‖w_in‖² + ‖w_out‖²',
        'vocab_mean': 'mean over the vocabulary of cos(w_out, W_U[:, v])',
        'vocab_var': 'variance over the vocabulary of cos(w_out, W_U[:, v])',
        'vocab_skew': 'skewness over the vocabulary of cos(w_out, W_U[:, v])',
        'vocab_kurtosis': 'non-excess kurtosis over the vocabulary of cos(w_out, W_U[:, v]) (a random direction gives ≈ 3)',
        'top_token_ids': 'the 20 tokens whose logit w_out raises most, strongest first',
        'top_token_values': 'their logit effects W_U[:, v] · w_out, descending',
        'bottom_token_ids': 'the 20 tokens whose logit w_out lowers most, strongest first',
        'bottom_token_values': 'their logit effects W_U[:, v] · w_out, ascending',
    }),
    'family_member': ("A neuron of a family (the family's run_id says which classify run made it).", {
        'family_id': 'the family (family.id)',
        'model_id': "the neuron's model (model.id)",
        'layer': "the neuron's transformer block, 0-based",
        'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
        'score': "the member's label score",
    }),
}

ALEMBIC_VERSION = ("The Alembic revision this database is migrated to (atlas db upgrade moves it).",
                   {"version_num": "the revision id of the newest applied migration"})

# Views in dependency order: (name, function signature or None, CREATE statement, comment, column comments).
# A current_<table> view's column comments are its table's (TABLES), as in atlas/views.py.
VIEWS: list[tuple[str, str | None, str, str, dict[str, str] | str]] = [
    ('latest_run', None, '''CREATE VIEW latest_run AS
SELECT DISTINCT ON (r.kind, r.model_id, r.cohort_id) r.*
FROM run r
WHERE r.status = 'done'
ORDER BY r.kind, r.model_id, r.cohort_id, r.finished_at DESC NULLS LAST, r.id DESC''',
     'The current run of each subject: the newest done run per (kind, model_id, cohort_id), by finished_at then id. Every other view reads only these runs.',
     'run'),
    ('current_activation_stats', None, '''CREATE VIEW current_activation_stats AS
SELECT x.*
FROM activation_stats x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'stats'))''',
     'activation_stats of current runs only (the newest done stats run of each subject, view latest_run); older runs: activation_stats WHERE run_id = …',
     'activation_stats'),
    ('current_top_example', None, '''CREATE VIEW current_top_example AS
SELECT x.*
FROM top_example x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'stats'))''',
     'top_example of current runs only (the newest done stats run of each subject, view latest_run); older runs: top_example WHERE run_id = …',
     'top_example'),
    ('current_token_activation', None, '''CREATE VIEW current_token_activation AS
SELECT x.*
FROM token_activation x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'stats'))''',
     'token_activation of current runs only (the newest done stats run of each subject, view latest_run); older runs: token_activation WHERE run_id = …',
     'token_activation'),
    ('current_weight_stats', None, '''CREATE VIEW current_weight_stats AS
SELECT x.*
FROM weight_stats x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'weights'))''',
     'weight_stats of current runs only (the newest done weights run of each subject, view latest_run); older runs: weight_stats WHERE run_id = …',
     'weight_stats'),
    ('current_pair_correlation', None, '''CREATE VIEW current_pair_correlation AS
SELECT x.*
FROM pair_correlation x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'correlation'))''',
     'pair_correlation of current runs only (the newest done correlation run of each subject, view latest_run); older runs: pair_correlation WHERE run_id = …',
     'pair_correlation'),
    ('current_correlation_edge', None, '''CREATE VIEW current_correlation_edge AS
SELECT x.*
FROM correlation_edge x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'correlation'))''',
     'correlation_edge of current runs only (the newest done correlation run of each subject, view latest_run); older runs: correlation_edge WHERE run_id = …',
     'correlation_edge'),
    ('current_neuron_universality', None, '''CREATE VIEW current_neuron_universality AS
SELECT x.*
FROM neuron_universality x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'correlation'))''',
     'neuron_universality of current runs only (the newest done correlation run of each subject, view latest_run); older runs: neuron_universality WHERE run_id = …',
     'neuron_universality'),
    ('current_neuron_feature', None, '''CREATE VIEW current_neuron_feature AS
SELECT x.*
FROM neuron_feature x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'classify'))''',
     'neuron_feature of current runs only (the newest done classify run of each subject, view latest_run); older runs: neuron_feature WHERE run_id = …',
     'neuron_feature'),
    ('current_neuron_label', None, '''CREATE VIEW current_neuron_label AS
SELECT x.*
FROM neuron_label x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'classify'))''',
     'neuron_label of current runs only (the newest done classify run of each subject, view latest_run); older runs: neuron_label WHERE run_id = …',
     'neuron_label'),
    ('current_family', None, '''CREATE VIEW current_family AS
SELECT x.*
FROM family x
WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'classify'))''',
     'family of current runs only (the newest done classify run of each subject, view latest_run); older runs: family WHERE run_id = …',
     'family'),
    ('neuron_overview', None, '''CREATE VIEW neuron_overview AS
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
LEFT JOIN current_neuron_universality u ON u.model_id = n.model_id AND u.layer = n.layer AND u.idx = n.idx''',
     'One row per neuron: its current activation statistics, weight statistics, universality and labels (null where that run kind has not run), with the ids of the runs that filled them.',
     {
         'model': "the model's name",
         'model_id': 'the model (model.id)',
         'layer': "the neuron's transformer block, 0-based",
         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
         'cohort': "the model's cohort",
         'seed_label': "the model's seed within its cohort",
         'mean': 'mean of hook_pre (the MLP pre-activation) (current stats run)',
         'variance': 'population variance of hook_pre (current stats run)',
         'skew': 'skewness of hook_pre (null: constant) (current stats run)',
         'kurtosis': 'non-excess kurtosis of hook_pre: a Gaussian gives 3 (null: constant) (current stats run)',
         'act_frequency': 'share of tokens with hook_post > 0, in 0..1 (current stats run)',
         'pre_min': 'smallest hook_pre (current stats run)',
         'pre_max': 'largest hook_pre (current stats run)',
         'post_max': 'largest hook_post (current stats run)',
         'post_mean': 'mean of hook_post (the activation after the nonlinearity) (current stats run)',
         'n_tokens': 'dataset tokens the activation statistics are over (current stats run)',
         'w_in_norm': "‖w_in‖: L2 norm of the neuron's input weights (current weights run)",
         'w_out_norm': "‖w_out‖: L2 norm of the neuron's output weights (current weights run)",
         'input_bias': "b_in: the neuron's input bias (current weights run)",
         'in_out_sim': 'cos(w_in, w_out) (null: a zero vector) (current weights run)',
         'l2_penalty': '‖w_in‖² + ‖w_out‖² (current weights run)',
         'vocab_mean': 'mean over the vocabulary of cos(w_out, W_U[:, v]) (current weights run)',
         'vocab_var': 'variance over the vocabulary of cos(w_out, W_U[:, v]) (current weights run)',
         'vocab_skew': 'skewness over the vocabulary of cos(w_out, W_U[:, v]) (current weights run)',
         'vocab_kurtosis': 'non-excess kurtosis over the vocabulary of cos(w_out, W_U[:, v]) (a random direction gives ≈ 3) (current weights run)',
         'max_corr': 'largest over partners of the best-partner rho (current correlation run; reference models only)',
         'mean_corr': 'mean over partners of the best-partner rho (current correlation run; reference models only)',
         'min_corr': 'smallest over partners of the best-partner rho (current correlation run; reference models only)',
         'mean_baseline': 'mean over partners of the best rho against the randomly rotated partner (current correlation run; reference models only)',
         'excess': 'mean_corr - mean_baseline: universal when above a threshold (the paper: 0.5); null: dead neuron (current correlation run; reference models only)',
         'n_partners': 'partner models it was correlated with (current correlation run; reference models only)',
         'labels': 'labels of the current classify runs, best score first',
         'stats_run_id': 'the stats run of the activation columns (run.id)',
         'weights_run_id': 'the weights run of the weight columns (run.id)',
         'correlation_run_id': 'the correlation run of the universality columns (run.id)',
     }),
    ('universal_neurons', 'universal_neurons(real)', '''CREATE FUNCTION universal_neurons(threshold real DEFAULT 0.5)
RETURNS SETOF neuron_overview LANGUAGE sql STABLE AS $$
    SELECT * FROM neuron_overview WHERE excess > threshold ORDER BY excess DESC
$$''',
     "neuron_overview rows whose excess correlation is above threshold (default 0.5, the paper's), strongest first. Dead neurons (null excess) are never universal.",
     {}),
    ('universal_neuron', None, '''CREATE VIEW universal_neuron AS
SELECT * FROM universal_neurons(0.5)''',
     'universal_neurons(0.5): the neurons the paper calls universal, strongest first.',
     'neuron_overview'),
    ('layer_universality', None, '''CREATE VIEW layer_universality AS
SELECT m.name AS model, c.name AS cohort, u.model_id, u.layer, u.run_id,
       count(*) AS n_neurons,
       count(*) FILTER (WHERE u.excess > 0.5) AS n_universal,
       (count(*) FILTER (WHERE u.excess > 0.5))::float8 / count(*) AS universal_share,
       avg(u.mean_corr) AS avg_mean_corr,
       avg(u.mean_baseline) AS avg_mean_baseline
FROM current_neuron_universality u
JOIN model m ON m.id = u.model_id
LEFT JOIN cohort c ON c.id = m.cohort_id
GROUP BY m.name, c.name, u.model_id, u.layer, u.run_id''',
     "Per reference model and layer of the current correlation runs: neurons, universal neurons (excess > 0.5) and their share, and the layer's average correlation and baseline.",
     {
         'model': "the reference model's name",
         'cohort': 'its cohort',
         'model_id': 'the reference model (model.id)',
         'layer': 'the layer, 0-based',
         'run_id': 'the correlation run (run.id)',
         'n_neurons': 'neurons of the layer with a universality row',
         'n_universal': 'of them, neurons with excess > 0.5',
         'universal_share': 'n_universal / n_neurons, 0..1',
         'avg_mean_corr': 'average over the layer of mean_corr (best-partner rho averaged over partners)',
         'avg_mean_baseline': 'average over the layer of mean_baseline (the rotation baseline)',
     }),
    ('best_partner', None, '''CREATE VIEW best_partner AS
SELECT DISTINCT ON (p.model_id, p.layer, p.idx, p.other_model_id)
       m.name AS model, p.model_id, p.layer, p.idx,
       om.name AS other_model, om.seed_label AS other_seed, p.other_model_id,
       p.max_corr, p.best_layer, p.best_idx, p.baseline_max,
       p.max_corr - p.baseline_max AS excess, p.run_id
FROM pair_correlation p
JOIN latest_run r ON r.id = p.run_id
JOIN model m ON m.id = p.model_id
JOIN model om ON om.id = p.other_model_id
ORDER BY p.model_id, p.layer, p.idx, p.other_model_id, r.finished_at DESC NULLS LAST, r.id DESC''',
     "A neuron's best-correlated neuron in every other model it was correlated with, from the current correlation runs (the newest where two cover the same pair). Reference neurons have one row per partner model; partner neurons one (the reference).",
     {
         'model': "the model's name",
         'model_id': 'the model (model.id)',
         'layer': "the neuron's transformer block, 0-based",
         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
         'other_model': "the other model's name",
         'other_seed': "the other model's seed label",
         'other_model_id': 'the other model (model.id)',
         'max_corr': 'largest Pearson rho with a neuron of the other model, -1..1',
         'best_layer': 'layer of that best-correlated neuron',
         'best_idx': 'index of that best-correlated neuron',
         'baseline_max': "largest rho with the randomly rotated other model's neurons (the baseline)",
         'excess': 'max_corr - baseline_max: how far the best partner beats the rotation baseline',
         'run_id': 'the correlation run (run.id)',
     }),
    ('token_neuron', None, '''CREATE VIEW token_neuron AS
SELECT v.text AS token, ta.token_id, m.name AS model, ta.model_id, ta.layer, ta.idx,
       ta.count, ta.mean_act, ta.max_act, ta.run_id
FROM current_token_activation ta
JOIN model m ON m.id = ta.model_id
JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = ta.token_id''',
     'Which neurons fire on a token: per vocabulary token, the neurons of the current stats runs that keep it among their top tokens, with their mean and max hook_post when it is the current token.',
     {
         'token': "the token's text, leading space included (' the')",
         'token_id': 'the current token (vocab_token.token_id)',
         'count': 'dataset tokens equal to it',
         'mean_act': 'mean hook_post over those tokens',
         'max_act': 'largest hook_post over those tokens',
         'model': "the model's name",
         'model_id': 'the model (model.id)',
         'layer': "the neuron's transformer block, 0-based",
         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
         'run_id': 'the stats run (run.id)',
     }),
    ('top_example_text', None, '''CREATE VIEW top_example_text AS
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
) ctx''',
     'Top activating examples of the current stats runs as text: up to 10 tokens before the activating token, the token, and 3 after, decoded from the stored dataset rows.',
     {
         'model': "the model's name",
         'model_id': 'the model (model.id)',
         'layer': "the neuron's transformer block, 0-based",
         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
         'rank': '1 = the highest activation',
         'row_idx': "the dataset row of the example (dataset_row.row_idx of the run's dataset)",
         'position': "the activating token's position in the row, 0-based",
         'value': 'hook_post at that token',
         'dataset_id': "the dataset the example's row belongs to (dataset.id)",
         'before': 'decoded text of up to 10 tokens before the activating token',
         'token': "the activating token's text",
         'after': 'decoded text of up to 3 tokens after it',
         'run_id': 'the stats run (run.id)',
     }),
    ('family_members', None, '''CREATE VIEW family_members AS
SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models,
       m.name AS model, m.seed_label, fm.model_id, fm.layer, fm.idx, fm.score, f.run_id
FROM current_family f
JOIN family_member fm ON fm.family_id = f.id
JOIN model m ON m.id = fm.model_id''',
     'Families of the current classify runs with one row per member neuron.',
     {
         'family_id': 'the family (family.id)',
         'family': "the family's name",
         'label': 'the label its members share',
         'n_members': 'member neurons',
         'n_models': 'distinct models among the members',
         'model': "the model's name",
         'model_id': 'the model (model.id)',
         'layer': "the neuron's transformer block, 0-based",
         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
         'seed_label': "the member model's seed label",
         'score': "the member's label score",
         'run_id': 'the classify run (run.id)',
     }),
]

# The views of 0001, dependents first (dropped here; restored by the downgrade from 0001 itself).
OLD_VIEWS = ["VIEW top_example_text", "VIEW token_neuron", "VIEW best_partner", "VIEW family_members",
             "VIEW layer_universality", "VIEW universal_neuron", "FUNCTION universal_neurons(real)",
             "VIEW neuron_overview", "VIEW latest_run"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _column_comments(columns: dict[str, str] | str) -> dict[str, str]:
    """A view's column comments: given, or those of the table (or earlier view) it copies."""
    if isinstance(columns, dict):
        return columns
    if columns in TABLES:
        return TABLES[columns][1]
    return next(_column_comments(cols) for name, _, _, _, cols in VIEWS if name == columns)


def _comment_table(table: str, comment: str | None, columns: dict[str, str], *, kind: str = "TABLE") -> None:
    op.execute(f"COMMENT ON {kind} {table} IS {_quote(comment) if comment is not None else 'NULL'}")
    for column, text in columns.items():
        op.execute(f"COMMENT ON COLUMN {table}.{column} IS {_quote(text) if comment is not None else 'NULL'}")


def upgrade() -> None:
    for old in OLD_VIEWS:
        op.execute(f"DROP {old}")
    for table, (comment, columns) in TABLES.items():
        _comment_table(table, comment, columns)
    _comment_table("alembic_version", *ALEMBIC_VERSION)
    for name, function, create, comment, columns in VIEWS:
        op.execute(create)
        if function:
            op.execute(f"COMMENT ON FUNCTION {function} IS {_quote(comment)}")
        else:
            _comment_table(name, comment, _column_comments(columns), kind="VIEW")


def downgrade() -> None:
    for name, function, *_ in reversed(VIEWS):
        op.execute(f"DROP FUNCTION {function}" if function else f"DROP VIEW {name}")
    for table, (_, columns) in TABLES.items():
        _comment_table(table, None, columns)
    _comment_table("alembic_version", None, ALEMBIC_VERSION[1])
    for statement in _initial_migration().VIEWS:
        op.execute(statement)


def _initial_migration():
    """Migration 0001 (frozen too), whose views the downgrade restores."""
    spec = importlib.util.spec_from_file_location("atlas_migration_0001", Path(__file__).with_name("0001_initial.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
