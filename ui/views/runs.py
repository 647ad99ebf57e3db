"""Runs and their progress, refreshed live while something is running."""

from __future__ import annotations

import streamlit as st

from atlas import queries
from atlas.ui import common, state

common.page_header("Runs", "Every computation is a run: kind, subject, state, progress, timings, error. "
                   "Scheduled steps wait in the queue until a worker takes them.")
eng = common.engine()

address = state.Address("runs", state.flag("live", True))
live = st.toggle("Live refresh (every 2 s)", key=address.key("live"))
address.write()
address.report()


@st.fragment(run_every=2.0 if live else None)
def runs_panel() -> None:
    runs = queries.runs(eng, limit=500)
    if runs.height == 0:
        common.nothing_yet("No runs yet.")
        return
    counts = {s: int((runs["state"] == s).sum()) for s in ("running", "stale", "queued", "done", "failed")}
    cols = st.columns(len(counts))
    for col, (run_state, n) in zip(cols, counts.items()):
        col.metric(run_state, n, help="stale: the run's process died; rerunning the same step resumes it from its "
                                  "checkpoint (workers do it by themselves)" if run_state == "stale" else None)
    queue_panel()
    active = runs.filter(runs["state"].is_in(["running", "stale", "queued"]))
    for run in active.iter_rows(named=True):
        total = f"{run['tokens_done']:,} / {run['tokens_total']:,} tokens" if run["tokens_total"] else \
            f"{run['tokens_done']:,} tokens"
        st.progress(float(run["progress"] or 0.0),
                    text=f"run {run['run_id']} · {run['kind']} · {run['model'] or run['cohort'] or ''} · {total}"
                         + (" · stale (its process stopped)" if run["state"] == "stale" else ""))
    for run in runs.filter(runs["state"] == "stale").head(5).iter_rows(named=True):
        st.warning(f"run {run['run_id']} ({run['kind']}, {run['model'] or run['cohort'] or '—'}) is stale: its process "
                   "stopped; a worker resumes it from its checkpoint (or rerun the same command)")
    failed = runs.filter(runs["state"] == "failed")
    for run in failed.head(5).iter_rows(named=True):
        st.error(f"run {run['run_id']} ({run['kind']}, {run['model'] or run['cohort'] or '—'}) failed: {run['error']}")
    st.dataframe(runs.drop("code_version", "created_at"), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                                "seconds": st.column_config.NumberColumn(format="%.1f")})


def queue_panel() -> None:
    """Scheduled steps that are pending, running, stale (worker silent) or failed."""
    jobs = queries.queue_jobs(eng, pending_only=True, limit=200)
    if jobs.height == 0:
        return
    st.subheader("Queue")
    states = jobs.group_by("state").len().sort("state")
    st.caption(" · ".join(f"{n} {state}" for state, n in states.iter_rows()) +
               " — workers: `atlas worker`; the same list: `atlas queue`")
    st.dataframe(jobs, hide_index=True, width="stretch")


runs_panel()
