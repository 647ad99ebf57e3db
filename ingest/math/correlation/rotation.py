"""The random-rotation baseline's rotations (method.md §2): one seeded d_mlp × d_mlp matrix per
layer, Haar-random orthogonal by default or the paper's Gaussian unit rows.

Each partner model has its own rotations (the reference side's baseline rotates the partner);
the reference model has its own too (``reference=True``: the partner side's baseline rotates the
reference's layers), drawn from a separate stream of the same run seed.

Pure math: tensors in, tensors out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

ROTATION_KINDS = ("orthogonal", "gaussian_unit_rows")

Shape = tuple[int, int]  # (n_layers, d_mlp)


def rotation_generator_seed(seed: int, partner: int, layer: int, *, reference: bool = False) -> int:
    """The 63-bit generator seed of one layer's rotation, derived from the run's seed: of partner
    ``partner``'s layer, or (``reference=True``) of the reference model's layer."""
    spawn_key = (1,) if reference else ()
    state = np.random.SeedSequence([int(seed), int(partner), int(layer)], spawn_key=spawn_key).generate_state(
        2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


def build_rotation(seed: int, kind: str, partner: int, shape: Shape, device: str | torch.device = "cpu", *,
                   reference: bool = False, layers: Sequence[int] | None = None) -> torch.Tensor:
    """The baseline rotations of one partner (or, ``reference=True``, of the reference model):
    ``R: [n_layers, d_mlp, d_mlp] float64`` (only ``layers``, in that order, when given).

    The rotated activation of layer ``l`` is ``R[l] @ v_l``. ``kind``:
    ``"orthogonal"``: Haar-random orthogonal (QR of a Gaussian matrix, signs fixed by diag(R) > 0);
    ``"gaussian_unit_rows"``: iid Gaussian rows scaled to unit norm (what the paper's code used).
    Deterministic in ``(seed, kind, partner or reference, layer, d_mlp)``: the Gaussian entries come
    from a CPU generator; the QR runs on ``device`` (equal across devices to float64 rounding).
    """
    if kind not in ROTATION_KINDS:
        raise ValueError(f"rotation kind {kind!r} is not one of {ROTATION_KINDS}")
    n_layers, d_mlp = shape
    which = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    gauss = torch.empty(len(which), d_mlp, d_mlp, dtype=torch.float64)
    for i, layer in enumerate(which):
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} outside the model's {n_layers} layers")
        gen = torch.Generator(device="cpu").manual_seed(rotation_generator_seed(seed, partner, layer, reference=reference))
        gauss[i] = torch.randn(d_mlp, d_mlp, generator=gen, dtype=torch.float64)
    gauss = gauss.to(device)
    if kind == "gaussian_unit_rows":
        return gauss / torch.linalg.vector_norm(gauss, dim=2, keepdim=True)
    q, r = torch.linalg.qr(gauss)  # batched over layers
    signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
    signs[signs == 0] = 1.0
    return q * signs.unsqueeze(1)  # column j times sign(r_jj): the unique Haar-distributed Q

