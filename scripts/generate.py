"""Generate text from a model, streaming it to the terminal.

    python scripts/generate.py                                   # runs/tiny-10m if trained, else a random demo
    python scripts/generate.py --model runs/tiny-10m --prompt "옛날 옛적에" --temperature 0.8 --top-p 0.95
    python scripts/generate.py --model Qwen/Qwen2.5-0.5B-Instruct --chat --prompt "Hi!"   # needs the files locally

Without --model the script loads runs/tiny-10m (what scripts/train_tiny.py writes). If that does not
exist yet it says so and falls back to a randomly initialised model of --preset with a byte-level
BPE trained on the spot on a few sentences: the output is noise, but every step of the pipeline
(tokenizer, prefill, KV-cache decoding, sampling, streaming) runs, offline.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

import minift
from minift.device import pick_device, resolve_dtype
from minift.generate import generate_stream
from minift.tokenizer import train_bpe

DEFAULT_RUN = "runs/tiny-10m"
DEMO_SENTENCES = [
    "옛날 옛적에 깊은 산속에 호랑이 한 마리가 살았어요.",
    "어머니는 떡을 이고 고개를 넘었어요. 떡 하나 주면 안 잡아먹지!",
    "해님 달님 이야기는 오누이가 하늘로 올라가 해와 달이 되는 이야기예요.",
    "Once upon a time a tiger lived deep in the mountains.",
    "The tiger loved rice cakes more than anything else.",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"checkpoint folder or hub id (default: {DEFAULT_RUN} if present)")
    p.add_argument("--preset", default="tiny-10m", help="architecture of the random fallback model")
    p.add_argument("--prompt", default="옛날 옛적에", help="the prompt (the user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--fast-matvec", choices=["auto", "on", "off"], default="auto",
                   help="CPU decoding through compiled matrix-vector kernels (kernels/matvec.py): ~2x faster "
                        "steps, ~4.5 s to compile once per process; auto = on for CPU models of 512 MiB and more")
    return p.parse_args()


def load(args):
    path = args.model
    if path is None and os.path.exists(os.path.join(DEFAULT_RUN, "config.json")):
        path = DEFAULT_RUN
    if path is not None:
        return minift.load_pretrained(path, dtype=args.dtype, device=args.device), minift.load_tokenizer(path)

    print(f"[no --model and no trained model at {DEFAULT_RUN}/ (train one with scripts/train_tiny.py).\n"
          f" Falling back to a RANDOM {args.preset} model and a tokenizer trained on {len(DEMO_SENTENCES)} "
          "sentences: expect noise; this only shows the pipeline running.]", file=sys.stderr)
    tok = train_bpe(DEMO_SENTENCES, vocab_size=512)
    cfg = dataclasses.replace(minift.ModelConfig.preset(args.preset), vocab_size=tok.vocab_size)
    device = pick_device(args.device)
    torch.manual_seed(0 if args.seed is None else args.seed)
    model = minift.Transformer(cfg).to(device=device, dtype=resolve_dtype(args.dtype, device))
    return model.eval(), tok


def main() -> None:
    args = parse_args()
    model, tok = load(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt = messages + [{"role": "user", "content": args.prompt}]
    else:
        if args.system:
            sys.exit("--system needs --chat")
        prompt = args.prompt
        print(args.prompt, end="", flush=True)

    start, first, n = time.perf_counter(), None, 0
    for _, delta in generate_stream(model, tok, prompt, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    repetition_penalty=args.repetition_penalty, seed=args.seed,
                                    fast_matvec={"auto": None, "on": True, "off": False}[args.fast_matvec]):
        n += 1
        if first is None:
            first = time.perf_counter()
        print(delta, end="", flush=True)
    end = time.perf_counter()
    print(flush=True)
    if n:
        decode = f", then {(n - 1) / (end - first):.1f} tok/s decoding" if n > 1 and end > first else ""
        print(f"[{n} tokens in {end - start:.2f} s: {n / (end - start):.1f} tok/s overall; "
              f"first token after {first - start:.2f} s{decode}; {next(model.parameters()).dtype}, "
              f"{next(model.parameters()).device}]", file=sys.stderr)


if __name__ == "__main__":
    main()
