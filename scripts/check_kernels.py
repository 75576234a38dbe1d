"""Check and time every fast kernel against its PyTorch reference on a CUDA GPU.

    python scripts/check_kernels.py --out results/kernels            # table on stdout + check_kernels.json

For each op, on fresh random inputs at realistic shapes (4096 tokens; Qwen2.5-0.5B and -7B widths):
  accuracy   max |got - truth| / max |truth| of the Triton kernel and of the PyTorch reference,
             forward and backward, where truth is the same math in float64; pass = kernel within
             TOL[dtype] (the bound tests/test_kernels.py uses, reasons there). Where the kernel is
             meant to equal the reference bit for bit (RoPE forward, NF4 dequantize) that is checked too.
  speed      median time (triton.testing.do_bench, L2 flushed between runs), effective GB/s =
             the op's minimal bytes (every input read once + every output written once) / time,
             and that as a fraction of 4.3 TB/s and of a device-to-device copy measured in this run.
NF4 dequantize is timed beside the PyTorch reference and, if bitsandbytes imports, its
dequantize_4bit. The fused linear + cross-entropy (pure PyTorch) is timed against the chunked
reference with the Qwen2.5 vocabulary, with peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import torch
import torch.nn.functional as F

HBM_BYTES_PER_S = 4.3e12
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # see tests/test_kernels.py


def rel_err(got, truth):
    return ((got.double() - truth.double()).abs().max() / truth.double().abs().max()).item()


def bench(fn):
    """Median seconds of fn() on the GPU."""
    try:
        from triton.testing import do_bench
        ms = do_bench(fn, warmup=25, rep=200, quantiles=[0.5])
        return (ms[0] if isinstance(ms, (list, tuple)) else ms) / 1e3
    except ImportError:
        for _ in range(10):
            fn()
        times = []
        for _ in range(50):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        return sorted(times)[len(times) // 2]


class Report:
    def __init__(self):
        self.rows, self.copy_gbps = [], None

    def speed(self, op, shape, impl, seconds, nbytes, **extra):
        gbps = nbytes / seconds / 1e9 if nbytes else None
        row = dict(kind="speed", op=op, shape=shape, impl=impl, us=round(seconds * 1e6, 1),
                   GBps=None if gbps is None else round(gbps), **extra)
        if gbps is not None:
            row["of_4.3TBps"] = round(gbps * 1e9 / HBM_BYTES_PER_S, 3)
            if self.copy_gbps:
                row["of_copy"] = round(gbps / self.copy_gbps, 3)
        self.rows.append(row)
        print(f"  {op:<22} {shape:<26} {impl:<20} {row['us']:>9.1f} us  "
              + (f"{row['GBps']:>6} GB/s  {row.get('of_4.3TBps', 0):>6.1%} of 4.3 TB/s" if gbps else "")
              + "".join(f"  {k}={v}" for k, v in extra.items()), flush=True)

    def accuracy(self, op, shape, dtype, what, kernel_err, ref_err, bit_equal=None, require_bits=False):
        """bit_equal: kernel output == reference output to the bit; a failure only if require_bits."""
        tol = TOL[dtype]
        ok = kernel_err <= tol and (bit_equal or not require_bits)
        row = dict(kind="accuracy", op=op, shape=shape, dtype=str(dtype).replace("torch.", ""), what=what,
                   kernel_rel_err=kernel_err, reference_rel_err=ref_err, tol=tol, bit_equal=bit_equal, ok=ok)
        self.rows.append(row)
        print(f"  {op:<22} {shape:<26} {row['dtype']:<9} {what:<10} kernel {kernel_err:.2e}  "
              f"torch {ref_err:.2e}  tol {tol:.1e}" + ("" if bit_equal is None else f"  bit-equal {bit_equal}")
              + ("  OK" if ok else "  FAIL"), flush=True)

    def error(self, section, exc):
        self.rows.append(dict(kind="error", section=section, error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc()))
        print(f"  !! {section}: {type(exc).__name__}: {exc}", flush=True)


# --------------------------------------------------------------------------- sections


def copy_ceiling(rep: Report):
    x = torch.empty(2 * 1024 ** 3 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    rep.copy_gbps = 2 * x.numel() * 2 / t / 1e9
    rep.speed("copy", "2 GiB bf16", "torch copy_", t, 2 * x.numel() * 2)


def check_rmsnorm(rep: Report, dtype):
    from minift.kernels import rmsnorm
    for h in (896, 3584):
        N, shape = 4096, f"4096 x {h}"
        x = torch.randn(N, h, device="cuda").to(dtype).requires_grad_()
        w = (1 + 0.1 * torch.randn(h, device="cuda")).to(dtype).requires_grad_()
        dy = torch.randn(N, h, device="cuda").to(dtype)
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        y64, _ = rmsnorm.rms_norm_forward_torch(x64, w64, 1e-6)
        dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
        y, y_ref = rmsnorm.rms_norm_triton(x, w, 1e-6), rmsnorm.rms_norm_reference(x, w, 1e-6)
        g, g_ref = torch.autograd.grad(y, (x, w), dy, retain_graph=True), \
            torch.autograd.grad(y_ref, (x, w), dy, retain_graph=True)
        rep.accuracy("rmsnorm", shape, dtype, "forward", rel_err(y, y64), rel_err(y_ref, y64),
                     bit_equal=bool(torch.equal(y, y_ref)))
        rep.accuracy("rmsnorm", shape, dtype, "dx", rel_err(g[0], dx64), rel_err(g_ref[0], dx64))
        rep.accuracy("rmsnorm", shape, dtype, "dweight", rel_err(g[1], dw64), rel_err(g_ref[1], dw64))
        s = x.element_size()
        fwd_bytes = 2 * N * h * s + h * s + 4 * N
        bwd_bytes = 3 * N * h * s + h * s + 4 * N + h * s
        for impl, fn in (("triton", rmsnorm.rms_norm_triton), ("torch reference", rmsnorm.rms_norm_reference)):
            rep.speed("rmsnorm fwd", shape, impl, bench(lambda: fn(x, w, 1e-6)), fwd_bytes)
            out = fn(x, w, 1e-6)
            rep.speed("rmsnorm bwd", shape, impl,
                      bench(lambda: torch.autograd.grad(out, (x, w), dy, retain_graph=True)), bwd_bytes)


def check_rope(rep: Report, dtype):
    from minift.kernels import rope
    for nh, hd in ((14, 64), (2, 64), (28, 128), (4, 128)):
        B, T = 4, 1024
        shape = f"q/k {B}x{nh}x{T}x{hd}"
        x = torch.randn(B, T, nh, hd, device="cuda").to(dtype).transpose(1, 2).requires_grad_()  # as the model
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, hd, 2, device="cuda").float() / hd))
        pos = torch.arange(T, device="cuda").float().expand(B, T)
        emb = torch.cat([pos[..., None] * inv_freq] * 2, dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        dy = torch.randn(B, nh, T, hd, device="cuda").to(dtype)
        y64 = rope.apply_rope_reference(x.detach().double(), cos.double(), sin.double())
        dx64 = rope.rope_backward_torch(dy.double(), cos.double(), sin.double(), torch.float64)
        y, y_ref = rope.apply_rope_triton(x, cos, sin), rope.apply_rope_reference(x, cos, sin)
        (dx,), (dx_ref,) = torch.autograd.grad(y, x, dy, retain_graph=True), \
            torch.autograd.grad(y_ref, x, dy, retain_graph=True)
        rep.accuracy("rope", shape, dtype, "forward", rel_err(y, y64), rel_err(y_ref, y64),
                     bit_equal=bool(torch.equal(y, y_ref)), require_bits=True)  # rope.py Note: numerics
        rep.accuracy("rope", shape, dtype, "dx", rel_err(dx, dx64), rel_err(dx_ref, dx64))
        s = x.element_size()
        nbytes = 2 * x.numel() * s + 2 * cos.numel() * s
        for impl, fn in (("triton", rope.apply_rope_triton), ("torch reference", rope.apply_rope_reference)):
            rep.speed("rope fwd", shape, impl, bench(lambda: fn(x, cos, sin)), nbytes)
            out = fn(x, cos, sin)
            rep.speed("rope bwd", shape, impl,
                      bench(lambda: torch.autograd.grad(out, x, dy, retain_graph=True)), nbytes)


def check_swiglu(rep: Report, dtype):
    from minift.kernels import swiglu
    for f in (4864, 18944):
        N, shape = 4096, f"4096 x {f}"
        a = (2 * torch.randn(N, f, device="cuda")).to(dtype).requires_grad_()
        b = torch.randn(N, f, device="cuda").to(dtype).requires_grad_()
        dy = torch.randn(N, f, device="cuda").to(dtype)
        a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        y64 = F.silu(a64) * b64
        da64, db64 = torch.autograd.grad(y64, (a64, b64), dy.double())
        del y64
        y, y_ref = swiglu.swiglu_triton(a, b), swiglu.swiglu_reference(a, b)
        g, g_ref = torch.autograd.grad(y, (a, b), dy, retain_graph=True), \
            torch.autograd.grad(y_ref, (a, b), dy, retain_graph=True)
        rep.accuracy("swiglu", shape, dtype, "forward", rel_err(y, F.silu(a64.detach()) * b64.detach()),
                     rel_err(y_ref, F.silu(a64.detach()) * b64.detach()), bit_equal=bool(torch.equal(y, y_ref)))
        rep.accuracy("swiglu", shape, dtype, "dgate", rel_err(g[0], da64), rel_err(g_ref[0], da64))
        rep.accuracy("swiglu", shape, dtype, "dup", rel_err(g[1], db64), rel_err(g_ref[1], db64))
        del a64, b64, da64, db64
        s = a.element_size()
        for impl, fn in (("triton", swiglu.swiglu_triton), ("torch reference", swiglu.swiglu_reference)):
            rep.speed("swiglu fwd", shape, impl, bench(lambda: fn(a, b)), 3 * N * f * s)
            out = fn(a, b)
            rep.speed("swiglu bwd", shape, impl,
                      bench(lambda: torch.autograd.grad(out, (a, b), dy, retain_graph=True)), 5 * N * f * s)


def check_nf4(rep: Report):
    from minift.kernels import nf4, nf4_triton
    try:
        import bitsandbytes.functional as bnbF
    except Exception:  # noqa: BLE001 - not installed, or no CUDA build: just leave its rows out
        bnbF = None
    for rows, cols in ((18944, 3584), (4864, 896)):
        w = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        n = w.numel()
        for dq in (False, True):
            shape = f"{rows} x {cols} dq={dq}"
            packed, state = nf4.quantize(w, blocksize=64, double_quant=dq)
            for od in (torch.bfloat16, torch.float16, torch.float32):
                got = nf4_triton.dequantize_nf4_triton(packed, state, od)
                ref = nf4.dequantize(packed, state, od)
                rep.accuracy("nf4 dequantize", shape, od, "vs ref", rel_err(got, ref), 0.0,
                             bit_equal=bool(torch.equal(got, ref)), require_bits=True)
                # into the first columns of a wider tensor (minift/quant.py's [W, b]), the rest untouched
                wide = torch.full((rows, cols + 48), 7.0, device="cuda", dtype=od)
                nf4_triton.dequantize_nf4_triton(packed, state, od, out=wide)
                rep.accuracy("nf4 dequantize into [W, b]", shape, od, "vs ref", rel_err(wide[:, :cols], ref), 0.0,
                             bit_equal=bool(torch.equal(wide[:, :cols], ref) and (wide[:, cols:] == 7.0).all()),
                             require_bits=True)
            nbytes = n // 2 + (n // 64) * (1 if dq else 4) + n * 2
            rep.speed("nf4 dequantize", shape, "triton",
                      bench(lambda: nf4_triton.dequantize_nf4_triton(packed, state)), nbytes)
            rep.speed("nf4 dequantize", shape, "torch reference", bench(lambda: nf4.dequantize(packed, state)),
                      nbytes)
            if bnbF is not None:
                try:
                    q, s = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
                    out = torch.empty_like(w)
                    same = bool(torch.equal(q.view(torch.uint8).reshape(-1), packed.reshape(-1)))
                    rep.speed("nf4 dequantize", shape, "bitsandbytes",
                              bench(lambda: bnbF.dequantize_4bit(q, s, out=out)), nbytes, same_bytes_as_minift=same)
                except Exception as e:  # noqa: BLE001 - a bnb build without this op: note it, keep going
                    rep.error(f"bitsandbytes dequantize_4bit {shape}", e)


def check_fused_ce(rep: Report):
    from minift.kernels import cross_entropy, linear_cross_entropy_fused as fused
    V = 151936
    for h in (896, 3584):
        N, shape = 4096, f"4096 x {h} -> V {V}"
        hidden = torch.randn(N, h, device="cuda", dtype=torch.bfloat16) / 4
        weight = (torch.randn(V, h, device="cuda", dtype=torch.bfloat16) / h ** 0.5)
        targets = torch.randint(0, V, (N,), device="cuda")
        targets[: N // 8] = -100                                    # a masked prompt
        results = {}
        for impl, fn in (("fused (grad in fwd)", fused.linear_cross_entropy),
                         ("chunked reference", cross_entropy.linear_cross_entropy)):
            hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

            def step():
                hh.grad = ww.grad = None
                fn(hh, ww, targets, chunk_size=1024).backward()

            step()
            results[impl] = (hh.grad.clone(), ww.grad.clone())
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
            rep.speed("linear+CE fwd+bwd", shape, impl, bench(step), 0, peak_extra_GiB=round(peak, 3))
        (gh, gw), (rh, rw) = results["fused (grad in fwd)"], results["chunked reference"]
        rep.rows.append(dict(kind="agreement", op="linear+CE", shape=shape,
                             dhidden_rel_diff=rel_err(gh, rh), dweight_rel_diff=rel_err(gw, rw)))
        print(f"  fused vs chunked: dhidden rel diff {rel_err(gh, rh):.2e}, dweight {rel_err(gw, rw):.2e}")


def check_softmax_xent(rep: Report):
    """The chunk softmax (kernels/softmax_xent.py): loss per row and dlogits against float64 from the
    same bf16 logits; speed of the whole op (head matmul included, as the loss calls it) and of
    its softmax part alone (the op minus the matmul), the latter as bandwidth: 2 reads + 1 write
    of the bf16 logits is the kernel's minimum."""
    from minift.kernels import softmax_xent as xent
    V, n = 151936, 1024
    for h in (896, 3584):
        shape = f"{n} x {h} -> V {V}"
        hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16) / 4
        weight = torch.randn(V, h, device="cuda", dtype=torch.bfloat16) / h ** 0.5
        targets = torch.randint(0, V, (n,), device="cuda")
        targets[: n // 8] = -100
        scale = torch.tensor(1 / (n - n // 8), device="cuda")
        logits64 = (hidden @ weight.t()).double()
        counted, safe = targets != -100, targets.clamp(min=0)
        lse = torch.logsumexp(logits64, -1)
        loss64 = torch.where(counted, lse - logits64.gather(1, safe[:, None]).squeeze(1), 0.0)
        d64 = torch.softmax(logits64, -1)
        d64[torch.arange(n, device="cuda"), safe] -= 1.0
        d64 *= torch.where(counted, scale.double(), 0.0)[:, None]
        got = xent.softmax_xent_triton(hidden, weight, targets, scale, True)
        ref = xent.softmax_xent_reference(hidden, weight, targets, scale, True)
        rep.accuracy("softmax xent", shape, torch.float32, "loss", rel_err(got[0], loss64), rel_err(ref[0], loss64))
        rep.accuracy("softmax xent", shape, torch.bfloat16, "dlogits", rel_err(got[1], d64), rel_err(ref[1], d64))
        del logits64, d64, got, ref
        t_mm = bench(lambda: hidden @ weight.t())
        nbytes = 3 * n * V * 2
        for impl, fn in (("triton", xent.softmax_xent_triton), ("torch reference", xent.softmax_xent_reference)):
            t = bench(lambda: fn(hidden, weight, targets, scale, True))
            rep.speed("softmax xent (+matmul)", shape, impl, t, 0)
            rep.speed("softmax xent part", shape, impl, max(t - t_mm, 1e-9), nbytes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for check_kernels.json")
    ap.add_argument("--dtypes", default="bfloat16,float16,float32",
                    help="comma-separated activation dtypes for rmsnorm/rope/swiglu")
    ap.add_argument("--only", default="", help="comma-separated sections: copy,rmsnorm,rope,swiglu,nf4,xent,ce")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_kernels.py needs a CUDA GPU (the Triton kernels run only there; CPU tests: pytest)")
    os.makedirs(args.out, exist_ok=True)
    os.environ.pop("MINIFT_KERNELS", None)
    dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip()]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rep = Report()
    import triton
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    sections = [("copy", lambda: copy_ceiling(rep))]
    for dt in dtypes:
        sections += [("rmsnorm", lambda dt=dt: check_rmsnorm(rep, dt)), ("rope", lambda dt=dt: check_rope(rep, dt)),
                     ("swiglu", lambda dt=dt: check_swiglu(rep, dt))]
    sections += [("nf4", lambda: check_nf4(rep)), ("xent", lambda: check_softmax_xent(rep)),
                 ("ce", lambda: check_fused_ce(rep))]
    for name, run in sections:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        try:
            run()
        except Exception as e:  # noqa: BLE001 - record it and go on: one broken op must not hide the rest
            rep.error(name, e)
        torch.cuda.empty_cache()
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                copy_GBps=None if rep.copy_gbps is None else round(rep.copy_gbps))
    failed = [r for r in rep.rows if (r["kind"] == "accuracy" and not r["ok"]) or r["kind"] == "error"]
    with open(os.path.join(args.out, "check_kernels.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rep.rows, failed=len(failed)), fh, indent=1, default=str)
    print(f"{len(failed)} failed checks; wrote {os.path.join(args.out, 'check_kernels.json')}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
