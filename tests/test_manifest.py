"""The manifest (schema validation, one-line errors naming file, table and key; globs) and the
planner (dependency order, cohorts that grow) against a real database."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from atlas.app.manifest import load_manifest
from atlas.app.planner import plan
from atlas.errors import AtlasError

MANIFEST = """
[datasets.tiny]
tokenizer_from = "a"
inputs = ["corpus/*.txt"]
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


@pytest.fixture
def layout(tmp_path):
    """Files the manifest points at: two checkpoint dirs and a corpus of two texts."""
    for name in ("a", "b"):
        (tmp_path / "ckpt" / name).mkdir(parents=True)
    (tmp_path / "corpus").mkdir()
    for name in ("h1.txt", "h2.txt"):
        (tmp_path / "corpus" / name).write_text("some text")
    return tmp_path


def test_paths_and_globs_resolve_relative_to_the_manifest(layout):
    manifest = load_manifest(_write(layout, MANIFEST))
    cohort = manifest.cohorts["pair"]
    assert cohort.reference == "b"
    assert [m.source for m in cohort.models()] == [str((layout / "ckpt" / n).resolve()) for n in ("a", "b")]
    assert manifest.datasets["tiny"].inputs == tuple(str((layout / "corpus" / f).resolve()) for f in ("h1.txt", "h2.txt"))


def test_a_hub_name_is_kept_as_written(layout):
    text = MANIFEST.replace('source = "ckpt/b"', 'source = "EleutherAI/pythia-160m"')
    assert load_manifest(_write(layout, text)).cohorts["pair"].models()[1].source == "EleutherAI/pythia-160m"


BAD = [
    # (what the user wrote, words the one-line error must contain: table, key, problem)
    (MANIFEST.replace('inputs = ["corpus/*.txt"]', 'inputs = "corpus/h1.txt"'),
     ["[datasets.tiny]", "inputs", "valid list"]),
    (MANIFEST.replace("context_length = 16", 'context_length = "big"'),
     ["[datasets.tiny]", "context_length", "integer", "'big'"]),
    (MANIFEST.replace("context_length = 16", "context_length = 0"),
     ["[datasets.tiny]", "context_length", "greater than 0"]),
    (MANIFEST.replace('{ name = "a", source', '{ source'),
     ["[cohorts.pair]", "models[0].name", "missing"]),
    (MANIFEST.replace('name = "b"', 'name = "a"').replace('reference = "b"', 'reference = "a"'),
     ["[cohorts.pair]", "models[1].name = 'a'", "unique"]),
    (MANIFEST + '\n[cohorts.other]\ndataset = "tiny"\nmodels = [{ name = "a", source = "ckpt/a" }]\n',
     ["[cohorts.other]", "models[0].name = 'a'", "also in [cohorts.pair]"]),
    (MANIFEST.replace('source = "ckpt/b"', 'source = "ckpt/missing"'),
     ["[cohorts.pair]", "models[1].source", "no checkpoint directory"]),
    (MANIFEST.replace('inputs = ["corpus/*.txt"]', 'inputs = ["corpus/x*.txt"]'),
     ["[datasets.tiny]", "inputs[0]", "matches no file"]),
    (MANIFEST.replace('dataset = "tiny"', 'dataset = "nope"'),
     ["[cohorts.pair]", "dataset = 'nope'", "not defined"]),
    (MANIFEST.replace('tokenizer_from = "a"', 'tokenizer_from = "zz"'),
     ["[datasets.tiny]", "tokenizer_from = 'zz'", "not in the manifest"]),
    (MANIFEST.replace('reference = "b"', 'reference = "c"'),
     ["[cohorts.pair]", "reference = 'c'", "not one of its models"]),
    (MANIFEST.replace("context_length = 16", "context_length = 16\ncontext_lenght = 32"),
     ["[datasets.tiny]", "context_lenght", "not a known key"]),
    (MANIFEST.replace('inputs = ["corpus/*.txt"]', ""), ["[datasets.tiny]", "needs inputs"]),
    (MANIFEST.replace('{ name = "b", source = "ckpt/b", seed = "s1" }', '{ name = "b", glob = "ckpt/*" }'),
     ["[cohorts.pair]", "models[1]", "{dir}"]),
    ("[cohorts.x\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("text, words", BAD, ids=[w[1] if len(w) > 1 else w[0] for _, w in BAD])
def test_every_mistake_is_one_line_naming_file_table_and_key(layout, text, words):
    path = _write(layout, text)
    with pytest.raises(AtlasError) as err:
        load_manifest(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


def test_schedule_dry_run_refuses_a_bad_manifest_in_one_line(layout, db_url):
    path = _write(layout, MANIFEST.replace("context_length = 16", 'context_length = "big"'))
    result = subprocess.run([sys.executable, "-m", "atlas.app.cli", "schedule", str(path), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "[datasets.tiny] context_length" in result.stderr


def test_missing_manifest_file(tmp_path):
    with pytest.raises(AtlasError, match="does not exist"):
        load_manifest(tmp_path / "absent.toml")


def test_glob_entries_follow_new_checkpoint_directories(layout):
    text = MANIFEST + '\n[cohorts.run1]\ndataset = "tiny"\ncorrelate = false\nmodels = [{ glob = "runs/step-*", name = "run1-{dir}" }]\n'
    manifest = load_manifest(_write(layout, text))
    assert manifest.cohorts["run1"].models() == []
    half = layout / "runs" / "step-200"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # weights not written yet: not a checkpoint
    for step in ("step-100", "step-300"):
        (layout / "runs" / step).mkdir()
        (layout / "runs" / step / "config.json").write_text("{}")
        (layout / "runs" / step / "model.safetensors").write_bytes(b"")
    assert [m.name for m in manifest.cohorts["run1"].models()] == ["run1-step-100", "run1-step-300"]


# ---------------------------------------------------------------- planning

def _tokenizer_and_dataset(engine) -> tuple[int, int]:
    with engine.begin() as conn:
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('t','h',9) RETURNING id")).scalar()
        ds = conn.execute(sa.text(
            "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens, filter_rule,"
            " content_hash) VALUES ('tiny', 'x', :t, 16, 1, 16, 15, '{}', 'h') RETURNING id"), {"t": tok}).scalar()
    return tok, ds


def _ingested(engine, name: str, tok: int, ds: int) -> int:
    """A model with finished stats and weights runs (rows as the runs would leave them)."""
    with engine.begin() as conn:
        mid = conn.execute(sa.text(
            "INSERT INTO model (name, source, architecture, n_layers, d_model, d_mlp, n_heads, d_head, n_ctx, d_vocab,"
            " act_fn, tokenizer_id) VALUES (:n, 'x', 'GPT2', 1, 4, 2, 1, 4, 16, 9, 'gelu', :t) RETURNING id"),
            {"n": name, "t": tok}).scalar()
        for kind in ("stats", "weights"):
            conn.execute(sa.text(
                "INSERT INTO run (kind, key, model_id, dataset_id, code_version, status, finished_at) "
                "VALUES (:k, :key, :m, :d, 'test', 'done', now())"), {"k": kind, "key": f"{kind}{name}", "m": mid, "d": ds})
    return mid


def _finished(engine, kind: str, key: str, params: str, ds: int) -> None:
    with engine.begin() as conn:
        cohort = conn.execute(sa.text("INSERT INTO cohort (name) VALUES ('pair') ON CONFLICT (name) DO UPDATE "
                                      "SET name = EXCLUDED.name RETURNING id")).scalar()
        conn.execute(sa.text(
            "INSERT INTO run (kind, key, cohort_id, dataset_id, params, code_version, status, finished_at) "
            "VALUES (:k, :key, :c, :d, CAST(:p AS jsonb), 'test', 'done', clock_timestamp())"),
            {"k": kind, "key": key, "c": cohort, "d": ds, "p": params})


def test_plan_orders_steps_and_replans_a_cohort_that_grew(engine, layout):
    manifest = load_manifest(_write(layout, MANIFEST))
    assert [s.task for s in plan(engine, manifest)] == ["build_dataset"]

    tok, ds = _tokenizer_and_dataset(engine)
    steps = plan(engine, manifest)
    assert [s.key for s in steps] == ["ingest:a:tiny", "ingest:b:tiny"]

    for name in ("a", "b"):
        _ingested(engine, name, tok, ds)
    (step,) = plan(engine, manifest)
    assert step.task == "correlate_cohort" and step.kwargs["reference"] == "b" and step.kwargs["models"] == ["a", "b"]

    _finished(engine, "correlation", "c1", '{"reference": "b", "partners": ["a"]}', ds)
    examples, step = plan(engine, manifest)
    assert examples.task == "examples_cohort" and examples.kwargs == {"cohort": "pair", "dataset": "tiny"}
    assert step.task == "classify_cohort" and step.kwargs["models"] == ["a", "b"]
    _finished(engine, "examples", "e1", '{"models": ["a", "b"]}', ds)
    _finished(engine, "classify", "k1", '{"models": ["a", "b"]}', ds)
    assert plan(engine, manifest) == []

    # a third seed joins the cohort: it is ingested, then the cohort is correlated and classified anew
    (layout / "ckpt" / "c").mkdir()
    grown = load_manifest(_write(layout, MANIFEST.replace(
        '{ name = "b", source = "ckpt/b", seed = "s1" }',
        '{ name = "b", source = "ckpt/b", seed = "s1" }, { name = "c", source = "ckpt/c", seed = "s2" }')))
    assert [s.key for s in plan(engine, grown)] == ["ingest:c:tiny"]
    _ingested(engine, "c", tok, ds)
    (step,) = plan(engine, grown)
    assert step.task == "correlate_cohort" and step.kwargs["models"] == ["a", "b", "c"]
    _finished(engine, "correlation", "c2", '{"reference": "b", "partners": ["a", "c"]}', ds)
    examples, step = plan(engine, grown)
    assert examples.task == "examples_cohort" and step.task == "classify_cohort"
    assert step.kwargs["models"] == ["a", "b", "c"]


def test_a_classification_older_than_its_correlation_is_planned_again(engine, layout):
    manifest = load_manifest(_write(layout, MANIFEST))
    tok, ds = _tokenizer_and_dataset(engine)
    for name in ("a", "b"):
        _ingested(engine, name, tok, ds)
    _finished(engine, "classify", "k1", '{"models": ["a", "b"]}', ds)
    _finished(engine, "examples", "e1", '{"models": ["a", "b"]}', ds)
    _finished(engine, "correlation", "c1", '{"reference": "b", "partners": ["a"]}', ds)  # recomputed later
    assert [s.task for s in plan(engine, manifest)] == ["examples_cohort", "classify_cohort"]


def test_a_cohort_can_ask_for_the_papers_baseline_and_changing_it_correlates_again(engine, layout):
    """``rotation = "gaussian_unit_rows"`` (the paper's baseline) reaches the correlation task; a
    correlation with another baseline does not count as done; an unknown kind is one line."""
    tok, ds = _tokenizer_and_dataset(engine)
    for name in ("a", "b"):
        _ingested(engine, name, tok, ds)
    _finished(engine, "correlation", "c1", '{"reference": "b", "partners": ["a"], "rotation": "orthogonal"}', ds)
    assert [s.task for s in plan(engine, load_manifest(_write(layout, MANIFEST)))] == ["examples_cohort",
                                                                                      "classify_cohort"]

    paper = load_manifest(_write(layout, MANIFEST.replace('reference = "b"', 'reference = "b"\nrotation = "gaussian_unit_rows"')))
    (step,) = plan(engine, paper)
    assert step.task == "correlate_cohort" and step.kwargs["rotation"] == "gaussian_unit_rows"
    _finished(engine, "correlation", "c2", '{"reference": "b", "partners": ["a"], "rotation": "gaussian_unit_rows"}', ds)
    assert [s.task for s in plan(engine, paper)] == ["examples_cohort", "classify_cohort"]

    with pytest.raises(AtlasError) as err:
        load_manifest(_write(layout, MANIFEST.replace('reference = "b"', 'reference = "b"\nrotation = "haar"')))
    assert "[cohorts.pair]" in str(err.value) and "rotation" in str(err.value) and "\n" not in str(err.value)

