"""Baselines on the shared pipeline: teacher annotation, objectives against their definitions, the TRL trainers
against our trainer on identical data, and a tiny end-to-end run of each baseline."""

import copy
import json
import logging
import math
import tempfile
import warnings

import pytest
import torch

from workbench.losses.baselines import forward_kl_kd_loss, pro_loss
from workbench.methods.baselines import (
    BASELINES,
    SEQUENCE_FIELDS,
    BaselineConfig,
    PairPreferenceObjective,
    ProObjective,
    TeacherLogitObjective,
    annotated_pairs,
    ranked_lists,
    run_baseline,
    train_trl_pairs,
    train_workbench_pairs,
)
from workbench.scoring import avg_logp_rewards, sequence_logps
from workbench.trainers import ListwiseCollator, PairCollator, ResponseCollator

CHAT = [
    [{"role": "user", "content": "sort 3 1 2"}],
    [{"role": "user", "content": "add 4 5"}],
    [{"role": "user", "content": "max 2 7 4"}],
]
GROUPS = [["1 2 3", "3 1 2", "2 1 3"], ["9", "9", "9"], ["7", "4", "7"]]
PAIRS = [
    {"prompt": CHAT[0], "chosen": "1 2 3", "rejected": "3 1 2"},
    {"prompt": CHAT[1], "chosen": "9", "rejected": "sure here is the answer 8"},
    {"prompt": CHAT[2], "chosen": "7", "rejected": "2 7 4"},
]
TINY = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    train_prompts=16,
    eval_prompts=8,
    eval_samples=2,
    steps=2,
    batch_size=4,
    n=3,
    progress=False,
)


def test_annotated_pairs_take_argmax_and_argmin_and_skip_ties_and_identical_texts():
    scores = torch.tensor(
        [
            [0.5, -1.0, 0.2],  # best 0, worst 1
            [0.0, 0.0, 0.0],  # tie: skipped
            [0.3, 0.1, -0.2],
        ]
    )  # best "7", worst "7": identical text, skipped
    rows, stats = annotated_pairs(CHAT, GROUPS, scores)
    assert rows == [{"prompt": CHAT[0], "chosen": "1 2 3", "rejected": "3 1 2"}]
    assert stats["pairs"] == 1 and stats["skipped_ties"] == 1 and stats["skipped_identical_or_empty"] == 1
    assert stats["gold_accuracy"] == 1.0  # gold("1 2 3") = 1 > gold("3 1 2") for "sort 3 1 2"


def test_ranked_lists_sort_best_first_with_selection_probabilities_for_mcq():
    log_p_sel = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    (row,) = ranked_lists(CHAT[:1], GROUPS[:1], log_p_sel, "mcq")
    assert row["responses"] == ["3 1 2", "2 1 3", "1 2 3"]
    assert row["teacher_rewards"] == pytest.approx([0.5, 0.3, 0.2])
    (raw,) = ranked_lists(CHAT[:1], GROUPS[:1], log_p_sel, "calibrated")
    assert raw["teacher_rewards"] == pytest.approx(sorted(log_p_sel[0].tolist(), reverse=True))


def test_kd_objective_is_the_forward_kl_of_the_teacher_and_student_logits(tiny_models):
    (teacher, _), (student, tokenizer) = tiny_models["teacher-dpo"], tiny_models["student"]
    rows = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
    batch = ResponseCollator(tokenizer, fields=SEQUENCE_FIELDS)(rows)
    loss, _ = TeacherLogitObjective(teacher, "kd", temperature=2.0)(student, batch)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = forward_kl_kd_loss(t, s, batch["response_mask"][:, 1:], temperature=2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # by definition: T^2 · mean over response tokens of Σ_a p_T log(p_T / q_T), averaged over sequences
    mask = batch["response_mask"][:, 1:]
    p, q = (t / 2).log_softmax(-1), (s / 2).log_softmax(-1)
    per_token = (p.exp() * (p - q)).sum(-1)
    manual = 4 * torch.stack([per_token[b][mask[b]].mean() for b in range(len(rows))]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-4)


def test_reverse_kl_objective_is_zero_when_the_teacher_is_the_student(tiny_models):
    student, tokenizer = tiny_models["student"]
    rows = [{"prompt": p["prompt"], "response": p["rejected"]} for p in PAIRS]
    batch = ResponseCollator(tokenizer, fields=SEQUENCE_FIELDS)(rows)
    loss, metrics = TeacherLogitObjective(copy.deepcopy(student), "reverse_kl")(student, batch)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and "reverse_kl_loss" in metrics


def test_dpo_objective_starts_at_log_two_against_its_own_reference(tiny_models):
    student, tokenizer = tiny_models["student"]
    prompts = [p["prompt"] for p in PAIRS]
    ref_c = sequence_logps(student, tokenizer, prompts, [p["chosen"] for p in PAIRS])
    ref_r = sequence_logps(student, tokenizer, prompts, [p["rejected"] for p in PAIRS])
    rows = [{**p, "ref_chosen_logps": float(c), "ref_rejected_logps": float(r)} for p, c, r in zip(PAIRS, ref_c, ref_r)]
    batch = PairCollator(tokenizer, float_columns=("ref_chosen_logps", "ref_rejected_logps"))(rows)
    loss, metrics = PairPreferenceObjective("dpo", beta=0.1)(student, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-5)


def test_simpo_objective_matches_the_definition_on_scored_log_likelihoods(tiny_models):
    student, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer)(PAIRS)
    loss, _ = PairPreferenceObjective("simpo", beta=2.0, gamma_beta_ratio=0.5)(student, batch)
    prompts = [p["prompt"] for p in PAIRS]
    chosen = avg_logp_rewards(student, tokenizer, prompts, [p["chosen"] for p in PAIRS])
    rejected = avg_logp_rewards(student, tokenizer, prompts, [p["rejected"] for p in PAIRS])
    # SimPO Eq. 6: -log σ(β (avg_w - avg_l) - γ), γ = 0.5 β
    expected = -torch.nn.functional.logsigmoid(2.0 * (chosen - rejected) - 1.0).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_pro_objective_feeds_sorted_rewards_scores_and_best_nll_to_pro_loss(tiny_models):
    student, tokenizer = tiny_models["student"]
    rows = ranked_lists(CHAT[:1], GROUPS[:1], torch.log(torch.tensor([[0.2, 0.5, 0.3]])), "mcq")
    batch = ListwiseCollator(tokenizer)(rows)
    loss, _ = ProObjective(dynamic_temperature=True)(student, batch)
    prompts = [CHAT[0]] * 3
    rewards = avg_logp_rewards(student, tokenizer, prompts, rows[0]["responses"]).view(1, 3)
    nll = -sequence_logps(student, tokenizer, prompts[:1], rows[0]["responses"][:1])
    expected = pro_loss(rewards, rank_scores=batch["teacher_rewards"], sft_term=nll)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_trl_trainer_and_our_trainer_agree_on_the_first_step(tiny_models, method, caplog):
    """Same rows, same batch: TRL's DPOTrainer / CPOTrainer(simpo) and DistillTrainer log the same loss, and TRL's
    log-likelihoods equal ours (the two tokenisations mark the same response tokens); TRL warns of no argument and
    no deprecated checkpointing name reaches the output."""
    student, tokenizer = tiny_models["student"]
    cfg = BaselineConfig(method=method, steps=1, batch_size=len(PAIRS), lr=1e-9, warmup_ratio=0.0, progress=False)
    with caplog.at_level(logging.WARNING, logger="trl"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trl_log = train_trl_pairs(copy.deepcopy(student), tokenizer, PAIRS, cfg)[0]
    assert not [r for r in caplog.records if "remove_unused_columns" in r.getMessage()]
    # TRL asks transformers for is_gradient_checkpointing each step: a deprecation nobody running it can act on
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
    ours_log = train_workbench_pairs(copy.deepcopy(student), tokenizer, PAIRS, cfg)[0]
    assert trl_log["loss"] == pytest.approx(ours_log["loss"], abs=1e-3)
    score = sequence_logps if method == "dpo" else avg_logp_rewards
    prompts = [p["prompt"] for p in PAIRS]
    chosen = score(student, tokenizer, prompts, [p["chosen"] for p in PAIRS]).mean().item()
    rejected = score(student, tokenizer, prompts, [p["rejected"] for p in PAIRS]).mean().item()
    # both in float32 (TRL's own default, bfloat16 autocast, moved them by ~2e-4 here)
    assert trl_log["logps/chosen"] == pytest.approx(chosen, abs=1e-5)
    assert trl_log["logps/rejected"] == pytest.approx(rejected, abs=1e-5)


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_trl_baselines_train_in_the_precision_knobs_mode_without_checkpointing(method, monkeypatch):
    """TRL's DPOConfig / CPOConfig default to bfloat16 autocast and activation checkpointing; a baseline takes its
    precision from its knob (float32 on a CPU, bf16-mixed when asked) and checkpoints only when
    ``$WORKBENCH_TRAINING_ARGS`` asks, as the workbench backend does."""
    from trl import DPOConfig
    from trl.experimental.cpo import CPOConfig

    from workbench.methods.baselines import _trl_common

    config_class = DPOConfig if method == "dpo" else CPOConfig
    monkeypatch.delenv("WORKBENCH_TRAINING_ARGS", raising=False)

    def args(**knobs):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no deprecated checkpointing name is passed
            return config_class(**_trl_common(BaselineConfig(method=method, **knobs), tempfile.mkdtemp()))

    default = args()
    assert not default.bf16 and not default.fp16 and not default.gradient_checkpointing
    mixed = args(precision="bf16-mixed")
    assert mixed.bf16 and not mixed.gradient_checkpointing
    assert not args(precision="bf16-mixed", lora=True).bf16  # a LoRA student's adapters train unautocast
    monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", '{"gradient_checkpointing": true}')
    checkpointed = args()
    assert checkpointed.gradient_checkpointing
    assert checkpointed.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="minillm"),
        dict(score="gold"),
        dict(kd_targets="x"),
        dict(backend="x"),
        dict(method="dpo", n=1),
        dict(data_fraction=0.0),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        BaselineConfig(**bad)


def test_config_sets_the_per_method_beta():
    assert BaselineConfig(method="dpo").beta == 0.1 and BaselineConfig(method="simpo").beta == 2.0
    assert BaselineConfig(method="simpo", beta=2.5).beta == 2.5


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_runs_end_to_end_on_the_tiny_gym(tiny_gym, tmp_path, method):
    result = run_baseline(BaselineConfig(method=method, **TINY, output_dir=str(tmp_path)))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method
    for key in ("gold_before", "gold_after", "win_rate_vs_initial", "length_after", "seconds", "data"):
        assert key in metrics
    assert result.model is not None and any("loss" in h for h in result.history)


def test_logit_baselines_refuse_a_teacher_with_another_vocabulary(tiny_models):
    from workbench.methods.baselines import _check_shared_vocabulary

    _, tokenizer = tiny_models["student"]
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["brandnewword"])
    with pytest.raises(ValueError, match="share a vocabulary"):
        _check_shared_vocabulary(other, tokenizer, "kd")
