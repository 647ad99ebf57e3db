"""The streaming accumulator of one cohort's cross-seed correlations (method.md §2).

One reference model ``a`` with ``N_a = n_layers * d_mlp`` neurons (flat index ``layer * d_mlp + idx``)
and partners ``m = 0..M-1`` with ``N_m`` neurons each. Per batch of kept tokens the accumulator
receives ``ref_acts: [n_tokens, N_a]`` and ``partner_acts[m]: [n_tokens, N_m]`` and updates

- ``n``, ``S = Σ y`` per neuron of every model and ``Q = Σ y²`` of the reference (float64; a
  partner's ``Σ y²`` is the diagonal of its ``C``),
- the cross moment ``P_m = Σ y_a y_mᵀ`` (``[n_ref, N_m]``) for every partner: one GEMM per batch for
  all partners together (their columns are concatenated),
- the within-layer second moment ``C_m = Σ y_m,l y_m,lᵀ`` (``[L, d_mlp, d_mlp]``) of every partner,
  which is all the reference side's random-rotation baseline needs: ``Σ y_a (R y_m)ᵀ = P Rᵀ``,
  ``Σ R y_m = R S``, ``Σ (R y_m)² = diag(R C Rᵀ)``, so the baseline costs no second pass;
- the same within-layer moment ``C_a`` of the reference's layers (when the block is whole layers):
  the partner side's baseline rotates the REFERENCE's layers, ``Σ (R y_a) y_mᵀ = R P``.

Numerics. ``y = v − μ`` is the activation shifted by a per-neuron mean ``μ`` estimated on the first
(warm-up) batch, so the one-pass formula does not cancel catastrophically when ``|mean| ≫ std``.
The shift happens in float32 *before* any rounding to bf16/fp16, and a power-of-two scale
``s ≈ 1/std`` (also from the warm-up batch) keeps half-precision inputs in range. A neuron that was
quiet in the warm-up batch and fires later would overflow fp16 (max 65504): the accumulator then
re-estimates that neuron's scale from the batch and rescales what it has accumulated (exact:
powers of two), so the batch still goes in as fp16; only non-finite activations fall back to
bf16 (``n_overflow_batches``; ``n_rescaled_batches`` counts the re-estimates). GEMMs write float32 partial sums
that are flushed into float64 totals every ``flush_every`` batches ("buffered"), or straight after
each batch through a small row-chunked scratch buffer ("direct": 8 instead of 12 bytes per
accumulator element, for cohorts that would not fit otherwise). Pearson's rho is invariant to the
shift and to the rotation being applied to shifted data, so the finalisation
(:mod:`atlas.ingest.math.correlation.reduction`) works on centred covariances in float64.

Dead neurons (std ≤ ``min_std``) have undefined correlation: their rho is NaN, never 0, they are
never anyone's best partner, and their aggregates (hence excess) are NaN.

Memory: ``n_ref × ΣN_m`` accumulator elements. When they do not fit the device, the reference
neurons are split into blocks (:func:`atlas.ingest.math.correlation.budget.plan_ref_blocks`); each
block is one accumulator with a ``ref_slice`` (one pass over the data per block) and
:func:`atlas.ingest.math.correlation.result.combine_blocks` merges their results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from atlas.ingest.math.correlation import reduction
from atlas.ingest.math.correlation.gemm import choose_gemm_mode, gemm_into, matmul_precision
from atlas.ingest.math.correlation.result import CorrelationResult
from atlas.ingest.math.correlation.rotation import ROTATION_KINDS, Shape

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FP16_SAFE = 6.0e4  # |y| above this would overflow fp16 (max 65504)
_FP16_RESCALED_PEAK = 2.0**11  # a re-estimated scale puts the batch's peak |y| here: room for 32× more
STATE_VERSION = 2


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
    thousand tokens, bf16 from ~50k. An fp16 batch with an outlier beyond its range re-estimates
    the scale of the neurons concerned (see the module doc); non-finite input goes in as bf16.
    ``flush_every``: batches between flushes of float32 partial sums into ``total_dtype`` totals.
    ``buffered=False``: no persistent float32 partial buffer for the cross moment (see module doc).
    ``rotation``/``rotation_seed``: the baseline's rotations (``build_rotation``), recorded in results.
    The partner-side baseline needs whole reference layers: a ``ref_slice`` that cuts a layer
    leaves it undefined (NaN, never a different number); ``ref_layers`` says which layers a block has.
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
        self.n_overflow_batches = 0  # batches that went in as bf16 (non-finite activations)
        self.n_rescaled_batches = 0  # batches whose fp16 overflow re-estimated some neurons' scales
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
        d_ref = self.ref_shape[1]
        whole = start % d_ref == 0 and stop % d_ref == 0
        self.ref_layers: tuple[int, ...] | None = tuple(range(start // d_ref, stop // d_ref)) if whole else None
        n_rl = len(self.ref_layers) if whole else 0
        self.C_ref_total = torch.zeros(n_rl, d_ref, d_ref, dtype=total_dtype, device=dev)
        self.C_ref_partial = torch.zeros(n_rl, d_ref, d_ref, dtype=torch.float32, device=dev)

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
        if peak is not None and not peak.item() < _FP16_SAFE:  # beyond fp16's range
            if self._rescale(ref, parts):
                self.n_rescaled_batches += 1
                y_ref, y_part, peak = self._standardize(ref, parts, half)
            if not peak.item() < _FP16_SAFE:  # non-finite input: no scale helps
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
            self._gemm_mode = choose_gemm_mode(self.device, self._store_dtype, self._native_half)
        with matmul_precision(self.device, self._gemm_mode, self.precision):
            self._accumulate_cross(y_ref, y_part)
            self._accumulate_within(y_ref, y_part)
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

    def _rescale(self, ref: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
        """Re-estimate the scale of every neuron whose |y| in this batch would overflow fp16, so its
        peak becomes ``_FP16_RESCALED_PEAK``, and rescale what was accumulated for it by the same
        power of two (exact). Returns whether any scale changed."""
        def factors(acts: torch.Tensor, mu: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
            peak = ((acts.to(torch.float32) - mu) * inv).abs().amax(0).double()  # [N]
            over = torch.isfinite(peak) & (peak >= _FP16_SAFE)
            shrink = torch.exp2(-torch.ceil(torch.log2(torch.where(over, peak, 1.0) / _FP16_RESCALED_PEAK)))
            return torch.where(over, shrink, torch.ones_like(shrink))

        f_ref = factors(ref, self.mu_ref, self.inv_scale_ref)
        f_part = torch.cat([factors(acts, self.mu_partner[lo:hi], self.inv_scale_partner[lo:hi])
                            for acts, lo, hi in zip(parts, self.partner_offsets, self.partner_offsets[1:])])
        if not ((f_ref < 1).any() or (f_part < 1).any()):
            return False
        self.flush()  # partial sums empty: only the float64 totals need rescaling
        self.inv_scale_ref *= f_ref.float()
        self.inv_scale_partner *= f_part.float()
        self.S_ref *= f_ref
        self.Q_ref *= f_ref.square()
        self.S_partner *= f_part
        self.P_total.mul_(f_ref.to(self.total_dtype)[:, None]).mul_(f_part.to(self.total_dtype)[None, :])  # in place
        for m, (n_layers, d_mlp) in enumerate(self.partner_shapes):
            f = f_part[self.partner_offsets[m]:self.partner_offsets[m + 1]].view(n_layers, d_mlp).to(self.total_dtype)
            self.C_total[m].mul_(f[:, :, None]).mul_(f[:, None, :])
        if self.ref_layers is not None:
            f = f_ref.view(len(self.ref_layers), self.ref_shape[1]).to(self.total_dtype)
            self.C_ref_total.mul_(f[:, :, None]).mul_(f[:, None, :])
        return True

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

    def _accumulate_cross(self, y_ref: torch.Tensor, y_part: torch.Tensor) -> None:
        if self.buffered:
            gemm_into(self._gemm_mode, self.P_partial, y_ref.T, y_part, accumulate=not self._partial_empty)
            return
        # direct: row chunks of the reference through a float32 scratch into the float64 totals
        rows = max(1, self.direct_chunk_bytes // (4 * y_part.shape[1]))
        scratch = torch.empty(min(rows, self.n_ref), y_part.shape[1], dtype=torch.float32, device=self.device)
        for r0 in range(0, self.n_ref, rows):
            r1 = min(r0 + rows, self.n_ref)
            buf = scratch[: r1 - r0]
            gemm_into(self._gemm_mode, buf, y_ref[:, r0:r1].T, y_part, accumulate=False)
            self.P_total[r0:r1] += buf

    def _accumulate_within(self, y_ref: torch.Tensor, y_part: torch.Tensor) -> None:
        n_tok = y_part.shape[0]
        for m, (n_layers, d_mlp) in enumerate(self.partner_shapes):
            lo, hi = self.partner_offsets[m], self.partner_offsets[m + 1]
            x = y_part[:, lo:hi].view(n_tok, n_layers, d_mlp).transpose(0, 1)  # [L, T, d]
            gemm_into(self._gemm_mode, self.C_partial[m], x.transpose(1, 2), x, accumulate=not self._partial_empty)
        if self.ref_layers is not None:
            x = y_ref.view(n_tok, len(self.ref_layers), self.ref_shape[1]).transpose(0, 1)
            gemm_into(self._gemm_mode, self.C_ref_partial, x.transpose(1, 2), x, accumulate=not self._partial_empty)

    @torch.no_grad()
    def flush(self) -> None:
        """Add the float32 partial sums into the totals and start new partial sums."""
        if not self._partial_empty:
            if self.P_partial is not None:
                self.P_total.add_(self.P_partial)
            for total, part in zip(self.C_total, self.C_partial):
                total.add_(part)
            self.C_ref_total.add_(self.C_ref_partial)
        self._partial_empty = True
        self._since_flush = 0

    # no float32 partial sums pending: a checkpoint now (state_dict flushes) changes no bit of the run
    at_flush_point = property(lambda self: self._partial_empty)

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
            "n_overflow_batches": self.n_overflow_batches, "n_rescaled_batches": self.n_rescaled_batches,
            "S_ref": self.S_ref, "Q_ref": self.Q_ref, "S_partner": self.S_partner,
            "P_total": self.P_total, "C_ref_total": self.C_ref_total,
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
        self.n_overflow_batches = int(state["n_overflow_batches"])
        self.n_rescaled_batches = int(state["n_rescaled_batches"])
        for name in ("S_ref", "Q_ref", "S_partner", "P_total", "C_ref_total"):
            getattr(self, name).copy_(state[name])
        for m, c in enumerate(self.C_total):
            c.copy_(state[f"C_total.{m}"])
        self._partial_empty = True
        self._since_flush = 0

    # ------------------------------------------------------------------ finalisation

    def finalize(self, top_k: int = 10, *, workspace_bytes: int | None = None) -> CorrelationResult:
        """Per-neuron results of what was accumulated (:func:`reduction.finalize`); the accumulator
        is left intact (more batches may follow)."""
        return reduction.finalize(self, top_k, workspace_bytes=workspace_bytes)

    def correlation_matrix(self, partner: int, *, rotated: bool = False) -> torch.Tensor:
        """The full ``[n_ref, N_m] float64`` rho matrix against one partner (or its rotated
        baseline). For tests and small cohorts only: it is what the streaming never stores."""
        return reduction.correlation_matrix(self, partner, rotated=rotated)
