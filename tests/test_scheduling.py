"""Fault drills of scheduled ingestion, with real worker processes and a real PostgreSQL.

- two ``atlas worker`` processes drain a manifest; one is SIGKILLed mid-ingest; the cohort still
  completes, the killed step resumes from its checkpoint in the other worker, and the results equal
  an undisturbed run's;
- the manifest gains a model: it is ingested and the cohort correlated anew (the old run stays);
- the database stops and restarts under a run: one-line error, run marked failed, the rerun resumes;
- two databases sharing one ATLAS_HOME never resume each other's checkpoints.

The reconcile period and the stall timeout are made short by configuration (environment), never by
sleeping longer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

ATLAS = [sys.executable, "-m", "atlas.app.cli"]
FAST_SCHEDULE = {  # seconds: a dead worker's job is retried within about 1 + 3 + 2 s
    "ATLAS_WORKER_HEARTBEAT_S": "1", "ATLAS_STALLED_AFTER_S": "3", "ATLAS_RECONCILE_EVERY_S": "2",
    "ATLAS_DEVICE": "cpu", "ATLAS_CHECKPOINT_EVERY": "256",
}


def _env(db_url: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({"ATLAS_HOME": str(home), **FAST_SCHEDULE, **extra})
    if db_url:
        env["ATLAS_DATABASE_URL"] = db_url
    return env


def _manifest(tmp_path: Path, tiny_cohort, models: list[str]) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, text in enumerate(tiny_cohort.texts):
        (corpus / f"doc{i:03d}.txt").write_text(text)
    entries = ",\n  ".join(
        f'{{ name = "{name}", source = "{tiny_cohort.paths[tiny_cohort.names.index(name)]}", '
        f'seed = "{tiny_cohort.labels[tiny_cohort.names.index(name)]}" }}' for name in models)
    path = tmp_path / "atlas.toml"
    path.write_text(f"""
[datasets.tiny]
tokenizer_from = "{models[0]}"
inputs = ["corpus/*.txt"]
context_length = {tiny_cohort.context_length}
max_tokens = {tiny_cohort.rows.numel()}

[cohorts.tiny]
dataset = "tiny"
reference = "{models[0]}"
classify = false
models = [
  {entries},
]
""")
    return path


def _scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _rows(engine, table: str, run_id: int) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} WHERE run_id = :r ORDER BY 1, 2, 3, 4"),
                                                {"r": run_id})]


def _lock_holder_pid(engine, run_id: int) -> int | None:
    """The OS pid of the atlas process holding a run (from its session's application_name)."""
    name = _scalar(engine, """
        SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.classid = 7212 AND l.objid::bigint = :r AND l.granted""", r=run_id)
    return int(name.rsplit(":", 1)[1]) if name and name.startswith("atlas:") else None


def test_workers_survive_a_sigkill_and_a_cohort_that_grows(db_url, engine, tmp_path, tiny_cohort):
    home = tmp_path / "home"
    manifest = _manifest(tmp_path, tiny_cohort, ["tiny-a", "tiny-b"])
    env = _env(db_url, home, ATLAS_DRILL_BATCH_DELAY_S="0.15")
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]
    workers = [subprocess.Popen([*ATLAS, "worker", "--manifest", str(manifest), "--until-idle", "--name", f"w{i}"],
                                env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    try:
        # kill the worker computing a stats run as soon as that run has progress and a checkpoint
        deadline, victim = time.monotonic() + 240, None
        while victim is None:
            assert time.monotonic() < deadline, "no stats run made progress in time"
            assert all(w.poll() is None for w in workers), "a worker exited before the drill"
            run_id = _scalar(engine, "SELECT id FROM run WHERE kind = 'stats' AND status = 'running' AND tokens_done > 0 "
                                     "ORDER BY id LIMIT 1")
            checkpoints = list((home / "checkpoints").glob("stats-*.pt")) if run_id else []
            pid = _lock_holder_pid(engine, run_id) if checkpoints else None
            if pid in {w.pid for w in workers}:
                victim = next(w for w in workers if w.pid == pid)
                killed_run = run_id
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        victim.wait()
        assert _scalar(engine, "SELECT state FROM run_state WHERE id = :r", r=killed_run) == "stale"

        survivor = next(w for w in workers if w is not victim)
        assert survivor.wait(timeout=300) == 0, Path(logs[workers.index(survivor)].name).read_text()[-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    log = Path(logs[workers.index(survivor)].name).read_text()
    assert "of a dead worker: retried" in log
    resumed_at = int(re.search(r"resuming at ([\d,]+) tokens", log).group(1).replace(",", ""))
    assert 0 < resumed_at < tiny_cohort.rows.numel()  # resumed from the checkpoint, not from scratch

    states = dict(engine.connect().execute(sa.text("SELECT kind || ':' || coalesce(m.name, '-'), r.status FROM run r "
                                                    "LEFT JOIN model m ON m.id = r.model_id")).all())
    assert states == {"weights:tiny-a": "done", "weights:tiny-b": "done", "stats:tiny-a": "done",
                      "stats:tiny-b": "done", "correlation:tiny-a": "done", "examples:tiny-a": "done"}
    assert _scalar(engine, "SELECT count(*) FROM queue_job WHERE status NOT IN ('succeeded', 'failed')") == 0

    # the killed-and-resumed run equals the same run computed undisturbed
    from atlas.ingest.models import load_model
    from atlas.ingest.runs.stats import StatsOptions, run_stats

    after_resume = {t: _rows(engine, t, killed_run) for t in ("activation_stats", "top_example", "token_activation")}
    model = _scalar(engine, "SELECT m.source FROM run r JOIN model m ON m.id = r.model_id WHERE r.id = :r", r=killed_run)
    again = run_stats(engine, load_model(model), "tiny", StatsOptions(force=True, progress=False, checkpoint_every=256,
                                                                       log=lambda m: None))
    assert again.run_id == killed_run and again.resumed_at == 0
    for table, rows in after_resume.items():
        assert _rows(engine, table, killed_run) == rows, table

    # the cohort grows: the new seed is ingested, then the cohort is correlated anew; the old run stays
    first_correlation = _scalar(engine, "SELECT id FROM run WHERE kind = 'correlation'")
    _manifest(tmp_path, tiny_cohort, ["tiny-a", "tiny-b", "tiny-c"])
    grown = subprocess.run([*ATLAS, "worker", "--manifest", str(manifest), "--until-idle"], env=_env(db_url, home),
                           capture_output=True, text=True, timeout=300)
    assert grown.returncode == 0, grown.stderr[-3000:]
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT id, params FROM run WHERE kind = 'correlation' AND status = 'done' "
                                    "ORDER BY id")).all()
        assert [r.id for r in runs][0] == first_correlation and len(runs) == 2
        assert runs[1].params["partners"] == ["tiny-b", "tiny-c"]
        assert conn.execute(sa.text("SELECT count(*) FROM neuron_universality WHERE run_id = :r"),
                            {"r": first_correlation}).scalar() > 0  # the old run stays queryable
    again = subprocess.run([*ATLAS, "schedule", str(manifest)], env=_env(db_url, home), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_database_restart_mid_run_fails_in_one_line_and_the_rerun_resumes(tiny_cohort):
    """A private embedded PostgreSQL (ATLAS_HOME/pg) that the test stops and starts under a running ingestion.
    Its home is a short directory in /tmp: the server's own user must reach it, and its socket lives there."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="atlas-drill-"))
    home.chmod(0o755)
    env = _env(None, home)
    setup = subprocess.run([*ATLAS, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr
    url = subprocess.run([*ATLAS, "db", "url", "--show-password"], env=env, capture_output=True, text=True).stdout.strip()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        tiny_cohort.store_dataset(engine)
        cmd = [*ATLAS, "ingest", "--model", str(tiny_cohort.paths[0]), "--dataset", "tiny", "--no-weights",
               "--batch-size", "8", "--checkpoint-every", "256"]
        proc = subprocess.Popen([*cmd, "--batch-delay", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while not list((home / "checkpoints").glob("stats-*.pt")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        engine.dispose()
        assert subprocess.run([*ATLAS, "db", "stop"], env=env, capture_output=True, timeout=60).returncode == 0
        time.sleep(3)  # the run notices the database is gone; it waits for it to come back to record the failure
        assert subprocess.run([*ATLAS, "db", "start"], env=env, capture_output=True, timeout=60).returncode == 0
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert "Traceback" not in err, err
        assert len(errors) == 1 and "lost the database connection" in errors[0], err
        with engine.connect() as conn:
            status, error = conn.execute(sa.text("SELECT status, error FROM run WHERE kind = 'stats'")).one()
        assert status == "failed" and "lost the database connection" in error

        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert re.search(r"resuming at [1-9][\d,]* tokens", resumed.stdout), resumed.stdout
        assert _scalar(engine, "SELECT status FROM run WHERE kind = 'stats'") == "done"
    finally:
        engine.dispose()
        subprocess.run([*ATLAS, "db", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def test_two_databases_sharing_atlas_home_never_mix_checkpoints(pg_server, tmp_path, tiny_cohort, monkeypatch):
    """The reported corruption: a demo-a ingestion killed in database 1, then a demo-c ingestion in
    database 2 (same run id, same run key, same ATLAS_HOME) must not resume demo-a's checkpoint."""
    from tests.conftest import TEMPLATE, _fresh_database

    home = tmp_path / "home"
    databases = [_fresh_database(pg_server, template=TEMPLATE) for _ in range(2)]
    urls = [next(d) for d in databases]
    engines = [sa.create_engine(u) for u in urls]
    try:
        for engine in engines:
            tiny_cohort.store_dataset(engine)
        cmd = [*ATLAS, "ingest", "--no-weights", "--dataset", "tiny", "--batch-size", "8", "--checkpoint-every", "256"]
        first = subprocess.Popen([*cmd, "--model", str(tiny_cohort.paths[0]), "--batch-delay", "0.2"],
                                 env=_env(urls[0], home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not list((home / "checkpoints").glob("stats-*.pt")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        first.kill()
        first.wait()
        (left,) = list((home / "checkpoints").glob("stats-*.pt"))

        other = subprocess.run([*cmd, "--model", str(tiny_cohort.paths[2])], env=_env(urls[1], home),
                               capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
        assert "resuming" not in other.stdout  # database 2 starts its own run from scratch
        assert left.exists()  # and leaves database 1's checkpoint alone

        from atlas.ingest.models import load_model
        from atlas.ingest.runs.stats import StatsOptions, run_stats

        run_id = _scalar(engines[1], "SELECT id FROM run WHERE kind = 'stats'")
        stored = {t: _rows(engines[1], t, run_id) for t in ("activation_stats", "top_example")}
        monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "clean-home"))
        run_stats(engines[1], load_model(str(tiny_cohort.paths[2])), "tiny",
                  StatsOptions(force=True, progress=False, batch_size=8, log=lambda m: None))
        for table, rows in stored.items():
            assert _rows(engines[1], table, run_id) == rows, table  # tiny-c's own numbers, not tiny-a's

        resumed = subprocess.run([*cmd, "--model", str(tiny_cohort.paths[0])], env=_env(urls[0], home),
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0 and re.search(r"resuming at [1-9]", resumed.stdout), resumed.stdout
    finally:
        for engine in engines:
            engine.dispose()
        for database in databases:
            database.close()  # drops it


def test_the_planner_runs_a_manifest_in_process_like_the_demo(db_url, engine, tmp_path, tiny_cohort, monkeypatch):
    """`atlas demo` is a manifest run by the planner in this process: dataset → ingest → correlate →
    classify, each step once; a second pass finds nothing missing."""
    from atlas.app.manifest import load_manifest
    from atlas.app.planner import plan, run_in_process

    for key, value in _env(db_url, tmp_path / "home").items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    path = _manifest(tmp_path, tiny_cohort, ["tiny-a", "tiny-b"])
    path.write_text(path.read_text().replace("classify = false", "classify = true"))
    manifest = load_manifest(path)
    said: list[str] = []
    assert run_in_process(engine, manifest, log=said.append) == 6
    assert [line.split(":")[0] for line in said] == ["→ dataset", "→ ingest", "→ ingest", "→ correlate", "→ examples",
                                                     "→ classify"]
    with engine.connect() as conn:
        kinds = conn.execute(sa.text("SELECT kind, status FROM run ORDER BY id")).all()
    assert sorted(kinds) == sorted([("weights", "done"), ("stats", "done")] * 2 + [("correlation", "done"),
                                                                                     ("examples", "done"),
                                                                                     ("classify", "done")])
    assert plan(engine, manifest) == [] and run_in_process(engine, manifest) == 0

    # the cohort asks for the paper's baseline instead: correlated again with it, then examples and labels anew
    path.write_text(path.read_text().replace("classify = true", 'classify = true\nrotation = "gaussian_unit_rows"'))
    said.clear()
    assert run_in_process(engine, load_manifest(path), log=said.append) == 3
    with engine.connect() as conn:
        rotations = conn.execute(sa.text("SELECT params->>'rotation' FROM run WHERE kind = 'correlation' ORDER BY id")).scalars().all()
    assert rotations == ["orthogonal", "gaussian_unit_rows"]
