"""Memory planning for the correlation accumulators: how many bytes a cohort's accumulators and
one batch need, what the device can give, and how to split the reference neurons into blocks
(one data pass each) when everything does not fit at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from atlas.errors import AtlasError
from atlas.ingest.math.correlation.rotation import Shape


@dataclass(frozen=True)
class BlockPlan:
    """How to split the reference neurons so the accumulators fit the device.

    ``blocks``: ``[start, stop)`` flat reference-neuron ranges, one accumulator (one data pass) each;
    ``buffered``: float32 partial buffer + float64 totals (True) or direct float64 (False);
    ``block_bytes``: estimated accumulator bytes of the largest block; ``budget_bytes``: what was available;
    ``whole_layers``: every block is whole reference layers, so the partner-side baseline (which
    rotates reference layers) can be computed; False only when not even one layer fits.
    """

    blocks: tuple[tuple[int, int], ...]
    buffered: bool
    block_bytes: int
    budget_bytes: int
    whole_layers: bool = False


def accumulator_bytes(n_ref: int, partner_shapes: Sequence[Shape], *, buffered: bool = True,
                      total_dtype: torch.dtype = torch.float64, direct_chunk_bytes: int = 256 << 20,
                      ref_layer_size: int | None = None) -> int:
    """Device bytes held by a ``CohortCorrelation`` over ``n_ref`` reference neurons (with the
    reference's within-layer moments when its block is whole layers of ``ref_layer_size``)."""
    tb = torch.empty((), dtype=total_dtype).element_size()
    n_partner = sum(l * d for l, d in partner_shapes)
    per_elem = tb + (4 if buffered else 0)
    cross = n_ref * n_partner * per_elem
    within = sum(l * d * d for l, d in partner_shapes) * (tb + 4)
    if ref_layer_size:
        within += n_ref * int(ref_layer_size) * (tb + 4)
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
    avail = _available_ram()
    # never less than a quarter of what is available: the reserve is a guess for big models, and a
    # machine whose page cache holds most of its RAM still has that RAM to give
    return max(avail // 4, avail // 2 - (reserve_bytes or 0))


def _available_ram() -> int:
    """Bytes the kernel could give us now (``MemAvailable``: free pages plus reclaimable cache)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def plan_ref_blocks(n_ref: int, partner_shapes: Sequence[Shape], *, budget_bytes: int,
                    total_dtype: torch.dtype = torch.float64, buffered: bool | None = None,
                    max_block: int | None = None, layer_size: int | None = None) -> BlockPlan:
    """Split ``n_ref`` reference neurons into as few equal blocks as fit ``budget_bytes``.

    ``buffered=None`` picks the mode that needs fewer blocks (buffered on a tie: it is faster);
    ``max_block`` forces blocks of at most that many neurons (blocks on request). With
    ``layer_size`` (the reference's d_mlp) blocks are whole reference layers whenever one layer
    fits (the partner-side baseline needs them), else plain neuron ranges (``whole_layers=False``).
    """
    def rows_that_fit(buf: bool, ref_layer_size: int | None) -> int:
        lo, hi = 0, n_ref
        while lo < hi:  # largest row count whose accumulators fit
            mid = (lo + hi + 1) // 2
            if accumulator_bytes(mid, partner_shapes, buffered=buf, total_dtype=total_dtype,
                                 ref_layer_size=ref_layer_size) <= budget_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def bytes_of(size: int, buf: bool, ref_layer_size: int | None) -> int:
        return accumulator_bytes(size, partner_shapes, buffered=buf, total_dtype=total_dtype,
                                 ref_layer_size=ref_layer_size)

    modes = [buffered] if buffered is not None else [True, False]
    if layer_size and n_ref % layer_size == 0:
        n_layers = n_ref // layer_size
        best_layers: tuple[int, bool, int] | None = None
        for buf in modes:
            per_block = rows_that_fit(buf, layer_size) // layer_size
            if max_block is not None:
                per_block = min(per_block, max_block // layer_size)
            if per_block < 1:
                continue
            n_blocks = math.ceil(n_layers / per_block)
            if best_layers is None or n_blocks < best_layers[0]:
                best_layers = (n_blocks, buf, per_block)
        if best_layers is not None:
            n_blocks, buf, _ = best_layers
            size = math.ceil(n_layers / n_blocks) * layer_size
            blocks = tuple((s, min(s + size, n_ref)) for s in range(0, n_ref, size))
            return BlockPlan(blocks=blocks, buffered=buf, block_bytes=bytes_of(size, buf, layer_size),
                             budget_bytes=budget_bytes, whole_layers=True)
    best: tuple[int, bool, int] | None = None
    for buf in modes:
        fit = rows_that_fit(buf, None)
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
    whole = n_blocks == 1 and bool(layer_size) and n_ref % layer_size == 0
    return BlockPlan(blocks=blocks, buffered=buf, block_bytes=bytes_of(size, buf, None),
                     budget_bytes=budget_bytes, whole_layers=whole)
