"""LoRA and QLoRA speed and peak memory: minift vs transformers + peft (+ bitsandbytes), same run.

    python scripts/bench_lora.py --out bench_out       # on a CUDA machine

Qwen2.5-0.5B and 7B architectures, random weights, batch 4 x 1024, LoRA r=16 on all seven
projections, QLoRA = NF4 + double quantization. The same machinery as scripts/bench_train.py
(its "lora" rows); see that script for the columns.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import main  # noqa: E402

if __name__ == "__main__":
    main(default_rows="lora")
