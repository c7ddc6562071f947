"""Experiment: choose each method's gym learning rate (``workbench.compare.GYM_LR``) on the gym's validation split.

Every method of ``GYM_LR`` is trained at each rate of the grid (seed 0, the harness's defaults otherwise) and
evaluated by the harness on validation prompts (``EvalConfig(split="validation")``, never the table's test prompts);
a method whose best rate is at an end of the grid is also tried one step further. Prints JSON: the mean validation
gold per rate and the best rate per method. Runs are saved under ``--runs-dir`` and reused.

    python experiments/gym_lr.py                      # every method, ~10 min on 2 cores
    python experiments/gym_lr.py --methods kd plad    # a subset
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

GRID = (1e-4, 3e-4, 1e-3, 3e-3)
BEYOND = {1e-4: 3e-5, 3e-3: 1e-2}  # one step past an end of the grid


def sweep(methods, runs_dir: str, seed: int = 0, eval_prompts: int = 128, overrides: dict | None = None) -> dict:
    """{method: {"gold": {lr: validation gold}, "best": lr}} for ``methods`` (``overrides`` go to every run)."""
    from workbench.compare import EvalConfig, compare

    eval_cfg = EvalConfig(eval_prompts=eval_prompts, split="validation")

    def gold_at(method, rates) -> dict[float, float]:
        table = compare([(method, {"lr": lr}) for lr in rates], seeds=[seed], overrides=overrides,
                        runs_dir=runs_dir, eval_cfg=eval_cfg)
        rows = {row["method"]: row["gold_mean"] for _, row in table.iterrows()}
        return {lr: rows[f"{method}[lr={lr}]"] for lr in rates}

    out = {}
    for method in methods:
        gold = gold_at(method, GRID)
        best = max(gold, key=gold.get)
        if best in BEYOND:
            gold.update(gold_at(method, [BEYOND[best]]))
            best = max(gold, key=gold.get)
        out[method] = {"gold": {str(lr): round(g, 4) for lr, g in sorted(gold.items())}, "best": best}
    return out


def main(argv=None) -> None:
    from workbench.compare import GYM_LR, METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", default=sorted(GYM_LR),
                        help="methods of the comparison registry (default: those with a GYM_LR)")
    parser.add_argument("--runs-dir", default="runs/gym_lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=128)
    a = parser.parse_args(argv)
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; registered: {sorted(METHODS)}")
    with contextlib.redirect_stdout(sys.stderr):  # the trainers' log lines; stdout carries the JSON only
        result = sweep(a.methods, a.runs_dir, a.seed, a.eval_prompts)
    current = {m: GYM_LR.get(m, "the method's own default") for m in a.methods}
    print(json.dumps({"grid": GRID, "current": current, "methods": result,
                      "changed": {m: r["best"] for m, r in result.items() if r["best"] != current[m]}}, indent=1))


if __name__ == "__main__":
    main()
