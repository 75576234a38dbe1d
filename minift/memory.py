"""Memory math for training and inference, component by component, the way minift really runs.

    est = memory.estimate(cfg, "lora", batch=4, seq=1024, grad_ckpt=True)
    est.total            # bytes: the peak, i.e. the largest of the phases below
    print(est.table())   # every component, every phase, with the formula's parts

Why a peak and not a sum: memory is not all alive at once. Gradients do not exist during the
forward pass (the training loop frees them with zero_grad(set_to_none=True)); activations are
freed layer by layer as backward walks down; the loss's logits live one chunk at a time. So the
estimate walks the training step as a sequence of *phases* and sums what is alive in each:

    forward      persistent + saved activations + the loss: minift's fused loss computes the
                 gradients of the head inside forward, so one (chunk x vocab) fp32 block, d hidden
                 and (full fine-tuning) d lm_head are alive here -- for most shapes the peak
    top layer    the last layer's forward temporaries (LoRA's fp32 update of up_proj, NF4 dequantize)
    layer bwd    persistent + what is still saved + one layer's backward temporaries + gradients so far
                 (with checkpointing: the layer inputs + ONE layer recomputed, and its re-forward)
    embed bwd    persistent + all gradients + the embedding's dense gradient (full fine-tuning)
    optim step   persistent + all gradients + AdamW's fp32 temporaries (foreach on CUDA: a whole
                 param group at once, 12 B per bf16 parameter)

"persistent" = weights + optimizer states (+ fp32 master weights): they live the whole step.
The numbers follow what autograd saves in minift's model (minift/model.py), checked tensor by
tensor on CPU (tests/test_memory.py records every saved tensor with saved_tensors_hooks and
compares storages), and what minift's AdamW (minift/optim.py) allocates. Units are bytes; GB
in tables means 1e9 bytes, the unit torch.cuda.max_memory_allocated is usually quoted in.

Symbols used in comments: B batch, T seq, n = B*T tokens, h hidden, f intermediate, V vocab,
qd = heads*head_dim, kd = kv_heads*head_dim, s = bytes per parameter element (2 for bf16),
a = bytes per adapter element (4 for fp32 adapters), c = loss chunk (tokens), L layers.

Note: what this does NOT count. (1) The CUDA context and kernels (~0.5-1.5 GB of device memory
outside the caching allocator: nvidia-smi shows it, torch.cuda.max_memory_allocated does not).
(2) The caching allocator's reserved-but-free blocks (fragmentation): memory_reserved() is higher.
(3) cuBLAS/cuBLASLt workspaces (tens of MiB). (4) Kernel-internal scratch, e.g. flash-attention
backward's fp32 dq accumulator (4*n*qd bytes, transient, below the MLP's transients here).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from minift.config import ModelConfig

METHODS = ("scratch", "cpt", "full", "lora", "qlora", "inference")
TRAIN_BASE = ("scratch", "cpt", "full")          # every weight trains
ADAPTER = ("lora", "qlora")                      # base frozen, adapter trains
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GB = 1e9


def _bytes_of(dtype: str, what: str) -> int:
    key = str(dtype).replace("torch.", "")
    if key not in DTYPE_BYTES:
        raise ValueError(f"{what}={dtype!r}: unknown dtype; use one of {', '.join(sorted(DTYPE_BYTES))}")
    return DTYPE_BYTES[key]


def resolve_targets(lora_targets) -> tuple[str, ...]:
    """'all-linear' -> the seven projections; a list of names -> those (checked)."""
    if lora_targets == "all-linear":
        return PROJECTIONS
    names = [lora_targets] if isinstance(lora_targets, str) else list(lora_targets)
    leaves = tuple(n.rsplit(".", 1)[-1] for n in names)
    bad = [n for n in leaves if n not in PROJECTIONS]
    if bad or not leaves:
        raise ValueError(f"lora_targets {lora_targets!r}: the memory math knows the projections "
                         f"{', '.join(PROJECTIONS)} (or 'all-linear'); got {bad or 'nothing'}")
    return tuple(p for p in PROJECTIONS if p in leaves)


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (h, qd), "k_proj": (h, kd), "v_proj": (h, kd), "o_proj": (qd, h),
            "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}


def _biases(cfg: ModelConfig) -> dict[str, int]:
    h, f = cfg.hidden_size, cfg.intermediate_size
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": qd * cfg.qkv_bias, "k_proj": kd * cfg.qkv_bias, "v_proj": kd * cfg.qkv_bias,
            "o_proj": h * cfg.o_bias, "gate_proj": f * cfg.mlp_bias, "up_proj": f * cfg.mlp_bias,
            "down_proj": h * cfg.mlp_bias}


def lora_param_count(cfg: ModelConfig, r: int = 16, lora_targets="all-linear") -> int:
    """r * (in + out) per adapted projection per layer (lora_A is (r, in), lora_B is (out, r))."""
    shapes = _shapes(cfg)
    return cfg.num_hidden_layers * sum(r * (shapes[p][0] + shapes[p][1]) for p in resolve_targets(lora_targets))


def nf4_bytes(numel: int, blocksize: int = 64, double_quant: bool = True) -> int:
    """Bytes of one NF4-quantized weight (bitsandbytes' layout, kernels/nf4.py):
    codes: two 4-bit codes per byte -> ceil(numel/2);
    absmax: one per block of `blocksize` -> fp32 (4 B) each, or with double quantization uint8 (1 B)
      each plus, per 256 of those, one fp32 nested absmax, plus the 256-entry fp32 nested code
      and the fp32 offset (the mean that was subtracted);
    quant_map: the 16 NF4 values, fp32 (64 B).
    Per parameter: 4 bits + 32/64 = 0.5 bit (plain) or 8/64 + 32/(64*256) = 0.127 bit (double)."""
    blocks = math.ceil(numel / blocksize)
    codes = math.ceil(numel / 2)
    if double_quant:
        absmax = blocks * 1 + math.ceil(blocks / 256) * 4 + 256 * 4 + 4
    else:
        absmax = blocks * 4
    return codes + absmax + 16 * 4


# ====================================================================== activations
# One decoder layer, as minift/model.py computes it, and what autograd keeps from it.
# Each entry is one *storage* (a dict key), so a tensor saved by two ops is counted once; e.g.
# the attention output is saved by SDPA and by o_proj (its input): one entry "attn.out".


@dataclass
class _Layer:
    saved: "OrderedDict[str, int]"      # storage name -> bytes saved for backward
    out_grad: bool                      # does the layer output require grad
    bwd_extra: int                      # largest backward temporary beyond what is saved (bytes)
    bwd_detail: str
    fwd_saved_at_peak: int = 0          # this layer's saves alive at its forward peak
    fwd_extra: int = 0                  # forward temporaries at that moment


def _norm(saved, prefix, in_name, n, h, s, x_grad, w_grad, triton):
    """RMSNorm (model.py via kernels/dispatch.py).
    CUDA (Triton, kernels/rmsnorm.py RMSNormFunction): saves its input x itself (no copy: the
    same storage as the residual stream, named `in_name`) and 1/rms (4n), whenever x or the
    weight needs a gradient.
    Elsewhere (the reference, plain autograd): x32 = x.float(); x32 = x32 * rsqrt(mean(x32^2) + eps);
    w * x32.to(s). pow and mul keep x32 (4nh; with fp32 x, .float() is x itself) and rsqrt (4n)
    if x needs a gradient; the weight multiply keeps the cast (s*n*h) if the weight trains.
    The output (s*n*h) is a new storage; its consumers decide whether it is saved."""
    if triton:
        if x_grad or w_grad:
            saved[in_name] = s * n * h
            saved[f"{prefix}.rstd"] = 4 * n
        return
    if x_grad:
        saved[in_name if s == 4 else f"{prefix}.x32"] = 4 * n * h
        saved[f"{prefix}.rsqrt"] = 4 * n
    if w_grad:
        # fp32: .to() is a no-op, the kept tensor is x32 * rsqrt itself (still a new storage)
        saved[f"{prefix}.normed"] = s * n * h


def _linear(saved, name, in_name, in_bytes_per_elem, n, d_in, d_out, s, *, x_grad, base_trains,
            adapted, a, r, qlora, dropout=None):
    """A projection y = x W^T (+ b), optionally with LoRA.
    Base nn.Linear: autograd saves its input x only if W trains (dW = grad^T x); it saves W (a
    parameter: no new memory) if x needs a gradient. A frozen base therefore saves nothing.
    QLoRA's Linear4bit saves no activation either: dx = grad @ dequant(W) needs only the packed
    weight, which it dequantizes again in backward (kernels/nf4.py; see minift/quant.py).
    LoRA (minift/lora.py): base(x) + lora_B(lora_A(x.to(a))) * scaling, cast back.
    lora_A saves its input: x cast to the adapter dtype -- a new (a*n*d_in) copy unless the dtypes
    already agree -- one per adapted projection (q, k and v each keep their own copy of the same x);
    lora_B saves lora_A's output (a*n*r). Returns whether y needs a gradient.
    dropout: None (no adapter dropout, or the CPU/MPS path, which recomputes it in backward:
    minift/lora.py, Note: dropout without a copy), or the name its dropped input is saved under:
    lora_A then saves dropout(x), a new (a*n*d_in) storage, instead of x, and when x needs a
    gradient CUDA's dropout keeps its mask (1 byte per element, bool) for d x. Fused projections
    (minift/fused_projections.py) drop a group's shared input once: q/k/v (and gate/up) pass the
    same name and are counted once."""
    if base_trains:
        saved[in_name] = in_bytes_per_elem * n * d_in
    if adapted:
        if dropout is not None:
            saved[f"{dropout}.dropped"] = a * n * d_in
            if x_grad:
                saved[f"{dropout}.dropout_mask"] = n * d_in
        else:
            key = in_name if a == s else f"{name}.lora_x"
            saved[key] = a * n * d_in
        saved[f"{name}.lora_A_out"] = a * n * r
    return x_grad or base_trains or adapted


def _adapter_weights(saved, cfg, targets, r, a, s, *, copies, fused, input_grad):
    """What the adapters keep of their own weights for backward: small ((in + out) x r each), but
    new storages when made in forward. Each adapter computes with A and B in its compute dtype (a
    bytes); cast from the parameters' dtype (copies: fp32 adapters with bf16 math) they are new
    tensors, and the products keep B for d(x A^T) always and A for d x when x needs a gradient.
    A fused group (minift/fused_projections.py) stacks its A's into one new tensor, whatever the
    dtypes; when the adapters compute in the base's dtype (a == s) its B's (times their scaling)
    enter the base's matmul as one block-diagonal (sum of outs, sum of r) tensor, which the
    product keeps instead, zeros and all (fused_projections.base_and_adapters). NF4 groups keep the
    same bytes: each projection's (out, sum of r) slice of it (quant.nf4_linear_with_adapters)."""
    dims = _shapes(cfg)
    grouped, in_block = set(), set()
    for group, names in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate_up", ("gate_proj", "up_proj"))):
        if fused and all(p in targets for p in names):
            grouped.update(names)
            if input_grad[names[0]]:
                saved[f"{group}.lora_A_stacked"] = a * dims[names[0]][0] * r * len(names)
            if a == s:
                in_block.update(names)
                saved[f"{group}.lora_B_block_diagonal"] = s * sum(dims[p][1] for p in names) * r * len(names)
    for p in PROJECTIONS:
        if p not in targets or not copies:
            continue
        d_in, d_out = dims[p]
        if p not in grouped and input_grad[p]:
            saved[f"{p}.lora_A_copy"] = a * d_in * r
        if p not in in_block:
            saved[f"{p}.lora_B_copy"] = a * d_out * r


def _layer(cfg, n, B, T, s, a, method, targets, r, x_grad, first, cpu=False, triton=False,
           math_attention=False, dropped=False, fused=False, segment_mask=False, weight_copies=False) -> _Layer:
    """dropped: the adapters' dropout keeps a dropped copy of their input (CUDA with dropout > 0;
    see _linear); fused: q/k/v and gate/up share one (minift/fused_projections.py);
    segment_mask: packed rows attend through a boolean mask (see below); weight_copies: the
    adapters compute in another dtype than their parameters' (see _adapter_weights)."""
    h, f = cfg.hidden_size, cfg.intermediate_size
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    trains = method in TRAIN_BASE
    qlora = method == "qlora"
    saved: OrderedDict[str, int] = OrderedDict()
    lin = dict(n=n, s=s, base_trains=trains, a=a, r=r, qlora=qlora)

    def drop(name, group):   # the name an adapter's dropped input is saved under (None: no copy)
        return None if not dropped else (group if fused else name)

    # ---- attention half: x + o_proj(attn(rope(q), rope(k), v))
    _norm(saved, "norm1", "input", n, h, s, x_grad, trains, triton)
    y1_grad = x_grad or trains
    g = {}
    for p, d_out in (("q_proj", qd), ("k_proj", kd), ("v_proj", kd)):
        g[p] = _linear(saved, p, "norm1.out", s, d_in=h, d_out=d_out, x_grad=y1_grad,
                       adapted=p in targets, dropout=drop(p, "qkv"), **lin)
    attn_grad = g["q_proj"] or g["k_proj"] or g["v_proj"]
    if attn_grad:
        # RoPE (x*cos + rotate_half(x)*sin) keeps only cos and sin (shared, counted once per model).
        # SDPA on CUDA bf16 runs flash attention (on CPU its flash-for-cpu twin), which keeps its
        # inputs q, k, v (after RoPE; k and v NOT repeated to all heads: enable_gqa), its output,
        # and the fp32 log-sum-exp per (batch, head, query). No T x T matrix.
        # Except fp32 with grouped k/v on CUDA: flash attention takes only fp16/bf16 and PyTorch's
        # memory-efficient kernel no GQA, so SDPA's math path runs: it repeats k and v to every
        # head (scaled q, k) and keeps those and the (B, heads, T, T) softmax instead of the lse.
        kv = qd if math_attention else kd
        saved["attn.q"] = s * n * qd
        saved["attn.k"] = s * n * kv
        saved["attn.v"] = s * n * kv
        saved["attn.out"] = s * n * qd
        if math_attention:
            saved["attn.probs"] = s * B * cfg.num_attention_heads * T * T
        else:
            saved["attn.lse"] = 4 * B * cfg.num_attention_heads * T
        if segment_mask:
            # Packed rows (segment_ids): SDPA turns the boolean (B, 1, T, T) mask into an additive
            # bias of the activations' dtype in every layer and keeps it for backward. Measured:
            # +s*B*T*T per layer on the CPU (tests/test_memory.py) and on the H200 (0.20 GB over
            # 24 layers at 4 x 1024 in bf16: results/h200/profile_*_docs3_*.txt against the plain).
            saved["attn.mask_bias"] = s * B * T * T
    o_grad = _linear(saved, "o_proj", "attn.out", s, d_in=qd, d_out=h, x_grad=attn_grad,
                     adapted="o_proj" in targets, dropout=drop("o_proj", "o_proj"), **lin)
    mid_grad = x_grad or o_grad            # x_mid = x + o_proj(...): the add saves nothing

    # ---- MLP half: x_mid + down(silu(gate(y2)) * up(y2))
    _norm(saved, "norm2", "x_mid", n, h, s, mid_grad, trains, triton)
    y2_grad = mid_grad or trains
    gate_grad = _linear(saved, "gate_proj", "norm2.out", s, d_in=h, d_out=f, x_grad=y2_grad,
                        adapted="gate_proj" in targets, dropout=drop("gate_proj", "gate_up"), **lin)
    up_grad = _linear(saved, "up_proj", "norm2.out", s, d_in=h, d_out=f, x_grad=y2_grad,
                      adapted="up_proj" in targets, dropout=drop("up_proj", "gate_up"), **lin)
    # silu(g) * u. Triton (SwiGLUFunction): keeps g and u, recomputes silu in backward.
    # Reference: silu keeps g and the product keeps u (for d silu(g)) if g needs a gradient;
    # the product keeps silu(g) (for d u) if u needs one. The product p is a new storage.
    if triton:
        if gate_grad or up_grad:
            saved["mlp.gate"] = s * n * f
            saved["mlp.up"] = s * n * f
    else:
        if gate_grad:
            saved["mlp.gate"] = s * n * f
            saved["mlp.up"] = s * n * f
        if up_grad:
            saved["mlp.silu"] = s * n * f
    p_grad = gate_grad or up_grad
    down_grad = _linear(saved, "down_proj", "mlp.p", s, d_in=f, d_out=h, x_grad=p_grad,
                        adapted="down_proj" in targets, dropout=drop("down_proj", "down_proj"), **lin)
    out_grad = mid_grad or down_grad
    if not trains:
        input_grad = {"q_proj": y1_grad, "k_proj": y1_grad, "v_proj": y1_grad, "o_proj": attn_grad,
                      "gate_proj": y2_grad, "up_proj": y2_grad, "down_proj": p_grad}
        _adapter_weights(saved, cfg, targets, r, a, s, copies=weight_copies, fused=fused,
                         input_grad=input_grad)

    # ---- the largest backward temporary of this layer (the MLP's, f ~ 5.4 h dominates).
    # Times are moments of the backward walk; `F` = n*f elements, `H` = n*h elements.
    F = n * f
    down_lora = ("down_proj.lora_x", "down_proj.dropped", "down_proj.dropout_mask")   # what down's LoRA saves
    S_down = sum(saved.get(k, 0) for k in down_lora) + saved.get("mlp.p", 0)
    S_mul = saved.get("mlp.up", 0) + saved.get("mlp.silu", 0)
    moments = {}
    if "down_proj" in targets and a != s:
        # lora_A of down_proj gives d x32 (a*F) and casts it to s (s*F): both alive at once
        moments["down LoRA dx cast"] = (a + s) * F
    if p_grad:
        # d p (s*F) enters silu(g)*u's backward, which makes d silu (s*F) and d u (s*F);
        # down's saved input has been freed by then
        moments["SwiGLU mul backward"] = 3 * s * F - S_down
    if "up_proj" in targets and up_grad:
        # up_proj's LoRA backward: d u cast to fp32 (a*F), the base's share cast back to s (s*F),
        # d(update*scaling) (a*F), while d silu (s*F) waits: 2sF + 2aF, after the mul's saves are gone
        moments["up LoRA backward"] = 2 * s * F + (2 * a * F if a != s else a * F) - S_down - S_mul
    name, extra = max(moments.items(), key=lambda kv: kv[1]) if moments else ("none", 0)
    extra += s * n * h   # the incoming gradient of the layer output (shared by residual and down)

    # ---- the largest forward temporary: up_proj's LoRA (out = f) in
    # `gate, up = gate_proj(y2), up_proj(y2)`, before swiglu(gate, up): g (saved, "mlp.gate") is
    # alive, silu(g) does not exist yet (the reference makes it inside swiglu, the Triton kernel
    # never). Up's base output y (s*F), the adapter's lora_B output (a*F), its `* scaling` (a*F)
    # and `y + update` (a*F) are alive at the add; on CPU the add also makes an fp32 copy of y
    # (TensorIterator promotes CPU inputs with a temporary; CUDA kernels cast on the fly).
    # y2 (s*n*h) is alive around it, and x_mid (s*n*h) unless a norm already saves it (Triton's
    # RMSNorm saves its input itself: then it is in `saved`, counted once).
    fwd_extra, fwd_at = 0, 0
    if "up_proj" in targets:
        fwd_at = _sum(saved) - sum(saved.get(k, 0) for k in
                                   ("mlp.silu", "mlp.up", "mlp.p", *down_lora, "down_proj.lora_A_out"))
        fwd_extra = s * F + 3 * a * F + (a * F if (cpu and a != s) else 0) \
            + (s * n * h if "x_mid" in saved else 2 * s * n * h)
    if qlora:
        # Linear4bit (minift/quant.py) dequantizes the (out, in) weight for every call, forward
        # and backward: packed.long() (8 B per byte = 4 B/weight) -> fp32 pair lookup (4 B/weight)
        # -> * absmax (4 B/weight) -> cast (s B/weight); at most about (8 + s) B per weight alive.
        # The largest is down_proj's (f x h): at the top layer's down_proj, everything but its
        # LoRA saves is alive, plus p = silu(g)*u (s*F).
        k = h * f
        # the Triton dequantize (CUDA) writes the output only; the reference also makes the
        # int64 index, the fp32 lookup and the fp32 product
        dq = (s * k if triton else (8 + s) * k) + s * F
        at = _sum(saved) - sum(saved.get(k, 0) for k in (*down_lora, "down_proj.lora_A_out"))
        if dq + at > fwd_extra + fwd_at:
            fwd_at, fwd_extra = at, dq
        extra = max(extra, dq + s * n * h)   # backward: dequantize again beside d p and d x
    return _Layer(saved, out_grad, max(extra, 0), name, fwd_at, fwd_extra)


def _peak_phase(phases: dict) -> str:
    """The phase whose live components sum highest."""
    return max(phases, key=lambda p: _sum(phases[p]))


def _sum(d) -> int:
    return int(sum(d.values()))


# ====================================================================== the estimate
@dataclass
class MemoryEstimate:
    """Bytes per component and per phase; `total` is the peak (the largest phase)."""
    method: str
    model: str
    batch: int
    seq: int
    grad_ckpt: bool
    param_dtype: str
    ckpt_layers: int | None = None                      # with grad_ckpt: the bottom layers checkpointed (None: all)
    weights: dict = field(default_factory=dict)         # label -> bytes
    gradients: int = 0                                  # all trainable parameters' .grad
    optimizer_states: int = 0                           # AdamW m and v, fp32
    master_weights: int = 0                             # fp32 copies (master_weights=True)
    lora: dict = field(default_factory=dict)            # params / grads / states of the adapter
    activations: int = 0                                # saved for backward at the end of forward
    activations_per_layer: dict = field(default_factory=dict)   # one middle layer, named storages
    activations_other: dict = field(default_factory=dict)       # outside the layers
    loss: int = 0                                       # the loss chunk's largest temporary
    kv_cache: int = 0
    optimizer_transient: int = 0                        # AdamW.step's largest per-parameter temporary
    phases: dict = field(default_factory=dict)          # phase -> {component: bytes}
    notes: list = field(default_factory=list)
    world_size: int = 1                                 # > 1: the phases are one GPU's of a torchrun job
    strategy: str | None = None                         # "ddp" | "fsdp" when world_size > 1
    job: dict = field(default_factory=dict)             # whole-job settings (empty: the step alone)

    @property
    def step_phases(self) -> dict:
        """The training step's phases (without the job's load, quantize, add LoRA, save)."""
        return {k: v for k, v in self.phases.items() if not k.startswith(JOB_PHASE_PREFIXES)}

    @property
    def step_peak_phase(self) -> str:
        return _peak_phase(self.step_phases)

    @property
    def step_total(self) -> int:
        """The step's peak alone (equal to total for an estimate without job phases)."""
        return _sum(self.phases[self.step_peak_phase])

    @property
    def weights_total(self) -> int:
        return _sum(self.weights)

    @property
    def peak_phase(self) -> str:
        return _peak_phase(self.phases)

    @property
    def total(self) -> int:
        """The peak: max over phases (what torch.cuda.max_memory_allocated should read)."""
        return _sum(self.phases[self.peak_phase])

    def as_dict(self) -> dict:
        return {"method": self.method, "model": self.model, "batch": self.batch, "seq": self.seq,
                "grad_ckpt": self.grad_ckpt, "ckpt_layers": self.ckpt_layers, "param_dtype": self.param_dtype,
                "weights": dict(self.weights), "weights_total": self.weights_total,
                "gradients": self.gradients, "optimizer_states": self.optimizer_states,
                "master_weights": self.master_weights, "lora": dict(self.lora),
                "activations": self.activations, "activations_per_layer": dict(self.activations_per_layer),
                "activations_other": dict(self.activations_other), "loss": self.loss,
                "kv_cache": self.kv_cache, "optimizer_transient": self.optimizer_transient,
                "phases": {k: dict(v) for k, v in self.phases.items()},
                "peak_phase": self.peak_phase, "total": self.total, "notes": list(self.notes),
                "job": dict(self.job), "step_peak_phase": self.step_peak_phase, "step_total": self.step_total,
                "world_size": self.world_size, "strategy": self.strategy}

    def table(self) -> str:
        rows = [f"memory estimate: {self.model} {self.method} batch {self.batch} x seq {self.seq}"
                f"{' + grad ckpt' if self.grad_ckpt else ''}"
                f"{f' ({self.ckpt_layers} bottom layers)' if self.grad_ckpt and self.ckpt_layers is not None else ''}"
                f" ({self.param_dtype} params)"
                + (f", per GPU of {self.world_size} ({self.strategy})" if self.world_size > 1 else "")]
        def line(label, b):
            rows.append(f"  {label:<44} {b / GB:>9.3f} GB")
        for k, v in self.weights.items():
            line(f"weights: {k}", v)
        for label, v in (("gradients", self.gradients), ("optimizer states (AdamW m, v fp32)", self.optimizer_states),
                         ("master weights (fp32)", self.master_weights)):
            if v:
                line(label, v)
        for k, v in self.lora.items():
            line(f"LoRA {k}", v)
        if self.activations:
            line("activations saved for backward", self.activations)
            for k, v in self.activations_per_layer.items():
                line(f"   per layer: {k}", v)
            for k, v in self.activations_other.items():
                line(f"   other: {k}", v)
        for label, v in (("loss chunk temporaries (peak)", self.loss), ("KV cache", self.kv_cache),
                         ("optimizer step temporaries (peak)", self.optimizer_transient)):
            if v:
                line(label, v)
        rows.append("  phases (sum of what is alive):")
        peak = self.peak_phase
        for p, comp in self.phases.items():
            mark = "  <- peak" if p == peak else ""
            rows.append(f"    {p:<42} {_sum(comp) / GB:>9.3f} GB{mark}")
        rows.append(f"  peak {self.total / GB:.3f} GB ({peak})")
        if self.job and self.step_peak_phase != peak:
            rows.append(f"  the step alone peaks at {self.step_total / GB:.3f} GB ({self.step_peak_phase}); "
                        f"the job's peak is outside the step")
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


def _optimizer_step_transient(numels: list[int], s: int, master: bool) -> int:
    """minift.optim.AdamW.step's largest temporary, exactly, given the trainable parameters'
    element counts in the order the optimizer visits them.

    Per parameter p (k elements): w = p.float() (4k, unless fp32 or master), g = grad.float()
    (4k, unless the grad is fp32), denom = v.sqrt() / c (two 4k tensors alive while dividing).
    Python keeps the previous parameter's w, g and denom until the names are rebound, so at
    each allocation the last parameter's temporaries are still there:
        w_j alloc:   prev (w, g, denom) + w_j
        g_j alloc:   prev (g, denom) + w_j + g_j
        sqrt / div:  prev denom + w_j + g_j + sqrt_j + div_j
    """
    w_b = 0 if (s == 4 or master) else 4
    g_b = 0 if s == 4 else 4
    best, prev = 0, (0, 0, 0)  # previous parameter's (w, g, denom) bytes
    for k in numels:
        w, g, d = w_b * k, g_b * k, 4 * k
        best = max(best, sum(prev) + w, prev[1] + prev[2] + w + g, prev[2] + w + g + 2 * d)
        prev = (w, g, d)
    return best


def _optimizer_foreach_transient(cfg, method, numels, s, master, r, targets, fused: bool) -> int:
    """minift.optim.AdamW._step_foreach: per param group, fp32 lists for all its tensors at once:
    ws (p.float(): 4 B/elem unless fp32 or master), gs (grad.float(): 4 B unless fp32) and
    denom (_foreach_sqrt(v): 4 B). The groups (param_groups: matrices, then vectors) run one
    after the other, each cut by optim.foreach_slices into slices of at most FOREACH_SLICE
    elements, so bf16 full fine-tuning holds 12 B per element of one slice, not of the model.
    fused (Triton, CUDA): tensors of FUSED_MIN_NUMEL elements or more (all of them: it is 1) take
    kernels/adamw.py instead, which makes no temporaries; only the rest go through the lists. The
    kernel's own tables (4 bytes per 1,024 elements, kernels/adamw.py Note) are not counted."""
    from minift.optim import FUSED_MIN_NUMEL, foreach_slices
    if fused:
        numels = [0 if n >= FUSED_MIN_NUMEL else n for n in numels]   # zeros keep the groups' split
    w_b = 0 if (s == 4 or master) else 4
    g_b = 0 if s == 4 else 4
    n_mat = _n_matrices(cfg, method, r, targets)
    largest = max((sum(stop - start for _, start, stop in piece)
                   for group in (numels[:n_mat], numels[n_mat:]) for piece in foreach_slices(group)), default=0)
    return largest * (w_b + g_b + 4)


def _n_matrices(cfg, method, r, targets) -> int:
    if method in TRAIN_BASE:
        return 1 + 7 * cfg.num_hidden_layers + (0 if cfg.tie_word_embeddings else 1)
    return 2 * len(resolve_targets(targets)) * cfg.num_hidden_layers


def trainable_numels(cfg: ModelConfig, method: str, r: int = 16, lora_targets="all-linear") -> list[int]:
    """Element counts of the trainable parameters in the order minift.optim.param_groups gives
    them to AdamW: matrices (dim >= 2) first in model order, then vectors (norms, biases)."""
    shapes, biases = _shapes(cfg), _biases(cfg)
    h = cfg.hidden_size
    mats, vecs = [], []
    if method in TRAIN_BASE:
        mats.append(cfg.vocab_size * h)
        for _ in range(cfg.num_hidden_layers):
            vecs.append(h)  # input_layernorm
            for p in PROJECTIONS:
                d_in, d_out = shapes[p]
                mats.append(d_in * d_out)
                if biases[p]:
                    vecs.append(biases[p])
            vecs.append(h)  # post_attention_layernorm
        vecs.append(h)      # final norm
        if not cfg.tie_word_embeddings:
            mats.append(cfg.vocab_size * h)
    elif method in ADAPTER:
        targets = resolve_targets(lora_targets)
        for _ in range(cfg.num_hidden_layers):
            for p in PROJECTIONS:
                if p in targets:
                    d_in, d_out = shapes[p]
                    mats += [r * d_in, d_out * r]
    return mats + vecs


def _weights(cfg, method, s, blocksize, double_quant, targets) -> "OrderedDict[str, int]":
    h, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    shapes, biases = _shapes(cfg), _biases(cfg)
    w: OrderedDict[str, int] = OrderedDict()
    name = {2: "bf16", 4: "fp32"}[s]
    w[f"embedding V*h ({name}{', tied to lm_head' if cfg.tie_word_embeddings else ''})"] = s * V * h
    if not cfg.tie_word_embeddings:
        w[f"lm_head V*h ({name})"] = s * V * h
    lin = L * sum(i * o for i, o in shapes.values())
    if method == "qlora":
        # minift.quant.quantize_model turns every projection (not the embedding, not lm_head,
        # not the norms) into NF4. Biases stay in the compute dtype.
        w[f"projections NF4 (4 bit + constants, blocksize {blocksize})"] = L * sum(
            nf4_bytes(i * o, blocksize, double_quant) for i, o in shapes.values())
    else:
        w[f"projections ({name})"] = s * lin
    w[f"norms + biases ({name})"] = s * (L * (2 * h + sum(biases.values())) + h)
    # model.to(dtype) casts this float buffer too (RotaryEmbedding upcasts it again when it computes)
    w[f"rotary inv_freq ({name} buffer)"] = s * (cfg.head_dim // 2)
    return w


def estimate(cfg: ModelConfig, method: str, batch: int, seq: int, *, param_dtype: str = "bfloat16",
             grad_ckpt: bool = False, ckpt_layers: int | None = None, lora_r: int = 16,
             lora_targets="all-linear", adapter_dtype: str = "float32", lora_compute_dtype: str | None = None,
             master_weights: bool = False,
             optimizer_state_dtype: str = "float32", loss: str = "chunked", loss_chunk: int = 1024,
             blocksize: int = 64, double_quant: bool = True, kv_cache_len: int | None = None,
             device: str = "cuda", kernels: str = "auto", foreach="auto",
             load: str | None = None, checkpoint_dtype: str = "bfloat16", save: str | None = None,
             process: bool | None = None, world_size: int = 1, strategy: str | None = None,
             lora_dropout: float = 0.0, fused_projections: bool = False, segment_mask: bool = False
             ) -> MemoryEstimate:
    """Predict the peak allocated bytes of one training step (or one prefill for "inference"),
    or, with `load` (or `save`), of the whole job (see _add_job_phases: Note: the whole job).

    method: "scratch" | "cpt" | "full" (all three train every weight: same memory), "lora",
      "qlora" (NF4 base + LoRA), "inference" (a no-grad prefill of batch x seq; with
      kv_cache_len it also fills a KV cache of that many positions; logits for the last token only).
    loss: "chunked" (minift's fused head + loss, `loss_chunk` tokens at a time; the only loss
      minift's model runs).
    kernels: "auto" (Triton on CUDA, the reference elsewhere, as kernels/dispatch.py picks),
      or force "triton" / "reference" (MINIFT_KERNELS). They save different tensors.
    foreach: AdamW's foreach path ("auto": on for CUDA, as minift.optim.AdamW does).
    lora_compute_dtype: LoRALinear's compute_dtype (None: the adapter's own dtype). The adapter's
      activations are those of its compute dtype (bf16 math saves the bf16 input it shares with
      the base, no fp32 copy); its parameters, grads and Adam states those of adapter_dtype.
    device: "cuda" (the target) or "cpu"/"mps": on CPU a mixed-dtype add copies its bf16 input
      to fp32 first, one more temporary in the LoRA forward (see _layer).
    load: None (the step alone) or how the job starts: "float" (load_pretrained in param_dtype;
      QLoRA then runs quant.quantize_model, a "quantize" phase), "nf4-stream" (load_pretrained(...,
      quantize="nf4"): each projection quantized as it is read) or "nf4-prequantized" (a bnb 4-bit
      checkpoint read as it is stored). checkpoint_dtype: the float dtype on disk.
    save: None, "adapter" (lora.save_adapter) or "model" (save_pretrained, full fine-tuning).
    process: count what the process holds (CPU: resident memory, the runtime included);
      None = on for device "cpu" in a whole-job estimate.
    world_size, strategy: one GPU's peak in a torchrun job of world_size processes, batch per GPU
      (minift/distributed.py): strategy "ddp" (adapters: every GPU holds the whole model) or
      "fsdp" (full training: parameters, gradients and AdamW states sharded). See `_per_gpu`.
    ckpt_layers: with grad_ckpt, how many layers from the bottom are checkpointed (None: all; the
      model's checkpoint_layers, Note: partial checkpointing in minift/model.py); the others keep
      every activation, as without checkpointing.
    lora_dropout: the adapters' dropout rate. On CUDA each adapter keeps its dropped input and the
      dropout's mask (see _linear); on CPU/MPS LoRALinear recomputes the dropout in backward and
      keeps nothing more. fused_projections: q/k/v and gate/up fused (minift/fused_projections.py,
      as the recipes do for LoRA on CUDA): one dropped input per group instead of one per adapter.
    segment_mask: the batches are packed rows with segment_ids (minift.data's SFT rows): attention
      runs with a mask, whose bias every layer keeps (see _layer)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    for label, v in (("batch", batch), ("seq", seq), ("lora_r", lora_r), ("loss_chunk", loss_chunk),
                     ("blocksize", blocksize)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if loss != "chunked":
        raise ValueError(f"loss={loss!r}: minift's model always runs the fused chunked loss "
                         f"(kernels/linear_cross_entropy_fused.py), so that is the only loss this "
                         f"math describes; HF's materialised logits are measured in shared/anchors.md")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if world_size > 1:
        want = "fsdp" if method in TRAIN_BASE else "ddp"
        if method == "inference" or strategy != want:
            raise ValueError(f"world_size={world_size}: method {method!r} trains with strategy {want!r} in minift "
                             f"(minift/distributed.py: FSDP2 for full training, data parallel for adapters); "
                             f"got strategy={strategy!r}" if method != "inference" else
                             "world_size > 1 is for training; inference is estimated per GPU with world_size=1")
    if device not in ("cuda", "cpu", "mps"):
        raise ValueError(f"device must be 'cuda', 'cpu' or 'mps', got {device!r}")
    if kernels not in ("auto", "triton", "reference"):
        raise ValueError(f"kernels must be 'auto', 'triton' or 'reference', got {kernels!r}")
    _check_job_args(method, load, save, checkpoint_dtype)
    # kernels/dispatch.py: Triton on CUDA (when triton imports), the PyTorch reference elsewhere
    triton = kernels == "triton" or (kernels == "auto" and device == "cuda")
    cpu = device == "cpu"
    if _bytes_of(optimizer_state_dtype, "optimizer_state_dtype") != 4:
        raise ValueError("minift.optim.AdamW keeps m and v in fp32 (see its Note: optimizer memory); "
                         f"optimizer_state_dtype={optimizer_state_dtype!r} is not what it does")
    s = _bytes_of(param_dtype, "param_dtype")
    a = _bytes_of(adapter_dtype, "adapter_dtype") if adapter_dtype is not None else s
    ac = _bytes_of(lora_compute_dtype, "lora_compute_dtype") if lora_compute_dtype is not None else a
    if method == "qlora" and s == 4:
        raise ValueError("qlora: the NF4 base computes in bf16 here (param_dtype='bfloat16'); "
                         "fp32 QLoRA is not a configuration minift measures")
    h, f, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    if ckpt_layers is not None:
        if not grad_ckpt:
            raise ValueError("ckpt_layers picks which layers are checkpointed; it needs grad_ckpt=True")
        if isinstance(ckpt_layers, bool) or not isinstance(ckpt_layers, int) or not 0 <= ckpt_layers <= L:
            raise ValueError(f"ckpt_layers must be an integer in [0, {L}] (the model's layers), got {ckpt_layers!r}")
    K = (L if ckpt_layers is None else ckpt_layers) if grad_ckpt and method != "inference" else 0
    n = batch * seq
    targets = resolve_targets(lora_targets) if method in ADAPTER else ()
    est = MemoryEstimate(method=method, model=cfg.name_or_path or "custom", batch=batch, seq=seq,
                         grad_ckpt=grad_ckpt and method != "inference", param_dtype=param_dtype,
                         ckpt_layers=ckpt_layers if grad_ckpt and method != "inference" else None)
    est.weights = _weights(cfg, method, s, blocksize, double_quant, targets)
    W = est.weights_total

    # ------------------------------------------------------------------ inference
    if method == "inference":
        return _inference(est, cfg, batch, seq, s, kv_cache_len, W)

    # ------------------------------------------------------------------ trainable state
    numels = trainable_numels(cfg, method, lora_r, lora_targets)
    n_train = sum(numels)
    ts = s if method in TRAIN_BASE else a        # dtype of trainable params (and their grads)
    grads = ts * n_train
    states = 8 * n_train                          # m and v, fp32 (minift.optim Note)
    master = 4 * n_train if (master_weights and ts != 4) else 0
    if method in ADAPTER:
        est.lora = {f"params ({lora_r=}, {len(targets)} projections x {L} layers, "
                    f"{'fp32' if a == 4 else 'bf16'})": a * n_train,
                    "grads": grads, "AdamW m, v": states}
        if master:
            est.lora["master weights"] = master
        persistent = {"weights": W, "LoRA params + AdamW m, v": a * n_train + states + master}
    else:
        est.gradients, est.optimizer_states, est.master_weights = grads, states, master
        persistent = {"weights": W, "AdamW m, v (fp32)": states}
        if master:
            persistent["master weights (fp32)"] = master
    if foreach == "auto":
        foreach = device == "cuda"          # minift.optim.AdamW: foreach=None means on for CUDA
    est.optimizer_transient = (_optimizer_foreach_transient(cfg, method, numels, ts, bool(master), lora_r, lora_targets,
                                                            fused=triton)
                               if foreach else _optimizer_step_transient(numels, ts, bool(master)))

    # ------------------------------------------------------------------ activations
    layers, x_grad = [], method in TRAIN_BASE
    math_attention = device == "cuda" and s == 4 and cfg.num_key_value_heads != cfg.num_attention_heads
    for i in range(L):
        lay = _layer(cfg, n, batch, seq, s, ac, method, targets, lora_r, x_grad, i == 0, cpu, triton,
                     math_attention, dropped=lora_dropout > 0 and device == "cuda", fused=fused_projections,
                     segment_mask=segment_mask, weight_copies=ac != a)
        layers.append(lay)
        x_grad = lay.out_grad
    mid = layers[min(1, L - 1)]
    est.activations_per_layer = OrderedDict(mid.saved)
    other: OrderedDict[str, int] = OrderedDict()
    other["batch: input ids + targets (int64)"] = 2 * 8 * n
    other["rotary cos, sin (B, T, hd), shared by all layers"] = 2 * s * n * cfg.head_dim
    fin: OrderedDict[str, int] = OrderedDict()
    _norm(fin, "final_norm", "last layer output", n, h, s, x_grad, method in TRAIN_BASE, triton)
    other.update(fin)
    head_trains = method in TRAIN_BASE
    if K:
        # Note: checkpointing keeps each checkpointed layer's input (s*n*h; the checkpoint saves
        # its arguments) and nothing inside; backward recomputes one layer at a time. The layers
        # above the K checkpointed ones keep what they save.
        other[f"layer inputs kept by checkpointing ({K} x s*n*h)"] = K * s * n * h
    saved_fwd = _sum(other) + sum(_sum(l.saved) for l in layers[K:])
    est.activations_other = other
    est.activations = saved_fwd

    # ------------------------------------------------------------------ the loss
    # kernels/linear_cross_entropy_fused.py computes the loss AND its gradients in forward, chunk
    # by chunk, and keeps d hidden (s*n*h) and, if the head trains, d W (s*V*h) until backward,
    # which only hands them on. Per chunk of c tokens: logits (s*cV) cast to fp32 (4cV), then
    # logsumexp makes (logits - max) (another 4cV): 8cV at once; softmax - onehot is written in
    # place and cast to s (s*cV beside the 4cV). The final norm's output (s*n*h) is alive meanwhile.
    # From the second chunk on, the previous chunk's `dlogits` (s*cV; with fp32 it is the logits
    # buffer itself, 4cV) is still bound to its name while the next logits are made.
    # With Triton (kernels/softmax_xent.py, CUDA) the loss and dlogits are computed in registers and
    # dlogits is written over the logits: the chunk's logits (s*cV) are all it needs.
    # Then `dh[chunk] = dlogits @ W` makes the chunk's d hidden as a new (c, h) product (s*c*h)
    # before copying it into dh, dlogits still alive: on the Triton path that product, or from the
    # second chunk on the next chunk's logits beside the previous dlogits (still bound to its
    # name), is the chunk's largest moment (the product seen on CPU under TRITON_INTERPRET=1:
    # +524,288 B for BIG_V fp32, c=512). On the reference path the fp32 logits temporaries come first.
    c = min(loss_chunk, n)
    if triton:
        chunk = s * c * V + max(s * c * h, s * c * V if n > c else 0)
    else:
        chunk = max(8 * c * V, (s * c * V + 4 * c * V) if s != 4 else 0, (4 * c * V + s * c * V) if s != 4 else 0)
        if n > c:
            chunk += s * c * V
    est.loss = chunk
    d_head = s * V * h if head_trains else 0
    loss_keep = {"final norm output": s * n * h, "d hidden (kept for backward)": s * n * h}
    if head_trains:
        loss_keep["d lm_head (kept for backward)"] = d_head

    # ------------------------------------------------------------------ phases
    P = dict(persistent)
    est.phases["forward: loss chunk"] = {**P, "activations": saved_fwd, **loss_keep, "loss chunk": chunk}
    # gradients appear layer by layer as backward walks down (each layer's share of the total)
    if method in TRAIN_BASE:
        g_layer = [s * ((cfg.num_params(include_embedding=False) - h) // L)] * L
    else:
        g_layer = [grads // L] * L
    fin_saved = _sum(fin)
    dh = s * n * h                                  # the gradient flowing down the residual stream
    last = layers[-1]
    if last.fwd_extra:
        before = (saved_fwd - fin_saved - _sum(last.saved) + last.fwd_saved_at_peak) if K < L \
            else (_sum(other) - fin_saved - s * n * h + last.fwd_saved_at_peak)
        est.phases["forward: top layer (LoRA up_proj / NF4 dequantize)"] = {
            **P, "activations": before, "forward temporaries": last.fwd_extra}
    if K < L:
        # the top layer's backward: every layer's saves still alive, the final norm's gone
        est.phases["backward: top layer"] = {
            **P, "activations": saved_fwd - fin_saved, "layer bwd temporaries": last.bwd_extra,
            "grads so far": d_head + g_layer[-1] + s * h * head_trains}
    if 0 < K < L - 1:
        # the lowest layer that kept its activations: those above it freed, more gradients made
        est.phases[f"backward: layer {K}, the lowest not checkpointed"] = {
            **P, "activations": saved_fwd - fin_saved - sum(_sum(l.saved) for l in layers[K + 1:]),
            "layer bwd temporaries": layers[K].bwd_extra, "grads so far": d_head + sum(g_layer[K:]) + s * h * head_trains}
    if K:
        # the non-checkpointed layers above are done: their saves are freed
        base = _sum(other) - fin_saved - K * s * n * h
        for i in sorted({K - 1, 0}, reverse=True):
            lay = layers[i]
            inside = _sum(lay.saved) - lay.saved.get("input", 0)   # the input is already counted
            est.phases[f"backward: layer {i} recomputed"] = {
                **P, "activations": base + (i + 1) * s * n * h + inside,
                "layer bwd temporaries": lay.bwd_extra,
                "grads so far": d_head + sum(g_layer[i:]) + s * h * head_trains}
            if lay.fwd_extra:
                # the recompute itself reaches the layer's forward peak; d layer output waits beside it.
                # At the top layer, beside the final norm's d x, an fp32 (n, h) product (4nh) and its
                # cast to s (s*n*h), both made in backward before the recompute, are alive too: the
                # allocator replay of CASES[7] (CPU, Triton kernels interpreted: 12,693,724 B, the
                # H200's max_memory_allocated to 1 KiB; and the reference kernels' CPU replay) shows
                # them; which node makes them is not yet traced (scripts/memory_cuda_diag.py names
                # the frames on a GPU).
                waiting = dh + (4 * n * h + s * n * h if i == L - 1 else 0)
                at = lay.fwd_saved_at_peak - lay.saved.get("input", 0)
                est.phases[f"backward: layer {i} recompute forward"] = {
                    **P, "activations": base + (i + 1) * s * n * h + at,
                    "forward temporaries": lay.fwd_extra, "d layer output (+ fp32 product at the top)": waiting,
                    "grads so far": d_head + sum(g_layer[i + 1:])}
    if method in TRAIN_BASE:
        # embedding backward: a dense d embedding (s*V*h); tied: added into the head's gradient
        est.phases["backward: embedding"] = {**P, "grads": grads, "d embedding (dense)":
                                             s * V * h if cfg.tie_word_embeddings else 0, "d hidden": dh}
    est.phases["optimizer step"] = {**P, "grads": grads, "AdamW temporaries": est.optimizer_transient}
    if world_size > 1:
        _per_gpu(est, cfg, method, strategy, world_size, s, numels, d_head, bool(master), foreach, triton,
                 lora_r, lora_targets)
    if load is not None or save is not None:
        _add_job_phases(est, cfg, method, s, a, n_train, load, checkpoint_dtype, save, device, process,
                        blocksize, double_quant)
    return est


# ====================================================================== one GPU of several
def _per_gpu(est, cfg, method, strategy, W, s, numels, d_head, master, foreach, triton, r, targets) -> None:
    """Turn the one-GPU phases into one GPU's of a W-process job (minift/distributed.py), in place.

    "ddp" (adapters): every GPU holds what one GPU holds, with its per-GPU batch. New: the step's
    gradient all-reduce (distributed.sync_gradients) concatenates every adapter gradient into one
    flat buffer beside the gradients themselves.

    "fsdp" (full training, FSDP2): per GPU, with P = parameters, per tensor ceil(numel / W):
      persistent      weights / W (padded shards) + AdamW m, v / W (+ master / W)
      root unsharded  the root group (embedding, final norm, and an untied head), gathered at the
                      start of forward and kept until backward ends (FSDP2 does not reshard the root
                      after forward): s*V*h (tied) or 2*s*V*h + s*h. The head's gradient d lm_head
                      is computed in forward by the fused loss at full size and is only
                      reduce-scattered when the root's backward is done: it stays as in one GPU.
      in flight       a layer's forward: that layer gathered + the next one prefetched (2 layers);
                      a layer's backward: its gathered weights, the previous layer prefetched, its
                      full-size gradients and the reduce-scatter input they are copied into while
                      the last reduce-scatter may still be running: 4 layers of s*P_layer, plus the
                      all-gather's copy-in of the shard (s*P_layer / W)
      gradients       reduce-scattered shards, s*P / W, as backward goes
      embedding bwd   the root: gathered weights + d lm_head + the dense d embedding (untied; a tied
                      one adds into the head's gradient) and then their reduce-scatter input
      optimizer step  shards + AdamW's foreach temporaries over the local shards
    NCCL's own buffers are outside PyTorch's allocator (not in max_memory_allocated): a few hundred
    MB per GPU that nvidia-smi shows."""
    est.world_size, est.strategy = W, strategy
    shard = lambda b: -(-b // W)  # noqa: E731
    if strategy == "ddp":
        grads = est.lora["grads"]                               # the adapters' gradients
        persistent = {k: v for k, v in est.phases["optimizer step"].items() if k not in ("grads", "AdamW temporaries")}
        est.phases["gradient all-reduce (one flat buffer)"] = {**persistent, "grads": grads, "flat copy": grads}
        est.notes.append(f"per GPU of {W} (data parallel): each GPU holds the whole model and its own batch of "
                         f"{est.batch} x {est.seq}; the adapters' gradients are summed in one flat all_reduce")
        return

    h, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    tied = cfg.tie_word_embeddings
    root = s * (V * h * (1 if tied else 2) + h)                     # embedding (+ head) + final norm
    layer = s * ((cfg.num_params(include_embedding=False) - h) // L)  # one decoder layer, gathered
    shards = sum(shard(k) for k in numels)                          # elements of this rank's shards
    all_layers_grads = s * shards - shard(root)                     # the layers' gradient shards

    def sharded(comp: dict) -> dict:
        out = {}
        for k, v in comp.items():
            if k == "weights":
                out["weights (this GPU's shards)"] = shard(v)
            elif k.startswith("AdamW m, v") or k.startswith("master weights"):
                out[f"{k} (shards)"] = shard(v)
            elif k == "grads so far":
                out["grads so far (shards; d lm_head at full size)"] = d_head + shard(v - d_head)
            else:
                out[k] = v
        return out

    phases = {}
    for name, comp in est.phases.items():
        if name == "backward: embedding" or name == "optimizer step":
            continue
        c = sharded(comp)
        c["root group gathered (embedding, head, norm)"] = root
        if name.startswith("backward: layer") or name == "backward: top layer":
            c["in flight: layer gathered + prefetch + its grads + reduce-scatter input"] = 4 * layer + shard(layer)
        elif name.startswith("forward: top layer"):
            c["in flight: layer gathered + next prefetched"] = 2 * layer + shard(layer)
        phases[name] = c
    persistent = sharded({k: v for k, v in est.phases["optimizer step"].items()
                          if k not in ("grads", "AdamW temporaries")})
    d_root = s * V * h * (1 if tied else 2)          # d embedding (dense) + d lm_head, or one tied grad
    phases["backward: embedding (root gathered, its full-size grads)"] = {
        **persistent, "grads (layer shards)": all_layers_grads, "root group gathered": root,
        "d lm_head + d embedding (full size)": d_root + (s * V * h if tied else 0), "d hidden": s * est.batch * est.seq * h}
    phases["backward: root reduce-scatter"] = {
        **persistent, "grads (layer shards)": all_layers_grads, "root grads (full size)": d_root,
        "reduce-scatter input": d_root}
    local = [shard(k) for k in numels]
    transient = (_optimizer_foreach_transient(cfg, method, local, s, master, r, targets, fused=triton) if foreach
                 else _optimizer_step_transient(local, s, master))
    phases["optimizer step"] = {**persistent, "grads (shards)": s * shards, "AdamW temporaries (local shards)": transient}
    est.phases = phases
    est.optimizer_transient = transient
    est.notes.append(f"per GPU of {W} (FSDP2): weights, gradients and AdamW states are 1/{W} each; the root "
                     f"group ({root / GB:.2f} GB) is whole from forward to the end of backward; "
                     f"a gathered layer is {layer / GB:.3f} GB")


def _inference(est, cfg, B, T, s, kv_len, W):
    """No-grad prefill: nothing is saved; the peak is one layer's temporaries (the MLP's
    silu(gate), up and their product, 3*s*n*f, beside the residual stream), the KV cache, and
    the last position's logits."""
    h, f, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    n = B * T
    if kv_len is not None:
        if kv_len < T:
            raise ValueError(f"kv_cache_len {kv_len} is shorter than seq {T}")
        est.kv_cache = 2 * cfg.num_hidden_layers * B * kv_len * cfg.num_key_value_heads * cfg.head_dim * s
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    norm_tmp = 8 * n * h                                   # x32 and x32*rsqrt, or cast + product
    attn_tmp = s * n * h + s * n * (3 * qd + 2 * kd) + s * n * qd   # y1, q, q_rot, rope temps, k, v, out
    mlp_tmp = s * n * h + 3 * s * n * f                    # y2, silu(g), u, silu(g)*u
    layer = 2 * s * n * h + max(norm_tmp, attn_tmp, mlp_tmp)  # x and x_mid beside it
    head = 8 * n * h + s * B * V                          # final norm temporaries, last-token logits
    est.activations_other = {"ids": 8 * n, "rotary cos, sin": 2 * s * n * cfg.head_dim}
    est.phases["prefill"] = {"weights": W, "KV cache": est.kv_cache, "one layer's temporaries": layer,
                             "ids + rotary": 8 * n + 2 * s * n * cfg.head_dim}
    est.phases["head"] = {"weights": W, "KV cache": est.kv_cache, "final norm + last logits": head,
                          "ids + rotary": 8 * n + 2 * s * n * cfg.head_dim}
    return est


# ====================================================================== the whole job
# Note: the whole job. A user's job is not one step: it loads a checkpoint from disk, (QLoRA)
# quantizes, adds LoRA, trains, saves. Each of these is a phase beside the step's phases in
# est.phases, so est.total is the peak over the whole job and est.peak_phase names where it is:
#
#   load: ...        the largest moment of loading: everything already resident plus the tensor
#                    in flight and its quantization temporaries (checkpoint.load_pretrained reads
#                    one tensor at a time with plain reads, converts it on the device, and for
#                    quantize="nf4" quantizes it there before the next is read)
#   quantize         QLoRA from a float load: quant.quantize_model over the whole float model
#   add LoRA         the base plus the adapters (fp32 by default)
#   (the step's phases, as above)
#   save: ...        the adapter (a few MB) or the whole model (safetensors copies one shard
#                    into host memory to serialize it)
#
# The step's optimizer states die with train()'s optimizer, so they are not in load or save.
# On CPU (process=True) every phase also carries the process itself: Python, torch, minift, the
# tokenizer and the tokenized data (cpu_process_bytes(), measured), from the first optimizer on
# the part of torch that it imports (CPU_OPTIMIZER_RUNTIME_BYTES), and host-side buffers that a
# GPU's allocator would not see (the tensor being read from disk, the shard being written).
# Where the CPU allocator keeps freed memory (glibc's growing mmap threshold), the resident size
# is far above this; minift.cpu_memory.release_freed_memory() is what makes it hold.

LOAD_KINDS = ("float", "nf4-stream", "nf4-prequantized")
SAVE_KINDS = ("adapter", "model")
JOB_PHASE_PREFIXES = ("load: ", "quantize", "add LoRA", "save: ")
# Resident memory of a CPU recipe process before its model, measured with VmRSS on this
# project's CPU machine (2026-11-30): 0.36 GB in all, of which Python 3.11 + torch 2.13 (CPU
# build) + minift imported are 0.23 GB and the Qwen2.5 tokenizer with the tokenized fairytale
# pairs the rest.
CPU_RUNTIME_BYTES = int(0.23e9)
CPU_PROCESS_BYTES = CPU_RUNTIME_BYTES + int(0.13e9)
# A CUDA build of torch (what `pip install torch` gives on Linux) maps its CUDA libraries even
# when it runs on the CPU: Python + torch 2.14.1+cu130 + minift imported is 0.54 GB against
# 0.23 GB with the CPU build (VmRSS, this project's CPU machine, 2026-12-03).
CUDA_BUILD_HOST_BYTES = int(0.30e9)
# What the process maps when its first optimizer is built: torch.optim.Optimizer's methods are
# wrapped by torch._disable_dynamo, whose first call imports torch._dynamo (and with it sympy,
# inductor, triton). Any torch optimizer does this, torch.optim.AdamW as well as minift's.
# Measured with VmRSS around minift.optim.AdamW([p]) (2026-12-03, this project's CPU machine):
# +0.150 GB with torch 2.13 (CPU build), +0.163 GB with torch 2.14.1 (CUDA build).
CPU_OPTIMIZER_RUNTIME_BYTES = int(0.155e9)


def cpu_process_bytes() -> int:
    """A CPU recipe's process before its model, with the torch build installed here."""
    import torch  # here, not at the top: the rest of this module is arithmetic on a config
    return CPU_PROCESS_BYTES + (CUDA_BUILD_HOST_BYTES if torch.version.cuda else 0)


def _check_job_args(method, load, save, checkpoint_dtype) -> None:
    if load is None and save is None:
        return
    if method == "inference":
        raise ValueError("load/save describe a training job; method='inference' has no job phases")
    if load is not None and load not in LOAD_KINDS:
        raise ValueError(f"load={load!r}: use one of {', '.join(LOAD_KINDS)}")
    if load in ("nf4-stream", "nf4-prequantized") and method != "qlora":
        raise ValueError(f"load={load!r} gives an NF4 base: that is method='qlora', not {method!r}")
    if save is not None and save not in SAVE_KINDS:
        raise ValueError(f"save={save!r}: use one of {', '.join(SAVE_KINDS)}")
    if save == "adapter" and method not in ADAPTER:
        raise ValueError(f"save='adapter' needs an adapter method (lora, qlora), not {method!r}")
    _bytes_of(checkpoint_dtype, "checkpoint_dtype")


def nf4_quantize_temporaries(numel: int, in_bytes: int) -> int:
    """Bytes kernels/nf4.quantize allocates for one weight of `numel` elements beyond its input,
    all alive at its last step (Python keeps every name until it returns): the fp32 copy (4n; none
    if the input is fp32 already: .float() is then a view), the padded blocks (4n), the scaled
    values (4n), the int32 codes (4n), the uint8 codes (n), one shifted half (n/2) and the packed
    result (n/2). 18 B per element for a bf16 weight: 1.22 GB for a 7B MLP projection."""
    return (0 if in_bytes == 4 else 4 * numel) + 14 * numel


def _largest_units(cfg: ModelConfig) -> tuple[int, int]:
    """(elements of the largest projection, elements of the largest other tensor)."""
    return max(i * o for i, o in _shapes(cfg).values()), cfg.vocab_size * cfg.hidden_size


def _load_phase(cfg, method, s, cs, load, W, host, blocksize, double_quant) -> tuple[str, dict]:
    """The largest moment of loading. Units are read in file order, so the last one may be any;
    the phase takes the worst: the finished model minus that unit's final form plus what it
    needs in flight. host: count host-side buffers (the process view on CPU)."""
    n_proj, n_embed = _largest_units(cfg)
    # the unit read from disk lands in host memory in the checkpoint's dtype; on CPU, converting
    # it to the model's dtype makes a second tensor (the read buffer dies after), with the same
    # dtype .to() hands back the buffer itself
    read = (lambda k: cs * k if (host and cs != s) else 0)
    if load == "float":
        W_float = W if method != "qlora" else W - _nf4_projection_bytes(cfg, blocksize, double_quant) \
            + s * cfg.num_hidden_layers * sum(i * o for i, o in _shapes(cfg).values())
        return "load: float weights (largest tensor in flight)", {
            "weights loaded (float)": W_float, "tensor read from disk (host)": read(n_embed)}
    if load == "nf4-stream":
        proj = W - nf4_bytes(n_proj, blocksize, double_quant) + s * n_proj + read(n_proj) \
            + nf4_quantize_temporaries(n_proj, s)
        other = W + read(n_embed)
        if proj >= other:
            return "load: nf4 quantize-on-load (largest projection in flight)", {
                "weights loaded (NF4 + float rest)": W - nf4_bytes(n_proj, blocksize, double_quant),
                "projection in flight (float)": s * n_proj, "tensor read from disk (host)": read(n_proj),
                "quantize temporaries": nf4_quantize_temporaries(n_proj, s)}
        return "load: nf4 quantize-on-load (embedding in flight)", {
            "weights loaded": W, "tensor read from disk (host)": read(n_embed)}
    # pre-quantized: packed codes and statistics are read and moved as they are; the largest
    # float tensor (the embedding) is the one converted
    return "load: pre-quantized nf4", {"weights loaded": W, "tensor read from disk (host)": read(n_embed)}


def _nf4_projection_bytes(cfg, blocksize, double_quant) -> int:
    return cfg.num_hidden_layers * sum(nf4_bytes(i * o, blocksize, double_quant) for i, o in _shapes(cfg).values())


def _add_job_phases(est: MemoryEstimate, cfg, method, s, a, n_train, load, checkpoint_dtype, save, device,
                    process, blocksize, double_quant) -> None:
    """Put the job's phases around the step's (Note: the whole job)."""
    host = device == "cpu" if process is None else bool(process)
    cs = _bytes_of(checkpoint_dtype, "checkpoint_dtype")
    W = est.weights_total
    step = est.phases
    phases: OrderedDict[str, dict] = OrderedDict()
    if load is not None:
        name, parts = _load_phase(cfg, method, s, cs, load, W, host, blocksize, double_quant)
        phases[name] = parts
        if load == "float" and method == "qlora":
            # quant.quantize_model: at the first MLP projection the whole float model is still
            # there (its float projections go one by one) plus that projection's temporaries
            n_proj = _largest_units(cfg)[0]
            phases["quantize (quant.quantize_model on the float model)"] = {
                "float model": parts["weights loaded (float)"],
                "quantize temporaries": nf4_quantize_temporaries(n_proj, s)}
    lora_bytes = a * n_train if method in ADAPTER else 0
    if method in ADAPTER:
        phases["add LoRA"] = {"weights": W, "LoRA params": lora_bytes}
    phases.update(step)
    if save == "adapter":
        # safetensors serializes the adapter into one host buffer (a copy of every tensor)
        phases["save: adapter"] = {"weights": W, "LoRA params": lora_bytes,
                                   "serialized adapter (host)": lora_bytes if host else 0}
    elif save == "model":
        shard = min(W, int(5e9))           # save_pretrained's default max_shard_size
        phases["save: model"] = {"weights": W, "one shard serialized (host)": shard if host else 0}
    if host:
        process = cpu_process_bytes()
        after_first_optimizer = set(step) | {name for name in phases if name.startswith("save: ")}
        for name, parts in phases.items():
            parts["process (Python, torch, tokenizer, data)"] = process
            if name in after_first_optimizer:
                parts["torch.optim's runtime (torch._dynamo)"] = CPU_OPTIMIZER_RUNTIME_BYTES
    est.phases = phases
    est.job = {"load": load, "checkpoint_dtype": checkpoint_dtype, "save": save, "process": host}


# ====================================================================== the seed chapter's tables
# "From Scratch vs Fine-tuning", section 3 (14N-style): GB per component, as printed.
SEED_FULL = {  # size: (params bf16, grads, Adam, activations B=4 T=1024, total)
    "0.5B": (1.0, 1.0, 4.0, 1.5, 7.5), "1.5B": (3.0, 3.0, 12.0, 3.0, 21.0),
    "3B": (6.0, 6.0, 24.0, 5.0, 41.0), "7B": (14.0, 14.0, 56.0, 10.0, 94.0)}
SEED_LORA = {  # size: (base bf16 frozen, LoRA params/grads/Adam, activations, total)
    "0.5B": (1.0, 0.05, 1.5, 2.5), "1.5B": (3.0, 0.15, 3.0, 6.0),
    "3B": (6.0, 0.3, 5.0, 11.0), "7B": (14.0, 0.7, 10.0, 25.0)}
SEED_QLORA = {  # size: (base int4, LoRA + activations, total)
    "7B": (3.5, 8.0, 11.5), "13B": (6.5, 12.0, 18.5), "70B": (35.0, 30.0, 65.0)}
SEED_SIZES = {"0.5B": 0.5e9, "1.5B": 1.5e9, "3B": 3e9, "7B": 7e9, "13B": 13e9, "70B": 70e9}
PRESET_OF_SIZE = {"0.5B": "qwen2.5-0.5b", "1.5B": "qwen2.5-1.5b", "3B": "qwen2.5-3b", "7B": "qwen2.5-7b"}


def seed_chapter_estimate(size, method: str) -> dict:
    """The chapter's figure for `size` ("0.5B".."70B", or a ModelConfig of a Qwen2.5 preset) and
    method ("full" | "lora" | "qlora"), with its parts, and the same 14N-style formula evaluated:
      full:  2N (bf16 params) + 2N (grads) + 8N (Adam m, v fp32) + the chapter's activations
      lora:  2N (frozen base) + ~16 B x N_lora (params, grads, Adam; the chapter rounds it to
             0.1 x base GB) + the chapter's activations
      qlora: N/2 (4-bit base) + the chapter's "LoRA + activations".
    N is the chapter's nominal size (0.5e9 ...). Returns GB (1e9 bytes)."""
    if isinstance(size, ModelConfig):
        match = [k for k, v in PRESET_OF_SIZE.items() if v == (size.name_or_path or "").lower()
                 or ModelConfig.preset(v).to_hf_dict() == size.to_hf_dict()]
        if not match:
            raise ValueError("seed_chapter_estimate: the chapter tabulates Qwen2.5 0.5B/1.5B/3B/7B only")
        size = match[0]
    N = SEED_SIZES.get(size)
    if N is None:
        raise ValueError(f"size {size!r}: the chapter's sizes are {', '.join(SEED_SIZES)}")
    if method in TRAIN_BASE:
        if size not in SEED_FULL:
            raise ValueError(f"the chapter has no full-SFT row for {size}")
        p, g, adam, act, total = SEED_FULL[size]
        return {"size": size, "method": "full", "chapter_total_GB": total,
                "parts_GB": {"params bf16": p, "grads": g, "Adam": adam, "activations": act},
                "formula_GB": (2 * N + 2 * N + 8 * N) / GB + act}
    if method == "lora":
        if size not in SEED_LORA:
            raise ValueError(f"the chapter has no LoRA row for {size}")
        base, ad, act, total = SEED_LORA[size]
        return {"size": size, "method": "lora", "chapter_total_GB": total,
                "parts_GB": {"base bf16": base, "LoRA params/grads/Adam": ad, "activations": act},
                "formula_GB": 2 * N / GB + ad + act}
    if method == "qlora":
        if size not in SEED_QLORA:
            raise ValueError(f"the chapter has no QLoRA row for {size}")
        base, rest, total = SEED_QLORA[size]
        return {"size": size, "method": "qlora", "chapter_total_GB": total,
                "parts_GB": {"base int4": base, "LoRA + activations": rest},
                "formula_GB": 0.5 * N / GB + rest}
    raise ValueError(f"method {method!r}: the chapter's tables are full, lora, qlora")
