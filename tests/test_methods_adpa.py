"""DCKD / ADPA / ADPA+ pipelines on the tiny gym and on a preference-data fixture (no gold reward), their objectives
against direct full-vocabulary computations, and the §4.4 sample-complexity estimators on hand-made distributions
with known answers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from workbench import sample_complexity as S
from workbench.backends import vllm as vllm_backend
from workbench.cache import StageCache
from workbench.methods import adpa as M
from workbench.methods import adpa_sweeps as sweeps
from workbench.topk_cache import teacher_topk

TINY = dict(
    teacher_dpo="gym-tiny-teacher-dpo",
    teacher_ref="gym-tiny-teacher-ref",
    student="gym-tiny-student",
    steps=2,
    train_prompts=12,
    eval_prompts=6,
    eval_samples=2,
    batch_size=4,
    k=8,
    progress=False,
)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DPO_MIX = dict(dataset=str(FIXTURES / "dpo_mix_7k.jsonl"), dataset_schema="dpo-mix-7k")  # 6 pairs, native schema


# ---------------------------------------------------------------------------------------------------------------
# data and config
# ---------------------------------------------------------------------------------------------------------------


def test_preference_pairs_are_gold_ranked_and_reproducible():
    from workbench.gym.world import gold_reward
    from workbench.methods.common import gym_prompts

    prompts = gym_prompts("train", 40, 3)
    pairs = M.gym_preference_pairs(prompts, seed=3)
    assert len(pairs) == 40
    for row, prompt in zip(pairs, prompts):
        assert row["chosen_gold"] > row["rejected_gold"]
        assert row["chosen_gold"] == gold_reward(prompt, row["chosen"])
    assert M.gym_preference_pairs(prompts, seed=3)["chosen"] == pairs["chosen"]
    assert M.gym_preference_pairs(prompts, seed=4)["chosen"] != pairs["chosen"]


def test_reward_accuracy_matches_a_direct_count(tiny_models):
    from workbench.scoring import avg_logp_rewards

    model, tok = tiny_models["student"]
    pairs = M.gym_preference_pairs(M.gym_prompts("test", 10, 1), seed=1)
    chosen = avg_logp_rewards(model, tok, pairs["prompt"], pairs["chosen"])
    rejected = avg_logp_rewards(model, tok, pairs["prompt"], pairs["rejected"])
    assert M.reward_accuracy(model, tok, pairs) == pytest.approx(float(np.mean((chosen > rejected).numpy())))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(method="ppo"), "method"),
        (dict(state_source="oracle"), "App. E"),
        (dict(missing_rule="zero"), "missing_rule"),
        (dict(beta=0.0), "beta"),
        (dict(steps=0), "steps"),
        (dict(quantization="3bit"), "quantization"),
        (dict(judge="gym-tiny-teacher-dpo"), "preference datasets"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        M.AdpaConfig(**bad)


def test_empty_quantization_string_means_none():
    assert M.AdpaConfig(quantization="").quantization is None


def test_dataset_pairs_are_text_pairs_with_a_fixed_disjoint_held_out_carve():
    """A local file: its (x, y_w, y_l) with responses as text; held-out rows fixed across seeds, never trained on."""
    from workbench.data import load_preference_data

    rows = load_preference_data(DPO_MIX["dataset"], schema="dpo-mix-7k")
    train, held_out = M.preference_pairs(M.AdpaConfig(**DPO_MIX, train_prompts=2, eval_prompts=10, seed=0))
    assert (len(train), len(held_out)) == (2, 3)  # held out: at most half of the 6 rows
    assert set(train.column_names) == set(held_out.column_names) == {"prompt", "chosen", "rejected"}
    assert isinstance(train["chosen"][0], str) and train["prompt"][0][-1]["role"] == "user"
    train_keys, held_out_keys = ({json.dumps(p) for p in ds["prompt"]} for ds in (train, held_out))
    assert not train_keys & held_out_keys and train_keys | held_out_keys <= {json.dumps(p) for p in rows["prompt"]}
    texts = {r["chosen"][0]["content"]: r["rejected"][0]["content"] for r in rows}
    assert all(texts[c] == r for c, r in zip(train["chosen"], train["rejected"]))  # pairs kept, not re-paired
    _, held_out_seed_1 = M.preference_pairs(M.AdpaConfig(**DPO_MIX, train_prompts=2, eval_prompts=10, seed=1))
    assert held_out_seed_1["prompt"] == held_out["prompt"]


# ---------------------------------------------------------------------------------------------------------------
# objectives through the collator equal direct computations (alignment of cache, batch and loss)
# ---------------------------------------------------------------------------------------------------------------


def _rows(pairs, **extra):
    return [
        {
            "index": i,
            "prompt": pairs["prompt"][i],
            "chosen": pairs["chosen"][i],
            "rejected": pairs["rejected"][i],
            **{k: v[i] for k, v in extra.items()},
        }
        for i in range(len(pairs))
    ]


def test_dckd_objective_of_the_teacher_against_itself_is_its_sft_loss(tiny_models, tmp_path):
    model, tok = tiny_models["teacher-dpo"]
    pairs = M.gym_preference_pairs(M.gym_prompts("train", 6, 0), seed=0)
    k = len(tok)
    caches = {
        f"{f}_dpo": teacher_topk(model, tok, tok, pairs["prompt"], pairs[f], k=k, cache=StageCache(tmp_path))
        for f in ("chosen", "rejected")
    }
    batch = M.TopkPairCollator(tok, ("chosen", "rejected"), caches)(_rows(pairs))
    with torch.no_grad():
        loss, metrics = M.DckdObjective(alpha=0.7)(model, batch)
    assert float(loss) == pytest.approx(float(metrics["sft_loss"]), abs=1e-4)


def test_adpa_objective_equals_the_full_vocabulary_definition(tiny_models, tmp_path):
    """k = V: L = mean_b [SFT_b − γ Σ_t Σ_a π_θ(a|ŝ_t) β (log π_dpo − log π_ref)(a|ŝ_t)] by direct forwards."""
    from workbench.encoding import collate_examples

    student, tok = tiny_models["student"]
    dpo, ref = tiny_models["teacher-dpo"][0], tiny_models["teacher-ref"][0]
    pairs = M.gym_preference_pairs(M.gym_prompts("train", 5, 0), seed=0)
    hats = ["1 2", "sure 3", "", "4 4 4", "hate"]
    k, gamma, beta = len(tok), 1.3, 0.1
    caches = {
        f"hat_{name}": teacher_topk(model, tok, tok, pairs["prompt"], hats, k=k, cache=StageCache(tmp_path))
        for name, model in (("dpo", dpo), ("ref", ref))
    }
    batch = M.TopkPairCollator(tok, ("chosen", "hat"), caches)(_rows(pairs, hat=hats))
    with torch.no_grad():
        loss, _ = M.OnPolicyObjective("adpa", gamma, beta)(student, batch)
        direct = collate_examples(tok, pairs["prompt"], hats)
        mask = direct["response_mask"][:, 1:]

        def logps(model, enc):
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
            return torch.log_softmax(out.double(), -1)

        advantage = beta * (logps(dpo, direct) - logps(ref, direct))  # (B, T, V)
        expected = (logps(student, direct).exp() * advantage).sum(-1)  # (B, T)
        chosen = collate_examples(tok, pairs["prompt"], pairs["chosen"])
        nll = -torch.gather(logps(student, chosen), -1, chosen["input_ids"][:, 1:, None]).squeeze(-1)
        cmask = chosen["response_mask"][:, 1:]
        sft = (nll * cmask).sum(-1) / cmask.sum(-1)
        reference = (sft - gamma * (expected * mask).sum(-1)).mean()
    assert float(loss) == pytest.approx(float(reference), abs=1e-4)


@pytest.mark.parametrize("loss", ["dckd", *sorted(M.ON_POLICY_LOSSES)])
def test_objectives_through_the_chunked_head_equal_the_full_logits(loss, tiny_models, tmp_path):
    """logits_chunk: the student's log-probs at the labels and teacher top-k ids through the chunked head (no
    (B, L, V) logits kept for backward) give every ADPA-family objective's loss and gradient."""
    student, tok = tiny_models["student"]
    pairs = M.gym_preference_pairs(M.gym_prompts("train", 5, 0), seed=0)
    hats = ["1 2", "sure 3", "", "4 4 4", "hate"]
    teachers = {"dpo": tiny_models["teacher-dpo"][0], "ref": tiny_models["teacher-ref"][0]}
    fields = ("chosen", "rejected") if loss == "dckd" else ("chosen", "hat")
    caches = {
        f"{field}_{name}": teacher_topk(
            model, tok, tok, pairs["prompt"], hats if field == "hat" else pairs[field], k=5, cache=StageCache(tmp_path)
        )
        for field in fields
        if field != "chosen" or loss == "dckd"
        for name, model in teachers.items()
        if name == "dpo" or loss != "dckd"
    }
    batch = M.TopkPairCollator(tok, fields, caches)(_rows(pairs, hat=hats))
    results = []
    for chunk in (0, 3):
        objective = (
            M.DckdObjective(alpha=0.7, logits_chunk=chunk)
            if loss == "dckd"
            else M.OnPolicyObjective(loss, 1.3, 0.1, logits_chunk=chunk)
        )
        student.zero_grad()
        value, metrics = objective(student, batch)
        value.backward()
        results.append((value.detach(), metrics, [p.grad.clone() for p in student.parameters() if p.grad is not None]))
    (full, full_metrics, full_grads), (chunked, chunked_metrics, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_metrics["sft_loss"], full_metrics["sft_loss"], rtol=1e-5, atol=1e-6)
    assert len(chunked_grads) == len(full_grads) > 0
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    student.zero_grad()


# ---------------------------------------------------------------------------------------------------------------
# pipelines end to end (tiny steps)
# ---------------------------------------------------------------------------------------------------------------

REQUIRED = {
    "method",
    "gold_before",
    "gold_after",
    "win_rate_vs_initial",
    "per_prompt_after",
    "length_after",
    "reward_accuracy",
    "seconds",
}


@pytest.mark.parametrize("method", sorted(M.METHOD_STAGES))
def test_every_method_runs_end_to_end(method, tiny_gym, tmp_path):
    result = M.run_adpa(M.AdpaConfig(method=method, output_dir=str(tmp_path), **TINY))
    metrics = result.metrics
    assert REQUIRED <= set(metrics) and metrics["method"] == method
    assert len(metrics["per_prompt_after"]) == TINY["eval_prompts"]
    assert 0 <= metrics["reward_accuracy"] <= 1 and 0 <= metrics["win_rate_vs_initial"] <= 1
    assert [s["stage"] for s in metrics["stages"]] == list(M.METHOD_STAGES[method])
    assert all(s.get("state_source", "student") == "student" for s in metrics["stages"])
    assert (tmp_path / "metrics.json").exists()
    assert any("loss" in h or "train_loss" in h for h in result.history)


def test_adpa_plus_trains_its_dckd_stage_at_dckd_lr_and_its_adpa_stage_at_lr(tiny_gym, tmp_path, monkeypatch):
    from workbench.methods import GYM_LR

    rates = []
    train = M.train_distill

    def spy(*args, lr, **kwargs):
        rates.append(lr)
        return train(*args, lr=lr, **kwargs)

    monkeypatch.setattr(M, "train_distill", spy)
    M.run_adpa(M.AdpaConfig(method="adpa+", lr=2e-4, dckd_lr=5e-3, output_dir=str(tmp_path / "plus"), **TINY))
    assert rates == [5e-3, 2e-4]  # stage 1 DCKD, stage 2 ADPA
    rates.clear()
    M.run_adpa(M.AdpaConfig(method="dckd", lr=2e-4, dckd_lr=5e-3, output_dir=str(tmp_path / "dckd"), **TINY))
    assert rates == [2e-4]  # DCKD on its own trains at lr; dckd_lr is ADPA+'s first stage only
    # unset, ADPA+'s DCKD stage follows its lr: the gym rate (validation-chosen), or a rate the user gives
    assert M.AdpaConfig(method="adpa+").dckd_lr == M.AdpaConfig(method="adpa+").lr == GYM_LR["adpa+"]
    assert M.AdpaConfig(method="adpa+", lr=7e-7).dckd_lr == 7e-7


@pytest.mark.parametrize("judge", ["", "gym-tiny-teacher-dpo"])
def test_adpa_plus_on_a_dataset_file_reports_no_gold_and_a_judge_when_configured(judge, tiny_gym, tmp_path):
    """Non-gym data: DCKD then ADPA train on the file's pairs; gold fields are None with the reason stated, reward
    accuracy comes from held-out dataset labels, and a configured judge adds its (labelled) win rate."""
    cfg = M.AdpaConfig(
        method="adpa+",
        judge=judge,
        output_dir=str(tmp_path),
        **DPO_MIX,
        **{**TINY, "train_prompts": 4, "eval_prompts": 2},
    )
    result = M.run_adpa(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["gold_before"] is None and metrics["gold_after"] is None and metrics["win_rate_vs_initial"] is None
    assert metrics["gold_evaluation"].startswith("skipped") and "no gold reward" in metrics["gold_evaluation"]
    assert metrics["train_pairs"] == {"count": 4, "held_out": 2}
    assert 0 <= metrics["reward_accuracy"] <= 1 and 0 <= metrics["reward_accuracy_before"] <= 1
    assert [s["stage"] for s in metrics["stages"]] == ["dckd", "adpa"]
    assert all("state_gold" not in s for s in metrics["stages"])
    assert set(metrics["training"]) == {"dckd", "adpa"} and all("loss_last" in v for v in metrics["training"].values())
    if judge:
        assert metrics["judge"]["measurement"] == "judge" and metrics["judge"]["judge"] == judge
        assert 0 <= metrics["judge"]["win_rate"] <= 1 and metrics["judge"]["pairs"] == 2 * TINY["eval_samples"]
        assert "judged by" in metrics["gold_evaluation"]
    else:
        assert metrics["judge"] is None and "no judge configured" in metrics["gold_evaluation"]
    assert any("loss" in h for h in result.history)


@pytest.mark.parametrize("source", sorted(set(M.STATE_SOURCES) - {"student"}))  # "student": every ADPA run above
def test_state_sources(source, tiny_gym, tmp_path):
    metrics = M.run_adpa(M.AdpaConfig(method="adpa", state_source=source, output_dir=str(tmp_path), **TINY)).metrics
    stage = metrics["stages"][0]
    assert stage["state_source"] == source
    pairs = M.gym_preference_pairs(M.gym_prompts("train", TINY["train_prompts"], 101), seed=0)
    if source == "preferred":
        assert stage["state_gold"] == pytest.approx(float(np.mean(pairs["chosen_gold"])))
    if source == "dispreferred":
        assert stage["state_gold"] == pytest.approx(float(np.mean(pairs["rejected_gold"])))


def test_method_table_and_markdown(tiny_gym, tmp_path):
    overrides = {k: v for k, v in TINY.items() if k != "progress"}
    table = sweeps.method_table(["sft", "adpa"], [0], output_dir=str(tmp_path), **overrides)
    assert [row["method"] for row in table["rows"]] == ["sft", "adpa"]
    assert table["win_rate_vs_adpa"]["adpa"]["mean"] == 0.5
    assert (tmp_path / "table.json").exists() and (tmp_path / "adpa" / "seed=0" / "metrics.json").exists()
    text = sweeps.format_table(table)
    assert text.count("\n") == 4 and "| adpa | " in text and "initial student" in text


def test_summarize_runs_gives_mean_and_ci():
    runs = [
        {
            "method": "adpa",
            "gold_after": {"mean": g},
            "win_rate_vs_initial": w,
            "reward_accuracy": 0.5,
            "length_after": 3.0,
            "seconds": 1.0,
        }
        for g, w in [(0.5, 0.6), (0.7, 0.8), (0.6, 0.7)]
    ]
    table = sweeps.summarize_runs(runs)
    assert table["gold_after"]["mean"] == pytest.approx(0.6) and table["seeds"] == 3
    assert table["gold_after"]["ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# §4.4 estimators on hand-made distributions
# ---------------------------------------------------------------------------------------------------------------


def test_token_level_success_closed_forms():
    budgets = [1, 2, 4, 8, 16]
    uniform = S.token_level_success(budgets, np.array([4, 8]), strategy="uniform")
    np.testing.assert_allclose(uniform, [[0.25, 0.5, 1, 1, 1], [0.125, 0.25, 0.5, 1, 1]])
    policy = S.token_level_success(budgets, np.array([4]), np.array([0.5]), strategy="policy")
    np.testing.assert_allclose(policy[0], [1 - 0.5**b for b in budgets])
    assert np.all(S.distribution_level_success(budgets, 3) == 1)
    with pytest.raises(ValueError, match="best_policy_probs"):
        S.token_level_success(budgets, np.array([4]), strategy="policy")


def _exact_two_arm_success(n):
    """Two candidates, A = log(.6/.5), log(.4/.5); each rollout's continuation weight is 1.8 or 0.2 w.p. 1/2
    (so E_ref[w] = 1). Exact P(argmax of Q̂ from n rollouts each = candidate 0), ties counting one half."""
    a0, a1 = math.log(0.6 / 0.5), math.log(0.4 / 0.5)
    total = 0.0
    for h0 in range(n + 1):
        for h1 in range(n + 1):
            q0 = a0 + math.log((1.8 * h0 + 0.2 * (n - h0)) / n)
            q1 = a1 + math.log((1.8 * h1 + 0.2 * (n - h1)) / n)
            p = binom.pmf(h0, n, 0.5) * binom.pmf(h1, n, 0.5)
            total += p * (1.0 if q0 > q1 + 1e-12 else 0.5 if abs(q0 - q1) <= 1e-12 else 0.0)
    return total


def test_sequence_level_success_matches_the_exact_answer_on_a_two_arm_tree():
    action = np.array([[math.log(0.6 / 0.5), math.log(0.4 / 0.5)]])  # (1, 2)
    pool = np.array([[[math.log(1.8), math.log(0.2)] * 8] * 2])  # (1, 2, 16): each value w.p. 1/2
    budgets = [1, 2, 4, 8, 16, 64]
    success = S.sequence_level_success(budgets, action, pool, np.array([0]), trials=4000, seed=1)[0]
    assert success[0] == pytest.approx(0.5, abs=0.03)  # B < m: one random candidate, no comparison possible
    for budget, measured in zip(budgets[1:], success[1:]):
        assert measured == pytest.approx(_exact_two_arm_success(budget // 2), abs=0.03)
    assert success[-1] > success[1]  # more rollouts, more often right


def test_sequence_level_with_deterministic_continuations_is_enumeration():
    action = np.array([[0.1, 0.5, -0.2, 0.0]])
    pool = np.zeros((1, 4, 3))  # every rollout's continuation has π_dpo = π_ref
    success = S.sequence_level_success([1, 2, 4, 8], action, pool, np.array([1]), trials=4000, seed=0)[0]
    np.testing.assert_allclose(success, [0.25, 0.5, 1, 1], atol=0.03)


def test_soft_q_estimate_is_consistent():
    """With the exact rollout distribution (every continuation once, weighted by π_ref) Q̂ = A exactly."""
    ref = np.array([0.5, 0.3, 0.2])
    dpo = np.array([0.2, 0.3, 0.5])
    pool = np.log(np.repeat(dpo / ref, (ref * 10).astype(int)))  # 10 draws in exact proportions
    estimate = S.soft_q_estimate(np.array([0.3, -0.1]), np.stack([pool, pool]))
    np.testing.assert_allclose(estimate, [0.3, -0.1], atol=1e-12)


def test_budget_to_reach_and_theory():
    assert S.budget_to_reach([1, 2, 4], np.array([0.5, 0.96, 1.0])) == 2
    assert S.budget_to_reach([1, 2, 4], np.array([[0.5, 0.9, 0.94]])) is None
    assert S.theoretical_costs(8, 3) == {"distribution": 1.0, "token": 8.0, "sequence": 512.0}
    assert S.budget_grid(8, 4) == [1, 2, 4, 8, 16, 32]


def test_sample_complexity_experiment_on_the_tiny_gym(tiny_gym, tiny_models):
    cfg = S.SampleComplexityConfig(
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        n_states=3,
        candidates=4,
        rollouts=8,
        trials=20,
    )
    data = S.collect_states(cfg)
    assert data["action_logratios"].shape == (3, 4) and data["continuation_logratios"].shape == (3, 4, 8)
    assert np.all(data["best"] == data["action_logratios"].argmax(-1))
    assert np.all(np.isfinite(data["continuation_logratios"]))
    result = S.run_sample_complexity(cfg)
    assert result["budget_to_target"]["distribution-level advantage"] == 1
    assert result["budget_to_target"]["token-level reward (uniform enumeration)"] == 4
    assert set(result["success"]) == set(result["budget_to_target"])


def test_adpa_plus_with_teachers_served_by_vllm_trains_like_the_hf_teachers(tiny_gym, stand_in_vllm, tmp_path):
    """``scoring_backend='vllm'``: both teachers' top-k caches come from vLLM engines (one per teacher, released
    after its cache); with engine log-probs equal to the HF models' the loss curve equals the HF run's."""
    from workbench.models import resolve

    hf = M.run_adpa(M.AdpaConfig(method="adpa+", output_dir=str(tmp_path / "hf"), **TINY))
    served = M.run_adpa(M.AdpaConfig(method="adpa+", output_dir=str(tmp_path / "vllm"), scoring_backend="vllm", **TINY))
    models = {e.kwargs["model"] for e in stand_in_vllm.engines}
    assert models == {resolve(TINY["teacher_dpo"]), resolve(TINY["teacher_ref"])} and vllm_backend._VLLM_ENGINES == {}
    curve = lambda result: [(h["stage"], h["loss"]) for h in result.history if "loss" in h]
    assert [s for s, _ in curve(served)] == [s for s, _ in curve(hf)] and len(curve(hf)) >= 2
    torch.testing.assert_close(
        torch.tensor([v for _, v in curve(served)]), torch.tensor([v for _, v in curve(hf)]), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match="scoring_backend='tgi'"):
        M.AdpaConfig(scoring_backend="tgi")


def test_the_staged_path_trains_on_the_states_it_is_given_and_matches_the_one_call_path(tiny_gym, tmp_path):
    """Notebook 06's path: the student, the pairs and the first stage's ŷ computed beforehand give what run_adpa(cfg)
    gives; other ŷ train differently (they are used as given)."""
    cfg = M.AdpaConfig(method="adpa", output_dir=str(tmp_path / "one-call"), **TINY)
    one_call = M.run_adpa(cfg).metrics
    staged_cfg = M.AdpaConfig(method="adpa", output_dir=str(tmp_path / "staged"), **TINY)
    student, tokenizer = staged_cfg.load_student()
    pairs = M.preference_pairs(staged_cfg)
    states = M.sample_states(staged_cfg, student, tokenizer, pairs[0])
    staged = M.run_adpa(staged_cfg, student=(student, tokenizer), pairs=pairs, states=states).metrics
    assert staged["gold_after"] == one_call["gold_after"] and staged["training"] == one_call["training"]
    other_cfg = M.AdpaConfig(method="adpa", output_dir=str(tmp_path / "other"), **TINY)
    other = M.run_adpa(other_cfg, pairs=pairs, states=list(pairs[0]["rejected"])).metrics
    assert other["training"] != one_call["training"]


def test_given_stages_that_cannot_be_the_runs_are_refused_before_anything_runs(tmp_path):
    import datasets

    cfg = M.AdpaConfig(method="adpa", output_dir=str(tmp_path), **TINY)
    pairs = datasets.Dataset.from_dict({"prompt": ["sort 2 1"] * 3, "chosen": ["1 2"] * 3, "rejected": ["2 1"] * 3})
    with pytest.raises(ValueError, match="3 ŷ for 2 training pairs|one string per pair"):
        M.check_given_stages(cfg, (pairs.select(range(2)), pairs), ["a", "b", "c"])
    with pytest.raises(ValueError, match="lack \\['rejected'\\]"):
        M.check_given_stages(cfg, (pairs.remove_columns("rejected"), pairs), None)
    with pytest.raises(ValueError, match="ADPA\\+ samples its ŷ from the DCKD student"):
        M.check_given_stages(M.AdpaConfig(method="adpa+", output_dir=str(tmp_path), **TINY), None, ["a"])
    M.check_given_stages(cfg, (pairs, pairs), ["a", "b", "c"])
