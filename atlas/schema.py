"""The atlas schema: SQLAlchemy 2.0 typed models. This module is the truth; migrations follow it.

The database documents itself: each class docstring becomes its table's COMMENT and each column
carries a ``comment`` (meaning, unit, which run kind fills it), so ``\\d+ table`` in psql and the
UI's SQL page say what a column means. tests/test_views.py checks that nothing is left without one.
(Over 400 lines for that reason: one class per table and one documented line per column.)

Every result row belongs to a ``run``. A neuron is ``(model_id, layer, idx)`` everywhere; result
tables carry those three columns (no surrogate neuron id) so SQL reads naturally and COPY loads
need no id lookups. Tables, in the order data flows:

- ``tokenizer``, ``vocab_token``: a tokenizer (by content hash) and its vocabulary (id → text).
- ``cohort``, ``model``, ``neuron``: models that differ only by seed, their shapes and provenance.
- ``dataset``, ``dataset_row``: tokenised context rows that examples point into.
- ``run``: one computation (kind, subject, parameters, status, progress, timings, error).
- ``activation_stats``, ``top_example``, ``sampled_example``, ``token_activation``: per-neuron
  activation statistics and examples.
- ``example_activation``: activations over the stored examples' windows (a neuron's own, and its
  best partners' over a reference neuron's top examples).
- ``weight_stats``: per-neuron statistics of processed weights (no data needed).
- ``pair_correlation``, ``correlation_edge``, ``neuron_universality``: cross-seed correlation.
- ``neuron_feature``, ``neuron_label``, ``family``, ``family_member``: explanations and families.
"""

from __future__ import annotations

import inspect
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__table__.comment = table_comment(cls.__doc__)


def table_comment(docstring: str | None) -> str:
    """A class docstring as one line of plain text (reST double backquotes dropped)."""
    return " ".join(inspect.cleandoc(docstring or "").replace("``", "").split())


def _created() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now(), comment="when the row was written")


def _id(table: str) -> Mapped[int]:
    return mapped_column(primary_key=True, comment=f"the {table}'s id ({table}_id in other tables)")


def _run_fk(kind: str) -> Mapped[int]:
    return mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=True,
                         comment=f"the {kind} run that computed the row (run.id)")


def _model_fk(primary_key: bool = True, comment: str = "the neuron's model (model.id)") -> Mapped[int]:
    return mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=primary_key, comment=comment)


def _layer() -> Mapped[int]:
    return mapped_column(LAYER, primary_key=True, comment="the neuron's transformer block, 0-based")


def _idx() -> Mapped[int]:
    return mapped_column(primary_key=True, comment="the neuron's index in its layer's MLP (hook_post[..., idx]), 0-based")


REAL = sa.REAL  # float4: plenty for statistics, half the bytes of float8
LAYER = sa.SmallInteger


# ---------------------------------------------------------------- vocabulary

class Tokenizer(Base):
    """A tokenizer, identified by a hash of its vocabulary and merges."""

    __tablename__ = "tokenizer"
    id: Mapped[int] = _id("tokenizer")
    name: Mapped[str] = mapped_column(comment="the tokenizer's name (e.g. the hub name it was loaded from)")
    content_hash: Mapped[str] = mapped_column(unique=True, comment="hash of the vocabulary and merges: same hash, same tokenizer")
    vocab_size: Mapped[int] = mapped_column(comment="number of tokens in the vocabulary")
    bos_token_id: Mapped[int | None] = mapped_column(comment="beginning-of-sequence token id (null: none)")
    eos_token_id: Mapped[int | None] = mapped_column(comment="end-of-sequence token id (null: none)")
    pad_token_id: Mapped[int | None] = mapped_column(comment="padding token id (null: none)")
    created_at: Mapped[datetime] = _created()


class VocabToken(Base):
    """One vocabulary entry: ``text`` is the decoded string (' the' with its leading space)."""

    __tablename__ = "vocab_token"
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id", ondelete="CASCADE"), primary_key=True,
                                              comment="the tokenizer (tokenizer.id)")
    token_id: Mapped[int] = mapped_column(primary_key=True, comment="the token's id in the vocabulary")
    text: Mapped[str] = mapped_column(comment="the token decoded alone, leading space included (' the')")
    __table_args__ = (sa.Index("ix_vocab_token_text", "text"),)


# ---------------------------------------------------------------- models

class Cohort(Base):
    """Models of one architecture and tokenizer that differ only by training seed."""

    __tablename__ = "cohort"
    id: Mapped[int] = _id("cohort")
    name: Mapped[str] = mapped_column(unique=True, comment="the cohort's name (e.g. demo)")
    tokenizer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tokenizer.id"),
                                                     comment="the tokenizer its models share (tokenizer.id)")
    description: Mapped[str | None] = mapped_column(comment="free text")
    created_at: Mapped[datetime] = _created()


class Model(Base):
    """A transformer LM as loaded through TransformerLens, with shapes and provenance."""

    __tablename__ = "model"
    id: Mapped[int] = _id("model")
    name: Mapped[str] = mapped_column(unique=True, comment="the model's name in the atlas (what neuron links carry)")
    source: Mapped[str] = mapped_column(comment="hub name or local checkpoint path it was loaded from")
    revision: Mapped[str | None] = mapped_column(comment="hub revision or checkpoint content hash")
    architecture: Mapped[str] = mapped_column(comment="architecture name from its config (e.g. GPT2LMHeadModel)")
    cohort_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cohort.id", ondelete="SET NULL"), index=True,
                                                  comment="the seed cohort it belongs to (cohort.id; null: none)")
    seed_label: Mapped[str | None] = mapped_column(comment="its seed within the cohort (e.g. s0)")
    n_layers: Mapped[int] = mapped_column(comment="number of transformer blocks")
    d_model: Mapped[int] = mapped_column(comment="width of the residual stream")
    d_mlp: Mapped[int] = mapped_column(comment="MLP neurons per layer")
    n_heads: Mapped[int] = mapped_column(comment="attention heads per layer")
    d_head: Mapped[int] = mapped_column(comment="width of one attention head")
    n_ctx: Mapped[int] = mapped_column(comment="longest context the model accepts, in tokens")
    d_vocab: Mapped[int] = mapped_column(comment="rows of the unembedding (may exceed the tokenizer's vocabulary)")
    act_fn: Mapped[str] = mapped_column(comment="MLP activation function (e.g. gelu_new)")
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id"), comment="its tokenizer (tokenizer.id)")
    weight_processing: Mapped[dict[str, Any]] = mapped_column(
        server_default=sa.text("'{}'::jsonb"), comment="how weights were processed before weight statistics (JSON)")
    created_at: Mapped[datetime] = _created()
    # Training checkpoints (migration 0006): a checkpoint is a model of its own; seeds saved at one
    # step form a cohort of their own, correlated like any other (universality over training).
    step: Mapped[int | None] = mapped_column(
        comment="the optimizer step this checkpoint was saved at (null: not known); the final model has its last step")
    train_tokens: Mapped[int | None] = mapped_column(
        sa.BigInteger, comment="training tokens the model had seen at that step (null: not known)")
    checkpoint_of: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model.id", ondelete="CASCADE"), index=True,
        comment="the model whose training this is a checkpoint of (model.id; null: the model itself, or not known)")


class Neuron(Base):
    """One MLP neuron: ``blocks.{layer}.mlp.hook_post[..., idx]``."""

    __tablename__ = "neuron"
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()


# ---------------------------------------------------------------- token datasets

class Dataset(Base):
    """Token rows of a fixed context length (BOS + tokens), with how they were made."""

    __tablename__ = "dataset"
    id: Mapped[int] = _id("dataset")
    name: Mapped[str] = mapped_column(unique=True, comment="the dataset's name in the atlas")
    source: Mapped[str] = mapped_column(comment="where the text came from (files, a hub dataset)")
    tokenizer_id: Mapped[int] = mapped_column(sa.ForeignKey("tokenizer.id"), comment="the tokenizer (tokenizer.id)")
    context_length: Mapped[int] = mapped_column(comment="tokens per row, BOS included")
    n_rows: Mapped[int] = mapped_column(comment="number of rows (dataset_row)")
    n_tokens: Mapped[int] = mapped_column(sa.BigInteger, comment="tokens in all rows (n_rows × context_length)")
    n_kept_tokens: Mapped[int] = mapped_column(sa.BigInteger, comment="tokens left after filter_rule (used by correlations)")
    # {"exclude_token_ids": [...], "description": "..."}: positions dropped from correlations
    filter_rule: Mapped[dict[str, Any]] = mapped_column(
        comment="positions dropped from correlations: {exclude_token_ids, description} (JSON)")
    content_hash: Mapped[str] = mapped_column(comment="hash of the token rows: same hash, same data")
    seed: Mapped[int | None] = mapped_column(comment="seed of the sampling that built it (null: none)")
    params: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"),
                                                   comment="how it was built (JSON)")
    created_at: Mapped[datetime] = _created()


class DatasetRow(Base):
    """One context row of a dataset, as token ids (top examples point into these rows)."""

    __tablename__ = "dataset_row"
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True,
                                            comment="the dataset (dataset.id)")
    row_idx: Mapped[int] = mapped_column(primary_key=True, comment="the row's index in the dataset, 0-based")
    tokens: Mapped[list[int]] = mapped_column(comment="the row's token ids, BOS first (context_length of them)")


# ---------------------------------------------------------------- runs

RUN_STATUSES = ("queued", "running", "done", "failed")


class Run(Base):
    """One computation. ``key`` identifies what was computed (kind, subject, parameters), so
    repeating a done run is a no-op. Results appear in one transaction with status ``done``. Its subject
    is (kind, model_id, cohort_id); the newest done run of a subject is the current one (view latest_run)."""

    __tablename__ = "run"
    id: Mapped[int] = _id("run")
    kind: Mapped[str] = mapped_column(comment="what it computes: stats | weights | correlation | examples | classify")
    key: Mapped[str] = mapped_column(unique=True, comment="kind, subject and a hash of params: same key, same computation")
    model_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model.id", ondelete="CASCADE"), index=True,
        comment="its subject model: the model (stats, weights), the reference model (correlation), the one model (classify)")
    cohort_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cohort.id", ondelete="CASCADE"), index=True,
                                                  comment="its subject cohort (correlation, classify; null otherwise)")
    dataset_id: Mapped[int | None] = mapped_column(sa.ForeignKey("dataset.id", ondelete="CASCADE"),
                                                   comment="the token dataset it read (null: weights runs need none)")
    params: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"),
                                                   comment="its parameters (JSON; stats runs keep histogram_edges here)")
    code_version: Mapped[str] = mapped_column(comment="package version and git commit that computed it")
    device: Mapped[str | None] = mapped_column(comment="where it ran (cpu, cuda:0)")
    status: Mapped[str] = mapped_column(server_default="queued", comment="queued | running | done | failed")
    tokens_done: Mapped[int] = mapped_column(sa.BigInteger, server_default="0", comment="dataset tokens processed so far")
    tokens_total: Mapped[int | None] = mapped_column(sa.BigInteger, comment="dataset tokens to process (null: unknown)")
    error: Mapped[str | None] = mapped_column(comment="one-line error of a failed run")
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), comment="when it (last) started")
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True),
                                                          comment="last sign of life of the process computing it")
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True),
                                                         comment="when it became done or failed (newest done wins)")
    __table_args__ = (
        sa.CheckConstraint(f"status IN {RUN_STATUSES!r}", name="status"),
        sa.Index("ix_run_kind_status", "kind", "status"),
    )


# ---------------------------------------------------------------- activation statistics

class ActivationStats(Base):
    """Distribution of ``hook_pre`` (moments, histogram) and firing of ``hook_post`` over a dataset.
    Statistics undefined for a neuron (e.g. skew of a constant) are NULL, never 0. Written by stats runs."""

    __tablename__ = "activation_stats"
    run_id: Mapped[int] = _run_fk("stats")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    count: Mapped[int] = mapped_column(sa.BigInteger, comment="dataset tokens the statistics are over")
    mean: Mapped[float | None] = mapped_column(comment="mean of hook_pre (the MLP pre-activation)")
    variance: Mapped[float | None] = mapped_column(comment="population variance of hook_pre")
    skew: Mapped[float | None] = mapped_column(comment="skewness of hook_pre (null: constant)")
    kurtosis: Mapped[float | None] = mapped_column(comment="non-excess kurtosis of hook_pre: a Gaussian gives 3 (null: constant)")
    pre_min: Mapped[float | None] = mapped_column(comment="smallest hook_pre")
    pre_max: Mapped[float | None] = mapped_column(comment="largest hook_pre")
    post_mean: Mapped[float | None] = mapped_column(comment="mean of hook_post (the activation after the nonlinearity)")
    post_max: Mapped[float | None] = mapped_column(comment="largest hook_post")
    act_frequency: Mapped[float | None] = mapped_column(comment="share of tokens with hook_post > 0, in 0..1")
    histogram: Mapped[list[int] | None] = mapped_column(
        comment="hook_pre counts between the stats run's params->histogram_edges (values outside not counted)")
    __table_args__ = (sa.Index("ix_activation_stats_model", "model_id", "layer", "idx"),)


class TopExample(Base):
    """The k highest ``hook_post`` activations of a neuron, as positions in the dataset's rows. Written by stats runs."""

    __tablename__ = "top_example"
    run_id: Mapped[int] = _run_fk("stats")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="1 = the highest activation")
    row_idx: Mapped[int] = mapped_column(comment="the dataset row of the example (dataset_row.row_idx of the run's dataset)")
    position: Mapped[int] = mapped_column(sa.SmallInteger, comment="the activating token's position in the row, 0-based")
    value: Mapped[float] = mapped_column(REAL, comment="hook_post at that token")


class SampledExample(Base):
    """Examples of a neuron beyond its top activations, from the same streaming pass: ``quantile``
    examples drawn from a uniform sample of the tokens where it fires (``hook_post > 0``), evenly
    across that distribution's quantiles, and ``bottom`` examples, its most negative ``hook_post``.
    Written by stats runs."""

    __tablename__ = "sampled_example"
    run_id: Mapped[int] = _run_fk("stats")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    kind: Mapped[str] = mapped_column(primary_key=True, comment="quantile | bottom")
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True,
                                      comment="quantile: 1 = lowest activation of the sample; bottom: 1 = most negative")
    row_idx: Mapped[int] = mapped_column(comment="the dataset row of the example (dataset_row.row_idx of the run's dataset)")
    position: Mapped[int] = mapped_column(sa.SmallInteger, comment="the example token's position in the row, 0-based")
    value: Mapped[float] = mapped_column(REAL, comment="hook_post at that token")
    quantile: Mapped[float | None] = mapped_column(
        REAL, comment="quantile examples: where the value sits in the neuron's firing distribution, 0..1 "
                      "(estimated from the sample); null for bottom examples")
    __table_args__ = (sa.Index("ix_sampled_example_model", "model_id", "layer", "idx"),)


class ExampleActivation(Base):
    """``hook_post`` of one neuron over the window of a stored example: every token's activation, so
    an example can be coloured token by token. The example belongs to neuron (model_id, layer, idx)
    (its top, quantile or bottom example of that rank); the activations are of (source_model_id,
    source_layer, source_idx): the neuron itself, or, for a reference neuron's top examples, its best
    partner in another seed on the same text. Written by examples runs."""

    __tablename__ = "example_activation"
    run_id: Mapped[int] = _run_fk("examples")
    model_id: Mapped[int] = _model_fk(comment="the model of the neuron whose example it is (model.id)")
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    kind: Mapped[str] = mapped_column(primary_key=True, comment="which stored example: top | quantile | bottom")
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="its rank among examples of that kind")
    source_model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True,
        comment="whose activations: the neuron's own model, or a partner model (model.id)")
    source_layer: Mapped[int] = mapped_column(LAYER, comment="layer of the neuron whose activations these are")
    source_idx: Mapped[int] = mapped_column(comment="index of the neuron whose activations these are")
    row_idx: Mapped[int] = mapped_column(comment="the example's dataset row (dataset_row.row_idx of the run's dataset)")
    position: Mapped[int] = mapped_column(sa.SmallInteger, comment="the example token's position in the row, 0-based")
    start: Mapped[int] = mapped_column(sa.SmallInteger, comment="position of the window's first token in the row")
    activations: Mapped[list[float]] = mapped_column(
        comment="hook_post of the source neuron at positions start, start + 1, … of the row")
    __table_args__ = (sa.Index("ix_example_activation_model", "model_id", "layer", "idx"),)


class TokenActivation(Base):
    """Per neuron and vocabulary token: mean and max ``hook_post`` when that token is current.
    Only each neuron's top tokens (by mean) are kept. Written by stats runs."""

    __tablename__ = "token_activation"
    run_id: Mapped[int] = _run_fk("stats")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    token_id: Mapped[int] = mapped_column(primary_key=True, comment="the current token (vocab_token.token_id)")
    count: Mapped[int] = mapped_column(comment="dataset tokens equal to it")
    mean_act: Mapped[float] = mapped_column(REAL, comment="mean hook_post over those tokens")
    max_act: Mapped[float] = mapped_column(REAL, comment="largest hook_post over those tokens")
    __table_args__ = (sa.Index("ix_token_activation_token", "token_id", "model_id"),)


# ---------------------------------------------------------------- weight statistics

class WeightStats(Base):
    """Statistics of processed weights (LayerNorm folded, writing weights and W_U centred).
    ``vocab_*`` describe z_v = cos(w_out, W_U[:, v]) over the vocabulary. Written by weights runs."""

    __tablename__ = "weight_stats"
    run_id: Mapped[int] = _run_fk("weights")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    w_in_norm: Mapped[float] = mapped_column(comment="‖w_in‖: L2 norm of the neuron's input weights")
    w_out_norm: Mapped[float] = mapped_column(comment="‖w_out‖: L2 norm of the neuron's output weights")
    input_bias: Mapped[float] = mapped_column(comment="b_in: the neuron's input bias")
    in_out_sim: Mapped[float | None] = mapped_column(comment="cos(w_in, w_out) (null: a zero vector)")
    l2_penalty: Mapped[float] = mapped_column(comment="‖w_in‖² + ‖w_out‖²")
    vocab_mean: Mapped[float | None] = mapped_column(comment="mean over the vocabulary of cos(w_out, W_U[:, v])")
    vocab_var: Mapped[float | None] = mapped_column(comment="variance over the vocabulary of cos(w_out, W_U[:, v])")
    vocab_skew: Mapped[float | None] = mapped_column(comment="skewness over the vocabulary of cos(w_out, W_U[:, v])")
    vocab_kurtosis: Mapped[float | None] = mapped_column(
        comment="non-excess kurtosis over the vocabulary of cos(w_out, W_U[:, v]) (a random direction gives ≈ 3)")
    top_token_ids: Mapped[list[int]] = mapped_column(comment="the 20 tokens whose logit w_out raises most, strongest first")
    top_token_values: Mapped[list[float]] = mapped_column(comment="their logit effects W_U[:, v] · w_out, descending")
    bottom_token_ids: Mapped[list[int]] = mapped_column(comment="the 20 tokens whose logit w_out lowers most, strongest first")
    bottom_token_values: Mapped[list[float]] = mapped_column(comment="their logit effects W_U[:, v] · w_out, ascending")
    __table_args__ = (sa.Index("ix_weight_stats_model", "model_id", "layer", "idx"),)


# ---------------------------------------------------------------- cross-seed correlation

class PairCorrelation(Base):
    """For a neuron of ``model_id`` and another model of its cohort: the best-correlated neuron
    there, its rho, and the best rho against the randomly rotated other model (baseline).
    Rows exist for reference neurons (other = each partner) and partner neurons (other = the
    reference: the column maxima). NULL rho: dead neuron (zero variance), undefined. Written by correlation runs."""

    __tablename__ = "pair_correlation"
    run_id: Mapped[int] = _run_fk("correlation")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    other_model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True,
                                                comment="the other model of the cohort (model.id)")
    max_corr: Mapped[float | None] = mapped_column(REAL, comment="largest Pearson rho with a neuron of the other model, -1..1")
    best_layer: Mapped[int | None] = mapped_column(LAYER, comment="layer of that best-correlated neuron")
    best_idx: Mapped[int | None] = mapped_column(comment="index of that best-correlated neuron")
    baseline_max: Mapped[float | None] = mapped_column(
        REAL, comment="largest rho with the randomly rotated other model's neurons (the baseline)")
    __table_args__ = (sa.Index("ix_pair_correlation_model", "model_id", "layer", "idx"),)


class CorrelationEdge(Base):
    """The top-k partner neurons of a reference neuron in one partner model, by rho. Written by correlation runs."""

    __tablename__ = "correlation_edge"
    run_id: Mapped[int] = _run_fk("correlation")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    partner_model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True,
                                                  comment="the partner model (model.id)")
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="1 = the most correlated partner neuron")
    partner_layer: Mapped[int] = mapped_column(LAYER, comment="the partner neuron's layer")
    partner_idx: Mapped[int] = mapped_column(comment="the partner neuron's index")
    rho: Mapped[float] = mapped_column(REAL, comment="Pearson correlation of the two neurons' hook_post, -1..1")
    __table_args__ = (sa.Index("ix_correlation_edge_partner", "partner_model_id", "partner_layer", "partner_idx"),)


class NeuronUniversality(Base):
    """Aggregates over a reference neuron's partners. Universal ⇔ ``excess`` above a threshold
    (the paper: 0.5), chosen at query time. NULL excess: dead neuron, never universal. Written by correlation runs."""

    __tablename__ = "neuron_universality"
    run_id: Mapped[int] = _run_fk("correlation")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    n_partners: Mapped[int] = mapped_column(sa.SmallInteger, comment="partner models it was correlated with")
    max_corr: Mapped[float | None] = mapped_column(REAL, comment="largest over partners of the best-partner rho")
    mean_corr: Mapped[float | None] = mapped_column(REAL, comment="mean over partners of the best-partner rho")
    min_corr: Mapped[float | None] = mapped_column(REAL, comment="smallest over partners of the best-partner rho")
    mean_baseline: Mapped[float | None] = mapped_column(
        REAL, comment="mean over partners of the best rho against the randomly rotated partner")
    excess: Mapped[float | None] = mapped_column(
        REAL, comment="mean_corr - mean_baseline: universal when above a threshold (the paper: 0.5); null: dead neuron")
    __table_args__ = (
        sa.Index("ix_neuron_universality_excess", "run_id", "excess"),
        sa.Index("ix_neuron_universality_model", "model_id", "layer", "idx"),
    )


# ---------------------------------------------------------------- features and families

class NeuronFeature(Base):
    """A neuron's best-explaining binary token features, by variance reduction. Written by classify runs."""

    __tablename__ = "neuron_feature"
    run_id: Mapped[int] = _run_fk("classify")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="1 = the feature that explains most")
    feature: Mapped[str] = mapped_column(comment="the binary token feature, e.g. token=' the', starts_with=a, position=3")
    feature_kind: Mapped[str] = mapped_column(comment="unigram | class | alphabet | position | ...")
    on_previous: Mapped[bool] = mapped_column(comment="true: the feature is evaluated on the previous token")
    variance_reduction: Mapped[float] = mapped_column(
        REAL, comment="share of hook_post variance the feature explains, 0..1")


class NeuronLabel(Base):
    """A family or functional-role label with its score and the evidence behind it. Written by classify runs."""

    __tablename__ = "neuron_label"
    run_id: Mapped[int] = _run_fk("classify")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    label: Mapped[str] = mapped_column(primary_key=True,
                                       comment="unigram | alphabet | previous_token | position | semantic | prediction | ...")
    score: Mapped[float] = mapped_column(comment="the statistic the label's rule thresholds (e.g. variance reduction)")
    evidence: Mapped[dict[str, Any]] = mapped_column(comment="why: the rule, the feature or tokens, the numbers (JSON)")
    __table_args__ = (sa.Index("ix_neuron_label_label", "label"),)


class Family(Base):
    """Neurons that share a label and a feature, across seeds (via partner edges) and within a model.
    Written by classify runs."""

    __tablename__ = "family"
    id: Mapped[int] = _id("family")
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("run.id", ondelete="CASCADE"), index=True,
                                        comment="the classify run that computed the row (run.id)")
    label: Mapped[str] = mapped_column(comment="the label its members share")
    name: Mapped[str] = mapped_column(comment="label and shared feature, e.g. unigram: token=' the'")
    n_members: Mapped[int] = mapped_column(comment="member neurons")
    n_models: Mapped[int] = mapped_column(comment="distinct models among the members")
    evidence: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"),
                                                     comment="the shared key, models, layers, every_seed (JSON)")


class FamilyMember(Base):
    """A neuron of a family (the family's run_id says which classify run made it)."""

    __tablename__ = "family_member"
    family_id: Mapped[int] = mapped_column(sa.ForeignKey("family.id", ondelete="CASCADE"), primary_key=True,
                                           comment="the family (family.id)")
    model_id: Mapped[int] = _model_fk()
    layer: Mapped[int] = _layer()
    idx: Mapped[int] = _idx()
    score: Mapped[float | None] = mapped_column(comment="the member's label score")
    __table_args__ = (sa.Index("ix_family_member_neuron", "model_id", "layer", "idx"),)
