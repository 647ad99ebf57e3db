"""Orchestration and storage of a ``classify`` run: explanations, labels and duplicate families.

``classify(engine, dataset, cohort=... | models=[...])`` streams the dataset once through every
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
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import polars as pl
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.ingest.math.activation_sums import FeatureAccumulator
from atlas.ingest.math.families import build_families
from atlas.ingest.math.features import frequent_token_ids, position_features, token_features
from atlas.ingest.math.labels import LABELS, LabelThresholds, evaluated_labels, label_neurons
from atlas.ingest.math.variance_reduction import neuron_table, score_features
from atlas.ingest.math.roles import (
    attention_deactivation, bos_keys, entropy_effect, entropy_intervention, mark_entropy_candidates, role_table,
)
from atlas.ingest.syntax import syntax_status, tag_dataset


@dataclass(frozen=True)
class ClassifyConfig:
    """Settings of a classify run (all recorded in the run's params; they are part of its identity)."""

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
        d = asdict(self)
        d["thresholds"] = self.thresholds.as_dict()
        d.pop("checkpoint_every")
        return d

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ClassifyConfig:
        p = dict(params)
        p["thresholds"] = LabelThresholds.from_dict(p.get("thresholds"))
        return cls(**{k: v for k, v in p.items() if k in cls.__dataclass_fields__})


@dataclass
class _ModelRow:
    id: int
    name: str
    source: str
    seed_label: str | None
    n_layers: int
    d_mlp: int
    d_vocab: int
    tokenizer_id: int


def classify(engine: Engine, dataset: Any, *, cohort: str | None = None, models: Sequence[str] | None = None,
             config: ClassifyConfig = ClassifyConfig(), device: str = "cpu", force: bool = False,
             log: Callable[[str], None] = print) -> int | None:
    """Classify the neurons of ``cohort`` (or of ``models``) on ``dataset`` (name, id or DatasetInfo).

    Returns the run id, or None when the same run is already done (a no-op)."""
    from atlas.runs import begin_run
    from atlas.ingest.models import resolve_device
    from atlas.ingest.store import resolve_dataset

    device = resolve_device(device)
    info = resolve_dataset(engine, dataset)
    cohort_id, rows = _resolve_models(engine, cohort, models)
    for r in rows:
        if r.tokenizer_id != info.tokenizer_id:
            raise AtlasError(f"model {r.name} and dataset {info.name} use different tokenizers — build a dataset with "
                             f"{r.name}'s tokenizer (atlas dataset build --model ...)")
    n_rows = info.n_rows if config.max_rows is None else min(info.n_rows, config.max_rows)
    params = {**config.params(), "models": [r.name for r in rows]}
    run = begin_run(engine, "classify", params=params, cohort_id=cohort_id,
                    model_id=rows[0].id if cohort_id is None and len(rows) == 1 else None,
                    dataset_id=info.id, device=device, tokens_total=n_rows * info.context_length * len(rows))
    if run is None:
        log(f"classify: already done for {', '.join(r.name for r in rows)} on {info.name} (use --force to redo)")
        return None
    with run:
        vocab = _vocab(engine, info.tokenizer_id, max(r.d_vocab for r in rows))
        special = _special_ids(engine, info.tokenizer_id)
        bos = special.get("bos") if special.get("bos") is not None else special.get("eos")
        syntax_ok, syntax_message = syntax_status()
        if syntax_ok and not config.syntax:
            syntax_ok, syntax_message = False, "syntax labels not computed: turned off for this run"
        log(f"classify: {syntax_message}")
        tags = tag_dataset(engine, info, n_rows, vocab, special, log) if syntax_ok else None
        state = _load_checkpoint(run.checkpoint_path)
        done: dict[str, dict[str, bytes]] = state.get("done", {})
        tokens_done = sum(n_rows * info.context_length for r in rows if r.name in done)
        for r in rows:
            if r.name in done:
                log(f"classify: {r.name} restored from checkpoint")
                continue
            t0 = time.time()
            result = _classify_model(engine, run, r, info, n_rows, vocab, special, bos, config, device, state,
                                     tokens_done, log, tags)
            done[r.name] = {k: _to_ipc(v) for k, v in result.items() if k != "evaluated"}
            done[r.name]["evaluated"] = json.dumps(result["evaluated"])
            state = {"done": done}
            _save_checkpoint(run.checkpoint_path, state)
            tokens_done += n_rows * info.context_length
            run.progress(tokens_done)
            n_labels = result["labels"].height
            log(f"classify: {r.name}: {n_labels} labels ({time.time() - t0:.1f} s)")

        features = pl.concat([_from_ipc(done[r.name]["features"]) for r in rows], how="vertical")
        labels = pl.concat([_from_ipc(done[r.name]["labels"]) for r in rows], how="vertical")
        edges = _partner_edges(engine, cohort_id, info.id, [r.id for r in rows]) if cohort_id is not None else None
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
        run.publish(_writer(run.id, features, labels, families, members, summary))
        log(f"classify: run {run.id} done — {labels.height} labels, {families.height} families")
        return run.id


# ---------------------------------------------------------------- one model

def _classify_model(engine: Engine, run, row: _ModelRow, info, n_rows: int, vocab: list[str], special: dict,
                    bos: int | None, config: ClassifyConfig, device: str, state: dict, tokens_done: int,
                    log: Callable[[str], None], tags: dict | None) -> dict[str, Any]:
    from atlas.ingest.activations import iter_dataset_batches, kept_token_mask, mlp_activations
    from atlas.ingest.models import load_model

    loaded = load_model(row.source, device, name=row.name)
    if loaded.n_layers != row.n_layers or loaded.d_mlp != row.d_mlp:
        raise AtlasError(f"the checkpoint at {row.source} no longer matches model {row.name} in the atlas "
                         f"(layers/d_mlp differ) — re-register it")
    L, d_mlp, d_vocab, ctx = loaded.n_layers, loaded.d_mlp, loaded.d_vocab, info.context_length
    vocab = (vocab + [""] * d_vocab)[:d_vocab]
    subset = _universal_subset(engine, row, info.id, config) if config.universal_only else None
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
            _save_checkpoint(run.checkpoint_path, {**state, "partial": {
                "model": row.name, "next_row": next_row, "accs": [a.state_dict() for a in accs],
                "counts": counts.cpu()}})
            run.progress(tokens_done + next_row * ctx)
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


# ---------------------------------------------------------------- database reads

def _resolve_models(engine: Engine, cohort: str | None, models: Sequence[str] | None) -> tuple[int | None, list[_ModelRow]]:
    cols = "m.id, m.name, m.source, m.seed_label, m.n_layers, m.d_mlp, m.d_vocab, m.tokenizer_id"
    with engine.connect() as conn:
        cohort_id = None
        if cohort is not None:
            cohort_id = conn.execute(sa.text("SELECT id FROM cohort WHERE name = :n"), {"n": cohort}).scalar()
            if cohort_id is None:
                known = conn.execute(sa.text("SELECT name FROM cohort ORDER BY name")).scalars().all()
                raise AtlasError(f"no cohort named {cohort} (known: {', '.join(known) or 'none'}) — ingest its models "
                                 "with --cohort first")
            found = conn.execute(sa.text(f"SELECT {cols} FROM model m WHERE m.cohort_id = :c ORDER BY m.seed_label, m.name"),
                                 {"c": cohort_id}).all()
        else:
            found = conn.execute(sa.text(f"SELECT {cols} FROM model m WHERE m.name = ANY(:n) ORDER BY m.name"),
                                 {"n": list(models or [])}).all()
    rows = [_ModelRow(*r) for r in found]
    if models:
        missing = sorted(set(models) - {r.name for r in rows})
        if missing:
            raise AtlasError(f"no model named {', '.join(missing)}" + (f" in cohort {cohort}" if cohort else "") +
                             " — register it first (atlas ingest)")
        rows = [r for r in rows if r.name in set(models)]
    if not rows:
        raise AtlasError(f"cohort {cohort} has no models — ingest them first" if cohort else
                         "give --cohort NAME or at least one --model NAME")
    return cohort_id, rows


def _vocab(engine: Engine, tokenizer_id: int, d_vocab: int) -> list[str]:
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT token_id, text FROM vocab_token WHERE tokenizer_id = :t"),
                           {"t": tokenizer_id}).all()
    size = max([d_vocab] + [r.token_id + 1 for r in got])
    vocab = [""] * size
    for r in got:
        vocab[r.token_id] = r.text
    return vocab


def _special_ids(engine: Engine, tokenizer_id: int) -> dict[str, int | None]:
    with engine.connect() as conn:
        r = conn.execute(sa.text("SELECT bos_token_id, eos_token_id, pad_token_id FROM tokenizer WHERE id = :t"),
                         {"t": tokenizer_id}).first()
    return {"bos": r.bos_token_id, "eos": r.eos_token_id, "pad": r.pad_token_id}


def _partner_edges(engine: Engine, cohort_id: int, dataset_id: int, model_ids: list[int]) -> pl.DataFrame:
    """Partner edges of the cohort's finished correlation runs on this dataset (newest run per
    reference model and block)."""
    with engine.connect() as conn:
        got = conn.execute(sa.text("""
            SELECT e.model_id, e.layer::int AS layer, e.idx, e.partner_model_id, e.partner_layer::int AS partner_layer,
                   e.partner_idx, e.rho::float8 AS rho
            FROM correlation_edge e JOIN run r ON r.id = e.run_id
            WHERE r.kind = 'correlation' AND r.status = 'done' AND r.cohort_id = :c AND r.dataset_id = :d
              AND e.model_id = ANY(:m) AND e.partner_model_id = ANY(:m)
        """), {"c": cohort_id, "d": dataset_id, "m": model_ids}).all()
    schema = {"model_id": pl.Int64, "layer": pl.Int64, "idx": pl.Int64, "partner_model_id": pl.Int64,
              "partner_layer": pl.Int64, "partner_idx": pl.Int64, "rho": pl.Float64}
    return pl.DataFrame([tuple(r) for r in got], schema=schema, orient="row").unique(
        subset=["model_id", "layer", "idx", "partner_model_id", "partner_layer", "partner_idx"])


def _universal_subset(engine: Engine, row: _ModelRow, dataset_id: int, config: ClassifyConfig) -> dict[int, list[int]]:
    """Neurons of ``row`` whose excess correlation (reference side) or best-partner excess (partner
    side, max_corr − baseline_max against the reference) is above the threshold."""
    with engine.connect() as conn:
        got = conn.execute(sa.text("""
            SELECT u.layer::int AS layer, u.idx FROM neuron_universality u JOIN run r ON r.id = u.run_id
            WHERE r.kind = 'correlation' AND r.status = 'done' AND r.dataset_id = :d AND u.model_id = :m AND u.excess > :t
            UNION
            SELECT p.layer::int, p.idx FROM pair_correlation p JOIN run r ON r.id = p.run_id
            WHERE r.kind = 'correlation' AND r.status = 'done' AND r.dataset_id = :d AND p.model_id = :m
              AND r.model_id <> :m AND p.max_corr - p.baseline_max > :t
        """), {"d": dataset_id, "m": row.id, "t": config.universal_threshold}).all()
    if not got:
        with engine.connect() as conn:
            any_corr = conn.execute(sa.text("SELECT 1 FROM run WHERE kind = 'correlation' AND status = 'done' "
                                            "AND dataset_id = :d LIMIT 1"), {"d": dataset_id}).first()
        if any_corr is None:
            raise AtlasError("classify labels universal neurons by default and needs a finished correlation run on this "
                             "dataset — run `atlas correlate` first, or pass --all-neurons")
    subset: dict[int, list[int]] = {}
    for layer, idx in got:
        subset.setdefault(int(layer), []).append(int(idx))
    return subset


# ---------------------------------------------------------------- storage

def _writer(run_id: int, features: pl.DataFrame, labels: pl.DataFrame, families: pl.DataFrame,
            members: pl.DataFrame, summary: dict) -> Callable:
    from atlas.copy import copy_frame

    def write(conn) -> None:
        copy_frame(conn, "neuron_feature", features.with_columns(pl.lit(run_id, dtype=pl.Int64).alias("run_id")))
        copy_frame(conn, "neuron_label", labels.select("model_id", "layer", "idx", "label", "score", "evidence")
                   .with_columns(pl.lit(run_id, dtype=pl.Int64).alias("run_id")))
        ids: dict[int, int] = {}
        with conn.cursor() as cur:
            for f in families.iter_rows(named=True):
                cur.execute("INSERT INTO family (run_id, label, name, n_members, n_models, evidence) "
                            "VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
                            (run_id, f["label"], f["name"], f["n_members"], f["n_models"], f["evidence"]))
                ids[f["family"]] = cur.fetchone()[0]
            cur.execute("UPDATE run SET params = params || %s::jsonb WHERE id = %s",
                        (json.dumps({"result": summary}), run_id))
        if members.height:
            mapping = pl.DataFrame({"family": list(ids), "family_id": list(ids.values())},
                                   schema={"family": pl.Int64, "family_id": pl.Int64})
            copy_frame(conn, "family_member", members.join(mapping, on="family").select(
                "family_id", "model_id", "layer", "idx", "score"))

    return write


def _to_ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def _load_checkpoint(path) -> dict:
    try:
        return torch.load(path, weights_only=False) if path.exists() else {}
    except Exception:  # noqa: BLE001 - a torn checkpoint is recomputed, not fatal
        return {}


def _save_checkpoint(path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


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


__all__ = ["ClassifyConfig", "classify", "thresholds_from_options"]
