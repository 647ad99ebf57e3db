"""The demo as a manifest: the demo seed cohort and a held-out Shakespeare dataset.

``demo_manifest()`` trains the demo cohort (cached under ``ATLAS_HOME/models``), fetches the corpus
(cached under ``ATLAS_HOME/corpora``) and writes ``ATLAS_HOME/demo.toml``, an ordinary manifest:
``atlas demo`` runs it with the planner in this process, and ``atlas worker --manifest
.atlas/demo.toml`` would do the same through the queue.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable

from atlas.app.manifest import Manifest, load_manifest
from atlas.settings import get_settings

DEMO_DATASET = "demo"
DEMO_CONTEXT = 128


def demo_manifest(*, seeds: int | None = None, train_tokens: int | None = None,
                  log: Callable[[str], Any] = print) -> Manifest:
    """Train (or reuse) the demo cohort, write its manifest and return it loaded."""
    from atlas.ingest.corpus import fetch_demo_corpus, read_documents
    from atlas.ingest.zoo import DEMO, train_cohort

    config = DEMO
    if seeds is not None:
        config = replace(config, seeds=tuple(range(1, seeds + 1)))
    if train_tokens is not None:
        config = replace(config, train_tokens=train_tokens)
    corpus = fetch_demo_corpus()
    log(f"demo corpus: {len(corpus.train)} training texts, {len(corpus.held_out)} held-out texts in {corpus.root}")
    trained = train_cohort(config, read_documents(corpus.train), log=log)
    log(f"cohort {trained.name}: {', '.join(trained.names)} in {trained.paths[0].parent}")

    models = ",\n  ".join(
        f"{{ name = {json.dumps(name)}, source = {json.dumps(str(path))}, seed = {json.dumps(label)} }}"
        for name, path, label in zip(trained.names, trained.paths, trained.labels))
    inputs = ", ".join(json.dumps(str(p)) for p in corpus.held_out)
    text = f"""# The demo atlas (written by `atlas demo`): the demo seed cohort over held-out Shakespeare.
[datasets.{DEMO_DATASET}]
tokenizer_from = {json.dumps(trained.names[0])}
inputs = [{inputs}]
context_length = {DEMO_CONTEXT}

[cohorts.{trained.name}]
dataset = "{DEMO_DATASET}"
reference = {json.dumps(trained.names[0])}
models = [
  {models},
]
"""
    path = get_settings().home / "demo.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return load_manifest(path)
