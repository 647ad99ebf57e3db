"""Streaming per-token sums of a layer's activations (pure math: no DB, no files): everything
variance reduction, token means, activation moments and position mutual information need, from
one pass over the data and never cached activations:

    count[v] = Σ_t 1[token_t = v],     S[v, i] = Σ_t a_i(t) · 1[token_t = v]     (and the same
    for the previous token, the position and any per-position tag such as a part of speech),
    plus n, Σ a_i, Σ a_i².

Two token sets, as the paper has them: the sums for variance reduction and token means are over
the KEPT tokens (the dataset's recorded filter rule); the activation moments (kurtosis) and the
position statistics (firing per position, for mutual information) are over EVERY position of
every row, BOS included, as the paper's activation summaries were.

Sums are taken over mean-shifted activations (the shift is the first batch's mean), in float64.

Shapes: ``tokens: [batch, pos] int64``, ``acts: [batch, pos, n_neurons]`` (one layer's
``hook_post``: use one accumulator per layer), ``keep: [batch, pos] bool``; ``tags[name]:
[batch, pos] int64`` category ids in ``[0, tag_sizes[name])``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

STATE_VERSION = 2


class FeatureAccumulator:
    """Per-token-id, per-previous-token-id, per-position and per-tag activation sums of
    ``n_neurons`` neurons (one layer), accumulated batch by batch.

    Row ``d_vocab`` of the previous-token tables (and row ``size`` of a previous-tag table) stands
    for "no previous token" (position 0). Moments up to the 4th (for kurtosis) are of ``pre`` when
    given to :meth:`update`, else of ``acts``; firing (for position mutual information) is ``acts > 0``.
    ``tag_sizes``: categorical per-position tags (e.g. ``{"pos": 18, "dep": 45}``) to sum over.
    """

    def __init__(self, n_neurons: int, d_vocab: int, n_ctx: int, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, tag_sizes: Mapping[str, int] | None = None) -> None:
        self.n_neurons, self.d_vocab, self.n_ctx = n_neurons, d_vocab, n_ctx
        self.device, self.dtype = torch.device(device), dtype
        self.tag_sizes = {k: int(v) for k, v in (tag_sizes or {}).items()}
        z = lambda *shape: torch.zeros(*shape, dtype=dtype, device=self.device)  # noqa: E731
        self.n = 0  # kept tokens
        self.n_all = 0  # every position
        self.shift: torch.Tensor | None = None  # [N]: subtracted from acts before summing
        self.moment_shift: torch.Tensor | None = None  # [N]: the same for the moment source
        self.total = z(n_neurons)  # Σ (a − shift), kept tokens
        self.total_sq = z(n_neurons)  # Σ (a − shift)², kept tokens
        self.moments = z(4, n_neurons)  # Σ (m − moment_shift)^k, k = 1..4, every position
        self.token_count = z(d_vocab + 1)
        self.token_sum = z(d_vocab + 1, n_neurons)
        self.prev_count = z(d_vocab + 1)
        self.prev_sum = z(d_vocab + 1, n_neurons)
        self.pos_count = z(n_ctx)  # kept tokens per position (for position features' VR)
        self.pos_sum = z(n_ctx, n_neurons)
        self.all_pos_count = z(n_ctx)  # every position
        self.all_pos_fire = z(n_ctx, n_neurons)
        self.act_max = torch.full((n_neurons,), -math.inf, dtype=dtype, device=self.device)
        self.act_min = torch.full((n_neurons,), math.inf, dtype=dtype, device=self.device)
        self.tag_count = {k: z(s + 1) for k, s in self.tag_sizes.items()}
        self.tag_sum = {k: z(s + 1, n_neurons) for k, s in self.tag_sizes.items()}
        self.prev_tag_count = {k: z(s + 1) for k, s in self.tag_sizes.items()}
        self.prev_tag_sum = {k: z(s + 1, n_neurons) for k, s in self.tag_sizes.items()}

    _STATE = ("total", "total_sq", "moments", "token_count", "token_sum", "prev_count", "prev_sum",
              "pos_count", "pos_sum", "all_pos_count", "all_pos_fire", "act_max", "act_min")
    _TAG_STATE = ("tag_count", "tag_sum", "prev_tag_count", "prev_tag_sum")

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, acts: torch.Tensor, keep: torch.Tensor | None = None,
               pre: torch.Tensor | None = None, tags: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add a batch. ``tokens: [batch, pos]``, ``acts``/``pre``: ``[batch, pos, n_neurons]``,
        ``keep: [batch, pos] bool`` (positions counted in the VR sums; the previous token of a kept
        position is used whether or not it is kept itself), ``tags``: one ``[batch, pos]`` id
        tensor per name in ``tag_sizes``."""
        if tokens.ndim != 2 or acts.shape[:2] != tokens.shape or acts.shape[2] != self.n_neurons:
            raise ValueError(f"expected tokens [batch, pos] and acts [batch, pos, {self.n_neurons}], "
                             f"got {tuple(tokens.shape)} and {tuple(acts.shape)}")
        batch, n_pos = tokens.shape
        if n_pos > self.n_ctx:
            raise ValueError(f"batch has {n_pos} positions, accumulator was made for n_ctx={self.n_ctx}")
        tags = dict(tags or {})
        if set(tags) != set(self.tag_sizes):
            raise ValueError(f"expected tags {sorted(self.tag_sizes)}, got {sorted(tags)}")
        tokens = tokens.to(self.device)
        acts = acts.to(self.device)
        source = acts if pre is None else pre.to(self.device)
        if keep is None:
            keep = torch.ones_like(tokens, dtype=torch.bool)
        keep = keep.to(self.device)
        if not keep.any():
            return
        # every position: moments of the moment source, firing per position
        m_all = source.reshape(-1, self.n_neurons).to(self.dtype)
        if self.moment_shift is None:
            self.moment_shift = m_all.mean(0)
        dm = m_all - self.moment_shift
        p = dm.clone()
        for k in range(4):
            self.moments[k] += p.sum(0)
            if k < 3:
                p *= dm
        del p, dm, m_all
        self.n_all += batch * n_pos
        self.all_pos_count[:n_pos] += batch
        self.all_pos_fire[:n_pos] += (acts > 0).to(self.dtype).sum(0)

        # kept tokens: the sums variance reduction reads
        prev = torch.full_like(tokens, self.d_vocab)
        prev[:, 1:] = tokens[:, :-1]
        position = torch.arange(n_pos, device=self.device).expand(batch, n_pos)
        tok, prv, pos = tokens[keep], prev[keep], position[keep]
        a = acts[keep].to(self.dtype)  # [n_kept, N]
        if self.shift is None:
            self.shift = a.mean(0)
        d = a - self.shift
        self.n += int(tok.numel())
        self.total += d.sum(0)
        self.total_sq += (d * d).sum(0)
        ones = torch.ones(tok.shape[0], dtype=self.dtype, device=self.device)
        self.token_count.index_add_(0, tok, ones)
        self.token_sum.index_add_(0, tok, d)
        self.prev_count.index_add_(0, prv, ones)
        self.prev_sum.index_add_(0, prv, d)
        self.pos_count.index_add_(0, pos, ones)
        self.pos_sum.index_add_(0, pos, d)
        self.act_max = torch.maximum(self.act_max, a.max(0).values)
        self.act_min = torch.minimum(self.act_min, a.min(0).values)
        for name, ids in tags.items():
            ids = ids.to(self.device)
            prev_ids = torch.full_like(ids, self.tag_sizes[name])
            prev_ids[:, 1:] = ids[:, :-1]
            self.tag_count[name].index_add_(0, ids[keep], ones)
            self.tag_sum[name].index_add_(0, ids[keep], d)
            self.prev_tag_count[name].index_add_(0, prev_ids[keep], ones)
            self.prev_tag_sum[name].index_add_(0, prev_ids[keep], d)

    # -- checkpointing
    def state_dict(self) -> dict:
        state = {k: getattr(self, k).cpu() for k in self._STATE}
        for k in self._TAG_STATE:
            state[k] = {name: t.cpu() for name, t in getattr(self, k).items()}
        state.update(version=STATE_VERSION, n=self.n, n_all=self.n_all, tag_sizes=dict(self.tag_sizes),
                     shift=None if self.shift is None else self.shift.cpu(),
                     moment_shift=None if self.moment_shift is None else self.moment_shift.cpu(),
                     shape=(self.n_neurons, self.d_vocab, self.n_ctx))
        return state

    @classmethod
    def from_state_dict(cls, state: dict, *, device: str | torch.device = "cpu") -> FeatureAccumulator:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"accumulator state version {state.get('version')} is not {STATE_VERSION}")
        n_neurons, d_vocab, n_ctx = state["shape"]
        acc = cls(n_neurons, d_vocab, n_ctx, device=device, dtype=state["total"].dtype, tag_sizes=state["tag_sizes"])
        for k in cls._STATE:
            setattr(acc, k, state[k].to(acc.device))
        for k in cls._TAG_STATE:
            setattr(acc, k, {name: t.to(acc.device) for name, t in state[k].items()})
        acc.n, acc.n_all = int(state["n"]), int(state["n_all"])
        acc.shift = None if state["shift"] is None else state["shift"].to(acc.device)
        acc.moment_shift = None if state["moment_shift"] is None else state["moment_shift"].to(acc.device)
        return acc

    # -- derived statistics
    def variance(self) -> torch.Tensor:
        """Population variance of the activations over kept tokens: ``[N]`` (NaN before any data)."""
        if self.n == 0:
            return torch.full((self.n_neurons,), math.nan, dtype=self.dtype, device=self.device)
        mean_d = self.total / self.n
        return (self.total_sq / self.n - mean_d * mean_d).clamp_min(0)

    def mean(self) -> torch.Tensor:
        """Mean activation over kept tokens ``[N]``."""
        return self.total / max(self.n, 1) + (0 if self.shift is None else self.shift)

    def dead(self) -> torch.Tensor:
        """``[N] bool``: zero variance (up to rounding) — VR and friends are undefined."""
        var = self.variance()
        mean = self.mean()
        return ~(var > 1e-12 * (1.0 + mean * mean))

    def kurtosis(self) -> torch.Tensor:
        """Non-excess kurtosis (Gaussian = 3) of the moment source over every position (the
        paper's token set): ``[N]``, NaN if constant."""
        n = max(self.n_all, 1)
        s1, s2, s3, s4 = (self.moments[k] / n for k in range(4))
        m2 = s2 - s1 * s1
        m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1 ** 4
        out = m4 / (m2 * m2)
        scale = (self.moment_shift if self.moment_shift is not None else 0) + s1
        return torch.where(m2 > 1e-12 * (1.0 + scale * scale), out, torch.full_like(out, math.nan))

    def token_means(self, min_count: int = 1) -> torch.Tensor:
        """Mean activation per current token: ``[d_vocab, N]``, NaN where count < ``min_count``."""
        c = self.token_count[: self.d_vocab]
        means = self.token_sum[: self.d_vocab] / c.clamp_min(1)[:, None] + self.shift_or_zero()
        return torch.where((c >= max(min_count, 1))[:, None], means, torch.full_like(means, math.nan))

    def shift_or_zero(self) -> torch.Tensor:
        return self.shift if self.shift is not None else torch.zeros(self.n_neurons, dtype=self.dtype, device=self.device)

    def firing_rate(self) -> torch.Tensor:
        """Share of all positions where the neuron fires (``acts > 0``): ``[N]``."""
        return self.all_pos_fire.sum(0) / max(self.n_all, 1)

    def position_mutual_information(self) -> torch.Tensor:
        """Mutual information (nats) between firing (``acts > 0``) and the absolute position, every
        position its own value (method.md §4; the paper's ``pos_mutual_info``), over every position
        of every row: ``Σ_p w_p · KL(Bern(r_p) ‖ Bern(f))`` with ``w_p`` the share of tokens at p,
        ``r_p`` the firing rate at p and ``f`` the overall rate. ``[N]``; at most H(f) ≤ ln 2;
        NaN for a neuron that always or never fires."""
        counts = self.all_pos_count
        seen = counts > 0
        counts, fires = counts[seen], self.all_pos_fire[seen]
        n = counts.sum()
        f = fires.sum(0) / n  # overall firing rate [N]
        r = fires / counts[:, None]  # per-position firing rate [P, N]
        w = (counts / n)[:, None]

        def xlogy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.where(x > 0, x * torch.log(x / y), torch.zeros_like(x))

        mi = (w * (xlogy(r, f.expand_as(r)) + xlogy(1 - r, (1 - f).expand_as(r)))).sum(0)
        undefined = (f <= 0) | (f >= 1)
        return torch.where(undefined, torch.full_like(mi, math.nan), mi.clamp_min(0))


def firing_entropy(rate: torch.Tensor) -> torch.Tensor:
    """Binary entropy (nats) of a firing rate; the ceiling of :meth:`position_mutual_information`."""
    r = rate.clamp(1e-300, 1 - 1e-16)
    return -(r * torch.log(r) + (1 - r) * torch.log1p(-r))
