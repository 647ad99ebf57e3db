"""Streaming cross-seed Pearson correlation for one cohort, with the random-rotation baseline.

Pure math (method.md §2): tensors in, tensors / dataclasses / polars frames out; no database, no files.

One reference model ``a`` with ``N_a = n_layers * d_mlp`` neurons (flat index ``layer * d_mlp + idx``)
and partners ``m = 0..M-1`` with ``N_m`` neurons each. Per batch of kept tokens the accumulator
receives ``ref_acts: [n_tokens, N_a]`` and ``partner_acts[m]: [n_tokens, N_m]`` and updates

- ``n``, ``S = Σ y`` per neuron of every model and ``Q = Σ y²`` of the reference (float64; a
  partner's ``Σ y²`` is the diagonal of its ``C``),
- the cross moment ``P_m = Σ y_a y_mᵀ`` (``[n_ref, N_m]``) for every partner: one GEMM per batch for
  all partners together (their columns are concatenated),
- the within-layer second moment ``C_m = Σ y_m,l y_m,lᵀ`` (``[L, d_mlp, d_mlp]``) of every partner,
  which is all the random-rotation baseline needs: ``Σ y_a (R y_m)ᵀ = P Rᵀ``, ``Σ R y_m = R S``,
  ``Σ (R y_m)² = diag(R C Rᵀ)``, so the baseline costs no second pass over the data.

Numerics. ``y = v − μ`` is the activation shifted by a per-neuron mean ``μ`` estimated on the first
(warm-up) batch, so the one-pass formula does not cancel catastrophically when ``|mean| ≫ std``.
The shift happens in float32 *before* any rounding to bf16/fp16. GEMMs write float32 partial sums
that are flushed into float64 totals every ``flush_every`` batches ("buffered"), or straight after
each batch through a small row-chunked scratch buffer ("direct": 8 instead of 12 bytes per
accumulator element, for cohorts that would not fit otherwise). Pearson's rho is invariant to the
shift and to the rotation being applied to shifted data, so the finalisation works on centred
covariances in float64.

Dead neurons (std ≤ ``min_std``) have undefined correlation: their rho is NaN, never 0, they are
never anyone's best partner, and their aggregates (hence excess) are NaN.

Memory: ``n_ref × ΣN_m`` accumulator elements. When they do not fit the device, the reference
neurons are split into blocks (``plan_ref_blocks``); each block is one accumulator with a
``ref_slice`` (one pass over the data per block) and ``combine_blocks`` merges their results.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import polars as pl
import torch

from atlas.errors import AtlasError

ROTATION_KINDS = ("orthogonal", "gaussian_unit_rows")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FP16_SAFE = 6.0e4  # |y| above this would overflow fp16 (max 65504): that batch goes in as bf16
STATE_VERSION = 1

Shape = tuple[int, int]  # (n_layers, d_mlp)


# ---------------------------------------------------------------------------------- rotations

def rotation_generator_seed(seed: int, partner: int, layer: int) -> int:
    """The 63-bit generator seed of one partner layer's rotation, derived from the run's seed."""
    state = np.random.SeedSequence([int(seed), int(partner), int(layer)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


def build_rotation(seed: int, kind: str, partner: int, shape: Shape,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """The baseline rotations of one partner: ``R: [n_layers, d_mlp, d_mlp] float64``.

    The rotated activation of layer ``l`` is ``R[l] @ v_l``. ``kind``:
    ``"orthogonal"``: Haar-random orthogonal (QR of a Gaussian matrix, signs fixed by diag(R) > 0);
    ``"gaussian_unit_rows"``: iid Gaussian rows scaled to unit norm (what the paper's code used).
    Deterministic in ``(seed, kind, partner, shape)``: the Gaussian entries come from a CPU
    generator; the QR runs on ``device`` (equal across devices to float64 rounding).
    """
    if kind not in ROTATION_KINDS:
        raise ValueError(f"rotation kind {kind!r} is not one of {ROTATION_KINDS}")
    n_layers, d_mlp = shape
    gauss = torch.empty(n_layers, d_mlp, d_mlp, dtype=torch.float64)
    for layer in range(n_layers):
        gen = torch.Generator(device="cpu").manual_seed(rotation_generator_seed(seed, partner, layer))
        gauss[layer] = torch.randn(d_mlp, d_mlp, generator=gen, dtype=torch.float64)
    gauss = gauss.to(device)
    if kind == "gaussian_unit_rows":
        return gauss / torch.linalg.vector_norm(gauss, dim=2, keepdim=True)
    q, r = torch.linalg.qr(gauss)  # batched over layers
    signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
    signs[signs == 0] = 1.0
    return q * signs.unsqueeze(1)  # column j times sign(r_jj): the unique Haar-distributed Q


# ---------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class BlockPlan:
    """How to split the reference neurons so the accumulators fit the device.

    ``blocks``: ``[start, stop)`` flat reference-neuron ranges, one accumulator (one data pass) each;
    ``buffered``: float32 partial buffer + float64 totals (True) or direct float64 (False);
    ``block_bytes``: estimated accumulator bytes of the largest block; ``budget_bytes``: what was available.
    """

    blocks: tuple[tuple[int, int], ...]
    buffered: bool
    block_bytes: int
    budget_bytes: int


def accumulator_bytes(n_ref: int, partner_shapes: Sequence[Shape], *, buffered: bool = True,
                      total_dtype: torch.dtype = torch.float64, direct_chunk_bytes: int = 256 << 20) -> int:
    """Device bytes held by a ``CohortCorrelation`` over ``n_ref`` reference neurons."""
    tb = torch.empty((), dtype=total_dtype).element_size()
    n_partner = sum(l * d for l, d in partner_shapes)
    per_elem = tb + (4 if buffered else 0)
    cross = n_ref * n_partner * per_elem
    within = sum(l * d * d for l, d in partner_shapes) * (tb + 4)
    vectors = (n_ref + n_partner) * (8 + 8 + 4)
    scratch = 0 if buffered else min(direct_chunk_bytes, n_ref * n_partner * 4)
    return cross + within + vectors + scratch


def batch_workspace_bytes(n_tokens: int, n_ref: int, partner_sizes: Sequence[int], *, in_bytes: int = 2,
                          store_bytes: int = 2) -> int:
    """Device bytes one ``update`` of ``n_tokens`` needs besides the accumulators: the models'
    activations (``in_bytes`` each), their standardised copies (``store_bytes``) and one model's
    float32 scratch, with a quarter more for allocator slack."""
    n_all = n_ref + sum(partner_sizes)
    largest = max(n_ref, *partner_sizes)
    return int(1.25 * n_tokens * (n_all * (in_bytes + store_bytes) + 2 * 4 * largest))


def default_budget_bytes(device: str | torch.device, reserve_bytes: int | None = None) -> int:
    """Bytes the accumulators may take: free device memory (CUDA) or half the available RAM (CPU),
    less ``reserve_bytes`` for models, activations and finalisation scratch."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserve = reserve_bytes if reserve_bytes is not None else max(4 << 30, total // 8)
        return max(0, free - reserve)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return max(0, avail // 2 - (reserve_bytes or 0))


def plan_ref_blocks(n_ref: int, partner_shapes: Sequence[Shape], *, budget_bytes: int,
                    total_dtype: torch.dtype = torch.float64, buffered: bool | None = None,
                    max_block: int | None = None) -> BlockPlan:
    """Split ``n_ref`` reference neurons into as few equal blocks as fit ``budget_bytes``.

    ``buffered=None`` picks the mode that needs fewer blocks (buffered on a tie: it is faster);
    ``max_block`` forces blocks of at most that many neurons (blocks on request).
    """
    def rows_that_fit(buf: bool) -> int:
        lo, hi = 0, n_ref
        while lo < hi:  # largest row count whose accumulators fit
            mid = (lo + hi + 1) // 2
            if accumulator_bytes(mid, partner_shapes, buffered=buf, total_dtype=total_dtype) <= budget_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo

    modes = [buffered] if buffered is not None else [True, False]
    best: tuple[int, bool, int] | None = None
    for buf in modes:
        fit = rows_that_fit(buf)
        if max_block is not None:
            fit = min(fit, max_block)
        if fit < 1:
            continue
        n_blocks = math.ceil(n_ref / fit)
        if best is None or n_blocks < best[0]:
            best = (n_blocks, buf, fit)
    if best is None:
        need = accumulator_bytes(1, partner_shapes, buffered=False, total_dtype=total_dtype)
        raise AtlasError(
            f"correlation accumulators need at least {need / 2**30:.1f} GiB but {budget_bytes / 2**30:.1f} GiB "
            "are available — free device memory or use a device with more"
        )
    n_blocks, buf, _ = best
    size = math.ceil(n_ref / n_blocks)
    blocks = tuple((s, min(s + size, n_ref)) for s in range(0, n_ref, size))
    return BlockPlan(blocks=blocks, buffered=buf,
                     block_bytes=accumulator_bytes(size, partner_shapes, buffered=buf, total_dtype=total_dtype),
                     budget_bytes=budget_bytes)


# ---------------------------------------------------------------------------------- results

@dataclass
class CorrelationResult:
    """Per-neuron reductions of one cohort's correlations (tensors on the CPU).

    Reference side (``n = ref_stop - ref_start`` reference neurons, flat indices from ``ref_start``):
      ``best_rho, baseline_rho: [M, n] float32``, ``best_idx: [M, n] int64`` (flat partner index, −1 if none);
      ``topk_rho: [M, n, k] float32`` (descending), ``topk_idx: [M, n, k] int64`` (−1 pads);
      ``max_corr, mean_corr, min_corr, mean_baseline, excess: [n] float32`` (over partners);
      ``ref_dead: [n] bool``.
    Partner side (column maxima over this result's reference neurons), one entry per partner:
      ``partner_best_rho[m], partner_baseline_rho[m]: [N_m] float32``,
      ``partner_best_idx[m]: [N_m] int64`` (flat reference index, −1 if none), ``partner_dead[m]: [N_m] bool``.
    NaN marks undefined values (dead neurons); they are stored as NULL.
    """

    n_tokens: int
    ref_shape: Shape
    partner_shapes: tuple[Shape, ...]
    ref_start: int
    ref_stop: int
    rotation: str
    rotation_seed: int
    top_k: int
    best_rho: torch.Tensor
    best_idx: torch.Tensor
    baseline_rho: torch.Tensor
    topk_rho: torch.Tensor
    topk_idx: torch.Tensor
    max_corr: torch.Tensor
    mean_corr: torch.Tensor
    min_corr: torch.Tensor
    mean_baseline: torch.Tensor
    excess: torch.Tensor
    ref_dead: torch.Tensor
    partner_best_rho: list[torch.Tensor]
    partner_best_idx: list[torch.Tensor]
    partner_baseline_rho: list[torch.Tensor]
    partner_dead: list[torch.Tensor]

    @property
    def n_partners(self) -> int:
        return len(self.partner_shapes)

    @property
    def ref_index(self) -> torch.Tensor:
        """``[n] int64``: the flat reference-neuron index of each row."""
        return torch.arange(self.ref_start, self.ref_stop)


def _masked_max(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and argmax ignoring NaN; all-NaN slices give (NaN, −1)."""
    filled = torch.where(torch.isnan(x), torch.tensor(-math.inf, dtype=x.dtype, device=x.device), x)
    vals, idx = filled.max(dim=dim)
    none = torch.isneginf(vals)
    return vals.masked_fill(none, math.nan), idx.masked_fill(none, -1)


def _aggregate(best: torch.Tensor, baseline: torch.Tensor) -> dict[str, torch.Tensor]:
    """Over partners (dim 0): max/mean/min corr, mean baseline, excess; NaN anywhere → NaN."""
    mean_corr = best.mean(0)
    mean_baseline = baseline.mean(0)
    return dict(max_corr=best.amax(0), mean_corr=mean_corr, min_corr=best.amin(0),
                mean_baseline=mean_baseline, excess=mean_corr - mean_baseline)


def combine_blocks(results: Sequence[CorrelationResult]) -> CorrelationResult:
    """Merge the results of reference-neuron blocks of one cohort into one result.

    Reference-side rows are concatenated; partner-side column maxima are the max over blocks.
    """
    if not results:
        raise ValueError("no blocks to combine")
    parts = sorted(results, key=lambda r: r.ref_start)
    first = parts[0]
    for prev, nxt in zip(parts, parts[1:]):
        if prev.ref_stop != nxt.ref_start:
            raise ValueError(f"blocks are not contiguous: [{prev.ref_start},{prev.ref_stop}) then [{nxt.ref_start},{nxt.ref_stop})")
    for r in parts:
        if (r.n_tokens, r.partner_shapes, r.rotation, r.rotation_seed, r.top_k) != (
                first.n_tokens, first.partner_shapes, first.rotation, first.rotation_seed, first.top_k):
            raise ValueError("blocks come from different runs (tokens, partners, rotation or top_k differ)")
    if len(parts) == 1:
        return first
    cat = {name: torch.cat([getattr(r, name) for r in parts], dim=-1)
           for name in ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess", "ref_dead")}
    for name in ("best_rho", "best_idx", "baseline_rho"):
        cat[name] = torch.cat([getattr(r, name) for r in parts], dim=1)
    for name in ("topk_rho", "topk_idx"):
        cat[name] = torch.cat([getattr(r, name) for r in parts], dim=1)
    best_rho, best_idx, baseline = [], [], []
    for m in range(first.n_partners):
        stacked = torch.stack([r.partner_best_rho[m] for r in parts])
        vals, which = _masked_max(stacked, 0)
        idx_stack = torch.stack([r.partner_best_idx[m] for r in parts])
        idx = idx_stack.gather(0, which.clamp(min=0).unsqueeze(0)).squeeze(0).masked_fill(which < 0, -1)
        best_rho.append(vals)
        best_idx.append(idx)
        baseline.append(_masked_max(torch.stack([r.partner_baseline_rho[m] for r in parts]), 0)[0])
    return replace(first, ref_start=parts[0].ref_start, ref_stop=parts[-1].ref_stop, **cat,
                   partner_best_rho=best_rho, partner_best_idx=best_idx, partner_baseline_rho=baseline)


def result_frames(result: CorrelationResult, *, model_id: int,
                  partner_model_ids: Sequence[int]) -> dict[str, pl.DataFrame]:
    """The result as frames for the tables ``pair_correlation``, ``correlation_edge`` and
    ``neuron_universality`` (column names as in atlas/schema.py; ``run_id`` is added at publish).

    ``pair_correlation`` holds reference rows (``other_model_id`` = partner) and partner rows
    (``other_model_id`` = reference: the column maxima). Dead neurons get NULL rho and no edges.
    """
    if len(partner_model_ids) != result.n_partners:
        raise ValueError(f"{len(partner_model_ids)} partner model ids for {result.n_partners} partners")
    ref_d = result.ref_shape[1]
    ref_flat = result.ref_index.numpy()
    n = ref_flat.size
    ref_layer = (ref_flat // ref_d).astype(np.int16)
    ref_idx = (ref_flat % ref_d).astype(np.int32)

    def split(flat: np.ndarray, d_mlp: int) -> tuple[pl.Series, pl.Series]:
        valid = flat >= 0
        layer = pl.Series(np.where(valid, flat // d_mlp, 0).astype(np.int16)).scatter(np.flatnonzero(~valid), None)
        idx = pl.Series(np.where(valid, flat % d_mlp, 0).astype(np.int32)).scatter(np.flatnonzero(~valid), None)
        return layer, idx

    pair_frames, edge_frames = [], []
    for m, partner_id in enumerate(partner_model_ids):
        p_layers, p_d = result.partner_shapes[m]
        best_layer, best_idx = split(result.best_idx[m].numpy(), p_d)
        pair_frames.append(pl.DataFrame({
            "model_id": pl.Series([model_id] * n, dtype=pl.Int32),
            "layer": ref_layer, "idx": ref_idx,
            "other_model_id": pl.Series([partner_id] * n, dtype=pl.Int32),
            "max_corr": result.best_rho[m].numpy(),
            "best_layer": best_layer, "best_idx": best_idx,
            "baseline_max": result.baseline_rho[m].numpy(),
        }))
        n_p = p_layers * p_d
        p_flat = np.arange(n_p)
        other_layer, other_idx = split(result.partner_best_idx[m].numpy(), ref_d)
        pair_frames.append(pl.DataFrame({
            "model_id": pl.Series([partner_id] * n_p, dtype=pl.Int32),
            "layer": (p_flat // p_d).astype(np.int16), "idx": (p_flat % p_d).astype(np.int32),
            "other_model_id": pl.Series([model_id] * n_p, dtype=pl.Int32),
            "max_corr": result.partner_best_rho[m].numpy(),
            "best_layer": other_layer, "best_idx": other_idx,
            "baseline_max": result.partner_baseline_rho[m].numpy(),
        }))
        t_idx = result.topk_idx[m].numpy()  # [n, k]
        keep = t_idx >= 0
        rows, ranks = np.nonzero(keep)
        flat = t_idx[keep]
        edge_frames.append(pl.DataFrame({
            "model_id": pl.Series([model_id] * rows.size, dtype=pl.Int32),
            "layer": ref_layer[rows], "idx": ref_idx[rows],
            "partner_model_id": pl.Series([partner_id] * rows.size, dtype=pl.Int32),
            "rank": (ranks + 1).astype(np.int16),
            "partner_layer": (flat // p_d).astype(np.int16), "partner_idx": (flat % p_d).astype(np.int32),
            "rho": result.topk_rho[m].numpy()[keep],
        }))
    universality = pl.DataFrame({
        "model_id": pl.Series([model_id] * n, dtype=pl.Int32),
        "layer": ref_layer, "idx": ref_idx,
        "n_partners": pl.Series([result.n_partners] * n, dtype=pl.Int16),
        "max_corr": result.max_corr.numpy(), "mean_corr": result.mean_corr.numpy(),
        "min_corr": result.min_corr.numpy(), "mean_baseline": result.mean_baseline.numpy(),
        "excess": result.excess.numpy(),
    })
    frames = {
        "pair_correlation": pl.concat(pair_frames),
        "correlation_edge": pl.concat(edge_frames),
        "neuron_universality": universality,
    }
    # NaN (undefined: dead neuron) becomes NULL: PostgreSQL orders 'NaN' above every number, so a
    # NaN excess would pass "excess > 0.5"; NULL never does.
    return {name: f.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None)) for name, f in frames.items()}


# ---------------------------------------------------------------------------------- accumulator

class CohortCorrelation:
    """Streaming accumulator of one cohort's cross-seed correlations (reference × every partner).

    ``ref_shape``/``partner_shapes``: ``(n_layers, d_mlp)`` of the reference and of each partner.
    ``ref_slice``: ``(start, stop)`` flat reference neurons this accumulator covers (a block);
    ``update`` still takes the full ``[n_tokens, N_a]`` reference activations.
    ``precision``: the GEMM inputs: ``"fp16"`` (the default on CUDA) or ``"bf16"``, both with float32
    accumulation, ``"tf32"`` (CUDA) or ``"fp32"`` (the default on CPU). On the CPU, half precisions
    round the inputs and multiply in float32: the same arithmetic, for checking accuracy. Rounding
    the (standardised) inputs adds a random error to rho of about 0.002/sqrt(n) for fp16 and
    0.013/sqrt(n) for bf16 over n tokens (measured), so fp16 meets the 1e-4 target from a few
    thousand tokens, bf16 from ~50k; an fp16 batch with an outlier beyond its range goes in as bf16.
    ``flush_every``: batches between flushes of float32 partial sums into ``total_dtype`` totals.
    ``buffered=False``: no persistent float32 partial buffer for the cross moment (see module doc).
    ``rotation``/``rotation_seed``: the baseline's rotations (``build_rotation``), recorded in results.
    ``min_std``: a neuron whose standard deviation is at most this is dead (NaN correlations).
    """

    def __init__(self, ref_shape: Shape, partner_shapes: Sequence[Shape], *,
                 ref_slice: tuple[int, int] | slice | None = None, device: str | torch.device = "cpu",
                 precision: str | None = None, total_dtype: torch.dtype = torch.float64,
                 flush_every: int = 64, buffered: bool = True, rotation: str = "orthogonal",
                 rotation_seed: int = 0, min_std: float = 1e-6, direct_chunk_bytes: int = 256 << 20) -> None:
        self.device = torch.device(device)
        self.ref_shape: Shape = (int(ref_shape[0]), int(ref_shape[1]))
        self.partner_shapes: tuple[Shape, ...] = tuple((int(l), int(d)) for l, d in partner_shapes)
        if not self.partner_shapes:
            raise ValueError("a cohort needs at least one partner")
        n_ref_total = self.ref_shape[0] * self.ref_shape[1]
        if ref_slice is None:
            start, stop = 0, n_ref_total
        elif isinstance(ref_slice, slice):
            start, stop, _ = ref_slice.indices(n_ref_total)
        else:
            start, stop = int(ref_slice[0]), int(ref_slice[1])
        if not 0 <= start < stop <= n_ref_total:
            raise ValueError(f"ref_slice [{start}, {stop}) is outside the {n_ref_total} reference neurons")
        self.ref_start, self.ref_stop = start, stop
        if precision is None:
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        self.precision = precision
        if rotation not in ROTATION_KINDS:
            raise ValueError(f"rotation {rotation!r} is not one of {ROTATION_KINDS}")
        self.rotation, self.rotation_seed = rotation, int(rotation_seed)
        self.total_dtype = total_dtype
        self.flush_every = max(1, int(flush_every))
        self.buffered = bool(buffered)
        self.min_std = float(min_std)
        self.direct_chunk_bytes = int(direct_chunk_bytes)

        # Native half-precision GEMMs with float32 output exist on CUDA only; elsewhere the inputs are
        # rounded to half precision and multiplied in float32 (identical arithmetic, slower).
        self._native_half = precision in _HALF and self.device.type == "cuda"
        self._store_dtype = _HALF[precision] if self._native_half else torch.float32
        self._gemm_mode: str | None = None  # decided on the first batch: "addmm_dtype" | "mm_dtype" | "upcast"

        n_ref = stop - start
        self.partner_sizes = [l * d for l, d in self.partner_shapes]
        self.partner_offsets = [0, *np.cumsum(self.partner_sizes).tolist()]
        n_part = self.partner_offsets[-1]
        dev, f64 = self.device, torch.float64
        self.n = 0
        self.n_batches = 0
        self._since_flush = 0
        self._partial_empty = True
        self.n_overflow_batches = 0
        self.mu_ref: torch.Tensor | None = None  # warm-up shift and power-of-two scale, float32;
        self.mu_partner: torch.Tensor | None = None  # partners concatenated
        self.inv_scale_ref: torch.Tensor | None = None
        self.inv_scale_partner: torch.Tensor | None = None
        self.S_ref = torch.zeros(n_ref, dtype=f64, device=dev)
        self.Q_ref = torch.zeros(n_ref, dtype=f64, device=dev)
        self.S_partner = torch.zeros(n_part, dtype=f64, device=dev)  # Σy² of partners: diag of C_total
        self.P_total = torch.zeros(n_ref, n_part, dtype=total_dtype, device=dev)
        self.P_partial = torch.zeros(n_ref, n_part, dtype=torch.float32, device=dev) if self.buffered else None
        self.C_total = [torch.zeros(l, d, d, dtype=total_dtype, device=dev) for l, d in self.partner_shapes]
        self.C_partial = [torch.zeros(l, d, d, dtype=torch.float32, device=dev) for l, d in self.partner_shapes]

    # ------------------------------------------------------------------ properties

    @property
    def n_ref(self) -> int:
        return self.ref_stop - self.ref_start

    @property
    def n_partners(self) -> int:
        return len(self.partner_shapes)

    def flops_per_token(self) -> int:
        """Useful FLOPs of the cross-moment GEMM per token (2 · n_ref · ΣN_m)."""
        return 2 * self.n_ref * self.partner_offsets[-1]

    # ------------------------------------------------------------------ streaming

    @torch.no_grad()
    def update(self, ref_acts: torch.Tensor, partner_acts: Sequence[torch.Tensor]) -> None:
        """Add one batch: ``ref_acts: [n_tokens, N_a]``, ``partner_acts[m]: [n_tokens, N_m]``
        (any float dtype, any device; only kept tokens, the same tokens in the same order)."""
        n_ref_total = self.ref_shape[0] * self.ref_shape[1]
        if ref_acts.ndim != 2 or ref_acts.shape[1] != n_ref_total:
            raise ValueError(f"ref_acts must be [n_tokens, {n_ref_total}], got {tuple(ref_acts.shape)}")
        if len(partner_acts) != self.n_partners:
            raise ValueError(f"expected {self.n_partners} partner activation tensors, got {len(partner_acts)}")
        n_tok = ref_acts.shape[0]
        for m, acts in enumerate(partner_acts):
            if tuple(acts.shape) != (n_tok, self.partner_sizes[m]):
                raise ValueError(f"partner {m} activations must be [{n_tok}, {self.partner_sizes[m]}], got {tuple(acts.shape)}")
        if n_tok == 0:
            return
        ref = ref_acts[:, self.ref_start:self.ref_stop].to(self.device, non_blocking=True)
        parts = [a.to(self.device, non_blocking=True) for a in partner_acts]
        if self.mu_ref is None:
            self._warm_up(ref, parts)
        half = _HALF.get(self.precision)
        y_ref, y_part, peak = self._standardize(ref, parts, half)
        if peak is not None and peak.item() >= _FP16_SAFE:  # an outlier beyond fp16's range
            self.n_overflow_batches += 1
            y_ref, y_part, _ = self._standardize(ref, parts, torch.bfloat16)
        del ref, parts

        # per-batch float32 sums (pairwise summation inside torch), added into float64 totals
        self.S_ref += y_ref.sum(0, dtype=torch.float32)
        y_ref32 = y_ref if y_ref.dtype == torch.float32 else y_ref.float()
        self.Q_ref += torch.mul(y_ref32, y_ref32).sum(0)
        del y_ref32
        self.S_partner += y_part.sum(0, dtype=torch.float32)

        if self._gemm_mode is None:
            self._gemm_mode = self._choose_gemm_mode()
        with self._matmul_precision():
            self._accumulate_cross(y_ref, y_part)
            self._accumulate_within(y_part)
        self.n += n_tok
        self.n_batches += 1
        self._since_flush += 1
        self._partial_empty = False
        if self._since_flush >= self.flush_every:
            self.flush()

    def _warm_up(self, ref: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
        """Per-neuron shift (mean) and power-of-two scale (≈ 1/std) from the first batch.

        The shift keeps the one-pass formula from cancelling when |mean| ≫ std; the scale keeps
        half-precision inputs in range (fp16 overflows above 65504 and loses bits below 6e-5). A
        power of two scales exactly, so it adds no rounding; moments are unscaled at finalisation."""
        def shift_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.to(torch.float64)
            mu = x.mean(0)
            sd = x.std(0, correction=0) if x.shape[0] > 1 else torch.zeros_like(mu)
            ok = torch.isfinite(sd) & (sd > 0)
            inv = torch.where(ok, torch.exp2(-torch.round(torch.log2(torch.where(ok, sd, 1.0)))), 1.0)
            return mu.to(torch.float32), inv.to(torch.float32)

        self.mu_ref, self.inv_scale_ref = shift_scale(ref)
        mus, invs = zip(*(shift_scale(p) for p in parts))
        self.mu_partner, self.inv_scale_partner = torch.cat(mus), torch.cat(invs)

    def _standardize(self, ref: torch.Tensor, parts: Sequence[torch.Tensor], half: torch.dtype | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``y = (v − μ)·s`` computed in float32, then rounded to ``half`` (kept in that dtype for
        native GEMMs, back in float32 otherwise). Returns y_ref ``[T, n_ref]``, y_part ``[T, ΣN_m]``
        and, for fp16, the peak |y| (a 0-d tensor; else None)."""
        store = half if (half is not None and self._native_half) else torch.float32
        peaks: list[torch.Tensor] = []

        def one(acts: torch.Tensor, mu: torch.Tensor, inv: torch.Tensor, out: torch.Tensor) -> None:
            # (v − μ)·s as v·s + (−μ·s): exact rewrite for a power-of-two s, one fused pass
            bias = -(mu * inv)
            acts32 = acts if acts.dtype == torch.float32 else acts.to(torch.float32)
            if half is None:
                torch.addcmul(bias, acts32, inv, out=out)
                return
            y = torch.addcmul(bias, acts32, inv)
            if half is torch.float16:
                lo, hi = torch.aminmax(y)
                peaks.append(torch.maximum(-lo, hi))
            out.copy_(y if self._native_half else y.to(half))

        n_tok = ref.shape[0]
        y_ref = torch.empty(n_tok, ref.shape[1], dtype=store, device=self.device)
        one(ref, self.mu_ref, self.inv_scale_ref, y_ref)
        y_part = torch.empty(n_tok, self.partner_offsets[-1], dtype=store, device=self.device)
        for m, acts in enumerate(parts):
            lo, hi = self.partner_offsets[m], self.partner_offsets[m + 1]
            one(acts, self.mu_partner[lo:hi], self.inv_scale_partner[lo:hi], y_part[:, lo:hi])
        return y_ref, y_part, (torch.stack(peaks).amax() if peaks else None)

    @contextlib.contextmanager
    def _matmul_precision(self) -> Iterator[None]:
        """On CUDA, float32 GEMMs are strict IEEE for ``"fp32"`` and TF32 otherwise (``"tf32"``, or
        half-precision inputs upcast because this torch lacks float32-output half GEMMs)."""
        if self.device.type != "cuda" or self._gemm_mode in ("addmm_dtype", "mm_dtype"):
            yield
            return
        matmul = torch.backends.cuda.matmul
        try:
            old = matmul.fp32_precision
            matmul.fp32_precision = "ieee" if self.precision == "fp32" else "tf32"
        except (AttributeError, RuntimeError):  # an older torch, or the legacy flag in use: leave it
            yield
            return
        try:
            yield
        finally:
            matmul.fp32_precision = old

    def _choose_gemm_mode(self) -> str:
        """Probe the half-precision → float32 GEMMs this torch/device offers (CUDA only): ``addmm``
        with ``out_dtype`` (accumulates in place), else ``mm`` with ``out_dtype`` plus an add, else
        float32 copies of the inputs under TF32."""
        if not self._native_half:
            return "plain"
        gen = torch.Generator(device="cpu").manual_seed(0)
        for mode in ("addmm_dtype", "mm_dtype"):
            self._gemm_mode = mode
            try:
                for half in {self._store_dtype, torch.bfloat16}:  # fp16 runs may fall back to bf16
                    a = torch.randn(3, 64, 32, generator=gen).to(half)
                    b = torch.randn(3, 32, 48, generator=gen).to(half)
                    want = a.double() @ b.double() + 1
                    out2, out3 = torch.ones(64, 48, device=self.device), torch.ones(3, 64, 48, device=self.device)
                    self._gemm_into(out2, a[0].to(self.device), b[0].to(self.device), accumulate=True)
                    self._gemm_into(out3, a.to(self.device), b.to(self.device), accumulate=True)
                    if not (torch.allclose(out2.cpu().double(), want[0], atol=1e-3)
                            and torch.allclose(out3.cpu().double(), want, atol=1e-3)):
                        raise RuntimeError("wrong result")
                return mode
            except (RuntimeError, TypeError):
                continue
        return "upcast"

    def _gemm_into(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
        """``out (+)= a @ b`` with ``out`` float32 (2-D or batched 3-D)."""
        beta = 1 if accumulate else 0
        batched = out.ndim == 3
        if self._gemm_mode == "plain":
            (torch.baddbmm if batched else torch.addmm)(out, a, b, beta=beta, out=out)
        elif self._gemm_mode == "addmm_dtype":
            (torch.baddbmm if batched else torch.addmm)(out, a, b, out_dtype=torch.float32, beta=beta, out=out)
        elif self._gemm_mode == "mm_dtype":
            prod = (torch.bmm if batched else torch.mm)(a, b, out_dtype=torch.float32)
            if accumulate:
                out.add_(prod)
            else:
                out.copy_(prod)
        else:  # "upcast": float32 copies of half-precision inputs (TF32 under _matmul_precision)
            (torch.baddbmm if batched else torch.addmm)(out, a.float(), b.float(), beta=beta, out=out)

    def _accumulate_cross(self, y_ref: torch.Tensor, y_part: torch.Tensor) -> None:
        if self.buffered:
            self._gemm_into(self.P_partial, y_ref.T, y_part, accumulate=not self._partial_empty)
            return
        # direct: row chunks of the reference through a float32 scratch into the float64 totals
        rows = max(1, self.direct_chunk_bytes // (4 * y_part.shape[1]))
        scratch = torch.empty(min(rows, self.n_ref), y_part.shape[1], dtype=torch.float32, device=self.device)
        for r0 in range(0, self.n_ref, rows):
            r1 = min(r0 + rows, self.n_ref)
            buf = scratch[: r1 - r0]
            self._gemm_into(buf, y_ref[:, r0:r1].T, y_part, accumulate=False)
            self.P_total[r0:r1] += buf

    def _accumulate_within(self, y_part: torch.Tensor) -> None:
        n_tok = y_part.shape[0]
        for m, (n_layers, d_mlp) in enumerate(self.partner_shapes):
            lo, hi = self.partner_offsets[m], self.partner_offsets[m + 1]
            x = y_part[:, lo:hi].view(n_tok, n_layers, d_mlp).transpose(0, 1)  # [L, T, d]
            self._gemm_into(self.C_partial[m], x.transpose(1, 2), x, accumulate=not self._partial_empty)

    @torch.no_grad()
    def flush(self) -> None:
        """Add the float32 partial sums into the totals and start new partial sums."""
        if not self._partial_empty:
            if self.P_partial is not None:
                self.P_total.add_(self.P_partial)
            for total, part in zip(self.C_total, self.C_partial):
                total.add_(part)
        self._partial_empty = True
        self._since_flush = 0

    # ------------------------------------------------------------------ checkpoints

    def _config(self) -> dict:
        return {
            "version": STATE_VERSION,
            "ref_shape": list(self.ref_shape),
            "partner_shapes": [list(s) for s in self.partner_shapes],
            "ref_start": self.ref_start, "ref_stop": self.ref_stop,
            "rotation": self.rotation, "rotation_seed": self.rotation_seed,
        }

    def state_dict(self) -> dict:
        """Plain tensors and ints (plus the rotation kind) to checkpoint. Flushes first, so a
        checkpoint is a flush point: a run that checkpoints at the same token counts as a resumed
        one gets bit-identical totals. Tensors are the live device tensors (no copy)."""
        self.flush()
        state = self._config()
        state.update({
            "n": self.n, "n_batches": self.n_batches,
            "has_mean": int(self.mu_ref is not None),
            "mu_ref": self.mu_ref if self.mu_ref is not None else torch.zeros(0),
            "mu_partner": self.mu_partner if self.mu_partner is not None else torch.zeros(0),
            "inv_scale_ref": self.inv_scale_ref if self.inv_scale_ref is not None else torch.zeros(0),
            "inv_scale_partner": self.inv_scale_partner if self.inv_scale_partner is not None else torch.zeros(0),
            "n_overflow_batches": self.n_overflow_batches,
            "S_ref": self.S_ref, "Q_ref": self.Q_ref, "S_partner": self.S_partner,
            "P_total": self.P_total,
        })
        for m, c in enumerate(self.C_total):
            state[f"C_total.{m}"] = c
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint made by ``state_dict`` of an accumulator with the same cohort shape,
        reference block and rotation."""
        mine = self._config()
        theirs = {k: state.get(k) for k in mine}
        theirs["ref_shape"] = list(theirs["ref_shape"] or [])
        theirs["partner_shapes"] = [list(s) for s in (theirs["partner_shapes"] or [])]
        if theirs != mine:
            diff = sorted(k for k in mine if theirs[k] != mine[k])
            raise ValueError(f"checkpoint does not match this accumulator ({', '.join(diff)} differ)")
        self.n, self.n_batches = int(state["n"]), int(state["n_batches"])
        if int(state["has_mean"]):
            self.mu_ref = state["mu_ref"].to(self.device, torch.float32).clone()
            self.mu_partner = state["mu_partner"].to(self.device, torch.float32).clone()
            self.inv_scale_ref = state["inv_scale_ref"].to(self.device, torch.float32).clone()
            self.inv_scale_partner = state["inv_scale_partner"].to(self.device, torch.float32).clone()
        else:
            self.mu_ref = self.mu_partner = self.inv_scale_ref = self.inv_scale_partner = None
        self.n_overflow_batches = int(state.get("n_overflow_batches", 0))
        for name in ("S_ref", "Q_ref", "S_partner", "P_total"):
            getattr(self, name).copy_(state[name])
        for m, c in enumerate(self.C_total):
            c.copy_(state[f"C_total.{m}"])
        self._partial_empty = True
        self._since_flush = 0

    # ------------------------------------------------------------------ finalisation

    # The accumulated moments are of y = (v − μ)·s. Pearson's rho needs no unscaling; the rotation
    # acts on the partner's activations in their own units, so its covariances are unscaled (÷ s).

    def _moments(self, m: int) -> dict[str, torch.Tensor]:
        """Partner m: scaled means, scaled inverse stds (NaN if dead), the unscaling factors
        ``unit = 1/s`` and the within-layer covariance in activation units ``[L, d, d]``."""
        n = float(self.n)
        lo, hi = self.partner_offsets[m], self.partner_offsets[m + 1]
        n_layers, d_mlp = self.partner_shapes[m]
        mean = self.S_partner[lo:hi] / n
        second = self.C_total[m].to(torch.float64) / n
        var = torch.diagonal(second, dim1=1, dim2=2).reshape(-1) - mean.square()
        unit = 1.0 / self.inv_scale_partner[lo:hi].to(torch.float64)
        mean_l, unit_l = mean.view(n_layers, d_mlp), unit.view(n_layers, d_mlp)
        cov = second - mean_l.unsqueeze(2) * mean_l.unsqueeze(1)
        cov = cov * unit_l.unsqueeze(2) * unit_l.unsqueeze(1)
        return {"mean": mean, "inv_std": self._inv_std(var, unit), "unit": unit, "cov": cov}

    def _inv_std(self, var: torch.Tensor, unit: torch.Tensor | float = 1.0) -> torch.Tensor:
        """1/std of scaled variables; NaN where the std in activation units (× unit) is ≤ min_std."""
        std = var.clamp(min=0).sqrt()
        return torch.where(std * unit > self.min_std, 1.0 / std, torch.full_like(std, math.nan))

    def _ref_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = float(self.n)
        mean = self.S_ref / n
        unit = 1.0 / self.inv_scale_ref.to(torch.float64)
        return mean, self._inv_std(self.Q_ref / n - mean.square(), unit)

    def _rotation_moments(self, m: int, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``R: [L, d, d]`` and the inverse std (activation units) of the rotated partner neurons ``[N_m]``."""
        rot = build_rotation(self.rotation_seed, self.rotation, m, self.partner_shapes[m], self.device)
        var_rot = ((rot @ cov) * rot).sum(-1).reshape(-1)  # diag(R Cov Rᵀ) per layer
        return rot, self._inv_std(var_rot)

    def _rho_chunk(self, m: int, r0: int, r1: int, ref_mean: torch.Tensor, ref_inv: torch.Tensor,
                   mom: dict[str, torch.Tensor], rot: torch.Tensor | None,
                   rot_inv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rho and rotated rho (float64) of reference rows ``[r0, r1)`` against partner m."""
        n = float(self.n)
        lo, hi = self.partner_offsets[m], self.partner_offsets[m + 1]
        cov = self.P_total[r0:r1, lo:hi].to(torch.float64) / n - ref_mean[r0:r1, None] * mom["mean"][None, :]
        rho = cov * ref_inv[r0:r1, None] * mom["inv_std"][None, :]
        rho_rot = None
        if rot is not None:
            n_layers, d_mlp = self.partner_shapes[m]
            cov = cov * mom["unit"][None, :]  # partner side in activation units
            cov_l = cov.view(r1 - r0, n_layers, d_mlp).transpose(0, 1)  # [L, r, d]
            cov_rot = (cov_l @ rot.transpose(1, 2)).transpose(0, 1).reshape(r1 - r0, -1)
            rho_rot = cov_rot * ref_inv[r0:r1, None] * rot_inv[None, :]
        return rho, rho_rot

    @torch.no_grad()
    def correlation_matrix(self, partner: int, *, rotated: bool = False) -> torch.Tensor:
        """The full ``[n_ref, N_m] float64`` rho matrix against one partner (or its rotated
        baseline). For tests and small cohorts only: it is what the streaming never stores."""
        self.flush()
        ref_mean, ref_inv = self._ref_moments()
        mom = self._moments(partner)
        rot, rot_inv = self._rotation_moments(partner, mom["cov"]) if rotated else (None, None)
        rho, rho_rot = self._rho_chunk(partner, 0, self.n_ref, ref_mean, ref_inv, mom, rot, rot_inv)
        return (rho_rot if rotated else rho).cpu()

    def _finalize_chunk_rows(self, n_cols: int, workspace_bytes: int | None) -> int:
        if workspace_bytes is None:
            if self.device.type == "cuda":
                workspace_bytes = min(4 << 30, torch.cuda.mem_get_info(self.device)[0] // 2)
            else:
                workspace_bytes = 512 << 20
        return max(1, int(workspace_bytes) // (n_cols * 64))  # ~8 float64 temporaries per element

    @torch.no_grad()
    def finalize(self, top_k: int = 10, *, workspace_bytes: int | None = None) -> CorrelationResult:
        """Reduce the accumulated moments to per-neuron results (see ``CorrelationResult``).

        Works in reference-row chunks of at most ``workspace_bytes`` scratch; the accumulator is left
        intact (more batches may follow)."""
        if self.n < 2:
            raise ValueError("need at least two tokens to correlate")
        self.flush()
        ref_mean, ref_inv = self._ref_moments()
        ref_dead = torch.isnan(ref_inv)
        k = max(1, min(int(top_k), min(self.partner_sizes)))
        M, n_ref = self.n_partners, self.n_ref
        nan = math.nan
        best_rho = torch.full((M, n_ref), nan, dtype=torch.float32)
        best_idx = torch.full((M, n_ref), -1, dtype=torch.int64)
        baseline = torch.full((M, n_ref), nan, dtype=torch.float32)
        topk_rho = torch.full((M, n_ref, k), nan, dtype=torch.float32)
        topk_idx = torch.full((M, n_ref, k), -1, dtype=torch.int64)
        p_best, p_idx, p_base, p_dead = [], [], [], []
        ninf = torch.tensor(-math.inf, dtype=torch.float64, device=self.device)
        for m in range(M):
            mom = self._moments(m)
            rot, rot_inv = self._rotation_moments(m, mom["cov"])
            n_cols = self.partner_sizes[m]
            col_best = torch.full((n_cols,), -math.inf, dtype=torch.float64, device=self.device)
            col_idx = torch.full((n_cols,), -1, dtype=torch.int64, device=self.device)
            col_base = torch.full((n_cols,), -math.inf, dtype=torch.float64, device=self.device)
            rows = self._finalize_chunk_rows(n_cols, workspace_bytes)
            for r0 in range(0, n_ref, rows):
                r1 = min(r0 + rows, n_ref)
                rho, rho_rot = self._rho_chunk(m, r0, r1, ref_mean, ref_inv, mom, rot, rot_inv)
                rho = torch.where(torch.isnan(rho), ninf, rho)
                rho_rot = torch.where(torch.isnan(rho_rot), ninf, rho_rot)
                vals, idx = rho.max(1)
                none = torch.isneginf(vals)
                best_rho[m, r0:r1] = vals.masked_fill(none, nan).float().cpu()
                best_idx[m, r0:r1] = idx.masked_fill(none, -1).cpu()
                base = rho_rot.amax(1)
                baseline[m, r0:r1] = base.masked_fill(torch.isneginf(base), nan).float().cpu()
                tv, ti = torch.topk(rho, k, dim=1)
                tnone = torch.isneginf(tv)
                topk_rho[m, r0:r1] = tv.masked_fill(tnone, nan).float().cpu()
                topk_idx[m, r0:r1] = ti.masked_fill(tnone, -1).cpu()
                cvals, cidx = rho.max(0)
                better = cvals > col_best
                col_best = torch.where(better, cvals, col_best)
                col_idx = torch.where(better, cidx + r0 + self.ref_start, col_idx)
                col_base = torch.maximum(col_base, rho_rot.amax(0))
                del rho, rho_rot
            cnone = torch.isneginf(col_best)
            p_best.append(col_best.masked_fill(cnone, nan).float().cpu())
            p_idx.append(col_idx.masked_fill(cnone, -1).cpu())
            p_base.append(col_base.masked_fill(torch.isneginf(col_base), nan).float().cpu())
            p_dead.append(torch.isnan(mom["inv_std"]).cpu())
            del mom, rot, rot_inv
        agg = _aggregate(best_rho, baseline)
        return CorrelationResult(
            n_tokens=self.n, ref_shape=self.ref_shape, partner_shapes=self.partner_shapes,
            ref_start=self.ref_start, ref_stop=self.ref_stop, rotation=self.rotation,
            rotation_seed=self.rotation_seed, top_k=k, best_rho=best_rho, best_idx=best_idx,
            baseline_rho=baseline, topk_rho=topk_rho, topk_idx=topk_idx, **agg,
            ref_dead=ref_dead.cpu(), partner_best_rho=p_best, partner_best_idx=p_idx,
            partner_baseline_rho=p_base, partner_dead=p_dead,
        )
