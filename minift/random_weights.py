"""Random-weight models too large to hold in 16 bits: made layer by layer, quantized as they are made.

    model = build_random_model(cfg, "cuda", quantize="nf4")          # a 72B QLoRA base in ~41 GB
    write_random_checkpoint(cfg, "ckpt/72b-nf4", quantize="nf4")      # the same, on disk, HF layout

Memory benchmarks need the real shapes, not real values, and a 72B model in bf16 is 145 GB:
more than one H200 and more than its disk. So nothing here builds the float model. The model
starts on the meta device (shapes, no memory); each tensor is then drawn on the device, and each
projection is quantized right after it is drawn and its float copy dropped, exactly as
load_pretrained(quantize="nf4") does with a tensor read from disk. The checkpoint writer does the
same per shard, so host memory holds about one shard (max_shard_size) and never the model.

The values: each tensor is drawn from its own generator, seeded from (seed, tensor name), so a
tensor is the same whatever order or shard it is made in. Matrices N(0, initializer_range) (the
residual projections o_proj/down_proj scaled by 1/sqrt(2 * layers), as Transformer.init_weights
does), biases N(0, initializer_range), norm weights 1. So, on one device,
    write_random_checkpoint(cfg, d, quantize=None) then load_pretrained(d, quantize="nf4")
equals build_random_model(cfg, quantize="nf4") byte for byte (tested). Different devices draw
different numbers (their generators differ); the shapes and sizes are what matter.
"""
from __future__ import annotations

import math
import os
import zlib

import torch

from minift import quant
from minift.checkpoint import assign_tensor, bnb_4bit_config, write_configs, write_weights
from minift.config import ModelConfig
from minift.device import pick_device, resolve_dtype
from minift.kernels import nf4
from minift.model import RotaryEmbedding, Transformer


def build_random_model(cfg: ModelConfig, device: str | torch.device = "auto", dtype: str | torch.dtype = "bfloat16",
                       quantize: str | None = None, seed: int = 0, blocksize: int = 64,
                       double_quant: bool = True) -> Transformer:
    """A random-weight Transformer of `cfg` on `device`, in eval mode. With quantize="nf4" every
    projection is a quant.Linear4bit (as quant.quantize_model makes them), made one at a time:
    the peak is the finished model plus one float projection and its quantization temporaries."""
    _check_quantize(quantize, blocksize)
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    with torch.device("meta"):
        model = Transformer(cfg)
    for unit, keys in _units(model, quantize):
        if unit in keys:                                                   # a plain tensor
            assign_tensor(model, unit, _draw(model, unit, seed, dev, dt))
        else:                                                              # a projection, made 4-bit
            quant.replace_module(model, unit, _quantized_projection(model, unit, seed, dev, dt,
                                                                    blocksize, double_quant))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta).to(dev)
    return model.eval()


def write_random_checkpoint(cfg: ModelConfig, out_dir: str | os.PathLike, dtype: str | torch.dtype = "bfloat16",
                            quantize: str | None = None, device: str | torch.device = "auto", seed: int = 0,
                            blocksize: int = 64, double_quant: bool = True,
                            max_shard_size: int | str = "5GB", tokenizer=None) -> None:
    """Write a random-weight checkpoint of `cfg` in the Hugging Face layout, as save_pretrained
    would write build_random_model(...)'s model, without ever holding the model: config.json,
    generation_config.json, model.safetensors or model-0000k-of-0000N.safetensors + the index.
    quantize="nf4": the projections in bitsandbytes' 4-bit layout with config.json's
    quantization_config (what transformers + bitsandbytes save; load_pretrained reads it as is).
    Tensors are drawn on `device` (a GPU makes a 72B checkpoint in a few minutes, most of it disk
    time), one shard's worth at a time copied to host memory and written atomically; config.json
    goes last, so an interrupted write leaves no loadable half-checkpoint."""
    _check_quantize(quantize, blocksize)
    dev = pick_device(device)
    dt = resolve_dtype(dtype, dev)
    out_dir = os.fspath(out_dir)
    with torch.device("meta"):
        model = Transformer(cfg)
    meta_state = model.state_dict()
    units = _units(model, quantize)

    def size(unit, keys) -> int:
        if unit in keys:
            return meta_state[unit].numel() * dt.itemsize
        n = meta_state[unit + ".weight"].numel()
        bias = meta_state[unit + ".bias"].numel() * dt.itemsize if unit + ".bias" in meta_state else 0
        return math.ceil(nf4.bits_per_parameter(n, blocksize, double_quant) * n / 8) + 200 + bias  # 200: JSON blob

    def produce(shard) -> dict[str, torch.Tensor]:
        tensors = {}
        for unit, keys in shard:
            if unit in keys:
                made = {unit: _draw(model, unit, seed, dev, dt)}
            else:
                layer = _quantized_projection(model, unit, seed, dev, dt, blocksize, double_quant)
                made = layer.state_dict(prefix=unit + ".")                  # bitsandbytes' keys
            tensors.update({k: t.to("cpu").contiguous() for k, t in made.items()})
            del made
        return tensors

    write_weights(out_dir, [((unit, keys), size(unit, keys)) for unit, keys in units], produce, max_shard_size)
    quantization_config = bnb_4bit_config(double_quant, dt) if quantize else None
    write_configs(out_dir, cfg, torch_dtype=dt, tokenizer=tokenizer, quantization_config=quantization_config)


# ---------------------------------------------------------------------- the pieces
def _check_quantize(quantize, blocksize) -> None:
    if quantize not in (None, "nf4"):
        raise ValueError(f"quantize must be None or 'nf4', not {quantize!r}")
    if quantize:
        nf4._check_blocksize(blocksize)


def _units(model: Transformer, quantize: str | None) -> list[tuple[str, tuple[str, ...]]]:
    """What is made at once, in state-dict order: (tensor name, (tensor name,)) for a plain
    tensor; (module name, (its weight and bias names)) for a projection to be quantized."""
    keys = list(model.state_dict())
    if model.config.tie_word_embeddings:
        keys.remove("lm_head.weight")  # stored once, as model.embed_tokens.weight
    projections = set(quant.projection_names(model)) if quantize else set()
    units, seen = [], set()
    for key in keys:
        module = key.rpartition(".")[0]
        if module in projections:
            if module not in seen:
                seen.add(module)
                units.append((module, tuple(k for k in keys if k.rpartition(".")[0] == module)))
        else:
            units.append((key, (key,)))
    return units


def _draw(model: Transformer, name: str, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The tensor `name` (shape from the meta model), drawn on `device` from its own generator."""
    cfg = model.config
    shape = model.get_parameter(name).shape
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    std = cfg.initializer_range
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        std /= math.sqrt(2 * cfg.num_hidden_layers)
    generator = torch.Generator(device=device)
    generator.manual_seed((seed << 32) ^ zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)


def _quantized_projection(model, module: str, seed, device, dtype, blocksize, double_quant) -> quant.Linear4bit:
    weight = _draw(model, module + ".weight", seed, device, dtype)            # (out, in), transient
    has_bias = model.get_submodule(module).bias is not None
    bias = _draw(model, module + ".bias", seed, device, dtype) if has_bias else None
    return quant.Linear4bit.from_weight(weight, bias, blocksize=blocksize, double_quant=double_quant)

