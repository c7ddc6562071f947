"""Shared fixtures. Tests use their own cache folder (``.cache/test`` in the repo, or ``$WORKBENCH_TEST_CACHE``)
so they never read a user's cached gym or scores; notebooks run by papermill inherit it."""

import os
import sys
import types
from pathlib import Path

import pytest

from workbench.backends import vllm as vllm_backend

ROOT = Path(__file__).resolve().parents[1]
os.environ["WORKBENCH_CACHE"] = os.environ.get("WORKBENCH_TEST_CACHE", str(ROOT / ".cache" / "test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest-xdist runs the suite in several processes on a few cores: each worker (and what it launches: notebooks,
# scripts) gets its share of the cores as torch threads, so OpenMP threads do not spin against the other worker's.
# Measured beside two busy one-thread processes on 2 cores: SmolLM2's GSM8K test took 90 s with 2 threads, 31 s with 1
# (17 s alone); in CI's 2-worker run it had taken 159 s beside a 2-process accelerate test.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("WORKBENCH_THREADS", _SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", _SHARE)
    import torch

    torch.set_num_threads(int(os.environ["WORKBENCH_THREADS"]))


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    skip_vllm = pytest.mark.skip(reason="needs vLLM: `make test-vllm` runs these in .venv-vllm (vLLM's CPU build)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    has_vllm, has_gpu = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    for item in items:
        if "vllm" in item.keywords and not has_vllm:
            item.add_marker(skip_vllm)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_gym():
    """The tiny gym as the package ships it."""
    from workbench.gym.store import find_gym

    return find_gym("tiny")


@pytest.fixture(scope="session")
def tiny_models(tiny_gym):
    """(teacher-dpo, teacher-ref, student) of the tiny gym, each as (model, tokenizer)."""
    from workbench.models import load

    return {role: load(f"gym-tiny-{role}", device="cpu") for role in ("teacher-dpo", "teacher-ref", "student")}


class StandInVllm:
    """A stand-in ``vllm`` module for the main suite (the real engine runs in ``make test-vllm``,
    tests/test_vllm_real.py): records engines and requests.

    Sampling: each completion is "<k> <k+1>" + eos + junk. Prompt log-probs (``prompt_logprobs`` set): the real
    log-softmax of the HF model at the engine's ``model`` folder, in vLLM's output shape (``[None, {id: Logprob}]``
    per prompt, the given token always included), so the vLLM scoring path can be checked against the HF one.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.engines, self.calls = [], []
        self.module = types.ModuleType("vllm")
        self.module.LLM = self.llm
        self.module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**{"prompt_logprobs": None, **kwargs})

    def llm(self, **kwargs):
        engine = types.SimpleNamespace(kwargs=kwargs, model=None)
        engine.generate = lambda requests, params, use_tqdm=True: self.generate(engine, requests, params)
        self.engines.append(engine)
        return engine

    def generate(self, engine, requests, params, use_tqdm=True):
        self.calls.append((requests, params))
        if not isinstance(params, list):
            params = [params] * len(requests)
        if params and params[0].prompt_logprobs is not None:
            return self.prompt_logprobs(engine, requests, params[0].prompt_logprobs)
        ids = [self.tokenizer(str(k), add_special_tokens=False)["input_ids"][0] for k in range(1, 10)]
        eos, out = self.tokenizer.eos_token_id, []
        for r, p in enumerate(params):
            completions = [
                types.SimpleNamespace(token_ids=[ids[(r + k) % 9], ids[(p.seed + k + 1) % 9], eos, ids[0]])
                for k in range(p.n)
            ]
            out.append(types.SimpleNamespace(outputs=completions))
        return out

    @staticmethod
    def prompt_logprobs(engine, requests, top: int):
        import torch
        from transformers import AutoModelForCausalLM

        if top > engine.kwargs.get("max_logprobs", 20):  # as vLLM refuses it
            raise ValueError(f"prompt_logprobs={top} exceeds max_logprobs")
        if engine.model is None:
            engine.model = AutoModelForCausalLM.from_pretrained(engine.kwargs["model"]).eval()
        out = []
        for request in requests:
            ids = request["prompt_token_ids"]
            with torch.no_grad():
                logps = engine.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            entries = [None]
            for t in range(1, len(ids)):  # the `top` most likely tokens (at least one) and the given token
                kept = [*logps[t - 1].topk(max(top, 1)).indices.tolist(), ids[t]]
                entries.append({i: types.SimpleNamespace(logprob=float(logps[t - 1, i])) for i in kept})
            out.append(types.SimpleNamespace(prompt_logprobs=entries, outputs=[]))
        return out


@pytest.fixture
def stand_in_vllm(tiny_models, monkeypatch):
    from workbench import sampling, scoring, topk_cache
    from workbench.cache import StageCache

    fake = StandInVllm(tiny_models["student"][1])
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(vllm_backend, "_VLLM_ENGINES", {})
    for module in (sampling, scoring, topk_cache):  # a stand-in's samples and scores are never cached
        monkeypatch.setattr(module, "default_cache", lambda: StageCache(enabled=False))
    return fake


@pytest.fixture
def preempt():
    """``preempt(job, folder, steps, kill)``: wait until the training subprocess ``job`` has a complete checkpoint in
    ``folder``, ``kill()`` it (SIGKILL, no clean-up) and check that the kill landed before the last of ``steps``
    steps, so a rerun has something to resume rather than a finished run."""
    import time

    def kill_after_first_checkpoint(job, folder: Path, steps: int, kill, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while job.poll() is None and not any(folder.glob("checkpoint-*/objective_state.safetensors")):
            assert time.monotonic() < deadline, f"no checkpoint within {timeout:.0f} s"
            time.sleep(0.05)
        running = job.poll() is None
        kill()
        job.wait()
        assert running, "the run finished before it could be killed: raise steps"
        left = sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
        assert left and left[-1] < steps, f"killed after its last step ({left}): raise steps"

    return kill_after_first_checkpoint
