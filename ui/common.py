"""Shared pieces of the Streamlit pages: the read-only engine, empty-atlas notices, neuron links,
token rendering (blue/red diverging scale, newlines as ↵) and altair charts.

No SQL here: every question goes through ``atlas.queries`` (and the SQL page through
``atlas.readonly.run_sql``).
"""

from __future__ import annotations

import html
import os
from urllib.parse import urlencode

import altair as alt
import polars as pl
import streamlit as st
from sqlalchemy.engine import Engine

from atlas import export, queries, readonly
from atlas.errors import AtlasError

POSITIVE = (214, 39, 40)  # red: positive activation
NEGATIVE = (31, 119, 180)  # blue: negative activation
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


def summary(eng: Engine, name: str, **kwargs) -> pl.DataFrame:
    """``queries.<name>(eng, **kwargs)``, cached until a run finishes (``queries.data_version``).

    For the whole-atlas aggregates of the overview, which scan every neuron (seconds on an atlas
    of millions of neurons) but change only when a run is published.
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
    st.info(f"{message} {RUN_HINT}", icon=":material/explore:")


# ---------------------------------------------------------------- links

def neuron_url(model: str, layer: int, idx: int) -> str:
    """Relative link to a neuron's page; shareable (the page reads model/layer/idx from the URL)."""
    return "neuron?" + urlencode({"model": model, "layer": int(layer), "idx": int(idx)})


def with_links(frame: pl.DataFrame, model_col: str = "model", layer_col: str = "layer", idx_col: str = "idx",
               name: str = "neuron") -> pl.DataFrame:
    """Prepend a column of neuron-page links (for ``st.column_config.LinkColumn``)."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias(name)).select(name, *frame.columns)
    links = [neuron_url(m, l, i) for m, l, i in zip(frame[model_col], frame[layer_col], frame[idx_col])]
    return frame.with_columns(pl.Series(name, links, dtype=pl.String)).select(name, *frame.columns)


def link_column(label: str = "neuron") -> st.column_config.LinkColumn:
    return st.column_config.LinkColumn(label, display_text="open ↗", help="Open the neuron page (a shareable link)",
                                       width="small")


def neuron_label(model: str, layer: int, idx: int) -> str:
    return f"{model} · L{layer} · N{idx}"


# ---------------------------------------------------------------- tokens

def token_text(token: str) -> str:
    """A token for display: newlines as ↵, tabs as →, kept spaces."""
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "→")


def token_expr(column: str) -> pl.Expr:
    """``token_text`` as a polars expression (for whole columns of tokens)."""
    return (pl.col(column).str.replace_all("\r", "", literal=True).str.replace_all("\n", "↵", literal=True)
            .str.replace_all("\t", "→", literal=True))


def quoted_token_expr(column: str) -> pl.Expr:
    """Tokens for tables: quoted, so a leading space shows (' the' vs 'the')."""
    return pl.format("'{}'", token_expr(column)).alias(column)


def _color(value: float | None, vmax: float) -> str:
    if value is None or vmax <= 0:
        return "transparent"
    share = max(-1.0, min(1.0, value / vmax))
    r, g, b = POSITIVE if share >= 0 else NEGATIVE
    return f"rgba({r},{g},{b},{0.12 + 0.78 * abs(share):.2f})"


def tokens_html(tokens: list[str], activations: list[float | None] | None, center: int | None, vmax: float) -> str:
    """One example as HTML, keyword-in-context: the context before the activating token
    (right-aligned, clipped on the left), the token (outlined), the context after. Each token is
    coloured by its activation where one is stored (red +, blue −). Token text is HTML-escaped."""
    spans = []
    activations = activations or [None] * len(tokens)
    for j, (tok, act) in enumerate(zip(tokens, activations)):
        text = html.escape(token_text(tok))
        style = f"background:{_color(act, vmax)};"
        if j == center:
            style += "outline:1.5px solid #333;font-weight:600;"
        title = f' title="activation {act:.3f}"' if act is not None else ""
        spans.append(f'<span class="tok" style="{style}"{title}>{text}</span>')
    if center is None or not 0 <= center < len(spans):
        return f'<span class="post">{"".join(spans)}</span>'
    return (f'<span class="pre">{"".join(spans[:center])}</span><span class="hit">{spans[center]}</span>'
            f'<span class="post">{"".join(spans[center + 1:])}</span>')


TOKEN_CSS = """
<style>
.examples {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.86rem; line-height: 1.9;}
.examples .row {display: flex; gap: 0.6rem; align-items: baseline; border-bottom: 1px solid #eee; padding: 1px 0;}
.examples .val {min-width: 4.2rem; text-align: right; color: #555; font-variant-numeric: tabular-nums;}
.examples .ctx {display: flex; flex: 1 1 auto; min-width: 0; white-space: pre;}
.examples .pre {flex: 1 1 0; min-width: 0; overflow: hidden; display: flex; justify-content: flex-end;}
.examples .hit {flex: 0 0 auto; padding: 0 1px;}
.examples .post {flex: 1 1 0; min-width: 0; overflow: hidden;}
.examples .tok {border-radius: 3px; padding: 0 1px;}
.legend {display:flex; align-items:center; gap:.4rem; font-size:.8rem; color:#555;}
.legend .bar {width:140px; height:10px; border-radius:3px;
  background: linear-gradient(90deg, rgba(31,119,180,.9), rgba(255,255,255,1), rgba(214,39,40,.9));}
.badge {display:inline-block; padding:1px 8px; margin:0 4px 2px 0; border-radius:10px; background:#eef2ff;
  color:#3730a3; font-size:.8rem; border:1px solid #c7d2fe;}
</style>
"""


def examples_html(examples: pl.DataFrame, vmax: float | None = None) -> str:
    """A block of top examples (from ``queries.top_examples``)."""
    if examples.height == 0:
        return ""
    vmax = vmax or max((abs(v) for v in examples["value"] if v is not None), default=1.0)
    rows = []
    for ex in examples.iter_rows(named=True):
        body = tokens_html(list(ex["tokens"] or []), list(ex["activations"] or []), ex["center"], vmax)
        rows.append(f'<div class="row"><span class="val">{ex["value"]:.3f}</span><span class="ctx">{body}</span></div>')
    return '<div class="examples">' + "".join(rows) + "</div>"


def legend_html(vmax: float) -> str:
    return (f'<div class="legend"><span>−{vmax:.2f}</span><span class="bar"></span><span>+{vmax:.2f}</span>'
            '<span>hook_post activation (stored at each example\'s position; other tokens shown uncoloured)</span></div>')


def badges(items: list[str] | None) -> str:
    return "".join(f'<span class="badge">{html.escape(str(x))}</span>' for x in (items or []))


# ---------------------------------------------------------------- downloads

def downloads(frame: pl.DataFrame, name: str, key: str) -> None:
    """CSV and Parquet download buttons for a result."""
    if frame.height == 0:
        return
    row = st.container(horizontal=True)
    row.download_button("⬇ CSV", export.to_bytes(frame, "csv"), file_name=f"{name}.csv", mime="text/csv",
                         key=f"{key}-csv")
    row.download_button("⬇ Parquet", export.to_bytes(frame, "parquet"), file_name=f"{name}.parquet",
                          mime="application/octet-stream", key=f"{key}-parquet")


# ---------------------------------------------------------------- charts

def histogram_chart(hist: pl.DataFrame) -> alt.Chart:
    data = hist.filter(pl.col("count") > 0).with_columns(
        ((pl.col("bin_lo") + pl.col("bin_hi")) / 2 >= 0).alias("positive")).to_pandas()
    return (alt.Chart(data).mark_bar(binSpacing=0).encode(
        x=alt.X("bin_lo:Q", title="hook_pre", bin="binned"), x2="bin_hi:Q",
        y=alt.Y("count:Q", title="tokens", scale=alt.Scale(type="symlog")),
        color=alt.Color("positive:N", scale=alt.Scale(domain=[False, True], range=["#1f77b4", "#d62728"]), legend=None),
        tooltip=["bin_lo", "bin_hi", "count"]).properties(height=220))


def vocab_chart(effects: pl.DataFrame, n: int = 10) -> alt.Chart:
    top = effects.filter(pl.col("rank") <= n).with_columns(
        pl.format("'{}'", token_expr("token")).fill_null("?").alias("label")).to_pandas()
    return (alt.Chart(top).mark_bar().encode(
        x=alt.X("value:Q", title="W_U · w_out"),
        y=alt.Y("label:N", sort=alt.EncodingSortField("value", order="descending"), title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=140, labelFontSize=11)),
        color=alt.condition("datum.value > 0", alt.value("#d62728"), alt.value("#1f77b4")),
        tooltip=["token", "token_id", "value"]).properties(height=22 * max(len(top), 4)))


def share_chart(layers: pl.DataFrame) -> alt.Chart:
    data = layers.with_columns((pl.col("universal_share") * 100).alias("percent")).to_pandas()
    return (alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("percent:Q", title="universal neurons (%)", axis=alt.Axis(format=".1f"),
                scale=alt.Scale(domainMin=0, nice=True)),
        color=alt.Color("model:N", title="reference model"),
        tooltip=["model", "layer", "n_universal", "n_neurons", alt.Tooltip("percent:Q", format=".2f")],
    ).properties(height=260))


def distribution_chart(dist: pl.DataFrame) -> alt.Chart:
    data = (dist.filter(pl.col("measure").is_in(["mean_corr", "mean_baseline"]))
            .group_by("measure", "bin_lo", "bin_hi").agg(pl.col("count").sum())  # all reference models together
            .with_columns(pl.col("measure").replace({"mean_corr": "mean max-corr", "mean_baseline": "mean baseline"}))
            .sort("measure", "bin_lo").to_pandas())
    return (alt.Chart(data).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("bin_lo:Q", bin="binned", title="correlation", scale=alt.Scale(domain=[0, 1])), x2="bin_hi:Q",
        y=alt.Y("count:Q", stack=None, title="neurons", scale=alt.Scale(type="symlog")),
        color=alt.Color("measure:N", scale=alt.Scale(domain=["mean max-corr", "mean baseline"],
                                                     range=["#d62728", "#7f7f7f"]), title=None,
                        legend=alt.Legend(orient="top")),
        tooltip=["measure", "bin_lo", "bin_hi", "count"],
    ).properties(height=260))


def family_layer_chart(counts: pl.DataFrame) -> alt.Chart:
    return (alt.Chart(counts.to_pandas()).mark_bar().encode(
        x=alt.X("layer:O", axis=alt.Axis(labelAngle=0)), y=alt.Y("n_members:Q", title="family members"),
        color=alt.Color("label:N", title="family"), tooltip=["label", "layer", "n_members", "n_families"],
    ).properties(height=260))


def properties_chart(props: pl.DataFrame) -> alt.Chart:
    data = props.unpivot(index=["model", "property"], on=["universal_median_pct", "other_median_pct"],
                         variable_name="group", value_name="percentile").with_columns(
        pl.col("group").replace({"universal_median_pct": "universal", "other_median_pct": "other"})).to_pandas()
    return (alt.Chart(data).mark_bar().encode(
        y=alt.Y("property:N", title=None), x=alt.X("percentile:Q", title="median within-layer percentile",
                                                   scale=alt.Scale(domain=[0, 100])),
        yOffset="group:N",
        color=alt.Color("group:N", scale=alt.Scale(domain=["universal", "other"], range=["#d62728", "#bbbbbb"]), title=None),
        tooltip=["model", "property", "group", alt.Tooltip("percentile:Q", format=".1f")],
    ).properties(height=260))


def page_header(title: str, caption: str) -> None:
    st.markdown(TOKEN_CSS, unsafe_allow_html=True)
    st.title(title)
    st.caption(caption)
