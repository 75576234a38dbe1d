"""Which implementation of an op runs: the readable PyTorch reference or the Triton kernel.

The rule is one function, `use_triton(*tensors)`:

    MINIFT_KERNELS=reference  -> always the reference (to compare, or to rule a kernel out)
    MINIFT_KERNELS=triton     -> always Triton, on any device; with TRITON_INTERPRET=1 the kernels
                                 run on CPU tensors, which is how the CPU tests exercise them
    unset / MINIFT_KERNELS=auto -> Triton only when every tensor is on CUDA and triton imports

So CPU and MPS users always get the reference, and nobody needs triton installed to use minift.

One op has a fast path on CPU instead of CUDA: `linear`, whose single-row decode product runs a
TorchInductor-compiled matrix-vector loop (kernels/matvec.py) where `matvec.supported` says it runs
and pays. Only minift.generate's decode steps call it (their DecodeLinear stands in for nn.Linear),
because building the kernels costs seconds. MINIFT_KERNELS=reference turns it off too; "triton"
leaves it as "auto" (there is no Triton matvec).
The environment variable is read on every call (a dict lookup), so a test or a benchmark can
switch it without re-importing anything.

Every op here has the signature of its reference, which lives beside its kernel:
    rms_norm(x, weight, eps)            kernels/rmsnorm.py   rms_norm_reference
    apply_rope(x, cos, sin)             kernels/rope.py      apply_rope_reference
    swiglu(gate, up)                    kernels/swiglu.py    swiglu_reference
    dequantize_nf4(packed, state, out_dtype=None)
                                        kernels/nf4.py       dequantize (the reference)
    linear(x, weight, bias=None)        kernels/matvec.py    matvec_reference (F.linear)
    softmax_xent(hidden, weight, targets, scale, need_grad)
                                        kernels/softmax_xent.py  softmax_xent_reference
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F

_MODES = ("auto", "reference", "triton")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True if `import triton` would succeed (checked once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def kernel_mode() -> str:
    mode = os.environ.get("MINIFT_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"MINIFT_KERNELS={mode!r} is not one of {', '.join(_MODES)}")
    return mode


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide reference vs Triton for an op whose operands are `tensors` (see the module doc)."""
    mode = kernel_mode()
    if mode == "reference":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("MINIFT_KERNELS=triton but triton is not installed (pip install triton)")
        return True
    if torch.compiler.is_compiling():
        # Under torch.compile the compiler fuses the reference ops itself; a hand-written kernel
        # inside an autograd.Function is opaque to it and splits the graph. On the H200, the 0.5B
        # LoRA row of minift.bench with compiled layers ran at ~25k tok/s with the Triton kernels
        # inside the compiled graph and ~49k with the references (MINIFT_KERNELS=reference).
        return False
    return triton_available() and all(t.is_cuda for t in tensors)


# --------------------------------------------------------------------------- the ops

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm: weight * (x / rms(x)) with the normalisation in fp32. x (..., h), weight (h,)."""
    from minift.kernels import rmsnorm
    if (use_triton(x, weight) and x.dtype in _FLOAT_DTYPES and weight.dtype in _FLOAT_DTYPES
            and weight.dim() == 1 and x.shape[-1] == weight.shape[0] and x.numel() > 0):
        return rmsnorm.rms_norm_triton(x, weight, eps)
    return rmsnorm.rms_norm_reference(x, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k. x (B, nh, T, hd); cos, sin (B, T, hd), the same for every head."""
    from minift.kernels import rope
    if (use_triton(x, cos, sin) and x.dtype in _FLOAT_DTYPES and cos.dtype in _FLOAT_DTYPES
            and sin.dtype == cos.dtype and not (cos.requires_grad or sin.requires_grad)
            and x.dim() == 4 and cos.shape == sin.shape == (x.shape[0], x.shape[2], x.shape[3])
            and x.shape[3] % 2 == 0 and x.numel() > 0):
        return rope.apply_rope_triton(x, cos, sin)
    return rope.apply_rope_reference(x, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, elementwise; gate and up (..., f) of one shape and dtype."""
    from minift.kernels import swiglu as swiglu_kernels
    if (use_triton(gate, up) and gate.dtype in _FLOAT_DTYPES and gate.dtype == up.dtype
            and gate.shape == up.shape and gate.numel() > 0):
        return swiglu_kernels.swiglu_triton(gate, up)
    return swiglu_kernels.swiglu_reference(gate, up)


def dequantize_nf4(packed: torch.Tensor, state, out_dtype: torch.dtype | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """NF4 codes + quantization state -> the weight, bit for bit what kernels/nf4.dequantize gives.
    out: a 2-D tensor of the weight's rows and at least its columns; the weight fills its first
    columns and out is returned (the Triton kernel writes there directly; the reference is copied)."""
    from minift.kernels import nf4
    from minift.kernels import nf4_triton
    if use_triton(packed) and nf4_triton.supported(packed, state, out_dtype, out):
        return nf4_triton.dequantize_nf4_triton(packed, state, out_dtype, out=out)
    weight = nf4.dequantize(packed, state, out_dtype)
    if out is None:
        return weight
    out[:, :weight.shape[1]].copy_(weight)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b, nn.Linear's product. x (..., in), weight (out, in), bias (out,) or None."""
    from minift.kernels import matvec
    if kernel_mode() != "reference" and matvec.supported(x, weight, bias):
        return matvec.matvec_cpu(x, weight, bias)
    return F.linear(x, weight, bias)


def softmax_xent(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                 need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A chunk's logits hidden @ weight.T, its cross-entropy per row and (softmax - onehot) * scale."""
    from minift.kernels import softmax_xent as xent
    if (use_triton(hidden, weight, targets) and hidden.dtype in _FLOAT_DTYPES and hidden.dtype == weight.dtype
            and hidden.dim() == 2 and targets.shape == hidden.shape[:1] and weight.shape[0] > 0):
        return xent.softmax_xent_triton(hidden, weight, targets, scale, need_grad)
    return xent.softmax_xent_reference(hidden, weight, targets, scale, need_grad)
