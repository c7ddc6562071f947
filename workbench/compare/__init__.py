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
* :func:`claims_ledger`: each claim → the paired effect, its 95% interval (bootstrap over seeds and prompts,
  :mod:`workbench.compare.stats`), the p-value of its test, Holm's adjustment over the ledger, and a verdict; the
  margins of its "≈" and "adds little" claims are fixed in ``MARGINS`` with their reasons.

``python -m workbench.compare --suite full`` runs the full comparison (table + ledger variants) over ``DEFAULT_SEEDS``.
"""

from workbench.compare import stats
from workbench.compare.claims import (
    CLAIMS,
    GAP_FRACTION,
    MARGINS,
    Claim,
    Margin,
    claim_variants,
    claims_ledger,
    format_ledger,
    format_ledger_across,
    format_margins,
    ledger_across_worlds,
    parse_worlds,
    verdict,
)
from workbench.compare.cli import main, report
from workbench.compare.conditions import (
    at_setting,
    at_world_rates,
    budget_matched,
    curve_frame,
    curve_summary,
    format_curve_summary,
    format_gold_by_setting,
    format_student_vs_teacher,
    gold_by_setting,
    setting_scores,
    settings_of,
    student_vs_teacher,
    teacher_matched,
)
from workbench.compare.evaluation import (
    EVAL_OVERRIDES,
    EvalConfig,
    ValidationCurve,
    evaluate_run,
    fresh_stage_cache,
    held_out_tasks,
    heldout_preference_pairs,
    reference_evaluations,
    reward_accuracy,
    setting_name,
)
from workbench.compare.harness import compare, load_records, load_references, mixed_builds, run_one
from workbench.compare.runs import (
    ADPA_METHODS,
    DEFAULT_RUNS_DIR,
    DEFAULT_SEEDS,
    LEDGER_VARIANTS,
    METHODS,
    REFERENCE_ROWS,
    TABLE_METRICS,
    Variant,
    adpa_available,
    as_variant,
    available_methods,
    method_defaults,
    run_method,
    setting_of,
    suite,
)
from workbench.compare.tables import (
    SUPERVISION,
    against_best,
    cost_and_ceiling,
    format_against_best,
    format_cost_and_ceiling,
    format_gold_per_task,
    format_table,
    format_tau_sets,
    gold_per_task,
    paired_difference,
    prompt_scores,
    reference_frame,
    runs_frame,
    summarize,
    supervision_of,
    tau_sets,
    tau_sets_of,
)
from workbench.methods import GYM_LR

__all__ = [
    "GYM_LR",
    "DEFAULT_RUNS_DIR",
    "DEFAULT_SEEDS",
    "TABLE_METRICS",
    "REFERENCE_ROWS",
    "method_defaults",
    "setting_of",
    "run_method",
    "METHODS",
    "ADPA_METHODS",
    "adpa_available",
    "available_methods",
    "Variant",
    "as_variant",
    "LEDGER_VARIANTS",
    "suite",
    "EvalConfig",
    "EVAL_OVERRIDES",
    "heldout_preference_pairs",
    "held_out_tasks",
    "reward_accuracy",
    "reference_evaluations",
    "evaluate_run",
    "fresh_stage_cache",
    "run_one",
    "load_records",
    "load_references",
    "mixed_builds",
    "compare",
    "runs_frame",
    "reference_frame",
    "summarize",
    "format_table",
    "prompt_scores",
    "paired_difference",
    "against_best",
    "format_against_best",
    "tau_sets_of",
    "tau_sets",
    "format_tau_sets",
    "gold_per_task",
    "format_cost_and_ceiling",
    "format_gold_per_task",
    "cost_and_ceiling",
    "SUPERVISION",
    "supervision_of",
    "setting_scores",
    "at_setting",
    "budget_matched",
    "teacher_matched",
    "at_world_rates",
    "gold_by_setting",
    "settings_of",
    "format_gold_by_setting",
    "student_vs_teacher",
    "format_student_vs_teacher",
    "curve_frame",
    "curve_summary",
    "format_curve_summary",
    "ValidationCurve",
    "setting_name",
    "Claim",
    "CLAIMS",
    "GAP_FRACTION",
    "Margin",
    "MARGINS",
    "format_margins",
    "claim_variants",
    "verdict",
    "claims_ledger",
    "parse_worlds",
    "ledger_across_worlds",
    "format_ledger_across",
    "format_ledger",
    "report",
    "main",
    "stats",
]
