"""Tables of saved records: per-run frames, mean ± 95% CI per method, every method against the best (paired over seeds
and prompts), Kendall τ's sets, gold per gym task."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.compare.runs import METHODS, REFERENCE_ROWS, TABLE_METRICS
from workbench.compare.stats import LEVEL, Difference, claim_p_value, holm, paired_bootstrap, seed_t_interval
from workbench.evaluate import mean_ci, win_rate
from workbench.methods import METHODS as REGISTERED

logger = logging.getLogger("workbench.compare")

# --- tables ---


def runs_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (label, seed) with the table's metrics (tidy: columns label, method, seed, *TABLE_METRICS)."""
    rows = []
    for r in records:
        h = r["harness"]
        rows.append(
            {
                "label": r["label"],
                "method": r["method"],
                "seed": r["seed"],
                "gold": h["gold"]["mean"],
                **{
                    k: h[k]
                    for k in (
                        "win_rate_vs_initial",
                        "win_rate_vs_teacher",
                        "reward_accuracy",
                        "tau_student_teacher",
                        "tau_student_gold",
                    )
                },
                "length": h["length"],
                "seconds": r["metrics"].get("seconds", r["train_seconds"]),
            }
        )
    return pd.DataFrame(rows, columns=["label", "method", "seed", *TABLE_METRICS])


def reference_frame(references: dict[int, dict]) -> pd.DataFrame:
    """Rows for the initial student and the teacher per seed (same metrics; win rates against each other)."""
    rows = []
    for seed, ref in references.items():
        student, teacher = ref["student"], ref["teacher"]
        for label, mine in (("student (initial)", student), ("teacher", teacher)):
            rows.append(
                {
                    "label": label,
                    "method": label,
                    "seed": seed,
                    "gold": mine["gold"]["mean"],
                    "win_rate_vs_initial": win_rate(mine["per_prompt"], student["per_prompt"]),
                    "win_rate_vs_teacher": win_rate(mine["per_prompt"], teacher["per_prompt"]),
                    "reward_accuracy": mine["reward_accuracy"],
                    "tau_student_teacher": np.nan,
                    "tau_student_gold": np.nan,
                    "length": mine["length"],
                    "seconds": np.nan,
                }
            )
    return pd.DataFrame(rows, columns=["label", "method", "seed", *TABLE_METRICS])


def summarize(
    records: Sequence[dict], references: dict[int, dict] | None = None, seeds: Sequence[int] | None = None
) -> pd.DataFrame:
    """Mean and 95% CI half-width over seeds of each metric, one row per label (``method`` column = label, so the
    rows plot with ``plots.plot_method_bars``); reference rows first when ``references`` are given."""
    frame = runs_frame(records)
    if references:
        frame = pd.concat([reference_frame(references), frame], ignore_index=True)
    if seeds is not None:
        frame = frame[frame["seed"].isin(list(seeds))]
    rows = []
    order = {name: i for i, name in enumerate([*REFERENCE_ROWS, *METHODS])}
    labels = sorted(frame["label"].unique(), key=lambda lab: (order.get(lab.split("[")[0], len(order)), lab))
    for label in labels:
        group = frame[frame["label"] == label]
        row = {"method": label, "base_method": group["method"].iloc[0], "n_seeds": int(group["seed"].nunique())}
        for metric in TABLE_METRICS:
            values = group[metric].dropna().to_numpy(dtype=float)
            stats = mean_ci(values) if len(values) else {"mean": np.nan, "ci95": np.nan}
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = stats["mean"], stats["ci95"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS, digits: int = 3) -> str:
    """A markdown table of ``mean ± ci95`` cells."""
    head = ["method", "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        cells = [str(row["method"]), str(row["n_seeds"])]
        for m in metrics:
            mean, ci = row[f"{m}_mean"], row[f"{m}_ci95"]
            d = 1 if m == "seconds" else digits
            cells.append("—" if np.isnan(mean) else f"{mean:.{d}f}" + ("" if np.isnan(ci) else f" ± {ci:.{d}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prompt_scores(records: Sequence[dict], references: dict[int, dict] | None = None) -> dict[tuple, np.ndarray]:
    """(label, seed) → the run's gold per held-out prompt (mean over its samples), (prompts,); the reference rows too
    when ``references`` are given. Every run is evaluated on the same prompts, in the same order."""
    scores = {(r["label"], r["seed"]): np.asarray(r["harness"].get("per_prompt", []), dtype=float) for r in records}
    for seed, ref in (references or {}).items():
        for label, role in zip(REFERENCE_ROWS, ("student", "teacher")):
            scores[label, seed] = np.asarray(ref[role].get("per_prompt", []), dtype=float)
    return {key: value for key, value in scores.items() if value.ndim == 1 and len(value)}


def paired_difference(frame: pd.DataFrame, scores: dict[tuple, np.ndarray], a: str, b: str, metric: str) -> Difference:
    """The paired difference a − b of ``metric`` over the seeds both labels ran: the bootstrap over seeds and prompts
    (:func:`workbench.compare.stats.paired_bootstrap`) for gold, whose per-prompt scores the records hold; the t
    interval over seeds (:func:`~workbench.compare.stats.seed_t_interval`) for a metric with one value per run, or
    where a record lacks per-prompt scores."""
    by_seed = {label: frame[frame["label"] == label].set_index("seed")[metric] for label in (a, b)}
    seeds = sorted(set(by_seed[a].index) & set(by_seed[b].index))
    if metric == "gold" and seeds:
        rows = [scores.get((label, s)) for label in (a, b) for s in seeds]
        if all(row is not None for row in rows) and len({len(row) for row in rows}) == 1:
            per_prompt = np.array(rows).reshape(2, len(seeds), -1)  # (arm, seeds, prompts)
            return paired_bootstrap(per_prompt[0], per_prompt[1])
    return seed_t_interval([by_seed[a][s] for s in seeds], [by_seed[b][s] for s in seeds])


def against_best(records: Sequence[dict], metric: str = "gold") -> pd.DataFrame:
    """Every table method (labels without overrides) against the one with the best mean ``metric``: the paired
    difference over seeds and prompts (:func:`paired_difference`), its 95% interval, its two-sided p-value, Holm's
    adjustment over the family of comparisons, and whether the method can be told apart from the best.

    "tied with the best": the interval reaches 0, so at this many seeds and prompts it is not shown worse — choose
    among those by cost (``seconds``) and by what a method needs from its teacher (``needs``); "below the best":
    the whole interval is under 0. ``after_holm``: the same with the family of (methods − 1) comparisons accounted
    for (below the best only where Holm's p < 0.05 too). Rows are sorted by mean ``metric``, best first. The best is
    picked on these same runs, so its lead is optimistic (winner's curse): read "below the best" as "below the top
    group", not as a ranking."""
    frame = runs_frame(records)
    frame = frame[~frame["label"].str.contains(r"\[", regex=True)]
    columns = ["method", "n_seeds", f"{metric}_mean", "diff", "low", "high", "ci95", "interval", "p", "p_holm"]
    if frame.empty:
        return pd.DataFrame(columns=[*columns, "verdict", "after_holm", "seconds", "supervision", "needs"])
    scores = prompt_scores(records)
    configs = {r["label"]: (r.get("metrics") or {}).get("config") for r in records}
    means = frame.groupby("label")[metric].mean()
    best = str(means.idxmax())
    rows = []
    for label in means.sort_values(ascending=False).index:
        difference = paired_difference(frame, scores, label, best, metric)
        verdict_ = (
            "best"
            if label == best
            else "one seed: no CI"
            if np.isnan(difference.high)
            else "below the best"
            if difference.high < 0
            else "tied with the best"
        )
        rows.append(
            {
                "method": label,
                "n_seeds": difference.n_seeds,
                f"{metric}_mean": float(means[label]),
                "diff": difference.effect,
                "low": difference.low,
                "high": difference.high,
                "ci95": difference.half_width,
                "interval": difference.interval,
                "p": np.nan if label == best else claim_p_value("greater", difference),
                "verdict": verdict_,
                "seconds": float(frame.loc[frame["label"] == label, "seconds"].mean()),
                "supervision": supervision_of(label, configs.get(label)),
                "needs": REGISTERED[label].needs if label in REGISTERED else "",
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    table["after_holm"] = [
        "below the best" if v == "below the best" and q < 0.05 else "tied with the best" if v == "below the best" else v
        for v, q in zip(table["verdict"], table["p_holm"])
    ]
    return table[[*columns, "verdict", "after_holm", "seconds", "supervision", "needs"]]


def format_interval(effect: float, low: float, high: float, digits: int = 3) -> str:
    """``+0.028 [+0.017, +0.041]``; the effect alone where there is no interval."""
    if np.isnan(effect):
        return "—"
    if np.isnan(low):
        return f"{effect:+.{digits}f}"
    return f"{effect:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def format_p(p: float) -> str:
    """A p-value to 3 decimals (``< 0.001`` below)."""
    return "—" if np.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def format_against_best(table: pd.DataFrame, metric: str = "gold") -> str:
    """A markdown table of :func:`against_best`, with a line on the family of comparisons."""
    family = int(table["p"].notna().sum())
    lines = [
        f"{family} comparisons, each method against one best picked on these runs (so the best's lead is optimistic): "
        f"p is the two-sided test of a zero paired difference, Holm p adjusts it over the {family}; after Holm, a "
        "method is below the best where its interval is under 0 and Holm p < 0.05.",
        "",
        f"| method | {metric} | vs the best ({LEVEL:.0%} interval) | interval | p | Holm p | verdict | after Holm "
        "| seconds | supervision | needs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        best = r["verdict"] == "best"
        diff = "—" if best else format_interval(r["diff"], r["low"], r["high"])
        lines.append(
            f"| {r['method']} | {r[f'{metric}_mean']:.3f} | {diff} | {'—' if best else r['interval']} | "
            f"{format_p(r['p'])} | "
            f"{format_p(r['p_holm'])} | {r['verdict']} | {r['after_holm']} | {r['seconds']:.1f} | "
            f"{r['supervision']} | {r['needs']} |"
        )
    return "\n".join(lines)


TAU_SETS = ("student_teacher", "student_gold")


def tau_sets_of(record: dict, pair: str) -> tuple[int, int] | None:
    """(sets τ used, sets skipped as constant) of a record's Kendall τ ``pair`` (``student_teacher`` or
    ``student_gold``): noted by the harness (``harness.tau_sets``), else from the method's own evaluation where it
    computed the same τ (``metrics.ranking``, equal to the last digit), else None (not noted)."""
    noted = record["harness"].get("tau_sets", {}).get(pair)
    if noted:
        return int(noted["n"]), int(noted["skipped_sets"])
    own = (record["metrics"].get("ranking") or {}).get(f"tau_{pair}")
    if own and "skipped_sets" in own and own.get("mean") == record["harness"].get(f"tau_{pair}"):
        return int(own["n"]), int(own["skipped_sets"])
    return None


def tau_sets(records: Sequence[dict]) -> pd.DataFrame:
    """Per label and τ pair: the seeds whose records note τ's sets, and the mean per seed of the sets τ used and of
    those it skipped because one ranking was constant (a set of identical samples, or one gold for all)."""
    order = {name: i for i, name in enumerate(METHODS)}
    labels = sorted({r["label"] for r in records}, key=lambda lab: (order.get(lab.split("[")[0], len(order)), lab))
    rows = []
    for label in labels:
        mine = [r for r in records if r["label"] == label]
        row = {"method": label, "n_seeds": len(mine)}
        for pair in TAU_SETS:
            counted = [c for c in (tau_sets_of(r, pair) for r in mine) if c is not None]
            row[f"tau_{pair}_mean"] = float(np.nanmean([r["harness"][f"tau_{pair}"] for r in mine]))
            row[f"{pair}_noted"] = len(counted)
            row[f"{pair}_used"] = float(np.mean([c[0] for c in counted])) if counted else np.nan
            row[f"{pair}_skipped"] = float(np.mean([c[1] for c in counted])) if counted else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def format_tau_sets(table: pd.DataFrame) -> str:
    """A markdown table of :func:`tau_sets`."""
    lines = [
        "| method | τ student–teacher | sets used / skipped (mean per seed) | τ student–gold | sets used / skipped |",
        "|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        cells = []
        for pair in TAU_SETS:
            used, noted = r[f"{pair}_used"], int(r[f"{pair}_noted"])
            sets = "not noted" if np.isnan(used) else f"{used:.1f} / {r[f'{pair}_skipped']:.1f}"
            if 0 < noted < r["n_seeds"]:
                sets += f" ({noted} of {r['n_seeds']} seeds)"
            cells += [f"{r[f'tau_{pair}_mean']:.3f}", sets]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gold_per_task(
    records: Sequence[dict], references: dict[int, dict] | None, tasks: Sequence[str], labels: Sequence[str]
) -> pd.DataFrame:
    """Mean gold over seeds and a task's prompts, per label (rows, in ``labels``' order) and gym task (columns, in
    the order the tasks first appear); ``tasks``: the task of each held-out prompt, (prompts,). ``all``: the mean
    over every prompt (the table's gold)."""
    scores = prompt_scores(records, references)
    tasks = np.asarray(tasks)
    names = list(dict.fromkeys(tasks.tolist()))
    rows = []
    for label in labels:
        mine = np.array([v for (lab, _), v in sorted(scores.items(), key=lambda kv: kv[0][1]) if lab == label])
        if not len(mine) or mine.shape[1] != len(tasks):
            continue
        rows.append(
            {"method": label, "n_seeds": len(mine), **{t: float(mine[:, tasks == t].mean()) for t in names}}
            | {"all": float(mine.mean())}
        )
    return pd.DataFrame(rows, columns=["method", "n_seeds", *names, "all"])


def format_gold_per_task(table: pd.DataFrame, tasks: Sequence[str]) -> str:
    """A markdown table of :func:`gold_per_task`, each task's column headed with its number of prompts."""
    counts = pd.Series(list(tasks)).value_counts()
    names = [c for c in table.columns if c not in ("method", "n_seeds", "all")]
    head = ["method", "seeds", *[f"{t} ({counts[t]})" for t in names], f"all ({len(tasks)})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r["method"]), str(r["n_seeds"]), *[f"{r[t]:.3f}" for t in [*names, "all"]]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- supervision groups, cost and the gold ceiling ---

SUPERVISION = {"teacher": "teacher only", "gold": "gold-supervised"}
CEILING = 1.0 - 1e-9  # a prompt at the gold ceiling: every sample of it scored gold 1


def supervision_of(label: str, config: dict | None = None) -> str:
    """``teacher only`` or ``gold-supervised`` (the registry's ``supervision``) for a method label (variants too);
    with the run's ``config``, KD on the teacher's samples (``kd_targets="teacher"``, as on real text) is teacher
    only."""
    method = REGISTERED.get(label.split("[")[0])
    if method is None:
        return ""
    if (config or {}).get("kd_targets") == "teacher":
        return SUPERVISION["teacher"]
    return SUPERVISION[method.supervision]


def optimizer_steps(config: dict) -> int:
    """Optimizer steps a run's config asks for: steps per round × rounds (``iterations``), plus ADPA+'s DCKD stage
    (``dckd_steps``, default ``steps``)."""
    steps = int(config.get("steps") or 0) * int(config.get("iterations") or 1)
    if config.get("method") == "adpa+":
        steps += int(config.get("dckd_steps") or config.get("steps") or 0)
    return steps


def cost_and_ceiling(records: Sequence[dict], references: dict[int, dict] | None = None) -> pd.DataFrame:
    """Per table method (and the references): its supervision group, optimizer steps, examples per optimizer step
    (``batch_size`` × ``gradient_accumulation_steps``), mean training wall time, mean gold, and the share of held-out
    prompts at the gold ceiling (every sample scored 1) with its 95% CI over seeds. Rows: the references, then each
    group by mean gold, best first."""
    scores = prompt_scores(records, references)
    seconds = runs_frame(records).groupby("label")["seconds"].mean()
    forwarded = token_positions(records)
    configs = {r["label"]: r["metrics"]["config"] for r in records}
    rows = []
    labels = [*(REFERENCE_ROWS if references else ()), *sorted({r["label"] for r in records if "[" not in r["label"]})]
    for label in labels:
        mine = [v for (lab, _), v in scores.items() if lab == label]
        if not mine:  # records made without per-prompt scores
            continue
        share = mean_ci([float(np.mean(v >= CEILING)) for v in mine])
        row = {
            "method": label,
            "supervision": supervision_of(label, configs[label]) if label in configs else "reference",
            "n_seeds": len(mine),
            "gold": float(np.mean([v.mean() for v in mine])),
            "at_ceiling": share["mean"],
            "at_ceiling_ci95": share["ci95"],
        }
        if label in configs:  # a method's runs (a reference has no training)
            config = configs[label]
            row.update(
                optimizer_steps=optimizer_steps(config),
                examples_per_step=int(config.get("batch_size", 0))
                * int(config.get("gradient_accumulation_steps") or 1),
                seconds=float(seconds[label]),
                **forwarded.get(label, {}),
            )
        rows.append(row)
    columns = ["method", "supervision", "n_seeds", "gold", "at_ceiling", "at_ceiling_ci95", "optimizer_steps"]
    table = pd.DataFrame(rows, columns=[*columns, "examples_per_step", "seconds", *POSITION_COLUMNS])
    group = {"reference": 0, SUPERVISION["teacher"]: 1, SUPERVISION["gold"]: 2}
    order = sorted(range(len(table)), key=lambda i: (group.get(table["supervision"][i], 3), -table["gold"][i]))
    return table.iloc[order].reset_index(drop=True)


# a run's forwards (``harness["cost"]``, workbench.metering): token positions through the student-sized models
# during training (under gradient, and without: sampling, scoring) and through the teachers
POSITION_COLUMNS = ("student_grad_positions", "student_other_positions", "teacher_positions", "cost_runs")


def token_positions(records: Sequence[dict]) -> dict[str, dict]:
    """Per label, the mean token positions its runs forwarded (:data:`POSITION_COLUMNS`) over the runs whose count is
    complete (``cost_runs`` of them); labels with none are left out."""
    runs: dict[str, list[dict]] = {}
    for r in records:
        cost = r["harness"].get("cost")
        if cost and cost.get("complete"):
            runs.setdefault(r["label"], []).append(cost)
    return {
        label: {
            "student_grad_positions": float(np.mean([c["student"]["grad_positions"] for c in costs])),
            "student_other_positions": float(
                np.mean([c["student"]["positions"] - c["student"]["grad_positions"] for c in costs])
            ),
            "teacher_positions": float(np.mean([c["teacher"]["positions"] for c in costs])),
            "cost_runs": len(costs),
        }
        for label, costs in runs.items()
    }


def _count(value: float) -> str:
    """A token count: 1.23M, 45.6k, 789."""
    if np.isnan(value):
        return "—"
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def format_cost_and_ceiling(table: pd.DataFrame) -> str:
    """A markdown table of :func:`cost_and_ceiling`; the forwarded-token columns only where some run counted them."""
    counted = table["cost_runs"].notna().any()
    tokens = " | student tokens, training | student tokens, sampling and scoring | teacher tokens" if counted else ""
    lines = [
        "| method | supervision | seeds | gold | prompts at the ceiling | optimizer steps | examples / step "
        f"| seconds{tokens} |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if counted else ""),
    ]
    for _, r in table.iterrows():
        share = f"{r['at_ceiling']:.3f}" + ("" if np.isnan(r["at_ceiling_ci95"]) else f" ± {r['at_ceiling_ci95']:.3f}")
        steps = "—" if np.isnan(r["optimizer_steps"]) else f"{int(r['optimizer_steps'])}"
        batch = "—" if np.isnan(r["examples_per_step"]) else f"{int(r['examples_per_step'])}"
        seconds = "—" if np.isnan(r["seconds"]) else f"{r['seconds']:.1f}"
        positions = "".join(f" | {_count(r[c])}" for c in POSITION_COLUMNS[:3]) if counted else ""
        lines.append(
            f"| {r['method']} | {r['supervision']} | {r['n_seeds']} | {r['gold']:.3f} | {share} | {steps} | {batch} "
            f"| {seconds}{positions} |"
        )
    return "\n".join(lines)
