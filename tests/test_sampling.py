"""Sampling: a shard of whole batches reproduces the whole list's samples (what sharding over processes relies on);
the optional vLLM backend fails clearly without vllm and, with a stand-in engine, gets the documented arguments and
returns the HF backend's schema (a real engine: tests/test_vllm_real.py, run by ``make test-vllm``)."""

import sys
from pathlib import Path

import pytest
import torch

from workbench.backends import vllm as vllm_backend
from workbench.cache import StageCache

OFF = StageCache(enabled=False)
PROMPTS = ["sort 3 1 2", "max 1 9", "reverse 4 5", "add 2 2", "copy 7", "sort 9 8", "max 4 4"]


def test_a_shard_of_whole_batches_seeded_from_its_first_batch_reproduces_the_whole(tiny_models):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    whole = sample_responses(model, tok, PROMPTS, n=3, batch_size=3, seed=5, cache=OFF, progress=False)
    # batches {0,1,2} {3,4,5} {6}: the shard of batches 1-2 is seeded 5 + 1
    shard = sample_responses(model, tok, PROMPTS[3:], n=3, batch_size=3, seed=5 + 1, cache=OFF, progress=False)
    assert shard["response_ids"] == whole["response_ids"][3 * 3 :]
    assert shard["response"] == whole["response"][3 * 3 :]
    other_seed = sample_responses(model, tok, PROMPTS[3:], n=3, batch_size=3, seed=5, cache=OFF, progress=False)
    assert other_seed["response_ids"] != shard["response_ids"]  # the seed offset is what makes them equal


def test_unknown_backend_is_refused(tiny_models):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    with pytest.raises(ValueError, match="backend='tgi'"):
        sample_responses(model, tok, PROMPTS[:1], backend="tgi", cache=OFF)


def test_vllm_backend_without_vllm_names_the_install_command(tiny_models, monkeypatch):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    with pytest.raises(ImportError, match="pip install vllm"):
        sample_responses(model, tok, PROMPTS[:2], n=2, backend="vllm", cache=OFF, progress=False)


def test_vllm_backend_plumbing_with_a_stand_in_engine(tiny_models, stand_in_vllm):
    from workbench.backends.vllm import prompt_seed
    from workbench.encoding import encode_prompt
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    hf = sample_responses(model, tok, PROMPTS, n=2, batch_size=3, seed=7, max_new_tokens=5, cache=OFF, progress=False)
    out = sample_responses(
        model,
        tok,
        PROMPTS,
        n=2,
        batch_size=3,
        seed=7,
        max_new_tokens=5,
        temperature=0.7,
        top_p=0.9,
        backend="vllm",
        cache=OFF,
        progress=False,
    )
    assert out.column_names == hf.column_names and len(out) == len(hf)
    assert out["prompt_id"] == hf["prompt_id"] and out["sample_id"] == hf["sample_id"]
    # one engine, built from the loaded model's name_or_path with the seed
    (engine,) = stand_in_vllm.engines
    assert engine.kwargs == {"model": model.name_or_path, "seed": 7}
    ((requests, params),) = stand_in_vllm.calls
    assert [r["prompt_token_ids"] for r in requests] == [encode_prompt(tok, p) for p in PROMPTS]
    # batch b of 3 prompts is seeded seed + b, as the HF backend; vLLM seeds each prompt: prompt i of batch b gets
    # prompt_seed(seed + b, i), so prompts of a batch draw different random numbers
    assert [p.seed for p in params] == [
        prompt_seed(7 + b, i) for b, i in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0))
    ]
    assert len({p.seed for p in params}) == len(params)
    assert {(p.n, p.temperature, p.top_p, p.max_tokens) for p in params} == {(2, 0.7, 0.9, 5)}
    assert all(len(ids) == 2 for ids in out["response_ids"])  # cut at eos
    # the same model path again reuses the engine; greedy asks for one answer and repeats it n times
    greedy = sample_responses(
        model.name_or_path, tok, PROMPTS[:2], n=3, temperature=0.0, backend="vllm", cache=OFF, progress=False
    )
    assert len(stand_in_vllm.engines) == 1
    assert {p.n for p in stand_in_vllm.calls[-1][1]} == {1}
    assert greedy["response"][:3] == [greedy["response"][0]] * 3


def test_prompt_seeds_lie_further_apart_than_any_n():
    """vLLM seeds sample k of a request with seed + k: request seeds of different prompts (any batch seed, any
    position) must not lie within n of each other."""
    from workbench.backends.vllm import prompt_seed

    seeds = sorted(prompt_seed(s, i) for s in range(60) for i in range(50))
    assert min(b - a for a, b in zip(seeds, seeds[1:])) > 10**6
    assert all(0 <= s < 2**62 for s in seeds) and prompt_seed(2**70, 3) < 2**62
    assert prompt_seed(7, 1) == prompt_seed(7, 1)


def test_vllm_options_are_checked_and_reach_the_engine_options(tmp_path):
    """``vllm_options`` go to every engine beside the GPU share; options the run sets itself, a GPU share given
    twice, and two engines that would each reserve vLLM's default 0.9 are refused with the fix."""
    from workbench.methods.adpa import AdpaConfig
    from workbench.methods.config import vllm_engine_options
    from workbench.methods.pad import PadConfig
    from workbench.methods.plad import PladConfig

    for make in (PadConfig, AdpaConfig, PladConfig):
        cfg = make(vllm_options={"max_model_len": 512, "dtype": "float32"}, vllm_gpu_memory=0.4)
        assert vllm_engine_options(cfg) == {"max_model_len": 512, "dtype": "float32", "gpu_memory_utilization": 0.4}
        assert vllm_engine_options(make()) == {}
        with pytest.raises(ValueError, match="set vllm_gpu_memory instead"):
            make(vllm_options={"gpu_memory_utilization": 0.5})
        with pytest.raises(ValueError, match=r"\['model', 'seed'\]"):
            make(vllm_options={"seed": 1, "model": "x"})
        with pytest.raises(ValueError, match="a dict of vllm.LLM options"):
            make(vllm_options="max_model_len=512")
    with pytest.raises(ValueError, match="both 'vllm'.*set vllm_gpu_memory"):
        PadConfig(sampling_backend="vllm", scoring_backend="vllm")
    for fix in ({"vllm_gpu_memory": 0.3}, {"vllm_options": {"kv_cache_memory_bytes": 2**30}}):
        PadConfig(sampling_backend="vllm", scoring_backend="vllm", **fix)
    PadConfig(sampling_backend="vllm")  # one engine: vLLM's default share is its own business


def test_pad_round_samples_through_vllm_from_the_current_student(tiny_models, stand_in_vllm, tmp_path):
    from workbench.methods.pad import PadConfig, sample_and_score

    student, tok = tiny_models["student"]
    teacher, teacher_tok = tiny_models["teacher-dpo"]
    cfg = PadConfig(
        n=2, sampling_backend="vllm", sampling_batch_size=2, max_new_tokens=6, output_dir=str(tmp_path), progress=False
    )
    first = sample_and_score(cfg, student, tok, teacher, teacher_tok, PROMPTS[:3], 0)
    assert stand_in_vllm.engines[0].kwargs["model"] == student.name_or_path
    assert {p.max_tokens for p in stand_in_vllm.calls[0][1]} == {6}
    assert first.rewards["calibrated"].shape == (3, 2) and len(first.groups[0]) == 2
    # later rounds: vLLM reads weights from disk, so the trained student is saved and sampled from there
    sample_and_score(cfg, student, tok, teacher, teacher_tok, PROMPTS[:3], 1)
    assert stand_in_vllm.engines[-1].kwargs["model"] == str(tmp_path / "vllm_student_round1")
    assert (tmp_path / "vllm_student_round1" / "config.json").exists()


def test_pad_scores_through_vllm_like_the_loaded_teacher_and_keeps_its_engine_across_rounds(
    tiny_models, stand_in_vllm, tmp_path
):
    """``scoring_backend='vllm'``: the teacher is never loaded (folder + tokenizer only), its rewards equal the HF
    teacher's, and a new round's student engine replaces the old student engine only."""
    from workbench.methods.pad import PadConfig, load_teacher, sample_and_score

    student, tok = tiny_models["student"]
    common = dict(
        teacher="gym-tiny-teacher-dpo",
        n=2,
        sampling_batch_size=2,
        max_new_tokens=6,
        output_dir=str(tmp_path),
        progress=False,
    )
    hf_cfg = PadConfig(**common)
    vllm_cfg = PadConfig(**common, scoring_backend="vllm", sampling_backend="vllm", vllm_gpu_memory=0.3)
    teacher, teacher_tok = load_teacher(vllm_cfg)
    assert isinstance(teacher, str) and (Path(teacher) / "config.json").exists()
    by_vllm = sample_and_score(vllm_cfg, student, tok, teacher, teacher_tok, PROMPTS[:3], 0)
    # the same samples scored by the loaded teacher
    hf_teacher, hf_tok = load_teacher(hf_cfg)
    from workbench.rewards import teacher_rewards

    by_hf = teacher_rewards(hf_teacher, hf_tok, by_vllm.prompts, by_vllm.groups, alpha=hf_cfg.alpha, seed=0)
    for name, values in by_hf.items():
        torch.testing.assert_close(by_vllm.rewards[name], values, atol=1e-5, rtol=1e-5)
    assert {e.kwargs["model"] for e in stand_in_vllm.engines} == {student.name_or_path, teacher}
    assert all(e.kwargs["gpu_memory_utilization"] == 0.3 for e in stand_in_vllm.engines)
    sample_and_score(vllm_cfg, student, tok, teacher, teacher_tok, PROMPTS[:3], 1)
    assert set(vllm_backend._VLLM_ENGINES) == {teacher, str(tmp_path / "vllm_student_round1")}
    with pytest.raises(ValueError, match="scoring_backend='tgi'"):
        PadConfig(scoring_backend="tgi")


def test_plad_samples_teacher_and_student_through_vllm_without_loading_the_teacher(
    tiny_models, stand_in_vllm, tmp_path, monkeypatch
):
    """``PladConfig(sampling_backend='vllm')``: the teacher (used black-box, for its samples only) is served by
    vLLM from its folder and never loaded; the student's pre-training samples come from its folder too."""
    from workbench import models
    from workbench.methods import plad

    loaded = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    cfg = plad.PladConfig(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=6,
        eval_prompts=2,
        eval_samples=1,
        steps=1,
        batch_size=2,
        sampling_backend="vllm",
        vllm_gpu_memory=0.4,
        output_dir=str(tmp_path),
        progress=False,
    )
    result = plad.run_plad(cfg)
    assert loaded == ["gym-tiny-student"]  # the teacher was never loaded
    sources = [e.kwargs["model"] for e in stand_in_vllm.engines]
    assert sources == [models.resolve("gym-tiny-teacher-dpo"), models.resolve("gym-tiny-student")]
    assert all(e.kwargs["gpu_memory_utilization"] == 0.4 for e in stand_in_vllm.engines)
    assert [len(requests) for requests, _ in stand_in_vllm.calls] == [6, 6]  # one teacher and one student sample each
    assert vllm_backend._VLLM_ENGINES == {}  # released before training
    assert result.metrics["pairs"]["n_pairs"] >= 1 and result.metrics["pairs"]["n_input"] == 6
    with pytest.raises(ValueError, match="sampling_backend='tgi'"):
        plad.PladConfig(sampling_backend="tgi")


def test_a_cpu_vllm_engine_prefills_prompts_whole_unless_told_otherwise(tiny_models, stand_in_vllm, monkeypatch):
    """vLLM's CPU build crashes on seeded requests prefilled in chunks: on its CPU platform an engine is built with
    ``enable_chunked_prefill=False`` unless the options say otherwise; elsewhere nothing is added."""

    vllm_backend.vllm_engine("gpu-model", 0, max_model_len=64)
    monkeypatch.setattr(vllm_backend, "_runs_on_cpu", lambda: True)
    vllm_backend.vllm_engine("cpu-model", 0)
    vllm_backend.vllm_engine("cpu-model-chunked", 0, enable_chunked_prefill=True)
    kwargs = [e.kwargs for e in stand_in_vllm.engines]
    assert kwargs == [
        {"model": "gpu-model", "seed": 0, "max_model_len": 64},
        {"model": "cpu-model", "seed": 0, "enable_chunked_prefill": False},
        {"model": "cpu-model-chunked", "seed": 0, "enable_chunked_prefill": True},
    ]
