"""Memory math vs the allocator: predicted peak (minift.memory.estimate) beside the measured one
(minift.measure.run_training_steps, each row in a fresh process), and the seed chapter's tables.

    python scripts/memory_check.py --grid h200 --out mem_out        # on one H200, ~5-8 minutes
    python scripts/memory_check.py --grid h200-quick --out mem_out  # 0.5B and 7B only, ~4 minutes
    python scripts/memory_check.py --grid cpu-tiny                  # CPU, exact allocator replay
    python scripts/memory_check.py --seed-tables [--measure]        # the chapter's three tables
    python scripts/memory_check.py --from-disk h200-7b-14b --out o   # the whole job from a checkpoint on disk
    python scripts/memory_check.py --from-disk h200-72b --out o      # (H200; each writes, uses, deletes it)
    python scripts/memory_check.py --from-disk cpu-0.5b --out o      # the CPU recipe's row, process RSS

--from-disk: a random-weight checkpoint is written to --scratch first (minift.random_weights), then
each row runs the whole job on it in a fresh process (minift.measure.run_job: load, quantize,
add LoRA, train steps, save), each phase's peak measured on its own, beside memory.estimate's
whole-job prediction for the same phases; with the 7B bf16 checkpoint, transformers +
bitsandbytes + peft run the same QLoRA job from the same files (the anchor). Each checkpoint
is deleted after its rows (a 7B bf16 one is 15 GB, 14B 30 GB, 72B NF4 41 GB).

Writes results.json (+ predicted_vs_measured.png if matplotlib is there) under --out.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


# ====================================================================== the whole job, from disk
# (label, preset, checkpoint: "bf16" | "nf4", rows: [(method, load, batch, seq, grad_ckpt)])
LEAN_CHUNK = 256          # minift's lean settings (README): checkpointing + a 256-token loss chunk
DISK_SETS = {
    "h200-7b-14b": [("qwen2.5-7b", "bf16", [("qlora", "nf4-stream", 4, 1024, True), ("lora", "float", 4, 1024, True)],
                     True),
                    ("qwen2.5-14b", "bf16", [("qlora", "nf4-stream", 4, 1024, True)], False)],
    "h200-72b": [("qwen2.5-72b", "nf4", [("qlora", "nf4-prequantized", 4, 1024, True),
                                         ("qlora", "nf4-prequantized", 1, 1024, True)], False)],
    "cpu-0.5b": [("qwen2.5-0.5b", "bf16", [("lora", "float", 2, 512, False)], False)],
    "cpu-tiny": [("tiny", "bf16", [("lora", "float", 2, 128, False), ("qlora", "nf4-stream", 2, 128, True)], False)],
}
TARGETS_GB = {("qwen2.5-7b", "qlora", 4): 11.5, ("qwen2.5-7b", "lora", 4): 25.0, ("qwen2.5-14b", "qlora", 4): 18.5,
              ("qwen2.5-72b", "qlora", 4): 65.0, ("qwen2.5-72b", "qlora", 1): 48.0}


def _disk_cfg(name):
    if name == "tiny":
        return ModelConfig(**{**TINY, "num_hidden_layers": 2})
    return ModelConfig.preset(name)


def write_checkpoint(cfg, kind, out_dir, device):
    """minift.random_weights.write_random_checkpoint in a child process (its memory is not ours)."""
    code = ("import sys, json, minift.random_weights as rw\n"
            "from minift.config import ModelConfig\n"
            "spec = json.loads(sys.argv[1])\n"
            "cfg = ModelConfig.from_hf_dict(spec['cfg'], source='spec')\n"
            "rw.write_random_checkpoint(cfg, spec['out'], dtype='bfloat16', quantize=spec['quantize'], "
            "device=spec['device'])\n")
    spec = {"cfg": cfg.to_hf_dict(), "out": out_dir, "quantize": "nf4" if kind == "nf4" else None, "device": device}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"writing the {kind} checkpoint of {cfg.name_or_path} failed:\n{proc.stderr[-3000:]}")
    return round(time.time() - t0, 1)


def predicted_phases(est) -> dict:
    """memory.estimate's whole-job phases folded into run_job's five (the step's peak is "train")."""
    out = {}
    for name, parts in est.phases.items():
        key = ("load" if name.startswith("load: ") else "quantize" if name.startswith("quantize")
               else "add LoRA" if name == "add LoRA" else "save" if name.startswith("save: ") else "train")
        out[key] = max(out.get(key, 0), sum(parts.values()))
    return out


def run_disk_rows(set_name, device, scratch, steps, anchor):
    from minift.measure import run_job_in_subprocess
    dev_type = device.type
    results = []
    for preset, kind, rows, with_anchor in DISK_SETS[set_name]:
        cfg = _disk_cfg(preset)
        ckpt = os.path.join(scratch, f"{preset}-{kind}")
        try:
            write_s = write_checkpoint(cfg, kind, ckpt, str(device))
            print(f"\n{preset}: {kind} checkpoint written to {ckpt} in {write_s} s", flush=True)
            for method, load, b, t, gc in rows:
                dt = "float32" if dev_type == "cpu" and method != "qlora" else "bfloat16"
                chunk = LEAN_CHUNK
                est = memory.estimate(cfg, method, b, t, grad_ckpt=gc, param_dtype=dt, device=dev_type,
                                      loss_chunk=chunk, load=load, save="adapter",
                                      checkpoint_dtype="bfloat16")
                row = {"model": preset, "method": method, "load": load, "batch": b, "seq": t, "grad_ckpt": gc,
                       "dtype": dt, "loss_chunk": chunk, "checkpoint_write_s": write_s,
                       "predicted": est.total, "predicted_peak_phase": est.peak_phase,
                       "predicted_phases": predicted_phases(est), "breakdown": est.as_dict(),
                       "target_GB": TARGETS_GB.get((preset, method, b))}
                try:
                    m = run_job_in_subprocess(ckpt, method, b, t, device=str(device), dtype=dt, load=load,
                                              grad_ckpt=gc, loss_chunk=chunk, steps=steps)
                except RuntimeError as e:
                    row["error"] = str(e)
                    print(f"  {method} {load} {b}x{t}: FAILED {str(e).splitlines()[-1]}", flush=True)
                    results.append(row)
                    continue
                row.update(measured=m.peak, measured_peak_phase=m.peak_phase, measured_phases=m.phases,
                           seconds=m.seconds, how=m.how, load_s=m.seconds["load"],
                           error_pct=round(100 * (est.total - m.peak) / m.peak, 2))
                print(f"  {method:<5} {load:<16} {b}x{t} ckpt={gc}: predicted {est.total / 1e9:.2f} GB "
                      f"({est.peak_phase}), measured {m.peak / 1e9:.2f} GB ({m.peak_phase}), error "
                      f"{row['error_pct']:+.2f}%, load {m.seconds['load']} s"
                      + (f", target {row['target_GB']} GB" if row["target_GB"] else ""), flush=True)
                for ph, v in m.phases.items():
                    p = row["predicted_phases"].get(ph)
                    print(f"      {ph:<9} predicted {p / 1e9 if p else float('nan'):>7.2f}  measured {v / 1e9:>7.2f} GB"
                          f"  ({m.seconds[ph]} s)", flush=True)
                results.append(row)
            if with_anchor and anchor:
                results.append(run_anchor(ckpt))
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
            print(f"{preset}: deleted {ckpt}", flush=True)
    return results


def run_anchor(ckpt):
    """transformers + bitsandbytes + peft: the same QLoRA job from the same files, in a child."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--anchor-child", ckpt],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  anchor FAILED: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return {"anchor": "transformers+bitsandbytes+peft", "error": proc.stderr[-3000:]}
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    print(f"  anchor (transformers+bnb+peft, QLoRA 4x1024 ckpt): after load {out['after_load'] / 1e9:.2f} GB, "
          f"whole job {out['peak'] / 1e9:.2f} GB, load {out['load_s']} s", flush=True)
    return out


def anchor_child(ckpt):
    """As /work/shared/tools/load_peak.py's `hf`: from_pretrained(load_in_4bit, nf4, double quant,
    bf16 compute) -> peft LoRA r=16 all-linear -> checkpointing -> 2 steps at 4 x 1024."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(ckpt, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    torch.cuda.synchronize()
    out = {"anchor": "transformers+bitsandbytes+peft", "load_s": round(time.time() - t0, 1),
           "after_load": torch.cuda.max_memory_allocated()}
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, 150000, (4, 1024), device="cuda")
    for _ in range(2):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    out["peak"] = torch.cuda.max_memory_allocated()
    print(json.dumps(out), flush=True)


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
    ap.add_argument("--from-disk", choices=sorted(DISK_SETS), help="the whole job from a checkpoint written first")
    ap.add_argument("--scratch", default=None, help="where --from-disk writes its checkpoints (default: a temp dir)")
    ap.add_argument("--no-anchor", action="store_true", help="--from-disk: skip transformers+bnb+peft")
    ap.add_argument("--anchor-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.anchor_child:
        return anchor_child(a.anchor_child)
    if not a.grid and not a.seed_tables and not a.from_disk:
        ap.error("give --grid, --seed-tables or --from-disk")
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
    if a.from_disk:
        scratch = a.scratch or tempfile.mkdtemp(prefix="minift-disk-")
        os.makedirs(scratch, exist_ok=True)
        report["from_disk"] = run_disk_rows(a.from_disk, device, scratch, a.steps,
                                            anchor=not a.no_anchor and device.type == "cuda")
        for r in report["from_disk"]:
            if "measured" in r:
                verdict = []
                if r["target_GB"]:
                    verdict.append(f"{'meets' if r['measured'] <= r['target_GB'] * 1e9 else 'MISSES'} "
                                   f"{r['target_GB']} GB")
                verdict.append(f"prediction {'within' if abs(r['error_pct']) <= 5 else 'OUTSIDE'} 5%")
                print(f"{r['model']} {r['method']} {r['batch']}x{r['seq']}: {r['measured'] / 1e9:.2f} GB "
                      f"({r['measured_peak_phase']}); " + ", ".join(verdict))
        bad = [r for r in report["from_disk"] if "error" in r]
        if a.out:   # written before failing, so what did run is kept
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "results.json"), "w") as f:
                json.dump(report, f, indent=1)
        if bad:
            raise SystemExit(f"{len(bad)} --from-disk row(s) failed: see the lines above")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {os.path.join(a.out, 'results.json')}")
        if a.grid:
            plot(report["rows"], os.path.join(a.out, "predicted_vs_measured.png"))


if __name__ == "__main__":
    sys.exit(main())
