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


# --- the HF backend's speed levers (workbench.sampling_levers) ---

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def one_thread():
    """One torch thread, as the samples of ``fixtures/sampling_gym.json`` were drawn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fixture_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sampling_fixture", FIXTURES / "make_sampling_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(samples) -> list[list[int]]:
    return [list(ids) for ids in samples["response_ids"]]


def test_the_default_path_draws_the_gym_samples_drawn_before_the_levers(tiny_models):
    """The default levers leave the gym students' samples bit-identical to the plain batched ``generate`` (the
    committed comparison records and the quick start's numbers stand on them): ``fixtures/sampling_gym.json`` holds
    samples drawn by ``sample_responses`` at the revision before the levers (its ``command`` made it)."""
    import json

    from workbench.models import load
    from workbench.sampling import sample_responses
    from workbench.sampling_levers import HfSampling

    make = _fixture_module()
    record = json.loads((FIXTURES / "sampling_gym.json").read_text())
    models = {"gym-tiny-student": tiny_models["student"], "gym-student": load("gym-student", device="cpu")}
    assert set(record["samples"]) == set(models) and set(record["samples"]["gym-student"]) == set(make.CASES)
    for model, _ in models.values():
        assert HfSampling().cache_identity(model) == {}  # so the cache keys are as before, too
    assert make.draw(sample_responses, models) == record["samples"]
    # prefill sharing and the static cache change no sample of theirs either; sorting does (off by default)
    shared_static = make.draw(lambda *a, **k: sample_responses(*a, **k, hf_levers={"static_cache": True}), models)
    assert shared_static == record["samples"]
    by_length = make.draw(lambda *a, **k: sample_responses(*a, **k, hf_levers={"sort_by_length": True}), models)
    assert by_length["gym-student"]["t0.8-n4"] != record["samples"]["gym-student"]["t0.8-n4"]


LEVER_SETTINGS = {
    "plain": dict(merge_lora=False, share_prefill=False),
    "default": {},
    "sorted": dict(sort_by_length=True),
    "static": dict(static_cache=True),
    "sorted-static-plain-prefill": dict(sort_by_length=True, static_cache=True, share_prefill=False),
}


@pytest.mark.parametrize("setting", list(LEVER_SETTINGS))
def test_each_lever_draws_the_same_samples_again_under_a_fixed_seed(tiny_models, one_thread, setting):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    levers = LEVER_SETTINGS[setting]
    common = dict(n=3, batch_size=3, seed=4, max_new_tokens=12, cache=OFF, progress=False, hf_levers=levers)
    first = sample_responses(model, tok, PROMPTS, **common)
    # a longer call in between: a static cache sized by earlier calls would change what the next call draws
    sample_responses(model, tok, PROMPTS[:2], n=2, max_new_tokens=40, cache=OFF, progress=False, hf_levers=levers)
    again = sample_responses(model, tok, PROMPTS, **common)
    assert _ids(again) == _ids(first)
    assert again["prompt"] == first["prompt"]
    other_seed = sample_responses(model, tok, PROMPTS, **{**common, "seed": 5})
    assert _ids(other_seed) != _ids(first)


def test_a_shared_prefill_runs_each_prompt_once_and_draws_the_plain_samples(tiny_models, one_thread):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    rows = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    common = dict(n=4, batch_size=3, seed=1, max_new_tokens=6, temperature=1.0, cache=OFF, progress=False)
    try:
        plain = sample_responses(model, tok, PROMPTS[:3], hf_levers={"share_prefill": False}, **common)
        prefills_plain = rows[0]
        rows.clear()
        shared = sample_responses(model, tok, PROMPTS[:3], **common)
    finally:
        handle.remove()
    assert prefills_plain[0] == 3 * 4 and rows[0][0] == 3  # (B·n, T) before, (B, T) now
    assert rows[1] == (3 * 4, 1)  # decoding runs on every sample's row
    assert _ids(shared) == _ids(plain)
    assert model._prefill.__func__ is type(model)._prefill  # the model's own prefill again


def test_finished_rows_leave_the_decode_forwards_and_the_samples_stay_the_plain_ones(tiny_models, one_thread):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    fed = []  # the input ids each forward ran on
    handle = model.register_forward_hook(
        lambda module, args, kwargs, out: fed.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    common = dict(n=4, batch_size=8, seed=2, max_new_tokens=24, temperature=1.0, cache=OFF, progress=False)
    try:
        plain = sample_responses(model, tok, PROMPTS, hf_levers={"prune_finished": False}, **common)
        plain_fed = list(fed)
        fed.clear()
        pruned = sample_responses(model, tok, PROMPTS, **common)
    finally:
        handle.remove()
    assert _ids(pruned) == _ids(plain)
    assert len(fed) == len(plain_fed)  # as many forwards (the batch ends when its longest row does)
    # each decode step runs exactly the rows that have not been fed eos up to it (never none)
    tokens = torch.cat([ids for ids in plain_fed[1:]], dim=1)  # (rows, steps): the tokens the plain decode fed
    finished = (tokens == tok.eos_token_id).cummax(dim=1).values
    expected = [max(int((~finished[:, k]).sum()), 1) for k in range(tokens.shape[1])]
    assert [ids.shape[0] for ids in fed[1:]] == expected
    assert expected[-1] < expected[0]  # rows finished at different steps: there was something to prune


def test_length_sorting_batches_sorted_prompts_and_returns_them_in_prompt_order(tiny_models):
    from workbench.encoding import encode_prompt
    from workbench.sampling import sample_responses
    from workbench.sampling_levers import length_order, restore_order

    assert length_order([5, 3, 5, 1]) == [3, 1, 0, 2]  # stable: equal lengths keep their order
    assert restore_order(["b0", "b1", "c0", "c1", "a0", "a1"], [1, 2, 0], 2) == ["a0", "a1", "b0", "b1", "c0", "c1"]
    model, tok = tiny_models["student"]
    prompts = PROMPTS + ["sort 5 4 3 2 1 9 8", "reverse 1 2 3 4 5 6"]
    order = length_order([len(encode_prompt(tok, p)) for p in prompts])
    assert order != list(range(len(prompts)))
    common = dict(n=2, batch_size=3, seed=9, max_new_tokens=10, cache=OFF, progress=False)
    by_length = sample_responses(model, tok, prompts, hf_levers={"sort_by_length": True}, **common)
    # the same batches, seeds and samples as sampling the sorted list, put back in prompt order
    presorted = sample_responses(model, tok, [prompts[i] for i in order], **common)
    assert _ids(by_length) == restore_order(_ids(presorted), order, 2)
    assert [p[-1]["content"] for p in by_length["prompt"][::2]] == prompts
    assert by_length["prompt_id"] == [i for i in range(len(prompts)) for _ in range(2)]


def _lora_student(seed: int = 0):
    """The tiny gym student with a LoRA adapter trained two steps (a fresh adapter's B is zero: nothing to merge)."""
    from workbench.models import load

    model, tok = load("gym-tiny-student", device="cpu", lora=True, seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        _train_step(model, tok, optimizer, step)
    return model, tok, optimizer


def _train_step(model, tok, optimizer, seed: int) -> float:
    batch = tok([f"{p} answer {p}" for p in PROMPTS], return_tensors="pt", padding=True)
    model.train()
    torch.manual_seed(seed)  # LoRA dropout
    loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def test_lora_merge_samples_through_merged_weights_and_leaves_training_where_it_was(one_thread):
    from workbench.sampling import sample_responses
    from workbench.sampling_levers import HfSampling, mergeable_lora_layers, merged_lora

    merged_model, tok, merged_optimizer = _lora_student()
    plain_model, _, plain_optimizer = _lora_student()
    layers = mergeable_lora_layers(merged_model)
    assert layers and all(m.lora_B["default"].weight.abs().sum() > 0 for m in layers)
    before = {name: p.detach().clone() for name, p in merged_model.named_parameters()}
    objects = {name: p for name, p in merged_model.named_parameters()}
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    merged_model.eval()
    with torch.no_grad():
        adapter_logits = merged_model(**batch).logits
        with merged_lora(merged_model) as count:
            merged_logits = merged_model(**batch).logits
    assert count == len(layers)
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    # the key says the samples come from merged weights; merging off keeps the old key
    assert HfSampling().cache_identity(merged_model) == {"lora": "merged"}
    assert HfSampling(merge_lora=False).cache_identity(merged_model) == {}
    common = dict(n=3, batch_size=4, seed=2, max_new_tokens=10, cache=OFF, progress=False)
    first = sample_responses(merged_model, tok, PROMPTS, **common)
    assert _ids(sample_responses(merged_model, tok, PROMPTS, **common)) == _ids(first)  # reproducible
    sample_responses(plain_model, tok, PROMPTS, hf_levers={"merge_lora": False}, **common)
    # afterwards: the same parameter objects, bit-identical, adapters unmerged, and training steps as before
    assert {name: p for name, p in merged_model.named_parameters()} == objects
    for name, p in merged_model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert not any(m.merged for m in layers) and merged_model.training is False
    for step in (2, 3):
        assert _train_step(merged_model, tok, merged_optimizer, step) == _train_step(
            plain_model, tok, plain_optimizer, step
        )
    plain_parameters = dict(plain_model.named_parameters())
    for name, p in merged_model.named_parameters():
        assert torch.equal(p, plain_parameters[name]), name


def test_lora_layers_that_do_not_merge_exactly_stay_unmerged():
    """DoRA (a weight-normalised variant) is not W + BA: its layers keep the adapter path."""
    from workbench.models import load
    from workbench.sampling_levers import HfSampling, mergeable_lora_layers

    model, _ = load("gym-tiny-student", device="cpu", lora={"use_dora": True})
    assert mergeable_lora_layers(model) == []
    assert HfSampling().cache_identity(model) == {}


def test_lever_switches_are_checked_and_keyed():
    from workbench.sampling_levers import HfSampling

    with pytest.raises(ValueError, match="compile_decode=True needs static_cache=True"):
        HfSampling(compile_decode=True)
    model = torch.nn.Linear(2, 2)
    assert HfSampling(sort_by_length=True, static_cache=True, compile_decode=True).cache_identity(model) == {
        "sorted_by_length": True,
        "cache_implementation": "static",
        "compiled": True,
    }


def test_a_compile_failure_samples_the_same_batch_uncompiled(tiny_models, monkeypatch, one_thread):
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    generate = model.generate

    def no_compiler(**kwargs):
        if kwargs.get("compile_config") is not None:
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", no_compiler)
    common = dict(n=2, batch_size=4, seed=3, max_new_tokens=8, cache=OFF, progress=False)
    compiled = sample_responses(model, tok, PROMPTS, hf_levers={"static_cache": True, "compile_decode": True}, **common)
    assert _ids(compiled) == _ids(sample_responses(model, tok, PROMPTS, hf_levers={"static_cache": True}, **common))


@pytest.mark.slow
def test_a_compiled_decode_step_draws_the_same_samples_again(tiny_models, one_thread):
    """torch.compile on CPU (inductor, a C++ compiler): compiled once per shape, reproducible."""
    from workbench.sampling import sample_responses

    model, tok = tiny_models["student"]
    common = dict(n=2, batch_size=4, seed=3, max_new_tokens=8, cache=OFF, progress=False)
    levers = {"static_cache": True, "compile_decode": True}
    first = sample_responses(model, tok, PROMPTS, hf_levers=levers, **common)
    assert _ids(sample_responses(model, tok, PROMPTS, hf_levers=levers, **common)) == _ids(first)


def test_method_configs_check_their_sampling_levers_and_the_rounds_use_them(tiny_models, monkeypatch):
    from workbench.methods import pad_rounds
    from workbench.methods.adpa_config import AdpaConfig
    from workbench.methods.config import hf_levers
    from workbench.methods.pad import PadConfig
    from workbench.methods.plad import PladConfig
    from workbench.sampling_levers import HfSampling

    for config in (PadConfig, AdpaConfig, PladConfig):
        assert hf_levers(config()) == HfSampling()
        with pytest.raises(ValueError, match="sampling_levers=.*'fast'"):
            config(sampling_levers={"fast": True})
        with pytest.raises(ValueError, match="sampling_levers=.*needs static_cache"):
            config(sampling_levers={"compile_decode": True})
    cfg = PadConfig(sampling_levers={"sort_by_length": True}, n=2, max_new_tokens=4)
    seen = {}

    def sample_responses(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pad_rounds, "sample_responses", sample_responses)
    model, tok = tiny_models["student"]
    with pytest.raises(RuntimeError, match="stop here"):
        pad_rounds.sample_round(cfg, model, tok, PROMPTS[:2])
    assert seen["hf_levers"] == HfSampling(sort_by_length=True)


def test_a_4bit_lora_model_samples_through_its_dequantized_merged_weights_when_they_fit(one_thread):
    """A QLoRA model (bitsandbytes NF4 base + LoRA) samples through plain linear layers holding W_deq + s·BA; the
    4-bit layers come back as they were (bitsandbytes may have repacked them for its CPU kernel at the first
    inference forward: the copy is unpacked from that layout). Without room for the copy the 4-bit path stays, and
    the cache key says which path drew the samples."""
    import bitsandbytes.functional as bnb_functional

    from workbench.models import load
    from workbench.sampling import sample_responses
    from workbench.sampling_levers import (
        HfSampling,
        dequantized_4bit,
        dequantized_bytes,
        four_bit_layers,
        mergeable_lora_layers,
        merged_lora,
    )

    model, tok = load("gym-student", device="cpu", quantization="4bit", lora=True)
    lora_layers = mergeable_lora_layers(model, dequantized=True)
    assert lora_layers and mergeable_lora_layers(model) == []  # the 4-bit bases merge only once dequantized
    reference = {  # dequantized from bitsandbytes' standard layout, before any forward
        m: bnb_functional.dequantize_4bit(m.get_base_layer().weight.data, m.get_base_layer().weight.quant_state)
        for m in lora_layers
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        _train_step(model, tok, optimizer, step)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    model.eval()
    for inference_forward in (False, True):
        with torch.no_grad():
            if inference_forward:  # bitsandbytes' own (on some CPUs it repacks the weights, scales in bfloat16)
                quantized_logits = model(**batch).logits
            four_bit = [(layer, layer.weight, layer.weight.data.clone()) for _, _, layer in four_bit_layers(model)]
            repacked = any(getattr(w.quant_state, "packing_format_for_cpu", False) for _, w, _ in four_bit)
            tolerance = dict(atol=1e-6, rtol=1e-6) if not repacked else dict(atol=1e-3, rtol=2**-7)
            with dequantized_4bit(model) as swapped, merged_lora(model) as merged:
                assert swapped == len(four_bit) and merged == len(lora_layers)
                for m in lora_layers:
                    base = m.get_base_layer()
                    assert type(base) is torch.nn.Linear and not base.weight.requires_grad
                    torch.testing.assert_close(base.weight, reference[m] + m.get_delta_weight("default"), **tolerance)
                if inference_forward:  # what bitsandbytes' forward computes, up to its bfloat16 arithmetic
                    torch.testing.assert_close(model(**batch).logits, quantized_logits, atol=0.1, rtol=0.05)
    assert [(layer, layer.weight) for _, _, layer in four_bit_layers(model)] == [(a, b) for a, b, _ in four_bit]
    assert all(torch.equal(layer.weight.data, data) for layer, _, data in four_bit)
    assert not any(m.merged for m in lora_layers)

    need = dequantized_bytes(model)
    assert need == sum(layer.in_features * layer.out_features * 4 for layer, _, _ in four_bit)  # float32 compute
    assert HfSampling().fitted(model, free_bytes=2 * need).dequantize_4bit
    kept = HfSampling().fitted(model, free_bytes=2 * need - 1)
    assert not kept.dequantize_4bit
    assert HfSampling().cache_identity(model) == {"weights": "dequantized", "lora": "merged"}
    assert kept.cache_identity(model) == {}
    common = dict(n=2, batch_size=4, seed=1, max_new_tokens=8, cache=OFF, progress=False)
    first = sample_responses(model, tok, PROMPTS, **common)
    assert _ids(sample_responses(model, tok, PROMPTS, **common)) == _ids(first)  # reproducible
    quantized = sample_responses(model, tok, PROMPTS, hf_levers={"dequantize_4bit": False}, **common)
    assert len(quantized) == len(first)
