"""SwiGLU's activation product (arXiv:2002.05202): silu(gate) * up, elementwise.

    silu(g) = g * sigmoid(g)
    forward:  y = silu(g) * u
    backward: du = dy * silu(g)
              dg = dy * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))      (d silu / dg)

Three versions, one math:
  swiglu_reference  plain PyTorch (F.silu(gate) * up, what HF's MLP does); autograd differentiates.
  SwiGLUFunction    hand-written backward, "torch" backend (readable, gradcheck in float64) or
                    "triton" backend (one fused pass forward, one fused pass backward).
  swiglu_triton     SwiGLUFunction with the Triton backend; kernels/dispatch.py picks it on CUDA.

Note: what backward keeps. Autograd on the reference saves gate (for silu's backward), silu(gate)
and up (for the product's backward): 3 tensors of f values, 6f bytes per token in bf16.
SwiGLUFunction saves gate and up only, 2 * f * element_size bytes per token (4f in bf16),
and recomputes sigmoid(gate) in backward. The down projection that follows saves y (2f bytes per
token in bf16) on its own; that is the Linear's, not this op's.

Note: numerics. The kernel's forward rounds silu(gate) to the activation dtype before the multiply,
as PyTorch's two-op reference does, so y matches the reference (to the last bit except where fp32
exp differs by an ulp between libraries). Backward works in fp32 and rounds once; du uses the rounded
silu(gate) that up actually met in forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def saved_bytes_per_token(f: int, element_size: int) -> int:
    """Bytes SwiGLUFunction keeps for backward per token: gate and up (the Note above).
    (Autograd on the reference keeps gate, silu(gate) and up: 3 * f * element_size.)"""
    return 2 * f * element_size


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up                                             # (..., f)


# --------------------------------------------------------------------------- hand-written backward


def swiglu_backward_torch(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    """dy, gate, up (..., f) -> dgate, dup (..., f) in the inputs' dtype."""
    acc = torch.promote_types(gate.dtype, torch.float32)
    g, u, d = gate.to(acc), up.to(acc), dy.to(acc)
    s = torch.sigmoid(g)                                                 # recomputed, not saved
    silu = (g * s).to(gate.dtype).to(acc)                                # what up met in forward
    dgate = d * u * s * (1 + g * (1 - s))
    dup = d * silu
    return dgate.to(gate.dtype), dup.to(up.dtype)


class SwiGLUFunction(torch.autograd.Function):
    """Saves gate and up only (see the Note at the top of this file)."""

    @staticmethod
    def forward(ctx, gate, up, backend: str):
        if backend == "triton":
            y = _swiglu_forward_triton(gate, up)
        else:
            y = swiglu_reference(gate, up)
        ctx.save_for_backward(gate, up)
        ctx.backend = backend
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        if ctx.backend == "triton":
            dgate, dup = _swiglu_backward_triton(dy, gate, up)
        else:
            dgate, dup = swiglu_backward_torch(dy, gate, up)
        return dgate, dup, None


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return SwiGLUFunction.apply(gate, up, "triton")


def swiglu_manual(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The hand-written backward in plain PyTorch (tests; and a readable statement of the kernel)."""
    return SwiGLUFunction.apply(gate, up, "torch")


# --------------------------------------------------------------------------- Triton kernels

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _swiglu_fwd_kernel(G, U, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        dt = Y.dtype.element_ty
        silu = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)            # F.silu's formula, rounded
        tl.store(Y + offs, (silu * u).to(dt), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(DY, G, U, DG, DU, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        s = 1.0 / (1.0 + tl.exp(-g))
        silu = (g * s).to(U.dtype.element_ty).to(tl.float32)
        tl.store(DG + offs, (dy * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)
        tl.store(DU + offs, (dy * silu).to(DU.dtype.element_ty), mask=mask)


_BLOCK = 2048


def _swiglu_forward_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu.py: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} "
                         f"{up.dtype} must match")
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    n = gate.numel()
    _swiglu_fwd_kernel[(triton.cdiv(n, _BLOCK),)](gate, up, y, n, BLOCK=_BLOCK, num_warps=8)
    return y


def _swiglu_backward_triton(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    _swiglu_bwd_kernel[(triton.cdiv(n, _BLOCK),)](dy, gate, up, dgate, dup, n, BLOCK=_BLOCK, num_warps=8)
    return dgate, dup
