"""The decoder, loaded through load_pretrained, against transformers' Qwen2/Llama (the real thing).

Tolerances, and why:
- fp32, atol = rtol = 1e-5: the same math in a different operation order (SDPA vs explicit
  softmax, fused vs separate matmuls); fp32 rounding (2^-24 relative) accumulated over two
  layers and a 64-wide head stays near 1e-6 on logits of unit scale (measured: at most 3e-6).
- bf16: see test_bf16_matches_transformers_bf16.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import minift
from minift.config import ModelConfig
from minift.kernels.cross_entropy import linear_cross_entropy
from minift.model import KVCache, Transformer

FP32 = dict(atol=1e-5, rtol=1e-5)  # same math, different op order, fp32 (module docstring)


def _ids(batch=2, seq=19, vocab=311, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- logits vs transformers
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_logits_match_transformers_fp32(tiny_hf_checkpoint, tiny_variants, impl):
    directory, hf = tiny_hf_checkpoint(**tiny_variants)
    model = minift.load_pretrained(directory, dtype="float32", device="cpu")
    model.set_attention(impl)
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits                                        # (B, T, V), HF eager attention
        got = model(ids)
    assert got.shape == expected.shape == (2, 19, 311)
    torch.testing.assert_close(got, expected, **FP32)
    assert model.config.name_or_path == directory
    # The rotary frequencies were recomputed (non-persistent buffer), in fp32, equal to HF's.
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, hf.model.rotary_emb.inv_freq, atol=0, rtol=0)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tiny_variants["tied"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_bf16_matches_transformers_bf16(tiny_hf_checkpoint, impl):
    """bf16 minift vs bf16 transformers, each loaded from the same fp32 file with dtype=bfloat16.

    Bound: one bf16 ulp at the largest logit magnitude (2^(e-7) for |logit| in [2^e, 2^(e+1))),
    no rtol. The two run the same operations in the same order (RMSNorm in fp32, cast back before
    the weight; cos/sin in fp32 then cast; softmax in fp32), so on one machine they agree to the
    bit (measured on this CPU: max difference 0.0); the ulp leaves room for a backend picking a
    different matmul kernel for the head. bf16 itself moves these logits ~4-6 ulps away from
    fp32 (measured 0.07-0.12), and the classic bf16 mistake of rounding inv_freq to bf16 moves
    them several ulps too: the assertion at the end shows the bound catches that."""
    from transformers import AutoModelForCausalLM

    directory, hf32 = tiny_hf_checkpoint(arch="qwen2", tied=True, n_kv=2)
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, attn_implementation=impl).eval()
    model = minift.load_pretrained(directory, dtype="bfloat16", device="cpu")
    model.set_attention(impl)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32   # never rounded to bf16
    ids = _ids(seq=33)
    with torch.no_grad():
        expected = hf(ids).logits.float()
        got = model(ids).float()
        fp32 = hf32(ids).logits
    ulp = 2.0 ** (math.floor(math.log2(expected.abs().max().item())) - 7)
    torch.testing.assert_close(got, expected, atol=ulp, rtol=0)
    assert (got - fp32).abs().max() > 2 * ulp, "bf16 should differ visibly from fp32, or the test proves nothing"

    # Sensitivity: HF's model cast with .to(bfloat16) rounds its inv_freq buffer to bf16.
    with torch.no_grad():
        rounded = hf32.to(torch.bfloat16)(ids).logits.float()
    assert (rounded - expected).abs().max() > ulp


def test_eager_and_sdpa_agree(tiny_hf_checkpoint):
    directory, _ = tiny_hf_checkpoint(arch="llama", tied=False, n_kv=1)
    model = minift.load_pretrained(directory, dtype="float32", device="cpu")
    ids = _ids(seq=25)
    with torch.no_grad():
        model.set_attention("eager")
        eager = model(ids)
        model.set_attention("sdpa")
        sdpa = model(ids)
    torch.testing.assert_close(sdpa, eager, **FP32)


# ---------------------------------------------------------------------- KV cache and packing
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", [dict(arch="qwen2", n_kv=2), dict(arch="llama", tied=False, n_kv=1, head_dim=32)])
def test_kv_cache_decoding_equals_full_forward(tiny_hf_checkpoint, impl, variant):
    directory, _ = tiny_hf_checkpoint(**variant)
    model = minift.load_pretrained(directory, dtype="float32", device="cpu")
    model.set_attention(impl)
    ids = _ids(seq=16)
    with torch.no_grad():
        full = model(ids)                                               # (B, 16, V)
        cache = KVCache(model.config, batch=2, max_len=20, device="cpu", dtype=torch.float32)
        steps = [model(ids[:, :7], cache=cache)]                        # prefill 7 tokens
        steps.append(model(ids[:, 7:10], cache=cache))                  # a 3-token chunk on top of the cache
        for t in range(10, 16):                                         # then one token at a time
            steps.append(model(ids[:, t:t + 1], cache=cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_segments_equal_separate_forwards(tiny_hf_checkpoint, impl):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", n_kv=1)
    model = minift.load_pretrained(directory, dtype="float32", device="cpu")
    model.set_attention(impl)
    rows = [[5, 7, 4], [9, 3, 4]]                                       # segment lengths per packed row
    ids = _ids(seq=16, seed=3)
    segment_ids = torch.tensor([[i for i, n in enumerate(r) for _ in range(n)] for r in rows])   # (2, 16)
    position_ids = torch.tensor([[p for n in r for p in range(n)] for r in rows])               # restart at 0
    with torch.no_grad():
        packed = model(ids, segment_ids=segment_ids, position_ids=position_ids)                 # (2, 16, V)
        for b, lengths in enumerate(rows):
            start = 0
            for n in lengths:
                alone = model(ids[b:b + 1, start:start + n])                                    # (1, n, V)
                torch.testing.assert_close(packed[b:b + 1, start:start + n], alone, **FP32)
                start += n
    # Without the segment mask the later segments would see the earlier ones: the test can fail.
    with torch.no_grad():
        leaky = model(ids, position_ids=position_ids)
    assert (leaky[0, 5:12] - packed[0, 5:12]).abs().max() > 1e-3


# ---------------------------------------------------------------------- sizes of the presets
PUBLISHED = {  # total parameters (reference/qwen.md: HF API and index total_size / 2)
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-360m": 361_821_120,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = ModelConfig.preset(name)
    with torch.device("meta"):  # shapes only: a 7B model costs no memory here
        model = Transformer(cfg)
        hf_cfg = cfg.to_hf_dict()
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_cfg))
    assert model.num_params() == PUBLISHED[name]
    assert cfg.num_params() == PUBLISHED[name]
    assert sum(p.numel() for p in hf.parameters()) == PUBLISHED[name]   # transformers built from our config


@pytest.mark.parametrize("arch", ["MistralForCausalLM", "GPT2LMHeadModel"])
def test_from_hf_refuses_unsupported_architecture(tmp_path, arch):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["%s"], "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, '
        '"num_hidden_layers": 2, "num_attention_heads": 4}' % arch)
    with pytest.raises(ValueError, match=arch) as info:
        ModelConfig.from_hf(str(tmp_path))
    assert "config.json" in str(info.value) and "Qwen2ForCausalLM" in str(info.value)


# ---------------------------------------------------------------------- chunked linear + CE
@pytest.mark.parametrize("chunk", [1, 7, 16, 45, 1000])   # 7 does not divide N = 45; 1000 > N (one chunk)
def test_linear_cross_entropy_matches_autograd(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 15, 24, generator=g, requires_grad=True)   # (B, T, h), N = 45 tokens
    weight = torch.randn(53, 24, generator=g, requires_grad=True)      # (V, h)
    targets = torch.randint(0, 53, (3, 15), generator=g)
    targets[0, :4] = -100                                               # ignored: prompt tokens, padding
    targets[2, 9] = -100
    # Reference: full logits, F.cross_entropy, autograd.
    ref = F.cross_entropy((hidden @ weight.t()).float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    ref_dh, ref_dw = torch.autograd.grad(ref, (hidden, weight))
    got = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    dh, dw = torch.autograd.grad(got, (hidden, weight))
    # fp32; chunks change only the order of the sum over tokens: 1e-6 relative.
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dh, ref_dh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dw, ref_dw, atol=1e-6, rtol=1e-5)
    assert dh[0, :4].abs().max() == 0                                   # ignored tokens get no gradient


def test_model_loss_equals_cross_entropy_on_logits(tiny_hf_checkpoint):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=True)
    model = minift.load_pretrained(directory, dtype="float32", device="cpu")
    model.loss_chunk_size = 10                                          # does not divide B*T = 38
    ids = _ids()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    targets[1, :5] = -100
    loss = model(ids, targets)
    (dw,) = torch.autograd.grad(loss, model.model.embed_tokens.weight)
    ref = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100)
    (ref_dw,) = torch.autograd.grad(ref, model.model.embed_tokens.weight)
    torch.testing.assert_close(loss, ref, **FP32)
    torch.testing.assert_close(dw, ref_dw, atol=1e-6, rtol=1e-5)        # tied: embedding + head gradients


def test_linear_cross_entropy_all_ignored_is_nan_like_torch():
    # No token to average over: F.cross_entropy's mean is NaN, and so is ours (checking on the host
    # would stall the GPU every step; the train loop refuses such a batch before it is sent).
    hidden, weight, targets = torch.randn(4, 8), torch.randn(10, 8), torch.full((4,), -100)
    assert torch.isnan(F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100))
    assert torch.isnan(linear_cross_entropy(hidden, weight, targets))


def test_compiled_layers_match_eager_with_lora():
    """Transformer.compile_layers (what the GPU benchmarks' fast and lean rows run) against the
    eager model, LoRA on every projection: loss and adapter gradients, fp32 on CPU. TorchInductor
    fuses the elementwise ops and may reorder fp32 sums: 1e-5 relative (measured ~1e-7)."""
    from minift import lora
    cfg = minift.ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    compiled, eager = minift.Transformer(cfg), minift.Transformer(cfg)
    lora.add_lora(compiled, r=4, alpha=8, init=False)           # non-zero B: every adapter matters
    lora.add_lora(eager, r=4, alpha=8, init=False)
    eager.load_state_dict(compiled.state_dict())
    compiled.compile_layers()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (compiled, eager):
        loss = model(ids, ids.roll(-1, dims=1))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        if a.requires_grad:
            # A reordered fp32 sum errs relative to the size of its terms, not of its (possibly
            # cancelled) result: near-zero elements get an absolute bound of 1e-5 of the largest.
            scale = float(b.grad.abs().max())
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
