"""Training checkpoints as models: ``model.step``, ``model.train_tokens``, ``model.checkpoint_of``,
and the view ``universality_over_training``.

A checkpoint saved during a model's training is a model of the atlas like any other (its own
weights, statistics and correlations), with the optimizer step it was saved at, the training
tokens seen by then, and ``checkpoint_of`` = the model whose training it belongs to (the final
model; deleting it deletes its checkpoints). Seeds saved at the same step form a cohort of their
own, so universality is measured per step with the ordinary correlation run.

The SQL and comments are a COPY of atlas/schema.py and atlas/views.py at this revision
(migrations are frozen history).

Revision ID: 0006_model_step
Revises: 0005_example_kinds
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_model_step"
down_revision = "0005_example_kinds"
branch_labels = None
depends_on = None

MODEL_COLUMNS = {'checkpoint_of': 'the model whose training this is a checkpoint of (model.id; null: the model itself, or '
                  'not known)',
 'step': 'the optimizer step this checkpoint was saved at (null: not known); the final model has its last '
         'step',
 'train_tokens': 'training tokens the model had seen at that step (null: not known)'}

VIEW = """CREATE VIEW universality_over_training AS
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
GROUP BY coalesce(f.name, m.name), m.name, c.name, m.seed_label, m.step, m.train_tokens, u.layer, u.run_id"""

VIEW_COMMENT = "Universality against training: per reference model with a known training step (a final model and its training checkpoints, each the reference of its step's cohort) and layer, the share of neurons universal at the paper's threshold (excess > 0.5) in the model's current correlation run, with the step and training tokens. Dead neurons (null excess) count as not universal; other thresholds: atlas.queries.universality_over_training."

VIEW_COLUMNS = {'avg_excess': 'mean excess correlation of the layer (dead neurons left out)',
 'avg_mean_baseline': 'mean of mean_baseline over the layer (the rotation baseline)',
 'avg_mean_corr': 'mean of mean_corr over the layer',
 'cohort': 'the cohort that was correlated (the seeds at this step)',
 'layer': 'the transformer block, 0-based',
 'model': 'the reference model at this step (a checkpoint, or the final model)',
 'n_neurons': 'neurons of the layer',
 'n_partners': 'how many partner seeds the excess is over (step cohorts may hold fewer seeds)',
 'n_universal': 'neurons with excess > 0.5',
 'run_id': 'the correlation run the shares are from (run.id)',
 'seed_label': "the reference model's seed within its cohort",
 'step': 'the optimizer step of the reference model (model.step)',
 'train_tokens': 'training tokens seen by then (model.train_tokens)',
 'trained_model': "the training the row belongs to: the final model's name (model.checkpoint_of, else "
                  'itself)',
 'universal_share': 'n_universal / n_neurons'}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.add_column("model", sa.Column("step", sa.Integer(), nullable=True))
    op.add_column("model", sa.Column("train_tokens", sa.BigInteger(), nullable=True))
    op.add_column("model", sa.Column("checkpoint_of", sa.Integer(), nullable=True))
    op.create_foreign_key(op.f("fk_model_checkpoint_of_model"), "model", "model", ["checkpoint_of"], ["id"],
                          ondelete="CASCADE")
    op.create_index(op.f("ix_model_checkpoint_of"), "model", ["checkpoint_of"])
    for column, text in MODEL_COLUMNS.items():
        op.execute(f"COMMENT ON COLUMN model.{column} IS {_quote(text)}")
    op.execute(VIEW)
    op.execute(f"COMMENT ON VIEW universality_over_training IS {_quote(VIEW_COMMENT)}")
    for column, text in VIEW_COLUMNS.items():
        op.execute(f"COMMENT ON COLUMN universality_over_training.{column} IS {_quote(text)}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS universality_over_training")
    op.drop_index(op.f("ix_model_checkpoint_of"), table_name="model")
    op.drop_constraint(op.f("fk_model_checkpoint_of_model"), "model", type_="foreignkey")
    op.drop_column("model", "checkpoint_of")
    op.drop_column("model", "train_tokens")
    op.drop_column("model", "step")
