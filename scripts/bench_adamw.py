"""Time one AdamW step, three ways, in one process: minift.optim.AdamW's foreach lists alone, the
same with its fused kernel for the tensors of --fused-min elements or more (kernels/adamw.py, the
CUDA default), and torch.optim.AdamW(fused=True) (torch's own one-pass kernel; it keeps its
moments in the parameter's dtype: for bf16 weights it moves 14 bytes per element where minift's
fp32 moments need 22).

    python scripts/bench_adamw.py --preset qwen2.5-7b --out results/adamw.json
    python scripts/bench_adamw.py --preset qwen2.5-0.5b --fused-min 1,65536,1048576
    python scripts/bench_adamw.py --preset qwen2.5-0.5b --method lora    # the adapters (r=16, all seven)

The parameters are those of the preset's model (--method full: bf16 weights; lora: the fp32
adapters; random; shapes from memory.trainable_numels, the order minift.optim.param_groups gives
them), with random gradients of the parameters' dtype. Per path: the median
of --steps timed steps after two warm-up steps, and the bandwidth that time means for the bytes
the update must move (the fraction of the H200's ~4.3 TB/s).
"""
import argparse
import json
import os
import time

import torch

from minift import memory, optim
from minift.config import ModelConfig


def timed_steps(opt, steps: int) -> float:
    for _ in range(2):
        opt.step()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2.5-0.5b")
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--fused-min", type=lambda t: [int(x) for x in t.split(",")], default=[optim.FUSED_MIN_NUMEL],
                    help="comma-separated FUSED_MIN_NUMEL values to time (default: minift's own)")
    ap.add_argument("--out")
    a = ap.parse_args()
    cfg = ModelConfig.preset(a.preset)
    numels = memory.trainable_numels(cfg, a.method)
    dtype = torch.bfloat16 if a.method == "full" else torch.float32
    size = dtype.itemsize
    g = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda", generator=g, dtype=dtype) * 0.02) for n in numels]
    for p in params:
        p.grad = torch.randn(p.shape, device="cuda", generator=g, dtype=dtype) * 1e-3
    n = sum(numels)
    rows = {}
    paths = [("minift foreach lists", 2 ** 62)] + [
        (f"minift foreach + fused kernel from {m:,} elements" + (" (the default)" if m == optim.FUSED_MIN_NUMEL else ""), m)
        for m in a.fused_min]
    for name, min_numel in paths:
        optim.FUSED_MIN_NUMEL = min_numel
        opt = optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        # read p, g, m, v; write p, m, v (m, v fp32)
        rows[name] = {"s": timed_steps(opt, a.steps), "bytes_per_param": 3 * size + 16}
        del opt
        torch.cuda.empty_cache()
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=True)
    rows[f"torch.optim.AdamW(fused=True), {str(dtype).removeprefix('torch.')} moments"] = {"s": timed_steps(opt, a.steps),
                                                                        "bytes_per_param": 7 * size}
    for r in rows.values():
        r["TB_per_s"] = r["bytes_per_param"] * n / r["s"] / 1e12
    out = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "preset": a.preset, "method": a.method, "params": n, "tensors": len(numels), "steps": a.steps, "rows": rows}
    for name, r in rows.items():
        print(f"{a.preset}: {name:<70} {1e3 * r['s']:8.1f} ms  ({r['TB_per_s']:.2f} TB/s of the "
              f"{r['bytes_per_param']} B/param it must move)")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
