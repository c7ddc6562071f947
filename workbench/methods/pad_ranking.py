"""Ranking agreement of PAD's rewards: Kendall τ of the student's ranking with the teacher's calibrated one and with
gold, and the α sweep of the calibrated reward's agreement with gold (PAD Eq. 9; notebook 02)."""

from __future__ import annotations

import logging
import time

import numpy as np

from workbench.evaluate import mean_kendall_tau
from workbench.metering import unmetered
from workbench.methods.common import (
    gold_of,
    gym_prompts,
)
from workbench.rewards import teacher_rewards
from workbench.sampling import group_responses, sample_responses
from workbench.scoring import avg_logp_rewards

logger = logging.getLogger("workbench.pad")


@unmetered()
def ranking_agreement(
    student,
    student_tok,
    teacher,
    teacher_tok,
    samples,
    *,
    alpha: float,
    mcq_order: str,
    seed: int,
    gold: bool = True,
    backend: str = "hf",
    engine_options: dict | None = None,
) -> dict:
    """Kendall τ of the student's avg-log-lik ranking of its held-out samples with the teacher's calibrated
    ranking, and (gym only) of each with gold."""
    prompts, groups = group_responses(samples)
    n = len(groups[0])
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [y for g in groups for y in g]
    student_scores = avg_logp_rewards(student, student_tok, flat_prompts, flat).view(-1, n).numpy()
    teacher_scores = teacher_rewards(
        teacher,
        teacher_tok,
        prompts,
        groups,
        alpha=alpha,
        order=mcq_order,
        seed=seed,
        backend=backend,
        engine_options=engine_options,
    )["calibrated"].numpy()
    out = {"tau_student_teacher": mean_kendall_tau(student_scores, teacher_scores)}
    if gold:
        gold_scores = np.array([[gold_of(p, y) for y in g] for p, g in zip(prompts, groups)])
        out.update(
            tau_student_gold=mean_kendall_tau(student_scores, gold_scores),
            tau_teacher_gold=mean_kendall_tau(teacher_scores, gold_scores),
        )
    return out


def alpha_sweep(
    teacher_name: str,
    student_name: str,
    alphas,
    *,
    n: int = 4,
    prompts: int = 256,
    seed: int = 0,
    mcq_order: str = "random",
    temperature: float = 0.8,
    max_new_tokens: int = 24,
) -> dict:
    """Rank agreement with gold of the calibrated teacher reward r̂ for each α (PAD Eq. 9, Fig. 5's premise).

    The student's samples and the teacher's two signals are computed once (and cached); each α only mixes
    them. Returns per-α mean per-set Spearman ρ and Kendall τ with gold (± 95% CI over prompt sets), plus the
    timings of the first and of each later α point.
    """
    from workbench.evaluate import mean_spearman
    from workbench.models import load

    t0 = time.perf_counter()
    teacher, teacher_tok = load(teacher_name)
    student, student_tok = load(student_name)
    held_out = gym_prompts("validation", prompts, seed + 7)
    samples = sample_responses(
        student,
        student_tok,
        [p.text for p in held_out],
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        progress=False,
    )
    groups_prompts, groups = group_responses(samples)
    gold = np.array([[gold_of(p, y) for y in g] for p, g in zip(groups_prompts, groups)])
    rows = []
    for i, alpha in enumerate(alphas):
        start = time.perf_counter()
        signals = teacher_rewards(
            teacher, teacher_tok, groups_prompts, groups, alpha=float(alpha), order=mcq_order, seed=seed
        )
        scores = signals["calibrated"].numpy()
        spearman = mean_spearman(scores, gold)
        rows.append(
            {
                "alpha": float(alpha),
                "spearman": spearman,
                "kendall": mean_kendall_tau(scores, gold),
                "seconds": time.perf_counter() - start + (start - t0 if i == 0 else 0.0),
            }
        )
    return {"rows": rows, "n": n, "prompts": prompts, "valid_sets": len(gold) - spearman["skipped_sets"]}
