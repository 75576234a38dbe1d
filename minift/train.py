"""One training loop for all four paths: from scratch, continued pre-training, full SFT, LoRA/QLoRA.

The paths differ only in what comes in: which parameters have requires_grad=True (all of them,
or only the LoRA adapters) and which batches (raw text, or prompt/response pairs whose prompt
targets are -100). The loop itself is the same:

    for each optimizer step:
        lr <- warmup + cosine schedule                          (minift/optim.py lr_at)
        grad_accum micro-batches: forward, loss * weight, backward   (Note: accumulation)
        grad norm, clipped                                      (torch.nn.utils.clip_grad_norm_)
        NaN/inf loss or norm -> TrainingDiverged, last good checkpoint kept
        AdamW step on the trainable parameters                  (minift/optim.py AdamW)
        every eval_every: validation loss and perplexity
        every save_every: checkpoint, written atomically        (Note: checkpoint swap)

A model is anything whose forward(input_ids, targets=..., [position_ids=..., segment_ids=...])
returns the scalar mean cross-entropy over targets != -100 (minift.Transformer does).
Batches are dicts {"input_ids" (B, T), "targets" (B, T) already shifted, -100 = no loss,
optional "position_ids", "segment_ids"}; position/segment ids are passed on only when present.

Note: accumulation. A step's loss is the token-weighted mean over all its micro-batches:
micro-batch i with n_i counted targets contributes loss_i * n_i / N, N = sum of n_i. That is
exactly the loss (and gradient) of one big batch holding all of them, however the -100 masks
fall. HF's default (loss_i / grad_accum, a mean of means) weights a micro-batch with 10 answer
tokens as much as one with 1,000. All micro-batches of a step are fetched first to know N
(they are token ids: small). A micro-batch with no counted target is skipped.

Note: checkpoint swap. A checkpoint is a directory, out_dir/checkpoint/:
    model.safetensors       the trainable parameters only (all of them for full training,
                            the adapters for LoRA), by name
    optimizer.safetensors   AdamW's fp32 m, v (and master weights) as "<param>.exp_avg", ...
    rng.safetensors         torch CPU (and CUDA) RNG states, uint8 tensors
    trainer_state.json      step, optimizer hyperparameters and per-param step counts, the data
                            position (train_batches.state_dict()), python/numpy RNG states, the
                            loss history and the TrainConfig
No pickle anywhere. It is written into checkpoint.tmp-<pid>/ and fsynced; then the old
checkpoint/ is renamed to checkpoint.old/, the new one renamed to checkpoint/, and the old one
deleted. Renames are atomic, so a run killed at any moment leaves a complete checkpoint/ or
(between the two renames) a complete checkpoint.old/, which the next start renames back.
Resuming restores all of it, so the run continues the loss trajectory it would have had
(bitwise on CPU; tests/test_train.py checks it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file
from tqdm.auto import tqdm

from minift import distributed, safeio
from minift.advice import failure_point_warnings  # noqa: F401  (moved; scripts import it from here)
from minift.cuda_graph import GraphedStep
from minift.device import bf16_supported
from minift.optim import AdamW, lr_at, param_groups, set_lr

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PRECISIONS = ("fp32", "bf16-autocast", "bf16")
CHECKPOINT_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or inf. The last good checkpoint is left as it was."""


@dataclass
class TrainConfig:
    """Everything that defines a run. Steps are optimizer updates (each of grad_accum micro-batches)."""
    steps: int | None = None             # optimizer steps; or
    epochs: float | None = None          # passes over train_batches (needs len(train_batches) = micro-batches per epoch)
    batch_size: int | None = None        # rows per micro-batch; when set, a larger batch is an error
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 3e-4                     # peak learning rate, reached at the end of warmup
    min_lr_ratio: float = 0.1            # cosine decays to lr * min_lr_ratio
    warmup: int = 0                      # warmup steps (linear)
    weight_decay: float = 0.1            # on dim >= 2 tensors only (optim.param_groups)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip: float | None = 1.0             # max global grad norm; None or 0: not clipped (the norm is still reported)
    precision: str = "fp32"              # "fp32" | "bf16-autocast" (fp32 params, bf16 compute) | "bf16" (bf16 params)
    master_weights: bool = False         # precision "bf16" only: fp32 master copy of each bf16 param (optim.py Note)
    grad_checkpointing: bool = False     # sets model.gradient_checkpointing
    checkpoint_layers: int | None = None # with grad_checkpointing: checkpoint only the bottom this many layers
                                         # (None: all); the rest keep their activations (faster, more memory)
    eval_every: int = 0                  # steps between evaluations (0: only at the end, when val_batches is given)
    eval_batches: int | None = 20        # batches per evaluation (None: the whole val set)
    save_every: int = 0                  # steps between checkpoints (0: only at the end, when out_dir is set)
    out_dir: str | None = None           # checkpoints go to out_dir/checkpoint/
    seed: int = 0                        # seeds torch, python and numpy RNGs at the start of a fresh run
    log_every: int = 10                  # steps between logger.info lines
    max_nan_skips: int = 0               # non-finite steps to skip (no update) before TrainingDiverged
    progress: bool = True                # tqdm progress bar
    cuda_graph: bool = False             # CUDA only: replay forward + backward as one CUDA graph (minift/cuda_graph.py);
                                         # needs every batch the same shape

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("TrainConfig: give exactly one of steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"TrainConfig.epochs must be > 0, got {self.epochs}")
        if self.grad_accum < 1:
            raise ValueError(f"TrainConfig.grad_accum must be >= 1, got {self.grad_accum}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.master_weights and self.precision != "bf16":
            raise ValueError("TrainConfig.master_weights is for precision='bf16' (fp32 params need no master copy)")
        for name in ("warmup", "eval_every", "save_every", "log_every", "max_nan_skips"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        self.betas = tuple(self.betas)
        if self.checkpoint_layers is not None:
            if not self.grad_checkpointing:
                raise ValueError("TrainConfig.checkpoint_layers picks which layers are checkpointed; it needs "
                                 "grad_checkpointing=True")
            if isinstance(self.checkpoint_layers, bool) or not isinstance(self.checkpoint_layers, int) \
                    or self.checkpoint_layers < 0:
                raise ValueError(f"TrainConfig.checkpoint_layers must be an integer >= 0 (or None: all layers), "
                                 f"got {self.checkpoint_layers!r}")


@dataclass
class TrainResult:
    losses: list[float]                  # losses[i]: loss of step i + 1 (whole run, across resumes)
    grad_norms: list[float]              # before clipping
    lrs: list[float]
    eval_history: list[dict]             # {"step", "loss", "perplexity", "tokens"}
    final_step: int
    tokens_seen: int                     # input tokens, whole run
    loss_tokens_seen: int                # tokens with a target != -100, whole run
    tokens_per_s: float                  # input tokens per second of training steps in this call
    loss_tokens_per_s: float
    train_time_s: float                  # this call, training steps only (no eval, no saving)
    peak_memory_bytes: int | None        # torch.cuda.max_memory_allocated on CUDA, else None
    checkpoint_dir: str | None           # the last checkpoint written or resumed from
    resumed_from_step: int | None = None
    skipped_steps: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------- the loop
def train(model: nn.Module, train_batches: Iterable[dict], val_batches: Iterable[dict] | None = None,
          cfg: TrainConfig | None = None, callbacks: list[Callable[[dict], None]] | None = None,
          resume: bool = True) -> TrainResult:
    """Train the parameters of `model` that have requires_grad=True. See the module docstring.

    train_batches: an iterable of batch dicts. For resuming mid-epoch it should have
    state_dict()/load_state_dict() (minift.data.Batches does); without them the loop re-reads it
    from the start and skips the micro-batches already used. When it runs out it is iterated again
    (the next epoch). val_batches: iterated afresh (state restored) for each evaluation.
    callbacks: each called with a dict per step ({"kind": "train", ...}), per evaluation
    ({"kind": "eval", ...}) and per checkpoint ({"kind": "checkpoint", ...}); an exception in one
    stops the run (nothing is saved for that step).
    resume: if out_dir holds a checkpoint, continue from it."""
    if cfg is None:
        raise TypeError("train() needs cfg=TrainConfig(...)")
    callbacks = list(callbacks or [])
    total_steps = _total_steps(cfg, train_batches)
    device = _model_device(model)
    # torchrun: shard (FSDP2) or replicate the model before the optimizer sees its parameters
    # (minift/distributed.py); None in one process. Only rank 0 logs, shows progress, writes.
    strategy = distributed.prepare(model)
    main = distributed.is_main()
    if strategy == "fsdp" and cfg.cuda_graph:
        raise ValueError("TrainConfig.cuda_graph cannot capture FSDP's all-gathers and reduce-scatters; "
                         "turn it off for sharded (full) training under torchrun")
    scale = distributed.loss_scale(strategy)   # FSDP averages over ranks: x N makes it the sum
    names = _trainable_names(model)
    _check_precision(cfg, names, device)
    _set_grad_checkpointing(model, cfg.grad_checkpointing, cfg.checkpoint_layers)

    optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                      master_weights=cfg.master_weights)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if cfg.precision == "bf16-autocast" else contextlib.nullcontext())
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    graphed = None
    if cfg.cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"TrainConfig.cuda_graph needs a CUDA device; the model is on {device}")
        graphed = GraphedStep(model, autocast=autocast)
    has_data_state = hasattr(train_batches, "state_dict") and hasattr(train_batches, "load_state_dict")
    val_state = val_batches.state_dict() if val_batches is not None and hasattr(val_batches, "state_dict") else None

    ckpt_dir = None
    if cfg.out_dir is not None:
        if main:  # rank 0 finishes an interrupted swap; the others wait, then find the result
            os.makedirs(cfg.out_dir, exist_ok=True)
            recover_checkpoint_dir(cfg.out_dir)
        distributed.barrier()
        ckpt_dir = recover_checkpoint_dir(cfg.out_dir)
    run = _RunState()
    if resume and ckpt_dir is not None:
        run = _load_checkpoint(ckpt_dir, model, optimizer, names, train_batches, has_data_state, cfg)
        logger.info("resumed from %s at step %d", ckpt_dir, run.step)
    else:
        if ckpt_dir is not None:
            logger.warning("%s holds a checkpoint but resume=False: starting afresh; it will be "
                           "replaced at the first save", ckpt_dir)
            ckpt_dir = None
        _seed_everything(cfg.seed + distributed.rank())  # each rank its own dropout masks
    resumed_from = run.step if run.step > 0 else None

    batches = iter(train_batches)
    if not has_data_state and run.micro_batches:  # no saved position: fast-forward past what was used
        for _ in range(run.micro_batches):
            batches = _next_batch(batches, train_batches, run.micro_batches)[1]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    bar = tqdm(total=total_steps, initial=run.step, disable=not (cfg.progress and main), desc="train", dynamic_ncols=True)
    time_in_steps, tokens_here, loss_tokens_here = 0.0, 0, 0
    last_saved, last_eval = run.step, None
    try:
        while run.step < total_steps:
            lr = lr_at(run.step, cfg.lr, cfg.warmup, total_steps, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            t0 = time.perf_counter()

            # ---- fetch the step's micro-batches, then count the tokens that carry a loss
            micro = []
            for _ in range(cfg.grad_accum):
                batch, batches = _next_batch(batches, train_batches, run.micro_batches)
                run.micro_batches += 1
                micro.append(_check_batch(batch, cfg, run.step + 1))
            counts = [_count_loss_tokens(b, vocab, run.step + 1) for b in micro]
            # over every rank's micro-batches: the loss tokens (for the weights) and the input tokens
            n_total, tokens = distributed.sum_across_ranks(
                (sum(counts), sum(b["input_ids"].numel() for b in micro)), device)
            if n_total == 0:
                raise ValueError(f"step {run.step + 1}: every target of its {cfg.grad_accum} micro-batch(es) "
                                 f"is -100; there is no token to learn from (check the loss mask)")

            # ---- forward and backward, token-weighted (Note: accumulation)
            step_loss = torch.zeros((), device=device)
            accumulate = False                     # the step's first replay writes the gradients, the next add
            for batch, n in zip(micro, counts):
                if n == 0:
                    if strategy != "fsdp":
                        continue
                    # FSDP: every rank must run every forward (they gather together); weight 0
                    batch = _with_placeholder_target(batch)
                if graphed is not None:   # the weight is inside the graph (minift/cuda_graph.py, Note: accumulation)
                    share = n / n_total
                    step_loss += graphed(loss_weight=share, accumulate=accumulate, **_model_inputs(batch, device)) * share
                    accumulate = True
                    continue
                with autocast:
                    loss = model(**_model_inputs(batch, device))              # () mean over n tokens
                weighted = loss.float() * (n / n_total)
                (weighted * scale if scale != 1.0 else weighted).backward()
                step_loss += weighted.detach()

            step_loss = distributed.sum_tensor_across_ranks(step_loss)    # the global batch's loss
            distributed.sync_gradients(params, strategy)                  # ddp: sum the adapters over ranks

            # ---- clip (the norm is measured before clipping), check, update
            # Under FSDP the gradients are DTensor shards; clip_grad_norm_ reduces the norm over
            # ranks, so it is the global norm and every rank scales by the same factor.
            max_norm = cfg.clip if cfg.clip else float("inf")  # inf: scale 1.0, i.e. only measure
            grad_norm = float(distributed.global_value(torch.nn.utils.clip_grad_norm_(params, max_norm)))
            loss_value = float(step_loss)
            finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
            if not finite and len(run.skipped) >= cfg.max_nan_skips:
                raise TrainingDiverged(_diverged_message(run.step + 1, total_steps, loss_value, grad_norm,
                                                         lr, ckpt_dir, last_saved))
            if finite:
                optimizer.step()
            else:
                run.skipped.append(run.step + 1)
                logger.warning("step %d: loss %s, grad norm %s: update skipped (%d of %d allowed)",
                               run.step + 1, loss_value, grad_norm, len(run.skipped), cfg.max_nan_skips)
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0

            # ---- book-keeping
            run.step += 1
            run.tokens += tokens
            run.loss_tokens += n_total
            tokens_here += tokens
            loss_tokens_here += n_total
            time_in_steps += dt
            run.losses.append(loss_value)
            run.grad_norms.append(grad_norm)
            run.lrs.append(lr)
            event = {"kind": "train", "step": run.step, "total_steps": total_steps, "loss": loss_value,
                     "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "loss_tokens": n_total,
                     "tokens_per_s": tokens / dt if dt > 0 else float("inf"), "skipped": not finite}
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{event['tokens_per_s']:,.0f}")
            if cfg.log_every and (run.step % cfg.log_every == 0 or run.step == total_steps):
                logger.info("step %d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s",
                            run.step, total_steps, loss_value, lr, grad_norm, event["tokens_per_s"])
            for cb in callbacks if main else ():
                cb(event)

            if val_batches is not None and cfg.eval_every and run.step % cfg.eval_every == 0:
                _run_eval(model, val_batches, val_state, cfg, run, callbacks)
                last_eval = run.step
            if cfg.out_dir is not None and cfg.save_every and run.step % cfg.save_every == 0:
                ckpt_dir = _save_and_report(cfg, model, optimizer, names, train_batches, has_data_state,
                                            run, callbacks)
                last_saved = run.step

        if val_batches is not None and last_eval != run.step:
            _run_eval(model, val_batches, val_state, cfg, run, callbacks)
        if cfg.out_dir is not None and last_saved != run.step:
            ckpt_dir = _save_and_report(cfg, model, optimizer, names, train_batches, has_data_state,
                                        run, callbacks)
    finally:
        bar.close()

    # the largest per-GPU peak over ranks (each rank's own in one process)
    peak = distributed.max_across_ranks(torch.cuda.max_memory_allocated(device), device) \
        if device.type == "cuda" else None
    return TrainResult(
        losses=list(run.losses), grad_norms=list(run.grad_norms), lrs=list(run.lrs),
        eval_history=list(run.evals), final_step=run.step, tokens_seen=run.tokens,
        loss_tokens_seen=run.loss_tokens,
        tokens_per_s=tokens_here / time_in_steps if time_in_steps > 0 else 0.0,
        loss_tokens_per_s=loss_tokens_here / time_in_steps if time_in_steps > 0 else 0.0,
        train_time_s=time_in_steps, peak_memory_bytes=peak, checkpoint_dir=ckpt_dir,
        resumed_from_step=resumed_from, skipped_steps=list(run.skipped))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], max_batches: int | None = None,
             precision: str = "fp32") -> dict:
    """Token-weighted mean loss over up to max_batches batches, and perplexity = exp(loss).
    The model is put in eval mode for the pass and returned to the mode it was in.
    Compiled layers run their eager code here: without gradients they would need a graph of their
    own, a compile for a few forward passes (the capstone's final evaluation of 2 batches on the
    H200: 2.3 s with that compile, 0.14 s eager; results/h200/bench_recipe_*minift*.log)."""
    device = _model_device(model)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if precision == "bf16-autocast" else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    total, count, seen = 0.0, 0, 0
    lockstep = distributed.is_distributed()  # under torchrun each rank scores its slice of every batch
    try:
        with torch.compiler.set_stance("force_eager"):
            for batch in itertools.islice(batches, max_batches):  # max_batches None: all of them
                n = int((batch["targets"] != IGNORE_INDEX).sum())
                seen += 1
                if n == 0 and not lockstep:
                    continue
                with autocast:  # FSDP: every rank runs every forward, even one with nothing to score
                    loss = model(**_model_inputs(batch if n else _with_placeholder_target(batch), device))
                if n:
                    total += float(loss) * n
                    count += n
    finally:
        model.train(was_training)
    total, count = distributed.sum_across_ranks((float(total), float(count)), device)   # every rank's slice
    count = int(count)
    if count == 0:
        raise ValueError(f"evaluation saw {seen} batch(es) and no target != -100: nothing to measure")
    mean = total / count
    try:
        perplexity = math.exp(mean)
    except OverflowError:  # a loss above ~709 nats
        perplexity = float("inf")
    return {"loss": mean, "perplexity": perplexity, "tokens": count, "batches": seen}


# ---------------------------------------------------------------------- checkpoints
def recover_checkpoint_dir(out_dir: str) -> str | None:
    """out_dir/checkpoint if there is one, after finishing any interrupted swap (Note: checkpoint swap):
    a lone checkpoint.old/ is renamed back, a checkpoint.old/ beside a checkpoint/ and any
    leftover checkpoint.tmp-*/ are deleted (they are older or incomplete)."""
    final, old = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.old")
    if not os.path.isdir(out_dir):
        return None
    for entry in os.listdir(out_dir):
        if entry.startswith("checkpoint.tmp-"):
            logger.warning("removing incomplete checkpoint %s (a save was interrupted)", os.path.join(out_dir, entry))
            shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)
    if os.path.isdir(old):
        if os.path.isdir(final):
            shutil.rmtree(old)
        else:
            logger.warning("recovering %s: a save stopped between its two renames", old)
            os.replace(old, final)
    return final if os.path.isdir(final) else None


@dataclass
class _RunState:
    """What the loop carries from step to step, and what a checkpoint saves besides tensors."""
    step: int = 0
    micro_batches: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    losses: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def _save_and_report(cfg, model, optimizer, names, train_batches, has_data_state, run, callbacks) -> str:
    path = _save_checkpoint(cfg, model, optimizer, names, train_batches, has_data_state, run)
    logger.info("step %d: checkpoint saved to %s", run.step, path)
    for cb in callbacks if distributed.is_main() else ():
        cb({"kind": "checkpoint", "step": run.step, "path": path})
    return path


def _save_checkpoint(cfg, model, optimizer, names, train_batches, has_data_state, run) -> str:
    out = cfg.out_dir
    final, old = os.path.join(out, "checkpoint"), os.path.join(out, "checkpoint.old")
    # Under torchrun every rank takes part in gathering the sharded tensors in full (the same
    # files as one process writes; minift/distributed.py), then rank 0 alone writes them.
    params = {names[p]: distributed.full_tensor(p) for p in names}
    opt_tensors, opt_meta = optimizer.named_state(names)
    opt_tensors = {k: distributed.full_tensor(v) for k, v in opt_tensors.items()}
    rng_tensors, rng_meta = _rng_state()
    rng_tensors = distributed.gather_rng_states(rng_tensors)
    if not distributed.is_main():
        distributed.barrier()   # returns once rank 0 has written the checkpoint
        return final
    tmp = os.path.join(out, f"checkpoint.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        safeio.atomic_save_file({k: v.contiguous() for k, v in params.items()}, os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt", "step": str(run.step)})
        safeio.atomic_save_file({k: v.contiguous() for k, v in opt_tensors.items()},
                                os.path.join(tmp, "optimizer.safetensors"), metadata={"step": str(run.step)})
        safeio.atomic_save_file(rng_tensors, os.path.join(tmp, "rng.safetensors"))
        state = {
            "format": CHECKPOINT_FORMAT, "step": run.step, "micro_batches": run.micro_batches,
            "tokens": run.tokens, "loss_tokens": run.loss_tokens,
            "data": train_batches.state_dict() if has_data_state else None,
            "optimizer": opt_meta, "rng": rng_meta,
            "history": {"losses": _json_floats(run.losses), "grad_norms": _json_floats(run.grad_norms),
                        "lrs": run.lrs, "evals": run.evals, "skipped": run.skipped},
            "trainable": [names[p] for p in names],
            "config": dataclasses.asdict(cfg),
        }
        safeio.atomic_write_json(state, os.path.join(tmp, "trainer_state.json"))
        safeio._fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint/ was never touched
        raise  # (under torchrun the other ranks then wait at the barrier below until they time out)
    # The swap: each rename is atomic; between them checkpoint.old/ is the complete previous one.
    if os.path.isdir(final):
        if os.path.isdir(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    safeio._fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def _load_checkpoint(path, model, optimizer, names, train_batches, has_data_state, cfg) -> _RunState:
    state_file = os.path.join(path, "trainer_state.json")
    state = safeio.read_json(state_file)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_file}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    _warn_config_changes(state.get("config", {}), cfg, state_file)

    # trainable parameters: same names, shapes and dtypes as the model has now
    model_file = os.path.join(path, "model.safetensors")
    saved = load_file(model_file)
    by_name = {n: p for p, n in names.items()}
    missing, unexpected = sorted(set(by_name) - set(saved)), sorted(set(saved) - set(by_name))
    if missing or unexpected:
        raise ValueError(f"{model_file}: the trainable parameters differ from the model's: missing "
                         f"{missing[:5]}, not trainable in this model {unexpected[:5]} (same method and "
                         f"the same frozen parameters are needed to resume)")
    with torch.no_grad():
        for name, t in saved.items():
            p = by_name[name]
            if t.shape != p.shape or t.dtype != p.dtype:
                raise ValueError(f"{model_file}: {name!r} is {tuple(t.shape)} {t.dtype} in the checkpoint but "
                                 f"{tuple(p.shape)} {p.dtype} in the model (was the precision changed?)")
            distributed.copy_full_into(p, t)   # an FSDP shard keeps its own rows: any number of ranks

    opt_file = os.path.join(path, "optimizer.safetensors")
    optimizer.load_named_state(load_file(opt_file), state["optimizer"], names, source=opt_file)

    if has_data_state:
        if state.get("data") is None:
            raise ValueError(f"{state_file}: no data position saved, but train_batches has load_state_dict")
        train_batches.load_state_dict(state["data"])
    rng = distributed.this_rank_rng(load_file(os.path.join(path, "rng.safetensors")), list(_rng_state()[0]))
    if rng is None:
        logger.warning("%s was written by fewer ranks: rank %d starts a fresh RNG stream (dropout masks "
                       "will differ from an uninterrupted run)", path, distributed.rank())
        _seed_everything(cfg.seed + distributed.rank() + 7919 * state["step"])
    else:
        _set_rng_state(rng, state["rng"])

    h = state["history"]
    return _RunState(step=state["step"], micro_batches=state["micro_batches"], tokens=state["tokens"],
                     loss_tokens=state["loss_tokens"], losses=_floats_from_json(h["losses"]),
                     grad_norms=_floats_from_json(h["grad_norms"]), lrs=list(h["lrs"]),
                     evals=list(h["evals"]), skipped=list(h["skipped"]))


def _warn_config_changes(saved: dict, cfg: TrainConfig, source: str) -> None:
    # These change the trajectory; the others (logging, schedule length, out_dir) are fine to change.
    keys = ("grad_accum", "lr", "min_lr_ratio", "warmup", "weight_decay", "betas", "eps", "clip",
            "precision", "master_weights", "batch_size")
    now = dataclasses.asdict(cfg)
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in keys
               if k in saved and (list(saved[k]) if isinstance(saved[k], (list, tuple)) else saved[k])
               != (list(now[k]) if isinstance(now[k], (list, tuple)) else now[k])]
    if changed:
        logger.warning("resuming from %s with a different config (%s): the run will not match an "
                       "uninterrupted one", source, "; ".join(changed))


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}                          # uint8
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("checkpoint holds %d CUDA RNG states; this machine has %d GPUs: not restored",
                           len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    random.seed(seed)
    np.random.seed(seed)


def _json_floats(xs):  # JSON has no NaN; a skipped step's NaN loss is stored as null
    return [x if math.isfinite(x) else None for x in xs]


def _floats_from_json(xs):
    return [float("nan") if x is None else float(x) for x in xs]


# ---------------------------------------------------------------------- small helpers
def _diverged_message(step, total, loss, grad_norm, lr, ckpt_dir, saved_step) -> str:
    kept = (f"The last good checkpoint at {ckpt_dir} (step {saved_step}) was kept."
            if ckpt_dir is not None else "No checkpoint had been written (set out_dir and save_every).")
    return (f"training diverged at step {step}/{total}: loss {loss}, grad norm {grad_norm}, lr {lr:.3e}. "
            f"{kept} Lower the learning rate or lengthen the warmup, and check the batches of this step; "
            f"with bf16 try master_weights=True or precision='bf16-autocast'.")


def _total_steps(cfg: TrainConfig, train_batches) -> int:
    if cfg.steps is not None:
        return cfg.steps
    try:
        per_epoch = len(train_batches)
    except TypeError:
        raise ValueError("TrainConfig.epochs needs len(train_batches) (micro-batches per epoch); "
                         "this source has no len(): give steps instead") from None
    if per_epoch == 0:
        raise ValueError("train_batches is empty (len 0)")
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def _next_batch(it, source, used: int):
    """The next batch, starting a new pass over `source` when one ends."""
    try:
        return next(it), it
    except StopIteration:
        it = iter(source)
        try:
            return next(it), it
        except StopIteration:
            raise ValueError(f"train_batches yielded nothing (after {used} micro-batches in all)") from None


def _check_batch(batch: dict, cfg: TrainConfig, step: int) -> dict:
    for key in ("input_ids", "targets"):
        if key not in batch:
            raise KeyError(f"step {step}: batch has no {key!r} (keys: {sorted(batch)})")
    if batch["input_ids"].shape != batch["targets"].shape or batch["input_ids"].dim() != 2:
        raise ValueError(f"step {step}: input_ids {tuple(batch['input_ids'].shape)} and targets "
                         f"{tuple(batch['targets'].shape)} must both be (B, T)")
    if cfg.batch_size is not None and batch["input_ids"].shape[0] > cfg.batch_size:
        raise ValueError(f"step {step}: batch has {batch['input_ids'].shape[0]} rows, more than "
                         f"TrainConfig.batch_size={cfg.batch_size}")
    return batch


def _count_loss_tokens(batch: dict, vocab: int | None, step: int) -> int:
    """How many targets carry a loss (!= -100), after checking each is a token id the head can
    predict. The range check runs where it is free: on a CPU batch, before it is copied over. A
    batch already on a GPU is not read back (that would stall the queue each step): its count is the
    one minift.data.Batches made on the CPU ("num_loss_tokens"), and an out-of-range target makes
    the loss NaN there (kernels/softmax_xent.py), which stops the run as a diverged step."""
    targets = batch["targets"]
    if targets.device.type != "cpu" and "num_loss_tokens" in batch:
        return int(batch["num_loss_tokens"])
    counted = targets != IGNORE_INDEX
    if vocab is not None and targets.device.type == "cpu":
        ids = targets[counted]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)][0].item()
            raise ValueError(f"step {step}: target id {bad} is outside the model's vocabulary [0, {vocab}) "
                             f"(and is not the ignore index {IGNORE_INDEX}): check the tokenizer matches the model")
    return int(counted.sum())


def _with_placeholder_target(batch: dict) -> dict:
    """The batch with one real target, for a forward whose loss is multiplied by 0: a loss over no
    target is 0/0 = NaN, and 0 * NaN would poison the gradients."""
    targets = batch["targets"].clone()
    targets[0, 0] = 0
    return {**batch, "targets": targets}


def _model_inputs(batch: dict, device: torch.device) -> dict:
    inputs = {"input_ids": batch["input_ids"].to(device), "targets": batch["targets"].to(device)}
    for key in ("position_ids", "segment_ids"):
        if batch.get(key) is not None:
            inputs[key] = batch[key].to(device)
    return inputs


def _run_eval(model, val_batches, val_state, cfg, run, callbacks) -> None:
    if val_state is not None:
        val_batches.load_state_dict(val_state)  # the same validation batches every time
    result = evaluate(model, val_batches, cfg.eval_batches, cfg.precision)
    entry = {"step": run.step, "loss": result["loss"], "perplexity": result["perplexity"], "tokens": result["tokens"]}
    run.evals.append(entry)
    logger.info("step %d: eval loss %.4f, perplexity %.2f", run.step, entry["loss"], entry["perplexity"])
    for cb in callbacks if distributed.is_main() else ():
        cb({"kind": "eval", **entry})


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("the model has no parameters")


def _trainable_names(model: nn.Module) -> dict[torch.Tensor, str]:
    names = {p: n for n, p in model.named_parameters() if p.requires_grad}  # a tied weight appears once
    if not names:
        raise ValueError("the model has no trainable parameters (every requires_grad is False)")
    return names


def _check_precision(cfg: TrainConfig, names: dict, device: torch.device) -> None:
    want = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    for p, name in names.items():
        if p.dtype != want:
            hint = ("cast the model first (model.to(torch.bfloat16)) or use precision='bf16-autocast'"
                    if want == torch.bfloat16 else "use precision='bf16' for bf16 parameters")
            raise ValueError(f"precision={cfg.precision!r} trains {want} parameters, but {name!r} is {p.dtype}: {hint}")
    if cfg.precision != "fp32" and not bf16_supported(device):
        raise ValueError(f"precision={cfg.precision!r} needs bf16, which {device} does not run; use 'fp32'")


def _set_grad_checkpointing(model: nn.Module, on: bool, layers: int | None = None) -> None:
    if not hasattr(model, "gradient_checkpointing"):
        if on:
            raise ValueError(f"grad_checkpointing=True, but {type(model).__name__} has no gradient_checkpointing flag")
        return
    model.gradient_checkpointing = on
    if not hasattr(model, "checkpoint_layers"):
        if layers is not None:
            raise ValueError(f"checkpoint_layers={layers}, but {type(model).__name__} has no checkpoint_layers setting")
        return
    if layers is not None and layers > len(model.model.layers):
        raise ValueError(f"TrainConfig.checkpoint_layers={layers}, but the model has {len(model.model.layers)} layers")
    model.checkpoint_layers = layers
