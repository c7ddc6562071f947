"""Teacher top-k cache: equal to a direct forward's top-k, keyed by everything that determines it, vocabulary
checked, positions aligned with the student's batch, and the teacher released after caching."""

import gc
import weakref
from copy import deepcopy

import numpy as np
import pytest
import torch
from topk_checks import assert_same_topk

from workbench.backends import vllm as vllm_backend
from workbench.cache import StageCache
from workbench.encoding import collate_examples
from workbench.losses.adpa import tail_logmass, topk_forward_kl
from workbench.topk_cache import (
    TopkCache,
    VocabularyMismatchError,
    check_shared_vocabulary,
    teacher_topk,
    teacher_topk_by_name,
)

PROMPTS = ["sort 3 1 2", "add 4 5", [{"role": "user", "content": "max 7 2 9"}]]
RESPONSES = ["1 2 3", "sure here is the answer 9", ""]


@pytest.fixture()
def teacher(tiny_models):
    return tiny_models["teacher-dpo"]


@pytest.fixture()
def student_tok(tiny_models):
    return tiny_models["student"][1]


def _direct_topk(model, tokenizer, prompt, response, k):
    """Top-k of the teacher's next-token log-softmax at each response position, from one unbatched forward."""
    batch = collate_examples(tokenizer, [prompt], [response])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0]
    positions = batch["response_mask"][0].nonzero().squeeze(-1) - 1  # logits at p-1 predict token p
    logps = torch.log_softmax(logits[positions].float(), -1)
    top_logps, top_ids = torch.topk(logps, k, -1)
    return top_ids, top_logps


@pytest.mark.parametrize("k, chunk", [(5, None), (60, None), (5, 1)])
def test_cached_arrays_equal_a_direct_forward(teacher, student_tok, tmp_path, k, chunk):
    """Equal to top-k of the model's own full logits, also when the head runs one position per row at a time."""
    model, tok = teacher
    k = min(k, len(student_tok))
    cache = teacher_topk(
        model, tok, student_tok, PROMPTS, RESPONSES, k=k, batch_size=2, cache=StageCache(tmp_path), logits_chunk=chunk
    )
    assert len(cache) == 3 and cache.k == k
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        ids, logps = _direct_topk(model, tok, prompt, response, k)
        assert cache.ids[i].dtype == np.int32 and cache.logps[i].dtype == np.float32
        assert cache.ids[i].shape == (len(ids), k) and cache.tail_logps[i].shape == (len(ids),)
        torch.testing.assert_close(torch.from_numpy(cache.logps[i]), logps, atol=1e-5, rtol=1e-5)
        # ids agree wherever the log-probs are not tied
        assert (torch.from_numpy(cache.ids[i]).long() == ids).float().mean() > 0.99
        # the tail as a probability mass: where top-k holds almost all of it (k = 60 here) the log of a ~1e-7 mass
        # moves by O(1) with the batched forward's float32 rounding, the mass itself does not
        torch.testing.assert_close(
            torch.from_numpy(cache.tail_logps[i]).exp(), tail_logmass(logps).exp(), atol=1e-6, rtol=1e-4
        )
    # the empty response still has one position: the eos token
    assert cache.lengths[2] == 1


def test_cache_hit_and_miss_keying(teacher, student_tok, tmp_path):
    model, tok = teacher
    store = StageCache(tmp_path)
    teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=4, cache=store)
    assert (store.hits, store.misses) == (0, 1)
    teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=4, cache=store)
    assert (store.hits, store.misses) == (1, 1)
    teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=5, cache=store)  # other k
    teacher_topk(model, tok, student_tok, PROMPTS, ["1 2 3", "9", ""], k=4, cache=store)  # other texts
    changed = deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    teacher_topk(changed, tok, student_tok, PROMPTS, RESPONSES, k=4, cache=store)  # other teacher weights
    templated = deepcopy(student_tok)
    templated.chat_template = student_tok.chat_template.replace("{{ bos_token }}", "{{ bos_token }}{{ bos_token }}", 1)
    teacher_topk(model, tok, templated, PROMPTS, RESPONSES, k=4, cache=store)  # other chat template
    assert (store.hits, store.misses) == (1, 5)


def test_vocabulary_mismatch_fails_clearly(teacher, student_tok, tmp_path):
    from workbench.gym.tokenizer import build_tokenizer

    model, tok = teacher
    other = build_tokenizer()
    other.add_tokens(["banana"])
    with pytest.raises(VocabularyMismatchError, match="do not share a vocabulary.*banana"):
        check_shared_vocabulary(tok, other)
    with pytest.raises(VocabularyMismatchError, match="Token-level distillation"):
        teacher_topk(model, tok, other, PROMPTS, RESPONSES, k=4, cache=StageCache(tmp_path))
    check_shared_vocabulary(tok, student_tok)  # the gym's teacher and student share one


def test_k_must_fit_the_vocabulary(teacher, student_tok, tmp_path):
    model, tok = teacher
    with pytest.raises(ValueError, match="k="):
        teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=len(tok) + 1, cache=StageCache(tmp_path))


def test_scatter_aligns_with_the_student_batch_kl_of_teacher_with_itself_is_zero(teacher, student_tok, tmp_path):
    """With k = V, the cached teacher against the teacher's own logits on the student's batch gives KL = 0; one
    position off would not."""
    model, tok = teacher
    k = len(tok)
    cache = teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=k, cache=StageCache(tmp_path))
    batch = collate_examples(student_tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["response_mask"][:, 1:]
    ids, logps = cache.scatter([0, 1, 2], mask)
    assert ids.shape == (3, mask.shape[1], k) and ids.dtype == torch.long
    assert torch.all(topk_forward_kl(ids, logps, logits, mask) < 1e-5)
    shifted = torch.roll(logits, 1, dims=1)
    assert topk_forward_kl(ids, logps, shifted, mask).max() > 1e-2


def test_scatter_rejects_a_cache_of_other_texts():
    cache = TopkCache([np.zeros((2, 3), np.int32)], [np.zeros((2, 3), np.float32)], [np.zeros(2, np.float32)], k=3)
    with pytest.raises(ValueError, match="response positions"):
        cache.scatter([0], torch.tensor([[False, True, True, True]]))


def test_teacher_is_released_after_caching(teacher, student_tok, tmp_path, monkeypatch):
    import workbench.models

    model, tok = teacher
    refs = []

    def fake_load(name, **kwargs):
        copy = deepcopy(model)
        refs.append(weakref.ref(copy))
        return copy, tok

    monkeypatch.setattr(workbench.models, "load", fake_load)
    cache = teacher_topk_by_name(
        "gym-tiny-teacher-dpo", student_tok, PROMPTS, RESPONSES, k=3, cache=StageCache(tmp_path)
    )
    gc.collect()
    assert len(cache) == 3 and refs and refs[0]() is None


def test_vllm_topk_cache_equals_the_hf_cache_through_a_stand_in_engine(teacher, student_tok, stand_in_vllm):
    """ADPA's teacher top-k from a vLLM engine's prompt log-probs (``prompt_logprobs=k``, the engine built with
    ``max_logprobs`` ≥ k) equals the HF cache when the engine's log-probs are the same model's."""
    from workbench.models import resolve

    model, tok = teacher
    off = StageCache(enabled=False)
    k = 30  # above vLLM's default max_logprobs (20)
    hf = teacher_topk(model, tok, student_tok, PROMPTS, RESPONSES, k=k, cache=off)
    vllm = teacher_topk_by_name(
        "gym-tiny-teacher-dpo",
        student_tok,
        PROMPTS,
        RESPONSES,
        k=k,
        cache=off,
        backend="vllm",
        engine_options={"gpu_memory_utilization": 0.5},
    )
    (engine,) = stand_in_vllm.engines
    assert engine.kwargs["model"] == resolve("gym-tiny-teacher-dpo") and engine.kwargs["max_logprobs"] == k
    assert vllm_backend._VLLM_ENGINES == {}  # released after caching, as the HF teacher is freed
    assert_same_topk(vllm, hf, atol=1e-5)
    with pytest.raises(ValueError, match="backend='tgi'"):
        teacher_topk_by_name("gym-tiny-teacher-dpo", student_tok, PROMPTS, RESPONSES, k=k, cache=off, backend="tgi")
