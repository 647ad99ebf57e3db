"""How the correlation accumulator multiplies: half-precision (or float32) inputs into float32
partial sums, with whatever GEMM this torch and device offer.

Modes: ``"plain"`` (inputs already float32, or half precision rounded on the CPU and multiplied
in float32), ``"addmm_dtype"`` (CUDA half inputs, ``addmm(..., out_dtype=float32)`` accumulating in
place), ``"mm_dtype"`` (``mm(..., out_dtype=float32)`` plus an add), ``"upcast"`` (float32 copies
of the half inputs under TF32, for a torch without float32-output half GEMMs).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def choose_gemm_mode(device: torch.device, store_dtype: torch.dtype, native_half: bool) -> str:
    """Probe the half-precision → float32 GEMMs this torch/device offers (CUDA only): ``addmm``
    with ``out_dtype`` (accumulates in place), else ``mm`` with ``out_dtype`` plus an add, else
    float32 copies of the inputs under TF32."""
    if not native_half:
        return "plain"
    gen = torch.Generator(device="cpu").manual_seed(0)
    for mode in ("addmm_dtype", "mm_dtype"):
        try:
            for half in {store_dtype, torch.bfloat16}:  # fp16 runs may fall back to bf16
                a = torch.randn(3, 64, 32, generator=gen).to(half)
                b = torch.randn(3, 32, 48, generator=gen).to(half)
                want = a.double() @ b.double() + 1
                out2, out3 = torch.ones(64, 48, device=device), torch.ones(3, 64, 48, device=device)
                gemm_into(mode, out2, a[0].to(device), b[0].to(device), accumulate=True)
                gemm_into(mode, out3, a.to(device), b.to(device), accumulate=True)
                if not (torch.allclose(out2.cpu().double(), want[0], atol=1e-3)
                        and torch.allclose(out3.cpu().double(), want, atol=1e-3)):
                    raise RuntimeError("wrong result")
            return mode
        except (RuntimeError, TypeError):
            continue
    return "upcast"


def gemm_into(mode: str, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """``out (+)= a @ b`` with ``out`` float32 (2-D or batched 3-D)."""
    beta = 1 if accumulate else 0
    batched = out.ndim == 3
    if mode == "plain":
        (torch.baddbmm if batched else torch.addmm)(out, a, b, beta=beta, out=out)
    elif mode == "addmm_dtype":
        (torch.baddbmm if batched else torch.addmm)(out, a, b, out_dtype=torch.float32, beta=beta, out=out)
    elif mode == "mm_dtype":
        prod = (torch.bmm if batched else torch.mm)(a, b, out_dtype=torch.float32)
        if accumulate:
            out.add_(prod)
        else:
            out.copy_(prod)
    else:  # "upcast": float32 copies of half-precision inputs (TF32 under matmul_precision)
        (torch.baddbmm if batched else torch.addmm)(out, a.float(), b.float(), beta=beta, out=out)


@contextlib.contextmanager
def matmul_precision(device: torch.device, mode: str | None, precision: str) -> Iterator[None]:
    """On CUDA, float32 GEMMs are strict IEEE for ``"fp32"`` and TF32 otherwise (``"tf32"``, or
    half-precision inputs upcast because this torch lacks float32-output half GEMMs)."""
    if device.type != "cuda" or mode in ("addmm_dtype", "mm_dtype"):
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        old = matmul.fp32_precision
        matmul.fp32_precision = "ieee" if precision == "fp32" else "tf32"
    except (AttributeError, RuntimeError):  # an older torch, or the legacy flag in use: leave it
        yield
        return
    try:
        yield
    finally:
        matmul.fp32_precision = old
