"""recipes/*.yaml: papermill parameter files for the papers' main settings. Each parses, names only parameters its
notebook (or, before the notebook exists, its method config) knows, pairs with a QLoRA single-GPU variant, and
documents memory/time numbers that equal what workbench.memory computes; every recipe runs end to end through
papermill with the models swapped for the gym's tiny presets and tiny sizes: PAD (notebook 03) on the gym, ADPA /
ADPA+ (notebook 06) and PLaD (notebook 07) on a small local JSONL fixture in the recipe dataset's native schema, so
their non-gym data path (workbench.data, no gold reward) is what runs."""

import ast
import json
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from workbench import memory

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
CONFIGS = ROOT / "tests" / "fixtures" / "model_configs"
MODEL_KEYS = ("teacher", "student", "teacher_dpo", "teacher_ref")


def header(path: Path) -> dict:
    """The machine-readable header lines: ``# @estimate {json}``, ``# @time {json}``, ``# notebook: path``."""
    text = path.read_text()
    found = {}
    for key in ("estimate", "time"):
        match = re.search(rf"^# @{key} (\{{.*\}})$", text, re.M)
        found[key] = json.loads(match.group(1)) if match else None
    match = re.search(r"^# notebook: (\S+)$", text, re.M)
    found["notebook"] = ROOT / match.group(1) if match else None
    found["peak_gib"] = float(re.search(r"estimated peak memory .*?: ([0-9.]+) GiB per GPU", text).group(1))
    found["gpu_hours"] = float(re.search(r"estimated time .*?: ([0-9.]+) GPU-hours", text).group(1))
    return found


def notebook_parameters(path: Path) -> set[str]:
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {
        t.id
        for node in ast.parse(cell.source).body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }


def method_config_fields(notebook: Path) -> set[str] | None:
    """Before a notebook exists, its method's config dataclass names the parameters (None if not written yet)."""
    import dataclasses
    import importlib

    module, config = {
        "06": ("workbench.methods.adpa", "AdpaConfig"),
        "07": ("workbench.methods.plad", "PladConfig"),
    }.get(notebook.name[:2], (None, None))
    try:
        cls = getattr(importlib.import_module(module), config) if module else None
    except (ImportError, AttributeError):
        return None
    return {f.name for f in dataclasses.fields(cls)} if cls else None


def load(path: Path) -> dict:
    params = yaml.safe_load(path.read_text())
    assert isinstance(params, dict) and all(isinstance(k, str) for k in params)
    return params


def test_there_are_pad_adpa_and_plad_recipes_each_with_a_qlora_variant():
    names = {p.stem for p in RECIPES}
    assert {
        "pad_gemma2_9b_to_2b",
        "pad_llama3_8b_to_3b",
        "adpa_llama3_8b_to_1b",
        "adpa_plus_llama3_8b_to_1b",
        "plad_llama2_13b_to_7b",
    } <= names
    plad = load(ROOT / "recipes" / "plad_llama2_13b_to_7b.yaml")
    assert (
        plad["lora"] is True
        and header(ROOT / "recipes" / "plad_llama2_13b_to_7b.yaml")["estimate"].get("world_size", 1) == 1
    )
    for name in names - {n for n in names if n.endswith("_qlora")}:
        assert f"{name}_qlora" in names, f"{name} has no QLoRA single-GPU variant"
        qlora = load(ROOT / "recipes" / f"{name}_qlora.yaml")
        assert qlora["quantization"] == "4bit" and qlora["lora"] is True
        assert header(ROOT / "recipes" / f"{name}_qlora.yaml")["estimate"].get("world_size", 1) == 1


def test_pad_recipes_use_the_papers_values():
    for path in RECIPES:
        if path.stem.startswith("pad_"):
            params = load(path)
            assert (params["n"], params["alpha"], params["beta"], params["loss"]) == (4, 0.8, 10.0, "ppd")
            assert params["lr"] == (8e-7 if "gemma2" in path.stem else 1e-6)
            assert params["sft_weight"] == 0.0 and params["dataset"] == "ultrafeedback"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_names_only_known_parameters(path):
    params, info = load(path), header(path)
    assert info["notebook"] is not None and info["estimate"] is not None and info["time"] is not None
    if info["notebook"].exists():
        known = notebook_parameters(info["notebook"])
    else:
        known = method_config_fields(info["notebook"])
        if known is None:
            pytest.skip(f"neither {info['notebook'].name} nor its method config exists yet")
    assert set(params) <= known, f"unknown parameters {sorted(set(params) - known)}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_documented_memory_and_time_equal_the_estimator(path):
    # regenerate: python -m workbench.memory recipes/*.yaml --model-configs tests/fixtures/model_configs --update
    info = header(path)
    estimate, hours = memory.recipe_estimate(path, model_configs=CONFIGS)
    assert abs(estimate.peak_gib - info["peak_gib"]) < 0.051, str(estimate)
    assert abs(hours["gpu_hours"] - info["gpu_hours"]) < 0.051


@pytest.fixture(scope="module")
def teacher_64(tmp_path_factory, tiny_gym):
    """A 64-wide random teacher with the gym tokenizer: bitsandbytes' CPU 4-bit inference kernel (on CPUs with
    AVX512-BF16) packs weights in blocks of 64 input features, which the 32-wide tiny gym teacher does not fill."""
    import torch
    from transformers import LlamaForCausalLM

    from workbench.gym.build import ModelShape
    from workbench.gym.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("teacher64")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(
        ModelShape(hidden=64, layers=1, heads=2, intermediate=128).llama_config(tokenizer)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# a recipe's dataset → a synthetic fixture in that dataset's native schema (tests/fixtures/README.md)
DATASET_FIXTURES = {
    "dpo-mix-7k": "dpo_mix_7k.jsonl",
    "helpsteer2": "helpsteer2.jsonl",
    "hh-helpful": "hh_rlhf.jsonl",
    "ultrafeedback": "ultrafeedback.jsonl",
    "ultrafeedback-cleaned": "ultrafeedback_cleaned.jsonl",
}
KEEP_FROM_RECIPE = set(MODEL_KEYS) | {"method", "loss"}  # what a recipe runs; the tiny values only shrink sizes
# the tiny gym's context is 256 positions: a recipe's response budget (512 tokens) would leave no room for a prompt,
# which sampling refuses, so the swapped runs generate at most this many tokens
TINY_MAX_NEW_TOKENS = 32


def shrink_to_the_tiny_gym(params: dict) -> None:
    if "max_new_tokens" in params:
        params["max_new_tokens"] = min(params["max_new_tokens"], TINY_MAX_NEW_TOKENS)


def run_recipe(path: Path, tmp_path: Path, teacher_64: str, monkeypatch, **swap_data):
    """Execute ``path``'s notebook with its parameters, models → the tiny gym, sizes → tiny, data → ``swap_data``.

    A ``quantization: 4bit`` recipe keeps 4-bit: its teachers become ``teacher_64`` (bitsandbytes' CPU 4-bit kernel
    needs 64-wide layers), so the NF4 teacher path runs on CPU as well.
    """
    import papermill
    from test_notebooks import TINY

    info = header(path)
    if not info["notebook"].exists():
        pytest.skip(f"{info['notebook'].name} is not written yet (recipe kept valid for it)")
    params = load(path)
    tiny = dict(TINY.get(info["notebook"].name, {}))
    swap = {
        "teacher": "gym-tiny-teacher-dpo",
        "student": "gym-tiny-student",
        "teacher_dpo": "gym-tiny-teacher-dpo",
        "teacher_ref": "gym-tiny-teacher-ref",
    }
    if params.get("quantization"):
        swap.update(teacher=teacher_64, teacher_dpo=teacher_64, teacher_ref=teacher_64)
    params.update({k: v for k, v in swap.items() if k in params})
    params.update({k: v for k, v in tiny.items() if k not in KEEP_FROM_RECIPE})
    params.update(train_prompts=8, eval_prompts=4, eval_samples=1, steps=2, output_dir=str(tmp_path / "run"))
    shrink_to_the_tiny_gym(params)
    params.update(swap_data)
    monkeypatch.setenv("WORKBENCH_FIGURES", str(tmp_path / "figures"))
    nb = papermill.execute_notebook(
        str(info["notebook"]),
        str(tmp_path / "out.ipynb"),
        parameters=params,
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    assert list((tmp_path / "run").glob("*.json")), "the recipe's run wrote no metrics"
    assert list((tmp_path / "run").rglob("figures/*.png")), "the recipe's run saved no figure in its output folder"
    assert not (tmp_path / "figures").exists(), "a recipe's run wrote figures/ without -p publish True"
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "estimated peak memory" in printed, "the notebook did not print its memory estimate"
    return params


@pytest.mark.notebooks
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_end_to_end_on_a_fixture_of_its_dataset(path, tmp_path, tiny_gym, teacher_64, monkeypatch):
    dataset = load(path)["dataset"]
    fixture = ROOT / "tests" / "fixtures" / DATASET_FIXTURES[dataset]
    # PAD ranks each held-out prompt's samples: two at least
    more = {"eval_samples": 2} if path.stem.startswith("pad_") else {}
    params = run_recipe(path, tmp_path, teacher_64, monkeypatch, dataset=str(fixture), dataset_schema=dataset, **more)
    run, adpa, pad = tmp_path / "run", path.stem.startswith("adpa_"), path.stem.startswith("pad_")
    metrics = json.loads((run / params["method"] / "metrics.json" if adpa else run / "metrics.json").read_text())
    assert metrics["dataset"] == str(fixture) and metrics["config"]["quantization"] == (params["quantization"] or None)
    # no gold reward off the gym: no gold number, the reason stated, training metrics reported
    assert metrics["gold_before"] is None and metrics["gold_after"] is None
    assert metrics["gold_evaluation"].startswith("skipped") and metrics["training"]
    summary = json.loads(next(p for p in run.glob("*summary.json")).read_text())
    assert summary["gold_after"] is None and summary["dataset"] == str(fixture)
    if pad:  # the student's agreement with the teacher is measured without gold; nothing is compared with gold
        assert metrics["method"] == f"pad-{params['loss']}" and "tau_student_gold" not in metrics["ranking"]
        assert -1 <= metrics["ranking"]["tau_student_teacher"]["mean"] <= 1
    elif adpa:
        assert metrics["method"] == params["method"] and 0 <= metrics["reward_accuracy"] <= 1
        assert [s["stage"] for s in metrics["stages"]] == (
            ["dckd", "adpa"] if params["method"] == "adpa+" else [params["method"]]
        )
    else:
        assert metrics["pairs"]["n_pairs"] >= 1 and metrics["pairs"]["gold_statistics"].startswith("skipped")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_through_the_script_on_a_fixture_of_its_dataset(path, tmp_path, tiny_gym, teacher_64):
    """``python -m workbench.train <recipe>`` (what ``accelerate launch`` runs): the recipe's pipeline and method on
    its dataset's fixture, models swapped for the tiny gym (4-bit recipes: an NF4 teacher on CPU)."""
    from test_notebooks import TINY

    from workbench.train import PIPELINES, method_config, recipe_pipeline, train

    pipeline = recipe_pipeline(path)
    params = load(path)
    swap = {
        "teacher": "gym-tiny-teacher-dpo",
        "student": "gym-tiny-student",
        "teacher_dpo": "gym-tiny-teacher-dpo",
        "teacher_ref": "gym-tiny-teacher-ref",
    }
    if params.get("quantization"):
        swap.update(teacher=teacher_64, teacher_dpo=teacher_64, teacher_ref=teacher_64)
    params.update({k: v for k, v in swap.items() if k in params})
    tiny = TINY.get(f"{PIPELINES[pipeline].notebook}.ipynb", {})
    params.update({k: v for k, v in tiny.items() if k not in KEEP_FROM_RECIPE})
    fixture = ROOT / "tests" / "fixtures" / DATASET_FIXTURES[params["dataset"]]
    params.update(
        dataset=str(fixture),
        dataset_schema=params["dataset"],
        train_prompts=8,
        steps=2,
        progress=False,
        output_dir=str(tmp_path),
    )
    shrink_to_the_tiny_gym(params)
    cfg = method_config(pipeline, params)
    history = train(pipeline, cfg, save_model=False, save_rows=True)
    assert sum("loss" in e and "train_runtime" not in e for e in history) >= 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pipeline"] == pipeline and config["quantization"] == (params["quantization"] or None)
    rows = list(tmp_path.glob("rows_*.jsonl"))
    if pipeline != "adpa" or params["method"] != "dckd":  # every run but DCKD (no sampled states) saves its rows
        assert rows and all(p.read_text().strip() for p in rows)


# --- bench/bench_recipe_gpu.py: the device check of the recipes, its code path run here at toy widths ---


def _recipe_bench():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_recipe_gpu", ROOT / "bench" / "bench_recipe_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through the module's entry
    spec.loader.exec_module(module)
    return module


BENCH_RECIPES = {  # recipe → the phases its estimate names, in order
    "pad_llama3_8b_to_3b_qlora.yaml": ["sampling", "teacher_likelihood", "teacher_mcq", "training"],
    "pad_gemma2_9b_to_2b.yaml": ["sampling", "teacher_likelihood", "teacher_mcq", "training"],
    "adpa_plus_llama3_8b_to_1b_qlora.yaml": ["sampling", "teacher_likelihood", "training"],
    "plad_llama2_13b_to_7b_qlora.yaml": ["sampling", "teacher_sampling", "training"],
}


@pytest.mark.parametrize("recipe", list(BENCH_RECIPES))
def test_the_recipe_bench_runs_every_estimated_phase_at_toy_widths_on_cpu(recipe, tmp_path):
    import math

    bench = _recipe_bench()
    path = ROOT / "recipes" / recipe
    out = bench.run(str(path), device="cpu", shrink=True, steps=1, workdir=str(tmp_path))
    estimate = memory.estimate(memory.recipe_values(path), model_configs=CONFIGS)
    assert list(out["phases"]) == BENCH_RECIPES[recipe] == list(estimate.phases)
    for name, phase in out["phases"].items():
        # no CUDA peak on a CPU (None), but every phase ran, at the estimator's shapes, and has its estimate
        assert phase["measured_gib"] is None and phase["estimated_gib"] > 0, name
        assert phase["seconds"] > 0 and phase["tokens_per_s"] > 0, name
    training = out["phases"]["training"]
    recipe_values = yaml.safe_load(path.read_text())
    # ADPA+ trains DCKD, then ADPA from the DCKD student (Alg. 2): a timed step of each objective
    stages = training["stages"] if "stages" in training else {out["method"]: training}
    assert list(stages) == (["dckd", "adpa"] if recipe_values.get("method") == "adpa+" else [out["method"]])
    for stage, metrics in stages.items():
        assert len(metrics["losses"]) == 2 and all(math.isfinite(v) and abs(v) < 1e3 for v in metrics["losses"])
        assert metrics["step_seconds"] > 0 and metrics["tokens_per_s"] > 0, stage
    assert out["assumptions"]["teacher_quantization"] == (recipe_values["quantization"] or None)
    assert out["assumptions"]["lora"] == recipe_values["lora"]
    assert not list(tmp_path.iterdir())  # the random checkpoints are deleted


def test_the_recipe_bench_runs_a_bf16_mixed_student_as_the_trainer_does(tmp_path):
    """bf16-mixed (the GPU default of a fully trained student): float32 weights, bfloat16 autocast in training and
    sampling, here on the CPU's autocast."""
    from workbench.precision import autocast_of

    bench = _recipe_bench()
    seen = []
    train = bench.Bench.train

    def watched(self, objective, inputs, sequences):
        seen.append(({p.dtype for p in self.student.parameters()}, type(autocast_of(self.student)).__name__))
        return train(self, objective, inputs, sequences)

    bench.Bench.train = watched
    out = bench.run(
        str(ROOT / "recipes" / "pad_gemma2_9b_to_2b.yaml"),
        device="cpu",
        shrink=True,
        steps=1,
        workdir=str(tmp_path),
        precision="bf16-mixed",
    )
    assert out["assumptions"]["precision"] == "bf16-mixed" and not out["assumptions"]["lora"]
    assert seen == [({torch.float32}, "autocast")]
    assert all(math.isfinite(v) for v in out["phases"]["training"]["losses"])


def test_the_recipe_bench_counts_training_flops_by_the_6n_rule():
    bench = _recipe_bench()
    config = json.loads((CONFIGS / "meta-llama--Llama-3.2-3B-Instruct" / "config.json").read_text())
    sequences, seq_len = 4, 1025
    full = bench.training_flops(config, sequences, seq_len, lora=False, checkpointing=False)
    matmul_params = 3.2126e9  # 28 layers × 100.66 M linear + the 128256 × 3072 head (the model card's 3.21 B)
    assert 1.0 < full / (6 * matmul_params * sequences * seq_len) < 1.1  # + attention scores (≈ 5 % at 1025)
    lora = bench.training_flops(config, sequences, seq_len, lora=True, checkpointing=False)
    assert lora == pytest.approx(full * 2 / 3)  # no weight gradients for the frozen base
    assert bench.training_flops(config, sequences, seq_len, lora=True, checkpointing=True) == pytest.approx(full)
