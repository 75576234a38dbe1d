"""minift.data: loss masks cover exactly the answers, packing keeps examples apart inside the real
model, truncation is counted, bad files fail with file:line, batches resume at the same batch."""
import codecs
import json
import logging
import os
import random

import pytest
import torch

from minift import data as D
from minift import fairytales as F
from minift.config import ModelConfig
from minift.model import Transformer
from minift.tokenizer import train_bpe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    # A small byte-level BPE with ChatML special tokens, trained on the generator's own stories.
    pairs = F.generate_pairs(150, seed=11)
    texts = [p.output for p in pairs] + [p.instruction for p in pairs] + ["system user assistant"]
    return train_bpe(texts, vocab_size=600)


CHAT = [{"role": "system", "content": "당신은 동화 작가예요."},
        {"role": "user", "content": "토끼가 나오는 짧은 동화를 써 주세요."},
        {"role": "assistant", "content": "옛날 옛적에, 깊은 숲속에 토끼가 살았어요."},
        {"role": "user", "content": "제목도 붙여 줘."},
        {"role": "assistant", "content": "제목: 토끼와 숲\n토끼는 행복했답니다."}]


def _spans(ids, labels):
    """Contiguous runs of graded tokens -> list of id lists."""
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != D.IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return spans


# ------------------------------------------------------------------ loss mask
def test_loss_mask_is_exactly_each_answer_and_its_im_end(tok):
    ids, labels = D.encode_chat(CHAT, tok)
    assert tok.decode(ids) == tok.apply_chat_template(CHAT)
    answers = [m["content"] + "<|im_end|>" for m in CHAT if m["role"] == "assistant"]
    assert [tok.decode(s) for s in _spans(ids, labels)] == answers


def test_alpaca_record_becomes_user_and_assistant(tok, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"instruction": "동화를 써 주세요.", "input": "등장인물: 곰", "output": "곰이 살았어요."},
                            ensure_ascii=False) + "\n"
                 + json.dumps({"instruction": "짧게.", "output": "끝."}, ensure_ascii=False) + "\n", encoding="utf-8")
    data = D.read_jsonl(str(p))
    assert data[0] == [{"role": "user", "content": "동화를 써 주세요.\n\n등장인물: 곰"},
                       {"role": "assistant", "content": "곰이 살았어요."}]
    assert data[1][0]["content"] == "짧게." and data.lines == [1, 2]
    ids, labels = D.encode_chat(data[0], tok)
    assert [tok.decode(s) for s in _spans(ids, labels)] == ["곰이 살았어요.<|im_end|>"]


def test_targets_are_shifted_labels(tok):
    ids, labels = D.encode_chat(CHAT, tok)
    ex = D.to_example(ids, labels)
    assert ex.input_ids == ids
    assert ex.targets == labels[1:] + [D.IGNORE_INDEX]
    # the last graded target of each answer is its <|im_end|>, predicted by the token before it
    im_end = tok.token_to_id("<|im_end|>")
    assert sum(1 for t in ex.targets if t == im_end) == 2


def test_a_template_that_breaks_the_prefix_is_refused(tok):
    class Odd:  # renders the generation prompt differently from how the full chat renders it
        def __getattr__(self, name):
            return getattr(tok, name)

        def apply_chat_template(self, messages, add_generation_prompt=False):
            text = tok.apply_chat_template(messages, add_generation_prompt)
            return text + "X" if add_generation_prompt else text

    with pytest.raises(ValueError, match="prefix"):
        D.encode_chat(CHAT, Odd())


# ------------------------------------------------------------------ packing with the real model
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_row_equals_examples_computed_alone(tok, impl):
    convs = [p.chat()["messages"] for p in F.generate_pairs(6, seed=5)]
    convs = [[{"role": "user", "content": c[0]["content"][:30]}, {"role": "assistant", "content": c[1]["content"][:60]}]
             for c in convs]
    examples, _ = D.build_examples(convs, tok, seq_len=400)
    seq_len = sum(len(e) for e in examples[:3]) + 5
    rows = D.pack(examples, seq_len, pad_id=tok.pad_token_id)
    assert len(rows[0].segment_ids) == seq_len and max(rows[0].segment_ids) >= 2  # several examples per row

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # unit-scale weights: HF's std 0.02 leaves attention near uniform, hiding leaks
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, cfg.hidden_size ** -0.5)
    model.set_attention(impl)
    batch = D.Batches(rows, batch_size=len(rows), shuffle=False).collate(rows)
    with torch.no_grad():
        packed_loss = model(batch["input_ids"], batch["targets"], position_ids=batch["position_ids"],
                            segment_ids=batch["segment_ids"])
        packed_logits = model(batch["input_ids"], position_ids=batch["position_ids"],
                              segment_ids=batch["segment_ids"])
        total, count, k = 0.0, 0, 0
        for r, row in enumerate(rows):
            for seg in range(max(row.segment_ids) + 1):
                ex = examples[k]
                k += 1
                x = torch.tensor([ex.input_ids])
                alone = model(x)                                                      # (1, L, V)
                where = [t for t, s in enumerate(row.segment_ids) if s == seg]
                # fp32: the same dot products, reduced in other block shapes -> ~1e-6 apart
                torch.testing.assert_close(packed_logits[r, where], alone[0], atol=1e-5, rtol=1e-5)
                n = ex.num_loss_tokens
                total += model(x, torch.tensor([ex.targets])).item() * n
                count += n
        assert k == len(examples)
        torch.testing.assert_close(packed_loss, torch.tensor(total / count), atol=1e-5, rtol=1e-5)
        # the control: without segment_ids the examples read each other and the loss moves
        leaky = model(batch["input_ids"], position_ids=batch["position_ids"])
        assert (leaky - packed_logits).abs().max() > 1e-2            # 1000x the tolerance above


# ------------------------------------------------------------------ truncation
def test_truncation_is_counted_and_error_mode_names_the_example(tok):
    convs = [[{"role": "user", "content": "짧게."}, {"role": "assistant", "content": "네."}],
             [{"role": "user", "content": "길게 써 주세요."}, {"role": "assistant", "content": "옛날 옛적에 " * 40}]]
    full = [len(D.encode_chat(c, tok)[0]) for c in convs]
    seq_len = full[0] + 3
    assert full[1] > seq_len
    examples, stats = D.build_examples(convs, tok, seq_len)
    assert len(examples) == 2 and all(len(e) <= seq_len for e in examples)
    assert stats.num_truncated == 1 and stats.tokens_lost == full[1] - seq_len
    # the kept window keeps its real next-token targets; only the dropped tokens are lost
    ids, labels = D.encode_chat(convs[1], tok)
    assert examples[1].input_ids == ids[:seq_len] and examples[1].targets == labels[1:seq_len + 1]
    with pytest.raises(D.DataError, match=r"f\.jsonl: example 1 has \d+ tokens, more than seq_len"):
        D.build_examples(convs, tok, seq_len, on_long="error", source="f.jsonl")


# ------------------------------------------------------------------ bad data
def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(p)


GOOD = json.dumps({"instruction": "써 줘", "output": "옛날에."}, ensure_ascii=False)


@pytest.mark.parametrize("bad, message", [
    ("{not json", r":2: not JSON"),
    ("[1, 2]", r":2: expected a JSON object, got list"),
    (json.dumps({"instruction": "써 줘"}), r":2: missing field 'output'"),
    (json.dumps({"prompt": "a", "completion": "b"}), r":2: missing fields: expected 'instruction' and 'output'"),
    (json.dumps({"instruction": "a", "output": 3}), r":2: 'output' must be a string, got int"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}),
     r":2: messages\[1\]\.role is 'bot'; expected one of system, user, assistant"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}]}), r":2: no assistant turn"),
    (json.dumps({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}),
     r":2: messages\[0\]\.content must be a string"),
    (json.dumps({"text": "raw"}), r":2: a raw-text record"),
    (json.dumps({"instruction": "a", "output": "  "}), r":2: 'output' is empty"),
    (json.dumps({"instruction": "", "output": "b"}), r":2: 'instruction' is empty"),
    (json.dumps({"instruction": "a", "input": 7, "output": "b"}), r":2: 'input' must be a string, got int"),
    (json.dumps({"instruction": "a", "output": "b\ud800"}), r":2: 'output' holds '\\ud800' at character 1, an unpaired"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}),
     r":2: messages\[1\]\.content is empty \(an assistant answer\)"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}), r":2: messages\[1\] has no 'role'"),
    (json.dumps({"messages": [{"role": ["user"], "content": "a"}]}), r":2: messages\[0\]\.role is \['user'\]"),
    (json.dumps({"messages": "hi"}), r":2: 'messages' must be a non-empty list, got str"),
    (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                 "output": "c"}), r":2: both 'messages' \(chat\) and \['output'\]"),
    ("[" * 100_000 + "]" * 100_000, r":2: not JSON that can be read \(RecursionError"),
    ('{"instruction": "a", "output": "b"} {"x": 1}', r":2: not JSON \(Extra data at column 37\)"),
    ("\x0c", r":2: not JSON"),                         # only JSON's own whitespace makes a line blank
])
def test_bad_line_names_file_line_and_problem(tmp_path, bad, message):
    path = _write(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(D.DataError, match=r"d\.jsonl" + message):
        D.read_jsonl(path)


def _write_bytes(tmp_path, data: bytes, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_bad_bytes_name_the_file_line_and_byte(tmp_path):
    # The report in issue 14: invalid UTF-8 used to fail with Python's bare codec message.
    good = GOOD.encode()
    path = _write_bytes(tmp_path, good + b"\n" + b'{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(D.DataError, match=r"d\.jsonl:2: not UTF-8 text \(byte 0xff at byte 18 of the line"):
        D.read_jsonl(path)
    with pytest.raises(D.DataError, match=r"d\.jsonl:2: not UTF-8"):
        D.dataset_stats(path)                            # which first sniffs the file's kind
    cut = GOOD.encode()[:-4]                             # a file cut inside a Hangul syllable
    assert cut[-1] >= 0x80
    with pytest.raises(D.DataError, match=r"d\.jsonl:3: not UTF-8 .*unexpected end of data"):
        D.read_jsonl(_write_bytes(tmp_path, good + b"\n" + good + b"\n" + cut))
    with pytest.raises(D.DataError, match=r"d\.jsonl:1: the file is UTF-16"):
        D.read_jsonl(_write_bytes(tmp_path, GOOD.encode("utf-16")))
    with pytest.raises(D.DataError, match=r"c\.txt:2: not UTF-8"):
        D.read_text(_write_bytes(tmp_path, "가\n".encode() + b"\xc0\xaf\n", name="c.txt"))
    with pytest.raises(D.DataError, match=r"c\.jsonl:1: not UTF-8"):
        D.read_text(_write_bytes(tmp_path, b'{"text": "\xe0\x80"}', name="c.jsonl"))
    data = D.read_jsonl(_write_bytes(tmp_path, good + b"\n\xff\n" + good + b"\n"), skip_bad_lines=True)
    assert data.lines == [1, 3] and data.skipped[0][0] == 2 and "not UTF-8" in data.skipped[0][1]


def test_bom_crlf_and_trailing_blank_lines_read_as_plain_utf8(tmp_path):
    clean = D.read_jsonl(_write(tmp_path, [GOOD, GOOD.replace("써", "읽어")]))
    variants = {
        "bom": codecs.BOM_UTF8 + (GOOD + "\n" + GOOD.replace("써", "읽어") + "\n").encode(),
        "crlf": (GOOD + "\r\n" + GOOD.replace("써", "읽어") + "\r\n").encode(),
        "bom+crlf+blank tail": codecs.BOM_UTF8 + (GOOD + "\r\n" + GOOD.replace("써", "읽어") + "\r\n\r\n \n\t\n").encode(),
        "no final newline": (GOOD + "\n" + GOOD.replace("써", "읽어")).encode(),
    }
    for name, raw in variants.items():
        got = D.read_jsonl(_write_bytes(tmp_path, raw))
        assert got.conversations == clean.conversations and got.lines == [1, 2], name
    # A CRLF file of raw text: no "\r" left in the documents.
    assert D.read_text(_write_bytes(tmp_path, codecs.BOM_UTF8 + "가\r\n나\r\n\r\n다\r\n".encode(), name="c.txt")) \
        == ["가\n나", "다"]
    # A byte-order mark anywhere but the file's start is a character, and not JSON.
    with pytest.raises(D.DataError, match=r"d\.jsonl:2: not JSON \(Unexpected UTF-8 BOM"):
        D.read_jsonl(_write_bytes(tmp_path, (GOOD + "\n").encode() + codecs.BOM_UTF8 + GOOD.encode()))


@pytest.mark.parametrize("raw", [b"", b"\n\n", b" \r\n\t\r\n", codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\r\n"])
def test_blank_files_are_refused_clearly(tmp_path, raw):
    path = _write_bytes(tmp_path, raw)
    for read in (D.read_jsonl, D.dataset_stats):
        with pytest.raises(D.DataError, match=r"d\.jsonl: empty file \(no JSON lines"):
            read(path)


# ------------------------------------------------------------------ fuzz: corrupted shipped pairs
def _oracle(line: bytes, first: bool):
    """What one line should read as, worked out independently of minift.data: "blank", the
    conversation of a valid alpaca pair, or None for a line that must be refused."""
    if first and line.startswith(codecs.BOM_UTF8):
        line = line[3:]
    line = line.removesuffix(b"\r")
    if not line.strip(b" \t\r"):
        return "blank"
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or "messages" in obj or "text" in obj:
        return None
    ins, inp, out = obj.get("instruction"), obj.get("input"), obj.get("output")
    for s in (ins, out) + ((inp,) if inp is not None else ()):
        if not isinstance(s, str):
            return None
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return None
    if not ins.strip() or not out.strip():
        return None
    return [{"role": "user", "content": ins + ("\n\n" + inp if inp else "")}, {"role": "assistant", "content": out}]


def _corrupt(clean: bytes, rng):
    """One seeded corruption of a JSONL file's bytes, and its name."""
    kind = rng.choice(["flip", "truncate", "delete quote", "delete brace", "insert", "crlf", "bom",
                       "crlf+bom+flip", "delete newline", "swap bytes"])
    b = bytearray(clean)
    pos = lambda: rng.randrange(len(b))  # noqa: E731
    if kind == "flip":
        b[pos()] = rng.randrange(256)
    elif kind == "truncate":
        del b[pos():]
    elif kind in ("delete quote", "delete brace"):
        where = [i for i, c in enumerate(b) if c in (b'"' if kind == "delete quote" else b"{}")]
        del b[rng.choice(where)]
    elif kind == "insert":
        i = pos()
        b[i:i] = bytes(rng.choice([0x00, 0x0a, 0x0d, 0x22, 0x7b, 0x7d, 0x5c, 0x80, 0xc3, 0xed, 0xef, 0xff,
                                   rng.randrange(256)]) for _ in range(rng.randint(1, 3)))
    elif kind == "crlf":
        b = bytearray(clean.replace(b"\n", b"\r\n"))
    elif kind == "bom":
        b[0:0] = codecs.BOM_UTF8
    elif kind == "crlf+bom+flip":
        b = bytearray(codecs.BOM_UTF8 + clean.replace(b"\n", b"\r\n"))
        b[pos()] = rng.randrange(256)
    elif kind == "delete newline":
        del b[rng.choice([i for i, c in enumerate(b) if c == 0x0a])]
    else:
        i = rng.randrange(len(b) - 1)
        b[i], b[i + 1] = b[i + 1], b[i]
    return kind, bytes(b)


def test_seeded_corruptions_of_the_shipped_pairs_are_named_or_read_correctly(tmp_path):
    """400 corruptions of the first 12 shipped pairs. Accepted outcomes: a DataError naming the
    file and the first line that is not a valid pair, or, where every line is still a valid pair
    (a CRLF or BOM file, a flip inside a string that leaves other text), exactly that content."""
    src = os.path.join(REPO, "data", "fairytales_pairs.jsonl")
    with open(src, "rb") as f:
        clean = b"".join(f.readlines()[:12])
    rng = random.Random(1414)
    path = str(tmp_path / "fuzz.jsonl")
    outcomes = {"named error": 0, "read equal to the clean parse": 0, "read changed content": 0}
    clean_parse = D.read_jsonl(src).conversations[:12]
    for case in range(400):
        kind, raw = _corrupt(clean, rng)
        with open(path, "wb") as f:
            f.write(raw)
        expected = [(n, _oracle(line, n == 1)) for n, line in enumerate(raw.split(b"\n"), 1)]
        expected = [(n, e) for n, e in expected if e != "blank"]
        first_bad = next((n for n, e in expected if e is None), None)
        try:
            got = D.read_jsonl(path)
        except D.DataError as e:
            assert first_bad is not None, f"case {case} ({kind}): refused a valid file: {e}"
            assert str(e).startswith(f"{path}:{first_bad}: "), f"case {case} ({kind}): {e}"
            outcomes["named error"] += 1
            continue
        # Only a DataError may escape: anything else (UnicodeDecodeError, KeyError) fails the test here.
        assert first_bad is None, f"case {case} ({kind}): line {first_bad} is not a valid pair but was read"
        assert got.conversations == [e for _, e in expected] and got.lines == [n for n, _ in expected], \
            f"case {case} ({kind})"
        same = got.conversations == clean_parse[:len(got)]
        outcomes["read equal to the clean parse" if same else "read changed content"] += 1
    # Both outcomes happen (else the corruptions are too weak or too strong to test anything).
    assert outcomes["named error"] > 150 and outcomes["read equal to the clean parse"] > 50, outcomes


def test_empty_file_and_all_bad_are_clear(tmp_path):
    with pytest.raises(D.DataError, match="empty file"):
        D.read_jsonl(_write(tmp_path, ["", "  "]))
    with pytest.raises(D.DataError, match=r"no valid examples \(2 bad line"):
        D.read_jsonl(_write(tmp_path, ["{x", "[]"]), skip_bad_lines=True)
    with pytest.raises(D.DataError, match="empty file"):
        D.read_text(_write(tmp_path, ["", ""], name="c.txt"))


def test_skip_bad_lines_counts_and_reports(tmp_path, caplog):
    path = _write(tmp_path, [GOOD, "{x", GOOD, json.dumps({"instruction": "a"}), "", GOOD])
    with caplog.at_level(logging.WARNING, logger="minift.data"):
        data = D.read_jsonl(path, skip_bad_lines=True)
    assert len(data) == 3 and data.lines == [1, 3, 6]
    assert [n for n, _ in data.skipped] == [2, 4]
    assert "skipped 2 bad line(s) of 5" in caplog.text


def test_read_text_splits_on_blank_lines_and_reads_jsonl(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("첫 이야기.\n둘째 줄.\n\n\n두 번째 이야기.\n  \n세 번째.\n", encoding="utf-8")
    assert D.read_text(str(p)) == ["첫 이야기.\n둘째 줄.", "두 번째 이야기.", "세 번째."]
    j = _write(tmp_path, [json.dumps({"text": "가"}), json.dumps({"text": "나"})], name="c.jsonl")
    assert D.read_text(j) == ["가", "나"]
    with pytest.raises(D.DataError, match=r"c\.jsonl:2: expected an object with a 'text' field"):
        D.read_text(_write(tmp_path, [json.dumps({"text": "가"}), json.dumps({"t": 1})], name="c.jsonl"))


# ------------------------------------------------------------------ pre-training stream
def test_text_rows_are_one_stream_with_separators(tok):
    docs = ["토끼가 살았어요.", "곰이 살았어요. 곰은 꿀을 좋아했어요.", "끝."]
    sep = D.document_separator_id(tok)
    assert sep == tok.token_to_id("<|endoftext|>")
    stream = [t for d in docs for t in tok.encode(d) + [sep]]
    rows, stats = D.text_rows(docs, tok, seq_len=7)
    inputs = [t for r in rows for t in r.input_ids[:len(r) - r.num_padding]]
    targets = [t for r in rows for t in r.targets if t != D.IGNORE_INDEX]
    assert inputs == stream[:-1] and targets == stream[1:]   # nothing dropped, every token graded
    assert all(len(r) == 7 for r in rows) and stats.num_loss_tokens == len(stream) - 1



def test_document_rows_keep_every_document_whole_in_one_row(tok):
    """Each document and its separator lie contiguous in exactly one row (best fit may put several
    in a row); nothing is dropped or repeated; a document longer than a row is cut into pieces that
    fill whole rows; targets are the inputs moved one token on within each row."""
    docs = ["토끼가 살았어요.", "곰이 살았어요. 곰은 꿀을 좋아했어요.", "끝.", "여우가 숲에서 길을 잃었어요. 다람쥐가 도와주었어요."]
    sep = D.document_separator_id(tok)
    pieces = [tok.encode(d) + [sep] for d in docs]
    T = max(len(p) for p in pieces[:3]) + 1            # the three short ones fit a row; the last does not
    assert len(pieces[3]) > T + 1
    rows, stats = D.document_rows(docs, tok, seq_len=T)
    seen = []
    for r in rows:
        n = len(r) - r.num_padding
        ids = r.input_ids[:n] + [r.targets[n - 1]]               # the row's tokens, its last target too
        assert r.targets[:n] == ids[1:] and set(r.targets[n:]) <= {D.IGNORE_INDEX} and len(r) == T
        seen.append(ids)
    for p in pieces[:3]:                                         # a short document: whole, in one row
        assert sum(_contains(ids, p) for ids in seen) == 1
    head, rest = pieces[3][:T + 1], pieces[3][T + 1:]             # a long one: a full row, then the rest
    assert head in seen and len(rest) <= T + 1 and sum(_contains(ids, rest) for ids in seen) >= 1
    assert sorted(t for ids in seen for t in ids) == sorted(t for p in pieces for t in p)
    assert stats.num_tokens == stats.num_loss_tokens == sum(len(ids) - 1 for ids in seen)
    assert stats.num_padding == sum(r.num_padding for r in rows) and stats.num_rows == len(rows)


def test_document_rows_pack_by_best_fit(tok):
    """Best fit, longest first: as few rows as the hand count below gives, fewer than filling rows
    in the documents' order would take (checked at a row length where the two differ)."""
    docs = ["토끼", "곰이 살았어요.", "여우가 숲에서 길을 잃었어요.", "끝.", "다람쥐가 도와주었어요. 고마워요.",
            "호랑이가 왔어요.", "새가 노래했어요. 하늘이 맑았어요. 모두 웃었어요."]
    lengths = [len(tok.encode(d)) + 1 for d in docs]          # + the separator
    room = next(r for r in range(max(lengths), 4 * max(lengths))
                if _best_fit_rows(lengths, r) < _in_order_rows(lengths, r))
    rows, _ = D.document_rows(docs, tok, seq_len=room - 1)
    assert len(rows) == _best_fit_rows(lengths, room) < _in_order_rows(lengths, room)


def _best_fit_rows(lengths, room):
    """The number of rows best fit decreasing needs, counted by hand."""
    free = []
    for n in sorted(lengths, reverse=True):
        fits = [f for f in free if f >= n]
        if fits:
            free.remove(min(fits))
            free.append(min(fits) - n)
        else:
            free.append(room - n)
    return len(free)


def _in_order_rows(lengths, room):
    rows, left = 0, 0
    for n in lengths:
        if n > left:
            rows, left = rows + 1, room
        left -= n
    return rows


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))

# ------------------------------------------------------------------ split, batches, resume
def test_val_split_is_seeded_and_disjoint():
    items = list(range(100))
    tr, va = D.train_val_split(items, 0.1, seed=3)
    assert (tr, va) == D.train_val_split(items, 0.1, seed=3)
    assert len(va) == 10 and sorted(tr + va) == items and not set(tr) & set(va)
    assert va != D.train_val_split(items, 0.1, seed=4)[1]
    assert len(D.train_val_split(items[:5], 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError):
        D.train_val_split(items, 1.0)


def _rows(n, T=5):
    return [D.Example([i] * T, [i + 1] * T, list(range(T)), [0] * T) for i in range(n)]


def test_batches_resume_at_the_same_batch_across_epochs():
    rows = _rows(10)
    ref = D.Batches(rows, 3, seed=7).forever()
    expected = [next(ref)["input_ids"][:, 0].tolist() for _ in range(11)]   # 4 batches/epoch: spans 3 epochs
    assert expected[0:4] != expected[4:8]                                    # each epoch reshuffles
    assert sorted(sum(expected[0:4], [])) == list(range(10))                 # an epoch visits every row once

    first = D.Batches(rows, 3, seed=7)
    it = first.forever()
    got = [next(it)["input_ids"][:, 0].tolist() for _ in range(6)]
    state = json.loads(json.dumps(first.state_dict()))                      # plain ints survive JSON
    assert state == {"epoch": 1, "position": 2, "global_batch": 3}   # global_batch: batch_size x ranks
    resumed = D.Batches(rows, 3, seed=7)
    resumed.load_state_dict(state)
    it = resumed.forever()
    got += [next(it)["input_ids"][:, 0].tolist() for _ in range(5)]
    assert got == expected
    with pytest.raises(ValueError):
        resumed.load_state_dict({"epoch": 0, "position": 99})


def test_batch_tensors_and_padding_for_unpacked_rows():
    rows = [D.Example([5, 6, 7], [6, 7, D.IGNORE_INDEX]), D.Example([8], [D.IGNORE_INDEX])]
    b = D.Batches(rows, 2, shuffle=False, pad_id=0)
    batch = next(iter(b))
    assert set(batch) == {"input_ids", "targets", "num_loss_tokens"}
    assert batch["num_loss_tokens"] == 2 == int((batch["targets"] != D.IGNORE_INDEX).sum())
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["targets"].tolist() == [[6, 7, -100], [-100, -100, -100]]
    assert b.num_tokens == 4 and b.num_loss_tokens == 2
    empty = D.Batches([], 2)                      # e.g. no validation split: iterates to nothing
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(ValueError, match="no batch"):
        next(empty.forever())
    packed = next(iter(D.Batches(_rows(2), 2)))
    assert set(packed) == {"input_ids", "targets", "position_ids", "segment_ids", "num_loss_tokens"}


def test_upsample_repeats_the_asking_training_pairs_and_leaves_validation_alone(tok, tmp_path):
    """upsample=(text, 3): each training pair whose request holds text three times, the others
    once; the held-out split is the one made without upsampling, and no extra copy is in it."""
    src = os.path.join(REPO, "data", "fairytales_pairs.jsonl")
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(open(src, encoding="utf-8").readlines()[:80]), encoding="utf-8")
    text = "오래오래 행복하게 살았답니다"
    plain = D.load_sft(str(subset), tok, seq_len=576, val_fraction=0.1, seed=0, pack_rows=False)
    more = D.load_sft(str(subset), tok, seq_len=576, val_fraction=0.1, seed=0, pack_rows=False, upsample=(text, 3))
    train_c, _ = D.train_val_split(D.read_jsonl(str(subset)).conversations, 0.1, 0)
    asking = sum(D.request_holds(c, text) for c in train_c)
    assert asking >= 3                                                  # the subset has some to repeat
    assert more.stats.num_examples == plain.stats.num_examples + 2 * asking
    assert more.val_conversations == plain.val_conversations and len(more.val) == len(plain.val)
    first = {tuple(e.input_ids) for e in plain.train}
    assert {tuple(e.input_ids) for e in more.train} == first              # copies, nothing new
    with pytest.raises(ValueError, match="upsample times must be >= 1, got 0"):
        D.upsample_requests(train_c, text, 0)


# ------------------------------------------------------------------ end to end on the shipped files
def test_load_sft_and_pretrain_on_shipped_data(tok, tmp_path):
    src = os.path.join(REPO, "data", "fairytales_pairs.jsonl")
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(open(src, encoding="utf-8").readlines()[:60]), encoding="utf-8")
    ds = D.load_sft(str(subset), tok, seq_len=512, val_fraction=0.1, seed=0)
    assert ds.stats.num_examples == 54 and ds.val_stats.num_examples == 6
    assert all(len(r) == 512 for r in ds.train + ds.val)
    b = D.Batches(ds.train, 2, pad_id=ds.pad_id)
    assert b.num_loss_tokens == ds.stats.num_loss_tokens and b.num_tokens == ds.stats.num_tokens
    assert D.load_sft(str(subset), tok, seq_len=512, max_examples=10).stats.num_examples == 10
    summary = D.dataset_stats(str(subset), tok)
    assert summary.kind == "pairs" and summary.num_examples == 60
    assert summary.num_loss_tokens == ds.stats.num_loss_tokens + ds.val_stats.num_loss_tokens + \
        ds.stats.loss_tokens_lost + ds.val_stats.loss_tokens_lost

    corpus = os.path.join(REPO, "data", "fairytales_corpus.txt")
    docs = D.read_text(corpus)
    assert len(docs) == 1000 and docs[0].startswith(("옛날", "아주", "먼 옛날", "호랑이", "제목"))
    assert D.dataset_stats(corpus).num_examples == 1000 and D.dataset_stats(src).num_examples == 1000
    small = tmp_path / "c.txt"
    small.write_text("\n\n".join(docs[:30]), encoding="utf-8")
    pt = D.load_pretrain(str(small), tok, seq_len=256, val_fraction=0.1)
    assert pt.stats.num_examples == 27 and pt.val_stats.num_examples == 3
