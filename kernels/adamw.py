"""AdamW's update of many tensors in one kernel launch (minift.optim.AdamW's fused path on CUDA).

minift/optim.py writes the update as ten list operations (torch._foreach_*, in torch.optim.AdamW's
order): readable, but each one reads and writes whole fp32 tensors. For a bf16 parameter with fp32
moments that is ~90 bytes moved per element:

    p.float(), g.float()          read 2 + write 4, twice              12
    m.lerp_(g)                    read m, g, write m                    12
    v.mul_(b2); v.addcmul_(g, g)  read v, write v; read v, g, write v   20
    denom = sqrt(v); /= ; += eps  make it, then two passes over it      24
    w.addcdiv_(m, denom)          read w, m, denom, write w             16
    p.copy_(w)                    read 4, write 2                        6

The update itself needs 22: read p, g (bf16) and m, v (fp32), write p, m, v. On a memory-bound
step that is the difference: 7.6B parameters x 68 bytes is ~0.15 s of H200 bandwidth per step of
7B full fine-tuning. This kernel does the same arithmetic, element by element, in registers.

    adamw_update_reference(p, g, m, v, master, ...)        the loop path's ops on one tensor (tests)
    adamw_update_triton([(p, g, m, v, master), ...], ...)  the same update for every tensor listed

Note: one launch for many tensors. A first version launched the kernel once per tensor. For 7B that
was right (the step took 42.4 ms, at 3.95 TB/s), but Qwen2.5-0.5B has ~170 weight matrices and its
step took 14.6 ms where the bytes need ~3: each launch, with the Python around it, cost ~80 us of
host time while the GPU waited. Now one launch covers a list of tensors: a small int64 table on the
GPU holds each tensor's five addresses and its size, the program of each 1024-element block looks up
which tensor it is in (an int32 per block: 4 bytes per 1024 elements, 30 MB for 7B's 7.6B
parameters, kept with the launch) and turns that tensor's addresses into typed pointers. Its work is
then the per-tensor kernel's. (A table per 16,384-element chunk instead, each program looping over
its chunk, took the 7B step from 42.4 to 60.9 ms: one block per program is kept.) AdamWLaunch builds
the tables once for a list of tensors (they are checked then, not at every step) and is reused while
the addresses stay the same (the states never move; gradients that persist between steps, as the
CUDA graph's do, neither). When only gradients moved (a loop that sets them to None, FSDP2's
reduce-scatter) `with_gradients` checks those and rebuilds the address table alone; when anything
else moved the optimizer builds a new launch. A pointer's type is fixed when the kernel compiles, so
a launch serves one kind of tensor (the parameter's and the gradient's dtypes, with or without a
master copy): one or two launches per step in practice.

Note: numerics. Each operation is the one PyTorch runs, in the same order and in fp32: lerp as
PyTorch computes it for a weight below 0.5 (m + w * (g - m)), sqrt and the divisions rounded to
nearest (tl.sqrt_rn, tl.div_rn, as CUDA's sqrtf and '/' are by default), the scalars computed in
Python doubles and passed as fp32, as the foreach ops receive them. What can still differ is a
multiply-add the compiler fuses into one FMA (one rounding instead of two) where PyTorch's kernel
did not, or the reverse: a last-bit difference in m, v or the fp32 update, which the bf16
parameter shows only when the update lands within that bit of a rounding boundary.
tests/test_kernels.py and tests/test_on_cuda.py check it against the foreach path.
"""
from __future__ import annotations

import itertools
import math
import os

import torch


def _scalars(lr: float, weight_decay: float, beta1: float, beta2: float, step: int) -> dict:
    """The update's per-step numbers, computed as minift.optim.AdamW computes them (Python floats)."""
    return dict(decay=1 - lr * weight_decay, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                sqrt_bias_correction2=math.sqrt(1 - beta2 ** step), neg_step_size=-lr / (1 - beta1 ** step))


def adamw_update_reference(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                           master: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float,
                           beta2: float, eps: float, step: int) -> None:
    """In place: p (and master), m, v after one AdamW step at `step` (1, 2, ...). m, v, master fp32;
    p and g of any float dtype, all of one shape."""
    k = _scalars(lr, weight_decay, beta1, beta2, step)
    w = master if master is not None else (p if p.dtype == torch.float32 else p.float())
    g = g if g.dtype == torch.float32 else g.float()
    if weight_decay != 0:
        w.mul_(k["decay"])
    m.lerp_(g, k["one_minus_beta1"])
    v.mul_(k["beta2"]).addcmul_(g, g, value=k["one_minus_beta2"])
    denom = (v.sqrt() / k["sqrt_bias_correction2"]).add_(eps)
    w.addcdiv_(m, denom, value=k["neg_step_size"])
    if w is not p:
        p.copy_(w)


try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

_BLOCK = 1024      # elements per program

if triton is not None:

    @triton.jit
    def _adamw_kernel(ADDRESSES, SIZES, FIRST_BLOCK, OWNER, decay, one_minus_beta1, beta2, one_minus_beta2,
                      sqrt_bc2, eps, neg_step, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                      HAS_MASTER: tl.constexpr, DECAY: tl.constexpr, BLOCK: tl.constexpr):
        # ADDRESSES (int64): five per tensor, p, g, m, v and w (the master, or p again); SIZES and
        # FIRST_BLOCK (int64): one per tensor; OWNER (int32): one per block, the tensor it is in.
        block = tl.program_id(0)
        t = tl.load(OWNER + block)
        n = tl.load(SIZES + t)
        offs = (block - tl.load(FIRST_BLOCK + t)) * BLOCK + tl.arange(0, BLOCK)   # int64: past 2^31 elements
        mask = offs < n
        P = tl.load(ADDRESSES + 5 * t).to(tl.pointer_type(P_DTYPE))
        G = tl.load(ADDRESSES + 5 * t + 1).to(tl.pointer_type(G_DTYPE))
        M = tl.load(ADDRESSES + 5 * t + 2).to(tl.pointer_type(tl.float32))
        V = tl.load(ADDRESSES + 5 * t + 3).to(tl.pointer_type(tl.float32))
        W = tl.load(ADDRESSES + 5 * t + 4).to(tl.pointer_type(tl.float32))       # used only with a master
        if HAS_MASTER:
            w = tl.load(W + offs, mask=mask, other=0.0)
        else:
            w = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(M + offs, mask=mask, other=0.0)
        v = tl.load(V + offs, mask=mask, other=0.0)
        if DECAY:
            w = w * decay
        m = m + one_minus_beta1 * (g - m)                                 # torch.lerp, weight < 0.5
        v = v * beta2
        v = v + one_minus_beta2 * g * g                                   # addcmul
        denom = tl.div_rn(tl.sqrt_rn(v), sqrt_bc2) + eps
        w = w + neg_step * tl.div_rn(m, denom)                            # addcdiv
        tl.store(M + offs, m, mask=mask)
        tl.store(V + offs, v, mask=mask)
        if HAS_MASTER:
            tl.store(W + offs, w, mask=mask)
        tl.store(P + offs, w.to(P_DTYPE), mask=mask)                      # round to nearest into p's dtype

    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
else:
    _TL_DTYPES = {}


def supported(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, master: torch.Tensor | None) -> bool:
    """The kernel reads every tensor as one flat run of elements: contiguous, one shape and device;
    m, v (and master) fp32; p and g fp32, bf16 or fp16. Under TRITON_INTERPRET=1 only CPU tensors:
    the CPU interpreter reads the table's addresses as host memory."""
    ts = [p, g, m, v] + ([master] if master is not None else [])
    if _interpreted() and p.device.type != "cpu":
        return False
    return (triton is not None and all(t.is_contiguous() and t.shape == p.shape and t.device == p.device for t in ts)
            and all(t.dtype == torch.float32 for t in ts[2:]) and p.dtype in _TL_DTYPES and g.dtype in _TL_DTYPES)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def only_gradients_moved(before: tuple[int, ...], now: tuple[int, ...]) -> bool:
    """Whether two `addresses` of the same list of updates differ in the gradients' alone (the
    second of every five)."""
    return len(before) == len(now) and all(a == b for i, (a, b) in enumerate(zip(before, now)) if i % 5 != 1)


def addresses(updates: list[tuple]) -> tuple[int, ...]:
    """Every tensor's address in `updates`, in order (0 for a missing master): where the tensors an
    AdamWLaunch was built for are, to compare with a later step's."""
    return tuple(t.data_ptr() if t is not None else 0 for update in updates for t in update)


class AdamWLaunch:
    """The kernel's launches for one fixed list of (p, g, m, v, master) tensors (Note: one launch for
    many tensors). Checks every tensor and builds the tables once; calling it updates them all.
    Valid while the tensors stay where they were (`addresses`)."""

    def __init__(self, updates: list[tuple]):
        kinds: dict[tuple, list[int]] = {}
        for i, (p, g, m, v, master) in enumerate(updates):
            if _interpreted() and p.device.type != "cpu":
                raise ValueError(f"adamw.py: TRITON_INTERPRET=1 runs the kernel on the CPU; a tensor of shape "
                                 f"{tuple(p.shape)} is on {p.device}")
            if not supported(p, g, m, v, master):
                raise ValueError(f"adamw.py: p {tuple(p.shape)} {p.dtype}, grad {tuple(g.shape)} {g.dtype}, "
                                 f"m {m.dtype}, v {v.dtype}: need contiguous tensors of one shape, fp32 moments")
            if p.numel():
                kinds.setdefault((p.dtype, g.dtype, master is not None, p.device), []).append(i)
        # Addresses and descriptions only, no tensor: a launch kept from one step to the next must not
        # keep that step's gradients alive once the loop sets them to None (it did, for a while:
        # one gradient per parameter more at the next step's peak, caught by the CUDA allocator's
        # peak tests in tests/test_on_cuda.py).
        self.addresses = addresses(updates)
        self._grads = [(g.shape, g.dtype, g.device) for _, g, *_ in updates]   # what a moved gradient must match
        self._members = list(kinds.values())       # each launch's tensors, as indices into `updates`
        self.launches = [(kind, _tables([updates[i] for i in members], kind[-1]))
                         for kind, members in kinds.items()]

    def with_gradients(self, updates: list[tuple]) -> AdamWLaunch | None:
        """The same launch for `updates` (the list it was built for, in the same order), whose tensors
        are this launch's except the gradients, which moved (a loop that sets them to None each step,
        FSDP2's reduce-scatter): only the gradients are checked and only the address tables rebuilt
        (one small copy per kind); the block tables stay. None if anything else moved or a gradient
        no longer fits: then build a new AdamWLaunch, which checks everything."""
        now = addresses(updates)
        if not only_gradients_moved(self.addresses, now):
            return None
        for (_, grad, *_), (shape, dtype, device) in zip(updates, self._grads):
            if not (grad.is_contiguous() and grad.shape == shape and grad.dtype == dtype and grad.device == device):
                return None
        twin = object.__new__(AdamWLaunch)
        twin.addresses, twin._grads, twin._members = now, self._grads, self._members
        twin.launches = [(kind, (_address_table([updates[i] for i in members], kind[-1]), sizes, first_block, owner))
                         for members, (kind, (_, sizes, first_block, owner)) in zip(self._members, self.launches)]
        return twin

    def __call__(self, *, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float, step: int) -> None:
        k = _scalars(lr, weight_decay, beta1, beta2, step)
        for (p_dtype, g_dtype, has_master, _), (table, sizes, first_block, owner) in self.launches:
            _adamw_kernel[(owner.numel(),)](
                table, sizes, first_block, owner, k["decay"], k["one_minus_beta1"], k["beta2"],
                k["one_minus_beta2"], k["sqrt_bias_correction2"], eps, k["neg_step_size"],
                P_DTYPE=_TL_DTYPES[p_dtype], G_DTYPE=_TL_DTYPES[g_dtype], HAS_MASTER=has_master,
                DECAY=weight_decay != 0, BLOCK=_BLOCK, num_warps=4)


def _tables(group: list[tuple], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The kernel's tables for the tensors of one launch, on their device: addresses (5 per tensor),
    sizes and first blocks (one per tensor), and each block's tensor."""
    sizes = [p.numel() for p, *_ in group]
    blocks = [triton.cdiv(n, _BLOCK) for n in sizes]
    first_block = [0, *itertools.accumulate(blocks)][:-1]
    owner = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32, device=device),
                                    torch.tensor(blocks, device=device), output_size=sum(blocks))   # (blocks,)
    as_int64 = dict(dtype=torch.int64, device=device)
    return (_address_table(group, device), torch.tensor(sizes, **as_int64), torch.tensor(first_block, **as_int64),
            owner)


def _address_table(group: list[tuple], device: torch.device) -> torch.Tensor:
    """(5 x tensors,) int64: p, g, m, v and w (the master, or p again) of each tensor, in order."""
    table = [t.data_ptr() for p, g, m, v, master in group for t in (p, g, m, v, master if master is not None else p)]
    return torch.tensor(table, dtype=torch.int64, device=device)


def adamw_update_triton(updates: list[tuple], *, lr: float, weight_decay: float, beta1: float, beta2: float,
                        eps: float, step: int) -> None:
    """adamw_update_reference for every (p, g, m, v, master) in `updates`, in one launch per kind of
    tensor (an AdamWLaunch built for this call alone)."""
    AdamWLaunch(updates)(lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps, step=step)
