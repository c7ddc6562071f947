"""experiments/gym_judge.py (the gym's judge experiment) runs on the tiny gym, and its rows are what its flags say."""

import importlib.util
import json
from pathlib import Path

import pytest

from workbench.methods import GYM_LR

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    train_prompts=16,
    eval_prompts=8,
    eval_samples=2,
    steps=2,
    batch_size=4,
)


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gym_judge():
    return _experiment("gym_judge")


def test_the_experiment_runs_on_the_tiny_gym_and_reports_measured_correlations(gym_judge, tiny_gym):
    out = gym_judge.run(size="tiny", layout="restate", verdicts=True, steps=2, train_rows=16, test_prompts=8)
    for sets in ("judge_mix_sets", "student_sets"):
        assert -1 <= out[sets]["spearman"] <= 1 and 0 <= out[sets]["top1_accuracy"] <= 1
    assert -1 <= out["student_sets_likelihood_spearman"] <= 1 and out["train_seconds"] > 0
    with pytest.raises(ValueError, match="--verdicts needs"):
        gym_judge.run(size="tiny", layout="before", verdicts=True, steps=0)


def test_reference_rows_carry_the_gold_answer_and_random_letters_are_an_ordered_subset(gym_judge):
    import random

    from workbench.gym.world import MCQ_LAYOUTS, make_prompts

    template = MCQ_LAYOUTS["after"]
    prompts = make_prompts(20, "train", seed=0)
    rows = gym_judge.judge_rows(template, prompts, (2, 4), random.Random(0), reference=True, random_letters=True)
    consecutive = 0
    for prompt, text, answer, verdicts in zip(prompts, rows["prompt"], rows["response"], rows["verdicts"]):
        assert text.startswith(f"judge {prompt.text} answer {prompt.answer_text} options")
        shown = [word for word in text.split() if word in template.letters]
        assert len(shown) == len(verdicts) and shown == sorted(shown) and answer in shown
        consecutive += shown == list(template.letters[: len(shown)])
    assert consecutive < len(prompts)  # the letters really are drawn, not always A, B, C...
    plain = gym_judge.judge_rows(template, prompts, (2, 4), random.Random(0))
    assert all(text.startswith(f"judge {p.text} options") for p, text in zip(prompts, plain["prompt"]))


@pytest.fixture(scope="module")
def gym_world():
    return _experiment("gym_world")


def test_world_variants_are_real_builder_configs(gym_world):
    from workbench.gym.build import DEFAULT_V1, SIZES, ModelShape

    assert gym_world.variant_config("v1") == DEFAULT_V1 != SIZES["default"]
    # the default gym is the judge variant at 1500 teacher steps (same config, same cache folder)
    assert gym_world.variant_config("judge", overrides={"teacher_steps": 1500}) == SIZES["default"]
    lexical = gym_world.variant_config("lexical-gap", overrides={"seed": 1, "mcq_options": [2, 4]})
    assert (lexical.judge_layout, lexical.judge_verdicts, lexical.seed, lexical.mcq_options) == (
        "restate",
        True,
        1,
        (2, 4),
    )
    assert lexical.student == ModelShape(**gym_world.COMPETENT_STUDENT) and lexical.key() != SIZES["default"].key()
    judge = gym_world.variant_config("judge")
    assert (judge.judge_layout, judge.judge_running_best, judge.judge_verdict_scale, judge.teacher_steps) == (
        "running",
        True,
        19,
        2000,
    )
    with pytest.raises(ValueError, match="variant 'nope'"):
        gym_world.variant_config("nope")
    with pytest.raises(ValueError, match="'after', 'restate' or 'bracket'"):
        gym_world.variant_config("v1", overrides={"judge_verdicts": True})
    assert gym_world._override("teacher_steps=900") == ("teacher_steps", 900)
    assert gym_world._override("judge_layout=after") == ("judge_layout", "after")


def test_a_tiny_world_variant_builds_and_reports(gym_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    small = dict(
        teacher_steps=2,
        student_steps=2,
        dpo_steps=1,
        teacher_sft_rows=64,
        teacher_mcq_rows=32,
        student_rows=64,
        dpo_prompts=32,
        student={"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32},
    )
    out = gym_world.run("lexical", size="tiny", overrides=small, prompts=8)
    assert out["cache"].startswith(str(tmp_path)) and out["build_seconds"]["total"] > 0
    assert set(out["gold_reward"]) == {"teacher-ref", "teacher-dpo", "student"}
    dpo = out["ranking_vs_gold"]["teacher-dpo"]
    prior = dpo.pop("mcq_position_prior")
    assert len(prior) == 4 and abs(sum(prior) - 1) < 1e-3
    assert set(dpo) == {"avg_loglik_spearman", "mcq_spearman", "mcq_cyclic_spearman", "calibrated_alpha0.8_spearman"}
    # a correlation is NaN only when every 8-prompt set of the 2-step tiny student tied on gold (skipped sets)
    assert all(-1 <= v <= 1 for v in dpo.values() if v == v) and set(out["checks"]) >= {"mcq_beats_loglik"}
    assert all(0 <= v["greedy"] <= 1 for v in out["gold_reward"].values())


def test_the_learning_rate_sweep_evaluates_on_validation_and_extends_past_a_winning_end(
    tiny_gym, tmp_path, monkeypatch
):
    gym_tune = _experiment("gym_tune")
    monkeypatch.setattr(gym_tune, "GRID", (1e-4, 3e-3))
    monkeypatch.setattr(gym_tune, "BEYOND", {1e-4: 3e-5, 3e-3: 1e-2})
    out = gym_tune.sweep(["seqkd"], str(tmp_path), eval_prompts=8, overrides=TINY_RUN)["seqkd"]
    gold = {float(lr): g for lr, g in out["gold"].items()}
    assert out["best"] == max(gold, key=gold.get)
    assert len(gold) == 3 and {1e-4, 3e-3} < set(gold)  # the grid's winning end was extended one step
    record = next(tmp_path.glob("seqkd*/seed0/record.json")).read_text()
    assert '"split": "validation"' in record  # never the table's test prompts


def test_the_sweep_trains_and_evaluates_on_another_gym_world(tiny_gym, tmp_path):
    """--gym SIZE: every run starts from that build's teacher and student, and is scored against them."""
    gym_tune = _experiment("gym_tune")
    run = {k: v for k, v in TINY_RUN.items() if k not in ("teacher", "student")}
    gym_tune.sweep(["seqkd"], str(tmp_path), eval_prompts=8, overrides=run, grid=(3e-4,), gym="tiny")
    saved = json.loads(next(tmp_path.glob("seqkd*/seed0/record.json")).read_text())
    assert saved["metrics"]["config"]["teacher"] == "gym-tiny-teacher-dpo"
    assert saved["metrics"]["config"]["student"] == "gym-tiny-student"
    assert saved["models"]["teacher"].startswith("gym-tiny-teacher-dpo@")
    assert saved["models"]["student"].startswith("gym-tiny-student@")


def test_the_sweep_tunes_any_config_field_over_seeds_without_extending_it(tiny_gym, tmp_path):
    gym_tune = _experiment("gym_tune")
    out = gym_tune.sweep(
        ["dckd"], str(tmp_path), seeds=(0, 1), eval_prompts=8, overrides=TINY_RUN, param="alpha", grid=(0.2, 5.0)
    )["dckd"]
    assert set(out["gold"]) == {"0.2", "5.0"} and out["best"] in (0.2, 5.0)  # no step past the grid for alpha
    records = sorted(p.parent.parent.name + "/" + p.parent.name for p in tmp_path.glob("*/seed*/record.json"))
    assert records == [
        "dckd[alpha=0.2]/seed0",
        "dckd[alpha=0.2]/seed1",
        "dckd[alpha=5.0]/seed0",
        "dckd[alpha=5.0]/seed1",
    ]
    saved = json.loads((tmp_path / "dckd[alpha=5.0]" / "seed1" / "record.json").read_text())
    config = saved["metrics"]["config"]
    assert config["alpha"] == 5.0 and config["lr"] == GYM_LR["dckd"]  # the method's own gym rate
    with pytest.raises(ValueError, match="needs a grid"):
        gym_tune.sweep(["dckd"], str(tmp_path), param="gamma")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "nope"], "unknown methods ['nope']"),
        (["--methods", "dckd", "--param", "alpha"], "--param alpha needs --grid"),
        (["--methods", "dckd", "--param", "alpha", "--grid", "1", "--set", "gamma"], "--set takes FIELD=VALUE"),
    ],
)
def test_the_sweep_command_line_refuses_what_it_cannot_run(argv, message, capsys):
    with pytest.raises(SystemExit):
        _experiment("gym_tune").main(argv)
    assert message in capsys.readouterr().err


def test_a_setting_changes_only_when_the_best_beats_it_beyond_the_seed_noise(tmp_path):
    """The decision rule of the tuning experiment on hand-made records: paired by seed, change only when the 95% CI
    of the difference lies above 0."""
    versus_current = _experiment("gym_tune").versus_current

    def write(label, golds):
        for seed, gold in enumerate(golds):
            folder = tmp_path / label / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "record.json").write_text(
                json.dumps({"label": label, "seed": seed, "harness": {"gold": {"mean": gold}}})
            )

    write("kd[lr=0.0001]", [0.80, 0.85, 0.90])
    write("kd[lr=0.0003]", [0.82, 0.87, 0.92])  # +0.02 on every seed: a real lead
    write("kd[lr=0.001]", [0.83, 0.84, 0.91])  # +0.01 on average, but not on every seed: noise
    clear = versus_current(str(tmp_path), "kd", "lr", 0.0003, 0.0001, [0, 1, 2])
    assert clear["diff"] == pytest.approx(0.02) and clear["change"]
    noisy = versus_current(str(tmp_path), "kd", "lr", 0.001, 0.0001, [0, 1, 2])
    assert noisy["diff"] == pytest.approx(0.01) and not noisy["change"]
    assert versus_current(str(tmp_path), "kd", "lr", 0.0001, 0.0001, [0, 1, 2])["change"] is False
    assert versus_current(str(tmp_path), "kd", "lr", 0.0003, 0.003, [0, 1, 2]) is None  # current never swept


def test_grid_values_are_read_as_papermill_would():
    value = _experiment("gym_tune")._value
    assert [value(v) for v in ("3", "1e-4", "0.5", "True", "cyclic")] == [3, 1e-4, 0.5, True, "cyclic"]


def test_the_rebuild_experiment_reports_both_builds_side_by_side(tiny_gym, tmp_path, monkeypatch):
    """experiments/gym_rebuild.py: the shipped build and a build in the cache, each with its libraries, weights and
    report; here the cache holds a copy of the shipped weights, so every difference is exactly zero."""
    import shutil

    from workbench.gym.build import SIZES, cached_build_root

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    shutil.copytree(tiny_gym.root, cached_build_root(SIZES["tiny"]))
    out = _experiment("gym_rebuild").compare_builds("tiny", prompts=8, seed=0, force=False)
    assert out["shipped"]["root"] == str(tiny_gym.root) and out["rebuilt"]["root"].startswith(str(tmp_path))
    assert out["same_weights"] and out["shipped"]["weights"] == out["rebuilt"]["weights"]
    assert out["shipped"]["libraries"]["torch"] and set(out["shipped"]["checks"]) >= {"mcq_beats_loglik"}
    assert set(out["rebuilt_minus_shipped"]) >= {"greedy_gold_student", "mcq_minus_likelihood"}
    assert all(diff == 0 for diff in out["rebuilt_minus_shipped"].values())
