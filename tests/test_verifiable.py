"""The verifiable-instruction prompts: each constraint's rule on ordinary and adversarial answers, the parse of a
prompt's text, the splits, determinism, the reward's bounds, satisfiability, and the data preset."""

from __future__ import annotations

import random

import pytest

from workbench.data import PROMPT_PRESETS
from workbench.data import verifiable as v

HUGE = "word " * 19_999 + "words"  # 100,000 characters, 20,000 words, no trailing space
ADVERSARIAL = ["", "   \n\t ", HUGE, "Crème brûlée 🍮 中文 ÉTÉ", "😀😀", "-", "- \n- "]
SPLITS = ("train", "validation", "test")


def short(value):
    """A test id: long answers cut to their first characters."""
    return repr(value[:24]) + (f"+{len(value) - 24}" if len(value) > 24 else "") if isinstance(value, str) else None


@pytest.fixture(scope="module")
def sample() -> list[v.VerifiablePrompt]:
    return [p for split in SPLITS for p in v.make_prompts(400, split, seed=3)]


# --- words and numbers ---


def test_words_rule():
    assert v.words("") == [] and v.words(" \n\t ") == [] and v.words("😀 — !?") == []
    assert v.words("Don't stop, well-known café.") == ["Don't", "stop", "well", "known", "café"]
    assert v.words("- point one\n- point two") == ["point", "one", "point", "two"]
    assert v.words("我喜欢 tea") == ["我", "喜", "欢", "tea"]  # one word per CJK character
    assert v.words("1,234 snake_case") == ["1", "234", "snake", "case"]
    assert len(v.words(HUGE)) == 20_000


def test_numbers_rule():
    assert v.numbers("17 + 25 = 42") == [17, 25, 42]
    assert v.numbers("1,234 and 1,2,3") == [1234, 1, 2, 3]
    assert v.numbers("12,345,678.5") == [12345678.5]
    assert v.numbers("-7, 4-5, and the bullet\n- 9") == [-7, 4, 5, 9]
    assert v.numbers("forty-two, ４２, ٤٢") == []  # number words and non-ASCII digits are not numbers
    assert v.numbers("42.") == [42] and v.numbers("x42y") == [42]


# --- each constraint ---


def test_at_most_words():
    assert v.at_most_words("one two three", 3) and not v.at_most_words("one two three four", 3)
    assert v.at_most_words("- a\n- b\n- c", 3)  # markers are not words
    assert v.at_most_words("", 5) and v.at_most_words("   ", 5)  # no words; the reward's no-word rule applies
    assert not v.at_most_words(HUGE, 100)
    assert v.at_most_words("Crème brûlée 🍮", 2)  # the emoji is not a word
    assert not v.at_most_words("我喜欢茶", 3)  # four CJK characters: four words


@pytest.mark.parametrize(
    ("response", "meets"),
    [
        ("I drink water daily.", True),
        ("WATER first", True),  # case-insensitive
        ("the water's edge", True),  # an apostrophe ends the word
        ("water-proof", True),  # so does a hyphen
        ("waters and underwater", False),  # inside another word: does not count
        ("wáter", False),  # an accent makes another word
        ("水water水", False),  # CJK characters are letters
        ("", False),
        ("   ", False),
        (HUGE, False),
        (HUGE + " water", True),
    ],
    ids=short,
)
def test_includes_keyword(response, meets):
    assert v.includes_keyword(response, "water") is meets


@pytest.mark.parametrize(
    ("response", "meets"),
    [
        ("A fine answer.", True),
        ("Good morning", False),
        ("GOOD", False),
        ("goodness, goods and feelgood", True),  # inside another word: not a use of the word
        ("good.", False),
        ("", True),
        (HUGE, True),
        (HUGE + "good", True),  # "wordgood" is one word
        (HUGE + " good", False),
    ],
    ids=short,
)
def test_avoids_word(response, meets):
    assert v.avoids_word(response, "good") is meets


@pytest.mark.parametrize(
    ("response", "meets"),
    [
        ("all lowercase here.", True),
        ("café ☕ 42 中文", True),  # digits, emoji and uncased scripts neither help nor hurt
        ("Café", False),
        ("ÉTÉ", False),
        ("lower then İ", False),
        ("ǅ", False),  # titlecase
        ("42", False),  # no cased letter
        ("中文", False),
        ("", False),
        ("   ", False),
        (HUGE, True),
        (HUGE + "X", False),
    ],
    ids=short,
)
def test_all_lowercase(response, meets):
    assert v.all_lowercase(response) is meets


def test_bullets_rule():
    three = "Intro line\n- one\n  - two\n\t- three\nClosing line."
    assert v.exactly_bullets(three, 3) and not v.exactly_bullets(three, 2)
    assert v.exactly_bullets("- a\r\n- b\r\n", 2)  # Windows line ends
    for marker in ["* ", "• ", "– ", "— ", "1. ", "+ ", "-", "--", "-\t"]:
        assert not v.exactly_bullets(f"{marker}a\n{marker}b", 2), marker
    assert v.exactly_bullets("- \n-   \n- real", 1)  # a bare marker is not a bullet
    assert v.exactly_bullets("- a - b - c", 1)  # one line, one bullet
    assert v.exactly_bullets("", 0) and not v.exactly_bullets("", 2) and not v.exactly_bullets("   ", 2)
    assert v.exactly_bullets("- 中文\n- 😀", 2)  # any non-space text
    assert v.exactly_bullets("- x\n" * 25_000, 25_000)


@pytest.mark.parametrize(
    ("response", "meets"),
    [
        ("Some text. Hope this helps.", True),
        ("some text. hope this helps.  \n", True),  # case-insensitive, trailing whitespace ignored
        ("Hope this helps.", True),
        ("Some text.\nHOPE THIS HELPS.", True),
        ("Hope this helps", False),  # the phrase's punctuation is part of it
        ("Hope this helps. Bye.", False),
        ("Nope, I hope this helps.", True),
        ("xHope this helps.", False),  # a letter touching the phrase
        ("", False),
        ("   ", False),
        (HUGE, False),
        (HUGE + "Hope this helps.", False),
        (HUGE + " Hope this helps.", True),
        ("🍮 Hope this helps.", True),
    ],
    ids=short,
)
def test_ends_with_phrase(response, meets):
    assert v.ends_with_phrase(response, "Hope this helps.") is meets


@pytest.mark.parametrize(
    ("response", "meets"),
    [
        ("42", True),
        ("The answer is 42.", True),
        ("17 + 25 = 42", True),  # the operands are skipped
        ("42.0", True),
        ("42.5", False),
        ("forty-two", False),  # number words are not numbers
        ("Forty-two (42)", True),
        ("I ate 2 eggs, and 42", False),  # another number came first
        ("41, no: 42", False),
        ("-42", False),
        ("", False),
        ("   ", False),
        (HUGE, False),
        (HUGE + " 42", True),
        ("４２", False),  # full-width digits are not ASCII digits
    ],
    ids=short,
)
def test_answers_arithmetic(response, meets):
    assert v.answers_arithmetic(response, 17, "+", 25) is meets


def test_arithmetic_commas_and_ops():
    assert v.arithmetic_result(22, "×", 48) == 1056
    for written in ["The total is 1,056.", "1056", "22 × 48 = 1,056"]:
        assert v.answers_arithmetic(written, 22, "×", 48), written
    for written in ["1.056", "one thousand and fifty-six", "1 056"]:  # a decimal, words, a space-grouped number
        assert not v.answers_arithmetic(written, 22, "×", 48), written
    assert v.answers_arithmetic("43 - 18 = 25", 43, "-", 18) and v.answers_arithmetic("7 × 8 = 56", 7, "×", 8)
    assert v.answers_arithmetic("43-18=25", 43, "-", 18)  # "-18" after a digit is not negative


# --- prompts: the text is the record ---


def test_parse_round_trip(sample):
    for prompt in sample:
        assert v.VerifiablePrompt.parse(prompt.text) == prompt
        assert 1 <= len(prompt.constraints) <= 3
        assert len({c.kind for c in prompt.constraints}) == len(prompt.constraints)


def test_every_kind_and_wording_occurs(sample):
    seen = {(c.kind, c.wording) for p in sample for c in p.constraints}
    assert seen == {(kind, w) for kind, spec in v.CONSTRAINTS.items() for w in range(len(spec.wordings))}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sort 3 1 2",  # a gym prompt
        "Describe a good breakfast.",  # no constraint
        "Describe a good breakfast. Write a poem.",  # an unknown constraint
        "Describe a good breakfast. Answer in at most 30 words.Use no more than 5 words.",  # no space between
        "Describe a haunted house. Answer in at most 30 words.",  # an unknown question
    ],
    ids=short,
)
def test_parse_refuses_other_text(text):
    with pytest.raises(ValueError):
        v.VerifiablePrompt.parse(text)
    with pytest.raises(ValueError):
        v.gold_reward(text, "an answer")


def test_natural_wording():
    prompt = v.VerifiablePrompt(
        "Describe a good breakfast.",
        (
            v.Constraint("max_words", (30,)),
            v.Constraint("avoid_word", ("very",)),
            v.Constraint("arithmetic", (17, "+", 25)),
        ),
    )
    assert prompt.text == (
        'Describe a good breakfast. Answer in at most 30 words. Do not use the word "very". '
        "Also tell me what 17 + 25 is, in digits, before any other number."
    )


# --- splits and determinism ---


def test_questions_disjoint_and_unprefixed():
    questions = [q for split in SPLITS for q in v.QUESTIONS[split]]
    assert len(questions) == len(set(questions)) == len(v.SPLIT_OF_QUESTION)
    assert all(not a.startswith(b + " ") for a in questions for b in questions)
    assert all(not any(ch.isdigit() for ch in q) for q in questions)  # no number to confuse the arithmetic rule
    assert len(v.QUESTIONS["train"]) >= 50 and min(len(v.QUESTIONS[s]) for s in ("validation", "test")) >= 10


def test_splits_disjoint_and_sized():
    texts = {split: {p.text for p in v.make_prompts(3000, split, seed=0)} for split in SPLITS}
    assert all(len(t) == 3000 for t in texts.values())  # thousands of distinct prompts per split
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    for split, group in texts.items():
        assert {v.split_of(t) for t in group} == {split}


def test_deterministic():
    assert v.make_prompts(200, "test", seed=7) == v.make_prompts(200, "test", seed=7)
    assert v.make_prompts(200, "test", seed=7) != v.make_prompts(200, "test", seed=8)
    first = v.make_prompts(50, "train", seed=0)
    assert [p.text for p in first[:10]] == [p.text for p in v.make_prompts(10, "train", seed=0)]  # a prefix


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        v.make_prompts(3, "dev", seed=0)


# --- the gold reward ---


def test_satisfying_answer_meets_everything(sample):
    for prompt in sample:
        answer = prompt.answer_text
        assert v.constraint_results(prompt, answer) == [True] * len(prompt.constraints), (prompt.text, answer)
        assert v.gold_reward(prompt, answer) == 1.0 and v.gold_reward(prompt.text, answer) == 1.0


def test_violating_answer_scores_zero(sample):
    violating = " ".join(["WORD"] * 200 + list(v.AVOIDED_WORDS))  # breaks every kind at once
    for prompt in sample:
        assert v.gold_reward(prompt, violating) == 0.0


def test_no_word_scores_zero(sample):
    for prompt in sample[:50]:
        for response in ["", "  \n\t", "😀 🍮", "- \n- ", "!?"]:
            assert v.gold_reward(prompt, response) == 0.0


def test_reward_in_unit_interval(sample):
    rng = random.Random(0)
    pieces = [*ADVERSARIAL, "42", "- water\n- good", "Hope this helps.", "hope this helps.", "x " * 150]
    for prompt in sample[::4]:
        for _ in range(5):
            response = "\n".join(rng.sample(pieces, rng.randint(1, 4)))
            reward = v.gold_reward(prompt, response)
            assert 0.0 <= reward <= 1.0
            assert reward * len(prompt.constraints) == pytest.approx(round(reward * len(prompt.constraints)))


def test_partial_credit():
    prompt = v.VerifiablePrompt(
        "Describe a good breakfast.",
        (v.Constraint("keyword", ("bread",)), v.Constraint("lowercase", ()), v.Constraint("bullets", (2,))),
    )
    assert v.gold_reward(prompt, "- fresh bread\n- eggs") == 1.0
    assert v.gold_reward(prompt, "- Fresh bread\n- eggs") == pytest.approx(2 / 3)
    assert v.gold_reward(prompt, "Fresh bread and eggs") == pytest.approx(1 / 3)
    assert v.gold_reward(prompt, "Eggs.") == 0.0
    assert v.gold_reward(prompt.text, "- fresh bread\n- eggs") == 1.0


def test_huge_answer_is_graded(sample):
    for prompt in sample[:20]:
        assert 0.0 <= v.gold_reward(prompt, HUGE) <= 1.0
        assert v.gold_reward(prompt, HUGE + "\n" + prompt.answer_text) <= 1.0


# --- the data preset ---


def test_prompt_preset():
    preset = PROMPT_PRESETS["verifiable"]
    prompts = preset.prompts("validation", 16, seed=1)
    assert prompts == v.make_prompts(16, "validation", seed=1)
    assert all(isinstance(p.text, str) and preset.gold_reward(p.text, p.answer_text) == 1.0 for p in prompts)
    assert preset.parse(prompts[0].text) == prompts[0]
    with pytest.raises(ValueError, match="split"):
        preset.prompts("dev", 4, seed=0)
    gym = PROMPT_PRESETS["gym"]
    (gym_prompt,) = gym.prompts("test", 1, seed=0)
    assert gym.gold_reward(gym_prompt.text, gym_prompt.answer_text) == 1.0
    with pytest.raises(ValueError):
        preset.parse(gym_prompt.text)
    with pytest.raises(ValueError):
        gym.parse(prompts[0].text)


def test_parameter_lists_do_not_clash():
    assert not set(v.KEYWORDS) & set(v.AVOIDED_WORDS)
    for phrase in v.END_PHRASES:
        assert all(v.avoids_word(phrase, word) for word in v.AVOIDED_WORDS), phrase
    assert all(w.isascii() and w.islower() and w.isalpha() for w in (*v.KEYWORDS, *v.AVOIDED_WORDS))


# --- the near miss: reward accuracy's rejected answer ---


def test_a_near_miss_breaks_exactly_the_first_constraint_of_every_prompt(sample):
    kinds = set()
    for prompt in sample:
        broken = v.near_miss_answer(prompt)
        assert broken is not None, prompt.text
        met = v.constraint_results(prompt, broken)
        assert not met[0] and all(met[1:]), (prompt.text, broken)
        assert v.gold_reward(prompt, broken) < v.gold_reward(prompt, prompt.answer_text) == 1.0
        kinds.add(prompt.constraints[0].kind)
    assert kinds == set(v.CONSTRAINTS)  # every kind's edit was exercised


def test_a_near_miss_of_an_end_phrase_prompt_never_ends_with_the_phrase():
    prompt = v.VerifiablePrompt("Suggest a plan for a lazy Sunday.", (v.Constraint("end_phrase", ("That is all.",)),))
    assert not v.ends_with_phrase(v.near_miss_answer(prompt), "That is all.")


# --- an own answer repaired by program: the real-text teacher's chosen answers ---

OWN_ANSWERS = [
    "Spend a sunny morning with a glass of water, enjoying the sun. It is really very nice and good. 1. Walk 2. Swim",
    "- a first point\n- a second point\nThat is all.",
    "Crème brûlée 🍮 中文 ÉTÉ",
    "OK " * 300,
]


def test_a_repaired_answer_meets_every_constraint_or_is_none(sample):
    repaired = 0
    for prompt in sample:
        for answer in [*OWN_ANSWERS, *ADVERSARIAL]:
            fixed = v.repaired_answer(prompt, answer)
            if fixed is not None:
                assert v.gold_reward(prompt, fixed) == 1.0, (prompt.text, answer, fixed)
                repaired += 1
    assert repaired > 0.9 * len(sample) * len(OWN_ANSWERS)  # a text with words is almost always repairable


def test_a_repaired_answer_keeps_the_models_own_words_where_the_constraints_allow():
    prompt = v.VerifiablePrompt(
        "Describe a friendly neighbour.",
        (
            v.Constraint("bullets", (2,)),
            v.Constraint("avoid_word", ("very",)),
            v.Constraint("end_phrase", ("Take care.",)),
        ),
    )
    fixed = v.repaired_answer(prompt, "She waves every morning. She is very kind to the children.")
    assert fixed == "- She waves every morning.\n- She is kind to the children.\nTake care."
    cut = v.VerifiablePrompt("Describe a friendly neighbour.", (v.Constraint("max_words", (20,)),))
    assert v.repaired_answer(cut, "word " * 50) == " ".join(["word"] * 20)
    assert v.repaired_answer(cut, "") is None  # nothing to keep, nothing to say
