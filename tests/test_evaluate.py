"""Per-set rank agreement: Spearman and Kendall share one skip rule for sets without a ranking; the local judge asks
in the wording saved beside it."""

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from workbench.evaluate import mean_kendall_tau, mean_spearman


def test_per_set_rank_correlations_match_scipy_and_skip_constant_sets():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.1, 0.9, 0.3]])
    b = np.array([[1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    rho, tau = mean_spearman(a, b), mean_kendall_tau(a, b)
    assert rho["skipped_sets"] == tau["skipped_sets"] == 2 and rho["n"] == 2
    assert np.isclose(rho["mean"], np.mean([spearmanr(a[i], b[i]).statistic for i in (0, 1)]))
    assert np.isclose(tau["mean"], np.mean([kendalltau(a[i], b[i]).statistic for i in (0, 1)]))


def test_judge_win_rate_asks_the_judge_in_the_wording_saved_beside_it(tiny_models, tmp_path):
    from workbench.cache import StageCache
    from workbench.encoding import DEFAULT_MCQ_TEMPLATE, save_mcq_template
    from workbench.evaluate import judge_win_rate
    from workbench.gym.world import MCQ_LAYOUTS
    from workbench.scoring import mcq_selection_logprobs

    judge, tok = tiny_models["teacher-dpo"]
    prompts, a, b = ["sort 2 1", "max 3 7"], ["1 2", "7"], ["2 1", "3"]
    tok = type(tok).from_pretrained(tok.name_or_path)  # a copy whose folder we can point elsewhere
    tok.name_or_path = str(tmp_path)
    save_mcq_template(MCQ_LAYOUTS["restate"], tmp_path)
    saved = judge_win_rate(judge, tok, prompts, a, b)
    p_a = {
        name: mcq_selection_logprobs(
            judge,
            tok,
            prompts,
            [[x, y] for x, y in zip(a, b)],
            template=t,
            order="cyclic",
            cache=StageCache(enabled=False),
        )[:, 0]
        .exp()
        .mean()
        .item()
        for name, t in (("restate", MCQ_LAYOUTS["restate"]), ("default", DEFAULT_MCQ_TEMPLATE))
    }
    assert saved["mean_p_a"] == pytest.approx(p_a["restate"], abs=1e-6)
    assert judge_win_rate(judge, tok, prompts, a, b, template=DEFAULT_MCQ_TEMPLATE)["mean_p_a"] == pytest.approx(
        p_a["default"], abs=1e-6
    )
    assert p_a["restate"] != pytest.approx(p_a["default"], abs=1e-6)  # the wording really changes the answer
