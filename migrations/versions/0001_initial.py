"""Initial schema: every table of atlas/schema.py and the documented SQL views.

(Over 400 lines: it is data — every table and view of the first schema, as Alembic wrote them.)

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 05:39:12.837525
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tokenizer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('content_hash', sa.String(), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=False),
    sa.Column('bos_token_id', sa.Integer(), nullable=True),
    sa.Column('eos_token_id', sa.Integer(), nullable=True),
    sa.Column('pad_token_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokenizer')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_tokenizer_content_hash'))
    )
    op.create_table('cohort',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('tokenizer_id', sa.Integer(), nullable=True),
    sa.Column('description', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tokenizer_id'], ['tokenizer.id'], name=op.f('fk_cohort_tokenizer_id_tokenizer')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cohort')),
    sa.UniqueConstraint('name', name=op.f('uq_cohort_name'))
    )
    op.create_table('dataset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('tokenizer_id', sa.Integer(), nullable=False),
    sa.Column('context_length', sa.Integer(), nullable=False),
    sa.Column('n_rows', sa.Integer(), nullable=False),
    sa.Column('n_tokens', sa.BigInteger(), nullable=False),
    sa.Column('n_kept_tokens', sa.BigInteger(), nullable=False),
    sa.Column('filter_rule', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.String(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tokenizer_id'], ['tokenizer.id'], name=op.f('fk_dataset_tokenizer_id_tokenizer')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset')),
    sa.UniqueConstraint('name', name=op.f('uq_dataset_name'))
    )
    op.create_table('vocab_token',
    sa.Column('tokenizer_id', sa.Integer(), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['tokenizer_id'], ['tokenizer.id'], name=op.f('fk_vocab_token_tokenizer_id_tokenizer'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tokenizer_id', 'token_id', name=op.f('pk_vocab_token'))
    )
    op.create_index('ix_vocab_token_text', 'vocab_token', ['text'], unique=False)
    op.create_table('dataset_row',
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('row_idx', sa.Integer(), nullable=False),
    sa.Column('tokens', postgresql.ARRAY(sa.Integer()), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_dataset_row_dataset_id_dataset'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_id', 'row_idx', name=op.f('pk_dataset_row'))
    )
    op.create_table('model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('revision', sa.String(), nullable=True),
    sa.Column('architecture', sa.String(), nullable=False),
    sa.Column('cohort_id', sa.Integer(), nullable=True),
    sa.Column('seed_label', sa.String(), nullable=True),
    sa.Column('n_layers', sa.Integer(), nullable=False),
    sa.Column('d_model', sa.Integer(), nullable=False),
    sa.Column('d_mlp', sa.Integer(), nullable=False),
    sa.Column('n_heads', sa.Integer(), nullable=False),
    sa.Column('d_head', sa.Integer(), nullable=False),
    sa.Column('n_ctx', sa.Integer(), nullable=False),
    sa.Column('d_vocab', sa.Integer(), nullable=False),
    sa.Column('act_fn', sa.String(), nullable=False),
    sa.Column('tokenizer_id', sa.Integer(), nullable=False),
    sa.Column('weight_processing', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['cohort_id'], ['cohort.id'], name=op.f('fk_model_cohort_id_cohort'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tokenizer_id'], ['tokenizer.id'], name=op.f('fk_model_tokenizer_id_tokenizer')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('name', name=op.f('uq_model_name'))
    )
    op.create_index(op.f('ix_model_cohort_id'), 'model', ['cohort_id'], unique=False)
    op.create_table('neuron',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_neuron_model_id_model'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('model_id', 'layer', 'idx', name=op.f('pk_neuron'))
    )
    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('cohort_id', sa.Integer(), nullable=True),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('code_version', sa.String(), nullable=False),
    sa.Column('device', sa.String(), nullable=True),
    sa.Column('status', sa.String(), server_default='queued', nullable=False),
    sa.Column('tokens_done', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('tokens_total', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name=op.f('ck_run_status')),
    sa.ForeignKeyConstraint(['cohort_id'], ['cohort.id'], name=op.f('fk_run_cohort_id_cohort'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_run_dataset_id_dataset'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_run_model_id_model'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run')),
    sa.UniqueConstraint('key', name=op.f('uq_run_key'))
    )
    op.create_index(op.f('ix_run_cohort_id'), 'run', ['cohort_id'], unique=False)
    op.create_index('ix_run_kind_status', 'run', ['kind', 'status'], unique=False)
    op.create_index(op.f('ix_run_model_id'), 'run', ['model_id'], unique=False)
    op.create_table('activation_stats',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('mean', sa.Double(), nullable=True),
    sa.Column('variance', sa.Double(), nullable=True),
    sa.Column('skew', sa.Double(), nullable=True),
    sa.Column('kurtosis', sa.Double(), nullable=True),
    sa.Column('pre_min', sa.Double(), nullable=True),
    sa.Column('pre_max', sa.Double(), nullable=True),
    sa.Column('post_mean', sa.Double(), nullable=True),
    sa.Column('post_max', sa.Double(), nullable=True),
    sa.Column('act_frequency', sa.Double(), nullable=True),
    sa.Column('histogram', postgresql.ARRAY(sa.Integer()), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_activation_stats_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_activation_stats_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', name=op.f('pk_activation_stats'))
    )
    op.create_index('ix_activation_stats_model', 'activation_stats', ['model_id', 'layer', 'idx'], unique=False)
    op.create_table('correlation_edge',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('partner_model_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.SmallInteger(), nullable=False),
    sa.Column('partner_layer', sa.SmallInteger(), nullable=False),
    sa.Column('partner_idx', sa.Integer(), nullable=False),
    sa.Column('rho', sa.REAL(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_correlation_edge_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['partner_model_id'], ['model.id'], name=op.f('fk_correlation_edge_partner_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_correlation_edge_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'partner_model_id', 'rank', name=op.f('pk_correlation_edge'))
    )
    op.create_index('ix_correlation_edge_partner', 'correlation_edge', ['partner_model_id', 'partner_layer', 'partner_idx'], unique=False)
    op.create_table('family',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('n_members', sa.Integer(), nullable=False),
    sa.Column('n_models', sa.Integer(), nullable=False),
    sa.Column('evidence', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_family_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_family'))
    )
    op.create_index(op.f('ix_family_run_id'), 'family', ['run_id'], unique=False)
    op.create_table('neuron_feature',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('rank', sa.SmallInteger(), nullable=False),
    sa.Column('feature', sa.String(), nullable=False),
    sa.Column('feature_kind', sa.String(), nullable=False),
    sa.Column('on_previous', sa.Boolean(), nullable=False),
    sa.Column('variance_reduction', sa.REAL(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_neuron_feature_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_neuron_feature_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'rank', name=op.f('pk_neuron_feature'))
    )
    op.create_table('neuron_label',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('evidence', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_neuron_label_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_neuron_label_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'label', name=op.f('pk_neuron_label'))
    )
    op.create_index('ix_neuron_label_label', 'neuron_label', ['label'], unique=False)
    op.create_table('neuron_universality',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('n_partners', sa.SmallInteger(), nullable=False),
    sa.Column('max_corr', sa.REAL(), nullable=True),
    sa.Column('mean_corr', sa.REAL(), nullable=True),
    sa.Column('min_corr', sa.REAL(), nullable=True),
    sa.Column('mean_baseline', sa.REAL(), nullable=True),
    sa.Column('excess', sa.REAL(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_neuron_universality_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_neuron_universality_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', name=op.f('pk_neuron_universality'))
    )
    op.create_index('ix_neuron_universality_excess', 'neuron_universality', ['run_id', 'excess'], unique=False)
    op.create_index('ix_neuron_universality_model', 'neuron_universality', ['model_id', 'layer', 'idx'], unique=False)
    op.create_table('pair_correlation',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('other_model_id', sa.Integer(), nullable=False),
    sa.Column('max_corr', sa.REAL(), nullable=True),
    sa.Column('best_layer', sa.SmallInteger(), nullable=True),
    sa.Column('best_idx', sa.Integer(), nullable=True),
    sa.Column('baseline_max', sa.REAL(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_pair_correlation_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['other_model_id'], ['model.id'], name=op.f('fk_pair_correlation_other_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_pair_correlation_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'other_model_id', name=op.f('pk_pair_correlation'))
    )
    op.create_index('ix_pair_correlation_model', 'pair_correlation', ['model_id', 'layer', 'idx'], unique=False)
    op.create_table('token_activation',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('mean_act', sa.REAL(), nullable=False),
    sa.Column('max_act', sa.REAL(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_token_activation_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_token_activation_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'token_id', name=op.f('pk_token_activation'))
    )
    op.create_index('ix_token_activation_token', 'token_activation', ['token_id', 'model_id'], unique=False)
    op.create_table('top_example',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('rank', sa.SmallInteger(), nullable=False),
    sa.Column('row_idx', sa.Integer(), nullable=False),
    sa.Column('position', sa.SmallInteger(), nullable=False),
    sa.Column('value', sa.REAL(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_top_example_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_top_example_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', 'rank', name=op.f('pk_top_example'))
    )
    op.create_table('weight_stats',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('w_in_norm', sa.Double(), nullable=False),
    sa.Column('w_out_norm', sa.Double(), nullable=False),
    sa.Column('input_bias', sa.Double(), nullable=False),
    sa.Column('in_out_sim', sa.Double(), nullable=True),
    sa.Column('l2_penalty', sa.Double(), nullable=False),
    sa.Column('vocab_mean', sa.Double(), nullable=True),
    sa.Column('vocab_var', sa.Double(), nullable=True),
    sa.Column('vocab_skew', sa.Double(), nullable=True),
    sa.Column('vocab_kurtosis', sa.Double(), nullable=True),
    sa.Column('top_token_ids', postgresql.ARRAY(sa.Integer()), nullable=False),
    sa.Column('top_token_values', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('bottom_token_ids', postgresql.ARRAY(sa.Integer()), nullable=False),
    sa.Column('bottom_token_values', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_weight_stats_model_id_model'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_weight_stats_run_id_run'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'model_id', 'layer', 'idx', name=op.f('pk_weight_stats'))
    )
    op.create_index('ix_weight_stats_model', 'weight_stats', ['model_id', 'layer', 'idx'], unique=False)
    op.create_table('family_member',
    sa.Column('family_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('layer', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['family_id'], ['family.id'], name=op.f('fk_family_member_family_id_family'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_family_member_model_id_model'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('family_id', 'model_id', 'layer', 'idx', name=op.f('pk_family_member'))
    )
    op.create_index('ix_family_member_neuron', 'family_member', ['model_id', 'layer', 'idx'], unique=False)

    for statement in VIEWS:
        op.execute(statement)


def downgrade() -> None:
    for name in DROP_VIEWS:
        op.execute(name)
    op.drop_index('ix_family_member_neuron', table_name='family_member')
    op.drop_table('family_member')
    op.drop_index('ix_weight_stats_model', table_name='weight_stats')
    op.drop_table('weight_stats')
    op.drop_table('top_example')
    op.drop_index('ix_token_activation_token', table_name='token_activation')
    op.drop_table('token_activation')
    op.drop_index('ix_pair_correlation_model', table_name='pair_correlation')
    op.drop_table('pair_correlation')
    op.drop_index('ix_neuron_universality_model', table_name='neuron_universality')
    op.drop_index('ix_neuron_universality_excess', table_name='neuron_universality')
    op.drop_table('neuron_universality')
    op.drop_index('ix_neuron_label_label', table_name='neuron_label')
    op.drop_table('neuron_label')
    op.drop_table('neuron_feature')
    op.drop_index(op.f('ix_family_run_id'), table_name='family')
    op.drop_table('family')
    op.drop_index('ix_correlation_edge_partner', table_name='correlation_edge')
    op.drop_table('correlation_edge')
    op.drop_index('ix_activation_stats_model', table_name='activation_stats')
    op.drop_table('activation_stats')
    op.drop_index(op.f('ix_run_model_id'), table_name='run')
    op.drop_index('ix_run_kind_status', table_name='run')
    op.drop_index(op.f('ix_run_cohort_id'), table_name='run')
    op.drop_table('run')
    op.drop_table('neuron')
    op.drop_index(op.f('ix_model_cohort_id'), table_name='model')
    op.drop_table('model')
    op.drop_table('dataset_row')
    op.drop_index('ix_vocab_token_text', table_name='vocab_token')
    op.drop_table('vocab_token')
    op.drop_table('dataset')
    op.drop_table('cohort')
    op.drop_table('tokenizer')


# The documented SQL views (README, "SQL views"). "Latest" means the newest finished run of a kind
# for a model; older runs stay queryable through the tables.
VIEWS = [
    """
    CREATE VIEW latest_run AS
    SELECT DISTINCT ON (kind, model_id, cohort_id) *
    FROM run
    WHERE status = 'done'
    ORDER BY kind, model_id, cohort_id, finished_at DESC NULLS LAST, id DESC
    """,
    """
    CREATE VIEW neuron_overview AS
    SELECT m.name AS model, c.name AS cohort, m.seed_label, n.model_id, n.layer, n.idx,
           a.mean, a.variance, a.skew, a.kurtosis, a.act_frequency, a.pre_min, a.pre_max, a.post_max,
           a.post_mean, a.count AS n_tokens,
           w.w_in_norm, w.w_out_norm, w.input_bias, w.in_out_sim, w.l2_penalty,
           w.vocab_mean, w.vocab_var, w.vocab_skew, w.vocab_kurtosis,
           u.max_corr, u.mean_corr, u.min_corr, u.mean_baseline, u.excess, u.n_partners,
           (SELECT array_agg(l.label ORDER BY l.score DESC)
              FROM neuron_label l JOIN latest_run lc ON lc.id = l.run_id AND lc.kind = 'classify'
             WHERE l.model_id = n.model_id AND l.layer = n.layer AND l.idx = n.idx) AS labels
    FROM neuron n
    JOIN model m ON m.id = n.model_id
    LEFT JOIN cohort c ON c.id = m.cohort_id
    LEFT JOIN latest_run rs ON rs.kind = 'stats' AND rs.model_id = n.model_id
    LEFT JOIN activation_stats a
           ON a.run_id = rs.id AND a.model_id = n.model_id AND a.layer = n.layer AND a.idx = n.idx
    LEFT JOIN latest_run rw ON rw.kind = 'weights' AND rw.model_id = n.model_id
    LEFT JOIN weight_stats w
           ON w.run_id = rw.id AND w.model_id = n.model_id AND w.layer = n.layer AND w.idx = n.idx
    LEFT JOIN latest_run rc ON rc.kind = 'correlation' AND rc.model_id = n.model_id
    LEFT JOIN neuron_universality u
           ON u.run_id = rc.id AND u.model_id = n.model_id AND u.layer = n.layer AND u.idx = n.idx
    """,
    """
    CREATE FUNCTION universal_neurons(threshold real DEFAULT 0.5)
    RETURNS SETOF neuron_overview LANGUAGE sql STABLE AS $$
        SELECT * FROM neuron_overview WHERE excess > threshold ORDER BY excess DESC
    $$
    """,
    """
    CREATE VIEW universal_neuron AS
    SELECT * FROM universal_neurons(0.5)
    """,
    """
    CREATE VIEW layer_universality AS
    SELECT m.name AS model, c.name AS cohort, u.model_id, u.layer, u.run_id,
           count(*) AS n_neurons,
           count(*) FILTER (WHERE u.excess > 0.5) AS n_universal,
           avg((u.excess > 0.5)::int)::float8 AS universal_share,
           avg(u.mean_corr) AS avg_mean_corr,
           avg(u.mean_baseline) AS avg_mean_baseline
    FROM neuron_universality u
    JOIN latest_run rc ON rc.id = u.run_id
    JOIN model m ON m.id = u.model_id
    LEFT JOIN cohort c ON c.id = m.cohort_id
    GROUP BY m.name, c.name, u.model_id, u.layer, u.run_id
    """,
    """
    CREATE VIEW family_members AS
    SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models,
           m.name AS model, m.seed_label, fm.model_id, fm.layer, fm.idx, fm.score, f.run_id
    FROM family f
    JOIN family_member fm ON fm.family_id = f.id
    JOIN model m ON m.id = fm.model_id
    """,
    # A neuron's best-correlated neuron in every other model it was correlated with (newest done
    # run per pair). Reference neurons have one row per partner; partner neurons one (the reference).
    """
    CREATE VIEW best_partner AS
    SELECT DISTINCT ON (p.model_id, p.layer, p.idx, p.other_model_id)
           m.name AS model, p.model_id, p.layer, p.idx,
           om.name AS other_model, om.seed_label AS other_seed, p.other_model_id,
           p.max_corr, p.best_layer, p.best_idx, p.baseline_max,
           p.max_corr - p.baseline_max AS excess, p.run_id
    FROM pair_correlation p
    JOIN run r ON r.id = p.run_id AND r.status = 'done'
    JOIN model m ON m.id = p.model_id
    JOIN model om ON om.id = p.other_model_id
    ORDER BY p.model_id, p.layer, p.idx, p.other_model_id, r.finished_at DESC NULLS LAST, r.id DESC
    """,
    # "Which neurons fire on ' the'?": per vocabulary token, the neurons that keep it among their
    # top tokens, with the mean and max hook_post activation when it is the current token.
    """
    CREATE VIEW token_neuron AS
    SELECT v.text AS token, ta.token_id, m.name AS model, ta.model_id, ta.layer, ta.idx,
           ta.count, ta.mean_act, ta.max_act
    FROM token_activation ta
    JOIN latest_run r ON r.id = ta.run_id AND r.kind = 'stats'
    JOIN model m ON m.id = ta.model_id
    JOIN vocab_token v ON v.tokenizer_id = m.tokenizer_id AND v.token_id = ta.token_id
    """,
    # Top activating examples as text: up to 10 tokens before the activating token, the token, and
    # 3 after, decoded from the stored dataset rows (positions are 0-based within a row).
    """
    CREATE VIEW top_example_text AS
    SELECT m.name AS model, e.model_id, e.layer, e.idx, e.rank, e.value, e.row_idx, e.position,
           r.dataset_id, ctx.before, ctx.token, ctx.after
    FROM top_example e
    JOIN latest_run r ON r.id = e.run_id AND r.kind = 'stats'
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
    ) ctx
    """,
]

DROP_VIEWS = [
    "DROP VIEW IF EXISTS top_example_text",
    "DROP VIEW IF EXISTS token_neuron",
    "DROP VIEW IF EXISTS best_partner",
    "DROP VIEW IF EXISTS family_members",
    "DROP VIEW IF EXISTS layer_universality",
    "DROP VIEW IF EXISTS universal_neuron",
    "DROP FUNCTION IF EXISTS universal_neurons(real)",
    "DROP VIEW IF EXISTS neuron_overview",
    "DROP VIEW IF EXISTS latest_run",
]
