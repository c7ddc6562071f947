"""Tables of saved records: per-run frames, mean ± 95% CI per method, the gap to the best method per seed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from workbench.compare.runs import METHODS, REFERENCE_ROWS, TABLE_METRICS
from workbench.evaluate import mean_ci, win_rate

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


def against_best(records: Sequence[dict], metric: str = "gold") -> pd.DataFrame:
    """Every table method (labels without overrides) against the one with the best mean ``metric``: the paired
    per-seed difference, its 95% CI over seeds, and whether the method can be told apart from the best.

    "tied with the best": the CI of the difference reaches 0, so at this many seeds it is not shown worse — choose
    among those by cost (``seconds``) and by what a method needs from its teacher (``needs``); "below the best":
    the whole CI is under 0. Rows are sorted by mean ``metric``, best first. The best is picked on these same runs,
    so its lead is optimistic (winner's curse): read "below the best" as "below the top group", not as a ranking."""
    frame = runs_frame(records)
    frame = frame[~frame["label"].str.contains(r"\[", regex=True)]
    if frame.empty:
        return pd.DataFrame(
            columns=["method", "n_seeds", f"{metric}_mean", "diff", "ci95", "verdict", "seconds", "needs"]
        )
    means = frame.groupby("label")[metric].mean()
    best = str(means.idxmax())
    best_by_seed = frame[frame["label"] == best].set_index("seed")[metric]
    rows = []
    for label in means.sort_values(ascending=False).index:
        mine = frame[frame["label"] == label].set_index("seed")
        seeds = sorted(set(mine.index) & set(best_by_seed.index))
        stats = mean_ci(np.array([mine[metric][s] - best_by_seed[s] for s in seeds], dtype=float))
        high = stats["mean"] + stats["ci95"] if not np.isnan(stats["ci95"]) else np.nan
        verdict_ = (
            "best"
            if label == best
            else "one seed: no CI"
            if np.isnan(high)
            else "below the best"
            if high < 0
            else "tied with the best"
        )
        rows.append(
            {
                "method": label,
                "n_seeds": len(seeds),
                f"{metric}_mean": float(means[label]),
                "diff": stats["mean"],
                "ci95": stats["ci95"],
                "verdict": verdict_,
                "seconds": float(mine["seconds"].mean()),
                "needs": METHOD_NEEDS.get(label, ""),
            }
        )
    return pd.DataFrame(rows)


def format_against_best(table: pd.DataFrame, metric: str = "gold") -> str:
    """A markdown table of :func:`against_best`."""
    lines = [
        f"| method | {metric} | vs the best (paired, 95% CI) | verdict | seconds | needs |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        diff = (
            "—"
            if r["verdict"] == "best"
            else (f"{r['diff']:+.3f}" + ("" if np.isnan(r["ci95"]) else f" ± {r['ci95']:.3f}"))
        )
        lines.append(
            f"| {r['method']} | {r[f'{metric}_mean']:.3f} | {diff} | {r['verdict']} | {r['seconds']:.1f} | "
            f"{r['needs']} |"
        )
    return "\n".join(lines)


# what each method asks of its teacher(s) — the other half of choosing among methods the gold reward cannot separate
METHOD_NEEDS = {
    "pad-vpd": "teacher log-likelihood + MCQ judgement of n student samples",
    "pad-ppd": "teacher log-likelihood + MCQ judgement of n student samples",
    "pad-ppd+sft": "teacher log-likelihood + MCQ judgement of n student samples",
    "plad": "teacher samples (black-box teacher)",
    "plad+sft": "teacher samples (black-box teacher)",
    "kd": "teacher logits on reference answers (same vocabulary)",
    "seqkd": "teacher samples (black-box teacher)",
    "reverse-kl": "teacher logits on student samples (same vocabulary)",
    "dpo": "teacher scores of n student samples",
    "simpo": "teacher scores of n student samples",
    "pro": "teacher scores of n student samples",
    "sft": "preference pairs only",
    "dckd": "preference pairs + DPO-teacher top-k logits (same vocabulary)",
    "adpa": "preference pairs + DPO and reference teachers' top-k on student samples (same vocabulary)",
    "adpa+": "preference pairs + DPO and reference teachers' top-k (same vocabulary); two stages",
    "adpa_no_ref": "preference pairs + DPO-teacher top-k on student samples (same vocabulary)",
    "q_argmax": "preference pairs + DPO and reference teachers' top-k on student samples (same vocabulary)",
    "q_softmax": "preference pairs + DPO and reference teachers' top-k on student samples (same vocabulary)",
}
