"""Run lifecycle and COPY loading against a real PostgreSQL."""

from __future__ import annotations

import math

import polars as pl
import pytest
import sqlalchemy as sa

from atlas.copy import copy_frame
from atlas.errors import AtlasError
from atlas.runs import begin_run


def _model(engine) -> int:
    with engine.begin() as conn:
        tok = conn.execute(sa.text(
            "INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('t', 'h', 4) RETURNING id")).scalar_one()
        return conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
            " act_fn, tokenizer_id) VALUES ('m', 'src', 'GPT2', 1, 4, 2, 1, 4, 8, 4, 'gelu', :t) RETURNING id"),
            {"t": tok}).scalar_one()


def _weights_frame(model_id: int, bias: float = -1.0) -> pl.DataFrame:
    return pl.DataFrame({
        "model_id": [model_id, model_id], "layer": [0, 0], "idx": [0, 1],
        "w_in_norm": [1.0, 2.0], "w_out_norm": [1.0, 2.0], "input_bias": [bias, bias], "in_out_sim": [0.5, float("nan")],
        "l2_penalty": [2.0, 8.0], "vocab_mean": [0.0, 0.0], "vocab_var": [1.0, 1.0], "vocab_skew": [0.0, None],
        "vocab_kurtosis": [3.0, 3.0], "top_token_ids": [[1, 2], [3, 0]], "top_token_values": [[0.5, float("nan")], [0.1, 0.0]],
        "bottom_token_ids": [[0], [1]], "bottom_token_values": [[-0.5], [-0.1]],
    })


def test_publish_is_whole_and_repeat_is_a_noop(engine, atlas_home):
    model_id = _model(engine)
    params = {"what": "weights"}
    run = begin_run(engine, "weights", model_id=model_id, params=params)
    assert run is not None
    with run:
        run.publish({"weight_stats": _weights_frame(model_id)})
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT idx, in_out_sim, vocab_skew, top_token_values FROM weight_stats ORDER BY idx")).all()
        status = conn.execute(sa.text("SELECT status FROM run")).scalar_one()
    assert status == "done"
    assert rows[0].in_out_sim == 0.5 and rows[1].in_out_sim is None  # NaN became NULL, not 0
    assert rows[1].vocab_skew is None
    assert rows[0].top_token_values[0] == 0.5 and rows[0].top_token_values[1] is None
    assert begin_run(engine, "weights", model_id=model_id, params=params) is None  # no-op


def test_failure_inside_publish_leaves_nothing(engine, atlas_home):
    model_id = _model(engine)
    run = begin_run(engine, "weights", model_id=model_id, params={})

    def write(conn):
        copy_frame(conn, "weight_stats", _weights_frame(model_id).with_columns(run_id=pl.lit(run.id)))
        raise AtlasError("disk on fire — call the fire brigade")

    with pytest.raises(AtlasError):
        with run:
            run.publish(write)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM weight_stats")).scalar_one() == 0
        status, error = conn.execute(sa.text("SELECT status, error FROM run")).one()
    assert status == "failed" and error == "disk on fire — call the fire brigade"
    # a failed run is taken over by the next attempt
    again = begin_run(engine, "weights", model_id=model_id, params={})
    assert again is not None and again.id == run.id
    again.close()


def test_a_running_run_cannot_be_claimed_twice(engine, atlas_home):
    model_id = _model(engine)
    first = begin_run(engine, "weights", model_id=model_id, params={})
    with pytest.raises(AtlasError, match="another process"):
        begin_run(engine, "weights", model_id=model_id, params={})
    first.close()  # e.g. the worker died: its lock goes with its connection
    second = begin_run(engine, "weights", model_id=model_id, params={})
    assert second is not None
    second.close()


def test_force_replaces_results(engine, atlas_home):
    model_id = _model(engine)
    run = begin_run(engine, "weights", model_id=model_id, params={})
    run.publish({"weight_stats": _weights_frame(model_id, bias=-1.0)})
    forced = begin_run(engine, "weights", model_id=model_id, params={}, force=True)
    forced.publish({"weight_stats": _weights_frame(model_id, bias=-7.0)})
    with engine.connect() as conn:
        biases = conn.execute(sa.text("SELECT input_bias FROM weight_stats")).scalars().all()
    assert biases == [-7.0, -7.0]


def test_copy_keeps_odd_strings(engine):
    texts = ["", " the", 'quote"d', "comma,here", "new\nline", "NULL", "back\\slash"]
    frame = pl.DataFrame({"tokenizer_id": [0] * len(texts), "token_id": list(range(len(texts))), "text": texts})
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tokenizer (id, name, content_hash, vocab_size) VALUES (0, 't', 'h', 7)"))
        copy_frame(conn.connection.driver_connection, "vocab_token", frame)
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT text FROM vocab_token ORDER BY token_id")).scalars().all()
    assert back == texts
    assert not any(isinstance(t, float) and math.isnan(t) for t in back)


def _state(engine, run_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT state FROM run_state WHERE id = :i"), {"i": run_id}).scalar_one()


def test_a_run_whose_process_is_gone_is_stale_and_is_taken_over(engine, atlas_home):
    model_id = _model(engine)
    run = begin_run(engine, "weights", model_id=model_id, params={"p": 1})
    assert _state(engine, run.id) == "running"
    run._stop_heartbeat()
    run._lock_conn.invalidate()  # the process dies: its session ends, its lock goes with it
    run._lock_conn = None
    assert _state(engine, run.id) == "stale"
    again = begin_run(engine, "weights", model_id=model_id, params={"p": 1})  # the next caller resumes it
    assert again.id == run.id and _state(engine, run.id) == "running"
    again.close()


def test_two_callers_racing_for_one_new_run_get_one_run_and_a_clear_refusal(engine, atlas_home):
    """The loser of the race never sees a raw IntegrityError: it finds the winner's row and its lock."""
    import threading

    from atlas.runs import RunBusy

    model_id = _model(engine)
    barrier, outcomes = threading.Barrier(4), []

    def claim() -> None:
        barrier.wait()
        try:
            outcomes.append(begin_run(engine, "stats", model_id=model_id, params={"race": True}))
        except RunBusy as err:
            outcomes.append(err)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handles = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, RunBusy)]
    assert len(handles) == 1 and len(refused) == 3 and "being computed by another process" in str(refused[0])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run WHERE kind = 'stats'")).scalar_one() == 1
    handles[0].close()
