"""q, k, v as one matmul, and gate, up as one matmul, over a frozen 16-bit base with LoRA adapters.

    with fused_projections.fused(model):        # training (minift/fast_path.py turns it on)
        loss = model(input_ids, targets)        # Attention and MLP call linear() below

Note: why fuse. q, k and v read the same input, and so do gate and up. Computed apart, each is
its own matmul, its own adapter's down-projection x @ A^T and, in backward, its own A gradient:
seven small products per layer where three would do. On Qwen2.5-0.5B the k and v outputs are
only 128 wide, too narrow to fill the H200. Measured on it (scripts/probe_fused_matmuls.py, one
layer at 4 x 1024 tokens, bf16; results/h200/probe_fused_matmuls.json): q/k/v as one matmul took
0.015 ms instead of 0.047 forward and 0.019 instead of 0.056 for the input gradient; the five
adapters' x @ A^T as two stacked products 0.030 ms instead of 0.074, their A gradients 0.039
instead of 0.094. Gate and up are wide already: fused they gained 0.01 ms on 0.5B. The whole
step (scripts/profile_step.py, fused and --unfused, same run): 33.7 ms instead of 34.4 for the
benchmark's step, and 38.5 ms instead of 42.0 (a run earlier that day) for the capstone's step
with packed rows and dropout 0.05, whose peak fell from 7.71 to 6.97 GB with one dropout mask
per group. A first version returned the group's outputs as one concatenated tensor; adding the
adapters' updates then took a pass of its own over it and the step got slower (35.0 ms,
results/h200/profile_0.5b_lora_fast-compile-graph_bf16_cat_fusion.txt); linear() below says
what changed.
litgpt and gpt-fast store q/k/v as one weight for the same reason.

Note: the adapters inside the base's matmul. When the adapters compute in the base's dtype (bf16
adapter math over a bf16 base, the fast path's default; or fp32 over fp32), a group's outputs
come from one product: [x, xa] @ [W, B]^T, where xa = dropout(x) @ A^T for the group's adapters
side by side and B holds each adapter's B * scaling on the block diagonal. x @ W^T + xa_i @ B_i^T
is then summed inside the matmul's fp32 accumulator and rounded once, instead of two bf16
products rounded apart and added. What it saves is bytes, not FLOPs (it adds some: R = sum of r
more columns of K, 32 for gate/up and 48 for q/k/v at r = 16, are 3.6% and 5.4% more work in these
products on 0.5B's K = 896, about 1% on 7B's 3,584): the adapters' (..., out) outputs are never
written, nor read back by RoPE or SwiGLU; in backward, d y @ B comes out of the base's
input-gradient product as R more columns instead of a product of its own that reads d y again.
See base_and_adapters.

What fusing does, and undoes on leaving the block:
  - the base weights of a group are copied once into one (sum of outs, in) tensor, kept as a
    non-persistent buffer of the Attention (qkv_weight, qkv_bias) or MLP (gate_up_weight), and
    each projection's weight becomes a view of its rows: no second copy of the model, and the
    checkpoint's names and files do not change. Leaving the block gives every projection back a
    weight (and bias) of its own and drops the buffer.
  - the adapters' A matrices are stacked, so x @ [A_q; A_k; A_v]^T is one product; each B stays
    its own (..., r) -> (..., out) product, scaled by its own alpha / r.
  - one dropout mask of x serves the adapters of a group. peft draws one per adapter; here each
    adapter still sees its input dropped at rate p, but q, k and v (and gate and up) see the same
    mask. The alternative, a dropped copy of x per adapter, is what the fused product avoids
    (seven copies per layer saved for backward become four).
Only frozen bases: a base being trained (full fine-tuning, or bias="all") would get its gradient
through the buffer, not through its parameter, so such a group is left unfused.

Note: NF4 groups. NF4 bases (Linear4bit, QLoRA) keep a product each: their weights are
dequantized per projection inside an operator (minift/quant.py), and on 7B's wide projections the
probe above found little to gain from one product for the group (q/k/v 0.173 ms fused against
0.186; gate/up 1.618 against 1.397 forward, slower). What they share is the adapters' side: one
dropout mask and one stacked down-projection xa for the group, and [x, xa] made once. Each
projection then computes [x, xa] @ [W, b]^T with b its own B * scaling in its r columns of R
(zeros in the others'), the dequantize writing W straight into the first columns of that
(out, in + R) matrix (quant.nf4_linear_with_adapters). On 7B, where gate and up are 18,944 wide,
this removes per layer the adapters' (..., out) updates, their adds and the backward's
d y @ B products over q, k, v, gate and up, for 48 or 32 more columns of K = 3,584. It needs the
adapters to compute in the base's compute dtype (bf16 adapter math over bf16 NF4 products, the
fast path's QLoRA); otherwise the group is left unfused.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift import quant

# (module holding the group, buffer names, the projections in output order)
GROUPS = (("self_attn", "qkv_weight", "qkv_bias", ("q_proj", "k_proj", "v_proj")),
          ("mlp", "gate_up_weight", "gate_up_bias", ("gate_proj", "up_proj")))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, projections) -> tuple:
    """Each projection's output, (..., out) apiece, from one matmul over the fused weight
    (sum of outs, in) and one stacked adapter down-projection.

    projections: the modules fused into `weight` (LoRALinear over nn.Linear, or all plain
    nn.Linear), in the order of its rows. Each adapter computes what LoRALinear.forward does:
    y + (dropout(x) @ A^T @ B^T) * scaling in the adapter's compute dtype, cast back to y's.
    Adapters computing in the base's dtype do it inside the base's matmul (Note: the adapters
    inside the base's matmul); the outputs are then views of one (..., sum of outs) tensor. In
    another dtype (fp32 adapter math over a bf16 base) each output is its own tensor, base plus
    update, so that the update is added where the output is next read (RoPE, SwiGLU), as in the
    unfused model, and not in a pass of its own over the whole (..., sum of outs) (measured on
    the H200: that pass, and its backward, cost more than the fused matmuls saved)."""
    if weight is None:                  # NF4 bases keep their own weights (Note: NF4 groups)
        return _nf4_group(x, projections)
    outs = [p.out_features for p in projections]
    if not hasattr(projections[0], "lora_A"):
        return F.linear(x, weight, bias).split(outs, dim=-1)                    # (..., out) each, views
    first = projections[0]
    cd = first.compute_dtype or first.lora_A.weight.dtype
    dropped = first.lora_dropout(x.to(cd))                                      # (..., in), one mask
    stacked_a = torch.cat([p.lora_A.weight.to(cd) for p in projections])        # (sum r, in)
    xa = F.linear(dropped, stacked_a)                                           # (..., sum r)
    if cd == weight.dtype == x.dtype:   # Note: the adapters inside the base's matmul
        b = torch.block_diag(*[p.lora_B.weight.to(cd) * p.scaling for p in projections])  # (sum out, sum r)
        return base_and_adapters(x, xa, weight, bias, b).split(outs, dim=-1)
    ys = F.linear(x, weight, bias).split(outs, dim=-1)                          # (..., out) each, views
    parts = xa.split([p.r for p in projections], dim=-1)                        # (..., r) each
    return tuple((yi + F.linear(part, p.lora_B.weight.to(cd)) * p.scaling).to(yi.dtype)   # (..., out)
                 for yi, part, p in zip(ys, parts, projections))


def fusable(projections) -> bool:
    """True when `projections` can share one matmul: frozen nn.Linear bases of one dtype and input
    size, all with unmerged adapters of one compute dtype and one dropout rate, or none with any."""
    adapted = [hasattr(p, "lora_A") for p in projections]
    if any(adapted) and not all(adapted):
        return False
    bases = [_base(p) for p in projections]
    if _is_nf4(projections):                                   # Note: NF4 groups
        return _nf4_fusable(projections, bases)
    if not all(type(b) is nn.Linear for b in bases):
        return False
    if any(t.requires_grad for b in bases for t in (b.weight, b.bias) if t is not None):
        return False
    if len({(b.weight.dtype, b.weight.device, b.in_features, b.bias is None) for b in bases}) != 1:
        return False
    if all(adapted):
        if any(p.merged for p in projections):
            return False
        if len({(p.compute_dtype, p.lora_A.weight.dtype, _dropout_p(p)) for p in projections}) != 1:
            return False
    return True


@contextlib.contextmanager
def fused(model: nn.Module, enabled: bool = True):
    """Fuse every fusable q/k/v and gate/up group of the model's layers for the block; undo after.
    Yields the number of groups fused."""
    done = fuse(model) if enabled else []
    try:
        yield len(done)
    finally:
        unfuse(done)


def fuse(model: nn.Module) -> list:
    """Fuse every fusable group now; returns what unfuse() needs to undo it (the block above is
    the usual way; a benchmark that fuses for the life of its model calls this alone)."""
    done = []
    for layer in model.model.layers:
        for owner_name, weight_name, bias_name, names in GROUPS:
            owner = getattr(layer, owner_name)
            projections = [getattr(owner, n) for n in names]
            if fusable(projections):
                _fuse(owner, weight_name, bias_name, projections)
                done.append((owner, weight_name, bias_name, projections))
    return done


def unfuse(done: list) -> None:
    for owner, weight_name, bias_name, projections in done:
        _unfuse(owner, weight_name, bias_name, projections)


def _fuse(owner: nn.Module, weight_name: str, bias_name: str, projections) -> None:
    owner.fused = True
    if _is_nf4(projections):   # NF4 groups: no buffer, each base keeps its packed weight
        return
    bases = [_base(p) for p in projections]
    weight = torch.cat([b.weight.detach() for b in bases])                      # (sum out, in)
    bias = torch.cat([b.bias.detach() for b in bases]) if bases[0].bias is not None else None
    start = 0
    for b in bases:
        stop = start + b.out_features
        b.weight = nn.Parameter(weight[start:stop], requires_grad=False)       # a view: one copy in all
        if bias is not None:
            b.bias = nn.Parameter(bias[start:stop], requires_grad=False)
        start = stop
    setattr(owner, weight_name, weight)
    setattr(owner, bias_name, bias)


def _unfuse(owner: nn.Module, weight_name: str, bias_name: str, projections) -> None:
    owner.fused = False
    if _is_nf4(projections):   # nothing was moved
        return
    for p in projections:
        b = _base(p)
        b.weight = nn.Parameter(b.weight.detach().clone(), requires_grad=False)
        if b.bias is not None:
            b.bias = nn.Parameter(b.bias.detach().clone(), requires_grad=False)
    setattr(owner, weight_name, None)
    setattr(owner, bias_name, None)


def _is_nf4(projections) -> bool:
    return all(type(_base(p)) is quant.Linear4bit for p in projections)


def _nf4_fusable(projections, bases) -> bool:
    """NF4 bases (Note: NF4 groups): all adapted, unmerged, one dropout rate, and every adapter
    computing in its base's compute dtype, so that xa enters the base's product unconverted."""
    if not all(hasattr(p, "lora_A") and not p.merged for p in projections):
        return False
    dtypes = {(p.compute_dtype or p.lora_A.weight.dtype) for p in projections} | {b.compute_dtype for b in bases}
    return (len(dtypes) == 1 and len({_dropout_p(p) for p in projections}) == 1
            and len({(b.in_features, b.weight.device) for b in bases}) == 1)


def _nf4_group(x: torch.Tensor, projections) -> tuple:
    """Each NF4 projection's output, base plus adapter update, (..., out) apiece: one dropout mask
    and one stacked down-projection for the group, then each base's product with the adapters
    inside it (quant.nf4_linear_with_adapters). See Note: NF4 groups."""
    first = projections[0]
    cd, out_dtype = _base(first).compute_dtype, x.dtype    # computed in cd, returned in x's dtype, as unfused
    x = x.to(cd)
    dropped = first.lora_dropout(x)                                             # (..., in), one mask
    stacked_a = torch.cat([p.lora_A.weight.to(cd) for p in projections])        # (R, in), R = sum r
    xa = F.linear(dropped, stacked_a)                                           # (..., R)
    x_xa = torch.cat([x, xa], dim=-1)                                           # (..., in + R), one per group
    outs, start, total_r = [], 0, xa.shape[-1]
    for p in projections:
        # this adapter's B * scaling in its own r columns of R, zeros in the others'
        b = F.pad(p.lora_B.weight.to(cd) * p.scaling, (start, total_r - start - p.r))   # (out, R)
        outs.append(quant.nf4_linear_with_adapters(x_xa, xa, _base(p), b).to(out_dtype))   # (..., out)
        start += p.r
    return tuple(outs)


def _base(p: nn.Module) -> nn.Module:
    """The frozen linear of a projection: a LoRALinear's base_layer, or the nn.Linear itself."""
    return p.base_layer if hasattr(p, "lora_A") else p


def _dropout_p(p: nn.Module) -> float:
    return p.lora_dropout.p if isinstance(p.lora_dropout, nn.Dropout) else 0.0


# The product and its input gradient are operators of their own (torch.library), as the NF4 product
# is (minift/quant.py, Note: an operator of its own): inside a compiled layer the compiler would
# otherwise see the forward's and the backward's torch.cat([weight, b]) as one value and keep it
# for the backward, a second copy of the group's weights for the whole step (measured on the H200:
# 0.5B LoRA's peak rose from 5.81 to 6.50 GB with an autograd.Function here). As operators, each
# makes its [weight, b] and drops it, and the backward keeps xa (..., R) alone.

@torch.library.custom_op("minift::base_and_adapters", mutates_args=())
def base_and_adapters(x: torch.Tensor, xa: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      b: torch.Tensor) -> torch.Tensor:
    """y = [x, xa] @ [weight, b]^T + bias: the frozen base's product and the adapters'
    up-projections as one matmul (Note: the adapters inside the base's matmul).

    x (..., in); xa (..., R): the adapters' down-projections dropout(x) @ A^T, side by side;
    weight (out, in), bias (out,) or None: frozen; b (out, R): each adapter's B * scaling on the
    block diagonal (rows of its projection, columns of its own r), zeros elsewhere.
    Its backward computes what trains: d x and d xa from one matmul over the same [weight, b]
    (base_and_adapters_grad_input), and d b = d y^T xa. It never computes the frozen weight's
    gradient, which autograd would (a second matmul as large as the forward's) if this were
    F.linear over torch.cat([weight, b], 1)."""
    wide = torch.cat([weight, b], dim=1)                                        # (out, in + R), transient
    return F.linear(torch.cat([x, xa], dim=-1), wide, bias)                     # (..., out)


@torch.library.custom_op("minift::base_and_adapters_grad_input", mutates_args=())
def base_and_adapters_grad_input(grad_y: torch.Tensor, weight: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """grad_y (..., out) -> [d x, d xa] = grad_y @ [weight, b], (..., in + R)."""
    return grad_y @ torch.cat([weight, b], dim=1)                               # (..., in + R)


@base_and_adapters.register_fake
def _(x, xa, weight, bias, b):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@base_and_adapters_grad_input.register_fake
def _(grad_y, weight, b):
    return grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1] + b.shape[1]))


def _base_and_adapters_setup(ctx, inputs, output):
    x, xa, weight, bias, b = inputs
    # the weight is the group's buffer (no new memory); b, small, is made in forward (memory.estimate counts it)
    ctx.save_for_backward(xa, weight, b)


def _base_and_adapters_backward(ctx, grad_y):
    xa, weight, b = ctx.saved_tensors
    grad_x = grad_xa = grad_b = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_x, grad_xa = base_and_adapters_grad_input(grad_y, weight, b).split(
            [weight.shape[1], b.shape[1]], dim=-1)                              # (..., in), (..., R)
    if ctx.needs_input_grad[4]:
        grad_b = grad_y.flatten(0, -2).t() @ xa.flatten(0, -2)                 # (out, R); the zeros' part is dropped by block_diag
    return grad_x, grad_xa, None, None, grad_b


base_and_adapters.register_autograd(_base_and_adapters_backward, setup_context=_base_and_adapters_setup)
