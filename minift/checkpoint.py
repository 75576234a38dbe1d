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
import logging
import os
import re

import torch
import torch.nn as nn
from safetensors import safe_open

from minift import distributed
from minift.config import ModelConfig
from minift.device import pick_device, resolve_dtype
from minift.model import RotaryEmbedding, Transformer
from minift.safeio import (atomic_save_file, atomic_write_json, read_json, read_safetensors_header)

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
                    revision: str | None = None) -> Transformer:
    """A Transformer with the checkpoint's weights, in eval mode.

    dtype: "auto" (bf16 where the device runs it, else fp32; see minift.device), "bfloat16",
    "float32", "float16" or a torch.dtype. Every tensor is converted to it; the rotary inv_freq
    stays fp32 (it is recomputed, never stored).
    strict: with False, unexpected keys (and an lm_head.weight in a tied checkpoint) are skipped
    with a warning. Missing keys and shape mismatches are errors either way: a parameter with no
    value cannot be left on the meta device.
    """
    directory = resolve_model_dir(path_or_id, revision)
    cfg = ModelConfig.from_hf(directory)
    cfg.name_or_path = os.fspath(path_or_id)
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)

    # Steps 1 and 2: headers and names/shapes only; an error here has allocated nothing.
    found = _read_headers(directory)                                   # name -> (file, header entry)
    with torch.device("meta"):
        model = Transformer(cfg)
    plan = _match_keys(model, found, directory, strict)               # name -> file

    # Step 3: one tensor at a time from disk, converted, onto the device, into the model.
    state = {}
    for file in sorted(set(plan.values())):
        with safe_open(os.path.join(directory, file), framework="pt", device="cpu") as f:
            for name in (n for n, fl in plan.items() if fl == file):
                state[name] = f.get_tensor(name).to(device=dev, dtype=dt)
    result = model.load_state_dict(state, strict=False, assign=True)
    del state
    expected_missing = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:  # _match_keys guarantees this
        raise RuntimeError(f"internal: load_state_dict missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    if cfg.tie_word_embeddings:
        # assign=True replaced embed_tokens.weight with a new Parameter; point the head at it again.
        model.lm_head.weight = model.model.embed_tokens.weight
    # inv_freq is a non-persistent buffer (never in a checkpoint), still on meta: compute it, in fp32.
    model.model.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(dev)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if t.is_meta:
            raise RuntimeError(f"internal: {name} was left on the meta device after loading {directory}")
    cfg.torch_dtype = str(dt).removeprefix("torch.")
    logger.info("loaded %s (%s parameters, %s, %s)", directory, f"{model.num_params():,}", dt, dev)
    return model.eval()


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
                strict: bool) -> dict[str, str]:
    """Compare the checkpoint's names, shapes and dtypes with the (meta) model. Returns the
    plan name -> file for the tensors to load; raises listing every problem."""
    cfg = model.config
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}  # non-persistent inv_freq excluded
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
            problems.append(f"{name!r} in {file} is {info['dtype']}: only float tensors (F32, F16, BF16) are "
                            f"read; quantized checkpoints are not (load the bf16 release, then minift.quant)")
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
    model's dtypes; else every tensor is converted (e.g. "bfloat16" to halve a fp32 model).
    Each file is written atomically (minift.safeio); config.json goes last, so a directory whose
    save was interrupted has no config.json and fails to load loudly rather than half-new.

    The model must be plain: LoRA wrappers must be merged first (minift.lora.merge), and a
    4-bit model cannot be saved as a full checkpoint (save the adapter instead).
    """
    out_dir = os.fspath(out_dir)
    cfg = model.config
    state = _plain_state_dict(model)
    if distributed.is_distributed():  # torchrun: gather FSDP shards to rank 0, which alone writes
        state = {k: distributed.full_tensor(v) for k, v in state.items()}
        if not distributed.is_main():
            distributed.barrier()
            return
    if dtype is not None:
        dtype = resolve_dtype(dtype, torch.device("cpu"))
    limit = parse_size(max_shard_size)

    # Plan the shards: tensors in state-dict order, a new shard when the next would overflow.
    def nbytes(t):
        return t.numel() * (dtype or t.dtype).itemsize
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        if shards[-1] and size + nbytes(t) > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes(t)
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_weights(out_dir, keep=set(names) | ({INDEX_FILE} if n > 1 else set()))
    for file, keys in zip(names, shards):
        # One shard at a time on the CPU: peak host memory is one shard, not the model.
        tensors = {k: state[k].detach().to(device="cpu", dtype=dtype or state[k].dtype).contiguous() for k in keys}
        atomic_save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
        del tensors
    if n > 1:
        weight_map = {k: file for file, keys in zip(names, shards) for k in keys}
        total = sum(nbytes(t) for t in state.values())
        atomic_write_json({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                          os.path.join(out_dir, INDEX_FILE))

    generation = {k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id),
                                    ("pad_token_id", cfg.pad_token_id)) if v is not None}
    atomic_write_json(generation, os.path.join(out_dir, "generation_config.json"))
    if tokenizer is not None:
        if not hasattr(tokenizer, "save"):
            raise TypeError(f"tokenizer must have a .save(directory) method (minift.Tokenizer); "
                            f"got {type(tokenizer).__name__}")
        tokenizer.save(out_dir)
    saved_dtype = dtype or state["model.embed_tokens.weight"].dtype
    out_cfg = dataclasses.replace(cfg, torch_dtype=str(saved_dtype).removeprefix("torch."))
    atomic_write_json(out_cfg.to_hf_dict(), os.path.join(out_dir, "config.json"))
    logger.info("saved %s (%d file%s)", out_dir, n, "s" if n > 1 else "")
    distributed.barrier()  # the other ranks return once the files are there


def _plain_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint stores, after checking the model is a plain one."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEAR_NAMES and type(module) is not nn.Linear:
            raise CheckpointError(
                f"{name} is a {type(module).__name__}, not a plain nn.Linear: a full checkpoint stores plain "
                f"weights. For LoRA, merge first (minift.lora.merge(model)) or save only the adapter "
                f"(minift.lora.save_adapter); a 4-bit base cannot be written back as a full checkpoint.")
    cfg = model.config
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied != cfg.tie_word_embeddings:
        raise CheckpointError(f"config.tie_word_embeddings is {cfg.tie_word_embeddings} but lm_head.weight "
                              f"{'is' if tied else 'is not'} the embedding matrix: make them agree before saving")
    state = model.state_dict()
    if tied:
        del state["lm_head.weight"]  # stored once, as model.embed_tokens.weight (transformers re-ties it)
    with torch.device("meta"):
        reference = Transformer(cfg).state_dict()
    if tied:
        del reference["lm_head.weight"]
    extra, missing = state.keys() - reference.keys(), reference.keys() - state.keys()
    bad_shapes = [f"{k}: {list(state[k].shape)} vs config {list(reference[k].shape)}"
                  for k in state.keys() & reference.keys() if state[k].shape != reference[k].shape]
    if extra or missing or bad_shapes:
        raise CheckpointError(f"the model's tensors do not match its config (merge LoRA first?): "
                              f"extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}, shapes {bad_shapes[:5]}")
    return state


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
