"""minift.memory_tracker.StorageTracker: the exact peak of live tensor bytes that MPS has no
counter for, checked where the truth is known. The CUDA check (against max_memory_allocated) is
in test_on_cuda.py."""
import pytest
import torch

from minift import measure
from minift.config import ModelConfig
from minift.memory_tracker import StorageTracker
from test_memory import CASES

MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
DEVICES = ["cpu", pytest.param("mps", marks=pytest.mark.skipif(
    not MPS, reason="needs Apple's MPS backend (a Mac with Apple silicon); never run on a Mac so far"))]


@pytest.mark.parametrize("device", DEVICES)
def test_known_allocations_and_frees(device):
    """a, b live, a freed, c allocated: the peak is a + b (c is smaller than a); a view and an
    in-place op allocate nothing; an adopted tensor's free lowers the total."""
    old = torch.ones(256, device=device)                      # 1 KiB from before
    with StorageTracker() as tr:
        tr.adopt([old])
        a = torch.zeros(1000, device=device)                    # 4,000 B
        b = torch.zeros(500, dtype=torch.float16, device=device)  # 1,000 B
        a[:10].add_(1)                                          # a view, in place: nothing new
        del a
        c = torch.zeros(100, dtype=torch.float64, device=device)  # 800 B
        del old
        now = tr.current[device]
    assert tr.peak[device] == 5000
    assert now == 1000 + 800 - 1024
    del b, c


@pytest.mark.parametrize("case", [5, 8], ids=["ckpt-layer-backward", "optimizer-step"])
def test_equals_the_cpu_allocator_replay(case, two_cpu_threads):
    """The same two training steps measured by the profiler's allocator replay and by the
    tracker. Tolerance 64 B: allocations a C++ kernel makes and frees inside itself never reach
    the dispatcher (case 8 reads 12 B low: a reduction's scratch). Not checked here: the rows whose
    peak is the loss chunk or a LoRA forward, where logsumexp's kernel makes (logits - max) in fp32
    inside itself; the tracker reads those ~2-4 MB low (see minift/memory_tracker.py)."""
    kw, method, dtype, ckpt, B, T, chunk = CASES[case]
    cfg = ModelConfig(**kw)
    run = dict(steps=2, dtype=dtype, grad_ckpt=ckpt, lora_r=8, loss_chunk=chunk)
    replay = measure.run_training_steps(cfg, method, B, T, how="allocator", **run)
    tracked = measure.run_training_steps(cfg, method, B, T, how="tracker", **run)
    assert tracked.how == "storage tracker" and tracked.baseline == replay.baseline
    assert 0 <= replay.peak - tracked.peak <= 64, (replay.peak, tracked.peak)


@pytest.mark.skipif(not MPS, reason="needs Apple's MPS backend; never run on a Mac so far")
def test_mps_training_peak_is_tracked_and_near_the_estimate():
    """On MPS measure_peak uses the tracker by default; the estimate's device="mps" branch
    against it, with the CPU test's tolerance (-1% .. +5%, reasons in test_memory.py)."""
    from minift import memory
    kw, method, dtype, ckpt, B, T, chunk = CASES[5]
    cfg = ModelConfig(**kw)
    m = measure.run_training_steps(cfg, method, B, T, steps=2, device="mps", dtype=dtype, grad_ckpt=ckpt,
                                   lora_r=8, loss_chunk=chunk)
    est = memory.estimate(cfg, method, B, T, param_dtype=dtype, grad_ckpt=ckpt, lora_r=8, loss_chunk=chunk,
                          device="mps")
    assert m.how == "storage tracker"
    err = (est.total - m.peak) / m.peak
    assert -0.01 <= err <= 0.05, (est.total, m.peak, est.peak_phase)
