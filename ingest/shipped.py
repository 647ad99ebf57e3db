"""The shipped demo cohort: trained once with the committed recipe, kept in the repository.

A cohort whose seeds share universal neurons takes longer to train than a first ``make demo`` may
(bench/results/demo_recipes.json has the measured frontier), so the demo cohort was trained once
with ``atlas zoo train`` (the recipe ``atlas.ingest.zoo.DEMO``) and its weights are package data of
``atlas.ingest``, in ``demo_cohort/``:

- ``recipe.json``: the recipe (``ZooConfig``), the training corpus (text files and hash), per model
  its seed, the sha256 of its weight file, steps, tokens, final training loss, the parameter
  digest after the first optimizer steps (``probe``) and its intermediate checkpoints; the torch
  version and CPU capability it was trained with (bit-for-bit reproduction needs the same kernels).
- ``tokenizer/``: the cohort's tokenizer.
- ``<model>.safetensors``: the fp16 weights of every model and checkpoint (``demo-a@step800``).

``materialise_shipped()`` writes them as the Hugging Face checkpoint directories the zoo writes
(float32 weights, config, tokenizer, ``zoo.json``, checkpoints under ``steps/``), under
``ATLAS_HOME/models/shipped/<name>/``, which the rest of the pipeline reads like a freshly trained
cohort. ``export_shipped(trained, corpus_files)`` writes the package data from a trained cohort.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from atlas.errors import AtlasError
from atlas.ingest.zoo import (STEPS_DIR, TrainedCohort, ZooConfig, _gpt2_config, checkpoint_dirs, checkpoint_name,
                              step_dir_name)

SHIPPED_DIR = Path(__file__).parent / "demo_cohort"
RECIPE = "recipe.json"
TOKENIZER = "tokenizer"
SIZE_LIMIT = 10_000_000  # bytes: all shipped files together stay under 10 MB
# The over-training checkpoints that are shipped: those of the first seeds, at these training
# fractions (a subset of DEMO.checkpoints): a reference and a partner per step fit the size limit.
SHIP_CHECKPOINT_SEEDS = 2
SHIP_CHECKPOINT_FRACTIONS = (0.0833, 0.3333)  # steps 488 and 1953 of DEMO: 0.5M and 2M tokens


def ship_steps(config: ZooConfig, fractions: Sequence[float] = SHIP_CHECKPOINT_FRACTIONS) -> list[int]:
    """The saved checkpoint steps of ``config`` that are shipped (fractions of the scheduled steps)."""
    n = config.n_steps()
    steps = sorted({int(round(f * n)) for f in fractions})
    missing = [s for s in steps if s not in config.checkpoint_steps()]
    if missing:
        raise AtlasError(f"steps {missing} are not saved by the recipe (its checkpoints: {config.checkpoints})")
    return steps


def shipped_recipe(directory: Path = SHIPPED_DIR) -> dict[str, Any] | None:
    """The shipped cohort's ``recipe.json``, or None when no cohort is shipped."""
    path = directory / RECIPE
    return json.loads(path.read_text()) if path.is_file() else None


def recipe_config(recipe: dict[str, Any]) -> ZooConfig:
    """The ``ZooConfig`` recorded in a shipped recipe (tuples restored from JSON lists)."""
    known = {f.name for f in fields(ZooConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["config"].items() if k in known}
    return ZooConfig(**values)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fp16_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A zoo checkpoint's weights rounded to fp16 (what is shipped)."""
    from safetensors.torch import load_file

    return {k: v.to(torch.float16).contiguous() for k, v in sorted(load_file(str(model_dir / "model.safetensors")).items())}


def _save_fp16(model_dir: Path, out: Path) -> str:
    from safetensors.torch import save_file

    save_file(fp16_weights(model_dir), str(out), metadata={"format": "pt"})
    return file_sha256(out)


# ---------------------------------------------------------------- export (once, by a maintainer)

def export_shipped(trained: TrainedCohort, corpus: dict[str, Any], directory: Path = SHIPPED_DIR, *,
                   checkpoint_seeds: int | None = None, checkpoint_steps: Sequence[int] | None = None,
                   note: str | None = None) -> dict[str, Any]:
    """Write ``trained`` (a cohort from ``train_cohort``) as the shipped package data.

    ``corpus``: how the training text was made (``{"source": ..., "files": [...], "hash": ...}``).
    ``checkpoint_seeds``: ship the intermediate checkpoints of only the first that many seeds (the
    reference and some partners: enough to correlate each step, in less space); ``checkpoint_steps``:
    only those of the saved steps (default all); ``note``: how the cohort was made, kept in the
    recipe. Replaces what
    ``directory`` held; refuses a cohort over ``SIZE_LIMIT``."""
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    models: dict[str, Any] = {}
    for n, (path, name) in enumerate(zip(trained.paths, trained.names)):
        meta = json.loads((path / "zoo.json").read_text())
        entry = {key: meta[key] for key in ("seed", "seed_label", "train_steps", "train_tokens", "final_loss_ema",
                                              "probe", "train_seconds")}
        entry["sha256"] = _save_fp16(path, staging / f"{name}.safetensors")
        entry["checkpoints"] = []
        for ckpt in checkpoint_dirs(path) if checkpoint_seeds is None or n < checkpoint_seeds else []:
            if checkpoint_steps is not None and ckpt.step not in checkpoint_steps:
                continue
            ckpt_name = checkpoint_name(name, ckpt.step)
            entry["checkpoints"].append({"step": ckpt.step, "train_tokens": ckpt.train_tokens, "name": ckpt_name,
                                         "sha256": _save_fp16(ckpt.path, staging / f"{ckpt_name}.safetensors")})
        models[name] = entry
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast.from_pretrained(trained.tokenizer_dir).save_pretrained(staging / TOKENIZER)
    recipe = {
        "name": trained.name, "config": asdict(trained.config), "config_fingerprint": trained.config.fingerprint(),
        "corpus": corpus, "weights": "fp16 (trained in float32; materialised as float32)",
        "trained_with": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                         "machine": platform.machine(), "threads": trained.config.threads},
        "models": models,
    }
    if note:
        recipe["note"] = note
    (staging / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    if size > SIZE_LIMIT:
        shutil.rmtree(staging)
        raise AtlasError(f"the cohort takes {size / 1e6:.1f} MB, over the {SIZE_LIMIT / 1e6:.0f} MB the "
                         "repository ships — use fewer seeds or checkpoints, or a smaller model")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return recipe


# ---------------------------------------------------------------- materialise (every demo)

def materialise_shipped(root: Path | None = None, directory: Path = SHIPPED_DIR, log=None) -> TrainedCohort:
    """The shipped cohort as zoo checkpoint directories under ``root`` (default
    ``ATLAS_HOME/models/shipped``), written once and reused while the shipped files are unchanged.
    Checks every weight file against the recipe's sha256 first."""
    from transformers import PreTrainedTokenizerFast

    from atlas.settings import get_settings

    recipe = shipped_recipe(directory)
    if recipe is None:
        raise AtlasError(f"no shipped cohort in {directory} — train one with `atlas zoo train`")
    config = recipe_config(recipe)
    root = (root or get_settings().models_dir / "shipped") / recipe["name"]
    tok_dir = root / f"{recipe['name']}-tokenizer"
    stamp = hashlib.sha256((directory / RECIPE).read_bytes()).hexdigest()[:16]
    done = root / ".materialised"
    paths = [root / name for name in recipe["models"]]
    if not (done.is_file() and done.read_text() == stamp and all(p.is_dir() for p in paths)):
        _check_files(recipe, directory)
        shutil.rmtree(root, ignore_errors=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory / TOKENIZER)
        tokenizer.save_pretrained(tok_dir)
        (tok_dir / "atlas-tokenizer.json").write_text(json.dumps({"vocab_size": config.vocab_size,
                                                                  "corpus_hash": recipe["corpus"]["hash"]}))
        for name, entry in recipe["models"].items():
            meta = {"config": recipe["config"], "config_fingerprint": recipe["config_fingerprint"],
                    "corpus_hash": recipe["corpus"]["hash"],
                    "shipped": {"weights": recipe["weights"], "sha256": entry["sha256"]},
                    **{k: v for k, v in entry.items() if k not in ("sha256", "checkpoints")},
                    "checkpoints": [{"step": c["step"], "train_tokens": c["train_tokens"]} for c in entry["checkpoints"]]}
            _write_model(directory / f"{name}.safetensors", root / name, config, tokenizer, meta)
            for c in entry["checkpoints"]:
                _write_model(directory / f"{c['name']}.safetensors", root / name / STEPS_DIR / step_dir_name(c["step"]),
                             config, tokenizer, {"step": c["step"], "train_tokens": c["train_tokens"], "shipped": True})
        done.write_text(stamp)
        if log:
            log(f"shipped cohort {recipe['name']}: {len(paths)} models written to {root}")
    labels = [recipe["models"][p.name]["seed_label"] for p in paths]
    return TrainedCohort(name=recipe["name"], paths=paths, names=[p.name for p in paths], labels=labels,
                         seeds=[recipe["models"][p.name]["seed"] for p in paths], tokenizer_dir=tok_dir, config=config,
                         seconds={p.name: 0.0 for p in paths})


def _check_files(recipe: dict[str, Any], directory: Path) -> None:
    for name, entry in recipe["models"].items():
        for file_name, want in [(name, entry["sha256"])] + [(c["name"], c["sha256"]) for c in entry["checkpoints"]]:
            path = directory / f"{file_name}.safetensors"
            if not path.is_file() or file_sha256(path) != want:
                raise AtlasError(f"the shipped weights {path.name} are missing or changed (sha256 differs from "
                                 f"{RECIPE}) — restore them from the repository (git checkout -- {path.parent.name})")


def _write_model(weights: Path, out: Path, config: ZooConfig, tokenizer, meta: dict[str, Any]) -> None:
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    _gpt2_config(config, len(tokenizer), tokenizer.bos_token_id).save_pretrained(out)
    state = {k: v.to(torch.float32).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    (out / "zoo.json").write_text(json.dumps(meta, indent=2))


def shipped_matches(config: ZooConfig, directory: Path = SHIPPED_DIR, *, any_seeds: bool = False) -> bool:
    """True when a cohort is shipped and was trained with exactly ``config`` (seeds included, unless
    ``any_seeds``: the same recipe for some of its seeds, e.g. a retrain of seed 1 only)."""
    recipe = shipped_recipe(directory)
    return recipe is not None and recipe["config_fingerprint"] == config.fingerprint() and \
        (any_seeds or tuple(recipe["config"]["seeds"]) == tuple(config.seeds))


def compare_with_shipped(trained: TrainedCohort, directory: Path = SHIPPED_DIR) -> dict[str, bool]:
    """Per model of ``trained`` that the shipped cohort has: are its fp16 weights bit-identical to the
    shipped file? (``atlas zoo train`` reports this when it retrains the shipped recipe.)"""
    from safetensors.torch import load_file

    recipe = shipped_recipe(directory)
    out: dict[str, bool] = {}
    if recipe is None:
        return out
    for path, name in zip(trained.paths, trained.names):
        if name in recipe["models"]:
            shipped = load_file(str(directory / f"{name}.safetensors"))
            mine = fp16_weights(path)
            out[name] = shipped.keys() == mine.keys() and all(torch.equal(shipped[k], mine[k]) for k in mine)
    return out


def corpus_record(files: Sequence[Path], documents: Sequence[str], source: str) -> dict[str, Any]:
    """How a cohort's training text was made, for ``recipe.json``."""
    from atlas.ingest.zoo import corpus_hash

    return {"source": source, "files": [Path(f).name for f in files], "hash": corpus_hash(documents)}


def demo_cohort(config: ZooConfig, corpus, *, train: bool = False, log=print) -> TrainedCohort:
    """The demo cohort for ``config``: the shipped one when ``config`` is the shipped recipe (and
    ``train`` is False), else trained here (cached) on the recipe's texts of ``corpus``
    (an ``atlas.ingest.corpus.DemoCorpus``)."""
    from atlas.ingest.corpus import read_documents, training_files
    from atlas.ingest.zoo import DEMO_TEXTS, train_cohort

    if not train and shipped_matches(config):
        recipe = shipped_recipe()
        entry = next(iter(recipe["models"].values()))
        log(f"using the shipped demo cohort ({len(recipe['models'])} seeds, {entry['train_tokens']:,} training tokens "
            f"each, trained once with the committed recipe; `atlas zoo train` retrains it, `atlas demo --train` "
            "trains instead of using it)")
        return materialise_shipped(log=log)
    return train_cohort(config, read_documents(training_files(corpus, DEMO_TEXTS)), log=log)
