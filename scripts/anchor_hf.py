"""The anchor: what transformers + peft (+ bitsandbytes) measure for one training configuration.

Run in its own process (peaks must not leak between rows), one JSON line on stdout:
    python scripts/anchor_hf.py --size 0.5b --method lora [--grad-ckpt] [--batch 4 --seq 1024]

Qwen2.5 architecture from its preset with random weights (memory and speed do not depend on the
values), SDPA attention, use_cache off, LoRA r=16 alpha=32 on all seven projections, QLoRA = NF4
with double quantization and bf16 compute, full = bf16 parameters with fp32 Adam m and v (the
seed chapter's assumption; torch has no such optimizer for bf16 parameters, so minift's AdamW
serves both sides there); LoRA and QLoRA step with torch's fused AdamW, as a HF user would.
Peak = torch.cuda.max_memory_allocated over the steps; tok/s = median of the steady steps.
--autocast runs the forward under torch.autocast(bf16), as HF Trainer's bf16=True does: peft's
fp32 adapters then compute in bf16 (minift's LoRALinear compute_dtype=torch.bfloat16).
--compile wraps the model in torch.compile (HF Trainer's torch_compile=True); the first steps,
which compile, are outside the median. --liger patches transformers' Qwen2 with Liger's Triton
kernels before the model is built (apply_liger_kernel_to_qwen2: RMSNorm, RoPE, SwiGLU and the
fused linear + cross-entropy, which never materialises the logits), as `use_liger_kernel=True` does.
--profile N runs N more steps under torch.profiler and adds the GPU's busy time a step and its kernel
launches a step (minift.bench.kernel_times): a busy time well under step_s means the stack waits for
its host (Python, guards, launches), and its speed then moves with the host's.
"""
import contextlib
import argparse
import json
import time

import torch

import minift
from minift.bench import kernel_times, median_steady
from minift.optim import AdamW

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_hf(size: str, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = minift.ModelConfig.preset(f"qwen2.5-{size}")
    hf_cfg = Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                            if k not in ("architectures", "model_type", "torch_dtype")})
    hf_cfg._attn_implementation = "sdpa"
    hf_cfg.use_cache = False
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = Qwen2ForCausalLM(hf_cfg)
    torch.set_default_dtype(torch.float32)
    return model


def quantize_bnb(model, device):
    import bitsandbytes as bnb
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name in TARGETS:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4",
                                      compress_statistics=True, device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, child_name, q)
    torch.cuda.empty_cache()


def anchor_name(method: str, autocast: bool, compile: bool, liger: bool) -> str:
    """'HF+peft+bnb+Liger, autocast': the stack, then how it runs."""
    stack = "HF" + ("+peft" if method in ("lora", "qlora") else "") + ("+bnb" if method == "qlora" else "")
    how = [w for w, on in (("autocast", autocast), ("compile", compile)) if on]
    return stack + ("+Liger" if liger else "") + (", " + " + ".join(how) if how else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="0.5b", choices=["0.5b", "1.5b", "3b", "7b"])
    ap.add_argument("--method", default="lora", choices=["full", "lora", "qlora", "infer"])
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--autocast", action="store_true", help="forward under torch.autocast(bf16)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--liger", action="store_true", help="Liger kernels (pip install liger-kernel)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="N more steps under torch.profiler")
    a = ap.parse_args()
    device = torch.device("cuda")
    if a.liger:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
        apply_liger_kernel_to_qwen2()
    model = build_hf(a.size, device)
    if a.method == "qlora":
        quantize_bnb(model, device)
    if a.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))
    if a.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if a.method in ("lora", "qlora"):
            model.enable_input_require_grads()
    forward = torch.compile(model) if a.compile else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    if a.method == "full":
        opt = AdamW(trainable, lr=1e-5)
    elif a.method in ("lora", "qlora"):
        opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    torch.cuda.synchronize()
    static = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    x = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if a.autocast else contextlib.nullcontext()

    def step():
        if a.method == "infer":
            with torch.no_grad():
                forward(input_ids=x, logits_to_keep=1)
        else:
            with autocast:
                loss = forward(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    times, host_times = [], []
    for _ in range(a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        host_times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = median_steady(times)
    profiled = {}
    if a.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(a.profile):
                step()
            torch.cuda.synchronize()
        kernels = kernel_times(prof, a.profile)
        profiled = dict(gpu_busy_s=sum(t for t, _ in kernels.values()),
                        kernels_per_step=sum(c for _, c in kernels.values()))
    side = anchor_name(a.method, a.autocast, a.compile, a.liger)
    print(json.dumps(dict(side=side, size=a.size, method=a.method, autocast=a.autocast, compile=a.compile,
                          liger=a.liger,
                          grad_ckpt=a.grad_ckpt, batch=a.batch, seq=a.seq, static_bytes=static,
                          peak_bytes=torch.cuda.max_memory_allocated(), step_s=steady,
                          host_step_s=median_steady(host_times), tok_per_s=a.batch * a.seq / steady,
                          step_times_s=times, **profiled)), flush=True)


if __name__ == "__main__":
    main()
