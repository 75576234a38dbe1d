"""NF4: 4-bit NormalFloat storage, byte for byte the way bitsandbytes stores it.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314, section 3) keeps the frozen base weights in 4 bits:

    w (out, in), any float dtype
      -> flatten row-major, cut into blocks of `blocksize` (64) values; the last block may be short
      -> per block: absmax = max|w| (fp32);  x = w * (1 / absmax), now in [-1, 1]
      -> each x becomes the index (0..15) of the nearest of 16 fixed values, the NF4 codebook
      -> two indices per byte, the first in the high nibble: packed uint8 ((n + 1) // 2, 1)
      -> double quantization (optional): the fp32 absmax vector itself is stored in 8 bits,
         as (absmax - mean) in blocks of 256 with bitsandbytes' signed "dynamic" 8-bit map

    dequantize: w_hat = code[index] * absmax  (fp32), cast once to the output dtype.

Public API
    packed, state = quantize(w, blocksize=64, double_quant=True)   # uint8 ((n+1)//2, 1), NF4State
    w_hat = dequantize(packed, state, out_dtype=None)              # w.shape, w.dtype (or out_dtype)
    state.to_bnb_dict(prefix) / NF4State.from_bnb_dict(d, prefix)  # the serialized keys of bnb
    bits_per_parameter(n, blocksize=64, double_quant=True)         # 4.127 / 4.5 bits for large n

Everything here is plain PyTorch (no CUDA-only ops), so the same code runs on CPU, MPS and CUDA.
A faster kernel, if any, lives in its own file with the same signatures; this is the reference.

Note: which bitsandbytes backend we copy. bnb 0.50 has a CUDA kernel, a pure-PyTorch "default"
backend (what runs the 4-bit step on CPU, and the MPS fallback) and a C++ CPU library (used on
CPU for the 8-bit step of double quantization and for dequantize_4bit). We follow one rule for
both steps, the default backend's: x * (1 / absmax) with absmax clamped to >= 1e-38, clamp to
[-1, 1], then torch.bucketize over the fp32 midpoints of the sorted code (a value exactly on a
midpoint gets the lower code). For ordinary weights this is byte-identical to bnb on CPU and to
the CUDA kernel. The edges, each pinned against the installed bnb in tests/test_nf4.py:
  * An all-zero 4-bit block: code 7 (the value 0.0), as bnb's default/CPU backend emits
    (0 * 1e38 = 0). bnb's CUDA kernel computes 0 * (1/0) = NaN, which its decision tree sends to
    code 0 (the value -1.0). Both dequantize to zero (-1.0 * 0 = -0.0 == 0.0); only the bytes
    differ. We follow the CPU one: its byte says what it means, and it is the one we can test.
    The same holds one level down: a nested 8-bit block whose values are all zero (a tensor of
    a single 4-bit block, whose absmax minus its own mean is 0) is code 0 from bnb's CUDA kernel
    and the code of 0.0 from us and from bnb's CPU backends; both decode to the offset.
  * A short last block: bnb's default backend *divides* w / absmax there (a full block and the
    CUDA kernel multiply by the reciprocal; so do we). The two can round one ulp apart, which
    moves a code only when the value sits within one ulp of a midpoint. For an all-zero short
    last block bnb's default backend also stores absmax 1e-38 (the clamped value); we store 0.
  * The 8-bit step on CPU: bnb's C++ library (BinSearch lookup + distance check) returns a code
    that is *not* the nearest for about 0.2% of absmax values (480 of 262,144 for a 4096 x 4096
    N(0, 0.02) weight, never a closer one); we give the nearest, as bnb's default backend does.
  * bnb's C++ dequantize_4bit on CPU mis-scales whenever the last dimension is not a multiple of
    the block size (e.g. a (64, 64) weight with blocksize 128); its default backend and the
    formula here agree. (A bnb bug we found; our dequantize does not depend on row length.)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import torch

# ----------------------------------------------------------------------------------------------
# The NF4 codebook
# ----------------------------------------------------------------------------------------------

# The 16 NF4 values, code 0 .. 15, ascending, as exact float32 numbers (bitsandbytes
# functional.get_4bit_type("nf4"), csrc/kernels.cu nf4_dequantization_lut). 7 negative values,
# 0.0 at code 7, 8 positive values: the asymmetry buys an exact zero (see normal_map below).
NF4_CODE_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_ZERO_CODE = 7
NF4_OFFSET = 0.9677083  # the outermost quantile used to build the codebook (bnb create_normal_map)

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bnb's quantize_4bit accepts
NESTED_BLOCKSIZE = 256  # double quantization: absmax values per 8-bit block (bnb quantize_4bit)
_FLOAT_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_DTYPES_BY_NAME = {name: dtype for dtype, name in _FLOAT_DTYPES.items()}
_SMALLEST_ABSMAX = 1e-38  # bnb's clamp before taking 1/absmax: an all-zero block scales to 0, not NaN


def nf4_code(device=None) -> torch.Tensor:
    """The NF4 codebook: (16,) float32, ascending, code 7 = 0.0."""
    return torch.tensor(NF4_CODE_VALUES, dtype=torch.float32, device=device)


def nf4_midpoints(device=None) -> torch.Tensor:
    """(15,) fp32 midpoints (code[i] + code[i+1]) / 2, rounded to fp32: the decision thresholds.
    A value strictly above midpoint i gets a code > i; one exactly on it gets the lower code i
    (torch.bucketize(..., right=False), the same as CUDA's `x > threshold` decision tree)."""
    code = nf4_code(device)
    return (code[:-1] + code[1:]) / 2


def normal_map(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Derive the NF4 codebook from the normal distribution, as bnb's create_normal_map does.

    QLoRA section 3: pre-trained weights are roughly N(0, sigma), so give each code an equal share
    of the probability mass: the codes are quantiles of N(0, 1), rescaled to [-1, 1]. To have an
    exact 0 with 4 bits, take 8 positive quantiles and 7 negative ones (plus 0):
        positive: ppf of 8 probabilities evenly spaced from `offset` down to 0.5 (0.5 excluded)
        negative: -ppf of 7 probabilities evenly spaced from `offset` down to 0.5 (excluded)
    `offset` = 0.9677083 rather than 1 (ppf(1) = inf); bnb picked it empirically.
    Returns (16,) float32, equal bit for bit to NF4_CODE_VALUES (tested).

    Arithmetic copied from bnb so the fp32 roundings agree: the probabilities are an fp32
    linspace, the quantiles are computed in float64 (torch.special.ndtri = the inverse normal
    CDF, scipy's norm.ppf), rounded to fp32, sorted, then divided by the largest in fp32.
    """
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())     # (8,)
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())    # (7,)
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).float()  # (16,) fp32
    values = values.sort().values
    return values / values.max()


# ----------------------------------------------------------------------------------------------
# The 8-bit "dynamic" map used by double quantization
# ----------------------------------------------------------------------------------------------

def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True)): (256,) fp32, sorted.

    Dettmers 2016 (arXiv:1511.04561) "dynamic tree" quantization: a value is sign * 10^e * f, where
    the decimal exponent e runs over -6 .. 0 and the fraction f over a linear grid in [0.1, 1].
    Small exponents get few fraction steps, large ones many: exponent level i (0..6) has 2^i
    fraction bins, whose centres are the representable f. Both signs, plus 0 and 1.0:
    2 * (1 + 2 + ... + 64) + 2 = 256 values. Not IEEE FP8 (the QLoRA paper calls it "8-bit float").
    """
    non_sign_bits = total_bits - 1
    if 2 ** (non_sign_bits - max_exponent_bits) - 1 != 0:
        raise ValueError("only bnb's default layout (every non-sign bit an exponent level) is built here")
    values: list[float] = []
    for i in range(max_exponent_bits):
        n_fraction = 2 ** (i + non_sign_bits - max_exponent_bits)                # 1, 2, 4, ..., 64
        edges = torch.linspace(0.1, 1, n_fraction + 1, dtype=torch.float32)     # (n_fraction + 1,)
        centres = (edges[:-1] + edges[1:]) / 2.0                                 # (n_fraction,) fp32
        scale = 10 ** (-(max_exponent_bits - 1) + i)                             # 1e-6 ... 1
        values += (scale * centres).tolist()                                     # fp32 products
        values += (-scale * centres).tolist()
    values += [0.0, 1.0]
    assert len(values) == 2 ** total_bits
    return torch.tensor(sorted(values), dtype=torch.float32)


def quantize_blockwise_8bit(x: torch.Tensor, code: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization of a vector with a sorted 256-value `code` (fp32).

    Returns (q uint8 like x, absmax fp32 (ceil(n / blocksize),)). The same rule as the 4-bit step:
    x * (1 / absmax), clamp to [-1, 1], nearest code with ties to the lower one (bucketize over the
    fp32 midpoints), which is bnb's pure-PyTorch backend (see the module Note for its C++ CPU one).
    """
    flat = x.reshape(-1).float()                                              # (n,)
    n = flat.numel()
    nblocks = -(-n // blocksize)
    blocks = torch.nn.functional.pad(flat, (0, nblocks * blocksize - n)).view(nblocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                                        # (nblocks,) fp32
    inv = 1.0 / absmax.clamp(min=_SMALLEST_ABSMAX)                           # (nblocks,)
    scaled = (blocks * inv[:, None]).clamp(-1, 1).reshape(-1)[:n]            # (n,)
    code = code.to(flat.device)
    midpoints = (code[:-1] + code[1:]) / 2                                   # (255,) fp32
    q = torch.bucketize(scaled, midpoints, right=False, out_int32=True)      # (n,) 0..255
    return q.to(torch.uint8).reshape(x.shape), absmax


def dequantize_blockwise_8bit(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                              blocksize: int = NESTED_BLOCKSIZE) -> torch.Tensor:
    """code[q] * absmax[block] in fp32; (n,) like q."""
    n = q.numel()
    values = code.to(q.device)[q.reshape(-1).long()]                         # (n,) fp32
    nblocks = absmax.numel()
    values = torch.nn.functional.pad(values, (0, nblocks * blocksize - n))
    return (values.view(nblocks, blocksize) * absmax[:, None]).reshape(-1)[:n].reshape(q.shape)


# ----------------------------------------------------------------------------------------------
# The quantization state
# ----------------------------------------------------------------------------------------------

@dataclass
class NF4State:
    """Everything besides the packed codes that dequantize needs (bnb calls it QuantState).

    absmax         (nblocks,) fp32 block scales; with double quantization (nblocks,) uint8 indices
                   into nested_code, and the scale of block b is
                   nested_code[absmax[b]] * nested_absmax[b // 256] + offset
    shape, dtype   of the original weight (dequantize returns these)
    blocksize      values per block (64)
    code           (16,) fp32 NF4 codebook
    offset         () fp32: the mean absmax subtracted before the 8-bit step (double quant only)
    nested_absmax  (ceil(nblocks / 256),) fp32 scales of the 8-bit step
    nested_code    (256,) fp32 dynamic map
    """
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 64
    code: torch.Tensor = field(default_factory=nf4_code)
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_blocksize: int = NESTED_BLOCKSIZE

    @property
    def double_quant(self) -> bool:
        return self.offset is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    def block_absmax(self) -> torch.Tensor:
        """(nblocks,) fp32 per-block scales, undoing double quantization if it was used."""
        if not self.double_quant:
            return self.absmax
        scales = dequantize_blockwise_8bit(self.absmax, self.nested_absmax, self.nested_code,
                                           self.nested_blocksize)              # (nblocks,) fp32
        return scales + self.offset

    def to(self, device) -> "NF4State":
        move = (lambda t: None if t is None else t.to(device))
        return replace(self, absmax=move(self.absmax), code=move(self.code), offset=move(self.offset),
                       nested_absmax=move(self.nested_absmax), nested_code=move(self.nested_code))

    # -- bitsandbytes' serialized layout ------------------------------------------------------

    def to_bnb_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors bnb's Linear4bit writes after `<module>.weight` (QuantState.as_dict(packed=True)).

        With prefix "<module>.weight." the keys are <p>absmax, <p>quant_map, [<p>nested_absmax,
        <p>nested_quant_map,] <p>quant_state.bitsandbytes__nf4; the last one is the UTF-8 bytes of
        json.dumps of the non-tensor fields, in bnb's order (bnb utils.pack_dict_to_tensor)."""
        meta = {"quant_type": "nf4", "blocksize": self.blocksize, "dtype": _FLOAT_DTYPES[self.dtype],
                "shape": list(self.shape)}
        out = {prefix + "absmax": self.absmax, prefix + "quant_map": self.code}
        if self.double_quant:
            out[prefix + "nested_absmax"] = self.nested_absmax
            out[prefix + "nested_quant_map"] = self.nested_code.clone()  # un-shared, as bnb does
            meta.update({"nested_blocksize": self.nested_blocksize, "nested_dtype": "float32",
                         "nested_offset": self.offset.item()})
        blob = json.dumps(meta).encode("utf-8")
        out[prefix + "quant_state.bitsandbytes__nf4"] = torch.tensor(list(blob), dtype=torch.uint8)
        return out

    @classmethod
    def from_bnb_dict(cls, d: dict[str, torch.Tensor], prefix: str = "", device=None) -> "NF4State":
        """Inverse of to_bnb_dict; reads a state dict that bnb saved. Errors name the key."""
        def get(name):
            key = prefix + name
            if key not in d:
                raise KeyError(f"missing key {key!r} in the bitsandbytes NF4 state dict")
            return d[key] if device is None else d[key].to(device)

        meta_key = prefix + "quant_state.bitsandbytes__nf4"
        if meta_key not in d:
            if prefix + "quant_state.bitsandbytes__fp4" in d:
                raise ValueError(f"{prefix}quant_state.bitsandbytes__fp4: FP4 weights are not supported, only NF4")
        blob = get("quant_state.bitsandbytes__nf4")
        try:
            meta = json.loads(bytes(blob.cpu().to(torch.uint8).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_key}: not UTF-8 JSON ({e})") from None
        for k in ("quant_type", "blocksize", "dtype", "shape"):
            if k not in meta:
                raise ValueError(f"{meta_key}: field {k!r} missing from {meta}")
        if meta["quant_type"] != "nf4":
            raise ValueError(f"{meta_key}: quant_type {meta['quant_type']!r}, only 'nf4' is supported")
        if meta["dtype"] not in _DTYPES_BY_NAME:
            raise ValueError(f"{meta_key}: dtype {meta['dtype']!r} not one of {sorted(_DTYPES_BY_NAME)}")
        _check_blocksize(meta["blocksize"])
        code = get("quant_map").float()
        if code.shape != (16,) or not torch.equal(code.cpu(), nf4_code()):
            raise ValueError(f"{prefix}quant_map: expected the 16-value NF4 codebook, got shape {tuple(code.shape)}")
        state = cls(absmax=get("absmax"), shape=torch.Size(meta["shape"]), dtype=_DTYPES_BY_NAME[meta["dtype"]],
                    blocksize=int(meta["blocksize"]), code=code)
        if "nested_offset" in meta:
            state.offset = torch.tensor(float(meta["nested_offset"]), dtype=torch.float32, device=code.device)
            state.nested_absmax = get("nested_absmax").float()
            state.nested_code = get("nested_quant_map").float()
            state.nested_blocksize = int(meta.get("nested_blocksize", NESTED_BLOCKSIZE))
        state.validate(prefix)
        return state

    def check_packed(self, packed: torch.Tensor) -> None:
        """The packed codes fit this state: uint8, two codes per byte."""
        if packed.dtype != torch.uint8:
            raise TypeError(f"packed NF4 weight must be uint8, got {packed.dtype}")
        if packed.numel() != (self.numel + 1) // 2:
            raise ValueError(f"packed NF4 weight has {packed.numel()} bytes, expected {(self.numel + 1) // 2} "
                             f"for shape {tuple(self.shape)}")

    def validate(self, prefix: str = "") -> None:
        """Shapes and dtypes consistent with shape/blocksize; errors name the (bnb) key."""
        nb = self.num_blocks
        want = torch.uint8 if self.double_quant else torch.float32
        if self.absmax.shape != (nb,) or self.absmax.dtype != want:
            raise ValueError(f"{prefix}absmax: expected {want} of shape ({nb},) for {self.numel} values in "
                             f"blocks of {self.blocksize}, got {self.absmax.dtype} {tuple(self.absmax.shape)}")
        if self.double_quant:
            nnb = -(-nb // self.nested_blocksize)
            if self.nested_absmax.shape != (nnb,):
                raise ValueError(f"{prefix}nested_absmax: expected shape ({nnb},), "
                                 f"got {tuple(self.nested_absmax.shape)}")
            if self.nested_code.shape != (256,):
                raise ValueError(f"{prefix}nested_quant_map: expected shape (256,), "
                                 f"got {tuple(self.nested_code.shape)}")


# ----------------------------------------------------------------------------------------------
# Quantize and dequantize
# ----------------------------------------------------------------------------------------------

def _check_blocksize(blocksize) -> None:
    if not isinstance(blocksize, int) or blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be a power of two from 32 to 4096 (what bitsandbytes accepts), "
                         f"got {blocksize!r}")


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes 0..15 -> uint8 ((n + 1) // 2, 1): byte j = codes[2j] << 4 | codes[2j + 1].
    An odd n is padded with code 7 (the value 0.0), as bnb does (it pads the *scaled* values with 0)."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), NF4_ZERO_CODE)])
    return ((codes[0::2] << 4) | codes[1::2]).unsqueeze(1)                   # ((n+1)//2, 1)


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 ((n + 1) // 2, 1) -> (n,) uint8 codes, high nibble first."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)[:n]      # (n,)


def quantize(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True
             ) -> tuple[torch.Tensor, NF4State]:
    """NF4-quantize `w` (any shape; fp32, fp16 or bf16) -> (packed uint8 ((n+1)//2, 1), NF4State).

    Same bytes as bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4",
    compress_statistics=double_quant) (see the module Note for the few edge cases)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"quantize expects a float32, float16 or bfloat16 tensor, got {w.dtype}")
    _check_blocksize(blocksize)
    n = w.numel()
    if n == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(w.shape)}")
    flat = w.detach().reshape(-1).float()                                    # (n,) fp32, row-major

    # 1. Blocks over the flattened tensor; the short last block is zero-padded, which leaves its
    #    absmax unchanged, and the padded values are cut off again below.
    nblocks = -(-n // blocksize)
    blocks = torch.nn.functional.pad(flat, (0, nblocks * blocksize - n)).view(nblocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                                        # (nblocks,) fp32
    # amax propagates NaN and Inf, so checking the block scales checks every value at 1/blocksize
    # of the cost (a full isfinite pass was 8% of quantizing on the CPU)
    if not torch.isfinite(absmax).all():
        raise ValueError(f"tensor of shape {tuple(w.shape)} holds NaN or Inf: NF4 cannot store it")

    # 2. Scale into [-1, 1] by multiplying with the fp32 reciprocal, as the CUDA kernel does.
    #    The clamp keeps an all-zero block at 0 * 1e38 = 0 (code 7) instead of 0 * inf = NaN.
    inv = 1.0 / absmax.clamp(min=_SMALLEST_ABSMAX)                           # (nblocks,)
    scaled = (blocks * inv[:, None]).clamp(-1, 1).reshape(-1)[:n]            # (n,)

    # 3. Nearest codebook value: count the midpoints strictly below x (a tie goes to the lower code).
    codes = torch.bucketize(scaled, nf4_midpoints(flat.device), right=False, out_int32=True)  # (n,) 0..15

    packed = pack(codes)                                                     # ((n+1)//2, 1) uint8
    state = NF4State(absmax=absmax, shape=w.shape, dtype=w.dtype, blocksize=blocksize,
                     code=nf4_code(flat.device))
    if double_quant:
        # 4. Double quantization (QLoRA section 3): the absmax values are positive and similar, so
        #    centre them on their mean first; the 8-bit code is symmetric around 0.
        offset = absmax.mean()                                               # () fp32
        nested_code = dynamic_map().to(flat.device)
        q_absmax, nested_absmax = quantize_blockwise_8bit(absmax - offset, nested_code, NESTED_BLOCKSIZE)
        state = replace(state, absmax=q_absmax, offset=offset, nested_absmax=nested_absmax,
                        nested_code=nested_code)
    return packed, state


def dequantize(packed: torch.Tensor, state: NF4State, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Inverse of quantize: code[index] * absmax in fp32, cast once to out_dtype (default: the
    original dtype), reshaped to the original shape. Equals bitsandbytes.functional.dequantize_4bit;
    with out_dtype it equals what bnb's 4-bit matmul uses (fp32 product cast straight to the
    compute dtype, not through the original dtype)."""
    n = state.numel
    state.check_packed(packed)
    # Each byte holds two codes, so there are only 256 possible value pairs: look them up per
    # byte (pair_table[b] = (code[b >> 4], code[b & 15])) instead of unpacking nibble by nibble.
    # Same values as code[unpack(packed, n)], about 2x faster on CPU.
    code = state.code.to(packed.device)
    pair_table = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)  # (256, 2)
    values = pair_table[packed.reshape(-1).long()].reshape(-1)[:n]           # (n,) fp32 in [-1, 1]
    absmax = state.block_absmax().to(packed.device)                          # (nblocks,) fp32
    nblocks, bs = state.num_blocks, state.blocksize
    if nblocks * bs != n:  # a short last block: pad to whole blocks, cut off again after
        values = torch.nn.functional.pad(values, (0, nblocks * bs - n))
    w = (values.view(nblocks, bs) * absmax[:, None]).reshape(-1)[:n]         # (n,) fp32
    return w.to(out_dtype or state.dtype).reshape(state.shape)


def bits_per_parameter(n: int, blocksize: int = 64, double_quant: bool = True,
                       include_codebooks: bool = True) -> float:
    """Stored bits per weight for an n-element tensor, counting what is actually serialized:
    packed codes (ceil(n/2) bytes) + absmax (4 bytes per block, or 1 with double quantization)
    + nested absmax (4 bytes per 256 blocks) + offset (4 bytes) and, if include_codebooks, the
    16- and 256-entry fp32 codebooks bnb stores beside every tensor. The JSON header is left out.

    Large n, blocksize 64: 4 + 32/64 = 4.5 bits; with double quantization 4 + 8/64 + 32/(64*256)
    = 4.127 bits (QLoRA section 3: "a reduction of 0.373 bits per parameter")."""
    _check_blocksize(blocksize)
    nblocks = -(-n // blocksize)
    nbytes = (n + 1) // 2
    if double_quant:
        nbytes += nblocks + 4 * -(-nblocks // NESTED_BLOCKSIZE) + 4
        nbytes += 4 * 256 if include_codebooks else 0
    else:
        nbytes += 4 * nblocks
    nbytes += 4 * 16 if include_codebooks else 0
    return nbytes * 8 / n
