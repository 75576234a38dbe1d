"""Check and time loading a QLoRA base from disk on a GPU (issue 10's loading half), as JSON.

    python scripts/check_quantized_load.py --preset qwen2.5-7b --dir /tmp/ckpt --json $OUT/load_check.json

1. write_random_checkpoint: a random bf16 checkpoint of the preset, drawn on the GPU (time, bytes);
2. load_pretrained(quantize="nf4"): time, the device's peak allocated while loading, what stays;
3. the old way, load_pretrained + quant.quantize_model: its peak, and the two models byte for byte;
4. save_pretrained of the 4-bit model (bitsandbytes' layout) and load_pretrained of it: time, peak,
   byte for byte;
5. write_random_checkpoint(quantize="nf4") and its load = build_random_model(quantize="nf4"),
   byte for byte (same device, same seed), with the times.
Any mismatch raises (exit status 1) after writing what was measured. The checkpoints are deleted
at the end unless --keep.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time

import torch

from minift import ModelConfig, quant
from minift.checkpoint import load_pretrained, save_pretrained
from minift.random_weights import build_random_model, write_random_checkpoint


def timed(results: dict, key: str, fn, *, cuda: bool):
    """Run fn, recording its seconds (and on CUDA the peak allocated bytes) under results[key]."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else None
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    results[key] = {"seconds": round(time.perf_counter() - t0, 2)}
    if cuda:
        results[key].update(allocated_before=before, peak_allocated=torch.cuda.max_memory_allocated(),
                            allocated_after=torch.cuda.memory_allocated())
    return out


def same_bytes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2.5-7b")
    ap.add_argument("--dir", required=True, help="scratch directory for the checkpoints (about 3.3 x the bf16 size)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for); cpu runs the same checks, small presets")
    args = ap.parse_args()
    dev, cuda = args.device, args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (pass --device cpu to run the checks on a small preset)")
    cfg = ModelConfig.preset(args.preset)
    bf16_dir, ours_dir, random4_dir = (os.path.join(args.dir, n) for n in ("bf16", "nf4-saved", "nf4-random"))
    results = {"preset": args.preset, "params": cfg.num_params(), "device": torch.cuda.get_device_name() if cuda else dev}
    failures = []
    measure = functools.partial(timed, results, cuda=cuda)

    def check(name, ok):
        results[name] = bool(ok)
        if not ok:
            failures.append(name)

    try:
        measure("write_bf16", lambda: write_random_checkpoint(cfg, bf16_dir, dtype="bfloat16", device=dev))
        results["write_bf16"]["bytes"] = sum(os.path.getsize(os.path.join(bf16_dir, f)) for f in os.listdir(bf16_dir))
        streamed = measure("load_nf4_streaming", lambda: load_pretrained(
            bf16_dir, dtype="bfloat16", device=dev, quantize="nf4"))
        results["nf4_model_bytes"] = quant.quantized_bytes(streamed)["total"]
        old = measure("load_bf16_then_quantize_model", lambda: quant.quantize_model(load_pretrained(
            bf16_dir, dtype="bfloat16", device=dev)))
        check("streaming_equals_load_then_quantize", same_bytes(streamed, old))
        del old
        measure("save_nf4", lambda: save_pretrained(streamed, ours_dir))
        reloaded = measure("load_saved_nf4", lambda: load_pretrained(ours_dir, dtype="bfloat16", device=dev))
        check("saved_nf4_reloads_byte_for_byte", same_bytes(reloaded, streamed))
        del reloaded, streamed
        measure("write_random_nf4", lambda: write_random_checkpoint(
            cfg, random4_dir, dtype="bfloat16", quantize="nf4", device=dev))
        results["write_random_nf4"]["bytes"] = sum(os.path.getsize(os.path.join(random4_dir, f))
                                                   for f in os.listdir(random4_dir))
        loaded4 = measure("load_random_nf4", lambda: load_pretrained(random4_dir, dtype="bfloat16",
                                                                           device=dev))
        built = measure("build_random_nf4", lambda: build_random_model(cfg, dev, quantize="nf4"))
        check("random_nf4_checkpoint_equals_built_model", same_bytes(loaded4, built))
    finally:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(json.dumps(results, indent=2))
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    if failures:
        raise SystemExit(f"FAILED: {', '.join(failures)}")


if __name__ == "__main__":
    main()
