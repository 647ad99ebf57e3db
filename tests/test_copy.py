"""COPY loading (atlas.copy): the binary path loads exactly the rows the text (CSV) path loads, for
every column type the schema uses, and keeps the foreign-key guarantee while checking keys once."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import psycopg
import pytest
import sqlalchemy as sa

from atlas import schema
from atlas.copy import _table_info, copy_frame
from atlas.runs import RESULT_TABLES

NAN = float("nan")
TEXTS = ["plain", " the", "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash", "\\N", "quote\"d", "com,ma",
         "", "NULL", "ünïcødé ✓ 漢字 🙂", "\u2400 (a NUL as the vocabulary stores it)", "{braces}", "'single'"]


def _models_and_runs(engine, n_runs: int) -> tuple[list[int], list[int], int, int]:
    """Two models, ``n_runs`` runs, a tokenizer and a dataset for the foreign keys."""
    with engine.begin() as conn:
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('t', 'h', 99) "
                                   "RETURNING id")).scalar_one()
        models = [conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
            " act_fn, tokenizer_id) VALUES (:n, 'src', 'GPT2', 2, 4, 8, 1, 4, 8, 99, 'gelu', :t) RETURNING id"),
            {"n": f"m{i}", "t": tok}).scalar_one() for i in range(2)]
        runs = [conn.execute(sa.text("INSERT INTO run (kind, key, model_id, code_version) VALUES ('x', :k, :m, 'v') "
                                     "RETURNING id"), {"k": f"k{i}", "m": models[0]}).scalar_one() for i in range(n_runs)]
        dataset = conn.execute(sa.text(
            "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens, filter_rule,"
            " content_hash) VALUES ('d', 's', :t, 4, 1, 4, 4, '{}'::jsonb, 'c') RETURNING id"), {"t": tok}).scalar_one()
    return models, runs, tok, dataset


def _frames(models: list[int], tok: int, dataset: int) -> dict[str, pl.DataFrame]:
    """One frame per loaded table, with the awkward values: NaN next to NULL (also inside arrays),
    float64 into REAL, int64 into smallint, empty arrays, text that CSV must quote or escape, JSON."""
    rng = np.random.default_rng(0)
    n = 6
    m = [models[i % 2] for i in range(n)]
    layer, idx = [i // 3 for i in range(n)], [i % 3 for i in range(n)]
    floats = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    floats[2] = math.inf
    return {
        "weight_stats": pl.DataFrame({
            "model_id": m, "layer": layer, "idx": idx, "w_in_norm": floats.tolist(), "w_out_norm": [1 / 3] * n,
            "input_bias": [-0.1, 1e-300, 5e-324, -0.0, 1e300, 2.5], "in_out_sim": [0.5, NAN, None, -math.inf, 1.0, 1e-8],
            "l2_penalty": [2.0] * n, "vocab_mean": [None] * n, "vocab_var": [NAN] * n, "vocab_skew": [0.1] * n,
            "vocab_kurtosis": [3.0, None, NAN, 4.0, 5.0, 6.0],
            "top_token_ids": [[1, 2], [], [3, 0, 7], [2**31 - 1], [-5], [0]],
            "top_token_values": [[0.5, NAN], [], [None, 0.1, 1 / 3], [1e-40], [-0.0], [math.inf]],
            "bottom_token_ids": [[0]] * n, "bottom_token_values": [[-0.5]] * n}),
        "activation_stats": pl.DataFrame({
            "model_id": m, "layer": layer, "idx": idx, "count": [2**40, 0, 1, 2, 3, 4],
            "mean": [1 / 3, NAN, None, -2.5, 1e-310, 7.0], "variance": [0.0] * n, "skew": [NAN] * n,
            "kurtosis": [3.0] * n, "pre_min": [-1.0] * n, "pre_max": [2.0] * n, "post_mean": [0.1] * n,
            "post_max": [None] * n, "act_frequency": [0.25] * n,
            "histogram": pl.Series([[0, 1, 2], [], None, [5] * 255, [2**31 - 1], [0]], dtype=pl.List(pl.Int64))}),
        "top_example": pl.DataFrame({
            "model_id": m, "layer": pl.Series(layer, dtype=pl.Int64), "idx": idx, "rank": [1, 2, 1, 2, 1, 2],
            "row_idx": [0, 5, 2**31 - 1, 3, 4, 1], "position": [0, 511, 3, 2, 1, 32767],
            "value": np.array([0.1, 1 / 3, 1e-45, -2.5, 3.4e38, 7.0], dtype=np.float32)}),
        "token_activation": pl.DataFrame({
            "model_id": m, "layer": layer, "idx": idx, "token_id": [0, 1, 2, 3, 4, 5], "count": [1, 2, 3, 4, 5, 6],
            "mean_act": [1 / 3, 0.1, -0.0, 1e-39, 2.0, 3.0], "max_act": [1.0] * n}),
        "neuron_feature": pl.DataFrame({
            "model_id": m, "layer": layer, "idx": idx, "rank": [1] * n, "feature": TEXTS[:n], "feature_kind": TEXTS[n:2 * n],
            "on_previous": [True, False, True, False, False, True], "variance_reduction": [0.5, 0.25, 1e-30, 0.0, 1.0, 0.1]}),
        "neuron_label": pl.DataFrame({
            "model_id": m, "layer": layer, "idx": idx, "label": ["unigram", "a\tb", "ü", "x\\y", "p", "q"],
            "score": [0.9, 1 / 3, 1e-300, 0.0, -1.0, 2.0],
            "evidence": [json.dumps({"token": t, "vr": 0.5, "n": None, "list": [1, 2.5, "ü"]}) for t in TEXTS[:n]]}),
        "vocab_token": pl.DataFrame({"tokenizer_id": [tok] * len(TEXTS), "token_id": list(range(len(TEXTS))), "text": TEXTS}),
        "dataset_row": pl.DataFrame({"dataset_id": [dataset] * 2, "row_idx": [0, 1],
                                     "tokens": pl.Series([[0, 5, 2**31 - 1, 3], [1, 1, 1, 1]], dtype=pl.List(pl.Int32))}),
    }


def _rows(conn, table: str, where: str, value: int) -> list[tuple]:
    cols = [c.name for c in schema.Base.metadata.tables[table].columns if c.name not in ("run_id", "tokenizer_id", "dataset_id")]
    order = [c.name for c in schema.Base.metadata.tables[table].primary_key.columns if c.name in cols]
    rows = conn.execute(sa.text(f"SELECT {', '.join(cols)} FROM {table} WHERE {where} = :v ORDER BY {', '.join(order)}"),
                        {"v": value}).all()
    return [tuple(r) for r in rows]


def _same(a, b) -> bool:
    """Equal values, also for float: bit for bit (no NaN may be stored at all)."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_binary_copy_loads_exactly_what_the_text_copy_loads(engine):
    models, runs, tok, dataset = _models_and_runs(engine, 2)
    frames = _frames(models, tok, dataset)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        for table, frame in frames.items():
            info = _table_info(raw, table, frame.columns)
            assert info is not None, f"{table} would not load in binary"
    loaded: dict[str, list[list[tuple]]] = {}
    for fmt, run in zip(("text", "binary"), runs):
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            # vocab/dataset rows have no run: load them under a second tokenizer/dataset for the binary pass
            tok_id, ds_id = tok, dataset
            if fmt == "binary":
                tok_id = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES "
                                              "('t2', 'h2', 99) RETURNING id")).scalar_one()
                ds_id = conn.execute(sa.text(
                    "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens,"
                    " filter_rule, content_hash) VALUES ('d2', 's', :t, 4, 1, 4, 4, '{}'::jsonb, 'c') RETURNING id"),
                    {"t": tok_id}).scalar_one()
            for table, frame in frames.items():
                if table == "vocab_token":
                    frame = frame.with_columns(tokenizer_id=pl.lit(tok_id))
                elif table == "dataset_row":
                    frame = frame.with_columns(dataset_id=pl.lit(ds_id))
                else:
                    frame = frame.with_columns(run_id=pl.lit(run))
                assert copy_frame(raw, table, frame, format=fmt) == frame.height
            for table in frames:
                where, value = {"vocab_token": ("tokenizer_id", tok_id), "dataset_row": ("dataset_id", ds_id)}.get(
                    table, ("run_id", run))
                loaded.setdefault(table, []).append(_rows(conn, table, where, value))
    for table, (text_rows, binary_rows) in loaded.items():
        assert len(text_rows) == frames[table].height
        assert len(binary_rows) == len(text_rows), table
        for t, b in zip(text_rows, binary_rows):
            assert _same(t, b), f"{table}: text COPY loaded {t}, binary COPY {b}"
    with engine.connect() as conn:  # and the values are the intended ones: NaN is NULL, never 'NaN'
        assert conn.execute(sa.text("SELECT count(*) FROM weight_stats WHERE in_out_sim = 'NaN' "
                                    "OR 'NaN' = ANY(top_token_values)")).scalar_one() == 0
        row = conn.execute(sa.text("SELECT in_out_sim, top_token_values FROM weight_stats WHERE run_id = :r AND idx = 1 "
                                   "AND layer = 0"), {"r": runs[1]}).one()
        assert row.in_out_sim is None and row.top_token_values == []
        texts = conn.execute(sa.text("SELECT text FROM vocab_token WHERE tokenizer_id <> :t ORDER BY token_id"),
                             {"t": tok}).scalars().all()
        assert texts == TEXTS
        ev = conn.execute(sa.text("SELECT evidence->>'token' FROM neuron_label WHERE run_id = :r ORDER BY layer, idx"),
                          {"r": runs[1]}).scalars().all()
        assert ev == TEXTS[:6]


def test_every_loaded_table_takes_the_binary_path(engine):
    """The tables ingestion loads all have binary-encodable columns (a new column type would
    silently fall back to the slower text path)."""
    tables = [t for t in RESULT_TABLES if t != "family"] + ["vocab_token", "neuron", "dataset_row", "family_member"]
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        for table in tables:
            columns = [c.name for c in schema.Base.metadata.tables[table].columns]
            assert _table_info(raw, table, columns) is not None, table


def test_nul_in_text_is_refused_by_both_paths(engine):
    models, runs, tok, dataset = _models_and_runs(engine, 1)
    frame = pl.DataFrame({"tokenizer_id": [tok], "token_id": [0], "text": ["a\x00b"]})
    for fmt in ("text", "binary"):
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire):
            with engine.begin() as conn:
                copy_frame(conn.connection.driver_connection, "vocab_token", frame, format=fmt)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vocab_token")).scalar_one() == 0


def _stats_frame(model_id: int, run_id: int) -> pl.DataFrame:
    return pl.DataFrame({"run_id": [run_id], "model_id": [model_id], "layer": [0], "idx": [0], "rank": [1],
                         "row_idx": [0], "position": [0], "value": [1.0]})


def test_a_missing_referenced_key_is_refused_and_nothing_lands(engine):
    models, runs, _, _ = _models_and_runs(engine, 1)
    for bad in (_stats_frame(models[0] + 100, runs[0]), _stats_frame(models[0], runs[0] + 100)):
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="is not present in table"):
            with engine.begin() as conn:
                copy_frame(conn.connection.driver_connection, "top_example", bad)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM top_example")).scalar_one() == 0


def test_referenced_rows_stay_locked_until_commit_and_triggers_come_back(engine, db_url):
    """Like the per-row foreign-key triggers, the load keeps the referenced model and run from being
    deleted until it commits; after the COPY, cascades in the same transaction work again."""
    models, runs, _, _ = _models_and_runs(engine, 1)
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as loader, psycopg.connect(url, autocommit=True) as other:
        with loader.transaction():
            copy_frame(loader, "top_example", _stats_frame(models[0], runs[0]))
            assert loader.execute("SELECT current_setting('session_replication_role')").fetchone()[0] == "origin"
            other.execute("SET lock_timeout = '300ms'")
            for table, key in (("model", models[0]), ("run", runs[0])):
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    other.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
            loader.execute("DELETE FROM run WHERE id = %s", (runs[0],))  # the cascade fires
            assert loader.execute("SELECT count(*) FROM top_example").fetchone()[0] == 0
            raise psycopg.Rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM top_example")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM run")).scalar_one() == 1


def test_a_role_that_may_not_skip_triggers_loads_the_same_rows(engine, db_url):
    """Without the privilege to set session_replication_role, every row is checked by the triggers:
    same rows, same refusal of a missing key."""
    models, runs, _, _ = _models_and_runs(engine, 1)
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    role = f"atlas_loader_{runs[0]}_{models[0]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        with psycopg.connect(url) as conn:
            conn.execute(f'SET ROLE "{role}"')
            conn.commit()
            with conn.transaction():
                copy_frame(conn, "top_example", _stats_frame(models[0], runs[0]))
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                with conn.transaction():
                    copy_frame(conn, "top_example", _stats_frame(models[0] + 100, runs[0]).with_columns(rank=pl.lit(2)))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT model_id, value FROM top_example")).all() == [(models[0], 1.0)]
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')
