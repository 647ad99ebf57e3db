"""The model zoo: deterministic, cached seed cohorts saved as loadable HF checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from atlas.errors import AtlasError
from atlas.ingest.corpus import grammar_corpus
from atlas.ingest.zoo import SPECIAL, ZooConfig, stream_to_rows, train_cohort, train_tokenizer
from tests.cohort_fixtures import TINY, TRAIN_DOCS, TRAIN_SEED


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_tiny_cohort_checkpoints(tiny_cohort):
    assert tiny_cohort.names == ["tiny-a", "tiny-b", "tiny-c"] and tiny_cohort.labels == ["a", "b", "c"]
    a, b = _weights(tiny_cohort.paths[0]), _weights(tiny_cohort.paths[1])
    assert a.keys() == b.keys()
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"])
    tokenizer_files = [(p / "tokenizer.json").read_text() for p in tiny_cohort.paths]
    assert len(set(tokenizer_files)) == 1 == len({(tiny_cohort.tokenizer_dir / "tokenizer.json").read_text()} | set(tokenizer_files))
    meta = json.loads((tiny_cohort.paths[1] / "zoo.json").read_text())
    assert meta["seed"] == 2 and meta["seed_label"] == "b" and meta["data_order_seed"] == 2
    assert meta["config"]["d_mlp"] == 64 and meta["train_tokens"] > 0
    assert meta["final_loss_ema"] < 0.6 * torch.log(torch.tensor(384.0)).item()  # it learned the grammar
    tok = tiny_cohort.tokenizer
    assert len(tok) <= 384 and tok.convert_ids_to_tokens(0) == SPECIAL and tok.bos_token_id == tok.eos_token_id == 0


def test_training_is_deterministic_per_seed_and_cached(tiny_cohort, tmp_path):
    docs = grammar_corpus(TRAIN_DOCS, seed=TRAIN_SEED)
    one = replace(TINY, seeds=(2,))  # seed 2 alone: a different config, same recipe
    trained = train_cohort(one, docs, tmp_path, progress=False, log=None)
    again = _weights(trained.paths[0])
    original = _weights(tiny_cohort.paths[1])  # tiny-b is seed 2 in the fixture
    assert all(torch.equal(again[k], original[k]) for k in original)
    stamp = (trained.paths[0] / "model.safetensors").stat().st_mtime_ns
    cached = train_cohort(one, docs, tmp_path, progress=False, log=None)
    assert cached.seconds == {cached.names[0]: 0.0}
    assert (cached.paths[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.slow
def test_shared_data_order_and_bad_configs(tmp_path):
    docs = grammar_corpus(30, seed=4)
    cfg = ZooConfig(name="z", seeds=(1, 2), n_layers=1, d_model=16, d_mlp=32, n_heads=2, n_ctx=16, vocab_size=300,
                    train_tokens=16 * 8 * 3, batch_size=8, data_order="shared", data_seed=7, threads=1)
    trained = train_cohort(cfg, docs, tmp_path, progress=False, log=None)
    metas = [json.loads((p / "zoo.json").read_text()) for p in trained.paths]
    assert [m["data_order_seed"] for m in metas] == [7, 7]
    with pytest.raises(AtlasError, match="distinct"):
        train_cohort(replace(cfg, seeds=(1, 1)), docs, tmp_path)
    with pytest.raises(AtlasError, match="not divisible"):
        train_cohort(replace(cfg, n_heads=3), docs, tmp_path)
    with pytest.raises(AtlasError, match="corpus is empty"):
        train_tokenizer(["", " "], 300)


def test_stream_to_rows():
    rows = stream_to_rows(torch.arange(1, 11), 4, bos_id=0)
    assert rows.tolist() == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9]]


@pytest.mark.slow
def test_cli_zoo_train_on_own_files(atlas_home, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(grammar_corpus(80, seed=5)))
    runner = CliRunner()
    args = ["zoo", "train", "--name", "mini", "--seeds", "2", "--train-tokens", "4096", "--input", str(text)]
    res = runner.invoke(main_cli(), args)
    assert res.exit_code == 0, res.output
    assert (atlas_home / "models" / "mini" / "mini-b" / "config.json").is_file()
    again = runner.invoke(main_cli(), args)
    assert again.exit_code == 0 and again.output.count("(cached)") == 2


def main_cli():
    from atlas.app.cli import main

    return main
