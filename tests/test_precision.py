"""``precision``: the student trains in float32 weights under bfloat16 autocast ('bf16-mixed', the GPU default), in
bfloat16 weights ('bf16-true') or in float32 ('32-true', the CPU default). At the papers' learning rates (~1e-6) an
AdamW step is far below the rounding step of a bfloat16 weight, so 'bf16-true' full fine-tuning barely moves the
student; these tests show that on the CPU (bfloat16 and autocast run here too) and that 'bf16-mixed' does not."""

import logging

import pytest
import torch

from workbench.methods import adpa as A
from workbench.methods import pad as P
from workbench.methods import plad as L

PAPER_LR = 8e-7  # PAD's learning rate for Gemma-2 (App. B.1)


def initial_weights(name: str) -> dict[str, torch.Tensor]:
    from workbench.models import load

    model, _ = load(name, device="cpu")
    return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def changed_fraction(model, before: dict[str, torch.Tensor]) -> float:
    """Share of the student's weights that differ from their initial values (in the weights' own dtype)."""
    after = model.state_dict()
    changed = sum(int((after[k] != v.to(after[k].dtype)).sum()) for k, v in before.items())
    return changed / sum(v.numel() for v in before.values())


class LinearOutputDtypes:
    """The dtypes the student's linear layers compute in while it trains and while it samples (forward hooks)."""

    def __init__(self, model):
        self.training: set[torch.dtype] = set()
        self.sampling: set[torch.dtype] = set()
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def hook(self, module, inputs, output):
        (self.training if torch.is_grad_enabled() else self.sampling).add(output.dtype)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def tiny_config(family: str, tmp_path, **overrides):
    common = dict(
        student="gym-tiny-student",
        train_prompts=12,
        eval_prompts=4,
        eval_samples=1,
        batch_size=4,
        steps=4,
        lr=PAPER_LR,
        output_dir=str(tmp_path),
        progress=False,
        logits_chunk=8,
        **overrides,
    )
    if family == "pad":
        return P.PadConfig(teacher="gym-tiny-teacher-dpo", n=3, **common)
    if family == "adpa":
        return A.AdpaConfig(
            method="adpa", teacher_dpo="gym-tiny-teacher-dpo", teacher_ref="gym-tiny-teacher-ref", **common
        )
    return L.PladConfig(teacher="gym-tiny-teacher-dpo", **common)


MODULES = {"pad": P, "adpa": A, "plad": L}


@pytest.mark.parametrize("family", ["pad", "adpa", "plad"])
def test_bf16_mixed_trains_float32_weights_under_bfloat16_autocast(family, tiny_gym, tmp_path, monkeypatch):
    before = initial_weights("gym-tiny-student")
    watched = []
    load_student = P.PadConfig.load_student  # every family's config inherits it from TrainingKnobs

    def watching(cfg, device=None):
        model, tokenizer = load_student(cfg, device)
        watched.append(LinearOutputDtypes(model))
        return model, tokenizer

    monkeypatch.setattr(type(tiny_config(family, tmp_path)), "load_student", watching)
    from workbench import cache

    monkeypatch.setattr(cache, "_DEFAULT_CACHE", cache.StageCache(enabled=False))  # the student samples here
    run = MODULES[family].train_run(tiny_config(family, tmp_path, precision="bf16-mixed"), device="cpu")
    watched[0].remove()
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # AdamW updates float32 weights
    # every training forward's linear layers ran in bfloat16, and so did the student's sampling
    assert watched[0].training == {torch.bfloat16} and watched[0].sampling == {torch.bfloat16}
    assert changed_fraction(run.model, before) > 0.9
    losses = [h["loss"] for h in run.history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_bf16_true_loses_the_papers_small_updates_and_bf16_mixed_keeps_them(tiny_gym, tmp_path, caplog):
    before = initial_weights("gym-tiny-student")
    changed = {}
    for precision in ("bf16-true", "bf16-mixed", "32-true"):
        with caplog.at_level(logging.WARNING, logger="workbench.methods"):
            cfg = tiny_config("pad", tmp_path / precision, precision=precision)
        run = P.train_run(cfg, device="cpu")
        changed[precision] = changed_fraction(run.model, before)
    assert changed["bf16-true"] < 0.05  # the AdamW steps round away in bfloat16 weights
    assert changed["bf16-mixed"] > 0.9 and changed["32-true"] > 0.9
    warned = [r.getMessage() for r in caplog.records if "bf16-true" in r.getMessage()]
    assert len(warned) == 1 and "lr=8e-07" in warned[0] and "bf16-mixed" in warned[0]


@pytest.mark.parametrize("config", [P.PadConfig, A.AdpaConfig, L.PladConfig])
def test_precision_resolves_to_the_students_dtype_and_the_trainers_autocast(config):
    with pytest.raises(ValueError, match=r"precision='fp16'.*'bf16-mixed'"):
        config(precision="fp16")
    assert config().student_precision("cpu") == "32-true"  # 'auto' off a GPU
    cases = {  # (precision, lora) -> (weights dtype, Trainer autocast)
        ("32-true", False): (torch.float32, False),
        ("bf16-true", False): (torch.bfloat16, False),
        ("bf16-mixed", False): (torch.float32, True),
        ("bf16-mixed", True): (torch.bfloat16, False),  # frozen bfloat16 base, float32 adapters (peft)
        ("bf16-true", True): (torch.bfloat16, False),
        ("32-true", True): (torch.float32, False),
    }
    for (precision, lora), (dtype, autocast) in cases.items():
        cfg = config(precision=precision, lora=lora)
        assert cfg.student_dtype("cpu") == dtype, (precision, lora)
        assert cfg.training_overrides("x").get("bf16", False) == autocast, (precision, lora)


@pytest.mark.parametrize("method", ["seqkd", "dpo"])
def test_the_baselines_train_a_bf16_mixed_student_as_the_methods_do(method, tiny_gym, tmp_path, monkeypatch):
    """The baselines compared with the methods (notebook 08) get the same precision: SeqKD through the workbench's
    SFT, DPO through TRL's DPOTrainer (its bf16 argument)."""
    from workbench.methods import baselines as B

    before = initial_weights("gym-tiny-student")
    watched = []
    load_student = B.BaselineConfig.load_student

    def watching(cfg, device=None):
        model, tokenizer = load_student(cfg, device)
        watched.append(LinearOutputDtypes(model))
        return model, tokenizer

    monkeypatch.setattr(B.BaselineConfig, "load_student", watching)
    cfg = B.BaselineConfig(
        method=method,
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=8,
        eval_prompts=4,
        eval_samples=1,
        steps=3,
        batch_size=4,
        lr=PAPER_LR,
        n=2,
        precision="bf16-mixed",
        output_dir=str(tmp_path),
        progress=False,
    )
    assert cfg.autocast_overrides() == {"bf16": True}
    result = B.run_baseline(cfg)
    watched[0].remove()
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert watched[0].training == {torch.bfloat16}
    assert changed_fraction(result.model, before) > 0.9


def test_a_bf16_mixed_student_goes_to_vllm_in_bfloat16(tiny_gym, tmp_path):
    """PAD's later rounds sample through vLLM from the student saved to disk: a bf16-mixed student is saved in its
    compute dtype, bfloat16 (vLLM's 'auto' would serve float32 weights in float16), its float32 weights untouched."""
    import json

    from safetensors.torch import load_file

    from workbench.methods.pad_rounds import vllm_student_source
    from workbench.models import load

    cfg = tiny_config("pad", tmp_path, precision="bf16-mixed")
    student, tokenizer = cfg.load_student("cpu")
    folder = vllm_student_source(cfg, student, tokenizer, round_=1)
    assert json.loads((tmp_path / "vllm_student_round1" / "config.json").read_text())["dtype"] == "bfloat16"
    saved = load_file(str(tmp_path / "vllm_student_round1" / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    reloaded, _ = load(folder, device="cpu")
    for name, p in student.named_parameters():
        torch.testing.assert_close(dict(reloaded.named_parameters())[name], p.to(torch.bfloat16).float(), msg=name)
