"""The capstone recipe: fine-tune a chat model on instruction pairs with LoRA, QLoRA or full SFT.

    load base + tokenizer -> memory estimate -> data (chat template, answer-only loss, packing)
    -> eval loss + sample story (before) -> add LoRA / quantize + LoRA / nothing (full)
    -> train -> eval loss + sample story (after) -> save the adapter in peft's layout
       (or the whole model for full SFT) and, if asked, a merged bf16 model

scripts/lora_qwen.py and scripts/compare_methods.py are thin command lines over `finetune`.
The default model is Qwen2.5-0.5B-Instruct; `resolve_base` says plainly when its weights are not
on this machine and offers the embedded default (the tiny model trained from scratch).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from minift import distributed, fast_path, lora, memory
from minift import evaluate as story_eval
from minift.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
from minift.data import FAIRYTALE_PAIRS, Batches, encode_chat, load_sft, read_jsonl
from minift.device import pick_device, resolve_dtype
from minift.generate import generate_batch
from minift.cpu_memory import release_freed_memory
from minift.measure import process_peak_rss, reset_peak_rss
from minift.tokenizer import load_tokenizer
from minift.train import TrainConfig, evaluate, failure_point_warnings

logger = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")
# Tokens per chunk of the fused head + loss on a CPU: its fp32 (chunk x vocab) logits are the
# step's largest temporary (1024 x 151,936 x 4 B = 0.62 GB, and the softmax needs two), and a
# CPU matmul is no faster on longer chunks. GPUs keep the model's 1024.
CPU_LOSS_CHUNK = 256


@dataclass
class FinetuneConfig:
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"
    data: str = FAIRYTALE_PAIRS
    out_dir: str = "runs/lora-qwen"
    method: str = "lora"
    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    targets: str | list[str] = "all-linear"
    lr: float | None = None            # None: 2e-4 for LoRA/QLoRA, 2e-5 for full SFT
    steps: int | None = None
    epochs: float | None = None        # used when steps is None (default 1 epoch)
    max_examples: int | None = None    # use only the first N pairs (the chapter's 100-pair exercise)
    upsample: tuple | None = None      # (text, times): training pairs whose request holds text, used times times
    batch_size: int = 4
    seq_len: int | None = None         # None: the longest pair in the model's tokens, rounded up (fit_seq_len)
    grad_accum: int = 1
    grad_ckpt: bool = False
    ckpt_layers: int | None = None     # with grad_ckpt: only the bottom N layers are checkpointed (None: all)
    warmup: int = 10
    val_fraction: float = 0.05
    eval_batches: int | None = 20
    device: str = "auto"
    dtype: str = "auto"                # base weights: bf16 where the device runs it, else fp32
    merged: bool = False               # also write out_dir/merged: base + adapter as plain HF weights
    seed: int = 0
    progress: bool = True
    sample_max_tokens: int = 160
    # The fast path (minift/fast_path.py decides what applies on this device and says why):
    compile: bool | None = None        # compiled decoder layers (CUDA); None: for runs of 1,000+ steps
    cuda_graph: bool = True            # forward + backward as one CUDA graph (CUDA, one batch shape)
    adapter_math: str = "bf16"         # "bf16": LoRA matmuls in bf16 over a bf16 base; "fp32": peft's plain math
    fused_projections: bool = True     # q/k/v and gate/up as one matmul each (LoRA on CUDA)
    story_eval: int = 50               # held-out fairytale requests scored before and after (0: off)
    story_eval_seeds: tuple = (0,)     # sampling seeds for that evaluation
    story_eval_max_tokens: int | None = None  # None: the longest training story + 10% (story_token_budget)


@dataclass
class FinetuneReport:
    config: dict
    model_dir: str
    num_params: int
    trainable_params: int
    predicted_peak_bytes: int | None                # None: a configuration minift.memory does not model
    measured_peak_bytes: int | None
    measured_peak_kind: str
    eval_before: dict
    eval_after: dict
    sample_prompt: str
    sample_before: str
    sample_after: str
    train_time_s: float
    tokens_per_s: float
    saved: dict = field(default_factory=dict)       # what -> path
    saved_bytes: int = 0                            # size of what this method has to ship
    warnings: list[str] = field(default_factory=list)
    data_stats: dict = field(default_factory=dict)  # {"train", "held_out"}: DatasetStats as dicts (the model card)
    fast_path: list[str] = field(default_factory=list)  # what the fast path picked, one line per choice
    compile_line: str | None = None                     # the first step's one-time cost (compile, capture)
    # minift.evaluate.evaluate_stories before / after training: {"mean", "std_over_seeds",
    # "n_requests", "seeds", "per_request"}; None where the data is not fairytale requests
    story_eval_before: dict | None = None
    story_eval_after: dict | None = None


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def finetune(cfg: FinetuneConfig, model_dir: str | None = None) -> FinetuneReport:
    """Run the whole recipe. model_dir: an already resolved local directory (else cfg.model is
    resolved through minift.checkpoint.resolve_model_dir: a local path, the HF cache, or a download)."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {cfg.method!r}")
    if cfg.ckpt_layers is not None and not (cfg.grad_ckpt and isinstance(cfg.ckpt_layers, int) and cfg.ckpt_layers >= 0):
        raise ValueError(f"ckpt_layers={cfg.ckpt_layers!r}: the number of bottom layers to checkpoint, an integer "
                         f">= 0, with grad_ckpt on (grad_ckpt={cfg.grad_ckpt})")
    device = pick_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu":
        release_freed_memory()  # glibc would keep freed activations resident: 2-3x the live tensors
        reset_peak_rss()        # the peak from here: earlier work in this process does not count
    model_dir = model_dir or resolve_model_dir(cfg.model)
    # The rank (failure point 5) is add_lora's to warn about, once, when it builds the adapter.
    warnings = failure_point_warnings("full" if cfg.method == "full" else cfg.method, cfg.model)
    for w in warnings:
        logger.warning(w)

    tok = load_tokenizer(model_dir)
    # QLoRA: each projection is quantized as it is read, so the float base never exists (issue 10).
    model = load_pretrained(model_dir, dtype=dtype, device=device, quantize="nf4" if cfg.method == "qlora" else None)
    n_params = model.config.num_params()  # the checkpoint's count (a Linear4bit's codes are buffers)
    if cfg.ckpt_layers is not None and cfg.ckpt_layers > model.config.num_hidden_layers:
        raise ValueError(f"ckpt_layers={cfg.ckpt_layers}, but {model_dir} has {model.config.num_hidden_layers} layers")
    if device.type == "cpu":
        model.loss_chunk_size = CPU_LOSS_CHUNK

    if cfg.seq_len is None:
        cfg.seq_len = fit_seq_len(cfg.data, tok, cfg.max_examples)
        logger.info("seq_len %d: the longest pair in this model's tokens, rounded up", cfg.seq_len)
    data = load_sft(cfg.data, tok, cfg.seq_len, pack_rows=True, val_fraction=cfg.val_fraction, seed=cfg.seed,
                    max_examples=cfg.max_examples, upsample=cfg.upsample)
    logger.info("train data: %s", data.stats.summary())
    if not data.val:
        raise ValueError(f"{cfg.data}: no held-out rows (val_fraction={cfg.val_fraction}, "
                         f"{len(data.val_conversations)} held-out conversation(s) kept at seq_len={cfg.seq_len}); "
                         f"the recipe measures the loss before and after training on them (use e.g. 0.05)")
    for part, stats in (("training", data.stats), ("held-out", data.val_stats)):
        if stats.num_loss_tokens == 0:  # the prompts fill every row: nothing to learn or measure
            raise ValueError(f"{cfg.data}: no {part} example keeps an answer token at seq_len={cfg.seq_len} "
                             f"({stats.num_without_loss} of {stats.num_examples} lost all of theirs to "
                             f"truncation); raise seq_len")
    plan = fast_path.decide(device, dtype, method=cfg.method, one_shape=len({len(r) for r in data.train}) == 1,
                            grad_accum=cfg.grad_accum, num_rows=len(data.train), batch_size=cfg.batch_size,
                            steps=cfg.steps or None, epochs=None if cfg.steps else (cfg.epochs or 1.0),
                            compile=cfg.compile, cuda_graph=cfg.cuda_graph, adapter_math=cfg.adapter_math,
                            fused_projections=cfg.fused_projections)
    train_rows = Batches(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device, pad_id=data.pad_id,
                         drop_last=plan.drop_last)
    val_rows = Batches(data.val, cfg.batch_size, shuffle=False, device=device, pad_id=data.pad_id)

    # The memory math first (the seed chapter's failure point 6): what this run should take.
    # device: the math follows the kernels dispatch picks there (Triton on CUDA, the reference elsewhere).
    try:
        predicted = memory.estimate(model.config, "full" if cfg.method == "full" else cfg.method, cfg.batch_size,
                                    cfg.seq_len, param_dtype=_dtype_name(dtype), grad_ckpt=cfg.grad_ckpt,
                                    ckpt_layers=cfg.ckpt_layers,
                                    lora_r=cfg.r, lora_targets=cfg.targets, device=device.type,
                                    loss_chunk=model.loss_chunk_size, load=_load_kind(cfg.method),
                                    save="model" if cfg.method == "full" else "adapter",
                                    lora_compute_dtype=_dtype_name(plan.adapter_compute_dtype)
                                    if plan.adapter_compute_dtype is not None else None,
                                    lora_dropout=cfg.dropout if cfg.method in ("lora", "qlora") else 0.0,
                                    fused_projections=plan.fused_projections, segment_mask=train_rows.packed,
                                    world_size=distributed.world_size(),   # under torchrun: one GPU's share
                                    strategy=None if distributed.world_size() == 1
                                    else ("fsdp" if cfg.method == "full" else "ddp"))
        logger.info("predicted memory:\n%s", predicted.table())
    except ValueError as e:  # a configuration the math does not model (fp32 QLoRA, as on a CPU): train anyway
        predicted = None
        warnings.append(f"no memory prediction for this run: {e}")
        logger.warning(warnings[-1])

    # "before" is the base as the method trains it (QLoRA's already in NF4, from loading).
    # The sample prompt: the first held-out request, so "before" and "after" answer an unseen one.
    # Everything before its first answer (a system message, if any, and the request): a multi-turn
    # conversation must not become two user turns in a row.
    held_out = data.val_conversations[0]
    first_answer = next((i for i, m in enumerate(held_out) if m["role"] == "assistant"), len(held_out))
    sample_messages = held_out[:first_answer]
    if not any(m["role"] == "user" for m in sample_messages):  # a chat that opens with the assistant
        sample_messages = [{"role": "user", "content": "옛날 이야기를 들려줘."}]
    sample_prompt = [m["content"] for m in sample_messages if m["role"] == "user"][-1]
    eval_before = _held_out_loss(model, val_rows, cfg.eval_batches)
    sample_before = _sample(model, tok, sample_messages, cfg)
    story_eval = _story_evaluation(cfg, tok, warnings)
    story_eval_before = story_eval(model)

    if cfg.method in ("lora", "qlora"):
        # lora_A is drawn from torch's global generator, which a fresh process seeds at random: seed it
        # here, or the same command gives another adapter each run (as HF's Trainer and torchtune
        # seed before the model is built)
        torch.manual_seed(cfg.seed)
        lora.add_lora(model, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets,
                      compute_dtype=plan.adapter_compute_dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # Full SFT in bf16 keeps fp32 Adam states (and the chapter's 2+2+8 bytes/param); LoRA adapters are
    # fp32 parameters over a frozen base, so their precision is "fp32" with bf16 matmuls in the base.
    precision = "bf16" if (cfg.method == "full" and dtype == torch.bfloat16) else "fp32"
    lr = cfg.lr if cfg.lr is not None else (2e-5 if cfg.method == "full" else 2e-4)
    steps, epochs = (cfg.steps, None) if cfg.steps else (None, cfg.epochs or 1.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    result, compile_line = fast_path.train_with(plan, model, train_rows, val_rows, TrainConfig(
        steps=steps, epochs=epochs, grad_accum=cfg.grad_accum, lr=lr, warmup=cfg.warmup, weight_decay=0.0,
        betas=(0.9, 0.999), clip=1.0, precision=precision, master_weights=False, grad_checkpointing=cfg.grad_ckpt,
        checkpoint_layers=cfg.ckpt_layers,
        eval_batches=cfg.eval_batches, out_dir=os.path.join(cfg.out_dir, "train"), seed=cfg.seed,
        progress=cfg.progress), resume=True)
    model.eval()
    if device.type == "cuda":
        measured, kind = result.peak_memory_bytes, "torch.cuda.max_memory_allocated"
    elif device.type == "mps":  # no peak counter: what the MPS driver holds now, after training
        measured = torch.mps.driver_allocated_memory()
        kind = "torch.mps.driver_allocated_memory after training (a sample, not a peak)"
    else:
        # absolute, like memory.estimate's CPU job (which counts the process itself): VmHWM was
        # reset when the recipe started, so this is the recipe's peak, runtime included
        measured = process_peak_rss()
        kind = "peak resident memory of the process (whole recipe, runtime included)"
    eval_after = _held_out_loss(model, val_rows, cfg.eval_batches)
    sample_after = _sample(model, tok, sample_messages, cfg)
    story_eval_after = story_eval(model)

    saved = {}
    if cfg.method == "full":
        save_pretrained(model, os.path.join(cfg.out_dir, "model"), tokenizer=tok)
        saved["model"] = os.path.join(cfg.out_dir, "model")
    else:
        saved["adapter"] = lora.save_adapter(model, os.path.join(cfg.out_dir, "adapter"),
                                             base_model_name_or_path=cfg.model)
        if cfg.merged:
            merged = lora.merge_and_unload(model)
            save_pretrained(merged, os.path.join(cfg.out_dir, "merged"), tokenizer=tok, dtype=dtype)
            saved["merged"] = os.path.join(cfg.out_dir, "merged")
    shipped = saved.get("adapter") or saved["model"]
    return FinetuneReport(
        config=asdict(cfg), model_dir=model_dir, num_params=n_params, trainable_params=trainable,
        predicted_peak_bytes=predicted.total if predicted is not None else None,
        measured_peak_bytes=measured, measured_peak_kind=kind,
        eval_before=eval_before, eval_after=eval_after, sample_prompt=sample_prompt,
        sample_before=sample_before, sample_after=sample_after, train_time_s=result.train_time_s,
        tokens_per_s=result.tokens_per_s, saved=saved, saved_bytes=_dir_bytes(shipped), warnings=warnings,
        data_stats={"train": asdict(data.stats), "held_out": asdict(data.val_stats)},
        fast_path=list(plan.lines), compile_line=compile_line,
        story_eval_before=story_eval_before, story_eval_after=story_eval_after)


def fit_seq_len(path: str, tok, max_examples: int | None = None, multiple: int = 64) -> int:
    """The smallest multiple of `multiple` that holds every conversation of `path` in `tok`'s
    tokens (chat template included), so that no pair is truncated: the stories' endings are
    what a fairytale request asks for last."""
    conversations = read_jsonl(path).conversations[:max_examples]
    longest = max(len(encode_chat(c, tok)[0]) for c in conversations)
    return -(-longest // multiple) * multiple


def _sample(model, tok, messages: list[dict], cfg: FinetuneConfig) -> str:
    """The answer to the sample prompt, drawn as the story evaluation draws its stories
    (minift.evaluate.SAMPLING, seeded with cfg.seed): the sample a user reads is sampled the way
    the table beside it was scored. (Greedy decoding loops on a small model: a LoRA sample of the
    chapter's exercise told one sentence twice, 2026-12-01.)"""
    return generate_batch(model, tok, [messages], max_new_tokens=cfg.sample_max_tokens, seed=cfg.seed,
                          **story_eval.SAMPLING)[0]


def _story_evaluation(cfg: FinetuneConfig, tok, warnings: list[str]):
    """model -> minift.evaluate's scores on the first cfg.story_eval held-out requests (the same
    split load_sft holds out), or a function returning None when that is off or the data holds
    other requests than minift.fairytales makes."""
    if not cfg.story_eval:
        return lambda model: None
    train_c, held_out = story_eval.split_requests(cfg.data, cfg.val_fraction, cfg.seed, cfg.max_examples)
    try:
        bands = story_eval.length_bands(train_c)
        for c in held_out:
            story_eval.parse_request(next(m["content"] for m in c if m["role"] == "user"))
    except (ValueError, StopIteration) as e:
        warnings.append(f"no story evaluation: {e}")
        logger.warning(warnings[-1])
        return lambda model: None
    held_out = held_out[:cfg.story_eval]
    budget = cfg.story_eval_max_tokens or story_eval.story_token_budget(train_c, tok)

    def run(model):
        t0 = time.perf_counter()
        result = story_eval.evaluate_stories(model, tok, held_out, bands, seeds=cfg.story_eval_seeds,
                                             max_new_tokens=budget)
        logger.info("story evaluation (%d requests, %.0f s):\n%s", len(held_out), time.perf_counter() - t0,
                    story_eval.table(None, result))
        return result
    return run


def _held_out_loss(model, val_rows: Batches, max_batches: int | None) -> dict:
    """evaluate() from the first validation batch. Batches is resumable: a pass cut short at
    max_batches leaves it mid-epoch, and the next pass (and train()'s own evaluations, which
    restore the state they found) would start there and measure other rows. Rewinding first
    makes "before" and "after" the same rows; rewinding after leaves train() the same start."""
    start = {"epoch": 0, "position": 0}
    val_rows.load_state_dict(start)
    try:
        return evaluate(model, val_rows, max_batches)
    finally:
        val_rows.load_state_dict(start)


def _load_kind(method: str) -> str:
    # how this recipe loads its base, in memory.estimate's words (QLoRA: quantize-on-load)
    return "nf4-stream" if method == "qlora" else "float"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def resolve_base(model: str, explicit: bool, tiny_dir: str = "runs/tiny-10m") -> tuple[str, bool]:
    """(local model directory, is_embedded_default). When the default Qwen weights are missing and
    the user did not name a model, fall back to the tiny from-scratch model; a model the user named
    and that cannot be found is an error (its message says how to fetch the weights)."""
    try:
        return resolve_model_dir(model), False
    except FileNotFoundError:
        if explicit:
            raise
        return tiny_dir, True
