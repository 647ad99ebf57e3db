"""Neuron Atlas UI: ``atlas ui`` runs ``streamlit run ui/app.py`` as the read-only role.

Pages (ui/views/, URL paths in brackets; not named pages/, which would switch Streamlit to its
file-based navigation): overview [/], universal neurons [/universal], neuron [/neuron,
with ?model=&layer=&idx=], families [/families], search by token [/search], runs [/runs],
SQL [/sql]. Every page reads through ``atlas.queries`` only.

Every filter is in the URL (``atlas.ui.state``). The universality threshold is one slider in the
sidebar of every page; the sidebar's page links carry it (``?threshold=``) from page to page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from atlas.ui import state

HERE = Path(__file__).parent

st.set_page_config(page_title="Neuron Atlas", page_icon="🧠", layout="wide")

PAGES = [
    st.Page(HERE / "views" / "overview.py", title="Overview", icon=":material/home:", url_path="overview", default=True),
    st.Page(HERE / "views" / "universal.py", title="Universal neurons", icon=":material/hub:", url_path="universal"),
    st.Page(HERE / "views" / "training.py", title="Over training", icon=":material/timeline:", url_path="training"),
    st.Page(HERE / "views" / "neuron.py", title="Neuron", icon=":material/psychology:", url_path="neuron"),
    st.Page(HERE / "views" / "families.py", title="Families", icon=":material/groups:", url_path="families"),
    st.Page(HERE / "views" / "search.py", title="Search by token", icon=":material/search:", url_path="search"),
    st.Page(HERE / "views" / "runs.py", title="Runs", icon=":material/schedule:", url_path="runs"),
    st.Page(HERE / "views" / "sql.py", title="SQL (read-only)", icon=":material/database:", url_path="sql"),
]

# The sidebar's own links instead of Streamlit's menu: they carry the shared threshold, so a page
# opens with the address it shows (the menu would open it bare, then the page would add it).
navigation = st.navigation(PAGES, position="hidden")
menu = st.sidebar.container()
state.threshold_control()  # one threshold for every page, in the URL (?threshold=)
with menu:
    for page in PAGES:
        st.page_link(page, query_params=state.shared_params())
with st.sidebar:
    st.caption("Universal neurons across training seeds — after Gurnee et al. (2024). "
               "Read-only view of the atlas database.")
navigation.run()
