"""experiments/gym_judge.py (issue 2's judge experiment) runs on the tiny gym, and its verdict labels sit where they
should: the token after each option letter is labelled with that option's gold digit, nothing else changes."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gym_judge():
    spec = importlib.util.spec_from_file_location("gym_judge", ROOT / "experiments" / "gym_judge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdict_labels_follow_each_option_letter(gym_judge, tiny_models):
    import random

    from workbench.encoding import McqTemplate
    from workbench.gym.world import make_prompts

    _, tok = tiny_models["teacher-dpo"]
    template = McqTemplate(*gym_judge.LAYOUTS["restate"])
    rows = gym_judge.judge_rows(template, make_prompts(3, "train", seed=0), (3, 3), random.Random(0))
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    plain = gym_judge.VerdictCollator(tok, template, verdicts=False)(rows)
    judged = gym_judge.VerdictCollator(tok, template, verdicts=True)(rows)
    letters = {tok.convert_tokens_to_ids(letter) for letter in "ABC"}
    for b, row in enumerate(rows):
        ids = plain["input_ids"][b].tolist()
        changed = (judged["labels"][b] != plain["labels"][b]).nonzero().flatten().tolist()
        assert len(changed) == 3 and all(ids[t - 1] in letters for t in changed)
        assert tok.convert_ids_to_tokens(judged["labels"][b, changed].tolist()) == [str(v) for v in row["verdicts"]]
        # the answer letter (and eos) stay trained as before
        answer = (plain["labels"][b] != -100).nonzero().flatten()
        assert len(answer) == 2 and (judged["labels"][b, answer] == plain["labels"][b, answer]).all()


def test_the_experiment_runs_on_the_tiny_gym_and_reports_measured_correlations(gym_judge, tiny_gym):
    out = gym_judge.run(size="tiny", layout="restate", verdicts=True, steps=2, train_rows=16, test_prompts=8)
    for sets in ("judge_mix_sets", "student_sets"):
        assert -1 <= out[sets]["spearman"] <= 1 and 0 <= out[sets]["top1_accuracy"] <= 1
    assert -1 <= out["student_sets_likelihood_spearman"] <= 1 and out["train_seconds"] > 0
    with pytest.raises(ValueError, match="--verdicts needs"):
        gym_judge.run(size="tiny", layout="before", verdicts=True, steps=0)
