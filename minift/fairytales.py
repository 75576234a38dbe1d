"""Synthetic Korean fairytale instruction pairs: the capstone's data, made by hand-written templates.

The seed chapter's capstone is a Korean fairytale generator fine-tuned on "5K-50K synthetic
fairytale pairs". This module makes such pairs, deterministically from a seed:

    instruction  "토끼와 거북이가 나오는 짧은 동화를 써 주세요. 배경은 깊은 숲속이고, ..."
    output       a story that honours every element of the instruction: the characters, the place,
                 the lesson (its key word appears in the story), the length (short, medium, long =
                 1, 2 or 3 episodes), and the optional requests (start with "옛날 옛적에", a title,
                 a one-line moral, the plain "~했다" register, much dialogue, onomatopoeia, a
                 happy-ever-after ending, a target age).

Every story has the same bones: opening (옛날 옛적에 ...) -> the characters -> a problem ->
attempts that fail (one per episode) -> a turning point -> the resolution -> the moral. The bones
are filled from hand-written sentence banks (minift/fairytales_banks.json, read at the bottom of
this file): 44 characters, 28 places, 22 lessons with two problem scenarios each, 15 helpers. Templates are written in 해요체 with slots
like `{hero:은}`; the particle after a slot is chosen by the slot's last syllable (see `josa`).

Note: registers. Narration is written in 해요체 ("~했어요"). The plain register ("~했다") is made by
`to_plain`, which rewrites only the sentence endings that the banks use and raises on any other
ending, so a template that would leave a mixed register fails loudly (the tests render thousands).
Dialogue is written twice, in 반말 and in 존댓말; a line addressed to an elder or a royal
(할머니, 임금님, 공주님, 나무꾼 아저씨 ...) uses the polite form, and vocatives follow the same rule
(토끼야, 곰아, but 할머니, 선녀님).

The library does no I/O except `write_jsonl`/`write_corpus`; scripts/make_fairytales.py is the CLI.
"""
from __future__ import annotations

import json
import random
import re
from importlib import resources
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Josa (Korean particles): the form depends on whether the preceding syllable ends in a consonant
# ---------------------------------------------------------------------------------------------

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3
_RIEUL = 8  # jongseong index of ㄹ: syllable = 0xAC00 + (initial * 21 + medial) * 28 + final

# How each digit is read, as (has a final consonant, that final is ㄹ): 0 영, 1 일, 2 이, 3 삼,
# 4 사, 5 오, 6 육, 7 칠, 8 팔, 9 구. A number ending in 0 is read 십/백/천/만/영: all consonant-final.
_DIGIT_FINAL = {"0": (True, False), "1": (True, True), "2": (False, False), "3": (True, False),
                "4": (False, False), "5": (False, False), "6": (True, False), "7": (True, True),
                "8": (True, True), "9": (False, False)}

# particle -> (form after a consonant, form after a vowel). Either form may be written in a template.
_JOSA = {}
for _pair in [("은", "는"), ("이", "가"), ("을", "를"), ("과", "와"), ("으로", "로"), ("아", "야"),
              ("이고", "고"), ("이야", "야"), ("이었", "였"), ("이에요", "예요"), ("이랑", "랑"),
              ("이나", "나"), ("이라는", "라는"), ("이라고", "라고"), ("이라서", "라서")]:
    for _form in _pair:
        _JOSA.setdefault(_form, _pair)  # "야" stays the vocative 아/야; the copula is written "이야"

# Particles with one form whatever precedes them: written {name:도} for uniformity, attached as is.
_INVARIANT = {"도", "의", "에", "에게", "에서", "만", "까지", "부터", "처럼", "보다", "하고"}

_TRAILING_PUNCT = " \t\"')]}»》」』.,!?"


def final_consonant(word: str) -> tuple[bool, bool] | None:
    """(ends in a consonant, that consonant is ㄹ) for the last syllable of `word`, or None when the
    last character is neither a Hangul syllable nor a digit (then no form can be chosen)."""
    stripped = word.rstrip(_TRAILING_PUNCT)
    if not stripped:
        return None
    ch = stripped[-1]
    code = ord(ch)
    if _HANGUL_FIRST <= code <= _HANGUL_LAST:
        jong = (code - _HANGUL_FIRST) % 28  # 0 = no final consonant (batchim)
        return jong != 0, jong == _RIEUL
    return _DIGIT_FINAL.get(ch)


def josa(word: str, particle: str) -> str:
    """The form of `particle` that follows `word`: josa("곰", "는") -> "은", josa("토끼", "이") -> "가",
    josa("바다", "으로") -> "로", josa("궁궐", "으로") -> "로" (ㄹ takes 로), josa("곰", "야") -> "아".
    For a word whose reading is unknown (Latin letters), returns the written convention "은(는)"."""
    if particle in _INVARIANT:
        return particle
    if particle not in _JOSA:
        raise KeyError(f"unknown particle {particle!r}; known: {', '.join(sorted(_JOSA))}")
    with_final, without_final = _JOSA[particle]
    fc = final_consonant(word)
    if fc is None:
        return f"{with_final}({without_final})"
    has_final, is_rieul = fc
    if with_final == "으로" and is_rieul:
        return without_final
    return with_final if has_final else without_final


def attach(word: str, particle: str) -> str:
    """word + the right form of particle: attach("토끼", "와") -> "토끼와", attach("곰", "와") -> "곰과"."""
    return word + josa(word, particle)


_SLOT = re.compile(r"\{(\w+)(?::(\w+))?\}")


def fill(template: str, slots: dict) -> str:
    """Replace {name} with slots[name] and {name:particle} with slots[name] + the agreeing particle."""
    def one(m: re.Match) -> str:
        name, particle = m.group(1), m.group(2)
        if name not in slots:
            raise KeyError(f"template slot {{{name}}} has no value in: {template!r}")
        value = slots[name]
        return attach(value, particle) if particle else value
    return _SLOT.sub(one, template)


# ---------------------------------------------------------------------------------------------
# Registers: 해요체 -> plain "~다" for narration (quoted dialogue is left as spoken)
# ---------------------------------------------------------------------------------------------

_QUOTED = re.compile(r'"[^"]*"')
_END = r"(?=[.!?]|$)"
_PLAIN_RULES = [
    (re.compile(r"답니다" + _END), "다"),       # 살았답니다 -> 살았다, 끊이지 않는답니다 -> 끊이지 않는다
    (re.compile(r"랍니다" + _END), "다"),       # 용기랍니다 -> 용기다, 힘이랍니다 -> 힘이다
    (re.compile(r"이에요" + _END), "이다"),     # 마음이에요 -> 마음이다
    (re.compile(r"예요" + _END), "다"),         # 선물예요 does not occur; 거예요 -> 거다
]


def _past_plain(m: re.Match) -> str:
    syllable = m.group(1)
    jong = (ord(syllable) - _HANGUL_FIRST) % 28
    if jong in (18, 20):  # ㅄ (없어요 -> 없다), ㅆ (했어요 -> 했다, 있어요 -> 있다)
        return syllable + "다"
    return m.group(0)


_PAST = re.compile(r"([가-힣])어요" + _END)
_LEFTOVER = re.compile(r"(요|니다)" + _END)


def to_plain(text: str) -> str:
    """Rewrite narration from 해요체 to the plain register, outside quotes. Raises ValueError if a
    sentence ending is not one the rules know (so no story ever comes out half in each register)."""
    out, pos = [], 0
    for m in list(_QUOTED.finditer(text)) + [None]:
        end = m.start() if m else len(text)
        part = _PAST.sub(_past_plain, text[pos:end])
        for rule, repl in _PLAIN_RULES:
            part = rule.sub(repl, part)
        left = _LEFTOVER.search(part)
        if left:
            raise ValueError(f"to_plain: no rule for the ending {part[max(0, left.start() - 8):left.end()]!r}")
        out.append(part)
        if m:
            out.append(m.group(0))
            pos = m.end()
    return "".join(out)


def narration_sentences(text: str) -> list[str]:
    """The narrated sentences of a story, quotes removed, without 제목:/교훈: lines (for checks)."""
    body = "\n".join(ln for ln in text.split("\n") if not ln.startswith(("제목:", "교훈:")))
    body = _QUOTED.sub(" ", body)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", body) if s.strip()]


# ---------------------------------------------------------------------------------------------
# The building blocks (the banks that fill them: fairytales_banks.json, read at the bottom)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Character:
    name: str                 # 토끼
    traits: tuple[str, ...]   # modifiers: "귀가 쫑긋한" -> "귀가 쫑긋한 토끼"
    move: str                 # "깡충깡충 뛰어놀았어요": always carries an onomatopoeic word
    call: str | None = None   # how others address them; None: name + 아/야 (토끼야, 곰아)
    honored: bool = False     # an elder or a royal: addressed in 존댓말

    @property
    def vocative(self) -> str:
        return self.call if self.call is not None else attach(self.name, "아")


@dataclass(frozen=True)
class Place:
    name: str   # 깊은 숲속
    desc: str   # "...{place:이} 있었어요." (a clause that ends the opening sentence)


@dataclass(frozen=True)
class Scenario:
    problem: str
    attempts: tuple[str, str, str]   # in story order; a story with k episodes uses the first k
    turn: str
    resolve: str
    slots: dict = field(default_factory=dict)   # extra slot -> choices, e.g. {"item": (...)}
    new_friend: bool = False                     # the friend arrives in the problem, not the opening


@dataclass(frozen=True)
class Lesson:
    key: str                      # the word that must appear in the story: 정직
    label: str                    # for the structured input: 정직
    phrases: tuple[str, ...]      # for the instruction: 정직의 소중함
    title: str                    # for titles: 정직한 마음
    advice: tuple[str, ...]       # a helper's words (반말, elder to young)
    monologue: str                # the hero to themself after the turning point (반말)
    morals: tuple[str, ...]       # narrated (해요체), each contains `key`
    moral_line: str               # the one-line 교훈 (plain)
    scenarios: tuple[Scenario, ...]


@dataclass(frozen=True)
class Helper:
    name: str     # 부엉이 할아버지 (speaker)
    call: str     # 부엉이 할아버지 (vocative, polite)
    visit: str    # a sentence bringing the hero to the helper


LENGTHS = ("short", "medium", "long")
EPISODES = {"short": 1, "medium": 2, "long": 3}
STYLES = ("once", "title", "moral_line", "plain", "dialogue", "onomatopoeia", "happy_end")
# Requests that cannot both be honoured: a happy-ever-after last line vs a 교훈 last line, and a
# literal "살았답니다" vs the plain register.
_EXCLUSIVE = {frozenset({"happy_end", "moral_line"}), frozenset({"happy_end", "plain"})}
YOUNG_AGES = ("세 살", "네 살", "다섯 살")
AGES = YOUNG_AGES + ("여섯 살", "일곱 살", "여덟 살", "아홉 살", "초등학교 1학년", "초등학교 저학년")
HAPPY_END = "오래오래 행복하게 살았답니다."


@dataclass(frozen=True)
class StorySpec:
    """What the instruction asks for; the story is built to honour each field."""
    characters: tuple[str, ...]   # 2 or 3 names; the first is the hero, the second the friend
    place: str
    lesson: str                   # a Lesson.key
    length: str                   # short | medium | long
    styles: tuple[str, ...] = ()
    age: str | None = None


@dataclass(frozen=True)
class Pair:
    instruction: str
    input: str
    output: str
    spec: StorySpec

    def alpaca(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}

    def chat(self, system: str | None = None) -> dict:
        user = self.instruction + ("\n\n" + self.input if self.input else "")
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": self.output}]
        return {"messages": messages}


# ---------------------------------------------------------------------------------------------
# Specs, instructions and stories
# ---------------------------------------------------------------------------------------------

def random_spec(rng: random.Random) -> StorySpec:
    n_chars = 3 if rng.random() < 0.3 else 2
    chars = tuple(c.name for c in rng.sample(CHARACTERS, n_chars))
    styles: list[str] = []
    for _ in range(rng.choice((0, 0, 1, 1, 1, 2, 2, 3))):
        s = rng.choice(STYLES)
        if s not in styles and not any(frozenset({s, t}) in _EXCLUSIVE for t in styles):
            styles.append(s)
    age = rng.choice(AGES) if rng.random() < 0.3 else None
    return StorySpec(chars, rng.choice(PLACES).name, rng.choice(LESSONS).key, rng.choice(LENGTHS),
                     tuple(styles), age)


def _join_names(names: tuple[str, ...]) -> str:
    if len(names) == 2:
        return f"{attach(names[0], '와')} {names[1]}"
    return ", ".join(names)


def build_instruction(spec: StorySpec, rng: random.Random) -> tuple[str, str]:
    """(instruction, input). A quarter of the pairs put the conditions in `input` as a list."""
    lesson = LESSON_BY_KEY[spec.lesson]
    if rng.random() < 0.25:
        polite = rng.random() < 0.6
        instruction = rng.choice(STRUCTURED_INSTRUCTIONS[0 if polite else 1])
        lines = [f"등장인물: {', '.join(spec.characters)}", f"배경: {spec.place}", f"교훈: {lesson.label}",
                 f"길이: {LENGTH_LABELS[spec.length]}"]
        if spec.age:
            lines.append(f"대상: {spec.age} 아이")
        if spec.styles:
            lines.append("요청: " + ", ".join(STYLE_LABELS[s] for s in spec.styles))
        return instruction, "\n".join(lines)
    polite = rng.random() < 0.55
    slots = {"chars": _join_names(spec.characters), "place": spec.place,
             "lp": rng.choice(lesson.phrases), "len": rng.choice(LENGTH_WORDS[spec.length])}
    text = fill(rng.choice(INSTRUCTIONS_POLITE if polite else INSTRUCTIONS_CASUAL), slots)
    extras = []
    if spec.age:
        extras.append(fill(AGE_REQUEST[0 if polite else 1], {"age": spec.age}))
    extras += [STYLE_REQUESTS[s][0 if polite else 1] for s in spec.styles]
    return " ".join([text] + extras), ""


def _say(line: str, speaker: str, verb: str) -> str:
    return f'"{line}" {attach(speaker, "이")} {verb}.'


def _dialogue(pair: tuple[str, str], listener: Character, slots: dict) -> str:
    """One of a (반말, 존댓말) pair, chosen by whom it is said to."""
    return fill(pair[1] if listener.honored else pair[0], dict(slots, call=listener.vocative))


def build_story(spec: StorySpec, rng: random.Random) -> str:
    lesson = LESSON_BY_KEY[spec.lesson]
    place = PLACE_BY_NAME[spec.place]
    hero, friend = CHAR_BY_NAME[spec.characters[0]], CHAR_BY_NAME[spec.characters[1]]
    third = CHAR_BY_NAME[spec.characters[2]] if len(spec.characters) > 2 else None
    scen = rng.choice(lesson.scenarios)
    helper = rng.choice(HELPERS)
    styles = set(spec.styles)
    young = spec.age in YOUNG_AGES
    sound = "onomatopoeia" in styles or young
    talk = "dialogue" in styles
    slots = {"hero": hero.name, "friend": friend.name, "place": place.name,
             "htrait": rng.choice(hero.traits), "ftrait": rng.choice(friend.traits),
             "helper": helper.name, "hcall": helper.call}
    if third:
        slots.update(third=third.name, ttrait=rng.choice(third.traits))
    for name, choices in scen.slots.items():
        slots[name] = rng.choice(choices)
    f = lambda t: fill(t, slots)  # noqa: E731

    paras: list[str] = []
    # 1. Opening and the characters.
    opening = "옛날 옛적에," if "once" in styles else rng.choice(OPENINGS)
    p = [f"{opening} {f(place.desc)}", f(rng.choice(HERO_INTROS))]
    if sound:
        p.append(f"{attach(hero.name, '은')} 날마다 {place.name}에서 {hero.move}")
    if not scen.new_friend:
        p.append(f(rng.choice(FRIEND_INTROS)))
        if sound:
            p.append(f"{attach(friend.name, '은')} {friend.move}")
    if third:
        p.append(f(rng.choice(THIRD_INTROS)))
    paras.append(" ".join(p))
    # 2. The problem (where a newcomer friend first appears).
    p = [f(scen.problem)]
    if scen.new_friend and sound:
        p.append(f"{attach(friend.name, '은')} {friend.move}")
    paras.append(" ".join(p))
    # 3. Episodes: one failed attempt each; long stories let time pass between them.
    k = EPISODES[spec.length]
    used: list[str] = []  # interludes already told in this story (none is told twice)
    for i, attempt in enumerate(scen.attempts[:k]):
        p = []
        if i > 0 and spec.length == "long":
            # "며칠이 지났어요. 다음 날 ..." would contradict itself: before an attempt that opens
            # with its own time, only nightfall may pass.
            next_day = attempt.startswith(("다음 날", "첫날", "그런데 다음 날"))
            pool = [t for t in (NIGHTFALLS if next_day else INTERLUDES + NIGHTFALLS) if t not in used]
            used.append(rng.choice(pool))
            p.append(f(used[-1]))
        p.append(f(attempt))
        if i == 0 and sound:
            p.append(rng.choice(SOUNDSCAPES))
        if third and i == 1:
            p.append(f(rng.choice(THIRD_WATCHES)))
        paras.append(" ".join(p))
    # 4. A helper's advice (medium and long stories).
    if spec.length != "short":
        ask, verb = rng.choice(ASK_HELPER)
        paras.append(" ".join([f(helper.visit), _say(f(ask), hero.name, verb),
                               _say(rng.choice(lesson.advice), helper.name, rng.choice(ADVICE_VERBS))]))
    # 5. The turning point.
    p = [f(scen.turn)]
    if talk or rng.random() < 0.5:
        p.append(_say(lesson.monologue, hero.name, rng.choice(MONOLOGUE_VERBS)))
    paras.append(" ".join(p))
    # 6. The resolution.
    p = [f(scen.resolve)]
    if third:
        p.append(f(rng.choice(THIRD_ENDINGS)))
    if talk or rng.random() < 0.4:
        speaker, listener = (friend, hero) if rng.random() < 0.5 else (hero, friend)
        line = _dialogue(rng.choice(CLOSING_LINES), listener, slots)
        reply = _dialogue(rng.choice(CLOSING_REPLIES), speaker, slots)
        p += [_say(line, speaker.name, rng.choice(("말했어요", "환하게 웃으며 말했어요"))),
              _say(reply, listener.name, "대답했어요")]
    paras.append(" ".join(p))
    # 7. The moral and the last line.
    moral = rng.choice(lesson.morals)
    if rng.random() < 0.3:
        moral = f"{attach(hero.name, '와')} {friend.name}의 이야기처럼, {moral}"
    closing = "그 뒤로 {hero:와} {friend:은} " + HAPPY_END if "happy_end" in styles else rng.choice(CLOSINGS)
    paras.append(f"{moral} {f(closing)}")

    story = "\n".join(paras)
    if "plain" in styles:
        story = to_plain(story)
    if "moral_line" in styles:
        story += f"\n교훈: {lesson.moral_line}"
    if "title" in styles:
        title = fill(rng.choice(TITLES), dict(slots, ltitle=lesson.title))
        story = f"제목: {title}\n{story}"
    return story


def make_pair(rng: random.Random) -> Pair:
    spec = random_spec(rng)
    instruction, inp = build_instruction(spec, rng)
    return Pair(instruction, inp, build_story(spec, rng), spec)


def generate_pairs(n: int, seed: int = 0) -> list[Pair]:
    """n distinct pairs (no instruction+input and no story repeats), the same for the same seed.
    The first n of generate_pairs(m, seed) are generate_pairs(n, seed) for any m >= n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"fairytale-pairs:{seed}")
    seen_prompts, seen_stories, pairs = set(), set(), []
    tries = 0
    while len(pairs) < n:
        tries += 1
        if tries > 20 * n + 1000:
            raise RuntimeError(f"could only make {len(pairs)} distinct pairs of {n} asked for")
        pair = make_pair(rng)
        prompt = pair.instruction + "\x00" + pair.input
        if prompt in seen_prompts or pair.output in seen_stories:
            continue
        seen_prompts.add(prompt)
        seen_stories.add(pair.output)
        pairs.append(pair)
    return pairs


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """n distinct stories for a raw-text corpus, from a stream independent of generate_pairs."""
    rng = random.Random(f"fairytale-corpus:{seed}")
    seen, stories = set(), []
    while len(stories) < n:
        story = build_story(random_spec(rng), rng)
        if story not in seen:
            seen.add(story)
            stories.append(story)
    return stories


def write_jsonl(records: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_corpus(stories: list[str], path: str) -> None:
    """One story per block, blank-line separated (a story's own lines are single-newline separated,
    so `minift.data.read_text` splits the file back into exactly these stories)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(stories) + "\n")


# =============================================================================================
# The banks: hand-written Korean in fairytales_banks.json (next to this file); {slot:particle}
# marks an agreeing particle. Read once at import, lists as tuples, into the names used above:
#   CHARACTERS, PLACES, HELPERS, LESSONS (with their Scenarios): the dataclasses above
#   OPENINGS, HERO_INTROS, FRIEND_INTROS, THIRD_*, INTERLUDES, NIGHTFALLS, SOUNDSCAPES, ASK_HELPER,
#   ADVICE_VERBS, MONOLOGUE_VERBS, CLOSING_LINES / CLOSING_REPLIES ((반말, 존댓말) pairs), CLOSINGS,
#   TITLES: the story's sentences; ONOMATOPOEIA: the words the onomatopoeia request is checked
#   against (the tests count them); LENGTH_WORDS, LENGTH_LABELS, INSTRUCTIONS_POLITE / _CASUAL,
#   STRUCTURED_INSTRUCTIONS, AGE_REQUEST, STYLE_REQUESTS, STYLE_LABELS: the requests' words.
# =============================================================================================

def _tuples(value):
    """JSON lists -> tuples, all the way down (the banks are immutable; dataclasses stay hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _load_banks() -> dict:
    with resources.files("minift").joinpath("fairytales_banks.json").open(encoding="utf-8") as fh:
        banks = _tuples(json.load(fh))
    banks["characters"] = tuple(Character(**c) for c in banks["characters"])
    banks["places"] = tuple(Place(**p) for p in banks["places"])
    banks["helpers"] = tuple(Helper(**h) for h in banks["helpers"])
    banks["lessons"] = tuple(Lesson(**dict(lesson, scenarios=tuple(Scenario(**s) for s in lesson["scenarios"])))
                             for lesson in banks["lessons"])
    return banks


_BANKS = _load_banks()
CHARACTERS: tuple[Character, ...] = _BANKS["characters"]
PLACES: tuple[Place, ...] = _BANKS["places"]
OPENINGS = _BANKS["openings"]
HERO_INTROS = _BANKS["hero_intros"]
FRIEND_INTROS = _BANKS["friend_intros"]
THIRD_INTROS = _BANKS["third_intros"]
THIRD_WATCHES = _BANKS["third_watches"]
THIRD_ENDINGS = _BANKS["third_endings"]
INTERLUDES = _BANKS["interludes"]
NIGHTFALLS = _BANKS["nightfalls"]
SOUNDSCAPES = _BANKS["soundscapes"]
ONOMATOPOEIA = _BANKS["onomatopoeia"]
ASK_HELPER = _BANKS["ask_helper"]
ADVICE_VERBS = _BANKS["advice_verbs"]
MONOLOGUE_VERBS = _BANKS["monologue_verbs"]
CLOSING_LINES = _BANKS["closing_lines"]
CLOSING_REPLIES = _BANKS["closing_replies"]
CLOSINGS = _BANKS["closings"]
TITLES = _BANKS["titles"]
LENGTH_WORDS = _BANKS["length_words"]
LENGTH_LABELS = _BANKS["length_labels"]
INSTRUCTIONS_POLITE = _BANKS["instructions_polite"]
INSTRUCTIONS_CASUAL = _BANKS["instructions_casual"]
STRUCTURED_INSTRUCTIONS = _BANKS["structured_instructions"]
AGE_REQUEST = _BANKS["age_request"]
STYLE_REQUESTS = _BANKS["style_requests"]
STYLE_LABELS = _BANKS["style_labels"]
HELPERS: tuple[Helper, ...] = _BANKS["helpers"]
LESSONS: tuple[Lesson, ...] = _BANKS["lessons"]
LESSON_BY_KEY = {lesson.key: lesson for lesson in LESSONS}
PLACE_BY_NAME = {place.name: place for place in PLACES}
CHAR_BY_NAME = {c.name: c for c in CHARACTERS}
