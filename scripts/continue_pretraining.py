"""Path 2 of the seed chapter: continued pre-training of a base model on raw domain text.

    python scripts/continue_pretraining.py --model runs/tiny-10m --corpus data/fairytales_corpus.txt --steps 50
    python scripts/continue_pretraining.py --model Qwen/Qwen2.5-0.5B --corpus my_domain.txt --device cuda

Every token of the text is a target (no chat template, no masking); documents are packed into one
stream separated by end-of-text. The chapter's warnings apply and are printed: CPT belongs on a
*base* model (an instruct model loses its chat format), and under ~1B tokens its effect is small.
Writes the whole model in the Hugging Face layout to --out.
"""
import argparse
import logging

import torch

from minift import distributed, fast_path, load_pretrained, load_tokenizer, resolve_model_dir, save_pretrained
from minift.data import Batches, load_pretrain
from minift.device import pick_device, resolve_dtype
from minift.train import TrainConfig, failure_point_warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a base model: local directory or Hugging Face id")
    ap.add_argument("--corpus", required=True, help="raw text (.txt, blank-line separated) or JSONL {'text'}")
    ap.add_argument("--out", default="runs/cpt")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5, help="small: the model already knows the language")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing: less memory, ~30%% slower")
    ap.add_argument("--ckpt-layers", type=int, metavar="N", help="checkpoint only the bottom N layers (implies "
                    "--grad-ckpt): the others keep their activations, faster for more memory")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-progress", action="store_true")
    for flag, kw in fast_path.FLAGS:
        if flag not in fast_path.ADAPTER_FLAGS:   # every weight trains: no adapters
            ap.add_argument(flag, **kw)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for w in failure_point_warnings("cpt", a.model):
        distributed.print0(f"warning: {w}")

    device = pick_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    model_dir = resolve_model_dir(a.model)
    tok = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, dtype=dtype, device=device)
    data = load_pretrain(a.corpus, tok, a.seq_len, val_fraction=0.02)
    distributed.print0(f"corpus: {data.stats.num_tokens:,} tokens in {data.stats.num_rows:,} rows "
                       f"(the chapter: below ~1B tokens continued pre-training does little)")
    plan = fast_path.decide(device, dtype, method="cpt", one_shape=len({len(r) for r in data.train}) == 1,
                            grad_accum=a.grad_accum, num_rows=len(data.train), batch_size=a.batch_size,
                            steps=a.steps, **fast_path.settings(a))
    train_rows = Batches(data.train, a.batch_size, shuffle=True, device=device, pad_id=data.pad_id,
                         drop_last=plan.drop_last)
    val_rows = Batches(data.val, a.batch_size, shuffle=False, device=device, pad_id=data.pad_id) if data.val else None
    # bf16 weights train with fp32 Adam states (precision "bf16"); fp32 weights (a CPU) train in fp32
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    model.train()
    result, compile_line = fast_path.train_with(plan, model, train_rows, val_rows, TrainConfig(
        steps=a.steps, grad_accum=a.grad_accum, lr=a.lr, warmup=min(10, a.steps // 10), weight_decay=0.0,
        precision=precision, grad_checkpointing=a.grad_ckpt or a.ckpt_layers is not None,
        checkpoint_layers=a.ckpt_layers, out_dir=f"{a.out}/train", progress=not a.no_progress))
    model.eval()
    save_pretrained(model, a.out, tokenizer=tok)   # under torchrun: gathered, written by rank 0
    if not distributed.is_main():
        return
    evals = result.eval_history
    print(f"train loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"
          + (f", held-out loss {evals[-1]['loss']:.3f}" if evals else "") + f"; saved {a.out}")
    print(f"training: {result.tokens_per_s:,.0f} tok/s (first step included)")
    print(fast_path.describe(plan.lines, compile_line))


if __name__ == "__main__":
    main()
