"""Sampling n responses per prompt from a policy (PAD §4.1): batched ``generate`` with KV cache, seeded.

Two backends share one interface (``SAMPLING_BACKENDS``): ``"hf"`` (default) runs ``model.generate`` on the loaded
model; ``"vllm"`` (optional, ``pip install vllm``) hands the chat-rendered prompts to a ``vllm.LLM`` engine built
from the model's name or folder. Either way batch b of ``batch_size`` prompts is seeded with ``seed + b``, so a
process that samples batches [b0, b1) of a longer list with ``seed + b0`` reproduces them exactly
(:mod:`workbench.distributed`).

The HF backend's speed levers are switches of :class:`~workbench.sampling_levers.HfSampling` (``hf_levers``). On by
default: a LoRA student samples through merged weights, each prompt is prefilled once for its n samples, and a
finished row leaves the decode forwards; a gym model's samples are bit-identical to the plain batched ``generate``
under them (``tests/test_sampling.py`` pins them to samples drawn before the levers). Off by default: sorting
prompts by length (other batches, other samples, and shards of the unsorted list no longer reproduce the whole) and
the static cache with a compiled decode step (other samples by float rounding; ``results/sampling``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from contextlib import contextmanager

import datasets
import torch
from tqdm.auto import tqdm

from workbench.backends import vllm as vllm_backend
from workbench.backends.vllm import model_source, source_fingerprint, vllm_cache_identity
from workbench.cache import StageCache, content_hash, default_cache, model_fingerprint, tokenizer_fingerprint
from workbench.encoding import PromptLike, as_messages, encode_prompt, prompt_text
from workbench.precision import autocast_dtype, autocast_of
from workbench.prompt_length import fit_prompts, model_context
from workbench.sampling_levers import (
    HfSampling,
    dequantized_4bit,
    length_order,
    merged_lora,
    pruned_decode,
    restore_order,
    shared_prefill,
)

logger = logging.getLogger("workbench.sampling")


@contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def _response_ids(ids: list[int], tokenizer) -> list[int]:
    """A generated continuation up to (without) its first eos, pad tokens dropped."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return [i for i in ids if i != tokenizer.pad_token_id]


def _generate(model, tokenizer, texts, n, temperature, top_p, max_new_tokens, seed, levers: HfSampling):
    with _left_padding(tokenizer):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(model.device)
    sampling = temperature > 0
    mode = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sampling else dict(do_sample=False)
    max_cache_len = batch["input_ids"].shape[1] + max_new_tokens

    def run(levers: HfSampling):
        torch.manual_seed(seed)
        with (
            torch.no_grad(),
            shared_prefill(model, n if sampling else 1, enabled=levers.share_prefill),
            pruned_decode(model, [tokenizer.eos_token_id], enabled=levers.prune_finished),
        ):
            return model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n if sampling else 1,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **mode,
                **levers.generate_kwargs(model, max_cache_len),
            )

    try:
        out = run(levers)
    except torch._dynamo.exc.TorchDynamoException as error:  # no working compiler: the same batch, not compiled
        if not levers.compile_decode:
            raise
        logger.warning("torch.compile failed (%s); sampling without compile_decode", type(error).__name__)
        out = run(dataclasses.replace(levers, compile_decode=False))
    new_tokens = out[:, batch["input_ids"].shape[1] :].cpu()
    if not sampling and n > 1:
        new_tokens = new_tokens.repeat_interleave(n, dim=0)
    return [_response_ids(ids, tokenizer) for ids in new_tokens.tolist()]


def hf_generate(
    model, tokenizer, batches, seeds, *, n, temperature, top_p, max_new_tokens, progress, engine_options=None
) -> list[list[int]]:
    """Response token ids, prompt-major, from ``model.generate`` on each batch of messages with its seed.

    ``engine_options``: the speed levers, an :class:`~workbench.sampling_levers.HfSampling` (default: its
    defaults). A LoRA model samples through merged weights for the whole call (``merge_lora``), put back after.
    """
    levers = engine_options if engine_options is not None else HfSampling().fitted(model)
    was_training = model.training
    model.eval()
    ids: list[list[int]] = []
    # a bf16-mixed student samples in bfloat16, as it trains; a 4-bit model's weights are dequantized before a
    # LoRA delta is merged into them
    with (
        autocast_of(model),
        dequantized_4bit(model, enabled=levers.dequantize_4bit),
        merged_lora(model, enabled=levers.merge_lora),
    ):
        for messages, seed in tqdm(list(zip(batches, seeds)), desc="sampling", disable=not progress, leave=False):
            texts = [prompt_text(tokenizer, m) for m in messages]
            ids += _generate(model, tokenizer, texts, n, temperature, top_p, max_new_tokens, seed, levers)
    model.train(was_training)
    return ids


# --- optional vLLM backend ---


def vllm_generate(
    model, tokenizer, batches, seeds, *, n, temperature, top_p, max_new_tokens, progress, engine_options=None
) -> list[list[int]]:
    """Response token ids, prompt-major, from one ``vllm.LLM.generate`` call over all prompts.

    Prompts go in as token ids of the chat-rendered text (as the HF backend tokenizes them, no special tokens
    added twice). vLLM seeds each request's own generator, so prompt i of a batch seeded s gets
    :func:`~workbench.backends.vllm.prompt_seed` (s, i): the batch seed still fixes its samples (a shard of whole
    batches reproduces them),
    and prompts of one batch do not share random numbers (with one seed per batch, a batch of similar prompts
    drew the same samples).
    """
    vllm = vllm_backend.import_vllm()
    engine = vllm_backend.vllm_engine(
        vllm_backend.model_source(model), seeds[0] if seeds else 0, **(engine_options or {})
    )
    sampling = temperature > 0
    requests, params = [], []
    for messages, seed in zip(batches, seeds):
        for i, m in enumerate(messages):
            requests.append({"prompt_token_ids": encode_prompt(tokenizer, m)})
            # greedy decoding has one answer: sampled once and repeated n times, as the HF backend does
            params.append(
                vllm.SamplingParams(
                    n=n if sampling else 1,
                    temperature=temperature,
                    top_p=top_p if sampling else 1.0,
                    max_tokens=max_new_tokens,
                    seed=vllm_backend.prompt_seed(seed, i),
                )
            )
    outputs = engine.generate(requests, params, use_tqdm=progress)
    ids: list[list[int]] = []
    for output in outputs:  # in request order
        completions = [_response_ids(list(c.token_ids), tokenizer) for c in output.outputs]
        ids += completions if sampling else completions[:1] * n
    return ids


SAMPLING_BACKENDS = {"hf": hf_generate, "vllm": vllm_generate}


def check_sampling_backend(backend: str, name: str = "backend") -> None:
    """A clear error naming parameter ``name`` when ``backend`` is not a sampling backend."""
    if backend not in SAMPLING_BACKENDS:
        raise ValueError(f"{name}={backend!r}; use one of {sorted(SAMPLING_BACKENDS)}")


def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[PromptLike],
    n: int = 4,
    *,
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    backend: str = "hf",
    engine_options: dict | None = None,
    cache: StageCache | None = None,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
    hf_levers: HfSampling | dict | None = None,
) -> datasets.Dataset:
    """n responses per prompt (PAD §4.1: T = 0.8 for diversity); ``temperature=0`` is greedy.

    ``backend="hf"`` generates with the loaded ``model``; ``backend="vllm"`` (``pip install vllm``) samples from
    the weights at ``model`` given as hub id / folder, or at a loaded model's ``name_or_path`` (vLLM reads the
    weights from there, not from memory: save a trained model first). ``engine_options`` go to ``vllm.LLM``.
    A prompt longer than the model's context minus ``max_new_tokens`` is refused, or with ``max_prompt_tokens``
    cut to that many tokens (:func:`workbench.prompt_length.fit_prompts`).

    ``hf_levers`` (an :class:`~workbench.sampling_levers.HfSampling` or a dict of its fields) sets the HF backend's
    speed levers. The defaults merge a LoRA student's adapter for sampling and prefill each prompt once for its n
    samples: a gym model's samples stay bit-identical to the plain batched ``generate``. ``sort_by_length`` and
    the static cache (with ``compile_decode``) change which samples a seed draws, so they are off by default.

    Returns a ``datasets.Dataset`` with one row per response, ordered prompt-major:
    ``prompt_id``, ``sample_id``, ``prompt`` (chat messages), ``response`` (text) and ``response_ids``.
    Results are cached by (model fingerprint, tokenizer, prompts, parameters).
    """
    if n < 1:
        raise ValueError(f"n={n}; sample at least one response per prompt")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; use 0 for greedy or a positive value")
    check_sampling_backend(backend)
    generate = SAMPLING_BACKENDS[backend]
    levers = HfSampling.from_switches(hf_levers) if isinstance(hf_levers, dict) else hf_levers or HfSampling()
    if backend == "hf":  # decided once, so the cache key says what the samples were drawn with
        levers = levers.fitted(model)
    messages = fit_prompts(
        tokenizer,
        [as_messages(p) for p in prompts],
        max_new_tokens=max_new_tokens,
        context=model_context(model) if backend == "hf" else None,
        max_prompt_tokens=max_prompt_tokens,
    )
    cache = cache or default_cache()
    key = {
        "model": model_fingerprint(model) if backend == "hf" else source_fingerprint(model_source(model)),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompts": content_hash(messages),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "seed": seed,
    }
    autocast = autocast_dtype(model) if backend == "hf" else None
    if autocast is not None:  # bfloat16 autocast samples other responses
        key["autocast"] = str(autocast)
    if backend == "hf":  # levers that change the samples; none for a gym model under the defaults
        key.update(levers.cache_identity(model))
    else:  # the HF key stays as it always was, so earlier caches still hit
        # a seed per prompt (prompt_seed) since 2026-12; the engine's dtype etc. change the samples
        key.update(backend=backend, seeding="per-prompt", engine=vllm_cache_identity(engine_options))
    # sort_by_length: batches cut from the prompts sorted by token length, answers put back in prompt order
    by_length = backend == "hf" and levers.sort_by_length
    order = length_order([len(encode_prompt(tokenizer, m)) for m in messages]) if by_length else None

    def compute():
        ordered = [messages[i] for i in order] if order else messages
        batches = [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]
        # batch b is seeded seed + b (a shard starting at batch b0 passes seed + b0)
        seeds = [seed + b for b in range(len(batches))]
        ids = generate(
            model,
            tokenizer,
            batches,
            seeds,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            progress=progress,
            engine_options=levers if backend == "hf" else engine_options,
        )
        return restore_order(ids, order, n) if order else ids

    response_ids = cache.get_or_compute("samples", key, compute)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return datasets.Dataset.from_dict(
        {
            "prompt_id": [i for i in range(len(messages)) for _ in range(n)],
            "sample_id": [j for _ in messages for j in range(n)],
            "prompt": [m for m in messages for _ in range(n)],
            "response": [t.strip() for t in texts],
            "response_ids": response_ids,
        }
    )


def group_responses(samples: datasets.Dataset) -> tuple[list, list[list[str]]]:
    """(prompts, responses[prompt][sample]) from a prompt-major sample table."""
    prompts, groups = [], []
    for sample_id, prompt, response in zip(samples["sample_id"], samples["prompt"], samples["response"]):
        if sample_id == 0:
            prompts.append(prompt)
            groups.append([])
        groups[-1].append(response)
    return prompts, groups
