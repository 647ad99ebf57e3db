"""Per-neuron results of a cohort's correlations (``CorrelationResult``): merging the results of
reference-neuron blocks, and the frames for the tables ``pair_correlation``, ``correlation_edge``
and ``neuron_universality``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import polars as pl
import torch

from atlas.ingest.math.correlation.rotation import Shape


@dataclass
class CorrelationResult:
    """Per-neuron reductions of one cohort's correlations (tensors on the CPU).

    Reference side (``n = ref_stop - ref_start`` reference neurons, flat indices from ``ref_start``):
      ``best_rho, baseline_rho: [M, n] float32``, ``best_idx: [M, n] int64`` (flat partner index, −1 if none);
      ``topk_rho: [M, n, k] float32`` (descending), ``topk_idx: [M, n, k] int64`` (−1 pads);
      ``max_corr, mean_corr, min_corr, mean_baseline, excess: [n] float32`` (over partners);
      ``ref_dead: [n] bool``.
    Partner side, one entry per partner: ``partner_best_rho[m]: [N_m] float32`` (column maxima over
      this result's reference neurons), ``partner_best_idx[m]: [N_m] int64`` (flat reference index,
      −1 if none), ``partner_dead[m]: [N_m] bool``, and ``partner_baseline_rho[m]: [N_m] float32``:
      the best correlation of partner neuron j with a randomly rotated direction of the REFERENCE's
      layers (method.md §2). ``partner_baseline_computed`` is False when a block cut a reference
      layer: then that baseline is NaN (stored NULL), never a different quantity.
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
    partner_baseline_computed: bool = True

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


def aggregate_over_partners(best: torch.Tensor, baseline: torch.Tensor) -> dict[str, torch.Tensor]:
    """Over partners (dim 0): max/mean/min corr, mean baseline, excess; NaN anywhere → NaN."""
    mean_corr = best.mean(0)
    mean_baseline = baseline.mean(0)
    return dict(max_corr=best.amax(0), mean_corr=mean_corr, min_corr=best.amin(0),
                mean_baseline=mean_baseline, excess=mean_corr - mean_baseline)


def combine_blocks(results: Sequence[CorrelationResult]) -> CorrelationResult:
    """Merge the results of reference-neuron blocks of one cohort into one result.

    Reference-side rows are concatenated; partner-side column maxima (and baselines: the max over
    the rotated reference layers) are the max over blocks; a partner-side baseline missing from
    any block (a block that cut a layer) is missing from the whole.
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
    computed = all(r.partner_baseline_computed for r in parts)
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
        base = _masked_max(torch.stack([r.partner_baseline_rho[m] for r in parts]), 0)[0]
        baseline.append(base if computed else torch.full_like(base, math.nan))
    return replace(first, ref_start=parts[0].ref_start, ref_stop=parts[-1].ref_stop, **cat,
                   partner_best_rho=best_rho, partner_best_idx=best_idx, partner_baseline_rho=baseline,
                   partner_baseline_computed=computed)


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

