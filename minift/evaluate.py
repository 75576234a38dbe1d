"""Does the story follow the request? Scores a reader would check, computed from the request itself.

    request text --parse_request--> StoryRequest (characters, place, lesson, length, ending asked)
    model --generate_batch (fixed sampling, several seeds)--> stories --score_story--> metrics
    per request, averaged over requests, and the spread of those averages over sampling seeds

The metrics (each 0..1 per story; `ending` only where the request asks for one):
    characters   share of the requested characters named in the story (as a word: 말 in 말이 or
                 말아, not in 말했어요; 소 in 소가, not in 소리)
    place        the requested place named
    lesson       the requested lesson's key word present (정직, 용기, ...: what the data promises)
    ending       the requested ending ('오래오래 행복하게 살았답니다') is the story's last sentence
    length       the story's length in characters lies in the band the training stories of the
                 requested length (short / medium / long) span
    no_repeat    no sentence and no line said twice
    shape        share of the five parts found, in order: an opening formula, a problem, a turning
                 point, a resolution, a moral (the parts are recognised by the fixed words of the
                 generator's templates, minift/fairytales.py, whatever the slots hold)

The requests are the fairytale generator's (minift/fairytales.py): parse_request reads its
instruction templates and its structured "등장인물: ..." lists back into their fields; a request
that names no known character or place is refused (ValueError), not scored as zero.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from minift import fairytales as ft
from minift.data import read_jsonl, train_val_split
from minift.generate import generate_batch, split_sentences

METRICS = ("characters", "place", "lesson", "ending", "length", "no_repeat", "shape")
# The sampling every evaluation uses unless told otherwise: low temperature and a top-k cut keep a
# small model on its most likely words without the loops greedy decoding falls into; no 10-token
# span twice (no reference story repeats one: measured on all 1,000 pairs in the tiny model's
# tokens, where 8-token repeats do occur), and no sentence or line twice, however short (the
# 10-token rule let "며칠이 지났어요." (4 tokens) through twice in 2 of 150 stories, 2026-11-30).
# So `no_repeat` measures what these rules cannot catch; scripts/evaluate_stories.py
# --no-repeat-ngram 0 --allow-repeated-sentences turns both off to see what the model alone does.
SAMPLING = dict(temperature=0.7, top_k=20, no_repeat_ngram_size=10, no_repeat_sentences=True)
HAPPY_END_REQUEST = "오래오래 행복하게 살았답니다"


@dataclass(frozen=True)
class StoryRequest:
    characters: tuple[str, ...]
    place: str
    lesson: str
    length: str                # short | medium | long
    ending: str | None         # the last sentence asked for, or None


# ---------------------------------------------------------------------------------------------
# Reading a request back into its fields
# ---------------------------------------------------------------------------------------------

# Every particle form a name can carry in the stories and requests, longest first (a name is a
# word when it is followed by one of these, by a non-Hangul character, or by nothing).
_PARTICLES = sorted({f for pair in ft._JOSA.values() for f in pair} | ft._INVARIANT
                    | {"님", "께", "께서", "들", "와의", "과의"}, key=len, reverse=True)
_HANGUL = re.compile(r"[가-힣]")


def name_position(text: str, name: str) -> int:
    """Where `name` first occurs in `text` as a word, or -1: not inside another word (곰 in 곰곰이,
    소 in 소년) and followed only by a particle or a non-Hangul character."""
    start = text.find(name)
    while start != -1:
        before = text[start - 1] if start else " "
        rest = text[start + len(name):]
        if not _HANGUL.match(before) and (not rest or not _HANGUL.match(rest[0])
                                          or any(rest.startswith(p) for p in _PARTICLES)):
            return start
        start = text.find(name, start + 1)
    return -1


def name_mentioned(text: str, name: str) -> bool:
    return name_position(text, name) != -1


_LENGTH_WORDS = sorted(((w, length) for length, words in ft.LENGTH_WORDS.items() for w in words),
                       key=lambda wl: len(wl[0]), reverse=True)
_LESSON_PHRASES = sorted(((p, lesson.key) for lesson in ft.LESSONS for p in lesson.phrases),
                         key=lambda pk: len(pk[0]), reverse=True)


def parse_request(text: str) -> StoryRequest:
    """The fields of a request made by minift.fairytales (free-text or structured form)."""
    fields = dict(re.findall(r"^(등장인물|배경|교훈|길이): *(.+)$", text, flags=re.M))
    if fields:
        characters = tuple(n.strip() for n in fields.get("등장인물", "").split(","))
        place = fields.get("배경", "").strip()
        lesson = next((x.key for x in ft.LESSONS if x.label == fields.get("교훈", "").strip()), "")
        length = next((k for k, v in ft.LENGTH_LABELS.items() if v == fields.get("길이", "").strip()), "")
    else:
        place = max((p.name for p in ft.PLACES if p.name in text), key=len, default="")
        # names in the order the request gives them (the hero first); the place is blanked out
        # first, as it may hold a name (도깨비 마을, 소나무 언덕)
        rest = text.replace(place, " ") if place else text
        found = [(name_position(rest, c.name), c.name) for c in ft.CHARACTERS]
        characters = tuple(name for at, name in sorted(found) if at != -1)
        lesson = next((key for phrase, key in _LESSON_PHRASES if phrase in text), "")
        length = next((length for word, length in _LENGTH_WORDS if f"{word} 동화" in text), "")
    missing = [what for what, value in (("characters", characters), ("place", place), ("lesson", lesson),
                                        ("length", length)) if not value or value == ("",)]
    if missing:
        raise ValueError(f"not a fairytale request minift.fairytales makes (no {', '.join(missing)} found): "
                         f"{text[:120]!r}")
    ending = ft.HAPPY_END if HAPPY_END_REQUEST in text else None
    return StoryRequest(characters, place, lesson, length, ending)


# ---------------------------------------------------------------------------------------------
# Scoring one story
# ---------------------------------------------------------------------------------------------

# A story's sentences (dialogue included) and its 제목:/교훈: lines are split_sentences's: the
# sampling's no_repeat_sentences rule reads them the same way.


def _literal_pieces(template: str, min_chars: int = 6) -> list[str]:
    """The fixed text of a template between its {slots}, in both registers, pieces of at least
    min_chars characters cut at sentence ends (a piece never spans a slot)."""
    pieces = []
    for chunk in ft._SLOT.split(template)[::3]:  # split keeps the 2 groups: text, name, particle, text...
        for piece in re.split(r"(?<=[.!?])\s+", chunk or ""):
            piece = piece.strip(" ,")
            if len(piece) >= min_chars:
                pieces.append(piece)
                try:
                    plain = ft.to_plain(piece)
                except ValueError:
                    continue
                if plain != piece:
                    pieces.append(plain)
    return pieces


def _part_markers() -> dict[str, tuple[str, ...]]:
    scenarios = [s for lesson in ft.LESSONS for s in lesson.scenarios]
    return {
        "opening": tuple(o.rstrip(",") for o in ft.OPENINGS) + ("옛날 옛적에",),
        "problem": tuple(p for s in scenarios for p in _literal_pieces(s.problem)),
        "turn": tuple(p for s in scenarios for p in _literal_pieces(s.turn)),
        "resolution": tuple(p for s in scenarios for p in _literal_pieces(s.resolve)),
        "moral": tuple(p for lesson in ft.LESSONS for m in lesson.morals + (lesson.moral_line,)
                       for p in _literal_pieces(m)),
    }


_PARTS = _part_markers()


def story_shape(story: str) -> dict[str, bool]:
    """Which of the five parts are found, each after the one before it (a moral before the
    problem does not count as the story's end)."""
    found, pos = {}, 0
    for part, markers in _PARTS.items():
        hits = [story.find(m, pos) for m in markers]
        hits = [h for h in hits if h != -1]
        found[part] = bool(hits)
        if hits:
            pos = min(hits)
    return found


def length_bands(conversations) -> dict[str, tuple[int, int]]:
    """length -> (fewest, most) characters among the reference stories of that requested length."""
    bands: dict[str, list[int]] = {}
    for messages in conversations:
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = next(m["content"] for m in messages if m["role"] == "assistant")
        bands.setdefault(parse_request(user).length, []).append(len(answer))
    return {k: (min(v), max(v)) for k, v in bands.items()}


def ends_with(story: str, ending: str) -> bool:
    """Whether the story's last sentence, past a 교훈 line or a title, ends with `ending`."""
    narrative = [s for s in split_sentences(story) if not s.startswith(("제목:", "교훈:"))]
    return bool(narrative) and narrative[-1].endswith(ending)


def score_story(request: StoryRequest, story: str, bands: dict[str, tuple[int, int]]) -> dict[str, float | None]:
    """Each metric of METRICS for one story (None: `ending` where none was asked)."""
    said = split_sentences(story)
    lines = [ln.strip() for ln in story.split("\n") if ln.strip()]
    lo, hi = bands.get(request.length, (0, math.inf))
    shape = story_shape(story)
    return {
        "characters": sum(name_mentioned(story, c) for c in request.characters) / len(request.characters),
        "place": float(request.place in story),
        "lesson": float(request.lesson in story),
        "ending": None if request.ending is None else float(ends_with(story, request.ending)),
        "length": float(lo <= len(story) <= hi),
        "no_repeat": float(len(set(said)) == len(said) and len(set(lines)) == len(lines)),
        "shape": sum(shape.values()) / len(shape),
    }


def mean_scores(rows: list[dict]) -> dict[str, float | None]:
    """The average of each metric over the stories that have it (ending: those that asked; None
    where none did)."""
    out = {}
    for m in METRICS:
        values = [r[m] for r in rows if r.get(m) is not None]
        out[m] = sum(values) / len(values) if values else None
    return out


def _spread(values: list[float | None]) -> float | None:
    """Population standard deviation of the per-seed means (0 for one seed; None if any is None)."""
    if any(v is None for v in values):
        return None
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))


# ---------------------------------------------------------------------------------------------
# Generating and scoring held-out requests
# ---------------------------------------------------------------------------------------------

def request_messages(messages: list[dict]) -> list[dict]:
    """A conversation up to (not including) its first answer: what the model is asked."""
    first_answer = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return messages[:first_answer]


def evaluate_stories(model, tokenizer, conversations, bands: dict[str, tuple[int, int]], *, seeds=(0,),
                     max_new_tokens: int = 512, batch_size: int = 25, sampling: dict | None = None) -> dict:
    """Generate a story for each conversation's request with each seed, score them.

    Returns {"mean": {metric: mean over requests and seeds}, "std_over_seeds": {metric: standard
    deviation of the per-seed means (0 with one seed)}, "n_requests", "seeds", "sampling",
    "per_request": [{"request", "scores" (mean over seeds), "story" (the first seed's)}]}."""
    sampling = dict(SAMPLING if sampling is None else sampling)
    prompts = [request_messages(list(c)) for c in conversations]
    requests = [parse_request(next(m["content"] for m in p if m["role"] == "user")) for p in prompts]
    per_seed: list[list[dict]] = []
    stories_first_seed: list[str] = []
    for s_i, seed in enumerate(seeds):
        scores = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            stories = generate_batch(model, tokenizer, chunk, max_new_tokens=max_new_tokens,
                                     seed=seed * 1_000_003 + start, **sampling)
            if s_i == 0:
                stories_first_seed += stories
            scores += [score_story(r, st, bands) for r, st in zip(requests[start:start + batch_size], stories)]
        per_seed.append(scores)
    seed_means = [mean_scores(rows) for rows in per_seed]
    per_request = []
    for i, p in enumerate(prompts):
        rows = [seed_rows[i] for seed_rows in per_seed]
        per_request.append({"request": p[-1]["content"], "scores": mean_scores(rows), "story": stories_first_seed[i]})
    return {
        "mean": mean_scores([r for rows in per_seed for r in rows]),
        "std_over_seeds": {m: _spread([sm[m] for sm in seed_means]) for m in METRICS},
        "n_requests": len(prompts), "seeds": list(seeds), "sampling": sampling, "per_request": per_request,
    }


def table(before: dict | None, after: dict) -> str:
    """A plain-text table of the mean scores (± spread over seeds), before beside after."""
    def cell(ev, m):
        v, sd = ev["mean"][m], ev["std_over_seeds"][m]
        if v is None:
            return "n/a"
        return f"{100 * v:5.1f}%" + (f" ± {100 * sd:.1f}" if len(ev["seeds"]) > 1 else "")
    head = f"{'metric':<12} {'before':>16} {'after':>16}" if before is not None else f"{'metric':<12} {'score':>16}"
    rows = [head] + [f"{m:<12} {cell(before, m):>16} {cell(after, m):>16}" if before is not None
                     else f"{m:<12} {cell(after, m):>16}" for m in METRICS]
    return "\n".join(rows)


def split_requests(path: str, val_fraction: float = 0.05, seed: int = 0,
                   max_examples: int | None = None) -> tuple[list, list]:
    """(training conversations, held-out conversations) of a pairs file: the split
    minift.data.load_sft makes for the same val_fraction, seed and max_examples, and with
    max_examples the pairs past the first max_examples are held out too (never trained on)."""
    conversations = read_jsonl(path).conversations
    used = conversations[:max_examples]
    train, val = train_val_split(used, val_fraction, seed)
    return train, val + conversations[len(used):]


def story_token_budget(conversations, tokenizer, margin: float = 0.1) -> int:
    """max_new_tokens for the evaluation: the longest reference answer, in this tokenizer's tokens,
    plus a margin (a story may run a little longer than any reference and still be scored)."""
    longest = max(len(tokenizer.encode(m["content"])) for c in conversations for m in c if m["role"] == "assistant")
    return int(math.ceil(longest * (1 + margin))) + 1  # + 1: the end-of-turn token


def side_by_side(before: dict | None, after: dict | None, n: int) -> str:
    """The first n requests, each with its story before and after (whichever were evaluated)."""
    base = after or before
    out = []
    for i, item in enumerate(base["per_request"][:n]):
        out.append(f"=== request {i + 1}: {item['request']}")
        for name, ev in (("before", before), ("after", after)):
            if ev is not None:
                r = ev["per_request"][i]
                scores = ", ".join(f"{m} {r['scores'][m]:.2f}" for m in METRICS if r["scores"][m] is not None)
                out.append(f"--- {name} ({scores})\n{r['story']}")
    return "\n".join(out)
