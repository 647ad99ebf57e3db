"""Checkpoints belong to one run of one database: never resumed into anything else."""

from __future__ import annotations

from dataclasses import replace

import torch

from atlas.ingest.checkpoint import Checkpoint, CheckpointIdentity

IDENTITY = CheckpointIdentity(database="7300000000000000001/atlas/16384", run_id=1,
                              run_key="stats:model=1:cohort=None:dataset=1:params=ab", kind="stats",
                              models=("sha256:aaa",), dataset="sha256:ddd", params="p1", code_version="0.1.0+gabc")


def test_roundtrip_keeps_tensors_and_plain_values(tmp_path):
    ckpt = Checkpoint(tmp_path, IDENTITY)
    state = {"rows_done": 12, "acc": {"sum": torch.arange(4, dtype=torch.float64)}, "blob": b"\x00\x01", "names": ["a"]}
    ckpt.save(state)
    got = ckpt.load()
    assert got["rows_done"] == 12 and got["blob"] == b"\x00\x01" and got["names"] == ["a"]
    assert torch.equal(got["acc"]["sum"], state["acc"]["sum"])
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write leaves no temporary file


def test_another_database_with_the_same_run_id_and_key_never_resumes(tmp_path):
    """The reported corruption: same run id and key in two databases sharing one directory."""
    mine = Checkpoint(tmp_path, IDENTITY)
    mine.save({"rows_done": 5})
    other = Checkpoint(tmp_path, replace(IDENTITY, database="7300000000000000002/atlas/16384", models=("sha256:ccc",)))
    assert other.path != mine.path
    assert other.load() is None
    assert mine.path.exists() and mine.load() == {"rows_done": 5}  # untouched by the other database


def test_same_run_other_code_version_or_params_starts_fresh_with_a_warning(tmp_path):
    Checkpoint(tmp_path, IDENTITY).save({"rows_done": 5})
    warnings: list[str] = []
    newer = Checkpoint(tmp_path, replace(IDENTITY, code_version="0.2.0"), warn=warnings.append)
    assert newer.load() is None
    assert len(warnings) == 1 and "another code version" in warnings[0]
    assert not list(tmp_path.glob("*.pt"))


def test_a_file_whose_stored_identity_differs_is_not_trusted(tmp_path):
    ckpt = Checkpoint(tmp_path, IDENTITY)
    forged = Checkpoint(tmp_path, replace(IDENTITY, dataset="sha256:other"))
    forged.save({"rows_done": 99})
    forged.path.rename(ckpt.path)  # right name, wrong contents
    warnings: list[str] = []
    assert Checkpoint(tmp_path, IDENTITY, warn=warnings.append).load() is None
    assert "another run or database" in warnings[0] and not ckpt.path.exists()


def test_a_torn_file_is_restarted_not_fatal(tmp_path):
    ckpt = Checkpoint(tmp_path, IDENTITY)
    ckpt.path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.path.write_bytes(b"not a torch file")
    warnings: list[str] = []
    assert Checkpoint(tmp_path, IDENTITY, warn=warnings.append).load() is None
    assert "cannot be read" in warnings[0]


def test_database_identity_tells_databases_apart(engine, pg_server):
    import sqlalchemy as sa

    from atlas.db import database_identity
    from tests.conftest import TEMPLATE, _fresh_database

    other_db = _fresh_database(pg_server, template=TEMPLATE)
    other = sa.create_engine(next(other_db))
    try:
        mine, theirs = database_identity(engine), database_identity(other)
        assert mine != theirs and mine.split("/")[0] == theirs.split("/")[0]  # one cluster, two databases
        assert mine.split("/")[1] == engine.url.database
    finally:
        other.dispose()
        other_db.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_schedule_keeps_writes_within_their_share_of_the_run_however_slow_the_disk():
    """A 48 GB state on a 0.5 GB/s disk (96 s a save), 1 s batches of 1M tokens: saves happen, and
    after every one of them the time spent writing is at most 5 % of the run's time so far."""
    from atlas.ingest.checkpoint import CheckpointSchedule

    clock, state_bytes, rate = _Clock(), 48e9, 0.5e9
    schedule = CheckpointSchedule(min_tokens=20_000_000, max_overhead=0.05, clock=clock)
    for _ in range(3 * 3600):  # a three-hour run
        clock.now += 1.0
        schedule.advance(1_000_000)
        if schedule.due(int(state_bytes)):
            clock.now += state_bytes / rate
            schedule.saved(state_bytes / rate, int(state_bytes))
            assert schedule.overhead <= 0.05 + 1e-9
    assert schedule.saves >= 5  # still checkpoints: about every 32 minutes
    assert schedule.overhead <= 0.05


def test_schedule_respects_the_token_floor_and_an_explicit_interval():
    from atlas.ingest.checkpoint import CheckpointSchedule

    clock = _Clock()
    auto = CheckpointSchedule(min_tokens=1000, clock=clock)
    clock.now = 1e6  # plenty of time: only the tokens hold it back
    auto.advance(999)
    assert not auto.due(1)
    auto.advance(1)
    assert auto.due(1)
    every = CheckpointSchedule(min_tokens=1000, max_overhead=None, clock=clock)
    every.advance(1000)
    assert every.due(10**15)  # an explicit interval is kept whatever a save costs


def test_a_background_save_is_a_snapshot_and_lands_whole(tmp_path):
    """The run goes on changing its tensors while the file is written: the file holds them as they
    were at save(); loading waits for the write."""
    ckpt = Checkpoint(tmp_path, IDENTITY)
    totals = torch.arange(1_000_000, dtype=torch.float64)
    waited = ckpt.save({"rows_done": 3, "acc": {"P_total": totals}}, background=True)
    totals += 1.0  # the next batches
    assert waited >= 0
    got = ckpt.load()
    assert got["rows_done"] == 3 and torch.equal(got["acc"]["P_total"], torch.arange(1_000_000, dtype=torch.float64))
    assert not ckpt.writing and not list(tmp_path.glob("*.tmp*"))


def test_a_failed_background_write_is_reported_by_the_next_save(tmp_path):
    import pytest

    ckpt = Checkpoint(tmp_path / "file-not-dir", IDENTITY)
    (tmp_path / "file-not-dir").write_text("a file where the directory should be")
    ckpt.save({"rows_done": 1}, background=True)
    with pytest.raises(OSError):
        ckpt.save({"rows_done": 2})
