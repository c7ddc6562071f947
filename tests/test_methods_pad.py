"""The PAD pipeline on the tiny gym: config validation, the listwise objective, a full run with metrics."""

import json
from pathlib import Path

import pytest
import torch

from workbench.methods.pad import ListwiseObjective, PadConfig, run_pad


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(alpha=1.5), "alpha"),
        (dict(n=1), "n=1"),
        (dict(n=4, m=3), "divide"),
        (dict(loss="nope"), "registered"),
        (dict(steps=0), "steps"),
    ],
)
def test_config_errors_name_the_parameter(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        PadConfig(**bad)


def _batch(tok, n=4):
    from workbench.trainers import ListwiseCollator

    rows = [
        {
            "prompt": "sort 3 1 2",
            "responses": ["1 2 3", "3 2 1", "1 3 2", "hate"][:n],
            "teacher_rewards": [0.0, -1.0, -0.5, -3.0][:n],
        },
        {"prompt": "max 1 9", "responses": ["9", "8", "1", "9 9"][:n], "teacher_rewards": [0.0, -0.5, -2.0, -1.0][:n]},
    ]
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
    cfg = PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=3,
        steps=3,
        train_prompts=12,
        eval_prompts=6,
        eval_samples=2,
        batch_size=4,
        iterations=2,
        output_dir=str(tmp_path),
        progress=False,
    )
    result = run_pad(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "pad-ppd" and len(metrics["rounds"]) == 2
    assert 0.0 <= metrics["gold_after"]["mean"] <= 1.0 and 0.0 <= metrics["win_rate_vs_initial"] <= 1.0
    assert {"tau_student_teacher", "tau_student_gold", "tau_teacher_gold"} <= set(metrics["ranking"])
    assert any("loss" in h for h in result.history) and {h["round"] for h in result.history} == {0, 1}


@pytest.mark.parametrize("judge", ["", "gym-tiny-teacher-dpo"])
def test_run_pad_on_a_dataset_file_reports_no_gold_and_a_judge_when_configured(judge, tiny_gym, tmp_path):
    """Off the gym PAD trains on the dataset's prompts; no gold number is reported (the reason is), the student's
    agreement with the teacher's ranking is, and a configured judge adds its labelled win rate."""
    fixture = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
    cfg = PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        dataset=str(fixture),
        dataset_schema="ultrafeedback",
        judge=judge,
        n=2,
        steps=2,
        train_prompts=4,
        eval_prompts=2,
        eval_samples=2,
        batch_size=2,
        max_new_tokens=8,
        output_dir=str(tmp_path),
        progress=False,
    )
    run_pad(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == str(fixture) and metrics["rounds"][0]["prompts"] >= 1
    assert (
        metrics["gold_before"] is None
        and metrics["gold_after"] is None
        and "train_sample_gold" not in metrics["rounds"][0]
    )
    assert set(metrics["ranking"]) == {"tau_student_teacher"} and metrics["training"]
    if judge:
        assert metrics["judge"]["measurement"] == "judge" and 0 <= metrics["judge"]["win_rate"] <= 1
        assert "judged by" in metrics["gold_evaluation"]
    else:
        assert metrics["judge"] is None and "no judge configured" in metrics["gold_evaluation"]


def test_pad_config_rejects_dataset_options_on_the_gym():
    with pytest.raises(ValueError, match="preference datasets"):
        PadConfig(judge="gym-tiny-teacher-dpo")


def test_run_pad_trains_a_lora_adapter_only(tiny_gym, tmp_path):
    from peft import PeftModel

    cfg = PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=2,
        steps=2,
        train_prompts=8,
        eval_prompts=4,
        eval_samples=1,
        batch_size=4,
        lora=True,
        lr=1e-2,
        output_dir=str(tmp_path),
        progress=False,
    )
    result = run_pad(cfg)
    assert isinstance(result.model, PeftModel)
    base = [n for n, p in result.model.named_parameters() if not p.requires_grad]
    adapters = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert base and adapters and all("lora_" in n for n in adapters)


@pytest.mark.parametrize("order", ["random", "cyclic"])
@pytest.mark.parametrize("letters", ["ABCDEFGH", "AB"])  # "AB": a judge of 2 options sees each group in slices
def test_teacher_rewards_of_shards_merge_into_the_whole_lists_rewards(tiny_models, order, letters, monkeypatch):
    from dataclasses import replace

    from workbench import rewards
    from workbench.gym.world import GYM_MCQ_TEMPLATE
    from workbench.rewards import teacher_rewards

    monkeypatch.setattr(rewards, "mcq_template_for", lambda tok: replace(GYM_MCQ_TEMPLATE, letters=tuple(letters)))
    teacher, tok = tiny_models["teacher-dpo"]
    prompts = ["sort 3 1 2", "max 1 9", "reverse 4 5", "add 2 2", "copy 7", "sort 9 8", "max 4 4"]
    groups = [[f"{k} {i}", f"{i}", f"{i} {k} {i}"] for k, _ in enumerate(prompts) for i in (k + 1,)]
    whole = teacher_rewards(teacher, tok, prompts, groups, alpha=0.8, order=order, seed=3)
    # two processes' shards: groups [0, 4) and [4, 7), scored in other batch sizes
    parts = [
        teacher_rewards(
            teacher, tok, prompts[a:b], groups[a:b], alpha=0.8, order=order, seed=3, first_group=a, batch_size=size
        )
        for a, b, size in ((0, 4, 5), (4, 7, 2))
    ]
    for key in ("likelihood", "log_p_sel", "calibrated"):
        merged = torch.cat([part[key] for part in parts])
        torch.testing.assert_close(merged, whole[key], rtol=1e-5, atol=1e-5, msg=key)
    if order == "random":  # the replayed option orders are what makes them equal: a fresh draw differs
        fresh = teacher_rewards(teacher, tok, prompts[4:], groups[4:], alpha=0.8, order=order, seed=3)
        assert not torch.allclose(fresh["log_p_sel"], whole["log_p_sel"][4:], atol=1e-4)


def test_full_size_knobs_default_to_current_behaviour_and_env_vars_override_them(monkeypatch):
    from workbench.trainers import checkpointing_argument

    checkpointing = checkpointing_argument()  # activation_checkpointing (transformers ≥ 5.x) or its old name
    monkeypatch.delenv("WORKBENCH_TRAINING_ARGS", raising=False)
    monkeypatch.delenv("WORKBENCH_LOGITS_CHUNK", raising=False)
    cfg = PadConfig()
    assert (
        cfg.gradient_accumulation_steps,
        cfg.gradient_checkpointing,
        cfg.logits_chunk,
        cfg.max_new_tokens,
        cfg.sampling_batch_size,
        cfg.scoring_batch_size,
        cfg.sampling_backend,
    ) == (1, False, 0, 24, 32, 32, "hf")
    assert cfg.training_overrides("round0") == {"gradient_accumulation_steps": 1}  # TrainingArguments' defaults
    cfg = PadConfig(gradient_accumulation_steps=4, gradient_checkpointing=True, logits_chunk=64)
    assert cfg.training_overrides("round0") == {
        "gradient_accumulation_steps": 4,
        checkpointing: True,
        f"{checkpointing}_kwargs": {"use_reentrant": False},
    }
    monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", '{"gradient_accumulation_steps": 8, "gradient_checkpointing": true}')
    monkeypatch.setenv("WORKBENCH_LOGITS_CHUNK", "0")
    cfg = PadConfig(gradient_accumulation_steps=4, logits_chunk=64)
    assert (cfg.gradient_accumulation_steps, cfg.gradient_checkpointing, cfg.logits_chunk) == (8, True, 0)
    for bad, match in (
        (dict(sampling_backend="tgi"), "sampling_backend"),
        (dict(scoring_batch_size=0), "scoring"),
        (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"),
    ):
        monkeypatch.delenv("WORKBENCH_TRAINING_ARGS", raising=False)
        with pytest.raises(ValueError, match=match):
            PadConfig(**bad)


def test_distill_round_passes_the_knobs_to_sampling_scoring_and_training(tiny_models, monkeypatch):
    from copy import deepcopy

    from workbench import trainers
    from workbench.methods import pad, pad_rounds

    checkpointing = trainers.checkpointing_argument()
    monkeypatch.delenv("WORKBENCH_TRAINING_ARGS", raising=False)
    monkeypatch.delenv("WORKBENCH_LOGITS_CHUNK", raising=False)
    calls = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = {**dict(enumerate(args)), **kwargs}
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((pad_rounds, "sample_responses"), (pad_rounds, "teacher_rewards"), (pad, "train_distill")):
        spy(module, name)
    student, tok = tiny_models["student"]
    teacher, teacher_tok = tiny_models["teacher-dpo"]
    cfg = PadConfig(
        n=2,
        steps=2,
        batch_size=2,
        max_new_tokens=7,
        sampling_batch_size=3,
        scoring_batch_size=5,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        logits_chunk=4,
        progress=False,
    )
    log, samples = pad.distill_round(
        cfg, deepcopy(student), tok, teacher, teacher_tok, ["sort 3 1 2", "max 1 9", "reverse 4 5", "add 2 2"], 0
    )
    assert (
        calls["sample_responses"]["max_new_tokens"],
        calls["sample_responses"]["batch_size"],
        calls["sample_responses"]["backend"],
    ) == (7, 3, "hf")
    assert calls["teacher_rewards"]["batch_size"] == 5 and calls["teacher_rewards"]["first_group"] == 0
    assert (calls["train_distill"]["gradient_accumulation_steps"], calls["train_distill"][checkpointing]) == (2, True)
    assert calls["train_distill"][3].logits_chunk == 4  # the ListwiseObjective
    assert len(samples.prompts) == 4 and samples.rewards["calibrated"].shape == (4, 2)
    assert any("loss" in entry for entry in log) and all(entry["round"] == 0 for entry in log)


def test_the_accelerate_script_trains_on_the_notebooks_prompts_and_never_on_held_out_ones(tiny_gym, tmp_path):
    """``workbench.train`` (the ``accelerate launch`` script) and ``run_pad`` (notebook 03) share
    ``pad_prompts``: on a local file both train on the same rows, disjoint from the held-out carve."""
    from workbench.methods.pad import pad_prompts
    from workbench.train import train as train_script

    fixture = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
    cfg = PadConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        dataset=str(fixture),
        dataset_schema="ultrafeedback",
        n=2,
        steps=1,
        train_prompts=100,
        eval_prompts=2,
        batch_size=2,
        max_new_tokens=4,
        output_dir=str(tmp_path),
        progress=False,
    )
    train, held_out = pad_prompts(cfg)
    assert len(held_out) == 2 and train and not {json.dumps(p) for p in train} & {json.dumps(p) for p in held_out}
    train_script("pad", cfg, save_model=False, save_rows=True)
    rows = [json.loads(line) for line in (tmp_path / "rows_round0.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows] == train


def test_a_quiet_run_prints_no_log_lines_but_keeps_its_history(tiny_gym, capsys):
    import datasets

    from workbench.models import load
    from workbench.trainers import train_sft

    student, tok = load("gym-tiny-student", device="cpu")  # its own copy: training changes it
    rows = datasets.Dataset.from_dict({"prompt": ["sort 3 1 2"] * 8, "response": ["1 2 3"] * 8})
    history = train_sft(student, tok, rows, steps=4, lr=1e-4, batch_size=4, progress=False)
    assert any("loss" in entry for entry in history)  # the curve is still recorded
    assert "'loss'" not in capsys.readouterr().out  # but not printed as {'loss': ...} dicts


def _staged_cfg(tmp_path, **overrides):
    return PadConfig(
        **{
            "teacher": "gym-tiny-teacher-dpo",
            "student": "gym-tiny-student",
            "n": 3,
            "steps": 2,
            "train_prompts": 8,
            "eval_prompts": 4,
            "eval_samples": 2,
            "batch_size": 4,
            "sampling_batch_size": 4,
            "output_dir": str(tmp_path),
            "progress": False,
            **overrides,
        }
    )


def test_the_staged_path_trains_on_the_stages_it_is_given_and_matches_the_one_call_path(tiny_gym, tmp_path):
    """sample_round → score_round (notebook 03's stages) give what sample_and_score gives; run_pad trains on them as
    given (a round whose rewards were edited trains differently) and, unedited, measures what run_pad(cfg) does."""
    from workbench.methods.pad import load_models, pad_prompts, sample_and_score, sample_round, score_round
    from workbench.methods.pad_rounds import RoundSamples

    cfg = _staged_cfg(tmp_path / "one-call")
    one_call = run_pad(cfg).metrics
    staged_cfg = _staged_cfg(tmp_path / "staged")
    models = load_models(staged_cfg)
    train, _ = pad_prompts(staged_cfg)
    prompts, groups = sample_round(staged_cfg, models.student, models.student_tok, train)
    rewards = score_round(staged_cfg, models.teacher, models.teacher_tok, prompts, groups)
    whole = sample_and_score(
        staged_cfg, models.student, models.student_tok, models.teacher, models.teacher_tok, train, 0
    )
    assert whole.groups == groups and whole.prompts == prompts
    for name in whole.rewards:
        torch.testing.assert_close(whole.rewards[name], rewards[name])
    staged = run_pad(staged_cfg, models=models, first_round=RoundSamples(prompts, groups, rewards)).metrics
    assert staged["gold_after"] == one_call["gold_after"] and staged["gold_before"] == one_call["gold_before"]
    assert models.student.training is not None and staged["training"] == one_call["training"]

    reversed_cfg = _staged_cfg(tmp_path / "reversed")
    reversed_models = load_models(reversed_cfg)
    flipped = {name: -value for name, value in rewards.items()}  # the teacher's order reversed, still (1-α)r + α log p
    other = run_pad(reversed_cfg, models=reversed_models, first_round=RoundSamples(prompts, groups, flipped)).metrics
    assert other["training"] != one_call["training"]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s._replace(groups=[g[:2] for g in s.groups]), "groups of"),
        (lambda s: s._replace(prompts=s.prompts[:-1], groups=s.groups[:-1]), "the run trains on"),
        (lambda s: s._replace(prompts=["sort 9 9 9"] + s.prompts[1:]), "not the run's"),
        (lambda s: s._replace(rewards={**s.rewards, "calibrated": s.rewards["likelihood"]}), "alpha=0.8"),
        (lambda s: s._replace(rewards={k: v for k, v in s.rewards.items() if k != "log_p_sel"}), "log_p_sel"),
        (
            lambda s: s._replace(
                rewards={k: v.clone().index_fill_(1, torch.tensor([0]), float("nan")) for k, v in s.rewards.items()}
            ),
            "non-finite",
        ),
    ],
)
def test_a_given_round_that_is_not_a_round_of_the_config_is_refused_before_training(edit, match, tmp_path):
    from workbench.methods.pad import check_round_samples, pad_prompts
    from workbench.methods.pad_rounds import RoundSamples

    cfg = _staged_cfg(tmp_path)
    train, _ = pad_prompts(cfg)
    likelihood = -torch.rand(len(train), cfg.n)
    log_p_sel = torch.log_softmax(torch.randn(len(train), cfg.n), -1)
    rewards = {
        "likelihood": likelihood,
        "log_p_sel": log_p_sel,
        "calibrated": 0.2 * likelihood + 0.8 * log_p_sel,
    }
    good = RoundSamples(list(train), [[f"{i} {j}" for j in range(cfg.n)] for i in range(len(train))], rewards)
    check_round_samples(cfg, good, train)
    with pytest.raises(ValueError, match=match):
        check_round_samples(cfg, edit(good), train)
