"""``report_to``: a run's training curves go live to experiment trackers (TensorBoard here), one tracker run per
training stage, the same numbers as history.json; bad tracker names fail before the run, naming the fix."""

import pytest
import torch

from workbench.methods import adpa as A
from workbench.methods.pad import PadConfig, run_pad
from workbench.methods.plad import PladConfig

tensorboard = pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' installs tensorboard")


def scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def logged(history: list[dict], key: str, **where) -> list[tuple[int, float]]:
    return [
        (h["step"], h[key])
        for h in history
        if key in h and "train_runtime" not in h and all(h.get(k) == v for k, v in where.items())
    ]


def test_tensorboard_gets_each_pad_rounds_curve_as_history_records_it(tiny_gym, tmp_path):
    cfg = PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=3,
        steps=8,
        train_prompts=12,
        eval_prompts=4,
        eval_samples=1,
        batch_size=4,
        iterations=2,
        output_dir=str(tmp_path),
        progress=False,
        report_to="tensorboard",
    )
    result = run_pad(cfg)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["round0", "round1"]
    for round_ in (0, 1):
        folder = tmp_path / "tensorboard" / f"round{round_}"
        for key in ("loss", "ranking_loss", "learning_rate"):  # the objective's own metrics too
            expected = logged(result.history, key, round=round_)
            assert len(expected) == 4, key
            got = scalars(folder, f"train/{key}")
            assert [step for step, _ in got] == [step for step, _ in expected], key
            torch.testing.assert_close(
                torch.tensor([v for _, v in got]), torch.tensor([v for _, v in expected]), rtol=1e-6, atol=1e-8, msg=key
            )


def test_adpa_plus_reports_each_stage_as_its_own_tracker_run(tiny_gym, tmp_path):
    result = A.run_adpa(
        A.AdpaConfig(
            method="adpa+",
            teacher_dpo="gym-tiny-teacher-dpo",
            teacher_ref="gym-tiny-teacher-ref",
            student="gym-tiny-student",
            steps=4,
            train_prompts=12,
            eval_prompts=4,
            eval_samples=1,
            batch_size=4,
            k=8,
            progress=False,
            output_dir=str(tmp_path),
            report_to="tensorboard",
        )
    )
    stages = [f"stage{i}-{name}" for i, name in enumerate(A.METHOD_STAGES["adpa+"])]
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == sorted(stages)
    for folder, stage in zip(stages, A.METHOD_STAGES["adpa+"]):
        expected = logged(result.history, "loss", stage=stage)
        assert expected and [s for s, _ in scalars(tmp_path / "tensorboard" / folder, "train/loss")] == [
            s for s, _ in expected
        ]


@pytest.mark.parametrize("config", [PadConfig, A.AdpaConfig, PladConfig])
def test_tracker_names_are_checked_when_the_config_is_made(config):
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    with pytest.raises(ValueError, match=r"report_to='tensorbord'.*unknown tracker.*'tensorboard'"):
        config(report_to="tensorbord")
    absent = sorted(set(INTEGRATION_TO_CALLBACK) - set(get_available_reporting_integrations()) - {"all", "none"})
    assert absent, "every tracker is installed here: pick another absent one for this test"
    with pytest.raises(ValueError, match=rf"\['{absent[0]}'\] not installed here; pip install"):
        config(report_to=f"tensorboard, {absent[0]}")
    with pytest.raises(ValueError, match="must be a string"):
        config(report_to=["tensorboard"])
    assert config().tracking("round0") == {} and config(report_to="none").tracking("x") == {}
    # "all" = every tracker installed here (transformers' meaning), each once
    assert sorted(config(report_to="tensorboard,all").tracking("x")["report_to"]) == sorted(
        get_available_reporting_integrations()
    )
    cfg = config(report_to=" tensorboard ", output_dir="runs/x")
    assert cfg.tracking("train") == {
        "report_to": ["tensorboard"],
        "run_name": "runs/x/train",
        "tracking_dir": "runs/x/tensorboard/train",
    }
