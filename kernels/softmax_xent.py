"""The head's logits for a chunk of tokens, their softmax cross-entropy, and its gradient.

    softmax_xent_reference(hidden, weight, targets, scale, need_grad) -> (losses, dlogits | None)
    softmax_xent_triton(...)            the same; the softmax part is one Triton program per row

hidden (n, h) and weight (V, h) in the head's compute dtype; targets (n,) int64, -100 = no loss;
scale a 0-dim fp32 tensor (d total / d row loss: 1 / count for a mean). With logits = hidden @ W.T:
    losses[i]  = logsumexp(logits[i]) - logits[i, targets[i]]        fp32; 0 where targets[i] = -100
    dlogits[i] = (softmax(logits[i]) - onehot(targets[i])) * scale    in hidden.dtype; 0 rows where ignored
kernels/linear_cross_entropy_fused.py calls this (through kernels/dispatch.py) for each chunk,
before the two gradient matmuls. The matmul is inside so that each version owns the logits buffer
and frees or overwrites it as early as it can.

Why a kernel. For Qwen2.5 a 1,024-token chunk has 156M logits. The reference upcasts them to fp32
and walks them with PyTorch ops (cast, logsumexp's max and exp-sum, subtract, exp, scale, cast
back): ~50 bytes of memory traffic per logit and an fp32 copy of the chunk (623 MB) alive. The
kernel keeps everything fp32 in registers: pass 1 reads the row once for an online max and sum of
exponentials (the log-sum-exp), pass 2 reads it again and writes the gradient over it, 6 bytes
per bf16 logit and no temporary. On the H200 this loss takes a noticeable share of a 0.5B step
(scripts/profile_step.py shows where the time goes).

Note: numerics. Same fp32 formula as the reference; the log-sum-exp is accumulated block by block
(rescaling the running sum when the running max grows) instead of max-then-sum, so the two differ
in the last bits of fp32, and Triton's exp is the GPU's fast exp2-based one. tests/test_kernels.py
and scripts/check_kernels.py compare both with a float64 truth.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def softmax_xent_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           scale: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    lf = (hidden @ weight.t()).float()                                    # (n, V) fp32, the only big buffer
    lse = torch.logsumexp(lf, dim=-1)                                     # (n,)
    counted = targets != IGNORE_INDEX                                     # (n,)
    safe_t = targets.masked_fill(~counted, 0)[:, None]                    # (n, 1) any valid index
    losses = torch.where(counted, lse - lf.gather(1, safe_t).squeeze(1), 0.0)
    if not need_grad:
        return losses, None
    dlogits = lf.sub_(lse[:, None]).exp_()                                # (n, V) softmax, in place
    dlogits.scatter_add_(1, safe_t, -counted[:, None].float())            # - onehot(target)
    dlogits.mul_(torch.where(counted, scale, 0.0)[:, None])
    return losses, dlogits.to(hidden.dtype)


try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _softmax_xent_kernel(LOGITS, TARGETS, LOSSES, SCALE, V, stride_row,
                             WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = LOGITS + row * stride_row
        t = tl.load(TARGETS + row)
        counted = t != -100
        safe_t = tl.where(counted, t, 0)

        # pass 1: log-sum-exp with a running max m and running sum s of exp(x - m)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        # `while`, not `for start in range(0, V, BLOCK)`: triton 3.6's interpreter (TRITON_INTERPRET=1)
        # turns a runtime bound such as V into int(1-element array), which numpy >= 2.4 refuses
        # (fixed in later triton); a while condition only needs bool(). Compiled, it is an scf.while
        # (same loads and math; scripts/check_kernels.py times it on the GPU).
        start = 0
        while start < V:
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)   # (BLOCK,)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
            start += BLOCK
        lse = m + tl.log(s)
        # a target outside [0, V) reads nothing and makes the row's loss NaN (the reference's gather
        # would fail there); the train loop names such a batch on the CPU before it gets here
        x_t = tl.load(base + safe_t, mask=(safe_t >= 0) & (safe_t < V), other=float("nan")).to(tl.float32)
        tl.store(LOSSES + row, tl.where(counted, lse - x_t, 0.0))

        # pass 2: (softmax - onehot) * scale, written over the logits
        if WRITE_GRAD:
            scale = tl.where(counted, tl.load(SCALE), 0.0)
            one = tl.where(counted, 1.0, 0.0)
            start = 0
            while start < V:                                   # a while for the interpreter, as above
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
                p = tl.exp(x - lse)
                p = tl.where(cols == safe_t, p - one, p)
                tl.store(base + cols, (p * scale).to(LOGITS.dtype.element_ty), mask=cols < V)
                start += BLOCK


_BLOCK = 4096   # logits per loop step: 8 KB of bf16 per row in flight


def softmax_xent_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        scale: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if triton is None:
        raise RuntimeError("softmax_xent_triton needs triton (pip install triton)")
    n, V = hidden.shape[0], weight.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"softmax_xent_triton: targets {tuple(targets.shape)} must be ({n},)")
    logits = hidden @ weight.t()                                          # (n, V), overwritten by dlogits
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    scale = scale.to(device=logits.device, dtype=torch.float32).reshape(())
    if n:
        _softmax_xent_kernel[(n,)](logits, targets, losses, scale, V, logits.stride(0),
                                   WRITE_GRAD=need_grad, BLOCK=min(_BLOCK, triton.next_power_of_2(V)),
                                   num_warps=8)
    return losses, (logits if need_grad else None)
