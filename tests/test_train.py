"""workbench.train: the training script of every method family reads a recipe as its notebook does — the pipeline
from the recipe's notebook, its parameters into the method's config (notebook-only ones set aside, unknown ones
refused) — and trains in one process (the 2-process runs are in tests/test_accelerate.py)."""

import json
import logging
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from workbench.train import PIPELINES, SCRIPT_OPTIONS, main, method_config, recipe_pipeline

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_notebook_parameter_is_a_config_field_or_a_notebook_only_one(pipeline):
    """A new notebook parameter must be a config field (the script passes it on) or be listed as the notebook's own
    (the script sets it aside); never silently lost."""
    from dataclasses import fields

    spec = PIPELINES[pipeline]
    parameters = set(papermill.inspect_notebook(str(ROOT / "notebooks" / f"{spec.notebook}.ipynb")))
    config_fields = {f.name for f in fields(spec.config_class())}
    assert parameters - config_fields - SCRIPT_OPTIONS == set(spec.notebook_only)
    assert "save_model" in parameters  # a notebook run saves its student as the script does


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_names_its_pipeline_and_builds_its_config(recipe):
    pipeline = recipe_pipeline(recipe)
    assert pipeline == recipe.stem.split("_")[0].replace("plus", "")  # pad_*, adpa_*, adpa_plus_*, plad_*
    params = yaml.safe_load(recipe.read_text())
    cfg = method_config(pipeline, params)
    assert type(cfg).__name__ == PIPELINES[pipeline].config
    for name, value in params.items():  # every recipe value reaches the config ("" / 0 for off: None)
        if name not in PIPELINES[pipeline].notebook_only:
            assert getattr(cfg, name) == (
                value if value not in ("", 0) or name not in ("quantization", "m") else None
            ), name


def test_method_config_sets_notebook_sections_aside_and_refuses_unknown_parameters(caplog):
    with caplog.at_level(logging.INFO, logger="workbench.train"):
        cfg = method_config("adpa", {"method": "dckd", "sweep": True, "alphas": "1,2", "quantization": ""})
    assert cfg.method == "dckd" and cfg.quantization is None
    assert "alphas" in caplog.text and "sweep" in caplog.text
    assert method_config("pad", {"m": 0}).m is None
    with pytest.raises(ValueError, match=r"unknown PLAD parameters \['stpes'\]"):
        method_config("plad", {"stpes": 3})


def test_a_recipe_without_a_notebook_line_asks_for_the_pipeline(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("steps: 3\n")
    with pytest.raises(ValueError, match="--pipeline"):
        recipe_pipeline(recipe)
    with pytest.raises(SystemExit):
        main([])
    assert "--pipeline" in capsys.readouterr().err


def test_the_script_trains_adpa_in_one_process_and_writes_its_outputs(tiny_gym, tmp_path, monkeypatch):
    """One process through the command line: training log, config with the stage diagnostics, the ŷ rows and a
    student folder that loads."""
    from workbench.models import load

    out = tmp_path / "run"
    args = {
        "teacher_dpo": "gym-tiny-teacher-dpo",
        "teacher_ref": "gym-tiny-teacher-ref",
        "student": "gym-tiny-student",
        "method": "adpa",
        "k": 8,
        "train_prompts": 8,
        "steps": 2,
        "batch_size": 4,
        "progress": False,
        "save_rows": True,
        "sweep": True,
        "output_dir": str(out),
    }
    monkeypatch.setattr(sys, "argv", ["workbench.train"])
    main(["--pipeline", "adpa", *[a for k, v in args.items() for a in ("-p", k, str(v))]])
    config = json.loads((out / "config.json").read_text())
    assert (config["pipeline"], config["processes"], config["method"]) == ("adpa", 1, "adpa")
    assert [stage["stage"] for stage in config["stages"]] == ["adpa"]
    assert config["training"]["adpa"]["logged_steps"] == 2  # methods.common.training_summary of the log
    history = json.loads((out / "history.json").read_text())
    assert sum("loss" in e and "train_runtime" not in e for e in history) == 2
    rows = [json.loads(line) for line in (out / "rows_states_adpa.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["state"], str) for r in rows)
    model, _ = load(str(out / "student"), device="cpu")
    assert model.config.model_type == "llama"


def test_fsdp_refuses_up_front_a_lora_run_that_samples_its_trained_student_or_the_chunked_head_under_fsdp1(monkeypatch):
    from types import SimpleNamespace

    from workbench.train import check_strategy

    fsdp, ddp = SimpleNamespace(distributed_type="DistributedType.FSDP"), SimpleNamespace(distributed_type="MULTI_GPU")
    adpa_plus = method_config("adpa", {"method": "adpa+"})
    lora_adpa_plus = method_config("adpa", {"method": "adpa+", "lora": True})
    with pytest.raises(ValueError, match="ADPA adpa\\+ samples from its LoRA student after training it.*ddp.yaml"):
        check_strategy("adpa", lora_adpa_plus, fsdp)
    with pytest.raises(ValueError, match="one iteration per run"):
        check_strategy("pad", method_config("pad", {"iterations": 2, "lora": True}), fsdp)
    # full fine-tuning samples a whole copy of the sharded student (tests/test_accelerate.py): fine
    check_strategy("adpa", adpa_plus, fsdp)
    check_strategy("pad", method_config("pad", {"iterations": 2}), fsdp)
    check_strategy("adpa", lora_adpa_plus, ddp)  # DDP: every process holds the whole student
    check_strategy("plad", method_config("plad", {}), fsdp)
    # the chunked head reads the output layer outside FSDP's forward: refused by name under FSDP1 (accelerate's
    # default version), fine under FSDP2 (tests/test_accelerate.py trains it sharded) and DDP
    for pipeline in ("pad", "adpa", "plad"):
        chunked = method_config(pipeline, {"logits_chunk": 128})
        monkeypatch.delenv("FSDP_VERSION", raising=False)
        with pytest.raises(ValueError, match="logits_chunk=128: .* fsdp_version: 2 .* add -p logits_chunk 0"):
            check_strategy(pipeline, chunked, fsdp)
        monkeypatch.setenv("FSDP_VERSION", "2")
        check_strategy(pipeline, chunked, fsdp)
        check_strategy(pipeline, chunked, ddp)


@pytest.mark.parametrize(
    "distributed_type, asks_fsdp, name",
    [
        ("DistributedType.MULTI_GPU", "true", "FSDP"),
        ("DistributedType.MULTI_GPU", None, "MULTI_GPU"),
        ("DistributedType.MULTI_CPU", "true", "MULTI_CPU"),
        ("DistributedType.NO", "true", "NO"),
        ("DistributedType.FSDP", None, "FSDP"),
        ("DistributedType.MULTI_XPU", "TRUE", "FSDP"),
    ],
)
def test_strategy_name_says_fsdp_where_accelerate_will(monkeypatch, distributed_type, asks_fsdp, name):
    """accelerate's PartialState says MULTI_GPU under an FSDP launch (only the Trainer's AcceleratorState says FSDP);
    the run's checks and records must see FSDP before training, and only where accelerate will shard (not on CPU)."""
    from types import SimpleNamespace

    from workbench.train import strategy_name

    if asks_fsdp is None:
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", asks_fsdp)
    assert strategy_name(SimpleNamespace(distributed_type=distributed_type)) == name


def test_the_script_estimates_one_process_of_its_launch_and_refuses_what_will_not_fit(monkeypatch, caplog):
    """workbench.train logs the per-process estimate of its launch before any model loads (under FSDP each process
    trains a shard) and, given the device's capacity (a GPU's free memory), refuses a run that will not fit."""
    import logging
    from types import SimpleNamespace

    from workbench import memory
    from workbench.train import launch_memory_estimate

    cfg = method_config("pad", {"teacher": "gym-teacher-dpo", "student": "gym-student"})
    single = SimpleNamespace(distributed_type="DistributedType.NO", num_processes=1, is_main_process=True)
    fsdp = SimpleNamespace(distributed_type="DistributedType.MULTI_GPU", num_processes=4, is_main_process=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.INFO, logger="workbench.train"):
        one = launch_memory_estimate(cfg, single)
        sharded = launch_memory_estimate(cfg, fsdp)
    assert one.peak_bytes == memory.estimate(cfg).peak_bytes
    assert (sharded.assumptions["strategy"], sharded.assumptions["world_size"]) == ("fsdp", 4)
    assert sharded.phases["training"]["optimizer_states"] == one.phases["training"]["optimizer_states"] // 4
    assert "estimated peak memory per process (fsdp, 4 process(es))" in caplog.text
    assert launch_memory_estimate(cfg, single, capacity=one.peak_bytes + 1) is not None
    with pytest.raises(memory.WillNotFitError, match="this run needs .* try "):
        launch_memory_estimate(cfg, single, capacity=one.peak_bytes - 1)
    # a shape it cannot estimate: a warning, and the run goes on
    caplog.clear()
    unreadable = method_config("pad", {"teacher": "/no/such/teacher", "student": "/no/such/student"})
    with caplog.at_level(logging.WARNING, logger="workbench.train"):
        assert launch_memory_estimate(unreadable, single, capacity=1) is None
    assert "no memory estimate for this run" in caplog.text


@pytest.mark.parametrize("distributed", [True, False])
def test_script_exit_skips_the_teardown_only_for_a_distributed_member(distributed):
    """A launched member of a group ends at script_exit without the interpreter's teardown (where gloo's threads can
    abort a finished process), its logs and output flushed and its exit status 0; a single process exits normally."""
    import subprocess

    code = (
        "import atexit, logging, sys; from workbench.train import script_exit; "
        "atexit.register(lambda: print('teardown ran')); logging.basicConfig(level=logging.INFO); "
        f"print('work done', end=''); logging.getLogger('x').info('logged'); script_exit({distributed}); "
        "print(' after')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("work done") and "INFO:x:logged" in out.stderr
    assert ("teardown ran" in out.stdout) is not distributed and ("after" in out.stdout) is not distributed
