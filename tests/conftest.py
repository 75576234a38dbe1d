"""Shared fixtures: tiny Hugging Face checkpoints built on the spot (CPU, fp32, nothing downloaded).

`tiny_hf_checkpoint(...)` -> (directory, hf_model)
    Builds a random transformers Qwen2ForCausalLM or LlamaForCausalLM, saves it with
    `save_pretrained(dir, safe_serialization=True)` into a fresh temporary directory and returns
    the directory (str) and the model (eval mode, fp32, eager attention: the reference).

    arch      "qwen2" (q/k/v bias, rope_theta 1e6) or "llama" (rope_theta 5e4, no bias unless
              bias=True, which sets attention_bias and mlp_bias, so o_proj and the MLP carry one)
    tied      tie_word_embeddings: True stores no lm_head.weight
    sharded   True saves with max_shard_size="40KB": several model-0000k-of-0000N files + index
    n_heads, n_kv   attention heads and key/value heads (GQA ratio n_heads / n_kv: 1, 2 or 4 with 4 heads)
    head_dim  None: hidden / n_heads; give it to test an explicit head_dim (e.g. 32 with hidden 64, 4 heads)
    hidden, intermediate, layers, vocab   sizes (defaults 64, 128, 2, 311: 311 divides by no chunk size)
    seed      the weights are a function of the seed alone

    Weights are redrawn after construction so every tensor matters: matrices N(0, 1/hidden)
    (unit-scale activations, so attention softmaxes are far from uniform), biases N(0, 0.1),
    norm weights 1 + N(0, 0.1). HF's own init (std 0.02, zero biases, unit norms) would let a
    loader that dropped every bias or norm weight still pass a parity test.

`tiny_variants`: the list of keyword sets the parity tests run through (Qwen2 and Llama, tied and
    untied, sharded and not, GQA ratios 1, 2 and 4, an explicit head_dim), with readable ids.
"""
from __future__ import annotations

import os

import pytest
import torch

TINY_VARIANTS = [
    dict(arch="qwen2", tied=True, sharded=False, n_kv=2),                   # Qwen2.5-0.5B-like: tied, GQA 2
    dict(arch="qwen2", tied=False, sharded=True, n_kv=1),                   # Qwen2.5-7B-like: untied, sharded, GQA 4
    dict(arch="qwen2", tied=True, sharded=True, n_kv=4),                    # multi-head (GQA 1), sharded
    dict(arch="llama", tied=True, sharded=False, n_kv=1),                   # SmolLM2-like: tied, no bias
    dict(arch="llama", tied=False, sharded=True, n_kv=2, head_dim=32),      # explicit head_dim != hidden/heads
    dict(arch="llama", tied=False, sharded=False, n_kv=4, bias=True),       # attention_bias + mlp_bias
]


def pythonpath_with(*dirs: str) -> str:
    """PYTHONPATH for a child process: `dirs` first, then the parent's own entries, so packages
    installed with `pip install --target DIR` + PYTHONPATH (bitsandbytes and the Qwen tokenizer
    files on the GPU image) stay importable in the child."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*dirs, *inherited])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer minift model and a byte-level BPE trained on a few generated stories, saved
    in the HF layout (what the scripts load with --model)."""
    import dataclasses

    import minift
    from minift import fairytales
    from minift.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tiny_model")
    tok = train_bpe(fairytales.generate_stories(10, seed=3), vocab_size=400)
    cfg = dataclasses.replace(minift.ModelConfig.preset("tiny-10m"), vocab_size=tok.vocab_size, hidden_size=64,
                              intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=None, eos_token_id=tok.eos_token_ids,
                              pad_token_id=tok.pad_token_id, torch_dtype="float32")
    torch.manual_seed(0)
    model = minift.Transformer(cfg)
    with torch.no_grad():  # N(0, 1/hidden) instead of std 0.02: peaked logits, so greedy picks are stable
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 64 ** -0.5)
    minift.save_pretrained(model, str(out), tokenizer=tok)
    return str(out)


@pytest.fixture
def two_cpu_threads(monkeypatch):
    """Measure CPU memory with 2 threads, as on the 2-core laptop the CPU numbers are about.
    torch 2.11's CPU flash attention takes scratch per thread that no tensor shows (measured on
    the 32-core H200 host, one bf16 attention forward+backward at these shapes: 1.0 MB of peak at
    2 threads, 8.0 MB at 32; results/h200/torch211_cpu_memory_threads.log), which the memory
    model does not count; torch 2.13 passes at 2 and 16 threads alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # run_in_subprocess's child
    yield
    torch.set_num_threads(before)


def variant_id(kw: dict) -> str:
    parts = [kw["arch"], "tied" if kw.get("tied", True) else "untied",
             "sharded" if kw.get("sharded") else "single", f"kv{kw.get('n_kv', 2)}"]
    if kw.get("head_dim"):
        parts.append(f"hd{kw['head_dim']}")
    if kw.get("bias"):
        parts.append("bias")
    return "-".join(parts)


@pytest.fixture(params=TINY_VARIANTS, ids=variant_id)
def tiny_variants(request) -> dict:
    """One keyword set from TINY_VARIANTS per test instance (pass it to tiny_hf_checkpoint)."""
    return dict(request.param)


def build_tiny_hf_model(arch="qwen2", tied=True, n_heads=4, n_kv=2, head_dim=None, hidden=64,
                        intermediate=128, layers=2, vocab=311, bias=False, seed=0):
    """The random transformers model behind tiny_hf_checkpoint (fp32, eval, eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                  max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                  bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    if head_dim is not None:
        common["head_dim"] = head_dim
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1e6, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 5e4},
                                             attention_bias=bias, mlp_bias=bias, **common))
    else:
        raise ValueError(f"arch must be 'qwen2' or 'llama', not {arch!r}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied matrix is listed (and drawn) once
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / hidden ** 0.5)
    return model.eval()


@pytest.fixture
def tiny_hf_checkpoint(tmp_path_factory):
    """Factory: tiny_hf_checkpoint(arch="qwen2", tied=True, sharded=False, n_kv=2, ...) -> (dir, hf_model).
    See the module docstring for every argument."""

    def make(arch="qwen2", tied=True, sharded=False, n_kv=2, **kw):
        model = build_tiny_hf_model(arch=arch, tied=tied, n_kv=n_kv, **kw)
        directory = tmp_path_factory.mktemp(f"{arch}_{'tied' if tied else 'untied'}_kv{n_kv}")
        model.save_pretrained(directory, safe_serialization=True,
                              **({"max_shard_size": "40KB"} if sharded else {}))
        if sharded:
            assert (directory / "model.safetensors.index.json").exists(), "the fixture meant to shard"
        return str(directory), model

    return make


# bitsandbytes as the NF4 reference. On a CUDA machine bnb loads libbitsandbytes_cudaXXX.so, whose
# CPU entry points (cquantize_blockwise_cpu_*, cdequantize_blockwise_cpu_nf4_fp16, ...) are another
# build of the C++ CPU code than libbitsandbytes_cpu.so: on the H200 image they pick neighbouring
# 8-bit codes for some absmax values and round fp16 dequantized values differently, while bnb's CUDA
# kernels agree with minift bit for bit. So the reference is bnb on CUDA wherever CUDA exists, and
# bnb's CPU backend (libbitsandbytes_cpu.so, the one a CPU-only install loads) only where it does not.
BNB_REFERENCE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
