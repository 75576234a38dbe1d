"""What fusing q/k/v and gate/up saves, matmul by matmul (the numbers in minift/fused_projections.py).

    python scripts/probe_fused_matmuls.py --out bench_out      # a CUDA GPU; writes probe_fused_matmuls.json

For one decoder layer of Qwen2.5-0.5B and of Qwen2.5-7B at 4 x 1024 tokens in bf16, the mean
time (ms, 30 calls after 5 warm-up calls) of: q, k, v as three matmuls and as one (forward, and the
input gradient); gate, up as two and as one; the five adapters' down-projections x @ A^T (r = 16) as
five products and as two stacked ones (q/k/v and gate/up), and their A gradients likewise.
Only the products: no adapter updates, no dropout, nothing compiled (scripts/profile_step.py
measures the whole step, fused and --unfused).
"""
import argparse
import json
import os
import time

import torch

SHAPES = (("0.5b", 896, 896, 128, 4864), ("7b", 3584, 3584, 512, 18944))  # name, hidden, q out, k/v out, ffn


def mean_ms(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def probe(hidden: int, q_out: int, kv_out: int, ffn: int, tokens: int = 4096, r: int = 16) -> dict:
    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * scale
    x = randn(tokens, hidden)                                            # (T, h)
    qkv = [randn(o, hidden, scale=0.02) for o in (q_out, kv_out, kv_out)]
    gate_up = [randn(ffn, hidden, scale=0.02) for _ in range(2)]
    a = [randn(r, hidden) for _ in range(5)]                             # q, k, v, gate, up adapters
    qkv_w, gate_up_w = torch.cat(qkv), torch.cat(gate_up)                # (q + 2 kv, h), (2 ffn, h)
    a_qkv, a_gate_up = torch.cat(a[:3]), torch.cat(a[3:])                # (3r, h), (2r, h)
    d_qkv = randn(tokens, q_out + 2 * kv_out)                            # gradient of the fused output
    d_parts = [t.contiguous() for t in d_qkv.split([q_out, kv_out, kv_out], dim=1)]
    d_gate_up = randn(tokens, 2 * ffn)
    d_gu_parts = [t.contiguous() for t in d_gate_up.split([ffn, ffn], dim=1)]
    d_xa = [randn(tokens, r) for _ in range(5)]                          # gradients of x @ A^T
    d_xa_qkv, d_xa_gate_up = randn(tokens, 3 * r), randn(tokens, 2 * r)
    return {
        "qkv_separate_forward": mean_ms(lambda: [x @ w.t() for w in qkv]),
        "qkv_fused_forward": mean_ms(lambda: x @ qkv_w.t()),
        "qkv_separate_input_grad": mean_ms(lambda: d_parts[0] @ qkv[0] + d_parts[1] @ qkv[1] + d_parts[2] @ qkv[2]),
        "qkv_fused_input_grad": mean_ms(lambda: d_qkv @ qkv_w),
        "gate_up_separate_forward": mean_ms(lambda: [x @ w.t() for w in gate_up]),
        "gate_up_fused_forward": mean_ms(lambda: x @ gate_up_w.t()),
        "gate_up_separate_input_grad": mean_ms(lambda: d_gu_parts[0] @ gate_up[0] + d_gu_parts[1] @ gate_up[1]),
        "gate_up_fused_input_grad": mean_ms(lambda: d_gate_up @ gate_up_w),
        "adapter_down_5_separate": mean_ms(lambda: [x @ w.t() for w in a]),
        "adapter_down_2_stacked": mean_ms(lambda: (x @ a_qkv.t(), x @ a_gate_up.t())),
        "adapter_a_grad_5_separate": mean_ms(lambda: [d.t() @ x for d in d_xa]),
        "adapter_a_grad_2_stacked": mean_ms(lambda: (d_xa_qkv.t() @ x, d_xa_gate_up.t() @ x)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_fused_matmuls times CUDA matmuls: it needs a CUDA GPU")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, *shape in SHAPES:
        result[name] = probe(*shape)
        print(name, json.dumps({k: round(v, 3) for k, v in result[name].items()}), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "probe_fused_matmuls.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
