"""Benchmark of correlation checkpoints (ingest/checkpoint.py): write rate here, cost at paper scale.

    python -m bench.bench_checkpoint                  # ~1 GB state, 5 saves
    python -m bench.bench_checkpoint --gib 4 --repeats 3

1. Measures ``Checkpoint.save`` (torch.save, fsync, atomic rename) and ``Checkpoint.load`` of a
   correlation accumulator's state (float64 totals, as ``CohortCorrelation.state_dict`` gives them)
   of ``--gib`` GiB into the checkpoint directory's file system, saves and loads interleaved; and
   what lossless compression (zlib, fastest level) would save on real totals, and at what speed.
2. Projects the paper's experiment (5 × GPT2-small: reference 12 × 3072 against 4 partners, 100M
   tokens): the state's exact size, the run's length (from bench/results/correlation_cuda.json's
   projection when a GPU run recorded one, else from the cross-moment FLOPs at ``--tflops``), and
   the share of the run that checkpoints cost — every 20M tokens (the former fixed interval,
   synchronous) and with ``CheckpointSchedule`` (the default now: at most 5 % by construction),
   synchronous and with background writes (a GPU run waits only for the device-to-host copy,
   ``--d2h-gbps``, an assumption: no GPU here; the disk rate is the one measured).

Writes bench/results/checkpoint_cpu.json and .md. Ratios and rates; nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

RESULTS = Path(__file__).parent / "results"
PAPER_TOKENS = 100_000_000
PAPER_SHAPE = (12, 3072)
PAPER_PARTNERS = 4
FIXED_INTERVAL_TOKENS = 20_000_000


def paper_state_bytes() -> int:
    """Bytes of a 5 × GPT2-small correlation checkpoint: P_total, C_total per partner, C_ref_total (float64)."""
    layers, d = PAPER_SHAPE
    n = layers * d
    return 8 * (n * n * PAPER_PARTNERS + PAPER_PARTNERS * layers * d * d + layers * d * d) + 8 * 4 * n * (PAPER_PARTNERS + 1)


def real_state(d_mlp: int, n_layers: int = 12, tokens: int = 512, seed: int = 0) -> dict:
    """The state_dict of a real accumulator (reference + 4 partners of ``n_layers × d_mlp``) after a
    few batches of correlated activations: totals with the bits real ones have."""
    from atlas.ingest.math.correlation import CohortCorrelation

    g = torch.Generator().manual_seed(seed)
    shape = (n_layers, d_mlp)
    n = n_layers * d_mlp
    acc = CohortCorrelation(shape, [shape] * PAPER_PARTNERS, flush_every=2)
    latent = torch.randn(64, n, generator=g)
    for _ in range(3):
        z = torch.randn(tokens, 64, generator=g)
        acts = [torch.nn.functional.gelu(z @ latent + 0.5 * torch.randn(tokens, n, generator=g)) for _ in range(5)]
        acc.update(acts[0], acts[1:])
    return acc.state_dict()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the measured state")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tflops", type=float, default=400.0,
                        help="sustained cross-moment TFLOP/s assumed for the paper run when no GPU projection is recorded")
    parser.add_argument("--d2h-gbps", type=float, default=10.0,
                        help="device-to-host copy rate assumed for background saves on a GPU (pageable PCIe)")
    parser.add_argument("--dir", default=None, help="where to write (default: the atlas checkpoint directory)")
    args = parser.parse_args(argv)

    from atlas.ingest.checkpoint import Checkpoint, CheckpointIdentity, CheckpointSchedule, payload_bytes
    from atlas.settings import get_settings

    load_before = os.getloadavg()
    # the measured state: a real accumulator's state, its P_total tiled up to --gib
    state = real_state(d_mlp=128)
    per_copy = payload_bytes(state["P_total"])
    copies = max(1, round(args.gib * 2**30 / per_copy))
    state["P_total"] = state["P_total"].repeat(copies, 1)
    nbytes = payload_bytes(state)

    directory = Path(args.dir) if args.dir else get_settings().checkpoints_dir
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=directory) as tmp:
        identity = CheckpointIdentity(database="bench", run_id=0, run_key="bench", kind="bench", models=("m",),
                                      dataset="d", params="p", code_version="bench")
        ckpt = Checkpoint(Path(tmp), identity)
        saves, loads, snapshots = [], [], []
        for round_ in range(args.repeats + 1):
            t0 = time.perf_counter()
            ckpt.save(state)
            t1 = time.perf_counter()
            got = ckpt.load()
            t2 = time.perf_counter()
            del got
            waited = ckpt.save(state, background=True)  # the caller waits for the host snapshot only
            ckpt.wait()
            if round_:
                saves.append(t1 - t0)
                loads.append(t2 - t1)
                snapshots.append(waited)
            ckpt = Checkpoint(Path(tmp), replace(identity, run_id=round_ + 1))  # a new file each round
        file_bytes = sum(p.stat().st_size for p in Path(tmp).glob("*.pt")) / max(1, len(list(Path(tmp).glob("*.pt"))))
    save_s, load_s = sorted(saves)[len(saves) // 2], sorted(loads)[len(loads) // 2]
    snapshot_s = sorted(snapshots)[len(snapshots) // 2]
    write_rate = nbytes / save_s

    # lossless compression of real totals: ratio and speed (fastest zlib level)
    sample = real_state(d_mlp=64, seed=1)["P_total"].numpy().tobytes()
    t0 = time.perf_counter()
    packed = zlib.compress(sample, 1)
    zlib_s = time.perf_counter() - t0
    compression = {"ratio": round(len(sample) / len(packed), 3), "mb_per_s": round(len(sample) / zlib_s / 1e6, 1)}

    # the paper's experiment
    paper_bytes = paper_state_bytes()
    layers, d = PAPER_SHAPE
    flops = 2 * (layers * d) * (PAPER_PARTNERS * layers * d) * PAPER_TOKENS
    run_s, run_source = flops / (args.tflops * 1e12), f"cross-moment FLOPs at an assumed {args.tflops:g} TFLOP/s"
    gpu = RESULTS / "correlation_cuda.json"
    if gpu.exists():
        projection = json.loads(gpu.read_text()).get("projection")
        if projection and projection.get("projected_paper_s"):
            run_s, run_source = float(projection["projected_paper_s"]), f"bench_correlation --projection on {gpu.name}"
    t_write = paper_bytes / write_rate
    fixed_saves = math.ceil(PAPER_TOKENS / FIXED_INTERVAL_TOKENS)  # the former loop also saved on the last batch
    fixed_share = fixed_saves * t_write / run_s
    sim = _simulate(CheckpointSchedule, run_s, paper_bytes, write_rate)
    sim_bg = _simulate(CheckpointSchedule, run_s, paper_bytes, write_rate, blocking_rate=args.d2h_gbps * 1e9)
    result = {
        "machine": _machine(), "directory_fs": _fs(directory), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "repeats": args.repeats,
        "measured": {"state_bytes": nbytes, "file_bytes": int(file_bytes), "save_s": round(save_s, 3),
                     "load_s": round(load_s, 3), "write_gb_per_s": round(write_rate / 1e9, 3),
                     "background_wait_s": round(snapshot_s, 3), "host_snapshot_gb_per_s": round(nbytes / snapshot_s / 1e9, 2),
                     "read_gb_per_s": round(nbytes / load_s / 1e9, 3), "zlib_level1": compression},
        "paper": {"state_gb": round(paper_bytes / 1e9, 2), "run_s": round(run_s), "run_source": run_source,
                  "write_s": round(t_write, 1), "fixed_20m_saves": fixed_saves,
                  "fixed_20m_share": round(fixed_share, 4), "scheduled": sim, "goal_share": 0.05,
                  "d2h_gb_per_s_assumed": args.d2h_gbps, "scheduled_background": sim_bg},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "checkpoint_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _simulate(schedule_cls, run_s: float, state_bytes: int, rate: float, blocking_rate: float | None = None) -> dict:
    """The paper run under ``CheckpointSchedule`` (default settings), on a clock: one batch of 8k tokens
    at a time. A synchronous save blocks for ``state_bytes / rate``; a background one blocks for
    ``state_bytes / blocking_rate`` and the next may start once the disk has it (as correlate does)."""
    clock = {"now": 0.0}
    schedule = schedule_cls(min_tokens=FIXED_INTERVAL_TOKENS, clock=lambda: clock["now"],
                            assumed_rate=5e9 if blocking_rate else 2e8)  # as correlate sets it up
    batch = 8192
    per_batch = run_s * batch / PAPER_TOKENS
    times = []
    writing_until = 0.0
    for done in range(batch, PAPER_TOKENS, batch):  # (no save on the last batch)
        clock["now"] += per_batch
        schedule.advance(batch)
        if clock["now"] >= writing_until and schedule.due(state_bytes):
            blocked = state_bytes / (blocking_rate or rate)
            clock["now"] += blocked
            schedule.saved(blocked, state_bytes)
            writing_until = clock["now"] + (state_bytes / rate - blocked if blocking_rate else 0.0)
            times.append(round(clock["now"]))
    return {"saves": schedule.saves, "share": round(schedule.write_s / clock["now"], 4), "save_at_s": times}


def _gap(sim: dict, paper: dict) -> str:
    gaps = [b - a for a, b in zip([0, *sim["save_at_s"]], [*sim["save_at_s"], paper["run_s"]])]
    return f"{max(gaps):,} s"


def _machine() -> str:
    from bench.bench_load import cpu_name

    return cpu_name()


def _fs(directory: Path) -> str:
    try:
        st = os.statvfs(directory)
        return f"{st.f_bavail * st.f_frsize / 2**30:.0f} GiB free"
    except OSError:
        return "unknown"


def markdown(r: dict) -> str:
    m, p = r["measured"], r["paper"]
    s = p["scheduled"]
    return "\n".join([
        f"# Checkpoint benchmark ({r['machine']})", "",
        f"Measured: a correlation accumulator's state of {m['state_bytes'] / 2**30:.2f} GiB saved (torch.save + fsync + "
        f"atomic rename) and loaded, median of {r['repeats']}; load average before/after {r['load_average_before'][0]} / "
        f"{r['load_average_after'][0]} (1 min); checkpoint file system: {r['directory_fs']}.", "",
        "| measure | value |", "|---|---:|",
        f"| save | {m['save_s']} s ({m['write_gb_per_s']} GB/s) |",
        f"| load | {m['load_s']} s ({m['read_gb_per_s']} GB/s) |",
        f"| zlib (level 1) on real float64 totals | {m['zlib_level1']['ratio']}× smaller at "
        f"{m['zlib_level1']['mb_per_s']} MB/s: slower than writing, not used |", "",
        f"Paper scale (5 × GPT2-small, 100M tokens): a checkpoint is **{p['state_gb']} GB**; at the rate above one "
        f"takes **{p['write_s']} s**. The run: {p['run_s']:,} s ({p['run_source']}).", "",
        "| policy | checkpoints | share of the run | longest stretch without one |", "|---|---:|---:|---:|",
        f"| every 20M tokens (before) | {p['fixed_20m_saves']} | {p['fixed_20m_share']:.1%} | "
        f"{round(p['run_s'] * FIXED_INTERVAL_TOKENS / PAPER_TOKENS):,} s |",
        f"| CheckpointSchedule, synchronous (≥ 20M tokens apart, at most {p['goal_share']:.0%}) | {s['saves']} | "
        f"{s['share']:.1%} | {_gap(s, p)} |",
        f"| CheckpointSchedule, background writes (GPU runs; D2H at an assumed {p['d2h_gb_per_s_assumed']:g} GB/s) | "
        f"{p['scheduled_background']['saves']} | **{p['scheduled_background']['share']:.1%}** | "
        f"{_gap(p['scheduled_background'], p)} |", "",
        f"A background save made the caller wait {m['background_wait_s']} s here (host snapshot at "
        f"{m['host_snapshot_gb_per_s']} GB/s) instead of {m['save_s']} s.", "",
        "Regenerate with `python -m bench.bench_checkpoint`; on the GPU machine the run length comes from "
        "`python -m bench.bench_correlation --device cuda --projection`.", "",
    ])


if __name__ == "__main__":
    main()
