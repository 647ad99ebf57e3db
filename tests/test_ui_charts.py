"""Chart specifications the pages draw: what a reader must be able to see."""

from __future__ import annotations

import polars as pl

from atlas.ui import charts


def test_family_counts_chart_names_every_label_it_draws():
    """Each label gets a row of its own and its name on the axis. A fixed chart height squeezed
    13 labels into rows too thin for their names, and Vega's label-overlap rule hid every other
    one: bars without a name (seen on the demo's families page)."""
    labels = ["unigram", "alphabet", "attention_activation", "attention_deactivation", "entropy",
              "entropy_candidate", "partition", "position", "prediction", "previous_token", "semantic",
              "suppression", "syntax"]
    counts = pl.DataFrame({"label": labels, "layer": [1] * len(labels), "n": [9, 2] + [0] * (len(labels) - 2),
                           "n_neurons": [16] * len(labels)})
    spec = charts.family_counts_chart(counts).to_dict()
    assert spec["height"] == {"step": 22}, "rows must keep their height however many labels there are"
    y_axes = [layer["encoding"]["y"].get("axis") for layer in spec["layer"]]
    assert any(axis and axis.get("labelOverlap") is False for axis in y_axes), "no label name may be hidden"
