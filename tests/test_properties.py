"""What distinguishes universal neurons, as the paper computes it: every property of a reference
neuron ranked among the neurons of its layer with scipy's percentileofscore (kind 'rank', the
authors' call), universal neurons (excess > threshold) against the rest. Checked on the synthetic
atlas against scipy on the stored statistics, not against the view's own SQL."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from scipy.stats import percentileofscore

from atlas import queries as q
from atlas.errors import AtlasError
from tests.atlas_fixtures import build_synthetic_atlas


@pytest.fixture
def atlas(engine):
    return build_synthetic_atlas(engine)


def _raw(engine) -> pl.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT u.layer, u.idx, u.excess, a.act_frequency, a.skew, a.kurtosis, w.l2_penalty, w.input_bias,
                   w.vocab_kurtosis, w.vocab_skew
            FROM neuron_universality u
            JOIN activation_stats a USING (model_id, layer, idx) JOIN weight_stats w USING (model_id, layer, idx)
            JOIN model m ON m.id = u.model_id WHERE m.name = 'synth-a'""")).all()
    return pl.DataFrame([tuple(r) for r in rows], orient="row",
                        schema=["layer", "idx", "excess", "act_frequency", "skew", "kurtosis", "l2_penalty",
                                "input_bias", "vocab_kurtosis", "vocab_skew"])


def test_within_layer_percentiles_are_scipys_percentileofscore(engine, atlas):
    raw = _raw(engine)
    got = q.property_percentiles(engine, model="synth-a", properties=list(q.PAPER_PROPERTIES))
    assert got.height == 32 * len(q.PAPER_PROPERTIES)
    for row in got.iter_rows(named=True):
        layer = raw.filter(pl.col("layer") == row["layer"])
        values = layer[row["property"]].drop_nulls().to_numpy()
        mine = raw.filter((pl.col("layer") == row["layer"]) & (pl.col("idx") == row["idx"]))[row["property"]][0]
        if mine is None:
            assert row["percentile"] is None  # the dead neuron has no skew or kurtosis
            continue
        assert row["percentile"] == pytest.approx(percentileofscore(values, mine, kind="rank"), abs=1e-6), row


def test_universal_against_other_distributions_per_layer_and_pooled(engine, atlas):
    raw = _raw(engine)
    pct = q.property_percentiles(engine, model="synth-a", properties=["kurtosis"])
    for threshold in (0.5, 0.2):
        by_layer = q.universal_properties(engine, model="synth-a", threshold=threshold, properties=["kurtosis"])
        for row in by_layer.iter_rows(named=True):
            universal = pl.col("excess") > threshold
            mine = pct.filter((pl.col("layer") == row["layer"]) & (universal if row["group"] == "universal"
                                                                     else ~universal.fill_null(False)))
            values = mine["percentile"].drop_nulls().to_numpy()
            assert row["n"] == values.size
            assert row["median"] == pytest.approx(np.median(values)) and row["p25"] == pytest.approx(
                np.percentile(values, 25))
        pooled = q.universal_properties(engine, model="synth-a", threshold=threshold, by_layer=False,
                                        properties=["kurtosis"])
        n_universal = int((raw["excess"] > threshold).sum())
        assert pooled.filter(pl.col("group") == "universal")["n"][0] == n_universal
    with pytest.raises(AtlasError, match="no property 'colour'"):
        q.universal_properties(engine, properties=["colour"])
