"""Measuring peak memory, so the formulas in minift/memory.py can be checked against reality.

    peak = measure_peak(step_fn, device)        # Peak(peak=..., baseline=..., how=...)
    m = run_training_steps(cfg, "lora", batch=4, seq=1024, steps=3, device="cuda",
                           dtype="bfloat16", grad_ckpt=True)

How each device is measured, and what the number means:
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats: the largest total of
  the blocks the caching allocator handed out. Exact; the CUDA context and the allocator's
  cached-but-free blocks are not in it (memory.py's Note). A block is the request rounded up to
  512 B, and more: a cached block > 1 MiB whose rest would be <= 1 MiB (kSmallSize) is handed out
  whole, unsplit, and counted whole (c10/cuda/CUDACachingAllocator.cpp should_split). So the
  same step also reports `requested` (memory_stats' requested_bytes.all.peak): the peak of the
  tensors' own bytes, the quantity minift/memory.py models and the other methods measure.
- CPU, how="allocator" (default): the PyTorch profiler's memory timeline records every
  allocation and free of the CPU allocator; replaying it gives the same quantity as CUDA's
  max_memory_allocated. Exact, but the profiler slows the step down: for small models only.
- CPU, how="rss": peak resident memory of the process (VmHWM, reset through
  /proc/self/clear_refs) above its resident memory before the step. What the OS sees:
  includes malloc's free-but-kept pages and fragmentation, so it reads higher than the
  allocator. Linux only. Run in a fresh process (run_training_steps does) so nothing earlier
  inflates it.
- MPS, how="tracker" (any device; MPS's default): minift.memory_tracker.StorageTracker counts
  every tensor storage created and freed under a TorchDispatchMode. Exact in live tensor bytes
  (MPS has no peak counter); equals the CPU allocator replay (tests/test_memory.py) and, with
  512-byte rounding, CUDA's max_memory_allocated (tests/test_on_cuda.py). Like the profiler it
  sees only what happens inside: the baseline is added by the caller.
- MPS, how="sampled": torch.mps.current_allocated_memory() at the points the step calls
  `sample()` (after forward, after backward, after the optimizer step): a lower bound, since a
  temporary that lives between two samples is missed.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from minift.config import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class Peak:
    peak: int          # bytes: the highest total seen (baseline included)
    baseline: int      # bytes live before the step (weights, and optimizer state if any)
    how: str           # "cuda max_memory_allocated" | "cpu allocator (profiler)" | "cpu rss" |
                       # "storage tracker" | "mps sampled"
    seconds: float = 0.0
    requested: int | None = None   # CUDA: peak of the requested (tensor) bytes, on the same scale as peak

    @property
    def above_baseline(self) -> int:
        return self.peak - self.baseline


def _call(fn, sample):
    # fn may take a `sample` callback (phase hook for MPS) or nothing
    try:
        takes = len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        takes = False
    return fn(sample) if takes else fn()


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def process_peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux VmHWM; elsewhere the
    ru_maxrss of getrusage, which macOS reports in bytes and Linux in KiB). The whole process:
    interpreter, libraries and everything allocated since start, not one step alone."""
    try:
        return _rss_kb("VmHWM") * 1024
    except (OSError, RuntimeError):
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> int:
    """Start a new peak: on Linux, reset VmHWM to the current resident size (/proc/self/clear_refs)
    and return that size in bytes, so process_peak_rss() - it is what was added since. Elsewhere
    nothing can be reset: returns the peak so far, and the difference then reads low if an
    earlier phase of the process peaked higher."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_kb("VmRSS") * 1024
    except OSError:
        return process_peak_rss()


def measure_peak(fn, device, *, how: str = "auto") -> Peak:
    """Run fn (optionally fn(sample)) once and return its peak memory (see the module docstring).

    how: "auto" picks the device's method (CUDA: max_memory_allocated, CPU: "allocator", MPS:
    "tracker"); "tracker" works on every device; CPU also "rss"; MPS also "sampled"."""
    device = torch.device(device)
    t0 = time.perf_counter()
    if how == "tracker" or (how == "auto" and device.type == "mps"):
        return _tracker_peak(fn, device, t0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        requested_before = torch.cuda.memory_stats(device).get("requested_bytes.all.current")
        torch.cuda.reset_peak_memory_stats(device)
        _call(fn, lambda: None)
        torch.cuda.synchronize(device)
        requested_peak = torch.cuda.memory_stats(device).get("requested_bytes.all.peak")
        requested = (None if requested_before is None or requested_peak is None
                     else baseline + requested_peak - requested_before)   # on peak's scale: baseline + above it
        return Peak(torch.cuda.max_memory_allocated(device), baseline, "cuda max_memory_allocated",
                    time.perf_counter() - t0, requested)
    if device.type == "mps" and how == "sampled":
        torch.mps.synchronize()
        baseline = torch.mps.current_allocated_memory()
        samples = [baseline]

        def sample():
            torch.mps.synchronize()
            samples.append(torch.mps.current_allocated_memory())
        _call(fn, sample)
        sample()
        return Peak(max(samples), baseline, "mps sampled (a lower bound: temporaries between samples are missed)",
                    time.perf_counter() - t0)
    if device.type != "cpu":
        raise ValueError(f"measure_peak: no method {how!r} for device {device}")
    if how in ("auto", "allocator"):
        return _cpu_allocator_peak(fn, t0)
    if how == "rss":
        if not os.path.exists("/proc/self/clear_refs"):
            raise RuntimeError("how='rss' needs Linux /proc (clear_refs, status)")
        baseline = reset_peak_rss()
        _call(fn, lambda: None)
        return Peak(_rss_kb("VmHWM") * 1024, baseline, "cpu rss", time.perf_counter() - t0)
    raise ValueError(f"how must be 'auto', 'allocator' or 'rss', got {how!r}")


def _tracker_peak(fn, device, t0) -> Peak:
    """StorageTracker's peak on `device` above what was live before (baseline reported as 0, as
    for the profiler: the caller adds what it knows was live)."""
    from minift.memory_tracker import StorageTracker
    with StorageTracker(round_to=512 if device.type == "cuda" else 1) as tracker:
        _call(fn, lambda: None)
    return Peak(tracker.peak[device.type], 0, "storage tracker", time.perf_counter() - t0)


def _cpu_allocator_peak(fn, t0) -> Peak:
    """Replay the profiler's allocation events: +bytes at each allocation, -bytes at each free.
    The baseline is not visible to the profiler (it only sees events), so it is reported as 0;
    callers add the bytes they know were live before (run_training_steps does)."""
    from torch._C._profiler import _ExtraFields_Allocation
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _call(fn, lambda: None)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:                          # every allocation event, wherever it sits in the op tree
        e = stack.pop()
        stack.extend(e.children)
        x = e.extra_fields
        if isinstance(x, _ExtraFields_Allocation) and x.device.type == "cpu":
            events.append((e.start_time_ns, x.alloc_size))   # + allocation, - free
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return Peak(peak, 0, "cpu allocator (profiler)", time.perf_counter() - t0)


# ====================================================================== a real training step
def build_model(cfg: ModelConfig, method: str, device, dtype, *, lora_r: int = 16,
                lora_targets="all-linear", adapter_dtype=torch.float32,
                lora_compute_dtype: torch.dtype | None = None, blocksize: int = 64,
                double_quant: bool = True, seed: int = 0, lora_dropout: float = 0.0):
    """A random-weight minift model of `cfg`, made ready for `method` (memory does not depend
    on the values). LoRA and NF4 are imported only when asked for."""
    from minift.model import Transformer
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)     # built directly in its dtype: no fp32 copy of a 7B model first
    try:
        with torch.device(device):
            model = Transformer(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype)                    # the float buffer inv_freq too, as loading with a dtype does
    if method == "qlora":
        from minift import quant
        quant.quantize_model(model, blocksize=blocksize, double_quant=double_quant)
    if method in ("lora", "qlora"):
        from minift import lora
        lora.add_lora(model, r=lora_r, alpha=2 * lora_r, dropout=lora_dropout, targets=lora_targets,
                      adapter_dtype=adapter_dtype, compute_dtype=lora_compute_dtype)
    if method == "inference":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    else:
        model.train()
    return model


def _live_bytes(model, optimizer=None) -> int:
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        for st in optimizer.state.values():
            tensors += [v for v in st.values() if torch.is_tensor(v)]
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@dataclass
class StepMeasurement:
    peak: int            # bytes, baseline included (comparable to memory.estimate(...).total)
    baseline: int        # bytes live before the first step (weights + buffers)
    how: str
    seconds: float
    loss: float
    peak_requested: int | None = None   # CUDA: the tensors' own bytes at their peak (Peak.requested), baseline in

    def as_dict(self) -> dict:
        return asdict(self)


def run_training_steps(cfg: ModelConfig, method: str, batch: int, seq: int, steps: int = 2,
                       device="cpu", dtype="bfloat16", grad_ckpt: bool = False, *, lora_r: int = 16,
                       lora_targets="all-linear", master_weights: bool = False, how: str = "auto",
                       loss_chunk: int = 1024, kv_cache_len: int | None = None,
                       foreach: bool | None = None, lora_compute_dtype: str | None = None,
                       ckpt_layers: int | None = None) -> StepMeasurement:
    """Build the model on `device`, run `steps` real forward/backward/AdamW steps (or one
    no-grad prefill for method="inference") and return the peak over all of them.

    The loop is minift's: model(ids, targets) (the chunked fused loss), loss.backward(),
    minift.optim.AdamW.step(), zero_grad(set_to_none=True). No clipping (clip_grad_norm_'s
    foreach norms add only per-parameter scalars). foreach: AdamW's (None: on for CUDA). Step 1 creates AdamW's m and v, so with
    steps >= 2 the second step's forward and backward run with them alive, as in training."""
    from minift.device import resolve_dtype
    from minift.model import KVCache
    from minift.optim import AdamW, param_groups

    device = torch.device(device)
    dt = resolve_dtype(dtype, device)
    model = build_model(cfg, method, device, dt, lora_r=lora_r, lora_targets=lora_targets,
                        lora_compute_dtype=getattr(torch, lora_compute_dtype) if lora_compute_dtype else None)
    model.gradient_checkpointing = grad_ckpt
    model.checkpoint_layers = ckpt_layers       # with grad_ckpt: the bottom layers checkpointed (None: all)
    model.loss_chunk_size = loss_chunk
    optimizer = None
    if method != "inference":
        optimizer = AdamW(param_groups(model, 0.0), lr=1e-4, master_weights=master_weights, foreach=foreach)
    gen = torch.Generator(device="cpu").manual_seed(0)
    losses = []

    def step(sample):
        for _ in range(steps if method != "inference" else 1):
            ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
            if method == "inference":
                with torch.no_grad():
                    cache = (KVCache(cfg, batch, kv_cache_len, device, dt) if kv_cache_len else None)
                    model(ids, cache=cache, logits_to_keep=1)
                sample()
                continue
            targets = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)
            loss = model(ids, targets)
            sample()
            loss.backward()
            sample()
            optimizer.step()
            sample()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            del loss, ids, targets

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    baseline = _live_bytes(model)
    p = measure_peak(step, device, how=how)
    if p.how.startswith("cpu allocator") or p.how == "storage tracker":
        # the profiler and the tracker see allocations and frees, not what was live before: add the model
        p = Peak(p.peak + baseline, baseline, p.how, p.seconds)
    elif p.how in ("cpu rss", "cuda max_memory_allocated"):
        # RSS includes the interpreter and libraries, and the CUDA allocator what the process
        # allocated before (earlier models; cuBLAS's workspace per thread and stream, 32 MiB each
        # on Hopper, made at the first matmul and kept): the increase on top of the tensor bytes
        p = Peak(p.peak - p.baseline + baseline, baseline, p.how, p.seconds,
                 None if p.requested is None else p.requested - p.baseline + baseline)
    return StepMeasurement(peak=p.peak, baseline=p.baseline, how=p.how, seconds=p.seconds,
                           loss=losses[-1] if losses else float("nan"), peak_requested=p.requested)


def run_in_subprocess(cfg: ModelConfig, method: str, batch: int, seq: int, *, timeout: float = 600,
                      **kwargs) -> StepMeasurement:
    """run_training_steps in a fresh Python process, so one measurement's cached or fragmented
    memory cannot leak into the next (and an out-of-memory kills only that process).
    Raises RuntimeError with the child's stderr tail when it fails."""
    spec = {"cfg": cfg.to_hf_dict(), "name": cfg.name_or_path, "method": method, "batch": batch, "seq": seq,
            "kwargs": kwargs}
    env = dict(os.environ)
    # glibc: serve every allocation >= 64 KiB with mmap and return it on free, so RSS follows
    # the live tensors instead of keeping freed heap pages (only matters for how="rss").
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    proc = subprocess.run([sys.executable, "-m", "minift.measure"], input=json.dumps(spec), text=True,
                          capture_output=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"measurement of {cfg.name_or_path or 'model'} {method} {batch}x{seq} failed "
                           f"(exit {proc.returncode}):\n{tail}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return StepMeasurement(**json.loads(last))


# ====================================================================== the whole job, from disk
JOB_PHASES = ("load", "quantize", "add LoRA", "train", "save")


@dataclass
class JobMeasurement:
    phases: dict         # phase -> peak bytes during it (CUDA: max_memory_allocated; CPU: process VmHWM)
    seconds: dict        # phase -> wall seconds
    peak: int            # the largest phase
    peak_phase: str
    how: str
    loss: float
    baseline: int = 0    # CPU: the process's resident size before loading (Python, torch); CUDA: 0

    def as_dict(self) -> dict:
        return asdict(self)


class _PhasePeaks:
    """Peak memory per phase: reset at the start of each, read at its end."""

    def __init__(self, device: torch.device):
        self.device, self.phases, self.seconds = device, {}, {}
        self.how = "cuda max_memory_allocated" if device.type == "cuda" else "cpu process peak rss (VmHWM)"

    def run(self, name, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.phases[name] = torch.cuda.max_memory_allocated(self.device)
        else:
            self.phases[name] = process_peak_rss()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return out


def run_job(model_dir: str, method: str, batch: int, seq: int, steps: int = 2, *, device="cuda",
            dtype="bfloat16", load: str = "float", grad_ckpt: bool = True, loss_chunk: int = 256,
            lora_r: int = 16, save_dir: str | None = None) -> JobMeasurement:
    """A user's whole job from a checkpoint on disk, each phase's peak measured on its own:
    load (load_pretrained; "nf4-stream" with quantize="nf4"; "nf4-prequantized" reads a bnb
    4-bit checkpoint), quantize (QLoRA after a float load: quant.quantize_model), add LoRA (r,
    alpha 2r, all seven projections, fp32), train (`steps` steps of minift's loop at batch x seq
    with AdamW), save (the adapter to save_dir, or a temporary directory). The optimizer is
    dropped before saving, as finetune's train() returns. Run it in a fresh process
    (run_job_in_subprocess): on CPU the numbers are the process's resident peaks."""
    import tempfile

    from minift import lora, quant
    from minift.checkpoint import load_pretrained
    from minift.device import resolve_dtype
    from minift.optim import AdamW, param_groups

    device = torch.device(device)
    dt = resolve_dtype(dtype, device)
    if device.type == "cpu":
        from minift.cpu_memory import release_freed_memory
        release_freed_memory()
    baseline = reset_peak_rss() if device.type == "cpu" else 0
    pp = _PhasePeaks(device)
    kw = {"quantize": "nf4"} if load == "nf4-stream" else {}
    model = pp.run("load", lambda: load_pretrained(model_dir, dtype=dt, device=device, **kw))
    if method == "qlora" and load == "float":
        pp.run("quantize", lambda: quant.quantize_model(model, compute_dtype=dt))
    pp.run("add LoRA", lambda: lora.add_lora(model, r=lora_r, alpha=2 * lora_r, targets="all-linear"))
    model.gradient_checkpointing = grad_ckpt
    model.loss_chunk_size = loss_chunk
    model.train()
    gen = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    losses = []

    def train():
        optimizer = AdamW(param_groups(model, 0.0), lr=1e-4)
        for _ in range(steps):
            ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
            targets = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
            loss = model(ids, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            del loss, ids, targets
    pp.run("train", train)                      # the optimizer (and its m, v) dies with train()
    with tempfile.TemporaryDirectory() as tmp:
        pp.run("save", lambda: lora.save_adapter(model, save_dir or tmp))
    peak_phase = max(pp.phases, key=pp.phases.get)
    return JobMeasurement(phases=pp.phases, seconds=pp.seconds, peak=pp.phases[peak_phase],
                          peak_phase=peak_phase, how=pp.how, loss=losses[-1], baseline=baseline)


def run_job_in_subprocess(model_dir: str, method: str, batch: int, seq: int, *, timeout: float = 900,
                          **kwargs) -> JobMeasurement:
    """run_job in a fresh Python process (nothing earlier inflates its peaks; an out-of-memory
    kills only it). Raises RuntimeError with the child's stderr tail when it fails."""
    spec = {"job": True, "model_dir": model_dir, "method": method, "batch": batch, "seq": seq, "kwargs": kwargs}
    proc = subprocess.run([sys.executable, "-m", "minift.measure"], input=json.dumps(spec), text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"job {model_dir} {method} {batch}x{seq} failed (exit {proc.returncode}):\n{tail}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return JobMeasurement(**json.loads(last))


def _child_main() -> None:
    spec = json.loads(sys.stdin.read())
    if spec.get("job"):
        m = run_job(spec["model_dir"], spec["method"], spec["batch"], spec["seq"], **spec["kwargs"])
        sys.stdout.write(json.dumps(m.as_dict()) + "\n")
        return
    cfg = ModelConfig.from_hf_dict(spec["cfg"], source="spec")
    cfg.name_or_path = spec.get("name", "")
    m = run_training_steps(cfg, spec["method"], spec["batch"], spec["seq"], **spec["kwargs"])
    sys.stdout.write(json.dumps(m.as_dict()) + "\n")


if __name__ == "__main__":
    _child_main()
