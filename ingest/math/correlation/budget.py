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

