"""RMSNorm: y = weight * (x / sqrt(mean(x^2) + eps)), Hugging Face's numerics.

Three versions, one math:
  rms_norm_reference  plain PyTorch; autograd differentiates it. CPU and MPS run this.
  RMSNormFunction     the same forward with a hand-written backward, in two backends:
                      "torch" (readable, float64-capable: gradcheck tests the math) and
                      "triton" (the CUDA kernels below, which implement exactly that math).
  rms_norm_triton     RMSNormFunction with the Triton backend; kernels/dispatch.py picks it on CUDA.

Forward, per token (row of h values), with r = 1/sqrt(mean(x^2) + eps) computed in fp32:
    y = weight * cast_to_x_dtype(x * r)          (HF casts back *before* the weight multiply)
Backward, with g = dy * weight (fp32) and y_hat = x * r:
    dx      = r * (g - y_hat * mean(g * y_hat))
    dweight = sum over tokens of dy * cast_to_x_dtype(y_hat)

Note: what backward keeps. Autograd on the reference saves the fp32 upcast of x (4h bytes per
token, held by pow and by the multiply), rsqrt's result (4 bytes per token) and the bf16
normalised x that meets the weight (2h bytes per token): 6h + 4 bytes per token for bf16 input.
RMSNormFunction saves only
    x      : the input itself (no copy; h * x.element_size() bytes per token, 2h in bf16)
    rstd   : one fp32 per token (4 bytes per token)
    weight : a parameter, already resident (0 bytes per token)
i.e. 2h + 4 bytes per token in bf16 (4h + 4 in fp32) and recomputes y_hat in backward. When the
input x is also kept alive by someone else (the residual stream is, until the next add), the
norm's own cost is just the 4 bytes of rstd per token.
"""
from __future__ import annotations

import torch


def saved_bytes_per_token(h: int, element_size: int) -> int:
    """Bytes RMSNormFunction keeps for backward per token (the Note above): x + rstd.
    (Autograd on the reference, measured with saved_tensors_hooks: 4h + 4 + h * element_size
    for bf16/fp16 input, i.e. 6h + 4 in bf16; 8h + 4 for fp32 input.)"""
    return h * element_size + 4


# --------------------------------------------------------------------------- reference


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., h), weight (h,) -> (..., h) in promote(x.dtype, weight.dtype). HF Qwen2RMSNorm."""
    x32 = x.float()                                                     # (..., h) fp32
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)   # normalise in fp32
    return weight * x32.to(x.dtype)                                     # cast back, then scale


# --------------------------------------------------------------------------- hand-written backward


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 for bf16/fp16/fp32 (HF's numerics); float64 stays float64 so gradcheck can test the math.
    return torch.promote_types(dtype, torch.float32)


def rms_norm_forward_torch(x2: torch.Tensor, weight: torch.Tensor, eps: float):
    """x2 (N, h) -> y (N, h), rstd (N,) in the accumulation dtype. The math the kernel implements."""
    xa = x2.to(_acc_dtype(x2.dtype))                                     # (N, h)
    rstd = torch.rsqrt(xa.pow(2).mean(-1) + eps)                         # (N,)
    y = weight * (xa * rstd[:, None]).to(x2.dtype)                       # (N, h)
    return y, rstd


def rms_norm_backward_torch(dy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor):
    """dy, x2 (N, h), weight (h,), rstd (N,) -> dx (N, h) in x's dtype, dweight (h,) in weight's dtype."""
    acc = rstd.dtype
    xa, dya = x2.to(acc), dy.to(acc)                                     # (N, h)
    y_hat = xa * rstd[:, None]                                           # (N, h) recomputed, not saved
    g = dya * weight.to(acc)                                             # (N, h)
    dx = rstd[:, None] * (g - y_hat * (g * y_hat).mean(-1, keepdim=True))
    # The weight saw the *rounded* y_hat in forward, so its gradient uses the rounded one too.
    dw = (dya * y_hat.to(x2.dtype).to(acc)).sum(0)                       # (h,)
    return dx.to(x2.dtype), dw.to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    """Saves x and rstd only (see the Note at the top of this file)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, backend: str):
        x2 = x.reshape(-1, x.shape[-1])                                  # (N, h), a view when it can be
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        if backend == "triton":
            y, rstd = _forward_triton(x2, weight, eps)
        else:
            y, rstd = rms_norm_forward_torch(x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.backend, ctx.x_shape = backend, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape)
        if ctx.backend == "triton":
            dx, dw = _backward_triton(dy2, x2, weight, rstd, ctx.needs_input_grad[1])
        else:
            dx, dw = rms_norm_backward_torch(dy2, x2, weight, rstd)
        dx = dx.view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        dw = dw if ctx.needs_input_grad[1] else None
        return dx, dw, None, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps, "triton")


def rms_norm_manual(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The hand-written backward in plain PyTorch (tests; and a readable statement of the kernels)."""
    return RMSNormFunction.apply(x, weight, eps, "torch")


# --------------------------------------------------------------------------- Triton kernels

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference needs nothing of this; dispatch never picks Triton then
    triton = None

if triton is not None:

    @triton.jit
    def _rms_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, N, eps, BLOCK: tl.constexpr):
        # One program per token: the whole row of h values sits in registers (h <= 8192).
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        y_hat = (x * rstd).to(X.dtype.element_ty)                        # HF: cast before the weight
        w = tl.load(W + cols, mask=mask, other=0.0)
        y = w.to(tl.float32) * y_hat.to(tl.float32)                      # exact product, one rounding
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rms_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx,
                        N, n_rows, rows_per_program, BLOCK: tl.constexpr):
        # Each program walks a contiguous run of rows and keeps its share of dweight in fp32
        # registers; the host sums the (programs, h) partials. No atomics, so it is deterministic.
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK,), dtype=tl.float32)
        start = pid * rows_per_program
        end = tl.minimum(start + rows_per_program, n_rows)
        first = start.to(tl.int64)                   # 64-bit offsets: N * h may pass 2^31
        x_ptr, dy_ptr, dx_ptr = X + first * stride_x, DY + first * stride_dy, DX + first * stride_dx
        rstd_ptr = RSTD + first
        row = start
        while row < end:      # not range(start, end): triton 3.6's interpreter cannot take a runtime
                              # bound there (see kernels/softmax_xent.py)
            x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr)
            y_hat = x * rstd
            dw += dy * y_hat.to(X.dtype.element_ty).to(tl.float32)
            g = dy * w
            dx = rstd * (g - y_hat * (tl.sum(g * y_hat, axis=0) / N))
            tl.store(dx_ptr + cols, dx.to(DX.dtype.element_ty), mask=mask)
            x_ptr += stride_x
            dy_ptr += stride_dy
            dx_ptr += stride_dx
            rstd_ptr += 1
            row += 1
        tl.store(DW_PART + pid * N + cols, dw, mask=mask)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


def _forward_triton(x2: torch.Tensor, weight: torch.Tensor, eps: float):
    N, h = x2.shape
    block = triton.next_power_of_2(h)
    if block > 16384:
        raise ValueError(f"rmsnorm.py: hidden size {h} is larger than the one-row-per-program kernel holds")
    y = torch.empty((N, h), dtype=torch.promote_types(x2.dtype, weight.dtype), device=x2.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x2.device)
    _rms_fwd_kernel[(N,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), h, eps,
                          BLOCK=block, num_warps=_num_warps(block))
    return y, rstd


def _backward_programs(n_rows: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_rows, 4 * sms))
    return max(1, min(n_rows, 4))  # the CPU interpreter: few programs, each a Python loop


def _backward_triton(dy2, x2, weight, rstd, need_dw: bool):
    N, h = x2.shape
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    block = triton.next_power_of_2(h)
    programs = _backward_programs(N, x2.device)
    rows_per_program = triton.cdiv(N, programs)
    programs = triton.cdiv(N, rows_per_program)
    dx = torch.empty_like(x2)
    dw_part = torch.empty((programs, h), dtype=torch.float32, device=x2.device)
    _rms_bwd_kernel[(programs,)](dy2, x2, weight, rstd, dx, dw_part, dy2.stride(0), x2.stride(0),
                                 dx.stride(0), h, N, rows_per_program, BLOCK=block,
                                 num_warps=_num_warps(block))
    dw = dw_part.sum(0).to(weight.dtype) if need_dw else None
    return dx, dw
