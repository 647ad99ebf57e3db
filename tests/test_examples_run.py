"""The stats pass's sampled examples and the ``examples`` run on the tiny trained cohort: every stored
window is the model's hook_post there (recomputed through TransformerLens' own cache, not the
ingestion code), each example's token holds the value the stats pass stored, and each partner's
window is its best partner neuron's activation on the reference's text."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
import torch

from atlas import queries
from atlas.errors import AtlasError
from atlas.ingest.models import load_model
from atlas.ingest.runs.examples import ExamplesOptions, run_examples
from atlas.ingest.runs.stats import StatsOptions, ingest_model

pytestmark = pytest.mark.slow
TOL = 1e-4


@pytest.fixture
def ingested(engine, atlas_home, tiny_cohort):
    """Two tiny seeds ingested (weights + stats) as cohort "tiny" on dataset "tiny", and correlated."""
    from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation

    tiny_cohort.store_dataset(engine)
    options = StatsOptions(device="cpu", progress=False, batch_size=32, log=lambda m: None)
    for path, name, label in list(zip(tiny_cohort.paths, tiny_cohort.names, tiny_cohort.labels))[:2]:
        ingest_model(engine, str(path), dataset="tiny", name=name, cohort="tiny", seed_label=label, options=options)
    run_correlation(engine, "tiny", "tiny", CorrelateOptions(device="cpu", progress=False, log=lambda m: None,
                                                            batch_size=32))
    return engine


def _hook_post(path, rows: torch.Tensor) -> np.ndarray:
    """hook_post of every layer through TransformerLens' run_with_cache: [rows, ctx, layers, d_mlp]."""
    bridge = load_model(str(path), "cpu").bridge
    names = [f"blocks.{l}.mlp.hook_post" for l in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(rows, names_filter=lambda n: n in names)
    return torch.stack([cache[n] for n in names], dim=2).double().numpy()


def _frame(engine, sql: str, **params) -> pl.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(sa.text(sql), params)
        return pl.DataFrame([tuple(r) for r in result], schema=list(result.keys()), orient="row")


def test_windows_are_the_models_activations_and_partners_share_the_text(ingested, tiny_cohort):
    engine = ingested
    outcome = run_examples(engine, "tiny", "tiny", ExamplesOptions(device="cpu", progress=False, before=6, after=3,
                                                                    partner_examples=3, log=lambda m: None))
    assert outcome.status == "done"
    again = run_examples(engine, "tiny", "tiny", ExamplesOptions(device="cpu", progress=False, before=6, after=3,
                                                                  partner_examples=3, log=lambda m: None))
    assert again.status == "skipped"

    names = tiny_cohort.names[:2]
    ids = dict(_frame(engine, "SELECT name, id FROM model").iter_rows())
    windows = _frame(engine, "SELECT * FROM example_activation WHERE run_id = :r", r=outcome.run_id)
    posts = {ids[n]: _hook_post(p, tiny_cohort.rows) for n, p in zip(names, tiny_cohort.paths)}

    # own windows: every top / quantile / bottom example of both models, each the model's hook_post
    own = windows.filter(pl.col("source_model_id") == pl.col("model_id"))
    stored = _frame(engine, """
        SELECT model_id, layer, idx, 'top' AS kind, rank, row_idx, position, value FROM top_example
        UNION ALL SELECT model_id, layer, idx, kind, rank, row_idx, position, value FROM sampled_example""")
    assert own.height == stored.height and set(own["kind"]) == {"top", "quantile", "bottom"}
    joined = own.join(stored, on=["model_id", "layer", "idx", "kind", "rank"])
    assert joined.height == stored.height and (joined["row_idx"] == joined["row_idx_right"]).all()
    for w in joined.iter_rows(named=True):
        truth = posts[w["model_id"]][w["row_idx"], :, w["layer"], w["idx"]]
        start, acts = w["start"], np.array(w["activations"])
        assert start == max(w["position"] - 6, 0) and len(acts) == min(w["position"] + 3, truth.size - 1) - start + 1
        assert np.allclose(acts, truth[start:start + len(acts)], atol=TOL)
        assert abs(acts[w["position"] - start] - w["value"]) < TOL  # the stats pass stored the same value

    # partner windows: the reference's top-3 examples, with its best partner neuron's activations
    ref, partner = ids[names[0]], ids[names[1]]
    shared = windows.filter(pl.col("source_model_id") != pl.col("model_id"))
    assert set(shared["model_id"]) == {ref} and set(shared["source_model_id"]) == {partner}
    best = _frame(engine, "SELECT layer, idx, best_layer, best_idx FROM pair_correlation WHERE model_id = :m "
                          "AND other_model_id = :p AND best_layer IS NOT NULL", m=ref, p=partner)
    assert shared.height == 3 * best.height
    for w in shared.join(best, on=["layer", "idx"]).iter_rows(named=True):
        assert (w["source_layer"], w["source_idx"]) == (w["best_layer"], w["best_idx"])
        truth = posts[partner][w["row_idx"], :, w["source_layer"], w["source_idx"]]
        assert np.allclose(w["activations"], truth[w["start"]:w["start"] + len(w["activations"])], atol=TOL)

    # the query layer shows it: every token of a top example coloured, and the partner on the same text
    layer, idx = best.row(0)[:2]
    top = queries.top_examples(engine, names[0], layer, idx, k=3, before=6, after=3)
    assert all(a is not None for acts in top["activations"].to_list() for a in acts)
    on_same_text = queries.partner_examples(engine, names[0], layer, idx, k=3, before=6, after=3)
    assert on_same_text.height == 3 and set(on_same_text["other_model"]) == {names[1]}
    assert on_same_text["tokens"].to_list() == top["tokens"].to_list()
    assert on_same_text["reference_value"].to_list() == pytest.approx(top["value"].to_list())


def test_examples_run_says_what_is_missing(engine, atlas_home, tiny_cohort):
    tiny_cohort.store_dataset(engine)
    with pytest.raises(AtlasError, match="no cohort or model named 'nope'"):
        run_examples(engine, "nope", "tiny", ExamplesOptions(device="cpu", progress=False))
    with pytest.raises(AtlasError, match="must be ≥ 0"):
        run_examples(engine, "nope", "tiny", ExamplesOptions(before=-1))
