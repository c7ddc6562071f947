"""Experiment: whole gym builds with another judge design or world, measured by the gym's own report.

``experiments/gym_judge.py`` continues training one built teacher on judging rows; this script builds a whole
variant gym (reference teacher, DPO teacher, student) under its own cache key with the real builder and prints
``gym_report`` for it, so a variant is judged by exactly the gym report's checks. Variants:

* ``v1``: the earlier default gym (``build.DEFAULT_V1``: judge options listed after their letter); every variant
  changes that gym, so its numbers below rebuild as measured;
* ``restate``: the judge is trained on the restated layout with per-option verdict supervision
  (``judge_layout="restate"``, ``judge_verdicts=True``), 1500 teacher steps with 20k judging rows of 1–4 options;
* ``lexical``: ``restate`` in a world whose student is competent at the tasks but noisy in style — its errors are
  mostly filler and harmful words, which the judge's verdicts learn first — and whose judging rows lean the same way;
* ``lexical-gap``: ``lexical`` with a student whose favourite answer is the frequent filler phrasing, so its greedy
  gold stays ≥ 0.15 below the teacher's;
* ``running``: ``lexical-gap`` with each option bracketed by its letter and closed by "best", where the teacher also
  learns the letter of the best option so far (``judge_running_best``): the selection is supervised at every option;
* ``judge``: ``running`` with finer verdicts (round(19 · gold)), 2000 teacher steps and judging rows drawn like the
  student's answers — the first variant whose MCQ in the paper's single random order ranks better than the likelihood.
  With 1500 teacher steps it is the default gym (``build.JUDGE_WORLD``; ``judge --set
  teacher_steps=1500`` has the default's cache key).

``--set name=value`` overrides any ``GymConfig`` field (the value is JSON: ``--set seed=1 --set teacher_steps=900``).

    WORKBENCH_THREADS=2 python experiments/gym_world.py lexical-gap      # ~4 min build + ~1 min report, 2 cores

Measured (this script, WORKBENCH_THREADS=1 with two builds side by side; 256 held-out prompts, 4-candidate
student sets; per-set Spearman with gold of the DPO teacher's likelihood / MCQ in random order (the paper) / MCQ
averaged over cyclic orders / PAD's calibrated reward at α = 0.8; greedy gold of DPO teacher / student):

* ``restate``:     0.492 / 0.111 / 0.155 / 0.497; gold 0.941 / 0.471 (the default world's numeric errors: no judge);
* ``lexical``:     0.597 / 0.540 / 0.804 / 0.542; gold 0.952 / 0.926 (student too close to the teacher);
* ``lexical-gap``: 0.622 / 0.350 / 0.758 / 0.412; gold 0.939 / 0.760 (2 threads: build 196 s);
  ``--set 'teacher={"hidden":96,"layers":6,"heads":4,"intermediate":192}'`` (deeper teacher): 0.640 / 0.445 /
  0.712 / 0.454; gold 0.948 / 0.760; ``--set teacher_mcq_rows=40000`` (twice the judging rows): 0.536 / 0.316 /
  0.685 / 0.360; gold 0.884 / 0.764 (the teacher's own answers suffer; the gap check fails);
  ``--set mcq_label_temperature=0.02`` (sharper labels): 0.613 / 0.378 / 0.746 / 0.416; ``--set teacher_lr=0.003``:
  0.382 / 0.209 / 0.441 / 0.250 (teacher gold 0.861); ``--set judge_layout=bracket`` (letter on both sides of each
  option): 0.622 / 0.485 / 0.784 / 0.501, gold 0.941 / 0.760 (seed 1: 0.591 / 0.440 / 0.730 / 0.437); bracket
  with the deeper teacher: 0.640 / 0.473 / 0.724 / 0.487; bracket with 2–4 options (no 1-option rows): 0.626 / 0.169
  / 0.609 / 0.304;
* ``running``: 0.603 / 0.515 / 0.754 / 0.511 (seed 1: 0.612 / 0.592 / 0.786 / 0.571), gold 0.959 / 0.754; 2000
  teacher steps: 0.608 / 0.581 / 0.773 / 0.543 (376 s); without verdicts: 0.584 / 0.032 / 0.302 / 0.385;
  ``--set judge_verdict_scale=19``: 0.605 / 0.584 / 0.788 / 0.546 (seed 1: 0.627 / 0.530 / 0.761 / 0.568).
* ``judge`` (= ``running --set judge_verdict_scale=19 --set teacher_steps=2000 --set judge_mix=…``): **0.630 / 0.659
  / 0.761 / 0.601**, gold 0.961 / 0.883 (reference) / 0.743 — every check of the report passes; ``running --set
  judge_verdict_scale=19 --set teacher_steps=2000`` (seed 0 / seed 1): 0.630 / 0.617 / 0.774 / 0.528 and 0.636 /
  **0.647** / 0.768 / 0.621 (all checks pass); ``judge --set seed=2`` (alone, 2 threads): 0.593 / **0.744** / 0.819
  / 0.616, gold 0.961 / 0.921 / 0.754, all checks pass, build 212.6 s (teacher 186.9 s); ``judge --set seed=2 --set
  teacher_steps=1600`` (alone, 2 threads): 0.613 / **0.771** / 0.792 / **0.648**, gold 0.950 / 0.888 / 0.754, all
  checks pass, **build 173.5 s** — inside the 3-minute budget (seed 0 at 1600 steps: 0.662 / 0.677 / 0.753 / 0.611,
  all checks pass); with 1–8 options per judging row (``--set 'mcq_options=[1,8]'``, seed 2, 1600 steps): 0.555 /
  0.771 / 0.787 / 0.596 on 4-candidate sets, all checks pass, but on 8-candidate sets 0.570 / 0.359 / 0.594, and the
  build takes 289 s (teacher 263 s). Trained on at most 4 options the judge cannot judge 8 (8-candidate sets, seed 2 at
  2000 steps: MCQ 0.018 vs likelihood 0.605 when shown all 8 letters).

Then (same report): judge at 1600 teacher steps, seed 1: 0.597 / 0.550 / 0.759 / 0.518 — the judge loses on one
seed of three; at **1500 teacher steps** it wins on all three: seed 0 0.614 / **0.714** / 0.777 / 0.608 (gold 0.948 /
0.921 / 0.743; build 164 s alone on 2 cores), seed 1 0.594 / **0.740** / 0.817 / 0.625, seed 2 0.580 / **0.664** /
0.786 / 0.572 — the default gym (``build.JUDGE_WORLD``). A judge that knows 4 letters judges 8
candidates in two slices of 4 (``scoring.option_slices``): seed 0 at 1600 steps 0.607 / 0.647 / 0.753 / 0.565, at
1500 steps 0.568 / 0.669 / 0.772 / 0.557 (``--candidates 8``). Batches grouped by length (Trainer's ``group_by_length``
sampler, so answers and judging rows fall in separate batches; 107 s build) ruin the teacher (greedy gold 0.26): it
needs both kinds of rows in every batch.

So in a world of stylistic errors, with the selection supervised at every option, the judge ranks better than the
likelihood even in the paper's single random order; PAD's calibrated reward at α = 0.8 still ranks no better than
the likelihood alone (the two scales mix poorly), which notebook 02's α sweep shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

LEXICAL_JUDGE_MIX = {
    "correct": 0.25,
    "frequent_filler": 0.2,
    "other_filler": 0.2,
    "near_miss": 0.1,
    "wrong": 0.05,
    "harmful": 0.2,
}
COMPETENT_STUDENT = {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128}
RESTATE = dict(
    judge_layout="restate", judge_verdicts=True, teacher_steps=1500, teacher_mcq_rows=20000, mcq_options=(1, 4)
)
VARIANTS: dict[str, dict] = {
    "v1": {},
    "restate": RESTATE,
    "lexical": {
        **RESTATE,
        "judge_mix": LEXICAL_JUDGE_MIX,
        "student": COMPETENT_STUDENT,
        "student_steps": 1500,
        "student_mix": {"correct": 0.25, "frequent_filler": 0.3, "other_filler": 0.2, "harmful": 0.25},
    },
    "lexical-gap": {
        **RESTATE,
        "judge_mix": LEXICAL_JUDGE_MIX,
        "student": COMPETENT_STUDENT,
        "student_steps": 1500,
        "student_mix": {"correct": 0.2, "frequent_filler": 0.45, "other_filler": 0.15, "harmful": 0.2},
    },
}
VARIANTS["running"] = {**VARIANTS["lexical-gap"], "judge_layout": "running", "judge_running_best": True}
# the first variant whose single-order judge beats the likelihood: finer verdicts, longer teacher training,
# and judging rows drawn like the student's answers
VARIANTS["judge"] = {
    **VARIANTS["running"],
    "judge_verdict_scale": 19,
    "teacher_steps": 2000,
    "judge_mix": {"correct": 0.25, "frequent_filler": 0.35, "other_filler": 0.15, "near_miss": 0.05, "harmful": 0.2},
}


def variant_config(name: str, size: str = "default", overrides: dict | None = None):
    """The ``GymConfig`` of a named variant at ``size`` with ``overrides`` on top (a shape may be given as a dict)."""
    from dataclasses import replace

    from workbench.gym.build import DEFAULT_V1, SIZES, ModelShape

    if name not in VARIANTS:
        raise ValueError(f"variant {name!r}; use one of {sorted(VARIANTS)}")
    if size not in SIZES:
        raise ValueError(f"size {size!r}; use one of {sorted(SIZES)}")
    fields = {**VARIANTS[name], **(overrides or {})}
    for shape in ("teacher", "student"):
        if isinstance(fields.get(shape), dict):
            fields[shape] = ModelShape(**fields[shape])
    if "mcq_options" in fields:
        fields["mcq_options"] = tuple(fields["mcq_options"])
    # variants change the gym as it was when they were measured (``DEFAULT_V1``), not today's default
    return replace(DEFAULT_V1 if size == "default" else SIZES[size], **fields)


def run(
    name: str, size: str = "default", overrides: dict | None = None, prompts: int = 256, candidates: int = 4
) -> dict:
    """Build (or load) the variant and return its build seconds and the gym report's measurements."""
    from workbench.gym.build import build_gym
    from workbench.gym.report import gym_report

    config = variant_config(name, size, overrides)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines; stdout carries the JSON only
        gym = build_gym(config=config, progress=False)
        report = gym_report(config=config, n_prompts=prompts, n_candidates=candidates)
    gold = {role: {k: round(v["mean"], 3) for k, v in g.items()} for role, g in report["gold_reward"].items()}
    ranking = {
        role: {
            **{k: round(v["mean"], 3) for k, v in entry.items() if isinstance(v, dict) and "mean" in v},
            "mcq_position_prior": entry["mcq_position_prior"],
        }
        for role, entry in report["ranking_vs_gold"].items()
    }
    return {
        "variant": name,
        "size": size,
        "overrides": overrides or {},
        "cache": str(gym.root),
        "build_seconds": {k: round(v, 1) for k, v in gym.info["seconds"].items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "candidates": candidates,
        "gold_reward": gold,
        "ranking_vs_gold": ranking,
        "checks": report["checks"],
    }


def _override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: write name=value, e.g. seed=1")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--size", default="default", choices=["tiny", "default"])
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a GymConfig field (JSON value)",
    )
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts the report measures on")
    parser.add_argument("--candidates", type=int, default=4, help="student samples per judged set")
    a = parser.parse_args(argv)
    print(json.dumps(run(a.variant, a.size, dict(a.overrides), a.prompts, a.candidates), indent=1))


if __name__ == "__main__":
    main()
