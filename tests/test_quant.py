"""minift.quant.Linear4bit and quantize_model against bitsandbytes' real Linear4bit (CPU backend).

bnb's Linear4bit is run in train() mode: in eval mode on a CPU with AVX512-BF16, its first
forward repacks the weight into a CPU-specific layout with bf16 absmax (a different, lossy
computation), and a state dict saved afterwards is re-quantized from those bf16 scales.
Layers use in_features that are multiples of the blocksize: bnb's C++ CPU dequantize mis-scales
other row lengths (tests/test_nf4.py::test_bnb_cpu_dequantize_row_length_bug).
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

bnb = pytest.importorskip("bitsandbytes")
import bitsandbytes.functional as bnb_F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import BNB_REFERENCE_DEVICE  # noqa: E402
from minift import ModelConfig, Transformer  # noqa: E402
from minift.kernels import nf4  # noqa: E402
from minift.quant import Linear4bit, quantize_model, quantized_bytes  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def float_linear(in_f=128, out_f=96, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) / in_f ** 0.5)
        if bias:
            lin.bias.copy_(0.1 * torch.randn(out_f, generator=g))
    return lin.to(dtype)


def bnb_linear_from(lin: nn.Linear, double_quant: bool) -> "bnb.nn.Linear4bit":
    """bitsandbytes' own way: Params4bit holding the float weight, quantized by .to(device)."""
    dtype = lin.weight.dtype
    layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=dtype,
                              compress_statistics=double_quant, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, compress_statistics=double_quant,
                                     quant_type="nf4", blocksize=64, module=layer)
    if lin.bias is not None:
        layer.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return layer.to("cpu").train()


def bnb_linear_from_state_dict(sd: dict, in_f: int, out_f: int, dtype) -> "bnb.nn.Linear4bit":
    """Load a bnb-layout state dict into bnb, the way transformers does (Params4bit.from_prequantized)."""
    layer = bnb.nn.Linear4bit(in_f, out_f, bias="bias" in sd, compute_dtype=dtype, quant_type="nf4")
    stats = {k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")}
    layer.weight = bnb.nn.Params4bit.from_prequantized(sd["weight"], stats, device="cpu", module=layer)
    if "bias" in sd:
        layer.bias = nn.Parameter(sd["bias"].clone(), requires_grad=False)
    return layer.train()


def inputs(in_f, dtype, seed=1):
    return torch.randn(2, 5, in_f, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -------------------------------------------------------------------------------------------
# One layer against bnb.nn.Linear4bit
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("double_quant", [True, False], ids=["doublequant", "absmax32"])
def test_bnb_state_dict_loads_here(dtype, double_quant):
    lin = float_linear(dtype=dtype)
    theirs = bnb_linear_from(lin, double_quant)
    sd = theirs.state_dict()
    ours = Linear4bit(128, 96, bias=True, compute_dtype=dtype)
    ours.load_state_dict(sd)
    assert ours.weight_dtype == dtype and ours.double_quant == double_quant
    assert torch.equal(ours.dequantize(), bnb_F.dequantize_4bit(theirs.weight, theirs.weight.quant_state))
    x = inputs(128, dtype)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))  # same fp32 product, same cast, same F.linear
    # Saving it again gives bnb's state dict back, key for key and byte for byte.
    again = ours.state_dict()
    assert list(again) == list(sd)
    for k in sd:
        assert again[k].dtype == sd[k].dtype and torch.equal(again[k], sd[k]), k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("double_quant", [True, False], ids=["doublequant", "absmax32"])
def test_our_state_dict_loads_in_bnb(dtype, double_quant):
    lin = float_linear(dtype=dtype, seed=2)
    ours = Linear4bit.from_linear(lin, double_quant=double_quant)
    sd = ours.state_dict()
    theirs = bnb_linear_from_state_dict(sd, 128, 96, dtype)
    dev = BNB_REFERENCE_DEVICE   # bnb's reference kernels: CUDA where there is one (tests/conftest.py)
    theirs_dev, ours_dev, x = theirs.to(dev), Linear4bit.from_linear(lin, double_quant=double_quant).to(dev), \
        inputs(128, dtype, seed=3).to(dev)
    w_theirs = bnb_F.dequantize_4bit(theirs_dev.weight, theirs_dev.weight.quant_state)
    assert torch.equal(w_theirs, ours_dev.dequantize())
    with torch.no_grad():
        if dev == "cpu":
            assert torch.equal(theirs_dev(x), ours_dev(x))
        else:
            # On CUDA both are F.linear over the same dequantized weight, but bnb passes it as a
            # transposed view, and cuBLAS picks its kernel (and so the fp16/bf16 summation order)
            # by memory layout: ours equals F.linear on bnb's own weight bit for bit, and bnb's
            # output is that within a reordered sum (a few ulps of the output dtype).
            reference = F.linear(x, w_theirs, theirs_dev.bias)
            assert torch.equal(ours_dev(x), reference)
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
            torch.testing.assert_close(theirs_dev(x), reference, rtol=tol, atol=tol)
    back = theirs.to("cpu").state_dict()
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("double_quant", [True, False], ids=["doublequant", "absmax32"])
def test_from_linear_state_dict_equals_bnb_quantizing_the_same_weight(double_quant):
    lin = float_linear(dtype=torch.bfloat16, seed=4)
    sd, theirs = Linear4bit.from_linear(lin, double_quant=double_quant).state_dict(), bnb_linear_from(lin, double_quant).state_dict()
    assert list(sd) == list(theirs)
    # With double quantization bnb's 8-bit codes of absmax come from its C++ CPU step, which picks
    # a non-nearest code for ~0.2% of values (tests/test_nf4.py); none of this weight's 192 is
    # one of them, so the comparison can stay exact for every key.
    for k in theirs:
        assert sd[k].dtype == theirs[k].dtype and torch.equal(sd[k], theirs[k]), k


def test_safetensors_round_trip(tmp_path):
    lin = float_linear(dtype=torch.bfloat16, seed=5)
    ours = Linear4bit.from_linear(lin, double_quant=True)
    save_file(ours.state_dict(), str(tmp_path / "layer.safetensors"))
    again = Linear4bit(128, 96, compute_dtype=torch.bfloat16)
    again.load_state_dict(load_file(str(tmp_path / "layer.safetensors")))
    assert torch.equal(again.dequantize(), ours.dequantize())
    assert again.compute_dtype == torch.bfloat16 and again.bias.dtype == torch.bfloat16


def test_forward_and_backward_match_a_plain_linear_on_the_dequantized_weight():
    lin = float_linear(dtype=torch.float32, seed=6)
    ours = Linear4bit.from_linear(lin)
    ours.bias.requires_grad_(True)                   # LoRA's bias="all" would train it
    ref = nn.Linear(128, 96)
    with torch.no_grad():
        ref.weight.copy_(ours.dequantize())
        ref.bias.copy_(ours.bias)
    x = inputs(128, torch.float32, seed=7).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x_ref)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    # grad_y @ W in both; the bias gradient is a sum in a different order (1e-6 relative, fp32).
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ours.bias.grad, ref.bias.grad, rtol=1e-6, atol=1e-6)


def test_backward_keeps_no_float_weight():
    # The point of the NF4 operator: autograd saves the packed codes, never a dequantized (out, in) matrix.
    ours = Linear4bit.from_linear(float_linear(in_f=256, out_f=192, seed=8))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ours(inputs(256, torch.float32).requires_grad_(True))
    assert not any(t.shape == (192, 256) for t in saved)
    y.sum().backward()


def test_to_dtype_keeps_the_statistics_fp32():
    lin = float_linear(seed=9)
    ours = Linear4bit.from_linear(lin)
    w32 = ours.dequantize()
    ours.to(torch.bfloat16)
    assert ours.compute_dtype == torch.bfloat16 and ours.bias.dtype == torch.bfloat16
    for name in ("quant_map", "nested_absmax", "nested_quant_map", "nested_offset"):
        assert getattr(ours, name).dtype == torch.float32, name
    assert ours.weight.dtype == torch.uint8 and ours.absmax.dtype == torch.uint8
    assert torch.equal(ours.dequantize(), w32.to(torch.bfloat16))
    ours.to("meta")                                   # a device move reaches every buffer
    assert all(b.is_meta for b in ours.buffers())


def test_from_weight_is_the_merge_path():
    # LoRA merge into a 4-bit base: dequantize, add, quantize again (lossy, as peft's is).
    base = Linear4bit.from_linear(float_linear(seed=10))
    delta = 0.01 * torch.randn(96, 128, generator=torch.Generator().manual_seed(11))
    merged = Linear4bit.from_weight(base.dequantize() + delta, base.bias, blocksize=64, double_quant=True)
    packed, state = nf4.quantize(base.dequantize() + delta, blocksize=64, double_quant=True)
    assert torch.equal(merged.weight, packed) and torch.equal(merged.absmax, state.absmax)
    assert torch.equal(merged.dequantize(), nf4.dequantize(packed, state))
    assert torch.equal(merged.bias, base.bias) and not merged.bias.requires_grad


def test_load_errors_name_the_key():
    sd = Linear4bit.from_linear(float_linear(seed=12)).state_dict()
    small = Linear4bit(128, 64)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight\.quant_state\.bitsandbytes__nf4: shape \[96, 128\]"):
        small.load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: packed NF4 codes"):
        small.load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"weight\.absmax\""):
        Linear4bit(128, 96).load_state_dict({k: v for k, v in sd.items() if k != "weight.absmax"})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"weight\.extra\""):
        Linear4bit(128, 96).load_state_dict({**sd, "weight.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"found a torch.float32 tensor of shape \(96, 128\)"):
        Linear4bit(128, 96).load_state_dict(float_linear(seed=12).state_dict())
    fp4 = dict(sd)
    del fp4["weight.quant_state.bitsandbytes__nf4"]
    fp4["weight.quant_state.bitsandbytes__fp4"] = sd["weight.quant_state.bitsandbytes__nf4"]
    with pytest.raises(RuntimeError, match="Missing key"):
        Linear4bit(128, 96).load_state_dict(fp4)
    with pytest.raises(ValueError, match="only NF4"):
        nf4.NF4State.from_bnb_dict(fp4, "weight.")


# -------------------------------------------------------------------------------------------
# Whole models
# -------------------------------------------------------------------------------------------

def tiny_model(tied=True, seed=0) -> Transformer:
    cfg = ModelConfig(vocab_size=311, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, max_position_embeddings=128)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # unit-scale activations (as tests/conftest.py draws them), so errors show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / 64 ** 0.5)
    return model.eval()


def test_quantize_model_swaps_projections_only():
    model = tiny_model()
    keep = {n: p.detach().clone() for n, p in model.named_parameters() if not any(s in n for s in PROJECTIONS)}
    embed = model.model.embed_tokens.weight
    quantize_model(model)
    for i, layer in enumerate(model.model.layers):
        for name in PROJECTIONS:
            sub = layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            assert isinstance(getattr(sub, name), Linear4bit), f"layers.{i}.{name}"
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is embed is model.model.embed_tokens.weight
    after = dict(model.named_parameters())
    for n, p in keep.items():   # embeddings, head, norms and q/k/v biases' neighbours: untouched
        assert torch.equal(after[n], p), n
    # Trainable float parameters left: embeddings + norms only (the biases inside Linear4bit are frozen).
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(keep)


def test_quantized_logits_equal_a_model_with_nf4_rounded_weights():
    # Exact: the quantized model computes the same ops as a float model whose projection weights
    # were replaced by dequantize(quantize(w)).
    model, rounded = tiny_model(seed=1), tiny_model(seed=1)
    with torch.no_grad():
        for name, module in rounded.named_modules():
            if name.split(".")[-1] in PROJECTIONS:
                module.weight.copy_(nf4.dequantize(*nf4.quantize(module.weight, blocksize=64, double_quant=True)))
    quantize_model(model, blocksize=64, double_quant=True)
    ids = torch.randint(0, 311, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids), rounded(ids))


def test_quantized_logits_close_to_the_float_model():
    # What to expect: NF4 with blocks of 64 rounds Gaussian weights with an rms error of about 9%
    # of their rms (checked below per matrix). A random untrained model amplifies any weight
    # perturbation (here ~0.3 relative rms on the logits), so the meaningful yardstick is the same
    # model with Gaussian noise of the same rms added to each projection instead: NF4's error must
    # behave like noise of its size (measured ratio 0.92-1.08 over 4 seeds; bound 0.67-1.5).
    ref, model, noisy = tiny_model(seed=2), quantize_model(tiny_model(seed=2)), tiny_model(seed=2)
    g = torch.Generator().manual_seed(102)
    with torch.no_grad():
        for name, m in noisy.named_modules():
            if name.split(".")[-1] in PROJECTIONS:
                err = nf4.dequantize(*nf4.quantize(m.weight)) - m.weight
                rel_w = float(err.pow(2).mean().sqrt() / m.weight.pow(2).mean().sqrt())
                assert 0.07 < rel_w < 0.11, (name, rel_w)
                m.weight.add_(torch.randn(m.weight.shape, generator=g) * err.pow(2).mean().sqrt())
    ids = torch.randint(0, 311, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b, c = ref(ids), model(ids), noisy(ids)

    def rel(x):
        return float((x - a).pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
    assert 0.67 * rel(c) < rel(b) < 1.5 * rel(c), (rel(b), rel(c))


def test_quantize_model_frees_the_float_weights_and_counts_bytes():
    model = tiny_model(tied=False)
    q_weight = weakref.ref(model.model.layers[0].self_attn.q_proj.weight)
    n_proj = sum(m.weight.numel() for n, m in model.named_modules() if n.split(".")[-1] in PROJECTIONS)
    quantize_model(model, double_quant=True)
    gc.collect()
    assert q_weight() is None
    sizes = quantized_bytes(model)
    assert sizes["n_quantized"] == n_proj
    # Each layer: packed codes + uint8 absmax + nested absmax + 16 + 256 fp32 codebooks + offset
    # + its bias (fp32, q/k/v in Qwen2). Computed from the shapes, not from the tensors.
    expected = 0
    for n, m in model.named_modules():
        if isinstance(m, Linear4bit):
            k = m.in_features * m.out_features
            nblocks = -(-k // 64)
            expected += (k + 1) // 2 + nblocks + 4 * -(-nblocks // 256) + 4 * (16 + 256) + 4
            expected += 4 * m.out_features if m.bias is not None else 0
    assert sizes["quantized"] == expected
    cfg = model.config
    # embed + untied head + 2 * 2 norms + final norm, fp32, plus the rotary inv_freq buffer (hd/2 floats).
    other = 4 * (2 * cfg.vocab_size * cfg.hidden_size + (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
                 + cfg.head_dim // 2)
    assert sizes["other"] == other and sizes["total"] == expected + other


def test_quantize_model_targets_and_errors():
    model = quantize_model(tiny_model(), targets=["q_proj", "mlp.down_proj"])
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.split(".")[-1] in PROJECTIONS}
    assert {n for n, k in kinds.items() if k == "Linear4bit"} == {
        f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")}
    model = quantize_model(tiny_model(), targets=r"model\.layers\.1\..*_proj")
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 7
    with pytest.raises(ValueError, match="tied to the input embedding"):
        quantize_model(tiny_model(tied=True), targets=["lm_head"])
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        quantize_model(tiny_model(), targets=["nope"])
    with pytest.raises(ValueError, match="blocksize"):
        quantize_model(tiny_model(), blocksize=100)


def test_quantized_model_state_dict_round_trip_and_bf16():
    src = quantize_model(tiny_model(seed=3), compute_dtype=torch.bfloat16)
    dst = quantize_model(tiny_model(seed=4), compute_dtype=torch.bfloat16)
    dst.load_state_dict(src.state_dict())
    ids = torch.randint(0, 311, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(src(ids), dst(ids))
    sd = src.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8
    assert "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4" in sd
    # A whole bf16 model: compute in bf16, statistics stay fp32.
    model = quantize_model(tiny_model(seed=5).to(torch.bfloat16))
    q = model.model.layers[0].self_attn.q_proj
    assert q.compute_dtype == torch.bfloat16 and q.weight_dtype == torch.bfloat16
    with torch.no_grad():
        assert model(ids).dtype == torch.bfloat16
