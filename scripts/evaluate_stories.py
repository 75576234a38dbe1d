"""Score how well a fairytale model follows its requests (minift/evaluate.py says how).

    python scripts/evaluate_stories.py --model runs/tiny-story --adapter runs/lora-qwen/adapter
    python scripts/evaluate_stories.py --model runs/tiny-story --adapter runs/lora-qwen/adapter --seeds 0,1,2 --show 3

For the held-out requests of --data (the same split lora_qwen.py holds out: --val-fraction and
--split-seed), generates one story per request and sampling seed with fixed settings, scores each
and prints the averages with their spread over seeds. With --adapter the base model is evaluated
too (unless --no-before), and --show N prints N stories before and after side by side.
"""
import argparse
import json
import logging

from minift import evaluate as ev
from minift.checkpoint import load_pretrained
from minift.data import FAIRYTALE_PAIRS
from minift.device import pick_device
from minift.lora import load_adapter
from minift.tokenizer import load_tokenizer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model directory (HF layout)")
    ap.add_argument("--adapter", help="a saved LoRA adapter directory to evaluate on top of the base")
    ap.add_argument("--data", default=FAIRYTALE_PAIRS)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--split-seed", type=int, default=0, help="the --seed lora_qwen.py trained with")
    ap.add_argument("--max-examples", type=int, help="as lora_qwen.py --max-examples (the split depends on it)")
    ap.add_argument("--n", type=int, help="evaluate only the first N held-out requests")
    ap.add_argument("--seeds", default="0,1,2", help="sampling seeds, comma-separated")
    ap.add_argument("--temperature", type=float, default=ev.SAMPLING["temperature"])
    ap.add_argument("--top-k", type=int, default=ev.SAMPLING["top_k"])
    ap.add_argument("--no-repeat-ngram", type=int, default=ev.SAMPLING["no_repeat_ngram_size"],
                    help="forbid repeating a span of this many tokens (0: off)")
    ap.add_argument("--allow-repeated-sentences", action="store_true",
                    help="let the sampler end a sentence or line already written (the model alone)")
    ap.add_argument("--max-new-tokens", type=int, help="default: the longest training answer, in tokens, + 10%%")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--no-before", action="store_true", help="with --adapter: skip the base model's evaluation")
    ap.add_argument("--show", type=int, default=2, help="print this many stories (before/after)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="write the evaluation here as JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    device = pick_device(a.device)
    tok = load_tokenizer(a.model)
    train_c, held_out = ev.split_requests(a.data, a.val_fraction, a.split_seed, a.max_examples)
    held_out = held_out[:a.n] if a.n else held_out
    bands = ev.length_bands(train_c)
    max_new = a.max_new_tokens or ev.story_token_budget(train_c, tok)
    seeds = [int(s) for s in a.seeds.split(",")]
    kw = dict(seeds=seeds, max_new_tokens=max_new, batch_size=a.batch_size,
              sampling=dict(temperature=a.temperature, top_k=a.top_k, no_repeat_ngram_size=a.no_repeat_ngram,
                            no_repeat_sentences=not a.allow_repeated_sentences))

    model = load_pretrained(a.model, device=device)
    before = None
    if not a.adapter or not a.no_before:
        before = ev.evaluate_stories(model, tok, held_out, bands, **kw)
    after = None
    if a.adapter:
        load_adapter(model, a.adapter)
        after = ev.evaluate_stories(model, tok, held_out, bands, **kw)

    print(f"{len(held_out)} held-out requests of {a.data}, seeds {seeds}, {kw['sampling']}, "
          f"max {max_new} new tokens\n")
    if after is None:
        print(ev.table(None, before))
    else:
        print(ev.table(before, after))
    print()
    print(ev.side_by_side(before, after, a.show))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"before": before, "after": after}, f, ensure_ascii=False, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
