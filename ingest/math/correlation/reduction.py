"""From accumulated moments to per-neuron results (method.md §2): rho against every partner
neuron, the rotated baselines, and their per-neuron reductions (best partner, baseline, top-k;
for the partner side, column maxima and the baseline against the rotated reference layers).

The accumulated moments are of y = (v − μ)·s. Pearson's rho needs no unscaling; the rotation acts
on a model's activations in their own units, so its covariances are unscaled (÷ s).

Everything here reads a :class:`~atlas.ingest.math.correlation.accumulator.CohortCorrelation`
and leaves it intact (more batches may follow).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from atlas.ingest.math.correlation.result import CorrelationResult, aggregate_over_partners
from atlas.ingest.math.correlation.rotation import build_rotation

if TYPE_CHECKING:
    from atlas.ingest.math.correlation.accumulator import CohortCorrelation


def partner_moments(acc: CohortCorrelation, m: int) -> dict[str, torch.Tensor]:
    """Partner m: scaled means, scaled inverse stds (NaN if dead), the unscaling factors
    ``unit = 1/s`` and the within-layer covariance in activation units ``[L, d, d]``."""
    n = float(acc.n)
    lo, hi = acc.partner_offsets[m], acc.partner_offsets[m + 1]
    n_layers, d_mlp = acc.partner_shapes[m]
    mean = acc.S_partner[lo:hi] / n
    second = acc.C_total[m].to(torch.float64) / n
    var = torch.diagonal(second, dim1=1, dim2=2).reshape(-1) - mean.square()
    unit = 1.0 / acc.inv_scale_partner[lo:hi].to(torch.float64)
    mean_l, unit_l = mean.view(n_layers, d_mlp), unit.view(n_layers, d_mlp)
    cov = second - mean_l.unsqueeze(2) * mean_l.unsqueeze(1)
    cov = cov * unit_l.unsqueeze(2) * unit_l.unsqueeze(1)
    return {"mean": mean, "inv_std": inv_std(acc, var, unit), "unit": unit, "cov": cov}


def inv_std(acc: CohortCorrelation, var: torch.Tensor, unit: torch.Tensor | float = 1.0) -> torch.Tensor:
    """1/std of scaled variables; NaN where the std in activation units (× unit) is ≤ min_std."""
    std = var.clamp(min=0).sqrt()
    return torch.where(std * unit > acc.min_std, 1.0 / std, torch.full_like(std, math.nan))


def ref_moments(acc: CohortCorrelation) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference neurons of this block: scaled means and scaled inverse stds (NaN if dead)."""
    n = float(acc.n)
    mean = acc.S_ref / n
    unit = 1.0 / acc.inv_scale_ref.to(torch.float64)
    return mean, inv_std(acc, acc.Q_ref / n - mean.square(), unit)


def rotation_moments(acc: CohortCorrelation, m: int, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``R: [L, d, d]`` and the inverse std (activation units) of the rotated partner neurons ``[N_m]``."""
    rot = build_rotation(acc.rotation_seed, acc.rotation, m, acc.partner_shapes[m], acc.device)
    var_rot = ((rot @ cov) * rot).sum(-1).reshape(-1)  # diag(R Cov Rᵀ) per layer
    return rot, inv_std(acc, var_rot)


def rho_chunk(acc: CohortCorrelation, m: int, r0: int, r1: int, ref_mean: torch.Tensor, ref_inv: torch.Tensor,
              mom: dict[str, torch.Tensor], rot: torch.Tensor | None,
              rot_inv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rho and rotated rho (float64) of reference rows ``[r0, r1)`` against partner m."""
    n = float(acc.n)
    lo, hi = acc.partner_offsets[m], acc.partner_offsets[m + 1]
    cov = acc.P_total[r0:r1, lo:hi].to(torch.float64) / n - ref_mean[r0:r1, None] * mom["mean"][None, :]
    rho = cov * ref_inv[r0:r1, None] * mom["inv_std"][None, :]
    rho_rot = None
    if rot is not None:
        n_layers, d_mlp = acc.partner_shapes[m]
        cov = cov * mom["unit"][None, :]  # partner side in activation units
        cov_l = cov.view(r1 - r0, n_layers, d_mlp).transpose(0, 1)  # [L, r, d]
        cov_rot = (cov_l @ rot.transpose(1, 2)).transpose(0, 1).reshape(r1 - r0, -1)
        rho_rot = cov_rot * ref_inv[r0:r1, None] * rot_inv[None, :]
    return rho, rho_rot


def reference_rotation_moments(acc: CohortCorrelation) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The reference layers of this block rotated (``build_rotation(..., reference=True)``):
    ``R: [L_block, d, d]`` and the inverse std (activation units) of the rotated reference
    directions ``[L_block, d]``; None when the block is not whole layers."""
    if acc.ref_layers is None:
        return None
    n, d = float(acc.n), acc.ref_shape[1]
    n_l = len(acc.ref_layers)
    mean = (acc.S_ref / n).view(n_l, d)
    unit = (1.0 / acc.inv_scale_ref.to(torch.float64)).view(n_l, d)
    cov = acc.C_ref_total.to(torch.float64) / n - mean.unsqueeze(2) * mean.unsqueeze(1)
    cov = cov * unit.unsqueeze(2) * unit.unsqueeze(1)  # activation units
    rot = build_rotation(acc.rotation_seed, acc.rotation, 0, acc.ref_shape, acc.device, reference=True,
                         layers=acc.ref_layers)
    var_rot = ((rot @ cov) * rot).sum(-1)  # diag(R Cov Rᵀ) per layer
    return rot, inv_std(acc, var_rot)


def partner_baseline(acc: CohortCorrelation, m: int, ref_mean: torch.Tensor, mom: dict[str, torch.Tensor],
                     ref_rot: tuple[torch.Tensor, torch.Tensor], workspace_bytes: int | None) -> torch.Tensor:
    """Partner m's neurons: their best correlation with a rotated reference direction of this
    block's layers, ``max_{l,k} corr((R_l v_a,l)_k, v_m,j)`` with ``cov(R_l v_a,l, v_m) = R_l cov(v_a,l, v_m)``:
    ``[N_m] float64`` on the device (−inf where undefined)."""
    rot, rot_inv = ref_rot
    n, d = float(acc.n), acc.ref_shape[1]
    lo, hi = acc.partner_offsets[m], acc.partner_offsets[m + 1]
    unit_ref = 1.0 / acc.inv_scale_ref.to(torch.float64)
    best = torch.full((hi - lo,), -math.inf, dtype=torch.float64, device=acc.device)
    cols = _chunk_rows(acc, d, workspace_bytes)  # columns per chunk for [d, cols] temporaries
    for i in range(len(acc.ref_layers)):
        r0, r1 = i * d, (i + 1) * d
        for c0 in range(0, hi - lo, cols):
            c1 = min(c0 + cols, hi - lo)
            cov = acc.P_total[r0:r1, lo + c0:lo + c1].to(torch.float64) / n - ref_mean[r0:r1, None] * mom["mean"][None, c0:c1]
            cov = cov * unit_ref[r0:r1, None]  # reference side in activation units
            rho = (rot[i] @ cov) * rot_inv[i][:, None] * mom["inv_std"][None, c0:c1]
            best[c0:c1] = torch.maximum(best[c0:c1], torch.nan_to_num(rho, nan=-math.inf).amax(0))
    return best


@torch.no_grad()
def correlation_matrix(acc: CohortCorrelation, partner: int, *, rotated: bool = False) -> torch.Tensor:
    """The full ``[n_ref, N_m] float64`` rho matrix against one partner (or its rotated
    baseline). For tests and small cohorts only: it is what the streaming never stores."""
    acc.flush()
    ref_mean, ref_inv = ref_moments(acc)
    mom = partner_moments(acc, partner)
    rot, rot_inv = rotation_moments(acc, partner, mom["cov"]) if rotated else (None, None)
    rho, rho_rot = rho_chunk(acc, partner, 0, acc.n_ref, ref_mean, ref_inv, mom, rot, rot_inv)
    return (rho_rot if rotated else rho).cpu()


def _chunk_rows(acc: CohortCorrelation, n_cols: int, workspace_bytes: int | None) -> int:
    if workspace_bytes is None:
        if acc.device.type == "cuda":
            workspace_bytes = min(4 << 30, torch.cuda.mem_get_info(acc.device)[0] // 2)
        else:
            workspace_bytes = 512 << 20
    return max(1, int(workspace_bytes) // (n_cols * 64))  # ~8 float64 temporaries per element


@torch.no_grad()
def finalize(acc: CohortCorrelation, top_k: int = 10, *, workspace_bytes: int | None = None) -> CorrelationResult:
    """Reduce the accumulated moments to per-neuron results (see ``CorrelationResult``).

    Works in reference-row chunks of at most ``workspace_bytes`` scratch; the accumulator is left
    intact (more batches may follow)."""
    if acc.n < 2:
        raise ValueError("need at least two tokens to correlate")
    acc.flush()
    ref_mean, ref_inv = ref_moments(acc)
    ref_dead = torch.isnan(ref_inv)
    k = max(1, min(int(top_k), min(acc.partner_sizes)))
    M, n_ref = acc.n_partners, acc.n_ref
    nan = math.nan
    best_rho = torch.full((M, n_ref), nan, dtype=torch.float32)
    best_idx = torch.full((M, n_ref), -1, dtype=torch.int64)
    baseline = torch.full((M, n_ref), nan, dtype=torch.float32)
    topk_rho = torch.full((M, n_ref, k), nan, dtype=torch.float32)
    topk_idx = torch.full((M, n_ref, k), -1, dtype=torch.int64)
    p_best, p_idx, p_base, p_dead = [], [], [], []
    ninf = torch.tensor(-math.inf, dtype=torch.float64, device=acc.device)
    ref_rot = reference_rotation_moments(acc)
    for m in range(M):
        mom = partner_moments(acc, m)
        rot, rot_inv = rotation_moments(acc, m, mom["cov"])
        n_cols = acc.partner_sizes[m]
        col_best = torch.full((n_cols,), -math.inf, dtype=torch.float64, device=acc.device)
        col_idx = torch.full((n_cols,), -1, dtype=torch.int64, device=acc.device)
        rows = _chunk_rows(acc, n_cols, workspace_bytes)
        for r0 in range(0, n_ref, rows):
            r1 = min(r0 + rows, n_ref)
            rho, rho_rot = rho_chunk(acc, m, r0, r1, ref_mean, ref_inv, mom, rot, rot_inv)
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
            col_idx = torch.where(better, cidx + r0 + acc.ref_start, col_idx)
            del rho, rho_rot
        cnone = torch.isneginf(col_best)
        p_best.append(col_best.masked_fill(cnone, nan).float().cpu())
        p_idx.append(col_idx.masked_fill(cnone, -1).cpu())
        if ref_rot is None:  # the block cuts a reference layer: no baseline rather than a wrong one
            p_base.append(torch.full((n_cols,), nan, dtype=torch.float32))
        else:
            col_base = partner_baseline(acc, m, ref_mean, mom, ref_rot, workspace_bytes)
            p_base.append(col_base.masked_fill(torch.isneginf(col_base), nan).float().cpu())
        p_dead.append(torch.isnan(mom["inv_std"]).cpu())
        del mom, rot, rot_inv
    agg = aggregate_over_partners(best_rho, baseline)
    return CorrelationResult(
        n_tokens=acc.n, ref_shape=acc.ref_shape, partner_shapes=acc.partner_shapes,
        ref_start=acc.ref_start, ref_stop=acc.ref_stop, rotation=acc.rotation,
        rotation_seed=acc.rotation_seed, top_k=k, best_rho=best_rho, best_idx=best_idx,
        baseline_rho=baseline, topk_rho=topk_rho, topk_idx=topk_idx, **agg,
        ref_dead=ref_dead.cpu(), partner_best_rho=p_best, partner_best_idx=p_idx,
        partner_baseline_rho=p_base, partner_dead=p_dead, partner_baseline_computed=ref_rot is not None,
    )
