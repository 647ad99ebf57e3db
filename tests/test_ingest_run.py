"""Ingestion end to end on the tiny cohort: results against numpy/scipy on the full activation
matrix, idempotence, bad input, and a SIGKILLed run that resumes to identical results."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner
from scipy import stats as sps

from atlas.app.cli import main
from atlas.errors import AtlasError
from atlas.ingest.runs.stats import StatsOptions, ingest_model
from atlas.ingest.models import load_model
from tests.reference import hf_mlp_activations

RESULT_TABLES = {
    "activation_stats": "layer, idx",
    "top_example": "layer, idx, rank",
    "token_activation": "layer, idx, token_id",
    "weight_stats": "layer, idx",
}


def _rows(engine, table: str, run_id: int) -> list[tuple]:
    with engine.connect() as conn:
        sql = f"SELECT {_columns(conn, table)} FROM {table} WHERE run_id = :r ORDER BY {RESULT_TABLES[table]}"
        return [tuple(r) for r in conn.execute(sa.text(sql), {"r": run_id}).all()]


def _columns(conn, table: str) -> str:
    cols = conn.execute(sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                                "AND column_name <> 'run_id' ORDER BY ordinal_position"), {"t": table}).scalars().all()
    return ", ".join(cols)


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.fixture
def tiny_db(engine, atlas_home, tiny_cohort):
    tiny_cohort.store_dataset(engine)
    return engine


@pytest.mark.slow
def test_ingest_matches_full_matrix_references(tiny_db, tiny_cohort):
    engine = tiny_db
    options = StatsOptions(batch_size=24, top_k=20, top_tokens=50, checkpoint_every=512, progress=False)
    outcomes = ingest_model(engine, str(tiny_cohort.paths[0]), dataset="tiny", cohort="tiny", seed_label="a",
                            options=options)
    assert [o.status for o in outcomes] == ["done", "done"]
    m = load_model(str(tiny_cohort.paths[0]))
    # the full activation matrix from plain transformers in float64 (not the code under test), at
    # the positions the dataset's filter rule keeps
    ctx = tiny_cohort.context_length
    rows = tiny_cohort.rows.numpy()
    keep = ~np.isin(rows, tiny_cohort.filter_rule["exclude_token_ids"]).reshape(-1)
    acts = hf_mlp_activations(tiny_cohort.paths[0], tiny_cohort.rows)
    pre, post = (acts[k].reshape(-1, m.n_neurons)[keep] for k in ("pre", "post"))
    ids, index = rows.reshape(-1)[keep], np.arange(rows.size)[keep]

    with engine.connect() as conn:
        st = conn.execute(sa.text("SELECT * FROM activation_stats ORDER BY layer, idx")).mappings().all()
        ex = conn.execute(sa.text("SELECT * FROM top_example ORDER BY layer, idx, rank")).mappings().all()
        ta = conn.execute(sa.text("SELECT * FROM token_activation ORDER BY layer, idx, mean_act DESC")).mappings().all()
        params = conn.execute(sa.text("SELECT params FROM run WHERE kind = 'stats'")).scalar_one()
        n_weights = conn.execute(sa.text("SELECT count(*) FROM weight_stats")).scalar_one()
    n = m.n_neurons
    assert len(st) == n and n_weights == n
    get = lambda key: np.array([r[key] for r in st], dtype=float)  # noqa: E731
    assert (get("count") == pre.shape[0]).all()
    np.testing.assert_allclose(get("mean"), pre.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(get("variance"), pre.var(0), rtol=1e-5)
    np.testing.assert_allclose(get("skew"), sps.skew(pre, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(get("kurtosis"), sps.kurtosis(pre, axis=0, fisher=False), rtol=1e-5)
    np.testing.assert_allclose(get("pre_min"), pre.min(0), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(get("pre_max"), pre.max(0), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(get("post_max"), post.max(0), rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(get("post_mean"), post.mean(0), rtol=1e-5, atol=1e-8)
    # a sign or a bin can differ only for values within float32 error (1e-5) of 0 or of an edge
    eps = 1e-5
    near_zero = (np.abs(pre) < eps).sum(0)
    assert (np.abs(np.round(get("act_frequency") * pre.shape[0]) - (post > 0).sum(0)) <= near_zero).all()
    # the paper's histogram: 256 edges evenly spaced on [-10, 15] (float32 values of them)
    edges = np.array(params["histogram_edges"])
    np.testing.assert_allclose(edges, np.linspace(-10.0, 15.0, 256), rtol=0, atol=2e-6)
    for j in (0, 17, n - 1):
        x = pre[:, j][:, None]
        surely = ((x >= edges[:-1] + eps) & (x < edges[1:] - eps)).sum(0)
        possibly = ((x >= edges[:-1] - eps) & (x <= edges[1:] + eps)).sum(0)
        stored = np.array(st[j]["histogram"])
        assert stored.shape == (255,) and (surely <= stored).all() and (stored <= possibly).all()
    # exact top-k examples: values and the (row, position) they point to
    for j in (3, 40, n - 5):
        mine = [r for r in ex if r["layer"] * m.d_mlp + r["idx"] == j]
        assert [r["rank"] for r in mine] == list(range(1, 21))
        order = np.argsort(-post[:, j], kind="stable")[:20]
        np.testing.assert_allclose([r["value"] for r in mine], post[order, j], rtol=1e-6, atol=2e-6)
        for r in mine:
            flat = r["row_idx"] * ctx + r["position"]
            assert abs(post[index == flat, j][0] - r["value"]) < 2e-6
            assert tiny_cohort.rows[r["row_idx"], r["position"]].item() not in tiny_cohort.filter_rule["exclude_token_ids"]
    # per-token mean and max for a neuron's stored tokens
    j = 7
    mine = [r for r in ta if r["layer"] * m.d_mlp + r["idx"] == j]
    assert len(mine) == 50
    means = {v: post[ids == v, j].mean() for v in np.unique(ids)}
    stored = [r["token_id"] for r in mine]
    ranked = np.array([means[v] for v in stored])  # the reference's means, in the stored order
    assert (np.diff(ranked) <= 2e-6).all()  # descending (up to float32 ties)
    assert max(means[v] for v in means if v not in stored) <= ranked[-1] + 2e-6  # and the top 50
    for r in mine[:10]:
        sel = ids == r["token_id"]
        assert r["count"] == sel.sum()
        assert abs(r["mean_act"] - post[sel, j].mean()) < 1e-5 and abs(r["max_act"] - post[sel, j].max()) < 2e-6

    # the same model, dataset and parameters again: a no-op
    again = ingest_model(engine, str(tiny_cohort.paths[0]), dataset="tiny", cohort="tiny", seed_label="a", options=options)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert _count(engine, "run") == 2


def test_bad_input_fails_in_one_line_and_leaves_the_db_unchanged(tiny_db, tiny_cohort, tmp_path):
    engine = tiny_db
    before = {t: _count(engine, t) for t in ("model", "run", "activation_stats", "weight_stats", "tokenizer")}
    with pytest.raises(AtlasError, match="no dataset named nope"):
        ingest_model(engine, str(tiny_cohort.paths[0]), dataset="nope")
    with pytest.raises(AtlasError, match="no model checkpoint directory"):
        ingest_model(engine, str(tmp_path / "missing"), dataset="tiny")
    # a dataset longer than the model's context
    from atlas.ingest.datasets import build_dataset

    build_dataset(engine, "long", tokenizer_source=str(tiny_cohort.tokenizer_dir), documents=tiny_cohort.texts,
                  context_length=64)
    before["tokenizer"] = _count(engine, "tokenizer")
    with pytest.raises(AtlasError, match="context length 64 but tiny-a takes at most 32"):
        ingest_model(engine, str(tiny_cohort.paths[0]), dataset="long")
    # a dataset made with another tokenizer
    from tests.test_models import _other_tokenizer_checkpoint

    odd = _other_tokenizer_checkpoint(tmp_path)
    with pytest.raises(AtlasError, match="tokenised with another tokenizer"):
        ingest_model(engine, str(odd), dataset="tiny")
    after = {t: _count(engine, t) for t in before}
    assert after == before


def test_nan_activations_fail_the_run_naming_the_layer(tiny_db, tiny_cohort, tmp_path):
    import shutil

    from transformers import GPT2LMHeadModel

    broken = tmp_path / "tiny-broken"
    shutil.copytree(tiny_cohort.paths[1], broken)
    hf = GPT2LMHeadModel.from_pretrained(broken)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[:, 5] = float("inf")
    hf.save_pretrained(broken)
    with pytest.raises(AtlasError, match=r"blocks\.0\.mlp\.hook_pre"):
        ingest_model(tiny_db, str(broken), dataset="tiny", weights=False)
    with tiny_db.connect() as conn:
        status, error = conn.execute(sa.text("SELECT status, error FROM run WHERE kind = 'stats'")).one()
    assert status == "failed" and "blocks.0.mlp.hook_pre" in error and "\n" not in error
    assert _count(tiny_db, "activation_stats") == 0


def test_cli_dataset_build_ingest_and_status(db_url, atlas_home, tiny_cohort, tmp_path):
    runner = CliRunner()
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i, text in enumerate(tiny_cohort.texts[:20]):
        (corpus / f"doc{i:02d}.txt").write_text(text)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join('{"text": %s}' % __import__("json").dumps(t) for t in tiny_cohort.texts[:20]))
    files = [str(p) for p in sorted(corpus.iterdir())]
    res = runner.invoke(main, ["dataset", "build", "small", "--model", str(tiny_cohort.paths[0]), "--context-length", "32",
                               "--max-tokens", "2048", *sum((["--input", f] for f in files), [])])
    assert res.exit_code == 0, res.output
    assert "64 rows × 32 = 2,048 tokens" in res.output
    same = runner.invoke(main, ["dataset", "build", "small2", "--tokenizer", str(tiny_cohort.tokenizer_dir),
                                "--context-length", "32", "--max-tokens", "2048", "--input", str(jsonl)])
    assert same.exit_code == 0, same.output
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT content_hash FROM dataset ORDER BY name")).scalars().all()
        rule = conn.execute(sa.text("SELECT filter_rule FROM dataset WHERE name = 'small'")).scalar_one()
    assert hashes[0] == hashes[1]  # same documents in .txt files and in JSONL: same rows
    assert set(rule["exclude_token_ids"]) == set(tiny_cohort.filter_rule["exclude_token_ids"])
    # bad input: one line on stderr, non-zero exit, nothing written
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    bad = runner.invoke(main, ["dataset", "build", "x", "--tokenizer", str(tiny_cohort.tokenizer_dir), "--input", str(empty)])
    assert bad.exit_code != 0 and "corpus is empty" in bad.output and bad.output.count("\n") == 1
    too_long = runner.invoke(main, ["dataset", "build", "x", "--model", str(tiny_cohort.paths[0]), "--context-length", "33",
                                    "--input", files[0]])
    assert too_long.exit_code != 0 and "exceeds the n_ctx 32" in too_long.output
    res = runner.invoke(main, ["ingest", "--model", str(tiny_cohort.paths[2]), "--cohort", "tiny", "--seed-label", "c",
                               "--dataset", "small", "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    assert "stats of tiny-c: done" in res.output and "weights of tiny-c: done" in res.output
    res = runner.invoke(main, ["ingest", "--model", str(tiny_cohort.paths[2]), "--dataset", "small"])
    assert res.exit_code == 0 and "already done" in res.output
    status = runner.invoke(main, ["status"])
    assert status.exit_code == 0 and "tiny-c" in status.output
    engine.dispose()


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_results(tiny_db, db_url, atlas_home, tiny_cohort):
    engine = tiny_db
    cmd = [sys.executable, "-m", "atlas.app.cli", "ingest", "--model", str(tiny_cohort.paths[1]), "--dataset", "tiny",
           "--no-weights", "--batch-size", "8", "--checkpoint-every", "256"]
    env = dict(os.environ, ATLAS_DATABASE_URL=db_url, ATLAS_HOME=str(atlas_home))
    proc = subprocess.Popen(cmd + ["--batch-delay", "0.25"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = atlas_home / "checkpoints"
    deadline = time.monotonic() + 120
    def progressed() -> bool:
        with engine.connect() as conn:
            return (conn.execute(sa.text("SELECT max(tokens_done) FROM run")).scalar() or 0) > 0

    # kill once a checkpoint exists and the run reported progress, never after a fixed sleep
    while not (list(checkpoints.glob("stats-*.pt")) and progressed()):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint was written within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with engine.connect() as conn:
        status, done = conn.execute(sa.text("SELECT status, tokens_done FROM run")).one()
    assert status == "running" and 0 < done < tiny_cohort.rows.numel()
    assert _count(engine, "activation_stats") == 0  # nothing published by the killed run

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # the second process resumed from the checkpoint: it did not stream the whole dataset again
    resuming = re.search(r"resuming at ([\d,]+) tokens", resumed.stdout)
    assert resuming, f"the rerun started over instead of resuming from the checkpoint:\n{resumed.stdout[-800:]}"
    resumed_at = int(resuming.group(1).replace(",", ""))
    total = tiny_cohort.rows.numel()
    assert 0 < resumed_at < total
    streamed = re.search(r"([\d,]+) tok/s", resumed.stdout)
    assert f"resumed at {resumed_at:,} tokens" in resumed.stdout and streamed is not None
    with engine.connect() as conn:
        run_id, status = conn.execute(sa.text("SELECT id, status FROM run")).one()
    assert status == "done" and not list(checkpoints.glob("stats-*.pt"))
    after_resume = {t: _rows(engine, t, run_id) for t in ("activation_stats", "top_example", "token_activation")}

    # the same run, uninterrupted (force recomputes it from scratch, in this process)
    options = StatsOptions(batch_size=8, checkpoint_every=256, progress=False, force=True)
    out = ingest_model(engine, str(tiny_cohort.paths[1]), dataset="tiny", weights=False, options=options)
    assert out[0].resumed_at == 0 and out[0].tokens == total
    assert out[0].run_id == run_id
    for table, rows in after_resume.items():
        assert _rows(engine, table, run_id) == rows, table
