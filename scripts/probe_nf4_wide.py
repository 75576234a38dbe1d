"""What the NF4 group's wider matrix [W, b] costs, by how its rows are laid out (minift/quant.py,
Note: an operator of its own; minift/fused_projections.py, Note: NF4 groups).

    python scripts/probe_nf4_wide.py --out bench_out      # a CUDA GPU; writes probe_nf4_wide.json

For Qwen2.5-7B's grouped projections (q, k/v with R = 48 adapter columns; gate/up with R = 32) at
4 x 1024 tokens in bf16, the mean time (ms, 30 calls after 5 warm-up calls) of: the dequantize, the
copy of b into the matrix, the forward product and the input-gradient product, in five layouts:
  unfused   W (out, in) alone, x (T, in): what the step did before NF4 groups (no b, no xa);
  wide      [W, b] (out, in + R) and [x, xa] (T, in + R) contiguous: what the step does now;
  padded    the same shapes, each row starting a multiple of 64 elements (128 bytes) after the
            last: the row stride rounded up, the matrices views of the first in + R columns;
  zero-K    in + R rounded up to a multiple of 64 with zero columns in both (the products' K too);
  zero-K128 the same to a multiple of 128.
A row of in + R = 3,632 bf16 elements is 7,264 bytes, so without padding most rows start mid
128-byte line. Only the pieces: no autograd, no compile (scripts/profile_step.py times the step).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from minift.kernels import dispatch, nf4, nf4_triton
from probe_fused_matmuls import mean_ms   # scripts/: the same timer as the fused-matmul probe

SHAPES = (("q", 3584, 3584, 48), ("k_or_v", 512, 3584, 48), ("gate_or_up", 18944, 3584, 32))  # out, in, R
TOKENS = 4096
LAYOUTS = ("unfused", "wide", "padded", "zero_k", "zero_k128")


def round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def probe(out_features: int, in_features: int, r: int) -> dict:
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    packed, state = nf4.quantize(torch.randn(out_features, in_features, **bf16) * 0.02)
    b = torch.randn(out_features, r, **bf16)                                        # (out, R)
    x_xa_full = torch.randn(TOKENS, round_up(in_features + r, 128), **bf16)         # (T, Kp)
    grad_y = torch.randn(TOKENS, out_features, **bf16)                              # (T, out)
    reference = nf4.dequantize(packed, state, torch.bfloat16)                       # (out, in)
    result = {}
    for layout in LAYOUTS:
        k = in_features if layout == "unfused" else in_features + r
        k_store = round_up(k, 128 if layout == "zero_k128" else 64) if layout != "wide" else k
        if layout.startswith("zero_k"):
            k = k_store
        wide = None   # unfused: the dequantize's own fresh (out, in), below
        if layout != "unfused":
            wide = torch.zeros(out_features, k_store, **bf16)[:, :k]                # (out, K) view of (out, K stored)
        x_xa = x_xa_full[:, :k] if layout == "padded" else x_xa_full[:, :k].contiguous()  # (T, K)

        def dequantize():
            if layout == "unfused":                                                 # a fresh (out, in), as before
                return dispatch.dequantize_nf4(packed, state, torch.bfloat16)
            return dispatch.dequantize_nf4(packed, state, torch.bfloat16, out=wide)  # fills wide[:, :in]

        def copy_b():
            wide[:, in_features:in_features + r] = b

        if not nf4_triton.supported(packed, state, torch.bfloat16, wide):
            raise SystemExit(f"{layout}: the Triton dequantize does not take this layout")
        if layout == "unfused":
            wide = dequantize()
        else:
            dequantize()
            copy_b()
        if not torch.equal(wide[:, :in_features], reference):
            raise SystemExit(f"{layout} {out_features}x{in_features}: the dequantize differs from the reference")
        result[layout] = {
            "dequantize": mean_ms(dequantize),
            "copy_b": mean_ms(copy_b) if layout != "unfused" else 0.0,
            "forward": mean_ms(lambda: F.linear(x_xa, wide)),                       # (T, out)
            "input_grad": mean_ms(lambda: grad_y @ wide),                           # (T, K)
            "row_stride_elements": wide.stride(0),
        }
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_nf4_wide times CUDA kernels: it needs a CUDA GPU")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": TOKENS}
    for name, *shape in SHAPES:
        result[name] = probe(*shape)
        for layout, t in result[name].items():
            print(f"{name:10s} {layout:8s}", json.dumps({k: round(v, 4) for k, v in t.items()}), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "probe_nf4_wide.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
