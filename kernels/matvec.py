"""The decode step's matrix-vector product on CPU: y = W x + b for ONE row x.

    x (in,), W (out, in), b (out,) -> y (out,)       y[o] = sum_i W[o, i] * x[i] + b[o]

Decoding one token multiplies a single row of activations by every weight matrix of the model,
so each weight is read from memory once and used for one multiply-add per element: the step is
bound by how fast the weights stream, not by arithmetic. (Qwen2.5-0.5B in fp32 reads ~2 GB per
token; the tied 151,936 x 896 head alone is 544 MB of it.)

Two versions, one math:
  matvec_reference  F.linear(x, W, b): what nn.Linear runs (MKL's gemv in fp32, oneDNN in bf16).
  matvec_cpu        the same product written as an elementwise multiply and a row sum,
                    (W.float() * x.float()).sum(-1) + b, compiled by TorchInductor into one
                    vectorised OpenMP C++ loop over the rows. Eager PyTorch would first build
                    the whole (out, in) product in memory; the compiled loop keeps one row's
                    partial sums in registers and reads W exactly once.
kernels/dispatch.linear picks matvec_cpu only where it runs and pays (CPU, no autograd, one row,
fp32 or bf16, a weight of at least MIN_WEIGHT_BYTES); everything else gets F.linear. Only
minift.generate calls it: during its decode steps a DecodeLinear stands in for each plain
nn.Linear of the model (minift/generate.py, the Note on decode kernels), so training and
ordinary forward passes never come here.

Note: why compiling pays. scripts/bench_matvec.py measures both versions per Qwen2.5-0.5B shape
with the weights coming from memory, not cache, as in a decode step (results/cpu/bench_matvec.json;
on the 2-core EPYC: F.linear 11-13 GB/s on the q/o, gate/up and head shapes in fp32 and bf16,
matvec_cpu 24-29 GB/s, `W.sum()` 26-31 GB/s). MKL's fp32 gemv for one row runs on one thread; the
compiled loop splits the rows over both cores. The long-row down projection gains least (each row
is one long chain of vector adds; in bf16 alone it is no faster than F.linear). Small matrices
sit in cache and the call overhead dominates: hence MIN_WEIGHT_BYTES.

Note: busy machines. Each call is an OpenMP parallel region whose threads meet at a barrier, so
when another multi-threaded process holds one of the cores a call waits for a descheduled thread
and decoding can slow down several-fold. Turn the kernels off there (generate(fast_matvec=False)
or MINIFT_KERNELS=reference).

Note: numerics. Products and sums are fp32 whatever the weight dtype (a bf16 weight is widened
element by element as it is loaded), and the result is rounded to the input dtype once, after the
bias is added: the same single rounding F.linear does in bf16. The order of the fp32 additions
differs from MKL's/oneDNN's, so results agree to rounding (fp32: ~1e-6 relative), not bit for bit.

Note: compile cost. One compiled kernel per (weight shape, dtype, bias or not), kept in _KERNELS
for the life of the process; Qwen2.5-0.5B needs 6. Building them costs seconds once per process
(scripts/bench_generate.py records it as its warm-up: 4-5 s more than F.linear for the first
8 tokens), most of it importing and starting TorchInductor, and more when its on-disk cache
(/tmp/torchinductor_<user>) is empty and gcc must build every kernel. The kernels are built with torch._inductor.compile on a traced graph,
not torch.compile: torch.compile would add TorchDynamo's guard checks to every call (~30 us
here against ~10 us, and a decode step makes 169 of these calls) and, keyed on one Python
function, would hit its recompile limit (8) after 8 shapes.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.bfloat16)
MIN_WEIGHT_BYTES = 128 * 1024  # smaller matrices stay on F.linear (the first Note)

_KERNELS: dict[tuple, Callable | None] = {}  # (shape, dtype, has_bias) -> compiled kernel; None = failed


# ---------------------------------------------------------------------- the two versions
def matvec_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in), weight (out, in), bias (out,) or None -> (..., out): nn.Linear's product."""
    return F.linear(x, weight, bias)


def multiply_reduce(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The math of the compiled kernel. weight (out, in), x (in,), bias (out,) or None -> (out,).
    Run eagerly it is correct but slow: it materialises the (out, in) product first."""
    y = (weight.float() * x.float()).sum(-1)                             # (out,) fp32 accumulation
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)                                                 # one rounding


def matvec_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """matvec_reference's signature and (to rounding) result, for a single row: x (..., in) holding
    in elements, weight (out, in) contiguous, on CPU, no autograd. Falls back to F.linear if the
    kernel cannot be built (no C++ compiler, say)."""
    kernel = _kernel_for(weight, bias)
    if kernel is None:
        return matvec_reference(x, weight, bias)
    row = x.reshape(-1).contiguous()                                     # (in,)
    y = kernel(weight, row) if bias is None else kernel(weight, row, bias)  # (out,)
    return y.view(*x.shape[:-1], weight.shape[0])                        # (..., out)


# ---------------------------------------------------------------------- one kernel per shape
def _kernel_for(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable | None:
    key = (tuple(weight.shape), weight.dtype, bias is not None)
    if key not in _KERNELS:
        _KERNELS[key] = _compile(*key)
    return _KERNELS[key]


def _compile(shape: tuple[int, int], dtype: torch.dtype, has_bias: bool) -> Callable | None:
    """Trace multiply_reduce for this shape and let TorchInductor turn it into a C++ loop.
    The example inputs are uninitialised tensors of the right shape (torch.empty touches no
    memory), so the compiled kernel holds no reference to any model's weights."""
    import torch._inductor  # ~2 s to import: only when the first kernel is built
    out_features, in_features = shape
    if has_bias:
        graph = torch.fx.symbolic_trace(multiply_reduce)
    else:
        graph = torch.fx.symbolic_trace(multiply_reduce, concrete_args={"bias": None})
    try:
        # generate calls this under inference_mode; the compiler wants ordinary example tensors.
        with torch.inference_mode(False), torch.no_grad():
            examples = [torch.empty(shape, dtype=dtype), torch.empty(in_features, dtype=dtype)]
            if has_bias:
                examples.append(torch.empty(out_features, dtype=dtype))
            kernel = torch._inductor.compile(graph, examples)
    except Exception as err:  # noqa: BLE001 - any failure to build means: use F.linear
        logger.warning("could not compile the CPU matvec kernel for a %s %s weight (%s: %s); using F.linear",
                       "x".join(map(str, shape)), str(dtype).removeprefix("torch."), type(err).__name__, err)
        return None
    logger.info("compiled the CPU matvec kernel for a %s %s weight%s", "x".join(map(str, shape)),
                str(dtype).removeprefix("torch."), " + bias" if has_bias else "")
    return kernel


def compiled_shapes() -> list[tuple]:
    """The (shape, dtype, has_bias) keys compiled so far in this process (for tests and logs)."""
    return [key for key, kernel in _KERNELS.items() if kernel is not None]


# ---------------------------------------------------------------------- where it runs
def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True where matvec_cpu runs and pays: CPU tensors, nothing that autograd must record,
    a single row, fp32 or bf16 throughout, a contiguous 2-D weight of at least MIN_WEIGHT_BYTES;
    never while torch.compile traces (the compiler sees F.linear and fuses around it)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and weight.device.type == "cpu" and not needs_grad
            and x.dtype in DTYPES and weight.dtype == x.dtype
            and weight.dim() == 2 and weight.is_contiguous() and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] and x.numel() == weight.shape[1]
            and weight.numel() * weight.element_size() >= MIN_WEIGHT_BYTES
            and (bias is None or (bias.dtype == x.dtype and bias.device.type == "cpu"
                                  and bias.shape == (weight.shape[0],) and bias.is_contiguous())))
