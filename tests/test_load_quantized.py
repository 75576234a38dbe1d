"""Loading a QLoRA base from disk: quantized while it loads, or already quantized by bitsandbytes.

- load_pretrained(quantize="nf4") gives the bytes of load_pretrained + quant.quantize_model, and a
  fresh process loading that way never holds the float model (resident memory, measured);
- a checkpoint transformers + bitsandbytes saved in 4-bit NF4 loads here as it is stored, and one
  minift saves loads there, with identical dequantized weights;
- other quantizations, and 4-bit tensors that do not fit the config, are refused by name;
- minift.random_weights makes (and writes) random models layer by layer, quantized as it goes;
- the presets for the seed's large rows have their published sizes.

transformers' bnb models are compared in train() mode (dropout is 0 in these configs): in eval mode
on a CPU with AVX512-BF16, bnb's first forward repacks the weight into a lossy CPU layout (see
tests/test_quant.py). Hidden sizes are multiples of the blocksize: bnb's C++ CPU dequantize
mis-scales other row lengths (tests/test_nf4.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from minift import ModelConfig, Transformer, quant
from minift.checkpoint import CheckpointError, load_pretrained, save_pretrained
from minift.random_weights import build_random_model, write_random_checkpoint

FP32_LOGITS = dict(atol=1e-5, rtol=1e-5)  # same weights, fp32; only the attention kernels' rounding differs


def _load(directory, **kw):
    kw.setdefault("dtype", "float32")
    return load_pretrained(directory, device="cpu", **kw)


def _ids(vocab=311):
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(3))


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _projections(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, quant.Linear4bit)}


# ====================================================================== quantize while loading
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("blocksize, double_quant", [(64, True), (64, False), (128, True), (32, False)])
def test_streaming_quantize_equals_load_then_quantize(tiny_hf_checkpoint, sharded, blocksize, double_quant):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=False, sharded=sharded, n_kv=1)
    for dtype in ("float32", "bfloat16"):
        expected = quant.quantize_model(_load(directory, dtype=dtype), blocksize=blocksize, double_quant=double_quant)
        streamed = _load(directory, dtype=dtype, quantize="nf4", blocksize=blocksize, double_quant=double_quant)
        _assert_same_state(streamed, expected)
        assert set(_projections(streamed)) == set(_projections(expected))
        assert len(_projections(streamed)) == 7 * 2                      # seven per layer; the head stays float
        assert type(streamed.lm_head) is nn.Linear
        with torch.no_grad():
            assert torch.equal(streamed(_ids()), expected(_ids()))


# A tied Llama with every bias Llama can carry (attention_bias, mlp_bias), in shards. Written by
# minift's own writer, not transformers: the docs' tour runs this test and counts its seconds, and
# building a transformers model imports most of transformers (7 s of CPU); save_pretrained's layout
# is covered above and in test_checkpoint.py.
TIED_LLAMA_WITH_BIASES = dataclasses.replace(
    ModelConfig.preset("smollm2-360m"), vocab_size=311, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True)


def test_streaming_quantize_tied_llama_with_biases(tmp_path):
    write_random_checkpoint(TIED_LLAMA_WITH_BIASES, tmp_path, dtype="float32", device="cpu", max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists(), "the test meant to shard"
    expected = quant.quantize_model(_load(tmp_path))
    streamed = _load(tmp_path, quantize="nf4")
    _assert_same_state(streamed, expected)
    biases = [n for n, m in _projections(streamed).items() if m.bias is not None]
    assert len(biases) == 7 * 2                                         # every projection has one
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight  # still tied


def test_quantize_argument_is_checked(tiny_hf_checkpoint):
    directory, _ = tiny_hf_checkpoint()
    with pytest.raises(ValueError, match="'int8'"):
        _load(directory, quantize="int8")
    with pytest.raises(ValueError, match="blocksize"):
        _load(directory, quantize="nf4", blocksize=48)


# Memory of a fresh process that loads a bf16 checkpoint with quantize="nf4". The model is built so
# that holding its float weights would break the bound: 69M parameters (139 MB in bf16) in many
# small projections (the largest 0.79M weights), so the NF4 model (~37 MB) plus one tensor in
# flight is far below the float model. (No larger: the docs' tour runs this test and counts its CPU
# seconds, most of them quantizing.)
RSS_CONFIG = dict(vocab_size=1024, hidden_size=512, intermediate_size=1536, num_hidden_layers=20,
                  num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
# Slack: quantizing one (out, in) projection makes fp32 temporaries in kernels/nf4.quantize (the
# fp32 copy, the padded blocks, |x|, the scaled values, the int32 codes: 5 x 4 bytes a weight) while
# the bf16 tensor read is alive; plus 48 MB for what the allocator keeps after frees (glibc arenas
# and the pages of the freed tensors not returned at once) and the interpreter's own growth.
QUANTIZE_TEMPORARY_BYTES_PER_WEIGHT = 5 * 4
ALLOCATOR_SLACK = 48 * 2**20

_RSS_CHILD = """
import json, sys
import torch
from minift import quant
from minift.checkpoint import load_pretrained
from minift.measure import process_peak_rss, reset_peak_rss
torch.set_num_threads(1)
load_pretrained(sys.argv[2], dtype="bfloat16", device="cpu", quantize="nf4")  # warm up every code path
base = reset_peak_rss()
model = load_pretrained(sys.argv[1], dtype="bfloat16", device="cpu", quantize="nf4")
peak = process_peak_rss()
print(json.dumps({"growth": peak - base, "model_bytes": quant.quantized_bytes(model)["total"]}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resettable peak RSS")
def test_fresh_process_loading_nf4_never_holds_the_float_model(tmp_path):
    cfg = dataclasses.replace(ModelConfig.preset("qwen2.5-0.5b"), **RSS_CONFIG)
    big, small = tmp_path / "big", tmp_path / "small"
    write_random_checkpoint(cfg, big, dtype="bfloat16", device="cpu", max_shard_size="64MB")
    write_random_checkpoint(dataclasses.replace(cfg, num_hidden_layers=1), small, dtype="bfloat16", device="cpu")
    float_bytes = cfg.num_params() * 2
    largest = cfg.hidden_size * cfg.intermediate_size                   # gate/up/down: (1536, 512)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(quant.__file__)),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(big), str(small)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    bound = (result["model_bytes"] + largest * 2 + largest * QUANTIZE_TEMPORARY_BYTES_PER_WEIGHT
             + ALLOCATOR_SLACK)
    assert bound < float_bytes * 0.8, "the model is too small for the bound to catch a float copy"
    assert result["growth"] <= bound, (f"resident memory grew {result['growth'] / 2**20:.0f} MiB loading "
                                       f"{float_bytes / 2**20:.0f} MiB of bf16 weights into a "
                                       f"{result['model_bytes'] / 2**20:.0f} MiB NF4 model; bound "
                                       f"{bound / 2**20:.0f} MiB")


# ====================================================================== transformers + bitsandbytes
def _bnb_config(double_quant=True, compute_dtype=torch.float32):
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def _their_dequantized(hf_model) -> dict[str, torch.Tensor]:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_F
    return {n: bnb_F.dequantize_4bit(m.weight.data, m.weight.quant_state)
            for n, m in hf_model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.parametrize("tied, double_quant", [(False, True), (True, False)], ids=["untied-dq", "tied-absmax32"])
def test_transformers_bnb_checkpoint_loads_as_stored(tiny_hf_checkpoint, tmp_path, tied, double_quant):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=tied, n_kv=2)
    theirs = AutoModelForCausalLM.from_pretrained(directory, quantization_config=_bnb_config(double_quant),
                                                  device_map="cpu")
    theirs.train()  # see the module docstring: no eval-mode CPU repacking
    saved = tmp_path / "bnb4"
    theirs.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"

    ours = _load(saved)
    layers = _projections(ours)
    dequantized = _their_dequantized(theirs)
    assert set(layers) == set(dequantized) and len(layers) == 14
    for name, layer in layers.items():
        assert layer.double_quant == double_quant
        assert torch.equal(layer.dequantize(), dequantized[name]), name  # never dequantized on load: same bytes
    stored = load_file(saved / "model.safetensors")
    for name, layer in layers.items():
        assert torch.equal(layer.weight, stored[name + ".weight"])
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), theirs(_ids()).logits, **FP32_LOGITS)
    # quantize="nf4" on an already 4-bit checkpoint changes nothing.
    _assert_same_state(_load(saved, quantize="nf4"), ours)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_minift_4bit_checkpoint_loads_in_transformers(tiny_hf_checkpoint, tmp_path, sharded):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=False, n_kv=2)
    ours = _load(directory, quantize="nf4")
    out = tmp_path / "ours4"
    save_pretrained(ours, out, max_shard_size="20KB" if sharded else "5GB")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["load_in_4bit"], qc["bnb_4bit_quant_type"]) == ("bitsandbytes", True, "nf4")
    assert (out / "model.safetensors.index.json").exists() == sharded

    theirs = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").train()
    dequantized = _their_dequantized(theirs)
    layers = _projections(ours)
    assert set(dequantized) == set(layers)
    for name, layer in layers.items():
        assert torch.equal(dequantized[name], layer.dequantize()), name
    hf_state = theirs.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert torch.equal(hf_state[name], ours.state_dict()[name]), name
    with torch.no_grad():
        torch.testing.assert_close(theirs(_ids()).logits, ours(_ids()), **FP32_LOGITS)
    _assert_same_state(_load(out), ours)  # and back into minift, byte for byte


def test_saving_4bit_keeps_the_codes_whatever_dtype(tiny_hf_checkpoint, tmp_path):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=True, n_kv=2)
    ours = _load(directory, quantize="nf4")
    save_pretrained(ours, tmp_path / "bf16", dtype="bfloat16")
    stored = load_file(tmp_path / "bf16" / "model.safetensors")
    assert stored["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert stored["model.layers.0.mlp.up_proj.weight"].dtype == torch.uint8
    assert stored["model.layers.0.mlp.up_proj.weight.quant_map"].dtype == torch.float32
    back = _load(tmp_path / "bf16")
    for name, layer in _projections(ours).items():
        assert torch.equal(back.get_submodule(name).weight, layer.weight), name
    # A float model saved afterwards carries no quantization_config.
    save_pretrained(_load(directory), tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())


# ====================================================================== refused, by name
def _with_quantization_config(directory, qc):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        raw = json.load(f)
    raw["quantization_config"] = qc
    with open(path, "w") as f:
        json.dump(raw, f)


@pytest.mark.parametrize("qc, words", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, ["bitsandbytes", "fp4"]),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, ["bitsandbytes", "fp4"]),  # transformers' default type
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, ["bitsandbytes", "8-bit"]),
    ({"load_in_8bit": True}, ["bitsandbytes", "8-bit"]),                                # before quant_method existed
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, ["gptq", "bits 4"]),
    ({"quant_method": "awq", "bits": 4, "version": "gemm"}, ["awq", "bits 4", "gemm"]),
    ({"quant_method": "fp8", "fmt": "e4m3"}, ["fp8", "e4m3"]),
], ids=["bnb-fp4", "bnb-4bit-default-fp4", "bnb-8bit", "old-8bit", "gptq", "awq", "fp8"])
def test_unsupported_quantization_is_refused_by_name(tiny_hf_checkpoint, qc, words):
    directory, _ = tiny_hf_checkpoint()
    _with_quantization_config(directory, qc)
    with pytest.raises(CheckpointError) as info:
        _load(directory)
    message = str(info.value)
    assert "config.json" in message and "quant_method" in message
    for word in words:
        assert word in message


@pytest.fixture
def bnb_checkpoint(tiny_hf_checkpoint, tmp_path):
    """A minift-saved 4-bit checkpoint (bnb's layout) and its tensors, to damage."""
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=True, n_kv=2)
    out = tmp_path / "q4"
    save_pretrained(_load(directory, quantize="nf4"), out)
    return out, load_file(out / "model.safetensors")


def test_fp4_tensors_are_refused_by_key(bnb_checkpoint):
    out, tensors = bnb_checkpoint
    key = "model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__"
    tensors[key + "fp4"] = tensors.pop(key + "nf4")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"up_proj\.weight\.quant_state\.bitsandbytes__fp4.*FP4"):
        _load(out)


@pytest.mark.parametrize("key, bad, words", [
    ("model.layers.0.self_attn.q_proj.weight.absmax", lambda t: t[:-1], ["q_proj.weight.absmax", "[63]", "[64]"]),
    ("model.layers.1.mlp.down_proj.weight", lambda t: t[:-4], ["down_proj.weight", "[4092, 1]", "4096 bytes"]),
    ("model.layers.0.mlp.gate_proj.weight.nested_quant_map", None, ["missing key", "gate_proj.weight.nested_quant_map"]),
], ids=["short-absmax", "short-codes", "missing-statistic"])
def test_mismatched_4bit_tensor_named_with_key_and_shape(bnb_checkpoint, key, bad, words):
    out, tensors = bnb_checkpoint
    if bad is None:
        del tensors[key]
    else:
        tensors[key] = bad(tensors[key]).clone()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        _load(out)
    for word in words:
        assert word in str(info.value)


def test_quant_state_shape_that_disagrees_with_config(bnb_checkpoint):
    out, tensors = bnb_checkpoint
    key = "model.layers.0.self_attn.o_proj.weight.quant_state.bitsandbytes__nf4"
    meta = json.loads(bytes(tensors[key].tolist()))
    meta["shape"] = [32, 128]
    tensors[key] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"o_proj\.weight\.quant_state.*\[32, 128\].*\[64, 64\]"):
        _load(out)


def test_truncated_4bit_file_names_the_tensor(bnb_checkpoint):
    out, _ = bnb_checkpoint
    path = out / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*'.*truncated"):
        _load(out)


# ====================================================================== random weights
def _small_cfg(**kw):
    base = dict(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=None, tie_word_embeddings=False)
    base.update(kw)
    return dataclasses.replace(ModelConfig.preset("qwen2.5-7b"), **base)


def test_build_random_model_nf4_is_4bit_and_runs():
    cfg = _small_cfg()
    model = build_random_model(cfg, "cpu", dtype="bfloat16", quantize="nf4", seed=1)
    assert len(_projections(model)) == 7 * cfg.num_hidden_layers
    assert all(type(m) is not nn.Linear or n == "lm_head" for n, m in model.named_modules())
    with torch.no_grad():
        logits = model(_ids(cfg.vocab_size))
    assert logits.shape == (2, 11, cfg.vocab_size) and torch.isfinite(logits).all()
    assert logits.float().std() > 0
    plain = build_random_model(cfg, "cpu", dtype="float32", seed=1)
    assert plain.num_params() == cfg.num_params()
    assert not torch.equal(plain.model.embed_tokens.weight, build_random_model(cfg, "cpu", seed=2).model.embed_tokens
                           .weight.float())


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_write_random_checkpoint_round_trips(tmp_path, quantize):
    cfg = _small_cfg(tie_word_embeddings=quantize is None)
    out = tmp_path / "ckpt"
    write_random_checkpoint(cfg, out, dtype="bfloat16", quantize=quantize, device="cpu", seed=5,
                            max_shard_size="100KB")
    built = build_random_model(cfg, "cpu", dtype="bfloat16", quantize=quantize, seed=5)
    _assert_same_state(load_pretrained(out, dtype="bfloat16", device="cpu"), built)
    if quantize is None:  # the float checkpoint quantized on load = the model built quantized
        _assert_same_state(load_pretrained(out, dtype="bfloat16", device="cpu", quantize="nf4"),
                           build_random_model(cfg, "cpu", dtype="bfloat16", quantize="nf4", seed=5))
    # Shards and index: every stored tensor listed once, in the file the index names; sizes add up.
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    n = len(shards)
    assert shards == [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    stored = {}
    for shard in shards:
        for k, t in load_file(out / shard).items():
            assert index["weight_map"][k] == shard
            stored[k] = t
    assert set(stored) == set(index["weight_map"]) == set(built.state_dict()) - (
        {"lm_head.weight"} if cfg.tie_word_embeddings else set())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    config = json.loads((out / "config.json").read_text())
    assert ("quantization_config" in config) == (quantize == "nf4")
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


# ====================================================================== the seed's large rows
@pytest.mark.parametrize("name, params", [("qwen2.5-14b", 14_770_033_664), ("qwen2.5-72b", 72_706_203_648)])
def test_large_presets_have_their_published_sizes(name, params):
    cfg = ModelConfig.preset(name)
    with torch.device("meta"):  # shapes only
        model = Transformer(cfg)
    assert model.num_params() == cfg.num_params() == params
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings, cfg.tie_word_embeddings) == \
        (1_000_000.0, 1e-6, 32768, False)
