"""minift.kernels.nf4 against the installed bitsandbytes (0.50.2, CPU backend): bytes, statistics,
dequantized values, and the edges where bnb's own backends disagree (see the Note in kernels/nf4.py).

Every comparison is exact (torch.equal): NF4 is a deterministic sequence of fp32 operations, and
we perform the same ones, so there is no rounding slack to allow for.
"""
from __future__ import annotations

import pytest
import torch

bnb_F = pytest.importorskip("bitsandbytes.functional")
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402

from conftest import BNB_REFERENCE_DEVICE  # noqa: E402
from minift.kernels import nf4  # noqa: E402

# bnb wraps its pure-PyTorch dequantize in torch.compile (which needs a C++ toolchain and tens of
# seconds per shape); __wrapped__ is the same function, uncompiled.
_bnb_default_dequantize_4bit = _dequantize_4bit_compute.__wrapped__
# bnb's pure-PyTorch ("default") kernels are registered under CompositeExplicitAutograd; on a CPU
# tensor the C++ CPU kernel wins the dispatch, so call the default one explicitly.
_DEFAULT_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


@pytest.fixture(autouse=True, scope="module")
def _no_torch_compile():
    """bnb's CPU dequantize_4bit falls back to a torch.compile'd function for odd row lengths;
    compiling takes many seconds per shape. Run it eagerly (same ops, same results)."""
    import torch._dynamo
    before = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = before


def bnb_default_quantize_blockwise(x, code, blocksize):
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(_DEFAULT_KEY, x, code, blocksize)


def bnb_quantize_4bit_default(w, blocksize, double_quant):
    """bitsandbytes.functional.quantize_4bit step by step, with its 8-bit step on bnb's default
    backend instead of the C++ CPU one (which is not round-to-nearest, see test below):
    returns (packed, absmax, offset, nested_absmax)."""
    packed, state = bnb_F.quantize_4bit(w, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
    if not double_quant:
        return packed, state.absmax, None, None
    offset = state.absmax.mean()                       # exactly what quantize_4bit computes
    q, nested_absmax = bnb_default_quantize_blockwise(state.absmax - offset, bnb_F.create_dynamic_map(), 256)
    return packed, q, offset, nested_absmax


def state_from_bnb(s) -> nf4.NF4State:
    """bnb's QuantState as an NF4State (same tensors)."""
    out = nf4.NF4State(absmax=s.absmax, shape=s.shape, dtype=s.dtype, blocksize=s.blocksize, code=s.code)
    if s.nested:
        out.offset, out.nested_absmax, out.nested_code = s.offset, s.state2.absmax, s.state2.code
    return out


def weight(shape, dtype, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


# -------------------------------------------------------------------------------------------
# Codebooks
# -------------------------------------------------------------------------------------------

def test_nf4_codebook_literal_equals_bnb_and_derivation():
    code = nf4.nf4_code()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert torch.equal(code, bnb_F.get_4bit_type("nf4", device="cpu"))
    assert code[nf4.NF4_ZERO_CODE] == 0.0
    # Our derivation (torch.special.ndtri) reproduces the table bit for bit ...
    assert torch.equal(nf4.normal_map(), code)
    # ... and so does bnb's own (scipy.stats.norm.ppf), whose 256 entries pad the 16 with zeros.
    pytest.importorskip("scipy")
    full = bnb_F.create_normal_map(offset=0.9677083, use_extra_value=True)   # (256,) sorted
    assert torch.equal(torch.cat([full[:8], full[-8:]]), code)


def test_nf4_midpoints_equal_cuda_thresholds():
    # The 15 constants of bnb's CUDA dQuantizeNF4 decision tree (csrc/kernels.cu), as fp32.
    cuda = torch.tensor([-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                         -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                         0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                         0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=torch.float32)
    assert torch.equal(nf4.nf4_midpoints(), cuda)


def test_dynamic_map_equals_bnb():
    ours = nf4.dynamic_map()
    assert ours.shape == (256,) and ours.dtype == torch.float32
    assert torch.equal(ours, bnb_F.create_dynamic_map(signed=True))
    assert bool((ours[1:] > ours[:-1]).all())  # sorted, distinct: bucketize over midpoints is valid


# -------------------------------------------------------------------------------------------
# Bytes and statistics against bitsandbytes.functional.quantize_4bit
# -------------------------------------------------------------------------------------------

SHAPES = [(7, 9), (1000,), (33, 65), (96, 128), (3, 5, 7), (257 * 64 + 3,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("double_quant", [False, True], ids=["absmax32", "doublequant"])
def test_quantize_matches_bnb(shape, dtype, double_quant):
    w = weight(shape, dtype, seed=sum(shape), scale=1.0 if dtype == torch.float16 else 0.02)
    n = w.numel()
    dev = BNB_REFERENCE_DEVICE   # bnb on CUDA where there is one (tests/conftest.py says why)
    # Both quantize on the same device: the double-quant offset is a mean, whose summation order
    # (and so its last bit, and the 8-bit codes after it) differs between CPU and CUDA reductions.
    packed, state = nf4.quantize(w.to(dev), blocksize=64, double_quant=double_quant)
    packed, state = packed.cpu(), state.to("cpu")
    bnb_packed, bnb_state = bnb_F.quantize_4bit(w.to(dev), blocksize=64, compress_statistics=double_quant,
                                                quant_type="nf4")
    theirs = bnb_F.dequantize_4bit(bnb_packed, bnb_state).reshape(shape).cpu()
    bnb_packed = bnb_packed.cpu()
    bnb_state.to("cpu")                                  # QuantState.to moves in place
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 1) // 2, 1)
    assert torch.equal(packed, bnb_packed)
    if double_quant:
        # offset and nested absmax: identical to the real quantize_4bit ...
        assert torch.equal(state.offset, bnb_state.offset)
        assert torch.equal(state.nested_absmax, bnb_state.state2.absmax)
        assert torch.equal(state.nested_code, bnb_state.state2.code)
        # ... and the 8-bit codes identical to bnb's on CUDA; on CPU to bnb's default backend (its
        # C++ CPU step can differ in a few codes; test_bnb_cpu_8bit_step_is_not_nearest pins that).
        q_absmax = bnb_state.absmax if dev == "cuda" else bnb_quantize_4bit_default(w, 64, True)[1]
        assert state.absmax.dtype == torch.uint8
        # Except in a nested block whose values are all zero (a tensor of one 4-bit block: absmax
        # minus its own mean): bnb's CUDA kernel scales by 1/0, gets NaN and stores code 0, where
        # we store the code of 0.0 (the module Note of kernels/nf4.py); both decode to the offset.
        zero = (state.nested_absmax == 0).repeat_interleave(state.nested_blocksize)[:state.absmax.numel()]
        assert torch.equal(state.absmax[~zero], q_absmax[~zero])
        if dev != "cuda":
            assert torch.equal(state.absmax, q_absmax)       # bnb's CPU backends store 0.0's code too
        else:
            assert torch.equal(state.block_absmax()[zero], state_from_bnb(bnb_state).block_absmax()[zero])
    else:
        assert state.absmax.dtype == torch.float32 and torch.equal(state.absmax, bnb_state.absmax)

    # Dequantize bnb's own bytes and state with our function: identical to bnb.
    ours_of_theirs = nf4.dequantize(bnb_packed, state_from_bnb(bnb_state))
    assert ours_of_theirs.shape == w.shape and ours_of_theirs.dtype == dtype
    assert torch.equal(ours_of_theirs, theirs)
    # And our own round trip.
    w_hat = nf4.dequantize(packed, state)
    assert w_hat.shape == w.shape and w_hat.dtype == dtype
    if not double_quant:
        assert torch.equal(w_hat, theirs)


@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_every_bnb_blocksize(blocksize):
    # 6000 values is a multiple of none of the blocksizes (a short last block every time), and
    # rows of 50 are not a multiple of any either.
    w = weight((120, 50), torch.bfloat16, seed=blocksize)
    packed, state = nf4.quantize(w, blocksize=blocksize, double_quant=False)
    bnb_packed, bnb_state = bnb_F.quantize_4bit(w, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
    assert torch.equal(packed, bnb_packed) and torch.equal(state.absmax, bnb_state.absmax)
    assert state.absmax.shape == (-(-6000 // blocksize),)
    # bnb's pure-PyTorch dequantize (its C++ one mis-scales rows that are not a multiple of the
    # blocksize, see test_bnb_cpu_dequantize_row_length_bug).
    ref = _bnb_default_dequantize_4bit(bnb_packed.reshape(-1), bnb_state.absmax, nf4.nf4_code(), blocksize,
                                       w.shape, w.dtype)
    assert torch.equal(nf4.dequantize(packed, state), ref)
    # Double quantization with every blocksize (4096 gives 2 blocks: a one-block nested level).
    packed_dq, state_dq = nf4.quantize(w, blocksize=blocksize, double_quant=True)
    _, q_absmax, offset, nested_absmax = bnb_quantize_4bit_default(w, blocksize, True)
    assert torch.equal(state_dq.absmax, q_absmax) and torch.equal(state_dq.offset, offset)
    assert torch.equal(state_dq.nested_absmax, nested_absmax)


def test_odd_count_pads_low_nibble_with_zero_code():
    w = weight((5, 7), torch.float32, seed=3)  # 35 values: the last byte holds one code
    packed, _ = nf4.quantize(w, double_quant=False)
    bnb_packed, _ = bnb_F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert packed.shape == (18, 1) and torch.equal(packed, bnb_packed)
    assert int(packed[-1, 0]) & 0x0F == nf4.NF4_ZERO_CODE  # bnb pads the scaled values with 0.0


def test_packing_high_nibble_first():
    # One block whose absmax is 1.0: the codebook values themselves quantize to their own codes.
    w = torch.cat([nf4.nf4_code(), nf4.nf4_code().flip(0)])             # codes 0..15, 15..0
    packed, state = nf4.quantize(w, double_quant=False)
    expected = [(2 * i) << 4 | (2 * i + 1) for i in range(8)] + [(15 - 2 * i) << 4 | (14 - 2 * i) for i in range(8)]
    assert packed.flatten().tolist() == expected
    assert torch.equal(nf4.unpack(packed, 32).long(), torch.cat([torch.arange(16), torch.arange(15, -1, -1)]))
    assert torch.equal(nf4.dequantize(packed, state), w)


def test_ties_go_to_the_lower_code():
    # Values exactly on the fp32 midpoints (block absmax 1.0, so no rescaling happens).
    mids = nf4.nf4_midpoints()
    w = torch.cat([torch.tensor([1.0]), mids])
    packed, _ = nf4.quantize(w, double_quant=False)
    codes = nf4.unpack(packed, 16)
    assert codes[1:].tolist() == list(range(15))                       # midpoint i -> code i
    bnb_packed, _ = bnb_F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, bnb_packed)


# -------------------------------------------------------------------------------------------
# Edges where bnb's backends disagree (documented in the kernels/nf4.py Note)
# -------------------------------------------------------------------------------------------

def test_all_zero_blocks_follow_the_cpu_backend():
    w = weight((4 * 64 + 10,), torch.float32, seed=5)
    w[64:128] = 0          # a full all-zero block
    w[-10:] = 0            # an all-zero short last block
    packed, state = nf4.quantize(w, double_quant=False)
    bnb_packed, bnb_state = bnb_F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    # Code 7 (the value 0.0) for every zero, as bnb's CPU backend; the CUDA kernel would write 0x00.
    assert torch.equal(packed, bnb_packed)
    assert set(packed[32:64].flatten().tolist()) == {0x77} and set(packed[-5:].flatten().tolist()) == {0x77}
    # absmax: 0 for both zero blocks here; bnb's default backend stores 1e-38 for the short one.
    assert state.absmax[1] == 0 and bnb_state.absmax[1] == 0
    assert state.absmax[-1] == 0 and bnb_state.absmax[-1] == torch.tensor(1e-38)
    assert torch.equal(state.absmax[:-1], bnb_state.absmax[:-1])
    theirs = bnb_F.dequantize_4bit(bnb_packed, bnb_state).reshape(w.shape)  # bnb's C++ path returns (1, n)
    assert torch.equal(nf4.dequantize(packed, state), theirs)
    assert bool((nf4.dequantize(packed, state)[64:128] == 0).all())


def test_constant_tensor_double_quant():
    # Every block has the same absmax, so absmax - offset is all zero: the nested block is all zero.
    w = torch.full((64, 64), 0.5)
    packed, state = nf4.quantize(w, double_quant=True)
    assert torch.equal(state.nested_absmax, torch.zeros(1))
    assert set(state.absmax.tolist()) == {127}                  # the 0.0 of the dynamic map
    assert torch.equal(nf4.dequantize(packed, state), w)
    bnb_packed, bnb_state = bnb_F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert torch.equal(packed, bnb_packed)
    # bnb's C++ CPU step divides 0 / 0 = NaN and writes code 0; both dequantize to 0 * code + 0.5.
    assert torch.equal(bnb_F.dequantize_4bit(bnb_packed, bnb_state), nf4.dequantize(packed, state))


def test_short_last_block_multiplies_by_the_reciprocal():
    # Found by search: with absmax a, x / a and x * (1 / a) round to opposite sides of the first
    # NF4 midpoint. A full block before it, then the short block [a, x].
    a, x = 1.4962565898895264, -1.2689697742462158
    w = torch.cat([weight((64,), torch.float32, seed=1), torch.tensor([a, x])])
    packed, state = nf4.quantize(w, double_quant=False)
    mid = nf4.nf4_midpoints()[0]
    assert torch.tensor(x) / torch.tensor(a) <= mid < torch.tensor(x) * (1 / torch.tensor(a))
    assert int(packed[-1, 0]) & 0x0F == 1        # ours (and the CUDA kernel's multiply): code 1
    bnb_packed, _ = bnb_F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert int(bnb_packed[-1, 0]) & 0x0F == 0    # bnb's default backend divides: code 0
    assert torch.equal(packed[:-1], bnb_packed[:-1])


def test_bnb_cpu_8bit_step_is_not_nearest():
    # bnb's C++ CPU quantize_blockwise (the double-quant step on CPU) misses the nearest code for
    # a few absmax values; ours (= bnb's default backend) is nearest: never farther, sometimes closer.
    w = weight((1024, 1024), torch.float32, seed=7)
    packed, state = nf4.quantize(w, double_quant=True)
    _, bnb_state = bnb_F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    true_absmax = w.reshape(-1, 64).abs().amax(1)
    err_ours = (state.block_absmax() - true_absmax).abs()
    err_bnb = (bnb_F.dequantize_blockwise(bnb_state.absmax, bnb_state.state2) + bnb_state.offset - true_absmax).abs()
    assert bool((err_ours <= err_bnb).all())
    differ = int((state.absmax != bnb_state.absmax).sum())
    assert differ == int((err_ours < err_bnb).sum())  # every differing code is a worse one on bnb's side
    assert differ < 0.01 * state.absmax.numel()


def test_bnb_cpu_dequantize_row_length_bug():
    # bnb's C++ dequantize_4bit assumes rows are a multiple of the blocksize; ours must not.
    w = weight((64, 64), torch.float32, seed=2)
    packed, state = nf4.quantize(w, blocksize=128, double_quant=False)
    ref = _bnb_default_dequantize_4bit(packed.reshape(-1), state.absmax, nf4.nf4_code(), 128, w.shape, w.dtype)
    ours = nf4.dequantize(packed, state)
    assert torch.equal(ours, ref)
    # A row-independent check: the same bytes read as one flat vector give the same values.
    flat_state = nf4.NF4State(absmax=state.absmax, shape=torch.Size((4096,)), dtype=torch.float32, blocksize=128)
    assert torch.equal(nf4.dequantize(packed, flat_state).reshape(64, 64), ours)


# -------------------------------------------------------------------------------------------
# Accuracy, dtypes, serialization, storage math, errors
# -------------------------------------------------------------------------------------------

def test_dequantize_error_is_bounded_by_half_the_widest_gap():
    # Round-to-nearest: |w - w_hat| <= half the widest NF4 gap (the one next to -1: 0.1519) times
    # the block's absmax; with double quantization the absmax itself is off by at most half the
    # widest gap of the 8-bit map times the nested scale, and that adds (|code| <= 1) on top.
    # The 1e-6 relative slack is fp32 rounding of the products.
    w = weight((256, 512), torch.float32, seed=4)
    absmax = w.reshape(-1, 64).abs().amax(1)                                        # (2048,)
    half_gap4 = float((nf4.nf4_code()[1:] - nf4.nf4_code()[:-1]).max() / 2)
    for double_quant in (False, True):
        packed, state = nf4.quantize(w, double_quant=double_quant)
        err = (nf4.dequantize(packed, state) - w).reshape(-1, 64).abs().amax(1)     # (2048,)
        absmax_err = (state.block_absmax() - absmax).abs()
        if double_quant:
            code8 = state.nested_code
            half_gap8 = float((code8[1:] - code8[:-1]).max() / 2)
            nested_scale = state.nested_absmax.repeat_interleave(256)[: absmax.numel()]
            assert bool((absmax_err <= half_gap8 * nested_scale * (1 + 1e-6)).all())
            assert 0 < float(absmax_err.max())
        else:
            assert float(absmax_err.max()) == 0.0
        assert bool((err <= (half_gap4 * absmax + absmax_err) * (1 + 1e-6)).all())


def test_out_dtype_casts_the_fp32_product_once():
    w = weight((64, 96), torch.float32, seed=8)
    packed, state = nf4.quantize(w)
    fp32 = nf4.dequantize(packed, state)
    assert torch.equal(nf4.dequantize(packed, state, out_dtype=torch.bfloat16), fp32.to(torch.bfloat16))


def test_bnb_dict_round_trip_is_byte_identical():
    w = weight((96, 128), torch.bfloat16, seed=9)
    for double_quant in (False, True):
        _, bnb_state = bnb_F.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
        theirs = bnb_state.as_dict(packed=True)
        ours = nf4.NF4State.from_bnb_dict(theirs).to_bnb_dict()
        assert list(ours) == list(theirs)  # same keys, same order
        for k in theirs:
            assert torch.equal(ours[k], theirs[k]), k  # includes the JSON bytes
        # and with a key prefix, the way a state dict holds them
        pre = {"m.weight." + k: v for k, v in theirs.items()}
        state = nf4.NF4State.from_bnb_dict(pre, prefix="m.weight.")
        assert list(state.to_bnb_dict("m.weight.")) == list(pre)


def _stored_bits(w, double_quant):
    packed, state = nf4.quantize(w, blocksize=64, double_quant=double_quant)
    tensors = [packed] + [v for k, v in state.to_bnb_dict().items() if "quant_state" not in k]
    nbytes = sum(t.numel() * t.element_size() for t in tensors) + (state.offset.element_size() if double_quant else 0)
    return nbytes * 8 / w.numel()


def test_bits_per_parameter_from_stored_tensors():
    # 4096 x 4096: 4 + 8/64 + 32/(64*256) = 4.127 with double quantization, 4 + 32/64 = 4.5 without.
    # The offset (one fp32, kept in the JSON header) is added by hand; the rest is the stored tensors.
    w = weight((4096, 4096), torch.bfloat16, seed=10)
    dq = _stored_bits(w, True)
    plain = _stored_bits(w, False)
    assert abs(dq - 4.127) < 0.001, dq
    assert abs(plain - 4.5) < 0.001, plain
    assert dq == nf4.bits_per_parameter(w.numel(), 64, True)
    assert plain == nf4.bits_per_parameter(w.numel(), 64, False)
    assert abs(plain - dq - 0.373) < 0.001  # QLoRA: "a reduction of 0.373 bits per parameter"


@pytest.mark.parametrize("blocksize", [0, 16, 48, 100, 8192, 64.0, "64"])
def test_bad_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        nf4.quantize(torch.randn(128), blocksize=blocksize)


def test_bad_inputs():
    with pytest.raises(TypeError, match="int64"):
        nf4.quantize(torch.arange(128))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nf4.quantize([0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        nf4.quantize(torch.zeros(0, 4))
    for value in (float("nan"), float("inf"), float("-inf")):
        for where in (3, 64, 129):       # first block, a block's first value, the short last block
            bad = torch.randn(130)
            bad[where] = value
            with pytest.raises(ValueError, match=r"shape \(130,\) holds NaN or Inf"):
                nf4.quantize(bad)
    packed, state = nf4.quantize(torch.randn(10, 10))
    with pytest.raises(ValueError, match=r"49 bytes, expected 50 for shape \(10, 10\)"):
        nf4.dequantize(packed[:49], state)
    with pytest.raises(TypeError, match="uint8"):
        nf4.dequantize(packed.float(), state)
    d = state.to_bnb_dict("w.")
    d["w.absmax"] = d["w.absmax"][:1]
    with pytest.raises(ValueError, match=r"w\.absmax: expected torch.uint8 of shape \(2,\)"):
        nf4.NF4State.from_bnb_dict(d, "w.")
    d = state.to_bnb_dict("w.")
    del d["w.nested_quant_map"]
    with pytest.raises(KeyError, match="w.nested_quant_map"):
        nf4.NF4State.from_bnb_dict(d, "w.")
