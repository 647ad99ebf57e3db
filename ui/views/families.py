"""Families: neurons that share a label and feature across seeds — counts by layer, and members."""

from __future__ import annotations

import json

import streamlit as st

from atlas import queries
from atlas.ui import common

common.page_header("Families", "Neurons that share a label and its feature, within a model and across seeds "
                               "(linked by partner correlation).")
eng = common.engine()
common.require_data(eng)

families = queries.families(eng)
if families.height == 0:
    common.nothing_yet("No families yet: run `atlas classify` after the correlation.")
    st.stop()

left, right = st.columns([3, 2])
with left:
    st.subheader("Members by layer")
    st.altair_chart(common.family_layer_chart(queries.family_layer_counts(eng)), width="stretch")
with right:
    st.subheader("Labels per model")
    counts = queries.label_counts(eng)
    if counts.height:
        st.dataframe(counts.pivot(on="label", index=["model", "layer"], values="n").fill_null(0),
                     hide_index=True, width="stretch")

st.subheader("Families")
label = st.selectbox("Label", ["any", *sorted(set(families["label"].to_list()))], key="family_label")
shown = families if label == "any" else families.filter(families["label"] == label)
st.dataframe(shown.drop("evidence", "run_id"), hide_index=True, width="stretch",
             column_config={"layers": st.column_config.ListColumn("layers"),
                            "models": st.column_config.ListColumn("models")})

ids = shown["family_id"].to_list()
names = {r["family_id"]: f"{r['family']} — {r['n_members']} members in {', '.join(r['models'] or [])}"
         for r in families.iter_rows(named=True)}
wanted = st.query_params.get("family")
default = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
if not ids:
    st.stop()
family_id = st.selectbox("Members of", ids, index=default, format_func=lambda i: names.get(i, str(i)),
                         key=f"family_pick_{wanted}")
if str(family_id) != wanted:
    st.query_params["family"] = str(family_id)
members = queries.family_members(eng, int(family_id))
st.dataframe(common.with_links(members.drop("family_id", "family")), hide_index=True, width="stretch",
             column_config={"neuron": common.link_column(), "labels": st.column_config.ListColumn("labels"),
                            "excess": st.column_config.NumberColumn(format="%.3f")})
evidence = families.filter(families["family_id"] == family_id)["evidence"][0]
if evidence:
    with st.expander("Evidence"):
        st.json(json.loads(evidence))
common.downloads(members, "family_members", "families")
