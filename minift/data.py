"""Data: files -> token ids with loss masks -> rows of seq_len -> batches on a device.

    read_jsonl(path)      pairs {"instruction", "input"?, "output"} or chats {"messages": [...]}
                          -> ChatData: one message list per line, each line checked
    read_text(path)       raw text (.txt, documents split on blank lines; or .jsonl {"text"})
    encode_chat(msgs,tok) -> ids, labels: labels = ids on the assistant answers (content and the
                          closing <|im_end|>), -100 everywhere else
    to_example(ids,labels)-> Example(input_ids, targets), targets[t] = labels[t + 1] (already shifted,
                          as model.forward expects)
    build_examples(...)   every conversation -> Example, truncated to seq_len (counted) or an error
    pack(examples, T)     short examples side by side in rows of T, with position_ids restarting at 0
                          and segment_ids, so attention stays inside each example
    text_rows(docs, T)    pre-training: one stream of tokens, documents separated by an end token
    document_rows(docs,T) pre-training: whole documents in rows (best fit), never cut at a row's edge
    Batches(rows, B)      a resumable iterator of {"input_ids", "targets", ...} tensors on a device
    load_sft / load_pretrain   the above in one call, with a seeded validation split
    dataset_stats(path)   pairs / tokens in a file (for the four-path decision tree)

The loss mask. Only the assistant's answers are learned: the prompt (system, user, the
"<|im_start|>assistant\\n" header) is context the model reads but is not graded on, otherwise it
would spend capacity learning to write the user's questions. Each answer's span is found by
rendering the conversation up to that turn with the generation prompt and tokenizing it: those ids
must be a prefix of the whole conversation's ids (checked; a template or tokenizer that merges
across the boundary raises rather than mask the wrong tokens). The span ends at the turn's closing
<|im_end|>, which is learned: it is how the model learns to stop.
"""
from __future__ import annotations

import bisect
import codecs
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

logger = logging.getLogger(__name__)

# The fairytale data this repository ships (data/), located from the package itself so that a
# script run from any directory finds it (an editable install; a wheel does not carry data/).
SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data"
FAIRYTALE_PAIRS = str(SHIPPED_DATA / "fairytales_pairs.jsonl")
FAIRYTALE_CORPUS = str(SHIPPED_DATA / "fairytales_corpus.txt")

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad data: the message names the file and line (or the example index) and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

@dataclass
class ChatData:
    """Conversations read from a JSONL file. conversations[i] came from line lines[i]; skipped holds
    (line, reason) for every line left out with skip_bad_lines=True."""
    path: str
    conversations: list[list[dict]]
    lines: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i):
        return self.conversations[i]

    def __iter__(self):
        return iter(self.conversations)


def _text_problem(value, where: str, allow_empty: bool = True) -> str | None:
    """None if `value` is usable text, else what is wrong with it. JSON can spell an unpaired
    surrogate ("\\ud800"): Python accepts it as a str, but it is no character, and the tokenizer
    (Rust, UTF-8 only) would fail on it far from this file."""
    if not isinstance(value, str):
        return f"{where} must be a string, got {type(value).__name__}"
    if not allow_empty and not value.strip():
        return f"{where} is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{where} holds {value[e.start]!r} at character {e.start}, an unpaired surrogate escape, not text"
    return None


def _check_messages(messages) -> str | None:
    """None if `messages` is a valid chat, else what is wrong with it."""
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list, got {type(messages).__name__}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object, got {type(m).__name__}"
        for key in ("role", "content"):
            if key not in m:
                return f"messages[{i}] has no {key!r}"
        if not isinstance(m["role"], str) or m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; expected one of {', '.join(ROLES)}"
        # An empty answer teaches the model to stop at once; an empty prompt turn is harmless.
        problem = _text_problem(m["content"], f"messages[{i}].content", allow_empty=m["role"] != "assistant")
        if problem:
            return problem + (" (an assistant answer)" if problem.endswith("empty") else "")
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn: nothing to learn from this conversation"
    return None


def record_to_messages(obj) -> tuple[list[dict] | None, str | None]:
    """One JSON value -> (messages, None) or (None, what is wrong). The alpaca shape becomes
    user = instruction + ("\\n\\n" + input if input) and assistant = output. Other keys (an id, a
    source) are allowed and ignored."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if "messages" in obj:
        both = sorted(k for k in ("instruction", "input", "output") if k in obj)
        if both:
            return None, f"both 'messages' (chat) and {both} (alpaca): which one is the example? keep one shape"
        problem = _check_messages(obj["messages"])
        if problem:
            return None, problem
        return [{"role": m["role"], "content": m["content"]} for m in obj["messages"]], None
    if "instruction" in obj or "output" in obj:
        for key in ("instruction", "output"):
            if key not in obj:
                return None, f"missing field {key!r} (alpaca records need 'instruction' and 'output')"
            problem = _text_problem(obj[key], repr(key), allow_empty=False)
            if problem:
                return None, problem
        inp = obj.get("input")
        if inp is not None:
            problem = _text_problem(inp, "'input'")
            if problem:
                return None, problem + " (or absent/null)" if "must be" in problem else problem
        user = obj["instruction"] + ("\n\n" + inp if inp else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}], None
    if "text" in obj:
        return None, "a raw-text record ({'text': ...}); read it with read_text for pre-training"
    return None, ("missing fields: expected 'instruction' and 'output' (alpaca) or 'messages' (chat); "
                  f"found keys {sorted(obj)}")


def read_lines(path: str) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) for each line of a UTF-8 text file, or (line number, None, what is
    wrong) for a line that is not UTF-8. Lines are numbered as an editor numbers them (split on
    "\\n" only); Windows line ends ("\\r\\n") and a UTF-8 byte-order mark opening the file (as
    Notepad and Excel write) are read as if absent. A file that is UTF-16 is refused as a whole."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            skip = 0
            if line_no == 1:
                if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise DataError(f"{path}:1: the file is UTF-16 (it opens with a UTF-16 byte-order mark); "
                                    "save it as UTF-8")
                if raw.startswith(codecs.BOM_UTF8):
                    skip = len(codecs.BOM_UTF8)
            raw = raw[skip:].removesuffix(b"\n").removesuffix(b"\r")
            try:
                yield line_no, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield line_no, None, (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {skip + e.start + 1} of "
                                      f"the line: {e.reason}); save the file as UTF-8")


def _is_blank(text: str) -> bool:
    return not text.strip(" \t\r")  # JSON's own whitespace: any other character on a line is data


def parse_json_line(text: str) -> tuple[object, str | None]:
    """(value, None) or (None, what is wrong) for one line of JSONL."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    except (ValueError, RecursionError) as e:  # a 5000-digit integer, nesting deeper than the stack
        return None, f"not JSON that can be read ({type(e).__name__}: {e})"


def read_jsonl(path: str, skip_bad_lines: bool = False) -> ChatData:
    """Read pairs or chats, one JSON object per line (blank lines are allowed and ignored; so are
    CRLF line ends and a UTF-8 byte-order mark).

    A bad line (not UTF-8, not JSON, a wrong type, an unknown role, an empty answer, a missing key)
    raises DataError naming path:line and the problem; with skip_bad_lines=True it is left out,
    recorded in ChatData.skipped and counted in a logged warning. A file with no JSON line at all
    is refused either way."""
    conversations, lines, skipped, seen = [], [], [], 0
    for line_no, text, problem in read_lines(path):
        if text is not None:
            if _is_blank(text):
                continue
            obj, problem = parse_json_line(text)
            messages = None
            if problem is None:
                messages, problem = record_to_messages(obj)
        seen += 1
        if problem:
            if not skip_bad_lines:
                raise DataError(f"{path}:{line_no}: {problem}")
            skipped.append((line_no, problem))
            continue
        conversations.append(messages)
        lines.append(line_no)
    if seen == 0:
        raise DataError(f"{path}: empty file (no JSON lines; expected one JSON object per line)")
    if skipped:
        first = "; ".join(f"line {n}: {why}" for n, why in skipped[:3])
        logger.warning("%s: skipped %d bad line(s) of %d (%s%s)", path, len(skipped), seen, first,
                       ", ..." if len(skipped) > 3 else "")
    if not conversations:
        raise DataError(f"{path}: no valid examples ({len(skipped)} bad line(s) skipped)")
    return ChatData(path, conversations, lines, skipped)


def read_text(path: str) -> list[str]:
    """Documents of a raw-text corpus: a .jsonl file of {"text": str} lines, or any other file as
    plain text split on blank lines (each document keeps its single newlines)."""
    docs: list[str] = []
    if path.endswith(".jsonl"):
        for line_no, text, problem in read_lines(path):
            if problem is None:
                if _is_blank(text):
                    continue
                obj, problem = parse_json_line(text)
            if problem is None:
                if not isinstance(obj, dict) or "text" not in obj:
                    problem = "expected an object with a 'text' field"
                else:
                    problem = _text_problem(obj["text"], "'text'")
            if problem:
                raise DataError(f"{path}:{line_no}: {problem}")
            if obj["text"].strip():
                docs.append(obj["text"].strip())
    else:
        lines = []
        for line_no, text, problem in read_lines(path):
            if problem:
                raise DataError(f"{path}:{line_no}: {problem}")
            lines.append(text)
        docs = [d.strip() for d in re.split(r"\n[ \t]*\n", "\n".join(lines)) if d.strip()]
    if not docs:
        raise DataError(f"{path}: empty file (no documents)")
    return docs


# ---------------------------------------------------------------------------------------------
# Tokens and loss masks
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]                    # already shifted: targets[t] is what position t predicts
    position_ids: list[int] | None = None
    segment_ids: list[int] | None = None
    num_padding: int = 0                  # pad tokens at the end of a packed or stream row

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def encode_chat(messages: Sequence[dict], tok, end_of_turn: str = "<|im_end|>") -> tuple[list[int], list[int]]:
    """Token ids of the whole rendered conversation, and labels: the id on every assistant-answer
    token (content + the closing end_of_turn token), IGNORE_INDEX elsewhere. Not shifted."""
    ids = tok.encode(tok.apply_chat_template(list(messages), add_generation_prompt=False))
    eot = tok.encode(end_of_turn)
    if len(eot) != 1:
        raise ValueError(f"end_of_turn {end_of_turn!r} is not a single token for this tokenizer ({eot})")
    eot = eot[0]
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tok.encode(tok.apply_chat_template(list(messages[:i]), add_generation_prompt=True))
        if ids[:len(prefix)] != prefix:
            raise ValueError(f"assistant turn {i}: the conversation rendered up to it (with the generation "
                             "prompt) does not tokenize to a prefix of the whole conversation, so the answer's "
                             "tokens cannot be located; the chat template or tokenizer merges across the boundary")
        start = len(prefix)
        try:
            end = ids.index(eot, start)
        except ValueError:
            raise ValueError(f"assistant turn {i}: no {end_of_turn!r} after the answer; "
                             "is the chat template ChatML?") from None
        labels[start:end + 1] = ids[start:end + 1]
    return ids, labels


def to_example(ids: Sequence[int], labels: Sequence[int]) -> Example:
    """targets[t] = labels[t + 1]: position t is graded on the token after it; the last has none."""
    return Example(list(ids), list(labels[1:]) + [IGNORE_INDEX])


@dataclass
class DatasetStats:
    num_examples: int = 0
    num_tokens: int = 0            # input tokens after truncation (padding not counted)
    num_loss_tokens: int = 0       # targets that are graded
    num_truncated: int = 0         # examples longer than seq_len, cut to it
    tokens_lost: int = 0           # tokens cut off by truncation
    loss_tokens_lost: int = 0      # of those, answer tokens
    num_without_loss: int = 0      # examples with no graded token left (the prompt filled seq_len)
    num_skipped_lines: int = 0     # bad lines left out by read_jsonl(skip_bad_lines=True)
    num_rows: int = 0              # rows after packing (or examples, unpacked)
    num_padding: int = 0           # pad tokens in those rows

    def summary(self) -> str:
        s = (f"{self.num_examples:,} examples, {self.num_tokens:,} tokens ({self.num_loss_tokens:,} graded) "
             f"in {self.num_rows:,} rows, {self.num_padding:,} padding")
        if self.num_truncated:
            s += f"; {self.num_truncated:,} truncated ({self.tokens_lost:,} tokens lost)"
        if self.num_skipped_lines:
            s += f"; {self.num_skipped_lines:,} bad lines skipped"
        return s


def build_examples(conversations: Sequence[Sequence[dict]], tok, seq_len: int, on_long: str = "truncate",
                   end_of_turn: str = "<|im_end|>", source: str = "") -> tuple[list[Example], DatasetStats]:
    """Tokenize and mask each conversation. One longer than seq_len is cut to its first seq_len
    tokens and counted (on_long="truncate"), or raises naming it (on_long="error"). None is dropped."""
    if on_long not in ("truncate", "error"):
        raise ValueError(f"on_long must be 'truncate' or 'error', not {on_long!r}")
    stats, examples = DatasetStats(), []
    for index, messages in enumerate(conversations):
        ids, labels = encode_chat(messages, tok, end_of_turn)
        ex = to_example(ids, labels)
        if len(ex) > seq_len:
            if on_long == "error":
                where = f"{source}: " if source else ""
                raise DataError(f"{where}example {index} has {len(ex)} tokens, more than seq_len={seq_len} "
                                "(use on_long='truncate' to cut it, or raise seq_len)")
            kept = Example(ex.input_ids[:seq_len], ex.targets[:seq_len])
            stats.num_truncated += 1
            stats.tokens_lost += len(ex) - seq_len
            stats.loss_tokens_lost += ex.num_loss_tokens - kept.num_loss_tokens
            ex = kept
        n_loss = ex.num_loss_tokens
        stats.num_without_loss += n_loss == 0
        stats.num_examples += 1
        stats.num_tokens += len(ex)
        stats.num_loss_tokens += n_loss
        examples.append(ex)
    if stats.num_truncated:
        logger.warning("%s%d of %d examples were longer than seq_len=%d and truncated (%d tokens lost, %d of "
                       "them graded)", f"{source}: " if source else "", stats.num_truncated, stats.num_examples,
                       seq_len, stats.tokens_lost, stats.loss_tokens_lost)
    if stats.num_without_loss:
        logger.warning("%d examples keep no graded token after truncation; raise seq_len",
                       stats.num_without_loss)
    return examples, stats


# ---------------------------------------------------------------------------------------------
# Rows: packing for SFT, a continuous stream for pre-training
# ---------------------------------------------------------------------------------------------

def pack(examples: Sequence[Example], seq_len: int, pad_id: int = 0,
         stats: DatasetStats | None = None) -> list[Example]:
    """Put examples side by side in rows of exactly seq_len tokens, in order (greedy: an example
    that does not fit in the current row starts the next one; the rest of the row is padding).

    position_ids restart at 0 for every example, so each sees the rotary positions it would see
    alone; segment_ids number the examples in a row (padding is -1), and the model attends only
    within a segment (block-diagonal causal attention), so packed examples never see each other and
    the loss of a packed row equals the losses of its examples computed one by one."""
    rows, cur = [], Example([], [], [], [])

    def close():
        pad = seq_len - len(cur)
        cur.input_ids += [pad_id] * pad
        cur.targets += [IGNORE_INDEX] * pad
        cur.position_ids += list(range(pad))
        cur.segment_ids += [-1] * pad
        cur.num_padding = pad
        if stats is not None:
            stats.num_padding += pad
        rows.append(cur)

    for ex in examples:
        if len(ex) > seq_len:
            raise ValueError(f"an example of {len(ex)} tokens does not fit seq_len={seq_len}; truncate first")
        if len(cur) + len(ex) > seq_len:
            close()
            cur = Example([], [], [], [])
        segment = cur.segment_ids[-1] + 1 if cur.segment_ids else 0
        cur.input_ids += ex.input_ids
        cur.targets += ex.targets
        cur.position_ids += list(range(len(ex)))
        cur.segment_ids += [segment] * len(ex)
    if len(cur):
        close()
    if stats is not None:
        stats.num_rows = len(rows)
    return rows


def document_separator_id(tok) -> int:
    """The token put after every pre-training document: <|endoftext|> where the tokenizer has it
    (Qwen's base-model end of text, and minift.tokenizer.train_bpe's), else tok.eos_token_id."""
    tid = tok.token_to_id("<|endoftext|>") if hasattr(tok, "token_to_id") else None
    if tid is None:
        tid = tok.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an eos token to separate documents")
    return tid


def text_rows(docs: Sequence[str], tok, seq_len: int, sep_id: int | None = None,
              pad_id: int = 0) -> tuple[list[Example], DatasetStats]:
    """Pre-training rows from one continuous stream: doc0 <sep> doc1 <sep> ... cut into windows of
    seq_len (input) and the same window moved one token on (targets), as nanoGPT does. Every token
    is graded, the separators included (the model learns where a document ends).

    Note: a window spans document boundaries and attention crosses them: a document may attend to
    the end of the previous one. That is what GPT-2 and nanoGPT pre-training do: the separator tells
    the model that what came before is unrelated, and no padding is wasted. (SFT rows are packed
    with segment_ids instead, so examples there never see each other.) The last, partial window is
    kept and padded (targets -100), so no token is dropped."""
    sep = document_separator_id(tok) if sep_id is None else sep_id
    stream: list[int] = []
    for doc in docs:
        stream += tok.encode(doc)
        stream.append(sep)
    stats, rows = DatasetStats(num_examples=len(docs)), []
    n_inputs = len(stream) - 1  # the last token is only ever a target
    for start in range(0, n_inputs, seq_len):
        x = stream[start:min(start + seq_len, n_inputs)]
        y = stream[start + 1:start + 1 + len(x)]
        pad = seq_len - len(x)
        stats.num_padding += pad
        rows.append(Example(x + [pad_id] * pad, y + [IGNORE_INDEX] * pad, num_padding=pad))
    stats.num_tokens = stats.num_loss_tokens = n_inputs
    stats.num_rows = len(rows)
    return rows, stats


def document_rows(docs: Sequence[str], tok, seq_len: int, sep_id: int | None = None,
                  pad_id: int = 0) -> tuple[list[Example], DatasetStats]:
    """Pre-training rows that never cut a document: each document (its tokens and the separator)
    lies whole in one row, several short ones side by side, put in rows by best fit (longest
    first, each into the row with the least room that still holds it); the rest of a row is
    padding. A document longer than a row is cut into row-sized pieces first.

    Why: in text_rows' stream a window starts anywhere, so the start of a document and its end
    rarely share a row, and what a document's end depends on (a story's requested last line, asked
    for 500 tokens before it) is never in context. Here it always is. Attention crosses documents
    inside a row as in the stream (no segment_ids: causal attention stays the fast kernel), and the
    separator tells the model that what came before is unrelated. The capstone's base (request
    documents and sketches in 512-token rows) wastes 3.4% of its rows in padding."""
    sep = document_separator_id(tok) if sep_id is None else sep_id
    # each piece is input + target tokens: a row of seq_len inputs holds seq_len + 1 of them
    room = seq_len + 1
    pieces = []
    for doc in docs:
        ids = tok.encode(doc) + [sep]
        pieces += [ids[i:i + room] for i in range(0, len(ids), room)]
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))   # longest first, stable
    rows_ids: list[list[int]] = []
    free: list[tuple[int, int]] = []   # (room left, row index), kept sorted
    for i in order:
        n = len(pieces[i])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            left, r = free.pop(at)
        else:
            left, r = room, len(rows_ids)
            rows_ids.append([])
        rows_ids[r] += pieces[i]
        bisect.insort(free, (left - n, r))
    stats, rows = DatasetStats(num_examples=len(docs)), []
    for ids in rows_ids:
        x, y = ids[:-1], ids[1:]
        pad = seq_len - len(x)
        stats.num_padding += pad
        stats.num_tokens += len(x)
        rows.append(Example(x + [pad_id] * pad, y + [IGNORE_INDEX] * pad, num_padding=pad))
    stats.num_loss_tokens = stats.num_tokens
    stats.num_rows = len(rows)
    return rows, stats


# ---------------------------------------------------------------------------------------------
# Validation split and batches
# ---------------------------------------------------------------------------------------------

def train_val_split(items: Sequence, val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """A seeded split: the same items, fraction and seed always give the same two lists, each in the
    items' original order. val_fraction > 0 keeps at least one validation item."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(items)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if val_fraction > 0 and n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} of {n} items leaves nothing to train on")
    order = list(range(n))
    random.Random(f"val-split:{seed}").shuffle(order)
    val_idx = set(order[:n_val])
    train = [items[i] for i in range(n) if i not in val_idx]
    val = [items[i] for i in range(n) if i in val_idx]
    return train, val


class Batches:
    """A DataLoader-like iterator over rows, resumable at the exact batch.

    `for batch in batches:` runs the rest of the current epoch; each epoch visits the rows in an
    order drawn from (seed, epoch) alone. state_dict() = {"epoch", "position", "global_batch"}
    (plain ints: the position is the index of the next batch in the epoch), so a run killed after
    step k and resumed with load_state_dict() gets batch k + 1 exactly as the uninterrupted run would.

    Several ranks (torchrun; minift/distributed.py): batch_size is per rank, a *global* batch is
    batch_size x world_size consecutive rows of the epoch's order, and rank r reads rows
    [r*batch_size, (r+1)*batch_size) of each. So N ranks see exactly the global batches one process
    with batch_size x N sees, and len() counts global batches (the same on every rank). A rank whose
    share of the last, short global batch is empty gets one all-padding row (targets all -100):
    it must still take part in the step, and it adds no loss. rank / world_size: None = this
    process's (1 without torchrun). The position is in global batches: resuming with another world
    size keeps the rows exactly when the global batch is the same (or the rows used divide evenly).

    Each batch: {"input_ids": (B, T) long, "targets": (B, T) long} on `device`, plus
    "position_ids" and "segment_ids" (B, T) when the rows are packed, and "num_loss_tokens" (int:
    the targets that are not -100, counted on the CPU). Rows of unequal length
    (unpacked SFT) are right-padded to the longest in the batch with pad_id, targets -100."""

    def __init__(self, rows: Sequence[Example], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu", pad_id: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from minift import distributed
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"Batches: need 0 <= rank < world_size, got rank {self.rank}, world_size {self.world_size}")
        self.rows, self.batch_size, self.shuffle, self.seed = list(rows), batch_size, shuffle, seed
        self.device, self.pad_id, self.drop_last = torch.device(device), pad_id, drop_last
        self.packed = bool(self.rows) and self.rows[0].segment_ids is not None
        self.epoch, self.position = 0, 0  # an empty Batches (e.g. no validation split) yields nothing

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, g = len(self.rows), self.global_batch
        return n // g if self.drop_last else -(-n // g)

    @property
    def num_tokens(self) -> int:
        """Non-padding input tokens in one epoch (all ranks together)."""
        return sum(len(r) - r.num_padding for r in self.rows)

    @property
    def num_loss_tokens(self) -> int:
        """Graded targets in one epoch (all ranks together)."""
        return sum(r.num_loss_tokens for r in self.rows)

    def order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"batches:{self.seed}:{epoch}").shuffle(idx)
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = state["epoch"], state["position"]
        saved_global = state.get("global_batch", self.global_batch)  # older states: the same batch
        if not (isinstance(epoch, int) and isinstance(position, int) and isinstance(saved_global, int)):
            raise ValueError(f"bad Batches state {state}: need ints")
        if saved_global != self.global_batch:
            used = position * saved_global
            if used % self.global_batch:
                raise ValueError(f"Batches state {state}: {used} rows of epoch {epoch} were used in global batches "
                                 f"of {saved_global}; with {self.world_size} rank(s) x {self.batch_size} = "
                                 f"{self.global_batch} that is not a whole number of batches (keep the global batch: "
                                 f"batch_size = {saved_global} / world_size)")
            position = used // self.global_batch
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"bad Batches state {state}: need epoch >= 0 and 0 <= position <= {len(self)}")
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[dict]:
        order, g, b = self.order(self.epoch), self.global_batch, self.batch_size
        while self.position < len(self):
            chosen = order[self.position * g:(self.position + 1) * g]
            mine = chosen[self.rank * b:(self.rank + 1) * b]
            self.position += 1  # advanced before the caller sees the batch: a saved state points past it
            if mine:
                yield self.collate([self.rows[i] for i in mine])
            else:  # the last global batch is too short to reach this rank
                yield self.collate([_filler(self.rows[chosen[0]], self.pad_id)])
        self.epoch, self.position = self.epoch + 1, 0

    def forever(self) -> Iterator[dict]:
        """Batches across epochs without end (for step-counted training loops)."""
        if len(self) == 0:
            raise ValueError(f"{len(self.rows)} rows make no batch of {self.global_batch} (drop_last={self.drop_last})")
        while True:
            yield from self

    def collate(self, rows: Sequence[Example]) -> dict:
        T = max(len(r) for r in rows)
        pad = lambda seq, value: list(seq) + [value] * (T - len(seq))  # noqa: E731
        batch = {"input_ids": torch.tensor([pad(r.input_ids, self.pad_id) for r in rows], dtype=torch.long),
                 "targets": torch.tensor([pad(r.targets, IGNORE_INDEX) for r in rows], dtype=torch.long)}
        if self.packed:
            batch["position_ids"] = torch.tensor([pad(r.position_ids, 0) for r in rows], dtype=torch.long)
            batch["segment_ids"] = torch.tensor([pad(r.segment_ids, -1) for r in rows], dtype=torch.long)
        # Counted here, before the copy: the train loop weights each batch by its graded targets, and
        # reading that count back from a GPU batch would stall the queue once a step.
        num_loss_tokens = int((batch["targets"] != IGNORE_INDEX).sum())
        return {**{k: v.to(self.device, non_blocking=True) for k, v in batch.items()},
                "num_loss_tokens": num_loss_tokens}


def _filler(like: Example, pad_id: int) -> Example:
    """One padding row shaped like `like`, with no target: a rank's place-holder in a global batch
    that has no row left for it (its loss weight is 0)."""
    T = len(like)
    packed = like.segment_ids is not None
    return Example(input_ids=[pad_id] * T, targets=[IGNORE_INDEX] * T,
                   position_ids=list(range(T)) if packed else None, segment_ids=[0] * T if packed else None,
                   num_padding=T)


# ---------------------------------------------------------------------------------------------
# One call per path
# ---------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    train: list[Example]
    val: list[Example]
    stats: DatasetStats        # of the training rows
    val_stats: DatasetStats
    pad_id: int
    val_conversations: list = field(default_factory=list)   # SFT: the held-out conversations, as messages


def _pad_id(tok) -> int:
    pid = getattr(tok, "pad_token_id", None)
    return pid if pid is not None else 0  # the value is never graded (targets are -100 there)


def request_holds(conversation: list[dict], text: str) -> bool:
    """Whether the conversation's first user turn contains `text`."""
    return text in next((m["content"] for m in conversation if m["role"] == "user"), "")


def upsample_requests(conversations: list, text: str, times: int) -> list:
    """The conversations, with those whose first user turn contains `text` repeated to `times`
    copies in all (the extra copies after the originals; Batches shuffles the rows)."""
    if times < 1:
        raise ValueError(f"upsample times must be >= 1, got {times}")
    return list(conversations) + [c for c in conversations if request_holds(c, text)] * (times - 1)


def load_sft(path: str, tok, seq_len: int, *, pack_rows: bool = True, val_fraction: float = 0.0, seed: int = 0,
             on_long: str = "truncate", skip_bad_lines: bool = False, end_of_turn: str = "<|im_end|>",
             max_examples: int | None = None, upsample: tuple[str, int] | None = None) -> Dataset:
    """Pairs or chats (JSONL) -> masked examples -> (packed) rows, split into train and validation
    by conversation before tokenizing, so no conversation is in both. max_examples: use only the
    file's first that many conversations (e.g. the seed chapter's "100 pairs" exercise).
    upsample=(text, times): the training conversations whose first user turn contains `text` are
    used `times` times (a request the data holds too seldom to be learned); validation untouched."""
    data = read_jsonl(path, skip_bad_lines=skip_bad_lines)
    conversations = data.conversations
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {max_examples}")
        conversations = conversations[:max_examples]
    train_c, val_c = train_val_split(conversations, val_fraction, seed)
    if upsample is not None:
        train_c = upsample_requests(train_c, *upsample)
    pad_id, out = _pad_id(tok), []
    for convs in (train_c, val_c):
        examples, stats = build_examples(convs, tok, seq_len, on_long, end_of_turn, source=path)
        stats.num_skipped_lines = len(data.skipped)
        if pack_rows:
            rows = pack(examples, seq_len, pad_id, stats)
        else:
            rows, stats.num_rows = examples, len(examples)
        out.append((rows, stats))
    return Dataset(out[0][0], out[1][0], out[0][1], out[1][1], pad_id, val_conversations=list(val_c))


def load_pretrain(path: str, tok, seq_len: int, *, val_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """Raw text -> documents (split into train and validation by document) -> stream rows."""
    train_d, val_d = train_val_split(read_text(path), val_fraction, seed)
    pad_id = _pad_id(tok)
    train, stats = text_rows(train_d, tok, seq_len, pad_id=pad_id)
    val, val_stats = text_rows(val_d, tok, seq_len, pad_id=pad_id) if val_d else ([], DatasetStats())
    return Dataset(train, val, stats, val_stats, pad_id)


@dataclass
class DataSummary:
    path: str
    kind: str                       # "pairs" (instruction or chat JSONL) or "text"
    num_examples: int               # pairs / conversations, or documents
    num_tokens: int | None = None   # with a tokenizer: all tokens (chat template included for pairs)
    num_loss_tokens: int | None = None  # pairs: answer tokens; text: same as num_tokens
    num_skipped_lines: int = 0
    example_tokens: list[int] | None = None  # with a tokenizer: each example's length in tokens

    def token_summary(self, seq_len: int | None = None) -> str:
        """The token counts in one line (needs a tokenizer's counts): totals, the spread of the
        examples' lengths, and how many a row of seq_len would truncate."""
        if self.example_tokens is None or not self.example_tokens:
            return "not tokenized"
        lengths = sorted(self.example_tokens)
        pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
        what = "with the chat template" if self.kind == "pairs" else "with a separator after each document"
        s = f"{self.num_tokens:,} tokens {what}"
        if self.kind == "pairs":
            s += f" ({self.num_loss_tokens:,} in the answers)"
        s += (f"; per {'pair' if self.kind == 'pairs' else 'document'}: median {pick(0.5):,}, "
              f"95th percentile {pick(0.95):,}, longest {lengths[-1]:,}")
        if seq_len is not None:
            longer = sum(n > seq_len for n in lengths)
            s += f"; {longer:,} of {len(lengths):,} longer than seq_len={seq_len}"
        return s


def _kind(path: str) -> str:
    if not path.endswith(".jsonl"):
        return "text"
    for _, text, problem in read_lines(path):
        if problem is not None:
            return "pairs"  # read_jsonl reports the error with its line number
        if not _is_blank(text):
            obj, _ = parse_json_line(text)
            return "text" if isinstance(obj, dict) and "text" in obj and "messages" not in obj else "pairs"
    raise DataError(f"{path}: empty file (no JSON lines; expected one JSON object per line)")


def dataset_stats(path: str, tokenizer=None, skip_bad_lines: bool = False) -> DataSummary:
    """How much data a file holds: pairs or documents, and tokens if a tokenizer is given. This is
    the first question of the decision tree (100-10K pairs: LoRA; 10K-1M: full SFT or LoRA; 1B+ raw
    tokens: continued pre-training); see minift.decide."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if _kind(path) == "text":
        docs = read_text(path)
        if tokenizer is None:
            return DataSummary(path, "text", len(docs))
        lengths = [len(tokenizer.encode(d)) + 1 for d in docs]
        return DataSummary(path, "text", len(docs), sum(lengths), sum(lengths), example_tokens=lengths)
    data = read_jsonl(path, skip_bad_lines=skip_bad_lines)
    summary = DataSummary(path, "pairs", len(data), num_skipped_lines=len(data.skipped))
    if tokenizer is not None:
        summary.num_tokens = summary.num_loss_tokens = 0
        summary.example_tokens = []
        for messages in data:
            ids, labels = encode_chat(messages, tokenizer)
            summary.num_tokens += len(ids)
            summary.num_loss_tokens += sum(t != IGNORE_INDEX for t in labels)
            summary.example_tokens.append(len(ids))
    return summary
