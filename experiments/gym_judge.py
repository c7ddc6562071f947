"""Experiment: can the gym teacher learn an MCQ judge that ranks student samples better than its likelihood?

Continues training a built gym teacher on multiple-choice judging rows only, in a chosen layout, then measures on
held-out (test-split) prompts the per-set Spearman correlation with gold and the top-1 accuracy of its MCQ selection
(PAD Eq. 8, random option order as in the paper) on (a) option sets drawn like its training rows and (b) the
student's own T = 0.8 samples, next to the teacher's likelihood reward (Eq. 7) on (b). Prints one JSON object.

Layouts (``workbench.gym.world.MCQ_LAYOUTS``; how each option is written; the answer is one letter):

* ``before``:  ``judge {prompt} options A 1 2 3 B ... best`` (the default gym's template);
* ``after``:   ``judge {prompt} options 1 2 3 A ... best``;
* ``restate``: ``judge options {prompt} options 1 2 3 A {prompt} options ... best`` (question before each option).

``--verdicts`` adds per-option supervision: the position of each option's letter (``after``/``restate``) is also
trained to predict the option's gold reward as a digit, round(9 · gold), so every option gets a local label
(``workbench.gym.build.VerdictCollator``, the builder's own). ``--reference`` puts an answer into the question
(reference-guided judging: the gold answer in training rows, the teacher's own greedy answer when measured);
``--random-letters`` labels a training row's options with a random ordered subset of A–H, so the answer letter must
be copied from the context; ``--argmax-fraction F`` adds F warm-up rows per judging row that train the selection
step alone (bare digits as options, the answer is the largest one's letter).

    python experiments/gym_judge.py --layout restate --verdicts --options 4 4 --steps 3000   # ~8 min, 1 thread

Measured (the v1 default gym; the built teacher's likelihood on student sets: 0.49), MCQ ρ on judge-mix / student
sets: before or after, 600 steps: ≈ 0 / ≈ 0 (the letter loss stays at chance); after + verdicts, 3000 steps:
0.45 / 0.14; restate + verdicts, 3000 steps: 0.60–0.66 / 0.29–0.34 (two data draws) — this command printed
0.605 / 0.292 with top-1 accuracy 0.75 / 0.62 in 498 s, and judging-only training cut the teacher's own likelihood
ρ on student sets to 0.18.
Further (1 thread, 1000 or 600 steps, judge-mix / student sets): ``--layout after --verdicts --reference`` 0.14 /
−0.04, ``--layout before --reference`` 0.13 / −0.03 (1000 steps: a reference does not break the plateau);
``--layout restate --verdicts --options 1 4`` 0.14 / 0.08; ``+ --random-letters`` 0.08 / 0.04; ``+ --argmax-fraction
1`` 0.16 / 0.07 (600 steps). The selection step alone is easy: on argmax rows only the same teacher picks the largest
digit's letter with accuracy 0.85 after 200 steps and 1.0 after 700. What stalls is picking by verdicts the model
computes itself: a whole restate + verdicts build (experiments/gym_world.py ``restate``) predicts its verdicts with
r = 0.71 to gold (harmful → 0 exactly) while its letter choice hardly depends on the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from dataclasses import replace

import numpy as np

from workbench.gym.world import MCQ_LAYOUTS


def judge_rows(
    template,
    prompts,
    options: tuple[int, int],
    rng: random.Random,
    label_temperature: float = 0.1,
    reference: bool = False,
    random_letters: bool = False,
):
    """MCQ rows over judge-mix candidates: the label letter ~ softmax(gold / T) (as the gym build), plus each
    option's gold reward as a digit 0..9 (``verdicts``)."""
    from workbench.gym.build import JUDGE_MIX
    from workbench.gym.rows import label_weights
    from workbench.gym.world import gold_reward, sample_candidate

    rows = {"prompt": [], "response": [], "verdicts": []}
    for prompt in prompts:
        k = rng.randint(*options)
        candidates = [sample_candidate(prompt, JUDGE_MIX, rng) for _ in range(k)]
        golds = [gold_reward(prompt, c) for c in candidates]
        label = rng.choices(range(k), label_weights(golds, label_temperature))[0]
        question = f"{prompt.text} answer {prompt.answer_text}" if reference else prompt.text
        shown = template
        if random_letters:  # a random ordered subset of the letters: the answer must be copied from the context
            shown = replace(template, letters=tuple(sorted(rng.sample(template.letters, k))))
        rows["prompt"].append(shown.render(question, candidates))
        rows["response"].append(shown.letters[label])
        rows["verdicts"].append([round(9 * g) for g in golds])
    return rows


def argmax_rows(n: int, options: tuple[int, int], rng: random.Random) -> dict:
    """Warm-up rows for the selection step alone: each option is a bare digit and the answer is the letter of the
    largest (ties: the first); its verdict is the digit itself, so each letter position predicts a digit exactly as
    in the judge rows (``judge options 7 A 3 B 9 C best`` -> ``C``)."""
    from workbench.gym.world import OPTION_LETTERS

    rows = {"prompt": [], "response": [], "verdicts": []}
    for _ in range(n):
        values = [rng.randint(0, 9) for _ in range(rng.randint(*options))]
        rows["prompt"].append("judge options" + "".join(f" {v} {l}" for v, l in zip(values, OPTION_LETTERS)) + " best")
        rows["response"].append(OPTION_LETTERS[values.index(max(values))])
        rows["verdicts"].append(values)
    return rows


def selection_quality(model, tokenizer, template, prompts, groups, questions=None) -> dict:
    """Mean per-set Spearman with gold and top-1 accuracy of the MCQ selection (random order, PAD)."""
    from workbench.cache import StageCache
    from workbench.evaluate import mean_spearman
    from workbench.gym.world import gold_reward
    from workbench.scoring import mcq_selection_logprobs

    golds = np.array([[gold_reward(p, r) for r in g] for p, g in zip(prompts, groups)])
    questions = questions or [p.text for p in prompts]
    log_sel = mcq_selection_logprobs(
        model, tokenizer, questions, groups, template=template, order="random", cache=StageCache(enabled=False)
    ).numpy()
    top1 = np.mean([golds[i, log_sel[i].argmax()] == golds[i].max() for i in range(len(groups))])
    return {"spearman": round(mean_spearman(log_sel, golds)["mean"], 3), "top1_accuracy": round(float(top1), 3)}


def run(
    size: str = "default",
    layout: str = "restate",
    verdicts: bool = True,
    steps: int = 3000,
    lr: float = 1e-3,
    options: tuple[int, int] = (4, 4),
    train_rows: int = 12000,
    test_prompts: int = 256,
    seed: int = 0,
    reference: bool = False,
    random_letters: bool = False,
    argmax_fraction: float = 0.0,
) -> dict:
    import datasets
    from transformers import Trainer

    from workbench.cache import StageCache
    from workbench.evaluate import mean_spearman
    from workbench.gym.build import JUDGE_MIX
    from workbench.gym.rows import VerdictCollator
    from workbench.gym.world import gold_reward, make_prompts, sample_candidate
    from workbench.models import load
    from workbench.sampling import group_responses, sample_responses
    from workbench.scoring import avg_logp_rewards
    from workbench.trainers import ResponseCollator, set_threads, training_arguments

    if layout not in MCQ_LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {sorted(MCQ_LAYOUTS)}")
    template = MCQ_LAYOUTS[layout]
    if verdicts and not template.letter_closes_option:  # the rule GymConfig applies to judge_verdicts
        raise ValueError(
            "--verdicts needs a layout whose letter closes the option: 'after', 'restate', 'bracket' or 'running'"
        )
    set_threads()
    prefix = "gym-" if size == "default" else f"gym-{size}-"
    teacher, tokenizer = load(prefix + "teacher-dpo", device="cpu")
    student, student_tok = load(prefix + "student", device="cpu")
    rng = random.Random(seed)
    rows = judge_rows(
        template,
        make_prompts(train_rows, "train", seed=seed + 77),
        options,
        rng,
        reference=reference,
        random_letters=random_letters,
    )
    if argmax_fraction:
        extra = argmax_rows(round(train_rows * argmax_fraction), options, rng)
        rows = {k: rows[k] + extra[k] for k in rows}
    started = time.perf_counter()
    if steps:
        args = training_arguments(steps=steps, lr=lr, batch_size=32, seed=seed, progress=False)
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines; stdout carries the JSON only
            Trainer(
                model=teacher,
                args=args,
                train_dataset=datasets.Dataset.from_dict(rows),
                data_collator=VerdictCollator(tokenizer, template.letters) if verdicts else ResponseCollator(tokenizer),
            ).train()
    teacher.eval()
    seconds = time.perf_counter() - started
    prompts = make_prompts(test_prompts, "test", seed=1000)
    rng = random.Random(seed + 5)
    judge_sets = [[sample_candidate(p, JUDGE_MIX, rng) for _ in range(4)] for p in prompts]
    off = StageCache(enabled=False)
    samples = sample_responses(
        student, student_tok, [p.text for p in prompts], n=4, temperature=0.8, seed=1, cache=off, progress=False
    )
    _, student_sets = group_responses(samples)
    questions = None
    if reference:  # the teacher's own greedy answer is the reference (never the gold answer)
        greedy = sample_responses(
            teacher, tokenizer, [p.text for p in prompts], n=1, temperature=0.0, seed=0, cache=off, progress=False
        )
        questions = [f"{p.text} answer {r}" for p, r in zip(prompts, greedy["response"])]
    flat = [r for g in student_sets for r in g]
    likelihood = (
        avg_logp_rewards(teacher, tokenizer, [p.text for p in prompts for _ in range(4)], flat, cache=off)
        .view(-1, 4)
        .numpy()
    )
    golds = np.array([[gold_reward(p, r) for r in g] for p, g in zip(prompts, student_sets)])
    return {
        "size": size,
        "layout": layout,
        "verdicts": verdicts,
        "steps": steps,
        "lr": lr,
        "options": list(options),
        "train_seconds": round(seconds, 1),
        "reference": reference,
        "random_letters": random_letters,
        "argmax_fraction": argmax_fraction,
        "judge_mix_sets": selection_quality(teacher, tokenizer, template, prompts, judge_sets, questions),
        "student_sets": selection_quality(teacher, tokenizer, template, prompts, student_sets, questions),
        "student_sets_likelihood_spearman": round(mean_spearman(likelihood, golds)["mean"], 3),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default", choices=["tiny", "default"])
    parser.add_argument("--layout", default="restate", choices=sorted(MCQ_LAYOUTS))
    parser.add_argument("--verdicts", action="store_true", help="per-option verdict supervision")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--options", type=int, nargs=2, default=(4, 4), metavar=("MIN", "MAX"))
    parser.add_argument("--train-rows", type=int, default=12000)
    parser.add_argument("--test-prompts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="reference-guided judging: the question carries an answer (gold in training rows, the "
        "teacher's own greedy answer when measured)",
    )
    parser.add_argument(
        "--random-letters",
        action="store_true",
        help="training rows label their options with a random ordered subset of the letters",
    )
    parser.add_argument(
        "--argmax-fraction",
        type=float,
        default=0.0,
        help="add this many argmax warm-up rows per judge row (bare digits, pick the largest)",
    )
    a = parser.parse_args(argv)
    print(
        json.dumps(
            run(
                a.size,
                a.layout,
                a.verdicts,
                a.steps,
                a.lr,
                tuple(a.options),
                a.train_rows,
                a.test_prompts,
                a.seed,
                a.reference,
                a.random_letters,
                a.argmax_fraction,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
