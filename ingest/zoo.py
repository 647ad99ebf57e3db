"""The model zoo: a seed cohort of small GPT-2-style models trained here, on the CPU.

``train_cohort(config, documents)`` trains one byte-level BPE tokenizer on the documents, then one
``GPT2LMHeadModel`` per seed, and saves each as a Hugging Face checkpoint directory (weights,
config, tokenizer) under ``ATLAS_HOME/models/<cohort>/<cohort>-<label>/``, which
``atlas.ingest.models.load_model`` reads. The models differ only by seed.

What a seed changes. Like the paper's seed cohorts (Mistral's GPT-2 seeds differ in initialisation
*and* data order), the seed sets both the parameter initialisation and the order of the training
rows (``data_order="seed"``, the default). ``data_order="shared"`` keeps one row order for every
seed (only the initialisation differs), which isolates the effect of initialisation.

Training rows follow the dataset format of ``atlas.ingest.datasets``: BOS + ``n_ctx - 1`` tokens of the
document stream, documents separated by the EOS token (GPT-2 style, BOS = EOS = ``<|endoftext|>``).

Caching and determinism. A checkpoint directory carries ``zoo.json`` (the config, seed, a hash of
the training tokens and of the weights). Training again with the same config and corpus is a no-op;
the same seed gives the same weights on the same machine and thread count. Directories are written
to a temporary name and renamed, so a killed training leaves no half checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from atlas.errors import AtlasError

SPECIAL = "<|endoftext|>"
SEED_LABELS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ZooConfig:
    """A cohort recipe: architecture, tokenizer, training budget and seeds."""

    name: str = "demo"
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_layers: int = 2
    d_model: int = 128
    d_mlp: int = 512
    n_heads: int = 4
    n_ctx: int = 128
    vocab_size: int = 2048
    act_fn: str = "gelu_new"
    train_tokens: int = 700_000  # per seed: ~40 s at ~17k tokens/s on 2 idle CPU cores; 5 seeds ≈ 3.5 min
    batch_size: int = 8  # at this budget more, smaller steps learn more per token (2-seed check: loss 4.9 vs 5.2 at 16)
    lr: float = 2e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    data_order: str = "seed"  # "seed": the seed also shuffles the rows; "shared": one order for all seeds
    data_seed: int = 0  # the row order when data_order == "shared"
    threads: int | None = None  # torch CPU threads while training (1 is fastest for tiny models)

    def fingerprint(self) -> str:
        """The recipe of one model, all but the seed list: adding seeds keeps the trained ones cached."""
        recipe = {k: v for k, v in asdict(self).items() if k != "seeds"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

    def label(self, seed: int) -> str:
        """Seed labels a, b, c, … in the order of ``seeds`` (the paper calls its seeds a–e)."""
        return SEED_LABELS[self.seeds.index(seed)] if self.seeds.index(seed) < 26 else f"s{seed}"

    def model_name(self, seed: int) -> str:
        return f"{self.name}-{self.label(seed)}"


DEMO = ZooConfig()


@dataclass
class TrainedCohort:
    """Checkpoint directories of a trained cohort (``paths[i]`` is model ``names[i]``, seed label ``labels[i]``)."""

    name: str
    paths: list[Path]
    names: list[str]
    labels: list[str]
    seeds: list[int]
    tokenizer_dir: Path
    config: ZooConfig
    seconds: dict[str, float] = field(default_factory=dict)  # training time per model (0 when cached)


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(documents: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``documents`` (≤ ``vocab_size`` ids, id 0 = ``<|endoftext|>``).

    Returns a ``transformers.PreTrainedTokenizerFast`` with BOS = EOS = ``<|endoftext|>``.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if not any(d.strip() for d in documents):
        raise AtlasError("the corpus is empty — a tokenizer needs some text to train on")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(documents), vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIAL, eos_token=SPECIAL,
                                   unk_token=SPECIAL, model_max_length=1_000_000)


def encode_documents(tokenizer, documents: Sequence[str]) -> torch.Tensor:
    """The token stream of ``documents``, each followed by EOS: ``LongTensor[n_tokens]``."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def stream_to_rows(stream: torch.Tensor, context_length: int, bos_id: int) -> torch.Tensor:
    """Cut a token stream into rows of BOS + ``context_length - 1`` tokens (the tail is dropped)."""
    body = context_length - 1
    n_rows = stream.numel() // body
    rows = stream[: n_rows * body].reshape(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos_id, dtype=torch.long), rows], dim=1)


# ---------------------------------------------------------------- models

def _gpt2_config(config: ZooConfig, vocab_size: int, bos_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=config.n_ctx, n_ctx=config.n_ctx, n_embd=config.d_model,
        n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_mlp,
        activation_function=config.act_fn, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=bos_id, eos_token_id=bos_id, tie_word_embeddings=True,
    )


def train_model(config: ZooConfig, seed: int, rows: torch.Tensor, tokenizer, out_dir: Path,
                progress: bool = True, corpus_hash: str | None = None) -> Path:
    """Train one seed on ``rows: LongTensor[n_rows, n_ctx]`` and save the checkpoint to ``out_dir``."""
    t0 = time.perf_counter()
    if rows.shape[1] != config.n_ctx:
        raise AtlasError(f"training rows have length {rows.shape[1]}, the config says n_ctx {config.n_ctx}")
    tokens_per_step = config.batch_size * config.n_ctx
    n_steps = max(1, config.train_tokens // tokens_per_step)
    order_seed = seed if config.data_order == "seed" else config.data_seed
    gen = torch.Generator().manual_seed(order_seed)
    n_rows = rows.shape[0]
    if n_rows == 0:
        raise AtlasError("the training corpus gives no full row of tokens — give more text or a shorter context")
    epochs = math.ceil(n_steps * config.batch_size / n_rows)
    order = torch.cat([torch.randperm(n_rows, generator=gen) for _ in range(epochs)])

    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, seed, rows, tokenizer, out_dir, progress, corpus_hash, order, n_steps, t0)
    finally:
        torch.set_num_threads(threads_before)


def _train(config: ZooConfig, seed: int, rows: torch.Tensor, tokenizer, out_dir: Path, progress: bool,
           corpus_hash: str | None, order: torch.Tensor, n_steps: int, t0: float) -> Path:
    from tqdm.auto import tqdm
    from transformers import GPT2LMHeadModel

    tokens_per_step = config.batch_size * config.n_ctx
    order_seed = seed if config.data_order == "seed" else config.data_seed
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(_gpt2_config(config, len(tokenizer), tokenizer.bos_token_id))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    warmup = max(1, int(config.warmup_frac * n_steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, n_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    bar = tqdm(total=n_steps * tokens_per_step, unit="tok", unit_scale=True, disable=not progress,
               desc=f"train {config.model_name(seed)}", leave=False, dynamic_ncols=True)
    loss_ema = None
    for step in range(n_steps):
        batch = rows[order[step * config.batch_size:(step + 1) * config.batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.update(tokens_per_step)
        if step % 10 == 0 or step == n_steps - 1:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    bar.close()

    model.eval()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    meta = {"config": asdict(config), "config_fingerprint": config.fingerprint(), "seed": seed,
            "seed_label": config.label(seed), "train_steps": n_steps, "train_tokens": n_steps * tokens_per_step,
            "final_loss_ema": loss_ema, "data_order_seed": order_seed, "corpus_hash": corpus_hash,
            "train_seconds": round(time.perf_counter() - t0, 2)}
    (partial / "zoo.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def _cached(out_dir: Path, config: ZooConfig, seed: int, corpus_hash: str) -> bool:
    meta_file = out_dir / "zoo.json"
    if not meta_file.is_file():
        return False
    meta = json.loads(meta_file.read_text())
    return (meta.get("config_fingerprint") == config.fingerprint() and meta.get("seed") == seed
            and meta.get("corpus_hash") == corpus_hash)


def corpus_hash(documents: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for d in documents:
        digest.update(hashlib.sha256(d.encode()).digest())
    return digest.hexdigest()[:16]


def train_cohort(config: ZooConfig, documents: Sequence[str], root: Path | None = None, *,
                 force: bool = False, progress: bool = True, log=print) -> TrainedCohort:
    """Train (or reuse, when cached) the tokenizer and every seed of ``config`` on ``documents``.

    Checkpoints go to ``root/<config.name>/`` (default ``ATLAS_HOME/models``).
    """
    from transformers import PreTrainedTokenizerFast

    from atlas.settings import get_settings

    if len(set(config.seeds)) != len(config.seeds) or not config.seeds:
        raise AtlasError(f"seeds must be distinct and at least one, got {config.seeds}")
    if config.d_model % config.n_heads:
        raise AtlasError(f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
    root = (root or get_settings().models_dir) / config.name
    root.mkdir(parents=True, exist_ok=True)
    c_hash = corpus_hash(documents)

    tok_dir = root / f"{config.name}-tokenizer"  # its directory name is the tokenizer's name in the atlas
    tok_meta = {"vocab_size": config.vocab_size, "corpus_hash": c_hash}
    if force or not (tok_dir / "atlas-tokenizer.json").is_file() or \
            json.loads((tok_dir / "atlas-tokenizer.json").read_text()) != tok_meta:
        tokenizer = train_tokenizer(documents, config.vocab_size)
        partial = tok_dir.with_name("tokenizer.partial")
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(partial)
        (partial / "atlas-tokenizer.json").write_text(json.dumps(tok_meta))
        shutil.rmtree(tok_dir, ignore_errors=True)
        partial.rename(tok_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)

    rows = None
    paths, seconds = [], {}
    for seed in config.seeds:
        out_dir = root / config.model_name(seed)
        if not force and _cached(out_dir, config, seed, c_hash):
            seconds[config.model_name(seed)] = 0.0
            paths.append(out_dir)
            continue
        if rows is None:
            rows = stream_to_rows(encode_documents(tokenizer, documents), config.n_ctx, tokenizer.bos_token_id)
        train_model(config, seed, rows, tokenizer, out_dir, progress=progress, corpus_hash=c_hash)
        meta = json.loads((out_dir / "zoo.json").read_text())
        seconds[config.model_name(seed)] = meta["train_seconds"]
        if log:
            log(f"trained {config.model_name(seed)} ({meta['train_tokens']:,} tokens, loss {meta['final_loss_ema']:.3f},"
                f" {meta['train_seconds']:.0f} s) → {out_dir}")
        paths.append(out_dir)
    return TrainedCohort(name=config.name, paths=paths, names=[config.model_name(s) for s in config.seeds],
                         labels=[config.label(s) for s in config.seeds], seeds=list(config.seeds),
                         tokenizer_dir=tok_dir, config=config, seconds=seconds)
