"""Which runs the comparison makes: the registered methods at the harness's settings, variants and named suites."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from workbench.methods import GYM_LR, methods_of
from workbench.methods import METHODS as REGISTERED
from workbench.methods.common import RunResult

logger = logging.getLogger("workbench.compare")

DEFAULT_RUNS_DIR = "results/compare"  # committed: figures regenerate from it on a fresh checkout
DEFAULT_SEEDS = tuple(range(10))  # the committed comparison's seeds (at 5 seeds some claims' verdicts were unstable)
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
    with an empty stage cache so its wall time counts every sample and score (for cost claims); ``name`` labels it
    as a table method where its overrides are what the method means in a world (KD on the teacher's samples on real
    text, where there are no gold answers)."""

    method: str
    overrides: dict = field(default_factory=dict)
    cold_cache: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if not self.overrides:
            return self.method
        return self.method + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items())) + "]"

    def __hash__(self):
        return hash((self.method, json.dumps(self.overrides, sort_keys=True), self.cold_cache, self.name))


def as_variant(item) -> Variant:
    if isinstance(item, Variant):
        return item
    if isinstance(item, str):
        return Variant(item)
    method, overrides = item
    return Variant(method, dict(overrides))


# the extra runs the claims ledger needs (PAD Fig. 5 α, PAD Table 2 decomposition, PLaD Fig. 2 real pairs, PLaD Eq. 4
# as written)
LEDGER_VARIANTS = (
    Variant("pad-ppd", {"alpha": 0.0}),
    Variant("pad-ppd", {"alpha": 1.0}),
    Variant("pad-ppd", {"n": 8}, cold_cache=True),  # 1 iteration × 8 samples
    Variant("pad-ppd", {"iterations": 2}, cold_cache=True),  # 2 iterations × 4 samples
    Variant("pad-ppd", {"iterations": 2, "steps": 150}, cold_cache=True),  # 2 × 4 at 1 × 8's optimizer steps
    Variant("plad", {"length_normalize": False}),  # PLaD's Eq. 4 as written: summed log-likelihood in the hinge
    Variant("plad", {"real_ratio": 1.0}),
    Variant("plad+sft", {"real_ratio": 1.0}),
    Variant("pad-ppd", {"mcq_order": "cyclic"}),  # beyond the paper: the judge's position prior averaged out
)


# real text: the verifiable prompt set on SmolLM2 (workbench.real_text), sized for 2 CPU cores. One learning rate for
# every method, fixed before any run (the teacher's DPO moved SmolLM2 at 2e-5 in 96 steps; a run here has 16 steps),
# not chosen per method; KD trains on the teacher's samples (no gold answers on this set).
REAL_TEXT_RUNS_DIR = "results/compare_real_text"
REAL_TEXT_SEEDS = (0, 1, 2)
REAL_TEXT_METHODS = ("pad-ppd", "plad", "seqkd", "kd", "dpo", "dckd", "adpa")


def real_text_overrides() -> dict:
    """The config fields every real-text run shares (model names from :mod:`workbench.real_text.store`)."""
    from workbench.real_text.store import BASE_MODEL, TEACHER

    return {
        "dataset": "verifiable",
        "teacher": TEACHER,
        "student": BASE_MODEL,
        "max_new_tokens": 48,
        "train_prompts": 64,
        "eval_prompts": 96,
        "eval_samples": 2,
        "steps": 16,
        "batch_size": 4,
        "lr": 5e-5,
    }


# matched budgets: every table method at the optimizer steps and examples per step most methods run at (PAD's and the
# baselines'), ADPA+'s two stages sharing the steps; learning rates stay those chosen at each method's own budget
BUDGET_STEPS, BUDGET_BATCH = 300, 16


def budget_overrides(method: str) -> dict:
    """The overrides that put ``method`` at the matched budget (:data:`BUDGET_STEPS` × :data:`BUDGET_BATCH`); empty
    where its harness settings are that budget already."""
    steps = (
        {"steps": BUDGET_STEPS // 2, "dckd_steps": BUDGET_STEPS // 2} if method == "adpa+" else {"steps": BUDGET_STEPS}
    )
    wanted = {**steps, "batch_size": BUDGET_BATCH}
    return {k: v for k, v in wanted.items() if setting_of(method, k) != v}


# matched teacher calls: one teacher budget for every table method that uses a teacher, the 13.2k teacher positions
# SeqKD and PLaD spend sampling answers to their 1024 training prompts (results/compare_cost). Each other method's
# teacher work, measured there, scales with its training prompts (PAD's reward, PRO's and SimPO's rankings and DPO's
# pairs score every student sample, 169k on 1024 prompts; the DCKD / ADPA family caches teacher top-k once per
# sequence, 21k-77k) or with its optimizer steps (KD and reverse KL forward the teacher on every training batch,
# 76k and 98k in 300 steps), so each is scaled in that one setting to 13.2k; SFT uses no teacher.
TEACHER_BUDGET_OWN = ("seqkd", "plad", "plad+sft", "sft")  # at or under that budget with their own settings
TEACHER_BUDGET: dict[str, dict] = {
    # 169k x 80 / 1024
    **{m: {"train_prompts": 80} for m in ("pad-ppd", "pad-vpd", "pad-ppd+sft", "pro", "simpo", "dpo")},
    "reverse-kl": {"steps": 40},  # 98.4k x 40 / 300
    "kd": {"steps": 52},  # 76.0k x 52 / 300
    "dckd": {"train_prompts": 334},  # 40.4k x 334 / 1024
    **{m: {"train_prompts": 315} for m in ("adpa", "q_argmax", "q_softmax")},  # 42.8k x 315 / 1024
    "adpa_no_ref": {"train_prompts": 630},  # 21.4k x 630 / 1024
    "adpa+": {"train_prompts": 175},  # 77.1k x 175 / 1024
}


def teacher_budget_variants() -> list[Variant]:
    """Each method of :data:`TEACHER_BUDGET` scaled to SeqKD's and PLaD's teacher positions."""
    return [Variant(m, overrides) for m, overrides in TEACHER_BUDGET.items()]


# learning rates re-chosen on a world's own validation prompts, where they beat the default world's rate (the one the
# table runs at) beyond the two tuning seeds' noise: results/gym_tune/hard_lr_seeds_0-1.json's "changed"
WORLD_LR: dict[str, dict[str, float]] = {"hard": {"reverse-kl": 1e-3, "adpa_no_ref": 3e-3}}


def world_lr_variants(world: str) -> list[Variant]:
    """The table methods at the learning rates :data:`WORLD_LR` re-chose on gym world ``world`` (none for a world
    whose rates were not re-chosen or stayed)."""
    return [Variant(m, {"lr": lr}) for m, lr in WORLD_LR.get(world, {}).items()]


SUITES = (
    "table",
    "ledger",
    "full",
    "plad-fig2",
    "plad-fig4",
    "pad-fig5",
    "pad-table2",
    "real-text",
    "budget",
    "teacher-budget",
    "world-lr",
    "cost",
)


def suite(name: str, world: str = "default") -> list[Variant]:
    """Named lists of runs: ``table`` (every available method), ``ledger`` (the claim-specific variants),
    ``full`` (both), ``plad-fig2`` (real-pair ratios), ``plad-fig4`` (data fractions for PLaD, PLaD + SFT anchor,
    SeqKD, KD), ``pad-fig5`` (PAD-PPD over the α grid 0, 0.2, ..., 1 of PAD Fig. 5), ``pad-table2`` (PAD-PPD and its
    samples × iterations variants of PAD Table 2), ``real-text`` (the methods run on real text,
    :data:`REAL_TEXT_METHODS`; KD on the teacher's samples), ``budget`` (each table method not already at the
    matched budget, at it: :func:`budget_overrides`), ``teacher-budget`` (every other method that uses a teacher,
    scaled to SeqKD's and PLaD's teacher positions: :data:`TEACHER_BUDGET`), ``world-lr`` (the table methods at the
    learning rates re-chosen on gym world ``world``: :func:`world_lr_variants`), ``cost`` (every table method with an
    empty stage cache, alone: its whole wall time and forwarded tokens)."""
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
    if name == "real-text":
        return [Variant(m, {"kd_targets": "teacher"}, name=m) if m == "kd" else Variant(m) for m in REAL_TEXT_METHODS]
    if name == "budget":
        return [Variant(m, overrides) for m in available_methods() if (overrides := budget_overrides(m))]
    if name == "pad-table2":  # PAD's samples-and-iterations claims alone (e.g. on the 8-option judge's world)
        return [Variant("pad-ppd"), *(v for v in LEDGER_VARIANTS if v.method == "pad-ppd" and v.cold_cache)]
    if name == "teacher-budget":
        return teacher_budget_variants()
    if name == "world-lr":
        return world_lr_variants(world)
    if name == "cost":  # each method's whole work, measured: an empty stage cache, one run at a time
        return [Variant(m, cold_cache=True) for m in available_methods()]
    if name == "pad-fig5":
        return [Variant("pad-ppd", {"alpha": a}) for a in (0.0, 0.2, 0.4, 0.6, 1.0)] + [Variant("pad-ppd")]
    raise ValueError(f"unknown suite {name!r}; use {', '.join(SUITES)}")
