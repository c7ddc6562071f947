"""Figure functions: ``plot_x(ax, data) -> ax`` draws (never shows or saves); ``save_figure(fig, fig_id)`` writes
``figures/<fig_id>.png`` (``make figures``); a notebook run writes its figures to its own output folder with
:func:`save_run_figure`, and to ``figures/`` only when published. Each figure id names the paper figure it mirrors.
Plot functions read saved run metrics, so figures regenerate without re-training (``python -m workbench.figures``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def figures_dir() -> Path:
    """``$WORKBENCH_FIGURES``, else the repository's ``figures/`` (next to the package), else ``./figures``."""
    if os.environ.get("WORKBENCH_FIGURES"):
        return Path(os.environ["WORKBENCH_FIGURES"])
    repo = Path(__file__).resolve().parents[1] / "figures"
    return repo if repo.is_dir() else Path("figures")


def save_figure(fig, fig_id: str, directory: str | Path | None = None) -> Path:
    """Write ``fig`` as ``<figures>/<fig_id>.png`` (150 dpi) and return the path."""
    folder = Path(directory) if directory is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fig_id}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def save_run_figure(fig, fig_id: str, output_dir: str | Path, publish: bool = False) -> list[Path]:
    """A notebook run's figure: ``<output_dir>/figures/<fig_id>.png``, and ``figures/<fig_id>.png`` too when
    ``publish`` (``make notebook-figures`` runs the notebooks with ``-p publish True``), so a run with other models
    or settings never overwrites the committed figures. Returns the paths written."""
    paths = [save_figure(fig, fig_id, Path(output_dir) / "figures")]
    if publish:
        paths.append(save_figure(fig, fig_id))
    return paths


def plot_training_curve(ax, history: Sequence[dict], key: str = "loss", label: str | None = None):
    """``key`` against optimizer step from a Trainer log history; rounds or stages (entries tagged ``round`` or
    ``stage``, each restarting the Trainer's step count) follow one another on one axis, their boundaries marked by
    dashed lines."""
    points, offset, last_step, current = [], 0, 0, None
    boundaries = []
    for i, entry in enumerate(history):
        part = entry.get("round", entry.get("stage", current))  # PAD's rounds, the ADPA family's stages
        if part != current:
            if current is not None:
                offset += last_step
                boundaries.append(offset)
            current = part
        last_step = entry.get("step", last_step)
        if key in entry:
            points.append((offset + entry["step"] if "step" in entry else i, entry[key]))
    if not points:
        raise ValueError(f"no '{key}' entries in the history; logged keys: {sorted({k for h in history for k in h})}")
    steps, values = zip(*points)
    ax.plot(steps, [float(v) for v in values], marker=".", label=label or key)
    for x in boundaries:
        ax.axvline(x, color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xlabel("optimizer step" if all("step" in h for h in history if key in h) else "logging step")
    ax.set_ylabel(key)
    return ax


def plot_before_after(
    ax, before: dict, after: dict, labels=("initial student", "after distillation"), teacher: dict | None = None
):
    """Bars of mean gold reward with 95% CIs (dicts from ``evaluate.mean_ci``)."""
    items = [(labels[0], before), (labels[1], after)] + ([("teacher", teacher)] if teacher else [])
    names = [name for name, _ in items]
    means = [d["mean"] for _, d in items]
    errors = [0 if np.isnan(d.get("ci95", np.nan)) else d["ci95"] for _, d in items]
    ax.bar(names, means, yerr=errors, capsize=4, color=["#999999", "#1f77b4", "#2ca02c"][: len(items)])
    ax.set_ylabel("mean gold reward")
    ax.set_ylim(0, 1)
    return ax


def plot_metric_vs_param(
    ax, xs: Sequence[float], summaries: Sequence[dict], label: str, xlabel: str, ylabel: str = "mean gold reward"
):
    """A line of mean ± 95% CI against a swept parameter (e.g. α, PAD Fig. 5)."""
    means = np.array([s["mean"] for s in summaries])
    errors = np.array([0 if np.isnan(s.get("ci95", np.nan)) else s["ci95"] for s in summaries])
    ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def plot_ranking_distribution(
    ax,
    log_probs: np.ndarray,
    labels: Sequence[str],
    title: str = "",
    width: float = 0.4,
    offset: float = 0.0,
    name: str | None = None,
):
    """Bars of a distribution over rankings (PAD Fig. 1 / Eq. 11): ``log_probs (n!,)`` with ranking labels."""
    x = np.arange(len(labels))
    ax.bar(x + offset, np.exp(np.asarray(log_probs)), width=width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    return ax


def ranking_labels(rankings, names: Sequence[str] | None = None, sep: str = "≻") -> list[str]:
    """Readable labels ``"A≻C≻B"`` for rankings ``(K, n)`` (best first); ``names`` default to letters A, B, ..."""
    rankings = np.asarray(rankings)
    names = list(names) if names is not None else [chr(ord("A") + i) for i in range(rankings.shape[-1])]
    return [sep.join(names[int(i)] for i in row) for row in rankings]


def plot_ranking_distributions(ax, log_probs_by_name: dict, labels: Sequence[str], title: str = ""):
    """Grouped bars of several distributions over the same rankings (e.g. teacher vs student, PAD Fig. 1).

    ``log_probs_by_name`` maps a legend name to ``log_probs (n!,)``; a one-hot target uses 0 / -inf.
    """
    width = 0.8 / max(1, len(log_probs_by_name))
    for k, (name, log_probs) in enumerate(log_probs_by_name.items()):
        offset = (k - (len(log_probs_by_name) - 1) / 2) * width
        plot_ranking_distribution(ax, np.asarray(log_probs, dtype=float), labels, width=width, offset=offset, name=name)
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    return ax


def plot_token_rewards(ax, tokens: Sequence[str], rewards: Sequence[float], logps: Sequence[float] | None = None):
    """Bars of per-token IRL rewards $u_t = f_t - \\log Z_{t+1}$ (PAD Eq. 4), optionally with $\\log p(y_t)$ dots."""
    x = np.arange(len(tokens))
    ax.bar(x, np.asarray(rewards, dtype=float), color="#1f77b4", label=r"$u_t = f_t - \log Z_{t+1}$")
    if logps is not None:
        ax.plot(
            x,
            np.asarray(logps, dtype=float),
            "o",
            color="#d62728",
            ms=4,
            label=r"$\log p(y_t \mid y_{<t}, x) = f_t - \log Z_t$",
        )
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=90, fontsize=7)
    ax.set_xlabel("response token $y_t$")
    ax.set_ylabel("reward (nats)")
    ax.legend(fontsize=7)
    return ax


FAMILY_COLOURS = {"pad": "#1f77b4", "adpa": "#d62728", "plad": "#2ca02c", "baselines": "#7f7f7f"}


def plot_method_dots(ax, rows, metric: str = "gold", family_of=None, references: dict | None = None, xlabel: str = ""):
    """A sorted dot plot of a metric's mean ± 95% CI per method (one row each, best at the top), on an axis zoomed to
    the methods' range; ``family_of(method)`` colours each dot by method family (legend), ``references`` ({name:
    value}) draws vertical lines such as the teacher's and the initial student's level."""
    rows = sorted(rows, key=lambda r: r[f"{metric}_mean"])
    y = np.arange(len(rows))
    for k, row in enumerate(rows):
        family = family_of(row["method"]) if family_of else None
        ci = row.get(f"{metric}_ci95", np.nan)
        ax.errorbar(
            row[f"{metric}_mean"],
            k,
            xerr=None if np.isnan(ci) else ci,
            fmt="o",
            color=FAMILY_COLOURS.get(family, "#333333"),
            capsize=3,
            ms=5,
            label=family,
        )
    low = min(r[f"{metric}_mean"] - np.nan_to_num(r.get(f"{metric}_ci95", 0.0)) for r in rows)
    high = max(r[f"{metric}_mean"] + np.nan_to_num(r.get(f"{metric}_ci95", 0.0)) for r in rows)
    pad = 0.05 * (high - low or 1.0)
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        if low - pad <= value <= high + pad:
            ax.axvline(value, color="black", lw=0.8, ls=style, label=name)
        else:  # a level far off the methods' range is named, not drawn: the axis stays zoomed on the methods
            ax.plot([], [], " ", label=f"{name} (off the axis)")
    ax.set_xlim(low - pad, high + pad)
    ax.set_yticks(y)
    ax.set_yticklabels([r["method"] for r in rows], fontsize=8)
    ax.set_xlabel(xlabel or metric)
    handles, labels = ax.get_legend_handles_labels()
    unique = {label: h for h, label in zip(handles, labels) if label}
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.grid(axis="x", lw=0.3)
    return ax


def plot_method_bars(ax, table, metric: str = "gold", order: Sequence[str] | None = None):
    """Bars of a metric's mean ± CI per method from a comparison table (PAD Table 1 / ADPA Table 1 spirit)."""
    rows = list(table) if order is None else [next(r for r in table if r["method"] == m) for m in order]
    names = [r["method"] for r in rows]
    means = [r[f"{metric}_mean"] for r in rows]
    errors = [0 if np.isnan(r.get(f"{metric}_ci95", np.nan)) else r[f"{metric}_ci95"] for r in rows]
    ax.bar(names, means, yerr=errors, capsize=4)
    ax.set_ylabel(metric)
    ax.tick_params(axis="x", rotation=45)
    return ax


def new_figure(ncols: int = 1, width: float = 4.5, height: float = 3.2):
    """A figure with ``ncols`` axes side by side."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def plot_success_vs_budget(
    ax, budgets: Sequence[int], success: dict, ci: dict | None = None, theory: dict | None = None, target: float = 0.95
):
    """Success probability of identifying a* against the evaluation budget, per reward granularity (ADPA §4.4).

    ``success`` maps a granularity to mean success per budget (``ci`` to CI half-widths); ``theory`` maps
    'distribution' / 'token' / 'sequence' to §4.4's enumeration counts O(1), O(|A|), O(|A|^(T−t)), drawn as
    vertical lines. Log-scaled budget axis.
    """
    budgets = np.asarray(budgets, dtype=float)
    for name, values in success.items():
        values = np.asarray(values, dtype=float)
        (line,) = ax.plot(budgets, values, marker="o", ms=3, label=name)
        if ci and name in ci:
            half = np.nan_to_num(np.asarray(ci[name], dtype=float))
            ax.fill_between(
                budgets, np.clip(values - half, 0, 1), np.clip(values + half, 0, 1), color=line.get_color(), alpha=0.15
            )
    labels = {"distribution": "O(1)", "token": "O(|A|)", "sequence": "O(|A|^(T−t))"}
    for i, (name, x) in enumerate((theory or {}).items()):
        ax.axvline(
            x, color="black", lw=0.8, ls=[":", "--", "-."][i % 3], label=f"theory {labels.get(name, name)} = {x:.3g}"
        )
    ax.axhline(target, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlim(left=min(budgets.min(), 1) / 1.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("reward evaluations (budget, log scale)")
    ax.set_ylabel("P(identify a*)")
    ax.legend(fontsize=6)
    return ax


def plot_hyperparameter_sweep(ax, xs: Sequence[float], gold: Sequence[dict], reward_accuracy, xlabel: str, ci_over=""):
    """Mean gold reward (± 95% CI, left axis) and reward accuracy (right axis; floats, or mean ± CI dicts over seeds)
    against a swept weight (ADPA Fig. 5), with one legend for both axes. ``ci_over`` names what the CIs are over.

    Returns the left axis; the right one is ``ax.right_axis``.
    """
    plot_metric_vs_param(
        ax, xs, gold, label="gold reward" + (f" (± 95% CI over {ci_over})" if ci_over else ""), xlabel=xlabel
    )
    right = ax.twinx()
    if reward_accuracy and isinstance(reward_accuracy[0], dict):
        means = [r["mean"] for r in reward_accuracy]
        errors = [0 if np.isnan(r.get("ci95", np.nan)) else r["ci95"] for r in reward_accuracy]
        right.errorbar(xs, means, yerr=errors, marker="s", capsize=3, color="#d62728", label="reward accuracy")
    else:
        right.plot(xs, reward_accuracy, marker="s", color="#d62728", label="reward accuracy")
    right.set_ylabel("reward accuracy (held-out pairs)", color="#d62728")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(list(xs), [f"{x:g}" for x in xs])
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="lower right")
    ax.right_axis = right
    return ax


def plot_length_buckets(ax, buckets_by_method: dict, key: str = "delta_win_rate"):
    """Grouped bars of the win-rate gain over the initial student per generation-length bucket (PLaD Fig. 3).

    ``buckets_by_method`` maps a method to rows ``{"low", "high", key, optional key + "_ci95"}`` (from
    ``evaluate.length_bucket_gains``, averaged over seeds, with the bucket's ``prompts`` count shown under its
    label); empty buckets are left blank and a zero-width CI draws no error bar.
    """
    names = list(buckets_by_method)
    first = buckets_by_method[names[0]]
    labels = [f"({b['low']:g}, {b['high']:g}]" + (f"\n{b['prompts']} prompts" if "prompts" in b else "") for b in first]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        rows = buckets_by_method[name]
        values = np.array([r[key] for r in rows], dtype=float)
        errors = np.array([r.get(f"{key}_ci95", np.nan) for r in rows], dtype=float)
        ax.bar(
            x + (k - (len(names) - 1) / 2) * width,
            values,
            width=width,
            label=name,
            # no bar for a CI of width 0 (every seed agrees, e.g. a bucket won outright) or an undefined one
            yerr=np.where(np.isnan(errors) | (errors == 0), np.nan, errors),
            capsize=2,
        )
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("initial student's answer length (words)")
    ax.set_ylabel("Δ win rate vs initial student" if key == "delta_win_rate" else key)
    ax.legend(fontsize=7, ncol=min(len(names), 7), loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return ax


def plot_claim_effects(ax, ledger_rows: Sequence[dict]):
    """Forest plot of claim effects (a − b) with 95% CIs, coloured by verdict (the claims ledger)."""
    colours = {"holds": "#2ca02c", "does not hold": "#d62728", "inconclusive": "#7f7f7f"}
    rows = [r for r in ledger_rows if not np.isnan(r["effect"])]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        colour = colours.get(r["verdict"], "#7f7f7f")
        ci = 0 if np.isnan(r["ci95"]) else r["ci95"]
        ax.errorbar(r["effect"], yi, xerr=ci, fmt="o", color=colour, capsize=3)
        if r.get("kind") in ("equivalent", "at_most"):
            ax.plot([r["margin"]] * 2, [yi - 0.3, yi + 0.3], color=colour, lw=1)
            if r["kind"] == "equivalent":
                ax.plot([-r["margin"]] * 2, [yi - 0.3, yi + 0.3], color=colour, lw=1)
    ax.axvline(0.0, color="black", lw=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['statement']} [{r['verdict']}]" for r in rows], fontsize=7)
    ax.set_xlabel("effect a − b (mean ± 95% CI over seeds)")
    return ax


def plot_claims_across_worlds(ax, table, worlds: Sequence[str]):
    """Per claim, each world's effect (a − b) with its 95% CI, one marker per world, coloured by that world's verdict;
    the tick labels carry the verdict across worlds (:func:`workbench.compare.ledger_across_worlds`)."""
    colours = {"holds": "#2ca02c", "does not hold": "#d62728", "inconclusive": "#7f7f7f"}
    markers = "osD^v<>"
    rows = list(table.to_dict("records"))
    y = np.arange(len(rows))[::-1]
    step = 0.6 / max(1, len(worlds))
    for yi, r in zip(y, rows):
        for j, world in enumerate(worlds):
            effect = r[f"{world}_effect"]
            if np.isnan(effect):
                continue
            ci = r[f"{world}_ci95"]
            ax.errorbar(
                effect,
                yi + 0.3 - (j + 0.5) * step,
                xerr=0 if np.isnan(ci) else ci,
                fmt=markers[j % 7],
                color=colours.get(r[f"{world}_verdict"], "#7f7f7f"),
                capsize=2,
                ms=4,
                label=world if yi == y[0] else None,
            )
    ax.axvline(0.0, color="black", lw=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['statement']} [{r['across']}]" for r in rows], fontsize=7)
    ax.set_xlabel("effect a − b (mean ± 95% CI over seeds); colour: the world's verdict")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # the long claim labels leave a narrow axis: no crowded ticks
    ax.legend(fontsize=7, loc="lower right", title="world (marker)")
    return ax


def plot_candidate_rewards(ax, rewards_by_name: dict, labels: Sequence[str], title: str = ""):
    """Grouped bars of several rewards of one candidate set (e.g. PAD Eq. 7-9: $r$, $\\log p_{sel}$, $\\hat r$).

    ``rewards_by_name`` maps a legend name to ``rewards (n,)``; ``labels`` name the n responses.
    """
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(rewards_by_name))
    for k, (name, rewards) in enumerate(rewards_by_name.items()):
        offset = (k - (len(rewards_by_name) - 1) / 2) * width
        ax.bar(x + offset, np.asarray(rewards, dtype=float), width=width, label=name)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("reward (nats)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_success_at_budget(ax, success: dict, budget_index: int, budgets: Sequence[int], ci: dict | None = None):
    """Bars of P(identify a*) per reward granularity at one budget of the grid (ADPA §4.4; the explorer's cut
    through :func:`plot_success_vs_budget`)."""
    names = list(success)
    values = [float(success[name][budget_index]) for name in names]
    errors = [float(np.nan_to_num((ci or {}).get(name, [0.0] * len(budgets))[budget_index])) for name in names]
    ax.barh(np.arange(len(names)), values, xerr=errors, capsize=3, color=[f"C{i}" for i in range(len(names))])
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels([name.replace(" (", "\n(") for name in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"P(identify a*) at budget {budgets[budget_index]}")
    return ax


def widget_frontend() -> bool:
    """Whether ipywidgets controls can be drawn: ``$WORKBENCH_WIDGETS`` (``1`` / ``0``) when set, else whether a
    Jupyter server started this kernel (JupyterLab and Notebook 7 set ``$JPY_SESSION_NAME``). papermill and
    nbclient, which run a notebook without a frontend, set neither."""
    if os.environ.get("WORKBENCH_WIDGETS"):
        return os.environ["WORKBENCH_WIDGETS"] not in ("0", "false", "False")
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _control(name: str, spec, value):
    """A widget for one explorer control: a list of options (numbers: a selection slider; else a dropdown) or a
    ``(min, max, step)`` range (an integer or a float slider), starting at ``value``."""
    import ipywidgets

    common = dict(description=name, continuous_update=False, style={"description_width": "initial"})
    if isinstance(spec, tuple) and len(spec) == 3:
        low, high, step = spec
        if all(isinstance(v, int) for v in (low, high, step, value)):
            return ipywidgets.IntSlider(value=value, min=low, max=high, step=step, **common)
        return ipywidgets.FloatSlider(value=value, min=low, max=high, step=step, readout_format=".2f", **common)
    options = list(spec)
    if all(isinstance(v, (int, float)) for v in options):
        return ipywidgets.SelectionSlider(options=options, value=value, **common)
    return ipywidgets.Dropdown(options=options, value=value, description=name)


def explore(draw, controls: dict, values: dict):
    """An explorer: ``draw(**values)`` draws one figure from objects already computed and returns it.

    Without a widget frontend (:func:`widget_frontend`: papermill, the notebook tests) it is called once at
    ``values`` — one static figure. In JupyterLab the controls are shown and ``ipywidgets.interactive`` redraws
    on every change. ``controls`` maps a keyword of ``draw`` to a list of options or a ``(min, max, step)`` range;
    keywords in ``values`` without a control stay fixed. Returns the figure at ``values``.
    """
    if not widget_frontend():
        return draw(**values)
    import ipywidgets
    from IPython.display import display

    kwargs = {name: _control(name, spec, values[name]) for name, spec in controls.items()}
    kwargs.update({name: ipywidgets.fixed(value) for name, value in values.items() if name not in controls})
    widget = ipywidgets.interactive(draw, **kwargs)
    display(widget)
    return widget.result


def plot_gold_by_setting(ax, rows: Sequence[dict], settings: Sequence[str], highlight: Sequence[str] = ()):
    """Mean gold ± 95% CI at each sampling setting (x: greedy, then by temperature), one line per row of
    ``workbench.compare.conditions.gold_by_setting``; ``highlight`` rows (the teacher) drawn black and thick."""
    x = np.arange(len(settings))
    for row in rows:
        means = [row[s] for s in settings]
        errors = [0 if np.isnan(row[f"{s}_ci95"]) else row[f"{s}_ci95"] for s in settings]
        bold = row["method"] in highlight
        ax.errorbar(
            x,
            means,
            yerr=errors,
            marker="o",
            ms=4,
            capsize=2,
            lw=2.2 if bold else 1.0,
            color="black" if bold else None,
            label=row["method"],
        )
    ax.set_xticks(x)
    ax.set_xticklabels(settings)
    ax.set_xlabel("sampling setting")
    ax.set_ylabel("gold (held-out test prompts)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(axis="y", lw=0.3)
    return ax


def plot_learning_curves(ax, curves: dict, level: dict | None = None):
    """Validation gold against optimizer step, one line per method (``curves``: {method: (steps, mean gold)});
    ``level``: {name: value} drawn as horizontal reference lines (the teacher's and the initial student's gold)."""
    for name, (steps, gold) in curves.items():
        ax.plot(steps, gold, marker=".", ms=3, lw=1.0, label=name)
    for (name, value), style in zip((level or {}).items(), ("--", ":")):
        ax.axhline(value, color="black", lw=0.8, ls=style, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation gold")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(lw=0.3)
    return ax
