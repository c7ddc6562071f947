"""Every notebook executes through papermill with tiny parameters (the `notebooks` marker), writes its metrics
JSON, and is committed without outputs and with a `parameters` cell."""

import json
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RESULTS = NOTEBOOKS.parent / "results"

# tiny parameters per notebook: each must finish in well under a minute on 2 CPU cores
TINY = {
    "00_gym.ipynb": dict(
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        prompts_per_task=2,
        samples=2,
        max_new_tokens=12,
    ),
    "07_plad_train.ipynb": dict(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=16,
        steps=3,
        batch_size=4,
        eval_prompts=8,
        eval_samples=2,
        real_ratios="1.0",
        data_fractions="",
    ),
    "08_compare_methods.ipynb": dict(
        methods="plad,seqkd",
        seeds="0",
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=16,
        steps=2,
        batch_size=4,
        eval_prompts=8,
        eval_samples=2,
        runs_dir="runs_tiny",
    ),
    "09_claims_ledger.ipynb": dict(
        claims="plad>seqkd,real-pairs-add-little",
        run_missing=True,
        seeds="0",
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=16,
        steps=2,
        batch_size=4,
        eval_prompts=8,
        eval_samples=2,
        runs_dir="runs_tiny",
    ),
    "02_calibration_alpha_sweep.ipynb": dict(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        alphas="0,0.8,1.0",
        n=3,
        prompts=8,
        train=True,
        steps=2,
        train_prompts=8,
    ),
    "01_irl_reward.ipynb": dict(model="gym-tiny-teacher-dpo", gym_prompts=2),
    "03_pad_train.ipynb": dict(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        n=3,
        steps=3,
        train_prompts=16,
        eval_prompts=8,
        eval_samples=2,
        batch_size=4,
    ),
    "05_sample_complexity.ipynb": dict(
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        n_states=3,
        candidates=4,
        rollouts=4,
        trials=10,
    ),
    "06_adpa_train.ipynb": dict(
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        method="dckd",
        k=8,
        steps=2,
        train_prompts=12,
        eval_prompts=6,
        eval_samples=2,
        batch_size=4,
        sweep=True,
        alphas="1",
        gammas="3",
        sweep_steps=1,
        sweep_seeds="0,1",
    ),
    "04_preference_distributions.ipynb": dict(
        teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", n=3, n_prompts=4, train_steps=2, batch_size=4
    ),
    # the committed real-text records and pair report (training SmolLM2 takes longer than a test); SmolLM2 answers live
    "10_real_text.ipynb": dict(
        runs_dir=str(RESULTS / "compare_real_text"),
        pair_report=str(RESULTS / "real_text" / "pair.json"),
        gym_runs_dir=str(RESULTS / "compare"),
        live_prompts=2,
        max_new_tokens=16,
    ),
}


def all_notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", all_notebooks())
def test_notebook_is_committed_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} has outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "title cell first"
    assert name in TINY, f"{name} has no tiny parameters in tests/test_notebooks.py"


@pytest.mark.parametrize("name", all_notebooks())
def test_papermill_lists_every_parameter_of_the_parameters_cell(name):
    import ast

    import papermill

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    source = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets]
    # papermill's parser skips a line it cannot read (e.g. an "=" inside the comment): --help-notebook would hide it
    listed = papermill.inspect_notebook(str(NOTEBOOKS / name))
    assert [n for n in assigned if n not in listed] == [], f"{name}: papermill cannot read these parameter lines"


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs_with_tiny_parameters(name, tmp_path, tiny_gym, monkeypatch):
    import papermill

    monkeypatch.setenv("WORKBENCH_FIGURES", str(tmp_path / "figures"))
    params = {**TINY[name], "output_dir": str(tmp_path / "run")}
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(tmp_path / name),
        parameters=params,
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    metrics = sorted((tmp_path / "run").glob("*.json"))
    assert metrics, f"{name} wrote no metrics JSON to output_dir"
    for path in metrics:
        json.loads(path.read_text())
    assert list((tmp_path / "run" / "figures").glob("*.png")), f"{name} saved no figure to output_dir/figures"
    assert not (tmp_path / "figures").exists(), f"{name} wrote figures/ without -p publish True"
    if name in ("03_pad_train.ipynb", "06_adpa_train.ipynb", "07_plad_train.ipynb"):  # save_model = True
        from workbench.models import load

        folders = [p.parent for p in (tmp_path / "run").rglob("student/config.json")]
        assert len(folders) == 1, f"{name} saved no trained student"
        model, tokenizer = load(str(folders[0]), device="cpu")
        initial, _ = load(TINY[name]["student"], device="cpu")
        assert model.config.model_type == initial.config.model_type and tokenizer.chat_template
        assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), initial.parameters()))


@pytest.mark.parametrize(
    "name", ["02_calibration_alpha_sweep.ipynb", "03_pad_train.ipynb", "06_adpa_train.ipynb", "07_plad_train.ipynb"]
)
def test_training_notebooks_default_to_the_methods_validation_chosen_gym_rate(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(params.source, namespace)  # the parameters cell is plain assignments
    # None = the method config's GYM_LR entry, so a notebook's rate follows its method / loss / anchor parameters
    assert namespace["lr"] is None, f"{name}: lr = {namespace['lr']!r} would pin one rate for every method"


@pytest.mark.parametrize("name", all_notebooks())
def test_the_cell_after_parameters_checks_papermills_names_first(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert nb.cells[at + 1].source.startswith("check_parameters()"), f"{name}: papermill's names are not checked"


def test_an_unknown_papermill_parameter_is_named_before_anything_runs(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match=r"unknown parameter\(s\) \['temprature'\]"):
        papermill.execute_notebook(
            str(NOTEBOOKS / "03_pad_train.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"n": 3, "temprature": 0.5, "output_dir": str(tmp_path / "run")},
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
        )
    assert not (tmp_path / "run").exists()


def test_notebook_03_takes_the_sampling_temperature():
    import papermill

    assert papermill.inspect_notebook(str(NOTEBOOKS / "03_pad_train.ipynb"))["temperature"]["default"] == "0.8"


def test_unknown_parameters_are_the_injected_names_the_parameters_cell_lacks():
    from workbench.notebook_parameters import check_parameters, unknown_parameters

    parameters = "n = 4  # samples\ntemperature: float = 0.8\nlr = None\n"
    injected = '# Parameters\nn = 3\ntemprature = 0.5\nPM_INPUT_PATH = "in.ipynb"\n'
    assert unknown_parameters(parameters, injected) == ["temprature"]
    with pytest.raises(ValueError, match=r"\['temprature'\].*Its parameters: \['n', 'temperature', 'lr'\]"):
        check_parameters(["", "import json", parameters, injected, "check_parameters()"])
    check_parameters(["", "import json", parameters, "check_parameters()"])  # run by hand: no injected cell
    check_parameters(["", parameters, "# Parameters\nn = 3\n", "check_parameters()"])
