"""Speed and peak memory of real training steps, minift beside transformers + peft in the same run.

Each row runs in a fresh process (a peak must not leak into the next row, and an out-of-memory
error kills only that row): minift's side is `python -m minift.bench` with a JSON spec on stdin,
the anchor's side is scripts/anchor_hf.py. Both build the Qwen2.5 architecture with random
weights (speed and memory do not depend on the values) and time the median steady step.

Modes (minift's side):
  fast: no gradient checkpointing, loss in 1,024-token chunks (never the full logits).
  lean: gradient checkpointing, loss in 256-token chunks: the seed chapter's memory tables.
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

MODES = {"fast": dict(grad_ckpt=False, loss_chunk=1024, compile=False),
         "lean": dict(grad_ckpt=True, loss_chunk=256, compile=False),
         "fast+compile": dict(grad_ckpt=False, loss_chunk=1024, compile=True),
         "lean+compile": dict(grad_ckpt=True, loss_chunk=256, compile=True)}


@dataclass
class Row:
    size: str          # "0.5b", "1.5b", "3b", "7b"
    method: str        # "lora", "qlora", "full" (bf16 params + fp32 Adam m, v: the seed's assumption)
    mode: str          # "fast" or "lean" (minift); the anchor runs with checkpointing in lean rows
    batch: int = 4
    seq: int = 1024


def time_training_steps(cfg: ModelConfig, method: str, batch: int, seq: int, *, steps: int = 8,
                        device="cuda", dtype="bfloat16", grad_ckpt=False, loss_chunk=1024,
                        lora_r: int = 16, compile: bool = False) -> dict:
    """Build a random-weight model for `method`, run `steps` forward/backward/AdamW steps on random
    tokens, return peak memory (torch.cuda.max_memory_allocated) and the median steady step time."""
    from minift.device import resolve_dtype
    from minift.measure import build_model
    from minift.optim import AdamW, param_groups

    device = torch.device(device)
    dt = resolve_dtype(dtype, device)
    model = build_model(cfg, method, device, dt, lora_r=lora_r)
    model.gradient_checkpointing = grad_ckpt
    model.loss_chunk_size = loss_chunk
    if compile:
        model.compile_layers()
    opt = AdamW(param_groups(model, 0.0), lr=1e-5)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    static = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device="cpu").manual_seed(0)
    times = []
    for _ in range(steps):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
        targets = ids.roll(-1, dims=1)
        sync()
        t0 = time.perf_counter()
        model(ids, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[2:])[len(times[2:]) // 2]
    return dict(static_bytes=static, peak_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                step_s=steady, tok_per_s=batch * seq / steady)


def run_minift_row(row: Row, timeout: float = 600) -> dict:
    spec = dict(asdict(row), **MODES[row.mode])
    return _run([sys.executable, "-m", "minift.bench"], json.dumps(spec), timeout)


def run_anchor_row(row: Row, anchor_script: str, timeout: float = 600) -> dict:
    cmd = [sys.executable, anchor_script, "--size", row.size, "--method", row.method,
           "--batch", str(row.batch), "--seq", str(row.seq)] + (["--grad-ckpt"] if MODES[row.mode]["grad_ckpt"] else [])
    return _run(cmd, None, timeout)


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


def compare(rows: list[Row], anchor_script: str | None, log=print) -> list[dict]:
    """Each row on both sides (minift only when anchor_script is None); one dict per row with
    the ratios and minift's MFU."""
    from minift import flops
    results = []
    for row in rows:
        ours = run_minift_row(row)
        theirs = run_anchor_row(row, anchor_script) if anchor_script else {"error": "not run"}
        r = dict(asdict(row), minift=ours, anchor=theirs)
        if "error" not in ours:
            cfg = ModelConfig.preset(f"qwen2.5-{row.size}")
            fpt = flops.flops_per_token(cfg, row.method, row.seq, grad_ckpt=MODES[row.mode]["grad_ckpt"]).model
            r["minift_mfu"] = ours["tok_per_s"] * fpt / flops.H200_BF16_FLOPS
            if "error" not in theirs:
                r["speed_ratio"] = ours["tok_per_s"] / theirs["tok_per_s"]
                r["memory_ratio"] = ours["peak_bytes"] / theirs["peak_bytes"]
        results.append(r)
        log(format_row(r))
    return results


TABLE_HEADER = ("| model | method | minift mode (anchor) | minift peak GB | anchor peak GB | minift tok/s | "
                "anchor tok/s | speed x | minift MFU |\n|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    def gb(side):
        return f"{side['peak_bytes'] / 1e9:.2f}" if "peak_bytes" in side else side.get("error", "?")[:60]

    def tps(side):
        return f"{side['tok_per_s']:,.0f}" if "tok_per_s" in side else "-"
    anchor_mode = "grad ckpt" if r["mode"].startswith("lean") else "no ckpt"
    ratio = f"{r['speed_ratio']:.2f}" if "speed_ratio" in r else "-"
    mfu = f"{100 * r['minift_mfu']:.1f}%" if "minift_mfu" in r else "-"
    return (f"| {r['size']} | {r['method']} | {r['mode']} ({anchor_mode}) | {gb(r['minift'])} | {gb(r['anchor'])} | "
            f"{tps(r['minift'])} | {tps(r['anchor'])} | {ratio} | {mfu} |")


def _child_main() -> None:
    spec = json.loads(sys.stdin.read())
    cfg = ModelConfig.preset(f"qwen2.5-{spec['size']}")
    out = time_training_steps(cfg, spec["method"], spec["batch"], spec["seq"], grad_ckpt=spec["grad_ckpt"],
                              loss_chunk=spec["loss_chunk"], compile=spec["compile"], steps=spec.get("steps", 8))
    print(json.dumps(dict(spec, side="minift", **out)), flush=True)


if __name__ == "__main__":
    _child_main()
