"""What every query shares, written once: connections, frames, naming a model, the scope filter
(cohort, model, layers) and the choice of which run's rows to read.

Which run: by default a query reads the ``current_<table>`` views (atlas/views.py: the newest done
run of each subject); with ``run_id`` it reads that one run's rows instead, after checking that
the run exists, is done, and is of the kind the table holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from atlas.errors import AtlasError
from atlas.views import RESULT_TABLES

ModelRef = str | int
EMPTY_HINT = "the atlas is empty — run `make demo`, or `atlas zoo train` then `atlas ingest` (see README)"


def labels_of(alias: str) -> str:
    """SQL for the labels of the neuron in row ``alias`` (model_id, layer, idx), best first."""
    return (f"(SELECT array_agg(l.label ORDER BY l.score DESC, l.label) FROM current_neuron_label l "
            f"WHERE l.model_id = {alias}.model_id AND l.layer = {alias}.layer AND l.idx = {alias}.idx)")


def connect(engine: Engine | Connection) -> contextlib.AbstractContextManager[Connection]:
    """A connection for reads: ``engine``'s, in autocommit mode, or the given connection as is.

    Autocommit matters for speed: psycopg forgets its prepared statements on every ROLLBACK,
    which ends each transactional checkout, so without it no query is ever prepared and every
    call pays the planner again (several ms for the views). Single SELECTs need no transaction.
    """
    if isinstance(engine, Connection):
        return contextlib.nullcontext(engine)
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def frame(engine: Engine | Connection, statement: str | sa.sql.Executable,
          params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run a read query and return its rows as a DataFrame (columns in SELECT order).

    ``engine`` may also be an open connection (several queries then share it). An empty result
    keeps the column names (dtype ``Null``).

    >>> frame(engine, "SELECT name FROM model WHERE id = :id", {"id": 1})  # doctest: +SKIP
    """
    if isinstance(statement, str):
        statement = sa.text(statement)
    with connect(engine) as conn:
        result = conn.execute(statement, params or {})
        columns = list(result.keys())
        rows = result.fetchall()
    if not rows:
        return pl.DataFrame(schema={c: pl.Null for c in columns})
    return pl.DataFrame([tuple(r) for r in rows], schema=columns, orient="row", infer_schema_length=None)


def model_id(engine: Engine | Connection, model: ModelRef) -> int:
    """The id of a model given its name (an int is returned as is); a one-line AtlasError naming
    the known models when no model has that name."""
    if isinstance(model, int) and not isinstance(model, bool):
        return model  # ids are taken as given: an unknown id simply matches nothing
    with connect(engine) as conn:
        found = conn.execute(sa.text("SELECT id FROM model WHERE name = :m"), {"m": str(model)}).scalar()
        if found is None:
            names = conn.execute(sa.text("SELECT name FROM model ORDER BY name LIMIT 20")).scalars().all()
    if found is None:
        known = f"known: {', '.join(names)}" if names else EMPTY_HINT
        raise AtlasError(f"no model {model!r} in the atlas ({known})")
    return int(found)


def neuron_params(engine: Engine | Connection, model: ModelRef, layer: int, idx: int) -> dict[str, int]:
    """Bound parameters ``m, l, i`` naming one neuron."""
    return {"m": model_id(engine, model), "l": int(layer), "i": int(idx)}


@dataclass
class Where:
    """AND-ed SQL conditions with their bound parameters. Conditions are fixed strings chosen in
    Python; every value a caller gives travels as a parameter, never pasted into SQL."""

    conditions: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, condition: str, **params: Any) -> Where:
        self.conditions.append(condition)
        self.params.update(params)
        return self

    def scope(self, engine: Engine | Connection, *, cohort: str | None = None, model: ModelRef | None = None,
              layer: int | Sequence[int] | None = None, cohort_column: str = "c.name", model_column: str = "m.id",
              layer_column: str | None = None) -> Where:
        """The filters many queries share: a cohort by name, a model by name or id, one or several layers."""
        if cohort is not None:
            self.add(f"{cohort_column} = :cohort", cohort=str(cohort))
        if model is not None:
            self.add(f"{model_column} = :model_id", model_id=model_id(engine, model))
        if layer is not None:
            assert layer_column is not None, "a layer filter needs the query's layer column"
            layers = [int(layer)] if isinstance(layer, (int, str)) else [int(x) for x in layer]
            self.add(f"{layer_column} = ANY(:layers)", layers=layers)
        return self

    @property
    def sql(self) -> str:
        """`` AND cond AND cond`` (empty when there is none), to follow a ``WHERE true`` or a condition."""
        return "".join(f" AND {c}" for c in self.conditions)


def rows_of(engine: Engine | Connection, table: str, run_id: int | None, params: dict[str, Any]) -> str:
    """A FROM-clause source for a result table: its rows of the current runs (view ``current_<table>``),
    or, given ``run_id``, the rows of that run (checked; ``:run_id`` is added to ``params``)."""
    kind = RESULT_TABLES[table]
    if run_id is None:
        return f"current_{table}"
    params["run_id"] = check_run(engine, run_id, kind)
    return f"(SELECT * FROM {table} WHERE run_id = :run_id)"


def check_run(engine: Engine | Connection, run_id: int, kind: str) -> int:
    """``run_id`` if that run exists, is done and is a ``kind`` run; else a one-line AtlasError."""
    with connect(engine) as conn:
        row = conn.execute(sa.text("SELECT kind, status FROM run WHERE id = :r"), {"r": int(run_id)}).first()
    if row is None:
        raise AtlasError(f"no run {run_id} in the atlas — `atlas status` lists the runs")
    if row.kind != kind:
        raise AtlasError(f"run {run_id} is a {row.kind} run; this query reads a {kind} run")
    if row.status != "done":
        raise AtlasError(f"run {run_id} is {row.status}, not done: only finished runs have results to read")
    return int(run_id)
