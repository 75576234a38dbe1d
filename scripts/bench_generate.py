"""Decoding speed: minift.generate vs transformers' generate, same weights, same process.

    python scripts/bench_generate.py --dtype float32 --out bench/
    python scripts/bench_generate.py --dtype bfloat16 --runs 5 --out bench/

The qwen2.5-0.5b architecture with random weights (speed does not depend on the values): a
transformers Qwen2ForCausalLM is built from the preset's config.json dict and its state dict is
loaded into minift's Transformer, so both decode with identical weights in the same dtype.
Batch 1, a 16-token prompt, 128 new tokens, greedy, min_new_tokens = max_new_tokens so both
produce exactly 128 tokens (random weights would otherwise stop at an eos by chance).
tok/s = 128 / wall time of the whole call (prefill included), median of --runs runs after one
warm-up each, the implementations alternating so drift in machine load hits all alike.
Three rows: transformers' default generate (sdpa), minift's generate as a user calls it (on CPU
with fast_matvec=None, "auto", which compiles kernels/matvec.py's decode kernels for a model this
size), and minift with fast_matvec=False (every projection through F.linear), to show what the
kernel adds. The warm-up (8 new tokens) is timed too: for minift it includes compiling the
kernels, once per process (warmup_s in the JSON).
In fp32 all must produce the same ids (printed); in bf16 rounding may make them part ways.

Prints a markdown table row and writes the numbers to <out>/bench_generate_<dtype>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import transformers

import minift
from minift.device import pick_device, resolve_dtype
from minift.generate import generate_ids, use_fast_matvec


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen2.5-0.5b")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench", help="directory for the JSON result")
    return p.parse_args()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def main():
    args = parse_args()
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cfg = minift.ModelConfig.preset(args.preset)

    torch.manual_seed(args.seed)
    hf_config = transformers.AutoConfig.for_model(**cfg.to_hf_dict())
    hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    hf = hf.to(device).eval()
    ours = minift.Transformer(cfg).to(device=device, dtype=dtype)
    ours.load_state_dict(hf.state_dict())
    ours.eval()

    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), generator=g).to(device)
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 0
    n = args.new_tokens

    def run_hf(k=n):
        with torch.inference_mode():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k, min_new_tokens=k,
                               do_sample=False, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=eos,
                               use_cache=True)

    def run_ours(k=n):  # generate as a user calls it: fast_matvec "auto"
        return generate_ids(ours, prompt, max_new_tokens=k, min_new_tokens=k, eos_token_ids=[eos])

    def run_ours_linear(k=n):
        return generate_ids(ours, prompt, max_new_tokens=k, min_new_tokens=k, eos_token_ids=[eos],
                            fast_matvec=False)

    impls = {"transformers": run_hf, "minift": run_ours, "minift_f_linear": run_ours_linear}
    # warm-up: first-call allocations, kernel selection, and minift's kernel compilation
    warmup = {name: timed(lambda: fn(8), device)[0] for name, fn in impls.items()}
    times = {name: [] for name in impls}
    outputs = {}
    for _ in range(args.runs):
        for name, fn in impls.items():
            t, out = timed(fn, device)
            times[name].append(t)
            outputs[name] = out
            assert out.shape[1] == args.prompt_len + n, f"{name} produced {out.shape[1] - args.prompt_len} tokens"

    def first_difference(name):
        a, b = outputs["transformers"][0].tolist(), outputs[name][0].tolist()
        return None if a == b else next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) - args.prompt_len

    first_diff = first_difference("minift")
    match = first_diff is None
    match_f_linear = first_difference("minift_f_linear") is None
    tps = {k: n / statistics.median(v) for k, v in times.items()}
    ratio = tps["minift"] / tps["transformers"]
    ratio_f_linear = tps["minift_f_linear"] / tps["transformers"]
    fast = use_fast_matvec(ours)
    if device.type == "cpu":
        machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    else:
        machine = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    date = datetime.date.today().isoformat()
    dt = str(dtype).removeprefix("torch.")

    print(f"prompt {args.prompt_len} tokens, {n} new tokens, batch 1, greedy, median of {args.runs} runs")
    print(f"minift's generate used the compiled CPU matvec kernels: {fast}")
    print(f"token ids identical to transformers: minift {match}"
          + ("" if match else f" (first difference at new token {first_diff})")
          + f", minift with F.linear {match_f_linear}")
    print("warm-up (8 new tokens, minift's kernel compilation included): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in warmup.items()))
    print("| date | machine | torch / transformers | model | dtype | transformers tok/s | minift tok/s | "
          "minift / transformers | same ids | minift with F.linear tok/s (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {date} | {machine} | {torch.__version__} / {transformers.__version__} | {args.preset} (random) | {dt} | "
          f"{tps['transformers']:.1f} | {tps['minift']:.1f} | {ratio:.2f}x | {'yes' if match else 'no'} | "
          f"{tps['minift_f_linear']:.1f} ({ratio_f_linear:.2f}x) |")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_generate_{dt}.json")
    with open(path, "w") as f:
        json.dump({"date": date, "machine": machine, "processor": platform.processor(), "cores": os.cpu_count(),
                   "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device),
                   "preset": args.preset, "dtype": dt, "prompt_len": args.prompt_len, "new_tokens": n,
                   "runs": args.runs, "fast_matvec": fast, "warmup_s": warmup, "seconds": times,
                   "tok_per_s": tps, "ratio_minift_over_hf": ratio, "ratio_minift_f_linear_over_hf": ratio_f_linear,
                   "ids_match": match, "ids_match_f_linear": match_f_linear, "first_diff": first_diff},
                  f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
