"""Which tiny-model recipe makes the capstone's stories follow their requests: a sweep.

    python scripts/sweep_story_recipe.py --device cuda --jobs 22 --gpus 2 --threads 1 --out sweep --only a,b,...
    python scripts/sweep_story_recipe.py --only words-500 --device cpu --jobs 1

Each variant is the embedded default's whole path in a fresh process: a BPE and the tiny model
trained from scratch (minift.scratch), then LoRA on the shipped pairs with the story evaluation
before and after (minift.finetune), exactly as `python scripts/lora_qwen.py` runs it, with the
variant's settings changed. It writes OUT/sweep.json: per variant its settings, the tokens and
seconds of each phase and the evaluation's means before and after. On a GPU the variants run side
by side (--jobs); the tiny model leaves an H200 mostly idle. On CUDA both phases run in fp32
weights with fp32 adapter math, as the CPU does, so that the choice carries over.
Variants are written against OLD (the default the rounds started from) and fill the rest from
BASE (today's default); the rounds' results: results/h200/story_recipe_sweep*_2026-11-30.* (round
1 ran with LoRA dropout 0.05; rounds 1-3 before the <|im_end|> document ends; round 6 chose
today's default; rounds 7 and 9 ran on the 2-core CPU: results/cpu/story_recipe_sweep_round{7,9}_2026-11-30.json;
round 8 scored the requested ending on a probe of fresh requests too).
On one H200 with 16 cores, 8 variants side by side took ~5 minutes; 24 did not finish in 9.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from lora_qwen import TINY_DEFAULTS
from minift import distributed
from minift.data import FAIRYTALE_PAIRS
from minift.scratch import ScratchConfig, story_base_config

_S = story_base_config()
# The embedded default as it is now: minift.scratch.STORY_BASE and lora_qwen.py's TINY_DEFAULTS.
BASE = dict(preset=_S.preset, split=_S.split, request_docs=_S.request_docs, story_docs=_S.story_docs,
            rows=_S.rows, sketches=_S.request_sketches, sketch_end=_S.sketch_ending_share,
            pretrain_steps=_S.steps, pre_batch=_S.batch_size, pre_seq=_S.seq_len, pre_lr=_S.lr,
            vocab=_S.vocab_size, model={}, lora_steps=TINY_DEFAULTS["steps"], lora_lr=TINY_DEFAULTS["lr"],
            r=TINY_DEFAULTS["r"], lora_batch=TINY_DEFAULTS["batch_size"], dropout=TINY_DEFAULTS["dropout"], seed=0,
            eval_seeds=(0,), probe=0)
# The embedded default before 2026-11-30's afternoon, which rounds 1-4 changed: tiny-10m, words
# split, the corpus alone, 500 steps of 8 x 256; LoRA r 16 at 1e-3 for 120 steps. Rounds 1-3 ran
# before pre-training documents ended with <|im_end|> (minift/scratch.py), and round 3's story_docs
# were generate_pairs' stories (now generate_stories'): rerun today they differ.
OLD = dict(preset="tiny-10m", vocab=8192, split="words", request_docs=0, pretrain_steps=500, pre_batch=8,
           r=16, lora_lr=1e-3, lora_steps=120, rows="stream", sketches=0, pre_seq=256)
# Smaller models than tiny-10m (ModelConfig fields over the preset): a 2-core CPU trains them at
# more tokens per second, and at this compute a smaller model is closer to compute-optimal.
L4D256 = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=4)
L4D192 = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=3,
              num_key_value_heads=3)
L3D128 = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=2)
L2D256 = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4)
P = dict(split="particles", request_docs=8000)
_ROUNDS = {
    # round 1 (2026-11-30 morning, results/h200/story_recipe_sweep_2026-11-30.log): the 10M model
    "words-500": {},
    "particles-req-500": dict(split="particles", request_docs=2000),
    "particles-req-3000": dict(split="particles", request_docs=2000, pretrain_steps=3000),
    # round 2: model size, batch, steps and learning rate at a CPU budget, request documents 8000
    "10m-p8k-1000-b4": dict(P, pretrain_steps=1000, pre_batch=4),
    "10m-p8k-2000-b4": dict(P, pretrain_steps=2000, pre_batch=4),
    "10m-p8k-1000-b4-lr4e-3": dict(P, pretrain_steps=1000, pre_batch=4, pre_lr=4e-3),
    "4x256-p8k-800": dict(P, model=L4D256, vocab=4096, pretrain_steps=800),
    "4x256-p8k-1600-b4": dict(P, model=L4D256, vocab=4096, pretrain_steps=1600, pre_batch=4),
    "4x256-p8k-3000": dict(P, model=L4D256, vocab=4096, pretrain_steps=3000),
    "4x192-p8k-1000": dict(P, model=L4D192, vocab=4096, pretrain_steps=1000),
    "4x192-p8k-2000-b4": dict(P, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "4x192-p8k-4000-b4": dict(P, model=L4D192, vocab=4096, pretrain_steps=4000, pre_batch=4),
    "4x192-p8k-2000-b4-lr4e-3": dict(P, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4, pre_lr=4e-3),
    "4x192-p8k-2000-b4-lora300": dict(P, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4,
                                      lora_steps=300, lora_lr=2e-3),
    "4x192-p8k-2000-b4-r64": dict(P, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4,
                                  lora_steps=300, lora_lr=2e-3, r=64),
    "4x192-w8k-2000-b4": dict(P, split="words", model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "4x192-s8k-2000-b4": dict(P, split="syllables", model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "4x192-p2k-2000-b4": dict(P, request_docs=2000, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "3x128-p8k-2000-b4": dict(P, model=L3D128, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "3x128-p8k-4000-b4": dict(P, model=L3D128, vocab=4096, pretrain_steps=4000, pre_batch=4),
    "3x128-p8k-8000-b4": dict(P, model=L3D128, vocab=4096, pretrain_steps=8000, pre_batch=4),
    "2x256-p8k-2000-b4": dict(P, model=L2D256, vocab=4096, pretrain_steps=2000, pre_batch=4),
    "4x192-p8k-4000-b8": dict(P, model=L4D192, vocab=4096, pretrain_steps=4000),
    "4x256-p8k-3000-b4-lora300": dict(P, model=L4D256, vocab=4096, pretrain_steps=3000, pre_batch=4,
                                      lora_steps=300, lora_lr=2e-3),
    # round 3: a LoRA strong enough to teach what a base pre-trained within a CPU budget cannot do
    # yet (round 2: r 64 at lr 2e-3 for 300 steps took 4x192-p8k-2000-b4 from 0.37/0.10 to 0.66/0.66)
    **{f"{base}-{lname}": dict(bv, **lv) for base, bv in {
        "4x192-p8k-2000-b4": dict(P, model=L4D192, vocab=4096, pretrain_steps=2000, pre_batch=4),
        "4x192-p8k-1000-b4": dict(P, model=L4D192, vocab=4096, pretrain_steps=1000, pre_batch=4),
        "3x128-p8k-2000-b4": dict(P, model=L3D128, vocab=4096, pretrain_steps=2000, pre_batch=4),
        "4x192-st8k-2000-b4": dict(P, request_docs=0, story_docs=8000, model=L4D192, vocab=4096,
                                   pretrain_steps=2000, pre_batch=4),
        "4x192-p8k-1000-b4-seq512": dict(P, model=L4D192, vocab=4096, pretrain_steps=1000, pre_batch=4,
                                         pre_seq=512),
        "10m-p8k-1000-b4": dict(P, pretrain_steps=1000, pre_batch=4),
    }.items() for lname, lv in {
        "r64-300": dict(r=64, lora_lr=2e-3, lora_steps=300),
        "r64-600-b4": dict(r=64, lora_lr=2e-3, lora_steps=600, lora_batch=4),
        "r128-300-lr3e-3": dict(r=128, lora_lr=3e-3, lora_steps=300),
        "r32-300-lr3e-3": dict(r=32, lora_lr=3e-3, lora_steps=300),
    }.items()},
    # round 4: the pre-training documents end with <|im_end|> (minift/scratch.py), so the fine-tuned
    # model stops after its story; the best of round 3 around a CPU budget, with seeds for the noise
    **{f"eos-{name}": dict(dict(P, model=L4D192, vocab=4096, r=128, lora_lr=3e-3, lora_steps=300,
                                pretrain_steps=2000, pre_batch=4), **kw) for name, kw in {
        "4x192-2000-b4-r128-300": {},
        "4x192-2000-b4-r128-300-seed1": dict(seed=1),
        "4x192-2000-b4-r128-300-seed2": dict(seed=2),
        "4x192-2000-b4-r64-600-b4": dict(r=64, lora_lr=2e-3, lora_steps=600, lora_batch=4),
        "4x192-1500-b4-r128-300": dict(pretrain_steps=1500),
        "4x192-1000-b4-r128-300": dict(pretrain_steps=1000),
        "4x192-2000-b4-r128-200": dict(lora_steps=200),
        "4x192-2000-b4-r128-150": dict(lora_steps=150),
        "4x192-2000-b4-r128-300-lora-b4": dict(lora_batch=4),
        "4x192-2000-b4-r64-300": dict(r=64, lora_lr=2e-3),
        "4x192-2000-b4-r128-300-seq512": dict(pre_seq=512, pretrain_steps=1000),
        "4x192-2000-b4-prelr3e-3-r128-300": dict(pre_lr=3e-3),
        "4x192-2000-b4-p16k-r128-300": dict(request_docs=16000),
        "4x192-3000-b4-r128-300": dict(pretrain_steps=3000),
        "4x192-2000-b8-r128-300": dict(pre_batch=8),
        "3x128-2000-b4-r128-300": dict(model=L3D128),
        "3x128-3000-b4-r128-300": dict(model=L3D128, pretrain_steps=3000),
        "3x128-3000-b4-r128-300-seed1": dict(model=L3D128, pretrain_steps=3000, seed=1),
        "4x256-1600-b4-r128-300": dict(model=L4D256, pretrain_steps=1600),
        "10m-1000-b4-r128-300": dict(preset="tiny-10m", model={}, vocab=8192, pretrain_steps=1000),
        "10m-500-b8-r16-120": dict(model={}, vocab=8192, pretrain_steps=500, pre_batch=8, r=16, lora_lr=1e-3,
                                   lora_steps=120),
        "4x192-2000-b4-r16-120": dict(r=16, lora_lr=1e-3, lora_steps=120),
    }.items()},
}
VARIANTS = {name: dict(OLD, **v) for name, v in _ROUNDS.items()}
# round 5: today's default (BASE) over pre-training seeds, scored with 3 sampling seeds as
# scripts/evaluate_stories.py does, and two ways to the requested ending
VARIANTS.update({f"default-seed{k}": dict(seed=k, eval_seeds=(0, 1, 2)) for k in range(3)})
VARIANTS.update({"default-seq512": dict(pre_seq=512, pretrain_steps=1500, eval_seeds=(0, 1, 2)),
                 "default-lora450": dict(lora_steps=450, eval_seeds=(0, 1, 2))})

# round 6: whole documents in rows (minift.data.document_rows: a story's request is always in its
# context, its requested ending included) and request sketches (minift.scratch.request_sketches:
# the place and the ending decisions ~3x denser per token), at CPU budgets of ~400-800 s of
# pre-training (2-core CPU, 2026-11-30: 4 x 768 document rows 0.71 s/step, 4 x 512 0.46 s,
# 4 x 256 stream rows 0.19 s), 3 pre-training seeds each, 3 sampling seeds
_DOC = dict(rows="documents", pre_seq=768, eval_seeds=(0, 1, 2))
_ROUND6 = {
    "doc768-800": dict(_DOC, pretrain_steps=800),
    "doc768-800-sk8k": dict(_DOC, pretrain_steps=800, sketches=8000),
    "doc768-800-r4k-sk16k": dict(_DOC, pretrain_steps=800, request_docs=4000, sketches=16000),
    "doc768-550-sk8k": dict(_DOC, pretrain_steps=550, sketches=8000),
    "doc768-1100-sk8k": dict(_DOC, pretrain_steps=1100, sketches=8000),
    "doc512-1200-sk8k": dict(_DOC, pre_seq=512, pretrain_steps=1200, sketches=8000),
    "stream-2300-sk8k": dict(pretrain_steps=2300, sketches=8000, eval_seeds=(0, 1, 2)),
    "doc768-800-sk8k-lora200": dict(_DOC, pretrain_steps=800, sketches=8000, lora_steps=200),
    "doc768-800-sk8k-prelr3e-3": dict(_DOC, pretrain_steps=800, sketches=8000, pre_lr=3e-3),
}
VARIANTS.update({f"{name}-seed{k}": dict(kw, seed=k) for name, kw in _ROUND6.items() for k in range(3)})
# round 7 (the 2-core CPU, one at a time): today's default (BASE: round 6's doc512-1200-sk8k) with
# half the request documents traded for twice the sketches, the variant that gave endings 100%
# in round 6 (in 768-token rows)
VARIANTS.update({"default-r4k-sk16k": dict(request_docs=4000, sketches=16000, eval_seeds=(0, 1, 2)),
                 # 6 heads of 32 instead of 3 of 64, the same FLOPs: do names, places and endings
                 # (each learned by some seeds, never all three) compete for too few heads? (one
                 # seed: names 47%, places 89%, endings 44%: no better)
                 "default-6heads": dict(model=dict(num_attention_heads=6, num_key_value_heads=6),
                                        eval_seeds=(0, 1, 2))})

# round 8: the requested ending. Only 6 of the 50 held-out requests ask for it (18 stories over 3
# seeds: one story moves the score 5.6 points), so each variant is also scored on a probe of
# `probe` fresh requests that ask and as many that do not (pairs of seed 7, never trained on):
# "probe_ending" (the ending used when asked) and "probe_unasked_ending" (used when not asked).
# Half the sketches ask for the ending (scratch.request_sketches' ending_share) instead of ~14%.
# "default" is today's default (round 6's), pinned here. Round 9 ran sk8k-end50-seed0 on the 2-core
# CPU (names 96%, places 33%, endings 44%); r4k-sk16k-end50 ran there as the default run
# (results/cpu/default_run_2026-11-30_end50/: names 45%, places 87%, endings 100%): not adopted.
_R8 = dict(eval_seeds=(0, 1, 2), probe=40, request_docs=8000, sketches=8000, sketch_end=None)
VARIANTS.update({f"{name}-seed{k}": dict(kw, seed=k) for name, kw in {
    "default": _R8,
    "sk8k-end50": dict(_R8, sketch_end=0.5),
    "r4k-sk16k-end50": dict(_R8, request_docs=4000, sketches=16000, sketch_end=0.5),
    "sk8k-end30": dict(_R8, sketch_end=0.3),
}.items() for k in range(2)})


def ending_probe(model_dir: str, adapter_dir: str, data: str, n: int, device: str) -> dict:
    """The fine-tuned model's ending on n fresh requests that ask for it and n that do not."""
    from minift import evaluate as ev, fairytales
    from minift.checkpoint import load_pretrained
    from minift.lora import load_adapter
    from minift.tokenizer import load_tokenizer
    pairs = fairytales.generate_pairs(40 * n, 7)
    asking = [p for p in pairs if "happy_end" in p.spec.styles][:n]
    unasked = [p for p in pairs if "happy_end" not in p.spec.styles][:n]
    conversations = [p.chat()["messages"] for p in asking + unasked]   # as read_jsonl reads p.alpaca()
    train_c, _ = ev.split_requests(data)
    tok = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, device=device)
    load_adapter(model, adapter_dir)
    result = ev.evaluate_stories(model, tok, conversations, ev.length_bands(train_c), seeds=(0,),
                                 max_new_tokens=ev.story_token_budget(train_c, tok))
    happy = [ev.ends_with(r["story"], fairytales.HAPPY_END) for r in result["per_request"]]
    return {"probe_ending": sum(happy[:n]) / n, "probe_unasked_ending": sum(happy[n:]) / n}


def run_variant(name: str, work: str, device: str, data: str) -> dict:
    """One variant, in this process: pretrain, then LoRA with the story evaluation."""
    import logging
    from minift.finetune import FinetuneConfig, finetune
    from minift.scratch import train_from_scratch
    logging.basicConfig(level=logging.WARNING)
    v = dict(BASE, **VARIANTS[name])
    tiny = os.path.join(work, name, "tiny")
    t0 = time.perf_counter()
    pre = train_from_scratch(ScratchConfig(out_dir=tiny, preset=v["preset"], split=v["split"],
                                           request_docs=v["request_docs"], rows=v["rows"],
                                           request_sketches=v["sketches"], sketch_ending_share=v["sketch_end"],
                                           story_docs=v["story_docs"], steps=v["pretrain_steps"],
                                           batch_size=v["pre_batch"], seq_len=v["pre_seq"], lr=v["pre_lr"],
                                           vocab_size=v["vocab"], model_overrides=v["model"], seed=v["seed"],
                                           device=device,
                                           progress=False, compile=False, cuda_graph=False))
    t1 = time.perf_counter()
    rep = finetune(FinetuneConfig(model=tiny, data=data, out_dir=os.path.join(work, name, "lora"),
                                  steps=v["lora_steps"], lr=v["lora_lr"], r=v["r"], dropout=v["dropout"],
                                  alpha=v["r"] * TINY_DEFAULTS["alpha"] / TINY_DEFAULTS["r"],
                                  batch_size=v["lora_batch"], seed=v["seed"], device=device, dtype="float32",
                                  adapter_math="fp32",
                                  compile=False, cuda_graph=False, progress=False, story_eval=50,
                                  story_eval_seeds=tuple(v["eval_seeds"])),
                   model_dir=tiny)
    t2 = time.perf_counter()
    probe = ending_probe(tiny, rep.saved["adapter"], data, v["probe"], device) if v["probe"] else {}
    return {**probe, "name": name, "settings": v, "num_params": pre.num_params,
            "pretrain_tokens": pre.result.tokens_seen,
            "pretrain_s": round(t1 - t0, 1), "pretrain_val_loss": (pre.result.eval_history or [{}])[-1].get("loss"),
            "lora_seq_len": rep.config["seq_len"], "lora_s": round(t2 - t1, 1),
            "eval_loss": [rep.eval_before["loss"], rep.eval_after["loss"]],
            "before": rep.story_eval_before["mean"], "after": rep.story_eval_after["mean"],
            "after_std_over_seeds": rep.story_eval_after["std_over_seeds"],
            "story_after": rep.story_eval_after["per_request"][0]["story"],
            "request": rep.story_eval_after["per_request"][0]["request"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sweep_out")
    ap.add_argument("--work", default=None, help="where the models go (default OUT/work)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="variants run side by side")
    ap.add_argument("--only", help="comma-separated variant names (default: all)")
    ap.add_argument("--data", default=FAIRYTALE_PAIRS)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per variant process")
    ap.add_argument("--gpus", type=int, default=1, help="CUDA devices the variants are dealt out to, in turn")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if distributed.started_by_torchrun():
        ap.error("this script starts the recipes in child processes of its own; run it without torchrun "
                 "(the recipes themselves run under torchrun: docs/distributed.md)")
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
    started = 0
    while pending or running:
        while pending and len(running) < a.jobs:
            name = pending.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            if a.device == "cuda" and a.gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(started % a.gpus)
            started += 1
            os.makedirs(work, exist_ok=True)
            log = open(os.path.join(work, f"{name}.log"), "w")
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
                with open(os.path.join(work, f"{name}.log"), encoding="utf-8") as f:
                    tail = f.read()[-1500:]
                results.append({"name": name, "error": f"exit {proc.returncode}: {tail}"})
            else:
                results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            if "after" in r:
                print(f"{name:34s} pre {r['pretrain_s']:6.0f}s lora {r['lora_s']:5.0f}s  after: " +
                      " ".join(f"{k} {v:.2f}" for k, v in r["after"].items()) +
                      f"  (before: characters {r['before']['characters']:.2f} place {r['before']['place']:.2f})" +
                      (f"  probe: ending {r['probe_ending']:.2f} unasked {r['probe_unasked_ending']:.2f}"
                       if "probe_ending" in r else ""),
                      flush=True)
            else:
                print(f"{name:34s} {r['error']}", flush=True)
            with open(os.path.join(a.out, "sweep.json"), "w", encoding="utf-8") as f:
                json.dump({"date": time.strftime("%Y-%m-%d"), "device": a.device, "results": results}, f,
                          ensure_ascii=False, indent=1)
    sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()
