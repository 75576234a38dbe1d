"""Speed and peak memory of real training steps, minift beside transformers + peft in the same run.

Each row runs in a fresh process (a peak must not leak into the next row, and an out-of-memory
error kills only that row): minift's side is `python -m minift.bench` with a JSON spec on stdin,
the anchor's side is scripts/anchor_hf.py. Both build the Qwen2.5 architecture with random
weights (speed and memory do not depend on the values) and time the median steady step.

Modes (minift's side):
  fast: no gradient checkpointing, loss in 1,024-token chunks (never the full logits).
  lean: gradient checkpointing, loss in 256-token chunks: the seed chapter's memory tables.
  +compile: the decoder layers torch.compile'd (Transformer.compile_layers).
  +graph: forward + backward replayed as one CUDA graph (minift/cuda_graph.py); the optimizer
          step stays eager.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from minift.config import ModelConfig

_BASE = {"fast": dict(grad_ckpt=False, loss_chunk=1024), "lean": dict(grad_ckpt=True, loss_chunk=256)}
MODES = {name + compiled + graphed: dict(base, compile=bool(compiled), cuda_graph=bool(graphed))
         for name, base in _BASE.items() for compiled in ("", "+compile") for graphed in ("", "+graph")}


@dataclass
class Row:
    size: str          # "0.5b", "1.5b", "3b", "7b"
    method: str        # "lora", "qlora", "full" (bf16 params + fp32 Adam m, v: the seed's assumption)
    mode: str          # "fast" or "lean" (minift); the anchor runs with checkpointing in lean rows
    lora_compute: str = "fp32"  # the adapters' matmul dtype (LoRALinear.compute_dtype): "fp32" (peft's
                                # default) or "bf16" (as under autocast; then the anchor runs both ways)
    batch: int = 4
    seq: int = 1024

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.lora_compute not in ("fp32", "bf16"):
            raise ValueError(f"lora_compute must be 'fp32' or 'bf16', got {self.lora_compute!r}")


def training_step(cfg: ModelConfig, method: str, *, device="cuda", dtype="bfloat16", grad_ckpt=False,
                  loss_chunk=1024, lora_r: int = 16, compile: bool = False, cuda_graph: bool = False,
                  lora_compute: str = "fp32", lora_dropout: float = 0.0, fused: bool | None = None):
    """A random-weight model for `method` and a function step(ids, targets, **inputs) -> loss that
    runs one forward/backward/AdamW step on it, as the benchmark times it. inputs: the model's other
    keyword inputs (position_ids, segment_ids for packed rows, as the recipes train).
    fused: q/k/v and gate/up as one matmul each (minift/fused_projections.py); None: as the
    recipes' fast path picks it (LoRA on CUDA)."""
    from minift.device import resolve_dtype
    from minift.measure import build_model
    from minift.optim import AdamW, param_groups

    device = torch.device(device)
    model = build_model(cfg, method, device, resolve_dtype(dtype, device), lora_r=lora_r,
                        lora_compute_dtype=torch.bfloat16 if lora_compute == "bf16" else None,
                        lora_dropout=lora_dropout)
    model.gradient_checkpointing = grad_ckpt
    model.loss_chunk_size = loss_chunk
    if fused is None:   # the recipes' rule, from the one place that holds it
        from minift import fast_path
        plan = fast_path.decide(device, resolve_dtype(dtype, device), method=method, one_shape=True)
        fused = plan.fused_projections
    if fused:
        from minift import fused_projections
        fused_projections.fuse(model)   # for the model's whole life: nothing to undo
    if compile:
        model.compile_layers()
    opt = AdamW(param_groups(model, 0.0), lr=1e-5)
    if cuda_graph:
        from minift.cuda_graph import GraphedStep
        forward_backward = GraphedStep(model)
    else:
        def forward_backward(input_ids, targets):
            loss = model(input_ids, targets)
            loss.backward()
            return loss

    def step(ids, targets, **inputs):
        loss = forward_backward(input_ids=ids, targets=targets, **inputs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return model, step


def time_training_steps(cfg: ModelConfig, method: str, batch: int, seq: int, *, steps: int = 8,
                        device="cuda", dtype="bfloat16", grad_ckpt=False, loss_chunk=1024,
                        lora_r: int = 16, compile: bool = False, cuda_graph: bool = False,
                        lora_compute: str = "fp32", fused: bool | None = None) -> dict:
    """Build a random-weight model for `method`, run `steps` forward/backward/AdamW steps on random
    tokens, return peak memory (torch.cuda.max_memory_allocated), the median steady step time, its
    host part (host_step_s, see median_steady) and the first step's time (compile, CUDA graph capture
    and warm-up included: the one-time cost)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    static = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    model, step = training_step(cfg, method, device=device, dtype=dtype, grad_ckpt=grad_ckpt,
                                loss_chunk=loss_chunk, lora_r=lora_r, compile=compile, cuda_graph=cuda_graph,
                                lora_compute=lora_compute, fused=fused)
    sync()
    static = (torch.cuda.memory_allocated() - static) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, host_times = time_steps(step, cfg.vocab_size, batch, seq, steps, device)
    steady = median_steady(times)
    fused_groups = sum(layer.self_attn.fused + layer.mlp.fused for layer in model.model.layers)
    return dict(static_bytes=static, fused_groups=fused_groups,
                peak_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                step_s=steady, host_step_s=median_steady(host_times), first_step_s=times[0],
                tok_per_s=batch * seq / steady, step_times_s=times)


def time_steps(step, vocab_size: int, batch: int, seq: int, steps: int, device) -> tuple[list, list]:
    """Run step(ids, targets) `steps` times on random tokens (seeded): each step's wall time (until
    the device is done) and its host part (until step() returns: Python, autograd, kernel launches)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(0)
    times, host_times = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab_size, (batch, seq), generator=gen).to(device)   # (batch, seq)
        targets = ids.roll(-1, dims=1)
        sync()
        t0 = time.perf_counter()
        step(ids, targets)
        host_times.append(time.perf_counter() - t0)
        sync()
        times.append(time.perf_counter() - t0)
    return times, host_times


def median_steady(seconds: list[float]) -> float:
    """The median step after the first two (compile, capture and warm-up), the upper one of an even
    count. A step whose host time (until step() returns, before the sync) is close to its wall
    time is host-bound: the GPU waited for Python and the launches, not the other way round."""
    steady = sorted(seconds[2:])
    return steady[len(steady) // 2]


def kernel_times(prof, steps: int) -> dict[str, tuple[float, float]]:
    """A torch.profiler run of `steps` steps -> {kernel name: (seconds a step, launches a step)}.
    Their sum is the GPU's busy time a step: well under the wall time, the host (Python, launches)
    is what the step waits for, not the GPU."""
    totals: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total = totals.setdefault(e.name, [0.0, 0])
            total[0] += e.device_time * 1e-6                # device_time is in microseconds
            total[1] += 1
    if not totals:   # a busy time of 0 would read as "all host-bound"
        raise RuntimeError("the profile holds no CUDA kernels: profile with ProfilerActivity.CUDA on a GPU")
    return {name: (seconds / steps, count / steps) for name, (seconds, count) in totals.items()}


def run_minift_row(row: Row, timeout: float = 600) -> dict:
    spec = dict(asdict(row), **MODES[row.mode])
    return _run([sys.executable, "-m", "minift.bench"], json.dumps(spec), timeout)


def anchors_for(row: Row) -> tuple[str, ...]:
    """The anchors a row is measured against, each a '+'-joined set of scripts/anchor_hf.py switches
    ("plain": none). A row with bf16 adapter math runs against the strongest stacks a HF user has for
    it: bf16 autocast (the same math) with torch.compile, and with Liger's kernels; a QLoRA row
    against bitsandbytes + Liger under autocast. Other rows: HF + peft as
    peft users run it (with checkpointing in lean rows)."""
    if row.lora_compute != "bf16":
        return ("plain",)
    if row.method == "qlora":  # plain autocast measured 11,417 tok/s beside Liger's 12,825 (issue 11): Liger only
        return ("liger+autocast",)
    return ("autocast+compile", "liger+autocast")


def run_anchor_row(row: Row, anchor_script: str, kind: str = "plain", timeout: float = 600) -> dict:
    cmd = [sys.executable, anchor_script, "--size", row.size, "--method", row.method,
           "--batch", str(row.batch), "--seq", str(row.seq)] + (["--grad-ckpt"] if MODES[row.mode]["grad_ckpt"] else [])
    switches = [] if kind == "plain" else kind.split("+")
    unknown = set(switches) - {"autocast", "compile", "liger"}
    if unknown:
        raise ValueError(f"anchor kind {kind!r}: unknown switches {sorted(unknown)}")
    out = _run(cmd + [f"--{s}" for s in switches], None, timeout)
    return dict(out, kind=kind)


def _run(cmd, stdin, timeout) -> dict:
    """One measurement in its own process; an error (out of memory, say) becomes {"error": ...}."""
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    try:
        proc = subprocess.run(cmd, input=stdin, text=True, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def compare(rows: list[Row], anchor_script: str | None, log=print, repeats: int = 1) -> list[dict]:
    """Each row on both sides (minift only when anchor_script is None); one dict per row with
    the ratios and minift's MFU. r["anchors"] holds every anchor of the row (anchors_for); the
    speed ratio is against the fastest of them and the memory ratio against the leanest, and
    r["fastest_anchor"], r["leanest_anchor"] name them.

    repeats > 1 runs the row's sides that many times, in rounds (minift, then its anchors, then
    minift again...), because a host-bound side's speed moves from run to run on a shared machine
    (docs/speed.md: the compiled HF anchor read 45,392 to 76,848 tok/s on the same row). Each side
    is then its median run (median_run), the ratios are between medians, and
    r["speed_ratio_rounds"] holds each round's own ratio, so the spread is in the result too."""
    from minift import flops
    results = []
    for row in rows:
        kinds = anchors_for(row) if anchor_script else ()
        rounds = []
        for i in range(repeats):
            ours = run_minift_row(row)
            rounds.append((ours, [run_anchor_row(row, anchor_script, kind) for kind in kinds]))
            if repeats > 1:   # a round takes minutes: say what it measured as it ends
                sides = [("minift", ours)] + [(a.get("side") or a.get("kind", "?"), a) for a in rounds[-1][1]]
                log(f"round {i + 1}/{repeats} of {row.size} {row.method} {row.mode}: " + ", ".join(
                    f"{name} {side['tok_per_s']:,.0f} tok/s" if "tok_per_s" in side else f"{name} failed"
                    for name, side in sides))
        ours = median_run([o for o, _ in rounds])
        r = dict(asdict(row), minift=ours)
        r["anchors"] = [median_run([a[i] for _, a in rounds]) for i in range(len(kinds))]
        if "error" not in ours:
            cfg = ModelConfig.preset(f"qwen2.5-{row.size}")
            fpt = flops.flops_per_token(cfg, row.method, row.seq, grad_ckpt=MODES[row.mode]["grad_ckpt"]).model
            r["minift_mfu"] = ours["tok_per_s"] * fpt / flops.H200_BF16_FLOPS
            ok = [a for a in r["anchors"] if "error" not in a]
            if ok:
                fastest = max(ok, key=lambda a: a["tok_per_s"])
                leanest = min(ok, key=lambda a: a["peak_bytes"])
                r["speed_ratio"] = ours["tok_per_s"] / fastest["tok_per_s"]
                r["memory_ratio"] = ours["peak_bytes"] / leanest["peak_bytes"]
                r["fastest_anchor"], r["leanest_anchor"] = fastest.get("side"), leanest.get("side")
        if repeats > 1:
            r["speed_ratio_rounds"] = [o["tok_per_s"] / max(a["tok_per_s"] for a in anchors)
                                       for o, anchors in rounds
                                       if "error" not in o and anchors and all("error" not in a for a in anchors)]
        results.append(r)
        log(format_row(r))
    return results


def median_run(runs: list[dict]) -> dict:
    """Of one side's runs, the one with the median tok/s (the upper middle of an even count, as
    median_steady), with every successful run's tok/s under "runs_tok_per_s" and the failed runs'
    errors under "runs_failed". All failed: the first failure."""
    ok = sorted((run for run in runs if "error" not in run), key=lambda run: run["tok_per_s"])
    failed = [run["error"] for run in runs if "error" in run]
    if not ok:
        return runs[0]
    if len(runs) == 1:
        return ok[0]
    return dict(ok[len(ok) // 2], runs_tok_per_s=[run["tok_per_s"] for run in runs if "error" not in run],
                runs_failed=failed)


TABLE_HEADER = ("| model | method | minift mode | anchors (in order) | minift peak GB | anchor peak GB | "
                "minift tok/s | anchor tok/s | speed x fastest | memory x leanest | minift MFU |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    """One markdown row; with several anchors each anchor cell reads 'first / second'."""
    def gb(side):
        return f"{side['peak_bytes'] / 1e9:.2f}" if "peak_bytes" in side else side.get("error", "?")[:60]

    def tps(side):   # with repeats, the median run and the range of all runs
        if "tok_per_s" not in side:
            return "-"
        runs = side.get("runs_tok_per_s")
        spread = f" ({min(runs):,.0f}-{max(runs):,.0f})" if runs else ""
        return f"{side['tok_per_s']:,.0f}{spread}"
    anchors = r.get("anchors", [])
    ckpt = "grad ckpt" if r["mode"].startswith("lean") else "no ckpt"
    names = " / ".join(a.get("side") or a.get("kind", "?") for a in anchors) or "not run"
    mode = r["mode"] + (", bf16 adapters" if r.get("lora_compute") == "bf16" else "")
    ratio = f"{r['speed_ratio']:.2f}" if "speed_ratio" in r else "-"
    mem = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else "-"
    mfu = f"{100 * r['minift_mfu']:.1f}%" if "minift_mfu" in r else "-"
    return (f"| {r['size']} | {r['method']} | {mode} | {names} ({ckpt}) | {gb(r['minift'])} | "
            f"{' / '.join(gb(a) for a in anchors) or '-'} | {tps(r['minift'])} | "
            f"{' / '.join(tps(a) for a in anchors) or '-'} | {ratio} | {mem} | {mfu} |")


def _child_main() -> None:
    spec = json.loads(sys.stdin.read())
    cfg = ModelConfig.preset(f"qwen2.5-{spec['size']}")
    out = time_training_steps(cfg, spec["method"], spec["batch"], spec["seq"], grad_ckpt=spec["grad_ckpt"],
                              loss_chunk=spec["loss_chunk"], compile=spec["compile"],
                              cuda_graph=spec["cuda_graph"], lora_compute=spec.get("lora_compute", "fp32"),
                              steps=spec.get("steps", 8))
    # what minift.memory predicts for this step, beside what the allocator measured
    from minift import memory
    predicted = memory.estimate(cfg, spec["method"], spec["batch"], spec["seq"], grad_ckpt=spec["grad_ckpt"],
                                loss_chunk=spec["loss_chunk"],
                                lora_compute_dtype="bfloat16" if spec.get("lora_compute") == "bf16" else None,
                                fused_projections=out["fused_groups"] > 0)
    out["predicted_peak_bytes"] = predicted.total
    if out["peak_bytes"]:
        out["predicted_over_measured"] = predicted.total / out["peak_bytes"]
    print(json.dumps(dict(spec, side="minift", **out)), flush=True)


if __name__ == "__main__":
    _child_main()
