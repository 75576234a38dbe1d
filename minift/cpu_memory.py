"""Make a CPU training process give freed tensor memory back to the OS (glibc malloc).

    from minift.cpu_memory import release_freed_memory
    release_freed_memory()      # once, before the model is loaded; a no-op where it cannot apply

Why: PyTorch's CPU allocator is plain malloc. glibc serves a request from the heap unless it is
larger than the mmap threshold, and that threshold *grows* each time a larger mmap'ed block is
freed (up to 32 MiB on 64-bit). A training step allocates and frees thousands of activations of
1-30 MB (on Qwen2.5-0.5B at 2 x 512 tokens: (1024, 896) fp32 = 3.7 MB, (1024, 4864) fp32 =
20 MB); after the first few frees they all come from the heap, and freed heap memory stays in
the process (only the top of the heap is ever trimmed), split across per-thread arenas and
fragmented. The process's resident memory then grows to 2-3x the live tensors (the issue's 0.5B
LoRA run: 5.8 GB of tensors at the peak, 12.8 GB resident).

The mend, measured by scripts/memory_check.py --from-disk on CPU: a fixed mmap threshold of
64 KiB (mallopt(M_MMAP_THRESHOLD), which also turns the growth off), so every tensor above it is
its own mapping and is unmapped when freed, and malloc_trim(0) after large frees (the loading
phase). Small objects (Python's, below 64 KiB) still come from the heap, where they belong.
The cost is a page fault per 4 KiB of each new large tensor, a few percent of a CPU step.

The environment variable MALLOC_MMAP_THRESHOLD_=65536 does the same for a whole process if set
before it starts (minift.measure's subprocesses set it); this is the in-process form for recipes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3          # glibc malloc.h
MMAP_THRESHOLD_BYTES = 64 * 1024


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl and other libcs have no mallopt/malloc_trim: nothing to tune there
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_freed_memory(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes (see the module docstring) and trim the
    heap now. Returns True if glibc took the setting, False where there is no glibc (macOS,
    Windows, musl): there the OS allocator is left as it is."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    libc.malloc_trim(0)
    if not ok:
        logger.warning("mallopt(M_MMAP_THRESHOLD, %d) was refused: freed CPU tensors may stay resident", threshold)
    return ok


def trim() -> None:
    """Hand the free memory at the top of malloc's heaps back to the OS (after a large free)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
