"""Make synthetic Korean fairytale data: instruction pairs for SFT/LoRA and a raw-text corpus for
pre-training the tiny model (the generator itself is minift/fairytales.py).

    # what data/ ships (1,000 pairs + 1,000 corpus stories, ~3.8 MB)
    python scripts/make_fairytales.py --n-pairs 1000 --corpus-stories 1000 --seed 0 --out-dir data

    # the capstone's 5K-50K pairs, chat format, with a 5% validation split
    python scripts/make_fairytales.py --n-pairs 20000 --format chat --val-fraction 0.05 --out-dir out/fairytales

Writes in --out-dir:
    fairytales_pairs.jsonl            (or fairytales_pairs.train.jsonl + .val.jsonl with --val-fraction)
    fairytales_corpus.txt             stories separated by blank lines (--corpus-format jsonl: {"text"} lines)
The same --seed gives the same bytes; the first N pairs of a larger run are the N pairs of a smaller one.
"""
import argparse
import os
import sys
import time

from minift import fairytales
from minift.data import train_val_split


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=5000, help="distinct instruction pairs (0 for none; max 50,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="data")
    ap.add_argument("--format", choices=("alpaca", "chat"), default="alpaca",
                    help='alpaca: {"instruction","input","output"}; chat: {"messages":[...]}')
    ap.add_argument("--system", default="", help="chat format only: a system message to put first")
    ap.add_argument("--corpus-stories", type=int, default=0, help="stories for the raw-text corpus (0: none)")
    ap.add_argument("--corpus-format", choices=("txt", "jsonl"), default="txt")
    ap.add_argument("--val-fraction", type=float, default=0.0, help="held-out share of the pairs (seeded)")
    ap.add_argument("--prefix", default="fairytales", help="file name prefix")
    args = ap.parse_args(argv)
    if not 0 <= args.n_pairs <= 50_000:
        ap.error("--n-pairs must be between 0 and 50,000")
    if args.system and args.format != "chat":
        ap.error("--system needs --format chat")

    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.perf_counter()
    written = []
    if args.n_pairs:
        pairs = fairytales.generate_pairs(args.n_pairs, args.seed)
        records = [p.chat(args.system or None) if args.format == "chat" else p.alpaca() for p in pairs]
        base = os.path.join(args.out_dir, f"{args.prefix}_pairs")
        if args.val_fraction > 0:
            train, val = train_val_split(records, args.val_fraction, args.seed)
            for name, part in ((f"{base}.train.jsonl", train), (f"{base}.val.jsonl", val)):
                fairytales.write_jsonl(part, name)
                written.append((name, len(part)))
        else:
            fairytales.write_jsonl(records, base + ".jsonl")
            written.append((base + ".jsonl", len(records)))
    if args.corpus_stories:
        stories = fairytales.generate_stories(args.corpus_stories, args.seed)
        path = os.path.join(args.out_dir, f"{args.prefix}_corpus.{args.corpus_format}")
        if args.corpus_format == "jsonl":
            fairytales.write_jsonl([{"text": s} for s in stories], path)
        else:
            fairytales.write_corpus(stories, path)
        written.append((path, len(stories)))
    seconds = time.perf_counter() - t0

    for path, n in written:
        print(f"{path}: {n:,} records, {os.path.getsize(path) / 1e6:.2f} MB")
    print(f"done in {seconds:.1f} s (seed {args.seed})")
    if args.n_pairs:
        p = pairs[0]
        print("\nfirst pair:\n--- instruction\n" + p.instruction + ("\n--- input\n" + p.input if p.input else "")
              + "\n--- output\n" + p.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
