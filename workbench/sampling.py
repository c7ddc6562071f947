"""Sampling n responses per prompt from a policy (PAD §4.1): batched ``generate`` with KV cache, seeded."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import datasets
import torch
from tqdm.auto import tqdm

from workbench.cache import StageCache, content_hash, default_cache, model_fingerprint, tokenizer_fingerprint
from workbench.encoding import PromptLike, as_messages, prompt_text


@contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def _generate(model, tokenizer, texts, n, temperature, top_p, max_new_tokens, seed):
    with _left_padding(tokenizer):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(model.device)
    sampling = temperature > 0
    mode = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sampling else dict(do_sample=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n if sampling else 1,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **mode,
        )
    new_tokens = out[:, batch["input_ids"].shape[1] :].cpu()
    if not sampling and n > 1:
        new_tokens = new_tokens.repeat_interleave(n, dim=0)
    rows = []
    for ids in new_tokens.tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        ids = [i for i in ids if i != tokenizer.pad_token_id]
        rows.append(ids)
    return rows


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
    cache: StageCache | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """n responses per prompt (PAD §4.1: T = 0.8 for diversity); ``temperature=0`` is greedy.

    Returns a ``datasets.Dataset`` with one row per response, ordered prompt-major:
    ``prompt_id``, ``sample_id``, ``prompt`` (chat messages), ``response`` (text) and ``response_ids``.
    Results are cached by (model fingerprint, tokenizer, prompts, parameters).
    """
    if n < 1:
        raise ValueError(f"n={n}; sample at least one response per prompt")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; use 0 for greedy or a positive value")
    messages = [as_messages(p) for p in prompts]
    cache = cache or default_cache()
    key = {
        "model": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompts": content_hash(messages),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "seed": seed,
    }

    def compute():
        was_training = model.training
        model.eval()
        ids: list[list[int]] = []
        starts = range(0, len(messages), batch_size)
        for i, start in enumerate(tqdm(starts, desc="sampling", disable=not progress, leave=False)):
            texts = [prompt_text(tokenizer, m) for m in messages[start : start + batch_size]]
            ids += _generate(model, tokenizer, texts, n, temperature, top_p, max_new_tokens, seed + i)
        model.train(was_training)
        return ids

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
