"""Matched conditions: gold at every sampling setting (greedy, T = 0.3, 0.8, 1.0), the student against its teacher
with each side at its best setting, every method at one budget of optimizer steps or of teacher calls, every method at
the learning rate chosen on its own world, and the validation learning curve of every run."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.compare.evaluation import EvalConfig, setting_name
from workbench.compare.runs import (
    BUDGET_BATCH,
    BUDGET_STEPS,
    REFERENCE_ROWS,
    TEACHER_BUDGET_OWN,
    Variant,
    budget_overrides,
    teacher_budget_variants,
    world_lr_variants,
)
from workbench.compare.stats import claim_p_value, holm, paired_bootstrap
from workbench.compare.tables import format_interval, format_p, optimizer_steps, prompt_scores
from workbench.evaluate import mean_ci

MAIN = setting_name(EvalConfig.temperature)  # the table's setting


def _order(settings) -> list[str]:
    """Settings in reading order: greedy first, then by temperature."""
    return sorted(settings, key=lambda s: (s != "greedy", float(s.removeprefix("T=")) if s != "greedy" else 0.0))


# --- gold at every sampling setting ---


def setting_scores(records: Sequence[dict], references: dict[int, dict] | None = None) -> dict[tuple, np.ndarray]:
    """(label, setting, seed) → per-prompt gold at that setting: the table's (``MAIN``) from the record's
    ``per_prompt``, the others from its ``by_temperature`` (records made before runs were scored at several settings
    have the main one only). Table methods (labels without overrides) and the references."""
    out = {}
    main = prompt_scores([r for r in records if "[" not in r["label"]], references)
    for (label, seed), scores in main.items():
        out[label, MAIN, seed] = scores
    by_label = [(r["label"], r["seed"], r["harness"]) for r in records if "[" not in r["label"]]
    for seed, ref in (references or {}).items():
        by_label += [(label, seed, ref[role]) for label, role in zip(REFERENCE_ROWS, ("student", "teacher"))]
    for label, seed, scored in by_label:
        for setting, value in (scored.get("by_temperature") or {}).items():
            out[label, setting, seed] = np.asarray(value["per_prompt"], dtype=float)
    return out


def _labels(scores: dict[tuple, np.ndarray]) -> list[str]:
    labels = {label for label, _, _ in scores}
    return [*[r for r in REFERENCE_ROWS if r in labels], *sorted(labels - set(REFERENCE_ROWS))]


def _seeds(scores: dict[tuple, np.ndarray], label: str, settings: Sequence[str]) -> list[int]:
    """The seeds at which ``label`` was scored at every one of ``settings``."""
    per = [{s for lab, st, s in scores if lab == label and st == setting} for setting in settings]
    return sorted(set.intersection(*per)) if per else []


def gold_by_setting(records: Sequence[dict], references: dict[int, dict] | None = None) -> pd.DataFrame:
    """Per label (the references, then the table methods): mean gold ± 95% CI over seeds at each sampling setting
    and the setting with the highest mean (``best``), over the seeds scored at all of them; labels scored at the
    table's setting only are left out."""
    scores = setting_scores(records, references)
    settings = _order({setting for _, setting, _ in scores})
    rows = []
    for label in _labels(scores):
        seeds = _seeds(scores, label, settings)
        if not seeds or len(settings) < 2:
            continue
        row = {"method": label, "n_seeds": len(seeds)}
        for setting in settings:
            stats = mean_ci([scores[label, setting, s].mean() for s in seeds])
            row[setting], row[f"{setting}_ci95"] = stats["mean"], stats["ci95"]
        row["best"] = max(settings, key=lambda setting: row[setting])
        rows.append(row)
    return pd.DataFrame(rows)


def settings_of(table: pd.DataFrame) -> list[str]:
    """The setting columns of a :func:`gold_by_setting` table, in reading order."""
    return [c for c in table.columns if c not in ("method", "n_seeds", "best") and not c.endswith("_ci95")]


def format_gold_by_setting(table: pd.DataFrame) -> str:
    """A markdown table of :func:`gold_by_setting` (the best setting of each row in bold)."""
    if table.empty:
        return "(no run was scored at more than the table's setting)"
    settings = settings_of(table)
    lines = ["| method | seeds | " + " | ".join(settings) + " | best |", "|---|---|" + "---|" * (len(settings) + 1)]
    for _, r in table.iterrows():
        cells = []
        for s in settings:
            cell = f"{r[s]:.3f}" + ("" if np.isnan(r[f"{s}_ci95"]) else f" ± {r[f'{s}_ci95']:.3f}")
            cells.append(f"**{cell}**" if s == r["best"] else cell)
        lines.append(f"| {r['method']} | {r['n_seeds']} | " + " | ".join(cells) + f" | {r['best']} |")
    return "\n".join(lines)


def at_setting(records: Sequence[dict], setting: str) -> list[dict]:
    """The records scored at ``setting`` (a name of :func:`setting_name`), each with its gold and per-prompt scores
    replaced by that setting's, so every table of records (against the best) reads that setting; records without it
    are left out."""
    out = []
    for r in records:
        scored = (r["harness"].get("by_temperature") or {}).get(setting)
        if scored is not None:
            gold = {"mean": float(np.mean(scored["per_prompt"]))}
            out.append({**r, "harness": {**r["harness"], "gold": gold, "per_prompt": scored["per_prompt"]}})
    return out


# --- the student against its teacher, settings matched ---


def student_vs_teacher(records: Sequence[dict], references: dict[int, dict] | None = None) -> pd.DataFrame:
    """Does a distilled student beat its teacher? At each setting: the best table method at that setting against the
    teacher at the same setting; then each side at its own best setting (the row the verdict reads: a student's win
    at T = 0.8 may be the teacher's loss to sampling). Methods scored at the table's setting only are left out.
    Paired bootstrap over seeds × prompts on the seeds every compared run shares; p two-sided against 0, Holm over
    the rows. Bests are picked on these runs (optimistic for both sides)."""
    scores = setting_scores(records, references)
    settings = _order({setting for _, setting, _ in scores})
    if "teacher" not in _labels(scores) or len(settings) < 2:
        return pd.DataFrame()
    # the methods scored at every setting (a folder may hold others scored at the table's setting only)
    methods = [label for label in _labels(scores) if label not in REFERENCE_ROWS and _seeds(scores, label, settings)]
    seeds = sorted(set.intersection(*[set(_seeds(scores, label, settings)) for label in ["teacher", *methods]]))
    if not seeds or not methods:
        return pd.DataFrame()

    def mean(label, setting):
        return float(np.mean([scores[label, setting, s].mean() for s in seeds]))

    def matrix(label, setting):
        return np.array([scores[label, setting, s] for s in seeds])  # (seeds, prompts)

    pairs = []
    for setting in settings:
        best = max(methods, key=lambda m: mean(m, setting))
        pairs.append((f"at {setting}", best, setting, setting))
    best_of = {m: max(settings, key=lambda s: mean(m, s)) for m in [*methods, "teacher"]}
    best = max(methods, key=lambda m: mean(m, best_of[m]))
    pairs.append(("each at its best setting", best, best_of[best], best_of["teacher"]))
    rows = []
    for compared, method, student_at, teacher_at in pairs:
        difference = paired_bootstrap(matrix(method, student_at), matrix("teacher", teacher_at))
        rows.append(
            {
                "compared": compared,
                "student": method,
                "student_setting": student_at,
                "student_gold": mean(method, student_at),
                "teacher_setting": teacher_at,
                "teacher_gold": mean("teacher", teacher_at),
                "effect": difference.effect,
                "low": difference.low,
                "high": difference.high,
                "n_seeds": len(seeds),
                "n_prompts": difference.n_prompts,
                "p": claim_p_value("greater", difference),
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    table["verdict"] = [
        ("student above" if low > 0 else "teacher above" if high < 0 else "inconclusive")
        if q < 0.05
        else "inconclusive"
        for low, high, q in zip(table["low"], table["high"], table["p_holm"])
    ]
    return table


def format_student_vs_teacher(table: pd.DataFrame) -> str:
    """A markdown table of :func:`student_vs_teacher`."""
    if table.empty:
        return "(the teacher or the methods were scored at the table's setting only)"
    lines = [
        "| compared | best student | its setting | its gold | teacher's setting | teacher's gold | student − teacher "
        "(95% interval) | p | Holm p | after Holm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['compared']} | {r['student']} | {r['student_setting']} | {r['student_gold']:.3f} | "
            f"{r['teacher_setting']} | {r['teacher_gold']:.3f} | {format_interval(r['effect'], r['low'], r['high'])} "
            f"| {format_p(r['p'])} | {format_p(r['p_holm'])} | {r['verdict']} |"
        )
    return "\n".join(lines)


# --- validation learning curves ---


def curve_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Tidy validation curves: one row per (label, seed, step) with the validation gold there (records made before
    runs kept a curve have none)."""
    rows = [
        {"label": r["label"], "seed": r["seed"], "step": point["step"], "gold": point["gold"]}
        for r in records
        for point in ((r["harness"].get("curve") or {}).get("points") or [])
    ]
    return pd.DataFrame(rows, columns=["label", "seed", "step", "gold"])


def curve_summary(records: Sequence[dict]) -> pd.DataFrame:
    """Per table method with a curve: its validation gold (mean over seeds) at the first point, at its peak and at
    the end of training, with their steps, and end − peak (below 0: the run was past its best when it stopped)."""
    frame = curve_frame([r for r in records if "[" not in r["label"]])
    rows = []
    for label, group in frame.groupby("label", sort=True):
        curve = group.groupby("step")["gold"].mean()
        peak = curve.idxmax()
        rows.append(
            {
                "method": label,
                "n_seeds": int(group["seed"].nunique()),
                "points": len(curve),
                "first_step": int(curve.index[0]),
                "first": float(curve.iloc[0]),
                "peak_step": int(peak),
                "peak": float(curve[peak]),
                "end_step": int(curve.index[-1]),
                "end": float(curve.iloc[-1]),
                "end_minus_peak": float(curve.iloc[-1] - curve[peak]),
            }
        )
    return pd.DataFrame(rows)


def format_curve_summary(table: pd.DataFrame) -> str:
    """A markdown table of :func:`curve_summary`."""
    if table.empty:
        return "(no run kept a validation curve)"
    lines = [
        "| method | seeds | points | first (step) | peak (step) | end (step) | end − peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['method']} | {r['n_seeds']} | {r['points']} | {r['first']:.3f} ({r['first_step']}) | "
            f"{r['peak']:.3f} ({r['peak_step']}) | {r['end']:.3f} ({r['end_step']}) | {r['end_minus_peak']:+.3f} |"
        )
    return "\n".join(lines)


# --- matched budgets ---


def budget_matched(records: Sequence[dict]) -> list[dict]:
    """Each table method's runs at the matched budget (:data:`~workbench.compare.runs.BUDGET_STEPS` optimizer steps ×
    :data:`~workbench.compare.runs.BUDGET_BATCH` examples), labelled by the method: its own runs where its harness
    settings are that budget, else its ``budget`` suite variant's (none where that suite was not run). Checked on
    each record's config, so a run at another budget is never counted."""
    out = []
    for r in records:
        method = r["method"]
        if r["label"] not in (method, Variant(method, budget_overrides(method)).label):
            continue
        if r["label"] == method and budget_overrides(method):
            continue  # its own budget differs; the variant stands for it
        config = r["metrics"].get("config") or {}
        examples = int(config.get("batch_size", 0)) * int(config.get("gradient_accumulation_steps") or 1)
        if optimizer_steps(config) == BUDGET_STEPS and examples == BUDGET_BATCH:
            out.append({**r, "label": method})
    return out


def _by_method(records: Sequence[dict], variants: Sequence[Variant], keep) -> list[dict]:
    """The runs of ``variants`` whose config is at the variant's overrides, labelled by method, and the runs ``keep``
    accepts as they are; empty unless a variant's run is among them (so a suite that did not run adds no section)."""
    by_label = {v.label: v for v in variants}
    out, took_variant = [], False
    for r in records:
        variant = by_label.get(r["label"])
        config = r["metrics"].get("config") or {}
        if variant is not None and all(config.get(k) == v for k, v in variant.overrides.items()):
            out.append({**r, "label": variant.method})
            took_variant = True
        elif variant is None and keep(r):
            out.append(r)
    return out if took_variant else []


def teacher_matched(records: Sequence[dict]) -> list[dict]:
    """Every table method at one teacher budget, labelled by method: the runs of the methods already at or under it
    (:data:`~workbench.compare.runs.TEACHER_BUDGET_OWN`) and the ``teacher-budget`` suite's runs of the others, each
    scaled in one setting (:data:`~workbench.compare.runs.TEACHER_BUDGET`, checked on the record's config). Empty
    unless that suite ran."""
    return _by_method(records, teacher_budget_variants(), lambda r: r["label"] in TEACHER_BUDGET_OWN)


def world_of(record: dict) -> str:
    """The gym world a record was made in, from its teacher preset (``gym-<world>-teacher-dpo``; ``default`` for
    ``gym-teacher-dpo``); ``""`` off the gym."""
    teacher = (record["metrics"].get("config") or {}).get("teacher") or ""
    match = re.fullmatch(r"gym-(?:(.+)-)?teacher-dpo", teacher)
    return (match.group(1) or "default") if match else ""


def at_world_rates(records: Sequence[dict]) -> list[dict]:
    """Every table method at the learning rate chosen on the records' own world, labelled by method: the
    ``world-lr`` suite's run where that world re-chose a method's rate
    (:func:`~workbench.compare.runs.world_lr_variants`, checked on the record's config), the method's table run
    elsewhere. Empty unless that suite ran."""
    variants = [v for world in {world_of(r) for r in records} for v in world_lr_variants(world)]
    rechosen = {v.method for v in variants}
    return _by_method(records, variants, lambda r: r["label"] == r["method"] and r["method"] not in rechosen)
