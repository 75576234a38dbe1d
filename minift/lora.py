"""LoRA by hand (Hu et al. 2021, arXiv:2106.09685), saved and loaded in peft's format.

A frozen linear layer y = W x + b gets a trainable low-rank detour:

    x ──► base_layer (W: out x in, frozen; plain nn.Linear or 4-bit Linear4bit) ──────────► (+) ──► y
    └──► lora_dropout ──► lora_A (r x in) ──► lora_B (out x r) ──► * scaling ───────────────┘

    scaling = alpha / r            (alpha / sqrt(r) with rank-stabilised LoRA, arXiv:2312.03732)

B starts at zero, so the wrapped model computes exactly what the base did until the first step.
Only A and B (r * (in + out) numbers per layer, under 1% of a 0.5B model at r=16) get gradients
and optimizer states; that is where LoRA's memory saving comes from.

Module layout and names are peft's, so adapters move between minift and peft unchanged:

    model.layers.0.self_attn.q_proj              LoRALinear
    model.layers.0.self_attn.q_proj.base_layer   the original linear (weight, bias)
    model.layers.0.self_attn.q_proj.lora_A       nn.Linear(in, r, bias=False)
    model.layers.0.self_attn.q_proj.lora_B       nn.Linear(r, out, bias=False)

peft keeps one lora_A per adapter name (`lora_A.default.weight`) and strips the name when it
saves; minift holds one adapter per model, so its names already are the saved ones, behind
peft's prefix: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

A consequence: while LoRA is attached, the model's state_dict says `...q_proj.base_layer.weight`.
To save a full model, `merge_and_unload` first; to save the adapter, `save_adapter`.

    add_lora(model, r=16, alpha=32, targets="all-linear")   wrap, freeze the rest
    merge(model) / unmerge(model)                          fold B@A into W and back
    merge_and_unload(model)                                plain nn.Linear layers again (export)
    save_adapter(model, dir) / load_adapter(model, dir)    peft's adapter_config.json + safetensors
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minift import advice, safeio
from minift.quant import Linear4bit, replace_module

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."          # peft's PeftModel -> LoraModel -> your model
BIAS_OPTIONS = ("none", "all", "lora_only")
INIT_OPTIONS = (True, "default", "gaussian", False)
# peft's default targets when a config has none (peft utils/constants.py, for qwen2 and llama).
DEFAULT_TARGETS = ["q_proj", "v_proj"]


# ---------------------------------------------------------------------- what counts as a linear layer
def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Linear4bit))


def _valid_init(init) -> bool:
    return init is True or init is False or init in ("default", "gaussian")  # not 1 or 0 posing as bools


def _check_hyperparameters(r, dropout, init) -> None:
    if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout}")
    if not _valid_init(init):
        raise ValueError(f"init must be one of {INIT_OPTIONS}, got {init!r}")


# ---------------------------------------------------------------------- the layer
class LoRALinear(nn.Module):
    """A linear layer plus a trainable low-rank update: y = base(x) + B(A(dropout(x))) * scaling.

    base_layer: nn.Linear or minift.quant.Linear4bit; it is used as is (frozen by add_lora).
    init: True/"default" is peft's init_lora_weights=True (A ~ kaiming_uniform(a=sqrt(5)), i.e.
      U(+-1/sqrt(in)); B = 0); "gaussian" is A ~ N(0, 1/r), B = 0; False leaves both at
      nn.Linear's random init (a non-zero update from the start: for tests only).
    adapter_dtype: dtype of A and B. fp32 by default even over a bf16 base, as peft does
      (autocast_adapter_dtype=True): Adam's tiny updates to A and B survive in fp32 and the
      adapter is under 1% of the parameters. None keeps the base's (compute) dtype.
    compute_dtype: the dtype the adapter's two matmuls run in. None (default): the adapter's own,
      peft's plain behaviour, so an fp32 adapter over a bf16 base computes in fp32. torch.bfloat16:
      x, A and B are cast to bf16 for the matmuls (fp32 accumulation inside them), as peft computes
      under torch.autocast(bf16), i.e. HF Trainer's bf16=True. A and B stay fp32 for the optimizer.

    Note (compute_dtype, speed): GPUs have no tensor cores for fp32 matmuls (unless TF32 is
    switched on), so fp32 adapter math runs on the CUDA cores and costs a copy of every adapted
    input in fp32: on an H200, 7B QLoRA spends about a quarter of its step there (a profile by
    scripts/profile_step.py). In bf16 the adapters take a few percent, and they keep no fp32 copy
    of their input for backward (the activations of bf16 adapters: see minift/memory.py).

    Note (dtypes in forward): x is cast to the adapter's dtype, the update is computed there,
    added to base(x) in the wider of the two dtypes, and the sum is cast back to base(x)'s dtype:
    peft's lora.Linear order, so a bf16 base with an fp32 adapter rounds once, not twice.
    (peft's bnb 4-bit layer casts the update to bf16 before adding; the two orders can differ by
    one bf16 ulp per element. In fp32 they are identical.)
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: bool | str = "default",
                 adapter_dtype: torch.dtype | None = torch.float32,
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        if not _is_linear(base_layer):
            raise TypeError(f"LoRALinear wraps nn.Linear or Linear4bit, not {type(base_layer).__name__}")
        _check_hyperparameters(r, dropout, init)
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False
        self.compute_dtype = compute_dtype
        self._original_base: list[nn.Module] = []  # a 4-bit base kept by merge(keep_original=True)

        device = _device_of(base_layer)
        dtype = adapter_dtype if adapter_dtype is not None else _compute_dtype(base_layer)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.reset_lora_parameters(init)

    @torch.no_grad()
    def reset_lora_parameters(self, init: bool | str = "default") -> None:
        if init is False:
            return  # nn.Linear's own init for both: a random, non-zero update
        if init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # Code that reads a linear layer's weight/bias (counting, memory math) keeps working.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.merged:
            return y  # B@A*scaling is already inside W
        # autocast's casts written out when compute_dtype is set: the fp32 weights stay the parameters
        cd = self.compute_dtype or self.lora_A.weight.dtype
        xa = self._dropped_down(x, cd)                                                # (..., r)
        update = F.linear(xa, self.lora_B.weight.to(cd))                              # (..., out)
        return (y + update * self.scaling).to(y.dtype)

    def _dropped_down(self, x: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
        """lora_A(dropout(x)) in dtype cd, shape (..., r).

        Note (dropout without a copy): autograd would keep each adapter's own dropped copy of x
        (and its mask) for lora_A's weight gradient: seven projections x every layer, 1.2 GB on
        Qwen2.5-0.5B at 2 x 512 in fp32, most of the gap between a CPU LoRA job and its memory
        estimate. Recomputing the dropout in backward (torch.utils.checkpoint restores the RNG
        state, so the mask and the RNG stream are those of the plain path, bit for bit) keeps only
        x, which q/k/v (and gate/up) share. Off the CPU/MPS path the plain dropout stays: CUDA
        graph capture cannot read the RNG state that checkpointing stashes, and the CUDA fast
        path's compiled layers were measured with it."""
        def down(t: torch.Tensor) -> torch.Tensor:
            return F.linear(self.lora_dropout(t.to(cd)), self.lora_A.weight.to(cd))
        recompute = (self.training and isinstance(self.lora_dropout, nn.Dropout) and torch.is_grad_enabled()
                     and x.device.type != "cuda")
        return checkpoint(down, x, use_reentrant=False) if recompute else down(x)

    def delta_weight(self) -> torch.Tensor:
        """(B @ A) * scaling in fp32, shape (out, in): what merging adds to W."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}")


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _compute_dtype(module: nn.Module) -> torch.dtype:
    if isinstance(module, Linear4bit):
        return module.compute_dtype
    return module.weight.dtype


# ---------------------------------------------------------------------- configuration
@dataclass
class LoRAConfig:
    """What add_lora did, kept on the model as `model.lora_config` (save_adapter writes it)."""
    r: int
    alpha: float
    dropout: float
    targets: str | list[str]
    use_rslora: bool
    bias: str
    init: bool | str
    target_names: list[str]          # full names of the wrapped modules, in model order


def _match(name: str, targets: str | list[str]) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list entry matches the
    name exactly or as its last dotted part(s) ("q_proj" matches "model.layers.0.self_attn.q_proj")."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _plain_modules(model: nn.Module):
    """(name, module) as the model was before LoRA: a LoRALinear stands for its base layer and
    its inside (base_layer, lora_A, lora_B) is not listed."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        if isinstance(module, LoRALinear):
            inside.append(name + ".")
        yield name, module


def find_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Names of the modules `targets` selects, in model order; errors name what went wrong."""
    linear_names = [n for n, m in model.named_modules() if _is_linear(m)]
    if targets == "all-linear":
        # peft's shorthand: every linear layer except the output layer.
        names = [n for n in linear_names if n.rsplit(".", 1)[-1] != "lm_head"]
    else:
        if isinstance(targets, (list, tuple, set)):
            targets = sorted(targets) if isinstance(targets, set) else list(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(f"targets must be non-empty module names, got {targets!r}")
        elif not isinstance(targets, str):
            raise TypeError(f"targets must be 'all-linear', a regex string or a list of names, "
                            f"not {type(targets).__name__}")
        names = []
        for name, module in model.named_modules():
            if name and _match(name, targets):
                if not _is_linear(module):
                    raise ValueError(f"LoRA target {targets!r} matched {name!r}, a {type(module).__name__}; "
                                     f"only linear layers can be adapted")
                names.append(name)
    if not names:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        example = next((n for n in linear_names if "layers.0." in n), linear_names[0] if linear_names else None)
        raise ValueError(f"no module matched LoRA targets {targets!r}. The model's linear layers are named "
                         f"{leaves} (full names like {example!r}); a list entry must be a whole name or its "
                         f"ending after a dot, a string is a regex that must match the full name")
    if any(n.rsplit(".", 1)[-1] == "lm_head" for n in names):
        raise ValueError("lm_head cannot be a LoRA target here: minift's fused loss reads lm_head.weight "
                         "directly (an adapter on it would be skipped in training), and with tied embeddings "
                         "merging into it would also change embed_tokens (peft issue #2018)")
    return names


# ---------------------------------------------------------------------- add
def add_lora(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.0,
             targets: str | list[str] = "all-linear", use_rslora: bool = False, bias: str = "none",
             init: bool | str = "default", adapter_dtype: torch.dtype | None = torch.float32,
             compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Wrap the target linears in LoRALinear (in place), freeze everything else, return the model.

    targets: "all-linear" (every linear but lm_head), a list of names (exact, or a dotted suffix
      such as "q_proj"), or a regex string that must match the full module name (peft's rules).
    bias: "none" (no bias trains), "all" (every bias in the model trains), "lora_only" (the biases
      of the adapted layers train); peft's option of the same name, saved with the adapter.
    adapter_dtype, compute_dtype: see LoRALinear (compute_dtype=torch.bfloat16 is the fast choice
      on a GPU; it is a runtime choice and is not saved with the adapter).
    """
    if getattr(model, "lora_config", None) is not None or any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("this model already has LoRA adapters; minift holds one adapter per model. "
                         "merge_and_unload(model) first, or start from a fresh base model")
    if bias not in BIAS_OPTIONS:
        raise ValueError(f"bias must be one of {BIAS_OPTIONS}, got {bias!r}")
    _check_hyperparameters(r, dropout, init)  # before anything changes: a refused call leaves the model alone
    if rank_warning := advice.rank_warning(r):  # the seed's failure point 5
        logger.warning(rank_warning)
    names = find_targets(model, targets)

    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        wrapped = LoRALinear(model.get_submodule(name), r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
                             init=init, adapter_dtype=adapter_dtype, compute_dtype=compute_dtype)
        replace_module(model, name, wrapped)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_A.weight.requires_grad_(True)
            module.lora_B.weight.requires_grad_(True)
    for _, p in _trainable_biases(model, bias):
        p.requires_grad_(True)

    model.lora_config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=targets, use_rslora=use_rslora,
                                   bias=bias, init=init, target_names=names)
    return model


def _trainable_biases(model: nn.Module, bias: str) -> list[tuple[str, nn.Parameter]]:
    """The biases peft's `bias` option trains (and saves), with their state_dict names."""
    if bias == "all":
        return [(n, p) for n, p in model.named_parameters() if n == "bias" or n.endswith(".bias")]
    if bias == "lora_only":
        return [(f"{n}.base_layer.bias", m.base_layer.bias) for n, m in model.named_modules()
                if isinstance(m, LoRALinear) and m.base_layer.bias is not None]
    return []


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer should see: `torch.optim.AdamW(trainable_parameters(model))`."""
    return [p for p in model.parameters() if p.requires_grad]


class ParamCount(NamedTuple):
    trainable: int
    total: int

    def __str__(self) -> str:  # peft's print_trainable_parameters line, as a string
        pct = 100 * self.trainable / self.total if self.total else 0.0
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {pct:.4f}"


def count_parameters(model: nn.Module) -> ParamCount:
    """(trainable, total) parameters; a tied tensor counts once. A 4-bit layer's weight is a buffer
    of packed codes; it counts as the in x out numbers it stands for (as peft's count does)."""
    total = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, Linear4bit))
    trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParamCount(trainable, total)


# ---------------------------------------------------------------------- merge
@torch.no_grad()
def merge(model: nn.Module, keep_original: bool = False) -> nn.Module:
    """Fold each adapter into its base weight: W <- W + (B @ A) * scaling. Forward then costs
    what the base costs, and gives the same output up to rounding.

    The sum is formed in fp32 and rounded once to W's dtype. For a 4-bit base, W is dequantized,
    the update added, and the result quantized again (Linear4bit.from_weight): lossy, since the
    new W is rounded to the 16 NF4 levels of its block, so merged outputs differ from the unmerged
    adapter by about one quantization step (peft warns the same). `keep_original=True` keeps the
    old 4-bit layer (a few bytes per weight) so that unmerge can restore it exactly.
    """
    done = 0
    for name, layer in lora_layers(model):
        if layer.merged:
            continue
        base = layer.base_layer
        delta = layer.delta_weight()                                     # (out, in) fp32
        if isinstance(base, Linear4bit):
            logger.warning("merging LoRA into the 4-bit layer %s: the merged weight is re-quantized to NF4, "
                           "which adds rounding error", name)
            w = base.dequantize().float() + delta                        # (out, in) fp32
            merged = w.to(base.weight_dtype)   # the dtype it was quantized from: one rounding, then NF4's
            layer._original_base = [base] if keep_original else []
            layer.base_layer = type(base).from_weight(merged, base.bias, **_quant_args(base))
        else:
            base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        layer.merged = True
        done += 1
    if done == 0:
        logger.warning("merge: no unmerged LoRA layer found; nothing to do")
    return model


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo merge: W <- W - (B @ A) * scaling (in fp32, rounded once to W's dtype).

    Note: in fp32, (W + d) - d is W only up to rounding: each element can be off by half an ulp of
    W + d plus half an ulp of W (subtraction is what peft does too). A 4-bit base cannot be
    unmerged by subtraction (the merge already rounded to NF4); it is restored exactly from the
    layer that merge(keep_original=True) kept, and refused otherwise.
    """
    for name, layer in lora_layers(model):
        if not layer.merged:
            continue
        base = layer.base_layer
        if isinstance(base, Linear4bit):
            if not layer._original_base:
                raise ValueError(f"cannot unmerge {name}: its 4-bit base was re-quantized by merge, and subtracting "
                                 f"the update would round a second time. Call merge(model, keep_original=True) "
                                 f"to be able to unmerge a 4-bit model")
            layer.base_layer = layer._original_base.pop()
        else:
            base.weight.copy_((base.weight.float() - layer.delta_weight()).to(base.weight.dtype))
        layer.merged = False
    return model


def _quant_args(base: nn.Module) -> dict:
    """How a Linear4bit was quantized, to quantize its merged weight the same way."""
    return dict(blocksize=base.blocksize, double_quant=base.double_quant, compute_dtype=base.compute_dtype)


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by one plain linear holding W + (B @ A) * scaling, so the model is an
    ordinary minift model again (minift.save_pretrained writes plain HF safetensors from it).

    A plain base keeps its dtype. A 4-bit base becomes an nn.Linear in its compute dtype (bf16 in
    practice): the dequantized weight plus the update, summed in fp32 and rounded once, with no
    re-quantization (after a merge() it holds the re-quantized merged weight instead, so unload
    without merging first). Parameters stay frozen as they were; `model.lora_config` is removed.
    """
    for name, layer in lora_layers(model):
        base = layer.base_layer
        if isinstance(base, Linear4bit):
            w = base.dequantize().float()                                 # (out, in) fp32
            if not layer.merged:
                w = w + layer.delta_weight()
            plain = nn.Linear(layer.in_features, layer.out_features, bias=base.bias is not None,
                              device=w.device, dtype=base.compute_dtype)
            plain.weight.copy_(w.to(plain.weight.dtype))
            if base.bias is not None:
                plain.bias.copy_(base.bias)
            plain.requires_grad_(False)
        else:
            if not layer.merged:
                base.weight.copy_((base.weight.float() + layer.delta_weight()).to(base.weight.dtype))
            plain = base
        replace_module(model, name, plain)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


# ---------------------------------------------------------------------- save
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors peft saves: A and B of every adapted layer, plus the biases the `bias` option
    trains, under peft's keys (`base_model.model.` + the minift name, which already lacks peft's
    adapter name)."""
    config = _config_of(model)
    out = {}
    for name, layer in lora_layers(model):
        if layer.merged:
            raise ValueError(f"{name} is merged; unmerge(model) before saving the adapter "
                             f"(the saved A and B would be added to a W that already holds them)")
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    for name, p in _trainable_biases(model, config.bias):
        out[PEFT_PREFIX + name] = p
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def _config_of(model: nn.Module) -> LoRAConfig:
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("this model has no LoRA adapter (call add_lora or load_adapter first)")
    return config


def _saved_target_modules(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Sorted leaf names (["down_proj", "q_proj", ...]) when they select exactly the adapted layers
    on the base model; otherwise the sorted full names (a regex such as "layers\\.0\\..*" adapts
    q_proj in one layer only, and the leaf name would select it in every layer)."""
    adapted = set(config.target_names)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    selected = {n for n, m in _plain_modules(model) if n and _match(n, leaves)}
    return leaves if selected == adapted else sorted(adapted)


def peft_config_dict(model: nn.Module, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json's content. Every key is a LoraConfig field peft knows (unknown keys make
    peft warn); r and lora_alpha are always written (peft silently falls back to 8 and 8)."""
    config = _config_of(model)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    init = True if config.init == "default" else config.init
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _saved_target_modules(model, config),
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "use_dora": False,
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": init,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "exclude_modules": None,
    }


def save_adapter(model: nn.Module, out_dir: str, base_model_name_or_path: str | None = None) -> str:
    """Write peft's adapter layout to out_dir (each file atomically) and return out_dir:

        adapter_config.json          json, indent 2, sorted keys (as peft writes it)
        adapter_model.safetensors    A/B (+ biases per `bias`), metadata {"format": "pt"}

    `PeftModel.from_pretrained(hf_model, out_dir)` loads it."""
    tensors = adapter_state_dict(model)
    config = peft_config_dict(model, base_model_name_or_path)
    os.makedirs(out_dir, exist_ok=True)
    safeio.atomic_save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
    # Insertion order is what json.dumps writes: sorting here gives peft's sort_keys=True layout.
    safeio.atomic_write_json(dict(sorted(config.items())), os.path.join(out_dir, CONFIG_NAME))
    return out_dir


# ---------------------------------------------------------------------- load
# LoraConfig fields that change what the adapter computes and that minift does not implement:
# an adapter using one is refused rather than loaded into something that computes another function.
_UNSUPPORTED_IF_SET = (
    "use_dora", "lora_bias", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform",
    "modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices", "exclude_modules",
    "use_qalora", "alora_invocation_tokens", "use_bdlora", "arrow_config",
)


def read_adapter_config(adapter_dir: str) -> LoRAConfig:
    """Parse adapter_config.json (minift's or peft's) into a LoRAConfig (target_names left empty)."""
    path = os.path.join(adapter_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no adapter config. An adapter directory holds {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (what save_adapter and peft's save_pretrained write)")
    raw = safeio.read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {raw.get('peft_type')!r}; minift loads only LORA adapters")
    for key in _UNSUPPORTED_IF_SET:
        if raw.get(key):
            raise ValueError(f"{path}: {key}={raw[key]!r} is a peft feature minift does not implement; "
                             f"this adapter cannot be loaded faithfully")
    init = raw.get("init_lora_weights", True)
    if not _valid_init(init):
        raise ValueError(f"{path}: init_lora_weights={init!r}: such adapters (PiSSA, OLoRA, LoftQ, ...) change "
                         f"the base weights and need peft's conversion (save_pretrained with "
                         f"path_initial_model_for_weight_conversion) before they apply to the original base")
    r, alpha = raw.get("r", 8), raw.get("lora_alpha", 8)   # peft's defaults when absent
    if "r" not in raw or "lora_alpha" not in raw:
        logger.warning("%s: no %s; using peft's default of 8", path,
                       " and ".join(k for k in ("r", "lora_alpha") if k not in raw))
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"{path}: r must be a positive integer, got {r!r}")
    targets = raw.get("target_modules")
    if targets is None:
        targets = DEFAULT_TARGETS  # peft's per-architecture default for qwen2 and llama
    elif isinstance(targets, list):
        targets = list(targets)
    elif not isinstance(targets, str):
        raise ValueError(f"{path}: target_modules must be a list of names or a regex string, got {targets!r}")
    bias = raw.get("bias", "none")
    if bias not in BIAS_OPTIONS:
        raise ValueError(f"{path}: bias={bias!r}; expected one of {BIAS_OPTIONS}")
    return LoRAConfig(r=r, alpha=alpha, dropout=float(raw.get("lora_dropout", 0.0)), targets=targets,
                      use_rslora=bool(raw.get("use_rslora", False)), bias=bias, init=init, target_names=[])


def _read_adapter_tensors(adapter_dir: str) -> dict[str, torch.Tensor]:
    path = os.path.join(adapter_dir, WEIGHTS_NAME)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(adapter_dir, PICKLE_WEIGHTS_NAME)):
            raise ValueError(f"{adapter_dir}: holds {PICKLE_WEIGHTS_NAME}, a pickle, and minift does not unpickle "
                             f"files (unpickling can run arbitrary code). Convert it once where you trust it: "
                             f"PeftModel.from_pretrained(base, dir).save_pretrained(dir, safe_serialization=True)")
        raise FileNotFoundError(f"{path}: no adapter weights")
    safeio.read_safetensors_header(path)  # a truncated or corrupt file fails here, naming the tensor
    from safetensors.torch import load_file
    return load_file(path, device="cpu")


def load_adapter(model: nn.Module, adapter_dir: str, trainable: bool = False,
                 adapter_dtype: torch.dtype | None = torch.float32,
                 compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Attach the adapter in adapter_dir (saved by save_adapter or by peft) to `model` and return it.

    Everything is checked before the model is touched: each tensor key must name an adapted layer
    (or a bias the `bias` option saves), each shape must match that layer, each layer must get its
    A and B, and A's rank must be the config's r. The model is then wrapped with add_lora using the
    file's r, lora_alpha, target_modules, use_rslora and bias, and the tensors copied in.
    trainable=False (peft's default, is_trainable=False) leaves every parameter frozen: inference.
    adapter_dtype, compute_dtype: as for add_lora.
    """
    config = read_adapter_config(adapter_dir)
    tensors = _read_adapter_tensors(adapter_dir)
    where = os.path.join(adapter_dir, WEIGHTS_NAME)
    if getattr(model, "lora_config", None) is not None:
        raise ValueError("this model already has LoRA adapters; load the adapter into a fresh base model")

    # What the model will hold after add_lora, name -> expected shape.
    names = find_targets(model, config.targets)
    expected: dict[str, tuple[int, ...]] = {}
    for name in names:
        base = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (config.r, base.in_features)
        expected[f"{name}.lora_B.weight"] = (base.out_features, config.r)
        if config.bias == "lora_only" and base.bias is not None:
            expected[f"{name}.base_layer.bias"] = tuple(base.bias.shape)
    if config.bias == "all":
        adapted = set(names)
        for n, p in model.named_parameters():
            if n == "bias" or n.endswith(".bias"):
                module = n.rpartition(".")[0]
                key = f"{module}.base_layer.bias" if module in adapted else n
                expected[key] = tuple(p.shape)

    problems = []
    for key, t in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            problems.append(f"key {key!r} lacks peft's prefix {PEFT_PREFIX!r}")
            continue
        name = key[len(PEFT_PREFIX):]
        if name not in expected:
            module = name.rsplit(".", 2)[0] if ".lora_" in name else name.rpartition(".")[0]
            module = module.removesuffix(".base_layer")
            why = ("is not a LoRA target under this config's target_modules"
                   if _has_module(model, module) else "does not exist in this model (an adapter for another base?)")
            problems.append(f"key {key!r}: module {module!r} {why}")
        elif tuple(t.shape) != expected[name]:
            got, want = tuple(t.shape), expected[name]
            if name.endswith("lora_A.weight") and got[1:] == want[1:]:
                problems.append(f"key {key!r}: rank {got[0]} but adapter_config.json says r={config.r} "
                                f"(shape {got}, expected {want})")
            else:
                problems.append(f"key {key!r} has shape {got} but module {name.rsplit('.', 2)[0]!r} of "
                                f"this model needs {want}: the adapter was trained on a different base model")
    missing = [n for n in expected if n.endswith(("lora_A.weight", "lora_B.weight")) and PEFT_PREFIX + n not in tensors]
    if missing:
        problems.append(f"no tensor for {len(missing)} adapted weight(s), e.g. {PEFT_PREFIX + missing[0]!r}")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{where} does not fit this model:\n  {shown}")

    # init only decides the values the file then overwrites; the config keeps the file's setting.
    add_lora(model, r=config.r, alpha=config.alpha, dropout=config.dropout, targets=config.targets,
             use_rslora=config.use_rslora, bias=config.bias, init="default", adapter_dtype=adapter_dtype,
             compute_dtype=compute_dtype)
    model.lora_config.init = config.init
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key, t in tensors.items():
            params[key[len(PEFT_PREFIX):]].copy_(t)  # casts to the adapter's dtype
    if not trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False
