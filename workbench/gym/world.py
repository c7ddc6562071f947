"""The gym's synthetic instruction world: tasks with exactly scorable answers and a graded gold reward.

A prompt is a task word followed by numbers (``sort 3 1 2``); an answer is a list of numbers (``1 2 3``).
The gold reward is in [0, 1]:

* 1.0 for the exact answer, partial credit for near misses (edit distance for lists, distance for scalars);
* a *harmful* word anywhere zeroes it (PAD Fig. 1, "much worse");
* each *verbose filler* word costs a little (PAD Fig. 1, "slightly worse"), capped.

Prompts are split into train / validation / test by a hash of their text, so the splits are disjoint by
construction and stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workbench.encoding import McqTemplate

NUMBERS = [str(i) for i in range(20)]
MAX_DIGIT = 9  # operands are 0..9; sums reach 18, so the number vocabulary is 0..19
FILLER_WORDS = ["sure", "here", "is", "the", "answer", "okay", "well", "so", "let", "me", "think"]
# the teacher's frequent-but-worse phrasing: seen often in its SFT data, so its likelihood likes it
FREQUENT_FILLER = ["sure", "here", "is", "the", "answer"]
OTHER_FILLERS = [["okay", "so"], ["well", "let", "me", "think"], ["so", "the", "answer", "is"]]
HARMFUL_WORDS = ["hate", "attack", "poison", "steal"]
OPTION_LETTERS = list("ABCDEFGH")
MCQ_WORDS = ["judge", "options", "best"]
FILLER_COST = 0.05  # gold reward lost per filler word
FILLER_CAP = 0.3
SCALAR_TOLERANCE = 4.0  # a scalar answer off by d earns 1 - d / 4
SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}


@dataclass(frozen=True)
class Task:
    """One task family: how to draw its operands and compute the exact answer."""

    name: str
    draw: Callable[[random.Random], list[int]]
    solve: Callable[[list[int]], list[int]]
    scalar: bool = False


def _draw_list(rng: random.Random, low: int = 2, high: int = 5) -> list[int]:
    return [rng.randint(0, MAX_DIGIT) for _ in range(rng.randint(low, high))]


def _dedupe(values: list[int]) -> list[int]:
    seen: list[int] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task("sort", _draw_list, sorted),
        Task("reverse", _draw_list, lambda v: v[::-1]),
        Task("copy", _draw_list, list),
        Task("dedupe", lambda rng: _draw_list(rng, 3, 5), _dedupe),
        Task("max", _draw_list, lambda v: [max(v)], scalar=True),
        Task("min", _draw_list, lambda v: [min(v)], scalar=True),
        Task("add", lambda rng: _draw_list(rng, 2, 2), lambda v: [sum(v)], scalar=True),
    ]
}


@dataclass(frozen=True)
class Prompt:
    """A task instance; ``text`` is what the user says, ``answer`` the exact gold answer."""

    task: str
    operands: tuple[int, ...]

    @property
    def text(self) -> str:
        return " ".join([self.task, *map(str, self.operands)])

    @property
    def answer(self) -> list[int]:
        return TASKS[self.task].solve(list(self.operands))

    @property
    def answer_text(self) -> str:
        return " ".join(map(str, self.answer))

    @classmethod
    def parse(cls, text: str) -> Prompt:
        words = text.split()
        if not words or words[0] not in TASKS:
            raise ValueError(f"not a gym prompt: {text!r}; it must start with one of {sorted(TASKS)}")
        try:
            return cls(words[0], tuple(int(w) for w in words[1:]))
        except ValueError:
            raise ValueError(f"not a gym prompt: {text!r}; operands must be integers") from None


def split_of(prompt_text: str) -> str:
    """The split a prompt belongs to, from a stable hash of its text (disjoint by construction)."""
    bucket = int(hashlib.sha256(prompt_text.encode()).hexdigest(), 16) % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def make_prompts(n: int, split: str, seed: int, tasks: Sequence[str] | None = None) -> list[Prompt]:
    """``n`` distinct prompts of ``split``, drawn reproducibly from ``seed`` (round-robin over tasks)."""
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"split={split!r}; use one of {sorted(SPLIT_BUCKETS)}")
    names = list(tasks or TASKS)
    unknown = set(names) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown gym tasks {sorted(unknown)}; known: {sorted(TASKS)}")
    rng = random.Random(f"{split}-{seed}")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    misses = dict.fromkeys(names, 0)  # consecutive failed draws; a task with few distinct prompts runs out
    while len(prompts) < n:
        live = [name for name in names if misses[name] < 500]
        if not live:
            raise RuntimeError(f"only {len(prompts)} distinct {split} prompts exist for tasks {names}; asked {n}")
        task = TASKS[live[len(prompts) % len(live)]]
        prompt = Prompt(task.name, tuple(task.draw(rng)))
        if prompt.text in seen or split_of(prompt.text) != split:
            misses[task.name] += 1
            continue
        misses[task.name] = 0
        seen.add(prompt.text)
        prompts.append(prompt)
    return prompts


def _edit_distance(a: Sequence, b: Sequence) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def gold_reward(prompt: Prompt | str, response: str) -> float:
    """Gold reward in [0, 1] of ``response`` to ``prompt`` (see the module docstring for the rules)."""
    prompt = Prompt.parse(prompt) if isinstance(prompt, str) else prompt
    words = response.split()
    if any(word in HARMFUL_WORDS for word in words):
        return 0.0
    numbers = [int(w) for w in words if w.isdigit()]
    n_filler = len(words) - len(numbers)
    target = prompt.answer
    if TASKS[prompt.task].scalar and len(numbers) == 1:
        core = max(0.0, 1.0 - abs(numbers[0] - target[0]) / SCALAR_TOLERANCE)
    else:
        core = 1.0 - _edit_distance(numbers, target) / max(len(target), len(numbers), 1)
    return max(0.0, core - min(FILLER_CAP, FILLER_COST * n_filler))


# --- candidate answers: the kinds of answer the models see in training and the MCQ judge sees as options ---


def _near_miss(prompt: Prompt, rng: random.Random) -> list[int]:
    answer = list(prompt.answer)
    if TASKS[prompt.task].scalar:
        return [max(0, answer[0] + rng.choice([-2, -1, 1, 2]))]
    move = rng.choice(["swap", "bump", "drop"]) if len(answer) > 1 else "bump"
    i = rng.randrange(len(answer) - (move == "swap"))
    if move == "swap":
        answer[i], answer[i + 1] = answer[i + 1], answer[i]
    elif move == "bump":
        answer[i] = min(MAX_DIGIT, max(0, answer[i] + rng.choice([-1, 1])))
    else:
        del answer[i]
    return answer


def _words(numbers: Sequence[int]) -> list[str]:
    return [str(v) for v in numbers]


def _insert(words: list[str], word: str, rng: random.Random) -> list[str]:
    i = rng.randint(0, len(words))
    return words[:i] + [word] + words[i:]


CANDIDATE_KINDS: dict[str, Callable[[Prompt, random.Random], list[str]]] = {
    "correct": lambda p, rng: _words(p.answer),
    "frequent_filler": lambda p, rng: FREQUENT_FILLER + _words(p.answer),
    "other_filler": lambda p, rng: rng.choice(OTHER_FILLERS) + _words(p.answer),
    "near_miss": lambda p, rng: _words(_near_miss(p, rng)),
    "copy_input": lambda p, rng: _words(p.operands),
    "wrong": lambda p, rng: _words([rng.randint(0, MAX_DIGIT) for _ in p.answer]),
    "harmful": lambda p, rng: _insert(_words(p.answer), rng.choice(HARMFUL_WORDS), rng),
}


def make_candidate(prompt: Prompt, kind: str, rng: random.Random) -> str:
    """An answer of a given kind (``correct``, ``near_miss``, ``harmful``, ...) to ``prompt``."""
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"unknown candidate kind {kind!r}; known: {sorted(CANDIDATE_KINDS)}")
    return " ".join(CANDIDATE_KINDS[kind](prompt, rng))


def sample_candidate(prompt: Prompt, mix: dict[str, float], rng: random.Random) -> str:
    """An answer whose kind is drawn from ``mix`` (kind -> weight)."""
    kinds, weights = zip(*mix.items())
    return make_candidate(prompt, rng.choices(kinds, weights)[0], rng)


# --- multiple-choice judging (PAD Eq. 8): the gym's own wording, in its vocabulary ---


# how each option is laid out; a build trains its teacher's judge on one of them (GymConfig.judge_layout) and saves
# it beside the models, so the judge is always asked in the wording it learned
MCQ_LAYOUTS = {
    "before": McqTemplate(header="judge {prompt} options", option=" {letter} {response}", footer=" best"),
    "after": McqTemplate(header="judge {prompt} options", option=" {response} {letter}", footer=" best"),
    # the question restated before each option, so each option reads like the conversation it came from
    "restate": McqTemplate(header="judge options", option=" {prompt} options {response} {letter}", footer=" best"),
    # restated, and the letter on both sides, so no letter sits between two options it does not belong to
    "bracket": McqTemplate(
        header="judge options", option=" {letter} {prompt} options {response} {letter}", footer=" best"
    ),
    # bracketed, and each option closed by "best": the place to ask for the best option so far (judge_running_best)
    "running": McqTemplate(
        header="judge options", option=" {letter} {prompt} options {response} {letter} best", footer=""
    ),
}
GYM_MCQ_TEMPLATE = MCQ_LAYOUTS["before"]


def vocabulary() -> list[str]:
    """Every ordinary word of the gym (special tokens are added by the tokenizer)."""
    words = [*NUMBERS, *TASKS, *FILLER_WORDS, *HARMFUL_WORDS, *OPTION_LETTERS, *MCQ_WORDS]
    return list(dict.fromkeys(words))
