"""Weight statistics against direct float64 numpy/scipy computation."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from atlas.ingest.math.weights import model_weight_stats, weight_stats


def _reference(w_in, b, w_out, W_U, k):
    """Per-neuron dicts computed the obvious way, one neuron at a time."""
    n_layers, d_model, d_mlp = w_in.shape
    rows = []
    for layer in range(n_layers):
        for i in range(d_mlp):
            a, o = w_in[layer, :, i], w_out[layer, i, :]
            logits = o @ W_U
            z = logits / (np.linalg.norm(o) * np.linalg.norm(W_U, axis=0))
            rows.append({
                "w_in_norm": np.linalg.norm(a), "w_out_norm": np.linalg.norm(o), "input_bias": b[layer, i],
                "in_out_sim": a @ o / (np.linalg.norm(a) * np.linalg.norm(o)),
                "l2_penalty": a @ a + o @ o, "vocab_mean": z.mean(), "vocab_var": z.var(),
                "vocab_skew": stats.skew(z), "vocab_kurtosis": stats.kurtosis(z, fisher=False),
                "top": np.argsort(-logits, kind="stable")[:k], "bottom": np.argsort(logits, kind="stable")[:k],
                "logits": logits,
            })
    return rows


@np.errstate(invalid="ignore")
def test_weight_stats_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    n_layers, d_model, d_mlp, d_vocab = 2, 16, 12, 90
    W_in = torch.randn(n_layers, d_model, d_mlp, generator=g)
    b_in = torch.randn(n_layers, d_mlp, generator=g)
    W_out = torch.randn(n_layers, d_mlp, d_model, generator=g)
    W_U = torch.randn(d_model, d_vocab, generator=g)
    W_U -= W_U.mean(dim=1, keepdim=True)
    W_out[1, 3] = 4 * W_U[:, 17]  # a planted prediction neuron: boosts token 17 most
    W_out[0, 5] = 0  # no output: vocabulary statistics undefined
    got = weight_stats(W_in, b_in, W_out, W_U, k=5, chunk=7)  # chunk boundary inside a layer
    ref = _reference(W_in.double().numpy(), b_in.double().numpy(), W_out.double().numpy(), W_U.double().numpy(), 5)
    for j, r in enumerate(ref):
        for name in ("w_in_norm", "w_out_norm", "input_bias", "l2_penalty"):
            np.testing.assert_allclose(getattr(got, name)[j].item(), r[name], rtol=1e-12)
        if j == 5:
            assert np.isnan(got.in_out_sim[j]) and np.isnan(got.vocab_var[j]) and np.isnan(got.vocab_kurtosis[j])
            continue
        for name in ("in_out_sim", "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurtosis"):
            np.testing.assert_allclose(getattr(got, name)[j].item(), r[name], rtol=1e-9, atol=1e-12)
        assert got.top_token_ids[j].tolist() == r["top"].tolist()
        assert got.bottom_token_ids[j].tolist() == r["bottom"].tolist()
        np.testing.assert_allclose(got.top_token_values[j].numpy(), r["logits"][r["top"]], rtol=1e-12)
    assert got.top_token_ids[d_mlp + 3, 0] == 17
    frame = got.frame(model_id=7, d_mlp=d_mlp)
    assert frame.height == n_layers * d_mlp and frame["layer"].to_list()[d_mlp] == 1
    assert frame["top_token_ids"].to_list()[d_mlp + 3][0] == 17


def test_random_directions_have_gaussian_vocab_kurtosis():
    g = torch.Generator().manual_seed(1)
    d_model, d_vocab = 64, 4000
    got = weight_stats(torch.randn(1, d_model, 50, generator=g), torch.zeros(1, 50),
                       torch.randn(1, 50, d_model, generator=g), torch.randn(d_model, d_vocab, generator=g))
    assert abs(got.vocab_kurtosis.median().item() - 3) < 0.3
    assert got.vocab_mean.abs().max() < 0.1


def test_model_weight_stats_use_processed_weights(tiny_cohort):
    from atlas.ingest.models import load_model

    m = load_model(str(tiny_cohort.paths[0]))
    got = model_weight_stats(m)
    b = m.bridge
    layer, i = 1, 9
    w_in = b.W_in[layer, :, i].double()
    w_out = b.W_out[layer, i, :].double()
    j = layer * m.d_mlp + i
    assert abs(got.w_in_norm[j] - w_in.norm()) < 1e-9 and abs(got.input_bias[j] - b.b_in[layer, i].double()) < 1e-9
    logits = w_out @ b.W_U.double()
    assert got.top_token_ids[j].tolist() == torch.topk(logits, 20).indices.tolist()
    assert got.w_in_norm.numel() == m.n_neurons and torch.isfinite(got.vocab_kurtosis).all()
