"""Teacher top-k cache: each teacher's k most likely next tokens at every response position, stored once.

Token-level distillation (DCKD, ADPA and its variants) needs the teacher's next-token distribution at every
response position of (prompt, response) pairs. The full distribution is (T, V) per response; the paper keeps the
**top 50** (ADPA §4.1) and the released code adds one "remaining mass" slot. This module computes, per response,

* ``ids (T, k) int32``: the teacher's k most likely token ids at position t (best first),
* ``logps (T, k) float32``: their log-probs under the teacher's *full* softmax,
* ``tail_logps (T,) float32``: log of the mass outside them, log(1 - sum_k p)
  (:func:`workbench.losses.adpa.tail_logmass`),

where row t is the distribution that predicts response token t (the convention of :mod:`workbench.losses.adpa`).
The texts are encoded with the **student's** tokenizer and chat template (:func:`workbench.encoding.collate_examples`),
so the cached positions line up with the student's own forward pass; the teacher must therefore share the student's
vocabulary (checked by :func:`check_shared_vocabulary`, with a clear error otherwise).

Entries are keyed by a content hash of (teacher fingerprint, student tokenizer fingerprint, chat template, texts,
k) through :class:`workbench.cache.StageCache`, so an alpha/gamma sweep or a rerun reuses them, and
:func:`teacher_topk_by_name` loads a teacher, fills the cache and frees the teacher again: the teacher never sits in
memory while the student trains.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.cache import StageCache, content_hash, default_cache, model_fingerprint, tokenizer_fingerprint
from workbench.encoding import PromptLike, as_messages, collate_examples

logger = logging.getLogger("workbench.topk_cache")

TOPK_DEFAULT = 50  # ADPA §4.1: "the top 50 probabilities"


class VocabularyMismatchError(ValueError):
    """Teacher and student tokenizers do not share one vocabulary, so token-level distillation is undefined."""


def check_shared_vocabulary(
    teacher_tokenizer, student_tokenizer, teacher_name: str = "teacher", student_name: str = "student"
) -> None:
    """Fail unless both tokenizers map the same strings to the same ids (``get_vocab()`` equal).

    Token-level methods (DCKD's KL, ADPA's advantage) compare the two models' distributions id by id; with
    different vocabularies id 17 is a different token for each, and the numbers would be silently wrong. Use a
    sequence-level method (PAD, PLaD, SeqKD) for teacher/student pairs with different tokenizers.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    only_teacher = sorted(set(teacher_vocab) - set(student_vocab))
    only_student = sorted(set(student_vocab) - set(teacher_vocab))
    moved = sorted(t for t in set(teacher_vocab) & set(student_vocab) if teacher_vocab[t] != student_vocab[t])
    raise VocabularyMismatchError(
        f"{teacher_name} and {student_name} do not share a vocabulary ({len(teacher_vocab)} vs "
        f"{len(student_vocab)} tokens; {len(only_teacher)} only in the teacher, e.g. {only_teacher[:5]}; "
        f"{len(only_student)} only in the student, e.g. {only_student[:5]}; {len(moved)} shared tokens with "
        f"different ids, e.g. {moved[:5]}). Token-level distillation (DCKD, ADPA, Q-KD) needs one vocabulary; "
        f"pick a same-family teacher/student pair, or use a sequence-level method (PAD, PLaD, SeqKD)."
    )


@dataclass
class TopkCache:
    """A teacher's top-k next-token log-probs on N responses; entry i has arrays of length T_i (its tokens)."""

    ids: list[np.ndarray]  # N x (T_i, k) int32
    logps: list[np.ndarray]  # N x (T_i, k) float32
    tail_logps: list[np.ndarray]  # N x (T_i,) float32
    k: int
    teacher: str = ""  # teacher fingerprint

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(a) for a in self.ids]

    def scatter(self, indices: Sequence[int], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries ``indices`` placed at the True positions of ``mask (B, T)``, row by row, in order.

        Returns ``topk_ids (B, T, k) int64`` and ``topk_logps (B, T, k) float32``; positions off the mask hold id 0
        and log-prob 0 (the losses ignore them). The count of True positions in row b must equal the cached length
        of entry ``indices[b]`` (else the cache was built from other texts or another tokenizer).
        """
        batch, width = mask.shape
        ids = torch.zeros(batch, width, self.k, dtype=torch.long)
        logps = torch.zeros(batch, width, self.k, dtype=torch.float32)
        for b, i in enumerate(indices):
            positions = mask[b].nonzero().squeeze(-1)
            if len(positions) != len(self.ids[i]):
                raise ValueError(
                    f"row {b} has {len(positions)} response positions but cache entry {i} has "
                    f"{len(self.ids[i])}; the cache was built for other texts or another tokenizer"
                )
            ids[b, positions] = torch.from_numpy(self.ids[i]).long()
            logps[b, positions] = torch.from_numpy(self.logps[i])
        return ids, logps


def _texts_key(prompts, responses) -> str:
    return content_hash([[as_messages(p) for p in prompts], list(responses)])


def topk_cache_key(teacher, student_tokenizer, prompts, responses, k: int, max_length: int | None = None) -> dict:
    """What determines a cache entry: teacher weights (a loaded model, or the fingerprint of the weights a vLLM
    engine reads), student tokenizer + chat template, texts, k."""
    template = student_tokenizer.chat_template or ""
    return {
        "teacher": teacher if isinstance(teacher, str) else model_fingerprint(teacher),
        "tokenizer": tokenizer_fingerprint(student_tokenizer),
        "chat_template": hashlib.sha256(template.encode()).hexdigest()[:16],
        "texts": _texts_key(prompts, responses),
        "k": int(k),
        "max_length": max_length,
    }


def _response_topk(teacher, batch: dict, k: int, vocab_size: int, chunk: int):
    """Top-k of the teacher's next-token log-softmax at each response position of each row of ``batch``.

    The head runs on response positions only, ``chunk`` per row at a time (:func:`workbench.scoring.
    response_logit_chunks`), so no (B, L, V) logits exist.

    Args:
        batch: ``collate_examples`` output; position p predicts token p + 1.
        k: entries kept per position.
        vocab_size: ids kept are < vocab_size (a teacher whose embedding is padded past the tokenizer never
            emits a padding id into the cache; their mass stays in the tail).
    Returns:
        per row: (ids (T_b, k) int32, logps (T_b, k) float32, tail (T_b,) float32).
    """
    from workbench.logprobs import response_logit_chunks
    from workbench.losses.adpa import tail_logmass

    device = teacher.device
    target = batch["response_mask"][:, 1:].to(device)  # (B, L-1): position p predicts a response token
    ids, logps = [], []
    for logits, _ in response_logit_chunks(
        teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device), target, chunk
    ):
        # $\log \pi_t(\cdot \mid s_t)$ over the full teacher softmax
        top_logps, top_ids = torch.topk(torch.log_softmax(logits, dim=-1)[:, :vocab_size], k, dim=-1)  # (m, k)
        ids.append(top_ids.to(torch.int32).cpu())
        logps.append(top_logps.cpu())
    ids, logps = torch.cat(ids), torch.cat(logps)
    # $\log(1 - \sum_{i \le k} p_i)$
    tails = tail_logmass(logps)
    sizes = target.sum(-1).tolist()
    return [
        (i.numpy(), lp.numpy().astype(np.float32), t.numpy().astype(np.float32))
        for i, lp, t in zip(ids.split(sizes), logps.split(sizes), tails.split(sizes))
    ]


def _check_topk_inputs(teacher_tokenizer, student_tokenizer, prompts, responses, k: int) -> int:
    """Clear errors for mismatched texts, vocabularies or k; returns the vocabulary size the cache keeps ids below."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
    check_shared_vocabulary(teacher_tokenizer, student_tokenizer)
    vocab_size = len(student_tokenizer)
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k={k}; the top-k cache keeps 1 <= k <= vocabulary size ({vocab_size}) tokens")
    return vocab_size


def vllm_teacher_topk(
    source: str,
    teacher_tokenizer,
    student_tokenizer,
    prompts: Sequence[PromptLike],
    responses: Sequence[str],
    *,
    k: int = TOPK_DEFAULT,
    max_length: int | None = None,
    engine_options: dict | None = None,
    cache: StageCache | None = None,
    progress: bool = False,
) -> TopkCache:
    """:func:`teacher_topk` from a vLLM engine serving the teacher at ``source`` (folder / hub id): the top-k of its
    prompt log-probs at each response position (``prompt_logprobs=k``; the engine is built with ``max_logprobs``
    ≥ k). Ids at or past the student's vocabulary size are dropped as in the HF path (their mass stays in the tail).
    """
    from workbench.backends.vllm import source_fingerprint, vllm_cache_identity, vllm_prompt_logprob_entries
    from workbench.encoding import encode_within
    from workbench.losses.adpa import tail_logmass

    vocab_size = _check_topk_inputs(teacher_tokenizer, student_tokenizer, prompts, responses, k)
    cache = cache or default_cache()
    key = {
        **topk_cache_key(source_fingerprint(source), student_tokenizer, prompts, responses, k, max_length),
        "backend": "vllm",
        "engine": vllm_cache_identity(engine_options),
    }

    def compute():
        encoded = [encode_within(student_tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
        options = {**(engine_options or {}), "max_logprobs": max(k, (engine_options or {}).get("max_logprobs", 20))}
        entries = vllm_prompt_logprob_entries(
            source, [p + r for p, r, _ in encoded], top=k, engine_options=options, progress=progress
        )
        ids, logps, tails = [], [], []
        for (prompt_ids, response_ids, _), row in zip(encoded, entries):
            start = len(prompt_ids)  # token t is scored at t: the response's tokens
            top_ids = np.zeros((len(response_ids), k), dtype=np.int32)
            top_logps = np.zeros((len(response_ids), k), dtype=np.float32)
            for j, entry in enumerate(row[start : start + len(response_ids)]):
                ranked = sorted(((lp.logprob, i) for i, lp in entry.items() if i < vocab_size), reverse=True)[:k]
                if len(ranked) < k:
                    raise ValueError(
                        f"the vLLM engine returned {len(ranked)} usable log-probs at a position, "
                        f"fewer than k={k}; lower k"
                    )
                top_logps[j], top_ids[j] = zip(*ranked)
            ids.append(top_ids)
            logps.append(top_logps)
            # $\log(1 - \sum_{i \le k} p_i)$
            tails.append(tail_logmass(torch.from_numpy(top_logps)).numpy().astype(np.float32))
        return {"ids": ids, "logps": logps, "tail_logps": tails}

    stored = cache.get_or_compute("topk", key, compute)
    return TopkCache(stored["ids"], stored["logps"], stored["tail_logps"], k=k, teacher=key["teacher"])


def teacher_topk(
    teacher,
    teacher_tokenizer,
    student_tokenizer,
    prompts: Sequence[PromptLike],
    responses: Sequence[str],
    *,
    k: int = TOPK_DEFAULT,
    batch_size: int = 32,
    max_length: int | None = None,
    cache: StageCache | None = None,
    progress: bool = False,
    logits_chunk: int | None = None,
) -> TopkCache:
    """The teacher's top-k next-token log-probs at every response position (see module docstring).

    Args:
        teacher: causal LM (any device); only its forward pass is used.
        teacher_tokenizer: checked against ``student_tokenizer`` (must have the same vocabulary).
        student_tokenizer: encodes the texts (its chat template decides where the response starts).
        prompts, responses: N pairs.
        k: entries per position (ADPA §4.1: 50); at most the vocabulary size.
        logits_chunk: response positions per row through the head at a time (default as in
            :func:`workbench.logprobs.scoring_chunk`); changes memory, not the result.
    Returns:
        :class:`TopkCache` with N entries.
    """
    vocab_size = _check_topk_inputs(teacher_tokenizer, student_tokenizer, prompts, responses, k)
    from workbench.logprobs import scoring_chunk

    chunk = scoring_chunk(logits_chunk)
    cache = cache or default_cache()
    key = topk_cache_key(teacher, student_tokenizer, prompts, responses, k, max_length)

    def compute():
        ids, logps, tails = [], [], []
        was_training = teacher.training
        teacher.eval()
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="teacher top-k", disable=not progress, leave=False):
            batch = collate_examples(
                student_tokenizer,
                prompts[start : start + batch_size],
                responses[start : start + batch_size],
                max_length,
            )
            with torch.no_grad():
                rows = _response_topk(teacher, batch, k, vocab_size, chunk)
            for row_ids, row_logps, row_tail in rows:
                ids.append(row_ids)
                logps.append(row_logps)
                tails.append(row_tail)
        teacher.train(was_training)
        return {"ids": ids, "logps": logps, "tail_logps": tails}

    stored = cache.get_or_compute("topk", key, compute)
    return TopkCache(stored["ids"], stored["logps"], stored["tail_logps"], k=k, teacher=key["teacher"])


def release_memory() -> None:
    """Return freed model memory (call after the last reference to a model is deleted)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def topk_teacher(
    teacher_name: str,
    student_tokenizer,
    *,
    k: int = TOPK_DEFAULT,
    quantization: str | None = None,
    batch_size: int = 32,
    cache: StageCache | None = None,
    progress: bool = False,
    logits_chunk: int | None = None,
    backend: str = "hf",
    engine_options: dict | None = None,
    device: str | None = None,
):
    """Yields ``topk(prompts, responses) -> TopkCache`` for the teacher ``teacher_name``, loaded (on ``device``:
    default CUDA when available) at the first call only and freed when the block ends.

    A stage computed in resumable pieces (:func:`workbench.distributed.map_in_shards`) calls it once per piece
    with one teacher in memory throughout; nothing is loaded when the block never calls it. ``backend="vllm"``: a
    vLLM engine serves the teacher instead (:func:`vllm_teacher_topk`) and is released when the block ends.
    """
    from workbench.backends.vllm import release_vllm_engines
    from workbench.models import load, load_tokenizer, resolve
    from workbench.scoring import check_scoring_backend

    check_scoring_backend(backend)
    held: list = []  # [(teacher or vLLM source, its tokenizer)] once loaded

    def topk(prompts: Sequence[PromptLike], responses: Sequence[str]) -> TopkCache:
        if not held:
            if backend == "vllm":
                source = str(resolve(teacher_name))
                held.append((source, load_tokenizer(source)))
            else:
                held.append(load(teacher_name, quantization=quantization, device=device))
        teacher, teacher_tokenizer = held[0]
        if backend == "vllm":
            return vllm_teacher_topk(
                teacher,
                teacher_tokenizer,
                student_tokenizer,
                prompts,
                responses,
                k=k,
                engine_options=engine_options,
                cache=cache,
                progress=progress,
            )
        return teacher_topk(
            teacher,
            teacher_tokenizer,
            student_tokenizer,
            prompts,
            responses,
            k=k,
            batch_size=batch_size,
            cache=cache,
            progress=progress,
            logits_chunk=logits_chunk,
        )

    try:
        yield topk
    finally:
        if held and backend == "vllm":
            release_vllm_engines(held[0][0])
        held.clear()
        release_memory()


def teacher_topk_by_name(
    teacher_name: str,
    student_tokenizer,
    prompts: Sequence[PromptLike],
    responses: Sequence[str],
    **options,
) -> TopkCache:
    """Load ``teacher_name``, cache its top-k on the texts, free it, and return the cache (``options``: those of
    :func:`topk_teacher`).

    The teacher lives only inside this call, so a student can train afterwards with the teacher out of memory
    (the point of the cache; ADPA App. G "precomputing the log probabilities").
    """
    with topk_teacher(teacher_name, student_tokenizer, **options) as topk:
        return topk(prompts, responses)
