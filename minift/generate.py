"""Text generation: prefill once, then one token per step from a KV cache; sampling; streaming.

    prompt ids (1, T) --model(cache)--> logits of the last position --process--> next id
    next id (1, 1)    --model(cache)--> ...                                       (until eos or max)

The prompt goes through the model once ("prefill") and leaves its keys and values in a KVCache
preallocated to T + max_new_tokens; each later step feeds only the newest token, which attends to
everything cached. Only the last position goes through the LM head (logits_to_keep=1): for
Qwen2.5-0.5B the head is 136M multiply-adds per position, so computing it for the whole prompt
would be wasted work.

Batch 1 only: one prompt at a time, no padding, no attention mask. That is what a person typing
at a model needs and keeps every line here about the model, not about bookkeeping.

Choosing the next token (the order is transformers' own, so greedy output matches it token for
token, repetition penalty included):
    1. repetition_penalty: every token already in prompt + output gets logit/p if the logit is
       positive, logit*p if negative (CTRL, arXiv:1909.05858, as transformers implements it).
    2. temperature == 0: argmax (greedy). Otherwise logits / temperature,
    3. top_k: keep the k largest, 4. top_p: keep the smallest set of tokens whose probability
       reaches p (nucleus sampling, arXiv:1904.09751), then sample from the softmax.
"""
from __future__ import annotations

import contextlib
import logging
import re
import weakref
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

import torch.nn.functional as F

from minift.kernels import dispatch
from minift.lora import LoRALinear
from minift.model import KVCache

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- logits -> next token
def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (1, V) fp32; seen (1, S) ids of prompt + generated so far. Each distinct seen token
    is penalised once, however often it occurred (a gather/scatter, as transformers does)."""
    seen = seen[seen < logits.shape[-1]].view(1, -1)   # ids past the head's width cannot be generated
    score = logits.gather(1, seen)                      # (1, S)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties with the k-th kept), the rest -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (1, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter. Sorted ascending, a token is dropped when the probability mass of it and
    every smaller token is still <= 1 - p; the most likely token always stays."""
    sorted_logits, order = torch.sort(logits, descending=False)      # (1, V)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)                # (1, V)
    drop_sorted = cum <= 1 - p
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)                  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor, *, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    """The logits the next token is drawn from (fp32, (1, V)); with temperature 0 only the
    repetition penalty applies, since the argmax ignores the rest.

    Note: processing in fp32. A bf16 model's logits are upcast first (transformers does the same):
    bf16 keeps 8 significant bits, so dividing by a temperature or a penalty in bf16 would round
    near-equal logits together and change which token wins."""
    logits = logits.float()
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature > 0:
        logits = logits / temperature
        if top_k is not None and top_k > 0:
            logits = apply_top_k(logits, top_k)
        if top_p is not None and top_p < 1.0:
            logits = apply_top_p(logits, top_p)
    return logits


def _check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, min_new_tokens):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")


# ---------------------------------------------------------------------- the CPU decode kernel
# Note: decode kernels. A decode step multiplies ONE row of activations by every weight matrix, so
# on CPU it is bound by how fast the weights stream from memory; kernels/matvec.py streams them ~2x
# faster than F.linear. The model stays plain (every projection is `layer(x)`); for the length of
# each model call in a decode (the prefill and every step, never across a `yield`), decode_kernels
# puts a DecodeLinear in the place of each plain nn.Linear (q/k/v/o, gate/up/down, the head, and
# the frozen base inside a LoRALinear), sharing its weight and bias, and puts the originals back.
# Left as they are: LoRA's small adapter matrices (F.linear, as in training), Linear4bit (it
# dequantizes), a layer with hooks (they belong to the original module), and layers compiled by
# Transformer.compile_layers (the compiler has chosen how to compute them; a swapped module would
# make it recompile). The swap writes the parent's _modules dict: nn.Module.__setattr__'s checks
# cost ~10 us a module, 3% of a 0.5B decode step at 169 projections x 2. The swap belongs to the
# model, not to a thread: a second thread calling the same model during a decode step would run
# the DecodeLinears too (same weights, same results to rounding).
#
# When the compiled kernels pay (fast_matvec=None, "auto"): each decode step gets ~1.6-2x faster,
# but building the kernels costs ~4.5 s once per process (~20 s the very first time on a machine,
# while gcc fills TorchInductor's cache). Measured for Qwen2.5-0.5B on a 2-core EPYC
# (scripts/bench_generate.py): a token takes ~200 ms -> ~95 ms in fp32 (2 GB of weights read per
# token) and ~100 ms -> ~62 ms in bf16 (1 GB), so the 4.5 s come back after ~45 tokens in fp32 and
# ~120 in bf16, and every later call in the process is faster from its first token. A 40 MB model
# like tiny-10m saves ~2 ms a token and would need thousands. So "auto" compiles for CPU models of
# at least FAST_MATVEC_MIN_BYTES of parameters; True/False decide outright.
FAST_MATVEC_MIN_BYTES = 512 * 2**20


class DecodeLinear(nn.Linear):
    """An nn.Linear's stand-in during decode steps: the same weight and bias tensors (shared, not
    copied), computed by kernels/dispatch.linear, which runs kernels/matvec.py's compiled loop for
    one row on CPU and F.linear for anything else."""

    def __init__(self, layer: nn.Linear):
        nn.Module.__init__(self)  # no fresh weight: the layer's own tensors
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight, self.bias = layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.linear(x, self.weight, self.bias)


def decode_projections(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, child name, layer) for every plain nn.Linear a DecodeLinear may stand in for
    (the Note on decode kernels says which are left out and why)."""
    found = []

    def visit(parent: nn.Module) -> None:
        if getattr(parent, "_compiled_call_impl", None) is not None:  # nn.Module.compile() set it
            return
        for name, child in parent.named_children():
            if type(child) is not nn.Linear:
                visit(child)
            elif isinstance(parent, LoRALinear) and child is not parent.base_layer:
                continue  # lora_A, lora_B
            elif not (child._forward_hooks or child._forward_pre_hooks):
                found.append((parent, name, child))
    visit(model)
    return found


@contextlib.contextmanager
def decode_kernels(swaps: list[tuple[nn.Module, str, nn.Linear, nn.Linear]]) -> Iterator[None]:
    """Inside the block each (parent, name, plain, decode) has `decode` as parent.name; on exit,
    `plain` again. An empty list changes nothing."""
    for parent, name, _, decode in swaps:
        parent._modules[name] = decode
    try:
        yield
    finally:
        for parent, name, plain, _ in swaps:
            parent._modules[name] = plain


def use_fast_matvec(model, fast_matvec: bool | None = None) -> bool:
    """Whether generate decodes through kernels/matvec.py (the Note on decode kernels)."""
    if fast_matvec is not None:
        return bool(fast_matvec)
    params = list(model.parameters())
    on_cpu = bool(params) and params[0].device.type == "cpu"
    return on_cpu and sum(p.numel() * p.element_size() for p in params) >= FAST_MATVEC_MIN_BYTES


# ---------------------------------------------------------------------- the decoding loop
def stream_ids(model, input_ids: torch.Tensor, *, max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
               eos_token_ids: Sequence[int] | None = (), min_new_tokens: int = 0,
               seed: int | None = None, fast_matvec: bool | None = None) -> Iterator[int]:
    """Yield new token ids one at a time. input_ids (1, T) on the model's device. Stops after an
    eos id (which is yielded) or max_new_tokens. min_new_tokens forbids eos before that many
    tokens (transformers' MinNewTokensLength rule; benchmarks use it to fix the length).
    fast_matvec: run the decode steps' projections through the compiled CPU matrix-vector kernel
    (kernels/matvec.py; same ids in fp32, results equal to rounding); None = auto (the Note on
    decode kernels)."""
    _check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, min_new_tokens)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T) (batch 1), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token")
    if max_new_tokens == 0:
        return
    T = input_ids.shape[1]
    if T + max_new_tokens > model.config.max_position_embeddings:
        logger.warning("prompt %d + %d new tokens exceeds max_position_embeddings %d; quality will degrade",
                       T, max_new_tokens, model.config.max_position_embeddings)
    eos_set = set(eos_token_ids or ())
    eos = torch.tensor(sorted(eos_set), dtype=torch.long, device=input_ids.device)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))

    def pick(logits, seen, step):  # (1, V) logits -> (1, 1) next id
        scores = process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty)
        if step < min_new_tokens and eos.numel():
            scores[:, eos[eos < scores.shape[-1]]] = float("-inf")
        if temperature > 0:
            return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
        return scores.argmax(dim=-1, keepdim=True)

    # The model runs under inference_mode (no autograd records), but never across a `yield`:
    # grad mode is per thread, and the caller's code runs while this generator is suspended.
    # The same goes for the decode kernels: between tokens the caller sees the model it gave.
    swaps = []
    if use_fast_matvec(model, fast_matvec):
        swaps = [(parent, name, plain, DecodeLinear(plain)) for parent, name, plain in decode_projections(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), decode_kernels(swaps):
            # Note: the cache is allocated once for the whole answer: 2 (k, v) x layers x n_kv x
            # head_dim x (T + max_new_tokens) values; for Qwen2.5-0.5B in bf16, 2 x 24 x 2 x 64 x 2
            # bytes = 12 KiB per position, so 4096 positions cost 48 MiB. Preallocating avoids a
            # torch.cat per token, which would copy the whole cache every step.
            # Keys and values have the activations' dtype, which is the embedding's (a quantized
            # model's linear weights may be packed uint8, so ask the embedding, not any parameter).
            cache = KVCache(model.config, batch=1, max_len=T + max_new_tokens,
                            device=input_ids.device, dtype=model.model.embed_tokens.weight.dtype)
            seen = input_ids                                                     # (1, T + n), for the penalty
            logits = model(input_ids, cache=cache, logits_to_keep=1)[:, -1]      # prefill: (1, V)
            next_id = pick(logits, seen, 0)                                      # (1, 1)
        for step in range(max_new_tokens):
            token = int(next_id)
            yield token
            if token in eos_set or step == max_new_tokens - 1:
                return
            with torch.inference_mode(), decode_kernels(swaps):
                seen = torch.cat([seen, next_id], dim=1)
                logits = model(next_id, cache=cache, logits_to_keep=1)[:, -1]  # decode: (1, V)
                next_id = pick(logits, seen, step + 1)
    finally:
        model.train(was_training)


def generate_ids(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """(1, T) prompt -> (1, T + n): the prompt followed by the new ids (eos included if hit),
    as transformers' generate returns. Keyword arguments as stream_ids."""
    new = list(stream_ids(model, input_ids, **kwargs))
    return torch.cat([input_ids, torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)], dim=1)


# ---------------------------------------------------------------------- ids -> text, incrementally
class IncrementalDecoder:
    """Turn a growing list of ids into text that can be printed as it comes.

    A byte-level BPE token can end in the middle of a UTF-8 character: a Hangul syllable is 3
    bytes and may be split over two tokens. Decoding such a prefix gives U+FFFD (the replacement
    character) at the end. So: decode all ids so far, hold back trailing U+FFFD, and emit only
    what is new past the text already emitted. Byte-level decoding never changes text once its
    bytes are complete, so the emitted pieces join to exactly the final decode (flush() sends
    whatever is held back at the end, e.g. a genuinely invalid byte)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        stable = text.rstrip("\ufffd")
        if not stable.startswith(self.emitted):
            return ""  # a decoder that rewrites earlier text (not byte-level): wait for flush
        delta, self.emitted = stable[len(self.emitted):], stable
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if not text.startswith(self.emitted):
            logger.warning("streamed text is not a prefix of the final decode; the stream differs from the result")
            delta = text
        else:
            delta = text[len(self.emitted):]
        self.emitted = text
        return delta


def encode_prompt(tokenizer, prompt: str | list[dict] | list[int] | torch.Tensor) -> list[int]:
    """str -> ids (with tokenizer.json's BOS if it adds one, as `tokenizer(text)` does);
    list of {"role", "content"} -> chat template + generation prompt -> ids; ids pass through."""
    if isinstance(prompt, torch.Tensor):
        return prompt.reshape(-1).tolist()
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=True)
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise TypeError("prompt must be a str, a non-empty list of chat messages ({'role', 'content'} dicts), "
                    f"or a non-empty list of token ids; got {type(prompt).__name__}")


def generate_stream(model, tokenizer, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                    eos_token_ids: Sequence[int] | None = None, min_new_tokens: int = 0,
                    seed: int | None = None, fast_matvec: bool | None = None) -> Iterator[tuple[int, str]]:
    """Yield (token_id, text_delta) per generated token; the deltas join to the generated text
    (eos ids are not decoded; special tokens are skipped)."""
    eos = list(tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)
    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt)], dtype=torch.long, device=device)  # (1, T)
    decoder = IncrementalDecoder(tokenizer)
    n = 0
    for token in stream_ids(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, eos_token_ids=eos,
                            min_new_tokens=min_new_tokens, seed=seed, fast_matvec=fast_matvec):
        n += 1
        last = token in eos or n == max_new_tokens
        delta = "" if token in eos else decoder.push(token)
        if last:
            delta += decoder.flush()
        yield token, delta


def generate(model, tokenizer, prompt: str | list[dict] | list[int], max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, eos_token_ids: Sequence[int] | None = None,
             stream: Callable[[str], None] | None = None, seed: int | None = None,
             min_new_tokens: int = 0, fast_matvec: bool | None = None) -> str:
    """The new text for one prompt (batch 1).

    prompt: a string, chat messages (rendered with the chat template and an assistant prompt),
    or token ids. temperature 0 is greedy; seed makes sampling reproducible. eos_token_ids
    defaults to the tokenizer's list (generation_config + tokenizer_config). stream, if given, is
    called with each piece of text as soon as it is complete UTF-8. fast_matvec: the compiled CPU
    decode kernels (stream_ids; None = auto: on for CPU models of 512 MiB and more, which costs
    ~4.5 s once per process)."""
    pieces = []
    for _, delta in generate_stream(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p,
                                    repetition_penalty=repetition_penalty, eos_token_ids=eos_token_ids,
                                    min_new_tokens=min_new_tokens, seed=seed, fast_matvec=fast_matvec):
        if delta:
            pieces.append(delta)
            if stream is not None:
                stream(delta)
    return "".join(pieces)



# ---------------------------------------------------------------------- many prompts at once
# Note: batching. A 10M-parameter model decodes one token in a few ms, most of it per-op Python
# and kernel-launch overhead that does not grow with the batch; 32 prompts decoded together cost
# little more per step than one. An evaluation that writes 50+ stories is ~20x faster this way.
# The prompts are left-padded to one length, so every row's next token is the last column.

def _forward_padded(model, ids: torch.Tensor, positions: torch.Tensor, key_ok: torch.Tensor,
                    cache: KVCache) -> torch.Tensor:
    """One forward over a left-padded batch: ids and positions (B, T) are the new tokens;
    key_ok (B, S) marks which of the S = cache.length + T keys are real tokens (False: padding).
    Returns the last position's logits (B, V).

    Transformer.hidden_states takes no padding mask (batch-1 decoding never needs one), so this
    runs the same modules with one: a query reads the real keys at or before it. A padding query
    also reads itself, so its row has a finite score: an all-masked row would give NaN, and a NaN
    value times a zero weight is still NaN in the real rows that read it."""
    B, T = ids.shape
    past = cache.length
    causal = torch.ones(T, past + T, dtype=torch.bool, device=ids.device).tril(past)       # (T, S)
    itself = F.pad(torch.eye(T, dtype=torch.bool, device=ids.device), (past, 0))           # (T, S)
    mask = (causal[None] & key_ok[:, None, :]) | itself[None]                              # (B, T, S)
    x = model.model.embed_tokens(ids)                                                      # (B, T, h)
    cos, sin = model.model.rotary_emb(positions, x.dtype)                                  # (B, T, hd)
    for layer in model.model.layers:
        x = layer(x, cos, sin, mask[:, None], cache)
    cache.length += T
    return model.lm_head(model.model.norm(x[:, -1:]))[:, -1]                                     # (B, V)


def generate_batch(model, tokenizer, prompts: Sequence, *, max_new_tokens: int = 64, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                   no_repeat_ngram_size: int = 0, no_repeat_sentences: bool = False,
                   eos_token_ids: Sequence[int] | None = None, seed: int | None = None) -> list[str]:
    """The new text for each prompt (prompts as `generate` takes them), decoded together.

    The same choosing rules as `generate` (process_logits, row by row in one tensor), so greedy
    decoding gives generate's text for each prompt up to float rounding of the padded batch.
    With temperature > 0 one generator seeded with `seed` draws every row's tokens: the texts
    are reproducible for the same prompts in the same order and batch, not prompt by prompt.
    A row stops at its first eos; the batch stops when every row has.
    no_repeat_ngram_size n > 0: a token that would repeat an n-gram the row has already written is
    forbidden (transformers' NoRepeatNGramLogitsProcessor, over the new tokens only, so a story
    may still repeat the request's words): a long n (a sentence is ~15 tokens) stops a sentence
    from being told twice while names and particles repeat freely.
    no_repeat_sentences: a token that would end a sentence or a line the row has already written,
    word for word, is forbidden, however short the sentence ("며칠이 지났어요." is 4 tokens, below
    any n that lets names and particles repeat). Sentences as split_sentences reads the text."""
    _check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, 0)
    if not prompts:
        return []
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    B, P = len(encoded), max(len(e) for e in encoded)
    if P + max_new_tokens > model.config.max_position_embeddings:
        logger.warning("prompt %d + %d new tokens exceeds max_position_embeddings %d; quality will degrade",
                       P, max_new_tokens, model.config.max_position_embeddings)
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    ids = torch.full((B, P), pad, dtype=torch.long, device=device)                   # (B, P) left-padded
    key_ok = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=device)      # real tokens so far
    for b, e in enumerate(encoded):
        ids[b, P - len(e):] = torch.tensor(e, dtype=torch.long)
        key_ok[b, P - len(e):P] = True
    lengths = key_ok[:, :P].sum(dim=1)                                                # (B,) prompt lengths
    positions = (torch.arange(P, device=device) - (P - lengths)[:, None]).clamp(min=0)  # (B, P)
    eos = torch.tensor(sorted(set(tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)),
                       dtype=torch.long, device=device)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n_new = torch.zeros(B, dtype=torch.long, device=device)                            # tokens kept per row
    bans = ([_NGramBan(B, no_repeat_ngram_size)] if no_repeat_ngram_size else []) + \
           ([_SentenceBan(tokenizer, B)] if no_repeat_sentences else [])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cache = KVCache(model.config, batch=B, max_len=P + max_new_tokens, device=device,
                            dtype=model.model.embed_tokens.weight.dtype)
            logits = _forward_padded(model, ids, positions, key_ok[:, :P], cache)     # prefill: (B, V)
            seen = ids.masked_fill(~key_ok[:, :P], -1)                                # (B, S); -1: padding
            for step in range(max_new_tokens):
                if bans:  # before temperature and top-k, as transformers orders them
                    logits = logits.float()
                    for ban in bans:
                        ban.apply(logits)
                scores = _process_rows(logits, seen, temperature, top_k, top_p, repetition_penalty)
                if temperature > 0:
                    nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
                else:
                    nxt = scores.argmax(dim=-1)                                       # (B,)
                nxt = nxt.masked_fill(done, pad)
                out[:, step] = nxt
                for ban in bans:
                    ban.push(nxt.tolist())
                n_new += ~done
                done |= torch.isin(nxt, eos)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                key_ok[:, P + step] = True
                seen = torch.cat([seen, nxt[:, None]], dim=1)
                logits = _forward_padded(model, nxt[:, None], (lengths + step)[:, None],
                                         key_ok[:, :P + step + 1], cache)
    finally:
        model.train(was_training)
    stop = set(eos.tolist())
    return [tokenizer.decode([t for t in out[b, :int(n_new[b])].tolist() if t not in stop], skip_special_tokens=True)
            for b in range(B)]


class _NGramBan:
    """Each row's n-grams so far, indexed by their first n - 1 tokens: which tokens would close
    an n-gram the row has already written (updated one token at a time: O(1) a step)."""

    def __init__(self, rows: int, n: int):
        self.n, self.rows = n, [[] for _ in range(rows)]
        self.seen: list[dict[tuple, set]] = [{} for _ in range(rows)]

    def push(self, tokens: list[int]) -> None:
        for row, seen, t in zip(self.rows, self.seen, tokens):
            row.append(t)
            if len(row) >= self.n:
                seen.setdefault(tuple(row[len(row) - self.n:-1]), set()).add(t)

    def apply(self, scores: torch.Tensor) -> None:
        """In place: -inf where a row's next token would repeat one of its n-grams."""
        for b, (row, seen) in enumerate(zip(self.rows, self.seen)):
            banned = seen.get(tuple(row[len(row) - self.n + 1:])) if len(row) >= self.n - 1 else None
            if banned:
                scores[b, list(banned)] = float("-inf")


# A sentence ends at . ! or ? followed by white space, and at a line end (a line may end without
# punctuation: a title, a moral).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Every sentence and every line of `text`, stripped, empty ones left out."""
    return [s.strip() for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]


class _SentenceBan:
    """Each row's text so far (its new tokens, decoded): which tokens would end a sentence or a
    line that the row has already written. Only exact repeats: "며칠이 지났어요 ." with a space is
    another sentence, as split_sentences reads it. Finished lines are read once, when they end,
    so a step decodes only the row's current line."""

    def __init__(self, tokenizer, rows: int):
        self.decode = tokenizer.decode
        self.closers, self.line_enders = _sentence_closers(tokenizer)
        self.lines = [[] for _ in range(rows)]      # each row's tokens since its last line end
        self.said = [set() for _ in range(rows)]    # the sentences of each row's finished lines

    def push(self, tokens: list[int]) -> None:
        for line, said, t in zip(self.lines, self.said, tokens):
            line.append(t)
            if t in self.line_enders:
                *finished, rest = self.decode(line, skip_special_tokens=True).split("\n")
                said.update(split_sentences("\n".join(finished)))
                line[:] = [t] if rest else []       # a token that goes on past its newline starts the next line

    def apply(self, scores: torch.Tensor) -> None:
        """In place: -inf where a row's next token would close a sentence it has said before."""
        for b, (line, said_before) in enumerate(zip(self.lines, self.said)):
            if not line:
                continue
            *finished, current = self.decode(line, skip_special_tokens=True).split("\n")
            *said_in_line, tail = _SENTENCE_END.split(current)
            said = said_before | set(split_sentences("\n".join(finished + said_in_line)))
            start = tail.lstrip()           # the unfinished sentence, as it will be stripped
            banned = [t for sentence in said if sentence.startswith(start)
                      for t in self.closers.get(sentence[len(start):], ())]
            if banned:
                scores[b, banned] = float("-inf")


_CLOSERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sentence_closers(tokenizer) -> tuple[dict[str, list[int]], set[int]]:
    """The tokens that can end a sentence or a line, keyed by the text each adds up to that end
    ('.' for '.' and for '. ', '요.' for '요.', '' for '\n', '.' for '.\n'), and the ids of those that
    end a line. Built once per tokenizer (Qwen's 151k tokens take a fraction of a second)."""
    if tokenizer in _CLOSERS:
        return _CLOSERS[tokenizer]
    closers: dict[str, list[int]] = {}
    line_enders: set[int] = set()
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        if "\n" in text:
            key = text.split("\n")[0].rstrip()      # the line ends here, and is stripped
            line_enders.add(token_id)
        elif text.rstrip().endswith((".", "!", "?")):
            key = text.rstrip()                     # the sentence ends at the mark
        else:
            continue
        closers.setdefault(key, []).append(token_id)
    _CLOSERS[tokenizer] = closers, line_enders
    return closers, line_enders


def _process_rows(logits, seen, temperature, top_k, top_p, repetition_penalty) -> torch.Tensor:
    """process_logits for each row of (B, V) logits; seen (B, S) ids, -1 where padding. Temperature,
    top-k and top-p work on any number of rows; the penalty's gather is written for one."""
    if repetition_penalty == 1.0:
        return process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.cat([process_logits(row[None], ids[ids >= 0][None], temperature=temperature, top_k=top_k,
                                     top_p=top_p, repetition_penalty=repetition_penalty)
                      for row, ids in zip(logits, seen)])
