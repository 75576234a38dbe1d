"""Tokens/s and per-GPU peak memory of minift's training loop on 1 and N GPUs, beside the FSDP2 anchor
(transformers' Qwen2 + fully_shard, scripts/anchor_fsdp.py) in the same run.

    python scripts/bench_distributed.py --out results/dist            # every row, H200 x2
    python scripts/bench_distributed.py --rows 7b-full,0.5b-lora --out r

Each measurement is its own `torchrun --nproc-per-node N` launch (this script launches it), running
minift.train.train() itself on random weights and random tokens (speed and memory do not depend on
the values): the same loop, Batches slicing, gradient sync, FSDP2 sharding and AdamW a user gets.
Steady speed: the median step of the last ones (the first compile, capture and warm up).
Per-GPU peak: the largest torch.cuda.max_memory_allocated over ranks, beside memory.estimate(...,
world_size=N, strategy=...). Rows (most important first; --budget-s skips what would not fit):

  7b-full     7B full SFT, bf16 weights + fp32 AdamW states, 4 x 1024 per GPU, checkpointing, 2 GPUs;
              and the anchor on 2 GPUs.   Targets: peak <= 60 GB, predicted within 5%; >= 1.2x anchor.
  0.5b-lora   0.5B LoRA r=16 all-linear, fast settings (compiled layers + CUDA graph, bf16 adapter
              math), 4 x 1024 per GPU, on 1 and 2 GPUs.   Target: 2 GPUs >= 1.85x of 1.
  0.5b-full   0.5B full SFT as 7b-full, on 1 and 2 GPUs, and the anchor on 1 and 2.
              Target: scaling above the anchor's (1.31x measured 2026-11-30).
  14b-full    14B full SFT as 7b-full, 2 GPUs.   Target: runs, peak predicted within 5%.
  7b-full-fit 7b-full with only as many bottom layers checkpointed as 57 GB per GPU needs (60 GB less
              the 5% the prediction may miss by; decide.fewest_checkpointed_layers picks them, the rest
              are not recomputed), 2 GPUs, and the anchor.   Targets as 7b-full.
  7b-full-1   7B full SFT on one GPU, three ways: every layer checkpointed; the fewest checkpointed
              layers that keep that peak (one GPU's peak is the optimizer step, not the backward);
              none. And the anchor on one GPU.   Target: each peak predicted within 5%.
  0.5b-full-1 0.5B full SFT on one GPU without checkpointing (it fits 10 GB).

Writes <out>/bench_distributed.json (every row as it finishes) and prints a markdown table. Exits
non-zero when a row fails or misses a target (the JSON says which).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR = os.path.join(HERE, "anchor_fsdp.py")
# NVLink multicast (NVLS) and symmetric-memory multicast stay off in every process (the lent machines
# do not support it reliably).
COMM_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
ANCHOR_1311 = {"0.5B": {1: 19418, 2: 25383}, "7B": {1: 7152, 2: 14171}}   # issue 13, measured 2026-11-30

# name: (preset, method, per-GPU batch, seq, checkpointing settings, mode, world sizes, anchor size or None).
# A checkpointing setting: True (every layer), False (none), or ("fit", GB): the fewest bottom layers that
# keep the predicted per-GPU peak within GB ("fit", None: within the peak of checkpointing every layer).
# Each setting is one launch per world size; the first is the row's headline (scaling, anchor ratio).
ROWS = {
    "7b-full": ("qwen2.5-7b", "full", 4, 1024, (True,), "plain", (2,), "7B"),
    "0.5b-lora": ("qwen2.5-0.5b", "lora", 4, 1024, (False,), "compile+graph", (1, 2), None),
    "0.5b-full": ("qwen2.5-0.5b", "full", 4, 1024, (True,), "plain", (1, 2), "0.5B"),
    "14b-full": ("qwen2.5-14b", "full", 4, 1024, (True,), "plain", (2,), None),
    "7b-full-fit": ("qwen2.5-7b", "full", 4, 1024, (("fit", 57),), "plain", (2,), "7B"),
    "7b-full-1": ("qwen2.5-7b", "full", 4, 1024, (True, ("fit", None), False), "plain", (1,), "7B"),
    "0.5b-full-1": ("qwen2.5-0.5b", "full", 4, 1024, (False,), "plain", (1,), None),
}


# ---------------------------------------------------------------------- one torchrun process
def worker(spec: dict) -> None:
    import torch

    from minift import distributed, flops, memory
    from minift.config import ModelConfig
    from minift.data import Batches, Example
    from minift.device import pick_device
    from minift.measure import build_model
    from minift.train import TrainConfig, train

    device = pick_device(spec["device"])          # under torchrun: joins the process group, cuda:LOCAL_RANK
    world = distributed.world_size()
    cfg = _config(spec["preset"], spec.get("overrides"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lora = spec["method"] == "lora"
    model = build_model(cfg, spec["method"], device, dtype,
                        lora_compute_dtype=torch.bfloat16 if (lora and device.type == "cuda") else None)
    if "compile" in spec["mode"] and device.type == "cuda":
        model.compile_layers()
    B, T, steps = spec["batch"], spec["seq"], spec["steps"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (steps * world * B, T + 1), generator=g).tolist()
    rows = [Example(input_ids=r[:-1], targets=r[1:]) for r in ids]
    events = []
    result = train(model, Batches(rows, B, shuffle=False, device=device), None, TrainConfig(
        steps=steps, lr=1e-5, weight_decay=0.0, clip=1.0, precision="fp32" if lora else ("bf16" if dtype == torch.bfloat16 else "fp32"),
        grad_checkpointing=spec["grad_ckpt"], checkpoint_layers=spec["ckpt_layers"], cuda_graph="graph" in spec["mode"] and device.type == "cuda",
        progress=False, log_every=0), callbacks=[events.append])
    if not distributed.is_main():
        return
    per_step = [e["tokens_per_s"] for e in events if e["kind"] == "train"][spec["warmup"]:]
    tok_s = sorted(per_step)[len(per_step) // 2]
    est = memory.estimate(cfg, spec["method"], B, T, grad_ckpt=spec["grad_ckpt"], ckpt_layers=spec["ckpt_layers"],
                          param_dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                          lora_compute_dtype="bfloat16" if (lora and device.type == "cuda") else None,
                          device=device.type, world_size=world,
                          strategy=None if world == 1 else ("ddp" if lora else "fsdp"))
    fpt = flops.flops_per_token(cfg, spec["method"], T, grad_ckpt=spec["grad_ckpt"]).model
    print(json.dumps({"side": "minift", "world": world, "ckpt_layers": spec["ckpt_layers"], "tok_per_s": tok_s, "per_step_tok_per_s": per_step,
                      "peak_bytes": result.peak_memory_bytes, "predicted_bytes": est.total,
                      "predicted_phase": est.peak_phase, "mfu_per_gpu": tok_s * fpt / world / flops.H200_BF16_FLOPS,
                      "losses": result.losses}), flush=True)


def _config(preset: str, overrides: dict | None):
    import dataclasses

    from minift.config import ModelConfig
    try:
        cfg = ModelConfig.preset(preset)
    except KeyError:
        if preset != "qwen2.5-14b":
            raise
        # https://huggingface.co/Qwen/Qwen2.5-14B-Instruct/blob/main/config.json, until the preset lands
        cfg = dataclasses.replace(ModelConfig.preset("qwen2.5-7b"), hidden_size=5120, intermediate_size=13824,
                                  num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                                  vocab_size=152064, head_dim=None, name_or_path="Qwen/Qwen2.5-14B-Instruct")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------------- the launcher
def launch(nproc: int, argv: list[str], timeout: float) -> dict:
    """One torchrun launch; the last JSON line rank 0 prints, or {"error": ...}."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] + argv
    env = dict(os.environ, **COMM_ENV)
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s: {' '.join(argv)}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-6:]
        return {"error": " | ".join(tail), "cmd": " ".join(argv)}
    out = json.loads(lines[-1])
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def checkpointed_layers(ckpt, preset: str, method: str, B: int, T: int, world: int, overrides) -> tuple[bool, int | None]:
    """(grad_ckpt, ckpt_layers) for a row's checkpointing setting (ROWS), on `world` GPUs."""
    if ckpt is True or ckpt is False:
        return ckpt, None
    from minift import decide, memory
    cfg = _config(preset, overrides)
    kw = dict(world_size=world, strategy="fsdp") if world > 1 else {}
    estimate = lambda k: memory.estimate(cfg, method, B, T, grad_ckpt=k > 0, ckpt_layers=k if k else None, **kw)  # noqa: E731
    L = cfg.num_hidden_layers
    budget = ckpt[1] * 1e9 if ckpt[1] is not None else estimate(L).total
    k, _ = decide.fewest_checkpointed_layers(L, budget, estimate)
    if k is None:
        raise SystemExit(f"{preset} {method}: even every layer checkpointed needs more than {budget / 1e9:.1f} GB")
    return k > 0, k if 0 < k < L else None


def run_row(name: str, a) -> dict:
    preset, method, B, T, ckpts, mode, worlds, anchor = ROWS[name]
    overrides = json.loads(a.overrides) if a.overrides else None
    row = {"row": name, "runs": [], "minift": {}, "anchor": {}}
    for w in worlds:
        for ckpt in ckpts:
            grad_ckpt, layers = checkpointed_layers(ckpt, preset, method, B, T, w, overrides)
            spec = dict(preset=preset, method=method, batch=B, seq=T, grad_ckpt=grad_ckpt, ckpt_layers=layers,
                        mode=mode, device=a.device, steps=a.steps if mode == "plain" else a.steps + 4,
                        warmup=2 if mode == "plain" else 6, overrides=overrides)
            result = launch(w, [__file__, "--worker", json.dumps(spec)], a.timeout)
            row["runs"].append({"world": w, "spec": spec, "minift": result})
            row["minift"].setdefault(w, result)          # the row's first setting is its headline
        if anchor and not a.no_anchor:
            row["anchor"][w] = launch(w, [a.anchor, anchor], a.timeout)
    row["checks"] = checks(name, row)
    return row


def checks(name: str, row: dict) -> dict:
    """The issue's targets for this row: {name: (value, target, passed)}."""
    m, an = row["minift"], row["anchor"]
    ok = lambda side, w: w in side and "error" not in side[w]  # noqa: E731
    out = {}
    for run in row["runs"]:
        r, w = run["minift"], run["world"]
        if "error" not in r and r["peak_bytes"] is not None \
                and name in ("7b-full", "14b-full", "7b-full-fit", "7b-full-1"):   # rows whose target it is (None: CPU)
            what = f"{w} GPU, {_ckpt_name(run['spec'])}"
            out[f"peak predicted within 5% ({what})"] = (round(r["predicted_bytes"] / r["peak_bytes"] - 1, 4),
                                                        "|x| <= 0.05", abs(r["predicted_bytes"] / r["peak_bytes"] - 1) <= 0.05)
    if name in ("7b-full", "7b-full-fit") and ok(m, 2) and m[2]["peak_bytes"] is not None:
        out["per-GPU peak <= 60 GB"] = (round(m[2]["peak_bytes"] / 1e9, 2), 60, m[2]["peak_bytes"] <= 60e9)
        if ok(an, 2):
            x = m[2]["tok_per_s"] / an[2]["tok_per_s_total"]
            out["tok/s vs anchor, same run"] = (round(x, 3), 1.2, x >= 1.2)
    if name == "0.5b-lora" and ok(m, 1) and ok(m, 2):
        x = m[2]["tok_per_s"] / m[1]["tok_per_s"]
        out["scaling 1 -> 2 GPUs"] = (round(x, 3), 1.85, x >= 1.85)
    if name == "0.5b-full" and ok(m, 1) and ok(m, 2):
        x = m[2]["tok_per_s"] / m[1]["tok_per_s"]
        base = (an[2]["tok_per_s_total"] / an[1]["tok_per_s_total"]) if ok(an, 1) and ok(an, 2) else 25383 / 19418
        out["scaling 1 -> 2 GPUs above the anchor's"] = (round(x, 3), round(base, 3), x > base)
    return out


def _ckpt_name(spec: dict) -> str:
    if not spec["grad_ckpt"]:
        return "no checkpointing"
    return "every layer checkpointed" if spec["ckpt_layers"] is None else f"{spec['ckpt_layers']} layers checkpointed"


def table(rows: list[dict]) -> str:
    lines = ["| row | GPUs | checkpointing | minift tok/s | per-GPU peak GB (predicted) | MFU/GPU | anchor tok/s | "
             "anchor peak GB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for run in r["runs"]:
            w, m = run["world"], run["minift"]
            an = r["anchor"].get(w, {})
            if "error" in m:
                lines.append(f"| {r['row']} | {w} | {_ckpt_name(run['spec'])} | error: {m['error'][:80]} | | | | |")
                continue
            peak = f"{m['peak_bytes'] / 1e9:.2f}" if m["peak_bytes"] is not None else "-"   # None: a CPU smoke run
            lines.append(f"| {r['row']} | {w} | {_ckpt_name(run['spec'])} | {m['tok_per_s']:,.0f} | {peak} "
                         f"({m['predicted_bytes'] / 1e9:.2f}) | {100 * m['mfu_per_gpu']:.1f}% | "
                         f"{an.get('tok_per_s_total', '-') if 'error' not in an else 'error'} | "
                         f"{an.get('max_per_gpu_peak_GB', '-') if 'error' not in an else an['error'][:60]} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, in order: {', '.join(ROWS)}")
    ap.add_argument("--out", required=False, default=os.environ.get("OUT", "results/dist"))
    ap.add_argument("--steps", type=int, default=6, help="steps per plain launch (compiled rows: +4)")
    ap.add_argument("--budget-s", type=float, default=450, help="start no row after this many seconds")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per launch")
    ap.add_argument("--anchor", default=ANCHOR)
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--device", default="auto", help="cpu: a smoke test of the launcher and worker (gloo)")
    ap.add_argument("--overrides", help="JSON ModelConfig fields for every row (smoke tests: a tiny model)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(json.loads(a.worker))
    if not a.no_anchor and not os.path.isfile(a.anchor):
        sys.exit(f"anchor script {a.anchor} not found (pass --anchor PATH or --no-anchor)")
    names = a.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "bench_distributed.json")
    start, rows = time.time(), []
    for name in names:
        if time.time() - start > a.budget_s:
            rows.append({"row": name, "skipped": f"time budget of {a.budget_s:.0f} s spent"})
            print(f"skipped {name}: time budget spent", flush=True)
            continue
        rows.append(run_row(name, a))
        print(f"{name}: {json.dumps(rows[-1]['checks'])}", flush=True)
        with open(path, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    print(table([r for r in rows if "minift" in r]))
    failed = [f"{r['row']}: {run['world']}: {run['minift']['error']}" for r in rows if "runs" in r
              for run in r["runs"] if "error" in run["minift"]]
    failed += [f"{r['row']}: anchor {w}: {m['error']}" for r in rows if "anchor" in r
               for w, m in r["anchor"].items() if "error" in m]
    missed = [f"{r['row']}: {k} = {v[0]} (target {v[1]})" for r in rows if "checks" in r
              for k, v in r["checks"].items() if not v[2]]
    print(f"wrote {path}")
    if failed or missed:
        sys.exit("FAILED:\n  " + "\n  ".join(failed + missed))


if __name__ == "__main__":
    main()
