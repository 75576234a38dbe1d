"""What only a CUDA GPU can check; skipped elsewhere (with the reason), run by scripts/gpu_check.sh.

  compiled Triton kernels   scripts/check_kernels.py's accuracy checks (each kernel against its
                            PyTorch reference and a float64 truth, TOL as in test_kernels.py);
                            the CPU suite runs the same kernels only under TRITON_INTERPRET=1
  memory                    minift.memory.estimate against torch.cuda.max_memory_allocated for the
                            peak cases test_memory.py checks against the CPU allocator
                            and minift.memory_tracker (MPS's peak) against the same allocator
  capstone                  scripts/lora_qwen.py, LoRA and QLoRA, in bf16 on the GPU
CUDA graphs have their own file (test_cuda_graph.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_capstone import SCRIPT, base_and_pairs  # noqa: F401 - the fixture, reused
from test_memory import CASES, PARTIAL_CASES, TINY, bf16_lora_model, saved_for_backward

from minift import ModelConfig, measure, memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one)")


def test_compiled_triton_kernels_match_their_references(tmp_path):
    pytest.importorskip("triton")
    sections = "rmsnorm,rope,swiglu,nf4,xent"          # not copy/ce: those are timings, no kernel of ours
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "check_kernels.py"), "--out", str(tmp_path),
                           "--only", sections], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    with open(tmp_path / "check_kernels.json", encoding="utf-8") as f:
        rep = json.load(f)
    accuracy = [r for r in rep["rows"] if r["kind"] == "accuracy"]
    assert rep["failed"] == 0 and len(accuracy) >= 5, rep


# The caching allocator hands out blocks, not tensors: every request is rounded up to 512 B, and a
# cached block > 1 MiB whose rest would be <= 1 MiB (kSmallSize) is handed out whole, unsplit, and
# counted whole by max_memory_allocated (c10/cuda/CUDACachingAllocator.cpp: should_split). Which
# block a tensor lands in depends on what was freed before it, not on the model: UNTIED's foreach
# AdamW (CASES[8]) puts m and v of the embedding and of lm_head, then the step's six fp32 copies of
# them (2,048,000 B each), into one 20 MiB segment, and the tenth takes the 491,520-B rest with it
# (-1.57% against max_memory_allocated on the H200: 31,772,704 B, which
# minift.memory_tracker.CachingAllocatorReplay, fed the same step run on CPU with the Triton kernels
# interpreted, reproduces to the byte).
# So the estimate is checked against the tensors' own bytes (requested_bytes.all.peak) with the
# CPU test's tolerance, and against max_memory_allocated with the same tolerance widened below by
# one unsplit block's rest: at most kSmallSize.
K_SMALL_SIZE = 1 << 20


@pytest.mark.parametrize("kw,method,dtype,ckpt,B,T,chunk", CASES)
def test_peak_matches_the_cuda_allocator(kw, method, dtype, ckpt, B, T, chunk):
    """The CPU test's cases and tolerance (-1% .. +5%, reasons in test_memory.py), measured on the
    CUDA allocator and predicted for device="cuda" (block granularity: the comment above).

    What CUDA libraries make on first use and keep for the process (cuBLAS's workspace per thread
    and stream: 32 MiB each on Hopper, one for the forward's thread and one for autograd's backward
    thread) is not the job's and not predicted (minift/memory.py's Note): the same step runs once
    on a two-layer toy first, and run_training_steps counts what the steps add on top."""
    _check_cuda_peak(kw, method, dtype, ckpt, None, B, T, chunk)


@pytest.mark.parametrize("kw,method,dtype,ckpt_layers,B,T,chunk", PARTIAL_CASES)
def test_partial_checkpointing_peak_matches_the_cuda_allocator(kw, method, dtype, ckpt_layers, B, T, chunk):
    """test_memory.py's partial checkpointing cases, as the test above."""
    _check_cuda_peak(kw, method, dtype, True, ckpt_layers, B, T, chunk)


def _check_cuda_peak(kw, method, dtype, ckpt, ckpt_layers, B, T, chunk):
    cfg = ModelConfig(**kw)
    toy = ModelConfig(**dict(kw, num_hidden_layers=2))
    measure.run_training_steps(toy, method, 1, 16, steps=1, device="cuda", dtype=dtype, grad_ckpt=ckpt, lora_r=8,
                               loss_chunk=chunk)
    torch.cuda.empty_cache()
    m = measure.run_training_steps(cfg, method, B, T, steps=2, device="cuda", dtype=dtype, grad_ckpt=ckpt,
                                   lora_r=8, loss_chunk=chunk, ckpt_layers=ckpt_layers)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, grad_ckpt=ckpt, ckpt_layers=ckpt_layers, lora_r=8,
                          loss_chunk=chunk, device="cuda")
    what = f"{method} {dtype} ckpt={ckpt} ckpt_layers={ckpt_layers}: predicted {est.total}, peak phase {est.peak_phase}"
    assert m.peak_requested is not None, "torch.cuda.memory_stats() has no requested_bytes (torch < 2.1)"
    assert m.peak_requested <= m.peak, (m.peak_requested, m.peak)
    err = (est.total - m.peak_requested) / m.peak_requested
    assert -0.01 <= err <= 0.05, f"{what}; requested bytes {m.peak_requested} ({100 * err:+.2f}%)"
    err = (est.total - m.peak) / m.peak
    low = -0.01 - K_SMALL_SIZE / m.peak
    assert low <= err <= 0.05, \
        f"{what}; max_memory_allocated {m.peak} ({100 * err:+.2f}%, allowed from {100 * low:+.2f}%)"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_capstone_script_on_cuda(base_and_pairs, tmp_path, method):  # noqa: F811
    base, pairs, _ = base_and_pairs
    out = tmp_path / method
    proc = subprocess.run([sys.executable, SCRIPT, "--model", base, "--method", method, "--data", pairs,
                           "--steps", "2", "--seq-len", "128", "--batch-size", "2", "--device", "cuda",
                           "--dtype", "bfloat16", "--no-progress", "--out", str(out)],
                          cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "report.json", encoding="utf-8") as f:
        rep = json.load(f)
    assert rep["config"]["steps"] == 2 and rep["eval_after"]["loss"] > 0
    assert sorted(os.listdir(out / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("case", [5, 8], ids=["ckpt-layer-backward", "optimizer-step"])
def test_storage_tracker_equals_max_memory_allocated(case):
    """minift.memory_tracker (what MPS uses) against the CUDA allocator for the same two steps.
    The tracker rounds each storage up to 512 B as the caching allocator does, so it must not
    read above max_memory_allocated; it may read below by what the allocator hands out beyond the
    rounding (a block whose remainder < 1 MiB is not split and counts whole) and by workspaces a
    kernel allocates inside itself: tolerance 2%, never above. cuBLAS makes its workspace on the
    first matmul of a dtype: warmed up first, so neither measurement includes it."""
    kw, method, dtype, ckpt, B, T, chunk = CASES[case]
    for dt in (torch.float32, torch.bfloat16):
        x = torch.ones(64, 64, device="cuda", dtype=dt)
        (x @ x).sum().item()
    cfg = ModelConfig(**kw)
    run = dict(steps=2, device="cuda", dtype=dtype, grad_ckpt=ckpt, lora_r=8, loss_chunk=chunk)
    torch.cuda.empty_cache()
    cuda = measure.run_training_steps(cfg, method, B, T, **run)
    torch.cuda.empty_cache()
    tracked = measure.run_training_steps(cfg, method, B, T, how="tracker", **run)
    assert tracked.how == "storage tracker"
    above_cuda, above_tracked = cuda.peak - cuda.baseline, tracked.peak - tracked.baseline
    assert above_tracked <= above_cuda <= 1.02 * above_tracked, (above_cuda, above_tracked)


@pytest.mark.parametrize("fused", [False, True])
def test_lora_dropout_saves_what_the_estimate_says(fused):
    """CUDA's dropout keeps each adapter's dropped input and its bool mask (fused projections:
    one per q/k/v and gate/up group); estimate(lora_dropout=..., fused_projections=...) counts
    them. The storages autograd saves with dropout 0.05, less those without, against the
    estimate's difference: the same tensors, so exact."""
    cfg = ModelConfig(**TINY)
    B, T = 2, 64
    ids = torch.randint(0, 1000, (B, T), device="cuda")

    def saved_bytes(dropout):
        return saved_for_backward(bf16_lora_model(cfg, dropout, fused, device="cuda"), ids, ids.roll(-1, dims=1))

    def predicted(dropout):
        return memory.estimate(cfg, "lora", B, T, lora_r=8, lora_compute_dtype="bfloat16", lora_dropout=dropout,
                               fused_projections=fused).activations
    assert saved_bytes(0.05) - saved_bytes(0.0) == predicted(0.05) - predicted(0.0)


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_fused_adamw_on_cuda_matches_its_reference(dtype, master):
    """kernels/adamw.py against the same ops in PyTorch on the GPU, step by step from the same
    inputs (5 steps, 3M elements). fp32 results (m, v, master, an fp32 parameter) within 1e-6 of
    the largest value: a multiply-add the compiler fuses into one FMA where PyTorch's kernel
    rounds twice (or the reverse) changes the last bit of the operands (kernels/adamw.py Note).
    A bf16 parameter: identical except where that last bit moves the fp32 update across a bf16
    rounding boundary: one bf16 step at most, and in under 0.1% of the elements."""
    from minift.kernels import adamw
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 3 * 2 ** 20 + 5                                            # the last block part-masked
    p = torch.randn(n, device="cuda", generator=g).to(dtype)
    m, v = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
    w = p.float() if master else None
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    for step in range(1, 6):
        grad = torch.randn(n, device="cuda", generator=g).to(dtype)
        ref = [t.clone() if t is not None else None for t in (p, m, v, w)]
        adamw.adamw_update_triton([(p, grad, m, v, w)], step=step, **kw)
        adamw.adamw_update_reference(ref[0], grad, *ref[1:], step=step, **kw)
        for got, want in ((m, ref[1]), (v, ref[2])) + (((w, ref[3]),) if master else ()):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        if dtype == torch.float32:
            torch.testing.assert_close(p, ref[0], rtol=1e-6, atol=1e-6 * ref[0].abs().max().item())
        else:
            torch.testing.assert_close(p, ref[0], rtol=2 ** -7, atol=0)
            assert (p != ref[0]).float().mean().item() < 1e-3
        for mine, theirs in zip((p, m, v, w), ref):
            if mine is not None:
                mine.copy_(theirs)


def test_adamw_uses_the_fused_kernel_on_cuda():
    """minift.optim.AdamW (foreach, the CUDA default) hands every bf16 parameter to the kernel, in
    one launch (FUSED_MIN_NUMEL is 1); after 3 steps all sit where the loop path (foreach=False, one
    tensor at a time in PyTorch ops) puts them (tolerances as the test above)."""
    from minift import optim
    g = torch.Generator(device="cuda").manual_seed(1)
    shapes = [(2048, 1024), (1000,), (2 ** 20 + 7,)]   # a matrix, a norm-sized vector, a part-masked last block
    init = [torch.randn(s, device="cuda", generator=g).to(torch.bfloat16) for s in shapes]
    grads = [[torch.randn(s, device="cuda", generator=g).to(torch.bfloat16) for s in shapes] for _ in range(3)]
    runs = []
    for foreach in (None, False):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = optim.AdamW(params, lr=1e-3, weight_decay=0.1, master_weights=True, foreach=foreach)
        for gs in grads:
            for p, gr in zip(params, gs):
                p.grad = gr.clone()
            opt.step()
        runs.append((params, opt))
    (params, opt), (loop_params, loop_opt) = runs
    st = [opt.state[p] for p in params]
    assert [optim.uses_fused_kernel(p, p.grad, s["exp_avg"], s["exp_avg_sq"], s["master"])
            for p, s in zip(params, st)] == [True, True, True]
    assert len(next(iter(opt._fused_launches.values()))[2].launches) == 1   # one kind: one launch
    for p, q in zip(params, loop_params):
        for key in ("exp_avg", "exp_avg_sq", "master"):
            want = loop_opt.state[q][key]
            torch.testing.assert_close(opt.state[p][key], want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        torch.testing.assert_close(p.data, q.data, rtol=2 ** -7, atol=0)
