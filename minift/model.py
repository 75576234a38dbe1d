"""The decoder: one file, top to bottom, the way Hugging Face's Qwen2 and Llama compute it.

    input_ids (B, T)
      -> model.embed_tokens                         (B, T, h)
      -> num_hidden_layers x DecoderLayer:
             x = x + self_attn(input_layernorm(x))      RMSNorm -> q,k,v -> RoPE -> GQA attention -> o_proj
             x = x + mlp(post_attention_layernorm(x))   down(silu(gate(x)) * up(x))
      -> model.norm -> lm_head                      (B, T, vocab)

Parameter names are the checkpoint's (`model.layers.0.self_attn.q_proj.weight`, ...), so loading
is a key-by-key copy and LoRA targets are the names peft users already know.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minift import fused_projections
from minift.config import ModelConfig
from minift.kernels import linear_cross_entropy_fused, dispatch


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Note: the normalisation runs in fp32 and the result is cast back to the
    input dtype *before* the weight multiply; that is HF's order, and bf16 parity depends on it."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The math, as kernels/rmsnorm.py rms_norm_reference runs it (CPU, MPS):
        #     x32 = x.float()
        #     x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        #     return self.weight * x32.to(x.dtype)
        # On CUDA, dispatch runs the Triton kernel with a backward that saves only x and 1/rms.
        return dispatch.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """RoPE in the HF ("rotate half") convention: element i pairs with element i + head_dim/2.

    inv_freq is computed in fp32 and is not saved (HF keeps it as a non-persistent buffer too)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        # Computed on the CPU, then moved to the default device: under `with torch.device("meta")`
        # (the loader's shape-only model) the arithmetic would run through torch's Python reference
        # ops, which import torch._dynamo: ~150 MB of a CPU process's resident memory, for a buffer
        # the loader recomputes anyway.
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        inv_freq = (1.0 / theta ** exponent).to(torch.get_default_device())
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hd/2,)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 with autocast off: bf16 angles at position 30,000 would be off by whole radians.
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)                          # (B, T, hd)
            return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, nh, T, hd); cos, sin (B, T, hd) -> broadcast over heads:
    #     x * cos[:, None] + rotate_half(x) * sin[:, None]
    # (kernels/rope.py apply_rope_reference; on CUDA, dispatch runs the one-pass Triton kernel)
    return dispatch.apply_rope(x, cos, sin)


class KVCache:
    """Keys and values of every layer for decoding, preallocated to max_len.

    k[layer], v[layer]: (B, n_kv_heads, max_len, head_dim); `length` tokens are filled."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v (B, n_kv, T, hd) for the new tokens -> all keys/values so far (B, n_kv, length+T, hd)
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, h, bias=cfg.o_bias)
        self.impl = "sdpa"  # or "eager": the plain softmax(QK^T/sqrt(d))V a reader can step through
        # set while minift/fused_projections.py fuses q, k and v into one matmul (training); not saved
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)
        self.fused = False   # q, k, v through fused_projections.linear (with the buffers above, or NF4)

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        B, T, _ = x.shape
        if self.fused:   # one matmul for the three (and one for their adapters), or NF4 bases sharing x
            q, k, v = fused_projections.linear(x, self.qkv_weight, self.qkv_bias,
                                               (self.q_proj, self.k_proj, self.v_proj))
            # v may be columns of one (B, T, q + k + v) output; attention keeps v for backward, and
            # a view would keep all of that output alive (q and k are copied by RoPE anyway)
            v = v.contiguous()
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)               # (B, T, nh*hd), (B, T, nkv*hd) x 2
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)                  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)                     # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)                     # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                         # (B, nkv, S, hd), S = past + T
        if self.impl == "eager":
            y = eager_attention(q, k, v, mask)
        else:
            # mask None: causal when queries and keys are the same positions; a single decoded
            # token (T == 1) is the newest position and may read every cached key.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               enable_gqa=self.n_kv != self.n_heads)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd)              # (B, T, nh*hd)
        return self.o_proj(y)


def eager_attention(q, k, v, mask):
    """Reference attention: each query head j reads key/value head j // (nh/nkv) (grouped-query
    attention, arXiv:2305.13245). Softmax in fp32, as HF's eager path does."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)                               # (B, nh, S, hd)
    v = v.repeat_interleave(group, dim=1)                               # (B, nh, S, hd)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])          # (B, nh, T, S)
    if mask is None:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs @ v                                                     # (B, nh, T, hd)


class MLP(nn.Module):
    """SwiGLU (arXiv:2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(h, f, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(f, h, bias=cfg.mlp_bias)
        # set while minift/fused_projections.py fuses gate and up into one matmul (training); not saved
        self.register_buffer("gate_up_weight", None, persistent=False)
        self.register_buffer("gate_up_bias", None, persistent=False)
        self.fused = False   # gate, up through fused_projections.linear (with the buffers above, or NF4)

    def forward(self, x):
        # dispatch.swiglu(gate, up) = F.silu(gate) * up (kernels/swiglu.py; on CUDA a fused kernel
        # whose backward saves gate and up only)
        if self.fused:
            gate, up = fused_projections.linear(x, self.gate_up_weight, self.gate_up_bias,
                                                (self.gate_proj, self.up_proj))
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)                   # (B, T, f) each
        return self.down_proj(dispatch.swiglu(gate, up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Decoder(nn.Module):
    """The `model.` part of the checkpoint: embeddings, layers, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        if not self.embed_tokens.weight.is_meta:
            # nn.Embedding's own N(0, 1) draw, which init_weights overwrites: kept so that a seeded
            # model is the one it always was. Not on the meta device (the loader's shape-only
            # model), where normal_ would import torch._dynamo (see RotaryEmbedding).
            nn.init.normal_(self.embed_tokens.weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one tensor, two names
        self.gradient_checkpointing = False
        # With checkpointing on: how many layers, counted from the bottom, are checkpointed (None:
        # all). The others keep their activations: less recompute for more memory (Note: partial
        # checkpointing).
        self.checkpoint_layers: int | None = None
        self.loss_chunk_size = 1024  # tokens per chunk of the fused head + loss (Note: chunked loss)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None):
        """N(0, initializer_range) for matrices, zeros for biases, ones for norms (HF's scheme),
        with the residual projections scaled by 1/sqrt(2 * layers) as GPT-2 does, so a deep model
        trained from scratch starts with unit-scale residuals. Pretrained weights overwrite all this."""
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = resid_std if name.endswith(("o_proj", "down_proj")) else std
                module.weight.normal_(0.0, s, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    # ------------------------------------------------------------------ forward
    def set_attention(self, impl: str) -> None:
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention impl must be 'sdpa' or 'eager', not {impl!r}")
        for layer in self.model.layers:
            layer.self_attn.impl = impl

    def hidden_states(self, input_ids, *, position_ids=None, segment_ids=None, cache: KVCache | None = None):
        """Everything but the head: (B, T) token ids -> (B, T, h) after the final norm.

        position_ids (B, T): defaults to 0..T-1 (offset by what the cache holds).
        segment_ids (B, T): for packed batches; tokens attend only within their own segment, so
        examples packed into one row never see each other (pair it with positions restarting at 0).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)                                    # (B, T, h)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)                   # (B, T, hd) each
        mask = attention_mask(T, past, segment_ids, input_ids.device)             # None or (B|1, 1, T, S)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        # Saving and restoring the RNG state is only needed to redraw dropout masks identically in
        # the recomputation; without active dropout it is skipped (it would also read the CUDA RNG
        # state, which is not allowed while a CUDA graph is being captured: minift/cuda_graph.py).
        keep_rng = ckpt and any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.model.layers.modules())
        # Note: partial checkpointing. The bottom layers are the checkpointed ones: backward reaches
        # them last, when the top layers' saved activations are already freed, so a recompute
        # never runs beside them (torchtune's selective checkpointing picks every k-th layer
        # instead; for the peak, the bottom is the better place).
        checkpointed = len(self.model.layers) if self.checkpoint_layers is None else self.checkpoint_layers
        for i, layer in enumerate(self.model.layers):
            if ckpt and i < checkpointed:
                # Note: gradient checkpointing keeps only each layer's input and recomputes the rest
                # in backward: activations fall from ~tens of sbh bytes per layer to 2sbh.
                x = checkpoint(layer, x, cos, sin, mask, None, use_reentrant=_reentrant(layer, x),
                               preserve_rng_state=keep_rng)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)                                                 # (B, T, h)

    def forward(self, input_ids, targets=None, *, position_ids=None, segment_ids=None,
                cache: KVCache | None = None, logits_to_keep: int = 0):
        """Logits (B, T, vocab), or with `targets` the mean cross-entropy.

        targets (B, T): the token each position must predict (already shifted, as in nanoGPT),
        -100 where no loss is taken. With targets the head and the loss run chunk by chunk and the
        full (B, T, vocab) logits are never stored. kernels/cross_entropy.py is the readable version;
        kernels/linear_cross_entropy_fused.py, used here, computes the gradient in the forward pass
        and so saves one head matmul per chunk.
        logits_to_keep: if > 0, only the last that many positions go through the head (decoding)."""
        x = self.hidden_states(input_ids, position_ids=position_ids, segment_ids=segment_ids, cache=cache)
        if targets is not None:
            return linear_cross_entropy_fused.linear_cross_entropy(x, self.lm_head.weight, targets,
                                                                   chunk_size=self.loss_chunk_size)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.lm_head(x)                                                    # (B, T, vocab)

    def compile_layers(self, **options) -> None:
        """torch.compile each decoder layer in place. The layers are one class, so they share one
        compiled graph; the compiler fuses the small elementwise ops (norms, residual adds, the
        LoRA casts and scales) and removes most of the per-op Python overhead, which is what
        bounds a small model's step on a fast GPU. The eager code above stays the reference."""
        for layer in self.model.layers:
            layer.compile(**options)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() lists a tied tensor once


def _reentrant(layer: nn.Module, x: torch.Tensor) -> bool:
    """Note: which checkpoint. torch's non-reentrant checkpoint runs two Python hooks per tensor
    the layer saves (about 45 a layer here); the reentrant one runs the layer under no_grad and
    replays it once in backward, hooks-free. Eager, where the host's Python is the step's time
    (the lean rows on a GPU), the reentrant one is cheaper. It needs an input that requires grad,
    or nothing reaches the layer's adapters (the first layer's input, a frozen embedding's output,
    does not). Compiled layers, CUDA graph capture and distributed training (DDP's and FSDP2's
    gradient hooks expect each parameter's gradient once, from the outer backward) keep the
    non-reentrant one they were built and measured with."""
    return (x.requires_grad and getattr(layer, "_compiled_call_impl", None) is None
            and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
            and not (torch.distributed.is_available() and torch.distributed.is_initialized()))


def attention_mask(T: int, past: int, segment_ids, device):
    """None where no tensor is needed: plain causal attention from position 0 (SDPA's is_causal
    fast path), or one decoded token reading the whole cache. Otherwise a boolean mask,
    True = may attend, (B|1, 1, T, past + T)."""
    if segment_ids is None and (past == 0 or T == 1):
        return None
    S = past + T
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)      # (T, S)
    if segment_ids is None:
        return causal[None, None]
    if past:
        raise ValueError("segment_ids (packing) are for training, not for decoding with a cache")
    same = segment_ids[:, :, None] == segment_ids[:, None, :]                # (B, T, T)
    return (causal[None] & same)[:, None]                                     # (B, 1, T, T)
