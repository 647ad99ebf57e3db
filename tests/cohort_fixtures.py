"""A tiny trained seed cohort shared by every test that needs real models (fixture ``tiny_cohort``).

``tiny_cohort`` (session-scoped) is a ``TinyCohort``:

- ``paths: list[Path]``   Hugging Face checkpoint dirs (load with ``atlas.ingest.models.load_model(str(p))``)
- ``names: list[str]``    model names (``tiny-a``, ``tiny-b``, ``tiny-c``: the directory names)
- ``labels: list[str]``   seed labels (``a``, ``b``, ``c``)
- ``tokenizer_dir: Path`` the shared tokenizer (also saved inside every checkpoint dir)
- ``tokenizer``           that tokenizer (``transformers.PreTrainedTokenizerFast``)
- ``config``              the ``atlas.ingest.zoo.ZooConfig`` (3 seeds, 2 layers, d_model 32, d_mlp 64, vocab ≤ 384, n_ctx 32)
- ``texts: list[str]``    held-out grammar documents (not seen in training)
- ``rows: LongTensor[n_rows, 32]`` those texts as dataset rows (BOS + 31 tokens, EOS between documents)
- ``filter_rule: dict``   the dataset filter rule (``exclude_token_ids``: BOS/EOS and newline)
- ``context_length``      32
- ``store_dataset(engine, name="tiny") -> atlas.ingest.store.DatasetInfo``  write rows + tokenizer to a test DB

Models are trained on a generated grammar corpus (``atlas.ingest.corpus.grammar_corpus``) in a few
seconds, once: the checkpoints are cached under ``<base>/atlas-tiny-cohort-<key>`` (base: $TMPDIR,
or ``ATLAS_TEST_COHORT_DIR``, e.g. a CI cache) and reused by later sessions; training is
deterministic per seed. The key hashes everything the checkpoints depend on: the recipe, the
corpus parameters, the source of the training and corpus code (``ingest/zoo.py``,
``ingest/corpus.py``) and the torch version, so a change to any of them trains afresh instead of
testing stale models. A file lock makes concurrent test sessions share one training.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from atlas.ingest.zoo import ZooConfig

TINY = ZooConfig(name="tiny", seeds=(1, 2, 3), n_layers=2, d_model=32, d_mlp=64, n_heads=4, n_ctx=32,
                 vocab_size=384, train_tokens=96_000, batch_size=16, lr=5e-3, threads=1, checkpoints=(0.25, 0.5))
TRAIN_DOCS, TRAIN_SEED = 600, 0
HELD_OUT_DOCS, HELD_OUT_SEED = 40, 1
CONTEXT_LENGTH = 32
MAX_TOKENS = 160 * CONTEXT_LENGTH  # 160 rows


@dataclass
class TinyCohort:
    paths: list[Path]
    names: list[str]
    labels: list[str]
    tokenizer_dir: Path
    tokenizer: Any
    config: ZooConfig
    texts: list[str]
    rows: torch.Tensor
    filter_rule: dict[str, Any]
    context_length: int

    def store_dataset(self, engine, name: str = "tiny"):
        """Store the held-out rows as dataset ``name`` (idempotent); return its ``DatasetInfo``."""
        from atlas.ingest.store import get_dataset, store_dataset
        from atlas.ingest.datasets import rows_hash

        from atlas.ingest.activations import kept_token_mask

        store_dataset(engine, name=name, source="grammar:held-out", tokenizer=self.tokenizer, rows=self.rows,
                      filter_rule=self.filter_rule, content_hash=rows_hash(self.rows),
                      n_kept_tokens=int(kept_token_mask(self.rows, self.filter_rule).sum()),
                      seed=HELD_OUT_SEED, params={"documents": len(self.texts)})
        return get_dataset(engine, name)


def cache_key() -> str:
    """A hash of the recipe and of the code that trains the cohort (see the module docstring)."""
    import hashlib
    import inspect

    from atlas.ingest import corpus, zoo

    digest = hashlib.sha256()
    for part in (TINY.fingerprint(), TRAIN_DOCS, TRAIN_SEED, torch.__version__,
                 inspect.getsource(zoo), inspect.getsource(corpus)):
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cohort_dir() -> Path:
    base = Path(os.environ.get("ATLAS_TEST_COHORT_DIR") or tempfile.gettempdir())
    return base / f"atlas-tiny-cohort-{cache_key()}"


def build_tiny_cohort(root: Path | None = None) -> TinyCohort:
    import fasteners
    from transformers import PreTrainedTokenizerFast

    from atlas.ingest.corpus import grammar_corpus
    from atlas.ingest.datasets import build_rows
    from atlas.ingest.zoo import train_cohort

    root = root or cohort_dir()
    root.mkdir(parents=True, exist_ok=True)
    with fasteners.InterProcessLock(str(root / ".lock")):
        trained = train_cohort(TINY, grammar_corpus(TRAIN_DOCS, seed=TRAIN_SEED), root, progress=False, log=None)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(trained.tokenizer_dir)
    texts = grammar_corpus(HELD_OUT_DOCS, seed=HELD_OUT_SEED)
    built = build_rows(tokenizer, texts, CONTEXT_LENGTH, MAX_TOKENS)
    return TinyCohort(paths=trained.paths, names=trained.names, labels=trained.labels,
                      tokenizer_dir=trained.tokenizer_dir, tokenizer=tokenizer, config=TINY, texts=texts,
                      rows=built.rows, filter_rule=built.filter_rule, context_length=CONTEXT_LENGTH)


@pytest.fixture(scope="session")
def tiny_cohort() -> TinyCohort:
    """The tiny trained seed cohort (see the module docstring)."""
    return build_tiny_cohort()
