"""An exact peak of live tensor bytes on any device, without a peak counter from the allocator.

    with StorageTracker() as tracker:       # a TorchDispatchMode: it sees every op's outputs
        step()
    tracker.peak["mps"]                      # bytes above what was live before entering

MPS has no max_memory_allocated; this tracker gives the same quantity the device-independent
way. Every op's output tensors are looked at; a storage that none of the op's inputs holds is a
new allocation: its bytes are added to the running total of its device (and the peak updated),
and a weakref finalizer on the storage takes them off when autograd, the optimizer or Python
frees it. PyTorch keeps one Python object per storage while the storage lives, so the finalizer
runs exactly when the storage dies.

What it counts, and what it cannot see:
- the baseline: storages that existed before entering are not counted and their frees not seen,
  unless passed to `adopt(tensors)` (then their frees lower the total). `peak` and `current` are
  bytes above the baseline; the caller adds what it knows was live (run_training_steps adds the
  model's parameters and buffers).
- allocations inside one kernel (a scratch buffer a C++/CUDA kernel makes and frees itself, e.g.
  a fused attention kernel's workspace) never appear as an op output. The CPU test shows none on
  minift's CPU steps; a CUDA kernel's workspace would make the tracker read below
  max_memory_allocated by that workspace.
- round_to: the CUDA caching allocator hands out multiples of 512 bytes (at least 512); with
  round_to=512 each storage is counted the same way. CPU's allocator does not round (1).
torch.distributed._tools.mem_tracker.MemTracker does this too, with a per-module breakdown, but
(torch 2.13) raises when a module runs twice in one tracked region: two steps, or a checkpointed
layer's recompute.
"""
from __future__ import annotations

import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StorageTracker(TorchDispatchMode):
    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = round_to
        self.current: defaultdict[str, int] = defaultdict(int)   # device -> live bytes above the baseline
        self.peak: defaultdict[str, int] = defaultdict(int)      # device -> highest `current` seen
        self._live: dict[int, int] = {}                          # storage (C++ address) -> bytes counted

    def _bytes(self, nbytes: int) -> int:
        r = self.round_to
        return 0 if nbytes == 0 else -(-nbytes // r) * r

    def _add(self, storage, device: str, counted_in_peak: bool = True) -> None:
        key, nbytes = storage._cdata, self._bytes(storage.nbytes())
        if key in self._live:
            if self._live[key] == nbytes:
                return
            # resized in place (resize_, out= ops): count the difference, keep the one finalizer
            grow = nbytes - self._live[key]
            self._live[key] = nbytes
            self._change(device, grow)
            return
        self._live[key] = nbytes
        weakref.finalize(storage, self._free, key, device)
        if counted_in_peak:
            self._change(device, nbytes)

    def _change(self, device: str, delta: int) -> None:
        self.current[device] += delta
        if self.current[device] > self.peak[device]:
            self.peak[device] = self.current[device]

    def _free(self, key: int, device: str) -> None:
        nbytes = self._live.pop(key, 0)
        self.current[device] -= nbytes

    def adopt(self, tensors) -> int:
        """Count already-live tensors as part of the baseline: not added now, but subtracted when
        freed (the previous step's gradients that zero_grad drops, say). Returns their bytes."""
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                if st._cdata not in self._live:
                    self._add(st, t.device.type, counted_in_peak=False)
                    total += self._live[st._cdata]
        return total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                if st._cdata in inputs and st._cdata not in self._live:
                    continue              # a view of, or a write into, a storage from before: not new
                self._add(st, t.device.type)
        return out


def live_at_peak(snapshot: dict, device: int = 0, frames: int = 4) -> dict:
    """What was alive at the peak of a CUDA allocator history, by where it was allocated.

    snapshot: torch.cuda.memory._snapshot() after torch.cuda.memory._record_memory_history(), as a
    dict. Its trace lists every allocation ("alloc", the requested size) and free ("free_requested",
    then "free_completed") since recording began; replaying it gives the running total of
    requested bytes and, at its highest point, the live allocations. Those are grouped by
    (size, the `frames` innermost Python frames in minift, or in anything if none is) and listed largest first. Allocations made before
    recording began are not in the trace (the caller starts recording before building the model)."""
    trace = snapshot.get("device_traces", [])[device] if snapshot.get("device_traces") else []
    live: dict[int, tuple[int, tuple[str, ...]]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, tuple[str, ...]]] = {}
    for ev in trace:
        action, addr = ev.get("action"), ev.get("addr")
        if action == "alloc":
            py = [f for f in ev.get("frames", []) if str(f.get("filename", "")).endswith(".py")]
            ours = [f for f in py if "minift" in str(f.get("filename"))] or py    # innermost first
            where = tuple(f"{f['filename'].rsplit('/', 1)[-1]}:{f.get('line', '?')}:{f.get('name', '?')}"
                          for f in ours[:frames])
            live[addr] = (int(ev.get("size", 0)), where)
            total += live[addr][0]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_requested", "free_completed") and addr in live:
            total -= live.pop(addr)[0]
    groups: dict[tuple, list[int]] = {}
    for size, where in at_peak.values():
        groups.setdefault((size, where), []).append(size)
    rows = [{"bytes": size, "count": len(v), "frames": list(where)}
            for (size, where), v in groups.items()]
    rows.sort(key=lambda r: -r["bytes"] * r["count"])
    return {"peak_requested_bytes_in_trace": peak, "events": len(trace), "live_at_peak": rows}
