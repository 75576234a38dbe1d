"""The seed chapter's decision tree ("From Scratch vs Fine-tuning", section 2), with the memory
math behind question 3 done for real (minift.memory.estimate) instead of assumed.

    1. Is the domain general enough that an off-the-shelf model already covers it?
         yes -> no fine-tuning (choose a model with the Ch 22 tree)
    2. How much domain data?
         100B+ tokens -> from scratch      1B-10B tokens -> continued pre-training
         10K-1M pairs -> full SFT or LoRA  100-10K pairs -> LoRA / QLoRA
    3. Must it fit on a laptop?            yes -> LoRA / QLoRA;  no -> full SFT is possible
    4. Must the licence stay separate?     yes -> LoRA (share only the adapter)

Gaps between the chapter's bands are decided explicitly (Note: bands) and said so in `steps`.
The chapter's failure points (the warnings) and its ops checklist live in minift/advice.py, with
their thresholds; the data bands that coincide with them (1B tokens, 10K pairs) are the same numbers.

    d = decide(general_covered=False, data="5K-50K pairs", laptop=True, separate_license=True)
    d.method, d.model      # "lora", "Qwen/Qwen2.5-0.5B-Instruct"
    print("\n".join(d.steps))
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from minift import advice, memory
from minift.advice import human_count as _fmt
from minift.config import ModelConfig

# Candidate base models, smallest first. The chapter: "Start with 0.5B -> scale up to 1.5B".
CANDIDATES = ("smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b")
DEFAULT_START = "qwen2.5-0.5b"     # the chapter's capstone base
HEADROOM = 0.85                    # use at most 85% of device memory: CUDA context, fragmentation, the OS

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_BYTE_SUFFIX = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
                "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


# ====================================================================== units
def parse_amount(text: str) -> tuple[float, float, str]:
    """"10K pairs" -> (1e4, 1e4, "pairs"); "1.5B tokens"; "5K-50K pairs" -> (5e3, 5e4, "pairs").
    Units: pairs (also examples, conversations) or tokens. Clear errors for anything else."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"data amount {text!r}: give e.g. '10K pairs' or '1.5B tokens'")
    m = re.fullmatch(r"\s*([0-9.,]+)\s*([KMBGT]?)\s*(?:(?:-|to|–)\s*([0-9.,]+)\s*([KMBGT]?))?\s*([A-Za-z]+)\s*",
                     text.strip(), flags=re.IGNORECASE)
    if not m:
        if text.strip().startswith("-"):
            raise ValueError(f"data amount {text!r}: must not be negative")
        raise ValueError(f"data amount {text!r}: not understood; give a number with K/M/B/T and a unit, "
                         f"e.g. '10K pairs', '1.5B tokens', '5K-50K pairs'")
    n1, s1, n2, s2, unit = m.groups()
    unit = unit.lower()
    units = {"pairs": "pairs", "pair": "pairs", "examples": "pairs", "example": "pairs",
             "conversations": "pairs", "tokens": "tokens", "token": "tokens"}
    if unit not in units:
        raise ValueError(f"data amount {text!r}: unknown unit {unit!r} (use pairs or tokens, with K, M, B or T "
                         f"as the multiplier)")

    def num(n, s):
        try:
            v = float(n.replace(",", ""))
        except ValueError:
            raise ValueError(f"data amount {text!r}: {n!r} is not a number") from None
        return v * _SUFFIX[s.upper()]
    lo = num(n1, s1)
    hi = num(n2, s2 or s1) if n2 else lo
    if n2 and not s2 and s1:
        hi = num(n2, s1)
    if hi < lo:
        raise ValueError(f"data amount {text!r}: the range runs backwards")
    return lo, hi, units[unit]


def parse_bytes(text) -> int:
    """"24GB" -> 24e9, "16 GiB" -> 16*2^30; a plain number is bytes."""
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"memory {text!r} must be positive")
        return int(text)
    m = re.fullmatch(r"\s*(-?[0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise ValueError(f"memory {text!r}: not understood; give e.g. '24GB' or '16GiB'")
    v, unit = float(m.group(1)), (m.group(2) or "B").upper()
    if unit == "G":
        unit = "GB"
    if unit not in _BYTE_SUFFIX:
        raise ValueError(f"memory {text!r}: unknown unit {m.group(2)!r} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    if v <= 0:
        raise ValueError(f"memory {text!r} must be positive")
    return int(v * _BYTE_SUFFIX[unit])


# ====================================================================== measuring inputs
def measure_dataset(path: str, tokenizer=None, seq: int | None = None) -> tuple[float, str, str]:
    """(amount, "pairs" | "tokens", how it was counted) for a dataset file; with a tokenizer, "how"
    also gives the tokens and how many examples are longer than seq.
    Uses minift.data.dataset_stats when it is there; otherwise JSONL lines are pairs and raw
    text is estimated at 4 bytes per token (labelled as an estimate)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset {path!r}: no such file")
    try:
        from minift.data import dataset_stats
    except ImportError:
        dataset_stats = None
    if dataset_stats is not None:
        st = dataset_stats(path, tokenizer=tokenizer)
        if st.kind == "pairs":
            tokens = f"; {st.token_summary(seq)}" if st.num_tokens is not None else ""
            return float(st.num_examples), "pairs", f"{st.num_examples} pairs (minift.data.dataset_stats){tokens}"
        if st.num_tokens is not None:
            return float(st.num_tokens), "tokens", f"{st.num_examples} documents; {st.token_summary(seq)}"
        size = os.path.getsize(path)
        return size / 4, "tokens", f"~{_fmt(size / 4)} tokens (estimate: {size} bytes / 4; pass a tokenizer to count)"
    try:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                lines = [ln for ln in f if ln.strip()]
            for i, ln in enumerate(lines[:1000]):
                try:
                    json.loads(ln)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
            return float(len(lines)), "pairs", f"{len(lines)} JSONL lines counted as pairs"
        size = os.path.getsize(path)
        with open(path, encoding="utf-8") as f:
            f.read(4096)
    except UnicodeDecodeError as e:
        raise ValueError(f"dataset {path!r}: not UTF-8 text ({e.reason}); give JSONL pairs or raw text") from None
    return size / 4, "tokens", f"~{_fmt(size / 4)} tokens (estimate: {size} bytes / 4 bytes per token)"


def device_memory() -> tuple[int, str]:
    """(bytes, where) of the memory training would use here: CUDA total memory, MPS's
    recommended maximum working set, or the machine's RAM."""
    import torch
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"CUDA {props.name}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return int(torch.mps.recommended_max_memory()), "MPS recommended max working set"
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return int(pages * size), "CPU RAM"
    except (ValueError, OSError, AttributeError):
        raise RuntimeError("cannot detect this machine's memory; pass memory='24GB'") from None


# ====================================================================== the job's memory
def training_device() -> str:
    """"cuda", "mps" or "cpu": where minift's recipe would train on this machine."""
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _recipe_dtype(device: str) -> str:
    # minift.device.resolve_dtype("auto"): bf16 where the device runs it, fp32 on a CPU
    return "float32" if device == "cpu" else "bfloat16"


def job_estimate(cfg: ModelConfig, method: str, batch: int, seq: int, grad_ckpt: bool, lora_r: int,
                 device: str, ckpt_layers: int | None = None) -> memory.MemoryEstimate | None:
    """The whole job's memory as minift.finetune runs it on `device`: loaded from a bf16
    checkpoint (QLoRA quantizing while it loads), trained, the adapter (or the model) saved; on
    a CPU in fp32 with the recipe's CPU loss chunk, counting the process's resident memory.
    None where the recipe's configuration is not one the math models (QLoRA computes in bf16,
    so not on a CPU)."""
    from minift.finetune import CPU_LOSS_CHUNK
    dtype = _recipe_dtype(device)
    if method == "qlora" and dtype == "float32":
        return None
    return memory.estimate(cfg, method, batch, seq, grad_ckpt=grad_ckpt, ckpt_layers=ckpt_layers, lora_r=lora_r,
                           param_dtype=dtype, device=device, loss_chunk=CPU_LOSS_CHUNK if device == "cpu" else 1024,
                           load="nf4-stream" if method == "qlora" else "float",
                           save="adapter" if method in ("lora", "qlora") else "model")


def fewest_checkpointed_layers(layers: int, budget_bytes: float, estimate_for):
    """The fewest layers to checkpoint (the bottom ones, model.checkpoint_layers; 0: none) whose peak
    fits budget_bytes, and that estimate; (None, None) when checkpointing every layer does not fit.
    estimate_for(k) returns the estimate with k layers checkpointed (None: not modelled).

    Each layer checkpointed trades what it saves for its input, so from one layer up the peak
    does not rise as k grows (0 -> 1 can: the first recompute brings a layer's forward back into
    backward), and a bisection over 1..layers finds k in ~log2(layers) estimates. Often fewer layers
    than all reach the same peak (one GPU's full SFT peaks at the optimizer step, not in backward):
    the recompute of the others is saved for nothing."""
    none = estimate_for(0)
    if none is not None and none.total <= budget_bytes:
        return 0, none
    every = estimate_for(layers)
    if every is None or every.total > budget_bytes:
        return None, None
    lo, hi, best = 1, layers, every          # invariant: hi fits (best is its estimate)
    while lo < hi:
        mid = (lo + hi) // 2
        est = estimate_for(mid)
        if est is not None and est.total <= budget_bytes:
            hi, best = mid, est
        else:
            lo = mid + 1
    return hi, best


# ====================================================================== how many GPUs
GPU_COUNTS = (1, 2, 4, 8)          # one host's worth; past 8, see docs/distributed.md


def gpus_needed(cfg: ModelConfig, method: str, batch: int, seq: int, budget_bytes: float, *,
                lora_r: int = 16, grad_ckpt: bool = True) -> tuple[int | None, "memory.MemoryEstimate | None"]:
    """The fewest GPUs (of GPU_COUNTS) whose per-GPU peak fits budget_bytes, batch per GPU, and that
    GPU's estimate: full training shards with FSDP (the states split N ways), adapters are data
    parallel (each GPU holds the whole model, so more GPUs never make LoRA fit: it needs one).
    (None, None) when even 8 are not enough."""
    counts = GPU_COUNTS if method in memory.TRAIN_BASE else (1,)
    for n in counts:
        strategy = None if n == 1 else ("fsdp" if method in memory.TRAIN_BASE else "ddp")
        est = memory.estimate(cfg, method, batch, seq, grad_ckpt=grad_ckpt, lora_r=lora_r,
                              world_size=n, strategy=strategy)
        if est.total <= budget_bytes:
            return n, est
    return None, None


# ====================================================================== the tree
@dataclass
class Decision:
    path: str                      # "none" | "scratch" | "cpt" | "full" | "lora"
    method: str | None             # what to run: "full" | "lora" | "qlora" | "cpt" | "scratch" | None
    model: str | None              # base model (HF id)
    steps: list = field(default_factory=list)      # the reasoning, one line per step
    warnings: list = field(default_factory=list)   # the chapter's failure points that apply
    fits: list = field(default_factory=list)       # (preset, method, checkpointed layers (0: none), GB) that fit


def decide(*, general_covered: bool, data: str | None = None, dataset: str | None = None, laptop: bool,
           separate_license: bool, memory_bytes=None, tokenizer=None, lora_r: int = 16, batch: int = 4,
           seq: int = 1024, base_model: str | None = None, device: str = "auto") -> Decision:
    """Walk the chapter's four questions. `data` is an amount ("10K pairs", "1.5B tokens",
    "5K-50K pairs") or `dataset` a file to measure; memory_bytes (int or "24GB") defaults to
    this machine's (device_memory()). batch x seq is the training shape for the memory math.
    device: where the job would train ("cuda", "mps", "cpu"; "auto": this machine's, as
    device_memory() finds it). The memory math is the whole job's peak (load, train, save) in
    the dtype the recipe uses there (job_estimate): fp32 on a CPU, bf16 on a GPU."""
    d = Decision(path="", method=None, model=None)
    for label, v in (("lora_r", lora_r), ("batch", batch), ("seq", seq)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if rank_warning := advice.rank_warning(lora_r):
        d.warnings.append(rank_warning)

    # ---- 1
    if general_covered:
        d.path = "none"
        d.steps.append("1. An off-the-shelf model already covers the domain -> no fine-tuning (not LoRA "
                       "either): pick a model with the Ch 22 decision tree.")
        return d
    d.steps.append("1. The domain is not covered by an off-the-shelf model -> continue.")

    # ---- 2
    if (data is None) == (dataset is None):
        raise ValueError("give the amount of domain data either as data='10K pairs' / '1.5B tokens' or as "
                         "dataset=<file>, not both and not neither")
    if dataset is not None:
        amount, unit, how = measure_dataset(dataset, tokenizer, seq)
        lo = hi = amount
        d.steps.append(f"2. Measured {dataset}: {how}.")
    else:
        lo, hi, unit = parse_amount(data)
        d.steps.append(f"2. Domain data: {data.strip()} ({_fmt(lo)}{'' if hi == lo else '-' + _fmt(hi)} {unit}).")
    mid = math.sqrt(lo * hi) if lo > 0 else hi          # a range is judged by its geometric middle

    # Note: bands. The chapter's bands leave gaps (10B-100B tokens; under 1B tokens; <100 or >1M
    # pairs) and a range can straddle two bands. Here: a range is judged by its geometric middle
    # (5K-50K pairs -> 15.8K); a gap goes to the nearest band on a log scale, said in the steps.
    if unit == "tokens":
        if mid >= 100e9:
            band = "scratch"
            d.steps.append("   100B+ tokens -> from scratch (a large GPU cluster, days to weeks).")
        elif mid >= advice.CPT_MIN_TOKENS:
            band = "cpt"
            note = "" if mid <= 10e9 else (" (between the chapter's 1B-10B and 100B+ bands: below 100B, training "
                                          "from scratch is not justified, so continued pre-training)")
            d.steps.append(f"   1B-10B tokens -> continued pre-training{note}.")
        else:
            band = "lora"
            d.steps.append("   Under 1B tokens of raw text: below the continued pre-training band, where 'the effect "
                           "is negligible' -> turn the text into instruction pairs and use LoRA (nearest band).")
            d.warnings.append(advice.thin_cpt_data_warning(mid))
    else:
        if mid >= advice.SFT_MIN_PAIRS:
            band = "full-or-lora"
            note = "" if mid <= 1e6 else " (above the chapter's 1M band: nearest band)"
            d.steps.append(f"   10K-1M pairs -> full SFT or LoRA{note}; questions 3 and 4 decide.")
        else:
            band = "lora"
            note = "" if mid >= 100 else (" (below the chapter's 100-pair band: nearest band; so few examples "
                                          "mostly teach format)")
            d.steps.append(f"   100-10K pairs -> LoRA / QLoRA{note}.")
            if mid < 100:
                d.warnings.append(f"Only ~{_fmt(mid)} pairs: the chapter's smallest band starts at 100.")
        if lo < advice.SFT_MIN_PAIRS <= hi:
            d.steps.append(f"   (the range {_fmt(lo)}-{_fmt(hi)} straddles 10K; its middle {_fmt(mid)} decides)")

    # ---- 3 and 4
    if band == "full-or-lora":
        if laptop:
            method = "lora"
            d.steps.append("3. It must fit on a laptop -> LoRA / QLoRA.")
        else:
            method = "full"
            d.steps.append("3. No laptop constraint -> full SFT is possible (single A100+ class GPU).")
        if separate_license:
            method = "lora"
            d.steps.append("4. The licence must stay separate -> LoRA: only the adapter is shared.")
        else:
            d.steps.append("4. No licence separation needed -> " + ("full SFT is fine too." if method == "full"
                                                                       else "LoRA stays (from step 3)."))
    elif band == "lora":
        method = "lora"
        d.steps.append("3. " + ("It must fit on a laptop -> LoRA / QLoRA." if laptop else
                                "No laptop constraint, but with this little data LoRA is the path "
                                "(full SFT would overfit)."))
        d.steps.append("4. " + ("The licence must stay separate -> LoRA: only the adapter is shared."
                                if separate_license else "No licence separation needed; LoRA stays."))
    else:
        method = band
        d.steps.append(f"3./4. The laptop and licence questions do not change a {band} run "
                       f"({'it cannot run on a laptop' if laptop else 'a GPU cluster or server'}).")
        if band == "scratch":
            d.warnings.append(advice.from_scratch_warning())
        if laptop:
            d.warnings.append(f"A laptop cannot run {band}; the answer to question 3 conflicts with the data amount.")
    d.path = method

    # ---- memory math: which model and method fit
    if memory_bytes is None:
        mem, where = device_memory()
    else:
        mem, where = parse_bytes(memory_bytes), "given"
    budget = HEADROOM * mem
    dev = training_device() if device == "auto" else device
    if dev not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device {device!r}: use 'auto', 'cuda', 'mps' or 'cpu'")
    d.steps.append(f"Memory math: {mem / 1e9:.1f} GB ({where}); budget {HEADROOM:.0%} of it = {budget / 1e9:.1f} GB "
                   f"(CUDA context, fragmentation, the OS); training shape batch {batch} x seq {seq}; the whole "
                   f"job (load, train, save) on {dev} in {_recipe_dtype(dev)}, as the recipe runs it there.")
    tries = {"lora": ("lora", "qlora"), "full": ("full",), "cpt": ("full",), "scratch": ("full",)}[method]
    for name in CANDIDATES:
        cfg = ModelConfig.preset(name)
        for m in tries:
            k, est = fewest_checkpointed_layers(cfg.num_hidden_layers, budget, lambda k: job_estimate(
                cfg, m, batch, seq, k > 0, lora_r, dev, ckpt_layers=k if k > 0 else None))
            if est is not None:
                d.fits.append((name, m, k, round(est.total / 1e9, 2)))
    if dev == "cpu" and "qlora" in tries:
        d.steps.append("   (QLoRA is not counted on a CPU: its NF4 base computes in bf16 on a GPU; the CPU recipe "
                       "runs fp32, which the memory math does not model for NF4)")
    fits_by = {(n, m): (c, gb) for n, m, c, gb in d.fits}
    start = base_model or DEFAULT_START
    if start not in CANDIDATES:
        raise ValueError(f"base_model {start!r}: choose one of {', '.join(CANDIDATES)}")
    order = [start] + [c for c in CANDIDATES if c != start and CANDIDATES.index(c) > CANDIDATES.index(start)] \
        + [c for c in reversed(CANDIDATES) if CANDIDATES.index(c) < CANDIDATES.index(start)]
    chosen = None
    for name in order:
        for m in tries:
            if (name, m) in fits_by:
                chosen = (name, m) + fits_by[(name, m)]
                break
        if chosen:
            break
    for name in CANDIDATES:
        layers = ModelConfig.preset(name).num_hidden_layers
        row = [f"{m}{_ckpt_label(fits_by[(name, m)][0], layers)} {fits_by[(name, m)][1]} GB"
               for m in tries if (name, m) in fits_by]
        if not row:  # one GPU is not enough: how many would be (torchrun; minift/distributed.py)
            n, est = gpus_needed(ModelConfig.preset(name), tries[0], batch, seq, budget, lora_r=lora_r)
            row = [f"{tries[0]} +ckpt on {n} GPUs ({est.strategy}) {est.total / 1e9:.2f} GB per GPU"] if n else []
        d.steps.append(f"   {name:<14} " + (", ".join(row) if row else "does not fit"))
    if chosen is None:
        d.steps.append("   Nothing fits: use a smaller batch x seq, a bigger machine, or a smaller model.")
        d.warnings.append("No candidate fits the memory budget at this batch x seq.")
        d.method = tries[-1]
        return d
    name, m, ckpt, gb = chosen
    cfg = ModelConfig.preset(name)
    model = cfg.name_or_path
    if method in ("cpt", "scratch"):
        model = model.replace("-Instruct", "")  # CPT belongs on a base model (failure point 4)
        if method == "scratch":
            model = f"random init, {name} architecture"
    d.method, d.model = (m if method in ("lora", "full") else method), model
    d.steps.append(f"Answer: {d.method.upper() if d.method != 'lora' else 'LoRA'}"
                   f"{' (QLoRA: LoRA alone does not fit)' if m == 'qlora' else ''} on {model}"
                   f"{_ckpt_answer(ckpt, cfg.num_hidden_layers)}: {gb} GB predicted peak. "
                   f"Start there and scale up only if the results are not good enough.")
    if method == "full" and unit == "pairs" and (sft_warning := advice.small_data_sft_warning(lo)):
        d.warnings.append(sft_warning)  # a range whose low end is under 10K pairs
    if method == "cpt" and base_model and (cpt_warning := advice.cpt_on_instruct_warning(
            ModelConfig.preset(base_model).name_or_path)):
        d.warnings.append(cpt_warning + " Answering with its base checkpoint.")
    d.warnings.append(advice.memory_math_reminder())
    return d


def _ckpt_label(k: int, layers: int) -> str:
    return "" if k == 0 else " +ckpt" if k == layers else f" +ckpt {k}/{layers} layers"


def _ckpt_answer(k: int, layers: int) -> str:
    if k == 0:
        return ""
    if k == layers:
        return " with gradient checkpointing"
    return (f" with gradient checkpointing on the bottom {k} of {layers} layers (--ckpt-layers {k}; the rest keep "
            f"their activations and are not recomputed)")
