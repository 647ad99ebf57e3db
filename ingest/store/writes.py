"""Database writes of ingestion: tokenizers and vocabularies, cohorts, models and neurons, token
datasets and their rows, and the result writers that runs hand to ``RunHandle.publish`` (called
inside its one transaction).

Every function here is idempotent: registering the same tokenizer, model or dataset again returns
the existing id. Conflicting content under an existing name is refused with a one-line AtlasError.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import numpy as np
import polars as pl
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection, Engine

from atlas.copy import copy_frame
from atlas.errors import AtlasError

_REGISTER_LOCK = 72120242  # serialises concurrent registrations (get-or-create races)


# ---------------------------------------------------------------- tokenizers

def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2, GPT-NeoX): each byte is written as one printable character —
    printable Latin-1 bytes as themselves, the other 68 as chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF_CHAR = _byte_of_char()


def _bytes_shown(raw: bytes) -> str:
    """UTF-8 text where it decodes, each byte that does not as ``<0xNN>``."""
    text = raw.decode("utf-8", errors="surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def vocab_texts(tokenizer: Any) -> list[str]:
    """Decoded text of every token id (``' the'`` with its space). A byte-level token that is not
    valid UTF-8 alone (part of a multi-byte character) shows its bytes, ``<0xE2><0x80>``: decoded it
    would be ``�``, the same for hundreds of tokens (issue 11: a chart merged them into one bar).

    NUL (a byte-level token) becomes ``␀``: PostgreSQL text cannot hold it.
    """
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    for i, text in enumerate(texts):
        if "\ufffd" in text:
            raw = tokenizer.convert_ids_to_tokens(i)
            if isinstance(raw, str) and raw and all(c in _BYTE_OF_CHAR for c in raw):
                texts[i] = _bytes_shown(bytes(_BYTE_OF_CHAR[c] for c in raw))
    return [t.replace("\x00", "\u2400") for t in texts]


def register_tokenizer(engine_or_conn: Engine | Connection, tokenizer: Any, *, name: str | None = None,
                       content_hash: str | None = None) -> int:
    """Get or create the ``tokenizer`` row (by content hash) and its ``vocab_token`` rows; return its id."""
    from atlas.ingest.models import special_token_ids, tokenizer_fingerprint

    content_hash = content_hash or tokenizer_fingerprint(tokenizer)
    with _transaction(engine_or_conn) as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _REGISTER_LOCK})
        found = conn.execute(sa.text("SELECT id FROM tokenizer WHERE content_hash = :h"), {"h": content_hash}).scalar()
        if found is not None:
            return int(found)
        special = special_token_ids(tokenizer)
        label = name or (str(getattr(tokenizer, "name_or_path", "") or "").rstrip("/").rsplit("/", 1)[-1]) or content_hash
        tok_id = conn.execute(sa.text(
            "INSERT INTO tokenizer (name, content_hash, vocab_size, bos_token_id, eos_token_id, pad_token_id) "
            "VALUES (:n, :h, :v, :b, :e, :p) RETURNING id"),
            {"n": label, "h": content_hash, "v": len(tokenizer), "b": special["bos"], "e": special["eos"],
             "p": special["pad"]}).scalar_one()
        texts = vocab_texts(tokenizer)
        frame = pl.DataFrame({"tokenizer_id": [tok_id] * len(texts), "token_id": list(range(len(texts))), "text": texts})
        copy_frame(conn.connection.driver_connection, "vocab_token", frame)
        return int(tok_id)


# ---------------------------------------------------------------- models

def register_model(engine: Engine, loaded: Any, cohort: str | None = None, seed_label: str | None = None, *,
                   step: int | None = None, train_tokens: int | None = None, checkpoint_of: int | None = None) -> int:
    """Get or create the ``model`` row of ``loaded`` (an ``atlas.ingest.models.LoadedModel``) and its neurons.

    Also registers its tokenizer and, when ``cohort`` is given, the cohort (created with this
    model's tokenizer; a model whose tokenizer differs from the cohort's is refused). Idempotent:
    the same name and revision returns the existing id (updating cohort / seed label when given).
    ``step``/``train_tokens``/``checkpoint_of`` (a model id) mark a training checkpoint (see
    ``atlas.ingest.runs.training``); they are set or updated when given.
    """
    checkpoint = {k: v for k, v in (("step", step), ("train_tokens", train_tokens), ("checkpoint_of", checkpoint_of))
                  if v is not None}
    with engine.begin() as conn:
        tok_id = register_tokenizer(conn, loaded.tokenizer, content_hash=loaded.tokenizer_hash)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _REGISTER_LOCK})
        cohort_id = _get_or_create_cohort(conn, cohort, tok_id, loaded.name) if cohort else None
        row = conn.execute(sa.text("SELECT id, revision, tokenizer_id, cohort_id, seed_label FROM model WHERE name = :n"),
                           {"n": loaded.name}).first()
        if row is not None:
            if row.revision != loaded.revision or row.tokenizer_id != tok_id:
                raise AtlasError(f"a different model named {loaded.name} (revision {row.revision}) is already in the "
                                 f"atlas — give this one another name (it is revision {loaded.revision})")
            updates = {}
            if cohort_id is not None and row.cohort_id != cohort_id:
                updates["cohort_id"] = cohort_id
            if seed_label is not None and row.seed_label != seed_label:
                updates["seed_label"] = seed_label
            updates.update(checkpoint)
            if updates:
                sets = ", ".join(f"{k} = :{k}" for k in updates)
                conn.execute(sa.text(f"UPDATE model SET {sets} WHERE id = :id"), {**updates, "id": row.id})
            return int(row.id)
        model_id = conn.execute(sa.text(
            "INSERT INTO model (name, source, revision, architecture, cohort_id, seed_label, n_layers, d_model, d_mlp,"
            " n_heads, d_head, n_ctx, d_vocab, act_fn, tokenizer_id, weight_processing, step, train_tokens, checkpoint_of)"
            " VALUES (:name, :source, :revision, :architecture, :cohort_id, :seed_label, :n_layers, :d_model, :d_mlp,"
            " :n_heads, :d_head, :n_ctx, :d_vocab, :act_fn, :tokenizer_id, CAST(:wp AS jsonb), :step, :train_tokens,"
            " :checkpoint_of) RETURNING id"),
            {"name": loaded.name, "source": loaded.source, "revision": loaded.revision,
             "architecture": loaded.architecture, "cohort_id": cohort_id, "seed_label": seed_label,
             "n_layers": loaded.n_layers, "d_model": loaded.d_model, "d_mlp": loaded.d_mlp,
             "n_heads": loaded.n_heads, "d_head": loaded.d_head, "n_ctx": loaded.n_ctx, "d_vocab": loaded.d_vocab,
             "act_fn": loaded.act_fn, "tokenizer_id": tok_id, "wp": _json(loaded.weight_processing),
             "step": step, "train_tokens": train_tokens, "checkpoint_of": checkpoint_of}).scalar_one()
        layers = np.repeat(np.arange(loaded.n_layers, dtype=np.int16), loaded.d_mlp)
        idx = np.tile(np.arange(loaded.d_mlp, dtype=np.int32), loaded.n_layers)
        neurons = pl.DataFrame({"model_id": np.full(len(idx), model_id, dtype=np.int64), "layer": layers, "idx": idx})
        copy_frame(conn.connection.driver_connection, "neuron", neurons)
        return int(model_id)


def _get_or_create_cohort(conn: Connection, name: str, tokenizer_id: int, model_name: str) -> int:
    row = conn.execute(sa.text("SELECT id, tokenizer_id FROM cohort WHERE name = :n"), {"n": name}).first()
    if row is None:
        return int(conn.execute(sa.text("INSERT INTO cohort (name, tokenizer_id) VALUES (:n, :t) RETURNING id"),
                                {"n": name, "t": tokenizer_id}).scalar_one())
    if row.tokenizer_id is None:
        conn.execute(sa.text("UPDATE cohort SET tokenizer_id = :t WHERE id = :id"), {"t": tokenizer_id, "id": row.id})
    elif row.tokenizer_id != tokenizer_id:
        raise AtlasError(f"model {model_name} has a different tokenizer than cohort {name} — a cohort's models must "
                         "share one tokenizer and vocabulary")
    return int(row.id)


# ---------------------------------------------------------------- datasets

def store_dataset(engine: Engine, *, name: str, source: str, tokenizer: Any, rows: torch.Tensor | np.ndarray,
                  filter_rule: dict[str, Any], content_hash: str, n_kept_tokens: int, seed: int | None = None,
                  params: dict[str, Any] | None = None, force: bool = False) -> int:
    """Write a dataset row and its token rows (``rows: [n_rows, context_length]`` ints) in one transaction.

    The same name with the same content hash is a no-op (returns the id). A different content
    hash under the same name is refused unless ``force`` (which replaces it, and with it the runs
    computed on it).
    """
    rows = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    n_rows, ctx = rows.shape
    with engine.begin() as conn:
        tok_id = register_tokenizer(conn, tokenizer)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _REGISTER_LOCK})
        row = conn.execute(sa.text("SELECT id, content_hash FROM dataset WHERE name = :n"), {"n": name}).first()
        if row is not None:
            if row.content_hash == content_hash and not force:
                return int(row.id)
            if not force:
                raise AtlasError(f"a different dataset named {name} already exists — pick another name, or pass "
                                 "--force to replace it (its runs are deleted too)")
            conn.execute(sa.text("DELETE FROM dataset WHERE id = :i"), {"i": row.id})
        dataset_id = conn.execute(sa.text(
            "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens,"
            " filter_rule, content_hash, seed, params) VALUES (:name, :source, :tok, :ctx, :n_rows, :n_tokens, :kept,"
            " CAST(:rule AS jsonb), :hash, :seed, CAST(:params AS jsonb)) RETURNING id"),
            {"name": name, "source": source, "tok": tok_id, "ctx": ctx, "n_rows": n_rows, "n_tokens": n_rows * ctx,
             "kept": int(n_kept_tokens), "rule": _json(filter_rule), "hash": content_hash, "seed": seed,
             "params": _json(params or {})}).scalar_one()
        frame = pl.DataFrame({
            "dataset_id": np.full(n_rows, dataset_id, dtype=np.int64),
            "row_idx": np.arange(n_rows, dtype=np.int64),
            "tokens": pl.Series(rows.astype(np.int32).tolist(), dtype=pl.List(pl.Int32)),
        })
        copy_frame(conn.connection.driver_connection, "dataset_row", frame)
        return int(dataset_id)


# ---------------------------------------------------------------- result writers (for RunHandle.publish)

def frames_writer(run_id: int, frames: Mapping[str, pl.DataFrame], provenance: dict[str, Any] | None = None) -> Callable:
    """Publish-time writer: COPY each ``{table: frame}`` (with ``run_id``) and merge ``provenance``
    into the run's ``params``, on the psycopg connection of the publishing transaction."""
    def write(conn) -> None:
        for table, frame in frames.items():
            if "run_id" not in frame.columns:
                frame = frame.with_columns(pl.lit(run_id, dtype=pl.Int64).alias("run_id"))
            copy_frame(conn, table, frame)
        if provenance:
            conn.execute("UPDATE run SET params = params || %s::jsonb WHERE id = %s",
                         (json.dumps(provenance, sort_keys=True, default=str), run_id))
    return write


def classify_writer(run_id: int, features: pl.DataFrame, labels: pl.DataFrame, families: pl.DataFrame,
                    members: pl.DataFrame, summary: dict[str, Any]) -> Callable:
    """Publish-time writer of a classify run: features, labels, families (generated ids) and their
    members, and the run's result summary in ``params.result``."""
    def write(conn) -> None:
        frames_writer(run_id, {
            "neuron_feature": features,
            "neuron_label": labels.select("model_id", "layer", "idx", "label", "score", "evidence"),
        }, {"result": summary})(conn)
        ids: dict[int, int] = {}
        with conn.cursor() as cur:
            for f in families.iter_rows(named=True):
                cur.execute("INSERT INTO family (run_id, label, name, n_members, n_models, evidence) "
                            "VALUES (%s, %s, %s, %s, %s, %s::jsonb) RETURNING id",
                            (run_id, f["label"], f["name"], f["n_members"], f["n_models"], f["evidence"]))
                ids[f["family"]] = cur.fetchone()[0]
        if members.height:
            mapping = pl.DataFrame({"family": list(ids), "family_id": list(ids.values())},
                                   schema={"family": pl.Int64, "family_id": pl.Int64})
            copy_frame(conn, "family_member", members.join(mapping, on="family").select(
                "family_id", "model_id", "layer", "idx", "score"))
    return write


# ---------------------------------------------------------------- helpers

def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class _transaction:
    """``with _transaction(engine_or_conn) as conn``: a new transaction, or the caller's connection."""

    def __init__(self, engine_or_conn: Engine | Connection):
        self.target = engine_or_conn
        self.ctx = None

    def __enter__(self) -> Connection:
        if isinstance(self.target, Connection):
            return self.target
        self.ctx = self.target.begin()
        return self.ctx.__enter__()

    def __exit__(self, *exc) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
