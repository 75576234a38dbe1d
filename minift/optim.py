"""AdamW from first principles, and the warmup + cosine learning-rate schedule.

AdamW (Loshchilov & Hutter, arXiv:1711.05101) for one parameter p with gradient g, at step t = 1, 2, ...

    p  <- p * (1 - lr * wd)                      decoupled weight decay: not part of the gradient
    m  <- b1 * m + (1 - b1) * g                  first moment (momentum)
    v  <- b2 * v + (1 - b2) * g * g              second moment (per-element gradient scale)
    m^ =  m / (1 - b1^t)                         bias correction: m and v start at 0
    v^ =  v / (1 - b2^t)
    p  <- p - lr * m^ / (sqrt(v^) + eps)

The code below writes exactly this, in torch.optim.AdamW's order of operations (single-tensor
path), so the two agree on fp32 parameters: bitwise on torch 2.13 CPU, and tests/test_optim.py
checks them to 1e-6 after 20 steps.

Note: optimizer memory. m and v are kept in fp32 whatever the parameter dtype: 8 bytes per
trainable parameter. bf16 moments would save 4 bytes but v's small values underflow and m loses
the small gradients that carry the signal. With `master_weights=True` a bf16 parameter also gets
an fp32 copy (4 more bytes per parameter) that takes the update; the bf16 parameter is that copy
rounded to nearest. Without it, a bf16 parameter is updated in fp32 and rounded back every step,
so an update smaller than half a bf16 ulp (|p| * 2^-9, e.g. 0.002 at p = 1.0) is lost: with a
small learning rate most of training can be lost this way. fp32 parameters never get a copy.
So: fp32 params: 4 (p) + 8 (m, v) = 12 B/param; bf16 params: 2 + 8 = 10, or 2 + 8 + 4 = 14 with
master weights (plus gradients: 4 or 2 B/param). Only parameters with requires_grad=True are
given to the optimizer, so for LoRA these numbers apply to the adapter alone.

Three ways to run the same update: a loop over tensors in PyTorch ops (the readable one, the CPU's);
the foreach path (the same ops on lists of tensors, the CUDA default: hundreds of small LoRA
adapters in a few launches); and, inside the foreach path on CUDA, one Triton kernel launch for
all the tensors (kernels/adamw.py: 22 bytes moved per element instead of ~90, which is most
of a full fine-tuning step's optimizer time).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


FOREACH_SLICE = 2 ** 25  # elements per foreach call: 32M, so at most ~400 MB of fp32 temporaries
# On CUDA, a parameter (or FSDP shard) of at least this many elements is updated by the fused kernel
# (kernels/adamw.py: 22 bytes per element moved instead of the foreach ops' ~90; one launch for all
# of them) and the rest by the foreach lists. 1: every tensor. Measured on the H200 (2026-12-02,
# scripts/bench_adamw.py, results/h200/bench_adamw_*_one_launch.json): Qwen2.5-0.5B full 4.3 ms from
# 1 element, 6.1 from 65,536, 10.1 from 2^20 (the threshold of the kernel's per-tensor version); its
# LoRA adapters 0.9 ms from 1, 2.4 as lists alone; 7B full 43.4 ms either way.
FUSED_MIN_NUMEL = 1


def foreach_slices(sizes: list[int], limit: int = FOREACH_SLICE) -> list[list[tuple[int, int, int]]]:
    """How the foreach path cuts its work: tensors of `sizes` elements, in order, go into slices of
    at most `limit` elements; a larger tensor is cut into flat pieces. Returns, per slice, a list
    of (tensor index, start, stop) element ranges.

    Note: why slices. The foreach update makes fp32 temporaries for everything it handles at once
    (p.float(), grad.float(), the denominator: 12 bytes per element for bf16 parameters). Over a
    whole model that is 12 B/param: ~90 GB for 7B full fine-tuning. Sliced, it is 12 B x limit.
    minift.memory counts the same slices from this function."""
    slices, current, size = [], [], 0
    for index, n in enumerate(sizes):
        start = 0
        while start < n:
            take = min(n - start, limit - size)
            current.append((index, start, start + take))
            size += take
            start += take
            if size == limit:
                slices.append(current)
                current, size = [], 0
    if current:
        slices.append(current)
    return slices


class AdamW(torch.optim.Optimizer):
    """AdamW with fp32 moments for any parameter dtype and optional fp32 master weights.

    params: an iterable of parameters or of param-group dicts (see `param_groups`).
    State per parameter: "step" (a Python int), "exp_avg" and "exp_avg_sq" (fp32, the parameter's
    shape and device), and "master" (fp32) only when master_weights=True and the parameter is not fp32.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, master_weights: bool = False,
                 foreach: bool | None = None):
        if lr < 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if eps < 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        master_weights=master_weights)
        # foreach: the same update applied to all tensors of a group at once (torch._foreach_*),
        # one kernel launch per operation instead of one per operation per tensor. On a GPU the
        # per-tensor loop is launch-bound for LoRA (hundreds of small adapters): None = on for CUDA.
        self.foreach = foreach
        # per param group: (the tensors' addresses, which parameters the fused kernel takes, its
        # launch), kept from step to step while nothing moved (_step_fused)
        self._fused_launches: dict[int, tuple] = {}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(f"AdamW can only train floating-point parameters, got {p.dtype} "
                                     f"of shape {tuple(p.shape)} (a quantized weight must stay frozen)")

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        if group["master_weights"] and p.dtype != torch.float32:
            state["master"] = p.detach().to(torch.float32, copy=True)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            live = [p for p in group["params"] if p.grad is not None]
            use_foreach = self.foreach if self.foreach is not None else any(p.is_cuda for p in live)
            if use_foreach:
                self._step_foreach(live, group)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue  # a parameter that took no part in this loss: leave it and its state alone
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                state["step"] += 1
                t = state["step"]
                grad = _local(p.grad)
                p = _local(p)                                    # FSDP2: this rank's shard (Note: shards)
                m, v = _local(state["exp_avg"]), _local(state["exp_avg_sq"])

                # w is what the update is applied to, always fp32: the master copy, the parameter
                # itself when it is fp32, or an fp32 upcast of a bf16/fp16 parameter.
                if "master" in state:
                    w = _local(state["master"])
                elif p.dtype == torch.float32:
                    w = p
                else:
                    w = p.float()
                g = grad if grad.dtype == torch.float32 else grad.float()

                if wd != 0:
                    w.mul_(1 - lr * wd)                          # decoupled decay, before the Adam step
                m.lerp_(g, 1 - beta1)                            # m = b1*m + (1-b1)*g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)    # v = b2*v + (1-b2)*g^2
                bias_correction1 = 1 - beta1 ** t
                bias_correction2 = 1 - beta2 ** t
                step_size = lr / bias_correction1
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)  # sqrt(v^) + eps
                w.addcdiv_(m, denom, value=-step_size)           # w -= lr * m^ / (sqrt(v^) + eps)

                if w is not p:
                    p.copy_(w)                                   # round to nearest into bf16/fp16
        return loss

    def _step_foreach(self, params: list[torch.Tensor], group: dict) -> None:
        """The loop in `step`, written as list operations over slices of the parameters (see
        foreach_slices). Same formula, same order of operations, so the result is the same to the
        bit (tests/test_optim.py checks the two paths agree). On CUDA the tensors take the fused
        kernel instead, all in one launch (uses_fused_kernel; the same arithmetic, kernels/adamw.py)."""
        by_step: dict[int, list[torch.Tensor]] = {}  # bias correction depends on each tensor's step count
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state = self.state[p] if self.state[p] else self._init_state(p, group)
            state["step"] += 1
            by_step.setdefault(state["step"], []).append(p)
        for t, ps in by_step.items():
            ps = self._step_fused(ps, group, t)          # what the fused kernel did not take
            for ranges in foreach_slices([_local(p).numel() for p in ps]):
                pieces = [self._piece(ps[i], start, stop) for i, start, stop in ranges]
                self._update_pieces(pieces, t, group)

    def _step_fused(self, params: list[torch.Tensor], group: dict, t: int) -> list[torch.Tensor]:
        """Update at step t, with kernels/adamw.py (one launch for all of them), the parameters it
        takes (uses_fused_kernel); return the others. The launch and the choice of parameters are
        kept from the last step while every tensor is where it was then (kernels/adamw.py Note:
        one launch for many tensors), so a step's host work is a lookup, not a check per tensor."""
        candidates = [p for p in params if _local(p).numel() >= FUSED_MIN_NUMEL]
        if not candidates:
            return params
        updates = [self._local_update(p) for p in candidates]
        from minift.kernels import adamw
        where = adamw.addresses(updates)
        kept = self._fused_launches.get(id(group))
        if kept is not None and kept[0] != where:
            _, takes, launch = kept
            # only the gradients moved (set to None each step, FSDP2's reduce-scatter): re-point the launch
            repointed = (launch.with_gradients([u for u, take in zip(updates, takes) if take])
                         if launch is not None and adamw.only_gradients_moved(kept[0], where) else None)
            kept = (where, takes, repointed) if repointed is not None else None
        if kept is None:   # first step, or something besides the gradients moved: check every tensor
            takes = [uses_fused_kernel(*u) for u in updates]
            kept = (where, takes, adamw.AdamWLaunch([u for u, take in zip(updates, takes) if take]) if any(takes)
                    else None)
        self._fused_launches[id(group)] = kept
        _, takes, launch = kept
        if launch is not None:
            launch(lr=group["lr"], weight_decay=group["weight_decay"], beta1=group["betas"][0],
                   beta2=group["betas"][1], eps=group["eps"], step=t)
        fused = {id(p) for p, take in zip(candidates, takes) if take}
        return [p for p in params if id(p) not in fused]

    def _local_update(self, p: torch.Tensor) -> tuple:
        """(p, grad, m, v, master) of one parameter as the kernel takes them: this rank's shards."""
        st = self.state[p]
        return (_local(p), _local(p.grad), _local(st["exp_avg"]), _local(st["exp_avg_sq"]),
                _local(st["master"]) if "master" in st else None)

    def _piece(self, p: torch.Tensor, start: int, stop: int) -> tuple:
        """Flat views [start:stop] of a parameter, its gradient and its state (all contiguous); the
        tensors themselves when the piece is the whole tensor (as every LoRA adapter's is). Why:
        two view ops for each of four tensors per parameter were ~1,300 aten calls per step for the
        336 adapters of Qwen2.5-0.5B, several ms of host time in a step of ~40 ms, during which the
        GPU waited (the loop reads the loss and grad norm each step, so nothing hides it)."""
        st = self.state[p]
        whole = start == 0 and stop == _local(p).numel()

        def flat(t):  # a view of the (local) tensor, so the updates land in it
            t = _local(t)
            if whole:
                return t
            if not t.is_contiguous():
                raise RuntimeError(f"AdamW foreach path: a tensor of shape {tuple(t.shape)} is not contiguous; "
                                   f"its flat slices would be copies and the update would be lost")
            return t.reshape(-1)[start:stop]
        return (flat(p), flat(p.grad), flat(st["exp_avg"]), flat(st["exp_avg_sq"]),
                flat(st["master"]) if "master" in st else None)

    @staticmethod
    def _update_pieces(pieces: list[tuple], t: int, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        ws = [master if master is not None else (p if p.dtype == torch.float32 else p.float())
              for p, _, _, _, master in pieces]
        gs = [g if g.dtype == torch.float32 else g.float() for _, g, _, _, _ in pieces]
        ms = [m for _, _, m, _, _ in pieces]
        vs = [v for _, _, _, v, _ in pieces]
        if wd != 0:
            torch._foreach_mul_(ws, 1 - lr * wd)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, math.sqrt(bias_correction2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(ws, ms, denom, value=-lr / bias_correction1)
        rounded = [(p, w) for (p, *_), w in zip(pieces, ws) if w is not p]
        if rounded:
            torch._foreach_copy_([p for p, _ in rounded], [w for _, w in rounded])

    # ------------------------------------------------------------------ state for checkpoints
    def load_state_dict(self, state_dict: dict) -> None:
        """Load what `state_dict()` returned. Written out because torch.optim.Optimizer's version
        casts every floating state tensor to its parameter's dtype, which would round the fp32
        moments and master weights of a bf16 parameter to bf16 (the very thing they exist to avoid)."""
        groups, saved_groups = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError(f"optimizer state has {len(saved_groups)} param groups; this optimizer has {len(groups)}")
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"param group {i}: saved state has {len(sg['params'])} parameters, "
                                 f"this optimizer has {len(g['params'])}")
        index_to_param = {}
        for g, sg in zip(groups, saved_groups):
            index_to_param.update(zip(sg["params"], g["params"]))
            for key, value in sg.items():
                if key != "params":
                    g[key] = tuple(value) if key == "betas" else value
        self.state.clear()
        for index, saved in state_dict["state"].items():
            p = index_to_param.get(int(index))
            if p is None:
                raise ValueError(f"optimizer state names parameter index {index}, which no group holds")
            state = {"step": int(saved["step"])}
            for key in ("exp_avg", "exp_avg_sq", "master"):
                if key in saved:
                    t = saved[key]
                    if t.shape != p.shape:
                        raise ValueError(f"optimizer state {key!r} of parameter {index} has shape "
                                         f"{tuple(t.shape)}; the parameter has {tuple(p.shape)}")
                    state[key] = t.to(device=p.device, dtype=torch.float32, copy=True)
                    if _is_dtensor(p):  # a full state for an FSDP2 shard: keep this rank's rows
                        from minift.distributed import shard_like
                        state[key] = shard_like(state[key], p)
            self.state[p] = state

    def named_state(self, names: dict[torch.Tensor, str]) -> tuple[dict[str, torch.Tensor], dict]:
        """The state as flat named tensors plus a JSON-able dict, for safetensors (no pickle).

        names maps each parameter to its name (model.named_parameters()). Tensors are called
        "<param name>.exp_avg", ".exp_avg_sq", ".master"; the JSON holds each group's
        hyperparameters with its parameters by name, and each parameter's step count."""
        tensors, steps, groups = {}, {}, []
        for group in self.param_groups:
            hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            hyper["params"] = [names[p] for p in group["params"]]
            groups.append(hyper)
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                name = names[p]
                steps[name] = state["step"]
                for key in ("exp_avg", "exp_avg_sq", "master"):
                    if key in state:
                        tensors[f"{name}.{key}"] = state[key]
        return tensors, {"param_groups": groups, "steps": steps}

    def load_named_state(self, tensors: dict[str, torch.Tensor], meta: dict,
                         names: dict[torch.Tensor, str], source: str = "optimizer state") -> None:
        """Inverse of `named_state`; `source` names the file in error messages."""
        saved_groups = meta["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{source}: {len(saved_groups)} param groups saved, the optimizer has "
                             f"{len(self.param_groups)}")
        index, state, groups = 0, {}, []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            here = [names[p] for p in group["params"]]
            if here != saved["params"]:
                missing, extra = set(here) - set(saved["params"]), set(saved["params"]) - set(here)
                raise ValueError(f"{source}: param group {i} holds different parameters than were saved "
                                 f"(not saved: {sorted(missing)[:5]}, saved but not trained now: {sorted(extra)[:5]})")
            ids = list(range(index, index + len(here)))
            index += len(here)
            groups.append({**saved, "params": ids})
            for pid, name in zip(ids, here):
                if name not in meta["steps"]:
                    continue
                entry = {"step": meta["steps"][name]}
                for key in ("exp_avg", "exp_avg_sq", "master"):
                    if f"{name}.{key}" in tensors:
                        entry[key] = tensors[f"{name}.{key}"]
                if "exp_avg" not in entry or "exp_avg_sq" not in entry:
                    raise ValueError(f"{source}: no exp_avg/exp_avg_sq tensors for parameter {name!r}")
                state[pid] = entry
        known = {f"{n}.{k}" for g in saved_groups for n in g["params"] for k in ("exp_avg", "exp_avg_sq", "master")}
        unknown = sorted(set(tensors) - known)
        if unknown:
            raise ValueError(f"{source}: tensors for no trained parameter: {unknown[:5]}")
        self.load_state_dict({"state": state, "param_groups": groups})


def uses_fused_kernel(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                      master: torch.Tensor | None) -> bool:
    """Whether the foreach path hands this (local) parameter, its gradient and states to
    kernels/adamw.py: large enough (FUSED_MIN_NUMEL), where kernels/dispatch.py runs Triton
    (CUDA), and laid out as the kernel reads them (adamw.supported)."""
    from minift.kernels import dispatch
    if p.numel() < FUSED_MIN_NUMEL or not dispatch.use_triton(p, grad, m, v):
        return False
    from minift.kernels import adamw
    return adamw.supported(p, grad, m, v, master)


def _is_dtensor(t: torch.Tensor) -> bool:
    # type(t) first: the import below costs ~2 us, called ~2,000 times per step (four tensors per
    # parameter) it was milliseconds of host time; a plain tensor never needs it.
    if type(t) in (torch.Tensor, nn.Parameter):
        return False
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """Note: shards. Under FSDP2 (minift/distributed.py) a parameter, its gradient and the states
    made from it with zeros_like are DTensors: each rank holds some rows of the whole. AdamW is
    elementwise, so each rank updates its own rows alone: the math runs on the local tensors
    (to_local() is a view: in-place updates land in the parameter). Plain tensors pass through."""
    return t.to_local() if _is_dtensor(t) else t


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters (requires_grad=True), nanoGPT's rule
    (configure_optimizers in karpathy/nanoGPT model.py): tensors with dim >= 2 (linear weights,
    embeddings, LoRA A/B) are decayed; 1-D tensors (norm weights, biases) are not, since pulling
    a norm's gain or a bias towards zero is not regularisation, it changes the function's scale.
    Embeddings are decayed, as in nanoGPT (HF Trainer decays them too; it exempts only norms and biases).
    A tied weight appears once (named_parameters removes duplicates)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (every requires_grad is False)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based: the first update is step 0).

    Linear warmup: base_lr * (step + 1) / warmup_steps for step < warmup_steps, so the first
    update already moves (HF's schedule gives step 0 a learning rate of 0, a wasted step) and step
    warmup_steps - 1 reaches base_lr. Then half a cosine from base_lr at step warmup_steps down to
    min_lr = base_lr * min_lr_ratio at step total_steps, and min_lr after that (nanoGPT's get_lr)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    min_lr = base_lr * min_lr_ratio
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)      # 0 -> 1 over the decay
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every param group this learning rate (the schedule's value for the coming step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
