"""workbench.models.drop_layers: a layer-dropped model is an ordinary smaller model of the same family."""

import copy

import pytest
import torch

from workbench.models import drop_layers, evenly_spaced_layers


@pytest.mark.parametrize(
    "total, keep, expected",
    [(30, 10, [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]), (4, 2, [0, 3]), (5, 5, [0, 1, 2, 3, 4]), (7, 1, [0])],
)
def test_evenly_spaced_layers_keep_first_and_last(total, keep, expected):
    assert evenly_spaced_layers(total, keep) == expected


def test_evenly_spaced_layers_rejects_impossible_counts():
    with pytest.raises(ValueError, match="keep between 1 and 4"):
        evenly_spaced_layers(4, 5)


def test_dropped_model_equals_a_fresh_model_of_that_depth_with_the_kept_weights(tiny_models):
    """Logits and greedy generation (KV cache indexed by the renumbered layers) match a model built with the
    smaller config and loaded with the kept layers' weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher, tokenizer = tiny_models["teacher-dpo"]
    assert teacher.config.num_hidden_layers == 2
    dropped = drop_layers(copy.deepcopy(teacher), [1])
    assert dropped.config.num_hidden_layers == 1 and dropped.model.layers[0].self_attn.layer_idx == 0
    fresh = LlamaForCausalLM(LlamaConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 1})).eval()
    fresh.load_state_dict(dropped.state_dict())
    assert torch.equal(fresh.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    ids = tokenizer(["sort 3 1 2", "max 4 9"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(dropped(**ids).logits, fresh(**ids).logits)
        assert not torch.allclose(dropped(**ids).logits, teacher(**ids).logits)
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(dropped.generate(**ids, **kwargs), fresh.generate(**ids, **kwargs))
    same = drop_layers(copy.deepcopy(teacher), [0, 1])
    with torch.no_grad():
        torch.testing.assert_close(same(**ids).logits, teacher(**ids).logits)


@pytest.mark.parametrize("keep", [[], [1, 0], [0, 2], [-1]])
def test_drop_layers_rejects_bad_indices(tiny_models, keep):
    teacher, _ = tiny_models["teacher-dpo"]
    with pytest.raises(ValueError, match="increasing layer indices"):
        drop_layers(copy.deepcopy(teacher), keep)


def test_a_mistyped_preset_names_the_near_presets_instead_of_asking_the_hub(tmp_path, monkeypatch):
    from workbench.models import preset_names, resolve

    with pytest.raises(ValueError, match=r"did you mean 'smollm2-135m-instruct'"):
        resolve("smollm2-135m-instruc")
    assert {"gym-student", "gym-tiny-student", "gym-v1-student", "smollm2-135m-instruct"} <= set(preset_names())
    # hub ids, plain legacy hub names and existing folders pass through untouched
    assert resolve("google/gemma-2-2b-it") == "google/gemma-2-2b-it" and resolve("gpt2") == "gpt2"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruc").mkdir()  # a local folder of that name is what the user meant
    assert resolve("smollm2-135m-instruc") == "smollm2-135m-instruc"


def test_gym_loads_draw_no_progress_bar_and_leave_the_setting_as_it_was(tiny_gym, capfd):
    from transformers.utils import logging as hf_logging

    from workbench.models import load

    load("gym-tiny-student")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # real models still show their (long) loads


def test_load_swaps_in_no_hub_kernels_unless_asked(tiny_gym):
    """transformers 5.2x kernelizes every model it loads when the ``kernels`` package is installed (it is one of its
    requirements); on a GPU that fetches kernel code from the hub at load — an offline H200 refused a 4-bit
    teacher so. ``load`` turns it off (plain, 4-bit and LoRA loads) unless ``use_kernels=True``."""
    from transformers.utils import is_kernels_available

    from workbench.models import load

    plain, _ = load("gym-tiny-student", device="cpu")
    qlora, _ = load("gym-tiny-student", device="cpu", quantization="4bit", lora=True)
    assert plain.use_kernels is False and qlora.get_base_model().use_kernels is False
    if is_kernels_available():  # transformers' default, had load not said otherwise
        asked, _ = load("gym-tiny-student", device="cpu", use_kernels=True)
        assert asked.use_kernels is True


def test_only_the_kernels_hub_hint_of_bitsandbytes_is_dropped(caplog):
    import logging

    import workbench  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please pip install kernels", "x")
        log.warning("any other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["any other bitsandbytes warning"]


def test_lora_initialisation_follows_the_seed_not_what_ran_before(tiny_gym):
    """peft draws ``lora_A`` at random: ``load(..., lora=True, seed=s)`` gives the same adapter whatever the global
    random state was, a different one for another seed, and leaves the global random state untouched."""
    import torch

    from workbench.models import load

    def adapter(seed):
        model, _ = load("gym-tiny-student", lora=True, device="cpu", seed=seed)
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])

    torch.manual_seed(123)
    first = adapter(0)
    after = torch.rand(1)
    torch.manual_seed(123)
    torch.rand(1000)  # another history
    assert torch.equal(adapter(0), first)
    torch.manual_seed(123)
    adapter(0)
    assert torch.equal(torch.rand(1), after)  # the global stream continues as if nothing was drawn
    assert not torch.equal(adapter(1), first)


def test_a_lora_student_with_checkpointing_loads_without_deprecation_warnings(tiny_gym):
    """peft asks transformers 5 for checkpointing under its deprecated names (``is_gradient_checkpointing``); ``load``
    keeps those FutureWarnings, which a user can do nothing about, out of every LoRA run's output."""
    import warnings

    from workbench.models import load

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model, _ = load("gym-tiny-student", lora=True, gradient_checkpointing=True, device="cpu")
    assert any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())
    assert any("lora_A" in name for name, _ in model.named_parameters())
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):  # still raised outside load
        _ = model.base_model.model.is_gradient_checkpointing


def test_a_saved_lora_student_loads_back_with_its_adapter(tiny_gym, tmp_path):
    """``save_student`` of a LoRA run writes the adapter (naming its base); ``load`` of that folder gives the trained
    model back: the same logits, not the base model's."""
    import torch

    from workbench.methods.common import save_student
    from workbench.models import load

    model, tokenizer = load("gym-tiny-student", lora=True, device="cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a "trained" adapter (lora_B starts at zero)
            param.data.fill_(0.01)
    folder = save_student(model, tokenizer, tmp_path / "student")
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    again, again_tok = load(str(folder), device="cpu")
    base, _ = load("gym-tiny-student", device="cpu")
    ids = torch.tensor([again_tok.encode("sort 3 1 2")])
    with torch.no_grad():
        trained, loaded, untouched = (m.eval()(ids).logits for m in (model, again, base))
    assert torch.allclose(loaded, trained, atol=1e-6) and not torch.allclose(loaded, untouched, atol=1e-3)


def test_a_local_path_that_does_not_exist_is_named_not_sent_to_the_hub():
    from workbench.models import load

    for path in ("./no-such-run/student", "/no/such/model", "~/no-such-models/none", "no-such-runs/pad/student"):
        with pytest.raises(FileNotFoundError, match=rf"no such folder: '{path}'"):
            load(path)


def test_a_converted_folder_records_its_weights_and_a_damaged_one_says_how_to_convert_it_again(
    tiny_gym, tmp_path, monkeypatch
):
    import shutil

    from safetensors.torch import load_file, save_file

    from workbench import models
    from workbench.weights import WeightsMismatchError

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    writes = []

    def write(folder):  # stands for a GGUF conversion or a layer cut: a save_pretrained folder
        writes.append(folder)
        shutil.copytree(tiny_gym.paths["student"], folder, dirs_exist_ok=True)

    folder = models._converted_folder("tiny-copy", write)
    assert (folder / models.CONVERSION_RECORD).exists() and models._converted_folder("tiny-copy", write) == folder
    assert len(writes) == 1  # converted once
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] * 2
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match=rf"{folder}.*{name}.*rm -r {folder}"):
        models._converted_folder("tiny-copy", write)
