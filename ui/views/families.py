"""Families: how many neurons carry each label — among universal neurons (the paper's count, at the
sidebar's threshold) or among all neurons — by layer, every evaluated label listed (0 included);
then every family (neurons sharing a label and feature across seeds) and its members. The URL
carries ``?among=&label=&family=`` (``family``: a family's id or name)."""

from __future__ import annotations

import html
import json

import polars as pl
import streamlit as st

from atlas import queries
from atlas.ui import charts, common, evidence, state

common.page_header("Families", "Neurons that share a label and its feature, within a model and across seeds "
                               "(linked by partner correlation).")
eng = common.engine()
common.require_data(eng)

threshold = state.threshold()
families = queries.families(eng)
label_names = sorted(set(families["label"].to_list())) if families.height else []


def _family(raw: str) -> int:
    """A family by id (``?family=12``) or by name (``?family=unigram: token=' the'``)."""
    hit = families.filter((families["family_id"].cast(pl.Utf8) == raw) | (families["family"] == raw))
    if hit.height == 0:
        raise ValueError(raw)
    return int(hit["family_id"][0])


address = state.Address(
    "families", state.choice("among", ["universal neurons", "all neurons"]),
    state.choice("label", ["any", *label_names], expected="a label of the current families"),
    state.Param("family", None, _family, "a family of the current classify runs", show=lambda v: "the largest"))

st.subheader("Labels counted")
among = st.radio("Count among", ["universal neurons", "all neurons"], horizontal=True, key=address.key("among"),
                 help="The paper counts families among universal neurons (excess correlation above the sidebar's "
                      "threshold; reference models only). 'all neurons' counts every classified neuron.")
universal_only = among == "universal neurons"
counts = common.summary(eng, "family_counts", threshold=threshold if universal_only else None)
if counts.height and (not universal_only or counts["n_neurons"].sum() > 0):
    scope = f"universal neurons (excess > {threshold:g})" if universal_only else "all neurons"
    for model in counts["model"].unique(maintain_order=True).to_list():
        mine = counts.filter(pl.col("model") == model)
        counted = int(mine.group_by("layer").agg(pl.col("n_neurons").first())["n_neurons"].sum())
        st.markdown(f"**{model}** — labels among its {counted:,} {scope}")
        call = f"family_counts(engine, threshold={threshold:g})" if universal_only else \
            "family_counts(engine, threshold=None)"
        common.figure(charts.family_counts_chart(mine), mine, name=f"family_counts_{model}", key=f"counts-{model}",
                      query=call)
    st.caption("Every label the classify run evaluated is listed; 0 means it was tested and found nothing.")
elif universal_only:
    st.info(f"No universal neuron (excess > {threshold:g}) to count labels among: lower the threshold in the "
            "sidebar, or count among all neurons.", icon=":material/help:")
else:
    common.nothing_yet("No labels yet: run `atlas classify` after the correlation.")

if families.height == 0:
    address.write()
    address.report()
    common.nothing_yet("No families yet: run `atlas classify` after the correlation.")
    st.stop()

left, right = st.columns([3, 2])
with left:
    st.subheader("Family members by layer")
    layer_counts = common.summary(eng, "family_layer_counts")
    common.figure(charts.family_layer_chart(layer_counts), layer_counts, name="family_members_by_layer",
                  key="members", query="family_layer_counts(engine)")
with right:
    st.subheader("Families")
    label = st.selectbox("Label", ["any", *label_names], key=address.key("label"))
    shown = families if label == "any" else families.filter(families["label"] == label)
    st.dataframe(shown.drop("evidence", "run_id"), hide_index=True, width="stretch",
                 column_config={"layers": st.column_config.ListColumn("layers"),
                                "models": st.column_config.ListColumn("models")})

ids = shown["family_id"].to_list()
if not ids:
    address.write()
    address.report()
    st.stop()
names = {r["family_id"]: f"{r['family']} — {r['n_members']} members in {', '.join(r['models'] or [])}"
         for r in families.iter_rows(named=True)}
if st.session_state.get(address.key("family")) not in ids:
    st.session_state[address.key("family")] = ids[0]
family_id = st.selectbox("Members of", ids, format_func=lambda i: names.get(i, str(i)), key=address.key("family"))
address.write()
address.report()
members = queries.family_members(eng, int(family_id))
st.dataframe(common.with_links(members.drop("family_id", "family")), hide_index=True, width="stretch",
             column_config={"neuron": common.link_column(), "labels": st.column_config.ListColumn("labels"),
                            "excess": st.column_config.NumberColumn(format="%.3f")})
for row in members.head(12).iter_rows(named=True):
    common.neuron_link(row["model"], row["layer"], row["idx"])
chosen = families.filter(families["family_id"] == family_id).row(0, named=True)
stored = json.loads(chosen["evidence"]) if chosen["evidence"] else {}
st.markdown(f"**{html.escape(chosen['family'], quote=False)}**: " + html.escape(evidence.family_sentence(
    stored, list(chosen["models"] or []), chosen["n_members"], chosen["n_models"]), quote=False),
    unsafe_allow_html=True)
if stored:
    with st.expander("Raw evidence (JSON)"):
        st.json(stored)
common.downloads(members, "family_members", "families")
