"""Orchestration of a cohort's cross-seed correlation run: load, stream, checkpoint, publish.

``run_correlation(engine, cohort, dataset, options)`` streams the dataset's token rows once through every
model of the cohort (reference and partners: one forward pass per model per batch), drops the
positions the dataset's stored filter rule excludes, and feeds the activations to the pure
accumulator of ``atlas.ingest.math.correlation``. When the accumulators would not fit the device, the
reference neurons are split into blocks and the data is streamed once per block.

Run lifecycle (``atlas.runs``): the same cohort + dataset + reference + rotation + seed + top-k is
one run; asking again once it is done is a no-op (``force`` recomputes). The accumulators are
checkpointed by ``atlas.ingest.checkpoint`` (bound to this run, database, models and dataset) after
each block and within a block every ``checkpoint_tokens`` kept tokens — by default automatically:
at flush points, at least 20M tokens apart, and only as often as keeps the writes within 5 % of the
run's time — so an interrupted or killed run resumes where it was when the same command is given
again (``resume``, the default). All result rows (``pair_correlation``, ``correlation_edge``,
``neuron_universality``) are published in one transaction, with the engine's provenance
(precision, device, blocks, tokens) merged into the run's ``params``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.activations import flatten_neurons, kept_token_mask, mlp_activations
from atlas.ingest.checkpoint import Checkpoint, CheckpointSchedule, payload_bytes
from atlas.ingest.math.correlation import (
    ROTATION_KINDS,
    CohortCorrelation,
    CorrelationResult,
    batch_workspace_bytes,
    combine_blocks,
    default_budget_bytes,
    plan_ref_blocks,
    result_frames,
)
from atlas.ingest.models import check_same_tokenizer, load_model, resolve_device
from atlas.ingest.runs.common import Progress, RunOptions, RunOutcome
from atlas.ingest.store import ModelRecord, cohort_models, get_dataset, iter_dataset_batches
from atlas.ingest.store.writes import frames_writer
from atlas.runs import begin_run

DEFAULT_CHECKPOINT_TOKENS = 20_000_000
CHECKPOINT_OVERHEAD = 0.05  # the share of a run's time its automatic checkpoints may cost


@dataclass
class CorrelateOptions(RunOptions):
    """Parameters of a correlation run. ``reference``, ``rotation``, ``seed`` and ``top_k`` identify
    it (with the cohort's models and the dataset); the rest only affect speed and memory."""

    reference: str | None = None  # default: the cohort's first model by seed label
    rotation: str = "orthogonal"  # or "gaussian_unit_rows" (the paper's)
    seed: int = 0  # draws the baseline's rotations
    top_k: int = 10  # partner neurons stored per reference neuron and partner
    precision: str | None = None  # GEMM inputs: fp32 | tf32 | bf16 | fp16 (default fp16 on CUDA, fp32 on CPU)
    batch_size: int | None = None  # context rows per forward pass (default ~8k tokens on CUDA, ~4k on CPU)
    block_size: int | None = None  # at most this many reference neurons per data pass (default: as many as fit)
    budget_bytes: int | None = None  # device bytes the accumulators may use (default: free memory less a reserve)
    # kept tokens between checkpoints; None: at least DEFAULT_CHECKPOINT_TOKENS apart, at flush points, and
    # only as often as keeps writing them within CHECKPOINT_OVERHEAD of the run's time (a 48 GB state at
    # paper scale takes tens of seconds to write)
    checkpoint_tokens: int | None = None
    models: tuple[str, ...] | None = None  # correlate only these models of the cohort (default: all)
    allow_mixed_shapes: bool = False  # the paper's cohorts are one architecture; refuse others unless asked
    on_batch: Callable[[int], Any] | None = None  # called with tokens_done after every batch (tests)


def choose_reference(models: list[ModelRecord], reference: str | None, cohort: str) -> tuple[ModelRecord, list[ModelRecord]]:
    """The reference (by name; default the first by seed label) and the partners, in cohort order."""
    if len(models) < 2:
        raise AtlasError(f"cohort {cohort} has {len(models)} model(s) — correlating seeds needs at least two")
    if reference is None:
        ref = models[0]
    else:
        found = [m for m in models if m.name == reference]
        if not found:
            raise AtlasError(f"model {reference} is not in cohort {cohort} (its models: "
                             f"{', '.join(m.name for m in models)})")
        ref = found[0]
    return ref, [m for m in models if m.id != ref.id]


def check_cohort_tokenizers(models: list[ModelRecord], dataset_tokenizer_id: int, cohort: str, dataset: str) -> None:
    """Refuse a cohort whose models do not share one tokenizer, or a dataset tokenised by another."""
    by_tok: dict[int, list[str]] = {}
    for m in models:
        by_tok.setdefault(m.tokenizer_id, []).append(m.name)
    if len(by_tok) > 1:
        groups = "; ".join(", ".join(names) for names in by_tok.values())
        raise AtlasError(f"the models of cohort {cohort} use different tokenizers ({groups}) — correlations compare "
                         "one token stream, so a cohort must share one tokenizer and vocabulary")
    if dataset_tokenizer_id not in by_tok:
        raise AtlasError(f"dataset {dataset} was tokenised with another tokenizer than cohort {cohort}'s — build a "
                         "dataset with the cohort's tokenizer (`atlas dataset build --model <a cohort model>`)")


def run_correlation(engine: Engine, cohort: str, dataset: str, options: CorrelateOptions | None = None) -> RunOutcome:
    """Correlate every neuron of the reference with every neuron of each other model of ``cohort``
    over ``dataset``'s kept tokens, with the random-rotation baseline; store per-neuron results.

    Returns the outcome (``skipped`` when the same run is already done; ``force`` recomputes).
    """
    options = options or CorrelateOptions()
    say = options.log
    if options.rotation not in ROTATION_KINDS:
        raise AtlasError(f"unknown rotation {options.rotation!r} — use one of {', '.join(ROTATION_KINDS)}")
    if options.top_k < 1:
        raise AtlasError(f"--top-k must be at least 1, got {options.top_k}")
    cohort_id, models = cohort_models(engine, cohort)
    if options.models is not None:
        unknown = sorted(set(options.models) - {m.name for m in models})
        if unknown:
            raise AtlasError(f"model {', '.join(unknown)} is not in cohort {cohort} — ingest it with --cohort {cohort}")
        models = [m for m in models if m.name in set(options.models)]
    info = get_dataset(engine, dataset)
    ref, partners = choose_reference(models, options.reference, cohort)
    check_cohort_tokenizers(models, info.tokenizer_id, cohort, dataset)
    shapes = {(m.n_layers, m.d_mlp) for m in models}
    if len(shapes) > 1 and not options.allow_mixed_shapes:
        listed = ", ".join(f"{m.name} {m.n_layers}×{m.d_mlp}" for m in models)
        raise AtlasError(f"the models of cohort {cohort} differ in shape (layers × d_mlp: {listed}) — a cohort is one "
                         "architecture trained with different seeds; pass --allow-mixed-shapes to correlate anyway")
    if info.n_kept_tokens < 2:
        raise AtlasError(f"dataset {dataset} keeps {info.n_kept_tokens} token(s) after its filter rule — correlations "
                         "need a dataset with more text")
    device = resolve_device(options.device)

    params = {
        "reference": ref.name, "reference_id": ref.id,
        "partners": [p.name for p in partners], "partner_ids": [p.id for p in partners],
        "rotation": options.rotation, "rotation_seed": int(options.seed), "top_k": int(options.top_k),
        "hook": "hook_post", "filter_rule": info.filter_rule,
    }
    run = begin_run(engine, "correlation", params=params, model_id=ref.id, cohort_id=cohort_id,
                    dataset_id=info.id, device=device, force=options.force)
    if run is None:
        say(f"correlation of cohort {cohort} on {dataset} (reference {ref.name}) is already done — nothing to do "
            "(--force recomputes)")
        return RunOutcome("correlation", cohort, None, "skipped")

    t0 = time.perf_counter()
    with run:
        loaded = [_load(m, device) for m in (ref, *partners)]
        tok_hash = check_same_tokenizer(loaded)
        if tok_hash != info.tokenizer_hash:
            raise AtlasError(f"dataset {dataset} was tokenised with another tokenizer than cohort {cohort}'s — build "
                             "a dataset with the cohort's tokenizer")
        checkpoint = Checkpoint.for_run(run, models=[m.revision for m in loaded], dataset=info.content_hash, warn=say)
        result, state, rows_per_batch, used_precision, resumed_at = _stream(
            run, checkpoint, loaded, ref, partners, info, device, options)
        frames = result_frames(result, model_id=ref.id, partner_model_ids=[p.id for p in partners])
        provenance = {"engine": {
            "precision": used_precision,
            "device": device, "blocks": len(state["blocks"]), "buffered": state["buffered"],
            "n_tokens": result.n_tokens, "batch_rows": rows_per_batch, "top_k_stored": result.top_k,
            # batches whose fp16 overflow re-estimated some neurons' scales / that went in as bf16
            "fp16_rescaled_batches": state["fp16_rescaled_batches"],
            "fp16_fallback_batches": state["fp16_fallback_batches"],
            "partner_baseline": ("max correlation with the reference's layers rotated at random"
                                 if result.partner_baseline_computed else
                                 "not computed: a reference layer did not fit the device in one block (NULL)"),
        }}
        run.publish(frames_writer(run.id, frames, provenance))
        checkpoint.discard()
    n_universal = int((result.excess > 0.5).sum())
    say(f"done: run {run.id}; {result.n_tokens:,} tokens; {n_universal} of {ref.n_neurons} reference neurons have "
        "excess correlation > 0.5")
    return RunOutcome("correlation", cohort, run.id, "done", tokens=state["tokens_done"] - resumed_at,
                      seconds=time.perf_counter() - t0, resumed_at=resumed_at,
                      extra={"n_universal_at_0.5": n_universal})


def _stream(run, checkpoint: Checkpoint, loaded: list, ref: ModelRecord, partners: list[ModelRecord], info,
            device: str, options: CorrelateOptions):
    """Stream the dataset once per block of reference neurons; returns the combined result, the final
    streaming state, the batch rows used, the GEMM precision and the tokens resumed at."""
    ref_shape = (ref.n_layers, ref.d_mlp)
    partner_shapes = [(p.n_layers, p.d_mlp) for p in partners]
    rows_per_batch = options.batch_size or max(1, (8192 if device.startswith("cuda") else 4096) // info.context_length)

    state = checkpoint.load() if options.resume else checkpoint.discard()
    if state is None:
        plan, rows_per_batch = _plan(device, ref.n_neurons, partner_shapes, info.context_length, rows_per_batch,
                                     adapt=options.batch_size is None, budget_bytes=options.budget_bytes,
                                     block_size=options.block_size, ref_d_mlp=ref.d_mlp)
        state = {"blocks": [list(b) for b in plan.blocks], "buffered": plan.buffered, "block": 0,
                 "next_row": 0, "tokens_done": 0, "acc": None, "results": [], "batch_rows": rows_per_batch,
                 "fp16_rescaled_batches": 0, "fp16_fallback_batches": 0}
    elif options.batch_size is None:
        rows_per_batch = int(state.get("batch_rows", rows_per_batch))
    blocks = [tuple(b) for b in state["blocks"]]
    tokens_total = info.n_kept_tokens * len(blocks)
    resumed_at = int(state["tokens_done"])
    options.log(f"correlating cohort on {info.name}: reference {ref.name}, partners "
                f"{', '.join(p.name for p in partners)}; {info.n_kept_tokens:,} kept tokens × {len(blocks)} block(s) "
                f"of reference neurons; {options.rotation} baseline (seed {options.seed}); device {device}"
                + (f"; resuming at {resumed_at:,} tokens" if resumed_at else ""))

    results = [_result_from_state(r) for r in state["results"]]
    used_precision = options.precision
    with Progress(run, tokens_total, resumed_at, f"correlate {ref.name}", options.progress) as progress:
        for b in range(state["block"], len(blocks)):
            acc = CohortCorrelation(ref_shape, partner_shapes, ref_slice=blocks[b], device=device,
                                    precision=options.precision, buffered=state["buffered"], rotation=options.rotation,
                                    rotation_seed=options.seed)
            used_precision = acc.precision
            if state["acc"] is not None:
                acc.load_state_dict(state["acc"])
                state["acc"] = None
            schedule = _schedule(options, device)
            for first_row, tokens in iter_dataset_batches(run.engine, info, rows_per_batch, start_row=state["next_row"]):
                keep = kept_token_mask(tokens, info.filter_rule).reshape(-1)
                acts = [_kept_post(model, tokens, keep) for model in loaded]
                acc.update(acts[0], acts[1:])
                del acts
                kept = int(keep.sum())
                state["next_row"] = first_row + tokens.shape[0]
                state["tokens_done"] += kept
                schedule.advance(kept)
                progress.advance(kept)
                if state["next_row"] < info.n_rows and _checkpoint_due(schedule, checkpoint, acc, options):
                    # on a GPU the state is copied to host memory and written while the run goes on
                    checkpoint.save(_checkpoint_state(state, acc, results, b), schedule,
                                    background=acc.device.type == "cuda")
                if options.on_batch is not None:
                    options.on_batch(state["tokens_done"])
            results.append(acc.finalize(options.top_k))
            state["fp16_rescaled_batches"] += acc.n_rescaled_batches
            state["fp16_fallback_batches"] += acc.n_overflow_batches
            state["next_row"] = 0
            if b + 1 < len(blocks):  # a finished block is never streamed again
                checkpoint.save(_checkpoint_state(state, None, results, b + 1))
        progress.close()
    return combine_blocks(results), state, rows_per_batch, used_precision, resumed_at


# ---------------------------------------------------------------- helpers

def _schedule(options: CorrelateOptions, device: str) -> CheckpointSchedule:
    """Every ``checkpoint_tokens`` when given; else automatic (see ``CorrelateOptions.checkpoint_tokens``).
    Until a save is measured, a GPU run expects to wait for a device-to-host copy (background write)."""
    if options.checkpoint_tokens is not None:
        return CheckpointSchedule(min_tokens=options.checkpoint_tokens, max_overhead=None)
    return CheckpointSchedule(min_tokens=DEFAULT_CHECKPOINT_TOKENS, max_overhead=CHECKPOINT_OVERHEAD,
                              assumed_rate=5e9 if str(device).startswith("cuda") else 2e8)


def _checkpoint_due(schedule: CheckpointSchedule, checkpoint: Checkpoint, acc: CohortCorrelation,
                    options: CorrelateOptions) -> bool:
    """A mid-block checkpoint now? (Never on a block's last batch: the block ends and saves right after.)
    Automatic ones wait for a flush point, so whether and when they happen changes no bit of the results,
    and for the last background write to finish."""
    if schedule.tokens_since < schedule.min_tokens:
        return False
    if options.checkpoint_tokens is None and (not acc.at_flush_point or checkpoint.writing):
        return False
    return schedule.due(payload_bytes([acc.P_total, acc.C_ref_total, *acc.C_total]))


def _plan(device: str, n_ref: int, partner_shapes: list[tuple[int, int]], context_length: int, rows: int, *,
          adapt: bool, budget_bytes: int | None, block_size: int | None, ref_d_mlp: int | None = None):
    """Reference blocks for the device's memory, and the batch rows to stream with.

    A smaller batch leaves more memory to the accumulators: when the default batch would force an
    extra pass over the data (more blocks) or the slower direct mode, halve it (down to a quarter)
    if that lets the float32-buffered accumulators fit in fewer passes."""
    def plan_for(r: int):
        budget = budget_bytes
        if budget is None:
            reserve = batch_workspace_bytes(r * context_length, n_ref, [l * d for l, d in partner_shapes], in_bytes=4,
                                            store_bytes=2 if device.startswith("cuda") else 4) + (2 << 30)
            budget = default_budget_bytes(device, reserve_bytes=reserve)
        return plan_ref_blocks(n_ref, partner_shapes, budget_bytes=budget, max_block=block_size, layer_size=ref_d_mlp)

    best = plan_for(rows)
    if adapt:
        for r in (rows // 2, rows // 4):
            if r < 1 or (best.buffered and len(best.blocks) == 1):
                break
            smaller = plan_for(r)
            if (len(smaller.blocks), not smaller.buffered) < (len(best.blocks), not best.buffered):
                best, rows = smaller, r
    return best, rows


def _load(model: ModelRecord, device: str):
    # a hub model loads at the commit it was registered at (a training checkpoint such as Pythia's
    # step revisions is only that commit); a local checkpoint is its directory ("sha256:" revision)
    pinned = model.revision if model.revision and not model.revision.startswith("sha256:") else None
    loaded = load_model(model.source, device, name=model.name, revision=pinned)
    if model.revision and loaded.revision and loaded.revision != model.revision:
        raise AtlasError(f"the checkpoint of {model.name} at {model.source} changed since it was registered "
                         f"(revision {model.revision}, now {loaded.revision}) — register it under a new name")
    return loaded


def _kept_post(model, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``hook_post`` of every layer at the kept positions: ``[n_kept, n_layers * d_mlp]``."""
    post = mlp_activations(model, tokens, hooks=("post",))["post"]
    return flatten_neurons(post)[keep.to(post.device)]


def _result_to_state(result: CorrelationResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(result)}


def _result_from_state(state: dict[str, Any]) -> CorrelationResult:
    values = dict(state)
    values["ref_shape"] = tuple(values["ref_shape"])
    values["partner_shapes"] = tuple(tuple(s) for s in values["partner_shapes"])
    return CorrelationResult(**values)


def _checkpoint_state(state: dict[str, Any], acc: CohortCorrelation | None, results: list[CorrelationResult],
                      block: int) -> dict[str, Any]:
    """The streaming state to checkpoint: the block being streamed, the next row, the accumulator
    (at a flush point) and the results of finished blocks."""
    return {
        "blocks": state["blocks"], "buffered": state["buffered"], "block": block, "next_row": state["next_row"],
        "tokens_done": state["tokens_done"], "batch_rows": state.get("batch_rows"),
        "fp16_rescaled_batches": state["fp16_rescaled_batches"], "fp16_fallback_batches": state["fp16_fallback_batches"],
        "acc": acc.state_dict() if acc is not None else None,
        "results": [_result_to_state(r) for r in results],
    }
