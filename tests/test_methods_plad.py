"""PLaD pipeline: pair batches, the objective against an independent scoring path, pseudo/real pair construction,
data fractions, and tiny end-to-end runs on the gym and on a preference-data fixture (no gold reward)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.losses.plad import calibration_score, margin_calibration_loss, ranking_calibration_loss
from workbench.methods.common import DatasetPrompt, distillation_prompts, held_out_prompts
from workbench.methods.plad import (
    PladConfig,
    PladObjective,
    gold_ranked_pair,
    pseudo_pair_rows,
    response_states,
    run_plad,
)
from workbench.scoring import avg_logp_rewards, sequence_logps
from workbench.trainers import PairCollator

ROWS = [
    {
        "prompt": [{"role": "user", "content": "sort 3 1 2"}],
        "chosen": "1 2 3",
        "rejected": "3 1 2",
        "reference": "1 2 3",
    },
    {
        "prompt": [{"role": "user", "content": "add 4 5"}],
        "chosen": "9",
        "rejected": "sure here is the answer 8",
        "reference": "9",
    },
    {"prompt": [{"role": "user", "content": "max 2 7 4"}], "chosen": "7 7", "rejected": "4", "reference": "7"},
]
TINY = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    train_prompts=24,
    eval_prompts=8,
    eval_samples=2,
    steps=3,
    batch_size=4,
    progress=False,
)
HH = dict(dataset=str(Path(__file__).resolve().parent / "fixtures" / "hh_rlhf.jsonl"), dataset_schema="hh-helpful")


def _texts(rows, key):
    return [r["prompt"] for r in rows], [r[key] for r in rows]


def test_pair_collator_puts_chosen_rows_first_and_adds_reference_and_float_columns(tiny_models):
    _, tokenizer = tiny_models["student"]
    rows = [{**r, "ref_logp": float(i)} for i, r in enumerate(ROWS)]
    batch = PairCollator(tokenizer, with_reference=True, float_columns=("ref_logp",))(rows)
    assert batch["input_ids"].shape[0] == 2 * len(ROWS)
    assert batch["reference_input_ids"].shape[0] == len(ROWS)
    assert batch["ref_logp"].tolist() == [0.0, 1.0, 2.0]
    decoded = tokenizer.decode(batch["input_ids"][0][batch["response_mask"][0]], skip_special_tokens=True)
    assert decoded.split() == ROWS[0]["chosen"].split()
    decoded = tokenizer.decode(batch["input_ids"][3][batch["response_mask"][3]], skip_special_tokens=True)
    assert decoded.split() == ROWS[0]["rejected"].split()


def test_response_states_left_aligns_response_tokens():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    states, states_mask = response_states(hidden, mask)
    assert states.shape == (2, 4, 3) and states_mask.sum(-1).tolist() == [2, 4]
    assert torch.equal(states[0, :2], hidden[0, 2:4]) and torch.equal(states[1], hidden[1, 1:])
    assert torch.equal(states[0, 2:], torch.zeros(2, 3))


@pytest.mark.parametrize("length_normalize", [True, False])
def test_ranking_objective_equals_eq4_on_independently_scored_log_likelihoods(tiny_models, length_normalize):
    model, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer)(ROWS)
    objective = PladObjective("plad_ranking", beta=1.0, length_normalize=length_normalize)
    loss, metrics = objective(model, batch)
    score = avg_logp_rewards if length_normalize else sequence_logps
    chosen = score(model, tokenizer, *_texts(ROWS, "chosen"))
    rejected = score(model, tokenizer, *_texts(ROWS, "rejected"))
    # Eq. 4 by definition: mean of max(0, β − log P(ŷ+) + log P(ŷ−))
    expected = torch.clamp(1.0 - chosen + rejected, min=0).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss.item() == pytest.approx(ranking_calibration_loss(chosen, rejected, 1.0).item(), abs=1e-5)
    assert metrics["logp_gap"].item() == pytest.approx((chosen - rejected).mean().item(), abs=1e-5)


@pytest.mark.parametrize("loss_name", ["plad_ranking", "plad_margin"])
def test_objective_through_the_chunked_head_equals_the_full_logits(tiny_models, loss_name):
    """logits_chunk (full-size runs: no (2B, L, V) logits kept for backward) changes memory, not the loss or its
    gradient — also for the margin loss, whose score reads the student's last-layer states of the same pass."""
    model, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer, with_reference=loss_name == "plad_margin")(ROWS)
    results = []
    for chunk in (0, 3):
        model.zero_grad()
        loss, _ = PladObjective(loss_name, beta=1.0, sft_weight=0.5, logits_chunk=chunk)(model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (full, full_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    assert len(chunked_grads) == len(full_grads) > 0
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_ranking_objective_hinge_is_zero_with_zero_gradient_when_the_margin_is_met(tiny_models):
    model, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer)(ROWS)
    gap = avg_logp_rewards(model, tokenizer, *_texts(ROWS, "chosen")) - avg_logp_rewards(
        model, tokenizer, *_texts(ROWS, "rejected")
    )
    # swap each pair so that the chosen side is the more likely one, then ask for a margin below every gap
    swapped = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if g < 0 else r for r, g in zip(ROWS, gap)]
    batch = PairCollator(tokenizer)(swapped)
    loss, metrics = PladObjective("plad_ranking", beta=float(gap.abs().min()) * 0.5)(model, batch)
    model.zero_grad()
    loss.backward()
    assert loss.item() == 0.0 and metrics["hinge_active"].item() == 0.0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_margin_objective_uses_the_student_states_score_and_is_finite(tiny_models):
    model, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer, with_reference=True)(ROWS)
    loss, metrics = PladObjective("plad_margin", beta=1.0)(model, batch)
    # rebuild Eq. 5 from its parts: student hidden states of ŷ± and y, App. A.7 scores
    with torch.no_grad():
        states = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states[-1]
        ref = model(
            input_ids=batch["reference_input_ids"],
            attention_mask=batch["reference_attention_mask"],
            output_hidden_states=True,
        ).hidden_states[-1]
    cand, cand_mask = response_states(states, batch["response_mask"])
    ref, ref_mask = response_states(ref, batch["reference_response_mask"])
    scores = calibration_score(cand, torch.cat([ref, ref]), cand_mask, torch.cat([ref_mask, ref_mask]))
    chosen = avg_logp_rewards(model, tokenizer, *_texts(ROWS, "chosen"))
    rejected = avg_logp_rewards(model, tokenizer, *_texts(ROWS, "rejected"))
    expected = margin_calibration_loss(chosen, rejected, *scores.chunk(2), beta=1.0)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert metrics["score_gap"].item() == pytest.approx((scores[:3] - scores[3:]).mean().item(), abs=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


def test_sft_weight_adds_the_per_token_nll_of_the_teacher_sample(tiny_models):
    model, tokenizer = tiny_models["student"]
    batch = PairCollator(tokenizer)(ROWS)
    plain, _ = PladObjective("plad_ranking")(model, batch)
    anchored, metrics = PladObjective("plad_ranking", sft_weight=0.5)(model, batch)
    nll = -avg_logp_rewards(model, tokenizer, *_texts(ROWS, "chosen")).mean()
    assert metrics["sft_loss"].item() == pytest.approx(nll.item(), abs=1e-5)
    assert anchored.item() == pytest.approx(plain.item() + 0.5 * nll.item(), abs=1e-5)


def test_gold_ranked_pair_orders_by_gold_and_keeps_the_pseudo_order_on_ties():
    prompt = [{"role": "user", "content": "sort 3 1 2"}]
    assert gold_ranked_pair(prompt, "1 2 3", "3 1 2")["chosen"] == "1 2 3"
    assert gold_ranked_pair(prompt, "3 1 2", "1 2 3")["chosen"] == "1 2 3"  # the student's answer was better
    tie = gold_ranked_pair(prompt, "9 9 9", "8 8 8")  # both gold 0
    assert (tie["chosen"], tie["rejected"]) == ("9 9 9", "8 8 8")


def test_pseudo_pairs_put_the_teacher_first_and_real_ratio_one_follows_gold(tiny_models):
    from workbench.methods.common import gold_of

    (teacher, teacher_tok), (student, student_tok) = tiny_models["teacher-dpo"], tiny_models["student"]
    cfg = PladConfig(**TINY)
    prompts = distillation_prompts(cfg)
    pseudo, stats = pseudo_pair_rows(teacher, teacher_tok, student, student_tok, prompts, cfg)
    assert stats["n_pairs"] == len(pseudo) and stats["n_real"] == 0
    assert stats["n_pairs"] + stats["skipped_identical"] + stats["skipped_empty"] == len(prompts)
    assert all(r["source"] == "pseudo" for r in pseudo)
    assert all(r["reference"] == p.answer_text for r in pseudo for p in prompts if p.text == r["prompt"][-1]["content"])
    cfg_real = PladConfig(**{**TINY, "real_ratio": 1.0})
    real, real_stats = pseudo_pair_rows(teacher, teacher_tok, student, student_tok, prompts, cfg_real)
    assert real_stats["n_real"] == real_stats["n_pairs"] == stats["n_pairs"]
    assert all(gold_of(r["prompt"], r["chosen"]) >= gold_of(r["prompt"], r["rejected"]) for r in real)
    flipped = sum(p["chosen"] != r["chosen"] for p, r in zip(pseudo, real))
    assert flipped == real_stats["n_real_flipped"]


def test_data_fraction_takes_a_nested_seeded_prefix():
    full = distillation_prompts(PladConfig(train_prompts=40, seed=3))
    half = distillation_prompts(PladConfig(train_prompts=40, seed=3, data_fraction=0.5))
    assert len(half) == 20 and half == full[:20]
    assert distillation_prompts(PladConfig(train_prompts=40, seed=4)) != full


@pytest.mark.parametrize(
    "bad",
    [
        dict(loss="dpo"),
        dict(data_fraction=0.0),
        dict(real_ratio=1.5),
        dict(beta=-1.0),
        dict(length_edges=(5, 1)),
        dict(quantization="3bit"),
        dict(**HH, real_ratio=0.5),
        dict(judge="gym-tiny-teacher-dpo"),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        PladConfig(**bad)


def test_dataset_prompts_carry_the_chosen_response_as_reference_and_hold_out_disjoint_rows():
    from workbench.data import load_preference_data

    rows = load_preference_data(HH["dataset"], schema="hh-helpful")
    chosen = {json.dumps(r["prompt"]): r["chosen"][0]["content"] for r in rows}
    cfg = PladConfig(**HH, train_prompts=10, eval_prompts=2)
    train, held_out = distillation_prompts(cfg), held_out_prompts(cfg)
    assert (len(train), len(held_out)) == (4, 2) and all(isinstance(p, DatasetPrompt) for p in train + held_out)
    assert all(chosen[json.dumps(p.text)] == p.answer_text for p in train + held_out)
    assert not {json.dumps(p.text) for p in train} & {json.dumps(p.text) for p in held_out}
    assert distillation_prompts(PladConfig(**HH, train_prompts=10, eval_prompts=2, data_fraction=0.5)) == train[:2]
    assert PladConfig(quantization="").quantization is None


def test_config_defaults_are_the_papers():
    cfg = PladConfig()
    assert (cfg.beta, cfg.temperature, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (1.0, 0.7, 8, 32, 0.1)
    assert cfg.loss == "plad_ranking" and cfg.lr_scheduler == "linear" and cfg.sft_weight == 0.0
    assert cfg.lora_config() is None and PladConfig(lora=True).lora_config() == dict(
        r=8, lora_alpha=32, lora_dropout=0.1
    )


@pytest.mark.parametrize("extra", [dict(), dict(loss="plad_margin", lora=True, real_ratio=0.5)])
def test_run_plad_end_to_end_on_the_tiny_gym(tiny_gym, tmp_path, extra):
    result = run_plad(PladConfig(**TINY, **extra, output_dir=str(tmp_path)))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "method",
        "gold_before",
        "gold_after",
        "win_rate_vs_initial",
        "length_after",
        "seconds",
        "pairs",
        "length_buckets",
        "per_prompt_after",
    ):
        assert key in metrics
    assert metrics["method"] == ("plad" if not extra else "plad-margin")
    assert sum(b["prompts"] for b in metrics["length_buckets"]) == TINY["eval_prompts"]
    assert 0.0 <= metrics["win_rate_vs_initial"] <= 1.0 and np.isfinite(metrics["gold_after"]["mean"])
    assert any("loss" in h for h in result.history)
    if extra:
        assert hasattr(result.model, "peft_config")


@pytest.mark.parametrize("judge", ["", "gym-tiny-teacher-dpo"])
def test_run_plad_on_a_dataset_file_reports_no_gold_and_a_judge_when_configured(tiny_gym, tmp_path, judge):
    """Non-gym data: D is the file's prompts, pseudo-pairs as on the gym with the chosen response as Eq. 5's y;
    no gold number anywhere, the reason stated, and a configured judge's (labelled) win rate."""
    cfg = PladConfig(
        **{**TINY, **HH, "train_prompts": 4, "eval_prompts": 2, "loss": "plad_margin", "judge": judge},
        output_dir=str(tmp_path),
    )
    result = run_plad(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["gold_before"] is None and metrics["gold_after"] is None and metrics["win_rate_vs_initial"] is None
    assert "length_buckets" not in metrics and metrics["gold_evaluation"].startswith("skipped")
    pairs = metrics["pairs"]
    assert pairs["n_input"] == 4 and pairs["n_real"] == 0 and pairs["gold_statistics"].startswith("skipped")
    assert "teacher_student_win_rate" not in pairs and metrics["training"]["train"]["logged_steps"] >= 1
    if judge:
        assert metrics["judge"]["measurement"] == "judge" and 0 <= metrics["judge"]["win_rate"] <= 1
        assert metrics["judge"]["pairs"] == 2 * TINY["eval_samples"]
    else:
        assert metrics["judge"] is None and "no judge configured" in metrics["gold_evaluation"]
    assert any("loss" in h for h in result.history)


def test_the_staged_path_trains_on_the_pairs_it_is_given_and_matches_the_one_call_path(tiny_gym, tmp_path):
    """Notebook 07's path: the student and the pseudo pairs computed beforehand give what run_plad(cfg) gives, and
    the pairs are trained on as given (the same pairs swapped train differently)."""
    from workbench.methods.plad import distillation_prompts, pseudo_pair_rows, run_plad
    from workbench.models import load

    one_call = run_plad(PladConfig(**TINY, output_dir=str(tmp_path / "one-call"))).metrics
    cfg = PladConfig(**TINY, output_dir=str(tmp_path / "staged"))
    teacher, teacher_tok = load(cfg.teacher)
    student, student_tok = cfg.load_student()
    pairs = pseudo_pair_rows(teacher, teacher_tok, student, student_tok, distillation_prompts(cfg), cfg)
    staged = run_plad(cfg, student=(student, student_tok), pairs=pairs).metrics
    assert staged["gold_after"] == one_call["gold_after"] and staged["training"] == one_call["training"]
    assert staged["pairs"] == one_call["pairs"]
    swapped = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in pairs[0]]
    other = run_plad(PladConfig(**TINY, output_dir=str(tmp_path / "swapped")), pairs=(swapped, pairs[1])).metrics
    assert other["training"] != one_call["training"]


@pytest.mark.parametrize(
    "pairs, match",
    [
        ([], "pseudo_pair_rows"),
        (([], {}), "no rows"),
        (([{"prompt": "p", "chosen": "a", "rejected": "b"}], {}), "lacks \\['reference'\\]"),
        (([{"prompt": "p", "chosen": "a", "rejected": "a", "reference": "a"}], {}), "no preference"),
    ],
)
def test_given_pseudo_pairs_that_cannot_be_trained_on_are_refused(pairs, match):
    from workbench.methods.plad import check_given_pairs

    with pytest.raises(ValueError, match=match):
        check_given_pairs(PladConfig(**TINY), pairs)
