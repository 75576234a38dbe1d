"""Training speed and peak memory, minift beside transformers + peft (+ bitsandbytes) in one run.

    python scripts/bench_train.py --out bench_out            # on a CUDA machine (the H200 rows)
    python scripts/bench_train.py --rows lora --out bench_out

Rows (batch 4 x 1024, LoRA r=16 on all seven projections, Qwen2.5 architectures, random weights):
  fast+compile: minift without checkpointing, decoder layers torch.compile'd (Transformer.compile_layers)
  +graph:       forward + backward replayed as one CUDA graph (minift/cuda_graph.py)
  bf16 (4th field of --row): the adapters' matmuls in bf16 (fp32 weights), as peft under autocast;
                such a row runs against the strongest HF stacks (minift.bench.anchors_for): HF + peft
                under bf16 autocast with torch.compile, and HF + peft + Liger kernels under autocast
                (7B QLoRA: HF + peft + bitsandbytes + Liger under autocast). The speed ratio is against
                the fastest anchor, the memory ratio against the leanest.
  lean: minift eager with checkpointing and a 256-token loss chunk vs HF+peft with checkpointing
--repeats N runs each side N times in rounds and reports medians, each round's ratio beside them.
--rows gpu is the issue-11 check: the fast rows with every anchor and the 0.5B lean row, eager and
as a CUDA graph (the recipes replay one when every batch has one shape); fits ~6 minutes. Every
side records host_step_s beside step_s: the eager lean step is host-bound (docs/speed.md).
Writes bench_<rows or row>.json and .md under --out and prints the table.
"""
import argparse
import datetime
import json
import os
import platform

import torch

from minift.bench import TABLE_HEADER, Row, compare

ANCHOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anchor_hf.py")
ROWS = {
    # issue: LoRA/QLoRA by hand -> scripts/bench_lora.py runs these
    "lora": [Row("0.5b", "lora", "fast+compile"), Row("0.5b", "qlora", "fast+compile"),
             Row("7b", "lora", "fast+compile"), Row("7b", "qlora", "fast+compile")],
    # issue: kernels and speed; issue 11: against the strongest stacks (minift.bench.anchors_for)
    "fast": [Row("0.5b", "lora", "fast+compile+graph", "bf16"), Row("7b", "qlora", "fast+compile+graph", "bf16")],
    "eager": [Row("0.5b", "lora", "fast"), Row("7b", "qlora", "fast")],
    "lean": [Row("0.5b", "lora", "lean"), Row("7b", "lora", "lean"), Row("7b", "qlora", "lean"),
             Row("0.5b", "full", "lean"), Row("0.5b", "lora", "lean+compile")],
}
ROWS["lean-graph"] = [Row("0.5b", "full", "lean+compile+graph"), Row("0.5b", "lora", "lean+compile+graph"),
                      Row("0.5b", "full", "lean+compile")]
ROWS["lean05"] = [r for r in ROWS["lean"] if r.size == "0.5b"]   # the quick half of "lean"
ROWS["all"] = ROWS["lora"] + ROWS["fast"] + ROWS["lean"]
ROWS["gpu"] = ROWS["fast"] + [Row("0.5b", "lora", "lean"), Row("0.5b", "lora", "lean+graph")]


def main(default_rows="all"):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=default_rows, choices=sorted(ROWS))
    ap.add_argument("--row", help="one row instead: SIZE:METHOD:MODE[:LORA_COMPUTE], e.g. 0.5b:lora:lean+compile "
                                  "or 7b:qlora:fast+compile:bf16")
    ap.add_argument("--minift-only", action="store_true", help="skip the anchor (a diagnostic: no ratio)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every side this many times, in rounds; each side is its median run and the ratios "
                         "are between medians (the anchors' speed moves from run to run: docs/speed.md)")
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    if a.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {a.repeats}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_train needs a CUDA GPU: the anchor (HF+peft+bitsandbytes) and the memory counter "
                         "torch.cuda.max_memory_allocated are CUDA's. On CPU see scripts/bench_generate.py.")
    os.makedirs(a.out, exist_ok=True)
    stamp = (f"{datetime.date.today()} on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"{platform.python_version()}")
    print(f"{stamp}\n{TABLE_HEADER}", flush=True)
    rows = [Row(*a.row.split(":"))] if a.row else ROWS[a.rows]
    name = (a.row.replace(":", "_").replace("+", "-") if a.row else a.rows) + (f"_x{a.repeats}" if a.repeats > 1 else "")
    results = compare(rows, None if a.minift_only else ANCHOR, log=lambda line: print(line, flush=True),
                      repeats=a.repeats)
    with open(os.path.join(a.out, f"bench_{name}.json"), "w") as f:
        json.dump(dict(stamp=stamp, results=results), f, indent=2)
    from minift.bench import format_row
    with open(os.path.join(a.out, f"bench_{name}.md"), "w") as f:
        f.write(f"{stamp}\n\n{TABLE_HEADER}\n" + "\n".join(format_row(r) for r in results) + "\n")
    failed = [f"{r['size']} {r['method']} {r['mode']} {side.get('side') or side.get('kind') or 'minift'}: {side['error']}"
              for r in results for side in [r["minift"], *r.get("anchors", [])] if "error" in side]
    if failed:  # the JSON above keeps what did run
        raise SystemExit("bench_train: some measurements failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
