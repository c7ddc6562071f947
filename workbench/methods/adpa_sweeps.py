"""Tables and sweeps of the ADPA family across seeds (notebook 06's sections): mean ± 95% CI per method, one-knob
sweeps, and ``python -m workbench.methods.adpa_sweeps``, the method table as Markdown."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from workbench.evaluate import mean_ci, win_rate
from workbench.methods.adpa import METHOD_STAGES, AdpaConfig, run_adpa

logger = logging.getLogger("workbench.adpa")


def summarize_runs(runs: Sequence[dict]) -> dict:
    """Mean ± 95% CI over seeds of one method's runs (metrics dicts): gold after, win rate, reward accuracy."""
    return {
        "method": runs[0]["method"],
        "seeds": len(runs),
        "gold_after": mean_ci([r["gold_after"]["mean"] for r in runs]),
        "win_rate_vs_initial": mean_ci([r["win_rate_vs_initial"] for r in runs]),
        "reward_accuracy": mean_ci([r["reward_accuracy"] for r in runs]),
        "length_after": mean_ci([r["length_after"] for r in runs]),
        "seconds": mean_ci([r["seconds"] for r in runs]),
    }


def hyperparameter_sweep(
    cfg: AdpaConfig, name: str, values: Sequence[float], seeds: Sequence[int] | None = None
) -> list[dict]:
    """One run per value of ``name`` (e.g. α for DCKD, γ for ADPA: ADPA Fig. 5) and seed; the value and seed go into
    the output path.

    Returns rows ``{name: value, "seeds", "gold_after", "reward_accuracy", "win_rate_vs_initial", "length_after"}``.
    With one seed (default ``cfg.seed``) each metric is that run's (``gold_after``: mean ± 95% CI over held-out
    prompts); with several, ``gold_after`` and ``reward_accuracy`` are mean ± 95% CI over the seeds (``"ci_over"``
    says which) and the rest means over seeds.
    """
    from dataclasses import replace

    seeds = list(seeds) if seeds else [cfg.seed]
    rows = []
    for value in values:
        runs = []
        for seed in seeds:
            folder = f"{cfg.output_dir}/{cfg.method}-{name}={value:g}" + (f"/seed{seed}" if len(seeds) > 1 else "")
            runs.append(run_adpa(replace(cfg, **{name: value, "seed": seed, "output_dir": folder})).metrics)
        keys = ("gold_after", "reward_accuracy", "win_rate_vs_initial", "length_after")  # gold fields: None off the gym
        if len(runs) == 1:
            rows.append({name: float(value), "seeds": 1, "ci_over": "prompts", **{k: runs[0].get(k) for k in keys}})
            continue
        gold = [r["gold_after"]["mean"] for r in runs if r.get("gold_after")]
        rows.append(
            {
                name: float(value),
                "seeds": len(runs),
                "ci_over": "seeds",
                "gold_after": mean_ci(gold) if gold else None,
                "reward_accuracy": mean_ci([r["reward_accuracy"] for r in runs]),
                "win_rate_vs_initial": float(sum(r["win_rate_vs_initial"] for r in runs) / len(runs)) if gold else None,
                "length_after": float(sum(r["length_after"] for r in runs) / len(runs)) if gold else None,
            }
        )
    return rows


def method_table(
    methods: Sequence[str], seeds: Sequence[int], output_dir: str = "runs/adpa_table", **overrides
) -> dict:
    """Every method × seed with the same defaults (plus ``overrides``); per-method mean ± 95% CI over seeds.

    Returns ``{"rows": [summarize_runs(...) per method], "initial": gold of the SFT-init student, "runs": {...}}``
    and writes ``table.json`` to ``output_dir``; each run's metrics land in ``output_dir/<method>/seed=<s>``.
    """
    import json
    from pathlib import Path

    runs = {}
    for method in methods:
        runs[method] = []
        for seed in seeds:
            cfg = AdpaConfig(
                method=method,
                seed=seed,
                output_dir=f"{output_dir}/{method}/seed={seed}",
                **{"progress": False, **overrides},
            )
            metrics = run_adpa(cfg).metrics
            runs[method].append({k: v for k, v in metrics.items() if k != "config"})
            logger.info("%s seed %d: gold %.3f", method, seed, metrics["gold_after"]["mean"])
    first = next(iter(runs.values()))
    table = {
        "rows": [summarize_runs(r) for r in runs.values()],
        "initial": {
            "gold": mean_ci([r["gold_before"]["mean"] for r in first]),
            "reward_accuracy": mean_ci([r["reward_accuracy_before"] for r in first]),
            "length": mean_ci([r["length_before"] for r in first]),
        },
        "win_rate_vs_adpa": (
            {
                m: mean_ci([win_rate(a["per_prompt_after"], b["per_prompt_after"]) for a, b in zip(r, runs["adpa"])])
                for m, r in runs.items()
            }
            if "adpa" in runs
            else {}
        ),
        "seeds": list(seeds),
        "overrides": overrides,
        "runs": runs,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "table.json").write_text(json.dumps(table, indent=2, default=float))
    return table


def format_table(table: dict) -> str:
    """The method table as Markdown: gold after, win rate vs the initial student and vs ADPA, reward accuracy."""

    def cell(stat):
        return f"{stat['mean']:.3f} ± {stat['ci95']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"

    lines = [
        "| method | gold reward after | win rate vs initial student | win rate vs ADPA | reward accuracy | "
        "length (words) |",
        "|---|---|---|---|---|---|",
        f"| initial student (SFT init) | {cell(table['initial']['gold'])} | – | – | "
        f"{cell(table['initial']['reward_accuracy'])} | {table['initial']['length']['mean']:.2f} |",
    ]
    for row in table["rows"]:
        versus = table["win_rate_vs_adpa"].get(row["method"])
        lines.append(
            f"| {row['method']} | {cell(row['gold_after'])} | {cell(row['win_rate_vs_initial'])} | "
            f"{cell(versus) if versus else '–'} | {cell(row['reward_accuracy'])} | "
            f"{row['length_after']['mean']:.2f} |"
        )
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[str, object]:
    """``"steps=800"`` -> ("steps", 800); values are JSON when they parse, strings otherwise."""
    name, _, value = text.partition("=")
    if name not in AdpaConfig.__dataclass_fields__:
        raise SystemExit(f"--set {text!r}: {name!r} is not an AdpaConfig field")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workbench.methods.adpa_sweeps --seeds 0,1,2 [--set steps=800 ...]``: the method table as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--methods", default=",".join(METHOD_STAGES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output-dir", default="runs/adpa_table")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an AdpaConfig field for every run, e.g. --set state_source=teacher",
    )
    args = parser.parse_args(argv)
    overrides = dict(_parse_override(item) for item in args.set)
    table = method_table(args.methods.split(","), [int(s) for s in args.seeds.split(",")], args.output_dir, **overrides)
    print(format_table(table))


if __name__ == "__main__":
    main()
