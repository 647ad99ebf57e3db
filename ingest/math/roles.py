"""Functional roles from weights, and the entropy intervention (no DB, no files).

Weights are TransformerLens-processed (LayerNorm folded, writing weights and W_U centred), as
``TransformerBridge.enable_compatibility_mode()`` gives them:
``W_out: [n_layers, d_mlp, d_model]``, ``W_U: [d_model, d_vocab]``,
``W_Q: [n_layers, n_heads, d_model, d_head]``.

- vocabulary composition z_v = cos(w_out, W_U[:, v]): its moments give prediction (kurtosis high,
  skew > 0), suppression (kurtosis high, skew < 0) and partition (variance high) neurons;
- entropy candidates (:func:`mark_entropy_candidates`, the paper's filters): last-layer neurons
  with a large weight-decay penalty ‖w_in‖² + ‖w_out‖², tiny composition variance, vocab kurtosis
  and activation kurtosis ≤ 10; confirmed by :func:`entropy_intervention` (fix the activation,
  watch next-token entropy and the final LayerNorm scale);
- attention (de)activation: score = ŵ_outᵀ W_Q^{(l,h)} k_BOS^{(l,h)} / sqrt(d_head) for heads in
  later layers, the raw effect; per neuron the head of largest |score|, with its sign and a
  z-score against random unit vectors in place of ŵ_out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import polars as pl
import torch

from atlas.ingest.math.labels import LabelThresholds


@dataclass
class VocabComposition:
    """Moments over the vocabulary of z_v = cos(w_out, W_U[:, v]); every field ``[n]`` float64.

    ``var_ratio`` = var / the expected var for a uniformly random direction, (1 − ‖mean_v ŵ_v‖²)/d_model
    (so ≈ 1 for an unremarkable direction, whatever the geometry of W_U). ``top_token`` /
    ``bottom_token``: argmax / argmin of W_U·w_out."""

    mean: torch.Tensor
    var: torch.Tensor
    skew: torch.Tensor
    kurtosis: torch.Tensor
    var_ratio: torch.Tensor
    top_token: torch.Tensor
    bottom_token: torch.Tensor
    norm: torch.Tensor


@torch.no_grad()
def vocab_composition(W_out: torch.Tensor, W_U: torch.Tensor, *, chunk: int = 1024) -> VocabComposition:
    """``W_out: [n, d_model]`` (rows = neurons' output weights), ``W_U: [d_model, d_vocab]``."""
    W_out = W_out.detach().to(torch.float64)
    W_U = W_U.detach().to(W_out.device, torch.float64)
    col_norm = W_U.norm(dim=0).clamp_min(1e-300)
    U_hat = W_U / col_norm
    baseline = (1.0 - float(U_hat.mean(1).norm() ** 2)) / W_U.shape[0]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("mean", "var", "skew", "kurtosis", "top", "bottom", "norm")}
    for start in range(0, W_out.shape[0], chunk):
        w = W_out[start:start + chunk]
        norm = w.norm(dim=1)
        logits = w @ W_U  # [c, V]
        z = (w / norm.clamp_min(1e-300)[:, None]) @ U_hat
        mean = z.mean(1)
        d = z - mean[:, None]
        m2 = (d ** 2).mean(1)
        m3 = (d ** 3).mean(1)
        m4 = (d ** 4).mean(1)
        ok = (m2 > 1e-24) & (norm > 0)
        nan = torch.full_like(m2, math.nan)
        out["mean"].append(torch.where(norm > 0, mean, nan))
        out["var"].append(torch.where(norm > 0, m2, nan))
        out["skew"].append(torch.where(ok, m3 / m2.clamp_min(1e-300) ** 1.5, nan))
        out["kurtosis"].append(torch.where(ok, m4 / m2.clamp_min(1e-300) ** 2, nan))
        out["top"].append(logits.argmax(1))
        out["bottom"].append(logits.argmin(1))
        out["norm"].append(norm)
    cat = {k: torch.cat(v).cpu() for k, v in out.items()}  # results on the CPU, whatever device computed them
    return VocabComposition(mean=cat["mean"], var=cat["var"], skew=cat["skew"], kurtosis=cat["kurtosis"],
                            var_ratio=cat["var"] / baseline, top_token=cat["top"], bottom_token=cat["bottom"],
                            norm=cat["norm"])


# ---------------------------------------------------------------- attention deactivation

@torch.no_grad()
def bos_keys(model, bos_token_id: int) -> torch.Tensor:
    """The key of the BOS token at position 0 for every head: ``[n_layers, n_heads, d_head]``.
    ``model`` is a TransformerLens model/bridge (use the processed one, like the weights)."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_k" for l in range(n_layers)]
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(torch.tensor([[bos_token_id]], device=device), names_filter=names)
    return torch.stack([cache[n][0, 0] for n in names]).detach().to(torch.float64).cpu()


@dataclass
class AttentionScores:
    """``score``/``z``/``percentile``: ``[n_layers, d_mlp, n_layers, n_heads]`` (neuron layer,
    neuron, head layer, head); NaN for heads not after the neuron's layer. ``score`` is the raw
    effect (positive: pushes the head's query onto the BOS key, switching the head off), ``z`` =
    (score − mean of random) / std of random, ``percentile`` = share of random unit vectors scoring below."""

    score: torch.Tensor
    z: torch.Tensor
    percentile: torch.Tensor
    n_random: int
    seed: int

    def best(self) -> dict[str, torch.Tensor]:
        """Per neuron the head with the largest |score| (the paper's ranking; the sign is kept):
        ``score``, ``z``, ``percentile``, ``head_layer``, ``head`` each ``[n_layers, d_mlp]``
        (NaN when no later head)."""
        L, N, HL, H = self.score.shape
        flat = self.score.reshape(L, N, HL * H)
        filled = torch.nan_to_num(flat.abs(), nan=-math.inf)
        top, arg = filled.max(-1)
        none = ~torch.isfinite(top)
        gather = lambda t: t.reshape(L, N, HL * H).gather(-1, arg[..., None]).squeeze(-1)  # noqa: E731
        nan = torch.full_like(top, math.nan)
        return {"score": torch.where(none, nan, gather(self.score)), "z": torch.where(none, nan, gather(self.z)),
                "percentile": torch.where(none, nan, gather(self.percentile)), "head_layer": arg // H, "head": arg % H}


@torch.no_grad()
def attention_deactivation(W_out: torch.Tensor, W_Q: torch.Tensor, k_bos: torch.Tensor, *,
                           n_random: int = 2048, seed: int = 0) -> AttentionScores:
    """BOS-attention scores of every neuron for every head in a later layer.

    ``W_out: [n_layers, d_mlp, d_model]``, ``W_Q: [n_layers, n_heads, d_model, d_head]``,
    ``k_bos: [n_layers, n_heads, d_head]``. A large positive score: the neuron's output pushes the
    head's query towards the BOS key, i.e. switches the head off."""
    W_out = W_out.detach().to(torch.float64).cpu()
    W_Q = W_Q.detach().to(torch.float64).cpu()
    k_bos = k_bos.detach().to(torch.float64).cpu()
    L, N, d_model = W_out.shape
    HL, H, _, d_head = W_Q.shape
    qdir = torch.einsum("lhdk,lhk->lhd", W_Q, k_bos) / math.sqrt(d_head)  # [HL, H, d_model]
    w_hat = W_out / W_out.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    score = torch.einsum("lnd,khd->lnkh", w_hat, qdir)  # [L, N, HL, H]
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(n_random, d_model, generator=gen, dtype=torch.float64)
    R /= R.norm(dim=1, keepdim=True)
    rand = torch.einsum("rd,khd->rkh", R, qdir)  # [n_random, HL, H]
    mu, sd = rand.mean(0), rand.std(0).clamp_min(1e-300)
    z = (score - mu) / sd
    sorted_rand = rand.reshape(n_random, HL * H).T.contiguous().sort(dim=1).values  # [HL*H, n_random]
    flat = score.reshape(L * N, HL * H).T.contiguous()  # [HL*H, L*N]
    pct = torch.searchsorted(sorted_rand, flat).to(torch.float64) / n_random
    pct = pct.T.reshape(L, N, HL, H)
    later = torch.arange(HL)[None, :] > torch.arange(L)[:, None]  # [L, HL]
    mask = later[:, None, :, None].expand(L, N, HL, H)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return AttentionScores(score=torch.where(mask, score, nan), z=torch.where(mask, z, nan),
                           percentile=torch.where(mask, pct, nan), n_random=n_random, seed=seed)


# ---------------------------------------------------------------- entropy neurons

def mark_entropy_candidates(table: pl.DataFrame, thresholds: LabelThresholds, *, n_layers: int) -> pl.DataFrame:
    """Add ``entropy_candidate`` (bool) to a per-neuron table with ``layer``, ``l2_penalty``,
    ``l2_ratio`` (penalty / its layer's median), ``vocab_var_ratio``, ``vocab_kurtosis`` and
    ``kurtosis`` (activation): the paper's filters — last layers, large weight-decay penalty,
    tiny vocabulary variance, vocab kurtosis ≤ 10, activation kurtosis ≤ 10. A NaN vocab
    kurtosis (an output that no token reads: zero variance) passes; a missing column fails."""
    t = thresholds
    depth = pl.col("layer").cast(pl.Float64) / max(n_layers - 1, 1)

    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64).fill_nan(None) if name in table.columns else pl.lit(None, dtype=pl.Float64)

    cand = ((depth >= t.entropy_min_depth)
            & (col("l2_ratio") >= t.entropy_l2_ratio) & (col("l2_penalty") >= t.entropy_min_l2_penalty)
            & (col("vocab_var_ratio").fill_null(math.inf) <= t.entropy_var_ratio)
            & (col("vocab_kurtosis").fill_null(-math.inf) <= t.entropy_max_vocab_kurtosis)
            & (col("kurtosis") <= t.entropy_max_kurtosis))
    return table.with_columns(cand.fill_null(False).alias("entropy_candidate"))


@torch.no_grad()
def entropy_intervention(model, tokens: torch.Tensor, layer: int, idx: int, values: Sequence[float], *,
                         keep: torch.Tensor | None = None, batch_size: int = 16) -> pl.DataFrame:
    """Fix neuron ``(layer, idx)``'s ``hook_post`` at each of ``values`` on every position and
    measure the mean next-token entropy (nats) and the mean final LayerNorm scale over kept
    positions. ``tokens: [batch, pos]``, ``keep: [batch, pos] bool``. The first row (``value``
    null) is the unmodified model. Columns: value, mean_entropy, mean_ln_scale."""
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    keep = torch.ones_like(tokens, dtype=torch.bool) if keep is None else keep.to(device)
    rows: list[dict] = []
    for value in [None, *values]:
        ent_sum, scale_sum, n = 0.0, 0.0, 0
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start:start + batch_size]
            k = keep[start:start + batch_size]
            seen: dict[str, torch.Tensor] = {}

            def fix(act, hook, value=value):
                act[..., idx] = value
                return act

            def grab_scale(act, hook):
                seen["scale"] = act.detach()

            hooks = [("ln_final.hook_scale", grab_scale)]
            if value is not None:
                hooks.insert(0, (f"blocks.{layer}.mlp.hook_post", fix))
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            logp = torch.log_softmax(logits.double(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)  # [b, pos]
            scale = seen["scale"].double().reshape(entropy.shape)
            ent_sum += float(entropy[k].sum())
            scale_sum += float(scale[k].sum())
            n += int(k.sum())
        rows.append({"value": value, "mean_entropy": ent_sum / max(n, 1), "mean_ln_scale": scale_sum / max(n, 1)})
    return pl.DataFrame(rows, schema={"value": pl.Float64, "mean_entropy": pl.Float64, "mean_ln_scale": pl.Float64})


def entropy_effect(frame: pl.DataFrame, *, min_relative_change: float) -> dict:
    """Summarise :func:`entropy_intervention`: the entropy at the largest fixed value minus at the
    smallest (``entropy_change``, and relative to the unmodified model), the same for the LayerNorm
    scale, and whether the effect is confirmed: |relative entropy change| ≥ ``min_relative_change``,
    entropy monotone in the fixed value, and the LayerNorm scale moving in the same direction."""
    base = frame.filter(pl.col("value").is_null())
    fixed = frame.filter(pl.col("value").is_not_null()).sort("value")
    if fixed.height < 2 or base.height != 1:
        return {"confirmed": False, "reason": "need the unmodified model and at least two fixed values"}
    ent = fixed["mean_entropy"].to_list()
    scale = fixed["mean_ln_scale"].to_list()
    base_ent = float(base["mean_entropy"][0])
    d_ent = ent[-1] - ent[0]
    d_scale = scale[-1] - scale[0]
    rel = d_ent / base_ent if base_ent > 0 else math.nan
    steps = [b - a for a, b in zip(ent, ent[1:])]
    monotone = all(s >= -1e-9 for s in steps) or all(s <= 1e-9 for s in steps)
    confirmed = bool(math.isfinite(rel) and abs(rel) >= min_relative_change and monotone and d_ent * d_scale > 0)
    return {
        "confirmed": confirmed,
        "direction": "increases entropy" if d_ent > 0 else "decreases entropy",
        "entropy_change": d_ent,
        "relative_entropy_change": rel,
        "ln_scale_change": d_scale,
        "baseline_entropy": base_ent,
        "baseline_ln_scale": float(base["mean_ln_scale"][0]),
        "values": fixed["value"].to_list(),
        "entropy": ent,
        "ln_scale": scale,
        "monotone": monotone,
    }


def role_table(W_out: torch.Tensor, W_U: torch.Tensor, vocab: Sequence[str], *, W_in: torch.Tensor | None = None,
               attention: AttentionScores | None = None) -> pl.DataFrame:
    """One row per neuron (``layer``, ``idx``) with what the labelling rules read from weights:
    ``w_out_norm``, ``vocab_mean/var/skew/kurtosis``, ``vocab_var_ratio``, ``top_token_text``,
    ``bottom_token_text``; with ``W_in`` ``w_in_norm``, ``l2_penalty`` = ‖w_in‖² + ‖w_out‖² (the
    weight-decay penalty) and ``l2_ratio`` (to its layer's median); with ``attention``
    ``attn_score``, ``attn_z``, ``attn_percentile``, ``attn_head_layer``, ``attn_head`` (the head
    of largest |score|). ``W_out: [n_layers, d_mlp, d_model]``, ``W_in: [n_layers, d_model, d_mlp]``."""
    L, N, _ = W_out.shape
    comp = vocab_composition(W_out.reshape(L * N, -1), W_U)
    layer = torch.arange(L).repeat_interleave(N)

    def floats(t: torch.Tensor) -> list[float | None]:
        return [None if not math.isfinite(x) else x for x in t.double().tolist()]

    cols: dict[str, list] = {
        "layer": layer.tolist(), "idx": torch.arange(N).repeat(L).tolist(),
        "w_out_norm": floats(comp.norm), "vocab_mean": floats(comp.mean), "vocab_var": floats(comp.var),
        "vocab_skew": floats(comp.skew), "vocab_kurtosis": floats(comp.kurtosis),
        "vocab_var_ratio": floats(comp.var_ratio),
        "top_token_text": [vocab[i] if i < len(vocab) else str(i) for i in comp.top_token.tolist()],
        "bottom_token_text": [vocab[i] if i < len(vocab) else str(i) for i in comp.bottom_token.tolist()],
    }
    schema = {"layer": pl.Int64, "idx": pl.Int64, "w_out_norm": pl.Float64, "vocab_mean": pl.Float64,
              "vocab_var": pl.Float64, "vocab_skew": pl.Float64, "vocab_kurtosis": pl.Float64,
              "vocab_var_ratio": pl.Float64, "top_token_text": pl.Utf8, "bottom_token_text": pl.Utf8}
    if W_in is not None:
        w_in_norm = W_in.detach().to(torch.float64).cpu().norm(dim=1).reshape(-1)  # [L * N]
        l2 = w_in_norm.square() + comp.norm.square()
        median = l2.view(L, N).quantile(0.5, dim=1).clamp_min(1e-300).repeat_interleave(N)
        cols.update({"w_in_norm": floats(w_in_norm), "l2_penalty": floats(l2), "l2_ratio": floats(l2 / median)})
        schema.update({"w_in_norm": pl.Float64, "l2_penalty": pl.Float64, "l2_ratio": pl.Float64})
    if attention is not None:
        best = attention.best()
        cols.update({"attn_z": floats(best["z"].reshape(-1)), "attn_score": floats(best["score"].reshape(-1)),
                     "attn_percentile": floats(best["percentile"].reshape(-1)),
                     "attn_head_layer": best["head_layer"].reshape(-1).tolist(), "attn_head": best["head"].reshape(-1).tolist()})
        schema.update({"attn_z": pl.Float64, "attn_score": pl.Float64, "attn_percentile": pl.Float64,
                       "attn_head_layer": pl.Int64, "attn_head": pl.Int64})
    return pl.DataFrame(cols, schema=schema)
