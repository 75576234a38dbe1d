"""Which tiny-model recipe makes the capstone's stories follow their requests: a sweep.

    python scripts/sweep_story_recipe.py --device cuda --jobs 8 --out results/sweep
    python scripts/sweep_story_recipe.py --only words-500,particles-500 --device cpu --jobs 1

Each variant is the embedded default's whole path in a fresh process: a BPE and the tiny model
trained from scratch (minift.scratch), then LoRA on the shipped pairs with the story evaluation
before and after (minift.finetune), exactly as `python scripts/lora_qwen.py` runs it, with the
variant's settings changed. It writes OUT/sweep.json: per variant its settings, the tokens and
seconds of each phase and the evaluation's means before and after. On a GPU the variants run side
by side (--jobs); the tiny model leaves an H200 mostly idle. On CUDA both phases run in fp32
weights with fp32 adapter math, as the CPU does, so that the choice carries over.
BASE is the embedded default itself (ScratchConfig's and lora_qwen.py's TINY_DEFAULTS); the
2026-11-30 run (results/h200/story_recipe_sweep_2026-11-30.log) predates the default's LoRA
dropout of 0 and ran with 0.05.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from lora_qwen import TINY_DEFAULTS
from minift.scratch import ScratchConfig

BASE = dict(split=ScratchConfig.split, request_docs=ScratchConfig.request_docs, pretrain_steps=ScratchConfig.steps,
            lora_steps=TINY_DEFAULTS["steps"], lora_lr=TINY_DEFAULTS["lr"], r=TINY_DEFAULTS["r"],
            dropout=TINY_DEFAULTS["dropout"])
VARIANTS = {
    "words-500": {},
    "words-req-500": dict(request_docs=2000),
    "particles-500": dict(split="particles"),
    "particles-req-500": dict(split="particles", request_docs=2000),
    "syllables-req-500": dict(split="syllables", request_docs=2000),
    "words-req-1500": dict(request_docs=2000, pretrain_steps=1500),
    "particles-req-1500": dict(split="particles", request_docs=2000, pretrain_steps=1500),
    "syllables-req-1500": dict(split="syllables", request_docs=2000, pretrain_steps=1500),
    "particles-req-500-lora360": dict(split="particles", request_docs=2000, lora_steps=360),
    "syllables-req-500-lora360": dict(split="syllables", request_docs=2000, lora_steps=360),
    "particles-req-500-lr3e-3": dict(split="particles", request_docs=2000, lora_lr=3e-3),
    "particles-req-500-r64": dict(split="particles", request_docs=2000, r=64),
    "particles-req4000-1000-lora240": dict(split="particles", request_docs=4000, pretrain_steps=1000,
                                           lora_steps=240),
    "syllables-req4000-1000-lora240": dict(split="syllables", request_docs=4000, pretrain_steps=1000,
                                           lora_steps=240),
    "particles-req-3000": dict(split="particles", request_docs=2000, pretrain_steps=3000),
    "syllables-req-3000": dict(split="syllables", request_docs=2000, pretrain_steps=3000),
}


def run_variant(name: str, work: str, device: str, data: str) -> dict:
    """One variant, in this process: pretrain, then LoRA with the story evaluation."""
    import logging
    from minift.finetune import FinetuneConfig, finetune
    from minift.scratch import train_from_scratch
    logging.basicConfig(level=logging.WARNING)
    v = dict(BASE, **VARIANTS[name])
    tiny = os.path.join(work, name, "tiny")
    t0 = time.perf_counter()
    pre = train_from_scratch(ScratchConfig(out_dir=tiny, split=v["split"], request_docs=v["request_docs"],
                                           steps=v["pretrain_steps"], device=device, progress=False,
                                           compile=False, cuda_graph=False))
    t1 = time.perf_counter()
    rep = finetune(FinetuneConfig(model=tiny, data=data, out_dir=os.path.join(work, name, "lora"),
                                  steps=v["lora_steps"], lr=v["lora_lr"], r=v["r"], dropout=v["dropout"],
                                  alpha=v["r"] * TINY_DEFAULTS["alpha"] / TINY_DEFAULTS["r"],
                                  batch_size=TINY_DEFAULTS["batch_size"], device=device, dtype="float32", adapter_math="fp32",
                                  compile=False, cuda_graph=False, progress=False, story_eval=50),
                   model_dir=tiny)
    t2 = time.perf_counter()
    return {"name": name, "settings": v, "pretrain_tokens": pre.result.tokens_seen,
            "pretrain_s": round(t1 - t0, 1), "pretrain_val_loss": (pre.result.eval_history or [{}])[-1].get("loss"),
            "lora_seq_len": rep.config["seq_len"], "lora_s": round(t2 - t1, 1),
            "eval_loss": [rep.eval_before["loss"], rep.eval_after["loss"]],
            "before": rep.story_eval_before["mean"], "after": rep.story_eval_after["mean"],
            "story_after": rep.story_eval_after["per_request"][0]["story"],
            "request": rep.story_eval_after["per_request"][0]["request"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sweep_out")
    ap.add_argument("--work", default=None, help="where the models go (default OUT/work)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="variants run side by side")
    ap.add_argument("--only", help="comma-separated variant names (default: all)")
    ap.add_argument("--data", default="data/fairytales_pairs.jsonl")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per variant process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = a.work or os.path.join(a.out, "work")
    if a.child:
        import torch
        torch.set_num_threads(a.threads)
        print(json.dumps(run_variant(a.child, work, a.device, a.data), ensure_ascii=False))
        return
    names = a.only.split(",") if a.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    os.makedirs(a.out, exist_ok=True)
    pending, running, results = list(names), {}, []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    while pending or running:
        while pending and len(running) < a.jobs:
            name = pending.pop(0)
            log = open(os.path.join(a.out, f"{name}.log"), "w")
            cmd = [sys.executable, __file__, "--child", name, "--work", work, "--device", a.device,
                   "--data", a.data, "--threads", str(a.threads)]
            running[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env), log)
        time.sleep(2)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read()
            log.close()
            del running[name]
            if proc.returncode != 0:
                results.append({"name": name, "error": f"exit {proc.returncode}, see {name}.log"})
            else:
                results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            if "after" in r:
                print(f"{name:34s} pre {r['pretrain_s']:6.0f}s lora {r['lora_s']:5.0f}s  after: " +
                      " ".join(f"{k} {v:.2f}" for k, v in r["after"].items()), flush=True)
            else:
                print(f"{name:34s} {r['error']}", flush=True)
            with open(os.path.join(a.out, "sweep.json"), "w", encoding="utf-8") as f:
                json.dump({"date": time.strftime("%Y-%m-%d"), "device": a.device, "results": results}, f,
                          ensure_ascii=False, indent=1)
    sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()
