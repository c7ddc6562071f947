"""Measure the real-text pair on held-out ``verifiable`` prompts: the teacher's and the student's gold (greedy and
sampled at T = 0.8), the paired teacher − student gap with its interval over prompts, and how often each constraint
kind is met. Every number is computed from the models; nothing is assumed."""

from __future__ import annotations

import time

import numpy as np

from workbench.data.verifiable import CONSTRAINTS, constraint_results, gold_reward, make_prompts
from workbench.evaluate import evaluate_policy, mean_ci
from workbench.methods.common import HELD_OUT_SEED  # the comparison's held-out prompts
from workbench.real_text.store import BASE_MODEL, TEACHER, build_info, find_teacher

MIN_GAP = 0.15  # the gap the pair is built to have (sampled gold, teacher − student)


def constraint_rates(prompts, samples) -> dict[str, float]:
    """Per constraint kind, the share of (sample, constraint of that kind) met."""
    met: dict[str, list[bool]] = {kind: [] for kind in CONSTRAINTS}
    for i, response in zip(samples["prompt_id"], samples["response"]):
        prompt = prompts[i]
        for constraint, ok in zip(prompt.constraints, constraint_results(prompt, response)):
            met[constraint.kind].append(ok)
    return {kind: float(np.mean(v)) for kind, v in met.items() if v}


def pair_report(n_prompts: int = 128, n_samples: int = 4, *, split: str = "test", max_new_tokens: int = 48) -> dict:
    """The pair's measured gold on ``n_prompts`` held-out prompts of ``split`` (JSON-ready)."""
    from workbench.models import load
    from workbench.trainers import set_threads

    set_threads()
    started = time.perf_counter()
    prompts = make_prompts(n_prompts, split, seed=HELD_OUT_SEED)
    texts = [p.text for p in prompts]
    report: dict = {
        "split": split,
        "held_out_prompts": n_prompts,
        "samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "teacher": TEACHER,
        "student": BASE_MODEL,
        "teacher_build": {k: build_info(find_teacher())[k] for k in ("recipe", "key", "dpo_pairs", "seconds")},
        "gold": {},
        "constraint_rates": {},
        "examples": [],
    }
    per_prompt, answers = {}, {}
    for role, name in (("teacher", TEACHER), ("student", BASE_MODEL)):
        model, tokenizer = load(name, device="cpu")
        kw = dict(seed=0, max_new_tokens=max_new_tokens, gold_reward=gold_reward)
        greedy = evaluate_policy(model, tokenizer, prompts, n=1, temperature=0.0, **kw)
        sampled = evaluate_policy(model, tokenizer, prompts, n=n_samples, temperature=0.8, **kw)
        per_prompt[role] = {"greedy": np.array(greedy["per_prompt"]), "T=0.8": np.array(sampled["per_prompt"])}
        report["gold"][role] = {"greedy": greedy["gold"], "T=0.8": sampled["gold"], "length_words": sampled["length"]}
        report["constraint_rates"][role] = constraint_rates(prompts, sampled["samples"])
        answers[role] = list(greedy["samples"]["response"])
    report["teacher_minus_student"] = {
        mode: mean_ci(per_prompt["teacher"][mode] - per_prompt["student"][mode]) for mode in ("greedy", "T=0.8")
    }
    report["examples"] = [
        {"prompt": texts[i], **{f"{role} (greedy)": answers[role][i] for role in answers}} for i in range(4)
    ]
    gap = report["teacher_minus_student"]["T=0.8"]
    report["checks"] = {
        "teacher_gt_student_sampled": gap["mean"] - gap["ci95"] > 0,
        f"gap_ge_{MIN_GAP}": gap["mean"] >= MIN_GAP,
    }
    report["seconds"] = time.perf_counter() - started
    return report
