"""The memory math against the real thing: parameter and buffer bytes of the real modules,
AdamW's real state, the tensors autograd really saves, and the CPU allocator's real peak.

CPU runs the PyTorch reference kernels (kernels/dispatch.py), so these tests check the
estimate's device="cpu" branch; the CUDA branch (Triton kernels, foreach AdamW) shares every
formula except the ones named there, and scripts/memory_check.py --grid h200 checks it on a GPU.
"""
import os
import subprocess
import sys

import pytest
import torch

from minift import flops, memory, measure
from minift.config import ModelConfig
from minift.model import Transformer

TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def _bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if t.untyped_storage().data_ptr() not in seen or t.is_meta:
            seen.add(t.untyped_storage().data_ptr())
            total += t.numel() * t.element_size()
    return total


def _meta_model(cfg, dtype=torch.bfloat16):
    with torch.device("meta"):
        m = Transformer(cfg)
    return m.to(dtype)


# ---------------------------------------------------------------------------- exact byte counts
@pytest.mark.parametrize("preset", ["qwen2.5-0.5b", "qwen2.5-7b", "smollm2-360m"])
def test_weight_bytes_equal_the_real_model(preset):
    cfg = ModelConfig.preset(preset)
    model = _meta_model(cfg)
    inv = model.model.rotary_emb.inv_freq
    real = sum(p.numel() * 2 for p in model.parameters()) + inv.numel() * inv.element_size()
    est = memory.estimate(cfg, "full", 1, 8)
    assert est.weights_total == real                         # exact: numel * bytes, nothing else
    assert est.gradients == sum(p.numel() * 2 for p in model.parameters())
    assert est.optimizer_states == 8 * sum(p.numel() for p in model.parameters())


def test_lora_param_count_matches_add_lora_on_meta():
    from minift import lora
    cfg = ModelConfig.preset("qwen2.5-0.5b")
    model = _meta_model(cfg)
    lora.add_lora(model, r=16, alpha=32, targets="all-linear")
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert real == 8_798_208                                  # reference/memory-and-speed.md: 8.8M
    assert memory.lora_param_count(cfg, 16) == real
    est = memory.estimate(cfg, "lora", 1, 8)
    assert sum(memory.trainable_numels(cfg, "lora", 16)) == real
    assert est.lora["grads"] == 4 * real and est.lora["AdamW m, v"] == 8 * real


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_equal_linear4bit_buffers(double_quant):
    from minift import quant
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(cfg).to(torch.bfloat16)
    quant.quantize_model(model, blocksize=64, double_quant=double_quant)
    real = _bytes(list(model.parameters()) + list(model.buffers()))
    est = memory.estimate(cfg, "qlora", 1, 8, double_quant=double_quant)
    # exact: packed codes, absmax, nested absmax, both codebooks, the offset, bf16 biases and norms
    assert est.weights_total == real


@pytest.mark.parametrize("master", [False, True])
def test_optimizer_state_bytes_equal_minift_adamw(master):
    from minift.optim import AdamW, param_groups
    cfg = ModelConfig(**TINY)
    model = Transformer(cfg).to(torch.bfloat16)
    opt = AdamW(param_groups(model, 0.0), master_weights=master)
    model(torch.randint(0, 1000, (1, 8)), torch.randint(0, 1000, (1, 8))).backward()
    opt.step()
    real = _bytes([t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)])
    est = memory.estimate(cfg, "full", 1, 8, master_weights=master)
    assert est.optimizer_states + est.master_weights == real


# ---------------------------------------------------------------------------- what autograd saves
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("ckpt", [False, True])
def test_saved_activations_equal_autograd(dtype, method, ckpt):
    """Every storage autograd keeps for backward (saved_tensors_hooks), against the formula.
    The exact same tensors, so the tolerance is the 8-byte token count the loss divides by, and
    the int64 input ids that only a trainable embedding saves (the batch is counted as live)."""
    if method == "qlora" and dtype == "float32":
        pytest.skip("QLoRA computes in bf16")
    from minift import lora, quant
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(cfg).to(getattr(torch, dtype))
    if method == "qlora":
        quant.quantize_model(model)
    if method != "full":
        lora.add_lora(model, r=8)
    model.gradient_checkpointing = ckpt
    B, T = 2, 32
    ids, tg = torch.randint(0, 1000, (B, T)), torch.randint(0, 1000, (B, T))
    real = saved_for_backward(model, ids, tg)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, grad_ckpt=ckpt, lora_r=8, device="cpu")
    # the fused loss saves d hidden and (full) d lm_head: those are counted in the loss phase
    loss_saved = B * T * cfg.hidden_size * est_bytes(dtype) + (cfg.vocab_size * cfg.hidden_size *
                                                               est_bytes(dtype) if method == "full" else 0)
    batch = 2 * 8 * B * T
    ids_saved = 8 * B * T if method == "full" else 0       # the embedding keeps its indices if it trains
    expect = est.activations - batch + ids_saved + loss_saved
    assert abs(real - expect) <= 8, (real, expect)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("ckpt_layers", [0, 1, 2, 3])
def test_partial_checkpointing_saves_what_autograd_saves(method, ckpt_layers):
    """Checkpointing only the bottom k of 3 layers: those keep their input, the others everything
    they save (the same tensors: same tolerance as above)."""
    from minift import lora
    cfg = ModelConfig(**dict(TINY, num_hidden_layers=3))
    torch.manual_seed(0)
    model = Transformer(cfg)
    if method == "lora":
        lora.add_lora(model, r=8)
    model.gradient_checkpointing, model.checkpoint_layers = True, ckpt_layers
    B, T = 2, 32
    real = saved_for_backward(model, torch.randint(0, 1000, (B, T)), torch.randint(0, 1000, (B, T)))
    est = memory.estimate(cfg, method, B, T, param_dtype="float32", grad_ckpt=True, ckpt_layers=ckpt_layers,
                          lora_r=8, device="cpu")
    loss_saved = B * T * cfg.hidden_size * 4 + (cfg.vocab_size * cfg.hidden_size * 4 if method == "full" else 0)
    expect = est.activations - 2 * 8 * B * T + (8 * B * T if method == "full" else 0) + loss_saved
    assert abs(real - expect) <= 8, (real, expect)
    # the ends agree with the two settings they generalise
    if ckpt_layers in (0, 3):
        same = memory.estimate(cfg, method, B, T, param_dtype="float32", grad_ckpt=ckpt_layers == 3, lora_r=8,
                               device="cpu")
        assert est.activations == same.activations


def saved_for_backward(model, *args, **kwargs) -> int:
    """Bytes of every storage autograd keeps for backward in model(*args, **kwargs), each storage
    once, the model's own parameters and buffers left out (saved_tensors_hooks)."""
    seen = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*args, **kwargs)
    return sum(nbytes for ptr, nbytes in seen.items() if ptr not in own)


def bf16_lora_model(cfg, dropout: float, fused: bool, device="cpu"):
    """A bf16 model with LoRA r=8 (bf16 adapter math) and that dropout, q/k/v and gate/up fused or not."""
    from minift import fused_projections, lora
    torch.manual_seed(0)
    model = Transformer(cfg).to(device, torch.bfloat16)
    lora.add_lora(model, r=8, dropout=dropout, compute_dtype=torch.bfloat16)
    if fused:
        assert fused_projections.fuse(model)
    return model


def est_bytes(dtype):
    return 4 if dtype == "float32" else 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fused_projections_save_what_the_estimate_says(dtype):
    """Fusing q/k/v and gate/up changes what the adapters keep of their weights: one stacked A per
    group and, when they compute in the base's dtype, one block-diagonal B per group inside the
    base's matmul (fused_projections.base_and_adapters) instead of each adapter's B copy. bf16:
    fp32 adapters with bf16 math (copies); float32: everything fp32 (no copies). The storages
    autograd saves fused, less unfused, against the estimate's difference: the same tensors, exact."""
    from minift import fused_projections, lora
    cfg = ModelConfig(**TINY)
    B, T = 2, 32
    ids = torch.randint(0, 1000, (B, T), generator=torch.Generator().manual_seed(0))
    compute = getattr(torch, dtype)

    def saved_bytes(fused):
        torch.manual_seed(0)
        model = lora.add_lora(Transformer(cfg).to(compute), r=8, compute_dtype=compute)
        if fused:
            assert fused_projections.fuse(model)
        return saved_for_backward(model, ids, ids.roll(-1, dims=1))

    def predicted(fused):
        return memory.estimate(cfg, "lora", B, T, param_dtype=dtype, lora_r=8, lora_compute_dtype=dtype,
                               fused_projections=fused).activations
    assert saved_bytes(True) - saved_bytes(False) == predicted(True) - predicted(False) != 0


@pytest.mark.parametrize("fused", [False, True])
def test_lora_dropout_saves_what_the_estimate_says_cuda_path_on_cpu(fused):
    """The CUDA path's dropout accounting, run on the CPU: LoRALinear's recompute (CPU only) is
    switched off, so each adapter (or fused group) keeps its dropped input, as on CUDA. One
    difference remains: where CUDA's dropout keeps a bool mask (1 byte per element) for the
    input's gradient, the CPU's keeps its scaled noise in the input's dtype (2 bytes in bf16), so
    the CPU saves one more byte per mask element. tests/test_on_cuda.py checks the CUDA bytes."""
    from unittest import mock
    cfg = ModelConfig(**TINY)
    B, T = 2, 32
    n, h, f = B * T, cfg.hidden_size, cfg.intermediate_size
    ids = torch.randint(0, 1000, (B, T), generator=torch.Generator().manual_seed(0))

    def saved_bytes(dropout):
        with mock.patch("minift.lora.checkpoint", lambda fn, x, use_reentrant: fn(x)):
            return saved_for_backward(bf16_lora_model(cfg, dropout, fused), ids, ids.roll(-1, dims=1))

    def predicted(dropout):
        return memory.estimate(cfg, "lora", B, T, lora_r=8, lora_compute_dtype="bfloat16", lora_dropout=dropout,
                               fused_projections=fused).activations
    # mask elements: one per dropped input whose input needs a gradient; the first layer's q/k/v
    # input (the frozen embedding, normed) needs none
    qkv, gate_up = (1, 1) if fused else (3, 2)                     # dropped inputs per group
    per_layer = qkv * n * h + n * h + gate_up * n * h + n * f      # q/k/v, o, gate/up, down
    masks = cfg.num_hidden_layers * per_layer - qkv * n * h
    assert saved_bytes(0.05) - saved_bytes(0.0) == predicted(0.05) - predicted(0.0) + masks


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_saved_activations_with_packed_rows(dtype, method):
    """Packed rows (segment_ids) attend through a mask, whose additive bias each layer keeps:
    the saved storages against estimate(segment_mask=True), exactly as above, and the bias is
    what packing adds (B*T*T elements of the activations' dtype per layer)."""
    from minift import lora
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(cfg).to(getattr(torch, dtype))
    if method == "lora":
        lora.add_lora(model, r=8)
    B, T = 2, 32
    ids, tg = torch.randint(0, 1000, (B, T)), torch.randint(0, 1000, (B, T))
    packed = dict(segment_ids=torch.tensor([[0] * 12 + [1] * 20] * B),
                  position_ids=torch.tensor([list(range(12)) + list(range(20))] * B))
    plain, with_mask = saved_for_backward(model, ids, tg), saved_for_backward(model, ids, tg, **packed)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, lora_r=8, device="cpu", segment_mask=True)
    est_plain = memory.estimate(cfg, method, B, T, param_dtype=dtype, lora_r=8, device="cpu")
    assert est.activations - est_plain.activations == cfg.num_hidden_layers * B * T * T * est_bytes(dtype)
    assert with_mask - plain == est.activations - est_plain.activations


# ---------------------------------------------------------------------------- peaks, measured
# (config, method, dtype, ckpt, batch, seq, loss_chunk): each phase of the estimate is the peak in
# at least one row (loss chunk, optimizer step, a layer's backward, a checkpointed recompute).
BIG_V = dict(vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2)
BIG_F = dict(vocab_size=256, hidden_size=64, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2)
UNTIED = dict(vocab_size=4000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=1, tie_word_embeddings=False)
CASES = [
    (BIG_V, "full", "bfloat16", False, 4, 128, 256),    # peak: the loss chunk (2 chunks)
    (BIG_V, "full", "float32", True, 4, 128, 256),
    (BIG_V, "lora", "bfloat16", True, 4, 128, 256),
    (BIG_V, "lora", "float32", False, 4, 128, 512),     # one chunk
    (BIG_V, "qlora", "bfloat16", False, 4, 128, 256),
    (BIG_F, "full", "bfloat16", True, 4, 256, 256),     # peak: a checkpointed layer's backward
    (BIG_F, "lora", "bfloat16", False, 4, 256, 256),    # peak: the top layer's LoRA forward
    (BIG_F, "qlora", "bfloat16", True, 4, 256, 256),    # peak: a recomputed layer
    (UNTIED, "full", "bfloat16", False, 1, 16, 256),    # peak: the optimizer step
]


@pytest.mark.parametrize("kw,method,dtype,ckpt,B,T,chunk", CASES)
def test_peak_matches_the_cpu_allocator(kw, method, dtype, ckpt, B, T, chunk, two_cpu_threads):
    """Predicted peak vs the CPU allocator's peak (every allocation and free replayed from the
    profiler; the same quantity as torch.cuda.max_memory_allocated). Tolerance: -1% .. +5%.
    Phases made of whole tensors (weights, states, saved activations, loss chunk, AdamW) are
    exact to a few hundred bytes; a layer's backward temporaries are modelled at the few
    largest moments of the MLP's backward and read up to ~4% high on these tiny shapes, where
    f*n temporaries are a large share of the total. Never below by more than 1%: an estimate
    that is too low is the dangerous direction."""
    cfg = ModelConfig(**kw)
    m = measure.run_training_steps(cfg, method, B, T, steps=2, dtype=dtype, grad_ckpt=ckpt, lora_r=8,
                                   loss_chunk=chunk)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, grad_ckpt=ckpt, lora_r=8, loss_chunk=chunk,
                          device="cpu")
    err = (est.total - m.peak) / m.peak
    assert -0.01 <= err <= 0.05, f"{method} {dtype} ckpt={ckpt}: predicted {est.total}, measured {m.peak} " \
                                 f"({100 * err:+.2f}%, peak phase {est.peak_phase})"


# Partial checkpointing (model.checkpoint_layers): k bottom layers of 3 checkpointed. The peak
# moves between the top layer's backward (every saved activation alive), the lowest saved layer's
# and the recomputed ones'.
PARTIAL_CASES = [
    (BIG_F, "full", "bfloat16", 1, 4, 256, 256),
    (BIG_F, "full", "bfloat16", 2, 4, 256, 256),
    (BIG_F, "lora", "bfloat16", 1, 4, 256, 256),
    (BIG_V, "lora", "float32", 2, 4, 128, 512),
    (BIG_F, "qlora", "bfloat16", 1, 4, 256, 256),
]


@pytest.mark.parametrize("kw,method,dtype,ckpt_layers,B,T,chunk", PARTIAL_CASES)
def test_partial_checkpointing_peak_matches_the_cpu_allocator(kw, method, dtype, ckpt_layers, B, T, chunk,
                                                              two_cpu_threads):
    """As test_peak_matches_the_cpu_allocator (same measurement, same -1% .. +5% and why)."""
    cfg = ModelConfig(**kw)
    m = measure.run_training_steps(cfg, method, B, T, steps=2, dtype=dtype, grad_ckpt=True, lora_r=8,
                                   loss_chunk=chunk, ckpt_layers=ckpt_layers)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, grad_ckpt=True, ckpt_layers=ckpt_layers, lora_r=8,
                          loss_chunk=chunk, device="cpu")
    err = (est.total - m.peak) / m.peak
    assert -0.01 <= err <= 0.05, f"{method} {dtype} ckpt_layers={ckpt_layers}: predicted {est.total}, " \
                                 f"measured {m.peak} ({100 * err:+.2f}%, peak phase {est.peak_phase})"


def test_ckpt_layers_is_checked():
    cfg = ModelConfig(**TINY)
    with pytest.raises(ValueError, match="needs grad_ckpt=True"):
        memory.estimate(cfg, "full", 1, 8, ckpt_layers=1)
    for bad in (-1, 3, True, 1.5):
        with pytest.raises(ValueError, match=r"ckpt_layers must be an integer in \[0, 2\]"):
            memory.estimate(cfg, "full", 1, 8, grad_ckpt=True, ckpt_layers=bad)


def test_foreach_adamw_step_transient_is_exact():
    cfg = ModelConfig(vocab_size=4000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False)
    m = measure.run_training_steps(cfg, "full", 1, 16, dtype="bfloat16", foreach=True)
    est = memory.estimate(cfg, "full", 1, 16, device="cpu", foreach=True)
    assert est.peak_phase == "optimizer step"
    assert abs(est.total - m.peak) <= 1024                     # a few small tensors' rounding


def test_peak_below_fresh_process_rss(two_cpu_threads):
    """RSS of a fresh process (run_in_subprocess, how="rss"): what the OS sees. It includes
    malloc's bookkeeping, oneDNN scratch and thread stacks, so it reads 3-6% above the tensor
    bytes here (hidden 512, vocab 32k). Tolerance: prediction within -10% .. +2% of RSS."""
    cfg = ModelConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2)
    m = measure.run_in_subprocess(cfg, "lora", 4, 256, dtype="float32", how="rss", steps=2)
    est = memory.estimate(cfg, "lora", 4, 256, param_dtype="float32", device="cpu")
    err = (est.total - m.peak) / m.peak
    assert -0.10 <= err <= 0.02, (est.total, m.peak, err)


# ---------------------------------------------------------------------------- the chapter, errors
def test_seed_chapter_tables():
    assert memory.seed_chapter_estimate("0.5B", "full")["chapter_total_GB"] == 7.5
    assert memory.seed_chapter_estimate("0.5B", "full")["formula_GB"] == pytest.approx(7.5)  # 2+2+8 N + 1.5
    assert memory.seed_chapter_estimate("7B", "lora")["chapter_total_GB"] == 25.0
    assert memory.seed_chapter_estimate("7B", "qlora")["formula_GB"] == pytest.approx(11.5)  # N/2 + 8
    with pytest.raises(ValueError, match="sizes"):
        memory.seed_chapter_estimate("5B", "full")


def test_bad_arguments_raise_clear_errors():
    cfg = ModelConfig(**TINY)
    with pytest.raises(ValueError, match="method"):
        memory.estimate(cfg, "dora", 1, 8)
    with pytest.raises(ValueError, match="batch"):
        memory.estimate(cfg, "full", -1, 8)
    with pytest.raises(ValueError, match="param_dtype"):
        memory.estimate(cfg, "full", 1, 8, param_dtype="float8")
    with pytest.raises(ValueError, match="lora_targets"):
        memory.estimate(cfg, "lora", 1, 8, lora_targets=["lm_head"])


def test_inference_counts_kv_cache():
    cfg = ModelConfig.preset("qwen2.5-0.5b")
    est = memory.estimate(cfg, "inference", 1, 128, kv_cache_len=1024)
    # 2 (k, v) x 24 layers x 1024 positions x 2 kv heads x 64 x 2 bytes
    assert est.kv_cache == 2 * 24 * 1024 * 2 * 64 * 2
    assert est.total > est.weights_total + est.kv_cache


# ---------------------------------------------------------------------------- FLOPs
def test_flops_per_token():
    cfg = ModelConfig.preset("qwen2.5-0.5b")
    mp = flops.matmul_params(cfg)
    N = mp["layers"] + mp["lm_head"]
    assert N == cfg.num_params() - 2 * 896 * 24 - 896 - (14 * 64 + 2 * 2 * 64) * 24  # minus norms and biases
    attn = 12 * 24 * 14 * 64 * 1024                                   # PaLM: 12 L H Q T
    full = flops.flops_per_token(cfg, "full", 1024, chunked_loss=False)
    assert full.model == 6 * N + attn
    lora = flops.flops_per_token(cfg, "lora", 1024, chunked_loss=False)
    assert lora.model == 4 * N + 6 * 8_798_208 + attn
    ck = flops.flops_per_token(cfg, "full", 1024, grad_ckpt=True, chunked_loss=False)
    assert ck.model == full.model and ck.hardware == full.model + 2 * mp["layers"] + attn // 3
    part = flops.flops_per_token(cfg, "full", 1024, grad_ckpt=True, ckpt_layers=6, chunked_loss=False)
    assert part.model == full.model and part.hardware == pytest.approx(full.model + (2 * mp["layers"] + attn // 3) / 4)
    # anchors.md: HF+peft LoRA on 0.5B at 22,762 tok/s is "6% of" the H200's 790 TFLOP/s limit
    assert 0.05 < flops.mfu(cfg, "lora", 22_762) < 0.08
    assert flops.training_time(cfg, "lora", 3600 * 1000, tokens_per_s=1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        flops.training_time(cfg, "lora", 1e6, mfu=0)


# ====================================================================== the whole job (issue 10)
def test_job_phases_name_the_peak():
    cfg = ModelConfig.preset("qwen2.5-7b")
    kw = dict(grad_ckpt=True, loss_chunk=256, save="adapter")
    stream = memory.estimate(cfg, "qlora", 4, 1024, load="nf4-stream", **kw)
    step = memory.estimate(cfg, "qlora", 4, 1024, grad_ckpt=True, loss_chunk=256)
    # the job adds phases around the step and leaves the step's own numbers as they were
    assert stream.step_total == step.total and stream.step_peak_phase == step.peak_phase
    assert list(stream.phases)[0].startswith("load: ") and list(stream.phases)[-1] == "save: adapter"
    assert stream.peak_phase == step.peak_phase                   # quantize-on-load stays below the step
    float_load = memory.estimate(cfg, "qlora", 4, 1024, load="float", **kw)
    # load bf16, then quant.quantize_model: the float model plus one MLP projection's temporaries.
    # Measured on the H200 (issue 10, 2026-11-30, load_pretrained -> quantize_model): 16.47 GB;
    # 1% covers the allocator's 512 B rounding and the CUDA graph-free step's small buffers.
    assert float_load.peak_phase.startswith("quantize")
    assert float_load.total == pytest.approx(16.47e9, rel=0.01)
    assert "outside the step" in float_load.table() and "<- peak" in float_load.table()
    # 18 B per element of a bf16 weight: fp32 copy, padded blocks, scaled, int32 codes, uint8, pack
    assert memory.nf4_quantize_temporaries(1000, 2) == 18000
    assert memory.nf4_quantize_temporaries(1000, 4) == 14000
    cpu = memory.estimate(ModelConfig.preset("qwen2.5-0.5b"), "lora", 2, 512, param_dtype="float32",
                          device="cpu", loss_chunk=256, load="float", save="adapter")
    assert all("process (Python, torch, tokenizer, data)" in p for p in cpu.phases.values())
    with pytest.raises(ValueError, match="load="):
        memory.estimate(cfg, "lora", 4, 1024, load="nf4-stream")
    with pytest.raises(ValueError, match="save="):
        memory.estimate(cfg, "lora", 4, 1024, load="float", save="everything")


RUNTIME_PROBE = """
import torch, minift, minift.optim
def rss(): return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
before = rss()
minift.optim.AdamW([torch.zeros(1, requires_grad=True)])
print(before, rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
def test_cpu_runtime_constants_match_a_fresh_process():
    """The process parts of memory.estimate's CPU view, against a fresh Python with this torch:
    torch + minift imported (with a CUDA build's libraries where this torch is one), then what
    the first optimizer imports."""
    out = subprocess.run([sys.executable, "-c", RUNTIME_PROBE], capture_output=True, text=True, check=True)
    runtime, optimizer = map(int, out.stdout.split())
    expected = memory.CPU_RUNTIME_BYTES + (memory.CUDA_BUILD_HOST_BYTES if torch.version.cuda else 0)
    # Python's and the libraries' own pages move by some percent between versions and machines;
    # the CI failure this guards against was a whole missing piece (0.15 GB, 65% of the runtime).
    # Measured 2026-12-03: 0.235 GB (torch 2.13 CPU build) and 0.538 (2.14.1 CUDA build); the
    # optimizer's import +0.150 and +0.163 GB.
    assert 0.85 * expected <= runtime <= 1.2 * expected, (runtime, expected)
    assert 0.8 * memory.CPU_OPTIMIZER_RUNTIME_BYTES <= optimizer <= 1.25 * memory.CPU_OPTIMIZER_RUNTIME_BYTES, optimizer


def test_job_on_cpu_matches_a_fresh_process(tmp_path):
    """The whole job from disk (load, add LoRA, train, save) in a fresh process, its resident
    peak per phase beside memory.estimate's CPU process view."""
    from minift.checkpoint import save_pretrained
    from minift.measure import run_job_in_subprocess
    from minift.model import Transformer
    cfg = ModelConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, name_or_path="cpu-job")
    torch.manual_seed(0)
    save_pretrained(Transformer(cfg), tmp_path / "ckpt", dtype="bfloat16")
    m = run_job_in_subprocess(str(tmp_path / "ckpt"), "lora", 2, 512, device="cpu", dtype="float32",
                              load="float", grad_ckpt=False, loss_chunk=256, steps=2)
    est = memory.estimate(cfg, "lora", 2, 512, param_dtype="float32", device="cpu", loss_chunk=256,
                          load="float", save="adapter")
    assert m.peak_phase == "train" and not est.peak_phase.startswith(memory.JOB_PHASE_PREFIXES)
    # The process's runtime is measured here (m.baseline) rather than taken from
    # cpu_process_bytes(), which also counts the recipe's tokenizer and data. What torch imports
    # with the first optimizer (CPU_OPTIMIZER_RUNTIME_BYTES) comes after the baseline, in train.
    above = {k: v - m.baseline for k, v in m.phases.items()}
    (load_phase,) = [v for k, v in est.phases.items() if k.startswith("load: ")]
    pred = {k: v - memory.cpu_process_bytes() for k, v in
            {"load": sum(load_phase.values()), "train": est.step_total}.items()}
    # RSS above the tensors: malloc's per-chunk headers, partially used pages, and the math
    # libraries' first-use buffers (oneDNN/MKL scratch, tens of MB). 1.3x is the issue's bound for
    # the CPU whole job; the lower bound says the math does not count what is not there.
    # Measured 2026-12-03 on the 2-core CPU: train 0.941 GB above the runtime with torch 2.13,
    # 0.954 with 2.14.1, predicted 0.884 (1.06x, 1.08x).
    assert 0.85 * pred["train"] <= above["train"] <= 1.3 * pred["train"], (above, pred)
    # The load phase is the worst case over file orders: the finished model plus the largest
    # tensor's read buffer, as if it came last. This checkpoint stores the embedding first, so
    # what is surely there is the loaded weights (0.312 GB); measured 0.320 (2026-12-03), the
    # worst case 0.377.
    surely_there = load_phase["weights loaded (float)"]
    assert 0.85 * surely_there <= above["load"] <= 1.3 * pred["load"], (above, pred)
