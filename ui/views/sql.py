"""Read-only SQL: one query at a time, as the read-only role, with a timeout and a row cap.
Examples load into the editor with a click; the first returns rows on any correlated atlas."""

from __future__ import annotations

import streamlit as st

from atlas import queries, readonly
from atlas.errors import AtlasError
from atlas.ui import common, state

common.page_header("SQL", "Ask the atlas anything in SQL. Runs as the read-only role: one query (SELECT / WITH / "
                          "VALUES / TABLE), a timeout, and a row cap. Views are documented in docs/queries.md, and "
                          "every column has a comment (`\\d+ neuron_overview` in psql).")
eng = common.engine()
state.Address("sql").write()
if queries.is_empty(eng):
    st.info(f"The atlas is empty: queries will return no rows. {common.RUN_HINT}", icon=":material/explore:")

EXAMPLES = readonly.SQL_EXAMPLES
if "statement" not in st.session_state:
    st.session_state["statement"] = next(iter(EXAMPLES.values()))


def load(example: str) -> None:
    st.session_state["statement"] = EXAMPLES[example]


with st.form("sql"):
    statement = st.text_area("Query", height=180, key="statement")
    a, b, c = st.columns([2, 2, 6])
    row_cap = int(a.number_input("Row cap", 1, 50_000, 1000, step=100, key="row_cap"))
    timeout_s = float(b.number_input("Timeout (s)", 0.1, 60.0, 5.0, step=1.0, key="timeout"))
    submitted = st.form_submit_button("Run", type="primary", icon=":material/play_arrow:")
st.caption("Examples — click one to load it into the editor, then Run:")
row = st.container(horizontal=True)
for i, title in enumerate(EXAMPLES):
    row.button(title, key=f"example-{i}", on_click=load, args=(title,), type="tertiary", icon=":material/code:")

if submitted:
    try:
        with st.spinner("Running the query as the read-only role …", show_time=True):
            result = readonly.run_sql(common.reader_url(eng), statement, row_cap=row_cap,
                                      timeout_ms=int(timeout_s * 1000))
    except AtlasError as err:
        st.error(str(err))
        st.stop()
    note = f" — capped at {row_cap:,} rows" if result.truncated else ""
    st.caption(f"{result.frame.height:,} rows × {result.frame.width} columns in {result.seconds * 1000:.0f} ms{note}")
    if result.frame.height == 0:
        st.info("The query ran and returned no rows.", icon=":material/info:")
    st.dataframe(result.frame, hide_index=True, width="stretch")
    common.downloads(result.frame, "query", "sql")
