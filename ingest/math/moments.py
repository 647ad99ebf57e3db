"""Streaming per-neuron activation statistics (pure: tensors in, tensors/frames out; no DB, no files).

Everything here is exact and one-pass, with state whose size does not depend on the number of tokens,
and mergeable/resumable (``state_dict`` / ``load_state_dict``):

- ``Moments``: count, mean and central moment sums M2..M4 in float64, merged batch by batch with the
  pairwise formulas of Chan et al. / Pébay (2008). Each batch's moments are taken about its own fp32
  mean and converted to central form in float64, so nothing cancels catastrophically.
  ``variance`` is the population variance (ddof 0), ``skew`` the biased sample skewness and
  ``kurtosis`` the non-excess kurtosis (Gaussian = 3): scipy's ``skew(x)`` and ``kurtosis(x, fisher=False)``.
- ``Histogram``: counts between fixed edges (numpy ``histogram`` semantics: bins ``[e_i, e_i+1)``, the
  last one closed, values outside the edges not counted).
- ``TopK``: the exact k largest values per neuron with their token indices.
- ``TokenTable``: per vocabulary token and neuron, count, sum and max (mean = sum / count).
- ``NeuronStatsAccumulator``: all of the above for ``hook_pre`` (moments, min/max, histogram) and
  ``hook_post`` (mean, max, firing frequency, top-k examples, per-token table) of one model.

Shapes: a batch is ``pre, post: [n_tokens, n_neurons] float32`` (flat neuron = layer * d_mlp + idx),
``token_ids: [n_tokens] int64`` and ``token_index: [n_tokens] int64`` (row_idx * context_length + position).
Statistics that are undefined (no tokens; zero variance for skew/kurtosis) are NaN, stored as NULL.

One module (a little over 400 lines) on purpose: the accumulators of one statistics pass, read
together with ``NeuronStatsAccumulator`` that combines them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

F64 = torch.float64
HIST_RANGE = (-10.0, 15.0)
HIST_EDGES = 256
TINY_VARIANCE = 1e-24  # relative to mean²: below fp32 resolution, the values are constant (skew/kurtosis undefined)


def histogram_edges(lo: float = HIST_RANGE[0], hi: float = HIST_RANGE[1], n_edges: int = HIST_EDGES) -> torch.Tensor:
    """``n_edges`` evenly spaced float32 edges from ``lo``: ``edge_i = fl(fl(i * w) + lo)`` with ``w``
    the float32 step. Defined by float32 arithmetic so ``Histogram`` can recompute any edge exactly
    without a lookup (the last edge may differ from ``hi`` in the last bit)."""
    w = torch.tensor((hi - lo) / (n_edges - 1), dtype=torch.float32)
    return (torch.arange(n_edges, dtype=torch.float32) * w) + torch.tensor(lo, dtype=torch.float32)


# ---------------------------------------------------------------- moments

class Moments:
    """Streaming count/mean/M2/M3/M4 of ``[n_tokens, n]`` batches, per column, in float64."""

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.mean = torch.zeros(n, dtype=F64, device=device)
        self.m2 = torch.zeros_like(self.mean)
        self.m3 = torch.zeros_like(self.mean)
        self.m4 = torch.zeros_like(self.mean)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch ``x: [n_tokens, n]`` (any float dtype)."""
        nb = x.shape[0]
        if nb == 0:
            return
        # power sums about the fp32 batch mean, then exact central moments in float64. The fp32
        # sums are cascaded (pairwise) by torch, ~1e-7 relative; s1 corrects the rounded shift.
        x = x.float()
        shift = x.mean(dim=0)
        d = x - shift
        d2 = d * d
        s1 = d.sum(dim=0).to(F64)
        s2 = d2.sum(dim=0).to(F64)
        s3 = d.mul_(d2).sum(dim=0).to(F64)  # d becomes d³
        s4 = d2.mul_(d2).sum(dim=0).to(F64)  # d2 becomes d⁴
        m = s1 / nb
        mean_b = shift.to(F64) + m
        m2_b = s2 - nb * m * m
        m3_b = s3 - 3 * m * s2 + 2 * nb * m ** 3
        m4_b = s4 - 4 * m * s3 + 6 * m * m * s2 - 3 * nb * m ** 4
        self._merge(nb, mean_b, m2_b.clamp_min(0), m3_b, m4_b.clamp_min(0))

    def merge(self, other: Moments) -> None:
        self._merge(other.count, other.mean, other.m2, other.m3, other.m4)

    def _merge(self, nb: int, mean_b: torch.Tensor, m2_b: torch.Tensor, m3_b: torch.Tensor, m4_b: torch.Tensor) -> None:
        na = self.count
        if nb == 0:
            return
        if na == 0:
            self.count, self.mean, self.m2, self.m3, self.m4 = nb, mean_b.clone(), m2_b.clone(), m3_b.clone(), m4_b.clone()
            return
        n = na + nb
        delta = mean_b - self.mean
        d_n = delta / n
        m2a, m3a = self.m2, self.m3
        self.m4 = (self.m4 + m4_b + delta * d_n ** 3 * na * nb * (na * na - na * nb + nb * nb)
                   + 6 * d_n ** 2 * (na * na * m2_b + nb * nb * m2a) + 4 * d_n * (na * m3_b - nb * m3a))
        self.m3 = m3a + m3_b + delta * d_n ** 2 * na * nb * (na - nb) + 3 * d_n * (na * m2_b - nb * m2a)
        self.m2 = m2a + m2_b + delta * d_n * na * nb
        self.mean = self.mean + d_n * nb
        self.count = n

    def finalize(self) -> dict[str, torch.Tensor]:
        """``{"mean", "variance", "skew", "kurtosis"}`` as float64 tensors (NaN where undefined)."""
        if self.count == 0:
            nan = torch.full_like(self.mean, float("nan"))
            return {"mean": nan, "variance": nan.clone(), "skew": nan.clone(), "kurtosis": nan.clone()}
        n = self.count
        var = self.m2 / n
        constant = var <= TINY_VARIANCE * self.mean * self.mean
        safe = torch.where(constant, torch.ones_like(var), var)
        skew = torch.where(constant, torch.nan, (self.m3 / n) / safe ** 1.5)
        kurt = torch.where(constant, torch.nan, (self.m4 / n) / safe ** 2)
        return {"mean": self.mean.clone(), "variance": torch.where(constant, torch.zeros_like(var), var),
                "skew": skew, "kurtosis": kurt}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "m3": self.m3, "m4": self.m4}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        for name in ("mean", "m2", "m3", "m4"):
            setattr(self, name, state[name].to(self.mean.device))


# ---------------------------------------------------------------- histogram

class Histogram:
    """Counts per column between fixed ``edges`` (``[n_edges]``, increasing): ``counts [n, n_edges - 1]``.

    Edges made like ``histogram_edges`` (each recomputable in float32 as ``fl(fl(i * w) + lo)``) are
    binned arithmetically: ``f = floor((x - lo) / w + 1/2)`` is the true bin ``b`` or ``b + 1`` (its
    rounding error, bounded at construction, is far below 1/2 of a bin), and one comparison with the
    recomputed edge ``e_f`` settles which — exact, with no lookups. Other edges use a binary search.
    """

    def __init__(self, n: int, edges: torch.Tensor, device: torch.device | str = "cpu"):
        self.edges = edges.to(device=device, dtype=torch.float32)
        self.n_bins = self.edges.numel() - 1
        self.counts = torch.zeros(n * self.n_bins, dtype=torch.int64, device=device)
        self.n = n
        # slot of column j, bin i: j * (n_bins + 2) + 1 + i (slot 0: below the edges, n_bins + 1: at/above the last)
        self.offsets = torch.arange(n, device=device) * (self.n_bins + 2)
        self.offsets_1 = (self.offsets + 1).int()
        self.lo, self.width, self.uniform = float(self.edges[0]), 1.0, False
        if self.n_bins > 0 and self.n * (self.n_bins + 2) < 2 ** 31:
            steps = torch.arange(self.n_bins + 1, dtype=torch.float32, device=device)
            w = torch.tensor(float(self.edges[-1].double() - self.edges[0].double()) / self.n_bins, dtype=torch.float32)
            for _ in range(4):  # the float32 step is within an ulp or two of the mean spacing
                for cand in (w, torch.nextafter(w, torch.tensor(float("inf"))), torch.nextafter(w, torch.tensor(0.0))):
                    if torch.equal(steps.mul(cand.to(device)).add(self.lo), self.edges):
                        self.width, self.uniform = float(cand), True
                        break
                if self.uniform:
                    break
                w = torch.nextafter(w, torch.tensor(float("inf")))
        self.inv_width = 1.0 / self.width
        self.shift = self.lo * self.inv_width - 0.5
        if self.uniform and self._rounding_bound() > 0.25:
            self.uniform = False  # edges too far from 0 for their width: float32 cannot place values

    def _rounding_bound(self) -> float:
        """An upper bound, in bins, on |computed (x - lo)/w + 1/2 - exact| plus the edges' own
        rounding, for x within a bin of the edges (further out, the clamp decides alone)."""
        e = self.edges.double().cpu()
        w = self.width
        exact = self.lo + torch.arange(self.n_bins + 1, dtype=torch.float64) * w
        edge_err = float((e - exact).abs().max()) / w
        span = (max(abs(float(e[0])), abs(float(e[-1]))) + w) / w
        u = 2.0 ** -24  # float32 unit roundoff; products and differences each round once
        return edge_err + 4 * u * span + 2 * u * (abs(self.shift) + 1) + 2 * u * (self.n_bins + 2)

    def update(self, x: torch.Tensor, col_max: torch.Tensor | None = None) -> None:
        """Add ``x: [n_tokens, n]``; ``col_max`` (its column maxima, when the caller has them) saves a pass."""
        if x.shape[0] == 0:
            return
        x = x.float()
        e, nb = self.edges, self.n_bins
        if self.uniform:
            f = x.mul(self.inv_width).sub_(self.shift).floor_().clamp_(0, nb)  # the true bin b, or b + 1
            edge = f.mul(self.width).add_(self.lo)  # e_f by the float32 ops that made the edges
            f.sub_(torch.lt(x, edge, out=edge))  # 1.0 where x < e_f: then the bin is f - 1
            flat = f.int().add_(self.offsets_1)
        else:
            bins = torch.bucketize(x, e, right=True) - 1  # e[i] <= x < e[i+1] → i
            flat = (bins + 1).clamp_(0, nb + 1).add_(self.offsets)
        counts = torch.bincount(flat.reshape(-1), minlength=self.n * (nb + 2)).reshape(self.n, nb + 2)
        inside = counts[:, 1:nb + 1]
        # numpy closes the last bin: values equal to the last edge count in it (only columns reaching it)
        reach = (x.amax(dim=0) if col_max is None else col_max) >= e[-1]
        if bool(reach.any()):
            cols = reach.nonzero().squeeze(1)
            inside[cols, -1] += (x[:, cols] == e[-1]).sum(dim=0)
        self.counts += inside.reshape(-1)

    def result(self) -> torch.Tensor:
        return self.counts.reshape(self.n, self.n_bins)

    def state_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not torch.equal(state["edges"].cpu(), self.edges.cpu()):
            raise ValueError("checkpoint histogram edges differ from this run's")
        self.counts = state["counts"].to(self.counts.device)


# ---------------------------------------------------------------- top-k

class TopK:
    """The k largest values per column with their token indices (exact; ties broken by torch.topk)."""

    def __init__(self, n: int, k: int, device: torch.device | str = "cpu"):
        self.n, self.k = n, k
        self.values = torch.full((k, n), float("-inf"), dtype=torch.float32, device=device)
        self.index = torch.full((k, n), -1, dtype=torch.int64, device=device)

    def update(self, x: torch.Tensor, token_index: torch.Tensor, col_max: torch.Tensor | None = None) -> None:
        """Add ``x: [n_tokens, n]`` whose rows are tokens ``token_index: [n_tokens]``.

        Only columns whose batch maximum (``col_max``, computed when not given) exceeds their
        current k-th largest can change; once the top-k have filled up those are few, and only
        they are ranked (a value equal to the k-th largest does not displace the earlier token).
        """
        if x.shape[0] == 0:
            return
        x = x.float()
        token_index = token_index.to(x.device)
        changed = (x.amax(dim=0) if col_max is None else col_max) > self.values[-1]
        n_changed = int(changed.sum())
        if n_changed == 0:
            return
        # rank each changed column as a contiguous row (a strided column reads a cache line per value)
        if n_changed == self.n:
            vals, idx = self._merge(x.T.contiguous(), token_index, self.values, self.index)
            self.values, self.index = vals, idx
            return
        cols = changed.nonzero().squeeze(1)
        rows = x.T.contiguous().index_select(0, cols) if 4 * n_changed > self.n else x[:, cols].T.contiguous()
        vals, idx = self._merge(rows, token_index, self.values[:, cols], self.index[:, cols])
        self.values[:, cols] = vals
        self.index[:, cols] = idx

    def _merge(self, rows: torch.Tensor, token_index: torch.Tensor, values: torch.Tensor, index: torch.Tensor):
        """``rows: [c, n_tokens]`` (one per column) merged with that column's ``values, index: [k, c]``."""
        kb = min(self.k, rows.shape[1])
        vals, pos = torch.topk(rows, kb, dim=1)
        all_vals = torch.cat([values.T, vals], dim=1)
        all_idx = torch.cat([index.T, token_index[pos]], dim=1)
        top, pick = torch.topk(all_vals, self.k, dim=1)
        return top.T.contiguous(), torch.gather(all_idx, 1, pick).T.contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = state["values"].to(self.values.device)
        self.index = state["index"].to(self.index.device)


# ---------------------------------------------------------------- per-token table

class TokenTable:
    """Per (vocabulary token, column): count, sum and max of the values seen on that token.

    ``sums`` are float64 by default; ``sum_dtype=torch.float32`` halves the memory for large
    vocabularies × neurons (e.g. GPT-2 on a GPU), at ~1e-6 relative error of the means.
    """

    def __init__(self, n: int, d_vocab: int, device: torch.device | str = "cpu", sum_dtype: torch.dtype = F64):
        self.n, self.d_vocab = n, d_vocab
        self.counts = torch.zeros(d_vocab, dtype=torch.int64, device=device)
        self.sums = torch.zeros(d_vocab, n, dtype=sum_dtype, device=device)
        self.maxs = torch.full((d_vocab, n), float("-inf"), dtype=torch.float32, device=device)

    def update(self, x: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Add ``x: [n_tokens, n]`` for tokens ``token_ids: [n_tokens]``."""
        if x.shape[0] == 0:
            return
        token_ids = token_ids.to(x.device)
        self.counts += torch.bincount(token_ids, minlength=self.d_vocab)
        self.sums.index_add_(0, token_ids, x.to(self.sums.dtype))
        with warnings.catch_warnings():  # row-wise max; a [n_tokens, n] index for scatter_reduce_ cost more
            warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)  # "in beta"
            self.maxs.index_reduce_(0, token_ids, x.float(), "amax", include_self=True)

    def top_by_mean(self, m: int, min_count: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per column, the ``m`` tokens (seen ≥ ``min_count`` times) with the highest mean.

        Returns ``(token_ids, counts, means, maxs)``, each ``[m', n]`` (``m' = min(m, eligible tokens)``),
        sorted by mean descending.
        """
        eligible = self.counts >= max(1, min_count)
        m = min(m, int(eligible.sum()))
        if m == 0:
            empty = torch.zeros(0, self.n, device=self.sums.device)
            return empty.long(), empty.long(), empty, empty
        means = self.sums / self.counts.clamp_min(1)[:, None].to(self.sums.dtype)
        means = torch.where(eligible[:, None], means, torch.tensor(float("-inf"), dtype=means.dtype, device=means.device))
        top_means, tok = torch.topk(means, m, dim=0)
        return tok, self.counts[tok], top_means, torch.gather(self.maxs, 0, tok)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "sums": self.sums, "maxs": self.maxs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("counts", "sums", "maxs"):
            setattr(self, name, state[name].to(getattr(self, name).device))


# ---------------------------------------------------------------- everything for one model

@dataclass
class NeuronStats:
    """Final statistics of ``n`` neurons (flat index = layer * d_mlp + idx); tensors on the CPU."""

    count: int
    mean: torch.Tensor  # [n] float64, hook_pre
    variance: torch.Tensor
    skew: torch.Tensor
    kurtosis: torch.Tensor
    pre_min: torch.Tensor  # [n] float32
    pre_max: torch.Tensor
    post_mean: torch.Tensor  # [n] float64
    post_max: torch.Tensor
    act_frequency: torch.Tensor  # [n] float64, share of tokens with hook_post > 0
    histogram: torch.Tensor  # [n, n_bins] int64
    top_values: torch.Tensor  # [k, n] float32, descending (-inf: fewer than k tokens)
    top_index: torch.Tensor  # [k, n] int64 token index (row_idx * context_length + position)
    token_ids: torch.Tensor  # [m, n] int64, by mean descending
    token_counts: torch.Tensor  # [m, n]
    token_means: torch.Tensor  # [m, n]
    token_maxs: torch.Tensor  # [m, n]

    def frames(self, model_id: int, d_mlp: int, context_length: int) -> dict[str, pl.DataFrame]:
        """Polars frames for ``activation_stats``, ``top_example`` and ``token_activation`` (no run_id)."""
        n = self.mean.numel()
        flat = np.arange(n)
        layer, idx = (flat // d_mlp).astype(np.int16), (flat % d_mlp).astype(np.int32)
        stats = pl.DataFrame({
            "model_id": np.full(n, model_id, dtype=np.int64), "layer": layer, "idx": idx,
            "count": np.full(n, self.count, dtype=np.int64),
            "mean": self.mean.numpy(), "variance": self.variance.numpy(), "skew": self.skew.numpy(),
            "kurtosis": self.kurtosis.numpy(),
            "pre_min": _finite_or_nan(self.pre_min), "pre_max": _finite_or_nan(self.pre_max),
            "post_mean": self.post_mean.numpy(), "post_max": _finite_or_nan(self.post_max),
            "act_frequency": self.act_frequency.numpy(),
            "histogram": pl.Series(self.histogram.numpy().tolist(), dtype=pl.List(pl.Int64)),
        })
        k = self.top_values.shape[0]
        vals, index = self.top_values.numpy(), self.top_index.numpy()
        keep = np.isfinite(vals) & (index >= 0)  # [k, n]
        rank = np.broadcast_to(np.arange(1, k + 1)[:, None], vals.shape)
        neuron = np.broadcast_to(flat[None, :], vals.shape)
        examples = pl.DataFrame({
            "model_id": np.full(int(keep.sum()), model_id, dtype=np.int64),
            "layer": (neuron[keep] // d_mlp).astype(np.int16), "idx": (neuron[keep] % d_mlp).astype(np.int32),
            "rank": rank[keep].astype(np.int16),
            "row_idx": (index[keep] // context_length).astype(np.int64),
            "position": (index[keep] % context_length).astype(np.int16),
            "value": vals[keep].astype(np.float32),
        }).sort("layer", "idx", "rank")
        m = self.token_ids.shape[0]
        t_neuron = np.broadcast_to(flat[None, :], (m, n)).reshape(-1)
        tokens = pl.DataFrame({
            "model_id": np.full(m * n, model_id, dtype=np.int64),
            "layer": (t_neuron // d_mlp).astype(np.int16), "idx": (t_neuron % d_mlp).astype(np.int32),
            "token_id": self.token_ids.numpy().reshape(-1).astype(np.int64),
            "count": self.token_counts.numpy().reshape(-1).astype(np.int64),
            "mean_act": self.token_means.numpy().reshape(-1).astype(np.float32),
            "max_act": self.token_maxs.numpy().reshape(-1).astype(np.float32),
        }).sort("layer", "idx", "mean_act", descending=[False, False, True])
        return {"activation_stats": stats, "top_example": examples, "token_activation": tokens}


def _finite_or_nan(t: torch.Tensor) -> np.ndarray:
    a = t.double().numpy().copy()
    a[~np.isfinite(a)] = np.nan
    return a


class NeuronStatsAccumulator:
    """Streaming statistics of one model's ``n_neurons`` MLP neurons over the kept tokens of a dataset."""

    def __init__(self, n_neurons: int, d_vocab: int, *, top_k: int = 20, edges: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", token_sum_dtype: torch.dtype = F64):
        self.n, self.d_vocab, self.top_k = n_neurons, d_vocab, top_k
        self.device = torch.device(device)
        self.moments = Moments(n_neurons, self.device)
        self.histogram = Histogram(n_neurons, histogram_edges() if edges is None else edges, self.device)
        self.top = TopK(n_neurons, top_k, self.device)
        self.tokens = TokenTable(n_neurons, d_vocab, self.device, token_sum_dtype)
        self.pre_min = torch.full((n_neurons,), float("inf"), device=self.device)
        self.pre_max = torch.full((n_neurons,), float("-inf"), device=self.device)
        self.post_sum = torch.zeros(n_neurons, dtype=F64, device=self.device)
        self.post_max = torch.full((n_neurons,), float("-inf"), device=self.device)
        self.fires = torch.zeros(n_neurons, dtype=torch.int64, device=self.device)

    def update(self, pre: torch.Tensor, post: torch.Tensor, token_ids: torch.Tensor, token_index: torch.Tensor) -> None:
        """Add kept tokens: ``pre, post: [n_tokens, n_neurons]``, ``token_ids, token_index: [n_tokens]``."""
        if pre.shape[0] == 0:
            return
        pre, post = pre.to(self.device), post.to(self.device)
        # column extremes once per batch, shared by the components that can use them
        pre_min, pre_max = pre.amin(dim=0).float(), pre.amax(dim=0).float()  # (aminmax is slower on the CPU)
        post_max = post.amax(dim=0).float()
        self.moments.update(pre)
        self.histogram.update(pre, col_max=pre_max)
        self.pre_min = torch.minimum(self.pre_min, pre_min)
        self.pre_max = torch.maximum(self.pre_max, pre_max)
        self.post_sum += post.sum(dim=0).to(F64)  # cascaded fp32 within the batch, float64 across
        self.post_max = torch.maximum(self.post_max, post_max)
        firing = torch.gt(post, 0, out=torch.empty_like(post, dtype=torch.float32))  # 1.0 / 0.0: sums faster than bool
        self.fires += firing.sum(dim=0).long()  # exact below 2**24 tokens a batch
        self.top.update(post, token_index, col_max=post_max)
        self.tokens.update(post, token_ids)

    def finalize(self, top_tokens: int = 100, min_token_count: int = 1) -> NeuronStats:
        m = self.moments.finalize()
        count = self.moments.count
        denom = float(count) if count else float("nan")
        tok, cnt, means, maxs = self.tokens.top_by_mean(top_tokens, min_token_count)
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        return NeuronStats(
            count=count, mean=cpu(m["mean"]), variance=cpu(m["variance"]), skew=cpu(m["skew"]),
            kurtosis=cpu(m["kurtosis"]), pre_min=cpu(self.pre_min), pre_max=cpu(self.pre_max),
            post_mean=cpu(self.post_sum / denom), post_max=cpu(self.post_max),
            act_frequency=cpu(self.fires.double() / denom), histogram=cpu(self.histogram.result()),
            top_values=cpu(self.top.values), top_index=cpu(self.top.index),
            token_ids=cpu(tok), token_counts=cpu(cnt), token_means=cpu(means).double(), token_maxs=cpu(maxs),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "moments": self.moments.state_dict(), "histogram": self.histogram.state_dict(),
            "top": self.top.state_dict(), "tokens": self.tokens.state_dict(),
            "pre_min": self.pre_min, "pre_max": self.pre_max, "post_sum": self.post_sum,
            "post_max": self.post_max, "fires": self.fires,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state["moments"])
        self.histogram.load_state_dict(state["histogram"])
        self.top.load_state_dict(state["top"])
        self.tokens.load_state_dict(state["tokens"])
        for name in ("pre_min", "pre_max", "post_sum", "post_max", "fires"):
            setattr(self, name, state[name].to(self.device))
