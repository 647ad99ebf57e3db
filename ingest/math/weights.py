"""Per-neuron statistics of processed weights (pure: tensors in, tensors/frames out).

Inputs are TransformerLens-processed weights (LayerNorm folded, writing weights and the
unembedding centred; see ``atlas.ingest.models``):

- ``W_in: [n_layers, d_model, d_mlp]``, ``b_in: [n_layers, d_mlp]``, ``W_out: [n_layers, d_mlp, d_model]``,
  ``W_U: [d_model, d_vocab]``.

Per neuron (method.md §3): ``w_in_norm = ‖W_in[l,:,i]‖``, ``w_out_norm = ‖W_out[l,i,:]‖``,
``input_bias = b_in[l,i]``, ``in_out_sim = cos(w_in, w_out)``, ``l2_penalty = ‖w_in‖² + ‖w_out‖²``;
and the vocabulary composition ``z_v = cos(w_out, W_U[:, v])`` over all tokens v: its mean,
population variance, skew and non-excess kurtosis (a random direction gives ≈ 3), plus the top and
bottom 20 tokens by the logit effect ``W_U[:, v] · w_out``. A zero ``w_out`` has undefined cosines (NaN).
Computed in float64, in chunks of neurons so the ``[chunk, d_vocab]`` block stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

F64 = torch.float64


@dataclass
class WeightStats:
    """Per-neuron weight statistics, flat neuron index = layer * d_mlp + idx; tensors on the CPU."""

    w_in_norm: torch.Tensor  # [n] float64
    w_out_norm: torch.Tensor
    input_bias: torch.Tensor
    in_out_sim: torch.Tensor
    l2_penalty: torch.Tensor
    vocab_mean: torch.Tensor
    vocab_var: torch.Tensor
    vocab_skew: torch.Tensor
    vocab_kurtosis: torch.Tensor
    top_token_ids: torch.Tensor  # [n, k] int64, by W_U·w_out descending
    top_token_values: torch.Tensor  # [n, k]
    bottom_token_ids: torch.Tensor  # [n, k], ascending
    bottom_token_values: torch.Tensor

    def frame(self, model_id: int, d_mlp: int) -> pl.DataFrame:
        """The ``weight_stats`` frame (no run_id)."""
        n = self.w_in_norm.numel()
        flat = np.arange(n)
        lists = lambda t, dt: pl.Series(t.numpy().tolist(), dtype=pl.List(dt))  # noqa: E731
        return pl.DataFrame({
            "model_id": np.full(n, model_id, dtype=np.int64),
            "layer": (flat // d_mlp).astype(np.int16), "idx": (flat % d_mlp).astype(np.int32),
            "w_in_norm": self.w_in_norm.numpy(), "w_out_norm": self.w_out_norm.numpy(),
            "input_bias": self.input_bias.numpy(), "in_out_sim": self.in_out_sim.numpy(),
            "l2_penalty": self.l2_penalty.numpy(), "vocab_mean": self.vocab_mean.numpy(),
            "vocab_var": self.vocab_var.numpy(), "vocab_skew": self.vocab_skew.numpy(),
            "vocab_kurtosis": self.vocab_kurtosis.numpy(),
            "top_token_ids": lists(self.top_token_ids, pl.Int64),
            "top_token_values": lists(self.top_token_values.float(), pl.Float32),
            "bottom_token_ids": lists(self.bottom_token_ids, pl.Int64),
            "bottom_token_values": lists(self.bottom_token_values.float(), pl.Float32),
        })


@torch.no_grad()
def weight_stats(W_in: torch.Tensor, b_in: torch.Tensor, W_out: torch.Tensor, W_U: torch.Tensor, *,
                 k: int = 20, chunk: int = 4096) -> WeightStats:
    """Weight statistics of every neuron (shapes in the module docstring)."""
    n_layers, d_model, d_mlp = W_in.shape
    device = W_U.device
    w_in = W_in.detach().to(F64).permute(0, 2, 1).reshape(n_layers * d_mlp, d_model)  # [n, d_model]
    w_out = W_out.detach().to(F64).reshape(n_layers * d_mlp, d_model)  # [n, d_model]
    bias = b_in.detach().to(F64).reshape(-1)
    in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)
    in_out = (w_in * w_out).sum(dim=1) / (in_norm * out_norm)
    in_out = torch.where((in_norm > 0) & (out_norm > 0), in_out, torch.nan)

    W_U = W_U.detach().to(F64)
    u_norm = W_U.norm(dim=0)  # [d_vocab]
    k = min(k, W_U.shape[1])
    n = w_out.shape[0]
    out = {name: torch.empty(n, dtype=F64) for name in ("mean", "var", "skew", "kurt")}
    top_i, top_v = torch.empty(n, k, dtype=torch.int64), torch.empty(n, k, dtype=F64)
    bot_i, bot_v = torch.empty(n, k, dtype=torch.int64), torch.empty(n, k, dtype=F64)
    for start in range(0, n, chunk):
        w = w_out[start:start + chunk].to(device)
        logits = w @ W_U  # [c, d_vocab]: the direct logit effect of the neuron's output direction
        z = logits / (w.norm(dim=1, keepdim=True) * u_norm.clamp_min(1e-30))
        mean = z.mean(dim=1, keepdim=True)
        d = z - mean
        var = (d * d).mean(dim=1)
        skew = (d ** 3).mean(dim=1) / var ** 1.5
        kurt = (d ** 4).mean(dim=1) / var ** 2
        dead = w.norm(dim=1) == 0
        for name, value in (("mean", mean[:, 0]), ("var", var), ("skew", skew), ("kurt", kurt)):
            out[name][start:start + chunk] = torch.where(dead, torch.nan, value).cpu()
        tv, ti = torch.topk(logits, k, dim=1)
        bv, bi = torch.topk(logits, k, dim=1, largest=False)
        top_i[start:start + chunk], top_v[start:start + chunk] = ti.cpu(), tv.cpu()
        bot_i[start:start + chunk], bot_v[start:start + chunk] = bi.cpu(), bv.cpu()
    return WeightStats(
        w_in_norm=in_norm.cpu(), w_out_norm=out_norm.cpu(), input_bias=bias.cpu(), in_out_sim=in_out.cpu(),
        l2_penalty=(in_norm ** 2 + out_norm ** 2).cpu(), vocab_mean=out["mean"], vocab_var=out["var"],
        vocab_skew=out["skew"], vocab_kurtosis=out["kurt"], top_token_ids=top_i, top_token_values=top_v,
        bottom_token_ids=bot_i, bottom_token_values=bot_v,
    )


def model_weight_stats(loaded, k: int = 20) -> WeightStats:
    """``weight_stats`` of an ``atlas.ingest.models.LoadedModel`` (its bridge's processed weights)."""
    b = loaded.bridge
    return weight_stats(b.W_in, b.b_in, b.W_out, b.W_U, k=k)
