"""The atlas schema: SQLAlchemy 2.0 typed models. This module is the truth; migrations follow it.

Every result row belongs to a ``run``. A neuron is ``(model_id, layer, idx)`` everywhere; result
tables carry those three columns (no surrogate neuron id) so SQL reads naturally and COPY loads
need no id lookups. Tables, in the order data flows:

- ``tokenizer``, ``vocab_token``: a tokenizer (by content hash) and its vocabulary (id → text).
- ``cohort``, ``model``, ``neuron``: models that differ only by seed, their shapes and provenance.
- ``dataset``, ``dataset_row``: tokenised context rows that examples point into.
- ``run``: one computation (kind, subject, parameters, status, progress, timings, error).
- ``activation_stats``, ``top_example``, ``token_activation``: per-neuron activation statistics.
- ``weight_stats``: per-neuron statistics of processed weights (no data needed).
- ``pair_correlation``, ``correlation_edge``, ``neuron_universality``: cross-seed correlation.
- ``neuron_feature``, ``neuron_label``, ``family``, ``family_member``: explanations and families.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dict[str, Any]: JSONB,
        list[int]: ARRAY(sa.Integer),
        list[float]: ARRAY(sa.REAL),
    }


def _created() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


def _run_fk() -> Mapped[int]:
    return mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)


def _model_fk(primary_key: bool = True) -> Mapped[int]:
    return mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=primary_key)


REAL = sa.REAL  # float4: plenty for statistics, half the bytes of float8
LAYER = sa.SmallInteger


# ---------------------------------------------------------------- vocabulary

class Tokenizer(Base):
    """A tokenizer, identified by a hash of its vocabulary and merges."""

    __tablename__ = "tokenizer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    content_hash: Mapped[str] = mapped_column(unique=True)
    vocab_size: Mapped[int]
    bos_token_id: Mapped[int | None]
    eos_token_id: Mapped[int | None]
    pad_token_id: Mapped[int | None]
    created_at: Mapped[datetime] = _created()


class VocabToken(Base):
    """One vocabulary entry: ``text`` is the decoded string (' the' with its leading space)."""

    __tablename__ = "vocab_token"
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id", ondelete="CASCADE"), primary_key=True)
    token_id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    __table_args__ = (sa.Index("ix_vocab_token_text", "text"),)


# ---------------------------------------------------------------- models

class Cohort(Base):
    """Models of one architecture and tokenizer that differ only by training seed."""

    __tablename__ = "cohort"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    tokenizer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tokenizer.id"))
    description: Mapped[str | None]
    created_at: Mapped[datetime] = _created()


class Model(Base):
    """A transformer LM as loaded through TransformerLens, with shapes and provenance."""

    __tablename__ = "model"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    source: Mapped[str]  # hub name or local checkpoint path
    revision: Mapped[str | None]  # hub revision or checkpoint content hash
    architecture: Mapped[str]
    cohort_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cohort.id", ondelete="SET NULL"), index=True)
    seed_label: Mapped[str | None]
    n_layers: Mapped[int]
    d_model: Mapped[int]
    d_mlp: Mapped[int]
    n_heads: Mapped[int]
    d_head: Mapped[int]
    n_ctx: Mapped[int]
    d_vocab: Mapped[int]
    act_fn: Mapped[str]
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id"))
    weight_processing: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _created()


class Neuron(Base):
    """One MLP neuron: ``blocks.{layer}.mlp.hook_post[..., idx]``."""

    __tablename__ = "neuron"
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)


# ---------------------------------------------------------------- token datasets

class Dataset(Base):
    """Token rows of a fixed context length (BOS + tokens), with how they were made."""

    __tablename__ = "dataset"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    source: Mapped[str]
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id"))
    context_length: Mapped[int]
    n_rows: Mapped[int]
    n_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    n_kept_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    # {"exclude_token_ids": [...], "description": "..."}: positions dropped from correlations
    filter_rule: Mapped[dict[str, Any]]
    content_hash: Mapped[str]
    seed: Mapped[int | None]
    params: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _created()


class DatasetRow(Base):
    __tablename__ = "dataset_row"
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True)
    row_idx: Mapped[int] = mapped_column(primary_key=True)
    tokens: Mapped[list[int]]


# ---------------------------------------------------------------- runs

RUN_STATUSES = ("queued", "running", "done", "failed")


class Run(Base):
    """One computation. ``key`` identifies what was computed (kind, subject, parameters), so
    repeating a done run is a no-op. Results appear in one transaction with status ``done``."""

    __tablename__ = "run"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]  # stats | weights | correlation | classify
    key: Mapped[str] = mapped_column(unique=True)
    model_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), index=True)
    cohort_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cohort.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dataset.id", ondelete="CASCADE"))
    params: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))
    code_version: Mapped[str]
    device: Mapped[str | None]
    status: Mapped[str] = mapped_column(server_default="queued")
    tokens_done: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    tokens_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    error: Mapped[str | None]
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    __table_args__ = (
        sa.CheckConstraint(f"status IN {RUN_STATUSES!r}", name="status"),
        sa.Index("ix_run_kind_status", "kind", "status"),
    )


# ---------------------------------------------------------------- activation statistics

class ActivationStats(Base):
    """Distribution of ``hook_pre`` (moments, histogram) and firing of ``hook_post`` over a dataset.
    Statistics undefined for a neuron (e.g. skew of a constant) are NULL, never 0."""

    __tablename__ = "activation_stats"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger)
    mean: Mapped[float | None]
    variance: Mapped[float | None]
    skew: Mapped[float | None]
    kurtosis: Mapped[float | None]  # non-excess: a Gaussian gives 3
    pre_min: Mapped[float | None]
    pre_max: Mapped[float | None]
    post_mean: Mapped[float | None]
    post_max: Mapped[float | None]
    act_frequency: Mapped[float | None]  # share of tokens with hook_post > 0
    histogram: Mapped[list[int] | None]  # counts between the run's params["histogram_edges"]
    __table_args__ = (sa.Index("ix_activation_stats_model", "model_id", "layer", "idx"),)


class TopExample(Base):
    """The k highest ``hook_post`` activations of a neuron, as positions in the dataset's rows."""

    __tablename__ = "top_example"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    row_idx: Mapped[int]
    position: Mapped[int] = mapped_column(sa.SmallInteger)
    value: Mapped[float] = mapped_column(REAL)


class TokenActivation(Base):
    """Per neuron and vocabulary token: mean and max ``hook_post`` when that token is current.
    Only each neuron's top tokens (by mean) are kept."""

    __tablename__ = "token_activation"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(primary_key=True)
    count: Mapped[int]
    mean_act: Mapped[float] = mapped_column(REAL)
    max_act: Mapped[float] = mapped_column(REAL)
    __table_args__ = (sa.Index("ix_token_activation_token", "token_id", "model_id"),)


# ---------------------------------------------------------------- weight statistics

class WeightStats(Base):
    """Statistics of processed weights (LayerNorm folded, writing weights and W_U centred).
    ``vocab_*`` describe z_v = cos(w_out, W_U[:, v]) over the vocabulary."""

    __tablename__ = "weight_stats"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    w_in_norm: Mapped[float]
    w_out_norm: Mapped[float]
    input_bias: Mapped[float]
    in_out_sim: Mapped[float | None]
    l2_penalty: Mapped[float]
    vocab_mean: Mapped[float | None]
    vocab_var: Mapped[float | None]
    vocab_skew: Mapped[float | None]
    vocab_kurtosis: Mapped[float | None]
    top_token_ids: Mapped[list[int]]  # top 20 by W_U·w_out, descending
    top_token_values: Mapped[list[float]]
    bottom_token_ids: Mapped[list[int]]  # bottom 20, ascending
    bottom_token_values: Mapped[list[float]]
    __table_args__ = (sa.Index("ix_weight_stats_model", "model_id", "layer", "idx"),)


# ---------------------------------------------------------------- cross-seed correlation

class PairCorrelation(Base):
    """For a neuron of ``model_id`` and another model of its cohort: the best-correlated neuron
    there, its rho, and the best rho against the randomly rotated other model (baseline).
    Rows exist for reference neurons (other = each partner) and partner neurons (other = the
    reference: the column maxima). NULL rho: dead neuron (zero variance), undefined."""

    __tablename__ = "pair_correlation"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    other_model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True)
    max_corr: Mapped[float | None] = mapped_column(REAL)
    best_layer: Mapped[int | None] = mapped_column(LAYER)
    best_idx: Mapped[int | None]
    baseline_max: Mapped[float | None] = mapped_column(REAL)
    __table_args__ = (sa.Index("ix_pair_correlation_model", "model_id", "layer", "idx"),)


class CorrelationEdge(Base):
    """The top-k partner neurons of a reference neuron in one partner model, by rho."""

    __tablename__ = "correlation_edge"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    partner_model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    partner_layer: Mapped[int] = mapped_column(LAYER)
    partner_idx: Mapped[int]
    rho: Mapped[float] = mapped_column(REAL)
    __table_args__ = (sa.Index("ix_correlation_edge_partner", "partner_model_id", "partner_layer", "partner_idx"),)


class NeuronUniversality(Base):
    """Aggregates over a reference neuron's partners. Universal ⇔ ``excess`` above a threshold
    (the paper: 0.5), chosen at query time. NULL excess: dead neuron, never universal."""

    __tablename__ = "neuron_universality"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    n_partners: Mapped[int] = mapped_column(sa.SmallInteger)
    max_corr: Mapped[float | None] = mapped_column(REAL)
    mean_corr: Mapped[float | None] = mapped_column(REAL)
    min_corr: Mapped[float | None] = mapped_column(REAL)
    mean_baseline: Mapped[float | None] = mapped_column(REAL)
    excess: Mapped[float | None] = mapped_column(REAL)
    __table_args__ = (
        sa.Index("ix_neuron_universality_excess", "run_id", "excess"),
        sa.Index("ix_neuron_universality_model", "model_id", "layer", "idx"),
    )


# ---------------------------------------------------------------- features and families

class NeuronFeature(Base):
    """A neuron's best-explaining binary token features, by variance reduction."""

    __tablename__ = "neuron_feature"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    feature: Mapped[str]  # e.g. "token= the", "starts_with=a", "position=3"
    feature_kind: Mapped[str]  # unigram | class | alphabet | position | ...
    on_previous: Mapped[bool]  # evaluated on the previous token
    variance_reduction: Mapped[float] = mapped_column(REAL)


class NeuronLabel(Base):
    """A family or functional-role label with its score and the evidence behind it."""

    __tablename__ = "neuron_label"
    run_id: Mapped[int] = _run_fk()
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(primary_key=True)
    score: Mapped[float]
    evidence: Mapped[dict[str, Any]]
    __table_args__ = (sa.Index("ix_neuron_label_label", "label"),)


class Family(Base):
    """Neurons that share a label and a feature, across seeds (via partner edges) and within a model."""

    __tablename__ = "family"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"), index=True)
    label: Mapped[str]
    name: Mapped[str]  # e.g. "unigram: ' the'"
    n_members: Mapped[int]
    n_models: Mapped[int]
    evidence: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))


class FamilyMember(Base):
    __tablename__ = "family_member"
    family_id: Mapped[int] = mapped_column(sa.ForeignKey("family.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = mapped_column(LAYER, primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    score: Mapped[float | None]
    __table_args__ = (sa.Index("ix_family_member_neuron", "model_id", "layer", "idx"),)
