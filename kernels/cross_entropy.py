"""Linear + cross-entropy without materialising all the logits.

Note: chunked loss. For Qwen2.5 the head has 151,936 outputs: at batch 4 x 1024 the fp32 logits
are 2.5 GB per copy, and autograd keeps several copies (logits, their fp32 upcast, softmax grad).
Here the tokens are cut into chunks; each chunk's logits are computed, reduced to a loss and
dropped, and recomputed in backward (torch.utils.checkpoint), so at most one chunk's logits
(chunk x vocab, fp32) live at a time. The extra cost is one more head matmul per chunk
(2 * h * vocab FLOPs per token): cheap next to what it saves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # hidden (n, h), weight (V, h), targets (n,) -> summed loss over the chunk's counted tokens
    logits = hidden @ weight.t()                                                      # (n, V)
    # Upcast before the softmax, as HF does (logits.float()): bf16 log-sum-exp over 150k entries
    # loses the small probabilities that carry the gradient.
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets over tokens != -100.

    hidden (..., h), weight (V, h), targets (...). Equals
    F.cross_entropy((hidden @ weight.T).float().flatten(0, -2), targets.flatten(), ignore_index=-100).
    """
    h = hidden.reshape(-1, hidden.shape[-1])                                           # (N, h)
    t = targets.reshape(-1)                                                            # (N,)
    count = (t != IGNORE_INDEX).sum()   # 0 when every target is -100: the mean is NaN, as F.cross_entropy's
    total = hidden.new_zeros((), dtype=torch.float32)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, h.shape[0], chunk_size):
        hc, tc = h[start:start + chunk_size], t[start:start + chunk_size]
        if need_grad:
            total = total + checkpoint(_chunk_loss_sum, hc, weight, tc, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hc, weight, tc)
    return total / count
