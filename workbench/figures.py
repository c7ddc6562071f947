"""Regenerate every comparison figure from saved run records, without training: ``python -m workbench.figures``
(or ``make figures``).

Each figure id names the paper figure or table it mirrors; each builder takes the records of
:func:`workbench.compare.load_records` (and the reference evaluations) and returns a figure, or None when the runs it
needs are absent. Notebooks 07-09 call the same builders on their own runs.

| figure id | mirrors | needs (``python -m workbench.compare --suite ...``) |
|---|---|---|
| ``compare_table1_gold`` | PAD Table 1 / ADPA Table 1 | ``table`` |
| ``plad_fig2_real_pairs`` | PLaD Fig. 2 | ``plad-fig2`` (or ``full``: ratios 0 and 1) |
| ``plad_fig3_length_buckets`` | PLaD Fig. 3 | ``table`` |
| ``plad_fig4_data_fraction`` | PLaD Fig. 4 | ``plad-fig4`` |
| ``pad_fig5_alpha`` | PAD Fig. 5 | ``pad-fig5`` (α = 0, 0.2, ..., 1; ``full`` has 0, 0.8, 1) |
| ``pad_table2_decomposition`` | PAD Table 2 | ``full`` |
| ``claims_ledger`` | the claims of all three papers | ``full`` |
| ``sampling_settings`` | gold at greedy, T = 0.3, 0.8, 1.0 (student vs teacher, settings matched) | ``table`` |
| ``learning_curves`` | validation gold against optimizer step, per supervision group | ``table`` |

``claims_across_worlds`` (``--across WORLD=DIR ...``) sets the ledgers of several gym worlds side by side.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from workbench import plots
from workbench.compare import (
    DEFAULT_RUNS_DIR,
    REFERENCE_ROWS,
    SUPERVISION,
    claims_ledger,
    curve_frame,
    gold_by_setting,
    ledger_across_worlds,
    load_records,
    load_references,
    parse_worlds,
    settings_of,
    summarize,
    supervision_of,
)
from workbench.evaluate import mean_ci

LENGTH_BUCKET_METHODS = ("plad", "plad+sft", "seqkd", "kd", "reverse-kl", "pad-ppd", "adpa")


def _table_records(records: Sequence[dict]) -> list[dict]:
    """Runs of registry methods with no variant overrides (the comparison table's rows)."""
    return [r for r in records if not r["overrides"]]


def sweep_points(records: Sequence[dict], method: str, param: str, metric: str = "gold") -> tuple[list, list]:
    """(x values, mean ± CI over seeds of ``metric``) for ``method``'s runs that vary only ``param``; the value of a
    run without the override is read from its saved config."""
    by_x: dict[float, list[float]] = {}
    for r in records:
        if r["method"] != method or not set(r["overrides"]) <= {param}:
            continue
        x = float(r["overrides"].get(param, r["metrics"].get("config", {}).get(param, np.nan)))
        value = r["harness"]["gold"]["mean"] if metric == "gold" else r["harness"][metric]
        by_x.setdefault(x, []).append(value)
    xs = sorted(x for x in by_x if not np.isnan(x))
    return xs, [mean_ci(by_x[x]) for x in xs]


def figure_compare_table1(records, references):
    """Every method's mean gold reward and win rate against the teacher (± 95% CI over seeds), sorted, on zoomed
    axes, coloured by family, the teacher's and the initial student's levels as lines. Methods that end below the
    initial student's gold are listed in the title instead of stretching the axis."""
    from workbench.methods import METHODS

    table = _table_records(records)
    if not table:
        return None
    summary = summarize(table, references).to_dict("records")
    levels = {r["method"]: r for r in summary if r["method"] in ("teacher", "student (initial)")}
    methods = [r for r in summary if r["method"] not in levels]
    floor = levels["student (initial)"]["gold_mean"] if "student (initial)" in levels else -np.inf
    shown = [r for r in methods if r["gold_mean"] >= floor]
    off_axis = sorted((r for r in methods if r["gold_mean"] < floor), key=lambda r: -r["gold_mean"])

    def family_of(method: str) -> str | None:
        return METHODS[method].family if method in METHODS else None

    fig, (ax_gold, ax_win) = plots.new_figure(2, width=11.0, height=0.32 * len(shown) + 1.6)
    for ax, metric, xlabel in (
        (ax_gold, "gold", "mean gold reward on held-out prompts (± 95% CI over seeds)"),
        (ax_win, "win_rate_vs_teacher", "win rate against the teacher (gold judge, ties ½)"),
    ):
        lines = {f"{name} {r[f'{metric}_mean']:.3f}": r[f"{metric}_mean"] for name, r in levels.items()}
        plots.plot_method_dots(ax, shown, metric, family_of=family_of, references=lines, xlabel=xlabel)
    note = "; off the axes: " + ", ".join(f"{r['method']} {r['gold_mean']:.3f}" for r in off_axis) if off_axis else ""
    fig.suptitle(f"every method on the gym, {len(table)} runs (PAD / ADPA Table 1){note}", fontsize=9)
    fig.tight_layout()
    return fig


def figure_plad_fig2(records, references):
    methods = [m for m in ("plad", "plad+sft") if len(sweep_points(records, m, "real_ratio")[0]) >= 2]
    if not methods:
        return None
    fig, (ax_gold, ax_win) = plots.new_figure(2)
    for method in methods:
        label = "PLaD" if method == "plad" else "PLaD + SFT anchor"
        plots.plot_metric_vs_param(
            ax_gold, *sweep_points(records, method, "real_ratio"), label, "ratio of real (gold-ordered) pairs"
        )
        plots.plot_metric_vs_param(
            ax_win,
            *sweep_points(records, method, "real_ratio", "win_rate_vs_initial"),
            label,
            "ratio of real (gold-ordered) pairs",
            ylabel="win rate vs initial student",
        )
    ax_gold.legend(fontsize=7)
    fig.suptitle("real vs pseudo preference pairs (PLaD Fig. 2)")
    fig.tight_layout()
    return fig


def length_bucket_summary(records: Sequence[dict], methods: Sequence[str] = LENGTH_BUCKET_METHODS) -> dict:
    """Per method, the harness's length buckets with ``delta_win_rate`` mean and CI over seeds."""
    out = {}
    for method in methods:
        runs = [r for r in _table_records(records) if r["method"] == method]
        if not runs:
            continue
        rows = []
        for k, bucket in enumerate(runs[0]["harness"]["length_buckets"]):
            values = [r["harness"]["length_buckets"][k]["delta_win_rate"] for r in runs]
            values = [v for v in values if v is not None and not np.isnan(v)]
            stats = mean_ci(values) if values else {"mean": np.nan, "ci95": np.nan}
            rows.append(
                {
                    "low": bucket["low"],
                    "high": bucket["high"],
                    "delta_win_rate": stats["mean"],
                    "delta_win_rate_ci95": stats["ci95"],
                    "prompts": bucket["prompts"],
                }
            )
        out[method] = rows
    if out:  # drop buckets no held-out prompt falls into
        keep = [k for k in range(len(next(iter(out.values())))) if any(rows[k]["prompts"] for rows in out.values())]
        out = {m: [rows[k] for k in keep] for m, rows in out.items()}
    return out


def figure_plad_fig3(records, references):
    summary = length_bucket_summary(records)
    if not summary:
        return None
    fig, (ax,) = plots.new_figure(1, width=7.0, height=3.6)
    plots.plot_length_buckets(ax, summary)
    ax.set_title("Δ win rate vs initial student by answer length (PLaD Fig. 3)")
    fig.tight_layout()
    return fig


def figure_plad_fig4(records, references):
    curves = {m: sweep_points(records, m, "data_fraction") for m in ("plad", "plad+sft", "seqkd", "kd")}
    curves = {m: c for m, c in curves.items() if len(c[0]) >= 2}
    if not curves:
        return None
    fig, (ax,) = plots.new_figure(1)
    for method, (xs, points) in curves.items():
        plots.plot_metric_vs_param(ax, xs, points, method, "fraction of distillation prompts")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.set_title("scaling with distillation data (PLaD Fig. 4)")
    fig.tight_layout()
    return fig


def figure_pad_fig5(records, references):
    """PAD Fig. 5: PAD-PPD's gold over the calibration ratio α (``--suite pad-fig5``: 0, 0.2, ..., 1), mean ± 95% CI
    over seeds, with the teacher's level as a line."""
    xs, points = sweep_points(records, "pad-ppd", "alpha")
    if len(xs) < 2:
        return None
    fig, (ax,) = plots.new_figure(1, width=6.0)
    plots.plot_metric_vs_param(ax, xs, points, "PAD-PPD", r"calibration ratio $\alpha$ (Eq. 9)")
    runs = [r for r in records if r["method"] == "pad-ppd" and set(r["overrides"]) <= {"alpha"}]
    teacher = [r for r in summarize(runs, references).to_dict("records") if r["method"] == "teacher"]
    if teacher:
        ax.axhline(
            teacher[0]["gold_mean"], color="black", lw=0.8, ls=":", label=f"teacher {teacher[0]['gold_mean']:.3f}"
        )
    seeds = sorted({p.get("n", 0) for p in points})
    ax.legend(fontsize=7)
    ax.set_title(
        r"student gold reward vs $\alpha$ (PAD Fig. 5)"
        + (f", {seeds[0]} seeds per point" if len(seeds) == 1 and seeds[0] else "")
    )
    fig.tight_layout()
    return fig


def figure_pad_table2(records, references):
    """PAD Table 2: gold of 1 × 4, 2 × 4 and 1 × 8 (iterations × samples) on a zoomed axis, and each arm's wall-time
    difference to 1 × 8, paired by seed (mean ± 95% CI over the seeds both arms ran)."""
    labels = {"pad-ppd": "1 × 4", "pad-ppd[iterations=2]": "2 × 4", "pad-ppd[n=8]": "1 × 8"}
    present = [lab for lab in labels if any(r["label"] == lab for r in records)]
    if len(present) < 2:
        return None
    summary = summarize([r for r in records if r["label"] in present]).to_dict("records")
    for row in summary:
        row["method"] = labels[row["method"]]
    fig, (ax_gold, ax_time) = plots.new_figure(2, width=10.0, height=3.0)
    plots.plot_method_dots(ax_gold, summary, "gold", xlabel="mean gold reward (± 95% CI over seeds)")
    ax_gold.set_title("quality")
    base = "pad-ppd[n=8]" if "pad-ppd[n=8]" in present else present[-1]
    seconds = {
        (r["label"], r["seed"]): r["metrics"].get("seconds", r["train_seconds"])
        for r in records
        if r["label"] in present
    }
    rows = []
    for label in present:
        if label == base:
            continue
        seeds = sorted(s for (lab, s) in seconds if lab == label and (base, s) in seconds)
        if seeds:
            stats = mean_ci([seconds[(label, s)] - seconds[(base, s)] for s in seeds])
            rows.append(
                {
                    "method": f"{labels[label]} − {labels[base]}",
                    "seconds_mean": stats["mean"],
                    "seconds_ci95": stats["ci95"],
                }
            )
    if rows:
        plots.plot_method_dots(
            ax_time, rows, "seconds", references={"no difference": 0.0}, xlabel="wall time difference (s)"
        )
    ax_time.set_title(f"cost, paired by seed, against {labels[base]}")
    fig.suptitle("iterations × samples (PAD Table 2); runs timed with an empty stage cache", fontsize=10)
    fig.tight_layout()
    return fig


def figure_claims_ledger(records, references):
    ledger = claims_ledger(records, references)
    rows = [r for r in ledger.to_dict("records") if r["metric"] == "gold" and not np.isnan(r["effect"])]
    if not rows:
        return None
    fig, (ax,) = plots.new_figure(1, width=8.0, height=0.45 * len(rows) + 1.2)
    plots.plot_claim_effects(ax, rows)
    ax.set_title("claims ledger: effect on mean gold reward")
    fig.tight_layout()
    return fig


def figure_claims_across_worlds(runs_dirs):
    """The gold-reward claims of the ledger in each world (``{world: runs folder}``), side by side; None without
    records."""
    if not any(load_records(path) for path in runs_dirs.values()):
        return None
    table = ledger_across_worlds(runs_dirs)
    table = table[table["metric"] == "gold"]
    table = table[~table["across"].eq("not measured")]
    if table.empty:
        return None
    fig, (ax,) = plots.new_figure(1, width=9.0, height=0.5 * len(table) + 1.4)
    plots.plot_claims_across_worlds(ax, table, list(runs_dirs))
    ax.set_title("claims ledger across gym worlds: effect on mean gold reward")
    fig.tight_layout()
    return fig


def figure_sampling_settings(records, references):
    """The references and the table methods at every sampling setting (None for records scored at one)."""
    table = gold_by_setting(records, references)
    if table.empty:
        return None
    settings = settings_of(table)
    rows = table.to_dict("records")
    top = sorted((r for r in rows if r["method"] not in REFERENCE_ROWS), key=lambda r: -max(r[s] for s in settings))
    fig, (ax,) = plots.new_figure(1, width=6.5, height=4.2)
    plots.plot_gold_by_setting(ax, [r for r in rows if r["method"] in REFERENCE_ROWS] + top[:6], settings, ["teacher"])
    ax.set_title("gold by sampling setting: the references and the six best methods")
    fig.tight_layout()
    return fig


def figure_learning_curves(records, references):
    """Validation gold against optimizer step (mean over seeds), teacher-only and gold-supervised methods apart."""
    frame = curve_frame([r for r in records if "[" not in r["label"]])
    if frame.empty:
        return None
    configs = {r["label"]: r["metrics"].get("config") for r in records}
    level = {}
    if references:
        level = {
            "teacher (test, T = 0.8)": float(np.mean([ref["teacher"]["gold"]["mean"] for ref in references.values()])),
            "initial student": float(np.mean([ref["student"]["gold"]["mean"] for ref in references.values()])),
        }
    groups = list(SUPERVISION.values())
    fig, axes = plots.new_figure(len(groups), width=5.5, height=4.0)
    for ax, group in zip(axes, groups):
        curves = {}
        for label, part in frame.groupby("label", sort=True):
            if supervision_of(label, configs.get(label)) == group:
                mean = part.groupby("step")["gold"].mean()
                curves[label] = (mean.index.to_numpy(), mean.to_numpy())
        plots.plot_learning_curves(ax, curves, level)
        ax.set_title(f"{group} methods")
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable] = {
    "compare_table1_gold": figure_compare_table1,
    "plad_fig2_real_pairs": figure_plad_fig2,
    "plad_fig3_length_buckets": figure_plad_fig3,
    "plad_fig4_data_fraction": figure_plad_fig4,
    "pad_fig5_alpha": figure_pad_fig5,
    "pad_table2_decomposition": figure_pad_table2,
    "claims_ledger": figure_claims_ledger,
    "sampling_settings": figure_sampling_settings,
    "learning_curves": figure_learning_curves,
}


def regenerate(
    runs_dir: str | Path = DEFAULT_RUNS_DIR, out_dir: str | Path | None = None, only: Sequence[str] | None = None
) -> dict[str, Path | None]:
    """Draw every figure whose runs exist under ``runs_dir``; returns id → saved path (None when skipped)."""
    import matplotlib.pyplot as plt

    records, references = load_records(runs_dir), load_references(runs_dir)
    written = {}
    for fig_id, build in FIGURES.items():
        if only and fig_id not in only:
            continue
        fig = build(records, references) if records else None
        written[fig_id] = plots.save_figure(fig, fig_id, out_dir) if fig is not None else None
        if fig is not None:
            plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate figures/ from saved run records (no training)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    parser.add_argument("--out", default=None, help="output folder (default: figures/)")
    parser.add_argument("--only", nargs="*", help=f"figure ids among {list(FIGURES)}")
    parser.add_argument(
        "--across",
        nargs="+",
        metavar="WORLD=DIR",
        default=None,
        help="draw claims_across_worlds from several runs folders instead, e.g. "
        "default=results/compare world1=results/compare_world1",
    )
    args = parser.parse_args(argv)
    if args.across:
        import matplotlib.pyplot as plt

        worlds = parse_worlds(args.across)
        fig = figure_claims_across_worlds(worlds)
        if fig is None:
            print(f"claims_across_worlds: skipped (no run records under {list(worlds.values())})")
            return
        print(f"claims_across_worlds: {plots.save_figure(fig, 'claims_across_worlds', args.out)}")
        plt.close(fig)
        return
    written = regenerate(args.runs_dir, args.out, args.only)
    for fig_id, path in written.items():
        print(f"{fig_id}: {path}" if path else f"{fig_id}: skipped (no runs for it in {args.runs_dir})")
    if not any(written.values()):
        print(f"no run records under {args.runs_dir}; run `python -m workbench.compare --suite full` first")


if __name__ == "__main__":
    main()
