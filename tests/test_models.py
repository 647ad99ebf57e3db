"""Loading models through TransformerLens, their activations, tokenizer checks and registration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from atlas.errors import AtlasError
from atlas.ingest.activations import kept_token_mask, mlp_activations, row_batches
from atlas.ingest.store import iter_dataset_batches
from atlas.ingest.models import check_same_tokenizer, load_model, tokenizer_fingerprint
from atlas.ingest.store import load_dataset_rows, register_model


@pytest.fixture(scope="module")
def tiny_models(tiny_cohort):
    return [load_model(str(p)) for p in tiny_cohort.paths]


def _other_tokenizer_checkpoint(tmp_path):
    """A tiny GPT-2 checkpoint whose tokenizer was trained on different text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from atlas.ingest.corpus import grammar_corpus
    from atlas.ingest.zoo import train_tokenizer

    tok = train_tokenizer([d.lower() for d in grammar_corpus(50, seed=9)], 300)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_ctx=32, n_embd=32, n_layer=1, n_head=4, n_inner=64,
                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    out = tmp_path / "odd-model"
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_load_records_shapes_provenance_and_processing(tiny_cohort, tiny_models):
    m = tiny_models[0]
    cfg = tiny_cohort.config
    assert (m.n_layers, m.d_model, m.d_mlp, m.n_heads, m.n_ctx) == (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.n_ctx)
    assert m.d_head == cfg.d_model // cfg.n_heads and m.d_vocab == len(tiny_cohort.tokenizer)
    assert m.act_fn == "gelu_new" and "GPT2" in m.architecture
    assert m.name == tiny_cohort.names[0] and m.source == str(tiny_cohort.paths[0])
    assert m.revision.startswith("sha256:") and m.revision != tiny_models[1].revision
    assert m.weight_processing == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                                   "fold_value_biases": True}
    # processed weights: the unembedding is centred over the vocabulary, writing weights over d_model
    assert m.bridge.W_U.mean(dim=1).abs().max() < 1e-5
    assert m.bridge.W_out.mean(dim=-1).abs().max() < 1e-5
    assert m.tokenizer_hash == tokenizer_fingerprint(tiny_cohort.tokenizer)
    assert check_same_tokenizer(tiny_models) == m.tokenizer_hash


def test_activations_match_a_full_cached_forward(tiny_cohort, tiny_models):
    m = tiny_models[1]
    tokens = tiny_cohort.rows[:4]
    acts = mlp_activations(m, tokens, hooks=("pre", "post"))
    assert acts["pre"].shape == (4, tiny_cohort.context_length, m.n_layers, m.d_mlp)
    assert acts["pre"].dtype == torch.float32
    with torch.no_grad():
        _, cache = m.bridge.run_with_cache(tokens)
    for layer in range(m.n_layers):
        torch.testing.assert_close(acts["pre"][:, :, layer], cache[f"blocks.{layer}.mlp.hook_pre"], rtol=0, atol=0)
        torch.testing.assert_close(acts["post"][:, :, layer], cache[f"blocks.{layer}.mlp.hook_post"], rtol=0, atol=0)
    # gelu_new(pre) == post
    pre = acts["pre"].double()
    gelu = 0.5 * pre * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (pre + 0.044715 * pre ** 3)))
    torch.testing.assert_close(acts["post"].double(), gelu, rtol=1e-5, atol=1e-6)
    only_post = mlp_activations(m, tokens)
    assert set(only_post) == {"post"} and torch.equal(only_post["post"], acts["post"])
    one_layer = mlp_activations(m, tokens, hooks=("pre",), layers=[0])
    assert torch.equal(one_layer["pre"][:, :, 0], acts["pre"][:, :, 0])


def test_weight_processing_does_not_change_activations(tiny_cohort, tiny_models):
    raw = load_model(str(tiny_cohort.paths[1]), process_weights=False)
    assert raw.weight_processing == {}
    tokens = tiny_cohort.rows[:2]
    a = mlp_activations(raw, tokens, hooks=("pre", "post"))
    b = mlp_activations(tiny_models[1], tokens, hooks=("pre", "post"))
    torch.testing.assert_close(a["pre"], b["pre"], rtol=1e-4, atol=1e-5)


def test_non_finite_activations_name_the_layer(tiny_cohort, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_cohort.paths[0], broken)
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(broken)
    with torch.no_grad():
        hf.transformer.h[1].mlp.c_fc.bias[3] = float("nan")
    hf.save_pretrained(broken)
    m = load_model(str(broken), process_weights=False)
    with pytest.raises(AtlasError, match=r"blocks\.1\.mlp\.hook_pre"):
        mlp_activations(m, tiny_cohort.rows[:2], hooks=("pre", "post"))


def test_odd_tokenizer_is_named(tiny_models, tmp_path):
    odd = load_model(str(_other_tokenizer_checkpoint(tmp_path)))
    with pytest.raises(AtlasError, match="tokenizer of odd-model differs"):
        check_same_tokenizer([*tiny_models, odd])


@pytest.mark.slow
def test_bad_sources_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(AtlasError, match="no model checkpoint directory"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtlasError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AtlasError, match="could not read the checkpoint") as err:
        load_model(str(bad))
    assert "\n" not in str(err.value)
    # the real hub code path, without waiting for network retries
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AtlasError, match="stanford-crfm/alias-gpt2-small-x21 could not be downloaded") as err:
        load_model("stanford-crfm/alias-gpt2-small-x21")
    assert "\n" not in str(err.value)


def test_register_model_is_idempotent_and_checks_the_cohort(engine, tiny_cohort, tiny_models, tmp_path):
    ids = [register_model(engine, m, cohort="tiny", seed_label=lab) for m, lab in zip(tiny_models, tiny_cohort.labels)]
    assert len(set(ids)) == 3
    assert register_model(engine, tiny_models[0], cohort="tiny", seed_label="a") == ids[0]
    with engine.connect() as conn:
        n_neurons = conn.execute(sa.text("SELECT count(*) FROM neuron WHERE model_id = :m"), {"m": ids[0]}).scalar_one()
        n_vocab = conn.execute(sa.text("SELECT count(*) FROM vocab_token")).scalar_one()
        n_tok = conn.execute(sa.text("SELECT count(*) FROM tokenizer")).scalar_one()
        row = conn.execute(sa.text("SELECT m.seed_label, c.name, m.weight_processing, m.revision FROM model m "
                                   "JOIN cohort c ON c.id = m.cohort_id WHERE m.id = :m"), {"m": ids[0]}).one()
        the = conn.execute(sa.text("SELECT text FROM vocab_token WHERE token_id = :t"),
                           {"t": tiny_cohort.tokenizer(" the", add_special_tokens=False)["input_ids"][0]}).scalar_one()
    assert n_neurons == tiny_models[0].n_neurons
    assert n_tok == 1 and n_vocab == len(tiny_cohort.tokenizer)
    assert row.seed_label == "a" and row.name == "tiny" and row.weight_processing["fold_ln"] is True
    assert row.revision == tiny_models[0].revision
    assert the == " the"
    odd = load_model(str(_other_tokenizer_checkpoint(tmp_path)))
    with pytest.raises(AtlasError, match="different tokenizer than cohort tiny"):
        register_model(engine, odd, cohort="tiny")


def test_dataset_batches_and_mask(engine, tiny_cohort):
    info = tiny_cohort.store_dataset(engine)
    rows = load_dataset_rows(engine, "tiny")
    assert torch.equal(rows, tiny_cohort.rows)
    got = list(iter_dataset_batches(engine, "tiny", 64, start_row=10))
    assert [s for s, _ in got] == [10, 74, 138]
    assert torch.equal(torch.cat([b for _, b in got]), tiny_cohort.rows[10:])
    from_rows = list(row_batches(tiny_cohort.rows, 64))
    assert [s for s, _ in from_rows] == [0, 64, 128]
    mask = kept_token_mask(rows, info.filter_rule)
    assert not mask[:, 0].any()  # BOS
    excluded = set(info.filter_rule["exclude_token_ids"])
    assert mask.sum().item() == info.n_kept_tokens == sum(int(t) not in excluded for t in rows.flatten())
    assert kept_token_mask(rows, None).all()


def test_gpt_neox_checkpoints_load_like_pythia(tiny_cohort, tmp_path):
    """Pythia's architecture (GPT-NeoX) goes through the same code path as GPT-2."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = tiny_cohort.tokenizer
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, rotary_pct=0.25)
    torch.manual_seed(0)
    out = tmp_path / "tiny-neox"
    GPTNeoXForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    m = load_model(str(out))
    assert "NeoX" in m.architecture and m.act_fn == "gelu" and (m.n_layers, m.d_mlp) == (2, 64)
    tokens = tiny_cohort.rows[:2]
    acts = mlp_activations(m, tokens, hooks=("pre", "post"))
    with torch.no_grad():
        _, cache = m.bridge.run_with_cache(tokens)
    torch.testing.assert_close(acts["post"][:, :, 1], cache["blocks.1.mlp.hook_post"], rtol=0, atol=0)
    assert m.tokenizer_hash == tokenizer_fingerprint(tok)


def _hub_cache_entry(cache: Path, repo_id: str, checkpoint: Path, revision: str) -> None:
    """Lay ``checkpoint``'s files out in ``cache`` as the Hugging Face hub client stores a download:
    ``models--<org>--<name>/blobs/<sha256>``, ``snapshots/<revision>/<file>`` linking to the blob,
    and ``refs/main`` holding the revision."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.slow
def test_hub_name_loads_from_a_local_hub_cache_offline(engine, db_url, tiny_cohort, tmp_path):
    """`atlas ingest --model org/name` takes the hub-name path of load_model for real: the files
    come from an HF_HUB_CACHE laid out like a hub download, with the hub switched off."""
    import os
    import subprocess
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_cohort.tokenizer
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_ctx=32, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    built = tmp_path / "built"
    GPT2LMHeadModel(cfg).save_pretrained(built)
    tok.save_pretrained(built)
    revision = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache_entry(tmp_path / "hf-home" / "hub", "atlas-test/tiny-gpt2", built, revision)
    tiny_cohort.store_dataset(engine)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_", "HF_"))} | {
        "ATLAS_DATABASE_URL": db_url, "ATLAS_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "atlas.app.cli", "ingest", "--model", "atlas-test/tiny-gpt2",
                          "--dataset", "tiny", "--device", "cpu"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    with engine.connect() as conn:
        model = conn.execute(sa.text("SELECT id, name, source, revision, n_layers, d_mlp FROM model")).one()
        runs = conn.execute(sa.text("SELECT kind, status FROM run WHERE model_id = :m ORDER BY kind"),
                            {"m": model.id}).all()
        n_stats = conn.execute(sa.text("SELECT count(*) FROM activation_stats")).scalar_one()
    assert (model.name, model.source, model.revision) == ("atlas-test/tiny-gpt2", "atlas-test/tiny-gpt2", revision)
    assert (model.n_layers, model.d_mlp) == (2, 64) and n_stats == 2 * 64
    assert [tuple(r) for r in runs] == [("stats", "done"), ("weights", "done")]
