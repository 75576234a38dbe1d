"""Checkpoints: minift writes what transformers reads, reads what it writes, and refuses bad files
with a message that names the file and the key or shape.

Tolerances: logits in fp32 at atol = rtol = 1e-5 (same math, different op order; see
test_model_parity.py); weights after a save/load round trip must be bit-identical (a copy).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import minift
from minift import checkpoint, safeio
from minift.checkpoint import CheckpointError, load_pretrained, parse_size, resolve_model_dir, save_pretrained
from minift.safeio import atomic_write, atomic_write_json, read_json, read_safetensors_header

FP32 = dict(atol=1e-5, rtol=1e-5)


def _ids(batch=2, seq=13, vocab=311):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(7))


def _load(directory, **kw):
    return load_pretrained(directory, dtype="float32", device="cpu", **kw)


# ====================================================================== minift -> transformers
@pytest.mark.parametrize("variant, shard", [
    (dict(arch="qwen2", tied=True, n_kv=2), "5GB"),
    (dict(arch="qwen2", tied=True, n_kv=2), "30KB"),
    (dict(arch="qwen2", tied=False, n_kv=1), "30KB"),
    (dict(arch="llama", tied=True, n_kv=1), "30KB"),
    (dict(arch="llama", tied=False, n_kv=2, head_dim=32, bias=True), "5GB"),
], ids=["qwen2-tied-single", "qwen2-tied-sharded", "qwen2-untied-sharded", "llama-tied-sharded",
        "llama-untied-hd32-bias-single"])
def test_saved_checkpoint_loads_in_transformers(tiny_hf_checkpoint, tmp_path, variant, shard):
    from transformers import AutoModelForCausalLM

    directory, hf = tiny_hf_checkpoint(**variant)
    model = _load(directory)
    out = tmp_path / "saved"
    save_pretrained(model, out, max_shard_size=shard)

    files = sorted(os.listdir(out))
    if shard == "30KB":
        index = read_json(out / "model.safetensors.index.json")
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and "model.safetensors" not in files
        per_shard = {s: load_file(out / s) for s in shards}
        for s, tensors in per_shard.items():  # within the limit, unless one tensor alone is bigger
            data = sum(t.numel() * t.element_size() for t in tensors.values())
            assert data <= 30_000 or len(tensors) == 1, (s, data, list(tensors))
        stored = {k: v for tensors in per_shard.values() for k, v in tensors.items()}
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
        assert set(index["weight_map"]) == set(stored)
    else:
        assert "model.safetensors" in files and "model.safetensors.index.json" not in files
        stored = load_file(out / "model.safetensors")
        with safe_open(out / "model.safetensors", framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert ("lm_head.weight" in stored) == (not variant["tied"])   # tied: stored once, as embed_tokens
    assert not any("inv_freq" in k for k in stored)
    assert read_json(out / "generation_config.json") == {"bos_token_id": 1, "eos_token_id": 2}

    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids), **FP32)
        torch.testing.assert_close(reloaded(ids).logits, hf(ids).logits, atol=0, rtol=0)  # same weights, same code
    assert reloaded.config.tie_word_embeddings == variant["tied"]


def test_round_trip_minift_to_minift(tiny_hf_checkpoint, tmp_path):
    directory, _ = tiny_hf_checkpoint(arch="llama", tied=False, n_kv=2, bias=True)
    model = _load(directory)
    save_pretrained(model, tmp_path / "a", max_shard_size=20_000)
    again = _load(tmp_path / "a")
    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    a, b = model.config.to_hf_dict(), again.config.to_hf_dict()
    assert a == b

    # Saving a second time into the same directory with another layout leaves no stale weights.
    save_pretrained(again, tmp_path / "a")
    assert sorted(f for f in os.listdir(tmp_path / "a") if "safetensors" in f) == ["model.safetensors"]


def test_save_in_bf16(tiny_hf_checkpoint, tmp_path):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=True)
    model = _load(directory)
    save_pretrained(model, tmp_path, dtype="bfloat16")
    header, _ = read_safetensors_header(tmp_path / "model.safetensors")
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert read_json(tmp_path / "config.json")["torch_dtype"] == "bfloat16"
    assert model.lm_head.weight.dtype == torch.float32                  # the model itself is untouched
    back = load_pretrained(tmp_path, dtype="bfloat16", device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.to(torch.bfloat16)), k


def test_save_refuses_wrapped_linears(tiny_hf_checkpoint, tmp_path):
    directory, _ = tiny_hf_checkpoint()
    model = _load(directory)

    class Wrapped(nn.Module):  # what a LoRA or 4-bit wrapper looks like from outside
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x)

    model.model.layers[1].self_attn.v_proj = Wrapped(model.model.layers[1].self_attn.v_proj)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.v_proj is a Wrapped") as info:
        save_pretrained(model, tmp_path)
    assert "lora.merge" in str(info.value)
    assert not os.path.exists(tmp_path / "config.json")                 # nothing half-written


def test_tokenizer_is_saved_with_the_model(tiny_hf_checkpoint, tmp_path):
    directory, _ = tiny_hf_checkpoint()
    model = _load(directory)

    class Tok:  # the interface minift.tokenizer.Tokenizer provides: .save(directory)
        def save(self, d):
            atomic_write_json({"tokenizer": True}, os.path.join(d, "tokenizer.json"))

    save_pretrained(model, tmp_path, tokenizer=Tok())
    assert read_json(tmp_path / "tokenizer.json") == {"tokenizer": True}
    with pytest.raises(TypeError, match=r"\.save"):
        save_pretrained(model, tmp_path / "b", tokenizer=object())


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("30KB") == 30_000
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError, match="5 gigs"):
        parse_size("5 gigs")


# ====================================================================== bad input
@pytest.fixture
def ckpt(tiny_hf_checkpoint):
    """A single-file tied Qwen2 checkpoint (a fresh copy per test: these tests damage it)."""
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=True, n_kv=2)
    return directory


@pytest.fixture
def sharded_ckpt(tiny_hf_checkpoint):
    directory, _ = tiny_hf_checkpoint(arch="qwen2", tied=False, sharded=True, n_kv=2)
    return directory


def _rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_config(ckpt):
    os.remove(os.path.join(ckpt, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json") as info:
        _load(ckpt)
    assert ckpt in str(info.value)


def test_missing_weights(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    open(os.path.join(ckpt, "pytorch_model.bin"), "wb").close()
    with pytest.raises(FileNotFoundError) as info:
        _load(ckpt)
    msg = str(info.value)
    assert ckpt in msg and "model.safetensors" in msg and "model.safetensors.index.json" in msg
    assert "pickle" in msg  # and why the .bin beside it is not read


def test_unsupported_architecture(ckpt):
    path = os.path.join(ckpt, "config.json")
    cfg = read_json(path)
    cfg["architectures"] = ["MistralForCausalLM"]
    atomic_write_json(cfg, path)
    with pytest.raises(ValueError, match="MistralForCausalLM") as info:
        _load(ckpt)
    assert path in str(info.value)


def test_missing_key(ckpt):
    _rewrite(os.path.join(ckpt, "model.safetensors"), lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    msg = str(info.value)
    assert "missing key 'model.layers.1.mlp.up_proj.weight'" in msg
    assert "[128, 64]" in msg and "model.safetensors" in msg
    # strict=False cannot help: a parameter with no value cannot be left on the meta device.
    with pytest.raises(CheckpointError, match="missing key"):
        _load(ckpt, strict=False)


def test_unexpected_key(ckpt):
    _rewrite(os.path.join(ckpt, "model.safetensors"),
             lambda t: t.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(3, 5)))
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    msg = str(info.value)
    assert "unexpected key 'model.layers.0.mlp.extra.weight' in model.safetensors" in msg and "[3, 5]" in msg
    assert ckpt in msg
    model = _load(ckpt, strict=False)                                  # skipped with a warning
    assert not any("extra" in k for k in model.state_dict())


def test_untied_checkpoint_must_store_the_head(sharded_ckpt):
    index_path = os.path.join(sharded_ckpt, "model.safetensors.index.json")
    index = read_json(index_path)
    shard = index["weight_map"].pop("lm_head.weight")
    _rewrite(os.path.join(sharded_ckpt, shard), lambda t: t.pop("lm_head.weight"))
    atomic_write_json(index, index_path)
    with pytest.raises(CheckpointError) as info:
        _load(sharded_ckpt)
    msg = str(info.value)
    assert "missing key 'lm_head.weight', shape [311, 64]" in msg and "tie_word_embeddings=false" in msg
    assert "model.safetensors.index.json" in msg


def test_tied_checkpoint_must_not_store_a_head(ckpt):
    _rewrite(os.path.join(ckpt, "model.safetensors"),
             lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    with pytest.raises(CheckpointError, match="unexpected key 'lm_head.weight'") as info:
        _load(ckpt)
    assert "tie_word_embeddings=true" in str(info.value)


def test_old_llama_inv_freq_is_ignored(ckpt):
    _rewrite(os.path.join(ckpt, "model.safetensors"),
             lambda t: t.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8)))
    model = _load(ckpt)   # a function of rope_theta and head_dim: recomputed, not read
    assert model.model.rotary_emb.inv_freq[1] < 1


def test_shape_mismatch(ckpt):
    path = os.path.join(ckpt, "config.json")
    cfg = read_json(path)
    cfg["intermediate_size"] = 96
    atomic_write_json(cfg, path)
    with pytest.raises(CheckpointError) as info:
        _load(ckpt)
    msg = str(info.value)
    assert ("shape mismatch for 'model.layers.0.mlp.gate_proj.weight' in model.safetensors: "
            "checkpoint [128, 64], model from config.json expects [96, 64]") in msg
    assert "model.layers.1.mlp.down_proj.weight" in msg                # every problem listed, not just the first


def test_non_float_tensor(ckpt):
    _rewrite(os.path.join(ckpt, "model.safetensors"),
             lambda t: t.__setitem__("model.norm.weight", torch.ones(64, dtype=torch.uint8)))
    with pytest.raises(CheckpointError, match="'model.norm.weight' in model.safetensors is U8"):
        _load(ckpt)


def test_truncated_file(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    header, _ = read_safetensors_header(path)
    last = max(header, key=lambda k: header[k]["data_offsets"][1])     # the tensor whose bytes get cut
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ValueError) as info:
        _load(ckpt)
    msg = str(info.value)
    assert path in msg and repr(last) in msg and "truncated" in msg


def test_truncated_inside_header(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match="header length") as info:
        _load(ckpt)
    assert path in str(info.value)


def test_corrupt_header(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x00garbage{{{")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        _load(ckpt)
    assert path in str(info.value)


def test_header_offsets_that_disagree(ckpt):
    path = os.path.join(ckpt, "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        rest = f.read()
    name = "model.norm.weight"
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end - 4]                     # one float short
    raw = json.dumps(header).encode().ljust(n)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + rest)
    with pytest.raises(ValueError) as info:
        _load(ckpt)
    assert path in str(info.value) and "'model.norm.weight'" in str(info.value)
    assert "[64] in F32 is 256 bytes" in str(info.value)


def test_missing_shard(sharded_ckpt):
    index = read_json(os.path.join(sharded_ckpt, "model.safetensors.index.json"))
    shard = index["weight_map"]["model.norm.weight"]
    os.remove(os.path.join(sharded_ckpt, shard))
    with pytest.raises(FileNotFoundError) as info:
        _load(sharded_ckpt)
    msg = str(info.value)
    assert shard in msg and "model.safetensors.index.json" in msg and "incomplete" in msg


def test_index_pointing_at_the_wrong_shard(sharded_ckpt):
    path = os.path.join(sharded_ckpt, "model.safetensors.index.json")
    index = read_json(path)
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][key] = shards[1]
    atomic_write_json(index, path)
    with pytest.raises(CheckpointError) as info:
        _load(sharded_ckpt)
    assert f"says {key!r} is in {shards[1]}" in str(info.value)


def test_index_reaching_outside_its_directory(sharded_ckpt):
    path = os.path.join(sharded_ckpt, "model.safetensors.index.json")
    index = read_json(path)
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    atomic_write_json(index, path)
    with pytest.raises(CheckpointError, match=r"\.\./elsewhere\.safetensors"):
        _load(sharded_ckpt)


def test_bad_json_names_file_and_line(ckpt):
    path = os.path.join(ckpt, "config.json")
    with open(path, "w") as f:
        f.write('{\n  "vocab_size": 311,\n  oops\n}')
    with pytest.raises(ValueError, match="line 3") as info:
        read_json(path)
    assert path in str(info.value)


# ====================================================================== finding a model
def _fake_cache(root, checkpoint_dir, repo_id="x/y", commit="abc", ref="main"):
    """The layout huggingface_hub writes: models--x--y/snapshots/<commit>/ and refs/<ref>."""
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    shutil.copytree(checkpoint_dir, snapshot)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", ref), "w") as f:
        f.write(commit)
    return snapshot


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """An empty cache in HF_HUB_CACHE and no other HF variables."""
    for key in ("HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_local_directory_wins(ckpt, hub_env):
    assert resolve_model_dir(ckpt) == os.path.abspath(ckpt)


def test_resolves_from_the_cache(ckpt, hub_env, monkeypatch):
    snapshot = _fake_cache(hub_env, ckpt)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                          # no network needed
    assert resolve_model_dir("x/y") == snapshot
    assert resolve_model_dir("x/y", revision="abc") == snapshot         # a commit names the snapshot
    model = load_pretrained("x/y", dtype="float32", device="cpu")
    assert model.config.name_or_path == "x/y"
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), _load(ckpt)(_ids()), atol=0, rtol=0)


def test_resolves_from_hf_home(ckpt, hub_env, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = _fake_cache(tmp_path / "home" / "hub", ckpt, repo_id="Org/Model-1.5B", commit="c0ffee")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("Org/Model-1.5B") == snapshot


def test_offline_and_not_cached(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and str(hub_env) in msg
    assert "`hf download Qwen/Qwen2.5-0.5B-Instruct`" in msg and "pip install minift[hub]" in msg
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct" in msg     # the name before huggingface_hub 1.0


def test_incomplete_cached_snapshot_is_not_used(ckpt, hub_env, monkeypatch):
    snapshot = _fake_cache(hub_env, ckpt)
    os.remove(os.path.join(snapshot, "model.safetensors"))            # an interrupted download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download x/y"):
        resolve_model_dir("x/y")


def test_downloads_with_huggingface_hub(ckpt, hub_env, monkeypatch):
    """Not offline and not cached: snapshot_download is called (faked here: no network in tests)
    with the cache directory and the file patterns, and a second call finds the cache."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, cache_dir=None, allow_patterns=None, **kw):
        calls.append(dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns))
        return _fake_cache(cache_dir, ckpt, repo_id=repo_id, commit="f00d")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    first = resolve_model_dir("x/y")
    assert calls == [dict(repo_id="x/y", revision=None, cache_dir=str(hub_env),
                          allow_patterns=checkpoint.HUB_ALLOW_PATTERNS)]
    assert {"*.json", "*.safetensors"} <= set(calls[0]["allow_patterns"])
    assert resolve_model_dir("x/y") == first and len(calls) == 1       # now cached: no second download


def test_download_failure_explains(hub_env, monkeypatch):
    import huggingface_hub

    def unreachable(*a, **kw):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError) as info:
        resolve_model_dir("x/y")
    assert "no route to huggingface.co" in str(info.value) and "hf download x/y" in str(info.value)


def test_without_huggingface_hub(hub_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)          # import fails as if not installed
    with pytest.raises(FileNotFoundError, match=r"huggingface_hub is not installed.*pip install minift\[hub\]"):
        resolve_model_dir("x/y")


def test_a_path_that_is_not_there(hub_env):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_model_dir("./runs/nope/checkpoint")


# ====================================================================== atomic writes
def test_crash_mid_save_keeps_previous_checkpoint(tiny_hf_checkpoint, tmp_path, monkeypatch):
    import safetensors.torch

    directory, _ = tiny_hf_checkpoint()
    model = _load(directory)
    out = tmp_path / "out"
    save_pretrained(model, out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}

    real_save_file = safetensors.torch.save_file

    def crash_half_way(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:                                # half the bytes are on disk...
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError("No space left on device")                         # ...when the disk fills

    monkeypatch.setattr(safetensors.torch, "save_file", crash_half_way)
    old_norm = model.model.norm.weight.detach().clone()
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)                               # the new weights differ
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, out)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # same files, same bytes, no .tmp
    reloaded = _load(out)
    torch.testing.assert_close(reloaded.model.norm.weight, old_norm, atol=0, rtol=0)


def test_atomic_write_exception_keeps_old_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json({"step": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write('{"step": 2, "half')
            raise RuntimeError("killed")
    assert read_json(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_killed_process_keeps_old_file(tmp_path):
    """A real kill: the child process exits (os._exit, no cleanup) in the middle of writing."""
    path = tmp_path / "state.json"
    atomic_write_json({"step": 1}, path)
    # Load safeio by file (it needs only the standard library), so the child does not import torch.
    code = ("import importlib.util, os\n"
            f"spec = importlib.util.spec_from_file_location('safeio', {safeio.__file__!r})\n"
            "safeio = importlib.util.module_from_spec(spec); spec.loader.exec_module(safeio)\n"
            f"with safeio.atomic_write({str(path)!r}, 'w') as f:\n"
            "    f.write('{\"step\": 2, \"ha'); f.flush(); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 9
    assert read_json(path) == {"step": 1}
    leftovers = [f for f in os.listdir(tmp_path) if f != "state.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.json.") and leftovers[0].endswith(".tmp")


def test_header_reader_agrees_with_safetensors(sharded_ckpt):
    for file in sorted(f for f in os.listdir(sharded_ckpt) if f.endswith(".safetensors")):
        path = os.path.join(sharded_ckpt, file)
        header, metadata = read_safetensors_header(path)
        with safe_open(path, framework="pt") as f:
            assert set(header) == set(f.keys())
            assert metadata == f.metadata()
            for k in f.keys():
                assert header[k]["shape"] == list(f.get_slice(k).get_shape())


def test_public_names():
    assert minift.load_pretrained is load_pretrained and minift.save_pretrained is save_pretrained
    assert minift.resolve_model_dir is resolve_model_dir
