"""minift.generate against transformers' generate (tiny random Qwen2 and Llama, fp32 CPU), against
a cache-free recomputation, and the sampling / streaming contracts."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from minift.config import ModelConfig
from minift.generate import (IncrementalDecoder, generate, generate_ids, generate_stream, process_logits,
                             stream_ids)
from minift.model import Transformer
from minift.tokenizer import train_bpe

VOCAB = 320
KOREAN = [
    "옛날 옛적에 깊은 산속에 호랑이 한 마리가 살았어요.",
    "어머니는 떡을 이고 고개를 넘었어요. 떡 하나 주면 안 잡아먹지!",
    "해님 달님 이야기는 오누이가 하늘로 올라가는 이야기예요.",
    "The tiger loved rice cakes.",
]


def _pair(arch: str, seed: int = 0):
    """A tiny random transformers model and the minift model holding the same weights."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True, rope_theta=10000.0,
                  initializer_range=0.2)  # 0.02 gives a model that repeats its last token forever
    if arch == "qwen2":
        hf = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        hf = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False, rms_norm_eps=1e-5))
    hf.eval()
    ours = Transformer(ModelConfig.from_hf_dict(hf.config.to_dict()))
    ours.load_state_dict(hf.state_dict())
    return hf, ours.eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))


def _hf_generate(hf, ids, **kw):
    return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_transformers(pair, prompt, penalty):
    hf, ours = pair
    want = _hf_generate(hf, prompt, max_new_tokens=32, repetition_penalty=penalty, eos_token_id=None)
    got = generate_ids(ours, prompt, max_new_tokens=32, repetition_penalty=penalty)
    assert got.shape == (1, 9 + 32)
    assert torch.equal(got, want)
    assert len(set(got[0, 9:].tolist())) > 3  # not a degenerate repeat-one-token run


def test_stops_at_eos_like_transformers(pair, prompt):
    hf, ours = pair
    free = generate_ids(ours, prompt, max_new_tokens=20)[0, 9:].tolist()
    eos = free[6]
    first = free.index(eos)  # the first time it appears is where both must stop (eos included)
    want = _hf_generate(hf, prompt, max_new_tokens=20, eos_token_id=[eos, VOCAB - 1])
    got = generate_ids(ours, prompt, max_new_tokens=20, eos_token_ids=[eos, VOCAB - 1])
    assert got.shape[1] == 9 + first + 1 and got[0, -1].item() == eos
    assert torch.equal(got, want)
    # min_new_tokens forbids it until then, as in transformers
    want = _hf_generate(hf, prompt, max_new_tokens=20, min_new_tokens=first + 3, eos_token_id=eos)
    got = generate_ids(ours, prompt, max_new_tokens=20, min_new_tokens=first + 3, eos_token_ids=[eos])
    assert got.shape[1] > 9 + first + 1
    assert torch.equal(got, want)


def test_cached_decode_equals_full_recompute(pair, prompt):
    _, ours = pair
    got = generate_ids(ours, prompt, max_new_tokens=16)
    ids = prompt
    with torch.no_grad():
        for _ in range(16):  # no cache: the whole sequence through the model every step
            nxt = ours(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(got, ids)


def test_top_k_1_is_greedy_and_seeds_reproduce(pair, prompt):
    _, ours = pair
    greedy = generate_ids(ours, prompt, max_new_tokens=12)
    assert torch.equal(generate_ids(ours, prompt, max_new_tokens=12, temperature=1.0, top_k=1, seed=3), greedy)
    a = generate_ids(ours, prompt, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    b = generate_ids(ours, prompt, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    c = generate_ids(ours, prompt, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=8)
    assert torch.equal(a, b)
    # 12 draws from a broad 320-way distribution: two seeds agreeing everywhere would mean
    # the seed is ignored (chance of a coincidence ~ 0).
    assert not torch.equal(a, c)
    assert not ours.training  # and the model's train/eval mode is restored
    ours.train()
    generate_ids(ours, prompt, max_new_tokens=2)
    assert ours.training
    ours.eval()


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [(0.7, 50, 0.9, 1.3), (1.0, None, 0.95, 1.0),
                                                                (1.5, 5, None, 0.8), (0.3, None, None, 1.1)])
def test_logit_processing_equals_transformers(temperature, top_k, top_p, penalty):
    # Same arithmetic in the same order as transformers' processors, so equal bit for bit.
    g = torch.Generator().manual_seed(0)
    procs = [RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature)]
    procs += [TopKLogitsWarper(top_k)] if top_k else []
    procs += [TopPLogitsWarper(top_p)] if top_p else []
    for _ in range(5):
        logits = torch.randn(1, 500, generator=g) * 3
        seen = torch.randint(0, 500, (1, 40), generator=g)
        want = LogitsProcessorList(procs)(seen, logits.clone())
        got = process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=penalty)
        assert torch.equal(got, want)


def test_stream_ids_keeps_inference_mode_to_itself(pair, prompt):
    _, ours = pair
    seen = []
    for token in stream_ids(ours, prompt, max_new_tokens=3):
        seen.append((token, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
    assert [(m, g) for _, m, g in seen] == [(False, True)] * 3  # the caller's grad mode while suspended
    assert [t for t, _, _ in seen] == generate_ids(ours, prompt, max_new_tokens=3)[0, 9:].tolist()


def test_bad_arguments(pair, prompt):
    _, ours = pair
    with pytest.raises(ValueError, match="batch 1"):
        generate_ids(ours, prompt.repeat(2, 1), max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate_ids(ours, prompt, max_new_tokens=2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate_ids(ours, prompt, max_new_tokens=2, temperature=-1.0)


# ---------------------------------------------------------------------- text and streaming
@pytest.fixture(scope="module")
def byte_tok():
    # Few merges, so most Hangul syllables stay 3 single-byte tokens: a stream that is cut
    # token by token cuts through the middle of characters.
    return train_bpe(KOREAN * 4, vocab_size=280)


def test_incremental_decoder_never_splits_a_character(byte_tok):
    text = " ".join(KOREAN)
    ids = byte_tok.encode(text)
    assert len(ids) > len(text)  # characters really are split across tokens
    dec = IncrementalDecoder(byte_tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(p == "" for p in pieces) > 10  # pieces were held back while a syllable was incomplete


def test_generate_streams_the_returned_text(byte_tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=byte_tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Transformer(cfg).eval()
    pieces = []
    text = generate(model, byte_tok, "옛날 옛적에", max_new_tokens=60, temperature=1.0, seed=0,
                    stream=pieces.append)
    assert "".join(pieces) == text
    # The returned text is the decode of exactly the generated ids, eos excluded.
    prompt_ids = torch.tensor([byte_tok.encode("옛날 옛적에", add_special_tokens=True)])
    new = generate_ids(model, prompt_ids, max_new_tokens=60, temperature=1.0, seed=0,
                       eos_token_ids=byte_tok.eos_token_ids)[0, prompt_ids.shape[1]:].tolist()
    new = [t for t in new if t not in byte_tok.eos_token_ids]
    assert text == byte_tok.decode(new, skip_special_tokens=True)
    # A random model over 280 byte-ish tokens emits multi-byte characters (and stray continuation
    # bytes, which decode to U+FFFD in the result and in the stream alike: the join above).
    assert any(ord(ch) > 0x7F for ch in text)

    # Chat messages go through the chat template with a generation prompt.
    messages = [{"role": "user", "content": "호랑이 이야기 해 줘"}]
    ids = byte_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert generate(model, byte_tok, messages, max_new_tokens=15) == generate(model, byte_tok, ids, max_new_tokens=15)
    steps = list(generate_stream(model, byte_tok, ids, max_new_tokens=15))
    assert len(steps) <= 15 and "".join(d for _, d in steps) == generate(model, byte_tok, ids, max_new_tokens=15)
