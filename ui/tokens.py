"""Tokens and examples as a researcher reads them: every token of an example coloured by the
neuron's activation on it (red +, blue −, white 0; the value on hover), the example's own token
outlined, newlines as ↵, tabs as →, leading spaces kept. Token text is always HTML-escaped.
"""

from __future__ import annotations

import html

import polars as pl

POSITIVE = (214, 39, 40)  # red: positive activation
NEGATIVE = (31, 119, 180)  # blue: negative activation


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


def token_labels(frame: pl.DataFrame, token_col: str = "token", id_col: str = "token_id") -> pl.Series:
    """One display label per row: the quoted token, with ``#id`` added where two rows' tokens display
    alike (so a chart axis keyed on them never merges two token ids into one bar)."""
    text = frame.select(pl.format("'{}'", token_expr(token_col)).fill_null("'?'").alias("t"))["t"]
    repeated = text.is_duplicated()
    return pl.Series("label", [f"{t} #{i}" if dup else t for t, i, dup in zip(text, frame[id_col], repeated)],
                     dtype=pl.String)


def vocab_table(effects: pl.DataFrame) -> pl.DataFrame:
    """The boosted then the suppressed tokens: direction, rank, token id, token (quoted), W_U·w_out."""
    return (effects.with_columns(quoted_token_expr("token"))
            .select("direction", "rank", "token_id", "token", "value").sort("direction", "rank", descending=[True, False]))


def _color(value: float | None, vmax: float) -> str:
    if value is None or vmax <= 0:
        return "transparent"
    share = max(-1.0, min(1.0, value / vmax))
    r, g, b = POSITIVE if share >= 0 else NEGATIVE
    return f"rgba({r},{g},{b},{0.08 + 0.82 * abs(share):.2f})"


def tokens_html(tokens: list[str], activations: list[float | None] | None, center: int | None, vmax: float) -> str:
    """One example, keyword-in-context: the context before the example's token (right-aligned,
    clipped on the left), the token (outlined), the context after. Each token is coloured by its
    activation and shows it on hover; a token without one stays uncoloured."""
    spans = []
    activations = list(activations or [])
    activations += [None] * (len(tokens) - len(activations))
    for j, (tok, act) in enumerate(zip(tokens, activations)):
        text = html.escape(token_text(tok))
        style = f"background:{_color(act, vmax)};"
        if j == center:
            style += "outline:1.5px solid #333;font-weight:600;"
        title = f"{tok!r}: activation {act:.3f}" if act is not None else f"{tok!r}: no activation stored"
        spans.append(f'<span class="tok" style="{style}" title="{html.escape(title)}">{text}</span>')
    if center is None or not 0 <= center < len(spans):
        return f'<span class="post">{"".join(spans)}</span>'
    return (f'<span class="pre">{"".join(spans[:center])}</span><span class="hit">{spans[center]}</span>'
            f'<span class="post">{"".join(spans[center + 1:])}</span>')


def vmax_of(*frames: pl.DataFrame) -> float:
    """The colour scale's end: the largest |activation| over the examples' windows and values."""
    best = 0.0
    for f in frames:
        if f.height == 0:
            continue
        if "activations" in f.columns:
            best = max(best, max((abs(v) for acts in f["activations"].to_list() if acts for v in acts
                                  if v is not None), default=0.0))
        best = max(best, max((abs(v) for v in f["value"] if v is not None), default=0.0))
    return best or 1.0


def examples_html(examples: pl.DataFrame, vmax: float | None = None, *, value_label=None) -> str:
    """A block of examples (frames of ``queries.top_examples`` / ``sampled_examples`` /
    ``partner_examples``). ``value_label(row)`` writes the number in front of each (default: the value)."""
    if examples.height == 0:
        return ""
    vmax = vmax or vmax_of(examples)
    rows = []
    for ex in examples.iter_rows(named=True):
        body = tokens_html(list(ex["tokens"] or []), ex["activations"], ex["center"], vmax)
        label = value_label(ex) if value_label else ("—" if ex["value"] is None else f"{ex['value']:.3f}")
        rows.append(f'<div class="row"><span class="val">{label}</span><span class="ctx">{body}</span></div>')
    return '<div class="examples">' + "".join(rows) + "</div>"


def legend_html(vmax: float, what: str = "hook_post activation of each token (hover a token for its value)") -> str:
    return (f'<div class="legend"><span>−{vmax:.2f}</span><span class="bar"></span><span>+{vmax:.2f}</span>'
            f'<span>{html.escape(what)}</span></div>')


CSS = """
<style>
.examples {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.86rem; line-height: 1.9;}
.examples .row {display: flex; gap: 0.6rem; align-items: baseline; border-bottom: 1px solid #eee; padding: 1px 0;}
.examples .val {flex: 0 0 auto; min-width: 4.2rem; text-align: right; color: #555; font-variant-numeric: tabular-nums;
  white-space: nowrap; position: relative; z-index: 1; background: inherit; padding-right: 2px;}
.examples .ctx {display: flex; flex: 1 1 auto; min-width: 0; white-space: pre;}
.examples .pre {flex: 1 1 0; min-width: 0; overflow: hidden; display: flex; justify-content: flex-end;
  clip-path: inset(0);}
.examples .hit {flex: 0 0 auto; padding: 0 1px;}
.examples .post {flex: 1 1 0; min-width: 0; overflow: hidden;}
.examples .tok {border-radius: 3px; padding: 0 1px;}
.legend {display:flex; align-items:center; gap:.4rem; font-size:.8rem; color:#555;}
.legend .bar {width:140px; height:10px; border-radius:3px;
  background: linear-gradient(90deg, rgba(31,119,180,.9), rgba(255,255,255,1), rgba(214,39,40,.9));}
.badge {display:inline-block; padding:1px 8px; margin:0 4px 2px 0; border-radius:10px; background:#eef2ff;
  color:#3730a3; font-size:.8rem; border:1px solid #c7d2fe;}
.badge.universal {background:#fee2e2; color:#991b1b; border-color:#fecaca;}
</style>
"""
