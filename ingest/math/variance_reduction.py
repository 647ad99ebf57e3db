"""Variance reduction of binary features (pure math: no DB, no files).

A neuron is explained by a binary feature f of the current token, the previous token or the
absolute position through the variance reduction

    VR(f) = [Var(a) − (p0·Var(a | f=0) + p1·Var(a | f=1))] / Var(a)

computed from the per-group sums of :class:`~atlas.ingest.math.activation_sums.FeatureAccumulator`:
for a feature with indicator F[v], n1 = Fᵀ count and S1 = Fᵀ S (a sparse matmul), n0 = n − n1,
S0 = S_total − S1, and the within-group sum of squares cancels so that

    VR = n1·n0/n · (S1/n1 − S0/n0)² / (Σ a² − (Σ a)²/n)

VR is invariant to the accumulator's shift. A feature absent (or always present) in the data has
VR 0; a dead neuron (zero variance) has VR NaN, never a fake number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from atlas.ingest.math.activation_sums import FeatureAccumulator, firing_entropy
from atlas.ingest.math.features import FeatureSet


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
        ``best_*`` over everything, ``cur_*`` over current-token features of the token's text
        (single tokens, words, classes, letters, topics: the paper's unigram candidates),
        ``prev_*`` over previous-token features (syntax tags included), ``pos_*`` over position
        features, ``syntax_*`` over current-token syntax tags; each group has ``_feature``,
        ``_kind``, ``_on_previous`` and ``_vr``. And per neuron its best LETTER: ``alphabet_letter``,
        ``alphabet_vr`` = the larger VR of the letter's two features ``starts_with=x`` (is x or starts
        with x, any case and space) and ``letter=x`` (is the letter x alone), ``alphabet_feature``
        (which one), ``alphabet_starts_vr`` and ``alphabet_letter_vr``."""
        N = self.vr.shape[1]
        kinds = np.array(self.kinds, dtype=object)
        prev = np.array(self.on_previous, dtype=bool)
        token_kind = np.isin(kinds, ["unigram", "class", "alphabet", "topic"])
        groups = {
            "best": np.ones(len(kinds), dtype=bool),
            "cur": (~prev) & token_kind,
            "prev": prev,
            "pos": kinds == "position",
            "syntax": (~prev) & (kinds == "syntax"),
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
        cols.update(self._best_letter(vr))
        schema.update({"alphabet_letter": pl.Utf8, "alphabet_feature": pl.Utf8, "alphabet_vr": pl.Float64,
                       "alphabet_starts_vr": pl.Float64, "alphabet_letter_vr": pl.Float64})
        return pl.DataFrame(cols, schema=schema)

    def _best_letter(self, vr: torch.Tensor) -> dict[str, list]:
        """Per neuron the letter whose features explain it best (see :meth:`summary`)."""
        N = vr.shape[1]
        row_of = {(name, prev): i for i, (name, prev) in enumerate(zip(self.names, self.on_previous))}
        out: dict[str, list] = {k: [None] * N for k in ("alphabet_letter", "alphabet_feature", "alphabet_vr",
                                                         "alphabet_starts_vr", "alphabet_letter_vr")}
        best = np.full(N, -1.0)
        for letter in "abcdefghijklmnopqrstuvwxyz":
            starts, alone = row_of.get((f"starts_with={letter}", False)), row_of.get((f"letter={letter}", False))
            if starts is None and alone is None:
                continue
            sv = torch.nan_to_num(vr[starts], nan=-1.0).numpy() if starts is not None else np.full(N, -1.0)
            lv = torch.nan_to_num(vr[alone], nan=-1.0).numpy() if alone is not None else np.full(N, -1.0)
            top = np.maximum(sv, lv)
            for i in np.flatnonzero((top > best) & (top > 0)):
                best[i] = top[i]
                out["alphabet_letter"][i] = letter
                out["alphabet_feature"][i] = f"starts_with={letter}" if sv[i] >= lv[i] else f"letter={letter}"
                out["alphabet_vr"][i] = float(top[i])
                out["alphabet_starts_vr"][i] = float(sv[i]) if sv[i] >= 0 else None
                out["alphabet_letter_vr"][i] = float(lv[i]) if lv[i] >= 0 else None
        return out


_TOP_SCHEMA = {"neuron": pl.Int64, "rank": pl.Int16, "feature": pl.Utf8, "feature_kind": pl.Utf8,
               "on_previous": pl.Boolean, "variance_reduction": pl.Float64}


def _empty_top() -> pl.DataFrame:
    return pl.DataFrame(schema=_TOP_SCHEMA)


def score_features(acc: FeatureAccumulator, tokens: FeatureSet, positions: FeatureSet | None = None,
                   tag_names: Mapping[str, Sequence[str]] | None = None) -> FeatureScores:
    """VR of ``tokens`` features on the current and on the previous token, of ``positions``
    features, and of every value of the accumulator's tags (``tag_names[name][id]``, e.g.
    ``pos=NOUN``; kind ``syntax``) on the current and on the previous token, for every neuron of ``acc``."""
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
    for name, size in acc.tag_sizes.items():
        values = list((tag_names or {}).get(name, [str(i) for i in range(size)]))
        if len(values) != size:
            raise ValueError(f"{len(values)} names for the {size} values of tag {name}")
        one_hot = torch.cat([torch.eye(size, dtype=torch.bool), torch.zeros(1, size, dtype=torch.bool)], 0)
        for counts, sums, previous in ((acc.tag_count[name], acc.tag_sum[name], False),
                                       (acc.prev_tag_count[name], acc.prev_tag_sum[name], True)):
            blocks.append(grouped_variance_reduction(counts, sums, features=one_hot, **args))
            names += [f"{name}={v}" for v in values]
            kinds += ["syntax"] * size
            on_prev += [previous] * size
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
                 top_k: int = 20, min_count: int = 5) -> pl.DataFrame:
    """One row per neuron of ``layer`` with what the labelling rules read from the data:
    the :meth:`FeatureScores.summary` columns, ``kurtosis`` (of the accumulator's moment source,
    ``hook_pre``, over every position: the paper's token set), ``position_mi`` (nats, per
    position), ``position_mi_norm`` (share of the firing entropy), ``firing_rate`` (every
    position), ``act_max`` (kept tokens) and ``top_tokens``."""
    summary = scores.summary()
    mi = acc.position_mutual_information().cpu()
    rate = acc.firing_rate().cpu()
    h = firing_entropy(rate)
    kurt = acc.kurtosis().detach().cpu().double()

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
