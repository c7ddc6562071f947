"""The comparison's REPORT.md (table, τ's sets, gold per task, claims ledger, against the best, sampling settings,
learning curves) and its command line."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from workbench.compare.claims import (
    claims_ledger,
    format_ledger,
    format_ledger_across,
    format_margins,
    ledger_across_worlds,
    parse_worlds,
)
from workbench.compare.conditions import (
    MAIN,
    at_setting,
    at_world_rates,
    budget_matched,
    curve_frame,
    curve_summary,
    format_curve_summary,
    format_gold_by_setting,
    format_student_vs_teacher,
    gold_by_setting,
    student_vs_teacher,
    teacher_matched,
    world_of,
)
from workbench.compare.evaluation import held_out_tasks
from workbench.compare.harness import compare, load_records, load_references, mixed_builds
from workbench.compare.runs import (
    BUDGET_BATCH,
    BUDGET_STEPS,
    DEFAULT_RUNS_DIR,
    DEFAULT_SEEDS,
    REAL_TEXT_RUNS_DIR,
    REAL_TEXT_SEEDS,
    REFERENCE_ROWS,
    SUITES,
    TEACHER_BUDGET,
    WORLD_LR,
    Variant,
    real_text_overrides,
    setting_of,
    suite,
)
from workbench.compare.stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, LEVEL
from workbench.compare.tables import (
    SUPERVISION,
    against_best,
    cost_and_ceiling,
    format_against_best,
    format_cost_and_ceiling,
    format_gold_per_task,
    format_table,
    format_tau_sets,
    gold_per_task,
    summarize,
    supervision_of,
    tau_sets,
)

logger = logging.getLogger("workbench.compare")

TASK_TABLE_METHODS = 5  # the per-task table's rows: the references and this many table methods, best mean gold first


TOKENS_NOTE = (
    "Tokens (mean over the {runs} runs that counted them, `workbench.metering`): token positions the run's training "
    "forwarded, padding included, through the student-sized models under gradient (training steps) and without "
    "(sampling, scoring, a DPO reference), and through the teachers (samples, scores, logits, MCQ judgements); the "
    "run's own held-out evaluation is not counted. A generation step forwards one position per sequence. Work a "
    "stage-cache hit stands for is counted as when it was computed, so a count does not depend on the cache. A run "
    "whose count is incomplete (a hit on an entry written before entries kept their cost, or a vLLM engine) shows —; "
    "`python -m workbench.compare --suite cost` counts every table method from an empty cache."
)


def _setting_text(overrides: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in overrides.items())


def _matched_section(title: str, text: str, matched: list[dict], references: dict, by_group: bool = False) -> list[str]:
    """A REPORT section of runs matched on one budget: their costs and ceiling shares, then each against the best
    (``by_group``: against the best of its supervision group, each group on its own)."""
    lines = [f"## {title}", "", text, "", format_cost_and_ceiling(cost_and_ceiling(matched, references)), ""]
    if not by_group:
        return lines + [format_against_best(against_best(matched)), ""]
    for group in SUPERVISION.values():
        members = [r for r in matched if supervision_of(r["label"], r["metrics"].get("config")) == group]
        if len({r["label"] for r in members}) > 1:
            lines += [f"### Against the best {group} method", "", format_against_best(against_best(members)), ""]
    return lines


def report(runs_dir: str | Path = DEFAULT_RUNS_DIR, name: str | None = None) -> str:
    """The saved runs of ``runs_dir`` as one markdown page, computed from the records alone (nothing is trained):
    the builds they were made on, the table of every label (variants too), the sets each Kendall τ is over, gold per
    gym task for the references and the best few, the claims ledger with its margins, every method against the
    best, and the supervision groups with their budgets, gold-ceiling shares and bests (``name``: the folder as the
    page names it, default ``runs_dir`` as given). ``python -m workbench.compare --report`` prints it;
    ``results/compare*/REPORT.md`` are its output for the committed records (a test keeps them equal), so a number
    quoted from them can be traced to its records."""
    records, references = load_records(runs_dir), load_references(runs_dir)
    if not records:
        raise FileNotFoundError(
            f"no run records under {runs_dir} (<label>/seed<k>/record.json): run "
            f"python -m workbench.compare --runs-dir {runs_dir} first"
        )
    seeds = sorted({r["seed"] for r in records})
    builds = sorted({json.dumps(r.get("models"), sort_keys=True) for r in records})
    weights = sorted({json.dumps(r.get("weights"), sort_keys=True) for r in [*records, *references.values()]})
    concurrent = sorted({r.get("concurrent_runs") or 1 for r in records})
    prompts = sorted({len(r["harness"].get("per_prompt", [])) for r in records})
    name = name or Path(runs_dir).as_posix()
    lines = [
        f"# The saved comparison in `{name}`",
        "",
        f"{len(records)} runs of {len({r['label'] for r in records})} labels, seeds {', '.join(map(str, seeds))}"
        + (f", each scored on the same {' / '.join(map(str, prompts))} held-out prompts" if any(prompts) else "")
        + f". Generated by `python -m workbench.compare --report --runs-dir {name}` from the records alone.",
        "",
        f"Intervals: a label's metric, mean ± {LEVEL:.0%} CI over seeds (t interval, on these prompts); a difference "
        f"between labels (the ledger, against the best), paired bootstrap over seeds and prompts ({LEVEL:.0%} "
        f"percentile interval, B = {BOOTSTRAP_SAMPLES}, seed {BOOTSTRAP_SEED}), or the t interval over seeds for wall "
        "time (one value per run).",
        "",
        "Models (gym builds, or the real-text teacher and student): " + "; ".join(f"`{b}`" for b in builds),
        "",
        "Weights (`workbench.models.weights_fingerprint`): "
        + "; ".join("not noted (records made before records noted them)" if w == "null" else f"`{w}`" for w in weights),
        "",
    ]
    warning = mixed_builds(records, references)
    if warning:
        lines += [f"**Warning**: {warning}.", ""]
    if concurrent != [1]:
        lines += [
            f"Runs at a time (`concurrent_runs`): {', '.join(map(str, concurrent))}; a run timed beside "
            "another is slower than alone (the cold-cache runs of the cost claims always run alone).",
            "",
        ]
    ledger, best = claims_ledger(records, references), against_best(records)
    costs = cost_and_ceiling(records, references)
    lines += [
        "## Every label",
        "",
        format_table(summarize(records, references)),
        "",
        "## Kendall τ: the sets each mean is over",
        "",
        "A τ column of the table is a mean over the held-out prompts whose samples both rankings order: a set where "
        "one scoring gives every sample the same score is skipped. The counts come from the record (`tau_sets`) or, "
        "for a record made before records noted them, from the method's own evaluation of the same τ; not noted "
        "where neither holds them.",
        "",
        format_tau_sets(tau_sets(records)),
        "",
    ]
    on_gym = "dataset" not in (records[0].get("models") or {})
    if len(prompts) == 1 and prompts[0] and on_gym:
        split = (records[0].get("models") or {}).get("split", "test")
        tasks = held_out_tasks(prompts[0], split)
        labels = [*REFERENCE_ROWS, *best["method"].head(TASK_TABLE_METHODS)]
        lines += [
            "## Gold per gym task",
            "",
            f"The references and the {TASK_TABLE_METHODS} best table methods: mean gold over seeds and the task's "
            "held-out prompts (their number in parentheses); no intervals: a few prompts a task.",
            "",
            format_gold_per_task(gold_per_task(records, references, tasks, labels), tasks),
            "",
        ]
    measured = int(ledger["p"].notna().sum())
    lines += [
        "## The claims ledger (paired by seed and prompt)",
        "",
        "p: the test the verdict reads (below 0.05 where the interval decides the claim) — two-sided against 0 for "
        "greater / less, against the margin for at most, TOST against ±margin for equivalent (each side at 2.5%). "
        f"Holm p: Holm's adjustment over the {measured} measured claims; after Holm, a verdict stands where Holm p < "
        "0.05, else inconclusive.",
        "",
        format_ledger(ledger),
        "",
        "Margins: a rule per claim that reads only the reference evaluations (the teacher's and the initial "
        "student's gold on the claim's seeds and prompts), never the runs the claim compares; the value and reason:",
        "",
        format_margins(ledger),
        "",
        "## Against the best mean (table methods, paired by seed and prompt)",
        "",
        format_against_best(best),
        "",
        "## Supervision, budget and the gold ceiling",
        "",
        "Teacher only: the method learns from the teacher's samples, scores or logits alone. Gold-supervised: it also "
        "trains on answers the gold reward chose or ranked (on the gym: gold-ranked preference pairs, gold answers "
        "for KD) — a supervision the teacher-only methods never see, so the two groups are read apart. Budgets "
        "differ too: optimizer steps (rounds and stages counted) and examples per step (prompts, pairs or "
        "sequences: `batch_size` × `gradient_accumulation_steps`). At the ceiling: the share of held-out prompts "
        f"whose every sample scored gold 1 (mean ± {LEVEL:.0%} CI over seeds), where a method can gain no more.",
        "",
        format_cost_and_ceiling(costs),
        "",
    ]
    if costs["cost_runs"].notna().any():
        lines += [TOKENS_NOTE.format(runs=int(costs["cost_runs"].sum())), ""]
    for group in SUPERVISION.values():
        members = [r for r in records if supervision_of(r["label"], r["metrics"].get("config")) == group]
        if len({r["label"] for r in members if "[" not in r["label"]}) > 1:
            lines += [
                f"### Against the best {group} method",
                "",
                format_against_best(against_best(members)),
                "",
            ]
    by_setting = gold_by_setting(records, references)
    if not by_setting.empty:
        lines += [
            "## Sampling temperature: every setting, and the student against its teacher",
            "",
            "Gold of the same runs scored greedily (one answer a prompt) and by sampling at each temperature (the "
            f"table's setting is {MAIN}), mean ± {LEVEL:.0%} CI over seeds; each row's best setting in bold. Table "
            "methods scored at every setting only.",
            "",
            format_gold_by_setting(by_setting),
            "",
            "The best student against the teacher at each setting, then each side at its best setting (the verdict "
            "the ledger's `student>teacher@best-settings` reads): paired bootstrap over seeds × prompts, p two-sided, "
            "Holm over these rows.",
            "",
            format_student_vs_teacher(student_vs_teacher(records, references)),
            "",
            "### Against the best, every method decoded greedily",
            "",
            format_against_best(against_best(at_setting(records, "greedy"))),
            "",
        ]
    matched = budget_matched(records)
    if {r["label"] for r in matched} >= {r["label"] for r in records if "[" not in r["label"]}:  # the budget suite ran
        lines += _matched_section(
            f"Matched budgets: every method at {BUDGET_STEPS} optimizer steps × {BUDGET_BATCH} examples",
            "The table methods' own budgets differ (above); here each method's runs at one budget: its own where its "
            "harness settings are that budget, else its `--suite budget` variant (ADPA+'s two stages share the "
            "steps). Learning rates stay those chosen at each method's own budget. Teacher calls are not matched.",
            matched,
            references,
        )
    matched_teacher = teacher_matched(records)
    if matched_teacher:
        lines += _matched_section(
            "Matched teacher calls: every method at SeqKD's and PLaD's teacher budget",
            f"SeqKD and PLaD use the teacher only to sample answers to their {setting_of('seqkd', 'train_prompts')} "
            "training prompts. The other methods' teacher work (`results/compare_cost/REPORT.md`) grows with their "
            "training prompts (PAD, PRO, SimPO and DPO score every student sample; the DCKD / ADPA family caches "
            "teacher top-k once per sequence) or with their optimizer steps (KD and reverse KL forward the teacher "
            "on every training batch). Here each is scaled in that one setting (`--suite teacher-budget`, "
            "`workbench.compare.runs.TEACHER_BUDGET`: "
            + ", ".join(f"{m} {_setting_text(o)}" for m, o in TEACHER_BUDGET.items())
            + ") to SeqKD's teacher positions, learning rates and other settings their own; SFT uses no teacher. "
            "The teacher tokens column shows what the runs counted; each supervision group against its own best.",
            matched_teacher,
            references,
            by_group=True,
        )
    rated = at_world_rates(records)
    if rated:
        rechosen = {m: lr for world in {world_of(r) for r in records} for m, lr in WORLD_LR.get(world, {}).items()}
        lines += _matched_section(
            "At the learning rates chosen on this world",
            "The table runs every method at the learning rate chosen on the default world's validation prompts. "
            "Re-chosen on this world's own (`experiments/gym_tune.py --gym`, `results/gym_tune/`), the methods "
            "whose rate gained beyond the tuning seeds' noise run here at it (`--suite world-lr`, "
            "`workbench.compare.runs.WORLD_LR`: "
            + ", ".join(f"{m} lr = {lr:g}" for m, lr in sorted(rechosen.items()))
            + "), every other method as in the table.",
            rated,
            references,
        )
    curves = curve_summary(records)
    if not curves.empty:
        frame = curve_frame(records)
        curve_prompts = sorted({r["harness"]["curve"]["prompts"] for r in records if r["harness"].get("curve")})
        lines += [
            "## Validation learning curves",
            "",
            f"Each run's gold on {' / '.join(map(str, curve_prompts))} validation prompts (the table's temperature) "
            "during training, every few optimizer steps and at the end (steps counted across rounds and stages); the "
            f"points are drawn under a forked random state, so the runs trained as without them. Mean over seeds "
            f"({len(frame)} points in all); the figure: `workbench.plots.plot_learning_curves`.",
            "",
            format_curve_summary(curves),
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the method comparison and the claims ledger on the gym")
    parser.add_argument(
        "--suite", default=None, help=" | ".join(SUITES) + " (default: full; real-text with --real-text)"
    )
    parser.add_argument("--methods", nargs="*", help="method names instead of a suite")
    parser.add_argument("--seeds", nargs="*", type=int, default=None, help="default 0-9 (0-2 with --real-text)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process (the cold-cache timing runs still run alone)",
    )
    parser.add_argument(
        "--across",
        nargs="+",
        metavar="WORLD=DIR",
        default=None,
        help="print the claims ledger of several runs folders side by side and stop, e.g. "
        "default=results/compare world1=results/compare_world1",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the saved runs of --runs-dir as markdown (table, ledger, against the best) and "
        "stop: nothing is trained",
    )
    parser.add_argument(
        "--gym",
        default=None,
        metavar="SIZE",
        help="another gym build's presets, e.g. world1 (the default recipe built with seed 1): teacher "
        "gym-SIZE-teacher-dpo, student gym-SIZE-student; records in <runs-dir>_SIZE unless "
        "--runs-dir is given",
    )
    parser.add_argument(
        "--real-text",
        action="store_true",
        help="real text instead of the gym: the verifiable prompt set, the DPO-trained SmolLM2 teacher and SmolLM2 "
        "as the student (python -m workbench.real_text build first), at the sizes of "
        "workbench.compare.runs.real_text_overrides; records in results/compare_real_text unless --runs-dir is given",
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=None,
        metavar="N",
        help="score every run and reference on N held-out prompts instead of 128 (the same task round-robin, so "
        "the first 128 are the default set); records in <runs-dir>_testN unless --runs-dir is given",
    )
    args = parser.parse_args(argv)
    if args.real_text and args.gym:
        parser.error("--real-text and --gym name different worlds; give one")
    named_dir = args.runs_dir != DEFAULT_RUNS_DIR  # a folder given is used as it is
    if args.real_text and not named_dir:
        args.runs_dir = REAL_TEXT_RUNS_DIR
    args.suite = args.suite or ("real-text" if args.real_text else "full")
    if args.seeds is None:
        args.seeds = list(REAL_TEXT_SEEDS if args.real_text else DEFAULT_SEEDS)
    if args.across:
        worlds = parse_worlds(args.across)
        print(format_ledger_across(ledger_across_worlds(worlds), list(worlds)))
        return
    overrides = {}
    if args.gym:
        from workbench.gym.build import SIZES

        if args.gym not in SIZES or args.gym == "default":
            parser.error(f"--gym {args.gym}: use one of {sorted(set(SIZES) - {'default'})}")
        overrides = {"teacher": f"gym-{args.gym}-teacher-dpo", "student": f"gym-{args.gym}-student"}
        if not named_dir:
            args.runs_dir = f"{DEFAULT_RUNS_DIR}_{args.gym}"
    if args.real_text:
        overrides = real_text_overrides()
    if args.eval_prompts is not None:
        if args.eval_prompts < 1:
            parser.error(f"--eval-prompts {args.eval_prompts}: score at least 1 prompt")
        overrides["eval_prompts"] = args.eval_prompts
        if not named_dir:
            args.runs_dir = f"{args.runs_dir}_test{args.eval_prompts}"
    if args.report:
        print(report(args.runs_dir), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    if args.methods:
        named = {v.label: v for v in suite(args.suite, args.gym or "default")}
        variants = [named.get(m, Variant(m)) for m in args.methods]
    else:
        variants = suite(args.suite, args.gym or "default")
    summary = compare(
        variants,
        args.seeds,
        overrides,
        runs_dir=args.runs_dir,
        resume=not args.no_resume,
        on_error="skip",
        jobs=args.jobs,
    )
    records = load_records(args.runs_dir)
    ledger = claims_ledger(records, load_references(args.runs_dir))
    print(format_table(summary[~summary["method"].str.contains(r"\[", regex=True)]))
    shared = sorted({r.get("concurrent_runs", 1) for r in records if r["seed"] in args.seeds} - {1})
    if shared:
        print(
            f"(seconds: some runs were timed {' or '.join(map(str, shared))} at a time (--jobs), so they are "
            f"longer than alone; the cold-cache runs of the cost claims always run alone)"
        )
    print()
    print(format_ledger(ledger))
    print()
    ran = set(summary["method"])
    print(format_against_best(against_best([r for r in records if r["seed"] in args.seeds and r["label"] in ran])))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
