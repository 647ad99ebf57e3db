"""Examples beyond the top ones, sampled while streaming (atlas.ingest.math.example_sampling): the
most negative tokens exactly, and quantile examples from a uniform sample of the firing tokens —
checked against numpy references built from the definitions, on planted activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.ingest.math.example_sampling import ExampleSampler, token_keys


def _planted(n_tokens: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_tokens, 4] post: a sparse neuron (fires on 10 %, values uniform 0.5..5), a dense one (fires on
    90 %), one firing on only 7 tokens, one never firing (all ≤ 0); distinct values everywhere."""
    rng = np.random.default_rng(seed)
    post = np.empty((n_tokens, 4), dtype=np.float32)
    post[:, 0] = np.where(rng.random(n_tokens) < 0.1, rng.uniform(0.5, 5.0, n_tokens), -rng.uniform(0, 0.17, n_tokens))
    post[:, 1] = np.where(rng.random(n_tokens) < 0.9, rng.uniform(0.01, 2.0, n_tokens), -rng.uniform(0, 0.17, n_tokens))
    post[:, 2] = -rng.uniform(0, 0.17, n_tokens)
    post[rng.choice(n_tokens, 7, replace=False), 2] = rng.uniform(1, 2, 7)
    post[:, 3] = -rng.uniform(0.01, 0.17, n_tokens)
    index = torch.from_numpy(rng.permutation(10 * n_tokens)[:n_tokens].astype(np.int64))  # positions in a dataset
    return torch.from_numpy(post), index


def _run(post, index, batches: int, **kw) -> ExampleSampler:
    sampler = ExampleSampler(post.shape[1], **kw)
    for part in np.array_split(np.arange(post.shape[0]), batches):
        sampler.update(post[part], index[part])
    return sampler


def test_most_negative_examples_are_exactly_the_smallest_values():
    post, index = _planted()
    out = _run(post, index, 7, bottom_k=5).finalize()
    for j in range(post.shape[1]):
        order = np.argsort(post[:, j].numpy(), kind="stable")[:5]
        assert out.bottom_index[:, j].tolist() == index[order].tolist()
        assert np.allclose(out.bottom_values[:, j].numpy(), post[order, j].numpy())


def test_the_sample_is_the_firing_tokens_with_the_smallest_keys():
    """Priority sampling, from its definition: per neuron, the `reservoir` firing tokens of smallest key."""
    post, index = _planted()
    sampler = _run(post, index, 9, reservoir=40, quantiles=5, per_quantile=2)
    keys = token_keys(index).numpy()
    for j in range(post.shape[1]):
        firing = np.flatnonzero(post[:, j].numpy() > 0)
        expected = set(index[firing[np.argsort(keys[firing])[:40]]].tolist())
        got = {i for i in sampler.index[:, j].tolist() if i >= 0}
        assert got == expected, j


def test_quantile_examples_fire_spread_across_the_distribution_and_say_where_they_sit():
    post, index = _planted(n_tokens=20000)
    out = _run(post, index, 11, reservoir=64, quantiles=5, per_quantile=2).finalize()
    where = {int(t): i for i, t in enumerate(index.tolist())}
    for j in (0, 1):  # enough firing tokens for every band
        values = post[:, j].numpy()
        firing = np.sort(values[values > 0])
        chosen = out.quantile_index[:, j].tolist()
        assert all(i >= 0 for i in chosen)
        got = np.array([values[where[i]] for i in chosen])
        assert np.allclose(got, out.quantile_values[:, j].numpy())  # the stored value is the token's
        assert (got > 0).all() and (np.diff(got) >= 0).all()  # firing, lowest band first
        true_q = np.searchsorted(firing, got) / firing.size  # where each sits among ALL firing tokens
        bands = np.repeat(np.arange(5), 2)
        # a uniform sample of 64 puts each band's examples in (or within sampling error of) the same
        # fifth of the whole distribution
        assert ((true_q >= bands / 5 - 0.15) & (true_q <= (bands + 1) / 5 + 0.15)).all(), true_q
        # the quantile reported (estimated from the sample) is within sampling error of the truth:
        # a quantile estimated from 64 draws has sd ≤ 0.5 / sqrt(64) = 0.0625
        assert np.abs(out.quantile[:, j].numpy() - true_q).max() < 3 * 0.0625
    # 7 firing tokens: every one of them is in the sample, examples are among them; never firing: none
    few = set(index[np.flatnonzero(post[:, 2].numpy() > 0)].tolist())
    assert {i for i in out.quantile_index[:, 2].tolist() if i >= 0} <= few
    assert (out.quantile_index[:, 3] == -1).all()


@pytest.mark.parametrize("batches", [1, 3, 50])
def test_results_do_not_depend_on_batching_or_resuming(batches):
    post, index = _planted()
    whole = _run(post, index, 1).finalize()
    parts = np.array_split(np.arange(post.shape[0]), batches)
    first = ExampleSampler(post.shape[1])
    for part in parts[: len(parts) // 2]:
        first.update(post[part], index[part])
    resumed = ExampleSampler(post.shape[1])
    resumed.load_state_dict({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in first.state_dict().items()}
                            | {"bottom": {k: v.clone() for k, v in first.state_dict()["bottom"].items()}})
    for part in parts[len(parts) // 2:]:
        resumed.update(post[part], index[part])
    got = resumed.finalize()
    for name in ("bottom_index", "quantile_index"):
        assert torch.equal(getattr(got, name), getattr(whole, name)), name
    assert torch.allclose(got.quantile_values, whole.quantile_values, equal_nan=True)


def test_frame_rows_name_dataset_positions_with_ranks_from_one():
    post, index = _planted()
    frame = _run(post, index, 4, bottom_k=3).finalize().frame(model_id=7, d_mlp=2, context_length=100)
    assert set(frame["kind"]) == {"quantile", "bottom"}
    for (layer, idx, kind), rows in frame.group_by(["layer", "idx", "kind"]):
        assert rows["rank"].to_list() == list(range(1, rows.height + 1))
    bottom = frame.filter((frame["kind"] == "bottom") & (frame["layer"] == 0) & (frame["idx"] == 0))
    first = int(np.argsort(post[:, 0].numpy())[0])
    assert (bottom["row_idx"][0], bottom["position"][0]) == divmod(int(index[first]), 100)
    assert frame.filter(frame["kind"] == "bottom")["quantile"].null_count() == frame.filter(frame["kind"] == "bottom").height
    assert frame.filter((frame["layer"] == 1) & (frame["idx"] == 1) & (frame["kind"] == "quantile")).height == 0
