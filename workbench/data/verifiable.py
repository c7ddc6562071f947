"""Verifiable instructions: everyday questions in plain English, each carrying 1-3 constraints a program checks.

A prompt is one question from a built-in list ("Describe a good breakfast.") followed by one sentence per
constraint ("Answer in at most 30 words. Do not use the word "very"."); the constraints are in the spirit of
IFEval's verifiable instructions (Zhou et al., 2023). The gold reward of a response is the fraction of the
prompt's constraints it meets:

.. math:: r^*(x, y) = \\frac{1}{|C(x)|} \\sum_{c \\in C(x)} \\mathbb{1}[c(y)], \\qquad r^*(x, y) = 0
          \\text{ when } y \\text{ has no word}

The question itself is not graded: the reward measures instruction following, not the quality of the answer.

The prompt text is the whole record: :meth:`VerifiablePrompt.parse` reads the question and every constraint back
from it (each wording is a fixed template), so :func:`gold_reward` works on the user text alone, as the gym's does.

Splits are disjoint by construction: each question belongs to exactly one split (``QUESTIONS``), every prompt text
begins with its question, and no question is a prefix of another, so a text never occurs in two splits.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

# --- the questions, one list per split (written apart, never shared) ---

QUESTIONS: dict[str, tuple[str, ...]] = {
    "train": (
        "Describe a good breakfast.",
        "Give advice for a job interview.",
        "Explain how to make a cup of tea.",
        "Suggest a way to spend a rainy afternoon.",
        "Describe your ideal weekend.",
        "Give tips for sleeping better.",
        "Explain why people keep pets.",
        "Recommend a hobby for a beginner.",
        "Describe a walk in the park.",
        "Give advice for learning a new language.",
        "Explain how to plan a small birthday party.",
        "Suggest healthy snacks for work.",
        "Describe a busy train station.",
        "Give tips for saving money on groceries.",
        "Explain how to water houseplants.",
        "Describe the taste of fresh bread.",
        "Give advice for a first day at a new job.",
        "Explain how to pack for a weekend trip.",
        "Suggest ways to stay focused while studying.",
        "Describe a quiet morning at home.",
        "Give tips for a first long run.",
        "Explain how to keep a kitchen clean.",
        "Recommend a book for a long flight.",
        "Describe a friendly neighbour.",
        "Give advice for writing a thank-you note.",
        "Explain how to choose a ripe avocado.",
        "Suggest a simple dinner for two.",
        "Describe a day at the beach.",
        "Give tips for keeping a small garden.",
        "Explain why exercise helps your mood.",
        "Suggest ways to make friends in a new city.",
        "Describe the sound of rain on a roof.",
        "Give advice for a long car journey.",
        "Explain how to fold a shirt neatly.",
        "Recommend a board game for a family evening.",
        "Describe a cosy café.",
        "Give tips for a video call with colleagues.",
        "Explain how to boil an egg.",
        "Suggest a gift for a grandparent.",
        "Describe autumn in a small town.",
        "Give advice for staying calm before an exam.",
        "Explain how to ride a bicycle safely in traffic.",
        "Suggest a way to start the day with energy.",
        "Describe a well-organised desk.",
        "Give tips for cooking rice.",
        "Explain how to write a shopping list.",
        "Recommend a way to relax after work.",
        "Describe a picnic with friends.",
        "Give advice for moving to a new flat.",
        "Explain how to care for a pet cat.",
        "Suggest a name for a bakery.",
        "Describe a winter evening by the fire.",
        "Give tips for keeping a phone battery healthy.",
        "Explain how to make a simple salad.",
        "Recommend a habit that saves time.",
        "Describe a local market on a Saturday.",
        "Give advice for talking to a nervous child.",
        "Explain how to clean a pair of shoes.",
        "Suggest a plan for a lazy Sunday.",
        "Describe a favourite teacher.",
        "Give tips for drinking more water.",
        "Explain how to prepare for a hike.",
        "Suggest ways to reduce waste at home.",
        "Describe a birthday cake.",
    ),
    "validation": (
        "Give advice for a first driving lesson.",
        "Describe a summer festival.",
        "Explain how to make pancakes.",
        "Suggest a way to celebrate a friend's success.",
        "Describe a library on a quiet afternoon.",
        "Give tips for keeping a tidy wardrobe.",
        "Explain how to plant a tree.",
        "Recommend a weekend activity for a family.",
        "Describe a walk through a forest.",
        "Give advice for writing a short speech.",
        "Explain how to make lemonade.",
        "Suggest a way to remember people's names.",
    ),
    "test": (
        "Describe a dinner party with old friends.",
        "Give advice for a first week at university.",
        "Explain how to brew coffee at home.",
        "Suggest a way to spend a sunny morning.",
        "Describe a mountain village.",
        "Give tips for staying warm in winter.",
        "Explain how to bake simple cookies.",
        "Recommend a way to learn to cook.",
        "Describe a visit to a museum.",
        "Give advice for saying no politely.",
        "Explain how to organise a bookshelf.",
        "Suggest a way to welcome a new neighbour.",
    ),
}
SPLIT_OF_QUESTION = {q: split for split, questions in QUESTIONS.items() for q in questions}

# --- constraint parameters (keywords and avoided words are disjoint lists, so no prompt asks for both) ---

# fmt: off
KEYWORDS = (
    "water", "morning", "friend", "music", "window", "garden", "coffee", "paper", "river", "smile",
    "apple", "light", "story", "bread", "table", "chair", "clock", "basket", "candle", "pocket",
    "mountain", "ocean", "pencil", "bicycle", "blanket", "kitchen", "lemon", "honey", "sunshine", "notebook",
    "umbrella", "journey", "forest", "orange", "silver", "patience", "balance", "rhythm", "letter", "bridge",
)
AVOIDED_WORDS = (
    "very", "really", "just", "good", "great", "thing", "always", "never", "maybe", "actually",
    "basically", "simply", "important", "nice", "stuff", "definitely", "perhaps", "quite", "totally", "literally",
    "easy", "best", "try", "should",
)
# fmt: on
END_PHRASES = (
    "Hope this helps.",
    "That is all.",
    "Thanks for reading.",
    "Enjoy your day!",
    "Any other questions?",
    "Take care.",
    "See you soon.",
    "Happy to help.",
    "Until next time.",
    "That sums it up.",
)
MAX_WORDS = (20, 25, 30, 40, 50, 60, 80, 100)  # the smallest fits the longest satisfying answer of 3 constraints
BULLETS = (2, 3, 4, 5)
ARITHMETIC_OPS = ("+", "-", "×")

# --- what a word, a number and a bullet are ---

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and CJK ideographs: one word per character
WORD_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’][^\W_{_CJK}]+)*")
# ASCII digits only; "1,234" (groups of three after a comma) is one number, "1,2,3" three; a sign counts only
# when "-" touches the digits and follows no letter or digit ("-5", not "4-5" nor the bullet "- 5")
NUMBER_RE = re.compile(
    r"(?:(?<![0-9A-Za-z])(?P<sign>-))?(?<![0-9])"
    r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<fraction>\.[0-9]+)?"
)


def words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of letters and digits (any script), joined across an inner apostrophe
    ("don't" is one word); each kana or CJK ideograph is a word of its own; punctuation, ``_``, emoji and
    whitespace only separate ("well-known" is two words, "- " bullet markers are none)."""
    return WORD_RE.findall(text)


def numbers(text: str) -> list[float]:
    """The numbers written in ASCII digits in ``text``, in order (``NUMBER_RE``): "1,234" is 1234, "42.5" is 42.5,
    "-7" is -7; number words ("forty-two") and other scripts' digits are not numbers."""
    return [
        (-1.0 if m["sign"] else 1.0) * float(m["whole"].replace(",", "") + (m["fraction"] or ""))
        for m in NUMBER_RE.finditer(text)
    ]


@functools.lru_cache(maxsize=1024)
def _whole_word(word: str) -> re.Pattern:
    return re.compile(rf"(?<![^\W_]){re.escape(word.casefold())}(?![^\W_])")


# --- the constraints: one check per kind, response in, bool out ---


def at_most_words(response: str, n: int) -> bool:
    """At most ``n`` words, counted by :func:`words` (bullet markers and punctuation are not words)."""
    return len(words(response)) <= n


def includes_keyword(response: str, word: str) -> bool:
    """``word`` occurs as a whole word, case-insensitively (``str.casefold``): not preceded or followed by a letter
    or digit. "Water's" and "WATER" count for "water"; "waters", "underwater" and "wáter" do not."""
    return _whole_word(word).search(response.casefold()) is not None


def avoids_word(response: str, word: str) -> bool:
    """``word`` never occurs as a whole word, by the rule of :func:`includes_keyword` (so "goodness" does not
    break "avoid 'good'", "Good" does)."""
    return not includes_keyword(response, word)


def all_lowercase(response: str) -> bool:
    """Python's ``str.islower``: at least one cased letter and none uppercase or titlecase, in any script ("café ☕
    42" passes, "Café" and "ÉTÉ" fail); digits, punctuation and uncased scripts (CJK) neither help nor hurt, so an
    answer with no cased letter ("42") fails."""
    return response.islower()


def bullet_lines(response: str) -> list[str]:
    """The bullet points of ``response``: lines (``str.splitlines``) that, after leading spaces and tabs, start with
    "- " (hyphen-minus, then a space) followed by some text. "* ", "• ", "– " (en dash), "1. " and "-x" are not
    bullets, nor is a bare "- "."""
    return [line for line in response.splitlines() if re.match(r"[ \t]*- +\S", line)]


def exactly_bullets(response: str, k: int) -> bool:
    """Exactly ``k`` bullet points (:func:`bullet_lines`); other lines (an introduction, a closing line) are
    allowed."""
    return len(bullet_lines(response)) == k


def ends_with_phrase(response: str, phrase: str) -> bool:
    """After trailing whitespace is dropped, the response ends with ``phrase`` (its punctuation included),
    case-insensitively (``str.casefold``), and no letter or digit touches the phrase's first character."""
    text, tail = response.rstrip().casefold(), phrase.casefold()
    if not text.endswith(tail):
        return False
    before = text[: len(text) - len(tail)]
    return not before or not (before[-1].isalnum())


def arithmetic_result(a: int, op: str, b: int) -> int:
    """The value of ``a op b`` for op in ``ARITHMETIC_OPS``."""
    return {"+": a + b, "-": a - b, "×": a * b}[op]


def answers_arithmetic(response: str, a: int, op: str, b: int) -> bool:
    """The first number of the response (:func:`numbers`) that is not an operand (``a`` or ``b``, so restating "17 +
    25 = 42" is fine) equals ``a op b`` exactly ("42", "42.0" count; "42.5", "forty-two" and a later 42 after some
    other number do not). Generated results are never equal to an operand."""
    result = arithmetic_result(a, op, b)
    first = next((v for v in numbers(response) if v not in (a, b)), None)
    return first == result


@dataclass(frozen=True)
class ConstraintKind:
    """One kind of constraint: its check, its parameters (``fields``, named as in the wordings), how a prompt
    words it (one template per wording) and how a prompt draws its parameters."""

    check: Callable[..., bool]
    fields: tuple[str, ...]
    wordings: tuple[str, ...]
    draw: Callable[[random.Random], tuple]


def _draw_arithmetic(rng: random.Random) -> tuple:
    op = rng.choice(ARITHMETIC_OPS)
    if op == "+":
        return (rng.randint(2, 99), op, rng.randint(2, 99))
    if op == "×":
        return (rng.randint(2, 12), op, rng.randint(2, 12))
    a = rng.randint(10, 99)
    b = rng.choice([b for b in range(2, a - 1) if a - b != b])
    return (a, op, b)


CONSTRAINTS: dict[str, ConstraintKind] = {
    "max_words": ConstraintKind(
        at_most_words,
        ("n",),
        ("Answer in at most {n} words.", "Use no more than {n} words.", "Keep your answer to {n} words or fewer."),
        lambda rng: (rng.choice(MAX_WORDS),),
    ),
    "keyword": ConstraintKind(
        includes_keyword,
        ("word",),
        (
            'Include the word "{word}".',
            'Make sure to use the word "{word}" somewhere.',
            'Mention the word "{word}" at least once.',
        ),
        lambda rng: (rng.choice(KEYWORDS),),
    ),
    "avoid_word": ConstraintKind(
        avoids_word,
        ("word",),
        ('Do not use the word "{word}".', 'Avoid the word "{word}" entirely.', 'Never write the word "{word}".'),
        lambda rng: (rng.choice(AVOIDED_WORDS),),
    ),
    "lowercase": ConstraintKind(
        all_lowercase,
        (),
        (
            "Write your whole answer in lowercase letters, with no capitals.",
            "Do not use any capital letters.",
            "Your entire answer must be in lowercase.",
        ),
        lambda rng: (),
    ),
    "bullets": ConstraintKind(
        exactly_bullets,
        ("k",),
        (
            'Format the answer as exactly {k} bullet points, each on its own line starting with "- ".',
            'Give exactly {k} bullet points (lines starting with "- ").',
            'Use exactly {k} bullet points, no more and no fewer, each beginning with "- ".',
        ),
        lambda rng: (rng.choice(BULLETS),),
    ),
    "end_phrase": ConstraintKind(
        ends_with_phrase,
        ("phrase",),
        (
            'End your answer with the exact phrase "{phrase}"',
            'Finish with the words "{phrase}" and nothing after them.',
        ),
        lambda rng: (rng.choice(END_PHRASES),),
    ),
    "arithmetic": ConstraintKind(
        answers_arithmetic,
        ("a", "op", "b"),
        (
            "Also tell me what {a} {op} {b} is, in digits, before any other number.",
            "Before any other number, give the result of {a} {op} {b} in digits.",
        ),
        _draw_arithmetic,
    ),
}
FIELD_PATTERNS = {"n": "[0-9]+", "k": "[0-9]+", "a": "[0-9]+", "b": "[0-9]+", "word": "[a-z]+", "phrase": '[^"]+'}
FIELD_PATTERNS["op"] = "|".join(map(re.escape, ARITHMETIC_OPS))
INT_FIELDS = {"n", "k", "a", "b"}


def _wording_pattern(wording: str) -> re.Pattern:
    """A wording template as a regex with one named group per field."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(wording):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P<{name}>{FIELD_PATTERNS[name]})")
    return re.compile("".join(parts))


WORDING_PATTERNS = {kind: tuple(map(_wording_pattern, spec.wordings)) for kind, spec in CONSTRAINTS.items()}


@dataclass(frozen=True)
class Constraint:
    """One constraint of a prompt: its kind (a key of ``CONSTRAINTS``), its parameters in the kind's field order,
    and which wording the prompt uses."""

    kind: str
    value: tuple
    wording: int = 0

    @property
    def text(self) -> str:
        spec = CONSTRAINTS[self.kind]
        return spec.wordings[self.wording].format(**dict(zip(spec.fields, self.value)))

    def check(self, response: str) -> bool:
        return CONSTRAINTS[self.kind].check(response, *self.value)


@dataclass(frozen=True)
class VerifiablePrompt:
    """A question and its constraints; ``text`` is what the user says, ``answer_text`` a short answer built by
    program that meets every constraint (a witness that the prompt is satisfiable, not a model answer)."""

    question: str
    constraints: tuple[Constraint, ...]

    @property
    def text(self) -> str:
        return " ".join([self.question, *(c.text for c in self.constraints)])

    @property
    def answer_text(self) -> str:
        return satisfying_answer(self)

    @classmethod
    def parse(cls, text: str) -> VerifiablePrompt:
        """The prompt whose ``text`` is ``text`` (the inverse of ``text``); ValueError for any other text."""
        return _parse(text)


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> VerifiablePrompt:
    question = next((q for q in SPLIT_OF_QUESTION if text.startswith(q + " ")), None)
    if question is None:
        raise ValueError(f"not a verifiable prompt: {text[:80]!r}; it must start with one of the QUESTIONS")
    constraints: list[Constraint] = []
    pos = len(question) + 1
    while pos < len(text):
        found = None
        for kind, patterns in WORDING_PATTERNS.items():
            for wording, pattern in enumerate(patterns):
                match = pattern.match(text, pos)
                if match and (match.end() == len(text) or text[match.end()] == " "):
                    found = (kind, wording, match)
                    break
            if found:
                break
        if found is None:
            raise ValueError(f"not a verifiable prompt: no constraint wording matches {text[pos : pos + 60]!r}")
        kind, wording, match = found
        value = tuple(int(match[f]) if f in INT_FIELDS else match[f] for f in CONSTRAINTS[kind].fields)
        constraints.append(Constraint(kind, value, wording))
        pos = match.end() + 1
    if not constraints:
        raise ValueError(f"not a verifiable prompt: {text[:80]!r} carries no constraint")
    return VerifiablePrompt(question, tuple(constraints))


def split_of(prompt_text: str) -> str:
    """The split of a prompt: the split of its question (``QUESTIONS``)."""
    return SPLIT_OF_QUESTION[VerifiablePrompt.parse(prompt_text).question]


def make_prompts(n: int, split: str, seed: int) -> list[VerifiablePrompt]:
    """``n`` distinct prompts of ``split``, drawn reproducibly from ``seed``: a question of the split, then 1-3
    distinct constraint kinds in random order, each with drawn parameters and wording."""
    if split not in QUESTIONS:
        raise ValueError(f"split={split!r}; use one of {sorted(QUESTIONS)}")
    rng = random.Random(f"verifiable-{split}-{seed}")
    prompts: list[VerifiablePrompt] = []
    seen: set[str] = set()
    misses = 0
    while len(prompts) < n:
        question = rng.choice(QUESTIONS[split])
        kinds = rng.sample(list(CONSTRAINTS), rng.randint(1, 3))
        constraints = tuple(
            Constraint(k, CONSTRAINTS[k].draw(rng), rng.randrange(len(CONSTRAINTS[k].wordings))) for k in kinds
        )
        prompt = VerifiablePrompt(question, constraints)
        if prompt.text in seen:
            misses += 1
            if misses > 10_000:
                raise RuntimeError(f"only {len(prompts)} distinct {split} prompts found; asked {n}")
            continue
        misses = 0
        seen.add(prompt.text)
        prompts.append(prompt)
    return prompts


def constraint_results(prompt: VerifiablePrompt | str, response: str) -> list[bool]:
    """Whether ``response`` meets each of the prompt's constraints, in the prompt's order."""
    prompt = VerifiablePrompt.parse(prompt) if isinstance(prompt, str) else prompt
    return [c.check(response) for c in prompt.constraints]


def gold_reward(prompt: VerifiablePrompt | str, response: str) -> float:
    """Fraction of the prompt's constraints that ``response`` meets, in [0, 1]; 0 for a response without a word
    (empty, whitespace, punctuation or emoji only). ``prompt``: a :class:`VerifiablePrompt` or its text."""
    if not words(response):
        return 0.0
    results = constraint_results(prompt, response)
    return sum(results) / len(results)


# --- a satisfying answer, built by program ---

NUMERAL_WORDS = ("one", "two", "three", "four", "five")


def satisfying_answer(prompt: VerifiablePrompt) -> str:
    """A short answer that meets every constraint of ``prompt``: the arithmetic result first, one line naming the
    keyword, the bullet points, the end phrase last; lowercased when asked. Its words ("my answer is about",
    "point", the numeral words) are none of ``AVOIDED_WORDS``; with at most three constraints it fits the smallest
    ``MAX_WORDS``."""
    given = {c.kind: c.value for c in prompt.constraints}
    first = "my answer is about " + given["keyword"][0] if "keyword" in given else "my answer"
    if "arithmetic" in given:
        first = f"{arithmetic_result(*given['arithmetic'])}: {first}"
    lines = [first + "."]
    lines += [f"- point {NUMERAL_WORDS[i]}" for i in range(given.get("bullets", (0,))[0])]
    if "end_phrase" in given:
        lines.append(given["end_phrase"][0])
    text = "\n".join(lines)
    return text.lower() if "lowercase" in given else text


def near_miss_answer(prompt: VerifiablePrompt) -> str | None:
    """The :func:`satisfying_answer` with the prompt's first constraint broken by the smallest edit that breaks it
    (one word too many, the keyword left out, the avoided word used, one capital letter, one bullet missing, the end
    phrase missing, the result off by one); the other constraints stay met where the edit allows. None when the edit
    also meets the first constraint (never, for the generated prompts: tested). A model-independent rejected
    answer: a (satisfying, near-miss) pair differs in exactly what the first constraint asks."""
    answer = satisfying_answer(prompt)
    first = prompt.constraints[0]
    kind, value = first.kind, first.value
    if kind == "max_words":
        missing = value[0] + 1 - len(words(answer))
        lines = answer.split("\n")
        lines[0] = lines[0].rstrip(".") + " and" * max(missing, 1) + "."
        broken = "\n".join(lines)
    elif kind == "keyword":
        broken = answer.replace(f"my answer is about {value[0]}", "my answer").replace(
            f"My answer is about {value[0]}", "My answer"
        )
    elif kind == "avoid_word":
        lines = answer.split("\n")
        lines[0] = lines[0].rstrip(".") + f" {value[0]}."
        broken = "\n".join(lines)
    elif kind == "lowercase":
        broken = answer[0].upper() + answer[1:] if answer[0].isalpha() else "My " + answer
    elif kind == "bullets":
        lines = answer.split("\n")
        last_bullet = max(i for i, line in enumerate(lines) if line.startswith("- "))
        broken = "\n".join(lines[:last_bullet] + lines[last_bullet + 1 :])
    elif kind == "end_phrase":
        broken = (
            answer.removesuffix(value[0]).rstrip()
            + "\n"
            + ("that is it." if value[0].lower() == "that is all." else "that is all.")
        )
    else:  # arithmetic
        a, _, b = value
        result = arithmetic_result(*value)
        wrong = next(r for r in (result + 1, result + 2, result + 3) if r not in (a, b))
        broken = answer.replace(f"{result}:", f"{wrong}:", 1)
    return None if first.check(broken) else broken


# --- an own answer repaired by program ---


def _first_words(text: str, count: int) -> str:
    """``text`` cut after its ``count``-th word (:func:`words`), whitespace collapsed."""
    if count <= 0:
        return ""
    ends = [m.end() for m in WORD_RE.finditer(text)]
    return text if len(ends) <= count else text[: ends[count - 1]]


def repaired_answer(prompt: VerifiablePrompt, response: str) -> str | None:
    """``response`` edited by program to meet every constraint of ``prompt``, keeping as much of its own text as the
    constraints allow: the avoided word and any bullet or end-phrase lines removed, the arithmetic result first, a line
    naming the keyword, the text cut to the word limit and split into the asked number of "- " bullets, the end
    phrase last, all lowercased when asked. None when no such edit meets every constraint (e.g. nothing of the text
    is left). A chosen answer that is the model's own words where it can be (the real-text teacher's DPO pairs)."""
    given = {c.kind: c.value for c in prompt.constraints}
    body = " ".join(line for line in response.splitlines() if not re.match(r"[ \t]*- +\S", line))
    if "avoid_word" in given:
        body = re.sub(rf"(?<![^\W_]){re.escape(given['avoid_word'][0])}(?![^\W_])", " ", body, flags=re.IGNORECASE)
    body = " ".join(body.split())
    head = [f"{arithmetic_result(*given['arithmetic'])}."] if "arithmetic" in given else []
    head += [f"It involves {given['keyword'][0]}."] if "keyword" in given else []
    tail = [given["end_phrase"][0]] if "end_phrase" in given else []
    if "max_words" in given:
        body = _first_words(body, given["max_words"][0] - len(words(" ".join(head + tail))))
    lines = [body] if body else []
    if "bullets" in given:
        k = given["bullets"][0]
        sentences = re.split(r"(?<=[.!?])\s+", body)
        parts = sentences if len(sentences) >= k else body.split()  # whole sentences where there are enough
        if len(parts) < k:
            return None
        cut = [round(i * len(parts) / k) for i in range(k + 1)]
        lines = ["- " + " ".join(parts[cut[i] : cut[i + 1]]) for i in range(k)]
    text = "\n".join(head + lines + tail)
    if "lowercase" in given:
        text = text.lower()
    return text if words(text) and gold_reward(prompt, text) == 1.0 else None
