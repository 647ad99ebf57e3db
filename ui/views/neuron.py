"""One neuron: statistics, histogram, top examples, vocabulary effects, best partner in every other
seed (with its own examples), labels with evidence. The URL carries ?model=&layer=&idx=."""

from __future__ import annotations

import html
import json

import streamlit as st

from atlas import queries
from atlas.ui import common

common.page_header("Neuron", "Everything the atlas knows about one MLP neuron. Share the URL: it names the neuron.")
eng = common.engine()
common.require_data(eng)

models = queries.models(eng)
names = models["model"].to_list()


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


# The URL names the neuron (?model=&layer=&idx=) and always carries all three, so a copied link
# opens this neuron whatever else is in the atlas. A new URL (first load, a shared link, a link
# from another page) sets the pickers; changing a picker rewrites the URL.
url = requested = (st.query_params.get("model"), st.query_params.get("layer"), st.query_params.get("idx"))
if st.session_state.get("_neuron_url") != url or "n_model" not in st.session_state:
    st.session_state["_neuron_url"] = url
    if url[0] is None:  # no neuron named: start at the most universal one
        top = queries.universal_neurons(eng, threshold=-1.0, limit=1)
        url = (top["model"][0], str(top["layer"][0]), str(top["idx"][0])) if top.height else (names[0], "0", "0")
    if url[0] not in names:
        st.warning(f"No model named {url[0]!r} in the atlas — showing {names[0]}.")
    st.session_state["n_model"] = url[0] if url[0] in names else names[0]
    st.session_state["n_layer"] = _int(url[1]) or 0
    st.session_state["n_idx"] = _int(url[2]) or 0

pick = st.columns([3, 1, 1, 2])
model = pick[0].selectbox("Model", names, key="n_model")
shape = models.filter(models["model"] == model).row(0, named=True)
n_layers, d_mlp = int(shape["n_layers"]), int(shape["d_mlp"])
for key, top in (("n_layer", n_layers - 1), ("n_idx", d_mlp - 1)):  # keep inside this model's shape
    st.session_state[key] = min(max(int(st.session_state.get(key) or 0), 0), top)
layer = int(pick[1].number_input("Layer", min_value=0, max_value=n_layers - 1, step=1, key="n_layer"))
idx = int(pick[2].number_input("Neuron", min_value=0, max_value=d_mlp - 1, step=1, key="n_idx"))
before = int(pick[3].slider("Context tokens before the activating token", 1, 48, 12, key="context"))
after = max(2, before // 3)
shown_url = (model, str(layer), str(idx))
if shown_url != requested:
    st.query_params.update({"model": model, "layer": str(layer), "idx": str(idx)})
    st.session_state["_neuron_url"] = shown_url

page = queries.neuron_page(eng, model, layer, idx, before=before, after=after)
record = page["neuron"]
if record.height == 0:
    st.warning(f"{model} has no neuron L{layer} N{idx} in the atlas.")
    st.stop()
r = record.row(0, named=True)

universal = r["excess"] is not None and r["excess"] > 0.5
title = common.neuron_label(model, layer, idx)
st.markdown(f"### {html.escape(title)} " + ("<span class='badge' style='background:#fee2e2;color:#991b1b;border-color:#fecaca'>"
                                "universal</span>" if universal else "") + common.badges(r["labels"]),
            unsafe_allow_html=True)
st.caption(f"cohort {r['cohort'] or '—'} · seed {r['seed_label'] or '—'} · dataset {r['dataset'] or '—'} · "
           f"{(r['n_tokens'] or 0):,} tokens")


def fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


m = st.columns(8)
m[0].metric("excess corr", fmt(r["excess"]), help="mean over partners of (best rho − rotation baseline)")
m[1].metric("mean max-corr", fmt(r["mean_corr"]))
m[2].metric("mean baseline", fmt(r["mean_baseline"]))
m[3].metric("firing rate", fmt(r["act_frequency"], ".1%") if r["act_frequency"] is not None else "—")
m[4].metric("kurtosis", fmt(r["kurtosis"], ".2f"))
m[5].metric("skew", fmt(r["skew"], ".2f"))
m[6].metric("‖w_out‖", fmt(r["w_out_norm"], ".2f"))
m[7].metric("input bias", fmt(r["input_bias"], ".2f"))
if r["excess"] is None and page["partners"].height and page["partners"]["max_corr"].drop_nulls().len():
    best = page["partners"].sort("max_corr", descending=True, nulls_last=True).row(0, named=True)
    st.caption(f"Excess correlation is measured for the neurons of a cohort's reference model. This neuron's "
               f"best match there: {best['other_model']} L{best['best_layer']} N{best['best_idx']}, "
               f"rho {best['max_corr']:.3f} (rotation baseline {fmt(best['baseline_max'])}).")

left, right = st.columns(2)
with left:
    st.subheader("Activation histogram")
    if page["histogram"].height and page["histogram"]["count"].sum() > 0:
        st.altair_chart(common.histogram_chart(page["histogram"]), width="stretch")
        st.caption("hook_pre over the dataset (log count); red: positive pre-activation.")
    else:
        common.nothing_yet("No activation statistics for this model yet (`atlas ingest`).")
with right:
    st.subheader("Vocabulary effects")
    effects = page["vocab_effects"]
    if effects.height:
        up, down = st.columns(2)
        up.caption("boosts (top W_U·w_out)")
        up.altair_chart(common.vocab_chart(effects.filter(effects["direction"] == "top")), width="stretch")
        down.caption("suppresses (bottom)")
        down.altair_chart(common.vocab_chart(effects.filter(effects["direction"] == "bottom")), width="stretch")
        st.caption(f"vocab kurtosis {fmt(r['vocab_kurtosis'], '.1f')} · skew {fmt(r['vocab_skew'], '.2f')} "
                   "(prediction neurons: kurtosis > 10, skew > 0; suppression: skew < 0)")
    else:
        common.nothing_yet("No weight statistics for this model yet.")

st.subheader("Top activating examples")
examples = page["top_examples"]
if examples.height:
    vmax = max(abs(v) for v in examples["value"])
    st.markdown(common.legend_html(vmax), unsafe_allow_html=True)
    st.markdown(common.examples_html(examples, vmax), unsafe_allow_html=True)
else:
    common.nothing_yet("No top examples stored for this neuron.")

st.subheader("Best partner in every other seed")
partners = page["partners"]
if partners.height:
    cols = st.columns(len(partners))
    pex = page["partner_examples"]
    for col, p in zip(cols, partners.iter_rows(named=True)):
        with col, st.container(border=True):
            if p["best_layer"] is None:
                st.markdown(f"**{p['other_model']}** — no partner (dead neuron: correlation undefined)")
                continue
            st.page_link("views/neuron.py", label=common.neuron_label(p["other_model"], p["best_layer"], p["best_idx"]),
                         icon=":material/link:", query_params={"model": p["other_model"], "layer": p["best_layer"], "idx": p["best_idx"]})
            a, b = st.columns(2)
            a.metric("rho", fmt(p["max_corr"]))
            b.metric("baseline", fmt(p["baseline_max"]))
            if pex.height:
                mine = pex.filter(pex["other_model"] == p["other_model"])
                if mine.height:
                    st.markdown(common.examples_html(mine), unsafe_allow_html=True)
    edges = page["edges"]
    if edges.height:
        with st.expander(f"Top-{int(edges['rank'].max())} correlated neurons per partner"):
            table = common.with_links(edges.rename({"partner_model": "model", "partner_layer": "layer",
                                                    "partner_idx": "idx"}))
            st.dataframe(table, hide_index=True, width="stretch", column_config={"neuron": common.link_column()})
else:
    common.nothing_yet("No cross-seed correlation covers this neuron yet (`atlas correlate`).")

lab, fam = st.columns(2)
with lab:
    st.subheader("Labels and evidence")
    labels = page["labels"]
    if labels.height:
        for row in labels.iter_rows(named=True):
            st.markdown(f"{common.badges([row['label']])} score **{row['score']:.3f}**", unsafe_allow_html=True)
            st.json(json.loads(row["evidence"]) if row["evidence"] else {}, expanded=True)
    else:
        st.caption("No family or role label.")
    if page["features"].height:
        st.caption("Best explaining token features (variance reduction)")
        st.dataframe(page["features"], hide_index=True, width="stretch",
                     column_config={"variance_reduction": st.column_config.ProgressColumn(
                         "variance reduction", min_value=0.0, max_value=1.0, format="%.3f")})
with fam:
    st.subheader("Families")
    if page["families"].height:
        for row in page["families"].iter_rows(named=True):
            st.page_link("views/families.py", label=f"{row['family']} — {row['n_members']} members in "
                         f"{row['n_models']} models", icon=":material/groups:", query_params={"family": str(row["family_id"])})
    else:
        st.caption("Not in a family.")
    st.subheader("Tokens it fires on")
    if page["token_activations"].height:
        st.dataframe(page["token_activations"].with_columns(common.quoted_token_expr("token")), hide_index=True, width="stretch")
    else:
        st.caption("No per-token activations stored.")

with st.expander("All statistics"):
    scalars = {k: v for k, v in r.items() if not isinstance(v, (list,)) and k not in ("histogram_edges",)}
    st.json(scalars, expanded=True)
