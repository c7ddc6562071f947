"""Matched conditions: every sampling setting, the student against its teacher at each side's best setting, matched
budgets and validation learning curves (workbench.compare.conditions, the harness's ValidationCurve)."""

import json
import shutil

import numpy as np
import pytest
from test_compare import TINY as COMPARE_TINY
from transformers import TrainerCallback

from workbench.compare import (
    EvalConfig,
    at_setting,
    budget_matched,
    claims_ledger,
    compare,
    curve_summary,
    format_gold_by_setting,
    format_student_vs_teacher,
    gold_by_setting,
    ledger_across_worlds,
    load_records,
    load_references,
    report,
    setting_name,
    student_vs_teacher,
    suite,
    teacher_matched,
)
from workbench.compare.runs import BUDGET_BATCH, BUDGET_STEPS, budget_overrides, setting_of
from workbench.trainers import prepare_trainer, watching

TINY = {**COMPARE_TINY, "steps": 3}  # three steps: a curve point every 2 and one at the end


def test_setting_names():
    assert [setting_name(t) for t in (0, 0.0, 0.3, 0.8, 1.0)] == ["greedy", "greedy", "T=0.3", "T=0.8", "T=1.0"]


def test_the_curve_leaves_training_as_it_was_and_counts_steps_across_rounds(tmp_path):
    methods = ["seqkd", ("pad-ppd", {"iterations": 2, "lr": 1e-2})]
    plain = EvalConfig(curve_every=0)
    curved = EvalConfig(curve_every=2, curve_prompts=4)
    compare(methods, seeds=[0], overrides=TINY, runs_dir=tmp_path / "plain", eval_cfg=plain)
    compare(methods, seeds=[0], overrides=TINY, runs_dir=tmp_path / "curved", eval_cfg=curved)
    before = {r["label"]: r for r in load_records(tmp_path / "plain")}
    after = {r["label"]: r for r in load_records(tmp_path / "curved")}
    assert set(before) == set(after) == {"seqkd", "pad-ppd[iterations=2,lr=0.01]"}
    for label in before:
        # sampling reseeds torch: a curve drawn without the forked random state would change what training drew
        assert after[label]["harness"]["per_prompt"] == before[label]["harness"]["per_prompt"]
        assert "curve" not in before[label]["harness"]
    assert [p["step"] for p in after["seqkd"]["harness"]["curve"]["points"]] == [0, 2, 3]
    # two rounds of 3 steps: the student before training, a point every 2 steps of each round and at each round's
    # end, on one step axis
    pad = after["pad-ppd[iterations=2,lr=0.01]"]["harness"]["curve"]
    assert [p["step"] for p in pad["points"]] == [0, 2, 3, 5, 6]
    assert pad["split"] == "validation" and pad["prompts"] == 4
    assert all(0.0 <= p["gold"] <= 1.0 for p in pad["points"])
    assert len({p["gold"] for p in pad["points"]}) > 1  # lr 1e-2 moves the student between points


def test_runs_and_references_are_scored_at_every_setting(tmp_path):
    compare(["seqkd"], seeds=[0], overrides=TINY, runs_dir=tmp_path, eval_cfg=EvalConfig(curve_every=0))
    record = load_records(tmp_path)[0]
    reference = load_references(tmp_path)[0]
    for scored in (record["harness"], reference["teacher"], reference["student"]):
        settings = scored["by_temperature"]
        assert list(settings) == ["greedy", "T=0.3", "T=1.0"]
        for value in settings.values():
            assert len(value["per_prompt"]) == TINY["eval_prompts"]
            assert value["gold"]["mean"] == pytest.approx(np.mean(value["per_prompt"]))
    # greedy is one answer a prompt, and deterministic: the same scores at another seed
    compare(["seqkd"], seeds=[1], overrides=TINY, runs_dir=tmp_path, eval_cfg=EvalConfig(curve_every=0))
    again = load_references(tmp_path)[1]["teacher"]["by_temperature"]["greedy"]["per_prompt"]
    assert again == reference["teacher"]["by_temperature"]["greedy"]["per_prompt"]
    # the ledger reads the student>teacher claim at each side's best setting too
    ledger = claims_ledger(load_records(tmp_path), load_references(tmp_path))
    matched = ledger[ledger["claim"] == "student>teacher@best-settings"].iloc[0]
    assert matched["n_seeds"] == 2 and matched["n_prompts"] == TINY["eval_prompts"]
    assert matched["verdict"] in ("holds", "does not hold", "inconclusive")
    assert "## Sampling temperature" in report(tmp_path) and "## Validation learning curves" not in report(tmp_path)


def _record(label, seed, scores: dict, config=None, curve=None):
    """A record with per-prompt gold at each setting (``scores``: setting → list), as the harness saves it."""
    main = scores["T=0.8"]
    harness = {
        "gold": {"mean": float(np.mean(main))},
        "per_prompt": main,
        "by_temperature": {k: {"gold": {"mean": float(np.mean(v))}, "per_prompt": v} for k, v in scores.items()},
    }
    if curve:
        harness["curve"] = {"split": "validation", "prompts": 4, "points": curve}
    method = label.split("[")[0]
    return {"label": label, "method": method, "seed": seed, "harness": harness, "metrics": {"config": config or {}}}


def _settings(rng, levels: dict, prompts=40):
    """Per-prompt scores around each setting's level (prompt noise shared by the settings)."""
    noise = rng.uniform(-0.05, 0.05, prompts)
    return {k: list(np.clip(v + noise + rng.uniform(-0.01, 0.01, prompts), 0, 1)) for k, v in levels.items()}


def test_a_student_above_its_teacher_only_at_the_teachers_worse_setting():
    # the teacher is best greedy (0.9) and worse sampled (0.7 at T = 0.8); the student is 0.8 at every setting:
    # above the teacher at T = 0.8, below it with each at its best setting
    rng = np.random.default_rng(0)
    teacher = {"greedy": 0.9, "T=0.3": 0.85, "T=0.8": 0.7, "T=1.0": 0.6}
    student = dict.fromkeys(teacher, 0.8)
    records = [_record("kd", s, _settings(rng, student)) for s in range(4)]
    references = {
        s: {
            role: {
                "per_prompt": (scores := _settings(rng, levels))["T=0.8"],
                "by_temperature": {k: {"per_prompt": v} for k, v in scores.items() if k != "T=0.8"},
            }
            for role, levels in (("teacher", teacher), ("student", dict.fromkeys(teacher, 0.3)))
        }
        for s in range(4)
    }
    by_setting = gold_by_setting(records, references).set_index("method")
    assert list(by_setting.index) == ["student (initial)", "teacher", "kd"]
    assert by_setting.loc["teacher", "best"] == "greedy"
    assert by_setting.loc["teacher", "T=0.8"] == pytest.approx(0.7, abs=0.02)
    lines = format_gold_by_setting(gold_by_setting(records, references)).splitlines()
    teacher_line = next(line for line in lines if "| teacher" in line)
    assert teacher_line.split(" | ")[2].startswith("**")  # the greedy cell, its best, in bold
    table = student_vs_teacher(records, references).set_index("compared")
    assert table.loc["at T=0.8", "verdict"] == "student above"
    assert table.loc["at greedy", "verdict"] == "teacher above"
    best = table.loc["each at its best setting"]
    assert best["teacher_setting"] == "greedy" and best["effect"] == pytest.approx(-0.1, abs=0.02)
    assert best["verdict"] == "teacher above" and best["low"] < best["effect"] < best["high"] < 0
    assert "each at its best setting" in format_student_vs_teacher(student_vs_teacher(records, references))
    # a method scored at the table's setting only is left out, not a reason to compare nothing
    main_only = _record("seqkd", 0, {"T=0.8": [0.99] * 40})
    main_only["harness"].pop("by_temperature")
    again = student_vs_teacher([*records, main_only], references).set_index("compared")
    assert set(again["student"]) == {"kd"} and again.loc["each at its best setting", "verdict"] == "teacher above"


def test_records_scored_at_one_setting_have_no_setting_table():
    record = _record("kd", 0, {"T=0.8": [0.5, 0.6]})
    record["harness"].pop("by_temperature")
    assert gold_by_setting([record]).empty and student_vs_teacher([record]).empty


def test_the_budget_suite_puts_every_table_method_at_one_budget():
    labels = [v.label for v in suite("budget")]
    assert "dckd[batch_size=16,steps=300]" in labels and "plad[batch_size=16]" in labels
    assert "adpa+[batch_size=16,dckd_steps=150,steps=150]" in labels
    assert not any(label.startswith(("kd[", "pad-ppd[")) for label in labels)  # at the budget already
    for variant in suite("budget"):
        steps = variant.overrides.get("steps", setting_of(variant.method, "steps"))
        stages = 2 if variant.method == "adpa+" else 1
        assert steps * stages == BUDGET_STEPS
        assert variant.overrides.get("batch_size", setting_of(variant.method, "batch_size")) == BUDGET_BATCH
    assert budget_overrides("kd") == {}


def test_budget_matched_takes_the_run_at_the_budget_and_checks_its_config():
    at = {"steps": 300, "batch_size": 16}
    records = [
        _record("kd", 0, {"T=0.8": [0.5]}, {"method": "kd", **at}),
        _record("dckd", 0, {"T=0.8": [0.9]}, {"method": "dckd", "steps": 400, "batch_size": 32}),
        _record("dckd[batch_size=16,steps=300]", 0, {"T=0.8": [0.8]}, {"method": "dckd", **at}),
        _record("kd[alpha=0.5]", 0, {"T=0.8": [0.1]}, {"method": "kd", **at}),
        # a variant label whose config is not at the budget (made under other defaults) is never counted
        _record("plad[batch_size=16]", 0, {"T=0.8": [0.2]}, {"method": "plad", "steps": 200, "batch_size": 16}),
    ]
    matched = budget_matched(records)
    assert sorted((r["label"], r["harness"]["per_prompt"][0]) for r in matched) == [("dckd", 0.8), ("kd", 0.5)]


def test_teacher_matched_takes_the_samplers_own_runs_and_the_others_scaled_in_one_setting():
    from workbench.compare.runs import TEACHER_BUDGET, TEACHER_BUDGET_OWN

    fewer = TEACHER_BUDGET["pad-ppd"]
    shorter = TEACHER_BUDGET["reverse-kl"]
    records = [
        _record("seqkd", 0, {"T=0.8": [0.7]}, {"train_prompts": 1024}),
        _record("plad", 0, {"T=0.8": [0.6]}, {"train_prompts": 1024}),
        _record("pad-ppd", 0, {"T=0.8": [0.9]}, {"train_prompts": 1024}),  # 12.8 times the teacher calls
        _record("reverse-kl", 0, {"T=0.8": [0.8]}, {"steps": 300}),
        _record(f"pad-ppd[train_prompts={fewer['train_prompts']}]", 0, {"T=0.8": [0.5]}, fewer),
        _record(f"dpo[train_prompts={fewer['train_prompts']}]", 0, {"T=0.8": [0.4]}, {"train_prompts": 1024}),
        _record(f"reverse-kl[steps={shorter['steps']}]", 0, {"T=0.8": [0.3]}, {"method": "reverse-kl", **shorter}),
        _record("sft", 0, {"T=0.8": [0.2]}, {"method": "sft"}),
    ]
    assert teacher_matched(records[:4]) == []  # the teacher-budget suite did not run
    matched = teacher_matched(records)
    # a variant whose config is not at the budget (made under other settings) is never counted
    assert sorted((r["label"], r["harness"]["per_prompt"][0]) for r in matched) == [
        ("pad-ppd", 0.5),
        ("plad", 0.6),
        ("reverse-kl", 0.3),
        ("seqkd", 0.7),
        ("sft", 0.2),
    ]
    labels = [v.label for v in suite("teacher-budget")]
    assert labels[0] == f"pad-ppd[train_prompts={fewer['train_prompts']}]" and "kd[steps=52]" in labels
    # every table method that uses a teacher is either at the budget with its own settings or scaled to it
    assert set(TEACHER_BUDGET) | set(TEACHER_BUDGET_OWN) == {v.method for v in suite("table")}


def test_at_world_rates_swaps_in_the_rates_rechosen_on_the_records_world():
    from workbench.compare import at_world_rates
    from workbench.compare.conditions import world_of
    from workbench.compare.runs import WORLD_LR, suite

    hard = {"teacher": "gym-hard-teacher-dpo"}
    rate = WORLD_LR["hard"]["reverse-kl"]
    records = [
        _record("seqkd", 0, {"T=0.8": [0.7]}, hard),
        _record("reverse-kl", 0, {"T=0.8": [0.6]}, {**hard, "lr": 3e-4}),
        _record("kd[data_fraction=0.1]", 0, {"T=0.8": [0.1]}, hard),  # a ledger variant is not a table row
    ]
    assert [world_of(r) for r in records[:1]] == ["hard"] and at_world_rates(records) == []  # world-lr did not run
    assert world_of(_record("kd", 0, {"T=0.8": [0.1]}, {"teacher": "gym-teacher-dpo"})) == "default"
    assert world_of(_record("kd", 0, {"T=0.8": [0.1]}, {"teacher": "some/hub-model"})) == ""
    rated = records + [
        _record(f"reverse-kl[lr={rate}]", 0, {"T=0.8": [0.8]}, {**hard, "lr": rate}),
        _record(f"adpa_no_ref[lr={WORLD_LR['hard']['adpa_no_ref']}]", 0, {"T=0.8": [0.9]}, {**hard, "lr": 1.0}),
    ]
    # the re-chosen run replaces the table's; a variant whose config is not at the re-chosen rate is never counted
    assert sorted((r["label"], r["harness"]["per_prompt"][0]) for r in at_world_rates(rated)) == [
        ("reverse-kl", 0.8),
        ("seqkd", 0.7),
    ]
    assert [v.label for v in suite("world-lr", "hard")][0] == f"reverse-kl[lr={rate}]"
    assert suite("world-lr") == []  # the default world's rates are the table's


def test_curve_summary_reads_first_peak_and_end():
    points = [{"step": 50, "gold": 0.4}, {"step": 100, "gold": 0.7}, {"step": 150, "gold": 0.6}]
    records = [_record("kd", s, {"T=0.8": [0.5]}, curve=points) for s in range(2)]
    row = curve_summary(records).iloc[0]
    assert (row["first_step"], row["peak_step"], row["end_step"]) == (50, 100, 150)
    assert row["end_minus_peak"] == pytest.approx(-0.1) and row["n_seeds"] == 2 and row["points"] == 3


def test_watching_adds_callbacks_to_every_method_trainer_in_its_block():
    class Probe(TrainerCallback):
        pass

    class FakeTrainer:
        def __init__(self):
            self.callbacks = []

        def add_callback(self, callback):
            self.callbacks.append(callback)

        def remove_callback(self, callback):
            pass

    probe = Probe()
    with watching(probe):
        inside = prepare_trainer(FakeTrainer(), progress=True)
    outside = prepare_trainer(FakeTrainer(), progress=True)
    assert inside.callbacks == [probe] and outside.callbacks == []


def test_the_curve_refuses_a_step_of_zero():
    from workbench.compare import ValidationCurve

    with pytest.raises(ValueError, match="curve_every=0"):
        ValidationCurve(EvalConfig(curve_every=0), seed=0)


def test_records_without_settings_or_curves_report_as_before(tmp_path):
    # a records folder copied with its settings removed reports as before: the new sections only where data exist
    compare(["seqkd"], seeds=[0], overrides=TINY, runs_dir=tmp_path, eval_cfg=EvalConfig(curve_every=2))
    text = report(tmp_path)
    assert "## Validation learning curves" in text and "## Sampling temperature" in text
    scored = tmp_path.parent / f"{tmp_path.name}-scored"
    shutil.copytree(tmp_path, scored)
    path = next(tmp_path.glob("seqkd/seed0/record.json"))
    record = json.loads(path.read_text())
    for key in ("by_temperature", "curve"):
        record["harness"].pop(key)
    path.write_text(json.dumps(record))
    for ref in tmp_path.glob("_references/seed*.json"):
        saved = json.loads(ref.read_text())
        for role in ("student", "teacher"):
            saved[role].pop("by_temperature")
        ref.write_text(json.dumps(saved))
    text = report(tmp_path)
    assert "## Validation learning curves" not in text and "## Sampling temperature" not in text
    # across worlds, the settings-matched claim is a row where one world measured it, "—" in the other
    across = ledger_across_worlds({"scored": scored, "main only": tmp_path}).set_index("claim")
    row = across.loc["student>teacher@best-settings"]
    assert row["scored_seeds"] == 1 and row["main only_verdict"].startswith("not measured")
    assert np.isnan(row["main only_effect"]) and not np.isnan(row["scored_effect"])


def test_at_setting_reads_every_table_at_another_setting():
    records = [
        _record("kd", 0, {"T=0.8": [0.5, 0.7], "greedy": [1.0, 0.0]}),
        _record("seqkd", 0, {"T=0.8": [0.2, 0.2]}),  # scored at the table's setting only: left out
    ]
    records[1]["harness"].pop("by_temperature")
    greedy = at_setting(records, "greedy")
    assert [r["label"] for r in greedy] == ["kd"]
    assert greedy[0]["harness"]["per_prompt"] == [1.0, 0.0] and greedy[0]["harness"]["gold"]["mean"] == 0.5
    assert records[0]["harness"]["per_prompt"] == [0.5, 0.7]  # the records themselves unchanged
