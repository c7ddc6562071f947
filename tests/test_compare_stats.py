"""The comparison's statistics on data with a known answer: the paired bootstrap over seeds and prompts (its width
against the analytic standard error, coverage, pairing, reproducibility), the t interval over seeds, the claims'
p-values against their verdicts, and Holm's adjustment against its definition."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from workbench.compare import verdict
from workbench.compare.stats import (
    BOOTSTRAP,
    BOOTSTRAP_SAMPLES,
    T_OVER_SEEDS,
    claim_p_value,
    holm,
    paired_bootstrap,
    resample_counts,
    seed_t_interval,
)
from workbench.evaluate import mean_ci

Z = norm.ppf(0.975)


def _width(difference):
    return difference.high - difference.low


def test_resample_counts_draw_each_factor_with_replacement():
    seeds, prompts = resample_counts(5, 7, 200, 3)
    assert seeds.shape == (200, 5) and prompts.shape == (200, 7)
    assert (seeds.sum(1) == 5).all() and (prompts.sum(1) == 7).all()
    assert (seeds >= 0).all() and (seeds == 0).any()  # with replacement: some seeds left out of a resample
    assert np.mean(seeds) == pytest.approx(1.0) and np.mean(prompts) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        seeds[0, 0] = 2.0  # shared by every difference of these sizes: read-only


def test_prompts_carrying_all_the_variance_give_the_standard_error_over_prompts():
    """Prompts are crossed with seeds: one prompt draw serves every seed, so a prompt effect shared by all seeds keeps
    its full standard error σ/√P (a draw per seed would shrink it by √K)."""
    rng = np.random.default_rng(1)
    per_prompt = rng.normal(0.0, 0.2, size=128)  # (P,)
    a = np.tile(0.05 + per_prompt, (10, 1))  # (K, P): the same in every seed
    b = np.zeros_like(a)
    difference = paired_bootstrap(a, b)
    se = per_prompt.std() / math.sqrt(128)  # the bootstrap's plug-in SE (ddof 0)
    assert difference.interval == BOOTSTRAP and difference.n_seeds == 10 and difference.n_prompts == 128
    assert difference.effect == pytest.approx(a.mean())
    assert _width(difference) == pytest.approx(2 * Z * se, rel=0.05)
    assert np.std(difference.draws) == pytest.approx(se, rel=0.03)


def test_seeds_carrying_all_the_variance_give_the_standard_error_over_seeds():
    rng = np.random.default_rng(2)
    per_seed = rng.normal(0.0, 0.05, size=40)  # (K,)
    a = np.repeat(per_seed[:, None], 64, axis=1)  # (K, P): one value per seed
    difference = paired_bootstrap(a, np.zeros_like(a))
    assert np.std(difference.draws) == pytest.approx(per_seed.std() / math.sqrt(40), rel=0.03)


def test_seed_and_prompt_variances_add():
    rng = np.random.default_rng(3)
    per_seed, per_prompt = rng.normal(0, 0.03, size=(30, 1)), rng.normal(0, 0.2, size=(1, 128))
    a = per_seed + per_prompt  # (K, P)
    expected = math.sqrt(per_seed.var() / 30 + per_prompt.var() / 128)
    assert np.std(paired_bootstrap(a, np.zeros_like(a)).draws) == pytest.approx(expected, rel=0.05)


def test_a_true_zero_difference_is_covered_and_a_large_effect_is_not():
    rng = np.random.default_rng(4)
    prompt_effect = rng.normal(0.7, 0.2, size=(1, 128))  # shared by both arms and every seed: cancels in a − b
    a = prompt_effect + rng.normal(0, 0.1, size=(10, 128)) + rng.normal(0, 0.01, size=(10, 1))
    b = prompt_effect + rng.normal(0, 0.1, size=(10, 128)) + rng.normal(0, 0.01, size=(10, 1))
    null = paired_bootstrap(a, b)
    assert null.low < 0 < null.high and claim_p_value("greater", null) > 0.05
    assert verdict("greater", null.low, null.high, math.nan) == "inconclusive"
    large = paired_bootstrap(a + 0.05, b)
    assert large.low > 0 and large.effect == pytest.approx(null.effect + 0.05)
    assert claim_p_value("greater", large) == pytest.approx(2 / (BOOTSTRAP_SAMPLES + 1))  # no draw ≤ 0
    assert verdict("greater", large.low, large.high, math.nan) == "holds"


def test_the_interval_covers_a_true_zero_about_95_percent_of_the_time():
    """Prompts drawn afresh from a population whose mean difference is 0 (with seed and seed × prompt noise)."""
    rng = np.random.default_rng(5)
    covered = []
    for _ in range(300):
        d = rng.normal(0, 0.1, (1, 128)) + rng.normal(0, 0.005, (10, 1)) + rng.normal(0, 0.05, (10, 128))
        difference = paired_bootstrap(d, np.zeros_like(d), samples=1000)
        covered.append(difference.low <= 0 <= difference.high)
    assert 0.9 <= np.mean(covered) <= 0.99


def test_seed_by_prompt_noise_alone_is_counted_about_three_times():
    """The known price of resampling both crossed factors: noise of each (seed, prompt) cell also moves the row and
    column means the bootstrap draws, so its variance enters about 3 times (the interval is conservative by up to
    √3 in width where that noise dominates; prompt and seed effects enter once)."""
    rng = np.random.default_rng(12)
    ratios = []
    for _ in range(20):
        noise = rng.normal(0, 0.1, size=(10, 128))
        ratios.append(np.var(paired_bootstrap(noise, np.zeros_like(noise)).draws) / (noise.var() / noise.size))
    assert np.mean(ratios) == pytest.approx(3.0, rel=0.15)


def test_identical_arms_give_a_zero_width_interval_and_p_one():
    scores = np.random.default_rng(6).uniform(size=(10, 128))
    difference = paired_bootstrap(scores, scores.copy())
    assert difference.effect == difference.low == difference.high == 0.0 and difference.half_width == 0.0
    assert claim_p_value("greater", difference) == 1.0


def test_pairing_cancels_what_both_arms_share_and_a_shift_moves_the_interval():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(size=(2, 8, 64))
    shared = rng.normal(0, 1.0, size=(8, 64))  # a seed × prompt effect common to both arms
    base = paired_bootstrap(a, b)
    assert paired_bootstrap(a + shared, b + shared).draws == pytest.approx(base.draws)
    shifted = paired_bootstrap(a + 0.1, b)
    assert (shifted.low, shifted.high) == pytest.approx((base.low + 0.1, base.high + 0.1))


def test_a_fixed_seed_reproduces_the_interval_and_another_seed_nearly_does():
    rng = np.random.default_rng(8)
    a, b = rng.uniform(size=(2, 10, 128))
    first, again = paired_bootstrap(a, b, seed=11), paired_bootstrap(a, b, seed=11)
    assert (first.low, first.high) == (again.low, again.high) and np.array_equal(first.draws, again.draws)
    other = paired_bootstrap(a, b, seed=12)
    assert not np.array_equal(other.draws, first.draws)
    assert (other.low, other.high) == pytest.approx((first.low, first.high), abs=0.05 * _width(first))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.zeros(4), np.zeros(4))


def test_the_seed_t_interval_is_mean_ci_of_the_differences():
    a, b = [0.5, 0.6, 0.7], [0.4, 0.4, 0.5]
    difference = seed_t_interval(a, b)
    stats = mean_ci(np.subtract(a, b))
    assert difference.interval == T_OVER_SEEDS and difference.effect == pytest.approx(stats["mean"])
    assert difference.half_width == pytest.approx(stats["ci95"])
    assert (difference.low, difference.high) == pytest.approx(
        (stats["mean"] - stats["ci95"], stats["mean"] + stats["ci95"])
    )
    assert math.isnan(seed_t_interval([0.5], [0.4]).low)  # one seed: no interval
    assert math.isnan(claim_p_value("greater", seed_t_interval([0.5], [0.4])))
    same = seed_t_interval([0.75, 0.5], [0.5, 0.25])  # identical differences: zero width
    assert same.half_width == 0 and claim_p_value("greater", same) == 0.0


@pytest.mark.parametrize("kind", ["greater", "less", "equivalent", "at_most"])
def test_a_claim_is_decided_exactly_where_its_p_is_below_5_percent(kind):
    """On the t interval, whose tails are exact: the verdict's rule on the 95% interval and p < 0.05 agree."""
    rng = np.random.default_rng(9)
    margin = 0.03
    for _ in range(300):
        diffs = rng.normal(rng.uniform(-0.06, 0.06), rng.uniform(0.001, 0.04), size=int(rng.integers(3, 12)))
        difference = seed_t_interval(diffs, np.zeros_like(diffs))
        decided = verdict(kind, difference.low, difference.high, margin) != "inconclusive"
        assert decided == (claim_p_value(kind, difference, margin) < 0.05)


def test_the_bootstrap_p_agrees_with_its_interval_away_from_the_boundary():
    rng = np.random.default_rng(10)
    for shift in (-0.04, -0.01, 0.0, 0.01, 0.02, 0.05):
        a = rng.normal(0.5 + shift, 0.1, size=(10, 128)) + rng.normal(0, 0.01, size=(10, 1))
        difference = paired_bootstrap(a, np.full_like(a, 0.5))
        for kind in ("greater", "equivalent", "at_most"):
            p = claim_p_value(kind, difference, 0.03)
            if abs(p - 0.05) > 0.01:
                assert (verdict(kind, difference.low, difference.high, 0.03) != "inconclusive") == (p < 0.05)


def _holm_by_definition(p):
    """Holm's adjusted p_i: the smallest family-wise level at which the step-down procedure rejects H_i."""
    m = len(p)
    out = []
    for i in range(m):
        order = sorted(range(m), key=lambda j: p[j])
        rank = order.index(i)
        out.append(min(1.0, max(min(1.0, (m - k) * p[order[k]]) for k in range(rank + 1))))
    return out


def test_holm_matches_its_definition_and_leaves_missing_tests_out():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(11)
    for m in (1, 2, 5, 14):
        p = rng.uniform(0, 0.2, size=m).tolist()
        assert holm(p) == pytest.approx(_holm_by_definition(p))
    adjusted = holm([0.01, float("nan"), 0.02])
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx([0.02, 0.02])
    for p in itertools.product((0.001, 0.02, 0.5), repeat=3):  # never below the unadjusted p, never above 1
        assert all(p[i] <= q <= 1 for i, q in enumerate(holm(p)))
