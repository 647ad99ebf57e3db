"""Search by token: which neurons fire on a vocabulary token (mean activation when it is current)?"""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common, state
from atlas.ui.tokens import quoted_token_expr, token_text

common.page_header("Search by token", "Which neurons fire on ' the'? Neurons that keep the token among their top "
                                      "tokens, by mean hook_post when it is the current token.")
eng = common.engine()
common.require_data(eng)

models = queries.models(eng)
model_names = ["all", *models["model"].to_list()]
address = state.Address("search", state.Param("q", "", str, "a token"), state.choice("match", ["word", "exact", "contains"]),
                        state.choice("within", model_names, expected="a model of the atlas"))
a, b, c = st.columns([3, 2, 2])
text = a.text_input("Token text", key=address.key("q"), placeholder="the")
match = b.radio("Match", ["word", "exact", "contains"], horizontal=True, key=address.key("match"),
                help="word: trimmed and case-insensitive (' The' = 'the'); exact: the stored text, leading space "
                     "included; contains: substring")
model = c.selectbox("Model", model_names, key=address.key("within"))
address.write()
address.report()

if not text:
    st.caption("Type a token, e.g. `the`, `\\n`-free words like `king`, or punctuation like `.`")
    st.stop()

echo = repr(state.shorten(text))
tokens = queries.search_tokens(eng, text, match=match, limit=30)
if tokens.height == 0:
    st.info(f"No vocabulary token matches {echo} ({match})."
            + (" Try `contains`." if match != "contains" else ""))
    st.stop()
st.caption("Matching tokens: " + ", ".join(repr(token_text(t)) for t in tokens["token"].to_list()[:30]))
neurons = queries.neurons_for_token(eng, text, match=match, model=None if model == "all" else model, limit=200)
if neurons.height == 0:
    if queries.runs(eng, kind="stats", status="done", limit=1).height == 0:
        common.nothing_yet("No activation statistics are ingested yet, so no neuron is known to fire on a token.")
    else:
        st.info(f"No neuron{' of ' + model if model != 'all' else ''} keeps {echo} among the tokens it fires on "
                "most (each neuron keeps its top tokens by mean activation). Try `contains`, or another model.")
    st.stop()
shown = common.with_links(neurons.with_columns(quoted_token_expr("token")))
st.dataframe(shown, hide_index=True, width="stretch",
             column_config={"neuron": common.link_column(), "labels": st.column_config.ListColumn("labels"),
                            "mean_act": st.column_config.NumberColumn("mean act", format="%.3f"),
                            "max_act": st.column_config.NumberColumn("max act", format="%.3f"),
                            "excess": st.column_config.NumberColumn(format="%.3f")})
common.downloads(neurons, "neurons_for_token", "search")
