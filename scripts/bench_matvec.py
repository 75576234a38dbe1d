"""Weight-read speed of one decode row's x W^T: F.linear beside kernels/matvec.py, per shape.

    python scripts/bench_matvec.py --out results/cpu

For each Qwen2.5-0.5B projection shape (q/o, k/v, gate/up, down, the tied head) and dtype, enough
copies of the weight to fill ~600 MB are cycled through, so each call reads its weight from
memory and not from cache, as in a decode step. GB/s = weight bytes / median time per call.
`W.sum()` over the same copies is the streaming ceiling the product is compared with.
Writes bench_matvec.json under --out and prints a table.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from minift.kernels import matvec

SHAPES = {"q/o": (896, 896), "k/v": (128, 896), "gate/up": (4864, 896), "down": (896, 4864), "head": (151936, 896)}


def gbps(fn, weights, rounds: int) -> float:
    """Median over rounds of (bytes of all weights / time to call fn on each once)."""
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    fn(weights[0])                                        # build the kernel / warm up outside the timing
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for w in weights:
            fn(w)
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-mb", type=int, default=600, help="bytes of weight copies cycled through")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{'shape':<22} {'dtype':<9} {'F.linear':>9} {'matvec':>9} {'W.sum()':>9}  GB/s")
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            for name, (out_f, in_f) in SHAPES.items():
                one = out_f * in_f * torch.tensor([], dtype=dtype).element_size()
                weights = [torch.randn(out_f, in_f).to(dtype) for _ in range(max(1, a.pool_mb * 2 ** 20 // one))]
                x = torch.randn(1, in_f).to(dtype)
                row = dict(shape=f"{name} {out_f}x{in_f}", dtype=str(dtype).removeprefix("torch."),
                           copies=len(weights),
                           f_linear=gbps(lambda w: F.linear(x, w), weights, a.rounds),
                           matvec=gbps(lambda w: matvec.matvec_cpu(x, w), weights, a.rounds),
                           w_sum=gbps(lambda w: w.sum(), weights, a.rounds))
                rows.append(row)
                print(f"{row['shape']:<22} {row['dtype']:<9} {row['f_linear']:>9.1f} {row['matvec']:>9.1f} "
                      f"{row['w_sum']:>9.1f}", flush=True)
                del weights
    meta = dict(date=str(datetime.date.today()), machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
                torch=torch.__version__, rows=rows)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_matvec.json"), "w") as f:
            json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
