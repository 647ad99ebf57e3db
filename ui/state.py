"""Page state that lives in the address bar.

Every filter of every page is a URL parameter, so a copied link opens the same view, reload keeps
it, and Back returns to the view the user left. The universality threshold is one slider in the
sidebar of every page (``?threshold=``): one value for every page and every count on it, carried
from page to page by the app's links.

How (and why not Streamlit's ``bind="query-params"``): a page declares its parameters
(:class:`Param`) in an :class:`Address`. When the address changed since the page last saw it (a
link, Back, a shared URL), ``Address`` sets the widgets' state from it *before* they are drawn;
after them, :meth:`Address.write` puts their values back into the address, in one canonical order,
defaults left out. Streamlit then adds a history entry when the address changed (one per user
action; Back undoes it) or replaces the entry during Back. Bound widgets were tried first: a page
switch then strips the parameters bound on the page being left and pushes that as an extra history
entry (Back from a neuron landed on ``/universal?model=…`` with the filters reset), and a same-page
link never updates the address bar at all.

A value in the address that a page cannot show (``layer=abc``, ``threshold=banana``, an index past
the layer's end) is never replaced silently: it is named in a one-line warning with what is shown
instead (:meth:`Address.report`), and the address is corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

THRESHOLD = 0.5  # the paper's excess-correlation cut
THRESHOLD_KEY = "threshold"
THRESHOLD_HELP = ("A reference neuron is universal when its mean best-partner correlation minus the random-rotation "
                  "baseline (its excess correlation) is above this. The paper: 0.5. Every count on every page uses it.")
ECHO = 60  # characters of a user's input echoed back in a message


def shorten(text: str, limit: int = ECHO) -> str:
    """``text`` cut to ``limit`` characters (with …), for echoing input back in a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Param:
    """One URL parameter of a page and the widget it drives.

    ``parse`` turns the URL text into a value the page can show, or raises ValueError; ``expected``
    says what a good value is (for the warning); ``text`` writes a value back into the URL;
    ``show`` names a value in the warning."""

    key: str
    default: Any
    parse: Callable[[str], Any]
    expected: str
    text: Callable[[Any], str] = str
    show: Callable[[Any], str] = str


def choice(key: str, options: Sequence[Any], default: Any = None, *, expected: str = "") -> Param:
    """A parameter taking one of ``options`` (compared as text); ``default``: the first option."""
    by_text = {str(o): o for o in options}
    default = options[0] if default is None and options else default

    def parse(raw: str) -> Any:
        if raw not in by_text:
            raise ValueError(raw)
        return by_text[raw]
    return Param(key, default, parse, expected or f"one of {', '.join(map(str, options))}")


def number(key: str, default: float, lo: float, hi: float, *, integer: bool = False, expected: str = "") -> Param:
    """A number in ``[lo, hi]`` (an integer written in digits when ``integer``)."""
    def parse(raw: str) -> float | int:
        value = int(raw) if integer and raw.strip().isdigit() else float(raw)
        if integer and (not float(value).is_integer()):
            raise ValueError(raw)
        if not lo <= value <= hi:
            raise ValueError(raw)
        return int(value) if integer else float(value)
    return Param(key, default, parse, expected or f"a number from {lo:g} to {hi:g}",
                 text=(lambda v: str(int(v))) if integer else (lambda v: f"{v:g}"),
                 show=(lambda v: str(int(v))) if integer else (lambda v: f"{v:g}"))


def int_list(key: str, allowed: Sequence[int], *, what: str, show_empty: str) -> Param:
    """A comma-separated list of integers from ``allowed`` (empty: all)."""
    def parse(raw: str) -> list[int]:
        values = [int(p) for p in raw.split(",") if p.strip() != ""]
        if any(v not in allowed for v in values):
            raise ValueError(raw)
        return sorted(set(values))
    return Param(key, [], parse, f"a list of {what} {min(allowed)}–{max(allowed)}" if allowed else f"a list of {what}",
                 text=lambda v: ",".join(map(str, v)), show=lambda v: ", ".join(map(str, v)) or show_empty)


def flag(key: str, default: bool) -> Param:
    def parse(raw: str) -> bool:
        if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
            raise ValueError(raw)
        return raw.lower() in ("true", "1", "on")
    return Param(key, default, parse, "true or false", text=lambda v: "true" if v else "false",
                 show=lambda v: "on" if v else "off")


def integer(raw: str | None) -> int | None:
    """A non-negative integer written in plain digits, else None (``1e9``, ``-1``, ``abc``)."""
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if raw.isdigit() and len(raw) < 10 else None


THRESHOLD_PARAM = number(THRESHOLD_KEY, THRESHOLD, 0.0, 1.0, expected="a number from 0 to 1")


def on_page(url_path: str) -> bool:
    """Was the browser's address on the page ``url_path`` when it asked for this run? False when it
    came from another page (a link, the sidebar: the browser then takes the requested address as
    is). True when the browser does not say (headless tests)."""
    ctx = get_script_run_ctx()
    url = ctx.context_info.url if ctx is not None and ctx.context_info is not None else ""
    if not url:
        return True
    last = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    return (last if last in PAGE_PATHS else "overview") == url_path


PAGE_PATHS = ("universal", "training", "neuron", "families", "search", "runs", "sql")  # the overview is the root


class Address:
    """The URL parameters of one page (``page`` = its url path), synchronised with its widgets.

    Widgets take their key from :meth:`key`. Make the address before the widgets, call
    :meth:`write` after them, and :meth:`report` where the warnings should show."""

    def __init__(self, page: str, *params: Param):
        self.page, self.params = page, params
        self.problems: list[str] = []
        seen = f"_address.{page}"
        now = {p.key: st.query_params.get(p.key) for p in params}
        if st.session_state.get(seen) != now or any(self.key(p.key) not in st.session_state for p in params):
            for p in params:
                st.session_state[self.key(p.key)] = self._parse(p, now[p.key])
            st.session_state[seen] = now

    def key(self, name: str) -> str:
        """The session-state key of the widget driven by parameter ``name``."""
        return f"{self.page}.{name}"

    def value(self, name: str) -> Any:
        return st.session_state.get(self.key(name))

    def _parse(self, p: Param, raw: str | None) -> Any:
        if raw is None:
            return p.default
        try:
            return p.parse(raw)
        except (ValueError, TypeError):
            self.note(p.key, raw, p.expected, p.show(p.default))
            return p.default

    def note(self, key: str, raw: Any, expected: str, shown: str) -> None:
        """Record that ``key=raw`` could not be shown as asked (``expected`` says what would be)."""
        value = repr(shorten(raw)) if isinstance(raw, str) else str(raw)
        self.problems.append(f"{key}={value} in the address is not {expected} — showing {shown} instead.")

    def write(self, first: dict[str, str] | None = None) -> None:
        """Put the widgets' values in the address (``first``: parameters the page sets itself, e.g.
        the neuron, written before the others), defaults left out, the threshold last."""
        wanted = dict(first or {})
        for p in self.params:
            value = st.session_state.get(self.key(p.key), p.default)
            if value != p.default:
                wanted[p.key] = p.text(value)
        wanted.update(shared_params())
        # Arriving from another page, the browser shows the address it asked for: send only a change.
        # On this page, a link changes the parameters here but not the browser's address bar: send
        # them anyway (the browser adds a history entry only if its address differs).
        if wanted != st.query_params.to_dict() or on_page(self.page):
            st.query_params.from_dict(wanted)
        st.session_state[f"_address.{self.page}"] = {p.key: st.query_params.get(p.key) for p in self.params}

    def report(self) -> None:
        """Show each value the address asked for but this page could not show, one line each."""
        for problem in self.problems:
            st.warning(problem, icon=":material/link_off:")


def shared_params() -> dict[str, str]:
    """The parameters every page carries: the threshold when it is not the paper's."""
    value = threshold()
    return {} if value == THRESHOLD else {THRESHOLD_KEY: THRESHOLD_PARAM.text(value)}


def threshold_control() -> float:
    """The universality threshold: one slider in the sidebar of every page, in the URL as
    ``?threshold=``. Made once per run by the app (ui/app.py); pages read it with :func:`threshold`."""
    address = Address("app", THRESHOLD_PARAM)
    value = st.sidebar.slider("Universality threshold (excess correlation)", 0.0, 1.0, step=0.05,
                              key=address.key(THRESHOLD_KEY), help=THRESHOLD_HELP)
    st.session_state[THRESHOLD_KEY + ".value"] = float(value)
    address.report()
    st.session_state["_address.app"] = {THRESHOLD_KEY: st.query_params.get(THRESHOLD_KEY)}
    return float(value)


def threshold() -> float:
    """The threshold the sidebar slider holds in this run (the paper's 0.5 before it exists)."""
    return float(st.session_state.get(THRESHOLD_KEY + ".value", THRESHOLD))
