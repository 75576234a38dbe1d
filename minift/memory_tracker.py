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
    def __init__(self, round_to: int = 1, replay: "CachingAllocatorReplay | None" = None):
        super().__init__()
        self.round_to = round_to
        self.replay = replay          # also hand every new storage and every free to this model of CUDA's allocator
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
        if self.replay is not None:
            self.replay.malloc(key, storage.nbytes(), counted_in_peak)

    def _change(self, device: str, delta: int) -> None:
        self.current[device] += delta
        if self.current[device] > self.peak[device]:
            self.peak[device] = self.current[device]

    def _free(self, key: int, device: str) -> None:
        nbytes = self._live.pop(key, 0)
        self.current[device] -= nbytes
        if self.replay is not None:
            self.replay.free(key)

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


class CachingAllocatorReplay:
    """PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, native backend, default
    settings: no expandable segments, no max_split_size), replayed over a stream of allocations
    and frees, to see what max_memory_allocated counts beyond the tensors' bytes:

      - a request is rounded up to 512 B; <= 1 MiB (kSmallSize) goes to the small pool, else large;
      - the smallest free block of the pool that fits is taken (best fit, then lowest address);
        none: a new segment, 2 MiB (small), 20 MiB (large requests < 10 MiB) or the request
        rounded up to 2 MiB;
      - the block is split if the rest is >= 512 B (small pool) or > 1 MiB (large pool); otherwise
        it is handed out WHOLE and counted whole: a 2,048,000-B tensor can count 2,539,520 B;
      - a freed block merges with its free neighbours in the same segment.
    One stream (autograd's backward runs on the forward's stream). `allocated` and `peak` are the
    replayed memory_allocated and max_memory_allocated of the storages the replay was shown;
    blocks that exist before (a baseline) are passed with counted=False: they take their place in
    the pools but not in `peak`."""

    SMALL, SMALL_SEGMENT, LARGE_SEGMENT, ROUND_LARGE_FROM, ROUND_LARGE = 1 << 20, 2 << 20, 20 << 20, 10 << 20, 2 << 20

    def __init__(self):
        self.free_blocks = {True: [], False: []}   # small pool? -> [[address, size], ...]
        self.blocks: dict[int, tuple[int, int, bool]] = {}   # key -> (address, size, small)
        self.segments: list[tuple[int, int]] = []   # (start, end)
        self._next_address = 0
        self.allocated = self.peak = 0

    def malloc(self, key, nbytes: int, counted: bool = True) -> int:
        """Place a storage of `nbytes`; returns the block bytes it is counted as."""
        if nbytes == 0 or key in self.blocks:
            return 0
        size = max(512, -(-nbytes // 512) * 512)
        small = size <= self.SMALL
        pool = self.free_blocks[small]
        fits = [b for b in pool if b[1] >= size]
        if fits:
            block = min(fits, key=lambda b: (b[1], b[0]))
            pool.remove(block)
            address, bsize = block
        else:
            bsize = (self.SMALL_SEGMENT if small else self.LARGE_SEGMENT if size < self.ROUND_LARGE_FROM
                     else -(-size // self.ROUND_LARGE) * self.ROUND_LARGE)
            address, self._next_address = self._next_address, self._next_address + bsize
            self.segments.append((address, address + bsize))
        rest = bsize - size
        if (rest >= 512) if small else (rest > self.SMALL):
            pool.append([address + size, rest])
            bsize = size
        self.blocks[key] = (address, bsize, small)
        self.allocated += bsize
        if counted:
            self.peak = max(self.peak, self.allocated)
        return bsize

    def free(self, key) -> None:
        if key not in self.blocks:
            return
        address, size, small = self.blocks.pop(key)
        self.allocated -= size
        start, end = next((a, b) for a, b in self.segments if a <= address < b)
        pool = self.free_blocks[small]
        for block in list(pool):       # merge with the free neighbours of the same segment
            if block[0] + block[1] == address and block[0] >= start:
                pool.remove(block)
                address, size = block[0], block[1] + size
            elif address + size == block[0] and block[0] < end:
                pool.remove(block)
                size += block[1]
        pool.append([address, size])

    def reset_peak(self) -> None:
        self.peak = self.allocated


def live_at_peak(snapshot: dict, device: int = 0, frames: int = 4) -> dict:
    """What was alive at the peak of a CUDA allocator history, by where it was allocated.

    snapshot: torch.cuda.memory._snapshot() after torch.cuda.memory._record_memory_history(), as a
    dict. Its trace lists every allocation ("alloc", the requested size) and free ("free_requested",
    then "free_completed") since recording began; replaying it gives the running total of
    requested bytes and, at its highest point, the live allocations. Those are grouped by
    (size, the `frames` innermost Python frames in minift, or in anything if none is) and listed
    largest first. Allocations made before recording began are not in the trace (the caller starts
    recording before building the model)."""
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
