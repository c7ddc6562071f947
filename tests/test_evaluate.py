"""Per-set rank agreement: Spearman and Kendall share one skip rule for sets without a ranking."""

import numpy as np
from scipy.stats import kendalltau, spearmanr

from workbench.evaluate import mean_kendall_tau, mean_spearman


def test_per_set_rank_correlations_match_scipy_and_skip_constant_sets():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.1, 0.9, 0.3]])
    b = np.array([[1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    rho, tau = mean_spearman(a, b), mean_kendall_tau(a, b)
    assert rho["skipped_sets"] == tau["skipped_sets"] == 2 and rho["n"] == 2
    assert np.isclose(rho["mean"], np.mean([spearmanr(a[i], b[i]).statistic for i in (0, 1)]))
    assert np.isclose(tau["mean"], np.mean([kendalltau(a[i], b[i]).statistic for i in (0, 1)]))
