"""Streaming statistics against float64 numpy/scipy on the full matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from atlas.ingest.math.moments import Histogram, Moments, NeuronStatsAccumulator, TokenTable, TopK, histogram_edges


def _batches(x: torch.Tensor, sizes):
    start = 0
    for s in sizes:
        yield x[start:start + s]
        start += s
    assert start == x.shape[0]


def _planted(n_tokens=3000, seed=0) -> torch.Tensor:
    """Columns with known shapes: Gaussian, skewed, heavy-tailed, huge offset, tiny spread, sparse."""
    g = torch.Generator().manual_seed(seed)
    cols = [
        torch.randn(n_tokens, generator=g),
        torch.distributions.Exponential(1.0).sample((n_tokens,)) * 2 - 1,
        torch.randn(n_tokens, generator=g) ** 3,
        1e4 + 0.01 * torch.randn(n_tokens, generator=g),  # |mean| >> std: the one-pass formula would cancel
        -3 + 1e-3 * torch.randn(n_tokens, generator=g),
        torch.where(torch.rand(n_tokens, generator=g) < 0.02, 5 + torch.randn(n_tokens, generator=g), torch.zeros(n_tokens) - 0.1),
    ]
    return torch.stack(cols, dim=1).float()


@pytest.mark.parametrize("sizes", [[3000], [1000, 1000, 1000], [1, 2, 997, 1500, 500], [7] * 428 + [4]])
def test_moments_match_scipy(sizes):
    x = _planted()
    m = Moments(x.shape[1])
    for b in _batches(x, sizes):
        m.update(b)
    got = m.finalize()
    ref = x.double().numpy()
    assert m.count == x.shape[0]
    # relative error ≤ 1e-5, on the scale of the column (a mean near 0 is judged against its spread)
    scale = np.abs(ref.mean(0)) + ref.std(0)
    assert (np.abs(got["mean"].numpy() - ref.mean(0)) <= 1e-5 * scale).all()
    np.testing.assert_allclose(got["variance"].numpy(), ref.var(0), rtol=1e-5)
    np.testing.assert_allclose(got["skew"].numpy(), stats.skew(ref, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["kurtosis"].numpy(), stats.kurtosis(ref, axis=0, fisher=False), rtol=1e-5)


def test_merging_two_streams_equals_one():
    x = _planted(2000, seed=3)
    a, b, whole = Moments(x.shape[1]), Moments(x.shape[1]), Moments(x.shape[1])
    for part in _batches(x[:700], [300, 400]):
        a.update(part)
    for part in _batches(x[700:], [1000, 300]):
        b.update(part)
    whole.update(x)
    a.merge(b)
    for key, value in whole.finalize().items():
        torch.testing.assert_close(a.finalize()[key], value, rtol=1e-6, atol=1e-6)


def test_constant_and_empty_columns_are_undefined_not_zero():
    x = torch.stack([torch.full((100,), 2.5), torch.zeros(100), torch.randn(100)], dim=1)
    m = Moments(3)
    for b in _batches(x, [30, 70]):
        m.update(b)
    got = m.finalize()
    assert got["variance"][0] == 0 and got["variance"][1] == 0
    assert torch.isnan(got["skew"][:2]).all() and torch.isnan(got["kurtosis"][:2]).all()
    assert torch.isfinite(got["skew"][2])
    empty = Moments(2).finalize()
    assert all(torch.isnan(v).all() for v in empty.values())


def _float32_grid(lo: float, hi: float, n_edges: int) -> torch.Tensor:
    """Evenly spaced float32 edges made by float32 arithmetic, edge_i = fl(fl(i·w) + lo) with w the
    float32 step (histogram_edges' documented construction), built here in numpy."""
    w = np.float32((hi - lo) / (n_edges - 1))
    return torch.from_numpy(np.arange(n_edges, dtype=np.float32) * w + np.float32(lo))


def test_default_histogram_edges_are_the_papers():
    # method.md §3: 256 edges on [−10, 15]
    edges = histogram_edges()
    assert edges.dtype == torch.float32 and edges.shape == (256,)
    np.testing.assert_allclose(edges.double().numpy(), np.linspace(-10.0, 15.0, 256), rtol=0, atol=2e-6)
    assert edges[0] == -10.0
    assert torch.equal(edges, _float32_grid(-10.0, 15.0, 256))
    assert torch.equal(histogram_edges(-3, 3, 61), _float32_grid(-3.0, 3.0, 61))


@pytest.mark.parametrize("edges", [_float32_grid(-10.0, 15.0, 256), _float32_grid(-3.0, 3.0, 61),
                                   torch.linspace(-10, 15, 256), torch.tensor([-1.0, 0.0, 0.5, 3.0, 15.0])],
                         ids=["default", "narrow", "linspace", "uneven"])
def test_histogram_matches_numpy_including_edges(edges):
    x = _planted(2000, seed=1) * 4
    x[0, 0], x[1, 0], x[2, 0], x[3, 0] = edges[0], edges[-1], edges[len(edges) // 2], -10.5  # on edges and below
    x[4, 0] = 15.5
    h = Histogram(x.shape[1], edges)
    for b in _batches(x, [500, 1500]):
        h.update(b)
    e = edges.double().numpy()
    for j in range(x.shape[1]):
        ref, _ = np.histogram(x[:, j].double().numpy(), bins=e)
        np.testing.assert_array_equal(h.result()[j].numpy(), ref)


@pytest.mark.parametrize("sizes", [[100, 400, 497], [10] * 99 + [7]], ids=["dense", "sparse-updates"])
def test_topk_is_exact(sizes):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(997, 8, generator=g)
    index = torch.arange(997) * 3 + 1
    t = TopK(8, 20)
    for b, i in zip(_batches(x, sizes), _batches(index, sizes)):
        t.update(b, i)
    order = np.argsort(-x.numpy(), axis=0, kind="stable")[:20]
    np.testing.assert_array_equal(t.values.numpy(), np.take_along_axis(x.numpy(), order, 0))
    np.testing.assert_array_equal(t.index.numpy(), index.numpy()[order])
    few = TopK(2, 5)
    few.update(x[:3, :2], index[:3])
    assert torch.isinf(few.values[3:]).all() and (few.index[3:] == -1).all()


def test_token_table_matches_direct_computation():
    g = torch.Generator().manual_seed(7)
    n_tok, n, vocab = 600, 5, 30
    x = torch.randn(n_tok, n, generator=g)
    ids = torch.randint(0, vocab - 3, (n_tok,), generator=g)  # the last 3 tokens never appear
    table = TokenTable(n, vocab)
    table.MAX_CHUNK_ELEMENTS = 600 * 2  # exercise the chunked max
    for b, i in zip(_batches(x, [200, 400]), _batches(ids, [200, 400])):
        table.update(b, i)
    tok, cnt, means, maxs = table.top_by_mean(10, min_count=3)
    xs, idn = x.double().numpy(), ids.numpy()
    for j in range(n):
        ref = {}
        for v in range(vocab):
            sel = idn == v
            if sel.sum() >= 3:
                ref[v] = (sel.sum(), xs[sel, j].mean(), xs[sel, j].max())
        best = sorted(ref, key=lambda v: -ref[v][1])[:10]
        assert tok[:, j].tolist() == best
        np.testing.assert_allclose(means[:, j].numpy(), [ref[v][1] for v in best], rtol=1e-12)
        np.testing.assert_allclose(maxs[:, j].numpy(), [ref[v][2] for v in best], rtol=1e-6)
        assert cnt[:, j].tolist() == [ref[v][0] for v in best]


def test_accumulator_state_round_trip_gives_identical_results():
    g = torch.Generator().manual_seed(11)
    pre = torch.randn(800, 6, generator=g) * 2
    post = torch.nn.functional.gelu(pre)
    ids = torch.randint(0, 40, (800,), generator=g)
    index = torch.arange(800)
    whole = NeuronStatsAccumulator(6, 40, top_k=5)
    resumed = NeuronStatsAccumulator(6, 40, top_k=5)
    for lo, hi in [(0, 300), (300, 800)]:
        whole.update(pre[lo:hi], post[lo:hi], ids[lo:hi], index[lo:hi])
    resumed.update(pre[:300], post[:300], ids[:300], index[:300])
    state = resumed.state_dict()
    again = NeuronStatsAccumulator(6, 40, top_k=5)
    again.load_state_dict(state)
    again.update(pre[300:], post[300:], ids[300:], index[300:])
    a, b = whole.finalize(top_tokens=7), again.finalize(top_tokens=7)
    for field in a.__dataclass_fields__:
        va, vb = getattr(a, field), getattr(b, field)
        if isinstance(va, torch.Tensor):
            assert torch.equal(va.nan_to_num(), vb.nan_to_num()), field
    frames = a.frames(model_id=1, d_mlp=3, context_length=100)
    st = frames["activation_stats"]
    assert st.height == 6 and st["layer"].to_list() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(st["act_frequency"].to_numpy(), (post > 0).double().mean(0).numpy())
    np.testing.assert_allclose(st["post_mean"].to_numpy(), post.double().mean(0).numpy(), rtol=1e-6)
    assert frames["top_example"].height == 6 * 5 and frames["token_activation"].height == 6 * 7
