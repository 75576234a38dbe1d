"""The seed chapter's exercise: one base model, N pairs, full SFT vs LoRA vs QLoRA on the same budget.

    python scripts/compare_methods.py                               # offline: the tiny from-scratch model
    python scripts/compare_methods.py --model HuggingFaceTB/SmolLM2-360M-Instruct --pairs 100 --steps 50

Reports, side by side: held-out loss before and after, how well the stories follow held-out
requests before and after (minift/evaluate.py), a sample story, peak memory, wall time and the
size of what each method has to ship (a whole model, or an adapter).
"""
import argparse
import json
import os
import subprocess
import sys

from minift import distributed, fast_path
from minift.data import FAIRYTALE_PAIRS
from minift.evaluate import METRICS

CAPSTONE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lora_qwen.py")


def child_env(index: int) -> dict:
    """Under torchrun each rank runs this script, and its children must form their own process group:
    a fresh rendezvous port per method (rank 0's child hosts it), not torchrun's store."""
    env = dict(os.environ)
    if int(env.get("WORLD_SIZE", "1")) > 1:
        env["MASTER_PORT"] = str(int(env["MASTER_PORT"]) + 1 + index)
        env["TORCHELASTIC_USE_AGENT_STORE"] = "False"
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="base model (default: as scripts/lora_qwen.py: Qwen2.5-0.5B-"
                                                 "Instruct if present, else the tiny from-scratch model)")
    ap.add_argument("--data", default=FAIRYTALE_PAIRS)
    ap.add_argument("--pairs", type=int, default=100, help="how many pairs to train on (the chapter: 100)")
    ap.add_argument("--methods", default="full,lora,qlora")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, help="default: the longest pair, rounded up (no pair cut)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/compare")
    for flag, kw in fast_path.FLAGS:   # passed on to each scripts/lora_qwen.py run
        ap.add_argument(flag, **kw)
    a = ap.parse_args()
    if distributed.started_by_torchrun():
        ap.error("this script starts the recipes in child processes of its own; run it without torchrun "
                 "(the recipes themselves run under torchrun: docs/distributed.md)")

    rows = []
    for method in a.methods.split(","):
        # Each method in its own process (scripts/lora_qwen.py), so each peak memory is its own;
        # the same budget for each: steps, batch and rows, each method at its usual learning rate.
        out = os.path.join(a.out, method)
        cmd = [sys.executable, CAPSTONE, "--method", method, "--data", a.data, "--max-examples", str(a.pairs),
               "--steps", str(a.steps), "--batch-size", str(a.batch_size),
               "--r", str(a.r), "--alpha", str(2 * a.r), "--device", a.device, "--out", out, "--no-progress"]
        if a.seq_len:
            cmd += ["--seq-len", str(a.seq_len)]
        if a.model:
            cmd += ["--model", a.model]
        cmd += (["--compile"] * a.compile + ["--no-compile"] * a.no_compile + ["--no-cuda-graph"] * a.no_cuda_graph
                + ["--adapter-math", a.adapter_math] + ["--no-fused-projections"] * a.no_fused_projections)
        print(f"== {method}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=child_env(len(rows)))
        with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
            rows.append(dict(method=method, report=json.load(f)))

    base = rows[0]["report"]["model_dir"]
    seq_len = rows[0]["report"]["config"]["seq_len"]
    print(f"\n{a.pairs} pairs, {a.steps} steps x batch {a.batch_size} x {seq_len} tokens, base {base}\n")
    print("| method | trained params | held-out loss before -> after | peak memory | train time | saved size |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rep = row["report"]
        peak = f"{rep['measured_peak_bytes'] / 2**30:.2f} GiB" if rep["measured_peak_bytes"] else "n/a"
        print(f"| {row['method']} | {rep['trainable_params']:,} | {rep['eval_before']['loss']:.3f} -> "
              f"{rep['eval_after']['loss']:.3f} | {peak} | {rep['train_time_s']:.0f} s | "
              f"{rep['saved_bytes'] / 1e6:.1f} MB |")
    print(f"\npeak memory: {rows[0]['report']['measured_peak_kind']}")
    print_story_table(rows)
    print(f"prompt: {rows[0]['report']['sample_prompt']}")
    for row in rows:
        print(f"\n--- {row['method']} ---\n{row['report']['sample_after']}")
    with open(os.path.join(a.out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)


def print_story_table(rows):
    """The story evaluation of each method, before -> after, one column per method."""
    evals = [(row["method"], row["report"].get("story_eval_before"), row["report"].get("story_eval_after"))
             for row in rows]
    if any(after is None for _, _, after in evals):
        return
    first = evals[0][2]
    print(f"\nstories for {first['n_requests']} held-out requests (sampling {first['sampling']}, seeds "
          f"{first['seeds']}): share of requests honoured, before -> after training")
    print("| metric | " + " | ".join(method for method, _, _ in evals) + " |")
    print("|---|" + "---|" * len(evals))
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for m in METRICS:
        print(f"| {m} | " + " | ".join(f"{pct(before['mean'][m])} -> {pct(after['mean'][m])}"
                                       for _, before, after in evals) + " |")


if __name__ == "__main__":
    main()
