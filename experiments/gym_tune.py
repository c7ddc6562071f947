"""Experiment: choose the gym settings of the comparison harness on the gym's *validation* split.

By default it chooses each method's learning rate (``workbench.methods.GYM_LR``): every method is trained at
each rate of the grid (the harness's defaults otherwise) and evaluated by the harness on validation prompts
(``EvalConfig(split="validation")``, never the table's test prompts); a method whose best rate is at an end of the grid
is also tried one step further. ``changed`` lists a method only when its best value beats the current one by more than
the seed noise (paired by seed, the 95% CI of the difference above 0: :func:`versus_current`); a lead inside the noise
keeps the current setting, and a current value the grid does not hold is not compared (``vs_current`` null, no
change). The current value is the harness's setting, else the method config's default
(:func:`workbench.compare.setting_of`). ``--param NAME --grid V ...`` sweeps any other config field the same way (e.g.
the ADPA family's ``alpha`` / ``gamma``; no extension past the grid's ends). Prints JSON: the mean validation gold per
value (over ``--seeds``) and the best value per method. Runs are saved under ``--runs-dir`` and reused.

    python experiments/gym_tune.py                      # every method's learning rate, ~10 min on 2 cores
    python experiments/gym_tune.py --methods kd plad    # a subset
    python experiments/gym_tune.py --methods dckd --param alpha --grid 0.2 0.5 1 2 5 --seeds 0 1
    python experiments/gym_tune.py --methods adpa+ --param dckd_lr --grid 1e-4 1e-3 --set alpha=5 --seeds 0 1
    python experiments/gym_tune.py --gym hard --methods pad-ppd dckd --seeds 0 1 --runs-dir runs/gym_tune_hard
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

GRID = (1e-4, 3e-4, 1e-3, 3e-3)
BEYOND = {1e-4: 3e-5, 3e-3: 1e-2}  # one step past an end of the learning-rate grid


def sweep(
    methods,
    runs_dir: str,
    seeds=(0,),
    eval_prompts: int = 128,
    overrides: dict | None = None,
    param: str = "lr",
    grid=None,
    gym: str | None = None,
    jobs: int = 1,
) -> dict:
    """{method: {"gold": {value: mean validation gold over seeds}, "best": value}} for ``methods``.

    ``param`` is the swept config field over ``grid`` (default: the learning rate over ``GRID``, extended by
    ``BEYOND`` when an end wins); ``overrides`` go to every run; ``gym``: another gym build's presets (teacher
    gym-GYM-teacher-dpo, student gym-GYM-student) for training and evaluation; ``jobs`` runs train side by side.
    Settings are chosen on the table's metric alone (gold at the table's temperature): the runs skip the other
    sampling settings and the learning curve."""
    from workbench.compare import EvalConfig, compare

    models = {"teacher": f"gym-{gym}-teacher-dpo", "student": f"gym-{gym}-student"} if gym else {}
    overrides = {**(overrides or {}), **models} or None
    eval_cfg = EvalConfig(eval_prompts=eval_prompts, split="validation", also_at=(), curve_every=0, **models)
    if grid is None:
        if param != "lr":
            raise ValueError(f"param={param!r} needs a grid of values (only the learning rate has a default grid)")
        grid = GRID
    beyond = BEYOND if param == "lr" else {}

    def gold_at(method, values) -> dict:
        table = compare(
            [(method, {param: v}) for v in values],
            seeds=list(seeds),
            overrides=overrides,
            runs_dir=runs_dir,
            eval_cfg=eval_cfg,
            jobs=jobs,
        )
        rows = {row["method"]: row["gold_mean"] for _, row in table.iterrows()}
        return {v: rows[f"{method}[{param}={v}]"] for v in values}

    out = {}
    for method in methods:
        gold = gold_at(method, grid)
        best = max(gold, key=gold.get)
        if best in beyond:
            gold.update(gold_at(method, [beyond[best]]))
            best = max(gold, key=gold.get)
        out[method] = {"gold": {str(v): round(g, 4) for v, g in sorted(gold.items())}, "best": best}
    return out


def versus_current(runs_dir: str, method: str, param: str, best, current, seeds) -> dict | None:
    """The best value against the current one, paired by seed: mean validation-gold difference ± 95% CI and whether
    to change. The rule: change only when the CI lies above 0 — a lead inside the seed noise keeps the current
    setting (a tie), so re-tuning does not churn settings on noise. None when ``current`` was not in the sweep."""
    from workbench.compare import load_records
    from workbench.evaluate import mean_ci

    if best == current:
        return {"diff": 0.0, "ci95": 0.0, "change": False}
    gold = {(r["label"], r["seed"]): r["harness"]["gold"]["mean"] for r in load_records(runs_dir)}
    best_label, current_label = f"{method}[{param}={best}]", f"{method}[{param}={current}]"
    pairs = [
        gold[(best_label, s)] - gold[(current_label, s)]
        for s in seeds
        if (best_label, s) in gold and (current_label, s) in gold
    ]
    if not pairs:
        return None
    diff = mean_ci(pairs)
    return {
        "diff": round(diff["mean"], 4),
        "ci95": round(diff["ci95"], 4),
        "change": bool(diff["mean"] - diff["ci95"] > 0),
    }


def _value(text: str):
    """A grid value from the command line: int, float, bool or string, as papermill would read it."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main(argv=None) -> None:
    from workbench.compare import METHODS, EvalConfig, setting_of
    from workbench.methods import GYM_LR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="*",
        default=sorted(GYM_LR),
        help="methods of the comparison registry (default: those with a GYM_LR)",
    )
    parser.add_argument("--param", default="lr", help="config field to sweep (default: the learning rate)")
    parser.add_argument(
        "--grid",
        nargs="*",
        type=_value,
        default=None,
        help="values of --param (required unless it is lr, whose grid is GRID)",
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config field held fixed for every run, e.g. --set alpha=5 (repeatable)",
    )
    parser.add_argument("--runs-dir", default="runs/gym_tune")
    parser.add_argument("--gym", default=None, help="another gym build's presets, e.g. hard (default: the default gym)")
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side (one per core)")
    a = parser.parse_args(argv)
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; registered: {sorted(METHODS)}")
    if a.param != "lr" and not a.grid:
        parser.error(f"--param {a.param} needs --grid VALUE [VALUE ...]")
    if any("=" not in item for item in a.set):
        parser.error(f"--set takes FIELD=VALUE items, got {a.set}")
    fixed = {k: _value(v) for k, v in (item.split("=", 1) for item in a.set)}
    with contextlib.redirect_stdout(sys.stderr):  # the trainers' log lines; stdout carries the JSON only
        result = sweep(
            a.methods,
            a.runs_dir,
            a.seeds,
            a.eval_prompts,
            overrides=fixed or None,
            param=a.param,
            grid=a.grid,
            gym=a.gym,
            jobs=a.jobs,
        )
    current = {m: setting_of(m, a.param) for m in a.methods}
    for m, r in result.items():
        r["vs_current"] = versus_current(a.runs_dir, m, a.param, r["best"], current[m], a.seeds)
    built = EvalConfig(**({"teacher": f"gym-{a.gym}-teacher-dpo", "student": f"gym-{a.gym}-student"} if a.gym else {}))
    print(
        json.dumps(
            {
                "gym": a.gym or "default",
                "models": built.models(),  # the builds the settings were chosen on, and their weights' hashes
                "weights": built.weights(),
                "param": a.param,
                "grid": a.grid or GRID,
                "seeds": a.seeds,
                "fixed": fixed,
                "current": current,
                "methods": result,
                "changed": {
                    m: r["best"]
                    for m, r in result.items()
                    if r["best"] != current[m] and (r["vs_current"] or {}).get("change", False)
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
