"""Shared pieces of the Streamlit pages: the read-only engine, cached summaries, empty-atlas notices,
neuron links, figures with their data and downloads, and the page header.

No SQL here: every question goes through ``atlas.queries`` (and the SQL page through
``atlas.readonly.run_sql``). Tokens and examples: ``atlas.ui.tokens``; charts: ``atlas.ui.charts``;
the URL's state: ``atlas.ui.state``.
"""

from __future__ import annotations

import html
import os
from typing import Any
from urllib.parse import urlencode

import polars as pl
import streamlit as st
from sqlalchemy.engine import Engine

from atlas import export, queries, readonly
from atlas.errors import AtlasError
from atlas.ui import state
from atlas.ui.tokens import CSS

RUN_HINT = ("Run **`make demo`** to train the demo cohort and fill the atlas, or ingest your own models: "
            "`atlas ingest …`, `atlas correlate …`, `atlas classify …` (see the README).")


@st.cache_resource(show_spinner=False)
def _reader_engine(reader_url: str | None, database_url: str | None) -> Engine:
    # database_url is part of the cache key: another atlas, another engine
    return readonly.reader_engine(reader_url)


def engine() -> Engine:
    """The read-only engine (the role ``atlas ui`` created); stops the page with advice on failure."""
    try:
        return _reader_engine(os.environ.get("ATLAS_READER_URL") or None, os.environ.get("ATLAS_DATABASE_URL") or None)
    except AtlasError as err:
        st.error(f"Cannot open the atlas: {err}")
        st.info(RUN_HINT)
        st.stop()


@st.cache_data(ttl=900, show_spinner="Summarising the atlas …", max_entries=256)
def _summary(name: str, database: str, version: str, kwargs: tuple) -> pl.DataFrame:
    return getattr(queries, name)(engine(), **dict(kwargs))


def summary(eng: Engine, name: str, **kwargs: Any) -> pl.DataFrame:
    """``queries.<name>(eng, **kwargs)``, cached until a run finishes (``queries.data_version``).

    For the whole-atlas aggregates of the overview and figures, which scan every neuron (seconds on
    an atlas of millions of neurons) but change only when a run is published.
    """
    return _summary(name, reader_url(eng), queries.data_version(eng), tuple(sorted(kwargs.items())))


def reader_url(eng: Engine) -> str:
    return eng.url.render_as_string(hide_password=False)


def require_data(eng: Engine, what: str = "") -> None:
    """On an empty atlas, say so and what to run, then stop the page."""
    if queries.is_empty(eng):
        st.info(f"The atlas is empty{(' — ' + what) if what else ''}. {RUN_HINT}", icon=":material/explore:")
        st.stop()


def nothing_yet(message: str) -> None:
    """A part of the page has no data yet: say what is missing and how to compute it."""
    st.info(f"{message} {RUN_HINT}", icon=":material/explore:")


# ---------------------------------------------------------------- links

def neuron_label(model: str, layer: int, idx: int) -> str:
    return f"{model} · L{layer} · N{idx}"


def neuron_params(model: str, layer: int, idx: int) -> dict[str, str]:
    """The URL parameters of a neuron page: the neuron, then the shared threshold when it is not the paper's."""
    return {"model": str(model), "layer": str(int(layer)), "idx": str(int(idx))} | state.shared_params()


def neuron_url(model: str, layer: int, idx: int) -> str:
    """Relative link to a neuron's page; shareable (the page reads model/layer/idx from the URL)."""
    return "neuron?" + urlencode(neuron_params(model, layer, idx))


def neuron_link(model: str, layer: int, idx: int, *, prefix: str = "", icon: str = ":material/link:") -> None:
    """A link to a neuron's page, in this tab: the address then names that neuron, and Back returns."""
    st.page_link("views/neuron.py", label=f"{prefix}{neuron_label(model, layer, idx)}", icon=icon,
                 query_params=neuron_params(model, layer, idx))


def page_link(page: str, label: str, *, icon: str | None = None, **params: Any) -> None:
    """A link to another page of the atlas with its URL parameters (and the shared threshold)."""
    st.page_link(page, label=label, icon=icon,
                 query_params=state.shared_params() | {k: str(v) for k, v in params.items() if v is not None})


def with_links(frame: pl.DataFrame, model_col: str = "model", layer_col: str = "layer", idx_col: str = "idx",
               name: str = "neuron") -> pl.DataFrame:
    """Prepend a column of neuron-page links (for ``st.column_config.LinkColumn``)."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias(name)).select(name, *frame.columns)
    links = [neuron_url(m, l, i) for m, l, i in zip(frame[model_col], frame[layer_col], frame[idx_col])]
    return frame.with_columns(pl.Series(name, links, dtype=pl.String)).select(name, *frame.columns)


def link_column(label: str = "neuron") -> st.column_config.LinkColumn:
    return st.column_config.LinkColumn(label, display_text="open ↗", help="Open the neuron page in a new tab",
                                       width="small")


# ---------------------------------------------------------------- data out

def downloads(frame: pl.DataFrame, name: str, key: str) -> None:
    """CSV and Parquet download buttons for a result."""
    if frame.height == 0:
        return
    row = st.container(horizontal=True)
    row.download_button("⬇ CSV", export.to_bytes(frame, "csv"), file_name=f"{name}.csv", mime="text/csv",
                        key=f"{key}-csv")
    row.download_button("⬇ Parquet", export.to_bytes(frame, "parquet"), file_name=f"{name}.parquet",
                        mime="application/octet-stream", key=f"{key}-parquet")


def figure(chart: Any, data: pl.DataFrame, *, name: str, key: str, query: str) -> None:
    """A chart with what it is drawn from: a "data" toggle showing the frame, a CSV download, and
    the query-layer call that returns the same frame (``query``)."""
    st.altair_chart(chart, width="stretch")
    row = st.container(horizontal=True, vertical_alignment="center")
    show = row.toggle("data", key=f"{key}-data", help=f"The numbers behind the chart: `atlas.queries.{query}`")
    if data.height:
        row.download_button("⬇ CSV", export.to_bytes(data, "csv"), file_name=f"{name}.csv", mime="text/csv",
                            key=f"{key}-csv")
    if show:
        st.dataframe(data, hide_index=True, width="stretch")
        st.caption(f"`atlas.queries.{query}`")


def badges(items: list[str] | None, css: str = "") -> str:
    return "".join(f'<span class="badge {css}">{html.escape(str(x))}</span>' for x in (items or []))


def page_header(title: str, caption: str) -> None:
    st.markdown(CSS, unsafe_allow_html=True)
    st.title(title)
    st.caption(caption)
