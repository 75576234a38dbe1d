"""One training micro-step (forward + backward) captured as a CUDA graph and replayed.

A small model's step is not bound by the GPU but by the host: Qwen2.5-0.5B with LoRA on all
seven projections launches thousands of kernels per step (24 layers x 7 adapters x their forward
and backward, norms, RoPE, the chunked loss), and Python + the CUDA driver need a few
microseconds for each. The GPU finishes a kernel before the next one is queued and waits.
A CUDA graph records the whole sequence of kernels once; replaying it is one launch, so the GPU
runs back to back and the host is free.

    step = GraphedStep(model)
    for batch in batches:
        loss = step(input_ids=ids, targets=targets)   # replays forward + backward; p.grad is set
        optimizer.step()                              # eager: a handful of foreach launches

    # gradient accumulation: micro-batch i's loss weighted by w_i, its gradients added to the others'
    for i, (micro, w) in enumerate(zip(micro_batches, weights)):
        loss_i = step(loss_weight=w, accumulate=i > 0, **micro)

What a graph requires, and how it is met here:
  - fixed shapes and addresses: the inputs are copied into static tensors captured once, so every
    batch must have the shape of the first (pack the data; a different shape is an error);
  - no host synchronisation inside: the model's forward and the fused loss have none (the loss's
    "every target is -100" check is the train loop's, on the CPU batch, before the copy);
  - a warm-up first: torch.compile, cuBLAS and Triton autotuning do their one-time work (and
    allocate) outside the capture;
  - gradients in fixed tensors: every .grad is set to None before the capture, so the captured
    backward writes each parameter's gradient into a tensor of the graph's own memory (as autograd
    does when there is no .grad), and every replay writes the same tensors. They are handed back
    to each parameter's .grad after every replay, so `zero_grad(set_to_none=True)` between steps
    is harmless.

Note: accumulation. The captured loss is multiplied by a weight held in a one-element tensor that
each call fills (loss_weight), so micro-batch i's gradients are those of loss_i * w_i, the train
loop's token weighting (minift/train.py, Note: accumulation). A call with accumulate=True replays a
second graph, captured the first time one asks for it: the same forward and backward captured with
the first graph's gradients in .grad, so that autograd adds into them, sharing the first graph's
memory pool (the two never run at once, so their intermediates can share blocks). A run without
accumulation never captures it. One graph could serve both by zeroing the gradients and always
adding into them, and did for a day (2026-12-03): an add kernel per parameter at every replay, 340
a step on 0.5B LoRA. On one H200, alternating (scripts/profile_step.py --row
0.5b:lora:fast+compile+graph:bf16; results/h200/graph_plain_replay_2026-12-03/): 30.4 and 29.9 ms
a step with the two graphs, 30.9 and 31.1 ms with the adds, 2,173 kernels a step against 2,513.
Before either, a run with grad_accum > 1 ran without the graph: on the H200, 0.5B LoRA's fast
step compiled but not replayed took 95.8 ms against 30.0 (the host launching ~2,170 kernels;
results/h200/rope_qkv_operator_tried_2026-12-02.txt, its "old" rows).

Note: memory. The captured step allocates from a private pool that stays reserved between
replays, with about the eager step's peak (tensors freed during the capture are reused in it;
on the H200, 0.5B full lean 6.47 vs 6.40 GB, 7B QLoRA fast 37.96 vs 38.12 GB: README).
The warm-up's cached blocks are returned to the driver before the capture so the two do not
stack up in torch.cuda.memory_reserved. Dropout works: the graph advances the CUDA RNG's offset
on each replay, as PyTorch registers the default generator with every capture.

Not supported (each an error, not a silent fallback): shapes that change between batches; CPU or
MPS (CUDA graphs are CUDA's). If autograd ever replaced a .grad during the capture instead of adding
into it, the capture stops with an error rather than replaying into a tensor nobody reads.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class GraphedStep:
    """Forward + backward of `model(**inputs)` (the model returns the mean loss) as a CUDA graph.

    autocast: a context manager entered around the forward (e.g. torch.autocast for
    bf16-autocast training); warmup: eager steps run before the capture (their gradients are
    discarded; they change no parameter)."""

    def __init__(self, model: nn.Module, autocast=None, warmup: int = 3):
        if warmup < 1:
            raise ValueError(f"GraphedStep needs at least one warm-up step, got warmup={warmup}")
        self.model = model
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.warmup = warmup
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None          # writes the gradients
        self.accumulating: torch.cuda.CUDAGraph | None = None   # adds into them (Note: accumulation)
        self.static_inputs: dict[str, torch.Tensor | None] = {}
        self.losses: dict[bool, torch.Tensor] = {}              # each graph's loss, by `accumulate`
        self.grads: list[torch.Tensor | None] = []
        self.loss_weight: torch.Tensor | None = None      # filled by each call (Note: accumulation)

    def __call__(self, *, loss_weight: float = 1.0, accumulate: bool = False,
                 **inputs: torch.Tensor | None) -> torch.Tensor:
        """Copy `inputs` into the captured tensors, replay, return the loss (a 0-dim fp32 tensor that
        the next call with the same `accumulate` overwrites: read it or clone it before calling
        again). The gradients are those of loss * loss_weight, added to the current ones with
        accumulate=True (Note: accumulation)."""
        if self.graph is None:
            self._capture(inputs)
        else:
            self._copy_in(inputs)
        if accumulate and self.accumulating is None:
            self._capture_accumulating()
        self.loss_weight.fill_(loss_weight)
        (self.accumulating if accumulate else self.graph).replay()
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return self.losses[accumulate]

    # ------------------------------------------------------------------ capture
    def _capture(self, inputs: dict) -> None:
        for name, t in inputs.items():
            if t is not None and (not isinstance(t, torch.Tensor) or t.device.type != "cuda"):
                raise ValueError(f"GraphedStep: input {name!r} must be a CUDA tensor (CUDA graphs are CUDA's); "
                                 f"got {type(t).__name__} on {getattr(t, 'device', 'no device')}")
        if not any(p.is_cuda for p in self.params):
            raise ValueError("GraphedStep: the model has no trainable CUDA parameter")
        self.static_inputs = {k: (t.clone() if t is not None else None) for k, t in inputs.items()}
        self.loss_weight = torch.ones((), device=next(p.device for p in self.params if p.is_cuda))

        # Warm-up on a side stream (the capture happens on one too, and the first uses of cuBLAS
        # and compiled code on a stream must not be inside the capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        received = [p.grad is not None for p in self.params]
        for p in self.params:
            p.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()   # Note: memory (the warm-up's cached blocks)

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.losses[False] = self._forward_backward()
        # the gradients the replays write (a parameter the loss never reached keeps None)
        self.grads = [p.grad for p in self.params]
        if [g is not None for g in self.grads] != received:
            raise RuntimeError("GraphedStep: the captured backward reached other parameters than the warm-up's")

    def _capture_accumulating(self) -> None:
        """The same step, adding into the first graph's gradients (Note: accumulation)."""
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.accumulating = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.accumulating, pool=self.graph.pool()):
            self.losses[True] = self._forward_backward()
        replaced = [i for i, (p, g) in enumerate(zip(self.params, self.grads)) if p.grad is not g]
        if replaced:
            raise RuntimeError(f"GraphedStep: autograd replaced {len(replaced)} parameter gradient(s) during the "
                               f"capture instead of adding into them; the graph would write tensors nobody reads")

    def _forward_backward(self) -> torch.Tensor:
        with self.autocast:
            loss = self.model(**self.static_inputs)
        loss = loss.float()
        (loss * self.loss_weight).backward()
        return loss.detach()

    def _copy_in(self, inputs: dict) -> None:
        if inputs.keys() != self.static_inputs.keys():
            raise ValueError(f"GraphedStep: captured with inputs {sorted(self.static_inputs)}, "
                             f"called with {sorted(inputs)}")
        for name, t in inputs.items():
            static = self.static_inputs[name]
            if (t is None) != (static is None):
                raise ValueError(f"GraphedStep: input {name!r} was {'None' if static is None else 'a tensor'} "
                                 f"when captured and cannot change")
            if t is None:
                continue
            if t.shape != static.shape or t.dtype != static.dtype:
                raise ValueError(f"GraphedStep: input {name!r} has shape {tuple(t.shape)} {t.dtype}; the graph "
                                 f"was captured with {tuple(static.shape)} {static.dtype}. A CUDA graph replays "
                                 f"fixed shapes: give every batch the same shape (pack the data) or turn "
                                 f"cuda_graph off")
            static.copy_(t, non_blocking=True)
