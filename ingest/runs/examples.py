"""The ``examples`` run: every token of every stored example coloured, and partners compared on the
same text.

``run_examples(engine, subject, dataset, options)`` takes a cohort (or one model) and, for each of
its models, the examples its newest stats run on ``dataset`` stored (top, quantile, bottom). It runs
the model over the dataset rows those examples sit in and stores, per example, the neuron's
``hook_post`` over a window of ``before`` tokens before and ``after`` after (table
``example_activation``, ``source`` = the neuron itself). For the cohort's correlation reference it
also runs each partner model over the rows of the reference's top ``partner_examples`` examples and
stores the best partner neuron's activations over the same windows (``source`` = the partner): the
neuron page then shows a reference neuron and its partners on the same text.

Cost: one forward pass per model over the rows holding its examples (for the reference's partners,
the rows of its top examples) — at most one pass over the dataset per model. Results are published
in one transaction; the same subject, dataset and parameters again is a no-op unless ``force``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.activations import mlp_activations
from atlas.ingest.math.example_sampling import example_windows
from atlas.ingest.models import load_model
from atlas.ingest.runs.common import Progress, RunOptions, RunOutcome
from atlas.ingest.store import ModelRecord, cohort_models, models_by_name, resolve_dataset
from atlas.ingest.store.example_reads import (
    best_partner_neurons, dataset_rows, newest_correlation, newest_stats_run, stored_examples,
)
from atlas.runs import begin_run

_FRAME_SCHEMA = {"model_id": pl.Int64, "layer": pl.Int16, "idx": pl.Int32, "kind": pl.Utf8, "rank": pl.Int16,
                 "source_model_id": pl.Int64, "source_layer": pl.Int16, "source_idx": pl.Int32, "row_idx": pl.Int64,
                 "position": pl.Int16, "start": pl.Int16, "activations": pl.List(pl.Float32)}


@dataclass
class ExamplesOptions(RunOptions):
    """Parameters of an examples run. Those in ``run_params`` identify the run; ``batch_size`` only affects speed."""

    before: int = 24  # tokens stored before an example's token (the UI shows up to this many)
    after: int = 8
    partner_examples: int = 10  # the reference's top examples its partners are run on
    batch_size: int = 32  # dataset rows per forward pass

    def run_params(self) -> dict[str, Any]:
        return {"window_before": self.before, "window_after": self.after, "partner_examples": self.partner_examples,
                "activations_of": "hook_post"}


def run_examples(engine: Engine, subject: str, dataset: str | int, options: ExamplesOptions | None = None) -> RunOutcome:
    """The examples run of ``subject`` (a cohort's name, or one model's) on ``dataset``."""
    options = options or ExamplesOptions()
    if options.before < 0 or options.after < 0 or options.batch_size < 1 or options.partner_examples < 0:
        raise AtlasError("--before, --after and --partner-examples must be ≥ 0 and --batch-size ≥ 1")
    info = resolve_dataset(engine, dataset)
    models, cohort = _subject(engine, subject)
    correlation = newest_correlation(engine, cohort, info.id) if cohort is not None else None
    stats_runs = {m.id: newest_stats_run(engine, m.id, info.id) for m in models}
    if not any(stats_runs.values()):
        raise AtlasError(f"no model of {subject} has finished statistics on dataset {info.name} — run `atlas ingest` "
                         "first")
    params = options.run_params() | {
        "models": sorted(m.name for m in models), "stats_runs": {m.name: stats_runs[m.id] for m in models},
        "correlation_run": correlation.run_id if correlation else None}
    reference = correlation.reference_id if correlation else (models[0].id if len(models) == 1 else None)
    run = begin_run(engine, "examples", model_id=reference, cohort_id=cohort, dataset_id=info.id, params=params,
                    device=options.device, force=options.force)
    if run is None:
        return RunOutcome("examples", subject, None, "skipped")
    t0 = time.perf_counter()
    with run:
        by_id = {m.id: m for m in models}
        own = {m.id: stored_examples(engine, stats_runs[m.id]) for m in models if stats_runs[m.id]}
        total = sum(ex["row_idx"].n_unique() for ex in own.values())
        as_partner: dict[int, pl.DataFrame] = {}  # partner id → the reference's top examples × its best neurons
        if correlation is not None and correlation.reference_id in own and options.partner_examples:
            top = own[correlation.reference_id].filter(
                (pl.col("kind") == "top") & (pl.col("rank") <= options.partner_examples))
            for pid in correlation.partner_ids:
                if pid in by_id:
                    best = best_partner_neurons(engine, correlation, pid)
                    as_partner[pid] = top.join(best, on=["layer", "idx"], how="inner")
                    total += as_partner[pid]["row_idx"].n_unique()
        frames = []
        with Progress(run, total * info.context_length, 0, f"examples {subject}", options.progress) as progress:
            for model in models:  # each model loaded once: for its own examples and as a partner
                mine, theirs = own.get(model.id), as_partner.get(model.id)
                if (mine is None or mine.height == 0) and (theirs is None or theirs.height == 0):
                    continue
                loaded = _load(model, options.device)
                if mine is not None:
                    frames.append(_windows(engine, info, model, loaded, mine, model.id, options, progress))
                if theirs is not None:
                    frames.append(_windows(engine, info, model, loaded, theirs, correlation.reference_id, options,
                                           progress, source=("best_layer", "best_idx")))
                del loaded
            progress.close()
        frame = pl.concat([f for f in frames if f.height], how="vertical") if any(f.height for f in frames) else \
            pl.DataFrame(schema=_FRAME_SCHEMA)
        run.publish({"example_activation": frame})
    return RunOutcome("examples", subject, run.id, "done", seconds=time.perf_counter() - t0,
                      extra={"rows": frame.height})


def _subject(engine: Engine, subject: str) -> tuple[list[ModelRecord], int | None]:
    """The models of cohort ``subject``, or the one model of that name (with its cohort)."""
    try:
        cohort, models = cohort_models(engine, subject)
        if models:
            return models, cohort
    except AtlasError:
        pass
    try:
        found = models_by_name(engine, [subject])
    except AtlasError:
        raise AtlasError(f"no cohort or model named {subject!r} in the atlas — `atlas status` lists them") from None
    return found, found[0].cohort_id


def _load(model: ModelRecord, device: str):
    loaded = load_model(model.source, device, name=model.name)
    if loaded.n_layers != model.n_layers or loaded.d_mlp != model.d_mlp:
        raise AtlasError(f"the checkpoint at {model.source} no longer matches model {model.name} in the atlas "
                         "(layers/d_mlp differ) — re-register it")
    return loaded


def _windows(engine: Engine, info, model: ModelRecord, loaded, examples: pl.DataFrame, owner_id: int,
             options: ExamplesOptions, progress: Progress, source: tuple[str, str] = ("layer", "idx")) -> pl.DataFrame:
    """Run ``loaded`` (``model``) over the rows holding ``examples`` and cut each example's window of
    the source neuron's activations; rows of ``example_activation`` for the examples of ``owner_id``'s neurons."""
    if examples.height == 0:
        return pl.DataFrame(schema=_FRAME_SCHEMA)
    rows = examples["row_idx"].unique().sort().to_list()
    out = []
    for first in range(0, len(rows), options.batch_size):
        chunk = rows[first:first + options.batch_size]
        tokens = dataset_rows(engine, info.id, chunk)
        post = mlp_activations(loaded, tokens, hooks=("post",))["post"]  # [b, ctx, L, d_mlp]
        post = post.reshape(post.shape[0], post.shape[1], -1)
        where = {r: i for i, r in enumerate(chunk)}
        mine = examples.filter(pl.col("row_idx").is_in(chunk))
        src_layer, src_idx = mine[source[0]], mine[source[1]]
        device = post.device
        start, values = example_windows(
            post, torch.tensor([where[r] for r in mine["row_idx"]], device=device),
            torch.tensor(mine["position"].to_list(), device=device),
            torch.tensor((src_layer * loaded.d_mlp + src_idx).to_list(), device=device), options.before, options.after)
        out.append(mine.select(
            pl.lit(owner_id).alias("model_id"), "layer", "idx", "kind", "rank",
            pl.lit(model.id).alias("source_model_id"), src_layer.alias("source_layer"), src_idx.alias("source_idx"),
            "row_idx", "position").with_columns(pl.Series("start", start.tolist()),
                                                pl.Series("activations", values, dtype=pl.List(pl.Float32))))
        progress.advance(len(chunk) * info.context_length)
    return pl.concat(out).cast(_FRAME_SCHEMA) if out else pl.DataFrame(schema=_FRAME_SCHEMA)
