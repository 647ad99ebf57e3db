"""Orchestration of a cohort's cross-seed correlation run: load, stream, checkpoint, publish.

``correlate_cohort(engine, cohort, dataset)`` streams the dataset's token rows once through every
model of the cohort (reference and partners: one forward pass per model per batch), drops the
positions the dataset's stored filter rule excludes, and feeds the activations to the pure
accumulator of ``atlas.ingest.math.correlation``. When the accumulators would not fit the device, the
reference neurons are split into blocks and the data is streamed once per block.

Run lifecycle (``atlas.runs``): the same cohort + dataset + reference + rotation + seed + top-k is
one run; asking again once it is done is a no-op (``force`` recomputes). The accumulators are
checkpointed every ``checkpoint_tokens`` kept tokens (and after each block) under the run's
checkpoint path, so an interrupted or killed run resumes where it was when the same command is
given again (``resume``, the default). All result rows (``pair_correlation``, ``correlation_edge``,
``neuron_universality``) are published in one transaction, with the engine's provenance
(precision, device, blocks, tokens) merged into the run's ``params``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import polars as pl
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from atlas.copy import copy_frame
from atlas.errors import AtlasError
from atlas.runs import begin_run
from atlas.ingest.activations import flatten_neurons, iter_dataset_batches, kept_token_mask, mlp_activations
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
from atlas.ingest.store import get_dataset

CHECKPOINT_VERSION = 2  # 2: reference within-layer moments, fp16 rescale counts
DEFAULT_CHECKPOINT_TOKENS = 20_000_000


@dataclass(frozen=True)
class CohortModel:
    """A model row of the cohort, as the atlas registered it."""

    id: int
    name: str
    source: str
    revision: str | None
    seed_label: str | None
    tokenizer_id: int
    n_layers: int
    d_mlp: int


def cohort_models(engine: Engine, cohort: str) -> tuple[int, list[CohortModel]]:
    """The cohort's id and its models ordered by seed label, then name."""
    with engine.connect() as conn:
        cohort_id = conn.execute(sa.text("SELECT id FROM cohort WHERE name = :n"), {"n": cohort}).scalar()
        if cohort_id is None:
            known = conn.execute(sa.text("SELECT name FROM cohort ORDER BY name")).scalars().all()
            raise AtlasError(f"no cohort named {cohort} (known: {', '.join(known) or 'none'}) — register its models "
                             "with --cohort first")
        rows = conn.execute(sa.text(
            "SELECT id, name, source, revision, seed_label, tokenizer_id, n_layers, d_mlp FROM model "
            "WHERE cohort_id = :c ORDER BY seed_label NULLS LAST, name"), {"c": cohort_id}).all()
    return int(cohort_id), [CohortModel(**row._mapping) for row in rows]


def choose_reference(models: list[CohortModel], reference: str | None, cohort: str) -> tuple[CohortModel, list[CohortModel]]:
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


def check_cohort_tokenizers(models: list[CohortModel], dataset_tokenizer_id: int, cohort: str, dataset: str) -> None:
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


def correlate_cohort(
    engine: Engine,
    cohort: str,
    dataset: str,
    reference: str | None = None,
    *,
    rotation: str = "orthogonal",
    seed: int = 0,
    top_k: int = 10,
    device: str | None = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    block_size: int | None = None,
    budget_bytes: int | None = None,
    checkpoint_tokens: int = DEFAULT_CHECKPOINT_TOKENS,
    resume: bool = True,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
    on_batch: Callable[[int], Any] | None = None,
) -> int | None:
    """Correlate every neuron of ``reference`` with every neuron of each other model of ``cohort``
    over ``dataset``'s kept tokens, with the random-rotation baseline; store per-neuron results.

    Returns the run id, or None when the same run is already done (no-op; ``force`` recomputes).
    ``rotation``: ``"orthogonal"`` (Haar) or ``"gaussian_unit_rows"`` (the paper's); ``seed`` draws it.
    ``batch_size``: context rows per forward pass (default: ~8k tokens on CUDA, ~4k on CPU).
    ``block_size``: at most this many reference neurons per data pass (default: as many as fit).
    ``budget_bytes``: device bytes the accumulators may use (default: free memory less a reserve).
    ``resume``: continue from the checkpoint of an interrupted run (else discard it).
    ``on_batch(tokens_done)``: called after every batch (heartbeats; tests interrupt runs with it).
    """
    say = log or (lambda _msg: None)
    if rotation not in ROTATION_KINDS:
        raise AtlasError(f"unknown rotation {rotation!r} — use one of {', '.join(ROTATION_KINDS)}")
    if top_k < 1:
        raise AtlasError(f"--top-k must be at least 1, got {top_k}")
    cohort_id, models = cohort_models(engine, cohort)
    info = get_dataset(engine, dataset)
    ref, partners = choose_reference(models, reference, cohort)
    check_cohort_tokenizers(models, info.tokenizer_id, cohort, dataset)
    if info.n_kept_tokens < 2:
        raise AtlasError(f"dataset {dataset} keeps {info.n_kept_tokens} token(s) after its filter rule — correlations "
                         "need a dataset with more text")
    device = resolve_device(device)

    params = {
        "reference": ref.name, "reference_id": ref.id,
        "partners": [p.name for p in partners], "partner_ids": [p.id for p in partners],
        "rotation": rotation, "rotation_seed": int(seed), "top_k": int(top_k),
        "hook": "hook_post", "filter_rule": info.filter_rule,
    }
    run = begin_run(engine, "correlation", params=params, model_id=ref.id, cohort_id=cohort_id,
                    dataset_id=info.id, device=device, force=force)
    if run is None:
        say(f"correlation of cohort {cohort} on {dataset} (reference {ref.name}) is already done — nothing to do "
            "(--force recomputes)")
        return None

    with run:
        loaded = [_load(m, device) for m in (ref, *partners)]
        tok_hash = check_same_tokenizer(loaded)
        if tok_hash != info.tokenizer_hash:
            raise AtlasError(f"dataset {dataset} was tokenised with another tokenizer than cohort {cohort}'s — build "
                             "a dataset with the cohort's tokenizer")
        ref_shape = (ref.n_layers, ref.d_mlp)
        partner_shapes = [(p.n_layers, p.d_mlp) for p in partners]
        n_ref = ref.n_layers * ref.d_mlp
        rows_per_batch = batch_size or max(1, (8192 if device.startswith("cuda") else 4096) // info.context_length)

        ckpt_path = run.checkpoint_path
        state = _load_checkpoint(ckpt_path, run.key) if resume else None
        if state is None:
            ckpt_path.unlink(missing_ok=True)
            plan, rows_per_batch = _plan(device, n_ref, partner_shapes, info.context_length, rows_per_batch,
                                         adapt=batch_size is None, budget_bytes=budget_bytes, block_size=block_size,
                                         ref_d_mlp=ref.d_mlp)
            state = {"blocks": [list(b) for b in plan.blocks], "buffered": plan.buffered, "block": 0,
                     "next_row": 0, "tokens_done": 0, "acc": None, "results": [], "batch_rows": rows_per_batch,
                     "fp16_rescaled_batches": 0, "fp16_fallback_batches": 0}
        elif batch_size is None:
            rows_per_batch = int(state.get("batch_rows", rows_per_batch))
        blocks = [tuple(b) for b in state["blocks"]]
        tokens_total = info.n_kept_tokens * len(blocks)
        run.progress(state["tokens_done"], tokens_total)
        say(f"correlating cohort {cohort} on {dataset}: reference {ref.name}, partners "
            f"{', '.join(p.name for p in partners)}; {info.n_kept_tokens:,} kept tokens × {len(blocks)} block(s) of "
            f"reference neurons; {rotation} baseline (seed {seed}); device {device}"
            + (f"; resuming at {state['tokens_done']:,} tokens" if state["tokens_done"] else ""))

        bar = _progress_bar(tokens_total, state["tokens_done"], f"correlate {cohort}", progress)
        results = [_result_from_state(r) for r in state["results"]]
        acc = None
        used_precision = precision
        last_beat = time.monotonic()
        try:
            for b in range(state["block"], len(blocks)):
                acc = CohortCorrelation(ref_shape, partner_shapes, ref_slice=blocks[b], device=device,
                                        precision=precision, buffered=state["buffered"], rotation=rotation,
                                        rotation_seed=seed)
                used_precision = acc.precision
                if state["acc"] is not None:
                    acc.load_state_dict(state["acc"])
                    state["acc"] = None
                since_ckpt = 0
                for first_row, tokens in iter_dataset_batches(engine, info, rows_per_batch, start_row=state["next_row"]):
                    keep = kept_token_mask(tokens, info.filter_rule).reshape(-1)
                    acts = [_kept_post(model, tokens, keep) for model in loaded]
                    acc.update(acts[0], acts[1:])
                    del acts
                    kept = int(keep.sum())
                    state["next_row"] = first_row + tokens.shape[0]
                    state["tokens_done"] += kept
                    since_ckpt += kept
                    bar.update(kept)
                    if since_ckpt >= checkpoint_tokens:
                        _save_checkpoint(ckpt_path, run.key, state, acc, results, b)
                        since_ckpt = 0
                    if time.monotonic() - last_beat > 30:
                        run.progress(state["tokens_done"], tokens_total)
                        last_beat = time.monotonic()
                    if on_batch is not None:
                        on_batch(state["tokens_done"])
                results.append(acc.finalize(top_k))
                state["fp16_rescaled_batches"] += acc.n_rescaled_batches
                state["fp16_fallback_batches"] += acc.n_overflow_batches
                acc = None
                state["next_row"] = 0
                if b + 1 < len(blocks):  # a finished block is never streamed again
                    _save_checkpoint(ckpt_path, run.key, state, None, results, b + 1)
        finally:
            bar.close()

        result = combine_blocks(results)
        frames = result_frames(result, model_id=ref.id, partner_model_ids=[p.id for p in partners])
        provenance = {"engine": {
            "precision": used_precision,
            "device": device, "blocks": len(blocks), "buffered": state["buffered"],
            "n_tokens": result.n_tokens, "batch_rows": rows_per_batch, "top_k_stored": result.top_k,
            # batches whose fp16 overflow re-estimated some neurons' scales / that went in as bf16
            "fp16_rescaled_batches": state["fp16_rescaled_batches"],
            "fp16_fallback_batches": state["fp16_fallback_batches"],
            "partner_baseline": ("max correlation with the reference's layers rotated at random"
                                 if result.partner_baseline_computed else
                                 "not computed: a reference layer did not fit the device in one block (NULL)"),
        }}
        run.progress(state["tokens_done"], tokens_total)
        run.publish(_writer(run.id, frames, provenance))
        n_universal = int((result.excess > 0.5).sum())
        say(f"done: run {run.id}; {result.n_tokens:,} tokens; {n_universal} of {n_ref} reference neurons have "
            "excess correlation > 0.5")
        return run.id


# ---------------------------------------------------------------- helpers

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


def _load(model: CohortModel, device: str):
    loaded = load_model(model.source, device, name=model.name)
    if model.revision and loaded.revision and loaded.revision != model.revision:
        raise AtlasError(f"the checkpoint of {model.name} at {model.source} changed since it was registered "
                         f"(revision {model.revision}, now {loaded.revision}) — register it under a new name")
    return loaded


def _kept_post(model, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``hook_post`` of every layer at the kept positions: ``[n_kept, n_layers * d_mlp]``."""
    post = mlp_activations(model, tokens, hooks=("post",))["post"]
    return flatten_neurons(post)[keep.to(post.device)]


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=desc, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def _writer(run_id: int, frames: dict[str, pl.DataFrame], provenance: dict[str, Any]):
    """Publish-time writer: COPY every result frame and merge provenance into the run's params,
    inside the run's one publishing transaction."""
    def write(conn) -> None:
        for table, frame in frames.items():
            copy_frame(conn, table, frame.with_columns(pl.lit(run_id, dtype=pl.Int64).alias("run_id")))
        conn.execute("UPDATE run SET params = params || %s::jsonb WHERE id = %s",
                     (json.dumps(provenance, sort_keys=True), run_id))
    return write


def _result_to_state(result: CorrelationResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(result)}


def _result_from_state(state: dict[str, Any]) -> CorrelationResult:
    values = dict(state)
    values["ref_shape"] = tuple(values["ref_shape"])
    values["partner_shapes"] = tuple(tuple(s) for s in values["partner_shapes"])
    return CorrelationResult(**values)


def _save_checkpoint(path: Path, key: str, state: dict[str, Any], acc: CohortCorrelation | None,
                     results: list[CorrelationResult], block: int) -> None:
    """Atomically write the run's streaming state: the block being streamed, the next row, the
    accumulator (a flush point) and the results of finished blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CHECKPOINT_VERSION, "key": key, "blocks": state["blocks"], "buffered": state["buffered"],
        "block": block, "next_row": state["next_row"], "tokens_done": state["tokens_done"],
        "batch_rows": state.get("batch_rows"),
        "fp16_rescaled_batches": state["fp16_rescaled_batches"], "fp16_fallback_batches": state["fp16_fallback_batches"],
        "acc": acc.state_dict() if acc is not None else None,
        "results": [_result_to_state(r) for r in results],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is restarted, not fatal
        raise AtlasError(f"the checkpoint {path} cannot be read ({str(err).splitlines()[0] if str(err) else err}) — "
                         "delete it or pass --restart to start the run over") from err
    if state.get("version") != CHECKPOINT_VERSION or state.get("key") != key:
        return None
    return state
