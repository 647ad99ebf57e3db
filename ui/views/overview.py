"""Overview: what is in the atlas, how many neurons are universal at the sidebar's threshold and
why, and the paper's figures live: the universal share per layer, excess correlation with the
threshold, best correlation vs the rotation baseline, and what distinguishes universal neurons
(within-layer percentiles of their properties). Every figure has its data and a CSV download."""

from __future__ import annotations

import polars as pl
import streamlit as st

from atlas import queries
from atlas.ui import charts, common, state

common.page_header("Neuron Atlas", "Which MLP neurons does every training seed learn, and what do they do?")
eng = common.engine()
common.require_data(eng)

threshold = state.threshold()  # the sidebar's, shared by every page and every count here
# training checkpoints (models with a step, correlated per step) have their own page: summarise final models
checkpoints = queries.checkpoint_models(eng)
final = ~pl.col("model").is_in(checkpoints)
models = queries.models(eng).filter(final)
cohorts = common.summary(eng, "cohorts", threshold=threshold)
if checkpoints:
    cohorts = cohorts.filter([not (ms and set(ms) <= set(checkpoints)) for ms in cohorts["models"].to_list()])
runs = queries.runs(eng, limit=500)
layers = common.summary(eng, "layer_universality", threshold=threshold).filter(final)
why = common.summary(eng, "universality_summary", threshold=threshold).filter(final)
references = sorted(set(layers["model"].to_list())) if layers.height else []
address = state.Address("overview", state.choice("reference", references or [""], expected="a reference model"),
                        state.choice("view", ["by layer", "pooled"]))

c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Models", models.height)
c2.metric("Cohorts", cohorts.height)
c3.metric("Neurons", f"{int(models['n_neurons'].sum()):,}")
n_univ = int(layers["n_universal"].sum()) if layers.height else 0
n_corr = int(layers["n_neurons"].sum()) if layers.height else 0
c4.metric("Universal neurons", f"{n_univ:,}", help=f"excess correlation > {threshold:g} (the sidebar's threshold), "
                                                   f"over {n_corr:,} correlated reference neurons")
n_running = int((runs["state"] == "running").sum()) if runs.height else 0
c5.metric("Runs done", int((runs["status"] == "done").sum()) if runs.height else 0,
          delta=f"{n_running} running" if n_running else None, delta_color="off")


def explain(row: dict) -> None:
    """Why a reference model has the universal count it has, and which threshold shows its strongest neurons."""
    medians = (f"its neurons' median best-partner correlation is {row['median_mean_corr']:.2f} against a median "
               f"rotation baseline of {row['median_mean_baseline']:.2f} (median excess {row['median_excess']:.2f})")
    if row["n_universal"] == 0:
        top = row["top_threshold"]
        show = max(0.0, int((top or 0.0) * 100) / 100)  # just under the 20th strongest
        st.info(f"No neuron of **{row['model']}** has excess correlation above {threshold:g}: {medians}; its strongest "
                f"reaches {row['max_excess']:.2f}. The seeds agree beyond chance only that far — a threshold of "
                f"{show:g} shows its 20 strongest neurons.", icon=":material/help:")
        common.page_link("views/universal.py", f"{row['model']}: the 20 strongest neurons (threshold {show:g})",
                         icon=":material/arrow_forward:", cohort=row["cohort"], threshold=f"{show:g}")
    else:
        st.caption(f"**{row['model']}**: {row['n_universal']:,} of {row['n_neurons']:,} neurons above {threshold:g}; "
                   f"{medians}.")


for row in why.iter_rows(named=True):
    explain(row)
if layers.height:
    common.page_link("views/universal.py", f"The {n_univ:,} universal neurons →", icon=":material/hub:")
if checkpoints:
    common.page_link("views/training.py", f"{len(checkpoints)} training checkpoints: universality over training →",
                     icon=":material/timeline:")

left, right = st.columns(2)
with left:
    st.subheader("Universal share per layer")
    if layers.height:
        common.figure(charts.share_chart(layers), layers, name="universal_share_per_layer", key="share",
                      query=f"layer_universality(engine, threshold={threshold:g})")
        st.caption("Per reference model (its cohort in brackets). The paper finds a U shape: most universal neurons "
                   "in the first and last layers.")
    else:
        common.nothing_yet("No correlation run yet: run `atlas correlate` on a cohort.")
with right:
    st.subheader("Excess correlation")
    dist = common.summary(eng, "correlation_distribution", bins=40).filter(final)
    if dist.height:
        common.figure(charts.excess_chart(dist, threshold), dist.filter(pl.col("measure") == "excess"),
                      name="excess_correlation", key="excess", query="correlation_distribution(engine, bins=40)")
        st.caption(f"Reference neurons by excess correlation; red: above the threshold ({threshold:g}). Excess = "
                   "mean best-partner correlation − mean baseline; the baseline is the best correlation with a "
                   "randomly rotated copy of each partner layer (the same activations, no privileged neuron basis): "
                   "a neuron is universal only when the other seeds have a *neuron* that matches it far better than a "
                   "random direction does.")
    else:
        common.nothing_yet("No correlations yet.")

if dist.height:
    left, right = st.columns(2)
    with left:
        st.subheader("Best correlation vs baseline")
        medians = {"mean_corr": why["median_mean_corr"].median() if why.height else None,
                   "mean_baseline": why["median_mean_baseline"].median() if why.height else None}
        common.figure(charts.correlation_chart(dist, medians), dist.filter(pl.col("measure") != "excess"),
                      name="correlation_vs_baseline", key="corr", query="correlation_distribution(engine, bins=40)")
        st.caption("Per reference neuron: its best correlation in each other seed, averaged (red), and the same against "
                   "a randomly rotated seed (grey, the baseline); dashed: the medians. Universal neurons sit far right "
                   "of the baseline.")
    with right:
        st.subheader("Universal neurons by cohort")
        st.dataframe(why.select("model", "cohort", "n_neurons", "n_universal", "median_mean_corr",
                                "median_mean_baseline", "max_excess"), hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("median_mean_corr", "median_mean_baseline", "max_excess")})
        st.caption(f"Per reference model at threshold {threshold:g}: the medians of its best correlation and of the "
                   "rotation baseline, and its strongest excess (`universality_summary`).")

    st.subheader("What distinguishes universal neurons")
    a, b, _ = st.columns([2, 2, 4])
    reference = a.selectbox("Reference model", references or [""], key=address.key("reference"))
    view = b.radio("Percentiles", ["by layer", "pooled"], horizontal=True, key=address.key("view"))
    props = common.summary(eng, "universal_properties", model=reference, threshold=threshold,
                           by_layer=view == "by layer")
    if props.height and (props["group"] == "universal").any():
        common.figure(charts.properties_chart(props), props, name=f"universal_properties_{reference}", key="props",
                      query=f"universal_properties(engine, model={reference!r}, threshold={threshold:g}, "
                            f"by_layer={view == 'by layer'})")
        st.caption("Each property ranked among the neurons of its layer (percentile, as the paper normalises); "
                   "universal neurons (red) vs the rest (grey): line p10–p90, bar p25–p75, tick the median. The paper "
                   "(GPT2): universal neurons fire rarely, have high activation skew and kurtosis, negative input bias "
                   "and large weight norm (l2_penalty). SQL: the view `neuron_property_percentile`.")
    else:
        st.caption(f"No neuron of {reference} passes the threshold {threshold:g} — lower it in the sidebar.")
address.write()
address.report()

st.subheader("Cohorts")
st.dataframe(cohorts.drop("cohort_id"), hide_index=True, width="stretch",
             column_config={"models": st.column_config.ListColumn("models"),
                            "n_universal": st.column_config.NumberColumn(f"universal (> {threshold:g})")})
st.subheader("Models")
st.dataframe(models.drop("model_id"), hide_index=True, width="stretch")
ds = queries.datasets(eng)
if ds.height:
    st.subheader("Datasets")
    st.dataframe(ds.drop("dataset_id"), hide_index=True, width="stretch")
st.subheader("Latest runs")
st.dataframe(runs.head(10).select("run_id", "kind", "state", "model", "cohort", "dataset", "progress", "seconds",
                                  "error"),
             hide_index=True, width="stretch",
             column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)})
common.page_link("views/runs.py", "All runs and live progress →")
with st.expander("Per-layer summary"):
    summary = common.summary(eng, "layer_summary", threshold=threshold)
    st.dataframe(summary, hide_index=True, width="stretch")
    common.downloads(summary, "layer_summary", "overview-summary")
