"""Paired intervals and p-values for the comparison: a bootstrap over seeds and prompts, a t interval over seeds where
a metric has one value per run, the p-value of a claim's test, and Holm's adjustment over a family of tests.

Every run of every label is evaluated on the same held-out prompts, so a difference a − b is a (seeds, prompts)
matrix whose prompt effects are shared by every seed: prompts and seeds are crossed, not nested. The bootstrap draws
seeds with replacement and, independently, prompts with replacement, and applies the one prompt draw to every drawn
seed and to both arms (paired by seed and by prompt). Drawing both factors of a crossed design counts the noise of
each (seed, prompt) cell about three times (it also moves the row and column means the draws weigh), so the interval
is conservative where that noise dominates (up to √3 wide; seed and prompt effects enter once); at 10 seeds the seed
part is a little narrow (the bootstrap's (K − 1)/K variance and normal rather than t quantiles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import t as student_t

BOOTSTRAP_SAMPLES = 10_000  # B: the percentile's Monte Carlo error is ~0.002 of the interval's width
BOOTSTRAP_SEED = 0
LEVEL = 0.95
BOOTSTRAP = "seeds × prompts (bootstrap)"
T_OVER_SEEDS = "seeds (t)"


@dataclass(frozen=True)
class Difference:
    """A paired difference a − b: its observed mean, a ``LEVEL`` interval [low, high] and how it was made.

    ``draws``: the bootstrap statistic per resample, (B,), for ``interval == BOOTSTRAP``; ``scale``: the standard
    error of the mean over seeds for ``interval == T_OVER_SEEDS`` (t with ``n_seeds − 1`` degrees of freedom)."""

    effect: float
    low: float
    high: float
    interval: str
    n_seeds: int
    n_prompts: int = 0
    draws: np.ndarray | None = None
    scale: float = math.nan

    @property
    def half_width(self) -> float:
        """(high − low) / 2: the ± of a symmetric error bar (figures)."""
        return (self.high - self.low) / 2

    def tails(self, x: float) -> tuple[float, float]:
        """(share of the difference's sampling distribution at or below x, share at or above x): for the bootstrap
        the draws' shares with the +1 of a Monte Carlo p-value, (#{δ* ≤ x} + 1) / (B + 1); for the t interval the
        t tails about the mean."""
        if self.interval == BOOTSTRAP:
            size = len(self.draws) + 1
            return float((np.sum(self.draws <= x) + 1) / size), float((np.sum(self.draws >= x) + 1) / size)
        if self.n_seeds < 2 or np.isnan(self.scale):
            return math.nan, math.nan
        if self.scale == 0:
            return float(self.effect <= x), float(self.effect >= x)
        z = (x - self.effect) / self.scale
        df = self.n_seeds - 1
        return float(student_t.cdf(z, df)), float(student_t.sf(z, df))


@lru_cache(maxsize=8)
def resample_counts(n_seeds: int, n_prompts: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed and each prompt is drawn in each of ``samples`` resamples with replacement.

    Returns:
        seed_counts: (B, n_seeds), each row summing to n_seeds; prompt_counts: (B, n_prompts), each row summing to
        n_prompts. Read-only; one draw per (sizes, B, seed), shared by every difference of those sizes.
    """
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_seeds, n_prompts):
        picks = rng.integers(0, n, size=(samples, n))  # (B, n) drawn indices
        rows = np.repeat(np.arange(samples) * n, n)
        counts = np.bincount(rows + picks.ravel(), minlength=samples * n).reshape(samples, n).astype(float)
        counts.setflags(write=False)
        out.append(counts)
    return out[0], out[1]


def paired_bootstrap(
    a_scores: np.ndarray,
    b_scores: np.ndarray,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Difference:
    """Mean difference a − b over seeds and prompts and its percentile bootstrap interval, seeds and prompts resampled.

    $\\delta^* = \\frac{1}{KP} \\sum_k \\sum_i w_k v_i (a_{ki} - b_{ki})$ with seed counts $w \\sim$ Mult(K, 1/K) and
    prompt counts $v \\sim$ Mult(P, 1/P) drawn independently (the same $v$ for every seed and both arms).

    Args:
        a_scores: (seeds, prompts) per-prompt scores of arm a; row k is seed k, column i prompt i.
        b_scores: (seeds, prompts) of arm b on the same seeds and prompts.
        samples: B resamples; seed: the generator's seed (the same draws for every difference of the same sizes).
    Returns:
        a :class:`Difference` with ``interval == BOOTSTRAP`` and its B draws.
    """
    a, b = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"paired_bootstrap needs two (seeds, prompts) arrays of one shape; got {a.shape}, {b.shape}")
    diff = a - b  # (K, P)
    n_seeds, n_prompts = diff.shape
    seed_counts, prompt_counts = resample_counts(n_seeds, n_prompts, samples, seed)
    # $\delta^*_b = w_b^\top D v_b / (KP)$
    draws = np.einsum("bp,bp->b", seed_counts @ diff, prompt_counts) / (n_seeds * n_prompts)  # (B,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Difference(
        effect=float(diff.mean()),
        low=float(low),
        high=float(high),
        interval=BOOTSTRAP,
        n_seeds=n_seeds,
        n_prompts=n_prompts,
        draws=draws,
    )


def seed_t_interval(a_values: Sequence[float], b_values: Sequence[float], *, level: float = LEVEL) -> Difference:
    """Mean of the per-seed differences a − b and its Student-t interval over seeds: for a metric with one value per
    run (wall time), where there are no prompts to resample.

    $\\bar d \\pm t_{K-1} \\, s_d / \\sqrt{K}$. One seed: no interval (nan)."""
    diffs = np.asarray(a_values, dtype=float) - np.asarray(b_values, dtype=float)  # (K,)
    n = len(diffs)
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, T_OVER_SEEDS, 0)
    effect = float(diffs.mean())
    if n < 2:
        return Difference(effect, math.nan, math.nan, T_OVER_SEEDS, n)
    scale = float(diffs.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * scale)
    return Difference(effect, effect - half, effect + half, T_OVER_SEEDS, n, scale=scale)


def claim_p_value(kind: str, difference: Difference, margin: float = math.nan) -> float:
    """The p-value of the test that decides a claim (holds or does not hold), on the scale of its verdict: the claim
    is decided by the 95% interval exactly when this p is below 0.05 (up to the bootstrap's Monte Carlo error).

    ``greater`` / ``less``: two-sided against 0, $2 \\min(P(\\delta^* \\le 0), P(\\delta^* \\ge 0))$.
    ``at_most`` (a − b < margin): two-sided against the margin, $2 \\min(P(\\delta^* \\le m), P(\\delta^* \\ge m))$.
    ``equivalent`` (|a − b| < margin): the smaller of TOST against ±m, $2 \\max(P(\\delta^* \\le -m),
    P(\\delta^* \\ge m))$ (holds), and of the test that the difference lies outside ±m,
    $2 \\min(P(\\delta^* \\le m), P(\\delta^* \\ge -m))$ (does not hold); each side at 2.5%, as the interval.
    """
    if kind in ("greater", "less"):
        le, ge = difference.tails(0.0)
        p = 2 * min(le, ge)
    elif kind == "at_most":
        le, ge = difference.tails(margin)
        p = 2 * min(le, ge)
    elif kind == "equivalent":
        le_low, ge_low = difference.tails(-margin)
        le_high, ge_high = difference.tails(margin)
        p = min(2 * max(le_low, ge_high), 2 * min(le_high, ge_low))
    else:
        raise ValueError(f"unknown claim kind {kind!r}")
    return float(min(1.0, p)) if not np.isnan(p) else math.nan


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (nan entries are not in the family and stay nan).

    With the m p-values sorted, $\\tilde p_{(j)} = \\max_{i \\le j} \\min(1, (m - i + 1) \\, p_{(i)})$; rejecting
    where $\\tilde p < 0.05$ keeps the family-wise error at 5%.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out
