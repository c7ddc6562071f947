"""Figure functions: ``plot_x(ax, data) -> ax`` draws (never shows or saves); ``save_figure(fig, fig_id)`` writes
``figures/<fig_id>.png``. Each figure id names the paper figure it mirrors. Plot functions read saved run
metrics, so figures regenerate without re-training (``python -m workbench.figures``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def plot_training_curve(ax, history: Sequence[dict], key: str = "loss", label: str | None = None):
    """``key`` against optimizer step from a Trainer log history (rounds concatenated)."""
    points = [(i, h[key]) for i, h in enumerate(h for h in history if key in h)]
    if not points:
        raise ValueError(f"no '{key}' entries in the history; logged keys: {sorted({k for h in history for k in h})}")
    steps, values = zip(*points)
    ax.plot(steps, [float(v) for v in values], marker=".", label=label or key)
    ax.set_xlabel("logging step")
    ax.set_ylabel(key)
    return ax


def plot_before_after(ax, before: dict, after: dict, labels=("initial student", "after distillation"),
                      teacher: dict | None = None):
    """Bars of mean gold reward with 95% CIs (dicts from ``evaluate.mean_ci``)."""
    items = [(labels[0], before), (labels[1], after)] + ([("teacher", teacher)] if teacher else [])
    names = [name for name, _ in items]
    means = [d["mean"] for _, d in items]
    errors = [0 if np.isnan(d.get("ci95", np.nan)) else d["ci95"] for _, d in items]
    ax.bar(names, means, yerr=errors, capsize=4, color=["#999999", "#1f77b4", "#2ca02c"][: len(items)])
    ax.set_ylabel("mean gold reward")
    ax.set_ylim(0, 1)
    return ax


def plot_metric_vs_param(ax, xs: Sequence[float], summaries: Sequence[dict], label: str, xlabel: str,
                         ylabel: str = "mean gold reward"):
    """A line of mean ± 95% CI against a swept parameter (e.g. α, PAD Fig. 5)."""
    means = np.array([s["mean"] for s in summaries])
    errors = np.array([0 if np.isnan(s.get("ci95", np.nan)) else s["ci95"] for s in summaries])
    ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def plot_ranking_distribution(ax, log_probs: np.ndarray, labels: Sequence[str], title: str = "",
                              width: float = 0.4, offset: float = 0.0, name: str | None = None):
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
        plot_ranking_distribution(ax, np.asarray(log_probs, dtype=float), labels, width=width, offset=offset,
                                  name=name)
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
        ax.plot(x, np.asarray(logps, dtype=float), "o", color="#d62728", ms=4,
                label=r"$\log p(y_t \mid y_{<t}, x) = f_t - \log Z_t$")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=90, fontsize=7)
    ax.set_xlabel("response token $y_t$")
    ax.set_ylabel("reward (nats)")
    ax.legend(fontsize=7)
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
