"""NF4 linear layers for QLoRA: the frozen base weight lives in 4 bits and is dequantized on the fly.

    layer = Linear4bit.from_linear(nn.Linear(...), blocksize=64, double_quant=True, compute_dtype=torch.bfloat16)
    y = layer(x)                 # dequantize (out, in) in compute_dtype -> F.linear -> dropped again
    quantize_model(model)        # every projection of every layer; embeddings, lm_head, norms untouched
    quantized_bytes(model)       # {"quantized": ..., "other": ..., "total": ...} for the memory math

The numbers and the byte layout come from minift.kernels.nf4 (read that first). This file only
wires them into an nn.Module and into bitsandbytes' state-dict layout, so that a checkpoint saved
by `bitsandbytes.nn.Linear4bit(quant_type="nf4")` loads here and ours loads there:

    <m>.weight                                  uint8 ((n + 1) // 2, 1)   packed codes
    <m>.bias                                    (out,)                     if the layer has one
    <m>.weight.absmax                           fp32 (nblocks,), or uint8 with double quantization
    <m>.weight.quant_map                        fp32 (16,)                 NF4 codebook
    <m>.weight.nested_absmax                    fp32 (ceil(nblocks/256),)  double quantization only
    <m>.weight.nested_quant_map                 fp32 (256,)                double quantization only
    <m>.weight.quant_state.bitsandbytes__nf4    uint8 bytes of JSON: quant_type, blocksize, dtype,
                                                shape[, nested_blocksize, nested_dtype, nested_offset]

Note: memory. Only the packed codes and statistics stay resident (about 0.52 bytes per weight with
double quantization). forward() materialises the (out, in) weight in compute_dtype for one
F.linear call and drops it: one layer's worth of transient memory, the price of not writing a
fused 4-bit matmul. A plain F.linear would hand that weight to autograd to keep until backward
(it needs W for dL/dx = dL/dy @ W), i.e. a full 16-bit copy of the model during QLoRA training.
The operators below keep only the packed codes and dequantize a second time in backward instead,
as bitsandbytes' MatMul4Bit does: more compute, 4x less memory for the base weights.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.kernels import dispatch, nf4

# The statistics that must stay fp32 whatever model.to(dtype) asks for (see Linear4bit._apply).
_FP32_BUFFERS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "nested_offset")


# Note: an operator of its own. The NF4 product is registered with torch.library as two
# operators, y = x @ W.T + b and its input gradient grad_y @ W, each dequantizing W inside itself.
# Eager, this is what an autograd.Function would do. Under torch.compile it is what keeps the
# memory and the speed: the compiler sees each operator as one opaque call, so it can neither
# merge the forward's and the backward's dequantize into one weight kept for the backward (the
# 16-bit copy of the model the Note above avoids: 13 GB on 7B QLoRA) nor trace the dequantize into
# its own ops (inside an operator the Triton kernel runs, at memory bandwidth). What the backward
# keeps is the packed codes and statistics, which are resident anyway. (Before this, a
# checkpointed region inside the compiled layer forced the recompute; it kept the memory but ran
# 7B QLoRA at 13,693 tok/s, results/h200/bench_7b_qlora_fast_issue11.json. With the operators:
# 16,584 tok/s at 24.95 GB, results/h200/bench_gpu.json.)

@torch.library.custom_op("minift::nf4_linear", mutates_args=())
def _nf4_linear(x: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor, absmax: torch.Tensor,
                code: torch.Tensor, offset: torch.Tensor | None, nested_absmax: torch.Tensor | None,
                nested_code: torch.Tensor | None, out_features: int, in_features: int, blocksize: int,
                nested_blocksize: int, weight_dtype: torch.dtype, compute_dtype: torch.dtype) -> torch.Tensor:
    """x (..., in) in compute_dtype -> x @ dequantize(W).T + bias, (..., out)."""
    w = dequantize_args(packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features,
                        blocksize, nested_blocksize, weight_dtype, compute_dtype=compute_dtype)  # (out, in), transient
    return F.linear(x, w, bias)                                                # (..., out)


@torch.library.custom_op("minift::nf4_linear_grad_input", mutates_args=())
def _nf4_linear_grad_input(grad_y: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                           offset: torch.Tensor | None, nested_absmax: torch.Tensor | None,
                           nested_code: torch.Tensor | None, out_features: int, in_features: int,
                           blocksize: int, nested_blocksize: int, weight_dtype: torch.dtype,
                           compute_dtype: torch.dtype) -> torch.Tensor:
    """grad_y (..., out) -> grad_y @ dequantize(W), (..., in): the backward's dequantize, again transient."""
    w = dequantize_args(packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features,
                        blocksize, nested_blocksize, weight_dtype, compute_dtype=compute_dtype)  # (out, in)
    return grad_y @ w.to(grad_y.dtype)                                         # (..., in)


def dequantize_args(packed, *state_args, compute_dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight from the operators' flat arguments (Linear4bit.op_args)."""
    return dispatch.dequantize_nf4(packed, nf4_state(*state_args), compute_dtype)


def nf4_state(absmax, code, offset, nested_absmax, nested_code, out_features: int, in_features: int,
              blocksize: int, nested_blocksize: int, weight_dtype: torch.dtype) -> nf4.NF4State:
    """The NF4State of flat arguments, in Linear4bit.op_args' order (no copies): the one place both
    Linear4bit.quant_state and the operators build it."""
    return nf4.NF4State(absmax=absmax, shape=torch.Size((out_features, in_features)), dtype=weight_dtype,
                        blocksize=blocksize, code=code, offset=offset, nested_absmax=nested_absmax,
                        nested_code=nested_code, nested_blocksize=nested_blocksize)


@_nf4_linear.register_fake
def _(x, bias, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features, blocksize,
      nested_blocksize, weight_dtype, compute_dtype):
    return x.new_empty((*x.shape[:-1], out_features))


@_nf4_linear_grad_input.register_fake
def _(grad_y, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features, blocksize,
      nested_blocksize, weight_dtype, compute_dtype):
    return grad_y.new_empty((*grad_y.shape[:-1], in_features))


def _nf4_linear_setup(ctx, inputs, output):
    # keeps the packed codes and the statistics (resident buffers), not x and not W
    ctx.state_args = inputs[2:]
    ctx.has_bias = inputs[1] is not None


def _nf4_linear_backward(ctx, grad_y):
    grad_x = _nf4_linear_grad_input(grad_y, *ctx.state_args) if ctx.needs_input_grad[0] else None
    grad_bias = None
    if ctx.has_bias and ctx.needs_input_grad[1]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)                # (out,)
    return (grad_x, grad_bias) + (None,) * len(ctx.state_args)


_nf4_linear.register_autograd(_nf4_linear_backward, setup_context=_nf4_linear_setup)


# The NF4 product with LoRA adapters inside it (minift/fused_projections.py, Note: NF4 groups):
# y = [x, xa] @ [dequantize(W), b]^T + bias, where xa (..., R) is the group's adapters'
# down-projections side by side and b (out, R) this projection's B * scaling in its own r columns
# (zeros in the others). The dequantize writes W straight into the first `in` columns of the
# (out, in + R) matrix (kernels/nf4_triton.py, out=), so the adapters cost R more columns of one
# product instead of an (..., out) update written, read back and added. Operators of their own
# for the reason in the Note above: each makes its wide weight and drops it.

def wide_weight(b: torch.Tensor, packed: torch.Tensor, *state_args, compute_dtype: torch.dtype) -> torch.Tensor:
    """[dequantize(W), b]: (out, in + R) in compute_dtype, transient."""
    state = nf4_state(*state_args)
    out_features, in_features = state.shape
    wide = torch.empty(out_features, in_features + b.shape[1], dtype=compute_dtype, device=packed.device)
    dispatch.dequantize_nf4(packed, state, compute_dtype, out=wide)      # fills wide[:, :in]
    wide[:, in_features:] = b
    return wide


@torch.library.custom_op("minift::nf4_linear_with_adapters", mutates_args=())
def _nf4_linear_with_adapters(x_xa: torch.Tensor, xa: torch.Tensor, bias: torch.Tensor | None, b: torch.Tensor,
                              packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                              offset: torch.Tensor | None, nested_absmax: torch.Tensor | None,
                              nested_code: torch.Tensor | None, out_features: int, in_features: int,
                              blocksize: int, nested_blocksize: int, weight_dtype: torch.dtype,
                              compute_dtype: torch.dtype) -> torch.Tensor:
    """x_xa (..., in + R) = [x, xa] in compute_dtype -> x @ W^T + xa @ b^T + bias, (..., out).
    xa (..., R), the same values as x_xa's last columns, is an input only so that the backward
    keeps it (for d b) without keeping x_xa."""
    wide = wide_weight(b, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features,
                       blocksize, nested_blocksize, weight_dtype, compute_dtype=compute_dtype)  # (out, in + R)
    return F.linear(x_xa, wide, bias)                                          # (..., out)


@torch.library.custom_op("minift::nf4_linear_with_adapters_grad_input", mutates_args=())
def _nf4_linear_with_adapters_grad_input(grad_y: torch.Tensor, b: torch.Tensor, packed: torch.Tensor,
                                         absmax: torch.Tensor, code: torch.Tensor, offset: torch.Tensor | None,
                                         nested_absmax: torch.Tensor | None, nested_code: torch.Tensor | None,
                                         out_features: int, in_features: int, blocksize: int,
                                         nested_blocksize: int, weight_dtype: torch.dtype,
                                         compute_dtype: torch.dtype) -> torch.Tensor:
    """grad_y (..., out) -> [d x, d xa] = grad_y @ [W, b], (..., in + R): one product for both."""
    wide = wide_weight(b, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features,
                       blocksize, nested_blocksize, weight_dtype, compute_dtype=compute_dtype)  # (out, in + R)
    return grad_y @ wide.to(grad_y.dtype)                                      # (..., in + R)


@_nf4_linear_with_adapters.register_fake
def _(x_xa, xa, bias, b, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features,
      blocksize, nested_blocksize, weight_dtype, compute_dtype):
    return x_xa.new_empty((*x_xa.shape[:-1], out_features))


@_nf4_linear_with_adapters_grad_input.register_fake
def _(grad_y, b, packed, absmax, code, offset, nested_absmax, nested_code, out_features, in_features, blocksize,
      nested_blocksize, weight_dtype, compute_dtype):
    return grad_y.new_empty((*grad_y.shape[:-1], in_features + b.shape[1]))


def _nf4_with_adapters_setup(ctx, inputs, output):
    # keeps xa (..., R) and b (out, R), both small, and the resident packed codes: not x, not W
    ctx.save_for_backward(inputs[1], inputs[3])
    ctx.state_args = inputs[4:]
    ctx.has_bias = inputs[2] is not None


def _nf4_with_adapters_backward(ctx, grad_y):
    xa, b = ctx.saved_tensors
    grad_x_xa = grad_bias = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x_xa = _nf4_linear_with_adapters_grad_input(grad_y, b, *ctx.state_args)   # (..., in + R)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)                # (out,)
    if ctx.needs_input_grad[3]:
        grad_b = grad_y.flatten(0, -2).t() @ xa.flatten(0, -2)                 # (out, R)
    # xa reaches the loss through x_xa's last columns; its own input here carries no gradient
    return (grad_x_xa, None, grad_bias, grad_b) + (None,) * len(ctx.state_args)


_nf4_linear_with_adapters.register_autograd(_nf4_with_adapters_backward, setup_context=_nf4_with_adapters_setup)


def nf4_linear_with_adapters(x_xa: torch.Tensor, xa: torch.Tensor, base: "Linear4bit", b: torch.Tensor) -> torch.Tensor:
    """base(x) plus the adapters' update, as one product: x_xa = [x, xa] (..., in + R) and b (out, R)
    in base.compute_dtype (see the comment above _nf4_linear_with_adapters); (..., out)."""
    bias = None if base.bias is None else base.bias.to(base.compute_dtype)
    return _nf4_linear_with_adapters(x_xa, xa, bias, b, *base.op_args())


class Linear4bit(nn.Module):
    """y = x @ dequantize(W).T + b with W stored as NF4 (bitsandbytes' layout, byte for byte).

    Buffers (so model.to(device) moves them): weight (uint8 packed codes), absmax, quant_map,
    nested_absmax, nested_quant_map, nested_offset (the last three None without double
    quantization). bias is a frozen nn.Parameter in compute_dtype. No float weight is kept.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, blocksize: int = 64,
                 double_quant: bool = True, compute_dtype: torch.dtype = torch.float32,
                 weight_dtype: torch.dtype | None = None, device=None):
        """An empty (all-zero) layer of the right shapes, to be filled by load_state_dict.
        Use from_linear / from_weight to quantize an existing weight."""
        super().__init__()
        nf4._check_blocksize(blocksize)
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        n = in_features * out_features
        nblocks = -(-n // blocksize)
        state = nf4.NF4State(
            absmax=torch.zeros(nblocks, dtype=torch.uint8 if double_quant else torch.float32, device=device),
            shape=torch.Size((out_features, in_features)), dtype=weight_dtype or compute_dtype,
            blocksize=blocksize, code=nf4.nf4_code(device))
        if double_quant:
            state.offset = torch.zeros((), device=device)
            state.nested_absmax = torch.zeros(-(-nblocks // nf4.NESTED_BLOCKSIZE), device=device)
            state.nested_code = nf4.dynamic_map().to(device)
        self._set_state(torch.zeros(((n + 1) // 2, 1), dtype=torch.uint8, device=device), state)
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
                     if bias else None)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, blocksize: int = 64,
                    double_quant: bool = True, compute_dtype: torch.dtype | None = None) -> "Linear4bit":
        """Quantize a float (out, in) weight. compute_dtype defaults to the weight's dtype.
        Also the way LoRA merges into a 4-bit base (peft does the same): dequantize, add B @ A *
        scaling, build a new Linear4bit from the sum; lossy, the sum is rounded to NF4 again."""
        if weight.dim() != 2:
            raise ValueError(f"Linear4bit.from_weight expects an (out, in) matrix, got shape {tuple(weight.shape)}")
        out_features, in_features = weight.shape
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
        compute_dtype = compute_dtype or weight.dtype
        packed, state = nf4.quantize(weight.detach(), blocksize=blocksize, double_quant=double_quant)
        # Build on the meta device (no allocation), then install the real tensors.
        layer = cls(in_features, out_features, bias=bias is not None, blocksize=blocksize,
                    double_quant=double_quant, compute_dtype=compute_dtype, weight_dtype=weight.dtype,
                    device="meta")
        layer._set_state(packed, state)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(compute_dtype).clone(), requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: torch.dtype | None = None) -> "Linear4bit":
        """Quantize an nn.Linear (its weight is read, not kept)."""
        return cls.from_weight(linear.weight, linear.bias, blocksize=blocksize, double_quant=double_quant,
                               compute_dtype=compute_dtype)

    @classmethod
    def from_bnb_state(cls, tensors: dict[str, torch.Tensor], prefix: str, in_features: int, out_features: int,
                       compute_dtype: torch.dtype, device=None) -> "Linear4bit":
        """A layer from the tensors bitsandbytes saved for one module (`<prefix>weight`, its
        `weight.absmax` ... `weight.quant_state.bitsandbytes__nf4`, `<prefix>bias` if any), taken
        as they are: the packed codes are never dequantized. The stored blocksize and double
        quantization are the layer's. Raises ValueError naming the key on any mismatch."""
        tensors = {k: v.to(device) for k, v in tensors.items()} if device is not None else tensors
        state = nf4.NF4State.from_bnb_dict(tensors, prefix + "weight.")
        layer = cls(in_features, out_features, bias=prefix + "bias" in tensors, blocksize=state.blocksize,
                    double_quant=state.double_quant, compute_dtype=compute_dtype, weight_dtype=state.dtype,
                    device="meta")
        missing, unexpected, errors = [], [], []
        layer._load_from_state_dict(tensors, prefix, {}, True, missing, unexpected, errors)
        problems = errors + [f"missing key {k!r}" for k in missing] + [f"unexpected key {k!r}" for k in unexpected]
        if problems:
            raise ValueError("; ".join(problems))
        return layer

    def _set_state(self, packed: torch.Tensor, state: nf4.NF4State) -> None:
        """Install packed codes and statistics as buffers (replacing any there)."""
        self.register_buffer("weight", packed)
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("quant_map", state.code)
        self.register_buffer("nested_absmax", state.nested_absmax)
        self.register_buffer("nested_quant_map", state.nested_code)
        self.register_buffer("nested_offset", state.offset)
        self.blocksize = state.blocksize
        self.nested_blocksize = state.nested_blocksize
        self.weight_dtype = state.dtype  # the dtype the weight had before quantization

    @property
    def quant_state(self) -> nf4.NF4State:
        """The NF4State view of the buffers (no copies)."""
        return nf4_state(*self.op_args()[1:-1])   # op_args less the packed codes and the compute dtype

    @property
    def double_quant(self) -> bool:
        return self.nested_offset is not None

    # -- compute ----------------------------------------------------------------------------

    def dequantize(self) -> torch.Tensor:
        """The (out, in) weight in compute_dtype (fp32 product cast once, as bnb's matmul does).
        kernels/dispatch picks the Triton kernel on CUDA, else the reference nf4.dequantize;
        both give the same bits."""
        return dispatch.dequantize_nf4(self.weight, self.quant_state, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same order as bnb.nn.Linear4bit: compute in compute_dtype, return the input's dtype.
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        y = _nf4_linear(x.to(self.compute_dtype), bias, *self.op_args())      # (..., out)
        return y.to(x.dtype)

    def op_args(self) -> tuple:
        """The packed codes, statistics and sizes as the NF4 operators take them (flat: an operator
        registered with torch.library takes tensors, numbers and dtypes, not an NF4State)."""
        return (self.weight, self.absmax, self.quant_map, self.nested_offset, self.nested_absmax,
                self.nested_quant_map, self.out_features, self.in_features, self.blocksize,
                self.nested_blocksize, self.weight_dtype, self.compute_dtype)

    def _apply(self, fn, recurse=True):
        """model.to(device) moves every buffer; model.to(dtype) / .half() must not touch the
        statistics. Note: casting absmax or the codebooks to bf16 would silently change every
        dequantized weight, so they are moved without the dtype change, and the dtype request
        goes to compute_dtype instead (as it would for an nn.Linear's weight)."""
        kept = {name: self._buffers[name] for name in _FP32_BUFFERS}
        for name in _FP32_BUFFERS:
            self._buffers[name] = None
        super()._apply(fn, recurse)                                            # weight (uint8), bias
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.weight.device))
        for name, t in kept.items():
            self._buffers[name] = None if t is None else t.to(probe.device)
        self.compute_dtype = probe.dtype
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")

    # -- bitsandbytes' state-dict layout ----------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # bnb's order: weight, bias (nn.Linear's parameters), then QuantState.as_dict(packed=True).
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()
        destination.update(self.quant_state.to_bnb_dict(prefix + "weight."))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Read bnb's layout (ours is the same). The stored blocksize and double quantization win
        over this layer's: the checkpoint says how it was quantized. Shape errors name the key."""
        ours = [k for k in state_dict if k.startswith(prefix)]  # a Linear4bit has no children
        required = ["weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"]
        if self.bias is not None:
            required.append("bias")
        missing = [prefix + r for r in required if prefix + r not in state_dict]
        if missing:
            if prefix + "weight" in state_dict and prefix + "weight.quant_state.bitsandbytes__nf4" not in state_dict:
                w = state_dict[prefix + "weight"]
                error_msgs.append(f"{prefix}weight: found a {w.dtype} tensor of shape {tuple(w.shape)} but no "
                                  f"{prefix}weight.quant_state.bitsandbytes__nf4; this layer loads NF4 checkpoints "
                                  f"(quantize a float checkpoint with Linear4bit.from_weight instead)")
            missing_keys.extend(missing)
            return
        device = self.weight.device if not self.weight.is_meta else state_dict[prefix + "weight"].device
        try:
            state = nf4.NF4State.from_bnb_dict(state_dict, prefix + "weight.", device=device)
        except (KeyError, ValueError) as e:
            error_msgs.append(str(e.args[0]) if e.args else repr(e))
            return
        errors = []
        if tuple(state.shape) != (self.out_features, self.in_features):
            errors.append(f"size mismatch for {prefix}weight.quant_state.bitsandbytes__nf4: shape {list(state.shape)} "
                          f"in the checkpoint, [{self.out_features}, {self.in_features}] in the model")
        packed = state_dict[prefix + "weight"]
        if packed.dtype != torch.uint8:  # bnb's quant_storage option stores the same bytes as another dtype
            packed = packed.contiguous().view(torch.uint8).reshape(-1, 1)
        want = ((self.out_features * self.in_features + 1) // 2, 1)
        if tuple(packed.shape) != want:
            errors.append(f"size mismatch for {prefix}weight: packed NF4 codes of shape {tuple(packed.shape)} "
                          f"in the checkpoint, {want} expected for a ({self.out_features}, {self.in_features}) weight")
        bias = state_dict.get(prefix + "bias")
        if bias is not None and self.bias is not None and bias.shape != self.bias.shape:
            errors.append(f"size mismatch for {prefix}bias: {tuple(bias.shape)} in the checkpoint, "
                          f"{tuple(self.bias.shape)} in the model")
        consumed = {prefix + k for k in ("weight", "weight.absmax", "weight.quant_map",
                                         "weight.quant_state.bitsandbytes__nf4")}
        if state.double_quant:
            consumed |= {prefix + "weight.nested_absmax", prefix + "weight.nested_quant_map"}
        if self.bias is not None:
            consumed.add(prefix + "bias")
        if strict:
            unexpected_keys.extend(k for k in ours if k not in consumed)
        if errors:
            error_msgs.extend(errors)
            return
        self._set_state(packed.to(device).clone(), state)
        if self.bias is not None:
            if self.bias.is_meta:
                self.bias = nn.Parameter(bias.to(device=device, dtype=self.compute_dtype), requires_grad=False)
            else:
                with torch.no_grad():
                    self.bias.copy_(bias)


# ----------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------

def _matches(name: str, targets) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list entry matches the
    name exactly or its last dotted part(s)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def quantize_model(model: nn.Module, blocksize: int = 64, double_quant: bool = True,
                   compute_dtype: torch.dtype | None = None, targets=None) -> nn.Module:
    """Swap nn.Linear projections for Linear4bit in place and return the model.

    targets: None = every nn.Linear except the output head (a module named lm_head, or one whose
    weight is an embedding's); or a list of names / name suffixes ("q_proj", "mlp.down_proj");
    or a regex that must match the full module name. Embeddings, norms and the head stay as they
    are. Layers are quantized one at a time and the float weight is released right after, so the
    peak is the model plus one layer, not two models. (minift.load_pretrained(quantize="nf4")
    does the same while reading the checkpoint, so the float model never exists at all.)"""
    for name in projection_names(model, targets):
        linear = model.get_submodule(name)
        replace_module(model, name, Linear4bit.from_linear(linear, blocksize=blocksize, double_quant=double_quant,
                                                           compute_dtype=compute_dtype))
        del linear  # last reference: the float weight is freed here, before the next layer
    return model


def projection_names(model: nn.Module, targets=None) -> list[str]:
    """The nn.Linear modules quantize_model turns into Linear4bit (see its `targets`). Works on a
    model built on the meta device, which is how load_pretrained plans a quantized load."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        is_head = name.split(".")[-1] == "lm_head" or id(module.weight) in embedding_weights
        if targets is None:
            if not is_head:
                names.append(name)
        elif _matches(name, targets):
            if id(module.weight) in embedding_weights:
                raise ValueError(f"{name}: its weight is tied to the input embedding; quantizing it would "
                                 f"untie (and quantize) the embedding too")
            names.append(name)
    if not names:
        raise ValueError(f"quantize_model: no nn.Linear matched targets={targets!r}")
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """model.<name> = new (name dotted, e.g. 'model.layers.0.mlp.up_proj')."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantized_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model's tensors (each counted once, so a tied head is not doubled):
    quantized   = what Linear4bit layers store (codes + statistics + codebooks + bias)
    other       = everything else (embeddings, norms, head, unquantized layers, buffers)
    n_quantized = how many weights are stored in 4 bits."""
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for t in tensors:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    quantized = n_quantized = 0
    for m in model.modules():
        if isinstance(m, Linear4bit):
            quantized += size(list(m.buffers(recurse=False)) + list(m.parameters(recurse=False)))
            n_quantized += m.in_features * m.out_features
    other = size(list(model.parameters()) + list(model.buffers()))
    return {"quantized": quantized, "other": other, "total": quantized + other, "n_quantized": n_quantized}
