"""Read-only SQL: one query at a time, as the read-only role, with a timeout and a row cap."""

from __future__ import annotations

import streamlit as st

from atlas import queries, readonly
from atlas.errors import AtlasError
from atlas.ui import common, state

common.page_header("SQL", "Ask the atlas anything in SQL. Runs as the read-only role: one query (SELECT / WITH / "
                          "VALUES / TABLE), a timeout, and a row cap. Views are documented in docs/queries.md.")
eng = common.engine()
state.Address("sql").write()
if queries.is_empty(eng):
    st.info(f"The atlas is empty: queries will return no rows. {common.RUN_HINT}", icon=":material/explore:")

with st.expander("Examples"):
    for title, example in readonly.SQL_EXAMPLES.items():
        st.markdown(f"**{title}**")
        st.code(example, language="sql")

with st.form("sql"):
    statement = st.text_area("Query", value=next(iter(readonly.SQL_EXAMPLES.values())), height=160, key="statement")
    a, b, c = st.columns([2, 2, 6])
    row_cap = int(a.number_input("Row cap", 1, 50_000, 1000, step=100, key="row_cap"))
    timeout_s = float(b.number_input("Timeout (s)", 0.1, 60.0, 5.0, step=1.0, key="timeout"))
    submitted = st.form_submit_button("Run", type="primary")

if submitted:
    try:
        result = readonly.run_sql(common.reader_url(eng), statement, row_cap=row_cap, timeout_ms=int(timeout_s * 1000))
    except AtlasError as err:
        st.error(str(err))
        st.stop()
    note = f" — capped at {row_cap:,} rows" if result.truncated else ""
    st.caption(f"{result.frame.height:,} rows × {result.frame.width} columns in {result.seconds * 1000:.0f} ms{note}")
    st.dataframe(result.frame, hide_index=True, width="stretch")
    common.downloads(result.frame, "query", "sql")
