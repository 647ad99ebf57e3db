"""Independent references for the ingestion tests: MLP activations from plain ``transformers``.

The atlas reads activations through TransformerLens (``atlas.ingest.activations.mlp_activations``
on processed weights, float32); tests that check what it stores must not build their expected
values with that same code. ``hf_mlp_activations`` runs the checkpoint as Hugging Face saved it
(unprocessed weights, float64) and records the input and output of each block's MLP activation
function: ``hook_pre`` and ``hook_post`` as method.md §1 defines them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def hf_mlp_activations(checkpoint: Path | str, rows: torch.Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """``{"pre", "post"}: [n_rows, ctx, n_layers, d_mlp] float64`` for token ``rows: [n_rows, ctx]``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float64).eval()
    acts = [module for name, module in model.named_modules() if name.endswith(".mlp.act")]
    assert acts, f"no .mlp.act modules in {checkpoint}: not a GPT-2/NeoX-style checkpoint"
    seen: dict[str, list[list[torch.Tensor]]] = {"pre": [[] for _ in acts], "post": [[] for _ in acts]}

    def recorder(layer: int):
        def hook(module, inputs, output):
            seen["pre"][layer].append(inputs[0].detach())
            seen["post"][layer].append(output.detach())
        return hook

    handles = [m.register_forward_hook(recorder(layer)) for layer, m in enumerate(acts)]
    try:
        with torch.no_grad():
            for start in range(0, rows.shape[0], batch_size):
                model(rows[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {k: torch.stack([torch.cat(per_layer) for per_layer in v], dim=2).numpy() for k, v in seen.items()}
