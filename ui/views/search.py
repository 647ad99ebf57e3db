"""Search by token: which neurons fire on a vocabulary token (mean activation when it is current)?"""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common

common.page_header("Search by token", "Which neurons fire on ' the'? Neurons that keep the token among their top "
                                      "tokens, by mean hook_post when it is the current token.")
eng = common.engine()
common.require_data(eng)

a, b, c = st.columns([3, 2, 2])
text = a.text_input("Token text", key="q", bind="query-params", placeholder="the")
match = b.radio("Match", ["word", "exact", "contains"], horizontal=True, key="match",
                help="word: trimmed and case-insensitive (' The' = 'the'); exact: the stored text, leading space "
                     "included; contains: substring")
models = queries.models(eng)
model = c.selectbox("Model", ["all", *models["model"].to_list()], key="search_model")

if not text:
    st.caption("Type a token, e.g. `the`, `\\n`-free words like `king`, or punctuation like `.`")
    st.stop()

tokens = queries.search_tokens(eng, text, match=match, limit=30)
if tokens.height == 0:
    st.info(f"No vocabulary token matches {text!r} ({match}). Try `contains`.")
    st.stop()
st.caption("Matching tokens: " + ", ".join(repr(common.token_text(t)) for t in tokens["token"].to_list()[:30]))
neurons = queries.neurons_for_token(eng, text, match=match, model=None if model == "all" else model, limit=200)
if neurons.height == 0:
    common.nothing_yet("No neuron keeps these tokens among its top tokens (or no statistics are ingested).")
    st.stop()
shown = common.with_links(neurons.with_columns(common.quoted_token_expr("token")))
st.dataframe(shown, hide_index=True, width="stretch",
             column_config={"neuron": common.link_column(), "labels": st.column_config.ListColumn("labels"),
                            "mean_act": st.column_config.NumberColumn("mean act", format="%.3f"),
                            "max_act": st.column_config.NumberColumn("max act", format="%.3f"),
                            "excess": st.column_config.NumberColumn(format="%.3f")})
common.downloads(neurons, "neurons_for_token", "search")
