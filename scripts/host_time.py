"""Is a training step host-bound, and where does the host's time go?

    python scripts/host_time.py --row 0.5b:lora:lean --profile lean_cprofile.txt   # on a CUDA machine
    python scripts/host_time.py --row 0.5b:lora:lean --unfused                      # q/k/v, gate/up apart
    MINIFT_KERNELS=reference python scripts/host_time.py --row 0.5b:lora:lean       # no Triton kernels

Runs a bench row's minift step (minift.bench.training_step: random weights, batch 4 x 1024, the
row's mode) for 10 steps and prints one JSON line: the median steady step (step_s, until the GPU
is done) and its host part (host_step_s, until step() returns: Python, autograd and the kernel
launches). When the two are equal the GPU waited for the host: the step is host-bound, and only
fewer or cheaper launches (a CUDA graph replays them all at once) make it faster. --profile writes
Python's cProfile of three more steps, by own time and by cumulative time.
"""
import argparse
import cProfile
import io
import json
import pstats

import torch

from minift.bench import MODES, Row, median_steady, time_steps, training_step
from minift.config import ModelConfig
from minift.kernels.dispatch import kernel_mode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", required=True, help="SIZE:METHOD:MODE[:LORA_COMPUTE], e.g. 0.5b:lora:lean")
    ap.add_argument("--unfused", action="store_true", help="q/k/v and gate/up as separate projections")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", help="write the cProfile of three steps' host side here")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_time needs a CUDA GPU: on a CPU the host and the device are the same cores")
    row = Row(*a.row.split(":"))
    cfg = ModelConfig.preset(f"qwen2.5-{row.size}")
    _, step = training_step(cfg, row.method, lora_compute=row.lora_compute, fused=False if a.unfused else None,
                            **MODES[row.mode])
    torch.cuda.reset_peak_memory_stats()
    wall, host = time_steps(step, cfg.vocab_size, row.batch, row.seq, a.steps, "cuda")
    print(json.dumps(dict(row=a.row, unfused=a.unfused, kernels=kernel_mode(), step_s=median_steady(wall),
                          host_step_s=median_steady(host), tok_per_s=row.batch * row.seq / median_steady(wall),
                          peak_bytes=torch.cuda.max_memory_allocated())), flush=True)
    if a.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        time_steps(step, cfg.vocab_size, row.batch, row.seq, 3, "cuda")
        profiler.disable()
        with open(a.profile, "w") as f:
            for order in ("tottime", "cumulative"):
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(45)
                f.write(text.getvalue() + "\n")


if __name__ == "__main__":
    main()
