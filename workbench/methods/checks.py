"""Checks every method config runs when it is made, so a bad value fails before sampling, scoring and training
rather than at the first step or after training (each error names the setting and what it would cause)."""

from __future__ import annotations


def check_run_sizes(cfg, *, batch: str = "batch_size") -> None:
    """``train_prompts``, ``eval_prompts``, ``eval_samples`` and the batch size (field ``batch``) are ≥ 1."""
    consequences = {
        "train_prompts": "there would be nothing to train on",
        "eval_prompts": "the run would train and then fail to evaluate, losing its metrics",
        "eval_samples": "the run would train and then fail to evaluate, losing its metrics",
        batch: "no optimizer step could be taken",
    }
    for name, consequence in consequences.items():
        value = getattr(cfg, name, None)
        if value is not None and value < 1:
            raise ValueError(f"{name}={value}: {consequence}; use a positive number")


def check_sampling_temperature(cfg, n: int) -> None:
    """``temperature`` ≥ 0, and > 0 when ``n`` > 1 responses per prompt are ranked: greedy decoding gives n copies
    of one response, so the teacher's ranking of them carries no preference."""
    if cfg.temperature < 0:
        raise ValueError(f"temperature={cfg.temperature}; use a positive sampling temperature (0 = greedy)")
    if cfg.temperature == 0 and n > 1:
        raise ValueError(
            f"temperature=0 samples greedily: the n={n} responses per prompt would be identical and "
            f"their ranking would teach nothing; use temperature > 0 (PAD §4.1: 0.8)"
        )


def check_ranking_loss(loss: str, beta: float, group_size: int) -> None:
    """``beta`` > 0 (the Plackett-Luce scale, PAD Eq. 10-11) and, for the exact PPD, a group of at most
    ``MAX_EXACT_N`` responses (its JSD sums over all n! rankings)."""
    import math

    from workbench.losses.pad import MAX_EXACT_N

    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(
            f"beta={beta}; the Plackett-Luce reward scale must be a positive finite number (PAD Eq. 10-11; paper: 10)"
        )
    if loss == "ppd" and group_size > MAX_EXACT_N:
        raise ValueError(
            f"loss='ppd' with groups of {group_size} responses sums over {math.factorial(group_size):,} "
            f"rankings per prompt (limit n ≤ {MAX_EXACT_N}); use loss='ppd_mc' (Monte-Carlo JSD) or "
            f"decompose into groups with m ≤ {MAX_EXACT_N} (PAD §4.4)"
        )
