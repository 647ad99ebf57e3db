"""Overview: models, cohorts, datasets, runs; universal share per layer; max-corr vs baseline."""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common

common.page_header("Neuron Atlas", "Which MLP neurons does every training seed learn, and what do they do?")
eng = common.engine()
common.require_data(eng)

models = queries.models(eng)
cohorts = queries.cohorts(eng)
runs = queries.runs(eng, limit=500)
threshold = st.sidebar.slider("Universality threshold (excess correlation)", 0.0, 1.0, 0.5, 0.05,
                              key="threshold", bind="query-params",
                              help="A reference neuron is universal when mean best-partner correlation minus the "
                                   "random-rotation baseline exceeds this (the paper: 0.5).")
layers = common.summary(eng, "layer_universality", threshold=threshold)

c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Models", models.height)
c2.metric("Cohorts", cohorts.height)
c3.metric("Neurons", f"{int(models['n_neurons'].sum()):,}")
n_univ = int(layers["n_universal"].sum()) if layers.height else 0
n_corr = int(layers["n_neurons"].sum()) if layers.height else 0
c4.metric("Universal neurons", f"{n_univ:,}", help=f"excess > {threshold:g}, over {n_corr:,} correlated reference neurons")
n_running = int((runs["status"] == "running").sum()) if runs.height else 0
c5.metric("Runs done", int((runs["status"] == "done").sum()) if runs.height else 0,
          delta=f"{n_running} running" if n_running else None, delta_color="off")

left, right = st.columns(2)
with left:
    st.subheader("Universal share per layer")
    if layers.height:
        st.altair_chart(common.share_chart(layers), width="stretch")
        st.caption("The paper finds a U shape: most universal neurons in the first and last layers.")
    else:
        common.nothing_yet("No correlation run yet: run `atlas correlate` on a cohort.")
with right:
    st.subheader("Mean max-correlation vs baseline")
    dist = common.summary(eng, "correlation_distribution", bins=40)
    if dist.height:
        st.altair_chart(common.distribution_chart(dist), width="stretch")
        st.caption("Per reference neuron: mean over partners of the best correlation (red) and of the best "
                   "correlation with a randomly rotated partner (grey). Universal neurons sit far right of the baseline.")
    else:
        common.nothing_yet("No correlations yet.")

references = sorted(set(layers["model"].to_list())) if layers.height else []
if references:
    st.subheader("What distinguishes universal neurons")
    reference = st.selectbox("Reference model", references, key="properties_model") if len(references) > 1 \
        else references[0]
    props = common.summary(eng, "universal_properties", model=reference, threshold=threshold)
    if props.height and props["n_universal"].sum() > 0:
        st.altair_chart(common.properties_chart(props), width="stretch")
        st.caption("Median within-layer percentile of each property: universal neurons (red) vs the rest. The paper: "
                   "high skew and kurtosis, rarely firing, negative input bias.")
    else:
        st.caption(f"No neuron of {reference} passes the threshold — lower it in the sidebar.")

st.subheader("Cohorts")
st.dataframe(cohorts.drop("cohort_id"), hide_index=True, width="stretch",
             column_config={"models": st.column_config.ListColumn("models")})
st.subheader("Models")
st.dataframe(models.drop("model_id"), hide_index=True, width="stretch")
ds = queries.datasets(eng)
if ds.height:
    st.subheader("Datasets")
    st.dataframe(ds.drop("dataset_id"), hide_index=True, width="stretch")
st.subheader("Latest runs")
st.dataframe(runs.head(10).select("run_id", "kind", "status", "model", "cohort", "dataset", "progress", "seconds", "error"),
             hide_index=True, width="stretch",
             column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
st.page_link("views/runs.py", label="All runs and live progress →")
with st.expander("Per-layer summary"):
    summary = common.summary(eng, "layer_summary", threshold=threshold)
    st.dataframe(summary, hide_index=True, width="stretch")
    common.downloads(summary, "layer_summary", "overview-summary")
