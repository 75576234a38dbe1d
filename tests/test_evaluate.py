"""minift.evaluate (the story scorer), minift.generate.generate_batch, and scripts/evaluate_stories.py.

The scorer is checked three ways: it reads every generated request back into the spec the
generator drew; the generator's own stories score 1.0 on every metric; and hand-made stories fail
each metric one at a time. generate_batch must give generate's greedy text for every prompt of a
padded batch. The script runs on a tiny random model (fast: a few tokens per story).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from minift import evaluate as ev
from minift import fairytales as ft
from minift import lora
from minift.checkpoint import save_pretrained
from minift.config import ModelConfig
from minift.generate import generate, generate_batch, split_sentences
from minift.model import Transformer
from minift.tokenizer import train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = ft.generate_pairs(300, seed=0)
BANDS = ev.length_bands([p.chat()["messages"] for p in PAIRS])


def request_of(pair) -> str:
    return pair.chat()["messages"][0]["content"]


# ---------------------------------------------------------------------- reading requests
def test_every_request_is_read_back_to_its_spec():
    structured = 0
    for p in PAIRS:
        r = ev.parse_request(request_of(p))
        assert r.characters == p.spec.characters, request_of(p)
        assert (r.place, r.lesson, r.length) == (p.spec.place, p.spec.lesson, p.spec.length), request_of(p)
        assert (r.ending == ft.HAPPY_END) == ("happy_end" in p.spec.styles)
        structured += bool(p.input)
    assert 40 < structured < 260  # both forms of request were read


def test_a_request_the_generator_did_not_make_is_refused():
    with pytest.raises(ValueError, match="no characters, place, lesson, length"):
        ev.parse_request("Write me a poem about the sea.")


def test_names_are_words_not_syllables():
    assert ev.name_mentioned("말이 달렸어요.", "말") and ev.name_mentioned("\"곰아, 고마워!\"", "곰")
    assert ev.name_mentioned("선녀님이 웃었어요.", "선녀")
    assert not ev.name_mentioned("토끼가 말했어요.", "말")      # 말 inside 말했어요
    assert not ev.name_mentioned("소리가 났어요. 소년이 왔어요.", "소")
    assert not ev.name_mentioned("곰곰이 생각했어요.", "곰")


# ---------------------------------------------------------------------- scoring stories
def test_the_generators_own_stories_score_full_marks():
    rows = [ev.score_story(ev.parse_request(request_of(p)), p.output, BANDS) for p in PAIRS]
    means = ev.mean_scores(rows)
    assert means == {m: 1.0 for m in ev.METRICS}, means
    assert sum(r["ending"] is not None for r in rows) > 10  # some requests asked for the ending


@pytest.fixture(scope="module")
def asked_for_ending():
    """A short story that asked for the happy ending, and its request."""
    p = next(p for p in PAIRS if "happy_end" in p.spec.styles and p.spec.length == "short"
             and len(p.spec.characters) == 2 and "title" not in p.spec.styles)
    return ev.parse_request(request_of(p)), p.output


def test_each_metric_can_fail(asked_for_ending):
    req, story = asked_for_ending
    hero, friend = req.characters
    assert ev.score_story(req, story, BANDS) == {m: 1.0 for m in ev.METRICS}

    def score(text):
        return ev.score_story(req, text, BANDS)
    # a character replaced by one nobody asked for
    other = next(c.name for c in ft.CHARACTERS if c.name not in story and len(c.name) > 1)
    assert score(story.replace(friend, other))["characters"] == 0.5
    assert score(story.replace(req.place, "먼 나라"))["place"] == 0.0
    assert score(story.replace(req.lesson, "마음"))["lesson"] == 0.0
    assert score(story.replace(ft.HAPPY_END, "잘 지냈답니다."))["ending"] == 0.0
    assert score(story + "\n" + story.split("\n")[1])["no_repeat"] == 0.0       # a line twice
    first = split_sentences(story)[1]
    assert score(story.replace(first, first + " " + first))["no_repeat"] == 0.0  # a sentence twice
    lo, hi = BANDS[req.length]
    assert score(story[:lo - 1])["length"] == 0.0 and score(story + " 그리고" * hi)["length"] == 0.0
    # the shape: the opening formula gone; the moral told first (then nothing follows it in order)
    lines = story.split("\n")
    no_opening = "\n".join([lines[0].split(",", 1)[1]] + lines[1:])
    assert score(no_opening)["shape"] == pytest.approx(0.8)
    assert score("\n".join([lines[-1]] + lines[:-1]))["shape"] < 1.0
    # a story asked for nothing in particular has no ending score, and averages skip it
    plain = ev.StoryRequest(req.characters, req.place, req.lesson, req.length, None)
    assert ev.score_story(plain, story, BANDS)["ending"] is None
    rows = [ev.score_story(plain, story, BANDS), score(story.replace(ft.HAPPY_END, "잘 지냈답니다."))]
    assert ev.mean_scores(rows)["ending"] == 0.0 and ev.mean_scores(rows)["place"] == 1.0


def test_an_empty_story_scores_zero_and_does_not_crash(asked_for_ending):
    req, _ = asked_for_ending
    s = ev.score_story(req, "", BANDS)
    assert s["characters"] == s["place"] == s["ending"] == s["length"] == s["shape"] == 0.0


# ---------------------------------------------------------------------- batched generation
@pytest.fixture(scope="module")
def tiny():
    tok = train_bpe([p.output for p in PAIRS[:60]] + [request_of(p) for p in PAIRS[:60]], 600)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_ids, pad_token_id=tok.pad_token_id)
    model = Transformer(cfg)
    model.init_weights()
    with torch.no_grad():  # larger weights than the init's: varied tokens instead of one repeated
        for p in model.parameters():
            p.mul_(4)
    return model.eval(), tok


def test_batched_greedy_is_generate_for_each_prompt(tiny):
    model, tok = tiny
    prompts = [[{"role": "user", "content": request_of(p)}] for p in PAIRS[:3]] + ["옛날", "토끼와 거북이"]
    assert len({len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)) if isinstance(p, list)
                else len(tok.encode(p)) for p in prompts}) > 2  # different lengths: padding is exercised
    for penalty in (1.0, 1.3):
        want = [generate(model, tok, p, max_new_tokens=24, repetition_penalty=penalty) for p in prompts]
        assert generate_batch(model, tok, prompts, max_new_tokens=24, repetition_penalty=penalty) == want


def test_batched_sampling_is_reproducible_and_stops_rows_at_eos(tiny):
    model, tok = tiny
    prompts = ["옛날", "토끼와 거북이", "호랑이"]
    kw = dict(max_new_tokens=20, temperature=0.9, top_k=30, seed=3)
    a, b = generate_batch(model, tok, prompts, **kw), generate_batch(model, tok, prompts, **kw)
    assert a == b and a != generate_batch(model, tok, prompts, **dict(kw, seed=4))
    # a row whose first token is its eos gives "", whatever the other rows go on to write
    eos_first = generate_batch(model, tok, prompts, max_new_tokens=5, eos_token_ids=[
        int(model(torch.tensor([tok.encode("옛날")]))[0, -1].argmax())])
    assert eos_first[0] == "" and generate_batch(model, tok, [], max_new_tokens=5) == []


def test_evaluate_stories_report_shape(tiny):
    model, tok = tiny
    convs = [p.chat()["messages"] for p in PAIRS[:5]]
    result = ev.evaluate_stories(model, tok, convs, BANDS, seeds=(0, 1), max_new_tokens=12, batch_size=2)
    assert result["n_requests"] == 5 and result["seeds"] == [0, 1] and len(result["per_request"]) == 5
    assert set(result["mean"]) == set(result["std_over_seeds"]) == set(ev.METRICS)
    for m in ev.METRICS:
        v = result["mean"][m]
        assert v is None if m == "ending" and not any("happy_end" in p.spec.styles for p in PAIRS[:5]) \
            else 0.0 <= v <= 1.0
    assert all(isinstance(r["story"], str) and r["request"] == c[0]["content"]
               for r, c in zip(result["per_request"], convs))
    json.dumps(result)  # the report holds it as JSON
    print(ev.table(result, result))


# ---------------------------------------------------------------------- the command
def test_evaluate_stories_cli_on_a_tiny_model(tiny, tmp_path):
    model, tok = tiny
    save_pretrained(model, tmp_path / "base", tokenizer=tok)
    lora.add_lora(model, r=2, alpha=4, targets=["q_proj", "v_proj"])
    lora.save_adapter(model, str(tmp_path / "adapter"))
    lora.merge_and_unload(model)  # leave the shared fixture's model as it was: no adapter layers
    data = tmp_path / "pairs.jsonl"
    ft.write_jsonl([p.alpaca() for p in PAIRS[:60]], str(data))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate_stories.py"), "--model",
                          str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"), "--data", str(data),
                          "--val-fraction", "0.1", "--seeds", "0,1", "--max-new-tokens", "8", "--show", "1",
                          "--device", "cpu", "--out", str(tmp_path / "ev.json")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "6 held-out requests" in out.stdout and "before" in out.stdout and "characters" in out.stdout
    saved = json.loads((tmp_path / "ev.json").read_text(encoding="utf-8"))
    assert saved["before"]["n_requests"] == saved["after"]["n_requests"] == 6
    assert saved["after"]["seeds"] == [0, 1]


def test_no_repeat_ngram_matches_transformers(tiny):
    """The n-gram ban against transformers' processor, on the same new tokens (greedy)."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor
    model, tok = tiny
    prompt = "옛날"
    ids = torch.tensor([tok.encode(prompt)])
    got = generate_batch(model, tok, [prompt], max_new_tokens=40, no_repeat_ngram_size=2, eos_token_ids=[])
    # the reference: greedy, one token at a time, banning over the new tokens only
    proc, new = NoRepeatNGramLogitsProcessor(2), []
    for _ in range(40):
        with torch.no_grad():
            logits = model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1))[:, -1]
        logits = proc(torch.tensor([new], dtype=torch.long), logits) if new else logits
        new.append(int(logits.argmax()))
    assert got == [tok.decode(new, skip_special_tokens=True)]
    bigrams = list(zip(new, new[1:]))
    assert len(set(bigrams)) == len(bigrams)


# ---------------------------------------------------------------------- no sentence twice
LOOP = "며칠이 지났어요. 해가 떴어요.\n교훈: 정직이 최고\n"


@pytest.fixture(scope="module")
def looping(tiny):
    """A model that has learned LOOP by heart, so it tells the same short sentences (4-6 tokens
    here, under any n-gram ban that lets names repeat) and the same moral line over and over."""
    _, tok = tiny
    ids = torch.tensor([tok.encode(LOOP * 8)])                                     # (1, 272)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024))
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, "the model has not learned the loop"
    return model.eval(), tok


def _closes_a_repeat(text: str) -> bool:
    """Whether a sentence or line that has ended in `text` was already said: the rule, by brute force."""
    said = split_sentences(text)
    if not text.rstrip(" \t").endswith((".", "!", "?", "\n")):
        said = said[:-1]                                       # the last sentence is still open
    return len(set(said)) < len(said)


def test_no_repeat_sentences_is_the_brute_force_rule(looping):
    model, tok = looping
    prompt = LOOP.split("\n")[1] + "\n"
    free = generate_batch(model, tok, [prompt], max_new_tokens=90, eos_token_ids=[])[0]
    assert free.startswith(LOOP * 2), free                     # unbanned, it repeats every line
    banned = generate_batch(model, tok, [prompt], max_new_tokens=90, eos_token_ids=[], no_repeat_sentences=True)[0]
    # the reference: greedy, where each step takes the likeliest token that does not end a sentence
    # or a line already said (decoding the whole text for every candidate)
    prompt_ids, new = tok.encode(prompt), []
    for _ in range(90):
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + new]))[0, -1]                 # (V,)
        new.append(next(t for t in logits.argsort(descending=True).tolist()
                        if not _closes_a_repeat(tok.decode(new + [t], skip_special_tokens=True))))
    assert banned == tok.decode(new, skip_special_tokens=True)
    assert banned.startswith(LOOP) and not _closes_a_repeat(banned)
    said = split_sentences(banned)
    assert len(said) > 6 and len(set(said)) == len(said), said  # it went on, saying new things


def test_no_repeat_sentences_when_sampling(looping):
    """The evaluation's sampling, on the looping model: with the sentence rule no story repeats
    one (the score's own check); without it, the 10-token rule lets most stories repeat."""
    model, tok = looping
    request = ev.StoryRequest(("고양이",), "숲", "정직", "short", None)

    def no_repeat_scores(**sampling):
        stories = generate_batch(model, tok, [LOOP.split("\n")[1] + "\n"] * 6, max_new_tokens=90,
                                 eos_token_ids=[], seed=1, **sampling)
        return [ev.score_story(request, story, BANDS)["no_repeat"] for story in stories]

    assert no_repeat_scores(**ev.SAMPLING) == [1.0] * 6
    assert sum(no_repeat_scores(**dict(ev.SAMPLING, no_repeat_sentences=False))) <= 3
