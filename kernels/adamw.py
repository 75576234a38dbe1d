"""AdamW's update of one large tensor in a single pass (minift.optim.AdamW's fused path on CUDA).

minift/optim.py writes the update as ten list operations (torch._foreach_*, in torch.optim.AdamW's
order): readable, but each one reads and writes whole fp32 tensors. For a bf16 parameter with fp32
moments that is ~90 bytes moved per element:

    p.float(), g.float()          read 2 + write 4, twice              12
    m.lerp_(g)                    read m, g, write m                    12
    v.mul_(b2); v.addcmul_(g, g)  read v, write v; read v, g, write v   20
    denom = sqrt(v); /= ; += eps  make it, then two passes over it      24
    w.addcdiv_(m, denom)          read w, m, denom, write w             16
    p.copy_(w)                    read 4, write 2                        6

The update itself needs 22: read p, g (bf16) and m, v (fp32), write p, m, v. On a memory-bound
step that is the difference: 7.6B parameters x 68 bytes is ~0.15 s of H200 bandwidth per step of
7B full fine-tuning. This kernel does the same arithmetic, element by element, in registers.

    adamw_update_reference(p, g, m, v, master, ...)   the loop path's ops on one tensor (tests)
    adamw_update_triton(p, g, m, v, master, ...)      one kernel launch, the same arguments

Note: numerics. Each operation is the one PyTorch runs, in the same order and in fp32: lerp as
PyTorch computes it for a weight below 0.5 (m + w * (g - m)), sqrt and the divisions rounded to
nearest (tl.sqrt_rn, tl.div_rn, as CUDA's sqrtf and '/' are by default), the scalars computed in
Python doubles and passed as fp32, as the foreach ops receive them. What can still differ is a
multiply-add the compiler fuses into one FMA (one rounding instead of two) where PyTorch's kernel
did not, or the reverse: a last-bit difference in m, v or the fp32 update, which the bf16
parameter shows only when the update lands within that bit of a rounding boundary.
tests/test_kernels.py and tests/test_on_cuda.py check it against the foreach path.
"""
from __future__ import annotations

import math

import torch


def _scalars(lr: float, weight_decay: float, beta1: float, beta2: float, step: int) -> dict:
    """The update's per-step numbers, computed as minift.optim.AdamW computes them (Python floats)."""
    return dict(decay=1 - lr * weight_decay, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                sqrt_bias_correction2=math.sqrt(1 - beta2 ** step), neg_step_size=-lr / (1 - beta1 ** step))


def adamw_update_reference(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                           master: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float,
                           beta2: float, eps: float, step: int) -> None:
    """In place: p (and master), m, v after one AdamW step at `step` (1, 2, ...). m, v, master fp32;
    p and g of any float dtype, all of one shape."""
    k = _scalars(lr, weight_decay, beta1, beta2, step)
    w = master if master is not None else (p if p.dtype == torch.float32 else p.float())
    g = g if g.dtype == torch.float32 else g.float()
    if weight_decay != 0:
        w.mul_(k["decay"])
    m.lerp_(g, k["one_minus_beta1"])
    v.mul_(k["beta2"]).addcmul_(g, g, value=k["one_minus_beta2"])
    denom = (v.sqrt() / k["sqrt_bias_correction2"]).add_(eps)
    w.addcdiv_(m, denom, value=k["neg_step_size"])
    if w is not p:
        p.copy_(w)


try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _adamw_kernel(P, G, M, V, W, n, decay, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps, neg_step,
                      HAS_MASTER: tl.constexpr, DECAY: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        if HAS_MASTER:
            w = tl.load(W + offs, mask=mask, other=0.0)
        else:
            w = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(M + offs, mask=mask, other=0.0)
        v = tl.load(V + offs, mask=mask, other=0.0)
        if DECAY:
            w = w * decay
        m = m + one_minus_beta1 * (g - m)                                 # torch.lerp, weight < 0.5
        v = v * beta2
        v = v + one_minus_beta2 * g * g                                   # addcmul
        denom = tl.div_rn(tl.sqrt_rn(v), sqrt_bc2) + eps
        w = w + neg_step * tl.div_rn(m, denom)                            # addcdiv
        tl.store(M + offs, m, mask=mask)
        tl.store(V + offs, v, mask=mask)
        if HAS_MASTER:
            tl.store(W + offs, w, mask=mask)
        tl.store(P + offs, w.to(P.dtype.element_ty), mask=mask)           # round to nearest into p's dtype


_BLOCK = 1024


def supported(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, master: torch.Tensor | None) -> bool:
    """The kernel reads every tensor as one flat run of elements: contiguous, one shape and device;
    m, v (and master) fp32."""
    ts = [p, g, m, v] + ([master] if master is not None else [])
    return (triton is not None and all(t.is_contiguous() and t.shape == p.shape and t.device == p.device for t in ts)
            and all(t.dtype == torch.float32 for t in ts[2:]) and p.is_floating_point() and g.is_floating_point())


def adamw_update_triton(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                        master: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float,
                        beta2: float, eps: float, step: int) -> None:
    """adamw_update_reference in one kernel (see `supported` for what it takes)."""
    if not supported(p, g, m, v, master):
        raise ValueError(f"adamw.py: p {tuple(p.shape)} {p.dtype}, grad {tuple(g.shape)} {g.dtype}, m {m.dtype}, "
                         f"v {v.dtype}: need contiguous tensors of one shape, fp32 moments")
    k = _scalars(lr, weight_decay, beta1, beta2, step)
    n = p.numel()
    _adamw_kernel[(triton.cdiv(n, _BLOCK),)](
        p, g, m, v, master if master is not None else p, n, k["decay"], k["one_minus_beta1"], k["beta2"],
        k["one_minus_beta2"], k["sqrt_bias_correction2"], eps, k["neg_step_size"],
        HAS_MASTER=master is not None, DECAY=weight_decay != 0, BLOCK=_BLOCK, num_warps=4)
