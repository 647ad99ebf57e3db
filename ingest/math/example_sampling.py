"""Examples beyond the top activations, sampled in the same streaming pass (pure: tensors in, tensors
and frames out; no database, no files).

A neuron page shows, besides a neuron's strongest activations (``moments.TopK``):

- **most negative** examples: the ``bottom_k`` smallest ``hook_post`` values, exact (``TopK`` of the
  negated values);
- **quantile** examples: what typical activations look like. A uniform random sample (reservoir,
  ``reservoir`` tokens per neuron) of the tokens where the neuron fires (``hook_post > 0``, the same
  rule as its activation frequency) is kept while streaming; at the end the sample is sorted by
  value, cut into ``quantiles`` equal bands, and ``per_quantile`` examples are drawn from each band,
  with their quantile (the band's position in the firing distribution, estimated from the sample).

The sample is drawn by *priority sampling*: every token gets a pseudo-random key from a hash of its
position in the dataset (``token_index``), and each neuron keeps the firing tokens with the
smallest keys. For one neuron that is a uniform sample of its firing tokens without replacement;
because keys depend only on the token, the result does not depend on batch size or on resuming
from a checkpoint, and one key per token (not per token and neuron) keeps the cost at one sort of
the batch's keys plus a top-k over ``[n_tokens, n]``.

Shapes: ``post: [n_tokens, n] float32`` (flat neuron = layer * d_mlp + idx), ``token_index:
[n_tokens] int64`` (row_idx * context_length + position). Another engineer optimises
``moments.NeuronStatsAccumulator``; this module is a separate accumulator beside it, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from atlas.ingest.math.moments import TopK

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # an odd 27-bit constant: products stay below 2**59, no int64 overflow


def token_keys(token_index: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A pseudo-random key in [0, 1) per token, a function of its dataset position only: ``[n] float64``.

    Two rounds of a 32-bit integer mixer (xor-shift-multiply) over ``token_index`` and ``seed``;
    it only has to order tokens independently of their activations.
    """
    x = (token_index.to(torch.int64) ^ (int(seed) * 0x9E37 + 0x7F4A)) & _MASK32
    for _ in range(3):
        x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (x >> 16) ^ x
    return x.to(torch.float64) / float(1 << 32)


class ExampleSampler:
    """Streaming most-negative examples and a uniform sample of the firing tokens of ``n`` neurons."""

    def __init__(self, n: int, *, bottom_k: int = 10, reservoir: int = 64, quantiles: int = 5,
                 per_quantile: int = 2, seed: int = 0, device: torch.device | str = "cpu"):
        if reservoir < quantiles * per_quantile:
            raise ValueError(f"a reservoir of {reservoir} cannot give {quantiles} × {per_quantile} quantile examples")
        self.n, self.reservoir, self.quantiles, self.per_quantile, self.seed = n, reservoir, quantiles, per_quantile, seed
        self.device = torch.device(device)
        self.bottom = TopK(n, bottom_k, self.device)  # of -post
        self.keys = torch.full((reservoir, n), float("inf"), dtype=torch.float64, device=self.device)
        self.index = torch.full((reservoir, n), -1, dtype=torch.int64, device=self.device)
        self.values = torch.zeros((reservoir, n), dtype=torch.float32, device=self.device)

    def update(self, post: torch.Tensor, token_index: torch.Tensor) -> None:
        """Add kept tokens: ``post: [n_tokens, n]``, ``token_index: [n_tokens]``."""
        if post.shape[0] == 0:
            return
        post = post.to(self.device).float()
        token_index = token_index.to(self.device)
        self.bottom.update(-post, token_index)
        keys = token_keys(token_index, self.seed)
        # only tokens whose key beats some neuron's current largest kept key can enter a reservoir
        candidates = keys < self.keys[-1].max()
        if not bool(candidates.any()):
            return
        keys, order = torch.sort(keys[candidates])
        rows = candidates.nonzero().squeeze(1)[order]
        chosen = post[rows]  # [m, n], tokens in key order
        fired = chosen > 0
        # each neuron's first `reservoir` firing tokens in key order: rank firing tokens by position
        m = rows.numel()
        score = torch.where(fired, -torch.arange(m, device=self.device, dtype=torch.float32)[:, None],
                            torch.tensor(float("-inf"), device=self.device))
        take = min(self.reservoir, m)
        best, pick = torch.topk(score, take, dim=0)  # [take, n]
        new_keys = torch.where(torch.isfinite(best), keys[pick], torch.tensor(float("inf"), dtype=torch.float64,
                                                                              device=self.device))
        new_index = torch.where(torch.isfinite(best), token_index[rows[pick]], torch.tensor(-1, device=self.device))
        new_values = torch.gather(chosen, 0, pick)
        all_keys = torch.cat([self.keys, new_keys])
        kept, at = torch.topk(all_keys, self.reservoir, dim=0, largest=False)
        self.keys = kept
        self.index = torch.gather(torch.cat([self.index, new_index]), 0, at)
        self.values = torch.gather(torch.cat([self.values, new_values]), 0, at)

    def finalize(self) -> SampledExamples:
        """The most negative examples and the quantile examples, on the CPU."""
        bottom_values = (-self.bottom.values).cpu()
        bottom_index = self.bottom.index.cpu()
        sampled = torch.isfinite(self.keys)  # [R, n]
        size = sampled.sum(dim=0)  # firing tokens in each neuron's sample
        # sort each sample by value (unsampled slots last), remember each slot's key
        vals = torch.where(sampled, self.values.double(), torch.tensor(float("inf"), dtype=torch.float64,
                                                                     device=self.device))
        sorted_vals, order = torch.sort(vals, dim=0)
        keys = torch.gather(self.keys, 0, order)
        index = torch.gather(self.index, 0, order)
        q, per = self.quantiles, self.per_quantile
        out_values = torch.full((q * per, self.n), float("nan"), dtype=torch.float32)
        out_index = torch.full((q * per, self.n), -1, dtype=torch.int64)
        out_quantile = torch.full((q * per, self.n), float("nan"), dtype=torch.float32)
        rank = torch.arange(self.reservoir, device=self.device)[:, None].expand(-1, self.n)
        band = torch.where(rank < size, (rank * q) // size.clamp_min(1), torch.full_like(rank, q))  # [R, n]
        for b in range(q):
            # within band b, the slots with the smallest keys: a random choice among the band's tokens
            in_band = band == b
            band_keys = torch.where(in_band, keys, torch.tensor(float("inf"), dtype=torch.float64, device=self.device))
            chosen_keys, slot = torch.topk(band_keys, min(per, self.reservoir), dim=0, largest=False)
            slot, _ = torch.sort(torch.where(torch.isfinite(chosen_keys), slot, self.reservoir), dim=0)  # by value
            ok = slot < self.reservoir
            safe = slot.clamp_max(self.reservoir - 1)
            rows = slice(b * per, (b + 1) * per)
            out_values[rows] = torch.where(ok, torch.gather(sorted_vals, 0, safe), torch.nan).float().cpu()
            out_index[rows] = torch.where(ok, torch.gather(index, 0, safe), -1).cpu()
            quantile = (safe.double() + 0.5) / size.clamp_min(1).double()
            out_quantile[rows] = torch.where(ok, quantile, torch.nan).float().cpu()
        return SampledExamples(bottom_values, bottom_index, out_values, out_index, out_quantile)

    def state_dict(self) -> dict[str, Any]:
        return {"bottom": self.bottom.state_dict(), "keys": self.keys, "index": self.index, "values": self.values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bottom.load_state_dict(state["bottom"])
        for name in ("keys", "index", "values"):
            setattr(self, name, state[name].to(self.device))


@dataclass
class SampledExamples:
    """Final samples of ``n`` neurons: ``bottom_*`` ``[bottom_k, n]`` (most negative first; index −1:
    fewer tokens), ``quantile_*`` ``[quantiles × per_quantile, n]`` (lowest band first, by value within
    a band; index −1 where a band had too few firing tokens)."""

    bottom_values: torch.Tensor
    bottom_index: torch.Tensor
    quantile_values: torch.Tensor
    quantile_index: torch.Tensor
    quantile: torch.Tensor

    def frame(self, model_id: int, d_mlp: int, context_length: int) -> pl.DataFrame:
        """Rows of ``sampled_example`` (no run_id): kind, rank (1 = first), row_idx, position, value, quantile."""
        parts = []
        for kind, values, index, quantile in (
                ("quantile", self.quantile_values, self.quantile_index, self.quantile),
                ("bottom", self.bottom_values, self.bottom_index, None)):
            vals, idx = values.numpy(), index.numpy()
            keep = (idx >= 0) & np.isfinite(vals)  # [k, n]
            kept_rank = np.cumsum(keep, axis=0)  # ranks without gaps where a band was empty
            neuron = np.broadcast_to(np.arange(vals.shape[1])[None, :], vals.shape)
            parts.append(pl.DataFrame({
                "model_id": np.full(int(keep.sum()), model_id, dtype=np.int64),
                "layer": (neuron[keep] // d_mlp).astype(np.int16), "idx": (neuron[keep] % d_mlp).astype(np.int32),
                "kind": [kind] * int(keep.sum()), "rank": kept_rank[keep].astype(np.int16),
                "row_idx": (idx[keep] // context_length).astype(np.int64),
                "position": (idx[keep] % context_length).astype(np.int16),
                "value": vals[keep].astype(np.float32),
                "quantile": (quantile.numpy()[keep].astype(np.float32) if quantile is not None
                             else np.full(int(keep.sum()), np.nan, dtype=np.float32)),
            }))
        return pl.concat(parts).with_columns(pl.col("quantile").fill_nan(None)).sort("layer", "idx", "kind", "rank")


def example_windows(post: torch.Tensor, row: torch.Tensor, position: torch.Tensor, neuron: torch.Tensor,
                    before: int, after: int) -> tuple[torch.Tensor, list[list[float]]]:
    """Each example's window of one neuron's activations.

    ``post: [batch, ctx, n]`` (one model's hook_post over a batch of dataset rows); example ``e`` is
    at ``position[e]`` of row ``row[e]`` of the batch, for flat neuron ``neuron[e]``. Returns the
    window starts ``[E]`` (``max(position - before, 0)``) and, per example, the neuron's activations
    from there to ``min(position + after, ctx - 1)``.
    """
    if row.numel() == 0:
        return torch.zeros(0, dtype=torch.int64), []
    ctx = post.shape[1]
    start = (position - before).clamp_min(0)
    stop = (position + after).clamp_max(ctx - 1)
    width = before + after + 1
    at = (start[:, None] + torch.arange(width, device=post.device)[None, :]).clamp_max(ctx - 1)  # [E, W]
    values = post[row[:, None], at, neuron[:, None]].float().cpu()  # [E, W]
    lengths = (stop - start + 1).cpu().tolist()
    return start.cpu(), [v[:k].tolist() for v, k in zip(values, lengths)]
