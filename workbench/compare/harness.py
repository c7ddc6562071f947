"""Running (variant, seed) pairs, saving their records, and reusing saved ones that were made the same way."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from workbench.compare.evaluation import (
    EVAL_OVERRIDES,
    EvalConfig,
    OptimizerSteps,
    ValidationCurve,
    evaluate_run,
    fresh_stage_cache,
    reference_evaluations,
    run_cost,
)
from workbench.compare.runs import (
    DEFAULT_RUNS_DIR,
    DEFAULT_SEEDS,
    METHODS,
    Variant,
    as_variant,
    available_methods,
    method_defaults,
)
from workbench.compare.tables import summarize
from workbench.metering import metered
from workbench.trainers import watching

logger = logging.getLogger("workbench.compare")

# --- running and saving ---


def _json_ready(value):
    return json.loads(json.dumps(value, default=float))


def _run_dir(runs_dir: str | Path, label: str, seed: int) -> Path:
    safe = label.replace("/", "_")
    return Path(runs_dir) / safe / f"seed{seed}"


def run_one(
    variant: Variant,
    seed: int,
    runs_dir: str | Path,
    references: dict,
    overrides: dict | None = None,
    eval_cfg: EvalConfig = EvalConfig(),
    concurrent_runs: int = 1,
) -> dict:
    """Train one (variant, seed), evaluate it with :func:`evaluate_run`, save and return its record
    (``concurrent_runs``: how many runs shared the machine meanwhile, recorded beside its wall time)."""
    if variant.method not in METHODS:
        raise KeyError(f"unknown method {variant.method!r}; registered: {sorted(METHODS)}")
    folder = _run_dir(runs_dir, variant.label, seed)
    merged = {**(overrides or {}), **variant.overrides, "output_dir": str(folder)}
    context = fresh_stage_cache() if variant.cold_cache else contextlib.nullcontext()
    curve = ValidationCurve(eval_cfg, seed) if eval_cfg.curve_every else None
    steps = OptimizerSteps()
    started = time.perf_counter()
    with context, watching(steps, *([curve] if curve else [])), metered() as meter:
        result = METHODS[variant.method](seed, merged)
    # the validation curve's points are not the method's cost
    train_seconds = time.perf_counter() - started - (curve.seconds if curve else 0.0)
    result.save(folder)
    harness = evaluate_run(result, references, seed, eval_cfg)
    harness["cost"] = run_cost(
        meter, steps.steps, merged.get("student", eval_cfg.student), result.metrics.get("config")
    )
    if curve:
        harness["curve"] = {"split": curve.cfg.split, "prompts": len(curve.prompts), "points": curve.points}
    metrics = {k: v for k, v in result.metrics.items() if k not in ("per_prompt_before", "per_prompt_after")}
    record = _json_ready(
        {
            "label": variant.label,
            "method": variant.method,
            "seed": seed,
            "overrides": variant.overrides,
            "cold_cache": variant.cold_cache,
            "train_seconds": train_seconds,
            "concurrent_runs": concurrent_runs,
            "metrics": metrics,
            "harness": harness,
            "models": eval_cfg.models(),
            "weights": eval_cfg.weights(),
            "method_defaults": method_defaults(variant.method),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").write_text(json.dumps(record, indent=1))
    return record


def load_records(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[dict]:
    """Every saved run record under ``runs_dir`` (``<label>/seed<k>/record.json``)."""
    return [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob("*/seed*/record.json"))]


def load_references(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> dict[int, dict]:
    """Saved reference evaluations (initial student, teacher) per seed."""
    return {
        int(p.stem.removeprefix("seed")): json.loads(p.read_text())
        for p in sorted(Path(runs_dir, "_references").glob("seed*.json"))
    }


def _resumable(path: Path, models: dict, defaults: dict | None = None, weights: dict | None = None) -> dict | None:
    """The saved record at ``path`` if it was made on ``models`` (the same teacher/student builds) with the method's
    current harness ``defaults`` (its ``GYM_LR``) and, where it noted them, the same ``weights`` (the builds' tensors
    as trained here: the same recipe trained under other library versions differs), else None: a record of another
    gym build, weights or learning rate (or one saved before records named their models) is re-run, and why is
    logged. A record saved before records noted weights is kept; :func:`mixed_builds` reports such a mix."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("models") != models:
        logger.info("%s was made on %s, not on %s: re-running it", path, saved.get("models", "unnamed models"), models)
        return None
    if defaults is not None and saved.get("method_defaults") != defaults:
        logger.info("%s was made with %s, not %s: re-running it", path, saved.get("method_defaults"), defaults)
        return None
    if weights is not None and saved.get("weights") is not None and saved["weights"] != weights:
        logger.info(
            "%s was made on other weights of these models (%s, not %s: the gym trained under other library "
            "versions): re-running it",
            path,
            saved["weights"],
            weights,
        )
        return None
    return saved


def mixed_builds(records: Sequence[dict], references: dict[int, dict] | None = None) -> str | None:
    """None when every record (and reference) was made on one build of its models' weights, else a warning that
    says how many records each build (or an unnoted one, saved before records noted weights) made."""
    from collections import Counter

    made_on = Counter(json.dumps(r.get("weights"), sort_keys=True) for r in [*records, *(references or {}).values()])
    if len(made_on) <= 1:
        return None
    counts = ", ".join(f"{n} on {'unnoted weights' if key == 'null' else key}" for key, n in made_on.most_common())
    return (
        f"these records were made on {len(made_on)} builds of the models' weights ({counts}): a table or claim "
        "across them mixes builds; --no-resume (or another --runs-dir) re-runs them on this machine's build"
    )


def _pool_start(threads: int) -> None:
    """A worker process of ``compare(jobs=...)``: its share of the cores, and the harness's log lines."""
    import os

    os.environ["WORKBENCH_THREADS"] = str(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def _pool_run(job: tuple) -> dict:
    return run_one(*job)


def _run_concurrently(jobs: list[tuple], workers: int) -> list:
    """``run_one(*job)`` for each job, ``workers`` at a time in fresh processes; a record or the exception, each."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = int(os.environ.get("WORKBENCH_THREADS") or max(1, len(os.sched_getaffinity(0)) // workers))
    logger.info("%d runs, %d at a time, %d thread(s) each", len(jobs), workers, threads)
    context = multiprocessing.get_context("spawn")  # no forked torch / OpenMP state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_pool_start, initargs=(threads,)) as pool:
        futures = [pool.submit(_pool_run, job) for job in jobs]
        return [future.exception() or future.result() for future in futures]


def compare(
    methods: Iterable = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    overrides: dict | None = None,
    *,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    resume: bool = True,
    eval_cfg: EvalConfig = EvalConfig(),
    on_error: str = "raise",
    jobs: int = 1,
) -> pd.DataFrame:
    """Train and evaluate ``methods`` × ``seeds`` and return the summary table (mean ± 95% CI over seeds).

    Args:
        methods: names from ``METHODS``, ``(name, overrides)`` pairs or ``Variant``s; None = every available one.
        seeds: training seeds (each also seeds sampling; the held-out prompts are the same for all).
        overrides: config fields applied to every run (e.g. ``{"steps": 50}``), under each variant's own.
        runs_dir: where records are saved; with ``resume`` an existing record is loaded, not re-run.
        on_error: "raise", or "skip" to log a failing run (its traceback in ``<run>/error.txt``) and go on.
        jobs: runs at a time, each in its own process with its share of the cores (``$WORKBENCH_THREADS`` each
            when set). A run's result does not depend on it; its wall time does, so records note
            ``concurrent_runs``, and the cold-cache variants that cost claims time run alone, after the others.
    Returns:
        :func:`summarize` of the records of these methods and seeds, with reference rows for the initial student
        and the teacher.
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs}; run at least 1 run at a time")
    variants = [as_variant(m) for m in (methods if methods is not None else available_methods())]
    # the models and evaluation sizes a global override changes must change the references too
    shared = {k: v for k, v in (overrides or {}).items() if k in EVAL_OVERRIDES}
    eval_cfg = dataclasses.replace(eval_cfg, **shared)
    runs_dir = Path(runs_dir)
    models, weights = eval_cfg.models(), eval_cfg.weights()
    done: dict[tuple[str, int], dict | Exception] = {}
    pending = []  # (variant, seed, references) in table order
    for seed in seeds:
        ref_path = runs_dir / "_references" / f"seed{seed}.json"
        references = _resumable(ref_path, models, weights=weights) if resume else None
        if references is None:
            references = {**_json_ready(reference_evaluations(seed, eval_cfg)), "models": models, "weights": weights}
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            ref_path.write_text(json.dumps(references))
        for variant in variants:
            path = _run_dir(runs_dir, variant.label, seed) / "record.json"
            saved = _resumable(path, models, method_defaults(variant.method), weights) if resume else None
            if saved is not None:
                done[variant.label, seed] = saved
            else:
                pending.append((variant, seed, references))
    alone = [job for job in pending if jobs == 1 or job[0].cold_cache]
    together = [job for job in pending if job not in alone]
    if together:
        outcomes = _run_concurrently([(v, s, runs_dir, r, overrides, eval_cfg, jobs) for v, s, r in together], jobs)
        for (variant, seed, _), outcome in zip(together, outcomes):
            done[variant.label, seed] = outcome
    for variant, seed, references in alone:
        logger.info("running %s seed %d", variant.label, seed)
        try:
            done[variant.label, seed] = run_one(variant, seed, runs_dir, references, overrides, eval_cfg)
        except Exception as error:
            if on_error != "skip":
                raise
            done[variant.label, seed] = error
    records = []
    for (label, seed), outcome in done.items():
        if not isinstance(outcome, Exception):
            records.append(outcome)
            continue
        if on_error != "skip":
            raise outcome
        import traceback

        folder = _run_dir(runs_dir, label, seed)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(outcome)))
        logger.error("run %s seed %d failed (traceback in %s); skipped", label, seed, folder / "error.txt")
    order = {(v.label, s): i for i, (v, s) in enumerate((v, s) for s in seeds for v in variants)}
    records.sort(key=lambda r: order.get((r["label"], r["seed"]), len(order)))
    references = load_references(runs_dir)
    mixed = mixed_builds(records, {seed: references[seed] for seed in seeds if seed in references})
    if mixed:
        logger.warning("%s", mixed)
    return summarize(records, references, seeds=seeds)
