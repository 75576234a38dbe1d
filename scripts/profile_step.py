"""Where one training step's time goes on the GPU: kernels by total time, and how busy the GPU is.

    python scripts/profile_step.py --row 0.5b:lora:fast+compile --out prof/
    python scripts/profile_step.py --row 7b:qlora:fast+compile:bf16 --top 30 --out prof/
    python scripts/profile_step.py --row 0.5b:lora:fast+compile+graph:bf16 --docs 3 --dropout 0.05

--docs N packs N documents into each row (segment ids, positions restarting at each document, as
the recipes' packed rows are) and --dropout sets the adapters' dropout: the capstone's step is
`--docs 3 --dropout 0.05`, the benchmark's is neither. --unfused computes q/k/v and gate/up as
separate matmuls, to profile what minift/fused_projections.py saves. --inductor KEY=VALUE sets
torch._inductor.config.KEY before anything compiles (repeatable), to profile the step under another
compiler choice, e.g. `--inductor max_pointwise_cat_inputs=1` (docs/speed.md: tried and not kept).

The same step scripts/bench_train.py times (minift.bench.training_step: random weights, batch x seq
random tokens, AdamW), warmed up, then `--steps` steps under torch.profiler. Prints the wall time
per step, the summed kernel time per step (GPU busy), the kernel launches per step, the time by
kind (matmul, attention, Triton, other) and the top kernels; writes profile_<row>.json.
GPU busy well under wall time means the host (Python, launches) is the bottleneck, not the GPU.
"""
import argparse
import ast
import json
import os
import time
from collections import defaultdict

import torch

from minift.bench import MODES, Row, kernel_times, training_step
from minift.config import ModelConfig


def kernel_kind(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "gemv", "splitk")):
        return "matmul"
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if n.startswith("triton") or "triton_" in n:
        return "triton (compiled / minift kernels)"
    if "multi_tensor" in n or "foreach" in n:
        return "optimizer (foreach)"
    return "other (PyTorch elementwise, reductions, copies)"


def packed_inputs(batch: int, seq: int, docs: int) -> dict:
    """segment_ids and position_ids (batch, seq) for rows of `docs` equal documents (the last takes
    the remainder), positions restarting at 0 in each: what data.pack_rows gives the model."""
    starts = torch.arange(docs) * (seq // docs)                               # (docs,)
    column = torch.arange(seq)
    segment = (column[:, None] >= starts[None, 1:]).sum(1)                    # (seq,) 0..docs-1
    position = column - starts[segment]                                       # (seq,)
    return dict(segment_ids=segment.expand(batch, seq).cuda(), position_ids=position.expand(batch, seq).cuda())


def set_inductor_options(settings: list[str]) -> dict:
    """KEY=VALUE strings -> torch._inductor.config set, and what was set. A key this torch does not
    have is an error, not a silent no-op: the profile would not be of what was asked."""
    import torch._inductor.config as inductor_config
    done = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not hasattr(inductor_config, key):
            raise SystemExit(f"--inductor {setting!r}: expected KEY=VALUE with KEY an attribute of "
                             f"torch._inductor.config (torch {torch.__version__})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text                                    # a bare word: a string setting
        setattr(inductor_config, key, value)
        done[key] = value
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", required=True, help="SIZE:METHOD:MODE[:LORA_COMPUTE], e.g. 0.5b:lora:fast+compile:bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--docs", type=int, default=1, help="documents packed into each row (1: plain causal rows)")
    ap.add_argument("--dropout", type=float, default=0.0, help="the adapters' dropout (lora_qwen.py uses 0.05)")
    ap.add_argument("--unfused", action="store_true",
                    help="q/k/v and gate/up as separate matmuls (the recipes fuse them for LoRA on CUDA)")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY to VALUE (a Python literal) before compiling")
    ap.add_argument("--out", default="prof")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_step profiles CUDA kernels: it needs a CUDA GPU")
    inductor = set_inductor_options(a.inductor)
    row = Row(*a.row.split(":"))
    cfg = ModelConfig.preset(f"qwen2.5-{row.size}")
    _, step = training_step(cfg, row.method, lora_compute=row.lora_compute, lora_dropout=a.dropout,
                            fused=False if a.unfused else None, **MODES[row.mode])
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=gen).cuda()
               for _ in range(a.warmup + a.steps)]
    inputs = packed_inputs(a.batch, a.seq, a.docs) if a.docs > 1 else {}
    for ids in batches[:a.warmup]:
        step(ids, ids.roll(-1, dims=1), **inputs)
    torch.cuda.synchronize()

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for ids in batches[a.warmup:]:
            step(ids, ids.roll(-1, dims=1), **inputs)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / a.steps

    per_kernel = kernel_times(prof, a.steps)            # name -> (s a step, launches a step)
    busy = sum(t for t, _ in per_kernel.values())
    launches = sum(c for _, c in per_kernel.values())
    by_kind = defaultdict(float)
    for name, (t, _) in per_kernel.items():
        by_kind[kernel_kind(name)] += t
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:a.top]

    peak = torch.cuda.max_memory_allocated()
    print(f"{a.row}  batch {a.batch}x{a.seq}, {a.docs} docs/row, dropout {a.dropout:g}"
          f"{', unfused' if a.unfused else ''}: wall {wall * 1e3:.1f} ms/step, GPU busy {busy * 1e3:.1f} ms "
          f"({100 * busy / wall:.0f}%), {launches:.0f} kernels/step, {a.batch * a.seq / wall:,.0f} tok/s, "
          f"peak {peak / 1e9:.2f} GB (max_memory_allocated over the warm-up and the profiled steps)")
    print("\n| kind | ms/step | share of busy |\n|---|---|---|")
    for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {t * 1e3:.2f} | {100 * t / busy:.1f}% |")
    print("\n| kernel | ms/step | calls/step |\n|---|---|---|")
    for name, (t, c) in top:
        print(f"| {name[:110]} | {t * 1e3:.2f} | {c:.0f} |")

    os.makedirs(a.out, exist_ok=True)
    out = dict(row=a.row, batch=a.batch, seq=a.seq, docs=a.docs, dropout=a.dropout, unfused=a.unfused,
               inductor=inductor, device=torch.cuda.get_device_name(), torch=torch.__version__,
               wall_s=wall, gpu_busy_s=busy, peak_bytes=peak, kernels_per_step=launches, by_kind_s=dict(by_kind),
               top=[dict(name=n, s_per_step=t, calls_per_step=c) for n, (t, c) in top])
    extra = (f"_docs{a.docs}" if a.docs > 1 else "") + (f"_dropout{a.dropout:g}" if a.dropout else "") + \
        ("_unfused" if a.unfused else "")
    with open(os.path.join(a.out, f"profile_{a.row.replace(':', '_').replace('+', '-')}{extra}.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
