"""Comparison harness: seed statistics on known samples, verdict rules, the ledger on synthetic records, the table
schema, held-out pairs, and a tiny end-to-end comparison of two methods × two seeds (with resume)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from workbench import compare as compare_module
from workbench.compare import (
    CLAIMS,
    METHODS,
    TABLE_METRICS,
    Variant,
    against_best,
    claims_ledger,
    compare,
    format_ledger,
    format_table,
    heldout_preference_pairs,
    load_records,
    load_references,
    mixed_builds,
    suite,
    summarize,
    verdict,
)
from workbench.evaluate import length_bucket_gains, mean_ci
from workbench.gym.build import SIZES
from workbench.methods import METHODS as REGISTERED
from workbench.models import weights_fingerprint

TINY = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    train_prompts=16,
    eval_prompts=8,
    eval_samples=2,
    steps=2,
    batch_size=4,
)


def test_mean_ci_on_known_samples():
    stats = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3: half-width = t_{0.975, 2} / sqrt(3) = 4.3027 / 1.7321
    assert stats["mean"] == 2.0 and stats["n"] == 3
    assert stats["ci95"] == pytest.approx(student_t.ppf(0.975, 2) / math.sqrt(3)) == pytest.approx(2.4841, abs=1e-4)
    assert mean_ci([5.0, 5.0])["ci95"] == 0.0
    assert math.isnan(mean_ci([0.3])["ci95"])


@pytest.mark.parametrize(
    "kind, low, high, expected",
    [
        ("greater", 0.01, 0.2, "holds"),
        ("greater", -0.2, -0.01, "does not hold"),
        ("greater", -0.1, 0.1, "inconclusive"),
        ("less", -0.2, -0.01, "holds"),
        ("less", 0.01, 0.2, "does not hold"),
        ("equivalent", -0.02, 0.02, "holds"),
        ("equivalent", 0.04, 0.1, "does not hold"),
        ("equivalent", -0.01, 0.05, "inconclusive"),
        ("at_most", -0.5, 0.02, "holds"),
        ("at_most", 0.04, 0.2, "does not hold"),
        ("at_most", 0.0, 0.1, "inconclusive"),
        ("greater", float("nan"), float("nan"), "inconclusive"),
    ],
)
def test_verdict_rules(kind, low, high, expected):
    assert verdict(kind, low, high, margin=0.03) == expected


def _record(label, seed, gold, method=None, overrides=None, seconds=10.0, **harness):
    method = method or label.split("[")[0]
    buckets = [{"low": 0.0, "high": 2.0, "prompts": 2, "delta_win_rate": gold - 0.3, "win_rate": 0.5, "gold_gain": 0.0}]
    return {
        "label": label,
        "method": method,
        "seed": seed,
        "overrides": overrides or {},
        "cold_cache": False,
        "train_seconds": seconds,
        "metrics": {"seconds": seconds, "config": {"alpha": 0.8, "real_ratio": 0.0}},
        "harness": {
            "gold": {"mean": gold},
            "win_rate_vs_initial": 0.6,
            "win_rate_vs_teacher": 0.4,
            "reward_accuracy": 0.7,
            "tau_student_teacher": 0.2,
            "tau_student_gold": 0.3,
            "length": 3.0,
            "length_buckets": buckets,
            **harness,
        },
    }


def _references(seeds, teacher_gold=0.8):
    return {
        s: {
            "student": {"gold": {"mean": 0.3}, "per_prompt": [0.3, 0.3], "length": 3.0, "reward_accuracy": 0.6},
            "teacher": {
                "gold": {"mean": teacher_gold},
                "per_prompt": [0.8, 0.8],
                "length": 5.0,
                "reward_accuracy": 0.8,
            },
        }
        for s in seeds
    }


def test_ledger_pairs_seeds_and_reports_the_t_interval_of_the_differences():
    records = [_record("plad", s, g) for s, g in zip((0, 1, 2), (0.5, 0.6, 0.7))] + [
        _record("seqkd", s, g) for s, g in zip((0, 1, 2), (0.4, 0.4, 0.5))
    ]
    ledger = claims_ledger(records, claims=[c for c in CLAIMS if c.claim_id == "plad>seqkd"])
    row = ledger.iloc[0]
    diffs = [0.1, 0.2, 0.2]
    assert row["effect"] == pytest.approx(np.mean(diffs))
    assert row["ci95"] == pytest.approx(mean_ci(diffs)["ci95"])
    assert row["n_seeds"] == 3 and row["verdict"] == "holds"  # CI (0.023, 0.31) excludes 0


def test_ledger_marks_missing_runs_and_picks_the_best_method_against_the_teacher():
    records = (
        [_record("plad", s, 0.5 + 0.01 * s) for s in (0, 1)]
        + [_record("kd", s, 0.9) for s in (0, 1)]
        + [_record("kd[data_fraction=0.1]", s, 0.99, method="kd", overrides={"data_fraction": 0.1}) for s in (0, 1)]
    )
    ledger = claims_ledger(records, _references((0, 1)))
    by_id = ledger.set_index("claim")
    assert by_id.loc["adpa>dckd", "verdict"].startswith("not measured")
    best = by_id.loc["student>teacher"]
    assert best["a"] == "kd"  # variants are not candidates for "best method"
    assert best["effect"] == pytest.approx(0.1) and best["verdict"] == "holds"  # identical seeds: CI of width 0
    assert "| " in format_ledger(ledger)


def test_against_best_pairs_each_method_with_the_best_and_says_which_cannot_be_told_apart():
    golds = {"kd": (0.90, 0.92, 0.94), "seqkd": (0.89, 0.93, 0.92), "dpo": (0.70, 0.72, 0.71)}
    records = [_record(m, s, g, seconds=3.0 + s) for m, gs in golds.items() for s, g in enumerate(gs)]
    records += [_record("kd[data_fraction=0.1]", s, 0.99, method="kd") for s in range(3)]  # a variant: not a row
    table = against_best(records)
    assert list(table["method"]) == ["kd", "seqkd", "dpo"]  # best mean first
    rows = table.set_index("method")
    assert rows.loc["kd", "verdict"] == "best" and rows.loc["kd", "diff"] == 0
    diffs = [-0.01, 0.01, -0.02]  # seqkd − kd per seed
    assert rows.loc["seqkd", "diff"] == pytest.approx(np.mean(diffs))
    assert rows.loc["seqkd", "ci95"] == pytest.approx(mean_ci(diffs)["ci95"])
    assert rows.loc["seqkd", "verdict"] == "tied with the best"  # the CI reaches 0
    assert rows.loc["dpo", "verdict"] == "below the best" and rows.loc["dpo", "seconds"] == pytest.approx(4.0)
    assert rows.loc["dpo", "needs"] == REGISTERED["dpo"].needs
    assert all(m.needs for m in REGISTERED.values())  # every registered method says what it needs
    assert rows.loc["dpo", "supervision"] == "teacher only" and rows.loc["kd", "supervision"] == "gold-supervised"
    one_seed = against_best([r for r in records if r["seed"] == 0]).set_index("method")
    assert one_seed.loc["seqkd", "verdict"] == "one seed: no CI"  # never "tied" for want of a CI
    markdown = compare_module.format_against_best(table)
    assert "| seqkd | 0.913 | -0.007 [" in markdown and "| kd | 0.920 | — | — | — | — | best | best |" in markdown
    assert "2 comparisons" in markdown  # the family Holm adjusts over


def test_equivalence_and_cost_claims_on_synthetic_runs():
    two_by_four = [
        _record("pad-ppd[iterations=2]", s, 0.5, overrides={"iterations": 2}, seconds=30 + s) for s in (0, 1, 2)
    ]
    one_by_eight = [
        _record("pad-ppd[n=8]", s, 0.5 + 0.001 * s, overrides={"n": 8}, seconds=50 + 2 * s) for s in (0, 1, 2)
    ]
    assert claims_ledger(two_by_four + one_by_eight).set_index("claim").loc["pad-2x4~1x8", "verdict"] == (
        "not measured (no teacher and initial-student evaluations)"  # its margin is a share of their gap
    )
    ledger = claims_ledger(two_by_four + one_by_eight, _references((0, 1, 2))).set_index("claim")
    assert ledger.loc["pad-2x4~1x8", "margin"] == pytest.approx(compare_module.GAP_FRACTION * (0.8 - 0.3))
    assert ledger.loc["pad-2x4~1x8", "verdict"] == "holds"
    assert ledger.loc["pad-2x4-cheaper", "effect"] == pytest.approx(-21.0)
    assert ledger.loc["pad-2x4-cheaper", "verdict"] == "holds"


def _per_prompt_records(label, golds):
    """Records of ``label`` whose harness holds per-prompt gold, (seeds, prompts), and its mean."""
    return [_record(label, s, float(np.mean(row)), per_prompt=list(row)) for s, row in enumerate(golds)]


def test_ledger_with_per_prompt_scores_bootstraps_over_seeds_and_prompts(tmp_path):
    from workbench.compare.stats import BOOTSTRAP, paired_bootstrap

    rng = np.random.default_rng(0)
    plad, seqkd = 0.6 + rng.normal(0, 0.1, (2, 4, 14))
    records = _per_prompt_records("plad", plad + 0.05) + _per_prompt_records("seqkd", seqkd)
    row = claims_ledger(records, claims=[c for c in CLAIMS if c.claim_id == "plad>seqkd"]).iloc[0]
    expected = paired_bootstrap(plad + 0.05, seqkd)
    assert row["interval"] == BOOTSTRAP and row["n_prompts"] == 14 and row["n_seeds"] == 4
    assert (row["effect"], row["low"], row["high"]) == pytest.approx((expected.effect, expected.low, expected.high))
    assert row["ci95"] == pytest.approx(expected.half_width)
    best = against_best(records).set_index("method")
    assert best.loc["seqkd", "interval"] == BOOTSTRAP and best.loc["seqkd", "low"] == pytest.approx(-expected.high)
    # the report splits gold by gym task when the records hold per-prompt scores
    for record in records:
        path = tmp_path / record["label"] / f"seed{record['seed']}" / "record.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
    page = compare_module.report(tmp_path)
    tasks = compare_module.held_out_tasks(14)
    assert "each scored on the same 14 held-out prompts" in page and "## Gold per gym task" in page
    head = " | ".join(f"{t} ({tasks.count(t)})" for t in dict.fromkeys(tasks))
    assert f"| method | seeds | {head} | all (14) |" in page


def test_holm_over_the_ledger_leaves_a_claim_inconclusive_that_its_own_interval_decides():
    steady = [0.1, 0.1, 0.1001]  # p ≈ 0
    borderline = [0.1, 0.2, 0.2]  # t = 5 on 2 df: p = 0.038
    records = []
    for a, b, diffs in (("pad-ppd", "pad-vpd", steady), ("plad", "seqkd", borderline), ("dckd", "sft", borderline)):
        records += [_record(a, s, 0.5 + d) for s, d in enumerate(diffs)] + [_record(b, s, 0.5) for s in range(3)]
    ledger = claims_ledger(records).set_index("claim")
    measured = ledger[ledger["p"].notna()]
    assert len(measured) == 3 and measured["p_holm"].to_numpy() == pytest.approx(
        compare_module.stats.holm(measured["p"].to_numpy())
    )
    for claim in ("plad>seqkd", "dckd>sft"):
        assert ledger.loc[claim, "p"] == pytest.approx(0.0377, abs=1e-3) and ledger.loc[claim, "verdict"] == "holds"
        assert ledger.loc[claim, "p_holm"] == pytest.approx(2 * ledger.loc[claim, "p"])
        assert ledger.loc[claim, "after_holm"] == "inconclusive"
    assert ledger.loc["pad-ppd>vpd", "after_holm"] == "holds"
    assert ledger.loc["adpa>dckd", "after_holm"].startswith("not measured")


def test_every_margin_is_fixed_in_one_place_with_its_reason():
    needs_margin = {c.claim_id for c in CLAIMS if c.kind in ("equivalent", "at_most")}
    assert set(compare_module.MARGINS) == needs_margin
    assert all(m.reason and 0 < m.fraction < 1 for m in compare_module.MARGINS.values())
    records = _per_prompt_records("plad", np.full((2, 3), 0.6)) + [
        _record("plad[real_ratio=1.0]", s, 0.61, overrides={"real_ratio": 1.0}) for s in (0, 1)
    ]
    ledger = claims_ledger(records, _references((0, 1)))
    table = compare_module.format_margins(ledger)
    assert "| real (gold-ordered) pairs add little over pseudo pairs | at_most | 0.0500 | 0.1 × (teacher" in table


def test_tau_sets_come_from_the_record_else_from_the_same_tau_of_the_method():
    noted = _record("plad", 0, 0.5, tau_sets={"student_teacher": {"n": 30, "skipped_sets": 98}})
    own = _record("plad", 1, 0.5)
    own["metrics"]["ranking"] = {"tau_student_teacher": {"mean": 0.2, "n": 40, "skipped_sets": 88}}
    other = _record("plad", 2, 0.5)  # the method's own τ of another ranking: not the table's τ
    other["metrics"]["ranking"] = {"tau_student_teacher": {"mean": 0.25, "n": 50, "skipped_sets": 78}}
    assert compare_module.tau_sets_of(noted, "student_teacher") == (30, 98)
    assert compare_module.tau_sets_of(own, "student_teacher") == (40, 88)
    assert compare_module.tau_sets_of(other, "student_teacher") is None
    assert compare_module.tau_sets_of(noted, "student_gold") is None
    row = compare_module.tau_sets([noted, own, other]).iloc[0]
    assert row["student_teacher_used"] == 35 and row["student_teacher_noted"] == 2
    markdown = compare_module.format_tau_sets(compare_module.tau_sets([noted, own, other]))
    assert "| plad | 0.200 | 35.0 / 93.0 (2 of 3 seeds) | 0.300 | not noted |" in markdown


def test_gold_per_task_averages_each_task_prompts_over_seeds():
    from workbench.compare import EvalConfig

    tasks = compare_module.held_out_tasks(14)
    assert tasks == [p.text.split()[0] for p in EvalConfig(eval_prompts=14).held_out()]
    golds = np.array([[1.0 if t == tasks[0] else 0.5 for t in tasks]] * 2)  # (seeds, prompts)
    table = compare_module.gold_per_task(_per_prompt_records("kd", golds), None, tasks, ["kd", "absent"])
    assert list(table["method"]) == ["kd"] and list(table.columns[2:-1]) == list(dict.fromkeys(tasks))
    row = table.iloc[0]
    assert row[tasks[0]] == 1.0 and row[tasks[1]] == 0.5 and row["all"] == pytest.approx(golds.mean())


def test_summary_table_schema_order_and_reference_rows():
    records = [_record(m, s, 0.4 + 0.1 * s) for m in ("seqkd", "plad") for s in (0, 1)]
    summary = summarize(records, _references((0, 1)))
    assert list(summary["method"]) == ["student (initial)", "teacher", "plad", "seqkd"]  # registry order
    expected = {"method", "base_method", "n_seeds"} | {f"{m}_{s}" for m in TABLE_METRICS for s in ("mean", "ci95")}
    assert set(summary.columns) == expected
    plad = summary.set_index("method").loc["plad"]
    assert plad["gold_mean"] == pytest.approx(0.45) and plad["gold_ci95"] == pytest.approx(mean_ci([0.4, 0.5])["ci95"])
    teacher = summary.set_index("method").loc["teacher"]
    assert teacher["win_rate_vs_teacher_mean"] == 0.5 and teacher["win_rate_vs_initial_mean"] == 1.0
    assert format_table(summary).count("\n") == len(summary) + 1


def test_variant_labels_and_suites():
    assert Variant("plad").label == "plad"
    assert Variant("pad-ppd", {"n": 8, "alpha": 1.0}).label == "pad-ppd[alpha=1.0,n=8]"
    assert {v.method for v in suite("table")} >= {
        "pad-vpd",
        "pad-ppd",
        "plad",
        "kd",
        "seqkd",
        "reverse-kl",
        "dpo",
        "simpo",
        "pro",
    }
    labels = {v.label for v in suite("full")}
    for claim in CLAIMS:  # every claim's runs are in the full suite (ADPA's when its module exists)
        for label in (claim.a, claim.b):
            if label in ("@best", "teacher") or label.split("[")[0] in compare_module.ADPA_METHODS:
                continue
            assert label in labels, label
    with pytest.raises(ValueError):
        suite("nope")


def test_registry_covers_every_method_and_adpa_lazily():
    for name in (
        "pad-vpd",
        "pad-ppd",
        "pad-ppd+sft",
        "plad",
        "plad+sft",
        "kd",
        "seqkd",
        "reverse-kl",
        "dpo",
        "simpo",
        "pro",
        "sft",
        "dckd",
        "adpa",
        "adpa+",
        "adpa_no_ref",
        "q_argmax",
        "q_softmax",
    ):
        assert callable(METHODS[name])


def test_method_configs_default_to_the_harness_gym_rates_and_refuse_a_bad_one():
    from workbench.methods import GYM_LR
    from workbench.methods.adpa import METHOD_STAGES, AdpaConfig
    from workbench.methods.baselines import BASELINES, BaselineConfig
    from workbench.methods.config import resolve_lr
    from workbench.methods.pad import PadConfig
    from workbench.methods.plad import PladConfig

    assert GYM_LR is compare_module.GYM_LR and set(GYM_LR) == set(METHODS)  # one table, every registered method
    assert (PadConfig().lr, PadConfig(loss="vpd").lr, PadConfig(sft_weight=1.0).lr) == (
        GYM_LR["pad-ppd"],
        GYM_LR["pad-vpd"],
        GYM_LR["pad-ppd+sft"],
    )
    assert PadConfig(loss="ppd_mc").lr == GYM_LR["pad-ppd"] and PadConfig(lr=8e-7).lr == 8e-7
    assert (PladConfig().lr, PladConfig(sft_weight=1.0).lr) == (GYM_LR["plad"], GYM_LR["plad+sft"])
    assert all(BaselineConfig(method=m).lr == GYM_LR[m] for m in BASELINES)
    assert all(AdpaConfig(method=m).lr == GYM_LR[m] for m in METHOD_STAGES)
    for bad in (0.0, -1e-4):
        with pytest.raises(ValueError, match=f"lr={bad}; the learning rate must be > 0"):
            PadConfig(lr=bad)
    with pytest.raises(ValueError, match="'my-method' has no gym learning rate"):
        resolve_lr(None, "my-method")
    assert resolve_lr("1e-6", "kd") == 1e-6  # text from papermill -r or YAML
    with pytest.raises(ValueError, match="lr='fast' is not a number"):
        BaselineConfig(method="kd", lr="fast")
    # the harness records the ADPA family's tuned loss weights with the rate, so changing either re-runs its records
    tuned = {f.name: f.default for f in dataclasses.fields(AdpaConfig)}
    assert compare_module.method_defaults("adpa+") == {
        "lr": GYM_LR["adpa+"],
        "alpha": tuned["alpha"],
        "gamma": tuned["gamma"],
    }
    assert compare_module.method_defaults("dckd") == {"lr": GYM_LR["dckd"], "alpha": tuned["alpha"]}
    assert compare_module.method_defaults("sft") == {"lr": GYM_LR["sft"]}
    assert compare_module.method_defaults("kd") == {"lr": GYM_LR["kd"]}


def test_heldout_pairs_are_fixed_and_gold_ranked():
    from workbench.gym.world import gold_reward
    from workbench.methods.common import HELD_OUT_SEED, gym_prompts

    prompts = gym_prompts("test", 20, HELD_OUT_SEED)
    pairs = heldout_preference_pairs(prompts)
    assert pairs == heldout_preference_pairs(prompts) and len(pairs) == 20
    assert all(gold_reward(p["prompt"], p["chosen"]) > gold_reward(p["prompt"], p["rejected"]) for p in pairs)


def test_length_bucket_gains_on_known_values():
    rows = length_bucket_gains(
        after=[1.0, 0.0, 0.5, 0.7], before=[0.0, 0.0, 1.0, 0.7], lengths=[0, 2, 3, 9], edges=(0, 2, 4, float("inf"))
    )
    assert [r["prompts"] for r in rows] == [2, 1, 1]
    assert rows[0]["win_rate"] == 0.75 and rows[0]["delta_win_rate"] == 0.25  # a win and a tie
    assert rows[1]["win_rate"] == 0.0 and rows[2]["win_rate"] == 0.5
    assert rows[0]["gold_gain"] == pytest.approx(0.5)


def test_tiny_compare_of_two_methods_and_two_seeds_saves_records_and_resumes(tiny_gym, tmp_path, monkeypatch, caplog):
    summary = compare(["plad", ("seqkd", {"lr": 3e-3})], seeds=[0, 1], overrides=TINY, runs_dir=tmp_path)
    assert list(summary["method"]) == ["student (initial)", "teacher", "plad", "seqkd[lr=0.003]"]
    assert (summary["n_seeds"] == 2).all()
    for metric in ("gold", "win_rate_vs_initial", "win_rate_vs_teacher", "reward_accuracy", "length", "seconds"):
        assert np.isfinite(summary[f"{metric}_mean"].iloc[2:]).all(), metric
    records = load_records(tmp_path)
    assert len(records) == 4 and {r["seed"] for r in records} == {0, 1}
    saved = json.loads((tmp_path / "plad" / "seed0" / "record.json").read_text())
    assert saved["harness"]["gold"]["n"] == TINY["eval_prompts"]
    for counted in saved["harness"]["tau_sets"].values():  # τ notes how many sets it is over
        assert counted["n"] + counted["skipped_sets"] == TINY["eval_prompts"]
    assert (tmp_path / "plad" / "seed0" / "metrics.json").exists()
    # a second call loads the saved runs instead of training
    monkeypatch.setitem(METHODS, "plad", lambda seed, overrides: pytest.fail("re-ran a saved run"))
    again = compare(["plad", ("seqkd", {"lr": 3e-3})], seeds=[0, 1], overrides=TINY, runs_dir=tmp_path)
    assert again.equals(summary)
    # a record names the builds it started from; one made on another gym build is re-run, not reused
    assert saved["models"]["student"] == f"{TINY['student']}@tiny-{SIZES['tiny'].key()}"
    stale = tmp_path / "plad" / "seed0" / "record.json"
    stale.write_text(json.dumps({**saved, "models": {"teacher": "gym-teacher-dpo@default-3d7097d9cbb6"}}))
    ran = []
    monkeypatch.setitem(METHODS, "plad", lambda seed, overrides: ran.append(seed) or pytest.fail("re-ran"))
    with pytest.raises(pytest.fail.Exception, match="re-ran"):
        compare(["plad"], seeds=[0], overrides=TINY, runs_dir=tmp_path)
    assert ran == [0]
    # ... and so is one made at another harness learning rate (GYM_LR re-tuned)
    stale.write_text(json.dumps(saved))
    assert saved["method_defaults"] == {"lr": compare_module.GYM_LR["plad"]}
    compare(["plad"], seeds=[0], overrides=TINY, runs_dir=tmp_path)  # unchanged: loaded
    monkeypatch.setitem(compare_module.GYM_LR, "plad", 0.5)
    with pytest.raises(pytest.fail.Exception, match="re-ran"):
        compare(["plad"], seeds=[0], overrides=TINY, runs_dir=tmp_path)
    assert ran == [0, 0]
    monkeypatch.setitem(compare_module.GYM_LR, "plad", saved["method_defaults"]["lr"])
    # ... and so is one made on other weights of the same recipe (the gym trained under other library versions),
    # while one saved before records noted weights is kept, and the mix is reported
    here = {"teacher": weights_fingerprint(TINY["teacher"]), "student": weights_fingerprint(TINY["student"])}
    assert saved["weights"] == here and None not in here.values()
    stale.write_text(json.dumps({**saved, "weights": {**here, "student": "0" * 16}}))
    with pytest.raises(pytest.fail.Exception, match="re-ran"):
        compare(["plad"], seeds=[0], overrides=TINY, runs_dir=tmp_path)
    assert ran == [0, 0, 0]
    stale.write_text(json.dumps({k: v for k, v in saved.items() if k != "weights"}))
    with caplog.at_level("WARNING", logger="workbench.compare"):
        compare(["plad", ("seqkd", {"lr": 3e-3})], seeds=[0], overrides=TINY, runs_dir=tmp_path)  # loaded
    assert ran == [0, 0, 0]
    assert "made on 2 builds of the models' weights (2 on " in caplog.text and "1 on unnoted weights" in caplog.text


def test_weights_fingerprint_tells_builds_of_one_recipe_apart(tiny_gym, tmp_path):
    """A gym preset's fingerprint hashes its tensors: stable for a build, another for any changed weight, alike for
    a re-save of the same tensors; models that are not gym presets have none."""
    from safetensors.torch import load_file, save_file

    from workbench.models import resolve
    from workbench.weights import folder_weights_hash

    student = weights_fingerprint("gym-tiny-student")
    assert student == weights_fingerprint("gym-tiny-student") != weights_fingerprint("gym-tiny-teacher-dpo")
    assert weights_fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    tensors = load_file(Path(resolve("gym-tiny-student")) / "model.safetensors")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt", "saved_by": "another version"})
    assert folder_weights_hash(tmp_path) == student
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, tmp_path / "model.safetensors")
    assert folder_weights_hash(tmp_path) != student
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        folder_weights_hash(tmp_path / "empty")


def test_mixed_builds_counts_records_per_build():
    one, other = {"teacher": "a" * 16, "student": "b" * 16}, {"teacher": "a" * 16, "student": "c" * 16}
    assert mixed_builds([{"weights": one}, {"weights": one}], {0: {"weights": one}}) is None
    assert mixed_builds([{}, {}]) is None  # all saved before records noted weights: one (unknown) build
    warning = mixed_builds([{"weights": one}, {"weights": other}, {}], {0: {"weights": one}})
    assert warning.startswith("these records were made on 3 builds") and "2 on {" in warning
    assert "1 on unnoted weights" in warning


def test_runs_in_parallel_processes_record_what_one_process_records(tiny_gym, tmp_path, monkeypatch):
    """``jobs=2``: the same records (every evaluated number) as one run at a time, in the table's order; the wall
    times note the concurrency, the cold-cache timing run runs alone, and a failing run is skipped with the
    worker's traceback saved."""
    monkeypatch.setenv("WORKBENCH_THREADS", "1")  # the same thread count in both: bit-identical arithmetic
    methods = ["plad", ("seqkd", {"lr": 3e-3}), Variant("kd", cold_cache=True)]
    one = compare(methods, seeds=[0, 1], overrides=TINY, runs_dir=tmp_path / "one")
    two = compare(
        [*methods, ("sft", {"no_such_field": 1})],
        seeds=[0, 1],
        overrides=TINY,
        runs_dir=tmp_path / "two",
        jobs=2,
        on_error="skip",
    )
    assert list(two["method"]) == list(one["method"])
    evaluated = lambda r: {k: v for k, v in r["harness"].items() if k != "eval_seconds"}
    records = {(r["label"], r["seed"]): r for r in load_records(tmp_path / "two")}
    for r in load_records(tmp_path / "one"):
        mine = records[r["label"], r["seed"]]
        assert evaluated(mine) == evaluated(r) and mine["metrics"]["gold_after"] == r["metrics"]["gold_after"]
        assert r["concurrent_runs"] == 1 and mine["concurrent_runs"] == (1 if r["label"] == "kd" else 2)
    error = (tmp_path / "two" / "sft[no_such_field=1]" / "seed0" / "error.txt").read_text()
    assert "no_such_field" in error and len(records) == 6
    with pytest.raises(ValueError, match="jobs=0"):
        compare(methods, seeds=[0], overrides=TINY, runs_dir=tmp_path / "one", jobs=0)


def test_setting_of_a_method_is_the_harness_setting_else_its_config_default():
    from workbench.compare import setting_of
    from workbench.methods.adpa import AdpaConfig
    from workbench.methods.pad import PadConfig
    from workbench.methods.plad import PladConfig

    assert setting_of("kd", "lr") == compare_module.GYM_LR["kd"]
    assert setting_of("dckd", "alpha") == AdpaConfig().alpha  # a tuned ADPA weight
    assert setting_of("adpa", "steps") == AdpaConfig().steps and setting_of("pad-ppd", "n") == PadConfig().n
    assert setting_of("plad+sft", "temperature") == PladConfig().temperature
    with pytest.raises(KeyError, match="BaselineConfig of method 'seqkd' has no field 'gamma'"):
        setting_of("seqkd", "gamma")


def test_validation_split_evaluation_is_disjoint_from_the_table_and_named_in_records():
    from workbench.compare import EvalConfig

    test, validation = EvalConfig(eval_prompts=16), EvalConfig(eval_prompts=16, split="validation")
    assert not {p.text for p in test.held_out()} & {p.text for p in validation.held_out()}
    assert "split" not in test.models() and validation.models()["split"] == "validation"


def test_the_committed_comparison_is_complete_and_current():
    """results/compare (what the figures, notebooks 08-09 and the README's numbers read) holds every suite variant at
    every DEFAULT_SEEDS seed, each made on the default gym's builds at the harness's current settings: a change of
    the gym, GYM_LR or the ADPA weights without re-running the comparison fails here, not silently in a figure."""
    from workbench.compare import DEFAULT_RUNS_DIR, DEFAULT_SEEDS, EvalConfig, method_defaults

    runs = Path(__file__).resolve().parents[1] / DEFAULT_RUNS_DIR
    records = {(r["label"], r["seed"]): r for r in load_records(runs)}
    models, weights = EvalConfig().models(), EvalConfig().weights()
    for name in ("full", "plad-fig2", "plad-fig4", "pad-fig5"):
        for variant in suite(name):
            for seed in DEFAULT_SEEDS:
                record = records.get((variant.label, seed))
                assert record is not None, f"{variant.label} seed {seed}: python -m workbench.compare --suite {name}"
                assert record["models"] == models, f"{variant.label} seed {seed} was made on another gym build"
                assert record["method_defaults"] == method_defaults(variant.method), (
                    f"{variant.label} seed {seed} was made at other harness settings than today's"
                )
    _assert_made_on(list(records.values()), load_references(runs), weights)
    assert set(load_references(runs)) >= set(DEFAULT_SEEDS)


def _assert_made_on(records, references, weights):
    """All records and references were made on one build of the weights, noted on each; for a shipped gym the one the
    package ships (``weights``, as ``EvalConfig.weights`` hashes the shipped folders: records of a rebuild or of
    other weights fail here). ``weights=None``: a gym that is not shipped, whose build cannot be hashed here."""
    assert mixed_builds(records, references) is None, mixed_builds(records, references)
    unnoted = sorted({r["label"] for r in records if not r.get("weights")})
    assert not unnoted, f"records without weights (made before they noted them): {unnoted[:5]}"
    if weights is None:
        return
    made_on = {json.dumps(r["weights"], sort_keys=True) for r in [*records, *references.values()]}
    assert made_on == {json.dumps(weights, sort_keys=True)}, (
        f"records made on weights {made_on}, the shipped gym's are {weights}: re-make them "
        "(python -m workbench.compare)"
    )


def test_report_tabulates_saved_runs_without_training(tmp_path, monkeypatch, capsys):
    """--report: the table, ledger and against-the-best of a runs folder from its records alone; it names the builds
    and warns of a mix; an empty folder is refused with the command that fills it."""
    from workbench import compare as C
    from workbench.compare import cli as compare_cli

    for seed, (plad, seqkd) in enumerate(((0.5, 0.4), (0.6, 0.4), (0.7, 0.5))):
        for label, gold in (("plad", plad), ("seqkd", seqkd)):
            record = {**_record(label, seed, gold), "models": {"student": "s@x"}, "weights": {"student": "abc"}}
            path = tmp_path / label / f"seed{seed}" / "record.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(record))
    monkeypatch.setattr(compare_cli, "compare", lambda *a, **k: pytest.fail("--report must not train"))
    C.main(["--report", "--runs-dir", str(tmp_path)])
    page = capsys.readouterr().out
    assert page == C.report(tmp_path)
    assert "6 runs of 2 labels, seeds 0, 1, 2." in page and '`{"student": "abc"}`' in page
    assert "paired bootstrap over seeds and prompts (95% percentile interval, B = 10000, seed 0)" in page
    assert "| plad | 3 | 0.600 ± 0.248 |" in page  # mean of 0.5/0.6/0.7, t(2) × s/√3
    # no per-prompt scores in these records: the t interval over seeds, 0.167 ± 0.143; t = 5 on 2 df, p = 0.038
    assert (
        "| PLaD beats SeqKD | PLaD §5.2, Table 1 | plad vs seqkd | +0.167 [+0.023, +0.310] (gold) | seeds (t) | — | "
        "0.038 | 0.038 | holds | holds |"
    ) in page
    assert "| seqkd | 0.433 | -0.167 [-0.310, -0.023] | seeds (t) | 0.038 | 0.038 | below the best |" in page
    assert "Warning" not in page and "## Gold per gym task" not in page  # no per-prompt scores to split by task
    unnoted = tmp_path / "seqkd" / "seed0" / "record.json"
    unnoted.write_text(json.dumps({**json.loads(unnoted.read_text()), "weights": None}))
    assert "**Warning**: these records were made on 2 builds" in C.report(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m workbench.compare --runs-dir"):
        C.report(tmp_path / "empty")


@pytest.mark.parametrize(
    "folder",
    [
        "compare",
        "compare_world1",
        "compare_world2",
        "compare_hard",
        "compare_judge8",
        "compare_cost",
        "compare_test1024",
        "compare_real_text",
    ],
)
def test_the_committed_reports_are_the_records_tabulated(folder):
    """results/<folder>/REPORT.md (the page the README's numbers quote) is what --report makes of the committed
    records today: re-running or adding records without regenerating it (make figures) fails here."""
    from workbench.compare import report

    runs = Path(__file__).resolve().parents[1] / "results" / folder
    assert (runs / "REPORT.md").read_text() == report(runs, name=f"results/{folder}"), (
        f"results/{folder}/REPORT.md is stale: python -m workbench.compare --report --runs-dir results/{folder}"
    )


def test_the_larger_test_set_extends_the_committed_comparison_prompt_for_prompt():
    """results/compare_test1024 (the table methods, the ledger's warm-cache variants and the references on 1024
    held-out prompts, seeds 0-9): its first 128 prompts are the default set, and each record's per-prompt gold there,
    at every sampling setting, equals that of the same (label, seed) in results/compare, so the larger set adds
    prompts and changes nothing else."""
    from workbench.compare import load_references
    from workbench.compare.evaluation import held_out_tasks
    from workbench.compare.runs import suite

    results = Path(__file__).resolve().parents[1] / "results"
    large = {(r["label"], r["seed"]): r for r in load_records(results / "compare_test1024")}
    table = {(r["label"], r["seed"]): r for r in load_records(results / "compare")}
    labels = [v.label for v in suite("full") if not v.cold_cache]
    assert set(large) == {(label, seed) for label in labels for seed in range(10)}
    assert held_out_tasks(1024)[:128] == held_out_tasks(128)
    for key, record in large.items():
        harness, small = record["harness"], table[key]["harness"]
        assert len(harness["per_prompt"]) == 1024 and harness["per_prompt"][:128] == small["per_prompt"], key
        scored = set(small.get("by_temperature") or {})  # the ledger's variants were scored at T = 0.8 only
        assert scored == set(harness["by_temperature"]) or "[" in key[0], key
        for setting in scored:
            expected = small["by_temperature"][setting]["per_prompt"]
            assert harness["by_temperature"][setting]["per_prompt"][:128] == expected, (key, setting)
    references, base = load_references(results / "compare_test1024"), load_references(results / "compare")
    for seed, refs in references.items():
        for role in ("student", "teacher"):
            assert refs[role]["per_prompt"][:128] == base[seed][role]["per_prompt"], (seed, role)
            for setting, scores in refs[role]["by_temperature"].items():
                expected = base[seed][role]["by_temperature"][setting]["per_prompt"]
                assert scores["per_prompt"][:128] == expected, (seed, role, setting)


@pytest.mark.parametrize(
    "worlds",
    [
        {"default": "compare", "world1": "compare_world1", "world2": "compare_world2"},
        {"default": "compare", "hard": "compare_hard"},
    ],
)
def test_the_results_page_quotes_the_committed_ledger_across_worlds(worlds):
    """results/README.md's tables of claims across gym worlds (the recipe's three worlds; the default and the harder
    world) are what the committed records give today, verbatim."""
    from workbench.compare import format_ledger_across, ledger_across_worlds

    root = Path(__file__).resolve().parents[1]
    folders = {name: root / "results" / folder for name, folder in worlds.items()}
    table = format_ledger_across(ledger_across_worlds(folders), list(folders))
    assert table in (root / "results" / "README.md").read_text(), (
        "results/README.md's claims-across-worlds table is stale: python -m workbench.compare --across "
        + " ".join(f"{name}=results/{folder}" for name, folder in worlds.items())
    )


@pytest.fixture
def cli_calls(monkeypatch):
    """Run the compare CLI up to the point it would train: ``run(argv)`` returns what ``compare`` was called with
    (overrides, runs folder, seeds, variant labels); ``run(argv, refused=True)`` the exit code of a refused call."""
    from workbench import compare as C
    from workbench.compare import cli as compare_cli

    calls = {}

    def fake_compare(variants, seeds, overrides=None, **kwargs):
        calls.update(overrides=overrides, runs_dir=kwargs["runs_dir"], seeds=seeds, labels=[v.label for v in variants])
        raise SystemExit(0)  # stop before the table: nothing was trained

    monkeypatch.setattr(compare_cli, "compare", fake_compare)

    def run(argv, refused=False):
        with pytest.raises(SystemExit) as stopped:
            C.main(argv)
        return stopped.value.code if refused else dict(calls)

    return run


def test_the_cli_runs_the_comparison_on_another_gym_world(cli_calls, tmp_path, capsys):
    """--gym world1: every run starts from that build's teacher and student (another seed of the default recipe, a
    model identity of its own), and its records go to a folder of their own."""
    from workbench.models import model_identity

    assert SIZES["world1"].seed == 1 and SIZES["world1"].key() != SIZES["default"].key()
    assert model_identity("gym-world1-student") != model_identity("gym-student")
    calls = cli_calls(["--gym", "world1", "--methods", "seqkd", "--seeds", "0"])
    assert calls == {
        "overrides": {"teacher": "gym-world1-teacher-dpo", "student": "gym-world1-student"},
        "runs_dir": "results/compare_world1",
        "seeds": [0],
        "labels": ["seqkd"],
    }
    assert cli_calls(["--gym", "world1", "--methods", "seqkd", "--runs-dir", str(tmp_path)])["runs_dir"] == str(
        tmp_path
    )
    assert cli_calls(["--gym", "huge", "--methods", "seqkd"], refused=True) == 2
    assert "--gym huge: use one of" in capsys.readouterr().err


def test_the_cli_scores_a_larger_test_set_into_a_folder_of_its_own(cli_calls, tmp_path, capsys):
    """--eval-prompts N: every run and reference is scored on N held-out prompts, in <runs-dir>_testN (after the
    world's own folder) unless a folder is given; the world-lr suite reads the --gym world."""
    calls = cli_calls(["--methods", "seqkd", "--eval-prompts", "1024"])
    assert calls["overrides"] == {"eval_prompts": 1024} and calls["runs_dir"] == "results/compare_test1024"
    calls = cli_calls(["--gym", "hard", "--suite", "world-lr", "--eval-prompts", "512"])
    assert calls["runs_dir"] == "results/compare_hard_test512" and calls["overrides"]["eval_prompts"] == 512
    assert calls["labels"] == ["reverse-kl[lr=0.001]", "adpa_no_ref[lr=0.003]"]
    calls = cli_calls(["--methods", "seqkd", "--eval-prompts", "1024", "--runs-dir", str(tmp_path)])
    assert calls["runs_dir"] == str(tmp_path)
    assert cli_calls(["--methods", "seqkd", "--eval-prompts", "0"], refused=True) == 2
    assert "--eval-prompts 0: score at least 1 prompt" in capsys.readouterr().err


def test_ledger_across_worlds_says_which_claims_every_world_decides_alike(tmp_path):
    from workbench.compare import format_ledger_across, ledger_across_worlds

    def world(name, plad_minus_seqkd):
        folder = tmp_path / name
        for seed, diff in enumerate(plad_minus_seqkd):
            for label, gold in (("plad", 0.6 + diff), ("seqkd", 0.6)):
                path = folder / label / f"seed{seed}" / "record.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(_record(label, seed, gold)))
        return folder

    worlds = {
        "a": world("a", (0.10, 0.11, 0.12)),
        "b": world("b", (0.10, 0.12, 0.11)),
        "c": world("c", (-0.10, -0.11, -0.12)),
        "d": world("d", (-0.2, 0.0, 0.2)),
    }
    for chosen, expected in (
        (("a", "b"), "holds in every world"),
        (("c",), "does not hold in any world"),
        (("a", "c"), "depends on the world"),
        (("a", "d"), "undecided (holds where decided)"),
        (("d",), "undecided (inconclusive where measured)"),
    ):
        table = ledger_across_worlds({w: worlds[w] for w in chosen}).set_index("claim")
        assert table.loc["plad>seqkd", "across"] == expected, chosen
        assert table.loc["adpa>dckd", "across"] == "not measured"
    table = ledger_across_worlds({"a": worlds["a"], "c": worlds["c"]})
    assert table.set_index("claim").loc["plad>seqkd", "a_effect"] == pytest.approx(0.11)
    markdown = format_ledger_across(table, ["a", "c"])
    assert "| PLaD beats SeqKD | +0.110 ± " in markdown and "(holds, 3 seeds)" in markdown


@pytest.mark.parametrize(
    "gym, suite_name", [("world1", "full"), ("world2", "full"), ("hard", "full"), ("judge8", "pad-table2")]
)
def test_the_committed_comparisons_on_other_worlds_are_complete_and_current(gym, suite_name):
    """results/compare_<world> (the claims across worlds, on the harder world, and PAD Table 2's arms under the
    8-option judge): every variant of its suite at every DEFAULT_SEEDS seed, made on one build of that world at
    today's harness settings; a shipped world's records on its shipped weights."""
    from workbench.compare import DEFAULT_RUNS_DIR, DEFAULT_SEEDS, EvalConfig, method_defaults
    from workbench.gym.store import SHIPPED_SIZES

    runs = Path(__file__).resolve().parents[1] / f"{DEFAULT_RUNS_DIR}_{gym}"
    records = {(r["label"], r["seed"]): r for r in load_records(runs)}
    eval_cfg = EvalConfig(teacher=f"gym-{gym}-teacher-dpo", student=f"gym-{gym}-student")
    models = eval_cfg.models()
    weights = eval_cfg.weights() if gym in SHIPPED_SIZES else None
    for variant in suite(suite_name):
        for seed in DEFAULT_SEEDS:
            record = records.get((variant.label, seed))
            assert record is not None, (
                f"{variant.label} seed {seed}: python -m workbench.compare --gym {gym} --suite {suite_name}"
            )
            assert record["models"] == models and record["method_defaults"] == method_defaults(variant.method)
    # one build per world, its weights noted on every record and reference
    _assert_made_on(list(records.values()), load_references(runs), weights)
    assert set(load_references(runs)) >= set(DEFAULT_SEEDS)


def test_cost_and_ceiling_groups_methods_by_supervision_and_counts_prompts_at_the_gold_ceiling():
    """Every registered method is teacher-only or gold-supervised; the table counts a prompt at the ceiling only
    when every sample scored 1, with a CI over seeds, and reads optimizer steps from the config (rounds, ADPA+'s
    two stages)."""
    from workbench.compare import cost_and_ceiling, format_cost_and_ceiling
    from workbench.compare.tables import optimizer_steps

    assert {m.supervision for m in REGISTERED.values()} == {"teacher", "gold"}
    assert {name for name, m in REGISTERED.items() if m.supervision == "gold"} >= {"kd", "sft", "dckd", "adpa"}
    assert {"pad-ppd", "plad", "seqkd", "dpo"} <= {n for n, m in REGISTERED.items() if m.supervision == "teacher"}
    assert optimizer_steps({"steps": 300, "iterations": 2}) == 600
    assert optimizer_steps({"method": "adpa+", "steps": 400, "dckd_steps": None}) == 800
    assert optimizer_steps({"method": "adpa+", "steps": 400, "dckd_steps": 100}) == 500
    per_prompt = {  # (label, seed) -> scores of 4 prompts; 1.0 = every sample at gold 1
        ("kd", 0): [1.0, 1.0, 0.5, 0.0],
        ("kd", 1): [1.0, 0.99, 1.0, 1.0],
        ("plad", 0): [0.9, 1.0, 0.9, 0.9],
        ("plad", 1): [1.0, 0.9, 0.9, 0.9],
    }
    records = [
        _record(label, seed, float(np.mean(v)), seconds=2.0 + seed, per_prompt=v)
        for (label, seed), v in per_prompt.items()
    ]
    for r in records:
        r["metrics"]["config"].update(steps=300, batch_size=8, gradient_accumulation_steps=2)
    references = {
        s: {
            "student": {"gold": {"mean": 0.5}, "per_prompt": [0.5, 0.5, 1.0, 0.5]},
            "teacher": {"gold": {"mean": 1.0}, "per_prompt": [1.0, 1.0, 1.0, 1.0]},
        }
        for s in (0, 1)
    }
    table = cost_and_ceiling(records, references).set_index("method")
    assert list(table.index) == ["teacher", "student (initial)", "plad", "kd"]  # references, teacher only, gold
    assert table.loc["kd", "at_ceiling"] == pytest.approx(np.mean([0.5, 0.75]))
    assert table.loc["kd", "at_ceiling_ci95"] == pytest.approx(mean_ci([0.5, 0.75])["ci95"])
    assert table.loc["plad", "at_ceiling"] == pytest.approx(0.25) and table.loc["plad", "at_ceiling_ci95"] == 0
    assert table.loc["teacher", "at_ceiling"] == 1.0 and table.loc["student (initial)", "at_ceiling"] == 0.25
    assert table.loc["kd", "supervision"] == "gold-supervised" and table.loc["plad", "supervision"] == "teacher only"
    assert table.loc["kd", "optimizer_steps"] == 300 and table.loc["kd", "examples_per_step"] == 16
    assert table.loc["kd", "seconds"] == pytest.approx(2.5)
    assert "| plad | teacher only | 2 | 0.925 | 0.250 ± 0.000 | 300 | 16 | 2.5 |" in format_cost_and_ceiling(
        cost_and_ceiling(records, references)
    )


def test_the_alpha_claims_run_each_alpha_at_the_rate_validation_chose_for_it():
    """results/gym_tune/pad_alpha_lr_seeds_0-1.json re-chose PAD-PPD's learning rate at each α of the Fig. 5 grid on
    validation prompts: the committed α runs (the ledger's and --suite pad-fig5) use the rate it keeps for that α."""
    from workbench.compare import setting_of

    root = Path(__file__).resolve().parents[1]
    sweep = json.loads((root / "results" / "gym_tune" / "pad_alpha_lr_seeds_0-1.json").read_text())
    assert set(sweep["by_alpha"]) == {"0.0", "0.2", "0.4", "0.6", "1.0"}
    variants = {v.overrides["alpha"]: v for v in suite("pad-fig5") if "alpha" in v.overrides}
    for alpha, result in sweep["by_alpha"].items():
        kept = result["best"] if result["vs_current"]["change"] else sweep["current"]
        variant = variants[float(alpha)]
        assert variant.overrides.get("lr", setting_of("pad-ppd", "lr")) == pytest.approx(kept), alpha
        assert max(result["gold"].values()) == result["gold"][str(result["best"])]
