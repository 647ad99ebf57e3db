"""Universality over training: the zoo saves checkpoints during training, a checkpoint is a model of
the atlas with a step, the seeds at one step are correlated as a cohort, and the query layer (and
the view ``universality_over_training``) give the universal share per layer against training
tokens and one neuron's excess over training.

Checked from the user's side: the checkpoints are the models the training passed through (their
weights are what a shorter training run gives), the stored per-step results equal the per-neuron
correlation rows of that step's run, and a Pythia-style checkpoint (a GPT-NeoX directory) goes
through the same registration.
"""

from __future__ import annotations

import json
from dataclasses import replace

import polars as pl
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file

from atlas.errors import AtlasError
from atlas.ingest.corpus import grammar_corpus
from atlas.ingest.zoo import checkpoint_dirs, train_cohort
from tests.cohort_fixtures import TINY, TRAIN_DOCS, TRAIN_SEED


def test_zoo_saves_checkpoints_a_shorter_training_reaches(tiny_cohort, tmp_path):
    n_steps = TINY.n_steps()
    expected = sorted({int(round(f * n_steps)) for f in TINY.checkpoints})
    assert expected and all(0 < s < n_steps for s in expected)
    for path in tiny_cohort.paths:
        found = checkpoint_dirs(path)
        assert [c.step for c in found] == expected
        assert [c.train_tokens for c in found] == [s * TINY.batch_size * TINY.n_ctx for s in expected]
        meta = json.loads((path / "zoo.json").read_text())
        assert [c["step"] for c in meta["checkpoints"]] == expected
        final = load_file(str(path / "model.safetensors"))
        for c in found:
            assert (c.path / "config.json").is_file() and (c.path / "tokenizer.json").is_file()
            assert not torch.equal(load_file(str(c.path / "model.safetensors"))["transformer.h.0.mlp.c_fc.weight"],
                                   final["transformer.h.0.mlp.c_fc.weight"])
    # the first checkpoint holds the parameters after exactly that many optimizer steps: its digest
    # is reproduced by training again with the same recipe and seed (the probe covers the first steps)
    meta = json.loads((tiny_cohort.paths[0] / "zoo.json").read_text())
    assert meta["probe"]["steps"] >= 1 and len(meta["probe"]["sha256"]) == 64


def test_first_steps_are_reproduced_bit_for_bit(tiny_cohort):
    from atlas.ingest.zoo import reproduce_probe

    meta = json.loads((tiny_cohort.paths[1] / "zoo.json").read_text())
    docs = grammar_corpus(TRAIN_DOCS, seed=TRAIN_SEED)
    again = reproduce_probe(TINY, seed=2, documents=docs, tokenizer_dir=tiny_cohort.tokenizer_dir)
    assert again == {"steps": meta["probe"]["steps"], "sha256": meta["probe"]["sha256"],
                     "square_sum": meta["probe"]["square_sum"]}
    other = reproduce_probe(replace(TINY, lr=TINY.lr * 2), seed=2, documents=docs,
                            tokenizer_dir=tiny_cohort.tokenizer_dir)
    assert other["sha256"] != meta["probe"]["sha256"]  # the digest sees a change of recipe


@pytest.fixture
def over_training(engine, tiny_cohort, tmp_path, monkeypatch):
    """The tiny cohort and its checkpoints registered; the final cohort and every step correlated."""
    from atlas.ingest.runs.correlate import CorrelateOptions
    from atlas.ingest.runs.stats import StatsOptions
    from atlas.ingest.runs.training import correlate_over_training, register_zoo_cohort

    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))
    tiny_cohort.store_dataset(engine)
    register_zoo_cohort(engine, tiny_cohort.paths, cohort="tiny", labels=tiny_cohort.labels,
                        options=StatsOptions(device="cpu", progress=False))
    runs = correlate_over_training(engine, "tiny", "tiny", CorrelateOptions(device="cpu", progress=False,
                                                                            log=lambda _m: None, batch_size=16))
    return {"engine": engine, "runs": runs}


@pytest.mark.slow
def test_checkpoints_are_models_with_a_step_in_per_step_cohorts(over_training, tiny_cohort):
    engine = over_training["engine"]
    n_steps = TINY.n_steps()
    steps = TINY.checkpoint_steps()
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT m.name, m.step, m.train_tokens, m.seed_label, c.name AS cohort, f.name AS final "
            "FROM model m JOIN cohort c ON c.id = m.cohort_id LEFT JOIN model f ON f.id = m.checkpoint_of "
            "ORDER BY m.step, m.name")).all()
    want = [(f"tiny-{l}@step{s}", s, s * TINY.batch_size * TINY.n_ctx, l, f"tiny@step{s}", f"tiny-{l}")
            for s in steps for l in "abc"]
    want += [(f"tiny-{l}", n_steps, n_steps * TINY.batch_size * TINY.n_ctx, l, "tiny", None) for l in "abc"]
    assert [tuple(r) for r in got] == want
    # one correlation run per step (and the final one), each with the seed-a checkpoint as reference
    assert len(over_training["runs"]) == len(steps) + 1
    with engine.connect() as conn:
        refs = conn.execute(sa.text(
            "SELECT m.name FROM run r JOIN model m ON m.id = r.model_id WHERE r.kind = 'correlation' "
            "ORDER BY m.step")).scalars().all()
        assert refs == [f"tiny-a@step{s}" for s in steps] + ["tiny-a"]
        # a checkpoint belongs to its model's training: deleting the model deletes its checkpoints
        conn.execute(sa.text("DELETE FROM model WHERE name = 'tiny-b'"))
        left = conn.execute(sa.text("SELECT count(*) FROM model WHERE name LIKE 'tiny-b%'")).scalar_one()
        conn.rollback()
    assert left == 0


@pytest.mark.slow
def test_universal_share_over_training_equals_the_per_step_rows(over_training):
    from atlas import queries as qt

    engine = over_training["engine"]
    with engine.connect() as conn:
        raw = pl.DataFrame([dict(r._mapping) for r in conn.execute(sa.text(
            "SELECT m.step, u.layer, u.idx, u.excess, u.mean_corr, u.mean_baseline "
            "FROM neuron_universality u JOIN run r ON r.id = u.run_id JOIN model m ON m.id = u.model_id"))])
    for threshold in (0.5, 0.1):
        got = qt.universality_over_training(engine, cohort="tiny", threshold=threshold)
        want = (raw.group_by("step", "layer")
                .agg(pl.len().alias("n_neurons"),
                     (pl.col("excess").fill_null(-1) > threshold).sum().alias("n_universal"))
                .sort("step", "layer"))
        assert got.select("step", "layer", "n_neurons", "n_universal").sort("step", "layer").rows() == \
            [(s, l, n, u) for s, l, n, u in want.rows()]
        assert got["universal_share"].to_list() == pytest.approx(
            (got["n_universal"] / got["n_neurons"]).to_list())
        assert (got["trained_model"] == "tiny-a").all()
        assert got["train_tokens"].to_list() == [s * TINY.batch_size * TINY.n_ctx for s in got["step"]]
    # the SQL view is the same question at the paper's threshold
    with engine.connect() as conn:
        view = pl.DataFrame([dict(r._mapping) for r in conn.execute(sa.text(
            "SELECT step, layer, n_neurons, n_universal FROM universality_over_training ORDER BY step, layer"))])
    at_half = qt.universality_over_training(engine, cohort="tiny", threshold=0.5)
    assert view.rows() == at_half.select("step", "layer", "n_neurons", "n_universal").rows()

    # one neuron over training: its excess at each step, from the reference-side rows
    top = raw.filter(pl.col("step") == raw["step"].max()).sort("excess", descending=True, nulls_last=True).row(0, named=True)
    path = qt.neuron_over_training(engine, "tiny-a", top["layer"], top["idx"])
    want = raw.filter((pl.col("layer") == top["layer"]) & (pl.col("idx") == top["idx"])).sort("step")
    assert path["step"].to_list() == want["step"].to_list()
    assert path["excess"].to_list() == pytest.approx(want["excess"].to_list(), abs=1e-6)
    # any checkpoint's name finds the same training
    first = path.row(0, named=True)["model"]
    assert qt.neuron_over_training(engine, first, top["layer"], top["idx"])["step"].to_list() == path["step"].to_list()
    with pytest.raises(AtlasError, match="no model 'nope'"):
        qt.neuron_over_training(engine, "nope", 0, 0)


def test_views_answer_on_an_empty_atlas(engine):
    from atlas import queries as qt

    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM universality_over_training")).scalar_one() == 0
    assert qt.universality_over_training(engine).is_empty()


def _hub_cache(tmp_path, monkeypatch, tokenizer, repos: dict[str, dict[str, int]]) -> None:
    """A Hugging Face hub cache, offline, holding GPT-NeoX (Pythia's architecture) checkpoints:
    ``repos[name][revision] = init seed``; the last revision is also ``main``. This is the layout a
    user's cache has after downloading ``EleutherAI/pythia-160m`` at ``revision="step1000"``."""
    import huggingface_hub.constants
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cache = tmp_path / "hf-hub"
    for repo, revisions in repos.items():
        folder = cache / ("models--" + repo.replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        for n, (revision, seed) in enumerate(revisions.items()):
            commit = f"{seed:040x}"
            torch.manual_seed(seed)
            cfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
            GPTNeoXForCausalLM(cfg).save_pretrained(folder / "snapshots" / commit)
            tokenizer.save_pretrained(folder / "snapshots" / commit)
            (folder / "refs" / revision).write_text(commit)
            if n == len(revisions) - 1:
                (folder / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


@pytest.mark.slow
def test_pythia_step_revisions_go_through_the_same_path(engine, tiny_cohort, tmp_path, monkeypatch):
    """Hub models at ``revision="step…"`` register as checkpoints of the final model and are
    correlated per step like the zoo's, each loaded at its own revision."""
    from atlas import queries as qt
    from atlas.ingest.runs.correlate import CorrelateOptions
    from atlas.ingest.runs.stats import StatsOptions, TrainingStep
    from atlas.ingest.runs.training import correlate_over_training, register_checkpoint

    cpu = StatsOptions(device="cpu", progress=False)
    repos = {"atlas-test/pythia-tiny": {"step1000": 11, "step143000": 12},
             "atlas-test/pythia-tiny-seed1": {"step1000": 21, "step143000": 22}}
    _hub_cache(tmp_path, monkeypatch, tiny_cohort.tokenizer, repos)
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))
    tiny_cohort.store_dataset(engine)
    for repo, label in zip(repos, "ab"):
        final = repo.split("/")[1]
        register_checkpoint(engine, repo, TrainingStep(143000, 143000 * 2_097_152), name=final,
                            cohort="pythia-tiny", seed_label=label, options=cpu)
        register_checkpoint(engine, repo, TrainingStep(1000, 1000 * 2_097_152, checkpoint_of=final, revision="step1000"),
                            name=f"{final}@step1000", cohort="pythia-tiny@step1000", seed_label=label, options=cpu)
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT m.name, m.revision, m.step, m.architecture, f.name FROM model m "
            "LEFT JOIN model f ON f.id = m.checkpoint_of ORDER BY m.step, m.name")).all()
    assert [(r[0], r[1], r[2], r[4]) for r in got] == [
        # each pinned at the hub commit its revision resolved to (the cache's snapshot)
        ("pythia-tiny-seed1@step1000", f"{21:040x}", 1000, "pythia-tiny-seed1"),
        ("pythia-tiny@step1000", f"{11:040x}", 1000, "pythia-tiny"),
        ("pythia-tiny", f"{12:040x}", 143000, None), ("pythia-tiny-seed1", f"{22:040x}", 143000, None)]
    assert all("NeoX" in r[3] for r in got)

    runs = correlate_over_training(engine, "pythia-tiny", "tiny", CorrelateOptions(
        device="cpu", progress=False, log=lambda _m: None, batch_size=16))
    assert [step for step, _ in runs] == [1000, None] and all(run is not None for _, run in runs)
    shares = qt.universality_over_training(engine, cohort="pythia-tiny")
    assert shares.select("step", "layer", "n_neurons").rows() == [(1000, 0, 64), (1000, 1, 64),
                                                                   (143000, 0, 64), (143000, 1, 64)]
    # the two revisions are different networks: the step-1000 checkpoint was really loaded
    early = qt.neuron_over_training(engine, "pythia-tiny", 0, 0)
    assert early["step"].to_list() == [1000, 143000]
    assert early["mean_corr"][0] != pytest.approx(early["mean_corr"][1], abs=1e-6)
    with pytest.raises(AtlasError, match="no model 'pythia-nope'"):
        register_checkpoint(engine, "atlas-test/pythia-tiny", TrainingStep(1000, checkpoint_of="pythia-nope",
                                                                            revision="step1000"),
                            name="x@step1000", options=cpu)


def test_revisions_name_the_model_and_refuse_local_directories(tiny_cohort, tmp_path, monkeypatch):
    from atlas.ingest.models import load_model

    _hub_cache(tmp_path, monkeypatch, tiny_cohort.tokenizer, {"atlas-test/pythia-tiny": {"step1000": 1, "step2000": 2}})
    early, late = load_model("atlas-test/pythia-tiny", revision="step1000"), load_model("atlas-test/pythia-tiny")
    assert (early.name, early.revision) == ("atlas-test/pythia-tiny@step1000", f"{1:040x}")
    assert late.name == "atlas-test/pythia-tiny"
    assert not torch.equal(early.bridge.W_in, late.bridge.W_in)
    with pytest.raises(AtlasError, match="at revision step9 could not be") as err:
        load_model("atlas-test/pythia-tiny", revision="step9")
    assert "\n" not in str(err.value)
    with pytest.raises(AtlasError, match="local checkpoint has no revisions"):
        load_model(str(tiny_cohort.paths[0]), revision="step1000")


@pytest.mark.slow
def test_cli_ingests_checkpoints_and_correlates_over_training(db_url, atlas_home, tiny_cohort, engine):
    """What a user types for their own checkpoints: `atlas ingest --step … --checkpoint-of …`, then
    `atlas correlate --over-training`."""
    from click.testing import CliRunner

    from atlas import queries as qt
    from atlas.app.cli import main
    from atlas.ingest.zoo import checkpoint_dirs

    tiny_cohort.store_dataset(engine)
    runner = CliRunner()
    step = TINY.checkpoint_steps()[0]
    for path, label in zip(tiny_cohort.paths[:2], "ab"):
        res = runner.invoke(main, ["ingest", "--model", str(path), "--cohort", "tiny", "--seed-label", label,
                                   "--no-stats", "--step", str(TINY.n_steps())])
        assert res.exit_code == 0, res.output
        ckpt = checkpoint_dirs(path)[0]
        res = runner.invoke(main, ["ingest", "--model", str(ckpt.path), "--name", f"tiny-{label}@step{step}",
                                   "--cohort", f"tiny@step{step}", "--seed-label", label, "--step", str(step),
                                   "--train-tokens", str(ckpt.train_tokens), "--checkpoint-of", f"tiny-{label}",
                                   "--dataset", "tiny", "--no-weights", "--batch-size", "16"])
        assert res.exit_code == 0, res.output
        assert f"stats of tiny-{label}@step{step}: done" in res.output
    res = runner.invoke(main, ["correlate", "--cohort", "tiny", "--dataset", "tiny", "--over-training", "--quiet",
                               "--device", "cpu"])
    assert res.exit_code == 0, res.output
    got = qt.universality_over_training(engine, cohort="tiny")
    assert got.select("step", "layer").rows() == [(step, 0), (step, 1), (TINY.n_steps(), 0), (TINY.n_steps(), 1)]
    bad = runner.invoke(main, ["ingest", "--model", str(tiny_cohort.paths[2]), "--checkpoint-of", "tiny-a", "--no-stats"])
    assert bad.exit_code != 0 and "give its --step too" in bad.output and bad.output.count("\n") == 1


def test_a_stopped_recipe_is_the_full_recipe_at_that_step(tiny_cohort, tmp_path):
    """``stop_step`` keeps the schedule of ``train_tokens`` and stops early: the model is bit for bit
    the full training's checkpoint at that step (how the shipped demo cohort was cut at 3M tokens)."""
    step = TINY.checkpoint_steps()[-1]
    stopped = replace(TINY, seeds=(1,), stop_step=step)
    assert stopped.steps_trained() == step and stopped.checkpoint_steps() == TINY.checkpoint_steps()[:-1]
    assert replace(TINY, stop_step=10 * TINY.n_steps()).steps_trained() == TINY.n_steps()
    assert stopped.fingerprint() != TINY.fingerprint()
    trained = train_cohort(stopped, grammar_corpus(TRAIN_DOCS, seed=TRAIN_SEED), tmp_path, progress=False, log=None)
    meta = json.loads((trained.paths[0] / "zoo.json").read_text())
    assert meta["train_steps"] == step and meta["train_tokens"] == step * TINY.batch_size * TINY.n_ctx
    full = load_file(str(tiny_cohort.paths[0] / "steps" / f"step-{step:07d}" / "model.safetensors"))
    mine = load_file(str(trained.paths[0] / "model.safetensors"))
    assert mine.keys() == full.keys() and all(torch.equal(mine[k], full[k]) for k in full)


@pytest.mark.slow
def test_the_planner_ingests_checkpoints_after_their_models_and_correlates_each_step(db_url, engine, tmp_path,
                                                                                      tiny_cohort, monkeypatch):
    """What `atlas demo` runs: a manifest whose step cohorts hold the seeds' checkpoints (listed first
    here, to show the planner, not the file, orders them after the final models they belong to);
    each step cohort is correlated, and neither classified nor given examples when it says so."""
    from atlas import queries
    from atlas.app.manifest import load_manifest
    from atlas.app.planner import run_in_process

    from tests.test_scheduling import _manifest

    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATLAS_DATABASE_URL", db_url)
    step = TINY.checkpoint_steps()[0]
    tokens = step * TINY.batch_size * TINY.n_ctx
    seeds = list(zip(tiny_cohort.names[:2], tiny_cohort.paths[:2], tiny_cohort.labels[:2]))
    early = ",\n  ".join(
        f'{{ name = "{n}@step{step}", source = "{p}/steps/step-{step:07d}", seed = "{l}", step = {step}, '
        f'train_tokens = {tokens}, checkpoint_of = "{n}" }}' for n, p, l in seeds)
    path = _manifest(tmp_path, tiny_cohort, ["tiny-a", "tiny-b"])  # the dataset and the final models' cohort
    text = path.read_text().replace("[cohorts.tiny]\n", f"""[cohorts."tiny@step{step}"]
dataset = "tiny"
stats = false
classify = false
examples = false
models = [
  {early},
]

[cohorts.tiny]
examples = false
""")
    for label in "ab":  # the final models carry their last step
        text = text.replace(f'seed = "{label}" }}', f'seed = "{label}", step = {TINY.n_steps()} }}')
    path.write_text(text)
    said: list[str] = []
    run_in_process(engine, load_manifest(path), log=said.append)
    order = [line.removeprefix("→ ") for line in said if line.startswith("→ ")]
    assert order[0] == "dataset:tiny"
    for name in ("tiny-a", "tiny-b"):  # each checkpoint after the model it is a checkpoint of
        assert order.index(f"ingest:{name}:tiny") < order.index(f"ingest:{name}@step{step}:tiny")
    assert sorted(o.split(":")[0] for o in order) == ["correlate", "correlate", "dataset"] + ["ingest"] * 4
    with engine.connect() as conn:  # the step cohort: weight statistics only
        kinds = conn.execute(sa.text("SELECT m.name, r.kind FROM run r JOIN model m ON m.id = r.model_id "
                                     "WHERE r.kind IN ('stats', 'weights')")).all()
    assert sorted(tuple(k) for k in kinds) == [("tiny-a", "stats"), ("tiny-a", "weights"),
                                         (f"tiny-a@step{step}", "weights"), ("tiny-b", "stats"),
                                         ("tiny-b", "weights"), (f"tiny-b@step{step}", "weights")]
    shares = queries.universality_over_training(engine, cohort="tiny")
    assert shares.select("model", "step", "train_tokens").unique(maintain_order=True).rows() == [
        (f"tiny-a@step{step}", step, tokens), ("tiny-a", TINY.n_steps(), None)]
    with pytest.raises(AtlasError, match=r"give its step = <n> too"):
        path.write_text(path.read_text().replace(f"step = {TINY.n_steps()}", "train_tokens = 5"))
        load_manifest(path)


def test_ingest_at_a_revision_without_a_step_loads_that_revision(engine, tiny_cohort, tmp_path, monkeypatch):
    """`atlas ingest --model REPO --revision R` (no --step): the model is R's network, named after R."""
    from atlas.ingest.runs.stats import StatsOptions, ingest_model

    _hub_cache(tmp_path, monkeypatch, tiny_cohort.tokenizer, {"atlas-test/pythia-tiny": {"step1000": 1, "step2000": 2}})
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))
    ingest_model(engine, "atlas-test/pythia-tiny", dataset=None, stats=False, revision="step1000",
                 options=StatsOptions(device="cpu", progress=False))
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT name, revision, step FROM model")).one()
    assert tuple(got) == ("atlas-test/pythia-tiny@step1000", f"{1:040x}", None)
