"""Binary token features and their streaming variance reduction (pure math: no DB, no files).

A neuron is explained by a binary feature f of the current token, the previous token or the
absolute position through the variance reduction

    VR(f) = [Var(a) − (p0·Var(a | f=0) + p1·Var(a | f=1))] / Var(a)

Everything needed for every token-level feature is a handful of per-token-id sums over the data,
accumulated batch by batch (:class:`FeatureAccumulator`), never cached activations:

    count[v] = Σ_t 1[token_t = v],     S[v, i] = Σ_t a_i(t) · 1[token_t = v]     (and the same
    for the previous token and for the position), plus n, Σ a_i, Σ a_i².

For a feature with indicator F[v], n1 = Fᵀ count and S1 = Fᵀ S (a sparse matmul), n0 = n − n1,
S0 = S_total − S1, and the within-group sum of squares cancels so that

    VR = n1·n0/n · (S1/n1 − S0/n0)² / (Σ a² − (Σ a)²/n)

Sums are taken over mean-shifted activations (the shift is the first batch's mean), in float64.
VR is invariant to the shift. A feature absent (or always present) in the data has VR 0; a dead
neuron (zero variance) has VR NaN, never a fake number.

Shapes: ``tokens: [batch, pos] int64``, ``acts: [batch, pos, n_neurons]`` (one layer's
``hook_post``: use one accumulator per layer), ``keep: [batch, pos] bool``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import torch

# ---------------------------------------------------------------- word lists (ours)

PUNCTUATION = {
    "period": ".", "comma": ",", "colon": ":", "semicolon": ";", "exclamation": "!",
    "question": "?", "apostrophe": "'’", "quote": "\"“”", "dash": "-–—", "open_bracket": "([{<",
    "close_bracket": ")]}>", "slash": "/\\", "math": "+*=^%", "currency": "$€£¥",
    "underscore": "_", "hash": "#", "at": "@", "ampersand": "&",
}
PREFIXES = ("un", "re", "in", "im", "dis", "non", "pre", "post", "sub", "inter", "over", "under",
            "anti", "de", "mis", "ex", "trans", "super", "semi", "multi", "auto", "counter")
SUFFIXES = ("ing", "ed", "ly", "s", "es", "er", "est", "tion", "sion", "ment", "ness", "able",
            "ible", "al", "ful", "less", "ous", "ive", "ity", "ize", "ise", "ism", "ist", "ship",
            "hood", "ward", "eth", "st")
CLOSED_CLASSES = {
    "pronoun": "i me my mine myself we us our ours ourselves you your yours yourself thou thee "
               "thy thine he him his himself she her hers herself it its itself they them their "
               "theirs themselves",
    "determiner": "the a an this that these those some any no every each either neither",
    "preposition": "of in on at by for with from to into onto upon about above below under over "
                   "between through during before after against among without within",
    "conjunction": "and or but nor so yet because although though while whereas if unless",
    "auxiliary": "is are was were be been being am have has had do does did will would shall "
                 "should can could may might must",
}
TOPIC_WORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "numbers": "zero one two three four five six seven eight nine ten eleven twelve thirteen "
               "fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty "
               "sixty seventy eighty ninety hundred thousand million billion first second third "
               "fourth fifth sixth seventh eighth ninth tenth dozen half",
    "months": "january february march april may june july august september october november "
              "december jan feb mar apr jun jul aug sep sept oct nov dec",
    "days": "monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu "
            "thur thurs fri sat",
    "family": "mother father mom mum dad brother brothers sister sisters son sons daughter "
              "daughters wife husband uncle aunt cousin grandmother grandfather grandson "
              "granddaughter parent parents child children baby family niece nephew",
    "colours": "red orange yellow green blue purple violet pink brown black white grey gray "
               "crimson scarlet indigo golden silver",
    "body": "head hand hands arm arms leg legs foot feet eye eyes ear ears nose mouth face "
            "heart hair finger fingers neck shoulder shoulders knee knees lips lip tongue teeth "
            "tooth blood skin bone bones brain breast belly",
    "animals": "cat cats dog dogs horse horses cow cows pig pigs sheep bird birds fish lion "
               "lions tiger bear wolf fox mouse mice rat rabbit deer snake eagle hawk bull "
               "goat duck hound",
    "food": "bread cheese meat apple apples rice milk butter wine beer water egg eggs cake "
            "fruit soup sugar salt honey corn wheat",
    "time": "second seconds minute minutes hour hours day days week weeks month months year "
            "years century decade morning evening night noon midnight today tomorrow yesterday",
    "royalty": "king kings queen queens prince princes princess lord lords lady ladies duke "
               "earl sir madam majesty throne crown court",
    "emotion": "love hate fear joy anger grief sorrow happy sad glad angry afraid proud shame "
               "pity hope",
    "weather": "rain snow wind winds storm sun cloud clouds thunder lightning frost fog weather",
    "direction": "north south east west northern southern eastern western left right",
    "places": "england france spain germany italy china japan india russia america rome greece "
              "egypt london paris scotland ireland wales europe africa asia",
}.items()}


@dataclass(frozen=True)
class FeatureSet:
    """Binary features over rows (vocabulary ids or positions).

    ``matrix: [n_rows, n_features] bool``; ``names[j]`` e.g. ``"token=' the'"``, ``"starts_with=a"``,
    ``"position in [32,64)"``; ``kinds[j]`` one of unigram | class | alphabet | topic | position.
    """

    names: list[str]
    kinds: list[str]
    matrix: torch.Tensor

    def __post_init__(self) -> None:
        if not (self.matrix.ndim == 2 and self.matrix.shape[1] == len(self.names) == len(self.kinds)):
            raise ValueError("FeatureSet: matrix columns, names and kinds must agree")

    @property
    def n_features(self) -> int:
        return len(self.names)


def normalise(text: str) -> str:
    """The word a token spells: stripped of surrounding whitespace, lower-cased."""
    return text.strip().lower()


def _class_predicates() -> list[tuple[str, str, callable]]:
    preds: list[tuple[str, str, callable]] = [
        ("leading_space", "class", lambda t, s: t[:1] == " " and s != ""),
        ("no_leading_space", "class", lambda t, s: t[:1] not in ("", " ", "\n", "\t") and s != ""),
        ("capitalised", "class", lambda t, s: s[:1].isupper()),
        ("all_caps", "class", lambda t, s: s.isupper() and sum(c.isalpha() for c in s) >= 2),
        ("lowercase_word", "class", lambda t, s: s.isalpha() and s.islower()),
        ("alphabetic", "class", lambda t, s: s.isalpha()),
        ("has_digit", "class", lambda t, s: any(c.isdigit() for c in s)),
        ("all_digits", "class", lambda t, s: s.isdigit()),
        ("year", "class", lambda t, s: len(s) == 4 and s.isdecimal() and 1490 <= int(s) <= 2200),
        ("single_letter", "class", lambda t, s: len(s) == 1 and s.isalpha()),
        ("whitespace", "class", lambda t, s: t != "" and s == ""),
        ("newline", "class", lambda t, s: "\n" in t),
        ("punctuation_only", "class", lambda t, s: s != "" and all(not c.isalnum() for c in s)),
    ]
    for n in range(1, 5):
        preds.append((f"digits={n}", "class", lambda t, s, n=n: s.isdecimal() and len(s) == n))
    for name, chars in PUNCTUATION.items():
        preds.append((f"punct={name}", "class", lambda t, s, chars=chars: any(c in chars for c in t)))
    for cls, words in CLOSED_CLASSES.items():
        ws = frozenset(words.split())
        preds.append((f"word_class={cls}", "class", lambda t, s, ws=ws: s.lower() in ws))
    for p in PREFIXES:
        preds.append((f"prefix={p}", "class",
                      lambda t, s, p=p: s.isalpha() and len(s) > len(p) + 2 and s.lower().startswith(p)))
    for x in SUFFIXES:
        preds.append((f"suffix={x}", "class",
                      lambda t, s, x=x: s.isalpha() and len(s) >= len(x) and s.lower().endswith(x)))
    for letter in "abcdefghijklmnopqrstuvwxyz":
        preds.append((f"starts_with={letter}", "alphabet", lambda t, s, c=letter: s[:1].lower() == c))
        preds.append((f"letter={letter}", "alphabet", lambda t, s, c=letter: s.lower() == c))
    for topic, words in TOPIC_WORDS.items():
        preds.append((f"topic={topic}", "topic", lambda t, s, ws=words: s.lower() in ws))
    return preds


def token_features(
    vocab: Sequence[str],
    frequent_token_ids: Iterable[int] = (),
    *,
    word_groups: bool = True,
    drop_empty: bool = True,
    special_token_ids: Iterable[int] = (),
) -> FeatureSet:
    """Binary features of vocabulary tokens: ``matrix: [d_vocab, n_features] bool``.

    - ``unigram``: ``token=<repr of text>`` (``token=' the'``) for each id in ``frequent_token_ids``; with ``word_groups``
      also ``word=<w>`` for a normalised word (stripped, lower-cased) that at least two vocabulary
      tokens spell (' the', 'the', ' The') and one of them is frequent.
    - ``class``: leading space, capitalised, all caps, digits, year (1490–2200), punctuation kinds,
      closed word classes, common prefixes and suffixes, ...
    - ``alphabet``: ``starts_with=x`` and ``letter=x`` for x in a–z.
    - ``topic``: ``topic=<name>`` for the built-in topic word sets (:data:`TOPIC_WORDS`).

    Special tokens (``special_token_ids``, and any text like ``<|endoftext|>``) belong to no
    class, alphabet or topic feature. Features no vocabulary token has are dropped (``drop_empty``).
    """
    vocab = [t if t is not None else "" for t in vocab]
    special = {int(i) for i in special_token_ids} | {
        i for i, t in enumerate(vocab) if len(t) > 4 and t.startswith("<|") and t.endswith("|>")}
    d_vocab = len(vocab)
    names: list[str] = []
    kinds: list[str] = []
    columns: list[np.ndarray] = []

    frequent = sorted({int(i) for i in frequent_token_ids})
    for i in frequent:
        if not 0 <= i < d_vocab:
            raise ValueError(f"frequent token id {i} outside the vocabulary (size {d_vocab})")
        col = np.zeros(d_vocab, dtype=bool)
        col[i] = True
        names.append(f"token={vocab[i]!r}")
        kinds.append("unigram")
        columns.append(col)

    normalised = [normalise(t) for t in vocab]
    if word_groups and frequent:
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(normalised):
            if w and any(c.isalnum() for c in w):
                groups.setdefault(w, []).append(i)
        frequent_words = {normalised[i] for i in frequent}
        for w in sorted(frequent_words):
            ids = groups.get(w, [])
            if len(ids) >= 2:
                col = np.zeros(d_vocab, dtype=bool)
                col[ids] = True
                names.append(f"word={w}")
                kinds.append("unigram")
                columns.append(col)

    stripped = [t.strip() for t in vocab]
    plain = [(t, s) if i not in special else ("", "") for i, (t, s) in enumerate(zip(vocab, stripped))]
    for name, kind, pred in _class_predicates():
        col = np.fromiter((bool(pred(t, s)) for t, s in plain), dtype=bool, count=d_vocab)
        if drop_empty and not col.any():
            continue
        names.append(name)
        kinds.append(kind)
        columns.append(col)

    matrix = torch.from_numpy(np.stack(columns, axis=1)) if columns else torch.zeros(d_vocab, 0, dtype=torch.bool)
    return FeatureSet(names=names, kinds=kinds, matrix=matrix)


def position_features(n_ctx: int, *, n_exact: int = 8, n_buckets: int = 16) -> FeatureSet:
    """Absolute-position features: ``matrix: [n_ctx, n_features] bool``.

    ``position=p`` for the first ``n_exact`` positions, ``position in [lo,hi)`` for
    ``n_buckets`` equal-width buckets, and ``position>=k`` at each inner bucket edge (a ramp
    in position is best explained by a threshold)."""
    names: list[str] = []
    cols: list[np.ndarray] = []
    pos = np.arange(n_ctx)
    for p in range(min(n_exact, n_ctx)):
        names.append(f"position={p}")
        cols.append(pos == p)
    edges = bucket_edges(n_ctx, n_buckets)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi - lo > 1 or lo >= n_exact:
            names.append(f"position in [{lo},{hi})" if hi - lo > 1 else f"position={lo}")
            cols.append((pos >= lo) & (pos < hi))
    for k in edges[1:-1]:
        names.append(f"position>={k}")
        cols.append(pos >= k)
    # equal columns add nothing (tiny contexts make exact positions and buckets coincide)
    seen: set[bytes] = set()
    keep_names, keep_cols = [], []
    for n, c in zip(names, cols):
        key = np.packbits(c).tobytes()
        if key in seen or not c.any() or c.all():
            continue
        seen.add(key)
        keep_names.append(n)
        keep_cols.append(c)
    matrix = torch.from_numpy(np.stack(keep_cols, axis=1)) if keep_cols else torch.zeros(n_ctx, 0, dtype=torch.bool)
    return FeatureSet(names=keep_names, kinds=["position"] * len(keep_names), matrix=matrix)


def bucket_edges(n_ctx: int, n_buckets: int) -> list[int]:
    """Integer edges 0 = e_0 < e_1 < ... < e_k = n_ctx of at most ``n_buckets`` equal-width buckets."""
    n_buckets = max(1, min(n_buckets, n_ctx))
    edges = sorted({int(round(i * n_ctx / n_buckets)) for i in range(n_buckets + 1)})
    return edges


def frequent_token_ids(counts: torch.Tensor, *, min_count: int = 1, max_tokens: int = 2000,
                       exclude: Iterable[int] = ()) -> list[int]:
    """The (at most ``max_tokens``) most frequent token ids with ``counts[v] >= min_count``.
    ``counts: [d_vocab]`` (e.g. :attr:`FeatureAccumulator.token_count` without its last row)."""
    c = counts.detach().to("cpu", torch.float64).clone()
    for e in exclude:
        if 0 <= e < len(c):
            c[e] = -1
    order = torch.argsort(c, descending=True, stable=True)[:max_tokens]
    return sorted(int(i) for i in order if c[i] >= max(min_count, 1))


# ---------------------------------------------------------------- streaming sums

class FeatureAccumulator:
    """Per-token-id, per-previous-token-id and per-position activation sums of ``n_neurons``
    neurons (one layer), accumulated batch by batch.

    Row ``d_vocab`` of the previous-token tables stands for "no previous token" (position 0).
    Moments up to the 4th (for kurtosis) are of ``pre`` when given to :meth:`update`, else of
    ``acts``; firing (for position mutual information) is ``acts > 0``.
    """

    def __init__(self, n_neurons: int, d_vocab: int, n_ctx: int, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        self.n_neurons, self.d_vocab, self.n_ctx = n_neurons, d_vocab, n_ctx
        self.device, self.dtype = torch.device(device), dtype
        z = lambda *shape: torch.zeros(*shape, dtype=dtype, device=self.device)  # noqa: E731
        self.n = 0
        self.shift: torch.Tensor | None = None  # [N]: subtracted from acts before summing
        self.moment_shift: torch.Tensor | None = None  # [N]: the same for the moment source
        self.total = z(n_neurons)  # Σ (a − shift)
        self.total_sq = z(n_neurons)  # Σ (a − shift)²
        self.moments = z(4, n_neurons)  # Σ (m − moment_shift)^k, k = 1..4
        self.token_count = z(d_vocab + 1)
        self.token_sum = z(d_vocab + 1, n_neurons)
        self.prev_count = z(d_vocab + 1)
        self.prev_sum = z(d_vocab + 1, n_neurons)
        self.pos_count = z(n_ctx)
        self.pos_sum = z(n_ctx, n_neurons)
        self.pos_fire = z(n_ctx, n_neurons)
        self.act_max = torch.full((n_neurons,), -math.inf, dtype=dtype, device=self.device)
        self.act_min = torch.full((n_neurons,), math.inf, dtype=dtype, device=self.device)

    _STATE = ("total", "total_sq", "moments", "token_count", "token_sum", "prev_count", "prev_sum",
              "pos_count", "pos_sum", "pos_fire", "act_max", "act_min")

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, acts: torch.Tensor, keep: torch.Tensor | None = None,
               pre: torch.Tensor | None = None) -> None:
        """Add a batch. ``tokens: [batch, pos]``, ``acts``/``pre``: ``[batch, pos, n_neurons]``,
        ``keep: [batch, pos] bool`` (positions counted; the previous token of a kept position is
        used whether or not it is kept itself)."""
        if tokens.ndim != 2 or acts.shape[:2] != tokens.shape or acts.shape[2] != self.n_neurons:
            raise ValueError(f"expected tokens [batch, pos] and acts [batch, pos, {self.n_neurons}], "
                             f"got {tuple(tokens.shape)} and {tuple(acts.shape)}")
        batch, n_pos = tokens.shape
        if n_pos > self.n_ctx:
            raise ValueError(f"batch has {n_pos} positions, accumulator was made for n_ctx={self.n_ctx}")
        tokens = tokens.to(self.device)
        prev = torch.full_like(tokens, self.d_vocab)
        prev[:, 1:] = tokens[:, :-1]
        position = torch.arange(n_pos, device=self.device).expand(batch, n_pos)
        if keep is None:
            keep = torch.ones_like(tokens, dtype=torch.bool)
        keep = keep.to(self.device)
        tok, prv, pos = tokens[keep], prev[keep], position[keep]
        if tok.numel() == 0:
            return
        a = acts.to(self.device)[keep].to(self.dtype)  # [n_kept, N]
        m = a if pre is None else pre.to(self.device)[keep].to(self.dtype)
        if self.shift is None:
            self.shift = a.mean(0)
            self.moment_shift = m.mean(0)
        d = a - self.shift
        self.n += int(tok.numel())
        self.total += d.sum(0)
        self.total_sq += (d * d).sum(0)
        dm = m - self.moment_shift
        p = dm.clone()
        for k in range(4):
            self.moments[k] += p.sum(0)
            if k < 3:
                p *= dm
        ones = torch.ones(tok.shape[0], dtype=self.dtype, device=self.device)
        self.token_count.index_add_(0, tok, ones)
        self.token_sum.index_add_(0, tok, d)
        self.prev_count.index_add_(0, prv, ones)
        self.prev_sum.index_add_(0, prv, d)
        self.pos_count.index_add_(0, pos, ones)
        self.pos_sum.index_add_(0, pos, d)
        self.pos_fire.index_add_(0, pos, (a > 0).to(self.dtype))
        self.act_max = torch.maximum(self.act_max, a.max(0).values)
        self.act_min = torch.minimum(self.act_min, a.min(0).values)

    # -- checkpointing
    def state_dict(self) -> dict:
        state = {k: getattr(self, k).cpu() for k in self._STATE}
        state.update(n=self.n, shift=None if self.shift is None else self.shift.cpu(),
                     moment_shift=None if self.moment_shift is None else self.moment_shift.cpu(),
                     shape=(self.n_neurons, self.d_vocab, self.n_ctx))
        return state

    @classmethod
    def from_state_dict(cls, state: dict, *, device: str | torch.device = "cpu") -> FeatureAccumulator:
        n_neurons, d_vocab, n_ctx = state["shape"]
        acc = cls(n_neurons, d_vocab, n_ctx, device=device, dtype=state["total"].dtype)
        for k in cls._STATE:
            setattr(acc, k, state[k].to(acc.device))
        acc.n = int(state["n"])
        acc.shift = None if state["shift"] is None else state["shift"].to(acc.device)
        acc.moment_shift = None if state["moment_shift"] is None else state["moment_shift"].to(acc.device)
        return acc

    # -- derived statistics
    def variance(self) -> torch.Tensor:
        """Population variance of the activations: ``[N]`` (NaN before any data)."""
        if self.n == 0:
            return torch.full((self.n_neurons,), math.nan, dtype=self.dtype, device=self.device)
        mean_d = self.total / self.n
        return (self.total_sq / self.n - mean_d * mean_d).clamp_min(0)

    def mean(self) -> torch.Tensor:
        """Mean activation ``[N]``."""
        return self.total / max(self.n, 1) + (0 if self.shift is None else self.shift)

    def dead(self) -> torch.Tensor:
        """``[N] bool``: zero variance (up to rounding) — VR and friends are undefined."""
        var = self.variance()
        mean = self.mean()
        return ~(var > 1e-12 * (1.0 + mean * mean))

    def kurtosis(self) -> torch.Tensor:
        """Non-excess kurtosis (Gaussian = 3) of the moment source: ``[N]``, NaN if constant."""
        n = max(self.n, 1)
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

    def position_mutual_information(self, n_buckets: int = 32) -> torch.Tensor:
        """Mutual information (nats) between firing (``acts > 0``) and the position bucket:
        ``[N]``; at most H(firing) ≤ ln 2. NaN for a neuron that always or never fires."""
        edges = bucket_edges(self.n_ctx, n_buckets)
        counts = torch.stack([self.pos_count[lo:hi].sum() for lo, hi in zip(edges[:-1], edges[1:])])
        fires = torch.stack([self.pos_fire[lo:hi].sum(0) for lo, hi in zip(edges[:-1], edges[1:])])
        n = counts.sum()
        f = fires.sum(0) / n  # overall firing rate [N]
        r = fires / counts.clamp_min(1)[:, None]  # per-bucket firing rate [B, N]
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


# ---------------------------------------------------------------- variance reduction

def grouped_variance_reduction(counts: torch.Tensor, sums: torch.Tensor, n: int, total: torch.Tensor,
                               total_sq: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """VR of binary features of a grouping variable from per-group sums.

    ``counts: [R]``, ``sums: [R, N]`` (Σ of shifted activations per group), ``total``/``total_sq``:
    ``[N]`` over all n tokens (same shift), ``features: [R, K] bool``. Returns ``[K, N]`` float64:
    0 where a feature splits nothing off (n1 = 0 or n0 = 0), NaN for a zero-variance neuron."""
    dtype = torch.float64
    device = sums.device
    K = features.shape[1]
    if K == 0:
        return torch.zeros(0, sums.shape[1], dtype=dtype, device=device)
    counts, sums = counts.to(dtype), sums.to(dtype)
    total, total_sq = total.to(dtype), total_sq.to(dtype)
    F = features.to(device)
    idx = F.T.nonzero(as_tuple=False).T  # [2, nnz]: (feature, row)
    Ft = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], dtype=dtype, device=device),
                                 size=(K, F.shape[0]), device=device, check_invariants=False).coalesce()
    n1 = torch.sparse.mm(Ft, counts[:, None]).squeeze(1)  # [K]
    s1 = torch.sparse.mm(Ft, sums)  # [K, N]
    n0 = n - n1
    s0 = total[None, :] - s1
    valid = (n1 > 0) & (n0 > 0)
    m1 = s1 / n1.clamp_min(1)[:, None]
    m0 = s0 / n0.clamp_min(1)[:, None]
    between = (n1 * n0 / n).clamp_min(0)[:, None] * (m1 - m0) ** 2
    sst = total_sq - total * total / n  # [N]
    mean = total / n
    dead = ~(sst / n > 1e-12 * (1.0 + mean * mean))
    vr = torch.where(valid[:, None], between / torch.where(dead, torch.ones_like(sst), sst)[None, :],
                     torch.zeros_like(between))
    vr = vr.clamp(0, 1)
    vr[:, dead] = math.nan
    return vr


@dataclass
class FeatureScores:
    """VR of every feature (rows) for every neuron (columns) of one layer.

    ``vr: [n_features, N]`` float64; ``names``/``kinds``/``on_previous`` describe the rows
    (current-token features, then previous-token features, then position features)."""

    names: list[str]
    kinds: list[str]
    on_previous: list[bool]
    vr: torch.Tensor

    def top(self, k: int = 5) -> pl.DataFrame:
        """The ``k`` best features per neuron with VR > 0: columns ``neuron`` (index within the
        layer), ``rank`` (1 = best), ``feature``, ``feature_kind``, ``on_previous``,
        ``variance_reduction``. Dead neurons have no rows."""
        vr = torch.nan_to_num(self.vr, nan=-1.0).cpu()
        k = min(k, vr.shape[0])
        if k == 0:
            return _empty_top()
        # stable: among equal VRs the earlier (more specific: unigram first) feature wins
        values, rows = torch.sort(vr, dim=0, descending=True, stable=True)
        values, rows = values[:k], rows[:k]  # [k, N]
        values, rows = values.T.numpy(), rows.T.numpy()  # [N, k]
        neuron = np.repeat(np.arange(values.shape[0]), k)
        rank = np.tile(np.arange(1, k + 1), values.shape[0])
        flat_rows, flat_vals = rows.ravel(), values.ravel()
        keep = flat_vals > 0
        names, kinds, prev = np.array(self.names, dtype=object), np.array(self.kinds, dtype=object), np.array(self.on_previous)
        return pl.DataFrame({
            "neuron": neuron[keep].astype(np.int64),
            "rank": rank[keep].astype(np.int16),
            "feature": names[flat_rows[keep]].tolist(),
            "feature_kind": kinds[flat_rows[keep]].tolist(),
            "on_previous": prev[flat_rows[keep]].astype(bool),
            "variance_reduction": flat_vals[keep].astype(np.float64),
        }, schema=_TOP_SCHEMA)

    def summary(self) -> pl.DataFrame:
        """Per neuron the best features the labelling rules read (null where undefined):
        ``best_*`` over everything, ``cur_*`` over current-token features, ``unigram_*`` over
        current-token unigram features, ``prev_*`` over previous-token features, ``pos_*`` over
        position features."""
        N = self.vr.shape[1]
        kinds = np.array(self.kinds, dtype=object)
        prev = np.array(self.on_previous, dtype=bool)
        groups = {
            "best": np.ones(len(kinds), dtype=bool),
            "cur": (~prev) & (kinds != "position"),
            "unigram": (~prev) & (kinds == "unigram"),
            "prev": prev,
            "pos": kinds == "position",
        }
        vr = self.vr.cpu()
        cols: dict[str, list] = {"neuron": list(range(N))}
        names = np.array(self.names, dtype=object)
        for g, mask in groups.items():
            feat, kind, onp, val = [None] * N, [None] * N, [None] * N, [None] * N
            if mask.any():
                sub = torch.nan_to_num(vr[torch.from_numpy(mask)], nan=-1.0)
                order_vals, order_rows = torch.sort(sub, dim=0, descending=True, stable=True)
                best_val, best_row = order_vals[0], order_rows[0]
                rows = np.flatnonzero(mask)[best_row.numpy()]
                for i in range(N):
                    v = float(best_val[i])
                    if v > 0:
                        feat[i], kind[i], onp[i], val[i] = names[rows[i]], kinds[rows[i]], bool(prev[rows[i]]), v
            cols[f"{g}_feature"], cols[f"{g}_kind"], cols[f"{g}_on_previous"], cols[f"{g}_vr"] = feat, kind, onp, val
        schema = {"neuron": pl.Int64}
        for g in groups:
            schema.update({f"{g}_feature": pl.Utf8, f"{g}_kind": pl.Utf8, f"{g}_on_previous": pl.Boolean,
                           f"{g}_vr": pl.Float64})
        return pl.DataFrame(cols, schema=schema)


_TOP_SCHEMA = {"neuron": pl.Int64, "rank": pl.Int16, "feature": pl.Utf8, "feature_kind": pl.Utf8,
               "on_previous": pl.Boolean, "variance_reduction": pl.Float64}


def _empty_top() -> pl.DataFrame:
    return pl.DataFrame(schema=_TOP_SCHEMA)


def score_features(acc: FeatureAccumulator, tokens: FeatureSet, positions: FeatureSet | None = None) -> FeatureScores:
    """VR of ``tokens`` features on the current and on the previous token, and of ``positions``
    features, for every neuron of ``acc``."""
    if tokens.matrix.shape[0] != acc.d_vocab:
        raise ValueError(f"token features cover {tokens.matrix.shape[0]} ids, the accumulator {acc.d_vocab}")
    F = torch.cat([tokens.matrix, torch.zeros(1, tokens.n_features, dtype=torch.bool)], 0)  # + "no previous"
    args = dict(n=acc.n, total=acc.total, total_sq=acc.total_sq)
    blocks = [
        grouped_variance_reduction(acc.token_count, acc.token_sum, features=F, **args),
        grouped_variance_reduction(acc.prev_count, acc.prev_sum, features=F, **args),
    ]
    names = list(tokens.names) * 2
    kinds = list(tokens.kinds) * 2
    on_prev = [False] * tokens.n_features + [True] * tokens.n_features
    if positions is not None:
        if positions.matrix.shape[0] != acc.n_ctx:
            raise ValueError(f"position features cover {positions.matrix.shape[0]} positions, the accumulator {acc.n_ctx}")
        blocks.append(grouped_variance_reduction(acc.pos_count, acc.pos_sum, features=positions.matrix, **args))
        names += positions.names
        kinds += positions.kinds
        on_prev += [False] * positions.n_features
    return FeatureScores(names=names, kinds=kinds, on_previous=on_prev, vr=torch.cat(blocks, 0))


def top_tokens(acc: FeatureAccumulator, vocab: Sequence[str], *, k: int = 20, min_count: int = 5,
               rel: float = 0.5) -> list[list[str]]:
    """Per neuron its top tokens by mean activation: at most ``k`` tokens seen ``min_count``
    times whose mean is at least ``rel`` × the best token's mean (when that is positive)."""
    means = acc.token_means(min_count).cpu()
    filled = torch.nan_to_num(means, nan=-math.inf)
    kk = min(k, filled.shape[0])
    vals, ids = torch.topk(filled, kk, dim=0)  # [k, N]
    out: list[list[str]] = []
    for j in range(filled.shape[1]):
        best = float(vals[0, j])
        if not math.isfinite(best) or best <= 0:
            out.append([])
            continue
        out.append([vocab[int(ids[r, j])] for r in range(kk) if float(vals[r, j]) >= rel * best])
    return out


def neuron_table(layer: int, acc: FeatureAccumulator, scores: FeatureScores, vocab: Sequence[str], *,
                 mi_buckets: int = 32, top_k: int = 20, min_count: int = 5,
                 kurtosis: torch.Tensor | None = None) -> pl.DataFrame:
    """One row per neuron of ``layer`` with what the labelling rules read from the data:
    the :meth:`FeatureScores.summary` columns, ``kurtosis`` (given, e.g. of ``hook_pre`` from a
    statistics run, else the accumulator's), ``position_mi`` (nats), ``position_mi_norm``
    (share of the firing entropy), ``firing_rate``, ``act_max`` and ``top_tokens``."""
    summary = scores.summary()
    mi = acc.position_mutual_information(mi_buckets).cpu()
    rate = (acc.pos_fire.sum(0) / max(acc.n, 1)).cpu()
    h = firing_entropy(rate)
    kurt = (acc.kurtosis() if kurtosis is None else kurtosis).detach().cpu().double()

    def floats(t: torch.Tensor) -> list[float | None]:
        return [None if not math.isfinite(x) else x for x in t.double().tolist()]

    extra = pl.DataFrame({
        "kurtosis": floats(kurt), "position_mi": floats(mi),
        "position_mi_norm": floats(torch.where(h > 0, mi / h.clamp_min(1e-300), torch.full_like(mi, math.nan))),
        "firing_rate": floats(rate), "act_max": floats(acc.act_max.cpu()),
        "top_tokens": top_tokens(acc, vocab, k=top_k, min_count=min_count),
    }, schema={"kurtosis": pl.Float64, "position_mi": pl.Float64, "position_mi_norm": pl.Float64,
               "firing_rate": pl.Float64, "act_max": pl.Float64, "top_tokens": pl.List(pl.Utf8)})
    return pl.concat([summary, extra], how="horizontal").with_columns(
        pl.lit(layer, dtype=pl.Int64).alias("layer")).rename({"neuron": "idx"})
