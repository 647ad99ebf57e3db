"""MLP activations of a loaded model, and the token batches they are computed on.

- ``mlp_activations(model, tokens)``: ``blocks.{L}.mlp.hook_pre`` / ``hook_post`` of every layer,
  stacked as ``[batch, ctx, n_layers, d_mlp]`` float32. The forward pass stops right after the last
  MLP needed (the final LayerNorm and unembedding, which dominate small models, are skipped).
  On CUDA the forward runs under fp16 autocast; results come back as fp32.
- ``row_batches(rows, batch_size)``: in-memory token rows in batches, as
  ``(first_row_idx, LongTensor[batch, ctx])`` (stored rows: ``atlas.ingest.store.iter_dataset_batches``).
- ``kept_token_mask(tokens, filter_rule)``: which positions count (BOS/pad/EOS and the single-newline
  token are dropped), by the rule stored with the dataset.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch

from atlas.errors import AtlasError
from atlas.ingest.models import LoadedModel

HOOKS = ("pre", "post")


class _StopForward(Exception):
    """Raised from the last needed hook to skip the rest of the forward pass."""


@torch.no_grad()
def mlp_activations(model: LoadedModel, tokens: torch.Tensor, hooks: Sequence[str] = ("post",),
                    layers: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Run ``tokens: LongTensor[batch, ctx]`` through ``model`` and return MLP activations.

    Returns ``{hook: Tensor[batch, ctx, len(layers), d_mlp] float32}`` for each of ``hooks``
    (``"pre"`` = before the nonlinearity, ``"post"`` = after it), on the model's device.
    Raises ``AtlasError`` naming the layer when an activation is NaN or infinite.
    """
    hooks = tuple(hooks)
    bad = [h for h in hooks if h not in HOOKS]
    if bad or not hooks:
        raise AtlasError(f"unknown MLP hook(s) {bad or hooks} — use 'pre' and/or 'post'")
    layers = list(range(model.n_layers)) if layers is None else [int(l) for l in layers]
    if tokens.ndim != 2:
        raise AtlasError(f"tokens must be [batch, ctx], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] > model.n_ctx:
        raise AtlasError(f"context length {tokens.shape[1]} exceeds {model.name}'s n_ctx {model.n_ctx} — "
                         "build the dataset with a shorter --context-length")
    tokens = tokens.to(model.device)

    captured: dict[str, torch.Tensor] = {}
    names = [f"blocks.{l}.mlp.hook_{h}" for l in layers for h in hooks]
    last = max(names, key=lambda n: (int(n.split(".")[1]), HOOKS.index(n.rsplit("_", 1)[1])))
    # hook_pre/hook_post are aliases: without compatibility mode the hook point reports its
    # canonical name (blocks.L.mlp.in.hook_out), so map canonical names back to ours
    hook_dict = model.bridge.hook_dict
    canonical = {hook_dict[n].name: n for n in names}

    def capture(act: torch.Tensor, hook) -> None:
        name = canonical.get(hook.name, hook.name)
        captured[name] = act.detach()
        if name == last:
            raise _StopForward

    fwd_hooks = [(hook_dict[n].name, capture) for n in names]
    use_autocast = str(model.device).startswith("cuda") and model.dtype == torch.float32
    try:
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_autocast):
            model.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    except _StopForward:
        pass

    out: dict[str, torch.Tensor] = {}
    for h in hooks:
        per_layer = []
        for l in layers:
            act = captured[f"blocks.{l}.mlp.hook_{h}"]
            if not torch.isfinite(act.sum()):  # one reduction: any NaN/inf makes the sum non-finite
                raise AtlasError(f"non-finite (NaN/inf) activations in blocks.{l}.mlp.hook_{h} of {model.name} — "
                                 "the checkpoint is broken or overflows in this precision (try --device cpu)")
            per_layer.append(act.float())
        out[h] = torch.stack(per_layer, dim=2)
    return out


def flatten_neurons(acts: torch.Tensor) -> torch.Tensor:
    """``[batch, ctx, n_layers, d_mlp]`` → ``[batch * ctx, n_layers * d_mlp]`` (flat index = layer * d_mlp + idx)."""
    b, c, n_layers, d_mlp = acts.shape
    return acts.reshape(b * c, n_layers * d_mlp)


# ---------------------------------------------------------------- token batches

def row_batches(rows: torch.Tensor, batch_size: int, start_row: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row_idx, LongTensor[batch, ctx])`` over in-memory ``rows: LongTensor[n_rows, ctx]``
    (the stored rows of a dataset come from ``atlas.ingest.store.iter_dataset_batches``, same shape)."""
    if batch_size < 1:
        raise AtlasError(f"batch size must be positive, got {batch_size}")
    for start in range(start_row, rows.shape[0], batch_size):
        yield start, rows[start:start + batch_size].long()


def kept_token_mask(tokens: torch.Tensor, filter_rule: Mapping[str, Any] | None) -> torch.Tensor:
    """``BoolTensor`` shaped like ``tokens``: True where the position counts.

    ``filter_rule["exclude_token_ids"]`` lists the dropped ids (BOS, EOS, pad, the single newline);
    a rule without it (or ``None``) keeps everything.
    """
    excluded = list((filter_rule or {}).get("exclude_token_ids") or [])
    if not excluded:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(excluded, dtype=tokens.dtype, device=tokens.device))
