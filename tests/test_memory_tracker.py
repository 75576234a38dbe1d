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


def test_caching_allocator_replay_hands_out_an_unsplit_rest():
    """CUDA's allocator, replayed (CachingAllocatorReplay): ten 2,048,000-B fp32 tensors (foreach
    AdamW's fp32 copies of a 4000 x 128 matrix, CASES[8]) fill one 20 MiB segment;
    the tenth would leave 491,520 B (<= 1 MiB, kSmallSize) and takes it whole. Small requests are
    rounded to 512 B and split. Freeing everything merges the segment back into one block.
    Through a StorageTracker, the replay sees the same tensors the tracker counts."""
    from minift.memory_tracker import CachingAllocatorReplay
    rep = CachingAllocatorReplay()
    sizes = [rep.malloc(k, 2_048_000) for k in range(10)]
    assert sizes == [2_048_000] * 9 + [2_048_000 + 491_520] and rep.peak == 20 << 20
    assert rep.malloc("s", 100) == 512 and len(rep.segments) == 2
    for k in list(range(10)) + ["s"]:
        rep.free(k)
    assert rep.allocated == 0 and rep.free_blocks[False] == [[0, 20 << 20]]
    with StorageTracker(round_to=512, replay=CachingAllocatorReplay()) as tr:
        ts = [torch.empty(512_000) for _ in range(10)]        # 2,048,000 B each
        del ts
    assert tr.peak["cpu"] == 20_480_000 and tr.replay.peak == 20 << 20 and tr.replay.allocated == 0


def test_live_at_peak_reads_an_allocator_history():
    """live_at_peak replays a torch.cuda.memory._snapshot() trace (the dict layout of torch 2.x):
    the peak is 150 B with both allocations alive; minift's frames are kept, torch's dropped."""
    from minift.memory_tracker import live_at_peak
    def frames(line):
        return [{"filename": "/x/torch/nn/functional.py", "line": 9, "name": "linear"},
                {"filename": "/w/minift/model.py", "line": line, "name": "forward"}]
    trace = [{"action": "alloc", "addr": 1, "size": 100, "frames": frames(1)},
             {"action": "alloc", "addr": 2, "size": 50, "frames": frames(2)},
             {"action": "free_requested", "addr": 1}, {"action": "free_completed", "addr": 1},
             {"action": "alloc", "addr": 3, "size": 20, "frames": frames(3)}]
    got = live_at_peak({"device_traces": [trace]})
    assert got["peak_requested_bytes_in_trace"] == 150
    assert got["live_at_peak"] == [{"bytes": 100, "count": 1, "frames": ["model.py:1:forward"]},
                                   {"bytes": 50, "count": 1, "frames": ["model.py:2:forward"]}]
