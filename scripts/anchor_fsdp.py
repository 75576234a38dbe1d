# Copied from the project's shared/tools/fsdp_anchor.py (only its argument parsing changed) (the issue-13 anchor), so the GPU
# benchmark (scripts/bench_distributed.py) finds it inside the repository.
"""Anchor for scale-out: HF Qwen2 full fine-tuning sharded with PyTorch's FSDP2 (fully_shard), the
torchtune-style recipe: fp32 sharded master weights, bf16 compute, fp32 gradient reduction, torch AdamW
(fp32 states), gradient checkpointing. Random weights.

    torchrun --nproc-per-node 2 fsdp_anchor.py 7B      # prints one JSON line from rank 0
"""
import argparse, json, os, sys, time
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
from transformers import Qwen2Config, Qwen2ForCausalLM

SIZES = {"0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
         "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)}

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", choices=sorted(SIZES))
    size = ap.parse_args().size; B, T, steps = 4, 1024, 6
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    cfg = Qwen2Config(**SIZES[size], rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768)
    cfg._attn_implementation = "sdpa"; cfg.use_cache = False
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    model.to_empty(device="cuda")
    torch.manual_seed(rank)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n: p.fill_(1.0)
            else: p.normal_(0, 0.02)
        model.model.rotary_emb.inv_freq = (1.0 / (1e6 ** (torch.arange(0, cfg.hidden_size // cfg.num_attention_heads, 2,
                                            device="cuda").float() / (cfg.hidden_size // cfg.num_attention_heads))))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for s in range(steps):
        x = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
        torch.cuda.synchronize(); t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    peak = torch.tensor([torch.cuda.max_memory_allocated()], device="cuda")
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    steady = sorted(times[2:])[len(times[2:]) // 2]
    if rank == 0:
        print(json.dumps(dict(size=size, world=world, per_gpu_batch=B, T=T, max_per_gpu_peak_GB=round(peak.item() / 1e9, 2),
                              step_s=round(steady, 3), tok_per_s_total=round(world * B * T / steady),
                              loss=round(loss.item(), 3))), flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
