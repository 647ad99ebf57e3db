"""Export any query result to Parquet or CSV (``atlas export``, the UI's download buttons).

Parquet keeps types (list columns stay lists); CSV writes list and struct cells as JSON text so
every result fits in a flat file. ``EXPORTABLE`` names the query-layer functions the CLI can run:

    atlas export universal-neurons -p threshold=0.6 -p cohort=demo --out universal.parquet
    atlas export top-examples -p model=demo-a -p layer=0 -p idx=12 --format csv --out ex.csv
    atlas export sql "SELECT * FROM layer_universality" --out layers.csv
"""

from __future__ import annotations

import inspect
import io
import json
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import polars as pl
from sqlalchemy.engine import Engine

from atlas import queries
from atlas.errors import AtlasError

Format = Literal["parquet", "csv"]

EXPORTABLE: dict[str, Callable[..., pl.DataFrame]] = {
    "models": queries.models,
    "cohorts": queries.cohorts,
    "datasets": queries.datasets,
    "runs": queries.runs,
    "neuron": queries.neuron,
    "histogram": queries.histogram,
    "vocab-effects": queries.vocab_effects,
    "top-examples": queries.top_examples,
    "token-activations": queries.token_activations,
    "best-partners": queries.best_partners,
    "partner-edges": queries.partner_edges,
    "labels": queries.labels,
    "features": queries.features,
    "universal-neurons": queries.universal_neurons,
    "layer-universality": queries.layer_universality,
    "layer-summary": queries.layer_summary,
    "correlation-distribution": queries.correlation_distribution,
    "universal-properties": queries.universal_properties,
    "families": queries.families,
    "family-layer-counts": queries.family_layer_counts,
    "family-members": queries.family_members,
    "search-tokens": queries.search_tokens,
    "neurons-for-token": queries.neurons_for_token,
}


def infer_format(path: str | Path, fmt: str | None = None) -> Format:
    """``fmt`` if given, else from the file suffix (.parquet/.pq or .csv)."""
    if fmt:
        if fmt not in ("parquet", "csv"):
            raise AtlasError(f"unknown export format {fmt!r} — use parquet or csv")
        return fmt  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise AtlasError(f"cannot tell the format of {path} — end the file name in .parquet or .csv, or pass --format")


def flatten_for_csv(frame: pl.DataFrame) -> pl.DataFrame:
    """List/struct/array columns as JSON text; everything else unchanged."""
    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
            exprs.append(pl.col(name).map_elements(lambda v: json.dumps(_plain(v)), return_dtype=pl.String,
                                                   skip_nulls=True).alias(name))
        elif dtype == pl.Null:
            exprs.append(pl.col(name).cast(pl.String))
        else:
            exprs.append(pl.col(name))
    return frame.select(exprs) if exprs else frame


def _plain(value: Any) -> Any:
    if isinstance(value, pl.Series):
        return [_plain(v) for v in value.to_list()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_bytes(frame: pl.DataFrame, fmt: Format) -> bytes:
    """The frame serialised as Parquet or CSV (for downloads)."""
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buffer)
    else:
        flatten_for_csv(frame).write_csv(buffer)
    return buffer.getvalue()


def check_destination(path: str | Path) -> Path:
    """Refuse, before any query runs, a destination whose directory is missing or is not a directory
    (never created silently) or that is itself a directory."""
    path = Path(path)
    parent = path.parent.resolve()
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise AtlasError(f"cannot write {path}: {parent} {what} — create the directory first, or choose another --out")
    if path.is_dir():
        raise AtlasError(f"cannot write {path}: it is a directory — give a file name ending in .parquet or .csv")
    return path


def write(frame: pl.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``frame`` to ``path`` as Parquet or CSV (format from ``fmt`` or the suffix); return the path."""
    path = check_destination(path)
    kind = infer_format(path, fmt)
    data = to_bytes(frame, kind)
    try:
        path.write_bytes(data)
    except OSError as err:
        raise AtlasError(f"cannot write {path}: {err.strerror or err} — choose a writable --out path") from None
    return path


def run_named(engine: Engine, name: str, params: dict[str, str]) -> pl.DataFrame:
    """Run the query-layer function ``name`` (see ``EXPORTABLE``) with string parameters converted
    by the function's annotations (int, float, comma-separated int lists for ``layer``)."""
    func = EXPORTABLE.get(name)
    if func is None:
        raise AtlasError(f"unknown query {name!r} — one of: {', '.join(sorted(EXPORTABLE))}, sql")
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func)
    accepted = [p for p in list(signature.parameters)[1:]]
    kwargs: dict[str, Any] = {}
    for key, raw in params.items():
        key = key.replace("-", "_")
        if key not in accepted:
            raise AtlasError(f"{name} takes no parameter {key!r} — it takes: {', '.join(accepted) or 'none'}")
        kwargs[key] = _convert(raw, hints.get(key, str), key)
    missing = [p.name for p in list(signature.parameters.values())[1:]
               if p.default is inspect.Parameter.empty and p.name not in kwargs]
    if missing:
        raise AtlasError(f"{name} needs {', '.join(f'-p {m}=...' for m in missing)}")
    return func(engine, **kwargs)


def _convert(raw: str, hint: Any, key: str) -> Any:
    options = typing.get_args(hint) or (hint,)
    if raw.lower() in ("none", "null", "") and type(None) in options:
        return None
    try:
        if int in options and key in ("layer",) and "," in raw:
            return [int(x) for x in raw.split(",")]
        if float in options:
            return float(raw)
        if int in options and str not in options:
            return int(raw)
        if bool in options:
            return raw.lower() in ("1", "true", "yes", "on")
    except ValueError as err:
        raise AtlasError(f"parameter {key}={raw!r} is not a number") from err
    if int in options and str in options and raw.isdigit() and key != "model":
        return int(raw)  # e.g. a family by id; a model stays a name even when it looks like a number
    return raw
