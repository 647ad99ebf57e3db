"""Ingestion orchestration: load a model, stream a dataset through it once, checkpoint, publish.

``ingest_model(engine, source, dataset=...)`` is what ``atlas ingest`` runs (``run_weights`` and
``run_stats`` are the two run kinds, each ``(engine, model, [dataset,] options) -> RunOutcome``):

1. checks the inputs before anything is written (model loads, dataset exists, same tokenizer,
   context length ≤ n_ctx), then registers the model (tokenizer, vocabulary, cohort, neurons);
2. a ``weights`` run: ``atlas.ingest.math.weights`` on the processed weights (no data needed);
3. a ``stats`` run: one streaming pass over the dataset's rows — ``hook_pre`` moments, min/max and
   histogram, ``hook_post`` mean/max/firing frequency, exact top-k examples and the per-token
   table (``atlas.ingest.math.moments.NeuronStatsAccumulator``) over the positions the dataset's filter rule
   keeps, and in the same pass the most negative examples and quantile examples of every neuron
   (``atlas.ingest.math.example_sampling.ExampleSampler``, table ``sampled_example``). Accumulators are checkpointed every ``checkpoint_every`` tokens (``atlas.ingest.checkpoint``:
   bound to this run, database, model and dataset); a killed run resumes from its checkpoint when
   the same command runs again and ends with results identical to an uninterrupted run.

Each run's results are published in one transaction (``atlas.runs``); the same model, dataset and
parameters again is a no-op unless ``force``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.activations import kept_token_mask, mlp_activations
from atlas.ingest.checkpoint import Checkpoint, payload_bytes
from atlas.ingest.math.example_sampling import ExampleSampler
from atlas.ingest.math.moments import HIST_EDGES, HIST_RANGE, NeuronStatsAccumulator, histogram_edges
from atlas.ingest.math.weights import model_weight_stats
from atlas.ingest.models import LoadedModel, load_model
from atlas.ingest.runs.common import Progress, RunOptions, RunOutcome
from atlas.ingest.zoo import checkpoint_name
from atlas.ingest.store import DatasetInfo, iter_dataset_batches, model_id_by_name, register_model, resolve_dataset
from atlas.runs import begin_run


@dataclass(frozen=True)
class TrainingStep:
    """Where a model sits in a training: its optimizer ``step``, the ``train_tokens`` seen by then,
    ``checkpoint_of`` (the name of the registered final model; None for that model itself) and the
    hub ``revision`` it is published at (Pythia: ``step1000``; None for a local directory)."""

    step: int
    train_tokens: int | None = None
    checkpoint_of: str | None = None
    revision: str | None = None

    def parent_id(self, engine: Engine) -> int | None:
        if self.step < 0:
            raise AtlasError(f"--step must be 0 or more, got {self.step}")
        if self.checkpoint_of is None:
            return None
        found = model_id_by_name(engine, self.checkpoint_of)
        if found is None:
            raise AtlasError(f"no model {self.checkpoint_of!r} in the atlas — register the model whose checkpoint "
                             "this is first (`atlas ingest --model …`), then its checkpoints")
        return found


@dataclass
class StatsOptions(RunOptions):
    """Parameters of a stats pass. Those in ``run_params`` identify the run; the rest only affect speed."""

    top_k: int = 20
    bottom_k: int = 10  # most negative examples
    quantiles: int = 5  # quantile examples: bands of the firing distribution ...
    per_quantile: int = 2  # ... examples per band ...
    reservoir: int = 64  # ... drawn from a uniform sample of this many firing tokens per neuron
    top_tokens: int = 100
    min_token_count: int = 1
    hist_range: tuple[float, float] = HIST_RANGE
    hist_edges: int = HIST_EDGES
    batch_size: int = 16  # rows per forward pass
    checkpoint_every: int | None = None  # tokens between checkpoints; None: 1M, or 20M for states over 1 GB
    batch_delay: float = 0.0  # seconds to sleep per batch (tests: to kill a run mid-way)

    def run_params(self, info: DatasetInfo) -> dict[str, Any]:
        edges = histogram_edges(*self.hist_range, self.hist_edges)
        return {
            "moments_of": "hook_pre", "firing_of": "hook_post > 0", "examples_of": "hook_post",
            "top_k": self.top_k, "top_tokens": self.top_tokens, "min_token_count": self.min_token_count,
            "token_rank": "mean hook_post, descending",
            "histogram_edges": [float(e) for e in edges], "histogram_semantics": "numpy: [e_i, e_i+1), last closed; outside not counted",
            "filter_rule": info.filter_rule, "dataset_content_hash": info.content_hash,
            "moments": "population variance; skew and kurtosis biased (scipy defaults), kurtosis non-excess",
            "sampled_examples": {
                "bottom_k": self.bottom_k, "quantiles": self.quantiles, "per_quantile": self.per_quantile,
                "reservoir": self.reservoir,
                "rule": "bottom: smallest hook_post; quantile: a uniform sample (priority sampling, keys hashed from "
                        "the token's dataset position) of the tokens with hook_post > 0, cut into equal bands by "
                        "value, examples of smallest key in each band"},
        }


# ---------------------------------------------------------------- checks

def check_compatible(loaded: LoadedModel, info: DatasetInfo) -> None:
    """Refuse a dataset made with another tokenizer, or rows longer than the model's context."""
    if info.tokenizer_hash != loaded.tokenizer_hash:
        raise AtlasError(f"dataset {info.name} was tokenised with another tokenizer ({info.tokenizer_hash}) than "
                         f"{loaded.name} uses ({loaded.tokenizer_hash}) — build a dataset with `atlas dataset build "
                         f"--model {loaded.source}`")
    if info.context_length > loaded.n_ctx:
        raise AtlasError(f"dataset {info.name} has context length {info.context_length} but {loaded.name} takes at "
                         f"most {loaded.n_ctx} tokens — build a dataset with --context-length {loaded.n_ctx} or less")


# ---------------------------------------------------------------- runs

def run_weights(engine: Engine, model: LoadedModel, options: RunOptions | None = None, *, k: int = 20) -> RunOutcome:
    """The ``weights`` run of a model: statistics of its processed weights (no data needed)."""
    options = options or RunOptions()
    model_id = register_model(engine, model)
    params = {"weight_processing": model.weight_processing, "top_bottom_tokens": k,
              "vocab_composition": "cos(w_out, W_U[:, v]); population moments; kurtosis non-excess",
              "token_rank": "W_U[:, v] . w_out"}
    run = begin_run(engine, "weights", model_id=model_id, params=params, device=model.device, force=options.force)
    if run is None:
        return RunOutcome("weights", model.name, None, "skipped")
    t0 = time.perf_counter()
    with run:
        frame = model_weight_stats(model, k=k).frame(model_id, model.d_mlp)
        run.publish({"weight_stats": frame})
    return RunOutcome("weights", model.name, run.id, "done", seconds=time.perf_counter() - t0)


def run_stats(engine: Engine, model: LoadedModel, dataset: DatasetInfo | str | int,
              options: StatsOptions | None = None) -> RunOutcome:
    """The ``stats`` run of a model over ``dataset``: one streaming pass, checkpointed, resumable."""
    options = options or StatsOptions()
    info = resolve_dataset(engine, dataset)
    check_compatible(model, info)
    if options.batch_size < 1:
        raise AtlasError(f"--batch-size must be positive, got {options.batch_size}")
    model_id = register_model(engine, model)
    run = begin_run(engine, "stats", model_id=model_id, dataset_id=info.id, params=options.run_params(info),
                    device=model.device, tokens_total=info.n_tokens, force=options.force)
    if run is None:
        return RunOutcome("stats", model.name, None, "skipped")
    t0 = time.perf_counter()
    with run:
        checkpoint = Checkpoint.for_run(run, models=[model.revision], dataset=info.content_hash, warn=options.log)
        stats, samples, tokens_run, resumed_at = _stream(run, checkpoint, model, info, options)
        frames = stats.frames(model_id, model.d_mlp, info.context_length)
        frames["sampled_example"] = samples.frame(model_id, model.d_mlp, info.context_length)
        run.publish(frames)
        checkpoint.discard()
    return RunOutcome("stats", model.name, run.id, "done", tokens=tokens_run, seconds=time.perf_counter() - t0,
                      resumed_at=resumed_at, extra={"rows": {k: v.height for k, v in frames.items()}})


def _token_sum_dtype(loaded: LoadedModel) -> torch.dtype:
    # float64 per-token sums unless the [d_vocab, n_neurons] table would be huge (GPT-2 scale, on a GPU)
    big = loaded.d_vocab * loaded.n_neurons > 1 << 28
    return torch.float32 if big and str(loaded.device).startswith("cuda") else torch.float64


def _stream(run, checkpoint: Checkpoint, loaded: LoadedModel, info: DatasetInfo, options: StatsOptions):
    """Stream the dataset's rows once; returns (finalized stats, sampled examples, tokens streamed here,
    tokens resumed at)."""
    ctx = info.context_length
    acc = NeuronStatsAccumulator(loaded.n_neurons, loaded.d_vocab, top_k=options.top_k,
                                 edges=histogram_edges(*options.hist_range, options.hist_edges),
                                 device=loaded.device, token_sum_dtype=_token_sum_dtype(loaded))
    sampler = ExampleSampler(loaded.n_neurons, bottom_k=options.bottom_k, reservoir=options.reservoir,
                             quantiles=options.quantiles, per_quantile=options.per_quantile, device=loaded.device)
    rows_done = 0
    state = checkpoint.load(map_location=acc.device) if options.resume else checkpoint.discard()
    if state is not None:
        acc.load_state_dict(state["accumulators"])
        sampler.load_state_dict(state["samples"])
        rows_done = int(state["rows_done"])
        options.log(f"stats {loaded.name}: resuming at {rows_done * ctx:,} tokens (row {rows_done} of {info.n_rows})")
    start_tokens = rows_done * ctx
    every = options.checkpoint_every or (20_000_000 if payload_bytes(acc.state_dict()) > 1 << 30 else 1_000_000)
    last_ckpt_tokens = start_tokens
    with Progress(run, info.n_tokens, start_tokens, f"stats {loaded.name}", options.progress) as progress:
        for row0, tokens in iter_dataset_batches(run.engine, info, options.batch_size, start_row=rows_done):
            acts = mlp_activations(loaded, tokens, hooks=("pre", "post"))
            b = tokens.shape[0]
            tokens = tokens.to(loaded.device)
            keep = kept_token_mask(tokens, info.filter_rule).reshape(-1)
            pre = acts["pre"].reshape(b * ctx, -1)[keep]
            post = acts["post"].reshape(b * ctx, -1)[keep]
            token_ids = tokens.reshape(-1)[keep]
            token_index = (row0 * ctx + torch.arange(b * ctx, device=tokens.device))[keep]
            acc.update(pre, post, token_ids, token_index)
            sampler.update(post, token_index)
            rows_done = row0 + b
            progress.advance(b * ctx)
            if rows_done * ctx - last_ckpt_tokens >= every and rows_done < info.n_rows:
                progress.flush()
                checkpoint.save({"rows_done": rows_done, "batch_size": options.batch_size,
                                 "accumulators": acc.state_dict(), "samples": sampler.state_dict()})
                last_ckpt_tokens = rows_done * ctx
            if options.batch_delay:
                time.sleep(options.batch_delay)
        progress.close()
    stats = acc.finalize(top_tokens=options.top_tokens, min_token_count=options.min_token_count)
    return stats, sampler.finalize(), rows_done * ctx - start_tokens, start_tokens


# ---------------------------------------------------------------- one model, end to end

def ingest_model(engine: Engine, source: str, *, dataset: str | int | DatasetInfo | None, name: str | None = None,
                 cohort: str | None = None, seed_label: str | None = None, options: StatsOptions | None = None,
                 weights: bool = True, stats: bool = True, loaded: LoadedModel | None = None,
                 checkpoint: TrainingStep | None = None, revision: str | None = None) -> list[RunOutcome]:
    """Load ``source`` (at hub ``revision``; a ``checkpoint``'s own revision wins), register it (in
    ``cohort``, with ``seed_label``; a training ``checkpoint`` with its step), and run its ``weights``
    and ``stats`` runs. Every check on the inputs happens before anything is written to the database."""
    options = options or StatsOptions()
    if stats and dataset is None:
        raise AtlasError("--dataset is required for the statistics pass (or pass --no-stats)")
    info = resolve_dataset(engine, dataset) if stats else None
    parent = checkpoint.parent_id(engine) if checkpoint else None
    loaded = loaded or load_model(source, device=options.device, name=name,
                                  revision=checkpoint.revision if checkpoint else revision)
    if checkpoint and checkpoint.checkpoint_of == loaded.name:
        raise AtlasError(f"checkpoint {loaded.name} would be a checkpoint of itself — give it its own --name "
                         f"(e.g. {checkpoint_name(loaded.name, checkpoint.step)})")
    if info is not None:
        check_compatible(loaded, info)
    register_model(engine, loaded, cohort=cohort, seed_label=seed_label, checkpoint_of=parent,
                   step=checkpoint.step if checkpoint else None,
                   train_tokens=checkpoint.train_tokens if checkpoint else None)
    outcomes = []
    if weights:
        outcomes.append(run_weights(engine, loaded, options))
    if stats:
        outcomes.append(run_stats(engine, loaded, info, options))
    return outcomes
