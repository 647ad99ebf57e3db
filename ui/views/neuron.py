"""One neuron, as researchers read neurons on Neuronpedia: statistics; examples with every token
coloured by its activation (the top ones, samples across the quantiles of its firing, the most
negative ones); its best partner in every other seed on the same text; the tokens its output
boosts and suppresses (chart and table); its labels with their evidence in words; its families.
The URL carries ``?model=&layer=&idx=`` (and ``&context=``); the browser tab shows the neuron's name."""

from __future__ import annotations

import html
import json

import polars as pl
import streamlit as st

from atlas import queries
from atlas.ui import charts, common, evidence, state, tokens

common.page_header("Neuron", "Everything the atlas knows about one MLP neuron. Share the URL: it names the neuron.")
eng = common.engine()
common.require_data(eng)

models = queries.models(eng)
names = models["model"].to_list()
model_names = dict(zip(models["model_id"].to_list(), names))


def _from_address(address: state.Address) -> tuple[str, int, int]:
    """The neuron the URL names (?model=&layer=&idx=); a value it cannot show is noted, never replaced silently."""
    model, layer_raw, idx_raw = (st.query_params.get(k) for k in ("model", "layer", "idx"))
    if model is None:  # no neuron named: start at the most universal one
        top = queries.universal_neurons(eng, threshold=-1.0, limit=1)
        return (top["model"][0], int(top["layer"][0]), int(top["idx"][0])) if top.height else (names[0], 0, 0)
    if model not in names:
        address.note("model", model, "a model of the atlas", names[0])
        model = names[0]
    shape = models.filter(models["model"] == model).row(0, named=True)
    coords = []
    for key, raw, size, unit, shown in (("layer", layer_raw, shape["n_layers"], "layers", "layer {}"),
                                        ("idx", idx_raw, shape["d_mlp"], "neurons per layer", "N{}")):
        value = state.integer(raw)
        if raw is not None and value is None:
            address.note(key, raw, f"a {'layer' if key == 'layer' else 'neuron'} number", shown.format(0))
            value = 0
        elif value is not None and value >= size:
            address.note(key, value, f"in range ({model} has {size} {unit}: 0–{size - 1})", shown.format(size - 1))
            value = size - 1
        coords.append(value or 0)
    return model, coords[0], coords[1]


# The URL names the neuron (?model=&layer=&idx=). A new URL (first load, a shared link, a link from
# another page or a partner, Back) sets the pickers; changing a picker shows another neuron; either
# way the address is then set to the neuron shown, so reload, share and Back all give that neuron.
address = state.Address("neuron", state.number("context", 12, 1, 24, integer=True))
url = (st.query_params.get("model"), st.query_params.get("layer"), st.query_params.get("idx"))
if st.session_state.get("_neuron_url") != url or "n_model" not in st.session_state:
    st.session_state["n_model"], st.session_state["n_layer"], st.session_state["n_idx"] = _from_address(address)

pick = st.columns([3, 1, 1, 2])
model = pick[0].selectbox("Model", names, key="n_model")
shape = models.filter(models["model"] == model).row(0, named=True)
n_layers, d_mlp = int(shape["n_layers"]), int(shape["d_mlp"])
for key, top in (("n_layer", n_layers - 1), ("n_idx", d_mlp - 1)):  # another model picked: keep inside its shape
    st.session_state[key] = min(max(int(st.session_state.get(key) or 0), 0), top)
layer = int(pick[1].number_input("Layer", min_value=0, max_value=n_layers - 1, step=1, key="n_layer"))
idx = int(pick[2].number_input("Neuron", min_value=0, max_value=d_mlp - 1, step=1, key="n_idx"))
before = int(pick[3].slider("Context tokens before the activating token", 1, 24, key=address.key("context")))
after = max(2, before // 3)
shown = (model, str(layer), str(idx))
address.write(first={"model": model, "layer": str(layer), "idx": str(idx)})  # a new neuron: a new history entry
st.session_state["_neuron_url"] = shown
address.report()
title = common.neuron_label(model, layer, idx)
st.set_page_config(page_title=f"{title} — Neuron Atlas")

page = queries.neuron_page(eng, model, layer, idx, before=before, after=after)
record = page["neuron"]
if record.height == 0:
    st.warning(f"{model} has no neuron L{layer} N{idx} in the atlas.")
    st.stop()
r = record.row(0, named=True)

threshold = state.threshold()
universal = r["excess"] is not None and r["excess"] > threshold
st.markdown(f"### {html.escape(title)} " + (common.badges([f"universal (excess > {threshold:g})"], "universal")
                                              if universal else "") + common.badges(r["labels"]),
            unsafe_allow_html=True)
st.caption(f"cohort {r['cohort'] or '—'} · seed {r['seed_label'] or '—'} · dataset {r['dataset'] or '—'} · "
           f"{(r['n_tokens'] or 0):,} tokens")


def fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


m = st.columns(8)
m[0].metric("excess corr", fmt(r["excess"]), help="mean over partners of (best rho − rotation baseline)")
m[1].metric("mean best rho", fmt(r["mean_corr"]))
m[2].metric("mean baseline", fmt(r["mean_baseline"]))
m[3].metric("firing rate", fmt(r["act_frequency"], ".1%") if r["act_frequency"] is not None else "—")
m[4].metric("kurtosis", fmt(r["kurtosis"], ".2f"))
m[5].metric("skew", fmt(r["skew"], ".2f"))
m[6].metric("‖w_out‖", fmt(r["w_out_norm"], ".2f"))
m[7].metric("input bias", fmt(r["input_bias"], ".2f"))
partners = page["partners"]
if r["excess"] is None and partners.height and partners["max_corr"].drop_nulls().len():
    best = partners.sort("max_corr", descending=True, nulls_last=True).row(0, named=True)
    st.caption(f"Excess correlation is measured for the neurons of a cohort's reference model. This neuron's best "
               f"match there: {best['other_model']} L{best['best_layer']} N{best['best_idx']}, rho "
               f"{best['max_corr']:.3f} (rotation baseline {fmt(best['baseline_max'])}).")

# ---------------------------------------------------------------- examples
st.subheader("Examples")
top, quantile, bottom = page["top_examples"], page["quantile_examples"], page["bottom_examples"]
vmax = tokens.vmax_of(top, bottom)
st.markdown(tokens.legend_html(vmax), unsafe_allow_html=True)
windows = any(sum(a is not None for a in (acts or [])) > 1 for acts in top["activations"].to_list()) \
    if top.height else True
if not windows:
    st.caption("Only the example tokens themselves are coloured: `atlas examples` stores every token's activation.")
t_top, t_quantile, t_bottom = st.tabs([f"Top activations ({top.height})", f"Across quantiles ({quantile.height})",
                                       f"Most negative ({bottom.height})"])
with t_top:
    if top.height:
        st.markdown(tokens.examples_html(top, vmax), unsafe_allow_html=True)
    else:
        common.nothing_yet("No top examples stored for this neuron.")
with t_quantile:
    if quantile.height:
        st.caption("Sampled evenly across the quantiles of the tokens where the neuron fires (hook_post > 0), lowest "
                   "first: what typical activations look like, not only the strongest. The number: the quantile.")
        st.markdown(tokens.examples_html(quantile, vmax, value_label=lambda e: f"q{e['quantile']:.2f} · "
                                         f"{e['value']:.2f}"), unsafe_allow_html=True)
    else:
        st.caption("No quantile examples stored (statistics ingested before they existed, or the neuron never fires).")
with t_bottom:
    if bottom.height:
        st.caption("The tokens where its activation is most negative.")
        st.markdown(tokens.examples_html(bottom, vmax), unsafe_allow_html=True)
    else:
        st.caption("No most-negative examples stored.")

# ---------------------------------------------------------------- partners
st.subheader("Best partner in every other seed")
shared, own = page["partner_examples"], page["partner_top_examples"]
if partners.height:
    if shared.height:
        st.caption("Each partner's activation on this neuron's own top examples: the same text, coloured by the "
                   "partner. The numbers: this neuron's activation → the partner's.")
    for pair in [partners[i:i + 2] for i in range(0, partners.height, 2)]:
        for col, p in zip(st.columns(2), pair.iter_rows(named=True)):
            with col, st.container(border=True):
                if p["best_layer"] is None:
                    st.markdown(f"**{p['other_model']}** — no partner (dead neuron: correlation undefined)")
                    continue
                common.neuron_link(p["other_model"], p["best_layer"], p["best_idx"])
                a, b, c = st.columns(3)
                a.metric("rho", fmt(p["max_corr"]))
                b.metric("baseline", fmt(p["baseline_max"]))
                c.metric("excess", fmt(p["excess"]))
                mine = shared.filter(pl.col("other_model") == p["other_model"]) if shared.height else shared
                if mine.height:
                    st.markdown(tokens.examples_html(mine, tokens.vmax_of(mine), value_label=lambda e: (
                        f"{fmt(e['reference_value'], '.2f')} → {fmt(e['value'], '.2f')}")), unsafe_allow_html=True)
                elif own.height and (own["other_model"] == p["other_model"]).any():
                    st.caption("Its own top examples (no activations stored on this neuron's examples):")
                    st.markdown(tokens.examples_html(own.filter(pl.col("other_model") == p["other_model"])),
                                unsafe_allow_html=True)
    edges = page["edges"]
    if edges.height:
        with st.expander(f"Top-{int(edges['rank'].max())} correlated neurons per partner"):
            table = common.with_links(edges.rename({"partner_model": "model", "partner_layer": "layer",
                                                    "partner_idx": "idx"}))
            st.dataframe(table, hide_index=True, width="stretch", column_config={"neuron": common.link_column()})
else:
    common.nothing_yet("No cross-seed correlation covers this neuron yet (`atlas correlate`).")

# ---------------------------------------------------------------- activations and vocabulary
left, right = st.columns(2)
with left:
    st.subheader("Activation histogram")
    if page["histogram"].height and page["histogram"]["count"].sum() > 0:
        st.altair_chart(charts.histogram_chart(page["histogram"]), width="stretch")
        st.caption("hook_pre over the dataset (log count); red: positive pre-activation.")
    else:
        common.nothing_yet("No activation statistics for this model yet (`atlas ingest`).")
with right:
    st.subheader("Tokens it fires on")
    if page["token_activations"].height:
        st.dataframe(page["token_activations"].with_columns(tokens.quoted_token_expr("token")), hide_index=True,
                     width="stretch", height=260)
        st.caption("Mean and max hook_post when the token is the current one.")
    else:
        st.caption("No per-token activations stored.")

st.subheader("Vocabulary effects: W_U · w_out")
effects = page["vocab_effects"]
if effects.height:
    up, down, table = st.columns([2, 2, 3])
    up.caption("boosts (top logits)")
    up.altair_chart(charts.vocab_chart(effects.filter(effects["direction"] == "top")), width="stretch")
    down.caption("suppresses (bottom logits)")
    down.altair_chart(charts.vocab_chart(effects.filter(effects["direction"] == "bottom")), width="stretch")
    table.caption("every stored token, with its id")
    table.dataframe(tokens.vocab_table(effects), hide_index=True, width="stretch", height=430,
                    column_config={"value": st.column_config.NumberColumn("W_U·w_out", format="%.3f")})
    st.caption(f"vocab kurtosis {fmt(r['vocab_kurtosis'], '.1f')} · skew {fmt(r['vocab_skew'], '.2f')} "
               "(prediction neurons: kurtosis > 10, skew > 0; suppression: skew < 0)")
else:
    common.nothing_yet("No weight statistics for this model yet.")

# ---------------------------------------------------------------- labels and families
lab, fam = st.columns(2)
with lab:
    st.subheader("Labels and evidence")
    labels = page["labels"]
    if labels.height:
        for row in labels.iter_rows(named=True):
            found = json.loads(row["evidence"]) if row["evidence"] else {}
            sentence = html.escape(evidence.label_sentence(row["label"], row["score"], found), quote=False)
            st.markdown(f"{common.badges([row['label']])} {sentence}", unsafe_allow_html=True)
            if found.get("rule"):
                st.caption(f"Rule: {found['rule']}")
        with st.expander("Raw evidence (JSON)"):
            st.json({row["label"]: json.loads(row["evidence"]) if row["evidence"] else {}
                     for row in labels.iter_rows(named=True)})
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
            common.page_link("views/families.py", f"{row['family']} — {row['n_members']} members in "
                             f"{row['n_models']} models", icon=":material/groups:", family=row["family_id"])
    else:
        st.caption("Not in a family.")

with st.expander("All statistics"):
    scalars = {k: v for k, v in r.items() if not isinstance(v, (list, pl.Series)) and k not in ("histogram_edges",)}
    st.json(scalars, expanded=True)
