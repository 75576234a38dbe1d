"""Checkpoints in the Hugging Face layout: find them, load them strictly, write them atomically.

A Hugging Face model directory holds

    config.json                      the numbers (ModelConfig.from_hf reads it)
    model.safetensors                every tensor, by its parameter name
      or model.safetensors.index.json + model-00001-of-0000N.safetensors ...
                                     {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}
    generation_config.json           bos/eos (and sampling defaults)
    tokenizer.json, tokenizer_config.json, ...

Because minift's parameter names are the checkpoint's names, loading is a key-by-key copy. It
runs in three steps, and nothing is allocated until the first two have passed:

  1. read every safetensors header (a few KB each; no tensor data) and check it is well formed;
  2. compare names and shapes with a model built on the meta device (shapes, no memory): every
     missing key, unexpected key and shape mismatch is reported at once, with its file;
  3. read each tensor, convert its dtype, move it to the device and hand it to the model with
     `load_state_dict(assign=True)`, so the tensor read *becomes* the parameter. The weights are
     never held twice (no random init to overwrite, no second copy to load into).

Only safetensors and JSON are read: no pickle (`pytorch_model.bin`), no remote code.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Callable

import torch
import torch.nn as nn

from minift import distributed, quant
from minift.config import ModelConfig
from minift.cpu_memory import release_freed_memory
from minift.device import pick_device, resolve_dtype
from minift.kernels import nf4
from minift.model import RotaryEmbedding, Transformer
from minift.safeio import (SafetensorsReader, atomic_save_file, atomic_write_json, read_json,
                           read_safetensors_header)

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# What a download fetches: configs, weights, and the tokenizer files (tokenizer.json, vocab.json,
# merges.txt, tokenizer_config.json, special_tokens_map.json, or a sentencepiece tokenizer.model).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "tokenizer.model"]
# The linear layers a full checkpoint stores as plain weight (+ bias) pairs.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_TRUE = {"1", "on", "yes", "true"}


class CheckpointError(ValueError):
    """A checkpoint that does not match its config, or a model that cannot be saved as one."""


# ====================================================================== finding a model
def resolve_model_dir(path_or_id: str | os.PathLike, revision: str | None = None) -> str:
    """A local directory holding config.json and weights, from a path or a Hub id.

    In order: (1) an existing local directory; (2) the local Hugging Face cache, read directly
    (no huggingface_hub needed): <cache>/models--Org--Name/snapshots/<commit>/, where
    refs/<revision or main> names the commit; (3) a download with huggingface_hub's
    snapshot_download (configs, safetensors and tokenizer files only), unless HF_HUB_OFFLINE is
    set or huggingface_hub is not installed; (4) an error saying how to fetch the weights.
    """
    name = os.fspath(path_or_id)
    if os.path.isdir(name):
        return os.path.abspath(name)
    if os.path.exists(name):
        raise NotADirectoryError(f"{name}: is a file; pass the directory holding config.json and the weights")
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(f"{name}: no such directory (and it is not a Hugging Face id like 'Org/Name')")

    cache = hub_cache_dir()
    snapshot = _cached_snapshot(cache, name, revision)
    if snapshot is not None:
        logger.info("using cached snapshot %s", snapshot)
        return snapshot

    rev = f" --revision {revision}" if revision else ""
    # huggingface_hub >= 1.0 ships the `hf` command; older releases call it `huggingface-cli`.
    fetch = (f"fetch it where there is network with `hf download {name}{rev}` (`huggingface-cli download "
             f"{name}{rev}` with huggingface_hub < 1.0; install it with `pip install minift[hub]`), "
             f"or pass a local directory")
    where = f"{name!r} is not a local directory and is not in the Hugging Face cache at {cache}"
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        raise FileNotFoundError(f"{where}, and HF_HUB_OFFLINE is set, so nothing is downloaded: {fetch}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{where}, and huggingface_hub is not installed to download it "
                                f"(`pip install minift[hub]`): {fetch}") from None
    try:
        # cache_dir is passed explicitly: huggingface_hub reads HF_HUB_CACHE once, at import,
        # and we want the directory this function just looked in.
        return snapshot_download(name, revision=revision, cache_dir=cache, allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as e:  # network down, gated repo, unknown id: all need the same advice
        raise FileNotFoundError(f"{where}, and downloading it failed ({type(e).__name__}: {e}): {fetch}") from e


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (its documented order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def _cached_snapshot(cache: str, repo_id: str, revision: str | None) -> str | None:
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    if not os.path.isdir(repo):
        return None
    revision = revision or "main"
    commit = revision
    ref = os.path.join(repo, "refs", revision)
    if os.path.isfile(ref):  # a branch or tag name; a commit hash names the snapshot directly
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    snapshot = os.path.join(repo, "snapshots", commit)
    # An interrupted download can leave a snapshot with config.json and no weights: not usable.
    if os.path.isfile(os.path.join(snapshot, "config.json")) and _weights_present(snapshot):
        return snapshot
    return None


def _weights_present(directory: str) -> bool:
    if os.path.isfile(os.path.join(directory, SINGLE_FILE)):
        return True
    index = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(index):
        return False
    try:
        shards = set(read_json(index)["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(os.path.isfile(os.path.join(directory, s)) for s in shards)


def _looks_like_hub_id(name: str) -> bool:
    # "Org/Name" or "Name": letters, digits, '-', '_', '.'; no '--' or '..' (the Hub forbids them).
    return (re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", name) is not None
            and "--" not in name and ".." not in name)


def _env_true(key: str) -> bool:
    return os.environ.get(key, "").strip().lower() in _TRUE


# ====================================================================== loading
def load_pretrained(path_or_id: str | os.PathLike, dtype: str | torch.dtype = "auto",
                    device: str | torch.device = "auto", strict: bool = True,
                    revision: str | None = None, quantize: str | None = None, blocksize: int = 64,
                    double_quant: bool = True) -> Transformer:
    """A Transformer with the checkpoint's weights, in eval mode.

    dtype: "auto" (bf16 where the device runs it, else fp32; see minift.device), "bfloat16",
    "float32", "float16" or a torch.dtype. Every float tensor is converted to it; the rotary
    inv_freq stays fp32 (it is recomputed, never stored).
    strict: with False, unexpected keys (and an lm_head.weight in a tied checkpoint) are skipped
    with a warning. Missing keys and shape mismatches are errors either way: a parameter with no
    value cannot be left on the meta device.
    quantize: None, or "nf4" for a QLoRA base: every projection (the seven per layer; embeddings,
    norms and the head stay float, as quant.quantize_model leaves them) is read, moved to the
    device, quantized there with `blocksize` and `double_quant`, and its float copy dropped before
    the next is read, so the float model never exists on the device or in host memory. The bytes
    equal load_pretrained(...) followed by quant.quantize_model(model, blocksize, double_quant).
    A checkpoint saved by transformers + bitsandbytes in 4-bit NF4 (config.json
    quantization_config, quant_method "bitsandbytes", load_in_4bit) loads as it is stored, into
    quant.Linear4bit layers, with or without quantize (its own blocksize wins); any other
    quantization (FP4, 8-bit, GPTQ, AWQ, ...) is refused by name.
    """
    if quantize not in (None, "nf4"):
        raise ValueError(f"quantize must be None or 'nf4', not {quantize!r}")
    if quantize:
        nf4._check_blocksize(blocksize)
    directory = resolve_model_dir(path_or_id, revision)
    cfg = ModelConfig.from_hf(directory)
    _check_quantization_config(cfg, directory)
    cfg.extra.pop("quantization_config", None)  # how it was stored; save_pretrained writes it from the layers
    cfg.name_or_path = os.fspath(path_or_id)
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cpu":
        # Each tensor's read buffer is freed once it is on its way; glibc would keep those frees
        # resident (its mmap threshold grows with every large free), so a streamed NF4 load could
        # hold the float model's bytes after all. minift/cpu_memory.py says why and how.
        release_freed_memory()

    # Steps 1 and 2: headers and names/shapes only; an error here has allocated nothing.
    found = _read_headers(directory)                                   # name -> (file, header entry)
    with torch.device("meta"):
        model = Transformer(cfg)
    readers = {file: SafetensorsReader(os.path.join(directory, file))
               for file in sorted({file for file, _ in found.values()})}
    try:
        four_bit = _four_bit_groups(model, found, readers, directory)  # module -> its bnb keys
        packed_keys = {k for keys in four_bit.values() for k in keys}
        float_found = {k: v for k, v in found.items() if k not in packed_keys}
        plan = _match_keys(model, float_found, directory, strict, four_bit=set(four_bit))  # name -> file
        to_quantize = set(quant.projection_names(model)) - set(four_bit) if quantize else set()

        # Step 3: one unit at a time from disk (a tensor, or a projection with its bias and, for
        # bnb checkpoints, its statistics), in file order, onto the device, into the model.
        unit_of = {k: k for k in plan}
        for module in set(four_bit) | to_quantize:
            for k in four_bit.get(module, [module + ".weight"]) + [module + ".bias"]:
                if k in plan or k in four_bit.get(module, ()):
                    unit_of[k] = module
        order = sorted(unit_of, key=lambda k: (found[k][0], found[k][1]["data_offsets"][0]))
        units = list(dict.fromkeys(unit_of[k] for k in order))         # first appearance in the files

        def read(key):
            return readers[found[key][0]].read(key)

        for unit in units:
            if unit in four_bit:
                keys = four_bit[unit] + ([unit + ".bias"] if unit + ".bias" in plan else [])
                linear = model.get_submodule(unit)
                try:
                    layer = quant.Linear4bit.from_bnb_state({k: read(k) for k in keys}, unit + ".",
                                                            linear.in_features, linear.out_features,
                                                            compute_dtype=dt, device=dev)
                except ValueError as e:
                    raise CheckpointError(f"{directory}: {unit}: {e}") from None
                quant.replace_module(model, unit, layer)
            elif unit in to_quantize:
                weight = read(unit + ".weight").to(device=dev, dtype=dt)          # (out, in), float, transient
                bias = read(unit + ".bias").to(device=dev, dtype=dt) if unit + ".bias" in plan else None
                quant.replace_module(model, unit, quant.Linear4bit.from_weight(
                    weight, bias, blocksize=blocksize, double_quant=double_quant))
                del weight, bias  # the float copy goes before the next projection is read
            else:
                assign_tensor(model, unit, read(unit).to(device=dev, dtype=dt))
    finally:
        for reader in readers.values():
            reader.close()

    if cfg.tie_word_embeddings:
        # The head *is* the embedding: point it at the tensor just read.
        model.lm_head.weight = model.model.embed_tokens.weight
    # inv_freq is a non-persistent buffer (never in a checkpoint), still on meta: compute it, in fp32.
    model.model.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(dev)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if t.is_meta:  # _match_keys guarantees every key has a value
            raise RuntimeError(f"internal: {name} was left on the meta device after loading {directory}")
    cfg.torch_dtype = str(dt).removeprefix("torch.")
    n4 = len(four_bit) + len(to_quantize)
    logger.info("loaded %s (%s parameters, %s, %s%s)", directory, f"{model.num_params():,}", dt, dev,
                f", {n4} projections in NF4" if n4 else "")
    return model.eval()


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """model.<name> = tensor, as load_state_dict(assign=True) does: the tensor read becomes the
    parameter (no second copy), keeping the parameter's requires_grad."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, leaf)
    if isinstance(old, nn.Parameter):
        setattr(module, leaf, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module.register_buffer(leaf, tensor)


# ---------------------------------------------------------------------- quantized checkpoints
BNB_STATE_KEY = "weight.quant_state.bitsandbytes__nf4"
_BNB_STAT_KEYS = ("weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map")


def _check_quantization_config(cfg: ModelConfig, directory: str) -> None:
    """Accept config.json's quantization_config only when it is bitsandbytes 4-bit NF4; refuse
    every other kind by name (minift has no GPTQ/AWQ/8-bit/FP4 kernels, and a wrong guess would
    give a model that runs and outputs noise)."""
    qc = cfg.extra.get("quantization_config")
    if qc is None:
        return
    file = os.path.join(directory, "config.json")
    if not isinstance(qc, dict):
        raise CheckpointError(f"{file}: quantization_config must be a JSON object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if method is None and (qc.get("load_in_4bit") or qc.get("load_in_8bit")):
        method = "bitsandbytes"  # configs written before transformers added quant_method
    if method == "bitsandbytes":
        if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
            kind = "8-bit (LLM.int8, load_in_8bit)"
        elif qc.get("load_in_4bit") or qc.get("_load_in_4bit"):
            quant_type = qc.get("bnb_4bit_quant_type", "fp4")  # transformers' BitsAndBytesConfig default
            if quant_type == "nf4":
                return
            kind = f"4-bit, bnb_4bit_quant_type {quant_type!r}"
        else:
            kind = "neither load_in_4bit nor load_in_8bit set"
    else:
        details = [f"{k} {qc[k]!r}" for k in ("bits", "w_bit", "version", "format", "quant_type", "fmt")
                   if k in qc]
        kind = ", ".join(details) or "no bit width given"
    raise CheckpointError(
        f"{file}: quantization_config has quant_method {method!r} ({kind}); minift reads only bitsandbytes "
        f"4-bit NF4 checkpoints (load_in_4bit with bnb_4bit_quant_type 'nf4'). Load the float (bf16) release "
        f"with quantize='nf4' instead.")


def _four_bit_groups(model: Transformer, found: dict[str, tuple[str, dict]],
                     readers: dict[str, SafetensorsReader], directory: str) -> dict[str, list[str]]:
    """The projections the checkpoint stores in bitsandbytes' 4-bit layout: module name -> its keys
    (`weight`, the statistics, the quant_state blob; the bias is matched as a float tensor). Checks
    names, shapes and dtypes from the headers and the small quant_state JSON blobs only, so a bad
    file fails before any weight is read."""
    groups: dict[str, list[str]] = {}
    problems = []
    for key, (file, info) in found.items():
        if key.endswith(".weight.quant_state.bitsandbytes__fp4"):
            problems.append(f"{key!r} in {file}: bitsandbytes FP4 weights are not supported, only NF4")
            continue
        if not key.endswith("." + BNB_STATE_KEY):
            continue
        module = key[: -len(BNB_STATE_KEY) - 1]
        keys = [module + ".weight"] + [f"{module}.{k}" for k in _BNB_STAT_KEYS if f"{module}.{k}" in found] + [key]
        groups[module] = keys
        try:
            linear = model.get_submodule(module)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear) or module.rsplit(".", 1)[-1] == "lm_head":
            problems.append(f"{key!r} in {file}: {module} is not one of the model's projections "
                            f"(minift stores only q/k/v/o and gate/up/down in 4 bits; the head stays float)")
            continue
        out_f, in_f = linear.out_features, linear.in_features
        try:
            raw = readers[file].read(key)                                  # a few hundred bytes of JSON
            meta = json.loads(bytes(raw.reshape(-1).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{key!r} in {file}: not UTF-8 JSON ({e})")
            continue
        if meta.get("quant_type") != "nf4":
            problems.append(f"{key!r} in {file}: quant_type {meta.get('quant_type')!r}, only 'nf4' is supported")
            continue
        if meta.get("shape") != [out_f, in_f]:
            problems.append(f"{key!r} in {file}: shape {meta.get('shape')}, the model from config.json "
                            f"expects [{out_f}, {in_f}]")
            continue
        blocksize = meta.get("blocksize")
        if blocksize not in nf4.BLOCKSIZES:
            problems.append(f"{key!r} in {file}: blocksize {blocksize!r} is not one of {nf4.BLOCKSIZES}")
            continue
        nblocks = -(-out_f * in_f // blocksize)
        double = "nested_offset" in meta
        expect = {module + ".weight": (None, (out_f * in_f + 1) // 2),   # bytes, any storage dtype
                  module + ".weight.absmax": ("U8" if double else "F32", [nblocks]),
                  module + ".weight.quant_map": ("F32", [16])}
        if double:
            expect[module + ".weight.nested_absmax"] = ("F32", [-(-nblocks // nf4.NESTED_BLOCKSIZE)])
            expect[module + ".weight.nested_quant_map"] = ("F32", [256])
        for k, (dtype, shape) in expect.items():
            if k not in found:
                problems.append(f"missing key {k!r} for the 4-bit {module} (its quant_state is in {file})")
                continue
            f, inf = found[k]
            nbytes = inf["data_offsets"][1] - inf["data_offsets"][0]
            if dtype is None:
                if nbytes != shape:
                    problems.append(f"{k!r} in {f}: packed NF4 codes of shape {inf['shape']} ({inf['dtype']}, "
                                    f"{nbytes} bytes); a [{out_f}, {in_f}] weight needs {shape} bytes")
            elif (inf["dtype"], inf["shape"]) != (dtype, shape):
                problems.append(f"{k!r} in {f}: {inf['dtype']} {inf['shape']}, expected {dtype} {shape} "
                                f"(blocksize {blocksize}, double quantization {double})")
    if problems:
        shown = "\n  ".join(sorted(problems)[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{directory}: the 4-bit weights do not match config.json:\n  {shown}{more}")
    return groups


def _read_headers(directory: str) -> dict[str, tuple[str, dict]]:
    """Every tensor in the checkpoint: name -> (file name, {"dtype", "shape", "data_offsets"})."""
    single, index = os.path.join(directory, SINGLE_FILE), os.path.join(directory, INDEX_FILE)
    if os.path.isfile(single):  # transformers prefers the single file too when both exist
        files, weight_map = [SINGLE_FILE], None
    elif os.path.isfile(index):
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: needs a \"weight_map\" object mapping tensor names to shard files")
        files = sorted(set(weight_map.values()))
        for shard in files:
            if os.path.basename(shard) != shard:  # names only: an index must not reach outside its directory
                raise CheckpointError(f"{index}: shard name {shard!r} must be a file name in {directory}")
            if not os.path.isfile(os.path.join(directory, shard)):
                key = next(k for k, v in weight_map.items() if v == shard)
                raise FileNotFoundError(f"{index} lists shard {shard} (holding e.g. {key!r}), but "
                                        f"{os.path.join(directory, shard)} does not exist: the download is "
                                        f"incomplete")
    else:
        present = sorted(os.listdir(directory))
        hint = ""
        if any(p.endswith((".bin", ".pt", ".pth")) for p in present):
            hint = (" minift reads only safetensors (pickle files can run code when loaded); convert with "
                    "transformers: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, "
                    "safe_serialization=True).")
        raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (found: {', '.join(present)}).{hint}")

    found: dict[str, tuple[str, dict]] = {}
    for file in files:
        path = os.path.join(directory, file)
        header, _ = read_safetensors_header(path)
        for name, info in header.items():
            if name in found:
                raise CheckpointError(f"{directory}: tensor {name!r} is in both {found[name][0]} and {file}")
            found[name] = (file, info)
    if weight_map is not None:
        for name, shard in weight_map.items():
            if found.get(name, (None,))[0] != shard:
                raise CheckpointError(f"{index}: says {name!r} is in {shard}, but "
                                      f"{os.path.join(directory, shard)} has no such tensor")
    return found


def _match_keys(model: Transformer, found: dict[str, tuple[str, dict]], directory: str,
                strict: bool, four_bit: set[str] = frozenset()) -> dict[str, str]:
    """Compare the checkpoint's float tensors' names, shapes and dtypes with the (meta) model.
    four_bit: modules whose weight the checkpoint stores in 4 bits (checked by _four_bit_groups).
    Returns the plan name -> file for the tensors to load; raises listing every problem."""
    cfg = model.config
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}  # non-persistent inv_freq excluded
    for module in four_bit:
        del expected[module + ".weight"]
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")  # tied: the head *is* embed_tokens, stored once, under that name
    problems, skipped, plan = [], [], {}
    for name, (file, info) in found.items():
        if name.endswith("rotary_emb.inv_freq"):
            # Old Llama checkpoints stored it. It is a function of rope_theta and head_dim and is
            # recomputed from config.json, so it carries nothing to load.
            skipped.append(name)
            continue
        if name not in expected:
            why = ""
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                why = (" (config.json says tie_word_embeddings=true, so the head is embed_tokens and "
                       "is not stored; set it to false if this head is a separate matrix)")
            msg = f"unexpected key {name!r} in {file}, shape {info['shape']}{why}"
            if strict:
                problems.append(msg)
            else:
                skipped.append(name)
                logger.warning("%s: skipping %s", directory, msg)
            continue
        if info["shape"] != expected[name]:
            problems.append(f"shape mismatch for {name!r} in {file}: checkpoint {info['shape']}, "
                            f"model from config.json expects {expected[name]}")
        if info["dtype"] not in FLOAT_DTYPES:
            problems.append(f"{name!r} in {file} is {info['dtype']}: only float tensors (F32, F16, BF16) are read, "
                            f"besides bitsandbytes 4-bit NF4 projections (with their quant_state keys); load the "
                            f"bf16 release with quantize='nf4' instead")
        plan[name] = file
    files = sorted({file for file, _ in found.values()}) or ["(no tensors at all)"]
    where = files[0] if len(files) == 1 else f"any of {', '.join(files)} (listed in {INDEX_FILE})"
    for name in expected.keys() - found.keys():
        hint = ""
        if name == "lm_head.weight":
            hint = " (config.json says tie_word_embeddings=false, so the checkpoint must store the head)"
        problems.append(f"missing key {name!r}, shape {expected[name]}: not in {where}{hint}")
    if problems:
        shown = "\n  ".join(sorted(problems)[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointError(f"{directory}: the weights do not match config.json "
                              f"({cfg.architecture}, {cfg.num_hidden_layers} layers):\n  {shown}{more}")
    if skipped:
        logger.info("%s: not loaded: %s", directory, ", ".join(sorted(skipped)))
    return plan


# ====================================================================== saving
def save_pretrained(model: Transformer, out_dir: str | os.PathLike, tokenizer=None,
                    max_shard_size: int | str = "5GB", dtype: str | torch.dtype | None = None) -> None:
    """Write `model` in the Hugging Face layout; transformers' from_pretrained reads the result.

    Writes config.json, model.safetensors (or shards + model.safetensors.index.json when the
    weights exceed max_shard_size, e.g. "5GB" = 5e9 bytes, "500MiB", or an int of bytes),
    generation_config.json, and the tokenizer's files if one is given. dtype: None keeps the
    model's dtypes; else every float tensor is converted (e.g. "bfloat16" to halve a fp32 model).
    Each file is written atomically (minift.safeio); config.json goes last, so a directory whose
    save was interrupted has no config.json and fails to load loudly rather than half-new.

    LoRA wrappers must be merged first (minift.lora.merge), or saved alone (lora.save_adapter).
    A model whose projections are quant.Linear4bit (QLoRA's base) is written in bitsandbytes'
    4-bit layout with config.json's quantization_config, which transformers + bitsandbytes load
    as it is (and load_pretrained too); its 4-bit tensors keep their dtypes whatever `dtype` says.
    """
    out_dir = os.fspath(out_dir)
    cfg = model.config
    state, packed_keys = _checkpoint_state_dict(model)
    if distributed.is_distributed():  # torchrun: gather FSDP shards to rank 0, which alone writes
        state = {k: distributed.full_tensor(v) for k, v in state.items()}
        if not distributed.is_main():
            distributed.barrier()
            return
    if dtype is not None:
        dtype = resolve_dtype(dtype, torch.device("cpu"))

    def stored_dtype(name):
        return state[name].dtype if dtype is None or name in packed_keys else dtype

    units = [(name, t.numel() * stored_dtype(name).itemsize) for name, t in state.items()]
    write_weights(out_dir, units, lambda keys: {k: state[k].detach().to(device="cpu", dtype=stored_dtype(k))
                                                .contiguous() for k in keys}, max_shard_size)
    write_configs(out_dir, cfg, torch_dtype=stored_dtype("model.embed_tokens.weight"), tokenizer=tokenizer,
                  quantization_config=bnb_quantization_config(model))
    distributed.barrier()  # the other ranks return once rank 0's files are there


def write_weights(out_dir: str, units: list[tuple[object, int]],
                  produce: Callable[[list], dict[str, torch.Tensor]], max_shard_size: int | str = "5GB") -> None:
    """Write the weights of a checkpoint one shard at a time (shared by save_pretrained and
    minift.random_weights). units: (unit, bytes) in file order, a unit being whatever `produce`
    turns into tensors (a tensor name; a layer); produce(units of one shard) -> {name: CPU tensor}.
    Shards are planned from the sizes first (a new one when the next unit would overflow
    max_shard_size), so their names model-0000k-of-0000N are known before anything is made; only
    one shard's tensors are in host memory at a time. The index's total_size counts what was
    written. Weights of an earlier save with another layout are removed."""
    limit = parse_size(max_shard_size)
    shards: list[list] = [[]]
    size = 0
    for unit, nbytes in units:
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(unit)
        size += nbytes
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_weights(out_dir, keep=set(names) | ({INDEX_FILE} if n > 1 else set()))
    weight_map, total = {}, 0
    for file, shard in zip(names, shards):
        tensors = produce(shard)
        atomic_save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = file
            total += t.numel() * t.element_size()
        del tensors
    if n > 1:
        atomic_write_json({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                          os.path.join(out_dir, INDEX_FILE))
    logger.info("wrote %s (%d file%s, %s bytes)", out_dir, n, "s" if n > 1 else "", f"{total:,}")


def write_configs(out_dir: str, cfg: ModelConfig, torch_dtype: torch.dtype, tokenizer=None,
                  quantization_config: dict | None = None) -> None:
    """generation_config.json, the tokenizer's files, then config.json (last: see save_pretrained)."""
    generation = {k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id),
                                    ("pad_token_id", cfg.pad_token_id)) if v is not None}
    atomic_write_json(generation, os.path.join(out_dir, "generation_config.json"))
    if tokenizer is not None:
        if not hasattr(tokenizer, "save"):
            raise TypeError(f"tokenizer must have a .save(directory) method (minift.Tokenizer); "
                            f"got {type(tokenizer).__name__}")
        tokenizer.save(out_dir)
    extra = {k: v for k, v in cfg.extra.items() if k != "quantization_config"}
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    out_cfg = dataclasses.replace(cfg, torch_dtype=str(torch_dtype).removeprefix("torch."), extra=extra)
    atomic_write_json(out_cfg.to_hf_dict(), os.path.join(out_dir, "config.json"))


def bnb_quantization_config(model: nn.Module) -> dict | None:
    """config.json's quantization_config for a model with Linear4bit projections (None for a
    float model): see bnb_4bit_config. Projections left float are listed as skipped."""
    layers = [m for m in model.modules() if isinstance(m, quant.Linear4bit)]
    if not layers:
        return None
    float_projections = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
                         and name.rsplit(".", 1)[-1] in LINEAR_NAMES and name.rsplit(".", 1)[-1] != "lm_head"]
    return bnb_4bit_config(layers[0].double_quant, layers[0].compute_dtype, float_projections)


def bnb_4bit_config(double_quant: bool, compute_dtype: torch.dtype, float_projections: list[str] | None = None
                    ) -> dict:
    """quantization_config as transformers' BitsAndBytesConfig(load_in_4bit=True,
    bnb_4bit_quant_type="nf4", ...).to_dict() writes it. transformers reads each layer's blocksize
    from its quant_state blob, and leaves the output head (and llm_int8_skip_modules) unconverted."""
    return {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": str(compute_dtype).removeprefix("torch."),
        "bnb_4bit_quant_storage": "uint8", "llm_int8_skip_modules": float_projections or None,
        "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False,
        "llm_int8_enable_fp32_cpu_offload": False,
    }


def _checkpoint_state_dict(model: Transformer) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The state dict a checkpoint stores, after checking the model is one (plain nn.Linear or
    4-bit Linear4bit projections, a float head); and the keys of the 4-bit tensors."""
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        four_bit_ok = isinstance(module, quant.Linear4bit) and leaf != "lm_head"
        if leaf in LINEAR_NAMES and type(module) is not nn.Linear and not four_bit_ok:
            raise CheckpointError(
                f"{name} is a {type(module).__name__}, not a plain nn.Linear or a quant.Linear4bit: a full "
                f"checkpoint stores plain (or 4-bit) weights. For LoRA, merge first (minift.lora.merge(model)) "
                f"or save only the adapter (minift.lora.save_adapter).")
    cfg = model.config
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied != cfg.tie_word_embeddings:
        raise CheckpointError(f"config.tie_word_embeddings is {cfg.tie_word_embeddings} but lm_head.weight "
                              f"{'is' if tied else 'is not'} the embedding matrix: make them agree before saving")
    state = model.state_dict()
    four_bit = {name: m for name, m in model.named_modules() if isinstance(m, quant.Linear4bit)}
    packed_keys = {k for k in state if k.rpartition(".weight")[0] in four_bit
                   and (k.endswith(".weight") or ".weight." in k)}
    if tied:
        del state["lm_head.weight"]  # stored once, as model.embed_tokens.weight (transformers re-ties it)
    with torch.device("meta"):
        reference = Transformer(cfg).state_dict()
    if tied:
        del reference["lm_head.weight"]
    bad_shapes = [f"{name}: ({m.out_features}, {m.in_features}) vs config {list(reference[name + '.weight'].shape)}"
                  for name, m in four_bit.items() if name + ".weight" in reference
                  and (m.out_features, m.in_features) != tuple(reference[name + ".weight"].shape)]
    for name in four_bit:  # compared above by shape; their stored keys are bitsandbytes'
        reference.pop(name + ".weight", None)
    plain = {k: v for k, v in state.items() if k not in packed_keys}
    extra, missing = plain.keys() - reference.keys(), reference.keys() - plain.keys()
    bad_shapes += [f"{k}: {list(plain[k].shape)} vs config {list(reference[k].shape)}"
                   for k in plain.keys() & reference.keys() if plain[k].shape != reference[k].shape]
    if extra or missing or bad_shapes:
        raise CheckpointError(f"the model's tensors do not match its config (merge LoRA first?): "
                              f"extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}, shapes {bad_shapes[:5]}")
    return state, packed_keys


_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _remove_stale_weights(out_dir: str, keep: set[str]) -> None:
    # A previous save with a different layout would leave weights a loader might pick instead of
    # ours (a lone model.safetensors beats an index). Remove them, never anything else.
    for file in os.listdir(out_dir):
        if file not in keep and (file in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.fullmatch(file)):
            os.remove(os.path.join(out_dir, file))


def parse_size(size: int | str) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as transformers counts), '500MiB' -> 500 * 2**20, 1024 -> 1024."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB', '500MiB' or 1000000")
    unit = (m.group(2) or "b").lower()
    scale = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[unit]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value
