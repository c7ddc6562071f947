"""Comparison harness: train methods × seeds on the gym, evaluate every run the same way, and tabulate mean ± 95% CI
over seeds; then check the three papers' qualitative claims against the saved runs (the claims ledger).

* ``METHODS`` (the registry, :mod:`workbench.methods`): name → family, config fields and gym learning rate;
  :func:`run_method` trains one at its gym rate (``GYM_LR``, chosen on the validation split; the configs' default
  too).
  ``pad-ppd+sft`` and ``plad+sft`` are the published objectives plus an NLL anchor on the teacher's preferred answer —
  beyond the papers, labelled as such.
* :func:`compare` runs ``Variant``s × seeds, each saved to ``<runs_dir>/<label>/seed<k>/record.json`` (plus the
  method's own ``metrics.json`` / ``history.json``), and returns :func:`summarize`'s table. Saved runs are reused
  (``resume=True``), so a long comparison can be interrupted and figures regenerate without training.
* One evaluation for all (:func:`evaluate_run`): the same held-out prompts, samples and seeds for every method;
  gold reward, paired win rates against the initial student and against the teacher (gold judge), reward accuracy
  on a fixed gold-ranked held-out pair set, Kendall τ of the student's ranking of its own samples with the teacher's
  calibrated ranking and with gold, mean length, wall time.
* :func:`claims_ledger`: each claim → the per-seed paired effect, its 95% CI over seeds, and a verdict.

``python -m workbench.compare --suite full`` runs the full comparison (table + ledger variants) over ``DEFAULT_SEEDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.evaluate import evaluate_policy, length_bucket_gains, mean_ci, prompt_lengths, win_rate
from workbench.methods import GYM_LR, methods_of
from workbench.methods import METHODS as REGISTERED
from workbench.methods.common import HELD_OUT_SEED, RunResult, gym_prompts

logger = logging.getLogger("workbench.compare")

DEFAULT_RUNS_DIR = "results/compare"  # committed: figures regenerate from it on a fresh checkout
DEFAULT_SEEDS = tuple(range(10))  # the committed comparison's seeds (5-9 added at stop 16: claims at 5 seeds moved)
TABLE_METRICS = (
    "gold",
    "win_rate_vs_initial",
    "win_rate_vs_teacher",
    "reward_accuracy",
    "tau_student_teacher",
    "tau_student_gold",
    "length",
    "seconds",
)
REFERENCE_ROWS = ("student (initial)", "teacher")


# --- the registry of methods ---


def method_defaults(name: str) -> dict:
    """The harness's own settings for a method, under any variant's overrides: its gym learning rate and the tuned
    loss weights it uses (its config's defaults) — so a saved run made under other settings is re-run."""
    out = {"lr": GYM_LR[name]} if name in GYM_LR else {}
    tuned = REGISTERED[name].tuned_fields if name in REGISTERED else ()
    if tuned:
        defaults = {f.name: f.default for f in dataclasses.fields(REGISTERED[name].spec.config_class())}
        out.update({k: defaults[k] for k in tuned})
    return out


def setting_of(name: str, param: str):
    """The value of config field ``param`` that the harness runs method ``name`` with: its harness setting
    (:func:`method_defaults`), else the default of the method's config class."""
    harness = method_defaults(name)
    if param in harness:
        return harness[param]
    cls = REGISTERED[name].spec.config_class()
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if param not in by_name:
        raise KeyError(f"{cls.__name__} of method {name!r} has no field {param!r}")
    f = by_name[param]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def run_method(name: str, seed: int, overrides: dict) -> RunResult:
    """Train and evaluate registered method ``name`` at ``seed``: its config built from the method's fields, the
    harness defaults and ``overrides`` (through the family's ``harness_kwargs`` adapter where it has one)."""
    method = REGISTERED[name]
    family = method.spec
    kwargs = {**method.fields, "seed": seed, "progress": False, **method_defaults(name), **overrides}
    if family.harness_kwargs:
        kwargs = getattr(family.load(), family.harness_kwargs)(kwargs)
    return family.run_function()(family.config_class()(**kwargs))


# name -> runner(seed, overrides) -> RunResult, in the registry's (the table's) order
METHODS: dict[str, Callable[[int, dict], RunResult]] = {name: partial(run_method, name) for name in REGISTERED}
ADPA_METHODS = methods_of("adpa")


def adpa_available() -> bool:
    """Whether ``workbench.methods.adpa`` can be imported."""
    return importlib.util.find_spec("workbench.methods.adpa") is not None


def available_methods() -> list[str]:
    """Registered methods whose module exists, in table order."""
    return [m for m in METHODS if m not in ADPA_METHODS or adpa_available()]


@dataclass(frozen=True)
class Variant:
    """A method with parameter overrides, e.g. ``Variant("pad-ppd", {"alpha": 0.0})``; ``cold_cache`` runs it
    with an empty stage cache so its wall time counts every sample and score (for cost claims)."""

    method: str
    overrides: dict = field(default_factory=dict)
    cold_cache: bool = False

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.method
        return self.method + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items())) + "]"

    def __hash__(self):
        return hash((self.method, json.dumps(self.overrides, sort_keys=True), self.cold_cache))


def as_variant(item) -> Variant:
    if isinstance(item, Variant):
        return item
    if isinstance(item, str):
        return Variant(item)
    method, overrides = item
    return Variant(method, dict(overrides))


# the extra runs the claims ledger needs (PAD Fig. 5 α, PAD Table 2 decomposition, PLaD Fig. 2 real pairs)
LEDGER_VARIANTS = (
    Variant("pad-ppd", {"alpha": 0.0}),
    Variant("pad-ppd", {"alpha": 1.0}),
    Variant("pad-ppd", {"n": 8}, cold_cache=True),  # 1 iteration × 8 samples
    Variant("pad-ppd", {"iterations": 2}, cold_cache=True),  # 2 iterations × 4 samples
    Variant("plad", {"real_ratio": 1.0}),
    Variant("plad+sft", {"real_ratio": 1.0}),
    Variant("pad-ppd", {"mcq_order": "cyclic"}),  # beyond the paper: the judge's position prior averaged out
)


def suite(name: str) -> list[Variant]:
    """Named lists of runs: ``table`` (every available method), ``ledger`` (the claim-specific variants),
    ``full`` (both), ``plad-fig2`` (real-pair ratios), ``plad-fig4`` (data fractions for PLaD, PLaD + SFT anchor,
    SeqKD, KD)."""
    if name == "table":
        return [Variant(m) for m in available_methods()]
    if name == "ledger":
        return [v for v in LEDGER_VARIANTS]
    if name == "full":
        return suite("table") + suite("ledger")
    if name == "plad-fig2":
        return [Variant(m, {"real_ratio": r}) for m in ("plad", "plad+sft") for r in (0.25, 0.5, 0.75, 1.0)] + [
            Variant("plad"),
            Variant("plad+sft"),
        ]
    if name == "plad-fig4":
        methods = ("plad", "plad+sft", "seqkd", "kd")
        return [Variant(m, {"data_fraction": f}) for m in methods for f in (0.1, 0.25, 0.5)] + [
            Variant(m) for m in methods
        ]
    raise ValueError(f"unknown suite {name!r}; use table, ledger, full, plad-fig2 or plad-fig4")


# --- one evaluation for every run ---


@dataclass(frozen=True)
class EvalConfig:
    """What every run is evaluated on (the defaults equal the method pipelines' own evaluation, so the samples of
    the trained student come from the stage cache)."""

    teacher: str = "gym-teacher-dpo"
    student: str = "gym-student"
    eval_prompts: int = 128
    eval_samples: int = 4
    max_new_tokens: int = 24
    alpha: float = 0.8  # the teacher ranking for Kendall τ is PAD's calibrated r̂ (Eq. 9)
    mcq_order: str = "random"
    length_edges: tuple[float, ...] = (0, 2, 4, 6, 8, float("inf"))
    split: str = "test"  # the gym split evaluated on: "test" for the table, "validation" for choosing settings

    def held_out(self):
        return gym_prompts(self.split, self.eval_prompts, HELD_OUT_SEED)

    def models(self) -> dict[str, str]:
        """The teacher and student these runs start from, by :func:`workbench.models.model_identity`."""
        from workbench.models import model_identity

        return {
            "teacher": model_identity(self.teacher),
            "student": model_identity(self.student),
            **({"split": self.split} if self.split != "test" else {}),
        }

    def weights(self) -> dict[str, str | None]:
        """The teacher's and student's weights as built here (:func:`workbench.models.weights_fingerprint`; None
        for a model that is not a gym preset): the same :meth:`models` built under other libraries differ here."""
        from workbench.models import weights_fingerprint

        return {"teacher": weights_fingerprint(self.teacher), "student": weights_fingerprint(self.student)}


EVAL_OVERRIDES = ("teacher", "student", "eval_prompts", "eval_samples", "max_new_tokens")


def heldout_preference_pairs(prompts, seed: int = HELD_OUT_SEED) -> list[dict]:
    """One gold-ranked pair per held-out prompt, from the gym's candidate kinds (the judge mix): a fixed,
    model-independent test set for reward accuracy (DESIGN: chosen avg-log-lik > rejected)."""
    from workbench.gym.build import JUDGE_MIX
    from workbench.gym.world import gold_reward, sample_candidate

    rng = random.Random(seed)
    pairs = []
    for prompt in prompts:
        for _ in range(100):
            a, b = sample_candidate(prompt, JUDGE_MIX, rng), sample_candidate(prompt, JUDGE_MIX, rng)
            gold_a, gold_b = gold_reward(prompt, a), gold_reward(prompt, b)
            if gold_a != gold_b:
                chosen, rejected = (a, b) if gold_a > gold_b else (b, a)
                pairs.append({"prompt": prompt.text, "chosen": chosen, "rejected": rejected})
                break
    return pairs


def reward_accuracy(model, tokenizer, pairs: Sequence[dict]) -> float:
    """Fraction of pairs whose chosen answer has the higher per-token log-likelihood (PAD Eq. 7), ties ½."""
    from workbench.scoring import avg_logp_rewards

    prompts = [p["prompt"] for p in pairs]
    chosen = avg_logp_rewards(model, tokenizer, prompts, [p["chosen"] for p in pairs]).numpy()
    rejected = avg_logp_rewards(model, tokenizer, prompts, [p["rejected"] for p in pairs]).numpy()
    return win_rate(chosen, rejected)


def _evaluation_summary(evaluation: dict) -> dict:
    return {
        "gold": evaluation["gold"],
        "per_prompt": evaluation["per_prompt"],
        "length": evaluation["length"],
        "prompt_lengths": prompt_lengths(evaluation).tolist(),
    }


def reference_evaluations(seed: int, eval_cfg: EvalConfig = EvalConfig()) -> dict:
    """The initial student and the teacher on the held-out prompts (seeded like every run), with their reward
    accuracy on the held-out pairs."""
    from workbench.models import load

    held_out = eval_cfg.held_out()
    pairs = heldout_preference_pairs(held_out)
    out = {}
    for role, name in (("student", eval_cfg.student), ("teacher", eval_cfg.teacher)):
        model, tokenizer = load(name)
        evaluation = evaluate_policy(
            model, tokenizer, held_out, n=eval_cfg.eval_samples, seed=seed, max_new_tokens=eval_cfg.max_new_tokens
        )
        out[role] = {**_evaluation_summary(evaluation), "reward_accuracy": reward_accuracy(model, tokenizer, pairs)}
    return out


def evaluate_run(result: RunResult, references: dict, seed: int, eval_cfg: EvalConfig = EvalConfig()) -> dict:
    """The harness's uniform evaluation of a trained student (module docstring); JSON-ready."""
    from workbench.methods.pad import ranking_agreement
    from workbench.models import load

    started = time.perf_counter()
    held_out = eval_cfg.held_out()
    model, tokenizer = result.model, result.tokenizer
    after = evaluate_policy(
        model, tokenizer, held_out, n=eval_cfg.eval_samples, seed=seed, max_new_tokens=eval_cfg.max_new_tokens
    )
    initial, teacher_eval = references["student"], references["teacher"]
    teacher, teacher_tok = load(eval_cfg.teacher)
    ranking = ranking_agreement(
        model,
        tokenizer,
        teacher,
        teacher_tok,
        after["samples"],
        alpha=eval_cfg.alpha,
        mcq_order=eval_cfg.mcq_order,
        seed=seed,
    )
    return {
        **_evaluation_summary(after),
        "win_rate_vs_initial": win_rate(after["per_prompt"], initial["per_prompt"]),
        "win_rate_vs_teacher": win_rate(after["per_prompt"], teacher_eval["per_prompt"]),
        "reward_accuracy": reward_accuracy(model, tokenizer, heldout_preference_pairs(held_out)),
        "tau_student_teacher": ranking["tau_student_teacher"]["mean"],
        "tau_student_gold": ranking["tau_student_gold"]["mean"],
        "length_buckets": length_bucket_gains(
            after["per_prompt"], initial["per_prompt"], initial["prompt_lengths"], eval_cfg.length_edges
        ),
        "eval_seconds": time.perf_counter() - started,
    }


@contextlib.contextmanager
def fresh_stage_cache():
    """Run with an empty, temporary stage cache (samples and scores recomputed), e.g. to time a method cold."""
    import workbench.cache as cache_module

    saved = cache_module._DEFAULT_CACHE
    with tempfile.TemporaryDirectory(prefix="workbench-cold-") as root:
        cache_module._DEFAULT_CACHE = cache_module.StageCache(root)
        try:
            yield
        finally:
            cache_module._DEFAULT_CACHE = saved


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
    started = time.perf_counter()
    with context:
        result = METHODS[variant.method](seed, merged)
    train_seconds = time.perf_counter() - started
    result.save(folder)
    harness = evaluate_run(result, references, seed, eval_cfg)
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


# --- the claims ledger ---


@dataclass(frozen=True)
class Claim:
    """A qualitative claim as a paired comparison of two run labels over seeds.

    ``kind``: ``"greater"`` (a > b), ``"less"`` (a < b), ``"equivalent"`` (|a − b| < margin) or ``"at_most"``
    (a − b < margin: "adds little"). ``a = "@best"`` picks the table method with the highest mean ``metric``;
    ``b = "teacher"`` / ``"student (initial)"`` use the reference evaluations.
    """

    claim_id: str
    paper: str
    statement: str
    a: str
    b: str
    kind: str = "greater"
    metric: str = "gold"
    margin: float = 0.03


CLAIMS = (
    Claim("pad-ppd>vpd", "PAD §5.2, Table 1", "PPD beats VPD", "pad-ppd", "pad-vpd"),
    Claim(
        "pad-alpha0.8>0", "PAD §5.3, Fig. 5", "α = 0.8 beats α = 0 (likelihood only)", "pad-ppd", "pad-ppd[alpha=0.0]"
    ),
    Claim("pad-alpha0.8>1", "PAD §5.3, Fig. 5", "α = 0.8 beats α = 1 (MCQ only)", "pad-ppd", "pad-ppd[alpha=1.0]"),
    Claim(
        "pad-2x4~1x8",
        "PAD §5.4, Table 2",
        "2 iterations × 4 samples ≈ 1 × 8 in quality",
        "pad-ppd[iterations=2]",
        "pad-ppd[n=8]",
        kind="equivalent",
    ),
    Claim(
        "pad-2x4-cheaper",
        "PAD §5.4, Table 2",
        "2 × 4 costs less than 1 × 8 (cold-cache wall time, s)",
        "pad-ppd[iterations=2]",
        "pad-ppd[n=8]",
        kind="less",
        metric="seconds",
    ),
    Claim("adpa>dckd", "ADPA Table 1", "ADPA beats DCKD", "adpa", "dckd"),
    Claim("dckd>sft", "ADPA Table 1", "DCKD beats SFT", "dckd", "sft"),
    Claim("adpa>no-ref", "ADPA ablation", "ADPA without the reference teacher is worse", "adpa", "adpa_no_ref"),
    Claim(
        "student>teacher",
        "PAD §5.2 / PLaD §5.2",
        "a distilled student can surpass the teacher (best method)",
        "@best",
        "teacher",
    ),
    Claim("plad>seqkd", "PLaD §5.2, Table 1", "PLaD beats SeqKD", "plad", "seqkd"),
    Claim(
        "real-pairs-add-little",
        "PLaD §5.3, Fig. 2",
        "real (gold-ordered) pairs add little over pseudo pairs",
        "plad[real_ratio=1.0]",
        "plad",
        kind="at_most",
    ),
    # the same two PLaD claims for the anchored variant (beyond the paper), where training moves the student
    # beyond the papers: PAD asks the judge once, in a random option order (§4.2); averaging over the n cyclic orders
    # removes the judge's preference for a letter position (n times the MCQ passes)
    Claim(
        "pad-cyclic>random",
        "PAD §4.2 (beyond: option order)",
        "the MCQ judgement averaged over cyclic option orders beats one random order",
        "pad-ppd[mcq_order=cyclic]",
        "pad-ppd",
    ),
    Claim("plad+sft>seqkd", "PLaD §5.2 (+SFT anchor)", "PLaD (+ SFT anchor) beats SeqKD", "plad+sft", "seqkd"),
    Claim(
        "real-pairs-add-little+sft",
        "PLaD §5.3 (+SFT anchor)",
        "real pairs add little over pseudo pairs (PLaD + SFT anchor)",
        "plad+sft[real_ratio=1.0]",
        "plad+sft",
        kind="at_most",
    ),
)


def claim_variants(claims: Sequence[Claim] = CLAIMS) -> list[Variant]:
    """The runs the given claims compare (``@best`` needs the whole table: run suite ``table`` for it); ADPA-family
    runs only when ``workbench.methods.adpa`` exists."""
    known = {v.label: v for v in LEDGER_VARIANTS}
    out: list[Variant] = []
    for claim in claims:
        for label in (claim.a, claim.b):
            if label in ("@best", *REFERENCE_ROWS):
                continue
            variant = known.get(label, Variant(label))
            if variant.method in ADPA_METHODS and not adpa_available():
                continue
            if variant not in out:
                out.append(variant)
    return out


def verdict(kind: str, low: float, high: float, margin: float) -> str:
    """holds / does not hold / inconclusive from a CI [low, high] of the effect a − b."""
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    if kind == "greater":
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    if kind == "less":
        return "holds" if high < 0 else "does not hold" if low > 0 else "inconclusive"
    if kind == "equivalent":
        if -margin < low and high < margin:
            return "holds"
        return "does not hold" if low > margin or high < -margin else "inconclusive"
    if kind == "at_most":
        return "holds" if high < margin else "does not hold" if low > margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}")


def claims_ledger(
    records: Sequence[dict], references: dict[int, dict] | None = None, claims: Sequence[Claim] = CLAIMS
) -> pd.DataFrame:
    """Each claim → paired per-seed effect a − b of its metric, mean ± 95% CI over seeds, and the verdict.

    The effect is paired by seed (both runs share the seed's distillation prompts and samples). "holds" needs the
    CI on the claimed side of 0 (or inside ±margin for "equivalent", below +margin for "at_most"); "does not hold"
    needs it wholly on the other side; anything else is "inconclusive". The t quantile is 4.3 at 3 seeds and 2.78 at 5,
    so only large effects are decided.
    """
    frame = runs_frame(records)
    if references:
        frame = pd.concat([reference_frame(references), frame], ignore_index=True)
    table_labels = set(frame.loc[~frame["label"].str.contains(r"\[", regex=True), "label"]) - set(REFERENCE_ROWS)
    rows = []
    for claim in claims:
        a = claim.a
        if a == "@best":
            means = frame[frame["label"].isin(table_labels)].groupby("label")[claim.metric].mean()
            a = str(means.idxmax()) if len(means) else a
        by_seed = {label: frame[frame["label"] == label].set_index("seed")[claim.metric] for label in (a, claim.b)}
        seeds = sorted(set(by_seed[a].index) & set(by_seed[claim.b].index))
        row = {
            "claim": claim.claim_id,
            "paper": claim.paper,
            "statement": claim.statement,
            "a": a,
            "b": claim.b,
            "metric": claim.metric,
            "kind": claim.kind,
            "margin": claim.margin,
            "n_seeds": len(seeds),
        }
        if not seeds:
            missing = [x for x in (a, claim.b) if by_seed[x].empty]
            rows.append(
                {
                    **row,
                    "a_mean": np.nan,
                    "b_mean": np.nan,
                    "effect": np.nan,
                    "ci95": np.nan,
                    "low": np.nan,
                    "high": np.nan,
                    "verdict": f"not measured (no runs of {', '.join(missing)})",
                }
            )
            continue
        diffs = np.array([by_seed[a][s] - by_seed[claim.b][s] for s in seeds], dtype=float)
        stats = mean_ci(diffs)
        half = stats["ci95"]
        low, high = (stats["mean"] - half, stats["mean"] + half) if not np.isnan(half) else (np.nan, np.nan)
        rows.append(
            {
                **row,
                "a_mean": float(np.mean([by_seed[a][s] for s in seeds])),
                "b_mean": float(np.mean([by_seed[claim.b][s] for s in seeds])),
                "effect": stats["mean"],
                "ci95": half,
                "low": low,
                "high": high,
                "verdict": verdict(claim.kind, low, high, claim.margin),
            }
        )
    return pd.DataFrame(rows)


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


def parse_worlds(items: Sequence[str]) -> dict[str, str]:
    """``["default=results/compare", "results/compare_world1"]`` → ``{world: runs folder}`` (a bare folder is named
    by its last part), the ``--across`` arguments of ``workbench.compare`` and ``workbench.figures``."""
    return dict(item.split("=", 1) if "=" in item else (Path(item).name, item) for item in items)


def ledger_across_worlds(runs_dirs: Mapping[str, str | Path]) -> pd.DataFrame:
    """The claims ledger of each runs folder (one gym world each, e.g. ``results/compare`` and
    ``results/compare_world1``) side by side: one row per claim, per world its effect ± CI and verdict, and
    ``across`` — "holds in every world", "does not hold in any world", "depends on the world" (it holds in one and
    fails in another), "undecided (holds / does not hold where decided)" (the other worlds inconclusive or not
    measured), "undecided (inconclusive where measured)" or "not measured"."""
    ledgers = {
        world: claims_ledger(load_records(path), load_references(path)).set_index("claim")
        for world, path in runs_dirs.items()
    }
    rows = []
    for claim in CLAIMS:
        row = {"claim": claim.claim_id, "statement": claim.statement, "metric": claim.metric}
        verdicts = []
        for world, ledger in ledgers.items():
            r = ledger.loc[claim.claim_id]
            row.update(
                {
                    f"{world}_effect": r["effect"],
                    f"{world}_ci95": r["ci95"],
                    f"{world}_verdict": r["verdict"],
                    f"{world}_seeds": r["n_seeds"],
                }
            )
            verdicts.append(r["verdict"])
        decided = {v for v in verdicts if v in ("holds", "does not hold")}
        if all(v == "holds" for v in verdicts):
            row["across"] = "holds in every world"
        elif all(v == "does not hold" for v in verdicts):
            row["across"] = "does not hold in any world"
        elif len(decided) == 2:
            row["across"] = "depends on the world"
        elif decided:
            row["across"] = f"undecided ({decided.pop()} where decided)"
        elif all(v.startswith("not measured") for v in verdicts):
            row["across"] = "not measured"
        else:
            row["across"] = "undecided (inconclusive where measured)"
        rows.append(row)
    return pd.DataFrame(rows)


def format_ledger_across(table: pd.DataFrame, worlds: Sequence[str]) -> str:
    """A markdown table of :func:`ledger_across_worlds`: per world the effect ± CI and verdict, then ``across``."""
    lines = ["| claim | " + " | ".join(worlds) + " | across worlds |", "|---" * (len(worlds) + 2) + "|"]
    for _, r in table.iterrows():
        d = 1 if r["metric"] == "seconds" else 3
        cells = []
        for w in worlds:
            effect = r[f"{w}_effect"]
            cells.append(
                "—"
                if np.isnan(effect)
                else f"{effect:+.{d}f} ± {r[f'{w}_ci95']:.{d}f} ({r[f'{w}_verdict']}, {r[f'{w}_seeds']} seeds)"
            )
        lines.append(f"| {r['statement']} | " + " | ".join(cells) + f" | {r['across']} |")
    return "\n".join(lines)


def format_ledger(ledger: pd.DataFrame) -> str:
    """A markdown table of the ledger."""
    lines = ["| claim | paper | compared | effect (95% CI) | verdict |", "|---|---|---|---|---|"]
    for _, r in ledger.iterrows():
        d = 1 if r["metric"] == "seconds" else 3
        effect = (
            "—"
            if np.isnan(r["effect"])
            else (
                f"{r['effect']:+.{d}f}" + ("" if np.isnan(r["ci95"]) else f" ± {r['ci95']:.{d}f}") + f" ({r['metric']})"
            )
        )
        lines.append(f"| {r['statement']} | {r['paper']} | {r['a']} vs {r['b']} | {effect} | {r['verdict']} |")
    return "\n".join(lines)


def report(runs_dir: str | Path = DEFAULT_RUNS_DIR, name: str | None = None) -> str:
    """The saved runs of ``runs_dir`` as one markdown page, computed from the records alone (nothing is trained):
    the builds they were made on, the table of every label (variants too), the claims ledger and every method against
    the best (``name``: the folder as the page names it, default ``runs_dir`` as given).
    ``python -m workbench.compare --report`` prints it; ``results/compare*/REPORT.md`` are its output for the
    committed records (a test keeps them equal), so a number quoted from them can be traced to its records."""
    records, references = load_records(runs_dir), load_references(runs_dir)
    if not records:
        raise FileNotFoundError(
            f"no run records under {runs_dir} (<label>/seed<k>/record.json): run "
            f"python -m workbench.compare --runs-dir {runs_dir} first"
        )
    seeds = sorted({r["seed"] for r in records})
    builds = sorted({json.dumps(r.get("models"), sort_keys=True) for r in records})
    weights = sorted({json.dumps(r.get("weights"), sort_keys=True) for r in [*records, *references.values()]})
    concurrent = sorted({r.get("concurrent_runs") or 1 for r in records})
    name = name or Path(runs_dir).as_posix()
    lines = [
        f"# The saved comparison in `{name}`",
        "",
        f"{len(records)} runs of {len({r['label'] for r in records})} labels, seeds "
        f"{', '.join(map(str, seeds))}; mean ± 95% CI over seeds (t interval). Generated by "
        f"`python -m workbench.compare --report --runs-dir {name}` from the records alone.",
        "",
        "Models (gym builds): " + "; ".join(f"`{b}`" for b in builds),
        "",
        "Weights (`workbench.models.weights_fingerprint`): "
        + "; ".join("not noted (records made before records noted them)" if w == "null" else f"`{w}`" for w in weights),
        "",
    ]
    warning = mixed_builds(records, references)
    if warning:
        lines += [f"**Warning**: {warning}.", ""]
    if concurrent != [1]:
        lines += [
            f"Runs at a time (`concurrent_runs`): {', '.join(map(str, concurrent))}; a run timed beside "
            "another is slower than alone (the cold-cache runs of the cost claims always run alone).",
            "",
        ]
    lines += [
        "## Every label",
        "",
        format_table(summarize(records, references)),
        "",
        "## The claims ledger (paired by seed)",
        "",
        format_ledger(claims_ledger(records, references)),
        "",
        "## Against the best mean (table methods, paired by seed)",
        "",
        format_against_best(against_best(records)),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the method comparison and the claims ledger on the gym")
    parser.add_argument("--suite", default="full", help="table | ledger | full | plad-fig2 | plad-fig4")
    parser.add_argument("--methods", nargs="*", help="method names instead of a suite")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process (the cold-cache timing runs still run alone)",
    )
    parser.add_argument(
        "--across",
        nargs="+",
        metavar="WORLD=DIR",
        default=None,
        help="print the claims ledger of several runs folders side by side and stop, e.g. "
        "default=results/compare world1=results/compare_world1",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the saved runs of --runs-dir as markdown (table, ledger, against the best) and "
        "stop: nothing is trained",
    )
    parser.add_argument(
        "--gym",
        default=None,
        metavar="SIZE",
        help="another gym build's presets, e.g. world1 (the default recipe built with seed 1): teacher "
        "gym-SIZE-teacher-dpo, student gym-SIZE-student; records in <runs-dir>_SIZE unless "
        "--runs-dir is given",
    )
    args = parser.parse_args(argv)
    if args.across:
        worlds = parse_worlds(args.across)
        print(format_ledger_across(ledger_across_worlds(worlds), list(worlds)))
        return
    overrides = {}
    if args.gym:
        from workbench.gym.build import SIZES

        if args.gym not in SIZES or args.gym == "default":
            parser.error(f"--gym {args.gym}: use one of {sorted(set(SIZES) - {'default'})}")
        overrides = {"teacher": f"gym-{args.gym}-teacher-dpo", "student": f"gym-{args.gym}-student"}
        if args.runs_dir == DEFAULT_RUNS_DIR:
            args.runs_dir = f"{DEFAULT_RUNS_DIR}_{args.gym}"
    if args.report:
        print(report(args.runs_dir), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    variants = [Variant(m) for m in args.methods] if args.methods else suite(args.suite)
    summary = compare(
        variants,
        args.seeds,
        overrides,
        runs_dir=args.runs_dir,
        resume=not args.no_resume,
        on_error="skip",
        jobs=args.jobs,
    )
    records = load_records(args.runs_dir)
    ledger = claims_ledger(records, load_references(args.runs_dir))
    print(format_table(summary[~summary["method"].str.contains(r"\[", regex=True)]))
    shared = sorted({r.get("concurrent_runs", 1) for r in records if r["seed"] in args.seeds} - {1})
    if shared:
        print(
            f"(seconds: some runs were timed {' or '.join(map(str, shared))} at a time (--jobs), so they are "
            f"longer than alone; the cold-cache runs of the cost claims always run alone)"
        )
    print()
    print(format_ledger(ledger))
    print()
    ran = set(summary["method"])
    print(format_against_best(against_best([r for r in records if r["seed"] in args.seeds and r["label"] in ran])))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
