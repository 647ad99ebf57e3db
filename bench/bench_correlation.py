"""Benchmark of the cross-seed correlation engine (ingest/math/correlation/).

    python -m bench.bench_correlation                      # CPU, a size that takes ~2 minutes
    python -m bench.bench_correlation --device cuda        # GPU: GPT2-small-shaped cohort
    python -m bench.bench_correlation --device cuda --projection   # + the paper-experiment projection

Measures, on one device and in one run (ratios, never absolute-time assertions):

1. efficiency: FLOP/s of the cross-moment accumulation (useful FLOPs 2·n_ref·ΣN_m per token, over
   the whole ``update``: standardising, vector moments, within-layer moments, flushes) against
   the same device's measured GEMM rate at the same precision;
2. speed-up over the authors' design (bench/reference_design.py) on the same activations, end to
   end (both including their finalisation) and per streamed token (the ratio at paper scale);
3. ``--projection``: tokens/s of a 5-seed GPT2-small-shaped cohort (12 layers × 3072) — random-init
   GPT-2 models forwarded on the device when transformers is importable, else synthetic
   activations — projected to the paper's experiment: 100M tokens, 4 partners, with baseline.

Writes bench/results/correlation_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bench.reference_design import ReferenceCohort
from atlas.ingest.math.correlation import (
    CohortCorrelation,
    batch_workspace_bytes,
    build_rotation,
    default_budget_bytes,
    plan_ref_blocks,
)

RESULTS = Path(__file__).parent / "results"
PAPER_TOKENS = 100_000_000


# ---------------------------------------------------------------- helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


@dataclass
class SyntheticCohort:
    """Deterministic GELU activations for a cohort; batch b is regenerated on demand (so a GPU-sized
    cohort needs no memory for its token stream). Partners share latent factors with the reference,
    so there are real correlations to find."""

    n_models: int
    shape: tuple[int, int]
    n_tokens: int
    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    n_latent: int = 64

    def __post_init__(self) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        n = self.shape[0] * self.shape[1]
        mix = [torch.randn(self.n_latent, n, generator=gen) / math.sqrt(self.n_latent) for _ in range(self.n_models)]
        shared = torch.randperm(n, generator=gen)[: n // 20]  # 5% of neurons read the same latents in every model
        for m in range(1, self.n_models):
            mix[m][:, shared] = mix[0][:, shared]
        self.mix = [w.to(self.device) for w in mix]
        self.bias = [(torch.rand(n, generator=gen) * 2 - 1.5).to(self.device) for _ in range(self.n_models)]

    def batch(self, b: int) -> list[torch.Tensor]:
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + b)
        latent = torch.randn(self.n_tokens, self.n_latent, generator=gen, device=self.device)
        out = []
        for w, bias in zip(self.mix, self.bias):
            noise = torch.randn(self.n_tokens, w.shape[1], generator=gen, device=self.device)
            out.append(torch.nn.functional.gelu(latent @ w + 0.5 * noise + bias).to(self.dtype))
        return out


def measure_gemm(device: torch.device, precision: str, m: int, k: int, n: int, repeats: int = 3) -> float:
    """FLOP/s of ``out(float32) += a @ b`` with ``a: [m, k]``, ``b: [k, n]`` at ``precision``."""
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    native = half is not None and device.type == "cuda"
    dtype = half if native else torch.float32
    a = torch.randn(k, m, device=device).to(dtype).T  # the engine's transposed-reference layout
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.zeros(m, n, device=device, dtype=torch.float32)

    def step() -> None:
        if native:
            try:
                torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
            except (RuntimeError, TypeError):
                out.add_(torch.mm(a, b).float())
        else:
            torch.addmm(out, a, b, out=out)

    matmul = getattr(torch.backends.cuda, "matmul", None)
    old = getattr(matmul, "fp32_precision", None) if device.type == "cuda" else None
    if device.type == "cuda" and old is not None:
        matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        sync(device)
        elapsed = time.perf_counter() - t0
    finally:
        if old is not None:
            matmul.fp32_precision = old
    return 2.0 * m * k * n * repeats / elapsed


def timed(device: torch.device, fn) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def run_interleaved(cohort: SyntheticCohort, n_batches: int, *, device: torch.device, precision: str,
                    seed: int, ref_block: tuple[int, int] | None, buffered: bool,
                    reference_partners: int | None) -> dict:
    """Stream the same batches through (a) a bare GEMM of the engine's shape and precision, (b) our
    accumulator and (c) the authors' design (both of its passes), timing each per batch, so the
    ratios hold even when the machine's load changes during the run. Batch generation is untimed.
    The first batch is a warm-up for every contestant (lazy probes, allocations) and is not timed."""
    shape = cohort.shape
    n_partners = cohort.n_models - 1
    acc = CohortCorrelation(shape, [shape] * n_partners, device=device, precision=precision,
                            rotation="gaussian_unit_rows", rotation_seed=seed, ref_slice=ref_block,
                            buffered=buffered)
    lo, hi = ref_block or (0, shape[0] * shape[1])
    ref_m = n_partners if reference_partners is None else reference_partners
    reference = None
    if ref_m:
        rotations = [build_rotation(seed, "gaussian_unit_rows", m, shape, device).float() for m in range(ref_m)]
        reference = ReferenceCohort(shape, [shape] * ref_m, rotations)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.precision)
    native = half is not None and device.type == "cuda"
    # the bare GEMM covers at most 8192 reference rows on a GPU (its output would not fit beside the
    # accumulators); its rate per FLOP is the same at these sizes
    rows = min(hi - lo, 8192 if device.type == "cuda" else hi - lo)
    gemm_out = torch.zeros(rows, sum(acc.partner_sizes), dtype=torch.float32, device=device)

    def bare_gemm(acts: list[torch.Tensor]) -> None:
        a = acts[0][:, lo:lo + rows].to(half if native else torch.float32)
        b = torch.cat(acts[1:], dim=1).to(half if native else torch.float32)
        sync(device)
        t0 = time.perf_counter()
        if native:
            torch.addmm(gemm_out, a.T, b, out_dtype=torch.float32, out=gemm_out)
        else:
            torch.addmm(gemm_out, a.T, b, out=gemm_out)
        sync(device)
        clock["gemm"] += time.perf_counter() - t0

    clock = {"gemm": 0.0, "ours": 0.0, "ref_pass1": 0.0, "ref_pass2": 0.0}
    tokens = 0
    for b in range(n_batches + 1):
        acts = cohort.batch(b)
        warm = b == 0
        saved = dict(clock)
        if native:
            try:
                bare_gemm(acts)
            except (RuntimeError, TypeError):
                native = False
                clock["gemm"] = saved["gemm"]
                bare_gemm(acts)
        else:
            bare_gemm(acts)
        clock["ours"] += timed(device, lambda: acc.update(acts[0], acts[1:]))
        bare_gemm(acts)  # bracket ours by two bare GEMMs: their mean is the rate at that moment
        if reference is not None:
            clock["ref_pass1"] += timed(device, lambda: reference.update(acts[0], acts[1:ref_m + 1]))
            clock["ref_pass2"] += timed(device, lambda: reference.update_baseline(acts[0], acts[1:ref_m + 1]))
        if warm:
            clock = saved
        else:
            tokens += acts[0].shape[0]
        del acts
    t0 = time.perf_counter()
    result = acc.finalize()
    sync(device)
    finalize_s = time.perf_counter() - t0
    flops = acc.flops_per_token() * tokens
    out = {
        "tokens_timed": tokens, "warmup_tokens": cohort.n_tokens,
        "gemm_s": clock["gemm"] / 2, "gemm_flop_per_s": 2 * flops * rows / (hi - lo) / clock["gemm"],
        "engine": {"precision": acc.precision, "gemm_mode": acc._gemm_mode, "buffered": acc.buffered,
                   "n_ref": acc.n_ref, "update_s": clock["ours"], "finalize_s": finalize_s,
                   "tokens_per_s": tokens / clock["ours"], "cross_moment_flop_per_s": flops / clock["ours"]},
        "result": result,
    }
    del acc
    if reference is not None:
        t0 = time.perf_counter()
        summary = reference.summary()
        out["reference"] = {"partners": ref_m, "pass1_s": clock["ref_pass1"], "pass2_s": clock["ref_pass2"],
                            "finalize_s": time.perf_counter() - t0,
                            "stream_s_per_token_per_partner": (clock["ref_pass1"] + clock["ref_pass2"]) / tokens / ref_m}
        out["summary"] = summary
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------- projection

def _gpt2_models(n_models: int, shape: tuple[int, int], n_ctx: int, device: torch.device, dtype: torch.dtype):
    """Random-init GPT-2 models with GPT2-small's shapes, and hook buffers for hook_post (the MLP
    activation's output). None when transformers is not importable."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    n_layers, d_mlp = shape
    models = []
    for seed in range(n_models):
        torch.manual_seed(seed)
        cfg = GPT2Config(n_layer=n_layers, n_embd=d_mlp // 4, n_inner=d_mlp, n_head=max(1, d_mlp // 256),
                         n_positions=n_ctx, n_ctx=n_ctx, vocab_size=50257)
        models.append(GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval())
    return models


def run_projection(device: torch.device, *, shape: tuple[int, int], n_models: int, batch_ctx: int, n_ctx: int,
                   n_batches: int, precision: str | None, seed: int, source: str) -> dict:
    n_layers, d_mlp = shape
    n = n_layers * d_mlp
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models = _gpt2_models(n_models, shape, n_ctx, device, dtype) if source in ("auto", "model") else None
    if models is None and source == "model":
        raise SystemExit("--projection-source model needs transformers")
    partner_sizes = [n] * (n_models - 1)

    def plan_for(ctx_rows: int):
        reserve = (batch_workspace_bytes(ctx_rows * (n_ctx - 1), n, partner_sizes, in_bytes=dtype.itemsize)
                   + n_models * ctx_rows * n_ctx * n * dtype.itemsize + (2 << 30))  # + the hook buffers
        return plan_ref_blocks(n, [shape] * (n_models - 1), budget_bytes=default_budget_bytes(device, reserve))

    plan = plan_for(batch_ctx)
    for smaller in (batch_ctx // 2, batch_ctx // 4):  # a smaller batch, if it saves a pass or the direct mode
        if smaller < 1 or (plan.buffered and len(plan.blocks) == 1):
            break
        alt = plan_for(smaller)
        if (len(alt.blocks), not alt.buffered) < (len(plan.blocks), not plan.buffered):
            plan, batch_ctx = alt, smaller
    kept_per_batch = batch_ctx * (n_ctx - 1)  # position 0 (BOS) is dropped, as the filter rule does
    if models is not None:
        buffers = [torch.empty(batch_ctx, n_ctx, n_layers, d_mlp, device=device, dtype=dtype) for _ in models]
        handles = []
        for model, buf in zip(models, buffers):
            for layer, block in enumerate(model.transformer.h):
                def hook(_mod, _inp, out, buf=buf, layer=layer):
                    buf[:, :, layer].copy_(out)
                handles.append(block.mlp.act.register_forward_hook(hook))

        def forward(b: int) -> list[torch.Tensor]:
            gen = torch.Generator(device="cpu").manual_seed(seed * 7919 + b)
            tokens = torch.randint(0, 50257, (batch_ctx, n_ctx), generator=gen).to(device)
            with torch.no_grad():
                for model in models:
                    model.transformer(tokens)  # hook_post is all we need: skip the unembedding
            return [buf[:, 1:].reshape(kept_per_batch, n) for buf in buffers]
        used = "random-init GPT-2 forward (transformers)"
    else:
        synthetic = SyntheticCohort(n_models, shape, kept_per_batch, device, dtype, seed=seed)
        forward = synthetic.batch
        used = "synthetic activations (no model forward: transformers not importable)"

    acc = CohortCorrelation(shape, [shape] * (n_models - 1), device=device, precision=precision,
                            ref_slice=plan.blocks[0], buffered=plan.buffered, rotation_seed=seed)
    acts = forward(0)
    acc.update(acts[0], acts[1:])  # warm-up batch: probes, allocator, the shift
    del acts
    sync(device)
    fwd_s = upd_s = 0.0
    for b in range(1, n_batches + 1):
        t0 = time.perf_counter()
        acts = forward(b)
        sync(device)
        t1 = time.perf_counter()
        acc.update(acts[0], acts[1:])
        sync(device)
        t2 = time.perf_counter()
        fwd_s += t1 - t0
        upd_s += t2 - t1
        del acts
    tokens = n_batches * kept_per_batch
    t0 = time.perf_counter()
    acc.finalize()
    sync(device)
    finalize_s = time.perf_counter() - t0
    per_token_s = (fwd_s + upd_s) / tokens
    n_blocks = len(plan.blocks)
    projected_s = n_blocks * (PAPER_TOKENS * per_token_s + finalize_s)  # each block is one pass over the data
    return {
        "source": used, "shape": list(shape), "n_models": n_models, "batch_tokens": kept_per_batch,
        "timed_batches": n_batches, "precision": acc.precision, "gemm_mode": acc._gemm_mode,
        "blocks": n_blocks, "buffered": plan.buffered, "block_accumulator_gib": plan.block_bytes / 2**30,
        "budget_gib": plan.budget_bytes / 2**30, "forward_s": fwd_s, "update_s": upd_s,
        "tokens_per_s": tokens / (fwd_s + upd_s), "update_tokens_per_s": tokens / upd_s,
        "update_flop_per_s": acc.flops_per_token() * tokens / upd_s, "finalize_s": finalize_s,
        "projected_paper_s": projected_s, "projected_paper_min": projected_s / 60,
    }


# ---------------------------------------------------------------- main

def agreement(ours, ref) -> dict:
    """Max |difference| between our results and the reference design's, where both are defined."""
    out = {}
    for name, mine, theirs in (("best_rho", ours.best_rho, ref.best_rho), ("baseline_rho", ours.baseline_rho, ref.baseline_rho),
                               ("partner_best_rho", ours.partner_best_rho, ref.partner_best_rho)):
        diffs = []
        for m, t in enumerate(theirs):
            a = mine[m]
            ok = ~torch.isnan(a)
            diffs.append(float((a[ok] - t.to(a.dtype)[ok]).abs().max()))
        out[name] = max(diffs)
    out["best_idx_equal_share"] = float(torch.stack([(ours.best_idx[m] == ref.best_idx[m]).float().mean()
                                                     for m in range(len(ref.best_idx))]).mean())
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--d-mlp", type=int, default=None)
    parser.add_argument("--partners", type=int, default=4)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--precision", default=None, help="fp32|tf32|bf16|fp16 (default: fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--reference-partners", type=int, default=None,
                        help="partners the authors' design runs (default: all on CPU, 1 on GPU; its cost is per pair)")
    parser.add_argument("--projection", action="store_true")
    parser.add_argument("--projection-source", default="auto", choices=["auto", "model", "synthetic"])
    parser.add_argument("--projection-shape", default="12x3072")
    parser.add_argument("--projection-ctx", type=int, default=512)
    parser.add_argument("--projection-batch", type=int, default=16, help="contexts per batch")
    parser.add_argument("--projection-batches", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--tag", default=None, help="file name suffix (default: the device type)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    # CPU default: GPT-2's layer count with narrow layers, the authors' batch (32 contexts × 512).
    layers = args.layers or 12
    d_mlp = args.d_mlp or (3072 if gpu else 256)
    batch_tokens = args.batch_tokens or (8192 if gpu else 16384)
    n_batches = args.batches or (8 if gpu else 2)
    shape = (layers, d_mlp)
    precision = args.precision or ("fp16" if gpu else "fp32")
    act_dtype = torch.float16 if gpu else torch.float32
    cohort = SyntheticCohort(args.partners + 1, shape, batch_tokens, device, act_dtype, seed=args.seed)
    n = layers * d_mlp

    report: dict = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "config": {"shape": list(shape), "partners": args.partners, "batch_tokens": batch_tokens,
                   "batches": n_batches, "precision": precision, "activation_dtype": str(act_dtype)},
    }

    # (1) and (2): our accumulator, a bare GEMM of its shape and the authors' design, interleaved
    block = None
    buffered = True
    if gpu:
        bare_gemm_out = 8192 * n * args.partners * 4
        reserve = batch_workspace_bytes(batch_tokens, n, [n] * args.partners) + bare_gemm_out + (2 << 30)
        # the float32-buffered accumulator (the fast one); on a small GPU a first block of reference rows
        plan = plan_ref_blocks(n, [shape] * args.partners, budget_bytes=default_budget_bytes(device, reserve),
                               buffered=True)
        block, buffered = plan.blocks[0], plan.buffered
        report["config"]["ref_blocks"] = len(plan.blocks)
    side = 8192 if gpu else 2048
    report["gemm_square_flop_per_s"] = measure_gemm(device, precision, side, side, side)
    ref_partners = 0 if args.skip_reference else (args.reference_partners if args.reference_partners is not None
                                                    else (1 if gpu else args.partners))
    run = run_interleaved(cohort, n_batches, device=device, precision=precision, seed=args.seed, ref_block=block,
                          buffered=buffered, reference_partners=ref_partners)
    e = run["engine"]
    report["tokens_timed"] = run["tokens_timed"]
    report["gemm_engine_shape_flop_per_s"] = run["gemm_flop_per_s"]
    report["engine"] = e
    report["efficiency"] = e["cross_moment_flop_per_s"] / run["gemm_flop_per_s"]
    report["efficiency_vs_square_gemm"] = e["cross_moment_flop_per_s"] / report["gemm_square_flop_per_s"]
    if "reference" in run:
        rt = run["reference"]
        report["reference"] = rt
        ours_per_token = e["update_s"] / run["tokens_timed"] * (n / e["n_ref"])  # all blocks
        ref_per_token = rt["stream_s_per_token_per_partner"] * args.partners
        report["speedup_per_token"] = ref_per_token / ours_per_token
        if rt["partners"] == args.partners and block is None:
            ours_total = e["update_s"] + e["finalize_s"]
            ref_total = rt["pass1_s"] + rt["pass2_s"] + rt["finalize_s"]
            report["end_to_end"] = {"ours_s": ours_total, "reference_s": ref_total, "speedup": ref_total / ours_total}
            report["agreement"] = agreement(run["result"], run["summary"])

    # (3) the paper experiment, projected
    if args.projection:
        p_shape = tuple(int(x) for x in args.projection_shape.split("x"))
        report["projection"] = run_projection(
            device, shape=p_shape, n_models=5, batch_ctx=args.projection_batch, n_ctx=args.projection_ctx,
            n_batches=args.projection_batches, precision=args.precision, seed=args.seed,
            source=args.projection_source)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or device.type
    (out_dir / f"correlation_{tag}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / f"correlation_{tag}.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    c, e = r["config"], r["engine"]
    tflops = lambda x: f"{x / 1e12:.3f} TFLOP/s"  # noqa: E731
    lines = [
        f"# Correlation engine benchmark — {r['device']}",
        "",
        f"torch {r['torch']}; cohort: reference + {c['partners']} partners of {c['shape'][0]} layers × "
        f"{c['shape'][1]} neurons; {c['batches']} timed batches of {c['batch_tokens']} tokens (+1 warm-up); "
        f"{e['precision']} GEMM inputs, float32 accumulation, float64 totals. Every contestant streams the same "
        "batch before the next is made, so load changes during the run hit all of them alike.",
        "",
        "| measure | value | goal |",
        "| --- | --- | --- |",
        f"| bare GEMM, engine's shape and precision | {tflops(r['gemm_engine_shape_flop_per_s'])} | |",
        f"| bare GEMM, square {('8192' if r['device_type'] == 'cuda' else '2048')}³ | {tflops(r['gemm_square_flop_per_s'])} | |",
        f"| cross-moment accumulation (whole `update`) | {tflops(e['cross_moment_flop_per_s'])} | |",
        f"| efficiency vs the bare GEMM | {100 * r['efficiency']:.0f}% | ≥ 60% |",
        f"| efficiency vs the square GEMM | {100 * r['efficiency_vs_square_gemm']:.0f}% | |",
        f"| streaming rate | {e['tokens_per_s']:,.0f} tokens/s | |",
        f"| finalisation (all partners, with baseline) | {e['finalize_s']:.2f} s | |",
    ]
    goal = "≥ 20×" if r["device_type"] == "cuda" else "≥ 3×"
    if "reference" in r:
        rt = r["reference"]
        lines.append(f"| vs authors' design, per streamed token (the ratio at paper scale; its {rt['partners']} "
                     f"partner(s) scaled to {c['partners']}) | {r['speedup_per_token']:.1f}× | {goal} |")
        if "end_to_end" in r:
            ee = r["end_to_end"]
            lines.append(f"| vs authors' design, end to end on these {r['tokens_timed']:,} tokens (incl. finalisation) | "
                         f"{ee['speedup']:.1f}× ({ee['reference_s']:.1f} s vs {ee['ours_s']:.1f} s) | {goal} |")
        if "agreement" in r:
            a = r["agreement"]
            lines.append(f"| agreement with the authors' design, max abs diff (best rho / baseline / partner side) | "
                         f"{a['best_rho']:.1e} / {a['baseline_rho']:.1e} / {a['partner_best_rho']:.1e} | |")
    if "projection" in r:
        p = r["projection"]
        lines.append(
            f"| projection: paper experiment (100M tokens, 5 × {p['shape'][0]}×{p['shape'][1]}, baseline) | "
            f"{p['projected_paper_min']:.0f} min ({p['tokens_per_s']:,.0f} tokens/s incl. forward; "
            f"{p['blocks']} block(s); {p['source']}) | ≤ 45 min on one H100 |")
    lines += ["", "Ratios are what to compare; absolute times depend on the machine and its load. Regenerate "
              "with `python -m bench.bench_correlation` (add `--device cuda --projection` on a GPU).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
