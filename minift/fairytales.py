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
are filled from hand-written sentence banks (at the bottom of this file): 44 characters, 28 places,
22 lessons with two problem scenarios each, 15 helpers. Templates are written in 해요체 with slots
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
# The building blocks (the banks that fill them are at the bottom of the file)
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
# The banks. Everything below is hand-written Korean; {slot:particle} marks an agreeing particle.
# =============================================================================================

C = Character
CHARACTERS: tuple[Character, ...] = (
    C("토끼", ("귀가 쫑긋한", "깡충깡충 잘 뛰는", "성격이 급한"), "깡충깡충 뛰어놀았어요."),
    C("거북이", ("느릿느릿한", "등껍질이 단단한", "참을성 많은"), "엉금엉금 기어다녔어요."),
    C("호랑이", ("줄무늬가 멋진", "힘이 센", "목소리가 우렁찬"), "어슬렁어슬렁 돌아다녔어요."),
    C("여우", ("꾀 많은", "꼬리가 복슬복슬한", "눈치 빠른"), "살금살금 돌아다녔어요."),
    C("곰", ("덩치 큰", "마음씨 좋은", "꿀을 좋아하는"), "뒤뚱뒤뚱 걸어 다녔어요."),
    C("다람쥐", ("볼이 통통한", "재빠른", "도토리를 좋아하는"), "쪼르르 나무를 오르내렸어요."),
    C("까치", ("반가운 소식을 전하는", "목소리가 맑은", "부지런한"), "깍깍 노래하며 날아다녔어요."),
    C("참새", ("몸집이 작은", "재잘재잘 말이 많은", "호기심 많은"), "짹짹 지저귀며 날아다녔어요."),
    C("개구리", ("노래를 좋아하는", "눈이 동그란", "초록빛"), "폴짝폴짝 뛰어다녔어요."),
    C("오리", ("헤엄을 잘 치는", "부리가 노란", "명랑한"), "뒤뚱뒤뚱 걸어 다녔어요."),
    C("원숭이", ("재주 많은", "장난꾸러기", "손재주 좋은"), "나무 사이를 휙휙 건너다녔어요."),
    C("사슴", ("뿔이 멋진", "눈망울이 맑은", "겁이 많은"), "사뿐사뿐 뛰어다녔어요."),
    C("고양이", ("수염이 긴", "호기심 많은", "털이 보송보송한"), "살금살금 돌아다녔어요."),
    C("강아지", ("귀가 축 늘어진", "꼬리를 잘 흔드는", "충직한"), "꼬리를 살랑살랑 흔들며 뛰어놀았어요."),
    C("두더지", ("눈이 작은", "땅 파기 선수인", "부끄럼 많은"), "땅속을 꼼지락꼼지락 파고 다녔어요."),
    C("염소", ("수염이 난", "고집 센", "뿔이 작은"), "음매 음매 울며 풀을 뜯었어요."),
    C("돼지", ("먹보", "배가 볼록한", "웃음이 많은"), "꿀꿀거리며 뒹굴뒹굴 놀았어요."),
    C("병아리", ("노란 솜털의", "아기", "겁 많은"), "삐약삐약 종종걸음을 쳤어요."),
    C("까마귀", ("깃털이 새까만", "영리한", "목소리가 큰"), "까악까악 울며 날아다녔어요."),
    C("제비", ("날쌘", "꼬리가 멋진", "봄을 알리는"), "하늘을 훨훨 날아다녔어요."),
    C("나비", ("날개가 고운", "꽃을 좋아하는", "작은"), "팔랑팔랑 날아다녔어요."),
    C("개미", ("부지런한", "힘이 센", "작지만 야무진"), "영차영차 먹이를 날랐어요."),
    C("베짱이", ("노래를 좋아하는", "다리가 긴", "느긋한"), "찌르르 찌르르 노래를 불렀어요."),
    C("고슴도치", ("가시가 뾰족한", "수줍음 많은", "동글동글한"), "또르르 몸을 굴리며 놀았어요."),
    C("너구리", ("눈가가 까만", "꾀 많은", "통통한"), "어슬렁어슬렁 돌아다녔어요."),
    C("수달", ("헤엄을 잘 치는", "장난기 많은", "털이 반질반질한"), "첨벙첨벙 헤엄을 쳤어요."),
    C("두루미", ("다리가 긴", "점잖은", "목이 긴"), "긴 다리로 성큼성큼 걸어 다녔어요."),
    C("생쥐", ("꼬리가 긴", "날쌘", "조그만"), "쪼르르 돌아다녔어요."),
    C("소", ("힘이 센", "우직한", "눈이 순한"), "음메 울며 느릿느릿 밭을 갈았어요."),
    C("말", ("갈기가 멋진", "발이 빠른", "힘찬"), "다그닥다그닥 들판을 달렸어요."),
    C("코끼리", ("코가 긴", "몸집이 큰", "마음이 넓은"), "쿵쿵 발을 구르며 걸어 다녔어요."),
    C("나무꾼", ("마음씨 착한", "부지런한", "가난한"), "쩍쩍 장작을 팼어요.", "나무꾼 아저씨", True),
    C("공주", ("마음씨 고운", "호기심 많은", "어린"), "사뿐사뿐 꽃길을 거닐었어요.", "공주님", True),
    C("왕자", ("씩씩한", "어린", "장난기 많은"), "다그닥다그닥 말을 타고 달렸어요.", "왕자님", True),
    C("할머니", ("인자한", "허리가 굽은", "이야기를 좋아하는"), "느릿느릿 마실을 다녔어요.", "할머니", True),
    C("할아버지", ("수염이 하얀", "인자한", "옛이야기를 잘하는"), "지팡이를 짚고 뚜벅뚜벅 산책을 했어요.",
      "할아버지", True),
    C("어부", ("마음씨 좋은", "바다를 사랑하는", "손이 큰"), "영차영차 그물을 끌어 올렸어요.", "어부 아저씨", True),
    C("농부", ("부지런한", "얼굴이 까맣게 그을린", "성실한"), "구슬땀을 뻘뻘 흘리며 밭을 갈았어요.",
      "농부 아저씨", True),
    C("소년", ("개구쟁이", "씩씩한", "호기심 많은"), "폴짝폴짝 뛰어놀았어요."),
    C("소녀", ("마음씨 고운", "똑똑한", "수줍음 많은"), "랄랄라 노래를 흥얼거렸어요."),
    C("임금님", ("인자한", "나이 많은", "마음이 넓은"), "뚜벅뚜벅 백성들을 살피러 다녔어요.", "임금님", True),
    C("도깨비", ("뿔이 하나 달린", "장난꾸러기", "힘이 센"), "뚝딱뚝딱 방망이를 두드렸어요."),
    C("선녀", ("고운 날개옷을 입은", "마음씨 고운", "하늘에서 내려온"), "하늘하늘 춤을 추었어요.", "선녀님", True),
    C("선비", ("책을 좋아하는", "점잖은", "가난한"), "또박또박 글을 읽었어요.", "선비님", True),
)
del C

P = Place
PLACES: tuple[Place, ...] = (
    P("깊은 숲속", "하늘을 찌를 듯한 나무들이 빽빽이 들어선 {place:이} 있었어요."),
    P("바닷가 마을", "파도 소리가 철썩철썩 들려오는 {place:이} 있었어요."),
    P("작은 연못가", "연꽃이 동동 떠 있는 {place:이} 있었어요."),
    P("높은 산골짜기", "구름도 쉬어 가는 {place:이} 있었어요."),
    P("대나무 숲", "바람이 불 때마다 사각사각 노래하는 {place:이} 있었어요."),
    P("눈 덮인 산마을", "지붕마다 고드름이 주렁주렁 매달린 {place:이} 있었어요."),
    P("넓은 들판", "끝이 보이지 않는 {place:이} 펼쳐져 있었어요."),
    P("맑은 시냇가", "졸졸졸 물소리가 끊이지 않는 {place:이} 있었어요."),
    P("작은 섬마을", "푸른 바다 한가운데에 {place:이} 있었어요."),
    P("궁궐", "기와지붕이 햇살에 반짝이는 커다란 {place:이} 있었어요."),
    P("산기슭", "맑은 옹달샘이 퐁퐁 솟는 {place:이} 있었어요."),
    P("과수원", "사과가 주렁주렁 열리는 {place:이} 있었어요."),
    P("장터 마을", "장이 설 때마다 왁자지껄해지는 {place:이} 있었어요."),
    P("갈대밭", "가을이면 은빛 물결이 일렁이는 {place:이} 있었어요."),
    P("들꽃 언덕", "봄이면 온갖 꽃이 알록달록 피어나는 {place:이} 있었어요."),
    P("초가 마을", "초가지붕 위로 하얀 박꽃이 피는 {place:이} 있었어요."),
    P("용궁", "깊고 푸른 바다 밑에 반짝반짝 빛나는 {place:이} 있었어요."),
    P("하늘나라", "뭉게구름 위 높은 곳에 {place:이} 있었어요."),
    P("보리밭 마을", "바람이 불면 보리 이삭이 물결치는 {place:이} 있었어요."),
    P("소나무 언덕", "사시사철 솔향기가 가득한 {place:이} 있었어요."),
    P("호숫가", "거울처럼 맑은 호수를 품은 {place:이} 있었어요."),
    P("도깨비 마을", "밤마다 도깨비불이 반짝이는 {place:이} 있었어요."),
    P("버섯 숲", "알록달록한 버섯이 우산처럼 솟아 있는 {place:이} 있었어요."),
    P("물레방아 마을", "물레방아가 쉬지 않고 빙글빙글 도는 {place:이} 있었어요."),
    P("감나무 마을", "가을이면 빨간 감이 주렁주렁 열리는 {place:이} 있었어요."),
    P("은행나무 숲", "가을이면 노란 은행잎이 눈처럼 흩날리는 {place:이} 있었어요."),
    P("산골 마을", "첩첩산중 깊은 곳에 자리한 {place:이} 있었어요."),
    P("강가 마을", "굽이굽이 흐르는 강을 따라 {place:이} 있었어요."),
)
del P

OPENINGS = ("아주 먼 옛날,", "옛날 옛날 한 옛날에,", "아주 오래전,", "호랑이 담배 피우던 시절,", "먼 옛날,")
HERO_INTROS = (
    "{place}에는 {htrait} {hero:이} 살고 있었어요.",
    "그곳에는 {htrait} {hero:이} 살았어요.",
    "{place} 한쪽에는 {htrait} {hero:이} 살고 있었어요.",
)
FRIEND_INTROS = (
    "{hero}의 가장 친한 친구는 {ftrait} {friend:였}어요.",
    "바로 이웃에는 {ftrait} {friend:이} 살고 있었어요.",
    "{hero:은} 이웃에 사는 {ftrait} {friend:와} 자주 어울려 놀았어요.",
)
THIRD_INTROS = (
    "그 곁에는 {ttrait} {third:도} 함께 살고 있었어요.",
    "{place}에는 {ttrait} {third:도} 살고 있었어요.",
)
THIRD_WATCHES = (
    "{third:은} 걱정스러운 얼굴로 {hero:을} 지켜보았어요.",
    "멀리서 이 모습을 본 {third:도} 고개를 갸웃거렸어요.",
)
THIRD_ENDINGS = (
    "이 모습을 지켜보던 {third:도} 빙그레 웃었어요.",
    "소식을 들은 {third:도} 한달음에 달려와 함께 기뻐했어요.",
    "{third:도} 두 친구를 보며 흐뭇하게 고개를 끄덕였어요.",
)
INTERLUDES = (
    "그렇게 하루, 이틀, 사흘이 흘렀어요.",
    "며칠이 지났어요.",
    "그러는 사이에도 시간은 속절없이 흘러갔어요.",
)
NIGHTFALLS = (
    "해가 지고 달이 둥실 떠올랐어요.",
    "그날 밤 {place}에는 부엉이 소리만 부엉부엉 들려왔어요.",
)
SOUNDSCAPES = (
    "하늘에서는 흰 구름이 둥실둥실 흘러갔어요.",
    "어디선가 새들이 짹짹 지저귀었어요.",
    "나뭇잎이 바스락바스락 흔들렸어요.",
    "멀리서 개울물이 졸졸졸 흘러갔어요.",
)
# Words the onomatopoeia request is checked against (the tests count them).
ONOMATOPOEIA = ("깡충깡충", "엉금엉금", "어슬렁어슬렁", "살금살금", "뒤뚱뒤뚱", "쪼르르", "깍깍", "짹짹", "폴짝폴짝",
                "휙휙", "사뿐사뿐", "살랑살랑", "꼼지락꼼지락", "음매", "꿀꿀", "뒹굴뒹굴", "삐약삐약", "까악까악",
                "훨훨", "팔랑팔랑", "영차영차", "찌르르", "또르르", "첨벙첨벙", "성큼성큼", "음메", "느릿느릿",
                "다그닥다그닥", "쿵쿵", "쩍쩍", "뚜벅뚜벅", "뻘뻘", "랄랄라", "뚝딱뚝딱", "하늘하늘", "또박또박",
                "둥실둥실", "바스락바스락", "졸졸졸", "철썩철썩", "사각사각", "주렁주렁", "퐁퐁", "빙글빙글", "콩닥콩닥")

ASK_HELPER = (
    ("{hcall}, 저는 어떻게 하면 좋을까요?", "물었어요"),
    ("{hcall}, 제 마음이 왜 이렇게 답답할까요?", "물었어요"),
    ("{hcall}, 좋은 방법을 좀 알려 주세요.", "부탁했어요"),
)
ADVICE_VERBS = ("빙그레 웃으며 말했어요", "고개를 끄덕이며 대답했어요", "부드러운 목소리로 말했어요")
MONOLOGUE_VERBS = ("중얼거렸어요", "조용히 혼잣말을 했어요", "주먹을 꼭 쥐며 말했어요")
# (반말, 존댓말): said to `call`, in the form the listener is owed.
CLOSING_LINES = (
    ("{call}, 앞으로도 우리 사이좋게 지내자.", "{call}, 앞으로도 우리 사이좋게 지내요."),
    ("{call}, 네가 있어서 정말 다행이야.", "{call}, 곁에 계셔서 정말 다행이에요."),
    ("{call}, 오늘 일은 절대 잊지 않을게.", "{call}, 오늘 일은 절대 잊지 않을게요."),
    ("{call}, 내일도 같이 놀자!", "{call}, 내일도 함께해요!"),
)
CLOSING_REPLIES = (("그래, 좋아!", "네, 좋아요!"), ("나도 같은 마음이야.", "저도 같은 마음이에요."),
                   ("물론이지!", "물론이에요!"))
CLOSINGS = (
    "그 뒤로 {hero:와} {friend:은} 오래오래 사이좋게 지냈답니다.",
    "{place}에는 오늘도 웃음소리가 끊이지 않는답니다.",
    "지금도 {place}에 가면 {hero:와} {friend}의 이야기가 전해 온답니다.",
    "그날 밤 {place}의 하늘에는 별들이 유난히 반짝였답니다.",
)
TITLES = ("{hero:와} {friend}", "{hero:와} {friend}의 {ltitle}", "{hero:와} {ltitle}", "{place}의 {ltitle}")

LENGTH_WORDS = {"short": ("짧은", "짤막한", "간단한"), "medium": ("적당한 길이의", "중간 길이의"),
                "long": ("긴", "길고 자세한", "여러 장면이 이어지는 긴")}
LENGTH_LABELS = {"short": "짧게", "medium": "보통", "long": "길게"}
INSTRUCTIONS_POLITE = (
    "{chars:이} 나오는 {len} 동화를 써 주세요. 배경은 {place:이고}, {lp:을} 알려 주는 이야기였으면 좋겠어요.",
    "{place:을} 배경으로 {chars:이} 등장하는 {len} 동화를 지어 주세요. {lp:을} 배울 수 있는 이야기로 부탁드려요.",
    "{lp:을} 주제로 한 {len} 동화를 써 주실 수 있나요? 주인공은 {chars:이고}, 이야기는 {place}에서 펼쳐져요.",
    "아이에게 {lp:을} 알려 주고 싶어요. {place}에 사는 {chars:이} 나오는 {len} 동화 한 편 부탁해요.",
    "{chars:이} {place}에서 겪는 일을 담은 {len} 동화를 써 주세요. 읽고 나면 {lp:을} 느낄 수 있었으면 해요.",
    "주인공: {chars}. 장소: {place}. 주제: {lp}. 이 조건으로 {len} 동화를 만들어 주세요.",
    "잠자리에서 읽어 줄 {len} 동화가 필요해요. {chars:이} 주인공이고, {place}에서 {lp:을} 깨닫는 이야기면 좋겠어요.",
)
INSTRUCTIONS_CASUAL = (
    "{chars:이} 나오는 {len} 동화 하나 써 줘. 배경은 {place}, 주제는 {lp:이야}.",
    "{place:을} 무대로 {chars:이} 주인공인 {len} 동화를 지어 줄래? {lp:을} 깨닫는 이야기면 좋겠어.",
    "{lp}에 대한 {len} 동화 써 줘. {chars:이} {place}에서 만나는 이야기로.",
    "{len} 동화 한 편 만들어 줘. {place}에 사는 {chars:이} 나오고, {lp:을} 알려 주는 내용으로.",
    "우리 아이가 {lp:을} 배웠으면 해. {chars:이} 등장하고 {place}에서 벌어지는 {len} 동화를 들려줘.",
    "등장인물은 {chars}, 배경은 {place:이야}. {lp:을} 담은 {len} 동화를 부탁해.",
)
STRUCTURED_INSTRUCTIONS = (
    ("다음 조건에 맞는 동화를 써 주세요.", "주어진 설정으로 아이들을 위한 동화를 만들어 주세요.",
     "아래 조건을 모두 지켜서 동화 한 편을 지어 주세요."),
    ("아래 조건으로 동화 한 편 지어 줘.", "다음 설정대로 동화를 써 줘.", "이 조건에 맞는 동화 하나 만들어 줘."),
)
AGE_REQUEST = ("{age} 아이가 읽기 좋게 써 주세요.", "{age} 아이가 읽기 좋게 써 줘.")
STYLE_REQUESTS = {
    "once": ("이야기는 꼭 '옛날 옛적에'로 시작해 주세요.", "'옛날 옛적에'로 시작해 줘."),
    "title": ("제목도 붙여 주세요.", "제목도 붙여 줘."),
    "moral_line": ("마지막에 교훈을 한 줄로 정리해 주세요.", "끝에 교훈을 한 줄로 정리해 줘."),
    "plain": ("문장은 '~했다'처럼 끝나는 문체로 써 주세요.", "문장은 '~했다'로 끝나게 써 줘."),
    "dialogue": ("등장인물들의 대화를 많이 넣어 주세요.", "대화를 많이 넣어 줘."),
    "onomatopoeia": ("의성어와 의태어를 살려서 생생하게 써 주세요.", "의성어, 의태어를 많이 넣어 줘."),
    "happy_end": ("'오래오래 행복하게 살았답니다'로 끝내 주세요.", "'오래오래 행복하게 살았답니다'로 끝내 줘."),
}
STYLE_LABELS = {"once": "'옛날 옛적에'로 시작", "title": "제목 붙이기", "moral_line": "마지막에 교훈 한 줄",
                "plain": "'~했다' 문체", "dialogue": "대화 많이", "onomatopoeia": "의성어와 의태어",
                "happy_end": "'오래오래 행복하게 살았답니다'로 끝맺기"}

HELPERS: tuple[Helper, ...] = (
    Helper("부엉이 할아버지", "부엉이 할아버지", "{hero:은} 숲에서 가장 나이가 많은 부엉이 할아버지를 찾아갔어요."),
    Helper("느티나무 할아버지", "느티나무 할아버지", "{hero:은} 마을 어귀를 수백 년 동안 지켜 온 느티나무 할아버지를 찾아갔어요."),
    Helper("산신령", "산신령님", "{hero:이} 한숨을 쉬자, 하얀 수염을 기른 산신령이 뿅 하고 나타났어요."),
    Helper("거북 할머니", "거북 할머니", "{hero:은} 천 년을 살았다는 거북 할머니를 찾아갔어요."),
    Helper("훈장님", "훈장님", "{hero:은} 마을 서당의 훈장님을 찾아갔어요."),
    Helper("달님", "달님", "그날 밤 {hero:은} 창밖에 뜬 둥근 달님에게 말을 걸었어요."),
    Helper("바람 아주머니", "바람 아주머니", "{hero:은} 언덕 위에 올라 세상 곳곳을 돌아다니는 바람 아주머니를 불렀어요."),
    Helper("별님", "별님", "잠이 오지 않던 {hero:은} 밤하늘에서 가장 밝게 빛나는 별님을 올려다보았어요."),
    Helper("옹달샘 요정", "요정님", "{hero:은} 맑은 옹달샘에 사는 작은 요정을 찾아갔어요."),
    Helper("학 선생님", "학 선생님", "{hero:은} 뒷산 소나무 위에 사는 학 선생님을 찾아갔어요."),
    Helper("약초 할머니", "약초 할머니", "{hero:은} 산 중턱 오두막에 사는 약초 할머니를 찾아갔어요."),
    Helper("해님", "해님", "다음 날 아침 {hero:은} 동산 위로 떠오르는 해님에게 물어보기로 했어요."),
    Helper("스님", "스님", "{hero:은} 산속 작은 절에 사는 스님을 찾아갔어요."),
    Helper("촌장님", "촌장님", "{hero:은} 마을에서 가장 지혜롭다는 촌장님을 찾아갔어요."),
    Helper("고래 할아버지", "고래 할아버지", "{hero:은} 바닷가로 나가 흰 수염 고래 할아버지를 불렀어요."),
)

S = Scenario
L = Lesson
LESSONS: tuple[Lesson, ...] = (
    L("정직", "정직", ("정직의 소중함", "정직하게 말하는 용기"), "정직한 마음",
      ("숨긴 잘못은 눈덩이처럼 커지는 법이란다. 용기를 내어 사실대로 말해 보렴.",
       "거짓말은 잠깐은 편해 보여도 마음을 무겁게 만든단다. 정직한 말 한마디가 마음을 가볍게 해 줄 거야."),
      "이제부터는 무슨 일이 있어도 솔직하게 말할 거야.",
      ("잘못을 숨기기보다 정직하게 말하는 것이 더 큰 용기랍니다.", "정직한 마음은 어떤 보물보다도 값지답니다.",
       "거짓말은 또 다른 거짓말을 낳지만, 정직은 믿음을 낳는답니다."),
      "잘못했을 때는 숨기지 말고 정직하게 말하자.",
      (S("어느 날 {hero:은} {friend:이} 아끼는 {item:을} 빌려 가지고 놀다가 그만 깨뜨리고 말았어요. "
         "{hero:은} 혼이 날까 봐 가슴이 콩닥콩닥 뛰었어요.",
         ("{friend:이} 깨진 {item:을} 보고 누가 그랬느냐고 묻자, {hero:은} 바람이 불어서 떨어진 것 같다고 둘러댔어요. "
          "하지만 마음 한구석이 무겁기만 했어요.",
          "다음 날 {hero:은} 깨진 조각을 몰래 풀숲에 묻어 버렸어요. 그런데 그날 밤 {hero:은} 잠을 한숨도 이루지 못했어요.",
          "{friend:이} 깨진 {item} 때문에 슬퍼하는 모습을 볼 때마다 {hero:은} 얼굴을 돌렸어요. "
          "거짓말은 눈덩이처럼 점점 커져만 갔어요."),
         "결국 {hero:은} 용기를 내어 {friend}에게 찾아가 모든 것을 사실대로 털어놓았어요. "
         "정직하게 말하고 나니 무겁던 마음이 깃털처럼 가벼워졌어요.",
         "{friend:은} 잠시 놀랐지만 곧 빙그레 웃으며 솔직하게 말해 주어서 고맙다고 했어요. "
         "둘은 깨진 조각을 모아 예쁜 목걸이를 만들었고, 전보다 더 가까운 사이가 되었어요.",
         {"item": ("도자기 항아리", "유리구슬", "작은 거울", "질그릇")}),
       S("{hero:은} {place}에서 반짝이는 {item:을} 주웠어요. 누군가 애타게 찾고 있을 물건이었지만, "
         "{hero:은} 너무 갖고 싶은 마음에 얼른 품속에 숨겼어요.",
         ("얼마 뒤 {friend:이} 잃어버린 {item:을} 찾느라 온 동네를 헤매고 다녔어요. {hero:은} 모르는 척 고개를 저었어요.",
          "{friend:이} 눈물을 글썽이며 그 {item:은} 아주 소중한 선물이라고 했어요. "
          "{hero:은} 가슴이 뜨끔했지만 여전히 입을 꾹 다물었어요.",
          "밤이 되자 품속의 {item:이} 돌덩이처럼 무겁게 느껴졌어요. {hero:은} 이리 뒤척 저리 뒤척 잠을 이루지 못했어요."),
         "다음 날 아침, {hero:은} {item:을} 들고 {friend}에게 달려가 사실은 자기가 주웠다고 정직하게 고백했어요.",
         "{friend:은} 뛸 듯이 기뻐하며 {hero:을} 꼭 안아 주었어요. 그날 이후 {place}의 모두가 {hero:을} "
         "믿음직한 친구로 여기게 되었어요.",
         {"item": ("금반지", "은방울", "비단 주머니", "황금 열쇠")}))),
    L("용기", "용기", ("용기의 의미", "두려움을 이겨 내는 용기"), "작은 용기",
      ("무서운 마음이 드는 건 당연하단다. 하지만 소중한 것을 지키고 싶다면 한 걸음만 내디뎌 보렴.",
       "용기란 두렵지 않은 것이 아니라, 두려워도 해야 할 일을 하는 거란다."),
      "나는 할 수 있어. 조금만 더 힘을 내자!",
      ("용기란 두려움이 없는 것이 아니라, 두려워도 옳은 일을 하는 마음이에요.",
       "작은 용기 하나가 소중한 친구를 구할 수 있답니다.", "무서움을 이겨 내는 용기는 누구의 마음속에나 있답니다."),
      "두려워도 옳은 일을 하는 것이 진짜 용기다.",
      (S("어느 날 {friend:이} 아끼는 아기 새가 둥지에서 떨어져 어두운 동굴 쪽으로 날아가 버렸어요. "
         "그 동굴은 {place}에서 가장 무서운 곳으로 소문난 곳이었어요.",
         ("{hero:은} 동굴 앞까지 갔지만 안에서 들려오는 휘잉 소리에 깜짝 놀라 뒤돌아 도망쳤어요.",
          "다음 날 {hero:은} 등불을 들고 다시 갔지만, 발밑에서 바스락 소리가 나자 다리가 후들후들 떨려 "
          "한 걸음도 나아가지 못했어요.",
          "{hero:은} 누군가 대신 가 주기를 바라며 이리저리 부탁해 보았지만, 모두 고개를 저었어요."),
         "{hero:은} 두 눈을 꼭 감았다가 뜨고, 떨리는 마음을 꾹 누르며 동굴 안으로 한 걸음씩 들어갔어요. "
         "무섭던 휘잉 소리는 알고 보니 바위틈으로 부는 바람 소리였어요.",
         "동굴 깊은 곳에서 떨고 있던 아기 새를 찾아낸 {hero:은} 조심조심 품에 안고 나왔어요. "
         "{friend:은} {hero}의 용기에 고맙다며 몇 번이나 인사했어요."),
       S("큰비가 그친 뒤, 불어난 개울물 한가운데 바위 위에 {friend:이} 갇히고 말았어요. "
         "물살이 어찌나 센지 아무도 가까이 가려 하지 않았어요.",
         ("{hero:은} 개울가까지 달려갔지만 콸콸 흐르는 물소리에 겁이 나서 발만 동동 굴렀어요.",
          "{hero:은} 긴 나뭇가지를 내밀어 보았지만 너무 짧아서 닿지 않았어요. "
          "물에 들어가야 한다는 생각에 가슴이 덜컥 내려앉았어요.",
          "{hero:은} 큰 소리로 도움을 청했지만 메아리만 돌아올 뿐이었어요."),
         "{hero:은} 숨을 크게 들이쉬고 허리에 굵은 밧줄을 묶었어요. "
         "그러고는 무서운 마음을 이겨 내고 한 발 한 발 물속으로 들어갔어요.",
         "마침내 {hero:은} {friend}에게 밧줄을 건네주었고, 둘은 무사히 개울가로 건너왔어요. "
         "흠뻑 젖은 {friend:은} {hero:을} 꼭 끌어안으며 고맙다고 말했어요."))),
    L("나눔", "나눔", ("나눔의 기쁨", "가진 것을 나누는 나눔의 가치"), "나눔의 기쁨",
      ("혼자 가진 것은 하나지만 나누면 기쁨이 둘이 된단다.",
       "곳간이 아무리 가득해도 마음이 비어 있으면 소용없단다. 나눔은 마음을 채워 준단다."),
      "나누면 이렇게 기쁜 걸 왜 몰랐을까?",
      ("나눔은 가진 것을 줄이는 것이 아니라 기쁨을 키우는 일이에요.",
       "작은 것이라도 함께 나누면 마음은 더 풍성해진답니다. 그것이 바로 나눔의 기쁨이에요.",
       "나눔을 아는 이의 곁에는 언제나 친구가 있답니다."),
      "나눔은 기쁨을 두 배로 만든다.",
      (S("가을이 되자 {hero:은} 도토리와 밤을 잔뜩 모아 곳간을 가득 채웠어요. "
         "그런데 그해 겨울은 유난히 길고 추워서 {friend:은} 먹을 것이 다 떨어지고 말았어요.",
         ("{friend:이} 배고픈 얼굴로 찾아왔지만, {hero:은} 내 것이 줄어들까 봐 문을 꼭 닫아 버렸어요.",
          "{hero:은} 곳간 앞에 앉아 도토리를 세고 또 세었어요. 하지만 이상하게도 배는 불러도 마음은 텅 빈 것만 같았어요.",
          "창밖으로 눈 속을 헤매는 {friend:을} 보고도 {hero:은} 모른 척 창문을 닫았어요."),
         "그날 밤 {hero:은} 혼자 먹는 밥이 하나도 맛있지 않다는 것을 깨달았어요. "
         "{hero:은} 도토리를 한 바구니 가득 담아 들고 눈길을 헤치며 {friend:을} 찾아갔어요.",
         "{friend:은} 따뜻한 도토리죽을 끓여 {hero:와} 함께 나누어 먹었어요. "
         "함께 먹으니 적은 음식도 두 배로 맛있었고, 둘은 긴 겨울을 사이좋게 났어요."),
       S("{hero:은} {place}에서 달콤한 열매가 주렁주렁 열린 나무를 발견했어요. "
         "한편 {friend:은} 며칠째 먹을 것을 찾지 못해 기운이 하나도 없었어요.",
         ("{hero:은} 열매를 혼자 다 먹으려고 나무 둘레에 울타리를 쳤어요.",
          "열매를 너무 많이 따 모은 {hero:은} 다 먹지도 못하고 썩혀 버렸어요. 그래도 {hero:은} 나누어 줄 생각은 하지 않았어요.",
          "{friend:이} 열매 하나만 달라고 부탁했지만 {hero:은} 못 들은 척 고개를 돌렸어요."),
         "어느 날 {hero:은} 배가 아파 꼼짝도 못 하게 되었어요. 그때 정성껏 돌봐 준 것은 다름 아닌 {friend:였}어요. "
         "{hero:은} 그제야 자기 욕심이 부끄러워졌어요.",
         "{hero:은} 울타리를 걷어 내고 열매를 {friend:와} {place}의 친구들에게 골고루 나누어 주었어요. "
         "나누면 나눌수록 {hero}의 마음은 더 부자가 되었어요."))),
    L("인내", "인내", ("인내의 힘", "참고 기다리는 인내"), "기다림의 열매",
      ("좋은 열매는 천천히 익는 법이란다. 조금만 더 참고 기다려 보렴.",
       "서두르면 오히려 늦어진단다. 한 걸음씩 꾸준히 가면 반드시 닿을 거야."),
      "조금만 더 참아 보자. 절대 포기하지 않을 거야.",
      ("좋은 일은 인내하며 기다리는 이에게 찾아온답니다.",
       "조급한 마음을 누르고 참고 기다리는 인내가 큰 열매를 맺는답니다.",
       "포기하고 싶을 때 한 번 더 참는 인내가 꿈을 이루어 준답니다."),
      "참고 기다리는 인내가 큰 열매를 맺는다.",
      (S("{hero:은} {place}에 작은 박씨를 하나 심었어요. {friend:은} 그 씨앗에서 아주 커다란 박이 열릴 거라고 말해 주었어요.",
         ("{hero:은} 하루가 멀다 하고 흙을 파 보며 싹이 났는지 확인했어요. 그 바람에 씨앗은 좀처럼 뿌리를 내리지 못했어요.",
          "기다리다 지친 {hero:은} 싹을 빨리 키우려고 새싹을 살짝 잡아당겼어요. 그러자 여린 새싹이 힘없이 시들어 버렸어요.",
          "{hero:은} 이제 그만 포기할까 하고 물뿌리개를 내던졌어요."),
         "{hero:은} 다시 씨앗을 심고, 이번에는 날마다 물을 주며 꾹 참고 기다리기로 했어요. "
         "비가 오는 날도, 바람이 부는 날도 {hero:은} 묵묵히 밭을 돌보았어요.",
         "여름이 지나고 가을이 오자 밭에는 커다란 박이 주렁주렁 열렸어요. "
         "{hero:은} {friend:와} 함께 박을 타서 맛있는 박나물을 해 먹으며 기뻐했어요."),
       S("{hero:은} {friend}에게 줄 선물로 예쁜 털목도리를 뜨기로 했어요. 하지만 뜨개질은 생각보다 훨씬 어려웠어요.",
         ("첫날 {hero:은} 실이 엉켜 버리자 씩씩거리며 바늘을 내려놓았어요.",
          "다음 날에는 코가 자꾸 빠져서 목도리에 구멍이 숭숭 났어요. {hero:은} 화가 나서 다 풀어 버렸어요.",
          "{hero:은} 장터에서 목도리를 사 버릴까 하고 몇 번이나 망설였어요."),
         "{hero:은} 처음부터 다시, 이번에는 천천히 한 코 한 코 정성을 담아 뜨기 시작했어요. "
         "손가락이 아파도 {hero:은} 참고 또 참았어요.",
         "첫눈이 내리던 날, {hero:은} 완성된 목도리를 {friend}에게 둘러 주었어요. "
         "조금 삐뚤빼뚤했지만 {friend:은} 세상에서 가장 따뜻한 목도리라며 환하게 웃었어요."))),
    L("우정", "우정", ("우정의 소중함", "친구 사이의 우정"), "소중한 우정",
      ("진짜 친구는 어려울 때 곁에 있어 주는 친구란다.",
       "먼저 손을 내미는 쪽이 지는 게 아니란다. 친구를 아끼는 마음을 보여 주렴."),
      "친구보다 소중한 건 세상에 없어.",
      ("진정한 우정은 어려울 때 더 빛난답니다.", "친구와의 우정은 세상 무엇과도 바꿀 수 없는 보물이에요.",
       "서로 아끼는 마음이 있으면 우정은 더욱 단단해진답니다."),
      "진정한 우정은 어려울 때 빛난다.",
      (S("{hero:와} {friend:은} 둘도 없는 단짝이었어요. 그런데 어느 날 사소한 말다툼 끝에 둘은 서로 등을 돌리고 말았어요.",
         ("{hero:은} 혼자 놀아도 괜찮다고 생각했지만, 혼자 하는 놀이는 금세 시시해졌어요.",
          "{hero:은} 새 친구를 사귀려고 {place} 여기저기를 돌아다녔지만, 자꾸만 {friend} 생각이 났어요.",
          "길에서 {friend:와} 마주쳤지만 {hero:은} 괜히 쑥스러워 고개를 홱 돌려 버렸어요."),
         "그러던 어느 날 {friend:이} 감기에 걸려 앓아누웠다는 소식이 들려왔어요. "
         "{hero:은} 앞뒤 잴 것 없이 따끈한 죽을 들고 {friend}의 집으로 달려갔어요.",
         "{hero:와} {friend:은} 서로 먼저 미안하다고 말하며 손을 맞잡았어요. 그날 이후 둘의 우정은 전보다 더 단단해졌어요."),
       S("{friend:이} 산 너머 마을에 심부름을 갔다가 해가 져도 돌아오지 않았어요. 걱정이 된 {hero:은} 잠을 이룰 수가 없었어요.",
         ("{hero:은} 등불을 들고 {friend:을} 찾아 나섰지만 캄캄한 밤길에서 방향을 잃고 말았어요.",
          "{hero:은} 목이 터져라 {friend:을} 불렀지만 부엉부엉 부엉이 소리만 들려왔어요.",
          "날이 추워지고 다리도 아팠지만, {hero:은} 친구를 두고 혼자 돌아갈 수 없었어요."),
         "{hero:은} 둘이서 자주 부르던 노래를 큰 소리로 부르기 시작했어요. 그러자 저 멀리서 희미하게 같은 노래가 들려왔어요.",
         "노랫소리를 따라가 보니 {friend:이} 나무 밑에서 오들오들 떨고 있었어요. "
         "둘은 서로의 손을 꼭 잡고 함께 집으로 돌아왔고, 그 뒤로 무슨 일이 있어도 서로를 지켜 주었어요."))),
    L("협동", "협동", ("협동의 힘", "함께 힘을 모으는 협동"), "함께 모은 힘",
      ("혼자 들면 무거운 짐도 여럿이 들면 가벼워진단다.", "각자 잘하는 일을 나누어 맡으면 못 할 일이 없단다."),
      "역시 함께하니까 해낼 수 있구나!",
      ("혼자서는 어려운 일도 협동하면 해낼 수 있답니다.", "여럿이 힘을 모으는 협동의 힘은 무엇보다 강하답니다.",
       "서로 돕고 협동하면 커다란 어려움도 작아진답니다."),
      "힘을 모아 협동하면 못 할 일이 없다.",
      (S("어느 날 밤새 내린 큰비에 {place}의 작은 다리가 떠내려가고 말았어요. 다리가 없으면 아무도 개울 건너 밭에 갈 수가 없었어요.",
         ("{hero:은} 혼자서 커다란 통나무를 옮기려고 했지만 통나무는 꿈쩍도 하지 않았어요.",
          "{friend:도} 혼자 돌을 날라 징검다리를 만들려 했지만, 돌을 몇 개 놓기도 전에 지쳐 버렸어요.",
          "{hero:와} {friend:은} 서로 자기 방법이 옳다며 티격태격 다투기만 했어요."),
         "{hero:은} 다투는 대신 힘을 합쳐 보자며 {friend}에게 손을 내밀었어요. "
         "\"하나, 둘, 영차!\" 둘이 함께 밀자 무겁던 통나무가 데구루루 굴러갔어요.",
         "{place}의 이웃들도 하나둘 모여들어 힘을 보탰어요. 해가 지기 전에 튼튼한 새 다리가 완성되었고, 모두 손뼉을 치며 기뻐했어요."),
       S("{place}에 큰 잔치가 열리게 되었어요. 그런데 잔치 준비를 맡은 {hero:와} {friend}에게는 할 일이 산더미처럼 쌓여 있었어요.",
         ("{hero:은} 떡도 만들고 상도 차리고 등불도 달려고 이리 뛰고 저리 뛰었지만, 하나도 제대로 끝내지 못했어요.",
          "{friend:도} 혼자서 음식을 다 만들려다 그만 솥을 태우고 말았어요.",
          "잔치가 하루 앞으로 다가왔는데도 준비는 절반도 되지 않았어요."),
         "{hero:은} {friend:와} 머리를 맞대고 일을 나누기로 했어요. 잘하는 일을 하나씩 맡으니 일이 척척 진행되었어요.",
         "잔칫날, {place}에는 맛있는 음식 냄새와 흥겨운 노랫소리가 가득했어요. "
         "모두들 이렇게 멋진 잔치는 처음이라며 {hero:와} {friend:을} 칭찬했어요."))),
    L("겸손", "겸손", ("겸손의 미덕", "잘난 척하지 않는 겸손"), "겸손한 마음",
      ("벼는 익을수록 고개를 숙인단다.", "자기 자랑만 하는 이의 곁에는 친구가 머물지 않는단다. 남의 좋은 점도 봐 주렴."),
      "내가 너무 잘난 척을 했구나.",
      ("잘하는 것이 있을수록 겸손해야 한답니다.", "겸손한 마음은 다른 이의 좋은 점을 볼 줄 아는 눈을 준답니다.",
       "뽐내는 마음보다 겸손한 마음이 더 많은 친구를 만든답니다."),
      "잘할수록 겸손해야 한다.",
      (S("{hero:은} 자기가 {place}에서 가장 빠르다고 늘 뽐내고 다녔어요. 어느 날 {hero:은} {friend}에게 달리기 시합을 하자고 큰소리를 쳤어요.",
         ("시합이 시작되자 {hero:은} 저만치 앞서 달려가더니 {friend:을} 돌아보며 깔깔 비웃었어요.",
          "{hero:은} 조금 쉬어도 질 리가 없다며 나무 그늘에 벌렁 드러누웠어요.",
          "{hero:은} 구경하는 친구들에게도 자기를 따라올 자는 아무도 없다며 으스댔어요."),
         "그사이 {friend:은} 한 번도 쉬지 않고 묵묵히 한 걸음 한 걸음 나아갔어요. "
         "{hero:이} 정신을 차렸을 때, {friend:은} 이미 결승선에 거의 다다라 있었어요.",
         "시합에서 진 {hero:은} 얼굴이 빨개져서 {friend}에게 그동안 뽐낸 것을 사과했어요. "
         "그 뒤로 {hero:은} 남을 깔보지 않고 겸손하게 행동했어요."),
       S("{hero:은} 노래를 아주 잘 불렀어요. 그런데 칭찬을 받을수록 {hero:은} 코가 점점 높아져서 다른 친구들의 노래는 들으려고도 하지 않았어요.",
         ("{friend:이} 수줍게 노래를 부르자 {hero:은} 그것도 노래냐며 킥킥 웃었어요.",
          "{hero:은} {place}의 노래 잔치에서 혼자만 무대에 서겠다고 고집을 부렸어요.",
          "친구들은 하나둘 {hero}의 곁을 떠났어요. 하지만 {hero:은} 친구들이 샘을 내는 거라고만 생각했어요."),
         "노래 잔치 날, {hero:은} 너무 뽐내다가 목이 쉬어 한 소절도 부를 수 없게 되었어요. "
         "그때 {friend:이} 다가와 함께 부르자며 살며시 손을 잡아 주었어요.",
         "둘이 함께 부른 노래는 {place}에 울려 퍼져 모두의 마음을 따뜻하게 했어요. "
         "{hero:은} 그날 이후 다른 이의 노래에도 귀 기울이는 겸손한 가수가 되었어요."))),
    L("감사", "감사", ("감사하는 마음", "감사의 소중함"), "고마운 마음",
      ("늘 곁에 있는 것일수록 고마움을 잊기 쉽단다. 오늘 고맙다는 말을 꼭 해 보렴.",
       "작은 것에 감사할 줄 알면 하루하루가 선물처럼 느껴진단다."),
      "당연한 건 하나도 없었구나. 정말 고마운 일이야.",
      ("곁에 있는 것들에 감사하는 마음이 우리를 행복하게 한답니다.",
       "고마운 일에 감사 인사를 하는 것은 작지만 아주 소중한 일이에요.", "당연한 것은 하나도 없으니 늘 감사하며 살아야 한답니다."),
      "작은 것에도 감사하는 마음을 갖자.",
      (S("{friend:은} 날마다 {hero}에게 맛있는 음식을 가져다주었어요. 하지만 {hero:은} 그것을 당연하게 여기고 고맙다는 말 한마디 하지 않았어요.",
         ("{hero:은} 음식이 조금 늦게 오면 왜 이렇게 늦었느냐고 투덜거렸어요.",
          "어떤 날은 반찬이 마음에 들지 않는다며 음식을 밀어내기까지 했어요.",
          "{friend:이} 비를 맞으며 음식을 가져와도 {hero:은} 본체만체했어요."),
         "어느 날부터 {friend:이} 오지 않았어요. 배가 고파진 {hero:은} 직접 먹을 것을 구하러 나섰다가, "
         "음식 하나를 마련하는 데 얼마나 많은 수고가 드는지 깨달았어요.",
         "{hero:은} 들꽃 한 다발을 꺾어 {friend}에게 찾아가 그동안 정말 고마웠다고 진심으로 감사 인사를 했어요. "
         "{friend:은} 환하게 웃었고, 그 뒤로 둘은 서로에게 늘 고마움을 표현했어요."),
       S("{hero:은} 가진 것에 만족하지 못하고 늘 불평을 늘어놓았어요. 집이 좁다, 옷이 낡았다, 먹을 것이 맛없다며 하루 종일 투덜거렸어요.",
         ("{hero:은} {friend}의 집이 더 크다며 부러워했어요.",
          "{hero:은} 비가 오면 비가 와서 싫고, 해가 나면 너무 더워서 싫다고 했어요.",
          "{friend:이} 함께 꽃구경을 가자고 해도 {hero:은} 귀찮다며 이불 속으로 들어가 버렸어요."),
         "어느 날 큰바람이 불어 {friend}의 집이 그만 무너지고 말았어요. "
         "비를 피할 곳이 없는 {friend:을} 보며 {hero:은} 자기에게 따뜻한 집이 있다는 것이 얼마나 고마운 일인지 깨달았어요.",
         "{hero:은} {friend:을} 자기 집으로 데려와 함께 지냈어요. 좁은 집이었지만 둘이 함께 있으니 세상 어느 곳보다 따뜻했고, "
         "{hero:은} 날마다 작은 것에도 감사하며 살았어요."))),
    L("배려", "배려", ("배려의 의미", "친구를 배려하는 마음"), "따뜻한 배려",
      ("내가 그 친구라면 어떤 마음일지 한번 생각해 보렴.", "조금 천천히 가더라도 함께 가는 길이 더 즐겁단다."),
      "그 친구는 얼마나 속상했을까?",
      ("다른 이의 마음을 헤아리는 배려는 모두를 웃게 한답니다.", "작은 배려 하나가 누군가에게는 큰 힘이 된답니다.",
       "내가 먼저 배려하면 세상은 훨씬 따뜻해진답니다."),
      "다른 이의 마음을 헤아리는 배려가 모두를 웃게 한다.",
      (S("{place}에 {ftrait} {friend:이} 새로 이사를 왔어요. {friend:은} 걸음이 느려서 다른 친구들과 놀 때마다 늘 뒤처졌어요.",
         ("{hero:은} 친구들과 술래잡기를 하면서 느린 {friend:은} 빼고 놀자고 했어요.",
          "{friend:이} 같이 놀고 싶어 다가오자 {hero:은} 우리 놀이는 빨라야 한다며 돌아섰어요.",
          "혼자 쓸쓸히 앉아 있는 {friend:을} 보고도 {hero:은} 모른 척 지나쳤어요."),
         "어느 날 {hero:은} 다리를 다쳐 절뚝거리게 되었어요. 아무도 {hero:을} 기다려 주지 않자, "
         "{hero:은} 그제야 {friend:이} 얼마나 외로웠을지 알게 되었어요.",
         "{hero:은} {friend}에게 사과하고 모두가 함께할 수 있는 새 놀이를 생각해 냈어요. "
         "빠른 친구도 느린 친구도 함께 웃는 {place}의 놀이는 날마다 즐거웠어요.",
         new_friend=True),
       S("무더운 여름날, {place}에 샘물이 딱 하나밖에 남지 않았어요. 모두가 목이 말랐지만 샘물은 아주 조금씩만 솟아났어요.",
         ("{hero:은} 가장 먼저 달려가 물을 벌컥벌컥 마시고 물통에도 가득 담았어요.",
          "뒤따라온 {friend:은} 남은 물이 없어 입술만 축이고 돌아서야 했어요.",
          "{hero:은} 다음 날에도 새벽같이 나가 샘물을 혼자 차지했어요."),
         "샘물가에서 목이 말라 축 늘어진 {friend:을} 본 {hero:은} 가슴이 철렁했어요. "
         "{hero:은} 자기 물통을 {friend}에게 건네며 먼저 마시라고 했어요.",
         "그날부터 {hero:은} 친구들과 차례를 정해 샘물을 나누어 마셨어요. "
         "서로를 배려하자 작은 샘물로도 모두가 여름을 건강하게 날 수 있었어요."))),
    L("성실", "성실", ("성실함의 가치", "성실하게 노력하는 태도"), "성실한 하루",
      ("하루하루 꾸준히 하는 것만큼 큰 힘은 없단다.", "오늘 할 일을 내일로 미루면 내일은 두 배로 힘들어진단다."),
      "이제부터는 꾀부리지 않고 열심히 할 거야.",
      ("하루하루 성실하게 살아가는 것이 가장 큰 힘이랍니다.", "성실한 땀방울은 언젠가 반드시 열매를 맺는답니다.",
       "꾀부리지 않고 성실하게 일하는 이에게 복이 찾아온답니다."),
      "꾸준하고 성실한 노력은 배신하지 않는다.",
      (S("따뜻한 봄부터 {friend:은} 부지런히 겨울 양식을 모았어요. 하지만 {hero:은} 놀기만 좋아해서 날마다 {place}에서 노래를 부르며 빈둥거렸어요.",
         ("{friend:이} 함께 일하자고 했지만, {hero:은} 겨울은 아직 멀었다며 하품만 했어요.",
          "여름 내내 {hero:은} 그늘에 누워 낮잠을 자거나 구름 구경만 했어요.",
          "가을이 되어 찬바람이 불어도 {hero:은} 내일부터 하면 된다며 일을 미루었어요."),
         "드디어 하얀 눈이 펑펑 내리는 겨울이 오자 {hero:은} 먹을 것도 잘 곳도 없어 오들오들 떨었어요. "
         "{hero:은} 그제야 놀기만 한 지난날을 후회했어요.",
         "{friend:은} 떨고 있는 {hero:을} 집으로 들여 따뜻한 음식을 나누어 주었어요. "
         "이듬해 봄, {hero:은} 누구보다 먼저 일어나 성실하게 일하는 일꾼이 되었어요."),
       S("{place}의 어르신이 {hero:와} {friend}에게 작은 밭을 한 뙈기씩 나누어 주었어요. 가을에 누가 더 좋은 곡식을 거두는지 보겠다고 했어요.",
         ("{hero:은} 씨앗만 대충 뿌려 놓고 나머지는 하늘이 알아서 키워 줄 거라고 생각했어요.",
          "잡초가 무성하게 자라도 {hero:은} 내일 뽑으면 된다며 그냥 지나쳤어요.",
          "가뭄이 들어 밭이 바싹 말라도 {hero:은} 물 길어 오는 일이 귀찮기만 했어요."),
         "그동안 {friend:은} 날마다 새벽에 일어나 김을 매고 물을 주었어요. "
         "누렇게 시든 자기 밭과 푸르게 자란 {friend}의 밭을 번갈아 본 {hero:은} 크게 뉘우쳤어요.",
         "{hero:은} {friend:을} 따라 아침 일찍부터 성실하게 밭을 돌보기 시작했어요. 이듬해 가을, {hero}의 밭에도 황금빛 곡식이 가득 영글었어요."))),
    L("지혜", "지혜", ("지혜의 힘", "슬기로운 지혜"), "슬기로운 지혜",
      ("힘으로 안 되는 일은 머리로 풀어 보렴. 차분히 생각하면 길이 보인단다.",
       "서두르지 말고 주변을 잘 살펴보렴. 답은 가까이에 있을지도 모른단다."),
      "차분히 생각하니 길이 보이는구나!",
      ("힘이 약해도 지혜를 모으면 어려움을 이겨 낼 수 있답니다.", "차분하게 생각하는 지혜가 위기를 기회로 바꾼답니다.",
       "지혜는 힘보다 강하답니다."),
      "지혜는 힘보다 강하다.",
      (S("오랫동안 비가 오지 않아 {place}의 물이 모두 말라 버렸어요. "
         "{hero:은} 물이 조금 남은 깊은 항아리를 겨우 찾았지만, 물이 바닥에 있어서 닿지 않았어요.",
         ("{hero:은} 목을 길게 빼고 항아리 속으로 고개를 들이밀었지만 물에 닿지 않았어요.",
          "{hero:은} 항아리를 기울여 보려고 했지만 너무 무거워서 꿈쩍도 하지 않았어요.",
          "{friend:이} 항아리를 깨뜨려 버리자고 했지만, 그러면 물이 모두 땅에 스며들어 버릴 것 같았어요."),
         "{hero:은} 곰곰이 생각하다가 무릎을 탁 쳤어요. "
         "작은 돌멩이를 하나씩 주워 항아리에 넣자, 바닥에 있던 물이 조금씩 위로 올라오기 시작했어요.",
         "마침내 물이 항아리 입구까지 차올랐고, {hero:와} {friend:은} 시원한 물을 실컷 마셨어요. 모두들 {hero}의 지혜에 감탄했어요."),
       S("어느 날 배고픈 늑대 한 마리가 {place}에 나타나 {hero:와} {friend:을} 잡아먹겠다고 으르렁거렸어요.",
         ("{hero:은} 있는 힘껏 도망쳤지만 늑대는 금세 뒤를 바짝 쫓아왔어요.",
          "{friend:은} 나무 뒤에 숨어 보았지만 늑대의 코는 냄새를 금방 맡아 버렸어요.",
          "{hero:은} 늑대에게 살려 달라고 빌어 보았지만 늑대는 콧방귀만 뀌었어요."),
         "{hero:은} 침착하게 머리를 굴려 꾀를 냈어요. {hero:은} 늑대에게 강 건너편에 훨씬 살찐 먹잇감이 있다고 알려 주었어요.",
         "욕심 많은 늑대는 허겁지겁 강으로 뛰어들었다가 거센 물살에 떠내려가 버렸어요. "
         "{hero:와} {friend:은} 안도의 숨을 내쉬었고, {place}의 모두가 {hero}의 지혜를 칭찬했어요."))),
    L("약속", "약속", ("약속을 지키는 것의 중요함", "약속의 소중함"), "새끼손가락 약속",
      ("약속은 마음과 마음을 잇는 다리란다. 한번 한 약속은 꼭 지켜야 한단다.", "약속을 지키는 것은 상대를 소중히 여긴다는 뜻이란다."),
      "한번 한 약속은 꼭 지켜야 해.",
      ("약속을 지키는 것은 서로를 믿게 하는 첫걸음이에요.", "작은 약속이라도 꼭 지키는 사람이 되어야 한답니다.",
       "약속을 지키는 마음이 우정을 지켜 준답니다."),
      "한번 한 약속은 꼭 지키자.",
      (S("{hero:은} {friend}에게 내일 아침 {place}의 큰 나무 아래에서 만나 함께 연을 날리자고 약속했어요.",
         ("그런데 다음 날 아침, 다른 친구들이 재미있는 놀이를 하자고 부르자 {hero:은} 약속을 깜빡 잊고 따라가 버렸어요.",
          "큰 나무 아래에서 {friend:은} 해가 중천에 뜰 때까지 {hero:을} 기다렸어요.",
          "{hero:은} 놀이가 끝난 뒤에야 약속이 생각났지만, 귀찮은 마음에 내일 가면 된다고 생각했어요."),
         "해 질 무렵 {hero:이} 큰 나무 옆을 지나가다 보니, {friend:이} 연을 꼭 안은 채 아직도 기다리고 있었어요. "
         "{hero:은} 너무 미안해서 얼굴이 화끈거렸어요.",
         "{hero:은} 진심으로 사과하고 다시는 약속을 어기지 않겠다고 다짐했어요. 다음 날 둘은 노을이 질 때까지 신나게 연을 날렸어요."),
       S("{hero:은} 길을 잃고 헤매다 {friend}에게 도움을 받았어요. {hero:은} 은혜를 꼭 갚겠다고 새끼손가락을 걸고 약속했어요.",
         ("하지만 집에 돌아온 {hero:은} 바쁘다는 핑계로 약속을 자꾸 미루었어요.",
          "한 달이 지나자 {hero:은} 그 약속을 까맣게 잊어버렸어요.",
          "{friend:이} 어려운 일을 당했다는 소문을 들었지만, {hero:은} 못 들은 척하려 했어요."),
         "그날 밤 꿈속에서 {hero:은} 새끼손가락을 걸던 날을 떠올렸어요. 아침이 밝자 {hero:은} 짐을 챙겨 {friend:을} 찾아 길을 나섰어요.",
         "{hero:은} 무너진 {friend}의 집을 고치는 일을 며칠 동안 도왔어요. "
         "약속을 지킨 {hero:은} 어느 때보다 뿌듯했고, 둘은 평생의 친구가 되었어요."))),
    L("효도", "효도", ("효도의 의미", "부모님께 효도하는 마음"), "효도하는 마음",
      ("부모님의 사랑은 하늘보다 높고 바다보다 깊단다.", "부모님은 늘 기다려 주시지만 시간은 기다려 주지 않는단다."),
      "부모님께 더 잘해 드려야겠어.",
      ("부모님의 사랑을 잊지 않고 효도하는 마음이 가장 아름답답니다.",
       "효도는 거창한 일이 아니라 부모님께 따뜻한 말 한마디를 건네는 데서 시작된답니다.",
       "부모님께 효도하는 마음은 하늘도 감동시킨답니다."),
      "부모님께 효도하는 마음을 잊지 말자.",
      (S("{hero}의 어머니가 큰 병에 걸려 자리에 누우셨어요. 의원은 {place} 너머 높은 산꼭대기에 피는 약초가 있어야 병을 고칠 수 있다고 했어요.",
         ("{hero:은} 약초를 찾아 산에 올랐지만 가파른 절벽에 가로막혀 되돌아왔어요.",
          "다시 길을 나선 {hero:은} 거센 눈보라를 만나 동굴에서 밤을 지새워야 했어요.",
          "겨우 찾은 풀은 약초와 꼭 닮은 독풀이었어요. {hero:은} 눈물이 핑 돌았지만 포기하지 않았어요."),
         "{hero}의 효성에 감동한 {friend:이} 산꼭대기로 가는 지름길을 알려 주었어요. "
         "{hero:은} {friend:와} 함께 험한 바위를 넘어 마침내 약초를 찾아냈어요.",
         "약초를 달여 드시자 어머니는 씻은 듯이 나으셨어요. 어머니는 {hero:을} 꼭 안아 주셨고, {hero:은} 그 뒤로도 정성을 다해 효도했어요."),
       S("{hero:은} 늘 바쁘다는 핑계로 홀로 계신 아버지를 찾아뵙지 않았어요. 아버지는 날마다 {place} 어귀에 나와 {hero:을} 기다리셨어요.",
         ("아버지가 보낸 편지를 받고도 {hero:은} 다음에 가겠다며 편지를 서랍에 넣어 두었어요.",
          "명절에도 {hero:은} {friend:와} 노느라 집에 가지 않았어요.",
          "아버지가 보내 주신 따뜻한 옷을 입으면서도 {hero:은} 고맙다는 답장 한 줄 쓰지 않았어요."),
         "어느 날 {friend:이} 부모님이 그리워도 이제는 만날 수 없다며 눈물을 흘렸어요. "
         "그 말을 들은 {hero:은} 가슴이 철렁하여 곧장 집으로 달려갔어요.",
         "오랜만에 만난 아버지는 {hero:을} 보자마자 환하게 웃으셨어요. {hero:은} 그날부터 아버지 곁에서 말벗이 되어 드리며 정성껏 효도했어요."))),
    L("용서", "용서", ("용서의 의미", "친구를 용서하는 마음"), "용서의 선물",
      ("미움을 품고 있으면 가장 아픈 건 바로 너 자신이란다.", "용서는 상대를 위한 것이기도 하지만 너의 마음을 위한 것이기도 하단다."),
      "이제 미워하는 마음은 내려놓자.",
      ("용서는 상대뿐 아니라 나 자신의 마음도 편안하게 해 준답니다.", "먼저 용서하는 마음이 더 큰 마음이에요.",
       "미움 대신 용서를 선택하면 우정은 다시 꽃핀답니다."),
      "용서는 나와 친구의 마음을 모두 편하게 한다.",
      (S("{friend:이} 장난을 치다가 {hero:이} 정성껏 쌓아 올린 돌탑을 무너뜨리고 말았어요. {hero:은} 너무 화가 나서 씩씩거렸어요.",
         ("{friend:이} 미안하다고 사과했지만 {hero:은} 듣기 싫다며 귀를 막았어요.",
          "{hero:은} 다른 친구들에게도 {friend:와} 놀지 말라고 말하고 다녔어요.",
          "{hero:은} 며칠이 지나도 화가 풀리지 않아 {friend:을} 보기만 하면 홱 돌아섰어요."),
         "어느 날 {hero:은} {friend:이} 혼자서 무너진 돌탑을 다시 쌓으려고 애쓰는 모습을 보았어요. "
         "땀을 뻘뻘 흘리는 {friend:을} 보자 {hero}의 마음이 스르르 녹았어요.",
         "{hero:은} {friend:을} 용서하고 함께 돌탑을 쌓기 시작했어요. 둘이 함께 쌓은 돌탑은 전보다 훨씬 높고 멋졌어요."),
       S("{friend:이} 화가 나서 {hero}에게 심한 말을 하고 말았어요. {hero:은} 너무 속상해서 그날 밤 한참을 울었어요.",
         ("다음 날 {friend:이} 쭈뼛쭈뼛 다가왔지만 {hero:은} 쌀쌀맞게 고개를 돌렸어요.",
          "{hero:은} {friend:이} 보낸 사과 편지를 읽지도 않고 구겨 버렸어요.",
          "{hero:은} 언젠가 똑같이 갚아 주겠다고 마음먹었지만, 그럴수록 마음만 더 무거워졌어요."),
         "어느 날 {hero:은} 미움을 품고 있는 동안 자기 마음이 가장 아팠다는 것을 깨달았어요. "
         "{hero:은} 먼저 {friend}에게 다가가 이제 다 괜찮다고 말했어요.",
         "{friend:은} 눈물을 글썽이며 다시 한번 진심으로 사과했어요. "
         "서로를 용서한 둘은 전처럼 사이좋게 {place:을} 뛰어다니며 놀았어요."))),
    L("욕심", "욕심 버리기", ("욕심을 부리지 않는 마음", "지나친 욕심의 어리석음"), "욕심의 끝",
      ("욕심은 채울수록 더 커지는 법이란다. 가진 것에 만족할 줄 알아야 한단다.",
       "많이 가지는 것보다 알맞게 가지는 것이 더 큰 행복이란다."),
      "욕심을 부리다가 다 잃을 뻔했어.",
      ("지나친 욕심은 가진 것마저 잃게 만든답니다.", "욕심을 내려놓고 가진 것에 만족하면 마음이 편안해진답니다.",
       "욕심보다 나눔이 더 큰 행복을 준답니다."),
      "지나친 욕심은 가진 것마저 잃게 한다.",
      (S("{hero:은} {place}에서 날마다 황금알을 하나씩 낳는 신기한 거위를 얻었어요. {hero:와} {friend:은} 황금알 덕분에 부족함 없이 지냈어요.",
         ("하지만 {hero:은} 하루에 하나씩 나오는 황금알이 너무 적다고 불평하기 시작했어요.",
          "{hero:은} 거위에게 먹이를 잔뜩 먹이면 알을 더 많이 낳을 거라며 억지로 먹이를 밀어 넣었어요.",
          "{friend:이} 말렸지만 {hero:은} 거위 배 속에 황금알이 가득 들어 있을 거라고 믿었어요."),
         "결국 거위는 병이 들어 더 이상 알을 낳지 못하게 되었어요. "
         "텅 빈 둥지를 바라보며 {hero:은} 지나친 욕심이 모든 것을 잃게 만든다는 것을 깨달았어요.",
         "{hero:은} {friend:와} 함께 정성껏 거위를 돌보았어요. "
         "건강을 되찾은 거위는 다시 하루에 하나씩 황금알을 낳았고, {hero:은} 그것으로도 충분히 행복했어요."),
       S("{hero:은} 떡 한 덩이를 들고 {place}의 외나무다리를 건너고 있었어요. "
         "{friend:이} 그 떡을 함께 나누어 먹자고 했지만 {hero:은} 들은 척도 하지 않았어요.",
         ("다리 아래 물속을 내려다보니 커다란 떡을 든 누군가가 {hero:을} 올려다보고 있었어요.",
          "{hero:은} 저 떡까지 가지면 더 배부를 거라며 물속의 떡을 향해 손을 쭉 뻗었어요.",
          "{friend:이} 그건 물에 비친 그림자일 뿐이라고 말렸지만 {hero:은} 귀담아듣지 않았어요."),
         "그 순간 {hero:이} 들고 있던 떡이 풍덩 하고 물속으로 떨어져 버렸어요. "
         "물속의 떡은 사실 물에 비친 {hero} 자신의 모습이었어요. {hero:은} 욕심을 부리다 가진 것마저 잃고 말았어요.",
         "{friend:은} 자기 몫의 떡을 반으로 나누어 빈손이 된 {hero}에게 주었어요. "
         "{hero:은} 부끄러워 얼굴을 붉히며 다시는 욕심을 부리지 않겠다고 다짐했어요."))),
    L("친절", "친절", ("친절의 소중함", "이웃에게 친절을 베푸는 마음"), "작은 친절",
      ("작은 친절은 언젠가 큰 기쁨이 되어 돌아온단다.", "어려운 이를 보면 먼저 손을 내밀어 보렴."),
      "어려운 이를 도우니 마음이 따뜻해지는구나.",
      ("작은 친절은 돌고 돌아 더 큰 기쁨이 되어 돌아온답니다.", "어려운 이에게 베푼 친절은 결코 헛되지 않는답니다.",
       "친절한 마음은 세상을 따뜻하게 만드는 마법이에요."),
      "작은 친절은 큰 기쁨이 되어 돌아온다.",
      (S("어느 봄날, {hero:은} {place}에서 다리를 다친 아기 새 한 마리를 발견했어요. 아기 새는 날개를 파닥이며 아파했어요.",
         ("{hero:은} 처음에는 바쁜 길이라 그냥 지나치려고 했어요. 하지만 아기 새의 울음소리가 자꾸만 귓가에 맴돌았어요.",
          "{hero:은} 되돌아가 아기 새를 안아 들었지만 어떻게 치료해야 할지 몰라 발을 동동 굴렀어요.",
          "{hero:은} 약초를 구하려고 이리저리 뛰어다녔지만 해가 저물도록 찾지 못했어요."),
         "그때 {friend:이} 다가와 다친 다리에 헝겊을 감아 주는 법을 알려 주었어요. "
         "{hero:은} 친절하게 아기 새를 돌보며 날마다 먹이를 챙겨 주었어요.",
         "다리가 다 나은 아기 새는 하늘 높이 날아올랐어요. "
         "이듬해 봄, 아기 새는 고마운 {hero}에게 신기한 박씨 하나를 물어다 주었고, 그 박에서는 온갖 보물이 쏟아져 나왔어요."),
       S("추운 겨울밤, 허름한 옷을 입은 나그네가 {place}에 찾아와 하룻밤만 재워 달라고 부탁했어요. 모두들 낯선 나그네를 보고 문을 닫아 버렸어요.",
         ("{hero:도} 처음에는 낯선 이가 무서워 문틈으로 몰래 내다보기만 했어요.",
          "{hero:은} 먹을 것이 넉넉하지 않다며 망설였어요.",
          "{friend:이} 괜히 귀찮은 일에 끼어들지 말라고 했지만, {hero:은} 떨고 있는 나그네가 자꾸 마음에 걸렸어요."),
         "{hero:은} 문을 활짝 열고 나그네를 따뜻한 아랫목으로 모셨어요. 그리고 하나 남은 감자를 구워 친절하게 나그네에게 내밀었어요.",
         "다음 날 아침, 나그네는 사실 {place:을} 지키는 산신령이었어요. "
         "산신령은 {hero}의 친절에 보답하여 마르지 않는 쌀독을 선물해 주었고, {hero:은} 그 쌀을 {friend:와} 이웃들에게 골고루 나누었어요."))),
    L("책임", "책임감", ("책임감의 중요성", "맡은 일에 책임을 지는 자세"), "끝까지 지킨 책임",
      ("맡은 일을 끝까지 해내는 것이 진짜 어른이 되는 길이란다.", "남 탓을 하기 전에 내가 할 수 있는 일을 먼저 찾아보렴."),
      "내가 맡은 일이니 끝까지 해내야 해.",
      ("맡은 일을 끝까지 해내는 책임감이 믿음을 만든답니다.", "책임을 다하는 모습은 누구보다 멋지답니다.",
       "남 탓을 하기보다 스스로 책임지는 마음이 우리를 자라게 한답니다."),
      "맡은 일은 끝까지 책임지자.",
      (S("{place}의 어른들이 {hero}에게 양 떼를 돌보는 일을 맡겼어요. {hero:은} 처음으로 큰일을 맡아 가슴이 두근거렸어요.",
         ("하지만 며칠이 지나자 {hero:은} 양 떼를 지키는 일이 지루해졌어요. {hero:은} 양들을 내버려 두고 {friend:와} 놀러 가 버렸어요.",
          "돌아와 보니 양 한 마리가 보이지 않았어요. {hero:은} 모른 척 그냥 잠자리에 들려고 했어요.",
          "{hero:은} 양이 없어진 것을 {friend}의 탓으로 돌리려 했어요."),
         "하지만 어둠 속에서 떨고 있을 어린 양을 생각하니 {hero:은} 마음이 편하지 않았어요. "
         "{hero:은} 맡은 일은 끝까지 책임져야 한다며 등불을 들고 다시 길을 나섰어요.",
         "{hero:은} 가시덤불에 걸려 울고 있던 어린 양을 찾아 무사히 데려왔어요. "
         "어른들은 책임을 다한 {hero:을} 칭찬했고, {hero:은} 그 뒤로 누구보다 믿음직한 양치기가 되었어요."),
       S("{hero:은} {friend:와} 함께 {place}의 꽃밭에 물을 주기로 했어요. 둘은 하루씩 번갈아 가며 물을 주기로 약속했어요.",
         ("그런데 {hero:은} 자기 차례인 날에 늦잠을 자서 물을 주지 않았어요.",
          "다음 차례에도 {hero:은} {friend:이} 대신 주겠지 하고 놀러 가 버렸어요.",
          "꽃들이 시들시들해지자 {hero:은} 날씨가 너무 더운 탓이라고 핑계를 댔어요."),
         "시든 꽃을 보며 속상해하는 {friend:을} 보자 {hero:은} 자기 잘못을 깨달았어요. "
         "{hero:은} 다음 날부터 해가 뜨기도 전에 일어나 꽃밭에 물을 듬뿍 주었어요.",
         "며칠 뒤 시들었던 꽃들이 다시 고개를 들고 활짝 피어났어요. "
         "{friend:은} {hero:을} 보며 방긋 웃었고, {hero:은} 맡은 일에 책임을 다하는 기쁨을 알게 되었어요."))),
    L("자연", "자연 사랑", ("자연을 아끼는 마음", "자연 보호의 중요성"), "자연의 선물",
      ("숲과 냇물도 우리처럼 숨을 쉰단다. 자연을 아끼면 자연도 우리를 지켜 준단다.",
       "자연에서 받은 것은 고마운 마음으로 돌려주어야 한단다."),
      "자연이 아프면 우리도 아픈 거였어.",
      ("자연을 아끼면 자연도 우리를 아껴 준답니다.", "맑은 물과 푸른 숲은 우리가 함께 지켜야 할 자연의 선물이에요.",
       "자연을 사랑하는 작은 실천이 모두의 내일을 지킨답니다."),
      "자연을 아끼면 자연도 우리를 지켜 준다.",
      (S("{place} 옆으로는 맑은 개울이 흐르고 있었어요. 그런데 언제부터인가 개울에 쓰레기가 하나둘 쌓이기 시작했어요.",
         ("{hero:도} 먹고 남은 것을 아무렇지 않게 개울에 휙 던져 버리곤 했어요.",
          "물고기들이 하나둘 개울을 떠나도 {hero:은} 별일 아니라고 생각했어요.",
          "{friend:이} 개울이 아파 보인다고 걱정했지만 {hero:은} 누군가 치우겠지 하며 어깨를 으쓱했어요."),
         "어느 날 목이 말라 개울을 찾은 {hero:은} 탁해진 물을 보고 깜짝 놀랐어요. "
         "물을 마실 수 없게 되자 {hero:은} 그제야 자연이 아파하고 있다는 것을 깨달았어요.",
         "{hero:은} {friend:와} 함께 날마다 개울의 쓰레기를 주웠어요. "
         "개울이 다시 맑아지자 물고기들이 돌아왔고, 모두 자연을 아끼며 살기로 약속했어요."),
       S("{hero:은} 땔감을 구하려고 {place} 근처의 어린 나무들을 마구 베어 냈어요. 나무가 사라진 언덕은 점점 메말라 갔어요.",
         ("{friend:이} 어린 나무는 남겨 두자고 했지만 {hero:은} 나무는 얼마든지 있다며 도끼질을 멈추지 않았어요.",
          "새들이 둥지를 잃고 떠나가도 {hero:은} 신경 쓰지 않았어요.",
          "{hero:은} 더 많은 나무를 베려고 산 깊숙이까지 들어갔어요."),
         "그해 여름 큰비가 내리자 나무가 없는 언덕에서 흙더미가 와르르 무너져 내렸어요. "
         "{hero:은} 나무들이 그동안 자신을 지켜 주고 있었다는 것을 깨달았어요.",
         "{hero:은} {friend:와} 함께 언덕에 어린 나무를 한 그루 한 그루 심었어요. "
         "몇 해가 지나자 언덕은 다시 푸르게 우거졌고, 떠났던 새들도 자연의 품으로 돌아왔어요."))),
    L("자신", "자신감", ("자신감의 소중함", "자신을 믿는 마음"), "빛나는 자신감",
      ("너는 너만의 빛을 가지고 있단다. 다른 이와 견주지 말고 너 자신을 믿어 보렴.",
       "남과 다르다는 것은 부끄러운 게 아니라 특별한 거란다."),
      "나는 나대로 멋져!",
      ("남과 비교하지 말고 자신을 믿는 마음이 가장 큰 힘이랍니다.", "누구에게나 자신만의 빛이 있답니다.",
       "자신을 사랑하는 마음에서 진짜 자신감이 나온답니다."),
      "남과 비교하지 말고 자신을 믿자.",
      (S("{hero:은} 다른 친구들과 생김새가 조금 달랐어요. 친구들이 놀릴 때마다 {hero:은} 자기가 못났다고 생각하며 풀이 죽었어요.",
         ("{hero:은} 친구들을 흉내 내 보려고 애썼지만 어색하기만 했어요.",
          "{hero:은} 아무도 자기를 보지 못하게 {place} 구석에 숨어 지냈어요.",
          "노래 잔치에 나가고 싶었지만 {hero:은} 분명 웃음거리가 될 거라며 포기해 버렸어요."),
         "어느 날 {friend:이} {hero}에게 다가와, 다른 것은 틀린 것이 아니라 특별한 것이라고 말해 주었어요. "
         "{hero:은} 처음으로 물에 비친 자기 모습을 찬찬히 들여다보았어요.",
         "{hero:은} 용기를 내어 노래 잔치에 나가 자기만의 목소리로 노래를 불렀어요. "
         "모두가 힘찬 박수를 보냈고, {hero:은} 그날부터 자신을 사랑하며 어깨를 활짝 펴고 다녔어요."),
       S("{place}에서 그림 그리기 대회가 열렸어요. {hero:은} 그림 그리기를 좋아했지만, 자기 그림이 다른 친구들보다 못하다고 생각했어요.",
         ("{hero:은} 붓을 들었다가 이내 내려놓고 한숨을 푹 쉬었어요.",
          "{hero:은} 다른 친구의 그림을 흉내 내 보았지만 마음에 들지 않아 종이를 구겨 버렸어요.",
          "대회 전날 밤, {hero:은} 대회에 나가지 않겠다고 {friend}에게 말했어요."),
         "{friend:은} {hero:이} 몰래 그려 둔 그림들을 보여 주며, 그 그림들이 얼마나 따뜻한지 아느냐고 물었어요. "
         "{hero:은} 다른 누구도 아닌 자신만의 그림을 그려 보기로 마음먹었어요.",
         "대회 날, {hero:은} {place}의 아름다운 풍경을 자기만의 색깔로 가득 그려 냈어요. "
         "상을 받지 못했어도 {hero:은} 자신감으로 가슴이 뿌듯했어요."))),
    L("차례", "차례 지키기", ("차례를 지키는 것의 중요함", "차례를 지키는 마음"), "차례 지키기",
      ("먼저 가려고 다투면 모두가 늦어진단다. 차례를 지키면 모두가 빨라진단다.", "기다릴 줄 아는 마음이 모두를 즐겁게 한단다."),
      "먼저 가려고 다툴 필요가 없었어.",
      ("차례를 지키면 모두가 즐겁고 안전하답니다.", "조금 기다리더라도 차례를 지키는 마음이 모두를 행복하게 한답니다.",
       "먼저 가려고 다투기보다 차례를 지키는 것이 더 빠른 길이랍니다."),
      "차례를 지키면 모두가 즐겁다.",
      (S("{place}에 딱 하나뿐인 그네가 생겼어요. 모두들 그네를 타고 싶어서 아침부터 줄을 섰어요.",
         ("{hero:은} 줄 맨 앞으로 슬쩍 끼어들어 그네를 차지했어요.",
          "{hero:은} 그네에서 내려오지 않고 한 번만 더, 한 번만 더 하며 혼자 계속 탔어요.",
          "{friend:이} 이제 차례를 바꾸자고 했지만 {hero:은} 들은 척도 하지 않았어요."),
         "그러다 {hero:은} 너무 세게 그네를 구르다 그만 풀밭에 쿵 떨어지고 말았어요. "
         "그런데 가장 먼저 달려와 {hero:을} 일으켜 준 것은 한참을 기다리던 {friend:였}어요.",
         "{hero:은} 부끄러워하며 맨 뒤로 가서 줄을 섰어요. 모두가 차례를 지키자 다툼도 사라지고 그네 타기가 훨씬 즐거워졌어요."),
       S("{place}의 옹달샘에 목마른 친구들이 모여들었어요. 옹달샘은 작아서 한 번에 하나씩만 물을 뜰 수 있었어요.",
         ("{hero:은} 앞에 있던 {friend:을} 밀치고 먼저 물을 뜨려고 했어요.",
          "서로 먼저 뜨겠다고 밀고 당기는 사이에 옹달샘 물이 온통 흙탕물이 되어 버렸어요.",
          "{hero:은} 그래도 자기가 먼저라며 큰 소리로 떼를 썼어요."),
         "흙탕물이 가라앉기를 기다리는 동안 {hero:은} 밀려서 넘어진 {friend:을} 보았어요. "
         "{hero:은} 먼저 가겠다고 다투다 모두가 물을 못 마시게 되었다는 것을 깨달았어요.",
         "물이 다시 맑아지자 {hero:은} {friend}에게 먼저 마시라고 양보하고 차례를 기다렸어요. "
         "그 뒤로 옹달샘 앞에는 언제나 질서 있는 줄이 생겼어요."))),
    L("공평", "공평함", ("공평함의 가치", "공평하게 나누는 마음"), "공평한 나눔",
      ("모두에게 똑같이 나누면 다툼이 사라진단다.", "내가 받고 싶은 만큼 남에게도 나누어 주렴. 그것이 공평한 거란다."),
      "모두에게 똑같이 나누는 게 옳아.",
      ("모두에게 공평하게 나누면 다툼 대신 웃음이 생긴답니다.", "공평한 마음은 모두가 소중하다는 것을 아는 마음이에요.",
       "똑같이 나누는 공평함이 우정을 지켜 준답니다."),
      "공평하게 나누면 다툼이 사라진다.",
      (S("{hero:와} {friend:은} 함께 힘을 모아 커다란 떡 한 덩이를 얻었어요. 그런데 누가 더 많이 먹을지를 두고 말다툼이 벌어졌어요.",
         ("{hero:은} 자기가 더 많이 일했다며 큰 조각을 가지겠다고 우겼어요.",
          "떡을 자르고 보니 한쪽이 더 커서, 둘은 서로 큰 쪽을 가지겠다고 티격태격했어요.",
          "{hero:은} 큰 쪽을 조금 떼어 먹고, 또 반대쪽을 떼어 먹으며 맞춰 보려 했지만 떡은 점점 작아지기만 했어요."),
         "{hero:은} 좋은 생각을 떠올렸어요. 한 명이 떡을 자르면 다른 한 명이 먼저 고르기로 정했어요.",
         "자르는 쪽은 조심조심 똑같이 자를 수밖에 없었고, 둘은 사이좋게 반씩 나누어 먹었어요. 공평하게 나누니 떡 맛도 더 달콤했어요."),
       S("{place}의 과일나무에 올해 첫 열매가 열렸어요. {hero:은} 열매를 따서 친구들에게 나누어 주는 일을 맡았어요.",
         ("{hero:은} 친한 친구들에게만 크고 좋은 열매를 골라 주었어요.",
          "{hero:은} {friend}에게는 작고 덜 익은 열매만 건넸어요.",
          "친구들이 불공평하다고 수군거렸지만 {hero:은} 내 마음대로 하는 게 뭐가 어떠냐며 고개를 쳐들었어요."),
         "그날 밤 {hero:은} 속상해하던 {friend}의 얼굴이 자꾸 떠올랐어요. {hero:은} 모두가 똑같이 소중한 친구라는 것을 깨달았어요.",
         "다음 날 {hero:은} 남은 열매를 모두에게 똑같이 나누어 주고, {friend}에게는 진심으로 사과했어요. "
         "공평하게 나누자 친구들의 얼굴에 다시 웃음꽃이 피었어요."))),
    L("존중", "존중", ("서로 다름을 존중하는 마음", "존중의 의미"), "서로를 존중하는 마음",
      ("세상에 똑같은 꽃은 하나도 없단다. 서로 다른 모습을 존중해 주렴.", "나와 다르다고 틀린 것은 아니란다."),
      "다른 건 틀린 게 아니었어.",
      ("서로 다른 모습을 존중할 때 세상은 더 아름다워진답니다.", "나와 다르다고 틀린 것이 아니니 서로를 존중해야 한답니다.",
       "다름을 존중하는 마음이 새로운 친구를 만들어 준답니다."),
      "나와 다른 친구를 존중하자.",
      (S("{place}에 멀리서 온 {ftrait} {friend:이} 이사를 왔어요. {friend:은} 말투도, 좋아하는 음식도, 노는 방법도 {hero:와} 달랐어요.",
         ("{hero:은} {friend}의 말투를 흉내 내며 킥킥 웃었어요.",
          "{friend:이} 가져온 낯선 음식을 보고 {hero:은} 이상한 냄새가 난다며 코를 쥐었어요.",
          "{hero:은} 이곳에서는 이곳 방식대로 놀아야 한다며 {friend:을} 놀이에 끼워 주지 않았어요."),
         "어느 날 {hero:이} 길을 잃고 헤매자 {friend:이} 고향에서 배운 별자리 읽는 법으로 길을 찾아 주었어요. "
         "{hero:은} 다르다는 것이 얼마나 멋진 일인지 깨달았어요.",
         "{hero:은} {friend}에게 사과하고 {friend}의 고향 이야기에 귀를 기울였어요. "
         "서로를 존중하게 된 둘은 서로의 놀이를 번갈아 가르쳐 주며 더 즐겁게 지냈어요.",
         new_friend=True),
       S("{hero:은} 낮에 일하고 밤에 자는 것만 옳다고 믿었어요. 그런데 이웃 {friend:은} 밤에 깨어 있고 낮에 잠을 잤어요.",
         ("{hero:은} 낮잠 자는 {friend:을} 게으름뱅이라고 흉보았어요.",
          "{hero:은} 일부러 {friend}의 집 앞에서 쿵쾅쿵쾅 큰 소리를 내며 놀았어요.",
          "{friend:이} 조용히 해 달라고 부탁했지만 {hero:은} 낮에 자는 쪽이 잘못이라며 코웃음을 쳤어요."),
         "어느 캄캄한 밤, {hero:은} 길을 잃고 헤매다 밤에도 눈이 밝은 {friend}에게 도움을 받았어요. "
         "{hero:은} 모두에게는 저마다의 생활이 있다는 것을 깨달았어요.",
         "그 뒤로 {hero:은} 낮에는 {friend:이} 푹 잘 수 있도록 조용히 놀았어요. "
         "서로를 존중하게 된 둘은 낮과 밤을 나누어 {place:을} 함께 지키는 든든한 이웃이 되었어요."))),
)
del S, L

LESSON_BY_KEY = {lesson.key: lesson for lesson in LESSONS}
PLACE_BY_NAME = {place.name: place for place in PLACES}
CHAR_BY_NAME = {c.name: c for c in CHARACTERS}
