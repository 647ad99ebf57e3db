"""The demo-cohort recipe frontier: how much universality does a training recipe buy, at what cost?

For one recipe (a ``ZooConfig`` plus a training corpus) this trains ``--seeds`` seeds with the zoo
(``atlas.ingest.zoo``, the code ``atlas zoo train`` runs), then, for the final models and every
intermediate checkpoint the recipe saves, correlates the seeds with the atlas's own engine
(``CohortCorrelation`` on ``hook_post`` of the held-out Shakespeare plays, the demo dataset) and
records one JSON record per recipe (by ``--label``; rewritten after every checkpoint, so a long
run's curve is visible while it trains) in ``bench/results/demo_recipes.json``:

- training: seconds per seed up to each checkpoint (with the load average: the machine is shared),
  held-out loss;
- the baseline: median mean_baseline, for the paper's rotation (iid Gaussian rows of unit norm) and
  for the atlas's default (Haar orthogonal);
- excess correlation: quantiles, share above 0.5 (the paper's universality threshold) and 0.3,
  share per layer;
- what the universal neurons look like (the paper's signature): firing rate (share of tokens with
  hook_post > 0) and kurtosis of hook_pre, for the universal neurons and for all, and their median
  within-layer percentiles.

No database is needed. Checkpoints are cached under ``ATLAS_HOME/bench-recipes/<fingerprint>/``, so
re-measuring a trained recipe only re-runs the correlation.

    nice -n 10 .venv/bin/python -m bench.demo_recipes --label base-3M --set train_tokens=3000000
    nice -n 10 .venv/bin/python -m bench.demo_recipes --label wide --set d_model=256 --set d_mlp=1024 \\
        --corpus shakespeare+milton --set checkpoints=0.1,0.25,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results" / "demo_recipes.json"
THRESHOLDS = (0.5, 0.3)
QUANTILES = (0.5, 0.9, 0.99)
TABLE_NOTE = ("Each row is one checkpoint of a recipe's seeds, correlated on the held-out plays (the demo dataset). "
              "Seconds are per seed on the shared 2-core machine (other agents' jobs ran too: compare with care). "
              "Baseline: the paper's iid Gaussian unit rows; shares at the orthogonal baseline alongside.\n\n")


def corpus_documents(corpus: str) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of a named corpus; held out = the demo's plays."""
    from atlas.ingest.corpus import fetch_demo_corpus, read_documents, training_files

    demo = fetch_demo_corpus()
    return read_documents(training_files(demo, corpus)), read_documents(demo.held_out)


def parse_value(field_type: Any, text: str) -> Any:
    if "tuple" in str(field_type):
        return tuple(float(x) if "." in x else int(x) for x in text.split(",") if x)
    if "int" in str(field_type) and "None" not in str(field_type):
        return int(float(text))
    if "float" in str(field_type):
        return float(text)
    if "None" in str(field_type):
        return None if text == "none" else int(text)
    return text


def recipe_config(sets: list[str], n_seeds: int):
    from atlas.ingest.zoo import DEMO

    types = {f.name: f.type for f in fields(DEMO)}
    changes: dict[str, Any] = {"seeds": tuple(range(1, n_seeds + 1))}
    for item in sets:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set {key}: not a ZooConfig field ({', '.join(types)})")
        changes[key] = parse_value(types[key], value)
    return replace(DEMO, **changes)


# ---------------------------------------------------------------- measuring one cohort (one step)

@torch.no_grad()
def held_out_loss(path: Path, rows: torch.Tensor, batch: int = 32) -> float:
    """Mean next-token loss of the checkpoint in ``path`` over ``rows: [n_rows, ctx]``."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(path).eval()
    total, count = 0.0, 0
    for start in range(0, rows.shape[0], batch):
        chunk = rows[start:start + batch]
        total += float(model(input_ids=chunk, labels=chunk).loss) * chunk.shape[0]
        count += chunk.shape[0]
    return total / count


@torch.no_grad()
def measure_cohort(paths: list[Path], rows: torch.Tensor, rule: dict[str, Any], batch_rows: int = 32) -> dict[str, Any]:
    """Correlate ``paths[0]`` (reference) with the other checkpoints over ``rows``; summarise."""
    from atlas.ingest.activations import flatten_neurons, kept_token_mask, mlp_activations
    from atlas.ingest.math.correlation import CohortCorrelation
    from atlas.ingest.math.moments import Moments
    from atlas.ingest.models import load_model

    models = [load_model(str(p), "cpu") for p in paths]
    shape = (models[0].n_layers, models[0].d_mlp)
    acc = CohortCorrelation(shape, [shape] * (len(models) - 1), rotation="gaussian_unit_rows", rotation_seed=0)
    pre_moments = Moments(shape[0] * shape[1])
    fires = torch.zeros(shape[0] * shape[1], dtype=torch.float64)
    n_kept = 0
    for start in range(0, rows.shape[0], batch_rows):
        tokens = rows[start:start + batch_rows]
        keep = kept_token_mask(tokens, rule).reshape(-1)
        posts = []
        for i, model in enumerate(models):
            acts = mlp_activations(model, tokens, hooks=("pre", "post") if i == 0 else ("post",))
            posts.append(flatten_neurons(acts["post"])[keep])
            if i == 0:
                pre = flatten_neurons(acts["pre"])[keep]
                pre_moments.update(pre)
                fires += (posts[0] > 0).sum(0, dtype=torch.float64)
        acc.update(posts[0], posts[1:])
        n_kept += int(keep.sum())
    paper = acc.finalize(top_k=1)
    acc.rotation = "orthogonal"
    haar = acc.finalize(top_k=1)
    moments = pre_moments.finalize()
    rate = (fires / n_kept).float()
    return summarise(paper, haar, rate, moments["kurtosis"].float(), shape, n_kept)


def _within_layer_percentile(values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Each neuron's percentile (0–100) of ``values`` within its own layer (NaN stays NaN)."""
    out = torch.full_like(values, float("nan"))
    n_layers, d_mlp = shape
    for layer in range(n_layers):
        v = values[layer * d_mlp:(layer + 1) * d_mlp]
        ok = ~torch.isnan(v)
        ranks = v[ok].argsort().argsort().float()
        pct = torch.full_like(v, float("nan"))
        pct[ok] = 100 * ranks / max(1, int(ok.sum()) - 1)
        out[layer * d_mlp:(layer + 1) * d_mlp] = pct
    return out


def summarise(paper, haar, rate: torch.Tensor, kurtosis: torch.Tensor, shape: tuple[int, int],
              n_kept: int) -> dict[str, Any]:
    def med(x: torch.Tensor) -> float | None:
        x = x[~torch.isnan(x)]
        return round(float(x.median()), 4) if x.numel() else None

    n_layers, d_mlp = shape
    excess = paper.excess
    valid = excess[~torch.isnan(excess)]
    out: dict[str, Any] = {
        "n_tokens": n_kept,
        "mean_corr_median": med(paper.mean_corr),
        "baseline_median": med(paper.mean_baseline),
        "baseline_median_orthogonal": med(haar.mean_baseline),
        "excess_quantiles": {str(q): round(float(valid.quantile(q)), 4) for q in QUANTILES},
        "excess_max": round(float(valid.max()), 4),
        "dead": int(torch.isnan(excess).sum()),
    }
    for t in THRESHOLDS:
        out[f"share_gt_{t}"] = round(float((excess > t).float().mean()), 5)
        out[f"share_gt_{t}_orthogonal"] = round(float((haar.excess > t).float().mean()), 5)
    per_layer = (excess > 0.5).float().view(n_layers, d_mlp).mean(1)
    out["share_gt_0.5_per_layer"] = [round(float(x), 5) for x in per_layer]
    out["share_gt_0.3_per_layer"] = [round(float(x), 5) for x in (excess > 0.3).float().view(n_layers, d_mlp).mean(1)]
    out["per_layer_median"] = {name: [med(v.view(n_layers, d_mlp)[l]) for l in range(n_layers)]
                               for name, v in (("mean_corr", paper.mean_corr), ("baseline", paper.mean_baseline),
                                               ("excess", excess))}
    universal = excess > 0.5
    top = universal if int(universal.sum()) >= 5 else torch.zeros_like(universal).scatter(
        0, torch.nan_to_num(excess, nan=-1.0).topk(min(20, excess.numel())).indices, True)
    rate_pct = _within_layer_percentile(rate, shape)
    kurt_pct = _within_layer_percentile(kurtosis, shape)
    out["signature"] = {
        "neurons": "universal (excess > 0.5)" if int(universal.sum()) >= 5 else "top 20 by excess",
        "n": int(top.sum()),
        "firing_rate_median": med(rate[top]), "firing_rate_median_all": med(rate),
        "kurtosis_median": med(kurtosis[top]), "kurtosis_median_all": med(kurtosis),
        "firing_rate_layer_percentile_median": med(rate_pct[top]),
        "kurtosis_layer_percentile_median": med(kurt_pct[top]),
        "mean_corr_median": med(paper.mean_corr[top]), "baseline_median": med(paper.mean_baseline[top]),
    }
    return out


# ---------------------------------------------------------------- one recipe

def run_recipe(label: str, config, corpus: str, note: str, eval_tokens: int | None) -> dict[str, Any]:
    """Train the seeds of ``config`` interleaved (one optimizer step each in turn: the weights are
    those of sequential training) and measure every checkpoint as soon as all seeds reach it, so a
    long recipe shows its curve while it trains. The record is rewritten after every measurement."""
    from atlas.ingest.datasets import build_rows
    from atlas.ingest.zoo import (STEPS_DIR, SeedTraining, _cached, _threads, cohort_tokenizer, corpus_hash,
                                  encode_documents, step_dir_name, stream_to_rows)
    from atlas.settings import get_settings

    train_docs, held_docs = corpus_documents(corpus)
    root = get_settings().home / "bench-recipes" / f"{corpus}-{config.fingerprint()}" / config.name
    root.mkdir(parents=True, exist_ok=True)
    c_hash = corpus_hash(train_docs)
    tokenizer, _ = cohort_tokenizer(config, train_docs, root, c_hash)
    held = build_rows(tokenizer, held_docs, config.n_ctx, eval_tokens)
    stream = encode_documents(tokenizer, train_docs)
    out_dirs = [root / config.model_name(s) for s in config.seeds]
    record: dict[str, Any] = {
        "label": label, "note": note, "corpus": corpus,
        "recipe": {k: v for k, v in asdict(config).items() if k not in ("name", "seeds")},
        "n_seeds": len(config.seeds), "fingerprint": config.fingerprint(),
        "train_tokens_corpus": int(stream.numel()), "eval_tokens": held.n_kept_tokens,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_at_start": round(os.getloadavg()[0], 2),
        "steps": [],
    }

    def measure(step: int, tokens: int, paths: list[Path], train_seconds: float | None) -> None:
        t = time.perf_counter()
        measured = measure_cohort(paths, held.rows, held.filter_rule)
        measured.update(step=step, train_tokens=tokens, held_out_loss=round(held_out_loss(paths[0], held.rows), 4),
                        train_seconds_per_seed=None if train_seconds is None else round(train_seconds / len(paths), 1),
                        measure_seconds=round(time.perf_counter() - t, 1),
                        load_average=round(os.getloadavg()[0], 2))
        record["steps"].append(measured)
        record["final"] = measured
        upsert_record(record)
        print(f"  {tokens / 1e6:.2f}M tokens ({measured['train_seconds_per_seed']} s/seed): loss "
              f"{measured['held_out_loss']}, baseline median {measured['baseline_median']}, excess q99 "
              f"{measured['excess_quantiles']['0.99']} max {measured['excess_max']}, share>0.5 "
              f"{measured['share_gt_0.5']:.2%} {measured['share_gt_0.5_per_layer']}, share>0.3 "
              f"{measured['share_gt_0.3']:.2%}", flush=True)

    tokens_per_step = config.batch_size * config.n_ctx
    with _threads(config.threads):
        if all(_cached(d, config, s, c_hash) for d, s in zip(out_dirs, config.seeds)):
            metas = [json.loads((d / "zoo.json").read_text()) for d in out_dirs]
            for c in metas[0]["checkpoints"]:
                measure(c["step"], c["train_tokens"], [d / STEPS_DIR / step_dir_name(c["step"]) for d in out_dirs], None)
            measure(metas[0]["train_steps"], metas[0]["train_tokens"], out_dirs,
                    sum(m["train_seconds"] for m in metas))
            return record
        rows = stream_to_rows(stream, config.n_ctx, tokenizer.bos_token_id)
        trainings = [SeedTraining(config, s, rows, tokenizer, d, c_hash) for s, d in zip(config.seeds, out_dirs)]
        train_seconds = 0.0
        while not trainings[0].done:
            t = time.perf_counter()
            saved = [tr.step() for tr in trainings]
            train_seconds += time.perf_counter() - t
            if saved[0] is not None:
                step = trainings[0].steps_done
                measure(step, step * tokens_per_step, saved, train_seconds)
        t = time.perf_counter()
        paths = [tr.finish() for tr in trainings]
        train_seconds += time.perf_counter() - t
        record["train_loss_ema"] = [round(tr.loss_ema, 4) for tr in trainings]
        record["params"] = sum(p.numel() for p in trainings[0].model.parameters())
        measure(trainings[0].n_steps, trainings[0].n_steps * tokens_per_step, paths, train_seconds)
    return record


def upsert_record(record: dict[str, Any], path: Path = RESULTS) -> None:
    """Write ``record`` into the results file, replacing an earlier record with the same label."""
    records = json.loads(path.read_text()) if path.exists() else []
    records = [r for r in records if r.get("label") != record["label"]] + [record]
    path.write_text(json.dumps(records, indent=1) + "\n")


def frontier_table(records: list[dict[str, Any]]) -> str:
    """The recorded recipes as a markdown table, one row per measured checkpoint."""
    head = ("| recipe | changes from the demo recipe | tokens/seed | train s/seed | held-out loss | baseline median "
            "| excess q99 | max | > 0.5 (paper baseline) | > 0.5 (orthogonal) | > 0.3 | > 0.5 per layer |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    from atlas.ingest.zoo import DEMO

    base = {k: v for k, v in asdict(DEMO).items() if k not in ("name", "seeds")}
    for rec in records:
        changes = ", ".join(f"{k}={v}" for k, v in rec["recipe"].items()
                            if k not in ("checkpoints", "threads") and base.get(k) != v)
        changes = (changes + ("; " if changes else "") + f"{rec['n_seeds']} seeds, {rec['corpus']}").strip()
        for step in rec["steps"]:
            t = step.get("train_seconds_per_seed")
            lines.append(
                f"| {rec['label']} | {changes} | {step['train_tokens'] / 1e6:.2f}M | {'' if t is None else f'{t:.0f}'} "
                f"| {step['held_out_loss']:.3f} | {step['baseline_median']:.3f} | {step['excess_quantiles']['0.99']:.3f} "
                f"| {step['excess_max']:.3f} | {step['share_gt_0.5']:.2%} | {step['share_gt_0.5_orthogonal']:.2%} "
                f"| {step['share_gt_0.3']:.2%} | {' / '.join(f'{x:.1%}' for x in step['share_gt_0.5_per_layer'])} |")
    notes = [f"- {rec['label']}: {rec['note']}" for rec in records if rec.get("note")]
    return "\n".join(lines) + "\n" + ("\nNotes:\n\n" + "\n".join(notes) + "\n" if notes else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label")
    parser.add_argument("--table", action="store_true", help="write bench/results/demo_recipes.md from the records")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corpus", default="shakespeare", choices=("shakespeare", "shakespeare+milton"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="ZooConfig field=value")
    parser.add_argument("--note", default="")
    parser.add_argument("--eval-tokens", type=int, default=None, help="cap on held-out tokens (default: all)")
    args = parser.parse_args(argv)
    if args.table:
        table = frontier_table(json.loads(RESULTS.read_text()))
        RESULTS.with_suffix(".md").write_text("# Demo-cohort recipes (bench/demo_recipes.py)\n\n" + TABLE_NOTE + table)
        print(table)
        return 0
    if not args.label:
        parser.error("--label is required")
    config = recipe_config(args.sets, args.seeds)
    if config.threads is None:
        config = replace(config, threads=torch.get_num_threads())
    record = run_recipe(args.label, config, args.corpus, args.note, args.eval_tokens)
    print(json.dumps({k: record[k] for k in ("label", "final")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
