"""Path 1, training from scratch (minift.scratch), end to end on a test-sized model.

One run, shared by the tests below (module fixture): 40 synthetic Korean stories -> a 320-token
byte-level BPE -> a 2-layer, hidden-64 Qwen2 decoder (the tiny-10m preset with model_overrides)
-> 20 AdamW steps -> the Hugging Face layout on disk. The result must be an ordinary checkpoint:
minift and transformers load it to the same logits, transformers' tokenizer reads the same ids,
and generation_config.json lists both stop tokens. CPU, fp32, nothing downloaded.
"""
import json
import math
import os

import pytest
import torch

import minift
from minift import fairytales
from minift.generate import generate_ids
from minift.data import read_jsonl
from minift.scratch import (STORY_BASE, ScratchConfig, model_config, pretrain_rows, request_documents,
                            request_sketches, story_base_config, train_from_scratch)
from minift.tokenizer import train_bpe

transformers = pytest.importorskip("transformers")

VOCAB = 320          # 256 byte symbols + 3 special tokens + ~60 merges: small, and a real BPE
STEPS = 20
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
PROMPT = "옛날 옛적에 호랑이와 토끼가 살았어요."


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scratch")
    corpus = root / "corpus.txt"
    fairytales.write_corpus(fairytales.generate_stories(40, seed=0), str(corpus))
    cfg = ScratchConfig(corpus=str(corpus), out_dir=str(root / "tiny"), vocab_size=VOCAB, seq_len=64,
                        batch_size=4, steps=STEPS, lr=3e-3, warmup=5, eval_every=10, save_every=10,
                        val_fraction=0.1, device="cpu", seed=0, progress=False, model_overrides=SMALL,
                        request_docs=10)
    torch.manual_seed(123)  # the run reseeds itself; this only shows the result does not depend on it
    return cfg, train_from_scratch(cfg)


def test_report_and_the_loss_goes_down(scratch_run):
    cfg, report = scratch_run
    r = report.result
    assert r.final_step == STEPS and len(r.losses) == STEPS
    assert all(math.isfinite(x) for x in r.losses)
    # A random init predicts ~uniformly: the first loss is close to ln(vocab) = 5.77.
    assert abs(r.losses[0] - math.log(VOCAB)) < 0.5
    # 20 steps at lr 3e-3 learn the byte/merge statistics of Korean text: the mean of the last five
    # losses is well below the first five (measured: 5.66 -> 4.67). A loop that did not update
    # the weights (or updated the wrong ones) stays at ~5.7.
    first, last = sum(r.losses[:5]) / 5, sum(r.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    # Validation (held-out stories) improves too, from step 10 to step 20.
    assert [e["step"] for e in r.eval_history] == [10, 20]
    assert r.eval_history[1]["loss"] < r.eval_history[0]["loss"] < math.log(VOCAB)
    assert report.num_params == sum(p.numel() for p in minift.load_pretrained(cfg.out_dir, dtype="float32",
                                                                               device="cpu").parameters())
    assert report.train_tokens > 0 and report.sample.startswith(cfg.sample_prompt)


def test_request_documents_are_plain_text_and_not_the_fine_tuning_requests():
    """Pre-training documents "request\nstory": no chat markup (the chat template is what
    fine-tuning teaches), and none of them is a request of the shipped pairs file (which is what
    the story evaluation holds out)."""
    n = 1000
    docs = request_documents(n, ScratchConfig().request_seed)
    pairs = fairytales.generate_pairs(n, ScratchConfig().request_seed)
    assert len(docs) == n and docs[0].endswith("\n" + pairs[0].output) and docs[0].startswith(pairs[0].instruction)
    assert all("<|" not in d and "\n\n" not in d for d in docs)  # one document each for read_text's splitting
    shipped = {c[0]["content"] for c in read_jsonl(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "data", "fairytales_pairs.jsonl")).conversations}
    asked = {p.instruction + ("\n\n" + p.input if p.input else "") for p in pairs}
    assert not shipped & asked


def test_model_overrides_give_the_small_model_and_bad_keys_are_named():
    tok = train_bpe(["가나다라 마바사"] * 3, vocab_size=270)
    cfg = model_config(ScratchConfig(vocab_size=270, model_overrides=SMALL), tok)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size) == (64, 2, 16, 270)
    # hidden 64 / 4 heads: head_dim re-derived (the preset's own head_dim is 64), so q_proj is 64 x 64.
    with pytest.raises(ValueError, match="hidden_sise"):
        model_config(ScratchConfig(model_overrides={"hidden_sise": 64}), tok)
    with pytest.raises(ValueError, match="vocab_size"):
        model_config(ScratchConfig(model_overrides={"vocab_size": 999}), tok)


def test_checkpoint_loads_in_minift_and_transformers_with_the_same_logits(scratch_run):
    cfg, _ = scratch_run
    out = cfg.out_dir
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name

    ours = minift.load_pretrained(out, dtype="float32", device="cpu")
    tok = minift.load_tokenizer(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)

    ids = tok.encode(PROMPT)
    assert hf_tok(PROMPT, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == PROMPT
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token == "<|endoftext|>"

    x = torch.tensor([ids])                                                   # (1, T)
    with torch.no_grad():
        got, want = ours(x), hf(x).logits                                     # (1, T, V)
    assert got.shape == want.shape == (1, len(ids), VOCAB)
    # fp32, same weights, same decoder math; atol 1e-5 covers reduction-order differences between
    # minift's attention and transformers' eager attention (measured max |diff| 9.5e-7, logits up to 2.4).
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # The trained head is not a uniform guess: the logits carry real spread.
    assert float(want.std()) > 0.5


def test_generation_config_holds_both_stop_ids(scratch_run):
    cfg, _ = scratch_run
    tok = minift.load_tokenizer(cfg.out_dir)
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    with open(os.path.join(cfg.out_dir, "generation_config.json"), encoding="utf-8") as f:
        gen = json.load(f)
    assert gen["eos_token_id"] == [im_end, eot] and gen["pad_token_id"] == eot
    assert tok.eos_token_ids == [im_end, eot]
    hf_gen = transformers.GenerationConfig.from_pretrained(cfg.out_dir)
    assert hf_gen.eos_token_id == [im_end, eot]
    # Greedy decoding agrees between minift (KV cache) and transformers' generate, stop ids included.
    ours = minift.load_pretrained(cfg.out_dir, dtype="float32", device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(cfg.out_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    ids = tok.encode("옛날 옛적에")
    new_ours = generate_ids(ours, torch.tensor([ids]), max_new_tokens=12, eos_token_ids=tok.eos_token_ids)
    new_hf = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, generation_config=hf_gen)
    assert new_ours.tolist() == new_hf.tolist()


def test_every_pretraining_document_ends_with_the_eos_the_chat_template_closes_turns_with():
    """The from-scratch stream separates documents with <|im_end|> (the tokenizer's eos), the
    token the chat template ends the assistant's turn with: LoRA cannot train its row of the frozen
    tied embedding, so the base must already predict it where a story ends."""
    docs = fairytales.generate_stories(6, seed=3)
    tok = train_bpe(docs, VOCAB)
    data = pretrain_rows(docs, tok, 64, val_fraction=0.0, seed=0)
    last = data.train[-1]
    stream = [t for ex in data.train for t in ex.input_ids[:len(ex) - ex.num_padding]] \
        + [last.targets[len(last) - last.num_padding - 1]]                 # the rows' one token stream
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert tok.eos_token_id == im_end
    assert stream.count(im_end) == len(docs) and eot not in stream
    assert stream[:len(tok.encode(docs[0])) + 1] == tok.encode(docs[0]) + [im_end]


def test_story_base_is_the_small_preset_on_requests():
    cfg = story_base_config(steps=7)
    assert (cfg.preset, cfg.vocab_size, cfg.split, cfg.steps) == ("tiny-2.5m", 4096, "particles", 7)
    assert cfg.request_docs > 0 and cfg.out_dir == STORY_BASE["out_dir"] != ScratchConfig().out_dir
    model = minift.Transformer(minift.ModelConfig.preset("tiny-2.5m"))
    assert model.num_params() == 2_559_936


def test_request_sketches_hold_the_request_the_opening_and_the_closing_of_new_pairs():
    """A sketch is its pair's request, then the story's first paragraph (with a title line before
    it) and its last (with a 교훈 line after it), the middle left out; pairs after the request
    documents' own, so no story is in both."""
    seed, skip, n = ScratchConfig().request_seed, 50, 200
    sketches = request_sketches(n, seed, skip=skip)
    pairs = fairytales.generate_pairs(skip + n, seed)[skip:]
    assert len(sketches) == n
    for sketch, p in zip(sketches, pairs):
        request = p.instruction + ("\n" + p.input if p.input else "")
        lines = p.output.split("\n")
        body = [i for i, line in enumerate(lines) if not line.startswith(("제목:", "교훈:"))]
        kept = sketch[len(request) + 1:].split("\n")
        assert sketch.startswith(request + "\n")
        assert kept == lines[:body[0] + 1] + lines[body[-1]:]
        assert p.spec.place in kept[body[0]] and len(kept) < len(lines)
        if "happy_end" in p.spec.styles:
            assert kept[-1].endswith(fairytales.HAPPY_END)


def test_sketch_ending_share_picks_asking_and_unasked_pairs_in_order():
    """ending_share=0.5: half the sketches come from pairs that ask for the happy ending, half from
    pairs that do not, each half in the pairs' own order and past the skipped pairs; None keeps the
    pairs as they come (~14% ask); a share outside [0, 1] is refused."""
    seed, skip, n = ScratchConfig().request_seed, 30, 40
    sketches = request_sketches(n, seed, skip=skip, ending_share=0.5)
    pairs = fairytales.generate_pairs(skip + 2000, seed)[skip:]
    asking = [p for p in pairs if "happy_end" in p.spec.styles][:n // 2]
    unasked = [p for p in pairs if "happy_end" not in p.spec.styles][:n // 2]
    every = request_sketches(len(pairs), seed, skip=skip)             # one sketch per pair, in order
    for chosen in (asking, unasked):
        expected = [every[i] for i, p in enumerate(pairs) if p in chosen]
        assert [s for s in sketches if s in expected] == expected
    assert len(sketches) == n
    assert sum(s.split("\n")[-1].endswith(fairytales.HAPPY_END) for s in sketches) == n // 2
    assert request_sketches(n, seed, skip=skip, ending_share=None) == request_sketches(n, seed, skip=skip)
    with pytest.raises(ValueError, match="ending_share must be in \\[0, 1\\] or None, got 1.5"):
        request_sketches(n, seed, ending_share=1.5)


def test_document_rows_end_every_document_with_the_eos_too_and_bad_row_kinds_are_named():
    docs = fairytales.generate_stories(6, seed=3)
    tok = train_bpe(docs, VOCAB)
    data = pretrain_rows(docs, tok, 1024, val_fraction=0.0, seed=0, rows="documents")
    ids = [t for ex in data.train                                    # each row's tokens, its last target too
           for t in ex.input_ids[:len(ex) - ex.num_padding] + [ex.targets[len(ex) - ex.num_padding - 1]]]
    assert ids.count(tok.eos_token_id) == len(docs) and tok.token_to_id("<|endoftext|>") not in ids
    with pytest.raises(ValueError, match="rows must be 'stream' or 'documents', got 'windows'"):
        pretrain_rows(docs, tok, 64, val_fraction=0.0, seed=0, rows="windows")


def test_a_bad_row_kind_is_refused_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="got 'windows'"):
        train_from_scratch(ScratchConfig(out_dir=str(out), rows="windows", corpus="/nonexistent/corpus.txt"))
    assert not out.exists()
