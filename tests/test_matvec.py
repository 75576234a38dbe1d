"""kernels/matvec.py: the compiled CPU matrix-vector kernel against float64 truth, dispatch.linear's
rules, and generate with the kernel on vs off (and against transformers) on a tiny model; the
model stays plain: generate's DecodeLinear stands in for its projections only during model calls.

Every distinct (weight shape, dtype, bias) compiles one kernel (~0.05-0.7 s, plus ~4 s for the
first in a process), so the tests share one odd shape for the kernel checks and one tiny model.
Tolerances are max |got - truth| / max |truth|, with the reason beside each; F.linear (the
reference) must meet the same bound, so the bound is about the dtype, not about the kernel.
"""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from minift import lora
from minift.config import ModelConfig
from minift.generate import DecodeLinear, decode_projections, generate_ids, stream_ids, use_fast_matvec
from minift.kernels import dispatch, matvec
from minift.model import Transformer

OUT, IN = 301, 257  # neither a multiple of the 16/32-lane vectors: the loops' tails run too
TOL = {
    torch.float32: 1e-5,     # fp32 eps 1.2e-7; 257 products summed in another order than MKL: ~1e-7 seen
    torch.bfloat16: 4e-3,    # one rounding to bf16 after an fp32 sum: half an ulp, 2^-8 = 3.9e-3 relative
}


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    return ((got.double() - truth).abs().max() / truth.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matvec_cpu_matches_float64(dtype, with_bias):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(OUT, IN, generator=g).to(dtype)
    bias = torch.randn(OUT, generator=g).to(dtype) if with_bias else None
    for shape in [(IN,), (1, IN), (1, 1, IN)]:  # a row as nn.Linear may see it: (h), (B, h), (B, T, h)
        x = torch.randn(shape, generator=g).to(dtype)
        # the truth from the same (already rounded) inputs, in float64
        truth = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
        with torch.inference_mode():
            got = matvec.matvec_cpu(x, weight, bias)
            ref = matvec.matvec_reference(x, weight, bias)
        assert got.shape == truth.shape and got.dtype == dtype
        assert rel_err(got, truth) <= TOL[dtype], (shape, rel_err(got, truth))
        assert rel_err(ref, truth) <= TOL[dtype]  # the bound is one F.linear meets as well
    assert ((OUT, IN), dtype, with_bias) in matvec.compiled_shapes()  # the kernel ran, not the fallback


def _spy(monkeypatch, answer=None) -> list:
    """Record every call that reaches the compiled kernel, and run it (or `answer` instead)."""
    calls, real = [], answer or matvec.matvec_cpu

    def spy(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)
    monkeypatch.setattr(matvec, "matvec_cpu", spy)
    return calls


def test_dispatch_uses_the_kernel_only_where_it_runs_and_pays(monkeypatch):
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(OUT, IN, generator=g), torch.randn(OUT, generator=g)
    row = torch.randn(1, 1, IN, generator=g)

    with torch.no_grad():
        y = dispatch.linear(row, weight, bias)                 # CPU, no grad, one row: the kernel
    assert calls == [(OUT, IN)]
    torch.testing.assert_close(y, F.linear(row, weight, bias), rtol=1e-5, atol=1e-5)

    def falls_back(x, w, b=None):
        n = len(calls)
        out = dispatch.linear(x, w, b)
        return len(calls) == n and torch.equal(out.detach(), F.linear(x, w, b).detach())

    with torch.no_grad():
        assert falls_back(torch.randn(1, 2, IN, generator=g), weight, bias)       # two rows (a prefill)
        assert falls_back(row.half(), weight.half(), bias.half())                 # fp16: not measured
        assert falls_back(torch.randn(1, 64), torch.randn(64, 64))                # 16 KiB: below MIN_WEIGHT_BYTES
        assert falls_back(row, torch.randn(IN, OUT, generator=g).t(), bias)        # non-contiguous weight
        with pytest.raises(RuntimeError, match="dtype"):   # mixed dtypes: F.linear's own error
            dispatch.linear(row, weight.bfloat16(), bias)
    w_grad = weight.clone().requires_grad_()
    y = dispatch.linear(row, w_grad, bias)                     # autograd must record: F.linear
    assert y.grad_fn is not None and falls_back(row, w_grad, bias)
    with torch.no_grad():                                      # not on CPU (meta stands in for CUDA/MPS)
        assert dispatch.linear(row.to("meta"), weight.to("meta"), bias.to("meta")).device.type == "meta"
    assert len(calls) == 1
    monkeypatch.setenv("MINIFT_KERNELS", "reference")
    with torch.no_grad():
        assert falls_back(row, weight, bias)


# ---------------------------------------------------------------------- generate, on vs off
VOCAB = 320


@pytest.fixture(scope="module")
def pair():
    """A tiny random Qwen2 (q/k/v biases, tied head) in transformers and the same weights in minift."""
    # imported here, not above: importing transformers takes ~6 s of CPU, which the tour's stop 15
    # (its tests without this fixture) would pay for nothing
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      initializer_range=0.2)).eval()
    ours = Transformer(ModelConfig.from_hf_dict(hf.config.to_dict()))
    ours.load_state_dict(hf.state_dict())
    return hf, ours.eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))


def test_greedy_ids_identical_with_the_kernel_on_and_off(pair, prompt, monkeypatch):
    hf, ours = pair
    monkeypatch.setattr(matvec, "MIN_WEIGHT_BYTES", 0)  # every projection of the tiny model takes the kernel
    calls = _spy(monkeypatch)
    off = generate_ids(ours, prompt, max_new_tokens=24, fast_matvec=False)
    assert calls == []
    on = generate_ids(ours, prompt, max_new_tokens=24, fast_matvec=True)
    # 23 decode steps x (2 layers x 7 projections + head), and the prefill's head, which sees only the
    # last position (logits_to_keep=1); the prefill's projections have 9 rows and keep F.linear.
    assert len(calls) == 23 * (2 * 7 + 1) + 1
    assert torch.equal(on, off)
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=24,
                       pad_token_id=0, eos_token_id=None)
    assert torch.equal(on, want)
    assert len(set(on[0, 9:].tolist())) > 3  # not a degenerate repeat-one-token run


def test_lora_bases_take_the_kernel_adapters_do_not(pair, prompt, monkeypatch):
    _, base = pair
    model = Transformer(base.config)
    model.load_state_dict(base.state_dict())
    torch.manual_seed(3)
    lora.add_lora(model, r=4, alpha=8, targets=["q_proj", "down_proj"], init=False)  # a non-zero update
    monkeypatch.setattr(matvec, "MIN_WEIGHT_BYTES", 0)
    calls = _spy(monkeypatch)
    off = generate_ids(model, prompt, max_new_tokens=12, fast_matvec=False)
    on = generate_ids(model, prompt, max_new_tokens=12, fast_matvec=True)
    assert torch.equal(on, off)
    # q_proj and down_proj run LoRALinear.forward, which sends its base layer through the kernel too
    # (its r=4 adapter matmuls stay F.linear): all 7 projections + the head, as without LoRA
    assert len(calls) == 11 * (2 * 7 + 1) + 1
    assert (64, 128) in calls and (4, 64) not in calls and (64, 4) not in calls


def test_auto_compiles_only_for_big_cpu_models(pair, monkeypatch):
    _, ours = pair
    assert use_fast_matvec(ours) is False            # ~0.2 MB: the compile would never pay
    assert use_fast_matvec(ours, True) is True and use_fast_matvec(ours, False) is False
    monkeypatch.setattr(importlib.import_module("minift.generate"), "FAST_MATVEC_MIN_BYTES", 1)
    assert use_fast_matvec(ours) is True
    assert use_fast_matvec(Transformer(ours.config).to("meta")) is False  # not on CPU


def test_the_caller_sees_the_plain_model_between_tokens(monkeypatch):
    # What the caller sees is this test's point, not the kernel's numbers (the greedy test above
    # checks those): the spy records each call that reaches the kernel and answers with F.linear, so
    # no kernel is built (a build: ~12 s of CPU on the 2-core machine from an empty cache, and ~7 s
    # each even from a warm one on the H200 host's torch 2.11), and the model is minift's alone (the
    # `pair` fixture imports transformers: ~6 s). The tour runs this test within 30 s of CPU.
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(matvec, "MIN_WEIGHT_BYTES", 0)
    built = len(matvec.compiled_shapes())
    calls = _spy(monkeypatch, answer=matvec.matvec_reference)
    plain = dict(ours.named_modules())
    for _ in stream_ids(ours, prompt, max_new_tokens=5, fast_matvec=True):
        assert dict(ours.named_modules()) == plain  # the same module objects, no DecodeLinear
    assert dict(ours.named_modules()) == plain and len(calls) == 4 * (2 * 7 + 1) + 1  # yet the kernel was called
    assert not any(isinstance(m, DecodeLinear) for m in ours.modules())
    assert len(matvec.compiled_shapes()) == built


def test_decode_swaps_leave_hooked_compiled_and_adapter_layers_alone(pair, prompt, monkeypatch):
    _, base = pair
    model = Transformer(base.config)
    model.load_state_dict(base.state_dict())
    lora.add_lora(model, r=4, alpha=8, targets=["q_proj"])
    names = {(type(parent).__name__, name) for parent, name, _ in decode_projections(model)}
    assert ("LoRALinear", "base_layer") in names and ("Transformer", "lm_head") in names
    assert not {("LoRALinear", "lora_A"), ("LoRALinear", "lora_B")} & names
    assert len(decode_projections(model)) == 2 * 7 + 1

    seen = []  # a forward hook belongs to the original module: that layer keeps it and F.linear
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert len(decode_projections(model)) == 2 * 7
    monkeypatch.setattr(matvec, "MIN_WEIGHT_BYTES", 0)
    generate_ids(model, prompt, max_new_tokens=3, fast_matvec=True)
    assert len(seen) == 3  # prefill + 2 decode steps

    model.compile_layers()  # compiled layers keep their modules (a swap would make them recompile)
    assert [name for _, name, _ in decode_projections(model)] == ["lm_head"]


def test_model_file_is_plain():
    """The issue: minift/model.py holds the math only; decode speed lives in minift/generate.py."""
    import inspect
    import minift.model
    source = inspect.getsource(minift.model)
    assert "matvec" not in source and "project(" not in source
