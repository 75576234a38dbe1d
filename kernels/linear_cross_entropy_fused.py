"""Linear + cross-entropy with the gradient computed in the forward pass (pure PyTorch, any device).

Same signature and value as kernels/cross_entropy.linear_cross_entropy (the chunked reference):
    linear_cross_entropy(hidden, weight, targets, chunk_size=1024)
        = F.cross_entropy((hidden @ weight.T).float().flatten(0, -2), targets.flatten(), ignore_index=-100)

The reference checkpoints each chunk: forward computes the chunk's logits and drops them, backward
computes them again and then the two gradient matmuls: 4 matmuls of (chunk x h x V) per chunk.
Here forward does it all at once, per chunk of n tokens:
    logits  = h_c @ W.T                                    (n, V), the only big buffer
    loss   += sum over counted tokens of logsumexp(logits) - logits[target]
    dlogits = (softmax(logits) - onehot(target)) / count   (zero rows where target == -100)
             (these three lines are kernels/softmax_xent.py: a PyTorch reference and a Triton kernel)
    dh_c    = dlogits @ W                                  (n, h)
    dW     += dlogits.T @ h_c                              (V, h)
and backward only scales the stored dh, dW by the incoming gradient (1.0 for a plain
loss.backward()): 3 matmuls per chunk instead of 4, no recomputation.

Note: memory. The reference softmax (kernels/softmax_xent.py, CPU and MPS) upcasts the chunk's
logits to fp32 and turns them into dlogits in place, so one chunk's fp32 logits (n x V x 4 bytes)
is the largest temporary, as in kernels/cross_entropy.py; the Triton kernel (CUDA) writes dlogits
over the bf16 logits and needs nothing more (n x V x 2 bytes). Between forward and
backward this keeps dh (the size of hidden, which the reference keeps instead) and dW (the size of
the head weight, which the reference allocates at the start of its backward anyway), so the peak
is the same. dW accumulates in the weight's dtype (addmm: fp32 inside the matmul, one rounding per
chunk, as autograd's sum of per-chunk bf16 gradients does); with an fp32 master weight under
autocast it accumulates in fp32. A frozen head (weight.requires_grad False, LoRA) skips dW
entirely; an input that needs no gradient skips dh.

Note: backward runs once. The stored gradients are scaled in place, so a second backward over the
same graph (retain_graph=True) is refused rather than silently double-scaled.
"""
from __future__ import annotations

import torch

from minift.kernels import dispatch

IGNORE_INDEX = -100


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # The dtype the head matmul runs in: autocast's if it is on (as `hidden @ weight.t()` would),
    # else the promoted dtype of the operands.
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _loss_and_grads(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, chunk_size: int,
                    need_dh: bool, need_dw: bool):
    """h (N, hd), weight (V, hd), t (N,) -> (summed loss fp32, count, dh (N, hd) | None, dW (V, hd) | None)."""
    cdt = _compute_dtype(h, weight)
    # No host-side check that count > 0: reading it back would stall the GPU queue every step (and
    # rule out a CUDA graph). With every target -100 the loss is 0/0 = NaN, as F.cross_entropy's
    # mean is; the train loop refuses such a batch on the CPU before it reaches the device.
    count = (t != IGNORE_INDEX).sum()
    inv_count = 1.0 / count.float()
    with torch.autocast(h.device.type, enabled=False):  # casts below are explicit
        w = weight.to(cdt)                                                       # (V, hd), no copy if same
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h) if need_dh else None                            # (N, hd)
        dw = torch.zeros_like(weight) if need_dw else None                       # (V, hd)
        for start in range(0, h.shape[0], chunk_size):
            hc = h[start:start + chunk_size].to(cdt)                             # (n, hd)
            tc = t[start:start + chunk_size]                                     # (n,)
            # logits = hc @ W.T (n, V), the loss per row and dlogits = (softmax - onehot(target)) / count
            # (zero rows where target is -100) in cdt, as autograd casts it: kernels/softmax_xent.py
            losses, dlogits = dispatch.softmax_xent(hc, w, tc, inv_count, need_dh or need_dw)
            total += losses.sum()
            if not (need_dh or need_dw):
                continue
            if need_dh:
                dh[start:start + chunk_size] = dlogits @ w                       # (n, hd)
            if need_dw:
                if dw.dtype == cdt:
                    dw.addmm_(dlogits.t(), hc)                                   # (V, hd) += (V, n) @ (n, hd)
                else:
                    dw += dlogits.t() @ hc                                       # fp32 master under autocast
    return total, count, dh, dw


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, t, chunk_size: int, need_dh: bool, need_dw: bool):
        total, count, dh, dw = _loss_and_grads(h, weight, t, chunk_size, need_dh, need_dw)
        ctx.save_for_backward(dh, dw)
        ctx.used = False
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.used:
            raise RuntimeError("linear_cross_entropy_fused: backward ran twice over one graph; the fused "
                               "loss stores its gradients once (use kernels/cross_entropy.py for retain_graph)")
        ctx.used = True
        dh, dw = ctx.saved_tensors
        # Scale in place: gradient accumulation (loss / k) scales without a second copy of dW.
        # Always, even by 1.0 (exact): testing `grad_loss == 1` on the host would stall the GPU.
        if dh is not None:
            dh.mul_(grad_loss.to(dh.dtype))
        if dw is not None:
            dw.mul_(grad_loss.to(dw.dtype))
        return dh, dw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets over tokens != -100.

    hidden (..., h), weight (V, h), targets (...) of hidden's leading shape. A 0-dim fp32 tensor."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"linear_cross_entropy_fused: hidden {tuple(hidden.shape)} and targets "
                         f"{tuple(targets.shape)} must share the leading (token) shape")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"linear_cross_entropy_fused: weight {tuple(weight.shape)} must be (V, "
                         f"{hidden.shape[-1]})")
    if chunk_size < 1:
        raise ValueError(f"linear_cross_entropy_fused: chunk_size must be >= 1, got {chunk_size}")
    h = hidden.reshape(-1, hidden.shape[-1])                                   # (N, h)
    t = targets.reshape(-1)                                                    # (N,)
    grad_on = torch.is_grad_enabled()
    need_dh, need_dw = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    if not (need_dh or need_dw):
        total, count, _, _ = _loss_and_grads(h, weight, t, chunk_size, False, False)
        return total / count
    return LinearCrossEntropyFunction.apply(h, weight, t, chunk_size, need_dh, need_dw)
