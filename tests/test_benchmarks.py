"""GSM8K exact-match accuracy and AlpacaEval outputs (workbench.benchmarks) on fixtures and the tiny gym."""

import json
from pathlib import Path

import datasets
import pytest

from workbench import benchmarks as B
from workbench.backends import vllm as vllm_backend

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gsm8k.jsonl"


@pytest.mark.parametrize(
    "response, expected",
    [
        ("3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("First 12, then #### 5. Later I think the answer is 6", "5"),  # the marked answer wins
        ("So the answer is: $18.00.", "18"),
        ("The answer is **42**", "42"),
        ("She has 3 apples, then 10, then 2.5", "2.5"),  # no marker: the last number
        ("It drops to -3 degrees", "-3"),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert B.extract_answer(response) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("$1,200", "1200"), ("18.50", "18.5"), ("7.", "7"), ("0.125", "0.125"), ("abc", None), ("", None)],
)
def test_normalize_number(text, expected):
    assert B.normalize_number(text) == expected


def test_load_gsm8k_reads_the_final_number_of_each_reference_solution():
    problems = B.load_gsm8k(FIXTURE)
    assert problems["reference"] == ["7", "60", "12", "2000", "105", "3"]
    assert len(B.load_gsm8k(FIXTURE, max_rows=2)) == 2
    with pytest.raises(ValueError, match="max_rows=0"):
        B.load_gsm8k(FIXTURE, max_rows=0)


@pytest.mark.parametrize(
    "row, match",
    [
        ({"question": "How many?", "answer": "It is 4."}, r"row 1: GSM8K answer .* has no final '#### <number>'"),
        ({"question": " ", "answer": "#### 4"}, "row 1 of .* has an empty question"),
        ({"prompt": "How many?", "answer": "#### 4"}, r"lacks GSM8K's columns \['question'\]"),
    ],
)
def test_bad_gsm8k_rows_are_errors_that_name_them(row, match, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = (
        {"question": "Two plus two?", "answer": "#### 4"} if "question" in row else {"prompt": "x", "answer": "#### 1"}
    )
    path.write_text("\n".join(json.dumps(r) for r in (good, row)) + "\n")
    with pytest.raises(ValueError, match=match):
        B.load_gsm8k(path)


def _gym_problems(n=12):
    """Gym questions with one-number answers (add / max / min) in GSM8K's format."""
    from workbench.gym.world import make_prompts

    prompts = make_prompts(n, "test", 0, tasks=["add", "max", "min"])
    rows = datasets.Dataset.from_dict(
        {"question": [p.text for p in prompts], "answer": [f"{p.text} gives\n#### {p.answer[0]}" for p in prompts]}
    )
    return rows.add_column("reference", [B.reference_answer(a) for a in rows["answer"]]), prompts


def test_gsm8k_accuracy_scores_each_greedy_answer_against_its_reference(tiny_models):
    from workbench.gym.world import gold_reward

    problems, prompts = _gym_problems()
    model, tokenizer = tiny_models["student"]
    result = B.gsm8k_accuracy(model, tokenizer, problems, instruction="{question}", max_new_tokens=8)
    assert result["measurement"] == "exact-match" and result["problems"] == len(problems)
    assert result["accuracy"]["mean"] == pytest.approx(sum(result["correct"]) / len(problems))
    assert result["no_answer"] == sum(p is None for p in result["predicted"])
    for prompt, response, predicted, correct in zip(
        prompts, result["responses"], result["predicted"], result["correct"]
    ):
        assert predicted == B.extract_answer(response)
        assert correct == (predicted == str(prompt.answer[0]))
        if response.strip().isdigit():  # a bare number: right exactly when the gold reward is full
            assert correct == (gold_reward(prompt, response) == 1.0)
    with pytest.raises(ValueError, match=r"must contain '\{question\}'"):
        B.gsm8k_accuracy(model, tokenizer, problems, instruction="Solve it.")


def test_paired_difference_counts_the_problems_each_model_alone_gets_right():
    diff = B.paired_difference([True, True, False, True], [True, False, True, False])
    assert diff["mean"] == pytest.approx(0.25) and (diff["only_a"], diff["only_b"]) == (2, 1) and diff["n"] == 4
    with pytest.raises(ValueError, match="same problems"):
        B.paired_difference([True], [True, False])


def test_cli_gsm8k_reports_each_model_and_its_paired_difference(tiny_gym, tmp_path, capsys):
    out = tmp_path / "gsm8k.json"
    B.main(
        [
            "gsm8k",
            "--model",
            "gym-tiny-student",
            "--model",
            "gym-tiny-teacher-dpo",
            "--source",
            str(FIXTURE),
            "--instruction",
            "{question}",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 6 and set(summary["models"]) == {"gym-tiny-student", "gym-tiny-teacher-dpo"}
    saved = json.loads(out.read_text())
    student = [p["correct"] for p in saved["per_problem"]["gym-tiny-student"]]
    teacher = [p["correct"] for p in saved["per_problem"]["gym-tiny-teacher-dpo"]]
    assert summary["paired_vs_first"]["gym-tiny-teacher-dpo"] == B.paired_difference(teacher, student)
    assert summary["models"]["gym-tiny-student"]["accuracy"]["mean"] == pytest.approx(sum(student) / 6)


def test_alpaca_eval_outputs_answer_every_instruction_in_its_format(tiny_gym, tmp_path, capsys):
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps([{"instruction": "sort 3 1 2"}, {"instruction": "add 2 5"}]))
    assert B.load_alpaca_eval(source) == ["sort 3 1 2", "add 2 5"]
    out = tmp_path / "outputs.json"
    B.main(
        [
            "alpaca-eval",
            "--model",
            "gym-tiny-teacher-dpo",
            "--source",
            str(source),
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    rows = json.loads(out.read_text())
    assert [r["instruction"] for r in rows] == ["sort 3 1 2", "add 2 5"]
    assert all(r["generator"] == "gym-tiny-teacher-dpo" and isinstance(r["output"], str) for r in rows)
    assert printed["judge_with"] == f"alpaca_eval evaluate --model_outputs {out}"
    source.write_text(json.dumps([{"instruction": "sort 3 1 2"}, {"instruction": ""}]))
    with pytest.raises(ValueError, match=r"rows \[1\] of .* have an empty instruction"):
        B.load_alpaca_eval(source)


def test_cli_gsm8k_through_vllm_serves_each_model_without_loading_it(
    tiny_gym, stand_in_vllm, tmp_path, capsys, monkeypatch
):
    """``--backend vllm``: each model is served by an engine built with ``--vllm-options`` from its folder, never
    loaded into the process (its GPU memory is the engine's), and released before the next model's engine."""
    from workbench import models

    loaded = []
    monkeypatch.setattr(models, "load", lambda name, **kw: loaded.append(name))
    B.main(
        [
            "gsm8k",
            "--model",
            "gym-tiny-student",
            "--model",
            "gym-tiny-teacher-dpo",
            "--source",
            str(FIXTURE),
            "--instruction",
            "{question}",
            "--max-new-tokens",
            "8",
            "--backend",
            "vllm",
            "--vllm-options",
            '{"max_model_len": 512}',
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert loaded == [] and summary["problems"] == 6
    assert [e.kwargs for e in stand_in_vllm.engines] == [
        {"model": models.resolve(name), "seed": 0, "max_model_len": 512}
        for name in ("gym-tiny-student", "gym-tiny-teacher-dpo")
    ]
    assert vllm_backend._VLLM_ENGINES == {}
    with pytest.raises(SystemExit):
        B.main(
            [
                "gsm8k",
                "--model",
                "gym-tiny-student",
                "--source",
                str(FIXTURE),
                "--vllm-options",
                '{"max_model_len": 512}',
            ]
        )
    assert "--vllm-options applies to --backend vllm only" in capsys.readouterr().err
