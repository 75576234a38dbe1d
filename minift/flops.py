"""FLOPs per token for each path, and what they mean in hours and in MFU.

A matmul of an (n, i) input with an (i, o) weight costs 2*n*i*o FLOPs (a multiply and an add).
Per token, with N = the parameters that take part in matmuls (every projection plus the LM head;
the embedding lookup is a gather, not a matmul; norms and biases are noise):

    forward                      2N
    backward, input gradients    2N     (dL/dx = dL/dy @ W)
    backward, weight gradients   2N     (dL/dW = dL/dy^T @ x) -- only for weights that train
    full training                6N     (Kaplan et al. 2020; EleutherAI "Transformer Math 101")
    LoRA / QLoRA                 4N + 6 N_lora   (frozen W: no weight gradients; the adapter's
                                 own matmuls train in full; "LoRA Without Regret", 2025)
    inference (prefill/decode)   2N
    + attention scores and mixing, which have no weights: per layer and token, q.k^T over T
      keys and probs @ v: 2 * 2 * T * (heads*head_dim) forward, so 12 * L * H * Q * T for
      training (PaLM, arXiv:2204.02311 App. B: 6N + 12*L*H*Q*T), 4 * L * H * Q * T forward.
      That counts the full T x T square; causal attention needs half (flash skips the masked
      blocks), but MFU conventionally uses PaLM's form, so `causal=False` is the default.
    + gradient checkpointing: one more forward of the layers (2N_layers + 4LHQT) -- hardware
      FLOPs, not model FLOPs: MFU leaves recomputation out (PaLM App. B).
    + minift's chunked loss recomputes the head in backward: 2*V*h more (also not model FLOPs).

MFU = tokens/s x model FLOPs per token / peak FLOP/s. The H200 does about 790 TFLOP/s of dense
bf16 matmul in practice (the spec sheet says ~989): anchors.md measured the former.
"""
from __future__ import annotations

from dataclasses import dataclass

from minift.config import ModelConfig

H200_BF16_FLOPS = 790e12
METHODS = ("scratch", "cpt", "full", "lora", "qlora", "inference")


def matmul_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters that multiply activations, by place: the layers' projections and the LM head."""
    h, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    layers = L * (h * qd + 2 * h * kd + qd * h + 3 * h * f)
    return {"layers": layers, "lm_head": cfg.vocab_size * h}


@dataclass
class FlopsPerToken:
    model: float         # model FLOPs per token (what MFU counts)
    hardware: float      # plus recomputation (checkpointing, chunked-loss head)
    parts: dict          # name -> FLOPs per token


def flops_per_token(cfg: ModelConfig, method: str, seq: int, *, grad_ckpt: bool = False, lora_r: int = 16,
                    lora_targets="all-linear", chunked_loss: bool = True, causal: bool = False,
                    ckpt_layers: int | None = None) -> FlopsPerToken:
    """ckpt_layers: with grad_ckpt, the layers checkpointed (None: all); only they are recomputed."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    if not isinstance(seq, int) or seq <= 0:
        raise ValueError(f"seq must be a positive integer, got {seq!r}")
    mp = matmul_params(cfg)
    N = mp["layers"] + mp["lm_head"]
    attn_fwd = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq * (0.5 if causal else 1)
    parts: dict[str, float] = {}
    if method == "inference":
        parts = {"forward 2N": 2 * N, "attention forward": attn_fwd}
        total = sum(parts.values())
        return FlopsPerToken(total, total, parts)
    if method in ("lora", "qlora"):
        from minift.memory import lora_param_count
        n_lora = lora_param_count(cfg, lora_r, lora_targets)
        parts = {"forward 2N": 2 * N, "input gradients 2N": 2 * N, "adapter 6 N_lora": 6 * n_lora,
                 "attention fwd + bwd": 3 * attn_fwd}
    else:
        parts = {"forward 2N": 2 * N, "backward 4N": 4 * N, "attention fwd + bwd": 3 * attn_fwd}
    model = sum(parts.values())
    extra = {}
    if grad_ckpt:
        share = 1.0 if ckpt_layers is None else ckpt_layers / cfg.num_hidden_layers
        extra["recompute layers (checkpointing)"] = share * (2 * mp["layers"] + attn_fwd)
    if chunked_loss:
        extra["recompute head (chunked loss)"] = 2 * mp["lm_head"]
    parts.update(extra)
    return FlopsPerToken(model, model + sum(extra.values()), parts)


def training_time(cfg: ModelConfig, method: str, tokens: float, tokens_per_s: float | None = None,
                  device_tflops: float | None = None, mfu: float = 0.4, *, seq: int = 1024,
                  grad_ckpt: bool = False, lora_r: int = 16) -> float:
    """Hours to process `tokens` training tokens (all epochs together).

    With a measured tokens_per_s that is just tokens / rate. Otherwise from FLOPs: model FLOPs
    per token x tokens / (device_tflops x 1e12 x mfu); device_tflops defaults to the H200's 790."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if tokens_per_s is not None:
        if tokens_per_s <= 0:
            raise ValueError(f"tokens_per_s must be > 0, got {tokens_per_s}")
        return tokens / tokens_per_s / 3600
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    peak = (device_tflops * 1e12) if device_tflops else H200_BF16_FLOPS
    if peak <= 0:
        raise ValueError(f"device_tflops must be > 0, got {device_tflops}")
    fpt = flops_per_token(cfg, method, seq, grad_ckpt=grad_ckpt, lora_r=lora_r).model
    return tokens * fpt / (peak * mfu) / 3600


def mfu(cfg: ModelConfig, method: str, tokens_per_s: float, peak_flops: float = H200_BF16_FLOPS, *,
        seq: int = 1024, lora_r: int = 16) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (PaLM App. B)."""
    if tokens_per_s < 0 or peak_flops <= 0:
        raise ValueError(f"tokens_per_s must be >= 0 and peak_flops > 0 (got {tokens_per_s}, {peak_flops})")
    return tokens_per_s * flops_per_token(cfg, method, seq, lora_r=lora_r).model / peak_flops
