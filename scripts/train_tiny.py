"""Train the ~10M-parameter tiny model from scratch on the fairytale corpus (the seed chapter's path 1).

    python scripts/train_tiny.py                       # ~10 minutes on a 2-core CPU -> runs/tiny-10m
    python scripts/train_tiny.py --steps 3000 --device cuda
    python scripts/train_tiny.py --story-base           # the capstone's base -> runs/tiny-story

Trains a byte-level BPE on the corpus (8,192 tokens; 4,096 with --story-base), then the model;
writes the Hugging Face layout (minift.load_pretrained and transformers both load it) and prints
a sample story.
"""
import argparse
import dataclasses
import json
import logging

from minift import distributed, fast_path
from minift.scratch import ScratchConfig, story_base_config, train_from_scratch
from minift.tokenizer import SPLITS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--story-base", action="store_true",
                    help="train the capstone's embedded base instead (minift.scratch.STORY_BASE: tiny-2.5m, "
                         "particles split, stories under their requests -> runs/tiny-story)")
    # every default below is the chosen recipe's (ScratchConfig, or STORY_BASE with --story-base)
    ap.add_argument("--corpus")
    ap.add_argument("--out", dest="out_dir")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--vocab-size", type=int)
    ap.add_argument("--split", choices=SPLITS,
                    help="where the BPE may cut Korean before merging (minift.tokenizer.SPLITS)")
    ap.add_argument("--device")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--no-progress", action="store_true")
    for flag, kw in fast_path.FLAGS:
        if flag not in fast_path.ADAPTER_FLAGS:   # no adapters when training from scratch
            ap.add_argument(flag, **kw)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {k: v for k, v in vars(a).items() if v is not None and k in ScratchConfig.__dataclass_fields__}
    cfg = story_base_config(**given) if a.story_base else ScratchConfig(**given)
    report = train_from_scratch(dataclasses.replace(cfg, progress=not a.no_progress, **fast_path.settings(a)))
    if not distributed.is_main():   # torchrun: rank 0 alone reports and writes train_report.json
        return
    r = report.result
    last_eval = r.eval_history[-1] if r.eval_history else {}
    print(f"\nparameters: {report.num_params:,}   training tokens in the corpus: {report.train_tokens:,}")
    print(f"steps: {r.final_step}   tokens seen: {r.tokens_seen:,}   {r.tokens_per_s:,.0f} tok/s   "
          f"{r.train_time_s / 60:.1f} min")
    print(fast_path.describe(report.fast_path, report.compile_line))
    print(f"train loss: {r.losses[0]:.3f} -> {r.losses[-1]:.3f}   validation loss: {last_eval.get('loss', float('nan')):.3f}"
          f" (perplexity {last_eval.get('perplexity', float('nan')):.1f})")
    print(f"saved: {report.out_dir}\n\nsample:\n{report.sample}")
    with open(f"{report.out_dir}/train_report.json", "w", encoding="utf-8") as f:
        json.dump(dict(num_params=report.num_params, steps=r.final_step, tokens_seen=r.tokens_seen,
                       tokens_per_s=r.tokens_per_s, train_time_s=r.train_time_s, first_loss=r.losses[0],
                       last_loss=r.losses[-1], eval_history=r.eval_history, sample=report.sample),
                  f, ensure_ascii=False, indent=2)


if __name__ == "__main__":
    main()
