"""The paper authors' correlation design, reimplemented for speed comparison only (never used by the atlas).

What "Universal Neurons in GPT2 Language Models" (Gurnee et al. 2024) did, as described by their
public code: one (reference, partner) pair at a time;

- per batch and per *layer pair* (l1, l2) one float32 matmul ``[d1, T] @ [T, d2]`` on the device,
  whose ``[d1, d2]`` block is copied to host memory and added into a float64 accumulator
  ``[L1, d1, L2, d2]`` there, together with per-neuron sums and sums of squares (also host float64);
- the textbook one-pass formula at the end (no mean shift), layer by layer;
- the rotation baseline as a *second full pass* over the data with each partner layer's activations
  rotated by a random matrix (iid Gaussian rows scaled to unit norm) before the same accumulation.

Written from that description for this benchmark; no code was copied. The numerics are the
authors' (float64 host totals, float32 per-batch blocks); the shapes and layouts are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch


class ReferencePairPearson:
    """Pearson correlation of one reference/partner pair, accumulated the authors' way."""

    def __init__(self, ref_shape: tuple[int, int], partner_shape: tuple[int, int], host: str = "cpu") -> None:
        (l1, d1), (l2, d2) = ref_shape, partner_shape
        f64 = torch.float64
        self.ref_shape, self.partner_shape = ref_shape, partner_shape
        self.m1_sum = torch.zeros(l1, d1, dtype=f64, device=host)
        self.m1_sum_sq = torch.zeros(l1, d1, dtype=f64, device=host)
        self.m2_sum = torch.zeros(l2, d2, dtype=f64, device=host)
        self.m2_sum_sq = torch.zeros(l2, d2, dtype=f64, device=host)
        self.m1_m2_sum = torch.zeros(l1, d1, l2, d2, dtype=f64, device=host)
        self.host = host
        self.n = 0

    @torch.no_grad()
    def update(self, ref_acts: torch.Tensor, partner_acts: torch.Tensor) -> None:
        """``ref_acts: [T, L1*d1]``, ``partner_acts: [T, L2*d2]`` on the compute device."""
        (l1, d1), (l2, d2) = self.ref_shape, self.partner_shape
        n_tok = ref_acts.shape[0]
        a = ref_acts.T.reshape(l1, d1, n_tok)  # the authors' layout: [layer, neuron, token]
        b = partner_acts.T.reshape(l2, d2, n_tok)
        for i in range(l1):
            a_i = a[i].to(torch.float32)
            for j in range(l2):
                block = a_i @ b[j].to(torch.float32).T
                self.m1_m2_sum[i, :, j, :] += block.to(self.host)
        self.m1_sum += a.sum(-1).to(self.host)
        self.m1_sum_sq += (a.to(torch.float32) ** 2).sum(-1).to(self.host)
        self.m2_sum += b.sum(-1).to(self.host)
        self.m2_sum_sq += (b.to(torch.float32) ** 2).sum(-1).to(self.host)
        self.n += n_tok

    @torch.no_grad()
    def correlation(self) -> torch.Tensor:
        """``[L1*d1, L2*d2] float32`` rho by the one-pass formula, computed layer by layer in float64."""
        (l1, d1), (l2, d2) = self.ref_shape, self.partner_shape
        out = torch.empty(l1, d1, l2, d2, dtype=torch.float32)
        norm2 = (self.m2_sum_sq - self.m2_sum**2 / self.n).sqrt()
        for i in range(l1):
            num = self.m1_m2_sum[i] - self.m1_sum[i][:, None, None] * self.m2_sum[None] / self.n
            norm1 = (self.m1_sum_sq[i] - self.m1_sum[i] ** 2 / self.n).sqrt()
            out[i] = (num / (norm1[:, None, None] * norm2[None])).to(torch.float32)
        return out.reshape(l1 * d1, l2 * d2)


@dataclass
class ReferenceSummary:
    """Per partner: reference-side row max/argmax and baseline row max; partner-side column max."""

    best_rho: list[torch.Tensor]
    best_idx: list[torch.Tensor]
    baseline_rho: list[torch.Tensor]
    partner_best_rho: list[torch.Tensor]


def rotate_layers(acts: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``[T, L*d]`` activations with each layer block replaced by ``R_l v_l`` (float32 on the device)."""
    n_layers, d_mlp, _ = rot.shape
    out = torch.empty(acts.shape, dtype=torch.float32, device=acts.device)
    for layer in range(n_layers):
        block = slice(layer * d_mlp, (layer + 1) * d_mlp)
        out[:, block] = acts[:, block].to(torch.float32) @ rot[layer].T
    return out


class ReferenceCohort:
    """A reference against several partners, the authors' way: an independent pair accumulator per
    partner (as separate jobs would have), and a second set for the rotated-partner baseline pass."""

    def __init__(self, ref_shape: tuple[int, int], partner_shapes: Sequence[tuple[int, int]],
                 rotations: Sequence[torch.Tensor], host: str = "cpu") -> None:
        self.pairs = [ReferencePairPearson(ref_shape, s, host) for s in partner_shapes]
        self.rotated = [ReferencePairPearson(ref_shape, s, host) for s in partner_shapes]
        self.rotations = list(rotations)

    def update(self, ref: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
        """First pass: one batch into every pair."""
        for pair, part in zip(self.pairs, parts):
            pair.update(ref, part)

    def update_baseline(self, ref: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
        """Second pass: one batch, partners rotated layer by layer."""
        for pair, part, rot in zip(self.rotated, parts, self.rotations):
            pair.update(ref, rotate_layers(part, rot))

    def summary(self) -> ReferenceSummary:
        def nan_max(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.nan_to_num(x, nan=-2.0).max(dim=dim)

        best_rho, best_idx, partner_best, baseline = [], [], [], []
        for pair, rotated in zip(self.pairs, self.rotated):
            rho = pair.correlation()
            vals, idx = nan_max(rho, 1)
            best_rho.append(vals)
            best_idx.append(idx)
            partner_best.append(nan_max(rho, 0)[0])
            del rho
            baseline.append(nan_max(rotated.correlation(), 1)[0])
        return ReferenceSummary(best_rho=best_rho, best_idx=best_idx, baseline_rho=baseline,
                                partner_best_rho=partner_best)


def reference_cohort(batches: Callable[[], Iterable[tuple[torch.Tensor, Sequence[torch.Tensor]]]],
                     ref_shape: tuple[int, int], partner_shapes: Sequence[tuple[int, int]],
                     rotations: Sequence[torch.Tensor], host: str = "cpu") -> ReferenceSummary:
    """The whole design: one pass over ``batches()`` for the correlations, a second full pass with
    rotated partners for the baseline, then the one-pass formula and the maxima.

    ``batches()`` yields ``(ref_acts [T, N_a], [partner_acts [T, N_m], ...])`` on the compute device;
    ``rotations[m]: [L, d, d] float32`` on that device.
    """
    cohort = ReferenceCohort(ref_shape, partner_shapes, rotations, host)
    for ref, parts in batches():
        cohort.update(ref, parts)
    for ref, parts in batches():
        cohort.update_baseline(ref, parts)
    return cohort.summary()
