"""One place that decides device and dtype: cuda, then mps, then cpu; bf16 checked, not assumed."""
from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda if present, else mps, else cpu. An explicit name is validated by
    allocating on it, so a typo or a missing backend fails here, not deep inside a forward.
    Under torchrun (minift/distributed.py) it first joins the process group, and 'auto' / 'cuda'
    mean this rank's GPU, cuda:LOCAL_RANK."""
    from minift import distributed
    rank_device = distributed.init(device)
    if rank_device is not None and rank_device.type == "cuda" and str(device) in ("auto", "cuda", "None"):
        return rank_device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise RuntimeError(f"device {str(dev)!r} is not usable here: {e}") from e
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # CPU and recent MPS run bf16; older macOS MPS raises here
        (torch.ones(2, device=device, dtype=torch.bfloat16) @ torch.ones(2, device=device, dtype=torch.bfloat16)).item()
        return True
    except (RuntimeError, TypeError):
        return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 where the device runs it, else fp32. A name or torch.dtype is checked."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type != "cpu" and bf16_supported(device) else torch.float32
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))} or 'auto'")
    if resolved == torch.bfloat16 and not bf16_supported(device):
        raise ValueError(f"bfloat16 is not supported on {device}; use float32 (or float16 on old GPUs)")
    return resolved
