"""The neuron page's examples beyond the top activations, and the paper's property comparison.

- ``sampled_example`` (written by stats runs, from the same streaming pass as the top examples):
  examples drawn evenly across the quantiles of the tokens where a neuron fires, and its most
  negative activations;
- ``example_activation`` (written by the new ``examples`` run kind): a neuron's ``hook_post`` over
  the whole window of each stored example, its own and, for a reference neuron's top examples, its
  best partners' on the same text;
- views ``current_sampled_example``, ``current_example_activation`` and
  ``neuron_property_percentile`` (each property of a reference neuron ranked within its layer, as
  the paper normalises, beside its excess correlation);
- ``run.kind`` names the new kind (with the views that copy that column's comment).

The SQL and comments are a COPY of atlas/schema.py and atlas/views.py at this revision
(migrations are frozen history).

Revision ID: 0005_example_kinds
Revises: 0004_run_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_example_kinds"
down_revision = "0004_run_state"
branch_labels = None
depends_on = None

OLD_RUN_KIND = "what it computes: stats | weights | correlation | classify"

VIEWS = [('current_sampled_example',
  'CREATE VIEW current_sampled_example AS\n'
  'SELECT x.*\n'
  'FROM sampled_example x\n'
  "WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'stats'))",
  'sampled_example of current runs only (the newest done stats run of each subject, view latest_run); older runs: '
  'sampled_example WHERE run_id = …',
  'sampled_example'),
 ('current_example_activation',
  'CREATE VIEW current_example_activation AS\n'
  'SELECT x.*\n'
  'FROM example_activation x\n'
  "WHERE x.run_id = ANY (ARRAY(SELECT id FROM latest_run WHERE kind = 'examples'))",
  'example_activation of current runs only (the newest done examples run of each subject, view latest_run); older '
  'runs: example_activation WHERE run_id = …',
  'example_activation'),
 ('neuron_property_percentile',
  'CREATE VIEW neuron_property_percentile AS\n'
  'WITH p AS (\n'
  '    SELECT u.model_id, u.layer, u.idx, u.excess, u.run_id, v.property, v.value\n'
  '    FROM current_neuron_universality u\n'
  '    LEFT JOIN current_activation_stats a ON a.model_id = u.model_id AND a.layer = u.layer AND a.idx = u.idx\n'
  '    LEFT JOIN current_weight_stats w ON w.model_id = u.model_id AND w.layer = u.layer AND w.idx = u.idx\n'
  "    CROSS JOIN LATERAL (VALUES ('act_frequency', a.act_frequency::float8),\n"
  "                                   ('mean', a.mean::float8),\n"
  "                                   ('skew', a.skew::float8),\n"
  "                                   ('kurtosis', a.kurtosis::float8),\n"
  "                                   ('input_bias', w.input_bias::float8),\n"
  "                                   ('in_out_sim', w.in_out_sim::float8),\n"
  "                                   ('l2_penalty', w.l2_penalty::float8),\n"
  "                                   ('w_out_norm', w.w_out_norm::float8),\n"
  "                                   ('vocab_kurtosis', w.vocab_kurtosis::float8),\n"
  "                                   ('vocab_skew', w.vocab_skew::float8)) AS v(property, value)\n"
  ')\n'
  'SELECT m.name AS model, p.model_id, p.layer, p.idx, p.excess, p.property, p.value,\n'
  '       CASE WHEN p.value IS NOT NULL THEN\n'
  '            50.0 * ((rank() OVER ordered - 1) + cume_dist() OVER ordered * count(*) OVER layer_property + 1)\n'
  '                 / count(p.value) OVER layer_property END AS percentile,\n'
  '       p.run_id\n'
  'FROM p\n'
  'JOIN model m ON m.id = p.model_id\n'
  'WINDOW layer_property AS (PARTITION BY p.model_id, p.layer, p.property),\n'
  '       ordered AS (PARTITION BY p.model_id, p.layer, p.property ORDER BY p.value NULLS LAST)',
  'Every reference neuron of the current correlation runs, one row per property (activation frequency, skew, '
  'kurtosis, input bias, weight norms, vocab kurtosis and skew, …): its value and its percentile within its '
  "layer, as the paper normalises (scipy percentileofscore, kind 'rank', over the layer's neurons), with its "
  'excess correlation: compare universal neurons (excess > a threshold) with the rest.',
  {'excess': "the neuron's excess correlation (current correlation run): universal when above a threshold",
   'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
   'layer': "the neuron's transformer block, 0-based",
   'model': "the model's name",
   'model_id': 'the model (model.id)',
   'percentile': 'percentile of value among the neurons of the same model and layer, 0..100 (scipy '
                 "percentileofscore, kind 'rank': ties get the mean rank; null when value is null)",
   'property': 'which property: act_frequency = activation frequency: share of tokens with hook_post > 0; mean = '
               'mean of hook_pre; skew = skewness of hook_pre; kurtosis = kurtosis of hook_pre; input_bias = the '
               'input bias b_in; in_out_sim = cos(w_in, w_out); l2_penalty = weight norm: ‖w_in‖² + ‖w_out‖² (the '
               'weight-decay penalty); w_out_norm = ‖w_out‖; vocab_kurtosis = kurtosis of cos(w_out, W_U) over '
               'the vocabulary; vocab_skew = skewness of cos(w_out, W_U) over the vocabulary',
   'run_id': 'the correlation run of the excess (run.id)',
   'value': "the property's value (current stats and weights runs; null: not computed or undefined)"})]

TABLE_COMMENTS = {'example_activation': ("hook_post of one neuron over the window of a stored example: every token's activation, "
                        'so an example can be coloured token by token. The example belongs to neuron (model_id, '
                        'layer, idx) (its top, quantile or bottom example of that rank); the activations are of '
                        '(source_model_id, source_layer, source_idx): the neuron itself, or, for a reference '
                        "neuron's top examples, its best partner in another seed on the same text. Written by "
                        'examples runs.',
                        {'activations': 'hook_post of the source neuron at positions start, start + 1, … of the '
                                        'row',
                         'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
                         'kind': 'which stored example: top | quantile | bottom',
                         'layer': "the neuron's transformer block, 0-based",
                         'model_id': 'the model of the neuron whose example it is (model.id)',
                         'position': "the example token's position in the row, 0-based",
                         'rank': 'its rank among examples of that kind',
                         'row_idx': "the example's dataset row (dataset_row.row_idx of the run's dataset)",
                         'run_id': 'the examples run that computed the row (run.id)',
                         'source_idx': 'index of the neuron whose activations these are',
                         'source_layer': 'layer of the neuron whose activations these are',
                         'source_model_id': "whose activations: the neuron's own model, or a partner model "
                                            '(model.id)',
                         'start': "position of the window's first token in the row"}),
 'sampled_example': ('Examples of a neuron beyond its top activations, from the same streaming pass: quantile '
                     'examples drawn from a uniform sample of the tokens where it fires (hook_post > 0), evenly '
                     "across that distribution's quantiles, and bottom examples, its most negative hook_post. "
                     'Written by stats runs.',
                     {'idx': "the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based",
                      'kind': 'quantile | bottom',
                      'layer': "the neuron's transformer block, 0-based",
                      'model_id': "the neuron's model (model.id)",
                      'position': "the example token's position in the row, 0-based",
                      'quantile': "quantile examples: where the value sits in the neuron's firing distribution, "
                                  '0..1 (estimated from the sample); null for bottom examples',
                      'rank': 'quantile: 1 = lowest activation of the sample; bottom: 1 = most negative',
                      'row_idx': "the dataset row of the example (dataset_row.row_idx of the run's dataset)",
                      'run_id': 'the stats run that computed the row (run.id)',
                      'value': 'hook_post at that token'})}

RUN_KIND = 'what it computes: stats | weights | correlation | examples | classify'


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment(kind: str, name: str, comment: str | None, columns: dict[str, str]) -> None:
    op.execute(f"COMMENT ON {kind} {name} IS {_quote(comment) if comment is not None else 'NULL'}")
    for column, text in columns.items():
        op.execute(f"COMMENT ON COLUMN {name}.{column} IS {_quote(text)}")


def _kind_comment(text: str) -> None:
    for relation in ("run", "latest_run", "run_state"):
        op.execute(f"COMMENT ON COLUMN {relation}.kind IS {_quote(text)}")


def _example_key() -> list[sa.Column]:
    """The columns both tables are keyed by: a neuron's example of a kind and rank, in a run."""
    return [sa.Column("run_id", sa.Integer(), nullable=False), sa.Column("model_id", sa.Integer(), nullable=False),
            sa.Column("layer", sa.SmallInteger(), nullable=False), sa.Column("idx", sa.Integer(), nullable=False),
            sa.Column("kind", sa.String(), nullable=False), sa.Column("rank", sa.SmallInteger(), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "sampled_example",
        *_example_key(),
        sa.Column("row_idx", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("value", sa.REAL(), nullable=False),
        sa.Column("quantile", sa.REAL(), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_sampled_example_model_id_model"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_sampled_example_run_id_run"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "model_id", "layer", "idx", "kind", "rank", name=op.f("pk_sampled_example")),
    )
    op.create_index("ix_sampled_example_model", "sampled_example", ["model_id", "layer", "idx"])
    op.create_table(
        "example_activation",
        *_example_key(),
        sa.Column("source_model_id", sa.Integer(), nullable=False),
        sa.Column("source_layer", sa.SmallInteger(), nullable=False),
        sa.Column("source_idx", sa.Integer(), nullable=False),
        sa.Column("row_idx", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("start", sa.SmallInteger(), nullable=False),
        sa.Column("activations", postgresql.ARRAY(sa.REAL()), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_example_activation_model_id_model"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_example_activation_run_id_run"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["source_model_id"], ["model.id"],
                                name=op.f("fk_example_activation_source_model_id_model"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "model_id", "layer", "idx", "kind", "rank", "source_model_id",
                                name=op.f("pk_example_activation")),
    )
    op.create_index("ix_example_activation_model", "example_activation", ["model_id", "layer", "idx"])
    for table, (comment, columns) in TABLE_COMMENTS.items():
        _comment("TABLE", table, comment, columns)
    _kind_comment(RUN_KIND)
    for name, create, comment, columns in VIEWS:
        op.execute(create)  # a current_<table> view's columns mean what the table's do: columns names the table
        _comment("VIEW", name, comment, TABLE_COMMENTS[columns][1] if isinstance(columns, str) else columns)


def downgrade() -> None:
    for name, *_ in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    _kind_comment(OLD_RUN_KIND)
    op.drop_index("ix_example_activation_model", table_name="example_activation")
    op.drop_table("example_activation")
    op.drop_index("ix_sampled_example_model", table_name="sampled_example")
    op.drop_table("sampled_example")
