"""The fast path: which speed features a training run uses, decided in one place, with the reasons.

    plan = fast_path.decide(device, torch.bfloat16, method="lora", one_shape=True, grad_accum=1,
                            num_rows=len(rows), batch_size=4, steps=300)
    for line in plan.lines: log(line)                       # what was picked, and why
    lora.add_lora(model, ..., compute_dtype=plan.adapter_compute_dtype)
    Batches(rows, 4, drop_last=plan.drop_last)
    with fused_projections.fused(model, plan.fused_projections), fast_path.compiled_layers(model, plan.compile):
        train(model, ..., TrainConfig(..., cuda_graph=plan.cuda_graph))

What it picks, each on unless its flag turns it off or the run cannot use it:
  - bf16 adapter math (LoRALinear compute_dtype): when the base computes in bf16 (the device runs
    bf16). The adapters' matmuls then run on tensor cores and keep no fp32 copy of their input
    (minift/lora.py, Note: compute_dtype); A and B stay fp32 parameters. Off: --adapter-math fp32.
  - compiled decoder layers (Transformer.compile_layers): on CUDA for a run of COMPILE_MIN_STEPS
    steps or more (Note: when compiling pays); --compile for a shorter run too. Not on CPU or MPS:
    on the 2-core CPU machine, compiling one LoRA-wrapped layer cost 9-20 s of CPU time (2-5
    minutes of wall time on the shared machine), so a run of a few hundred CPU steps starts minutes
    later, and Inductor builds C++ there, which not every laptop has. Whether the compiled CPU step is faster was not
    measured (the machine was shared); off until a measurement shows it pays. Off: --no-compile.
  - the CUDA graph (minift/cuda_graph.py, TrainConfig.cuda_graph): on CUDA when every batch has
    one shape (packed rows do), with gradient accumulation too (a second graph adds each
    micro-batch's weighted gradients: minift/cuda_graph.py, Note: accumulation); a last short batch is dropped
    (drop_last) rather than turning the graph off. Full training under
    torchrun (FSDP2) leaves it off too: the shards are gathered and reduced by hooks between the
    layers, which a replay would skip. Off: --no-cuda-graph.
  - fused projections (minift/fused_projections.py): LoRA and QLoRA on CUDA. q/k/v and gate/up
    of a 16-bit frozen base as one matmul each, the adapters' A products stacked, one dropout mask
    per group; NF4 bases keep a product each, with the adapters' update inside it (Note: NF4
    groups). Not where every weight trains; not on CPU or MPS, where LoRALinear recomputes each
    adapter's dropout in backward to save memory and the fused product would keep a dropped copy.
    Off: --no-fused-projections.
  - the fused chunked loss (kernels/linear_cross_entropy_fused.py): always; minift's model has no
    other training loss, so there is no flag for it.

Note: when compiling pays. Compiling is a one-time cost paid in the first step; it then saves a
little on every step, as the CUDA graph has already removed the launch overhead it would otherwise
remove. Measured on the H200 (2026-12-01, empty compile caches, a user's first run):
  - the capstone's training (lora_qwen.py's finetune, 0.5B LoRA, 4 x 1024, 300 steps;
    results/h200/bench_recipe_compile_default.json): first step 15.0 s compiled against 2.1 s
    eager with the graph, steady step 0.041 s against 0.047 s: compiling pays back after ~2,150 steps;
  - 7B QLoRA (bench_train's step; results/h200/bench_7b_qlora_fast-graph_bf16.json and
    ..._fast-compile-graph_bf16.json): first step 16.6 s against 7.3 s, steady 0.246 s against
    0.262 s: after ~570 steps.
So a run shorter than COMPILE_MIN_STEPS (the capstone trains 211 steps) finishes sooner without
compiling, and a longer one sooner with it. On a machine whose caches already hold the kernels (a
rerun of the same model and shapes) the compiled first step took 1.9 s, and compiling pays at
once; the rule cannot know that beforehand and goes by the first run. --compile / --no-compile decide instead.

Compile cost: the first step includes compiling (and the graph capture); `first_step_line` turns
the step times into the line the recipes print. Inductor's FX graph cache and AOTAutograd cache
are on by default in torch 2.11-2.13 and live in `compile_cache_dir()` (TORCHINDUCTOR_CACHE_DIR
when set, else torch's default under the temp directory): a second run on the same machine loads
the compiled kernels instead of building them again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from minift import distributed, fused_projections

logger = logging.getLogger(__name__)

ADAPTER_MATH = ("bf16", "fp32")
COMPILE_MIN_STEPS = 1000  # a run this long or longer compiles its layers (Note: when compiling pays)

# The recipes' switches, as argparse arguments (the scripts add them: `for flag, kw in FLAGS:
# ap.add_argument(flag, **kw)`, then `settings(args)`); one definition, so every recipe says the same.
FLAGS = (
    ("--compile", dict(action="store_true", help=f"compile the decoder layers even for a run under "
                                                 f"{COMPILE_MIN_STEPS:,} steps (fast path, CUDA)")),
    ("--no-compile", dict(action="store_true", help="do not compile the decoder layers (fast path, CUDA)")),
    ("--no-cuda-graph", dict(action="store_true", help="do not replay the step as a CUDA graph (fast path, CUDA)")),
    ("--adapter-math", dict(choices=ADAPTER_MATH, default="bf16",
                            help="LoRA matmul dtype over a bf16 base (default bf16; fp32 is peft's plain math)")),
    ("--no-fused-projections", dict(action="store_true",
                                    help="compute q/k/v and gate/up as separate matmuls (fast path, LoRA on CUDA)")),
)
ADAPTER_FLAGS = ("--adapter-math", "--no-fused-projections")  # recipes without adapters leave these out


def describe(lines, compile_line: str | None = None) -> str:
    """The block the recipes print: 'fast path:' and one indented line per choice."""
    return "fast path:\n" + "\n".join(f"  {line}" for line in [*lines, *([compile_line] if compile_line else [])])


def compile_choice(args) -> bool | None:
    """--compile / --no-compile as decide()'s `compile`: True, False, or None (by the run's length)."""
    if args.compile and args.no_compile:
        raise SystemExit("--compile and --no-compile: give one of them")
    return True if args.compile else False if args.no_compile else None


def settings(args) -> dict:
    """The FLAGS' values from parsed arguments, as decide()'s (and FinetuneConfig's) keyword arguments.
    compile: True (--compile), False (--no-compile) or None (by the run's length)."""
    out = dict(compile=compile_choice(args), cuda_graph=not args.no_cuda_graph)
    if hasattr(args, "adapter_math"):  # a recipe without adapters (train_tiny.py) has no ADAPTER_FLAGS
        out["adapter_math"] = args.adapter_math
        out["fused_projections"] = not args.no_fused_projections
    return out


@dataclass(frozen=True)
class FastPath:
    adapter_compute_dtype: torch.dtype | None   # LoRALinear compute_dtype; None: the adapter's own (fp32)
    compile: bool                               # compile the decoder layers
    cuda_graph: bool                            # TrainConfig.cuda_graph
    drop_last: bool                             # the training batches drop a short last batch
    fused_projections: bool                     # fused_projections.fused(model) while training
    fused_loss: bool                            # always True (see the module doc)
    lines: tuple[str, ...]                      # one human-readable line per choice

    def summary(self) -> str:
        """One line for a report: 'compiled layers, CUDA graph, bf16 adapter math, fused loss'."""
        on = [name for name, used in (("compiled layers", self.compile), ("CUDA graph", self.cuda_graph),
                                      ("bf16 adapter math", self.adapter_compute_dtype == torch.bfloat16),
                                      ("fused q/k/v and gate/up", self.fused_projections),
                                      ("fused loss", self.fused_loss)) if used]
        return ", ".join(on)


def decide(device: torch.device | str, dtype: torch.dtype, *, method: str, one_shape: bool, grad_accum: int = 1,
           num_rows: int | None = None, batch_size: int | None = None, steps: int | None = None,
           epochs: float | None = None, compile: bool | None = None, cuda_graph: bool = True,
           adapter_math: str = "bf16", fused_projections: bool = True, world_size: int | None = None) -> FastPath:
    """The fast-path settings for one run, and a line saying what was picked and why.

    device, dtype: where the model trains and the dtype its base computes in.
    method: "lora" / "qlora" (adapters) or anything else (every weight trained: no adapter math).
    one_shape: every training batch has the same (rows, columns) (packed data does), apart from a
      last short batch, which drop_last removes (needs num_rows and batch_size to say so).
    steps, or epochs (with num_rows and batch_size): the run's length, for compile=None; neither
      given: a run of unknown length, compiled.
    compile: True / False: the user's choice (--compile / --no-compile); None: compile a run of
      COMPILE_MIN_STEPS steps or more (the module's Note).
    cuda_graph, adapter_math, fused_projections: the user's flags; False / "fp32" turn a feature off.
    world_size: the ranks under torchrun (None: this process's, 1 without torchrun). batch_size is
      one rank's rows, and every step reads batch_size x world_size rows (minift.data.Batches),
      which is what a short batch and the run's length are counted in."""
    device = torch.device(device)
    if adapter_math not in ADAPTER_MATH:
        raise ValueError(f"adapter_math must be one of {ADAPTER_MATH}, got {adapter_math!r}")
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    if world_size is None:
        world_size = distributed.world_size()
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cuda = device.type == "cuda"
    lines = []

    # -- adapter math
    adapter_dtype = None
    if method in ("lora", "qlora"):
        if adapter_math == "fp32":
            lines.append("adapter math: fp32 (--adapter-math fp32)")
        elif dtype != torch.bfloat16:
            lines.append(f"adapter math: fp32 (the base computes in {_name(dtype)} on {device.type}; bf16 "
                         f"adapter math follows a bf16 base)")
        else:
            adapter_dtype = torch.bfloat16
            lines.append("adapter math: bf16 (fp32 A and B, bf16 matmuls; --adapter-math fp32 to turn off)")

    # -- fused projections
    use_fused = False
    if method in ("lora", "qlora"):
        if not fused_projections:
            lines.append("fused projections: off (--no-fused-projections)")
        elif not cuda:
            lines.append(f"fused projections: off on {device.type} (each adapter recomputes its dropout "
                         f"in backward there to save memory; minift/lora.py)")
        else:
            use_fused = True
            if method == "qlora":
                lines.append("fused projections: on (each NF4 product computes its adapter's update inside "
                             "it; q/k/v and gate/up share one dropout mask and one down-projection; "
                             "--no-fused-projections to turn off)")
            else:
                lines.append("fused projections: on (q/k/v and gate/up as one matmul each; a group's adapters "
                             "share one dropout mask; --no-fused-projections to turn off)")

    # -- CUDA graph (decided first: a dropped short batch shortens the run, which the compile rule reads)
    graph_lines = []
    use_graph, drop_last = False, False
    global_batch = batch_size * world_size if batch_size else None
    short = (num_rows % global_batch) if (num_rows is not None and global_batch) else 0
    if not cuda_graph:
        graph_lines.append("CUDA graph: off (--no-cuda-graph)")
    elif not cuda:
        graph_lines.append(f"CUDA graph: off on {device.type} (CUDA graphs are CUDA's)")
    elif world_size > 1 and method not in ("lora", "qlora"):
        graph_lines.append(f"CUDA graph: off on {world_size} ranks for full training (FSDP2 gathers and "
                           f"reduce-scatters each layer's weights between the layers, from Python hooks a "
                           f"graph cannot capture; the compiled layers stay)")
    elif not one_shape:
        graph_lines.append("CUDA graph: off (the batches change shape; pack the rows to get it)")
    elif num_rows is not None and global_batch and num_rows < global_batch:
        graph_lines.append(f"CUDA graph: off ({num_rows} training rows, fewer than one batch of {global_batch})")
    else:
        use_graph = True
        drop_last = short > 0
        dropped = (f"; the last short batch ({short} of {num_rows} rows) is dropped each epoch so every "
                   f"batch has one shape" if drop_last else "")
        accumulated = (f", {grad_accum} micro-batches' gradients added per step" if grad_accum > 1 else "")
        graph_lines.append(f"CUDA graph: on (forward + backward replayed as one launch{accumulated}{dropped}; "
                           f"--no-cuda-graph to turn off)")

    # -- compiled layers
    run_steps = steps if steps is not None else _steps_of(epochs, num_rows, global_batch, grad_accum, drop_last)
    if compile is False:
        use_compile = False
        lines.append("compiled layers: off (--no-compile)")
    elif not cuda:
        use_compile = False
        lines.append(f"compiled layers: off on {device.type} (compiling costs minutes there; "
                     f"see minift/fast_path.py)")
    elif not _triton_importable():
        use_compile = False
        lines.append("compiled layers: off (torch.compile on CUDA needs triton, which does not import here)")
    elif compile is None and run_steps is not None and run_steps < COMPILE_MIN_STEPS:
        use_compile = False
        lines.append(f"compiled layers: off for a run of {run_steps:,} steps (the first compile pays back "
                     f"after about {COMPILE_MIN_STEPS:,}; minift/fast_path.py; --compile to compile anyway)")
    else:
        use_compile = True
        why = ("--compile" if compile else f"{run_steps:,} steps" if run_steps is not None
               else "a run of unknown length")
        lines.append(f"compiled layers: on ({why}; first compile timed below; cached in {compile_cache_dir()}; "
                     f"--no-compile to turn off)")

    lines += graph_lines
    lines.append("loss: fused chunked linear + cross-entropy (the full logits are never materialised)")
    return FastPath(adapter_compute_dtype=adapter_dtype, compile=use_compile, cuda_graph=use_graph,
                    drop_last=drop_last, fused_projections=use_fused, fused_loss=True, lines=tuple(lines))


def _steps_of(epochs, num_rows, batch_size, grad_accum, drop_last) -> int | None:
    """Optimizer steps in `epochs` passes over num_rows rows, as minift.train counts them from
    len(Batches) (None when any is unknown)."""
    if epochs is None or not num_rows or not batch_size:
        return None
    per_epoch = num_rows // batch_size if drop_last else math.ceil(num_rows / batch_size)
    return max(1, math.ceil(epochs * per_epoch / grad_accum))


def train_with(plan: FastPath, model: nn.Module, train_batches, val_batches, cfg, **train_kwargs):
    """minift.train.train with the plan's fused projections, compiled layers and CUDA graph
    (cfg.cuda_graph is set from the plan), logging the plan's lines and the first step's one-time cost.
    Returns (TrainResult, the compile line or None)."""
    from minift.train import train
    for line in plan.lines:
        logger.info("fast path: %s", line)
    step_seconds = []  # the first step carries the compile and the graph capture

    def on_step(event):
        if event["kind"] == "train":
            step_seconds.append(event["tokens"] / event["tokens_per_s"])
    callbacks = [*(train_kwargs.pop("callbacks", None) or []), on_step]
    with fused_projections.fused(model, plan.fused_projections) as groups, compiled_layers(model, plan.compile):
        if plan.fused_projections:  # 0 where no group qualifies (fused_projections.fusable says which do)
            logger.info("fast path: fused projections: %d q/k/v and gate/up groups fused", groups)
        result = train(model, train_batches, val_batches, dataclasses.replace(cfg, cuda_graph=plan.cuda_graph),
                       callbacks=callbacks, **train_kwargs)
    line = first_step_line(step_seconds, plan.compile, plan.cuda_graph)
    if line:
        logger.info("fast path: %s", line)
    return result, line


@contextlib.contextmanager
def compiled_layers(model: nn.Module, enabled: bool):
    """Compile the decoder layers for the block (training), and put the eager layers back after:
    evaluation and generation call the model with other shapes (a growing KV cache), each of
    which would be another compile. nn.Module.compile keeps the compiled callable in
    _compiled_call_impl; clearing it is how a module is un-compiled."""
    if not enabled:
        yield model
        return
    model.compile_layers()
    try:
        yield model
    finally:
        for layer in model.model.layers:
            layer._compiled_call_impl = None


def first_step_line(step_seconds: list[float], compiled: bool, graphed: bool) -> str | None:
    """'first step 41.3 s (compile + CUDA graph capture), steady steps 0.033 s: ~41.3 s of one-time
    cost' from the step times of a run, or None when nothing was compiled or captured."""
    if not (compiled or graphed) or not step_seconds:
        return None
    what = " + ".join(w for w, on in (("compile", compiled), ("CUDA graph capture", graphed)) if on)
    first = step_seconds[0]
    rest = sorted(step_seconds[1:])
    if not rest:
        return f"first step {first:.1f} s ({what} included)"
    steady = rest[len(rest) // 2]
    return (f"first step {first:.1f} s ({what} included), steady step {steady:.3f} s: "
            f"about {max(first - steady, 0.0):.1f} s of one-time cost")


def compile_cache_dir() -> str:
    """Where Inductor keeps its compiled kernels between runs (TORCHINDUCTOR_CACHE_DIR or torch's default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return cache_dir()
    except ImportError:  # a torch that moved it: say where the setting lives instead
        return "TORCHINDUCTOR_CACHE_DIR"


def _triton_importable() -> bool:
    from minift.kernels import dispatch
    return dispatch.triton_available()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
