"""A tiny GPT-2 whose weights are SET so that chosen neurons have known roles (ground truth).

Residual stream layout (d_model = 128): token one-hots 0..47, position one-hots 48..63, the
previous token's one-hot 64..111 (written by a previous-token attention head in layer 0), a null
direction 112 (no token reads it), a "BOS query" direction 113 (a layer-1 head turns it into a
query for the BOS key) and a partition direction 114 (half the vocabulary +, half −).

Planted neurons (layer, idx) and what they are:
  (0, 0) unigram: fires on ' of'          (0, 1) alphabet: fires on tokens starting with 'b'
  (0, 2) position: fires from position 8 on    (0, 3) semantic: fires on colour words
  (0, 4) attention deactivation: writes the BOS-query direction
  (1, 0) previous-token: fires when the previous token is ' and'
  (1, 1) prediction: writes +W_U of ' cat', ' dog'   (1, 2) suppression: writes −W_U of ' the', ','
  (1, 3) entropy: writes a large vector along the null direction
  (1, 4) partition: writes the partition direction
every other neuron is a distractor (random dense input and output weights).

Biases and scales are calibrated on the data so that a planted neuron's pre-activation is ≥ +3
where it should fire and ≤ −3 elsewhere. Every planted neuron sits far from the labelling
thresholds (tests/test_families.py checks by how much): e.g. the position neuron's pre-activation
takes two values (±2, a step at position 8), so its kurtosis is ≈ 1 against the rule's < 2 (a
linear ramp would give a uniform distribution, kurtosis 1.8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

VOCAB = [
    "<|endoftext|>", " the", " The", "the", " and", " of", ",", ".", "!", "?", " 1999", " 42", "7",
    " ball", " bat", " big", " bread", " bring",
    " red", " green", " yellow", " purple", " orange",
    " cat", " dog", " horse", " January", " March", " Monday", " mother", " father", " NASA", " USA",
    "ing", "ed", "ly", " un", " re", " (", ")", ":", ";", "\n", " x", " on", " one", " or", " over",
]
V = len(VOCAB)  # 48
N_CTX = 16
D_MODEL, N_HEAD, D_MLP, N_LAYER = 128, 2, 16, 2
D_HEAD = D_MODEL // N_HEAD
TOK, POS, PREV = 0, 48, 64
NULL, BOSQ, PART = 112, 113, 114
SPARE = list(range(115, 128))

OF, AND = VOCAB.index(" of"), VOCAB.index(" and")
B_WORDS = [VOCAB.index(t) for t in (" ball", " bat", " big", " bread", " bring")]
COLOURS = [VOCAB.index(t) for t in (" red", " green", " yellow", " purple", " orange")]
PREDICTED = [VOCAB.index(" cat"), VOCAB.index(" dog")]
SUPPRESSED = [VOCAB.index(" the"), VOCAB.index(",")]

# the paper's unigram family is the best current-token feature of ANY kind with VR > 0.5: the
# b-words neuron (starts_with=b) and the colour neuron (topic=colours) are unigram neurons too
TRUTH = {
    "unigram": {(0, 0), (0, 1), (0, 3)}, "alphabet": {(0, 1)}, "position": {(0, 2)}, "semantic": {(0, 3)},
    "attention_deactivation": {(0, 4)}, "previous_token": {(1, 0)}, "prediction": {(1, 1)},
    "suppression": {(1, 2)}, "entropy": {(1, 3)}, "partition": {(1, 4)},
}


@dataclass
class Planted:
    model_dir: Path
    tokens: torch.Tensor  # [rows, N_CTX], BOS at position 0
    keep: torch.Tensor  # [rows, N_CTX] bool: every position but BOS
    vocab: list[str] = field(default_factory=lambda: list(VOCAB))
    truth: dict = field(default_factory=lambda: {k: set(v) for k, v in TRUTH.items()})


def make_tokens(rows: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, V, (rows, N_CTX), generator=g)
    tokens[:, 0] = 0
    return tokens


def _ln2_inputs(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The normalised MLP inputs of every block: [rows, pos, d_model] each."""
    seen: list[torch.Tensor] = []
    handles = [blk.ln_2.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for blk in model.transformer.h]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return seen


def _calibrate(fc_w: torch.Tensor, fc_b: torch.Tensor, col: int, pre: torch.Tensor, *, fire: torch.Tensor | None = None,
               lo: float = -3.0, hi: float = 3.0, std: float | None = None) -> None:
    """Rescale column ``col`` of c_fc (weights and bias) so the pre-activation ``pre`` [n] maps
    the firing set to ≥ hi and the rest to ≤ lo (or, without ``fire``: range → [lo, hi], or
    standardise to ``std`` around 0.3)."""
    if fire is not None:
        a_min, b_max = float(pre[fire].min()), float(pre[~fire].max())
        assert a_min > b_max + 1e-6, f"planted neuron {col} cannot separate its firing set"
        alpha = (hi - lo) / (a_min - b_max)
        beta = hi - alpha * a_min
    elif std is not None:
        alpha = std / float(pre.std())
        beta = 0.3 - alpha * float(pre.mean())
    else:
        alpha = (hi - lo) / float(pre.max() - pre.min())
        beta = lo - alpha * float(pre.min())
    fc_w[:, col] *= alpha
    fc_b[col] = beta


def build_planted(directory: Path, *, rows: int = 64, seed: int = 0) -> Planted:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=N_CTX, n_ctx=N_CTX, n_embd=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
                     n_inner=D_MLP, activation_function="gelu_new", tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    tokens = make_tokens(rows, seed)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    prev = torch.cat([torch.full((rows, 1), -1), tokens[:, :-1]], 1)
    position = torch.arange(N_CTX).expand(rows, N_CTX)

    def dense(n_rows: int, scale: float, dims: list[int]) -> torch.Tensor:
        w = torch.zeros(n_rows, D_MODEL)
        w[:, dims] = torch.from_numpy(rng.normal(0, scale, (n_rows, len(dims)))).float()
        return w

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        for ln in [tr.ln_f] + [b.ln_1 for b in tr.h] + [b.ln_2 for b in tr.h]:
            ln.weight.fill_(1.0)
        tr.wte.weight[torch.arange(V), TOK + torch.arange(V)] = 1.0
        tr.wpe.weight[torch.arange(N_CTX), POS + torch.arange(N_CTX)] = 1.0
        # unembedding: each token its own direction, plus ± the partition direction
        sign = torch.tensor([1.0 if v % 2 == 0 else -1.0 for v in range(V)])
        model.lm_head.weight[torch.arange(V), TOK + torch.arange(V)] = 1.0
        model.lm_head.weight[:, PART] = 2.0 * sign

        # layer 0, head 0: attend from position p to p − 1 and copy that token into PREV
        attn0 = tr.h[0].attn
        for p in range(1, N_CTX):
            attn0.c_attn.weight[POS + p, 0 * D_MODEL + (p - 1)] = 2.0  # query
        for p in range(N_CTX):
            attn0.c_attn.weight[POS + p, 1 * D_MODEL + p] = 2.0  # key
        for v in range(V):
            attn0.c_attn.weight[TOK + v, 2 * D_MODEL + v] = 1.0  # value (head 0 dims 0..47)
            attn0.c_proj.weight[v, PREV + v] = 0.127
        # layer 1, head 0: query from the BOSQ direction, key from the BOS token; writes nothing
        attn1 = tr.h[1].attn
        attn1.c_attn.weight[BOSQ, 0 * D_MODEL + 0] = 2.0
        attn1.c_attn.weight[TOK + 0, 1 * D_MODEL + 0] = 2.0

        noise_dims = list(range(TOK, TOK + V)) + SPARE
        for layer in range(N_LAYER):
            mlp = tr.h[layer].mlp
            w_in = dense(D_MLP, 1.0, list(range(TOK, TOK + V)) + list(range(PREV, PREV + V)))
            w_in[:, POS:POS + N_CTX] = torch.from_numpy(rng.normal(0, 0.1, (D_MLP, N_CTX))).float()
            w_out = dense(D_MLP, 1.0 / np.sqrt(len(noise_dims)), noise_dims)
            if layer == 0:
                w_in[0:4] = 0
                w_in[0, TOK + OF] = 1.0
                w_in[1, [TOK + v for v in B_WORDS]] = 1.0
                w_in[2, POS:POS + N_CTX] = torch.sign(torch.arange(N_CTX) - 7.5)  # a step: kurtosis ≈ 1
                w_in[3, [TOK + v for v in COLOURS]] = torch.tensor([1.0, 0.9, 0.8, 0.9, 1.0])
                w_out[0:4] *= 0.05
                w_out[4] = 0
                w_out[4, BOSQ] = 1.0
                w_out[5:] *= 0.05
            else:
                w_in[0] = 0
                w_in[0, PREV + AND] = 1.0
                w_out[1:5] = 0
                w_out[1, [TOK + v for v in PREDICTED]] = 1.0
                w_out[2, [TOK + v for v in SUPPRESSED]] = -1.0
                w_out[3, NULL] = 10.0
                w_out[4, PART] = 1.0
            mlp.c_fc.weight.copy_(w_in.T)
            mlp.c_proj.weight.copy_(w_out)

        # calibrate biases/scales layer by layer on the data (layer 1 reads layer 0's outputs)
        for layer in range(N_LAYER):
            mlp = tr.h[layer].mlp
            x = _ln2_inputs(model, tokens)[layer][keep]  # [n_kept, d_model]
            pre = x @ mlp.c_fc.weight  # bias still 0
            tok_k, prev_k, pos_k = tokens[keep], prev[keep], position[keep]
            W, b = mlp.c_fc.weight, mlp.c_fc.bias
            planted: dict[int, dict] = {}
            if layer == 0:
                planted = {0: {"fire": tok_k == OF}, 1: {"fire": torch.isin(tok_k, torch.tensor(B_WORDS))},
                           2: {"lo": -2.0, "hi": 2.0}, 3: {"fire": torch.isin(tok_k, torch.tensor(COLOURS))}}
            else:
                planted = {0: {"fire": prev_k == AND}}
            for col in range(D_MLP):
                if col in planted:
                    _calibrate(W, b, col, pre[:, col], **planted[col])
                else:
                    _calibrate(W, b, col, pre[:, col], std=1.5)
    directory = Path(directory)
    model.save_pretrained(directory)
    return Planted(model_dir=directory, tokens=tokens, keep=keep)


def load_bridge(planted: Planted):
    """The planted model through TransformerLens, with processed (compatibility-mode) weights."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(planted.model_dir), device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def layer_acts(bridge, tokens: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """``hook_pre`` and ``hook_post`` of every layer: lists of [rows, pos, d_mlp]."""
    names = [f"blocks.{l}.mlp.hook_{k}" for l in range(bridge.cfg.n_layers) for k in ("pre", "post")]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=names)
    return {k: [cache[f"blocks.{l}.mlp.hook_{k}"].detach() for l in range(bridge.cfg.n_layers)] for k in ("pre", "post")}
