"""The AlpacaEval hook: output format, command line, and a clear error when the tool is absent."""

import json
import shutil

import pytest

from workbench.evaluate import alpaca_eval_command, run_alpaca_eval, write_alpaca_eval_outputs


def test_outputs_are_written_in_alpaca_eval_format(tmp_path):
    path = write_alpaca_eval_outputs(["Say hi", "Add 2+2"], ["hi", "4"], "student-pad", tmp_path / "o.json")
    rows = json.loads(path.read_text())
    assert rows[0] == {"instruction": "Say hi", "output": "hi", "generator": "student-pad", "dataset": "workbench"}
    with pytest.raises(ValueError, match="one output each"):
        write_alpaca_eval_outputs(["a"], [], "g", tmp_path / "x.json")


def test_command_line_and_missing_tool(tmp_path, monkeypatch):
    cmd = alpaca_eval_command("m.json", reference_outputs="r.json", annotators_config="weighted_alpaca_eval_gpt4_turbo")
    assert cmd[:4] == ["alpaca_eval", "evaluate", "--model_outputs", "m.json"] and "--reference_outputs" in cmd
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install alpaca-eval"):
        run_alpaca_eval(tmp_path / "m.json")
