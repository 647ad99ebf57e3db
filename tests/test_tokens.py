"""Token datasets: row format, kept document separators, filter rule, sources, storage."""

from __future__ import annotations

import json

import polars as pl
import pytest
import sqlalchemy as sa
import torch

from atlas.errors import AtlasError
from atlas.ingest.store import get_dataset, load_dataset_rows, store_dataset
from atlas.ingest.datasets import build_dataset, build_rows, filter_rule_for, iter_file_documents, rows_hash


@pytest.fixture(scope="module")
def tok(tiny_cohort):
    return tiny_cohort.tokenizer


def test_rows_are_bos_plus_the_document_stream_with_separators_kept(tok, tiny_cohort):
    docs = tiny_cohort.texts[:12]
    built = build_rows(tok, docs, context_length=16)
    rows = built.rows
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert (rows[:, 0] == bos).all() and rows.shape[1] == 16
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    body = rows[:, 1:].reshape(-1).tolist()
    assert body == stream[:len(body)]  # nothing dropped, nothing reordered
    assert len(stream) - len(body) < 15  # only the incomplete last row is dropped
    assert body.count(eos) >= 11  # every document boundary is in the stream
    assert docs[0].startswith(tok.decode(rows[0, 1:]))
    assert built.n_tokens == rows.numel() and built.n_documents == 12
    excluded = set(built.filter_rule["exclude_token_ids"])
    assert excluded == {bos, eos, tok("\n", add_special_tokens=False)["input_ids"][0]}
    assert built.n_kept_tokens == sum(t not in excluded for t in rows.reshape(-1).tolist())


def test_max_tokens_hash_and_bad_input(tok, tiny_cohort):
    a = build_rows(tok, tiny_cohort.texts, 32, max_tokens=32 * 10 + 5)
    assert a.n_rows == 10
    b = build_rows(tok, tiny_cohort.texts, 32, max_tokens=32 * 10)
    assert a.content_hash == b.content_hash == rows_hash(b.rows)
    c = build_rows(tok, tiny_cohort.texts, 16, max_tokens=32 * 10)
    assert c.content_hash != a.content_hash
    with pytest.raises(AtlasError, match="corpus is empty"):
        build_rows(tok, ["", "  \n"], 32)
    with pytest.raises(AtlasError, match="not enough for one row"):
        build_rows(tok, ["tiny"], 32)
    with pytest.raises(AtlasError, match="exceeds the model's n_ctx 32"):
        build_rows(tok, tiny_cohort.texts, 64, n_ctx=32)
    with pytest.raises(AtlasError, match="less than one row"):
        build_rows(tok, tiny_cohort.texts, 32, max_tokens=10)


def test_filter_rule_names_what_it_drops(tok):
    rule = filter_rule_for(tok)
    assert rule["excluded"]["bos"] == tok.bos_token_id and "newline" in rule["excluded"]
    assert "description" in rule


def test_file_sources_txt_jsonl_parquet(tmp_path, tiny_cohort):
    docs = tiny_cohort.texts[:3]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n")
    pl.DataFrame({"body": docs}).write_parquet(tmp_path / "d.parquet")
    assert list(iter_file_documents([tmp_path / f"{i}.txt" for i in range(3)])) == docs
    assert list(iter_file_documents([tmp_path / "d.jsonl"])) == docs
    assert list(iter_file_documents([tmp_path / "d.parquet"], text_field="body")) == docs
    with pytest.raises(AtlasError, match="no column 'text'"):
        list(iter_file_documents([tmp_path / "d.parquet"]))
    with pytest.raises(AtlasError, match="has no field 'body'"):
        list(iter_file_documents([tmp_path / "d.jsonl"], text_field="body"))
    with pytest.raises(AtlasError, match="does not exist"):
        list(iter_file_documents([tmp_path / "missing.txt"]))


@pytest.mark.slow
def test_hf_dataset_offline_is_one_line(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from atlas.ingest.datasets import iter_hf_documents

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(AtlasError, match="could not read Hugging Face dataset monology/pile-uncopyrighted") as err:
        next(iter_hf_documents("monology/pile-uncopyrighted", "test"))
    assert "\n" not in str(err.value)


def test_store_is_idempotent_and_refuses_other_content(engine, tiny_cohort):
    info = build_dataset(engine, "g", tokenizer_source=str(tiny_cohort.tokenizer_dir), documents=tiny_cohort.texts,
                         context_length=32, max_tokens=32 * 50, source_label="grammar")
    assert (info.n_rows, info.context_length, info.n_tokens) == (50, 32, 1600)
    assert info.source == "grammar" and info.params["documents"] > 0
    again = build_dataset(engine, "g", tokenizer_source=str(tiny_cohort.tokenizer_dir), documents=tiny_cohort.texts,
                          context_length=32, max_tokens=32 * 50)
    assert again.id == info.id
    with pytest.raises(AtlasError, match="a different dataset named g already exists"):
        build_dataset(engine, "g", tokenizer_source=str(tiny_cohort.tokenizer_dir), documents=tiny_cohort.texts,
                      context_length=16, max_tokens=16 * 50)
    replaced = build_dataset(engine, "g", tokenizer_source=str(tiny_cohort.tokenizer_dir), documents=tiny_cohort.texts,
                             context_length=16, max_tokens=16 * 50, force=True)
    assert replaced.context_length == 16 and load_dataset_rows(engine, "g").shape == (50, 16)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dataset_row")).scalar_one() == 50
    with pytest.raises(AtlasError, match="no dataset named nope"):
        get_dataset(engine, "nope")
    with pytest.raises(AtlasError, match="exactly one source"):
        build_dataset(engine, "h", tokenizer_source=str(tiny_cohort.tokenizer_dir))


def test_store_dataset_round_trips_rows(engine, tiny_cohort):
    rows = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 0]])
    store_dataset(engine, name="r", source="test", tokenizer=tiny_cohort.tokenizer, rows=rows,
                  filter_rule={"exclude_token_ids": [0]}, content_hash=rows_hash(rows), n_kept_tokens=5)
    assert torch.equal(load_dataset_rows(engine, "r"), rows)
    info = get_dataset(engine, "r")
    assert info.n_kept_tokens == 5 and info.filter_rule == {"exclude_token_ids": [0]}
