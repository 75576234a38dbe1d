"""Memory math vs the allocator: predicted peak (minift.memory.estimate) beside the measured one
(minift.measure.run_training_steps, each row in a fresh process), and the seed chapter's tables.

    python scripts/memory_check.py --grid h200 --out mem_out        # on one H200, ~5-8 minutes
    python scripts/memory_check.py --grid h200-quick --out mem_out  # 0.5B and 7B only, ~4 minutes
    python scripts/memory_check.py --grid cpu-tiny                  # CPU, exact allocator replay
    python scripts/memory_check.py --seed-tables [--measure]        # the chapter's three tables

Writes results.json (+ predicted_vs_measured.png if matplotlib is there) under --out.
"""
import argparse
import json
import os
import sys
import time

import torch

from minift import memory
from minift.config import ModelConfig
from minift.measure import run_in_subprocess

SIZES = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"]
TINY = dict(vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, name_or_path="tiny-256")


def grid(name):
    """(cfg, method, batch, seq, grad_ckpt, lora_compute_dtype) rows."""
    rows = []
    if name == "h200-quick":
        for size in ("qwen2.5-0.5b", "qwen2.5-7b"):        # the adapters' matmuls in bf16 (bench's fast rows)
            for method in ("lora", "qlora"):
                for ckpt in (False, True):
                    rows.append((ModelConfig.preset(size), method, 4, 1024, ckpt, "bfloat16"))
        for method in ("full", "lora", "qlora"):
            for ckpt in (False, True):
                rows.append((ModelConfig.preset("qwen2.5-0.5b"), method, 4, 1024, ckpt, None))
        return rows
    if name == "h200":
        for size in SIZES:
            for method in ("full", "lora", "qlora"):
                for ckpt in (False, True):
                    rows.append((ModelConfig.preset(size), method, 4, 1024, ckpt, None))
        for b, t in ((1, 4096), (16, 512)):           # two other shapes for 0.5B
            for method in ("full", "lora"):
                rows.append((ModelConfig.preset("qwen2.5-0.5b"), method, b, t, True, None))
    elif name == "cpu-tiny":
        cfg = ModelConfig(**TINY)
        for method in ("full", "lora", "qlora"):
            for ckpt in (False, True):
                rows.append((cfg, method, 2, 256, ckpt, None))
    else:
        raise SystemExit(f"unknown grid {name!r}: h200, h200-quick or cpu-tiny")
    return rows


def device_limit(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def run_rows(rows, device, dtype, steps, limit):
    results = []
    print(f"{'model':<14} {'method':<6} {'BxT':>9} {'ckpt':>4} {'predicted GB':>12} {'measured GB':>11} "
          f"{'error':>7}  peak phase")
    for cfg, method, b, t, ckpt, lora_compute in rows:
        dt = "bfloat16" if method == "qlora" else dtype        # the NF4 base computes in bf16
        est = memory.estimate(cfg, method, b, t, grad_ckpt=ckpt, param_dtype=dt, device=device.type,
                              lora_compute_dtype=lora_compute)
        row = {"model": cfg.name_or_path, "method": method, "batch": b, "seq": t, "grad_ckpt": ckpt, "dtype": dt,
               "lora_compute_dtype": lora_compute,
               "predicted": est.total, "peak_phase": est.peak_phase, "breakdown": est.as_dict()}
        label = method + ("/bf16" if lora_compute else "")
        if limit is not None and est.total > 0.97 * limit:
            row["skipped"] = f"predicted {est.total / 1e9:.1f} GB > device {limit / 1e9:.1f} GB"
            print(f"{cfg.name_or_path[-14:]:<14} {label:<6} {b:>4}x{t:<4} {str(ckpt)[0]:>4} "
                  f"{est.total / 1e9:>12.2f} {'skipped':>11}          ({row['skipped']})", flush=True)
            results.append(row)
            continue
        t0 = time.time()
        try:
            m = run_in_subprocess(cfg, method, b, t, device=str(device), dtype=dt, grad_ckpt=ckpt,
                                  steps=steps, lora_compute_dtype=lora_compute)
            row.update(measured=m.peak, baseline=m.baseline, how=m.how, seconds=round(time.time() - t0, 1),
                       error_pct=round(100 * (est.total - m.peak) / m.peak, 2))
            print(f"{cfg.name_or_path[-14:]:<14} {label:<6} {b:>4}x{t:<4} {str(ckpt)[0]:>4} "
                  f"{est.total / 1e9:>12.3f} {m.peak / 1e9:>11.3f} {row['error_pct']:>6.2f}%  {est.peak_phase}",
                  flush=True)
        except RuntimeError as e:
            row["error"] = str(e)
            print(f"{cfg.name_or_path[-14:]:<14} {label:<6} {b:>4}x{t:<4} failed: {str(e).splitlines()[-1]}",
                  flush=True)
        results.append(row)
    return results


def seed_tables(device, dtype, measure, steps):
    out = []
    for method, sizes in (("full", memory.SEED_FULL), ("lora", memory.SEED_LORA), ("qlora", memory.SEED_QLORA)):
        print(f"\nseed chapter, {method} (batch 4 x 1024): chapter GB | minift predicted GB (no ckpt / ckpt)"
              f"{' | measured GB' if measure else ''}")
        for size in sizes:
            ch = memory.seed_chapter_estimate(size, method)
            row = {"method": method, "size": size, "chapter_GB": ch["chapter_total_GB"], "chapter_parts": ch["parts_GB"]}
            preset = memory.PRESET_OF_SIZE.get(size)
            if preset is None:
                print(f"  {size:>5}: {ch['chapter_total_GB']:>6.1f} | (no preset: minift ships Qwen2.5 up to 7B)")
                out.append(row)
                continue
            cfg = ModelConfig.preset(preset)
            # the chapter assumes bf16 weights on a GPU: predict that (CUDA kernels), whatever runs this
            pred = [memory.estimate(cfg, method, 4, 1024, grad_ckpt=c, param_dtype="bfloat16",
                                    device="cuda" if not measure else device.type).total for c in (False, True)]
            row["predicted_GB"] = [round(p / 1e9, 3) for p in pred]
            line = f"  {size:>5}: {ch['chapter_total_GB']:>6.1f} | {pred[0] / 1e9:>6.2f} / {pred[1] / 1e9:>6.2f}"
            if measure:
                meas = []
                limit = device_limit(device)
                for c, p in zip((False, True), pred):
                    if limit is not None and p > 0.97 * limit:
                        meas.append(float("nan"))
                        print(f"    skipped ckpt={c}: predicted {p / 1e9:.1f} GB > device {limit / 1e9:.1f} GB")
                        continue
                    try:
                        meas.append(run_in_subprocess(cfg, method, 4, 1024, device=str(device), dtype="bfloat16",
                                                      grad_ckpt=c, steps=steps).peak / 1e9)
                    except RuntimeError as e:
                        meas.append(float("nan"))
                        print(f"    measurement failed: {str(e).splitlines()[-1]}")
                row["measured_GB"] = meas
                line += f" | {meas[0]:>6.2f} / {meas[1]:>6.2f}"
            print(line, flush=True)
            out.append(row)
    return out


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    pts = [r for r in results if "measured" in r]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6, 6))
    for method, marker in (("full", "o"), ("lora", "s"), ("qlora", "^")):
        xs = [r["measured"] / 1e9 for r in pts if r["method"] == method]
        ys = [r["predicted"] / 1e9 for r in pts if r["method"] == method]
        ax.scatter(xs, ys, marker=marker, label=method)
    hi = max(max(r["measured"], r["predicted"]) for r in pts) / 1e9 * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="exact")
    ax.set_xlabel("measured peak (GB)")
    ax.set_ylabel("predicted peak (GB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("minift memory math vs the allocator")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=["h200", "h200-quick", "cpu-tiny"], help="rows to predict and measure")
    ap.add_argument("--seed-tables", action="store_true", help="print the chapter's three tables beside minift's")
    ap.add_argument("--measure", action="store_true", help="with --seed-tables: also measure (GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on GPU) or float32 (default on CPU)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per measurement (>= 2: AdamW state alive)")
    ap.add_argument("--out", default=None, help="directory for results.json and the plot")
    a = ap.parse_args()
    if not a.grid and not a.seed_tables:
        ap.error("give --grid or --seed-tables")
    from minift.device import pick_device
    device = pick_device(a.device)
    dtype = a.dtype or ("bfloat16" if device.type != "cpu" else "float32")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
              "torch": torch.__version__, "dtype": dtype}
    if a.grid:
        report["rows"] = run_rows(grid(a.grid), device, dtype, a.steps, device_limit(device))
        errs = [abs(r["error_pct"]) for r in report["rows"] if "error_pct" in r]
        if errs:
            print(f"\n{len(errs)} rows measured; |error| max {max(errs):.2f}%, mean {sum(errs) / len(errs):.2f}%")
    if a.seed_tables:
        report["seed_tables"] = seed_tables(device, dtype, a.measure, a.steps)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {os.path.join(a.out, 'results.json')}")
        if a.grid:
            plot(report["rows"], os.path.join(a.out, "predicted_vs_measured.png"))


if __name__ == "__main__":
    sys.exit(main())
