"""A diverged training run stops at once with the step, the last finite loss and what to try; nothing non-finite is
applied or saved, the metrics gathered so far are written, and the logs show the true loss."""

import json
import math

import datasets
import pytest
import torch

from workbench.divergence import TrainingDiverged
from workbench.trainers import ListwiseCollator, train_distill, training_arguments


class LossTurnsNan:
    """A listwise objective whose loss is NaN from its ``at``-th call on (as a poisoned batch or overflow gives)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, model, inputs):
        from workbench.logprobs import student_token_logps
        from workbench.losses.pad import avg_logp_reward

        self.calls += 1
        token_logps, mask = student_token_logps(model, inputs)
        loss = -avg_logp_reward(token_logps, mask).mean()
        if self.calls >= self.at:
            loss = loss * float("nan")
        return loss, {}


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_last_finite_loss(tiny_models, tmp_path):
    from copy import deepcopy

    student, tok = tiny_models["student"]
    model = deepcopy(student)
    rows = datasets.Dataset.from_dict(
        {"prompt": ["sort 2 1"] * 8, "responses": [["1 2", "2 1"]] * 8, "teacher_rewards": [[0.0, -1.0]] * 8}
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"training diverged at step 3: the loss is nan \(the last finite loss "
        r"was [0-9.]+ at step 2\).*lower learning rate.*precision='32-true'",
    ) as raised:
        train_distill(
            model,
            rows,
            ListwiseCollator(tok),
            LossTurnsNan(at=3),
            steps=5,
            lr=1e-3,
            batch_size=4,
            progress=False,
            output_dir=str(tmp_path),
        )
    error = raised.value
    assert error.step == 3 and error.last_finite_step == 2 and math.isfinite(error.last_finite_loss)
    assert error.history[-1]["diverged"] and math.isnan(error.history[-1]["loss"])
    assert [e["step"] for e in error.history if "loss" in e and not e.get("diverged")] == [1, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # step 3 was not applied


def test_the_logs_show_a_non_finite_loss_as_it_is():
    assert training_arguments(steps=1, lr=1e-3, batch_size=1).logging_nan_inf_filter is False


def test_pad_at_a_huge_learning_rate_stops_with_its_metrics_and_no_nan_checkpoint(tiny_gym, tmp_path):
    from safetensors.torch import load_file

    from workbench.methods import pad

    cfg = pad.PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=4,
        steps=12,
        batch_size=4,
        train_prompts=16,
        eval_prompts=4,
        eval_samples=2,
        max_new_tokens=6,
        lr=1e6,
        save_steps=2,
        output_dir=str(tmp_path),
        progress=False,
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"training diverged at step \d+: the (gradient norm|loss) is (nan|inf)"
        r".*lr=1e\+06, try 100000",
    ):
        pad.run_pad(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "pad-ppd" and metrics["gold_before"]["mean"] > 0
    assert metrics["diverged"]["step"] > 1 and metrics["diverged"]["last_finite_loss"] is not None
    assert metrics["training"]["train"]["logged_steps"] >= 1
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["diverged"] and history[-1]["step"] == metrics["diverged"]["step"]
    saved = sorted((tmp_path / "checkpoints").rglob("model.safetensors"))
    assert saved, "no checkpoint before the divergence: lower save_steps"
    for path in saved:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), f"{path} holds non-finite weights"


def test_the_training_script_writes_what_it_had_when_training_diverges(tiny_gym, tmp_path):
    """``python -m workbench.train`` (any recipe, any launch): a diverged run stops with the named error and leaves
    metrics.json (the config, the divergence, the training summary) and the log to the diverged step."""
    from workbench.train import method_config, train

    params = dict(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=4,
        steps=12,
        batch_size=4,
        train_prompts=16,
        max_new_tokens=6,
        lr=1e6,
        output_dir=str(tmp_path),
        progress=False,
    )
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+"):
        train("pad", method_config("pad", params), save_model=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pipeline"] == "pad" and metrics["config"]["lr"] == 1e6
    assert metrics["diverged"]["step"] >= 1 and metrics["training"]
    assert json.loads((tmp_path / "history.json").read_text())
