"""NF4 dequantize as one Triton kernel: bit for bit what kernels/nf4.dequantize (the reference) gives.

    dequantize_nf4_triton(packed, state, out_dtype=None) -> state.shape, out_dtype or state.dtype

The reference (read it first, kernels/nf4.py) does, in fp32:
    scale[b] = absmax[b]                                           plain NF4
    scale[b] = nested_code[absmax[b]] * nested_absmax[b // 256] + offset   double quantization
    w[i]     = code[nibble i] * scale[i // blocksize]              then one cast to out_dtype
with byte j holding element 2j in its high nibble and 2j + 1 in its low nibble. It runs as several
PyTorch ops with full-size temporaries (unpacked codes, int indices, fp32 values, fp32 product):
about 20 bytes of memory traffic per weight where the data itself is 2.5 bytes (bf16 out).

The kernel reads each byte once and writes each output once. One program handles a tile of
BLOCKS_PER_PROGRAM quantization blocks laid out as a 2-D tile (blocks, blocksize / 2 bytes):
loads are contiguous bytes (vectorised 16 B per thread), each block's scale is loaded (and, with
double quantization, decoded) once and broadcast along its row, the two nibbles of a byte are
interleaved back with tl.join + reshape, and the (blocks, blocksize) outputs are stored contiguously.

Note: bit-exactness. The same fp32 operations in the same order as the reference: a product, then
a sum for the double-quantized scale, a product for the weight, one round-to-nearest-even cast.
The kernel is compiled with enable_fp_fusion=False, because a fused multiply-add would round the
scale once where PyTorch rounds twice (a one-ulp difference that would break bit identity).
(Under TRITON_INTERPRET=1 on CPU, Triton's own fp32->bf16 cast truncates instead of rounding;
the CPU tests therefore compare fp32 and fp16 output bit for bit and bf16 within one bf16 ulp.
On a GPU the cast is cvt.rn and scripts/check_kernels.py checks bf16 bit for bit.)
"""
from __future__ import annotations

import torch

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TILE_ELEMENTS = 8192  # outputs per program: big enough to keep many bytes in flight per SM

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _nf4_dequantize_kernel(PACKED, ABSMAX, CODE, NESTED_ABSMAX, NESTED_CODE, OFFSET, OUT,
                               n, nbytes, nblocks, blocks_per_row, out_row_stride,
                               BS: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
                               DOUBLE_QUANT: tl.constexpr, NESTED_BS: tl.constexpr, STRIDED: tl.constexpr):
        blk = tl.program_id(0).to(tl.int64) * BLOCKS_PER_PROGRAM + tl.arange(0, BLOCKS_PER_PROGRAM)  # (NB,)
        blk_mask = blk < nblocks

        # codes: (NB, BS/2) bytes -> two fp32 codebook values each
        byte = blk[:, None] * (BS // 2) + tl.arange(0, BS // 2)[None, :]                # (NB, BS/2)
        q = tl.load(PACKED + byte, mask=byte < nbytes, other=0).to(tl.int32)
        hi = tl.load(CODE + (q >> 4))                                                   # element 2j
        lo = tl.load(CODE + (q & 15))                                                   # element 2j+1
        values = tl.reshape(tl.join(hi, lo), (BLOCKS_PER_PROGRAM, BS))                  # (NB, BS) fp32

        # one scale per block
        if DOUBLE_QUANT:
            qa = tl.load(ABSMAX + blk, mask=blk_mask, other=0).to(tl.int32)              # uint8 -> index
            nested = tl.load(NESTED_ABSMAX + blk // NESTED_BS, mask=blk_mask, other=0.0)
            scale = tl.load(NESTED_CODE + qa) * nested                                  # rounded product,
            scale = scale + tl.load(OFFSET)                                             # then the sum
        else:
            scale = tl.load(ABSMAX + blk, mask=blk_mask, other=0.0)                     # (NB,) fp32

        w = values * scale[:, None]                                                     # (NB, BS) fp32
        elem = blk[:, None] * BS + tl.arange(0, BS)[None, :]                            # (NB, BS)
        if STRIDED:   # rows out_row_stride apart; a block never straddles two (in_features % BS == 0)
            # the row and the block within it in 32 bits (the wrapper checks nblocks < 2^31): a 64-bit
            # division is a called subroutine on the GPU, and four of them per thread made the kernel
            # 680 SASS instructions against 416 without the stride
            blk32 = blk.to(tl.int32)                                                    # (NB,)
            row = blk32 // blocks_per_row                                               # (NB,)
            col = (blk32 - row * blocks_per_row) * BS                                   # (NB,)
            row_start = row.to(tl.int64) * out_row_stride + col                         # (NB,)
            dst = row_start[:, None] + tl.arange(0, BS)[None, :]                        # (NB, BS)
        else:
            dst = elem
        tl.store(OUT + dst, w.to(OUT.dtype.element_ty), mask=elem < n)


def supported(packed: torch.Tensor, state, out_dtype: torch.dtype | None, out: torch.Tensor | None = None) -> bool:
    """Whether the kernel handles this input (anything else goes to the reference, which also
    raises the clear errors for malformed input). With `out` (see dequantize_nf4_triton): a 2-D
    weight whose rows are whole blocks, and `out` a matching row-major tensor."""
    bs = state.blocksize
    ok = (triton is not None and packed.dtype == torch.uint8 and packed.numel() == (state.numel + 1) // 2
          and (out_dtype or state.dtype) in _OUT_DTYPES and 2 <= bs <= 4096 and bs & (bs - 1) == 0
          and state.code.numel() == 16 and state.numel > 0)
    if out is None or not ok:
        return ok
    return (len(state.shape) == 2 and state.shape[1] % bs == 0 and out.dim() == 2
            and out.shape[0] == state.shape[0] and out.shape[1] >= state.shape[1] and out.stride(1) == 1
            and out.dtype == (out_dtype or state.dtype) and out.device == packed.device)


def dequantize_nf4_triton(packed: torch.Tensor, state, out_dtype: torch.dtype | None = None,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """packed uint8 ((n+1)//2, 1) + NF4State -> the weight (state.shape) in out_dtype or state.dtype.
    out: an (out_features, in_features + extra) tensor whose first in_features columns receive the
    weight, written in place and returned (minift/quant.py: the adapters inside the NF4 product);
    supported(..., out) says when."""
    n = state.numel
    state.check_packed(packed)
    dev = packed.device
    packed = packed.contiguous()
    strided = out is not None
    if out is None:
        out = torch.empty(state.shape, dtype=out_dtype or state.dtype, device=dev)
    bs = state.blocksize
    nblocks = -(-n // bs)
    blocks_per_row = state.shape[-1] // bs if strided else 1
    if strided and nblocks >= 2 ** 31:
        raise ValueError(f"dequantize into out=: {nblocks} blocks, the kernel indexes rows in 32 bits (< 2^31)")
    blocks_per_program = max(1, _TILE_ELEMENTS // bs)
    code = state.code.to(dev, torch.float32).contiguous()
    if state.double_quant:
        absmax = state.absmax.to(dev).contiguous()                                       # (nblocks,) uint8
        nested_absmax = state.nested_absmax.to(dev, torch.float32).contiguous()
        nested_code = state.nested_code.to(dev, torch.float32).contiguous()
        offset = torch.as_tensor(state.offset, dtype=torch.float32, device=dev).reshape(1)
        nested_bs = state.nested_blocksize
    else:
        absmax = state.absmax.to(dev, torch.float32).contiguous()                        # (nblocks,) fp32
        nested_absmax, nested_code, offset, nested_bs = absmax, code, absmax, 1          # unused
    grid = (triton.cdiv(nblocks, blocks_per_program),)
    _nf4_dequantize_kernel[grid](packed, absmax, code, nested_absmax, nested_code, offset, out,
                                 n, (n + 1) // 2, nblocks, blocks_per_row, out.stride(0) if strided else 1,
                                 BS=bs, BLOCKS_PER_PROGRAM=blocks_per_program,
                                 DOUBLE_QUANT=state.double_quant, NESTED_BS=nested_bs, STRIDED=strided,
                                 num_warps=8, enable_fp_fusion=False)
    return out
