"""Token datasets: documents → fixed-length context rows (BOS + tokens), with how they were made.

Format (the paper's, method.md §1). The documents are tokenised without special tokens and
concatenated, each followed by the EOS token: document separators are KEPT in the stream (the
reference code silently dropped them). The stream is cut into rows of ``context_length - 1`` tokens
and each row gets BOS in front, so a row is ``[BOS, t1, …, t_{ctx-1}]``. The incomplete last row is
dropped; ``max_tokens`` caps ``n_rows * context_length``.

Filter rule (one rule, stored with the dataset and used by every stage): positions whose token is
BOS, EOS, pad, or the single-newline token are not counted in correlations. ``n_kept_tokens`` counts
the rest. The content hash covers the context length and every token of every row.

Sources: local ``.txt`` files (one document per file), ``.jsonl``/``.json`` (one document per line,
field ``text``), ``.parquet`` (column ``text``), or a Hugging Face dataset name (online; streamed).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from atlas.errors import AtlasError

DOC_BATCH = 256  # documents tokenised per call


@dataclass
class TokenRows:
    """Rows of a token dataset and the facts stored with them."""

    rows: torch.Tensor  # LongTensor[n_rows, context_length]
    context_length: int
    filter_rule: dict[str, Any]
    content_hash: str
    n_kept_tokens: int
    n_documents: int  # documents (partly) used
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.rows.numel())


def filter_rule_for(tokenizer: Any) -> dict[str, Any]:
    """The stored rule: exclude BOS/EOS/pad and the single-newline token (when ``"\\n"`` is one token)."""
    ids: dict[str, int] = {}
    for what in ("bos", "eos", "pad"):
        value = getattr(tokenizer, f"{what}_token_id", None)
        if value is not None:
            ids[what] = int(value)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1:
        ids["newline"] = int(newline[0])
    return {
        "exclude_token_ids": sorted(set(ids.values())),
        "excluded": ids,
        "description": "positions whose token is BOS, EOS, pad or the single newline are not counted",
    }


def rows_hash(rows: torch.Tensor | np.ndarray) -> str:
    """``sha256:…`` of the context length and all tokens (as little-endian int32)."""
    arr = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    digest = hashlib.sha256(f"ctx={arr.shape[1]};rows={arr.shape[0]};".encode())
    digest.update(np.ascontiguousarray(arr, dtype="<i4").tobytes())
    return "sha256:" + digest.hexdigest()[:24]


def build_rows(tokenizer: Any, documents: Iterable[str], context_length: int, max_tokens: int | None = None,
               *, n_ctx: int | None = None) -> TokenRows:
    """Tokenise ``documents`` into rows of BOS + ``context_length - 1`` tokens (see the module docstring).

    Streams: stops reading documents once ``max_tokens`` worth of rows are full.
    Raises ``AtlasError`` for an empty corpus, a too-short corpus, or ``context_length > n_ctx``.
    """
    if context_length < 2:
        raise AtlasError(f"context length must be at least 2 (BOS + one token), got {context_length}")
    if n_ctx is not None and context_length > n_ctx:
        raise AtlasError(f"context length {context_length} exceeds the model's n_ctx {n_ctx} — "
                         f"use --context-length {n_ctx} or less")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None:
        bos = eos
    if bos is None or eos is None:
        raise AtlasError("the tokenizer has no BOS/EOS token — the dataset format needs one to mark rows and "
                         "document boundaries")
    body = context_length - 1
    max_rows = None if max_tokens is None else max_tokens // context_length
    if max_rows is not None and max_rows < 1:
        raise AtlasError(f"--max-tokens {max_tokens} is less than one row of {context_length} tokens")

    stream: list[int] = []
    n_docs = 0
    n_chars = 0
    for batch in _batched(documents, DOC_BATCH):
        batch = [d for d in batch if d and d.strip()]
        if not batch:
            continue
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        n_docs += len(batch)
        n_chars += sum(len(d) for d in batch)
        if max_rows is not None and len(stream) >= max_rows * body:
            break
    if n_docs == 0:
        raise AtlasError("the corpus is empty (no non-blank documents) — check the input files or the text field")
    n_rows = len(stream) // body if max_rows is None else min(max_rows, len(stream) // body)
    if n_rows == 0:
        raise AtlasError(f"the corpus gives {len(stream)} tokens, not enough for one row of {context_length} — "
                         "give more text or a shorter --context-length")
    flat = torch.tensor(stream[: n_rows * body], dtype=torch.long).reshape(n_rows, body)
    rows = torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), flat], dim=1)
    rule = filter_rule_for(tokenizer)
    from atlas.ingest.activations import kept_token_mask

    kept = int(kept_token_mask(rows, rule).sum())
    params = {"documents": n_docs, "characters": n_chars, "bos_token_id": bos, "eos_token_id": eos,
              "separator": "EOS after every document (kept)", "max_tokens": max_tokens}
    return TokenRows(rows=rows, context_length=context_length, filter_rule=rule, content_hash=rows_hash(rows),
                     n_kept_tokens=kept, n_documents=n_docs, params=params)


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- sources

def iter_file_documents(paths: Sequence[str | Path], text_field: str = "text") -> Iterator[str]:
    """Documents from local files: ``.txt`` (whole file), ``.jsonl``/``.json`` (field per line), ``.parquet``."""
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise AtlasError(f"input file {raw} does not exist or is not a file")
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".json", ".ndjson"):
                with path.open(encoding="utf-8") as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        record = json.loads(line)
                        if text_field not in record:
                            raise AtlasError(f"{raw} line {n} has no field {text_field!r} — pass --text-field")
                        yield str(record[text_field])
            elif suffix == ".parquet":
                import polars as pl

                frame = pl.read_parquet(path)
                if text_field not in frame.columns:
                    raise AtlasError(f"{raw} has no column {text_field!r} (columns: {', '.join(frame.columns)}) — "
                                     "pass --text-field")
                yield from (str(t) for t in frame[text_field].drop_nulls())
            else:
                yield path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        except (UnicodeDecodeError, json.JSONDecodeError, OSError) as err:
            raise AtlasError(f"cannot read {raw}: {str(err).splitlines()[0]} — is it UTF-8 text/JSONL/Parquet?") from err


def iter_hf_documents(name: str, split: str = "train", text_field: str = "text",
                      config: str | None = None) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed (needs the hub; fails with a one-line error offline)."""
    try:
        import datasets
    except ImportError as err:
        raise AtlasError("reading a Hugging Face dataset needs the `datasets` package — pip install datasets") from err
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        for record in ds:
            if text_field not in record:
                raise AtlasError(f"dataset {name} has no field {text_field!r} — pass --text-field")
            yield str(record[text_field])
    except AtlasError:
        raise
    except Exception as err:  # noqa: BLE001 - library/network errors become one line
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AtlasError(f"could not read Hugging Face dataset {name} ({text}) — check the name and your connection, "
                         "or download it and pass local files with --input") from err


def shuffled(documents: Iterable[str], seed: int | None) -> Iterable[str]:
    """``documents`` in a seeded random order (materialises them), or unchanged when ``seed`` is None."""
    if seed is None:
        return documents
    docs = list(documents)
    random.Random(seed).shuffle(docs)
    return docs


# ---------------------------------------------------------------- tokenizers

def load_tokenizer(source: str):
    """A fast tokenizer from a directory of tokenizer files, a checkpoint directory, or a hub name."""
    from transformers import AutoTokenizer

    from atlas.ingest.models import is_local_source

    if is_local_source(source) and not Path(source).expanduser().is_dir():
        raise AtlasError(f"no tokenizer directory at {source} — give a directory with tokenizer.json, "
                         "a model checkpoint directory, or a hub name")
    try:
        tok = AutoTokenizer.from_pretrained(str(Path(source).expanduser()) if is_local_source(source) else source)
    except Exception as err:  # noqa: BLE001
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AtlasError(f"could not load a tokenizer from {source} ({text}) — give a directory with "
                         "tokenizer.json or a reachable hub name") from err
    if not getattr(tok, "is_fast", False):
        raise AtlasError(f"the tokenizer of {source} is not a fast (Rust) tokenizer — the atlas needs one")
    return tok


def model_context_size(source: str) -> int | None:
    """The context size (n_positions / max_position_embeddings) from a model's config, if readable."""
    from transformers import AutoConfig

    from atlas.ingest.models import is_local_source

    try:
        cfg = AutoConfig.from_pretrained(str(Path(source).expanduser()) if is_local_source(source) else source)
    except Exception as err:  # noqa: BLE001
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AtlasError(f"could not read the config of model {source} ({text}) — give a checkpoint directory "
                         "or a reachable hub name") from err
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    return None


def build_dataset(engine, name: str, *, tokenizer_source: str | None = None, model_source: str | None = None,
                  inputs: Sequence[str] = (), hf_dataset: str | None = None, hf_split: str = "train",
                  text_field: str = "text", context_length: int = 128, max_tokens: int | None = None,
                  shuffle_seed: int | None = None, force: bool = False, documents: Iterable[str] | None = None,
                  source_label: str | None = None):
    """Build and store the token dataset ``name``; return its ``atlas.ingest.store.DatasetInfo``.

    The tokenizer comes from ``tokenizer_source`` or from ``model_source`` (whose n_ctx also bounds
    the context length). Documents come from ``inputs`` (files), ``hf_dataset`` or ``documents``.
    A dataset of that name with the same content is reused (no-op).
    """
    from atlas.ingest.store import get_dataset, store_dataset

    if sum(x is not None and x != () and x != [] for x in (tuple(inputs) or None, hf_dataset, documents)) != 1:
        raise AtlasError("give exactly one source of text: --input FILES or --hf-dataset NAME")
    if (tokenizer_source is None) == (model_source is None):
        raise AtlasError("give exactly one of --tokenizer DIR and --model SOURCE")
    n_ctx = model_context_size(model_source) if model_source else None
    if n_ctx is not None and context_length > n_ctx:
        raise AtlasError(f"context length {context_length} exceeds the n_ctx {n_ctx} of {model_source} — "
                         f"use --context-length {n_ctx} or less")
    tokenizer = load_tokenizer(tokenizer_source or model_source)
    if documents is not None:
        docs, source = documents, source_label or "documents"
    elif hf_dataset:
        docs, source = iter_hf_documents(hf_dataset, hf_split, text_field), f"hf:{hf_dataset}:{hf_split}"
    else:
        docs = iter_file_documents(inputs, text_field)
        source = source_label or "files:" + ",".join(str(Path(p)) for p in inputs)
    built = build_rows(tokenizer, shuffled(docs, shuffle_seed), context_length, max_tokens, n_ctx=n_ctx)
    params = dict(built.params, tokenizer_source=tokenizer_source or model_source, text_field=text_field)
    store_dataset(engine, name=name, source=source, tokenizer=tokenizer, rows=built.rows,
                  filter_rule=built.filter_rule, content_hash=built.content_hash, n_kept_tokens=built.n_kept_tokens,
                  seed=shuffle_seed, params=params, force=force)
    return get_dataset(engine, name)
