"""Bulk loading with PostgreSQL ``COPY ... FROM STDIN`` (psycopg), from polars frames.

COPY is ~20× faster than row inserts for the millions of rows a cohort produces. Frames are
streamed as CSV: NaN becomes NULL (undefined statistics are NULL, never a number), list columns
become PostgreSQL array literals.
"""

from __future__ import annotations

import io

import polars as pl
import psycopg
from psycopg import sql

CHUNK_ROWS = 200_000


def copy_frame(conn: psycopg.Connection, table: str, frame: pl.DataFrame) -> int:
    """COPY every row of ``frame`` into ``table`` (columns by name); return the row count.

    Runs inside the caller's transaction, so a result set lands whole or not at all.
    """
    if frame.height == 0:
        return 0
    frame = _to_copyable(frame)
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL '')").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for start in range(0, frame.height, CHUNK_ROWS):
            buffer = io.BytesIO()
            frame.slice(start, CHUNK_ROWS).write_csv(
                buffer, include_header=False, quote_style="non_numeric", null_value=""
            )
            copy.write(buffer.getvalue())
    return frame.height


def _to_copyable(frame: pl.DataFrame) -> pl.DataFrame:
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_float():
            exprs.append(col.fill_nan(None))
        elif isinstance(dtype, (pl.List, pl.Array)):
            inner = col.cast(pl.List(dtype.inner))
            if dtype.inner.is_float():
                inner = inner.list.eval(pl.element().fill_nan(None))
            text = inner.list.eval(pl.element().cast(pl.String).fill_null("NULL")).list.join(",")
            exprs.append(pl.when(col.is_null()).then(None).otherwise(pl.format("{{{}}}", text)).alias(name))
        elif dtype == pl.Boolean:
            exprs.append(col.cast(pl.String).str.to_lowercase())  # booleans as true/false literals
        else:
            exprs.append(col)
    return frame.select(exprs)
