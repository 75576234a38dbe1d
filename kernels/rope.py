"""Rotary position embedding (RoPE, arXiv:2104.09864) in Hugging Face's "rotate half" convention.

Element i of a head pairs with element i + hd/2 (not 2i with 2i+1 as in the paper), and cos/sin
(B, T, hd) arrive in the activation dtype, already duplicated over the two halves:
    y = x * cos + rotate_half(x) * sin,        rotate_half(x) = cat(-x2, x1)
i.e. per pair: y1 = x1*cos1 - x2*sin1,  y2 = x2*cos2 + x1*sin2.
Backward is the transpose of that rotation, which is the rotation by -angle:
    dx = dy * cos - rotate_half(dy * sin)      (dx1 = dy1*cos1 + dy2*sin2, dx2 = dy2*cos2 - dy1*sin1)

Three versions, one math:
  apply_rope_reference  plain PyTorch (HF's apply_rotary_pos_emb); autograd differentiates it.
  RoPEFunction          hand-written backward, "torch" backend (readable, gradcheck in float64)
                        or "triton" backend (the kernel below: one pass reads x and writes y).
  apply_rope_triton     RoPEFunction with the Triton backend; kernels/dispatch.py picks it on CUDA.

Note: what backward keeps. Nothing per call: the backward needs only cos and sin, which the model
computes once per forward (B, T, hd each, 2 * 2hd bytes per token in bf16) and every layer's q
and k share. Autograd on the reference saves the same two tensors, so RoPE's gain is speed and
transient memory (the reference allocates x*cos, rotate_half(x), its product and the sum: four
full-size temporaries where the kernel writes only y). Nothing is done in place: x is untouched.

Note: numerics. The kernel's forward rounds exactly where PyTorch does in the reference (each
product to the output dtype, then the sum; compiled without fused multiply-adds), so it matches
the reference bit for bit in fp32, fp16 and bf16. Its backward works in fp32 and rounds once, slightly more accurate than autograd's chain.
"""
from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, nh, T, hd); cos, sin (B, T, hd) -> broadcast over heads
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


# --------------------------------------------------------------------------- hand-written backward


def rope_backward_torch(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, x_dtype: torch.dtype):
    """dy (B, nh, T, hd) -> dx (B, nh, T, hd): rotate by -angle (see the module doc)."""
    acc = torch.promote_types(dy.dtype, torch.float32)
    dya, c, s = dy.to(acc), cos[:, None].to(acc), sin[:, None].to(acc)
    return (dya * c - rotate_half(dya * s)).to(x_dtype)


class RoPEFunction(torch.autograd.Function):
    """cos and sin are constants here (they come from a buffer, not from parameters)."""

    @staticmethod
    def forward(ctx, x, cos, sin, backend: str):
        if backend == "triton":
            y = _rope_triton(x, cos, sin, backward=False)
        else:
            y = apply_rope_reference(x, cos, sin)
        ctx.save_for_backward(cos, sin)
        ctx.backend, ctx.x_dtype = backend, x.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        if ctx.backend == "triton":
            dx = _rope_triton(dy, cos, sin, backward=True, out_dtype=ctx.x_dtype)
        else:
            dx = rope_backward_torch(dy, cos, sin, ctx.x_dtype)
        return dx, None, None, None


def apply_rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return RoPEFunction.apply(x, cos, sin, "triton")


def apply_rope_manual(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The hand-written backward in plain PyTorch (tests; and a readable statement of the kernel)."""
    return RoPEFunction.apply(x, cos, sin, "torch")


# --------------------------------------------------------------------------- Triton kernel

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _rope_kernel(X, COS, SIN, Y, T, n_heads,
                     sxb, sxh, sxt, syb, syh, syt, scb, sct, ssb, sst,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                     BACKWARD: tl.constexpr):
        # Program (token, head block): cos/sin for the token are loaded once and reused by
        # every head in the block. Works on any strides (q arrives as a transposed view).
        tok = tl.program_id(0)
        b = (tok // T).to(tl.int64)
        t = (tok % T).to(tl.int64)
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        dmask = d < HALF
        c_off = b * scb + t * sct + d
        s_off = b * ssb + t * sst + d
        c1 = tl.load(COS + c_off, mask=dmask, other=0.0).to(tl.float32)[None, :]
        c2 = tl.load(COS + c_off + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
        s1 = tl.load(SIN + s_off, mask=dmask, other=0.0).to(tl.float32)[None, :]
        s2 = tl.load(SIN + s_off + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
        mask = (heads < n_heads)[:, None] & dmask[None, :]
        h64 = heads.to(tl.int64)[:, None]
        x_off = b * sxb + t * sxt + h64 * sxh + d[None, :]
        y_off = b * syb + t * syt + h64 * syh + d[None, :]
        x1 = tl.load(X + x_off, mask=mask, other=0.0).to(tl.float32)    # (BLOCK_H, BLOCK_D)
        x2 = tl.load(X + x_off + HALF, mask=mask, other=0.0).to(tl.float32)
        dt = Y.dtype.element_ty
        if BACKWARD:
            # rotation by -angle, in fp32, one rounding
            y1 = x1 * c1 + x2 * s2
            y2 = x2 * c2 - x1 * s1
        else:
            # round each product to the output dtype, then the sum: PyTorch's order, bit for bit
            y1 = (x1 * c1).to(dt).to(tl.float32) - (x2 * s1).to(dt).to(tl.float32)
            y2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
        tl.store(Y + y_off, y1.to(dt), mask=mask)
        tl.store(Y + y_off + HALF, y2.to(dt), mask=mask)


def _rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, backward: bool,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    B, nh, T, hd = x.shape
    if cos.shape != (B, T, hd) or sin.shape != (B, T, hd):
        raise ValueError(f"rope.py: cos/sin must be (B, T, hd) = {(B, T, hd)}; got {tuple(cos.shape)}, "
                         f"{tuple(sin.shape)}")
    if hd % 2:
        raise ValueError(f"rope.py: head_dim must be even, got {hd}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    if out_dtype is None:
        out_dtype = torch.promote_types(x.dtype, cos.dtype)
    y = torch.empty_like(x, dtype=out_dtype)      # same strides as x (preserve_format)
    half = hd // 2
    block_d = triton.next_power_of_2(half)
    block_h = min(triton.next_power_of_2(nh), max(1, 2048 // block_d))
    grid = (B * T, triton.cdiv(nh, block_h))
    _rope_kernel[grid](x, cos, sin, y, T, nh,
                       x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
                       cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
                       HALF=half, BLOCK_H=block_h, BLOCK_D=block_d, BACKWARD=backward,
                       num_warps=4 if block_h * block_d >= 1024 else 2,
                       enable_fp_fusion=False)  # no fma: fp32 rounds like PyTorch's mul-then-add
    return y
