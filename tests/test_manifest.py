"""Manifest parsing and planning against a real database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from atlas.errors import AtlasError
from atlas.app.manifest import load_manifest, plan

MANIFEST = """
[datasets.tiny]
tokenizer_from = "a"
inputs = ["corpus.txt"]
context_length = 16

[cohorts.pair]
dataset = "tiny"
reference = "b"
models = [{ name = "a", source = "ckpt/a", seed = "s0" }, { name = "b", source = "ckpt/b", seed = "s1" }]
"""


def _write(tmp_path, text):
    path = tmp_path / "atlas.toml"
    path.write_text(text)
    return path


def test_manifest_resolves_paths_relative_to_itself(tmp_path):
    (tmp_path / "ckpt" / "a").mkdir(parents=True)
    manifest = load_manifest(_write(tmp_path, MANIFEST))
    cohort = manifest.cohorts["pair"]
    assert cohort.reference == "b"
    assert cohort.models[0].source == str((tmp_path / "ckpt" / "a").resolve())
    assert cohort.models[1].source == "ckpt/b"  # not on disk: kept as written (a hub name, maybe)
    assert manifest.datasets["tiny"].inputs == (str(tmp_path / "corpus.txt"),)


@pytest.mark.parametrize("broken, message", [
    ("[cohorts.x]\ndataset = 'nope'\nmodels = [{name='a', source='a'}]\n", "not defined"),
    ("[datasets.d]\ntokenizer_from = 'zz'\ninputs = ['x']\n", "not in the manifest"),
    ("[datasets.d]\ntokenizer_from = 'a'\n", "needs inputs"),
    ("[cohorts.x\n", "not valid TOML"),
])
def test_broken_manifests_say_what_to_fix(tmp_path, broken, message):
    with pytest.raises(AtlasError, match=message):
        load_manifest(_write(tmp_path, broken))


def test_missing_manifest_file(tmp_path):
    with pytest.raises(AtlasError, match="does not exist"):
        load_manifest(tmp_path / "absent.toml")


def test_plan_orders_steps_by_prerequisites(engine, tmp_path):
    manifest = load_manifest(_write(tmp_path, MANIFEST))
    assert [s.kind for s in plan(engine, manifest)] == ["build_dataset"]

    with engine.begin() as conn:
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('t','h',9) RETURNING id")).scalar()
        ds = conn.execute(sa.text(
            "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens, filter_rule,"
            " content_hash) VALUES ('tiny', 'x', :t, 16, 1, 16, 15, '{}', 'h') RETURNING id"), {"t": tok}).scalar()
    steps = plan(engine, manifest)
    assert [s.kind for s in steps] == ["ingest_model", "ingest_model"]
    assert {s.key for s in steps} == {"ingest:a:tiny", "ingest:b:tiny"}

    with engine.begin() as conn:
        for name in ("a", "b"):
            mid = conn.execute(sa.text(
                "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
                " act_fn, tokenizer_id) VALUES (:n, 'x', 'GPT2', 1, 4, 2, 1, 4, 16, 9, 'gelu', :t) RETURNING id"),
                {"n": name, "t": tok}).scalar()
            for kind in ("stats", "weights"):
                conn.execute(sa.text(
                    "INSERT INTO run (kind, key, model_id, dataset_id, code_version, status) "
                    "VALUES (:k, :key, :m, :d, 'test', 'done')"), {"k": kind, "key": f"{kind}{name}", "m": mid, "d": ds})
    steps = plan(engine, manifest)
    assert [(s.kind, s.args["reference"]) for s in steps] == [("correlate_cohort", "b")]
