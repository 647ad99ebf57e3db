"""Families and labels of the current classify runs (``run_id`` reads an older classify run)."""

from __future__ import annotations

import polars as pl
from sqlalchemy.engine import Engine

from atlas.queries._sql import ModelRef, Where, frame, rows_of


def families(engine: Engine, *, label: str | None = None, cohort: str | None = None,
             run_id: int | None = None) -> pl.DataFrame:
    """Families of the current classify runs: ``family_id, label, family, n_members, n_models,
    layers`` (the layers its members sit in), ``models``, ``evidence`` (JSON text), largest first.

    >>> families(engine, label="unigram").select("family", "n_members", "n_models")  # doctest: +SKIP
    """
    where = Where()
    if label is not None:
        where.add("f.label = :label", label=str(label))
    member = Where().scope(engine, cohort=cohort)
    if member.conditions:
        where.add("EXISTS (SELECT 1 FROM family_member x JOIN model m ON m.id = x.model_id"
                  f" LEFT JOIN cohort c ON c.id = m.cohort_id WHERE x.family_id = f.id {member.sql})", **member.params)
    return frame(engine, f"""
        SELECT f.id AS family_id, f.label, f.name AS family, f.n_members, f.n_models,
               (SELECT array_agg(DISTINCT fm.layer::int ORDER BY fm.layer::int) FROM family_member fm
                 WHERE fm.family_id = f.id) AS layers,
               (SELECT array_agg(DISTINCT m.name ORDER BY m.name) FROM family_member fm JOIN model m ON m.id = fm.model_id
                 WHERE fm.family_id = f.id) AS models,
               f.evidence::text AS evidence, f.run_id
        FROM {rows_of(engine, "family", run_id, where.params)} f
        WHERE true {where.sql}
        ORDER BY f.n_models DESC, f.n_members DESC, f.label, f.name
    """, where.params)


def family_layer_counts(engine: Engine, *, cohort: str | None = None, run_id: int | None = None) -> pl.DataFrame:
    """Family members per label and layer (the paper's "families by layer" counts):
    ``label, layer, n_members, n_families``.

    >>> family_layer_counts(engine)   # doctest: +SKIP
    """
    where = Where().scope(engine, cohort=cohort)
    return frame(engine, f"""
        SELECT f.label, fm.layer::int AS layer, count(*) AS n_members, count(DISTINCT f.id) AS n_families
        FROM {rows_of(engine, "family", run_id, where.params)} f
        JOIN family_member fm ON fm.family_id = f.id
        JOIN model m ON m.id = fm.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        WHERE true {where.sql}
        GROUP BY f.label, fm.layer ORDER BY f.label, fm.layer
    """, where.params)


def label_counts(engine: Engine, *, model: ModelRef | None = None, run_id: int | None = None) -> pl.DataFrame:
    """Labelled neurons per model, label and layer: ``model, label, layer, n``."""
    where = Where().scope(engine, model=model)
    return frame(engine, f"""
        SELECT m.name AS model, l.label, l.layer::int AS layer, count(*) AS n
        FROM {rows_of(engine, "neuron_label", run_id, where.params)} l
        JOIN model m ON m.id = l.model_id
        WHERE true {where.sql}
        GROUP BY m.name, l.label, l.layer ORDER BY m.name, l.label, l.layer
    """, where.params)


def family_counts(engine: Engine, *, threshold: float | None = 0.5, model: ModelRef | None = None,
                  cohort: str | None = None) -> pl.DataFrame:
    """Labelled neurons per model, label and layer among universal neurons (the paper counts
    families among them): reference neurons with excess correlation > ``threshold`` in the current
    correlation runs; ``threshold=None`` counts among all neurons of every classified model.

    Every label a current classify run evaluated is listed, with 0 where it found none (from the
    run's ``params.result.label_counts``, and any label it stored), in every layer:
    ``model, label, layer, n`` (labelled neurons counted), ``n_neurons`` (neurons counted in that
    layer: the universal ones, or all), ``share`` (n / n_neurons; null when there are none).

    >>> family_counts(engine, threshold=0.5).group_by("label").agg(pl.col("n").sum())   # doctest: +SKIP
    """
    where = Where().scope(engine, model=model, cohort=cohort, model_column="mo.model_id", cohort_column="mo.cohort")
    if threshold is None:
        counted = "SELECT n.model_id, n.layer, n.idx FROM neuron n"
    else:
        counted = "SELECT u.model_id, u.layer, u.idx FROM current_neuron_universality u WHERE u.excess > :t"
        where.add("mo.model_id IN (SELECT model_id FROM current_neuron_universality)")  # reference models only
    return frame(engine, f"""
        WITH runs AS (SELECT id, cohort_id, params FROM latest_run WHERE kind = 'classify'),
        evaluated AS (
            SELECT r.id AS run_id, k.label
            FROM runs r CROSS JOIN LATERAL jsonb_object_keys(
                CASE WHEN jsonb_typeof(r.params -> 'result' -> 'label_counts') = 'object'
                     THEN r.params -> 'result' -> 'label_counts' ELSE '{{}}'::jsonb END) AS k(label)
            UNION
            SELECT l.run_id, l.label FROM current_neuron_label l
        ),
        mo AS (  -- the models each classify run covers: its cohort's, and any it labelled
            SELECT r.id AS run_id, m.id AS model_id, m.name AS model, c.name AS cohort, m.n_layers
            FROM runs r JOIN model m ON m.cohort_id = r.cohort_id LEFT JOIN cohort c ON c.id = m.cohort_id
            UNION
            SELECT l.run_id, m.id, m.name, c.name, m.n_layers
            FROM (SELECT DISTINCT run_id, model_id FROM current_neuron_label) l
            JOIN model m ON m.id = l.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        ),
        counted AS MATERIALIZED ({counted}),
        labelled AS (
            SELECT l.run_id, l.model_id, l.layer, l.label, count(*) AS n
            FROM current_neuron_label l JOIN counted s ON s.model_id = l.model_id AND s.layer = l.layer AND s.idx = l.idx
            GROUP BY 1, 2, 3, 4
        ),
        sizes AS (SELECT model_id, layer, count(*) AS n_neurons FROM counted GROUP BY 1, 2)
        SELECT mo.model, e.label, g.layer::int AS layer, coalesce(lb.n, 0) AS n, coalesce(sz.n_neurons, 0) AS n_neurons,
               coalesce(lb.n, 0)::float8 / nullif(sz.n_neurons, 0) AS share
        FROM mo
        JOIN evaluated e ON e.run_id = mo.run_id
        CROSS JOIN LATERAL generate_series(0, mo.n_layers - 1) AS g(layer)
        LEFT JOIN labelled lb ON lb.run_id = mo.run_id AND lb.model_id = mo.model_id AND lb.layer = g.layer
                             AND lb.label = e.label
        LEFT JOIN sizes sz ON sz.model_id = mo.model_id AND sz.layer = g.layer
        WHERE true {where.sql}
        ORDER BY mo.model, e.label, g.layer
    """, where.params | ({"t": float(threshold)} if threshold is not None else {}))


def family_members(engine: Engine, family: int | str) -> pl.DataFrame:
    """Members of a family: ``model, seed_label, layer, idx, score, excess, labels``. By name among
    the current classify runs' families; by id any family (an older run's too).

    >>> family_members(engine, "unigram: token=' the'")   # doctest: +SKIP
    """
    if isinstance(family, int) and not isinstance(family, bool):
        source, params = "family f WHERE f.id = :f", {"f": family}
    else:
        source, params = "current_family f WHERE f.name = :f", {"f": str(family)}
    return frame(engine, f"""
        SELECT f.id AS family_id, f.name AS family, f.label, m.name AS model, m.seed_label, fm.layer::int AS layer,
               fm.idx, fm.score, o.excess::float8 AS excess, o.act_frequency, o.labels
        FROM (SELECT f.* FROM {source}) f
        JOIN family_member fm ON fm.family_id = f.id
        JOIN model m ON m.id = fm.model_id
        LEFT JOIN neuron_overview o ON o.model_id = fm.model_id AND o.layer = fm.layer AND o.idx = fm.idx
        ORDER BY m.seed_label NULLS LAST, m.name, fm.layer, fm.idx
    """, params)


def label_names(engine: Engine) -> list[str]:
    """The labels present in the current classify runs (for filter menus)."""
    out = frame(engine, "SELECT DISTINCT label FROM current_neuron_label ORDER BY label")
    return [str(x) for x in out["label"]] if out.height else []
