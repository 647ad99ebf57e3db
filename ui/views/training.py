"""Universality over training: the universal share per layer against training tokens, and one
neuron's excess correlation through training (``atlas.queries.training``)."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from atlas import queries
from atlas.ui import common, state

common.page_header("Over training", "When do the seeds' neurons become universal? Each training checkpoint's "
                                    "seeds are correlated like a cohort of their own.")
eng = common.engine()
common.require_data(eng)

threshold = state.threshold()  # the sidebar's, shared by every page
curve = common.summary(eng, "universality_over_training", threshold=threshold)
if curve.is_empty():
    common.nothing_yet("No training checkpoints correlated yet: `make demo` does it for the demo cohort; for your "
                       "own models register checkpoints with `atlas ingest --step N --checkpoint-of MODEL` and run "
                       "`atlas correlate --over-training`.")
    st.stop()

trainings = curve["trained_model"].unique(maintain_order=True).to_list()
trained = st.selectbox("Training (reference seed)", trainings, key="training") if len(trainings) > 1 else trainings[0]
mine = curve.filter(pl.col("trained_model") == trained)
overall = (mine.group_by("step", "train_tokens").agg(pl.col("n_universal").sum(), pl.col("n_neurons").sum())
           .with_columns(pl.lit("all layers").alias("layer"), (pl.col("n_universal") / pl.col("n_neurons")).alias("universal_share")))
lines = pl.concat([mine.select("step", "train_tokens", pl.col("layer").cast(pl.Utf8).alias("layer"), "n_universal",
                               "n_neurons", "universal_share"),
                   overall.select("step", "train_tokens", "layer", "n_universal", "n_neurons", "universal_share")])
lines = lines.with_columns((pl.col("universal_share") * 100).alias("percent"),
                           (pl.col("train_tokens") / 1e6).alias("million_tokens")).sort("layer", "step")

st.subheader(f"Universal share of {trained}'s neurons (excess > {threshold:g})")
st.altair_chart(alt.Chart(lines.to_pandas()).mark_line(point=True).encode(
    x=alt.X("million_tokens:Q", title="training tokens (millions)"),
    y=alt.Y("percent:Q", title="universal neurons (%)", scale=alt.Scale(domainMin=0, nice=True)),
    color=alt.Color("layer:N", title="layer"),
    strokeDash=alt.condition("datum.layer == 'all layers'", alt.value([4, 2]), alt.value([1, 0])),
    tooltip=["layer", "step", "train_tokens", "n_universal", "n_neurons", alt.Tooltip("percent:Q", format=".2f")],
).properties(height=300), width="stretch")
partners = mine.group_by("step").agg(pl.col("n_partners").max()).sort("step")
st.caption("Each point is one correlation run: the reference seed's checkpoint against the other seeds' "
           "checkpoints at the same step, over the same token dataset, with the random-rotation baseline "
           f"(partners per step: {', '.join(str(n) for n in partners['n_partners'].unique(maintain_order=True))}).")

st.subheader("One neuron through training")
final = mine.sort("step").row(-1, named=True)
top = queries.universal_neurons(eng, threshold=0.0, model=final["model"], limit=1)
default_layer, default_idx = (int(top["layer"][0]), int(top["idx"][0])) if top.height else (0, 0)
c1, c2 = st.columns(2)
layer = c1.number_input("layer", 0, int(mine["layer"].max()), default_layer, key="neuron_layer")
idx = c2.number_input("index", 0, int(mine["n_neurons"].max()) - 1, default_idx, key="neuron_idx")
path = queries.neuron_over_training(eng, trained, int(layer), int(idx))
if path.height:
    data = (path.with_columns((pl.col("train_tokens") / 1e6).alias("million_tokens"))
            .unpivot(index=["step", "million_tokens"], on=["mean_corr", "mean_baseline", "excess"],
                     variable_name="measure", value_name="value").to_pandas())
    rule = alt.Chart(pl.DataFrame({"y": [threshold]}).to_pandas()).mark_rule(strokeDash=[4, 4], color="#999").encode(y="y:Q")
    st.altair_chart((alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("million_tokens:Q", title="training tokens (millions)"),
        y=alt.Y("value:Q", title="correlation", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("measure:N", scale=alt.Scale(domain=["mean_corr", "mean_baseline", "excess"],
                                                      range=["#d62728", "#7f7f7f", "#1f77b4"]), title=None),
        tooltip=["measure", "step", alt.Tooltip("value:Q", format=".3f")]) + rule).properties(height=280),
        width="stretch")
    st.markdown(f"[Open {common.neuron_label(final['model'], int(layer), int(idx))} →]"
                f"({common.neuron_url(final['model'], int(layer), int(idx))})")
else:
    st.caption("No correlation rows for this neuron.")
with st.expander("Table"):
    st.dataframe(mine.drop("trained_model"), hide_index=True, width="stretch")
    common.downloads(mine, "universality_over_training", "training")
