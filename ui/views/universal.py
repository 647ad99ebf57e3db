"""Universal neurons: filter by cohort, layer, label and family at the sidebar's threshold; sort;
open a neuron. Every filter is a URL parameter (``?threshold=&cohort=&label=&family=&layers=&sort=
&limit=``), so Back from a neuron page restores the list as it was."""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common, state

common.page_header("Universal neurons",
                   "Reference neurons whose activations every other seed reproduces: excess correlation = mean over "
                   "partners of the best correlation minus the random-rotation baseline.")
eng = common.engine()
common.require_data(eng)

cohorts = queries.cohorts(eng)
labels = queries.label_names(eng)
families = queries.families(eng)
max_layers = int(queries.models(eng)["n_layers"].max() or 1)

threshold = state.threshold()  # the sidebar's: one threshold for every page
cohort_names = ["all", *cohorts["cohort"].to_list()]
family_names = ["any", *(families["family"].to_list() if families.height else [])]
address = state.Address(
    "universal",
    state.choice("cohort", cohort_names, expected="a cohort of the atlas"),
    state.choice("label", ["any", *labels], expected="a label of the current classify runs"),
    state.choice("family", family_names, expected="a family of the current classify runs"),
    state.int_list("layers", list(range(max_layers)), what="layers", show_empty="all layers"),
    state.choice("sort", list(queries.UNIVERSAL_ORDER)),
    state.number("limit", 2000, 10, 100_000, integer=True, expected="a number from 10 to 100000"),
)
f1, f2, f3 = st.columns([2, 2, 3])
cohort = f1.selectbox("Cohort", cohort_names, key=address.key("cohort"))
label = f2.selectbox("Label", ["any", *labels], key=address.key("label"))
family = f3.selectbox("Family", family_names, key=address.key("family"))
g1, g2, g3 = st.columns([4, 2, 1])
layers = g1.multiselect("Layers", list(range(max_layers)), key=address.key("layers"), placeholder="all layers")
order_by = g2.selectbox("Sort by", list(queries.UNIVERSAL_ORDER), key=address.key("sort"))
limit = int(g3.number_input("Show at most", 10, 100_000, step=100, key=address.key("limit")))
address.write()
address.report()

table = queries.universal_neurons(
    eng, threshold=threshold, cohort=None if cohort == "all" else cohort, layer=layers or None,
    label=None if label == "any" else label, family=None if family == "any" else family,
    order_by=order_by, limit=limit)

if table.height == 0:
    why = common.summary(eng, "universality_summary", threshold=threshold, cohort=None if cohort == "all" else cohort)
    if why.height == 0:
        common.nothing_yet("No correlation run yet, so no neuron can be universal.")
    elif int(why["n_universal"].sum()) > 0:
        st.info("No neuron passes these filters — clear a filter, or lower the threshold in the sidebar.")
    else:
        for row in why.iter_rows(named=True):
            show = max(0.0, int((row["top_threshold"] or 0.0) * 100) / 100)  # just under the 20th strongest
            st.info(f"No neuron of **{row['model']}** has excess correlation above {threshold:g}: its median best-"
                    f"partner correlation is {row['median_mean_corr']:.2f} against a median rotation baseline of "
                    f"{row['median_mean_baseline']:.2f}, and its strongest neuron reaches {row['max_excess']:.2f}. "
                    f"A threshold of {show:g} shows its 20 strongest.", icon=":material/help:")
            common.page_link("views/universal.py", f"Show {row['model']}'s strongest neurons (threshold {show:g})",
                             icon=":material/arrow_forward:", threshold=f"{show:g}", cohort=row["cohort"])
    st.stop()

st.caption(f"{table.height:,} neurons with excess correlation above {threshold:g} (the sidebar's threshold)"
           f"{' — limit reached' if table.height >= limit else ''}. Select a row to open its neuron here, or "
           "**open ↗** for a new tab.")
shown = common.with_links(table)
opener = st.container()
event = st.dataframe(
    shown, hide_index=True, width="stretch", height=min(38 + 35 * shown.height, 640), key="universal-table",
    on_select="rerun", selection_mode="single-row",
    column_order=["neuron", "model", "layer", "idx", "excess", "mean_corr", "mean_baseline", "labels", "min_corr",
                  "max_corr", "act_frequency", "kurtosis", "skew", "w_out_norm", "input_bias", "cohort", "n_partners"],
    column_config={
        "neuron": common.link_column(),
        "excess": st.column_config.ProgressColumn("excess", min_value=0.0, max_value=1.0, format="%.3f"),
        "mean_corr": st.column_config.NumberColumn("mean corr", format="%.3f"),
        "min_corr": st.column_config.NumberColumn("min corr", format="%.3f"),
        "max_corr": st.column_config.NumberColumn("max corr", format="%.3f"),
        "mean_baseline": st.column_config.NumberColumn("baseline", format="%.3f"),
        "act_frequency": st.column_config.NumberColumn("firing rate", format="percent"),
        "skew": st.column_config.NumberColumn(format="%.2f"),
        "kurtosis": st.column_config.NumberColumn(format="%.2f"),
        "w_out_norm": st.column_config.NumberColumn("‖w_out‖", format="%.2f"),
        "input_bias": st.column_config.NumberColumn("input bias", format="%.2f"),
        "labels": st.column_config.ListColumn("labels"),
    })
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
if rows:  # a link, not st.switch_page: a page switch with parameters leaves an extra entry in the history
    chosen = table.row(rows[0], named=True)
    with opener:
        common.neuron_link(chosen["model"], chosen["layer"], chosen["idx"], prefix="Open ", icon=":material/arrow_forward:")
common.downloads(table, "universal_neurons", "universal")
