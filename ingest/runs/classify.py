"""Orchestration and storage of a ``classify`` run: explanations, labels and duplicate families.

``run_classify(engine, ClassifySubject(cohort=... | models=[...]), dataset, options)`` streams the dataset once through every
model, accumulating per-token-id / per-previous-token-id / per-position sums of ``hook_post``
(``atlas.ingest.math.activation_sums.FeatureAccumulator``, one per layer; moments of ``hook_pre`` for kurtosis),
then per model:

- scores every token feature on the current and the previous token and every position feature
  (variance reduction) and keeps each neuron's best ``top_k_features``;
- computes the weight roles (vocabulary composition, entropy candidates, BOS-attention scores) on
  the processed weights, and runs the entropy intervention for the candidates;
- labels the neurons (``atlas.ingest.math.labels.label_neurons``).

By default only universal neurons are labelled (excess correlation > ``universal_threshold`` in a
finished correlation run on the same dataset), as the paper counts families among universal
neurons; ``universal_only=False`` (CLI ``--all-neurons``) labels every neuron. With the ``syntax``
extra installed, part-of-speech and dependency tags of every token (``atlas.ingest.syntax``) are
features too. The run's result summary lists every label that was evaluated, with count 0 when
it found nothing, and why any label was not evaluated.

Then it groups labelled neurons into families: within each model, and across seeds through the
partner edges of the cohort's finished correlation runs on the same dataset (when there are any).
Everything is published in ONE transaction (``neuron_feature``, ``neuron_label``, ``family``,
``family_member``); a run that is already done is a no-op. The thresholds and every setting are
the run's ``params``. A killed run resumes: finished models and the accumulators of the model in
progress are checkpointed.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import polars as pl
import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.activations import kept_token_mask, mlp_activations
from atlas.ingest.checkpoint import Checkpoint
from atlas.ingest.math.activation_sums import FeatureAccumulator
from atlas.ingest.math.families import build_families
from atlas.ingest.math.features import frequent_token_ids, position_features, token_features
from atlas.ingest.math.labels import LABELS, LabelThresholds, evaluated_labels, label_neurons
from atlas.ingest.math.roles import (
    attention_deactivation, bos_keys, entropy_effect, entropy_intervention, mark_entropy_candidates, role_table,
)
from atlas.ingest.math.variance_reduction import neuron_table, score_features
from atlas.ingest.syntax import syntax_status, tag_dataset
from atlas.ingest.models import load_model, resolve_device
from atlas.ingest.runs.common import PROGRESS_EVERY_S, RunOptions, RunOutcome
from atlas.ingest.store import (
    DatasetInfo, ModelRecord, cohort_models, correlations_read, iter_dataset_batches, models_by_name, partner_edges, resolve_dataset,
    special_token_ids, universal_neurons, vocabulary,
)
from atlas.ingest.store.writes import classify_writer
from atlas.runs import begin_run


@dataclass
class ClassifyOptions(RunOptions):
    """Settings of a classify run: those in ``params()`` are recorded in the run's params and are
    part of its identity; ``RunOptions`` fields and ``checkpoint_every`` only say how to execute it."""

    thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    batch_size: int = 16
    max_rows: int | None = None  # use only the first rows of the dataset
    top_k_features: int = 5
    min_token_count: int = 5  # a token needs this many occurrences to be a unigram feature
    max_unigram_features: int = 2000
    position_exact: int = 8
    position_buckets: int = 16
    top_tokens: int = 20
    entropy_rows: int = 32  # dataset rows the entropy intervention runs on
    entropy_values: int = 5  # fixed activations from 0 to entropy_scale × the neuron's max
    entropy_scale: float = 2.0
    attention_random: int = 2048
    seed: int = 0
    universal_only: bool = True  # the paper: families among universal neurons (excess > universal_threshold)
    universal_threshold: float = 0.5
    syntax: bool = True  # part-of-speech / dependency features when spaCy and an English pipeline are installed
    checkpoint_every: int = 200  # batches between accumulator checkpoints

    def params(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in _EXECUTION_FIELDS}
        d["thresholds"] = self.thresholds.as_dict()
        return d

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ClassifyOptions:
        p = dict(params)
        p["thresholds"] = LabelThresholds.from_dict(p.get("thresholds"))
        return cls(**{k: v for k, v in p.items() if k in cls.__dataclass_fields__})


_EXECUTION_FIELDS = {"device", "force", "resume", "progress", "log", "checkpoint_every"}


@dataclass(frozen=True)
class ClassifySubject:
    """What a classify run labels: every model of ``cohort`` (families across its seeds), or ``models``
    (names; within a cohort when both are given)."""

    cohort: str | None = None
    models: tuple[str, ...] | None = None

    def describe(self) -> str:
        return self.cohort or ", ".join(self.models or ())


def run_classify(engine: Engine, subject: ClassifySubject, dataset: DatasetInfo | str | int,
                 options: ClassifyOptions | None = None) -> RunOutcome:
    """Classify the neurons of ``subject`` on ``dataset``; ``skipped`` when the same run is already done."""
    config = options or ClassifyOptions()
    log = config.log
    device = resolve_device(config.device)
    info = resolve_dataset(engine, dataset)
    cohort_id, rows = _resolve_models(engine, subject.cohort, subject.models)
    for r in rows:
        if r.tokenizer_id != info.tokenizer_id:
            raise AtlasError(f"model {r.name} and dataset {info.name} use different tokenizers — build a dataset with "
                             f"{r.name}'s tokenizer (atlas dataset build --model ...)")
    n_rows = info.n_rows if config.max_rows is None else min(info.n_rows, config.max_rows)
    # the correlations it reads are part of what it is: labels of a re-correlated cohort are a new run
    params = {**config.params(), "models": [r.name for r in rows],
              "correlation_runs": correlations_read(engine, info.id, [r.id for r in rows])}
    run = begin_run(engine, "classify", params=params, cohort_id=cohort_id,
                    model_id=rows[0].id if cohort_id is None and len(rows) == 1 else None,
                    dataset_id=info.id, device=device, tokens_total=n_rows * info.context_length * len(rows),
                    force=config.force)
    if run is None:
        log(f"classify: already done for {', '.join(r.name for r in rows)} on {info.name} (use --force to redo)")
        return RunOutcome("classify", subject.describe(), None, "skipped")
    t0 = time.perf_counter()
    with run:
        vocab = vocabulary(engine, info.tokenizer_id, max(r.d_vocab for r in rows))
        special = special_token_ids(engine, info.tokenizer_id)
        bos = special.get("bos") if special.get("bos") is not None else special.get("eos")
        syntax_ok, syntax_message = syntax_status()
        if syntax_ok and not config.syntax:
            syntax_ok, syntax_message = False, "syntax labels not computed: turned off for this run"
        log(f"classify: {syntax_message}")
        tags = tag_dataset(engine, info, n_rows, vocab, special, log) if syntax_ok else None
        checkpoint = Checkpoint.for_run(run, models=[r.revision for r in rows], dataset=info.content_hash, warn=log)
        state = (checkpoint.load() if config.resume else checkpoint.discard()) or {}
        done: dict[str, dict[str, bytes]] = state.get("done", {})
        tokens_done = sum(n_rows * info.context_length for r in rows if r.name in done)
        for r in rows:
            if r.name in done:
                log(f"classify: {r.name} restored from checkpoint")
                continue
            t0 = time.time()
            result = _classify_model(engine, run, checkpoint, r, info, n_rows, vocab, special, bos, config, device,
                                     state, tokens_done, log, tags)
            done[r.name] = {k: _to_ipc(v) for k, v in result.items() if k != "evaluated"}
            done[r.name]["evaluated"] = json.dumps(result["evaluated"])
            state = {"done": done}
            checkpoint.save(state)
            tokens_done += n_rows * info.context_length
            run.progress(tokens_done)
            n_labels = result["labels"].height
            log(f"classify: {r.name}: {n_labels} labels ({time.time() - t0:.1f} s)")

        features = pl.concat([_from_ipc(done[r.name]["features"]) for r in rows], how="vertical")
        labels = pl.concat([_from_ipc(done[r.name]["labels"]) for r in rows], how="vertical")
        edges = partner_edges(engine, cohort_id, info.id, [r.id for r in rows]) if cohort_id is not None else None
        t = config.thresholds
        families, members = build_families(labels, edges, min_rho=t.family_min_rho, min_members=t.family_min_members,
                                           n_models_total=len(rows))
        evaluated = set().union(*(set(json.loads(done[r.name]["evaluated"])) for r in rows))
        found = {k: int(v) for k, v in labels.group_by("label").len().iter_rows()}
        not_evaluated = {label: _why_not_evaluated(label, syntax_message, bos) for label in LABELS if label not in evaluated}
        summary = {
            "syntax": syntax_message, "n_labels": labels.height, "n_families": families.height,
            "n_partner_edges": 0 if edges is None else edges.height,
            "counted_among": (f"universal neurons (excess correlation > {config.universal_threshold})"
                              if config.universal_only else "all neurons"),
            # every evaluated label, 0 when it found nothing; the others with the reason
            "label_counts": {label: found.get(label, 0) for label in LABELS if label in evaluated},
            "not_evaluated": not_evaluated,
        }
        run.publish(classify_writer(run.id, features, labels, families, members, summary))
        checkpoint.discard()
    log(f"classify: run {run.id} done — {labels.height} labels, {families.height} families")
    return RunOutcome("classify", subject.describe(), run.id, "done", tokens=run.tokens_done,
                      seconds=time.perf_counter() - t0, extra={"labels": labels.height, "families": families.height})


# ---------------------------------------------------------------- one model

def _classify_model(engine: Engine, run, checkpoint: Checkpoint, row: ModelRecord, info, n_rows: int,
                    vocab: list[str], special: dict, bos: int | None, config: ClassifyOptions, device: str,
                    state: dict, tokens_done: int, log, tags: dict | None) -> dict[str, Any]:
    loaded = load_model(row.source, device, name=row.name)
    if loaded.n_layers != row.n_layers or loaded.d_mlp != row.d_mlp:
        raise AtlasError(f"the checkpoint at {row.source} no longer matches model {row.name} in the atlas "
                         f"(layers/d_mlp differ) — re-register it")
    L, d_mlp, d_vocab, ctx = loaded.n_layers, loaded.d_mlp, loaded.d_vocab, info.context_length
    vocab = (vocab + [""] * d_vocab)[:d_vocab]
    subset = universal_neurons(engine, row.id, info.id, config.universal_threshold) if config.universal_only else None
    cols = [torch.arange(d_mlp) if subset is None else torch.tensor(sorted(subset.get(l, [])), dtype=torch.long)
            for l in range(L)]

    partial = state.get("partial") if state.get("partial", {}).get("model") == row.name else None
    if partial is not None:
        accs = [FeatureAccumulator.from_state_dict(s, device=device) for s in partial["accs"]]
        counts = partial["counts"].to(device)
        start = int(partial["next_row"])
        log(f"classify: {row.name}: resuming at row {start}")
    else:
        tag_sizes = {k: len(v) for k, v in tags["names"].items()} if tags else None
        accs = [FeatureAccumulator(len(c), d_vocab, ctx, device=device, tag_sizes=tag_sizes) for c in cols]
        counts = torch.zeros(d_vocab, dtype=torch.float64, device=device)  # kept tokens per id
        start = 0
    dev_cols = [c.to(device) for c in cols]
    batches = 0
    last_progress = time.monotonic()
    for first, tokens in iter_dataset_batches(engine, info, config.batch_size, start_row=start):
        if first >= n_rows:
            break
        tokens = tokens[: n_rows - first]
        keep = kept_token_mask(tokens, info.filter_rule)
        counts += torch.bincount(tokens[keep].to(device), minlength=d_vocab)[:d_vocab].to(counts.dtype)
        acts = mlp_activations(loaded, tokens, hooks=("pre", "post"))
        batch_tags = {k: v[first:first + tokens.shape[0]] for k, v in tags["ids"].items()} if tags else None
        for l in range(L):
            if len(cols[l]):
                accs[l].update(tokens, acts["post"][:, :, l].index_select(-1, dev_cols[l]), keep,
                               pre=acts["pre"][:, :, l].index_select(-1, dev_cols[l]), tags=batch_tags)
        batches += 1
        next_row = first + tokens.shape[0]
        if batches % config.checkpoint_every == 0:
            checkpoint.save({**state, "partial": {
                "model": row.name, "next_row": next_row, "accs": [a.state_dict() for a in accs],
                "counts": counts.cpu()}})
        if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            run.progress(tokens_done + next_row * ctx)
            last_progress = time.monotonic()
    if counts.sum() == 0:
        raise AtlasError(f"dataset {info.name} has no kept tokens — check its filter rule")
    excluded = [i for i in special.values() if i is not None]
    frequent = frequent_token_ids(counts, min_count=config.min_token_count, max_tokens=config.max_unigram_features,
                                  exclude=excluded)
    tf = token_features(vocab, frequent, special_token_ids=excluded)
    pf = position_features(ctx, n_exact=config.position_exact, n_buckets=config.position_buckets)

    tops, tables = [], []
    for l in range(L):
        if not len(cols[l]):
            continue
        scores = score_features(accs[l], tf, pf, tag_names=tags["names"] if tags else None)
        idx_map = pl.Series("idx", cols[l].tolist(), dtype=pl.Int64)
        top = scores.top(config.top_k_features)
        tops.append(top.with_columns(pl.lit(l, dtype=pl.Int64).alias("layer"),
                                     idx_map.gather(top["neuron"]).alias("idx")).drop("neuron"))
        table = neuron_table(l, accs[l], scores, vocab, top_k=config.top_tokens, min_count=config.min_token_count)
        tables.append(table.with_columns(idx_map.gather(table["idx"]).alias("idx")))

    t = config.thresholds
    bridge = loaded.bridge
    W_out, W_U = bridge.W_out.detach(), bridge.W_U.detach()
    att = None
    if bos is not None and L > 1:
        att = attention_deactivation(W_out, bridge.W_Q.detach(), bos_keys(bridge, bos),
                                     n_random=config.attention_random, seed=config.seed)
    roles = role_table(W_out, W_U, vocab, W_in=bridge.W_in.detach(), attention=att)
    table = pl.concat(tables, how="vertical").join(roles, on=["layer", "idx"], how="left") if tables else roles.head(0)
    table = mark_entropy_candidates(table.with_columns(pl.lit(row.id, dtype=pl.Int64).alias("model_id")), t, n_layers=L)

    effects: dict[tuple, dict] = {}
    candidates = table.filter(pl.col("entropy_candidate").fill_null(False))
    if candidates.height:
        rows_for = next(iter_dataset_batches(engine, info, min(config.entropy_rows, n_rows)))[1]
        keep = kept_token_mask(rows_for, info.filter_rule)
        for c in candidates.iter_rows(named=True):
            top_value = max(float(c.get("act_max") or 0.0), 1e-3) * config.entropy_scale
            values = [top_value * i / max(config.entropy_values - 1, 1) for i in range(config.entropy_values)]
            frame = entropy_intervention(bridge, rows_for, c["layer"], c["idx"], values, keep=keep,
                                         batch_size=config.batch_size)
            effects[(row.id, c["layer"], c["idx"])] = entropy_effect(frame, min_relative_change=t.entropy_min_relative_change)
    labels = label_neurons(table, t, entropy_effects=effects)
    features = (pl.concat(tops, how="vertical") if tops else pl.DataFrame(
        schema={"rank": pl.Int16, "feature": pl.Utf8, "feature_kind": pl.Utf8, "on_previous": pl.Boolean,
                "variance_reduction": pl.Float64, "layer": pl.Int64, "idx": pl.Int64}))
    features = features.with_columns(pl.lit(row.id, dtype=pl.Int64).alias("model_id")).select(
        "model_id", "layer", "idx", "rank", "feature", "feature_kind", "on_previous", "variance_reduction")
    del loaded, bridge
    return {"features": features, "labels": labels, "evaluated": evaluated_labels(table.columns)}


def _why_not_evaluated(label: str, syntax_message: str, bos: int | None) -> str:
    if label == "syntax" and "not computed" in syntax_message:
        return syntax_message
    if label.startswith("attention"):
        return "needs a BOS token and at least two layers" if bos is not None else "the tokenizer has no BOS token"
    if label.startswith("entropy"):
        return "no neuron was classified"
    return "no neuron was classified (no universal neurons?)"


# ---------------------------------------------------------------- helpers

def _resolve_models(engine: Engine, cohort: str | None, models: Sequence[str] | None) -> tuple[int | None, list[ModelRecord]]:
    """The cohort id (None without a cohort) and the models to classify."""
    if cohort is None:
        if not models:
            raise AtlasError("give --cohort NAME or at least one --model NAME")
        return None, models_by_name(engine, list(models))
    cohort_id, rows = cohort_models(engine, cohort)
    if models:
        missing = sorted(set(models) - {r.name for r in rows})
        if missing:
            raise AtlasError(f"no model named {', '.join(missing)} in cohort {cohort} — register it first (atlas ingest)")
        rows = [r for r in rows if r.name in set(models)]
    if not rows:
        raise AtlasError(f"cohort {cohort} has no models — ingest them first")
    return cohort_id, rows


def _to_ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def thresholds_from_options(options: Sequence[str]) -> LabelThresholds:
    """``["unigram_vr=0.6", ...]`` (CLI ``--threshold``) → LabelThresholds."""
    values: dict[str, Any] = {}
    defaults = LabelThresholds().as_dict()
    for opt in options:
        key, sep, value = opt.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in defaults:
            raise AtlasError(f"bad --threshold {opt!r} — use NAME=VALUE with NAME one of {', '.join(defaults)}")
        try:
            values[key] = type(defaults[key])(float(value)) if isinstance(defaults[key], int) else float(value)
        except ValueError as err:
            raise AtlasError(f"bad --threshold {opt!r}: {value!r} is not a number") from err
    return LabelThresholds(**values)


__all__ = ["ClassifyOptions", "ClassifySubject", "run_classify", "thresholds_from_options"]
