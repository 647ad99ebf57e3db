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

Checkpoints during training. ``ZooConfig.checkpoints`` lists training fractions at which each
seed is also saved, under ``<model dir>/steps/step-<n>/`` (``checkpoint_dirs``): the atlas measures
universality over training on them (``atlas.ingest.runs.training``).

Caching and determinism. A checkpoint directory carries ``zoo.json`` (the config, seed, a hash of
the training tokens, the saved checkpoints, and ``probe``: a digest of the parameters after the
first ``PROBE_STEPS`` optimizer steps, which ``reproduce_probe`` recomputes). Training again with
the same config and corpus is a no-op; the same seed gives the same weights on the same machine,
torch and thread count. Directories are written to a temporary name and renamed, so a killed
training leaves no half checkpoint behind.

(Over 400 lines in one module: the recipe, the training loop and the cohort driver share the
invariants that make a recipe reproducible; split, each would need the others' internals.)
"""

from __future__ import annotations

import contextlib
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
    min_lr_frac: float = 0.1  # the cosine schedule decays to this fraction of lr
    checkpoints: tuple[float, ...] = ()  # training fractions (0 < f < 1) saved besides the final model
    # Stop after this many optimizer steps (None: at the end). Warm-up, schedule and row order stay
    # those of ``train_tokens``: the model is the one a full run has at that step.
    stop_step: int | None = None

    def fingerprint(self) -> str:
        """The recipe of one model, all but the seed list: adding seeds keeps the trained ones cached."""
        recipe = {k: v for k, v in asdict(self).items() if k != "seeds"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

    def label(self, seed: int) -> str:
        """Seed labels a, b, c, … in the order of ``seeds`` (the paper calls its seeds a–e)."""
        return SEED_LABELS[self.seeds.index(seed)] if self.seeds.index(seed) < 26 else f"s{seed}"

    def model_name(self, seed: int) -> str:
        return f"{self.name}-{self.label(seed)}"

    def n_steps(self) -> int:
        """Optimizer steps of one seed's training."""
        return max(1, self.train_tokens // (self.batch_size * self.n_ctx))

    def steps_trained(self) -> int:
        """Optimizer steps one seed actually takes: ``n_steps()``, or ``stop_step`` when earlier."""
        return self.n_steps() if self.stop_step is None else max(1, min(self.stop_step, self.n_steps()))

    def checkpoint_steps(self) -> list[int]:
        """The steps (1..steps_trained-1) at which intermediate checkpoints are saved, ascending
        (fractions are of the scheduled ``n_steps()``)."""
        n, last = self.n_steps(), self.steps_trained()
        return sorted({s for f in self.checkpoints if 0 < (s := int(round(f * n))) < last})


# The demo recipe: the one that trained the shipped demo cohort (atlas.ingest.shipped). Measured on
# the recipe frontier (bench/results/demo_recipes.md, "lr4e-3"): weight decay 0.1 and twice the zoo's
# learning rate (4e-3: 1.5 % universal at 3M tokens against 0.5 % at 2e-3), constant after warm-up,
# scheduled for 6M tokens per seed and stopped at the 3M-token step (constant lr: every step is a
# clean "trained this long" model); three seeds; one thread (the CPU kernels, hence the bits,
# depend on the thread count).
DEMO = ZooConfig(seeds=(1, 2, 3), train_tokens=6_000_000, lr=4e-3, weight_decay=0.1, min_lr_frac=1.0, threads=1,
                 checkpoints=(0.0833, 0.1667, 0.3333, 0.5, 0.75), stop_step=2930)
DEMO_TEXTS = "shakespeare"  # the demo cohort's training texts (atlas.ingest.corpus.training_files)


def checkpoint_name(model: str, step: int) -> str:
    """The atlas name of ``model``'s checkpoint at ``step`` (also the cohort name scheme)."""
    return f"{model}@step{step}"


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
    """Train one seed on ``rows: LongTensor[n_rows, n_ctx]`` and save the checkpoint to ``out_dir``
    (intermediate checkpoints, when the recipe asks for them, under ``out_dir/steps/``)."""
    from tqdm.auto import tqdm

    with _threads(config.threads):
        training = SeedTraining(config, seed, rows, tokenizer, out_dir, corpus_hash)
        with tqdm(total=training.n_steps * training.tokens_per_step, unit="tok", unit_scale=True,
                  disable=not progress, desc=f"train {config.model_name(seed)}", leave=False,
                  dynamic_ncols=True) as bar:
            while not training.done:
                training.step()
                bar.update(training.tokens_per_step)
                if training.steps_done % 10 == 0 or training.done:
                    bar.set_postfix(loss=f"{training.loss_ema:.3f}")
        return training.finish()


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _row_order(config: ZooConfig, seed: int, rows: torch.Tensor) -> torch.Tensor:
    """The training rows' order: seeded permutations, one per epoch, concatenated."""
    if rows.shape[1] != config.n_ctx:
        raise AtlasError(f"training rows have length {rows.shape[1]}, the config says n_ctx {config.n_ctx}")
    n_rows = rows.shape[0]
    if n_rows == 0:
        raise AtlasError("the training corpus gives no full row of tokens — give more text or a shorter context")
    gen = torch.Generator().manual_seed(seed if config.data_order == "seed" else config.data_seed)
    epochs = math.ceil(config.n_steps() * config.batch_size / n_rows)
    return torch.cat([torch.randperm(n_rows, generator=gen) for _ in range(epochs)])


def _new_training(config: ZooConfig, seed: int, tokenizer):
    """A freshly initialised model (from ``seed``), its AdamW optimizer and learning-rate schedule."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(_gpt2_config(config, len(tokenizer), tokenizer.bos_token_id))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    n_steps = config.n_steps()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(config, n_steps, step))
    return model, opt, sched


def _train_step(model, opt, sched, batch: torch.Tensor) -> float:
    loss = model(input_ids=batch, labels=batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


class SeedTraining:
    """One seed's training, one optimizer step at a time (``train_model`` runs it to the end; a
    benchmark can interleave several seeds). Training uses no randomness after initialisation, so
    the weights do not depend on what else runs in the process.

    ``step()`` saves the intermediate checkpoints the recipe asks for (into ``<out_dir>.partial/steps/``,
    returning its path when it saved one) and records the probe digest after ``PROBE_STEPS`` steps;
    ``finish()`` saves the final model with its ``zoo.json`` and moves the directory to ``out_dir``."""

    def __init__(self, config: ZooConfig, seed: int, rows: torch.Tensor, tokenizer, out_dir: Path,
                 corpus_hash: str | None = None) -> None:
        self.t0 = time.perf_counter()
        self.config, self.seed, self.rows, self.tokenizer, self.out_dir = config, seed, rows, tokenizer, out_dir
        self.corpus_hash = corpus_hash
        self.order = _row_order(config, seed, rows)
        self.n_steps, self.tokens_per_step = config.steps_trained(), config.batch_size * config.n_ctx
        self.model, self.opt, self.sched = _new_training(config, seed, tokenizer)
        self.partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.save_at = set(config.checkpoint_steps())
        self.steps_done = 0
        self.loss_ema: float | None = None
        self.probe: dict | None = None
        self.saved: list[dict] = []

    @property
    def done(self) -> bool:
        return self.steps_done >= self.n_steps

    def step(self) -> Path | None:
        b = self.config.batch_size
        batch = self.rows[self.order[self.steps_done * b:(self.steps_done + 1) * b]]
        loss = _train_step(self.model, self.opt, self.sched, batch)
        self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
        self.steps_done += 1
        if self.steps_done == min(PROBE_STEPS, self.n_steps):
            self.probe = {"steps": self.steps_done, **parameter_digest(self.model)}
        if self.steps_done in self.save_at:
            meta = {"step": self.steps_done, "train_tokens": self.steps_done * self.tokens_per_step,
                    "loss_ema": self.loss_ema}
            path = self.partial / STEPS_DIR / step_dir_name(self.steps_done)
            _save_checkpoint(self.model, self.tokenizer, path, meta)
            self.model.train()
            self.saved.append(meta)
            return path
        return None

    def finish(self) -> Path:
        config = self.config
        meta = {"config": asdict(config), "config_fingerprint": config.fingerprint(), "seed": self.seed,
                "seed_label": config.label(self.seed), "train_steps": self.n_steps,
                "train_tokens": self.n_steps * self.tokens_per_step, "final_loss_ema": self.loss_ema,
                "data_order_seed": self.seed if config.data_order == "seed" else config.data_seed,
                "corpus_hash": self.corpus_hash, "probe": self.probe, "checkpoints": self.saved,
                "train_seconds": round(time.perf_counter() - self.t0, 2)}
        _save_checkpoint(self.model, self.tokenizer, self.partial, meta)
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.partial.rename(self.out_dir)
        return self.out_dir


def reproduce_probe(config: ZooConfig, seed: int, documents: Sequence[str], tokenizer_dir: Path,
                    steps: int | None = None) -> dict:
    """Train ``seed`` of ``config`` for its first ``steps`` (default ``PROBE_STEPS``) optimizer steps,
    exactly as ``train_model`` starts, and return the parameter digest (``{"steps", "sha256",
    "square_sum"}``): equal to the ``probe`` in the trained model's zoo.json when the recipe, the
    corpus and the tokenizer are the same (and the CPU kernels: same torch, same thread count)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    rows = stream_to_rows(encode_documents(tokenizer, documents), config.n_ctx, tokenizer.bos_token_id)
    k = min(steps or PROBE_STEPS, config.n_steps())
    with _threads(config.threads):
        order = _row_order(config, seed, rows)
        model, opt, sched = _new_training(config, seed, tokenizer)
        for step in range(k):
            _train_step(model, opt, sched, rows[order[step * config.batch_size:(step + 1) * config.batch_size]])
        return {"steps": k, **parameter_digest(model)}


@dataclass(frozen=True)
class Checkpoint:
    """An intermediate checkpoint of a zoo model: after ``step`` optimizer steps, ``train_tokens`` seen."""

    step: int
    train_tokens: int
    path: Path


def checkpoint_dirs(model_dir: Path) -> list[Checkpoint]:
    """The intermediate checkpoints saved with the zoo model in ``model_dir``, by step."""
    meta = json.loads((Path(model_dir) / "zoo.json").read_text())
    return [Checkpoint(step=int(c["step"]), train_tokens=int(c["train_tokens"]),
                       path=Path(model_dir) / STEPS_DIR / step_dir_name(int(c["step"])))
            for c in sorted(meta.get("checkpoints") or [], key=lambda c: c["step"])]


PROBE_STEPS = 4  # the parameter digest after this many optimizer steps is recorded in zoo.json
STEPS_DIR = "steps"  # intermediate checkpoints: <model dir>/steps/step-<n>/


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def lr_factor(config: ZooConfig, n_steps: int, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_frac · lr`` at the last step."""
    warmup = max(1, int(config.warmup_frac * n_steps))
    if step < warmup:
        return (step + 1) / warmup
    floor = config.min_lr_frac
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, n_steps - warmup)))


def parameter_digest(model: torch.nn.Module) -> dict:
    """``sha256`` of every parameter's float32 bytes (in name order) and their float64 sum of squares.

    Equal digests mean bit-identical parameters; the sum of squares tells how far apart two runs are
    when the bits differ (another CPU kernel, another torch)."""
    digest = hashlib.sha256()
    square_sum = 0.0
    for name, param in sorted(model.named_parameters()):
        data = param.detach().to(torch.float32).contiguous().cpu()
        digest.update(name.encode())
        digest.update(data.numpy().tobytes())
        square_sum += float(data.to(torch.float64).square().sum())
    return {"sha256": digest.hexdigest(), "square_sum": square_sum}


def _save_checkpoint(model, tokenizer, directory: Path, meta: dict) -> None:
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "zoo.json").write_text(json.dumps(meta, indent=2))


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


def cohort_tokenizer(config: ZooConfig, documents: Sequence[str], root: Path, c_hash: str, *, force: bool = False):
    """The cohort's tokenizer, trained once on ``documents`` and kept in ``root/<name>-tokenizer``
    (its directory name is the tokenizer's name in the atlas). Returns ``(tokenizer, directory)``."""
    from transformers import PreTrainedTokenizerFast

    tok_dir = root / f"{config.name}-tokenizer"
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
    return PreTrainedTokenizerFast.from_pretrained(tok_dir), tok_dir


def train_cohort(config: ZooConfig, documents: Sequence[str], root: Path | None = None, *,
                 force: bool = False, progress: bool = True, log=print) -> TrainedCohort:
    """Train (or reuse, when cached) the tokenizer and every seed of ``config`` on ``documents``.

    Checkpoints go to ``root/<config.name>/`` (default ``ATLAS_HOME/models``).
    """
    from atlas.settings import get_settings

    if len(set(config.seeds)) != len(config.seeds) or not config.seeds:
        raise AtlasError(f"seeds must be distinct and at least one, got {config.seeds}")
    if config.d_model % config.n_heads:
        raise AtlasError(f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}")
    root = (root or get_settings().models_dir) / config.name
    root.mkdir(parents=True, exist_ok=True)
    c_hash = corpus_hash(documents)

    tokenizer, tok_dir = cohort_tokenizer(config, documents, root, c_hash, force=force)

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
