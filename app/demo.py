"""The demo as a manifest: the demo seed cohort and a held-out Shakespeare dataset.

``demo_manifest()`` takes the shipped demo cohort (``atlas.ingest.shipped``; or trains one, cached
under ``ATLAS_HOME/models``, with ``train``), fetches the corpus
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


def demo_manifest(*, seeds: int | None = None, train_tokens: int | None = None, train: bool = False,
                  max_tokens: int | None = None, log: Callable[[str], Any] = print) -> Manifest:
    """The demo cohort (the shipped one; trained here, cached, when ``train`` or another recipe is
    asked for), its manifest written and returned loaded. The seeds' training checkpoints become
    one cohort per step (correlated; no activation statistics, classification or examples, which
    the over-training page does not show): the over-training page. ``max_tokens`` caps the held-out
    dataset (a quick look; the default streams all of it)."""
    from atlas.ingest.corpus import fetch_demo_corpus
    from atlas.ingest.shipped import demo_cohort
    from atlas.ingest.zoo import DEMO, checkpoint_dirs, checkpoint_name

    config = DEMO
    if seeds is not None:
        config = replace(config, seeds=tuple(range(1, seeds + 1)))
    if train_tokens is not None:
        config = replace(config, train_tokens=train_tokens, stop_step=None)
    corpus = fetch_demo_corpus()
    log(f"demo corpus: {len(corpus.train)} training texts, {len(corpus.held_out)} held-out texts in {corpus.root}")
    trained = demo_cohort(config, corpus, train=train, log=log)
    log(f"cohort {trained.name}: {', '.join(trained.names)} in {trained.paths[0].parent}")

    finals, by_step = [], {}
    for name, path, label in zip(trained.names, trained.paths, trained.labels):
        meta = json.loads((path / "zoo.json").read_text())
        finals.append(_model_line(name, path, label, meta["train_steps"], meta["train_tokens"]))
        for ckpt in checkpoint_dirs(path):
            by_step.setdefault(ckpt.step, []).append(_model_line(
                checkpoint_name(name, ckpt.step), ckpt.path, label, ckpt.step, ckpt.train_tokens, checkpoint_of=name))
    inputs = ", ".join(json.dumps(str(p)) for p in corpus.held_out)
    cap = "" if max_tokens is None else f"max_tokens = {int(max_tokens)}\n"
    text = f"""# The demo atlas (written by `atlas demo`): the demo seed cohort over held-out Shakespeare,
# and the seeds at each saved training step (universality over training).
[datasets.{DEMO_DATASET}]
tokenizer_from = {json.dumps(trained.names[0])}
inputs = [{inputs}]
context_length = {DEMO_CONTEXT}
{cap}{_cohort_table(trained.name, trained.names[0], finals)}"""
    for step, lines in sorted(by_step.items()):
        if len(lines) > 1:  # a step cohort needs a reference and a partner
            text += _cohort_table(checkpoint_name(trained.name, step), checkpoint_name(trained.names[0], step), lines,
                                  final=False)
    path = get_settings().home / "demo.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return load_manifest(path)


def _model_line(name: str, path, label: str, step: int, train_tokens: int, checkpoint_of: str | None = None) -> str:
    parent = f", checkpoint_of = {json.dumps(checkpoint_of)}" if checkpoint_of else ""
    return (f"{{ name = {json.dumps(name)}, source = {json.dumps(str(path))}, seed = {json.dumps(label)}, "
            f"step = {int(step)}, train_tokens = {int(train_tokens)}{parent} }}")


def _cohort_table(name: str, reference: str, lines: list[str], final: bool = True) -> str:
    skip = "" if final else "stats = false\nclassify = false\nexamples = false\n"
    models = ",\n  ".join(lines)
    return f"""
[cohorts.{json.dumps(name)}]
dataset = "{DEMO_DATASET}"
reference = {json.dumps(reference)}
{skip}models = [
  {models},
]
"""
