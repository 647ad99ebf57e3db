"""Loading models through TransformerLens (4.x ``TransformerBridge``), with their provenance.

``load_model(source)`` takes a hub name (``"stanford-crfm/alias-gpt2-small-x21"``,
``"EleutherAI/pythia-160m"``) or a local Hugging Face checkpoint directory (``config.json``,
weights and tokenizer files, as ``save_pretrained`` writes them) and returns a ``LoadedModel``:
the bridge plus the shapes, activation function, tokenizer and a content hash of that tokenizer.

Weights are processed like HookedTransformer's defaults (``enable_compatibility_mode``: LayerNorm
folded into the following linear maps, writing weights centred, unembedding centred, value biases
folded). None of these change ``hook_pre``/``hook_post`` activations (LayerNorm removes the mean
that centring subtracts; folding moves the LN scale into ``W_in``); they make the weight statistics
of method.md §3 comparable with the paper. What was applied is in ``LoadedModel.weight_processing``
and stored on the model row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from atlas.errors import AtlasError

WEIGHT_PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}


@dataclass
class LoadedModel:
    """A model ready to run: the TransformerLens bridge and what the atlas records about it.

    ``name`` is the hub name, or the directory name of a local checkpoint. ``revision`` is the hub
    commit, or for a local checkpoint ``sha256:<hash of the weight files>``.
    """

    bridge: Any
    name: str
    source: str
    revision: str | None
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    act_fn: str
    tokenizer: Any
    tokenizer_hash: str
    device: str
    weight_processing: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp

    def __repr__(self) -> str:  # the bridge's repr is the whole module tree
        return (f"LoadedModel({self.name!r}, {self.architecture}, L={self.n_layers}, d_model={self.d_model}, "
                f"d_mlp={self.d_mlp}, d_vocab={self.d_vocab}, device={self.device!r})")


def is_local_source(source: str) -> bool:
    """A local path (existing, or written like one) rather than a hub name ``owner/name``."""
    return (
        Path(source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or os.sep != "/" and os.sep in source
    )


def resolve_device(device: str | None) -> str:
    """``"cuda"`` when asked for (or ``None``/``"auto"`` and a GPU exists), else ``"cpu"``."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AtlasError(f"--device {device} was asked for but PyTorch sees no CUDA GPU — use --device cpu")
    return device


def load_model(source: str, device: str = "cpu", dtype: torch.dtype | None = None, *,
               name: str | None = None, process_weights: bool = True, revision: str | None = None) -> LoadedModel:
    """Load ``source`` (hub name or local HF checkpoint dir) through ``TransformerBridge``.

    ``revision``: a hub branch, tag or commit (e.g. Pythia's training checkpoints ``"step1000"``);
    the default name of such a model is ``source@revision``. A local directory has no revisions.

    ``dtype`` defaults to float32 (also on CUDA: activations are computed under fp16 autocast by
    ``atlas.ingest.activations``, while weights and statistics stay fp32). Raises a one-line
    ``AtlasError`` when the model cannot be found, downloaded or read.
    """
    device = resolve_device(device)
    dtype = dtype or torch.float32
    local = is_local_source(source)
    if local and revision is not None:
        raise AtlasError(f"--revision {revision} was given for the local directory {source} — a local checkpoint "
                         "has no revisions: point at the directory of that checkpoint instead")
    if local:
        path = Path(source).expanduser().resolve()
        if not path.is_dir():
            raise AtlasError(f"no model checkpoint directory at {source} — give a directory written by "
                             "save_pretrained (config.json + weights + tokenizer) or a hub name like EleutherAI/pythia-160m")
        if not (path / "config.json").is_file():
            raise AtlasError(f"{source} has no config.json — it is not a Hugging Face checkpoint directory")
        boot_name = str(path)
    else:
        boot_name = source

    bridge = _boot(boot_name, source, local, device, dtype, revision)
    applied: dict[str, Any] = {}
    if process_weights:
        try:
            bridge.enable_compatibility_mode(disable_warnings=True, **WEIGHT_PROCESSING)
        except Exception as err:  # noqa: BLE001 - any failure here is the model's, report it in one line
            raise AtlasError(f"could not process the weights of {source} (fold LayerNorm, centre weights): "
                             f"{_first_line(err)} — this architecture may be unsupported") from err
        applied = dict(WEIGHT_PROCESSING)
    bridge.eval()

    cfg = bridge.cfg
    tokenizer = bridge.tokenizer
    if tokenizer is None:
        raise AtlasError(f"{source} has no tokenizer — save the tokenizer files next to the checkpoint")
    if local:
        revision = "sha256:" + _weights_hash(Path(boot_name))
        model_name = name or Path(boot_name).name
    else:
        hf_config = getattr(getattr(bridge, "original_model", None), "config", None)
        commit = getattr(hf_config, "_commit_hash", None)
        model_name = name or (f"{source}@{revision}" if revision else source)
        revision = commit or _hub_revision(source, revision) or revision
    return LoadedModel(
        bridge=bridge,
        name=model_name,
        source=str(boot_name) if local else source,
        revision=revision,
        architecture=str(cfg.architecture or type(bridge.adapter).__name__),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_mlp=int(cfg.d_mlp),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(cfg.d_vocab),
        act_fn=str(cfg.act_fn),
        tokenizer=tokenizer,
        tokenizer_hash=tokenizer_fingerprint(tokenizer),
        device=device,
        weight_processing=applied,
        dtype=dtype,
    )


def _boot(boot_name: str, source: str, local: bool, device: str, dtype: torch.dtype, revision: str | None = None):
    from transformer_lens.model_bridge import TransformerBridge

    # transformers logs a retry line per attempt when the hub is unreachable; our error says it once
    quiet = ("huggingface_hub", "huggingface_hub.utils._http", "transformers")
    levels = {n: logging.getLogger(n).level for n in quiet}
    for n in quiet:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        extra = {"revision": revision} if revision is not None else {}
        return TransformerBridge.boot_transformers(boot_name, device=device, dtype=dtype, **extra)
    except AtlasError:
        raise
    except Exception as err:  # noqa: BLE001 - turn library errors into one actionable line
        text = _first_line(err)
        if local:
            raise AtlasError(f"could not read the checkpoint in {source}: {text} — "
                             "is it a complete save_pretrained directory of a supported architecture?") from err
        lowered = text.lower()
        if any(s in lowered for s in ("connect", "resolve", "offline", "network", "name or service", "timed out")):
            what = "could not be downloaded (no connection to the Hugging Face hub)" if revision is None else \
                f"at revision {revision} could not be downloaded (no connection to the Hugging Face hub)"
            todo = "connect to the internet, set HF_HOME to a cache that holds it, or pass a local checkpoint directory"
        elif any(s in lowered for s in ("not found", "404", "repository not found", "does not appear", "is not a valid")):
            what = "was not found on the Hugging Face hub"
            todo = "check the spelling (owner/name), or pass a local checkpoint directory"
        else:
            what = f"could not be loaded ({text})"
            todo = "check the name, or pass a local checkpoint directory"
        raise AtlasError(f"model {source} {what} — {todo}") from err
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The hub commit the loaded files came from: the name of their snapshot directory in the
    Hugging Face cache (transformers 5 configs no longer carry ``_commit_hash``)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _weights_hash(path: Path) -> str:
    """sha256 over the weight files of a checkpoint directory (stable identity of its contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file())
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- tokenizers

def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content hash of a tokenizer's vocabulary, merges and special tokens (``sha256:…``, 16 hex).

    Two tokenizers with the same fingerprint map every text to the same ids. Works for HF fast
    tokenizers (``backend_tokenizer``) and raw ``tokenizers.Tokenizer`` objects.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    content = {
        "type": model.get("type"),
        "vocab": sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1])
        if isinstance(model.get("vocab"), dict) else model.get("vocab"),
        "merges": [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []],
        "added": sorted((t["id"], t["content"]) for t in spec.get("added_tokens") or []),
        "pre_tokenizer": spec.get("pre_tokenizer"),
        "normalizer": spec.get("normalizer"),
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


def check_same_tokenizer(models: Iterable[LoadedModel]) -> str:
    """Return the shared tokenizer hash, or raise ``AtlasError`` naming the model(s) that differ."""
    models = list(models)
    if not models:
        raise AtlasError("no models given — a cohort needs at least one model")
    counts = Counter(m.tokenizer_hash for m in models)
    common, _ = counts.most_common(1)[0]
    odd = [m.name for m in models if m.tokenizer_hash != common]
    if odd:
        majority = [m.name for m in models if m.tokenizer_hash == common]
        raise AtlasError(
            f"tokenizer of {', '.join(odd)} differs from that of {', '.join(majority)} — a cohort must share "
            "one tokenizer and vocabulary (correlations compare the same token stream)"
        )
    return common


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """BOS/EOS/PAD ids of a tokenizer (None when it has none)."""
    return {
        "bos": getattr(tokenizer, "bos_token_id", None),
        "eos": getattr(tokenizer, "eos_token_id", None),
        "pad": getattr(tokenizer, "pad_token_id", None),
    }
