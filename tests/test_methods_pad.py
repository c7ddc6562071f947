"""The PAD pipeline on the tiny gym: config validation, the listwise objective, a full run with metrics."""

import json

import pytest
import torch

from workbench.methods.pad import ListwiseObjective, PadConfig, run_pad


@pytest.mark.parametrize("bad, match", [
    (dict(alpha=1.5), "alpha"), (dict(n=1), "n=1"), (dict(n=4, m=3), "divide"), (dict(loss="nope"), "registered"),
    (dict(steps=0), "steps"),
])
def test_config_errors_name_the_parameter(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        PadConfig(**bad)


def _batch(tok, n=4):
    from workbench.trainers import ListwiseCollator

    rows = [{"prompt": "sort 3 1 2", "responses": ["1 2 3", "3 2 1", "1 3 2", "hate"][:n],
             "teacher_rewards": [0.0, -1.0, -0.5, -3.0][:n]},
            {"prompt": "max 1 9", "responses": ["9", "8", "1", "9 9"][:n], "teacher_rewards": [0.0, -0.5, -2.0, -1.0][:n]}]
    return ListwiseCollator(tok)(rows)


def test_listwise_objective_decomposition_and_sft_anchor(tiny_models):
    from copy import deepcopy

    model, tok = tiny_models["student"]
    model = deepcopy(model)
    batch = _batch(tok)
    assert batch["teacher_rewards"].shape == (2, 4) and batch["input_ids"].shape[0] == 8
    full, _ = ListwiseObjective("vpd", beta=10.0)(model, batch)
    split, _ = ListwiseObjective("vpd", beta=10.0, m=2)(model, batch)
    anchored, metrics = ListwiseObjective("ppd", beta=10.0, sft_weight=1.0)(model, batch)
    plain, _ = ListwiseObjective("ppd", beta=10.0)(model, batch)
    assert torch.isfinite(full) and torch.isfinite(split)
    assert not torch.allclose(full, split)  # 2 groups of 2 is a different (decomposed) objective
    assert torch.allclose(anchored, plain + metrics["sft_loss"], atol=1e-6) and metrics["sft_loss"] > 0
    anchored.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_run_pad_end_to_end_on_the_tiny_gym(tiny_gym, tmp_path):
    cfg = PadConfig(teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", n=3, steps=3, train_prompts=12,
                    eval_prompts=6, eval_samples=2, batch_size=4, iterations=2, output_dir=str(tmp_path),
                    progress=False)
    result = run_pad(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "pad-ppd" and len(metrics["rounds"]) == 2
    assert 0.0 <= metrics["gold_after"]["mean"] <= 1.0 and 0.0 <= metrics["win_rate_vs_initial"] <= 1.0
    assert {"tau_student_teacher", "tau_student_gold", "tau_teacher_gold"} <= set(metrics["ranking"])
    assert any("loss" in h for h in result.history) and {h["round"] for h in result.history} == {0, 1}


def test_run_pad_trains_a_lora_adapter_only(tiny_gym, tmp_path):
    from peft import PeftModel

    cfg = PadConfig(teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", n=2, steps=2, train_prompts=8,
                    eval_prompts=4, eval_samples=1, batch_size=4, lora=True, lr=1e-2, output_dir=str(tmp_path),
                    progress=False)
    result = run_pad(cfg)
    assert isinstance(result.model, PeftModel)
    base = [n for n, p in result.model.named_parameters() if not p.requires_grad]
    adapters = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert base and adapters and all("lora_" in n for n in adapters)
