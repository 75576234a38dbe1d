"""More than one GPU: torchrun, data-parallel adapters, and FSDP2 for full training.

    torchrun --nproc-per-node 2 scripts/lora_qwen.py ...     # any training script, unchanged

torchrun starts one process per GPU and tells each who it is through the environment: RANK (0..N-1
over all hosts), WORLD_SIZE (N) and LOCAL_RANK (the GPU index on this host). Without those variables
everything here is a no-op and minift runs in one process, as before. With them, the first
`minift.device.pick_device` call runs `init()`: the process pins GPU LOCAL_RANK, joins the process
group (NCCL between GPUs, gloo on CPU), and quiets the INFO logs of every rank but 0.

train() then asks `prepare(model)` which of two strategies the model needs:

* "ddp", data parallel (adapters: LoRA, QLoRA, any model with frozen parameters). Every rank holds the
  whole frozen base (or its NF4 form) and the whole adapter, sees its own slice of each global
  batch, and after the step's last backward the adapters' gradients are summed across ranks by
  hand, in `sync_gradients` (one flat all-reduce). Not DistributedDataParallel, on purpose:
  - The adapter's gradients are small (0.5B, r=16: 8.8M parameters, 35 MB of fp32): the all-reduce
    takes well under a millisecond over NVLink, ~1% of a step, so DDP's bucketing and its overlap
    of communication with backward (what DDP exists for) would buy almost nothing.
  - The whole idea is then ten readable lines: flatten, all_reduce(SUM), copy back.
  - SUM and not DDP's mean: each rank already weights its loss by its tokens over the *global*
    token count (train.py Note: accumulation), so the sum is exactly the one-big-batch gradient.
    DDP divides by N, which would need the loss multiplied back by N.
  - The model stays a plain module: generate, save_adapter and the CUDA-graph step work as they do
    on one GPU, and accumulation needs no `no_sync()`: the gradients are reduced once per step.
  All ranks start from rank 0's adapter weights (`prepare` broadcasts them, as DDP would).

* "fsdp" (full SFT, continued pre-training, from scratch: every parameter trains). Parameters,
  gradients and AdamW states are sharded across ranks with FSDP2
  (`torch.distributed.fsdp.fully_shard`): each decoder layer is one group, the root (embedding,
  final norm, head) another. A parameter becomes a DTensor whose local part is this rank's rows
  (dim 0 cut in N, torch.chunk-style, the last shard shorter). Before a layer runs forward or
  backward its group is all-gathered (and the next one prefetched), after backward its gradients
  are reduce-scattered, so each rank ends the step holding 1/N of the gradient, already summed
  (FSDP2 averages; the loss is scaled by N to make that the sum, `loss_scale`). minift's AdamW updates the local shards
  (minift/optim.py works on DTensor.to_local()). Mixed precision is the one-GPU path's: no cast
  policy is set, so the parameters are gathered in the dtype they are stored in (bf16 weights with
  fp32 AdamW states for full SFT, 2 + 2 + 8 bytes per parameter, divided by N), and
  precision="bf16-autocast" still autocasts fp32 weights per op.

Checkpoints stay the one-GPU files (model.safetensors, optimizer.safetensors ... train.py Note:
checkpoint swap), saved in full: `full_tensor` gathers each sharded tensor to rank 0 on the CPU,
one at a time, and rank 0 alone writes. Loading is the reshard: every rank reads the full file and
keeps its own rows (`copy_full_into`). So a run saved on 2 ranks resumes on 1, 4 or 8, and the
files load in a plain single-GPU run. The cost is the gather (all of AdamW's states pass through
rank 0's CPU memory: 12 B per parameter), fine up to ~14B on one host; past that a sharded format
(torch.distributed.checkpoint) is the way, at the price of files that need a reshard step.
Per-rank RNG states are gathered too, so dropout masks continue exactly on resume.

Memory per GPU for both strategies: minift.memory.estimate(..., world_size=N, strategy=...).
"""
from __future__ import annotations

import atexit
import gc
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")   # "ddp": data parallel, the gradients all-reduced by hand (not the DDP class)


# ---------------------------------------------------------------------- who am I
def env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them): {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def started_by_torchrun() -> bool:
    """torchrun started this process as one of several (WORLD_SIZE > 1), joined to a group or not yet."""
    return env()[1] > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, shows progress and writes files."""
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print() on rank 0 alone: the scripts' own lines, which every rank would otherwise repeat.
    Reads torchrun's RANK, so it holds before init() has joined the group too."""
    if env()[0] == 0:
        print(*args, **kwargs)


# ---------------------------------------------------------------------- start and stop
def init(device: str | torch.device | None = "auto") -> torch.device | None:
    """Join torchrun's process group if this process was started by torchrun (WORLD_SIZE > 1);
    returns this rank's device (cuda:LOCAL_RANK, or cpu) then, else None (single process).
    Called by minift.device.pick_device; calling it again is harmless."""
    r, world, local = env()
    if world == 1:
        return None
    want_cuda = torch.cuda.is_available() and (device is None or str(device) in ("auto", "cuda")
                                               or str(device).startswith("cuda"))
    dev = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if is_distributed():
        return dev
    if want_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this host shows {torch.cuda.device_count()} GPU(s): "
                               f"--nproc-per-node must not exceed the GPUs")
        torch.cuda.set_device(dev)   # "cuda" now means this rank's GPU everywhere
    backend = "nccl" if want_cuda else "gloo"
    dist.init_process_group(backend, device_id=dev if want_cuda else None)
    if r != 0:  # one voice: only rank 0's progress lines; warnings and errors from every rank
        logging.getLogger("minift").setLevel(logging.WARNING)
    atexit.register(teardown)
    logger.info("torchrun: %d processes, %s backend, rank 0 on %s", world, backend, dev)
    return dev


def teardown() -> None:
    """Leave the process group (NCCL wants this before exit). Registered with atexit by init().
    Garbage is collected first, so that an unreferenced FSDP model and the asynchronous work it
    holds die while the group and the interpreter are alive. Gloo work freed during interpreter
    shutdown can abort the process (pytorch/pytorch PR 179291 describes it; a 2-rank CPU test once
    ended in SIGABRT at exit on torch 2.14.1)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------------- the model
def strategy_for(model: nn.Module) -> str:
    """'fsdp' when every floating-point parameter trains, 'ddp' (data parallel) when some are frozen
    (adapters over a frozen or quantized base)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    return "fsdp" if params and all(p.requires_grad for p in params) else "ddp"


def prepare(model: nn.Module) -> str | None:
    """Make `model` ready for this rank's share of training; returns the strategy (None: one process).
    Idempotent: a model already sharded (a resumed call of train()) is left as it is."""
    if not is_distributed():
        return None
    if is_sharded(model):
        return "fsdp"
    strategy = strategy_for(model)
    if strategy == "ddp":
        with torch.no_grad():  # every rank starts from rank 0's adapter (DDP does the same)
            for p in model.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, src=0)
        return strategy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # The mesh on the model's own device type: left to itself FSDP2 takes CUDA whenever CUDA is
    # present, and a gloo run on CPU tensors on a GPU machine would ask for a GPU per rank.
    device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    # One group per decoder layer: its gather and reduce overlap the neighbouring layers' compute.
    # The root group (embedding, final norm, head) is gathered at the start of forward and kept
    # until backward is done with the head (FSDP2 does not reshard the root after forward).
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers if layers is not None else []:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return strategy


def loss_scale(strategy: str | None) -> float:
    """What train() multiplies each rank's token-weighted loss by. FSDP2 averages the gradients it
    reduce-scatters (sum / N); the loss weights (n / global N) already make the *sum* right, so the
    loss is scaled by N first (exact in floating point for N a power of two). A gradient divide
    factor of 1 would say the same, but gloo cannot run the PREMUL_SUM it turns into."""
    return float(world_size()) if strategy == "fsdp" else 1.0


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def sync_gradients(params: list[torch.Tensor], strategy: str | None) -> None:
    """'ddp': sum every trainable gradient across ranks, in place. One flat buffer, one
    all_reduce: after it every rank holds the gradient of the whole global batch. (FSDP2 has
    already reduce-scattered its gradients inside backward: nothing to do.)"""
    if strategy != "ddp":
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])          # (total,) in the gradients' dtype
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across_ranks(x, device: torch.device):
    """The sum over ranks of a Python number, or of each number in a tuple (one all_reduce for all:
    each one is a round trip that waits for the GPU). The numbers themselves in one process."""
    if not is_distributed():
        return x
    many = isinstance(x, tuple)
    values = x if many else (x,)
    floating = any(isinstance(v, float) for v in values)
    t = torch.tensor(values, dtype=torch.float64 if floating else torch.int64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = tuple(t.tolist())
    return out if many else out[0]


def max_across_ranks(x: int, device: torch.device) -> int:
    """The largest of a Python int over ranks (e.g. the per-GPU peak memory)."""
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.int64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_tensor_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks (a new tensor; the same one in one process)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. clip_grad_norm_'s total norm over FSDP shards) as a plain tensor."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


# ---------------------------------------------------------------------- full tensors for checkpoints
def full_tensor(t: torch.Tensor) -> torch.Tensor | None:
    """The whole of `t` on rank 0's CPU (None on other ranks). A DTensor is gathered (every rank
    must call this, in the same order); a plain tensor (replicated) is rank 0's own copy."""
    from torch.distributed.tensor import DTensor
    if isinstance(t, DTensor):
        full = t.full_tensor()
        return full.cpu() if is_main() else None
    if not is_distributed():
        return t.detach()
    return t.detach().cpu() if is_main() else None


def copy_full_into(p: torch.Tensor, full: torch.Tensor) -> None:
    """p <- full, where p may be a DTensor shard: this rank keeps its own rows of `full` (every
    rank read the same file, so no communication is needed). This is the reshard on load."""
    from torch.distributed.tensor import DTensor
    with torch.no_grad():
        if isinstance(p, DTensor):
            p.to_local().copy_(shard_like(full, p).to_local())
        else:
            p.copy_(full)


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut the way `like` (a DTensor) is cut, as a DTensor on like's mesh; src_data_rank=None:
    each rank slices its own part, no scatter."""
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's whole state dict on rank 0's CPU ({} on other ranks; a collective),
    through PyTorch's own get_model_state_dict. Names are the plain model's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_rng_states(states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's RNG tensors as they are, plus every other rank's as "rank<r>.<name>" (on rank 0;
    other ranks get {}). Each rank draws its own dropout masks; all are needed to resume exactly."""
    if not is_distributed():
        return states
    out = dict(states) if is_main() else {}
    for name in sorted(states):
        t = states[name]
        dev = _comm_device(torch.device("cpu"))
        parts = [torch.empty_like(t, device=dev) for _ in range(world_size())]
        dist.all_gather(parts, t.to(dev))
        if is_main():
            out.update({f"rank{r}.{name}": parts[r].cpu() for r in range(1, world_size())})
    return out


def this_rank_rng(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor] | None:
    """This rank's RNG tensors from a checkpoint (rank 0: the plain names), or None when the
    checkpoint was written by fewer ranks (then the run continues, but not bit for bit)."""
    r = rank()
    if r == 0:
        return tensors
    mine = {n: tensors[f"rank{r}.{n}"] for n in names if f"rank{r}.{n}" in tensors}
    return mine if len(mine) == len(names) else None


def _comm_device(device: torch.device) -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
