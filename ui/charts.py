"""The UI's charts (altair), each drawn from one query-layer frame. Signed values use the blue/red
diverging scale; universal neurons are red, the others grey.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from atlas.ui.tokens import token_labels

RED, BLUE, GREY = "#d62728", "#1f77b4", "#9a9a9a"
GROUPS = alt.Scale(domain=["universal", "other"], range=[RED, GREY])


def histogram_chart(hist: pl.DataFrame) -> alt.Chart:
    """A neuron's hook_pre histogram (log count), positive bins red."""
    data = hist.filter(pl.col("count") > 0).with_columns(
        ((pl.col("bin_lo") + pl.col("bin_hi")) / 2 >= 0).alias("positive")).to_pandas()
    return (alt.Chart(data).mark_bar(binSpacing=0).encode(
        x=alt.X("bin_lo:Q", title="hook_pre", bin="binned"), x2="bin_hi:Q",
        y=alt.Y("count:Q", title="tokens", scale=alt.Scale(type="symlog")),
        color=alt.Color("positive:N", scale=alt.Scale(domain=[False, True], range=[BLUE, RED]), legend=None),
        tooltip=["bin_lo", "bin_hi", "count"]).properties(height=220))


def vocab_chart(effects: pl.DataFrame, n: int = 10) -> alt.Chart:
    """One bar per token id (ranks 1..n), labelled by its token (``#id`` where two display alike)."""
    top = effects.filter(pl.col("rank") <= n)
    top = top.with_columns(token_labels(top)).to_pandas()
    return (alt.Chart(top).mark_bar().encode(
        x=alt.X("value:Q", title="W_U · w_out"),
        y=alt.Y("label:N", sort=alt.EncodingSortField("value", order="descending"), title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=140, labelFontSize=11)),
        color=alt.condition("datum.value > 0", alt.value(RED), alt.value(BLUE)),
        tooltip=["token", "token_id", alt.Tooltip("value:Q", format=".3f")]).properties(height=22 * max(len(top), 4)))


def share_chart(layers: pl.DataFrame) -> alt.Chart:
    """The paper's per-layer share of universal neurons, one line per reference model (and cohort)."""
    data = layers.with_columns((pl.col("universal_share") * 100).alias("percent"),
                               pl.format("{} ({})", "model", pl.col("cohort").fill_null("—")).alias("reference")
                               ).to_pandas()
    return (alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("percent:Q", title="universal neurons (%)", axis=alt.Axis(format=".1f"),
                scale=alt.Scale(domainMin=0, nice=True)),
        color=alt.Color("reference:N", title="reference (cohort)"),
        tooltip=["model", "cohort", "layer", "n_universal", "n_neurons", alt.Tooltip("percent:Q", format=".2f")],
    ).properties(height=260))


def excess_chart(dist: pl.DataFrame, threshold: float) -> alt.LayerChart:
    """Histogram of excess correlation over reference neurons, with the threshold as a red rule."""
    data = (dist.filter(pl.col("measure") == "excess").group_by("bin_lo", "bin_hi").agg(pl.col("count").sum())
            .with_columns((pl.col("bin_lo") >= threshold).alias("universal")).sort("bin_lo").to_pandas())
    bars = alt.Chart(data).mark_bar(binSpacing=0).encode(
        x=alt.X("bin_lo:Q", bin="binned", title="excess correlation (mean best rho − mean baseline)",
                scale=alt.Scale(domain=[0, 1])), x2="bin_hi:Q",
        y=alt.Y("count:Q", title="reference neurons", scale=alt.Scale(type="symlog")),
        color=alt.Color("universal:N", scale=alt.Scale(domain=[True, False], range=[RED, GREY]), legend=None),
        tooltip=["bin_lo", "bin_hi", "count"])
    rule = alt.Chart(pl.DataFrame({"threshold": [threshold]}).to_pandas()).mark_rule(
        color=RED, strokeDash=[4, 3], size=2).encode(x="threshold:Q", tooltip=["threshold"])
    label = rule.mark_text(align="left", dx=4, dy=-90, color=RED).encode(text=alt.value(f"threshold {threshold:g}"))
    return (bars + rule + label).properties(height=260)


def correlation_chart(dist: pl.DataFrame, medians: dict[str, float | None]) -> alt.LayerChart:
    """Histograms of mean best-partner correlation (red) and of the rotation baseline (grey), with
    their medians as rules."""
    names = {"mean_corr": "mean best rho", "mean_baseline": "mean baseline"}
    data = (dist.filter(pl.col("measure").is_in(list(names)))
            .group_by("measure", "bin_lo", "bin_hi").agg(pl.col("count").sum())
            .with_columns(pl.col("measure").replace(names)).sort("measure", "bin_lo").to_pandas())
    scale = alt.Scale(domain=list(names.values()), range=[RED, GREY])
    bars = alt.Chart(data).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("bin_lo:Q", bin="binned", title="correlation", scale=alt.Scale(domain=[0, 1])), x2="bin_hi:Q",
        y=alt.Y("count:Q", stack=None, title="reference neurons", scale=alt.Scale(type="symlog")),
        color=alt.Color("measure:N", scale=scale, title=None, legend=alt.Legend(orient="top")),
        tooltip=["measure", "bin_lo", "bin_hi", "count"])
    marks = pl.DataFrame({"measure": [names[k] for k, v in medians.items() if v is not None],
                          "median": [v for v in medians.values() if v is not None]})
    rules = alt.Chart(marks.to_pandas()).mark_rule(strokeDash=[4, 3], size=2).encode(
        x="median:Q", color=alt.Color("measure:N", scale=scale, legend=None),
        tooltip=["measure", alt.Tooltip("median:Q", format=".3f")])
    return (bars + rules).properties(height=260)


def properties_chart(props: pl.DataFrame) -> alt.FacetChart | alt.LayerChart:
    """Within-layer percentiles of each property, universal (red) vs other (grey) neurons: the p10–p90
    range as a line, p25–p75 as a bar, the median as a tick. Per layer (one panel per property) when
    the frame has layers, else pooled (the paper's figure)."""
    per_layer = props["layer"].null_count() < props.height if "layer" in props.columns else False
    data = props.with_columns(pl.col("layer").cast(pl.Int64)).to_pandas() if per_layer else props.to_pandas()
    x = alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)) if per_layer else \
        alt.X("property:N", title=None, axis=alt.Axis(labelAngle=0, labelLimit=120))
    base = alt.Chart(data).encode(x=x, xOffset=alt.XOffset("group:N", sort=["universal", "other"]),
                                  color=alt.Color("group:N", scale=GROUPS, title=None, legend=alt.Legend(orient="top")),
                                  tooltip=["model", "property", "group", "n", alt.Tooltip("median:Q", format=".1f"),
                                           alt.Tooltip("p25:Q", format=".1f"), alt.Tooltip("p75:Q", format=".1f")]
                                  + (["layer"] if per_layer else []))
    y = alt.Y("p10:Q", title="percentile within layer", scale=alt.Scale(domain=[0, 100]))
    whisker = base.mark_rule().encode(y=y, y2="p90:Q")
    box = base.mark_bar(size=7, opacity=0.8).encode(y="p25:Q", y2="p75:Q")
    median = base.mark_tick(color="black", size=9, thickness=2).encode(y="median:Q")
    layered = whisker + box + median
    if per_layer:
        return layered.properties(width=190, height=150).facet(facet=alt.Facet("property:N", title=None), columns=4)
    return layered.properties(height=280)


def family_counts_chart(counts: pl.DataFrame) -> alt.Chart:
    """Labelled neurons per label, stacked by layer; every evaluated label is on the axis (0 included)."""
    data = counts.with_columns(pl.col("layer").cast(pl.Utf8)).to_pandas()
    totals = counts.group_by("label").agg(pl.col("n").sum().alias("total"))
    order = totals.sort("total", "label", descending=[True, False])["label"].to_list()
    bars = alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=200)),
        x=alt.X("sum(n):Q", title="labelled neurons"),
        color=alt.Color("layer:O", title="layer", scale=alt.Scale(scheme="viridis")),
        tooltip=["label", "layer", "n", "n_neurons"])
    text = alt.Chart(totals.to_pandas()).mark_text(align="left", dx=3).encode(
        y=alt.Y("label:N", sort=order), x="total:Q", text="total:Q")
    # one fixed-height row per label: with a fixed chart height Vega squeezed the rows and hid every
    # other label name (its default label-overlap rule), leaving bars without a name
    return (bars + text).properties(height=alt.Step(22))


def family_layer_chart(counts: pl.DataFrame) -> alt.Chart:
    return (alt.Chart(counts.to_pandas()).mark_bar().encode(
        x=alt.X("layer:O", axis=alt.Axis(labelAngle=0)), y=alt.Y("n_members:Q", title="family members"),
        color=alt.Color("label:N", title="family"), tooltip=["label", "layer", "n_members", "n_families"],
    ).properties(height=260))
