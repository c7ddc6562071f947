"""Counting the work a run does with each model (workbench.metering): forwards of loaded models, the cost a stage-cache
entry keeps and replays, and the cost columns of the comparison."""

import json

import pytest
import torch
from test_compare import TINY

from workbench.cache import StageCache
from workbench.compare import EvalConfig, compare, load_records, report
from workbench.metering import metered, recording, replay, unmetered
from workbench.models import load
from workbench.sampling import sample_responses


@pytest.fixture(scope="module")
def student():
    return load("gym-tiny-student", device="cpu")


def test_a_forward_counts_its_positions_split_by_gradient(student):
    model, tokenizer = student
    ids = torch.randint(5, 20, (3, 7))
    with metered() as meter:
        with torch.no_grad():
            model(input_ids=ids)
        model(input_ids=ids[:2]).logits.sum().backward()
        with unmetered():  # an evaluation inside the run: not its cost
            with torch.no_grad():
                model(input_ids=ids)
    assert meter.counts == {"gym-tiny-student": {"positions": 21 + 14, "grad_positions": 14, "calls": 2}}
    with torch.no_grad():
        model(input_ids=ids)  # no meter running: nothing counted anywhere
    assert meter.counts["gym-tiny-student"]["calls"] == 2


def test_generation_counts_the_prompt_once_and_one_position_per_new_token(student):
    model, tokenizer = student
    with metered() as meter:
        rows = sample_responses(
            model, tokenizer, ["add 2 3"], n=2, temperature=1.0, seed=0, max_new_tokens=5, progress=False
        )
    row = meter.counts["gym-tiny-student"]
    messages = [{"role": "user", "content": "add 2 3"}]
    prompt = len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"])
    steps = max(len(ids) for ids in rows["response_ids"])  # the longest answer sets the generation's steps
    assert len(rows) == 2 and row["grad_positions"] == 0
    # one prefill (of the prompt, or of each copy of it), then one position per sequence per further step
    assert row["calls"] == steps
    assert prompt + 2 * (steps - 1) <= row["positions"] <= 2 * prompt + 2 * (steps - 1)


def _last_logits(model, ids):
    """A stage's computation: the model's last-position logits on ``ids`` (one forward, no gradient)."""

    def compute():
        with torch.no_grad():
            return model(input_ids=ids).logits[:, -1]

    return compute


def test_a_cache_hit_replays_what_computing_the_entry_cost(tmp_path, student):
    cache = StageCache(tmp_path)
    compute = _last_logits(student[0], torch.randint(5, 20, (2, 4)))
    with metered() as cold:
        first = cache.get_or_compute("logits", {"k": 1}, compute)
    with metered() as warm:
        second = cache.get_or_compute("logits", {"k": 1}, compute)
    assert cache.misses == 1 and cache.hits == 1
    torch.testing.assert_close(first, second)
    assert warm.counts == cold.counts == {"gym-tiny-student": {"positions": 8, "grad_positions": 0, "calls": 1}}
    assert warm.unknown_hits == 0
    # an entry that kept no cost (written before entries kept it): the hit says the count is partial
    cache.path("logits", {"k": 1}).with_suffix(".cost.json").unlink()
    with metered() as partial:
        cache.get_or_compute("logits", {"k": 1}, compute)
    assert partial.counts == {} and partial.unknown_hits == 1


def test_an_entry_keeps_its_whole_cost_even_when_computed_unmetered(tmp_path, student):
    cache = StageCache(tmp_path)
    compute = _last_logits(student[0], torch.randint(5, 20, (1, 6)))
    with metered() as run, unmetered():
        cache.get_or_compute("logits", {"k": 2}, compute)
    assert run.counts == {}
    kept = json.loads(cache.path("logits", {"k": 2}).with_suffix(".cost.json").read_text())
    assert kept["by_model"]["gym-tiny-student"]["positions"] == 6
    with metered() as later:
        cache.get_or_compute("logits", {"k": 2}, compute)
    assert later.counts["gym-tiny-student"]["positions"] == 6


def test_nested_costs_propagate_to_the_outer_entry():
    with recording() as outer:
        replay({"by_model": {"m": {"positions": 3, "grad_positions": 0, "calls": 1}}, "unknown_hits": 1})
        replay(None)
    assert outer.counts == {"m": {"positions": 3, "grad_positions": 0, "calls": 1}} and outer.unknown_hits == 2


def test_a_lora_model_counts_each_forward_once():
    model, _ = load("gym-tiny-student", device="cpu", lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    with metered() as meter:
        with torch.no_grad():
            model(input_ids=torch.randint(5, 20, (2, 3)))
    assert meter.counts["gym-tiny-student"] == {"positions": 6, "grad_positions": 0, "calls": 1}


def test_the_harness_records_each_runs_cost_whatever_the_cache_held(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    import workbench.cache as cache_module

    monkeypatch.setattr(cache_module, "_DEFAULT_CACHE", None)
    methods = ["seqkd", "pad-ppd"]
    plain = EvalConfig(curve_every=2, curve_prompts=4, also_at=())
    for folder in ("cold", "warm"):  # the second finds every stage in the cache
        compare(methods, seeds=[0], overrides=TINY, runs_dir=tmp_path / folder, eval_cfg=plain)
    cold = {r["label"]: r["harness"]["cost"] for r in load_records(tmp_path / "cold")}
    warm = {r["label"]: r["harness"]["cost"] for r in load_records(tmp_path / "warm")}
    for label in methods:
        assert cold[label]["complete"] and warm[label]["complete"]
        assert cold[label]["optimizer_steps"] == TINY["steps"]
        for role in ("student", "teacher"):
            assert warm[label][role] == cold[label][role]
    # SeqKD: the teacher samples, the student trains on them; PAD: the student samples, the teacher scores them
    assert cold["seqkd"]["student"]["grad_positions"] == cold["seqkd"]["student"]["positions"] > 0
    assert cold["seqkd"]["teacher"]["positions"] > 0 and cold["seqkd"]["teacher"]["grad_positions"] == 0
    pad = cold["pad-ppd"]
    assert pad["student"]["positions"] > pad["student"]["grad_positions"] > 0 and pad["teacher"]["positions"] > 0
    page = report(tmp_path / "cold")
    assert "| student tokens, training | student tokens, sampling and scoring | teacher tokens |" in page
    assert "Tokens (mean over the 2 runs that counted them" in page


def test_the_committed_cost_runs_counted_everything_and_reproduce_the_comparison():
    """results/compare_cost (every table method from an empty stage cache, seeds 0 and 1): each run's count is complete
    and its per-prompt gold equals that of the same (method, seed) in results/compare, made with a warm cache."""
    from pathlib import Path

    from workbench.compare.runs import suite

    results = Path(__file__).resolve().parents[1] / "results"
    cost = {(r["label"], r["seed"]): r for r in load_records(results / "compare_cost")}
    table = {(r["label"], r["seed"]): r for r in load_records(results / "compare")}
    assert set(cost) == {(v.label, seed) for v in suite("cost") for seed in (0, 1)}
    for key, record in cost.items():
        assert record["cold_cache"] and record["harness"]["cost"]["complete"], key
        assert record["harness"]["cost"]["student"]["grad_positions"] > 0, key
        assert record["harness"]["per_prompt"] == table[key]["harness"]["per_prompt"], key
    # SFT trains on gold answers alone: it never calls the teacher
    assert cost["sft", 0]["harness"]["cost"]["teacher"]["positions"] == 0


def test_the_committed_teacher_budget_runs_spend_seqkds_teacher_positions():
    """results/compare's teacher-budget suite: every method scaled in one setting spends, as measured, within 10% of
    the teacher positions SeqKD spends with its own settings (results/compare_cost), under 70% of its own."""
    from pathlib import Path

    from workbench.compare.runs import suite

    results = Path(__file__).resolve().parents[1] / "results"
    records = {(r["label"], r["seed"]): r for r in load_records(results / "compare")}
    cost = load_records(results / "compare_cost")
    full = {r["label"]: r["harness"]["cost"]["teacher"]["positions"] for r in cost if r["seed"] == 0}
    budget = sum(r["harness"]["cost"]["teacher"]["positions"] for r in cost if r["label"] == "seqkd") / 2
    for variant in suite("teacher-budget"):
        for seed in range(10):
            spent = records[variant.label, seed]["harness"]["cost"]
            assert spent["complete"], (variant.label, seed)
            assert abs(spent["teacher"]["positions"] / budget - 1) < 0.1, (variant.label, seed)
            assert spent["teacher"]["positions"] < 0.7 * full[variant.method], (variant.label, seed)


def test_a_run_on_a_vllm_backend_says_its_count_is_incomplete():
    from workbench.compare.evaluation import run_cost

    with metered() as meter:
        meter.add("gym-student", 10, grad=True)
        meter.add("gym-teacher-dpo", 4, grad=False)
    cost = run_cost(meter, 3, "gym-student", {"sampling_backend": "hf", "scoring_backend": "hf"})
    assert cost["complete"] and "uncounted" not in cost
    assert cost["student"] == {"positions": 10, "grad_positions": 10, "calls": 1}
    assert cost["teacher"] == {"positions": 4, "grad_positions": 0, "calls": 1} and cost["optimizer_steps"] == 3
    vllm = run_cost(meter, 3, "gym-student", {"sampling_backend": "vllm", "scoring_backend": "hf"})
    assert not vllm["complete"] and vllm["uncounted"] == ["sampling_backend=vllm"]
