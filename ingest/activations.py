"""MLP activations of a loaded model, and the token batches they are computed on.

- ``mlp_activations(model, tokens)``: ``blocks.{L}.mlp.hook_pre`` / ``hook_post`` of every layer,
  stacked as ``[batch, ctx, n_layers, d_mlp]`` float32. The forward pass stops right after the last
  MLP needed (the final LayerNorm and unembedding, which dominate small models, are skipped).
  On CUDA the forward runs under fp16 autocast; results come back as fp32.
- ``iter_dataset_batches(engine_or_rows, dataset, batch_size)``: the stored token rows of a dataset
  in row order, as ``(first_row_idx, LongTensor[batch, ctx])``.
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

def iter_dataset_batches(engine_or_rows: Any, dataset: Any, batch_size: int,
                         start_row: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row_idx, LongTensor[batch, ctx])`` over a dataset's rows in ``row_idx`` order.

    ``engine_or_rows`` is a SQLAlchemy engine (rows are read from ``dataset_row`` of ``dataset``:
    a name, id, or ``atlas.ingest.store.DatasetInfo``) or the rows themselves (``LongTensor[n_rows, ctx]``
    or a list of equal-length token lists; ``dataset`` is then ignored). Starts at ``start_row``.
    """
    if batch_size < 1:
        raise AtlasError(f"batch size must be positive, got {batch_size}")
    if isinstance(engine_or_rows, torch.Tensor) or isinstance(engine_or_rows, (list, tuple)):
        rows = engine_or_rows if isinstance(engine_or_rows, torch.Tensor) else torch.tensor(engine_or_rows, dtype=torch.long)
        for start in range(start_row, rows.shape[0], batch_size):
            yield start, rows[start:start + batch_size].long()
        return

    import sqlalchemy as sa

    from atlas.ingest.store import resolve_dataset

    info = resolve_dataset(engine_or_rows, dataset)
    query = sa.text("SELECT row_idx, tokens FROM dataset_row WHERE dataset_id = :d AND row_idx >= :s "
                    "AND row_idx < :e ORDER BY row_idx")
    for start in range(start_row, info.n_rows, batch_size):
        with engine_or_rows.connect() as conn:
            got = conn.execute(query, {"d": info.id, "s": start, "e": start + batch_size}).all()
        if [r.row_idx for r in got] != list(range(start, min(start + batch_size, info.n_rows))):
            raise AtlasError(f"dataset {info.name} is missing rows from {start} — rebuild it with `atlas dataset build`")
        yield start, torch.tensor([r.tokens for r in got], dtype=torch.long)


def kept_token_mask(tokens: torch.Tensor, filter_rule: Mapping[str, Any] | None) -> torch.Tensor:
    """``BoolTensor`` shaped like ``tokens``: True where the position counts.

    ``filter_rule["exclude_token_ids"]`` lists the dropped ids (BOS, EOS, pad, the single newline);
    a rule without it (or ``None``) keeps everything.
    """
    excluded = list((filter_rule or {}).get("exclude_token_ids") or [])
    if not excluded:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(excluded, dtype=tokens.dtype, device=tokens.device))
