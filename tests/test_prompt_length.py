"""The prompt-length policy of sampling: prompts longer than the context minus the generation budget are refused
with the count and the rows, or cut to ``max_prompt_tokens`` with a logged count — never run silently."""

import logging

import pytest

from workbench.encoding import encode_prompt
from workbench.prompt_length import PromptTooLong, prompt_budget
from workbench.sampling import sample_responses

LONG = "sort " + " ".join(["3 1 2"] * 8_400)  # 50,000 characters, ~25,000 gym tokens against a 256-token context


def test_a_prompt_longer_than_the_context_is_refused_with_count_and_row(tiny_models):
    model, tok = tiny_models["student"]
    assert len(LONG) >= 50_000
    with pytest.raises(
        PromptTooLong,
        match=r"1 of 3 prompts are longer than the 248 tokens the model's context "
        r"allows \(256 positions − max_new_tokens=8\): rows 1 \(\d+ tokens\).*"
        r"max_prompt_tokens",
    ) as raised:
        sample_responses(model, tok, ["sort 2 1", LONG, "reverse 1 2 3"], n=2, max_new_tokens=8, progress=False)
    assert raised.value.rows == [1] and raised.value.lengths[0] > 10_000


def test_max_prompt_tokens_cuts_the_long_prompts_only_and_says_so(tiny_models, caplog, tmp_path):
    from workbench.cache import StageCache

    model, tok = tiny_models["student"]
    with caplog.at_level(logging.WARNING, logger="workbench.sampling"):
        out = sample_responses(
            model,
            tok,
            ["sort 2 1", LONG],
            n=2,
            max_new_tokens=8,
            max_prompt_tokens=64,
            progress=False,
            cache=StageCache(tmp_path),
        )
    assert "cut 1 of 2 prompts to max_prompt_tokens=64" in caplog.text and "rows 1 (" in caplog.text
    prompts = out["prompt"]
    assert prompts[0] == [{"role": "user", "content": "sort 2 1"}]
    assert 56 <= len(encode_prompt(tok, prompts[2])) <= 64  # the cut prompt, end kept
    assert prompts[2][0]["content"].endswith("3 1 2") and len(prompts[2][0]["content"]) < 400


def test_the_prompt_budget_must_leave_room_for_the_response(tiny_models):
    model, tok = tiny_models["student"]
    assert prompt_budget(256, 24, None) == 232 and prompt_budget(None, 24, None) is None
    with pytest.raises(ValueError, match=r"max_prompt_tokens=240 with max_new_tokens=24 exceeds .* ≤ 232"):
        sample_responses(model, tok, ["sort 2 1"], n=2, max_new_tokens=24, max_prompt_tokens=240, progress=False)
    with pytest.raises(ValueError, match=r"max_new_tokens=300 fills the model's context of 256"):
        prompt_budget(256, 300, None)
