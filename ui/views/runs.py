"""Runs and their progress, refreshed live while something is running."""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common

common.page_header("Runs", "Every computation is a run: kind, subject, status, progress, timings, error.")
eng = common.engine()

live = st.toggle("Live refresh (every 2 s)", value=True, key="live")


@st.fragment(run_every=2.0 if live else None)
def runs_panel() -> None:
    runs = queries.runs(eng, limit=500)
    if runs.height == 0:
        common.nothing_yet("No runs yet.")
        return
    counts = {s: int((runs["status"] == s).sum()) for s in ("running", "queued", "done", "failed")}
    cols = st.columns(4)
    for col, (status, n) in zip(cols, counts.items()):
        col.metric(status, n)
    active = runs.filter(runs["status"].is_in(["running", "queued"]))
    for run in active.iter_rows(named=True):
        total = f"{run['tokens_done']:,} / {run['tokens_total']:,} tokens" if run["tokens_total"] else \
            f"{run['tokens_done']:,} tokens"
        st.progress(float(run["progress"] or 0.0),
                    text=f"run {run['run_id']} · {run['kind']} · {run['model'] or run['cohort'] or ''} · {total}")
    failed = runs.filter(runs["status"] == "failed")
    for run in failed.head(5).iter_rows(named=True):
        st.error(f"run {run['run_id']} ({run['kind']}, {run['model'] or run['cohort'] or '—'}) failed: {run['error']}")
    st.dataframe(runs.drop("code_version", "created_at"), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                                "seconds": st.column_config.NumberColumn(format="%.1f")})


runs_panel()
