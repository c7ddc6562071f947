"""Benchmark of the exact PPD loss (PAD Eqs. 11-12) against a naive per-ranking Python loop, and of the
Monte-Carlo estimator against the exact value. Prints one JSON object.

    python bench/bench_ppd.py            # full run (~1-2 min on 2 CPU cores)
    python bench/bench_ppd.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time

import torch

from workbench.losses import pad as P

LN2 = math.log(2.0)


_MIN_MS: dict = {}  # fastest repeat of the last call per label (a shared machine inflates medians, not minima)


def _median_ms(fn, repeats: int, warmup: int = 3, label: str | None = None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if label is not None:
        _MIN_MS[label] = round(1e3 * min(times), 2)
    return 1e3 * statistics.median(times)


def _rewards(batch: int, n: int, seed: int = 0):
    """Teacher rewards spread like average log-likelihoods of sampled responses; the student a noisy copy."""
    generator = torch.Generator().manual_seed(seed)
    teacher = 0.2 * torch.randn(batch, n, generator=generator)
    student = teacher + 0.15 * torch.randn(batch, n, generator=generator)
    return student, teacher


def naive_ppd(student_rewards, teacher_rewards, beta=P.PAD_BETA, rankings=None):
    """Eq. 12 by a Python loop over rankings (batched over prompts); `rankings` restricts the loop to a subset,
    giving that subset's share of the JSD sum."""
    batch, n = student_rewards.shape
    teacher_scores, student_scores = beta * teacher_rewards.detach(), beta * student_rewards
    rankings = [torch.tensor(r).expand(batch, n) for r in (rankings or itertools.permutations(range(n)))]
    jsd = student_rewards.new_zeros(batch)
    for ranking in rankings:
        log_p = P.plackett_luce_logprob(teacher_scores, ranking)
        log_q = P.plackett_luce_logprob(student_scores, ranking)
        log_m = torch.logaddexp(log_p, log_q) - LN2
        jsd = jsd + 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))
    return jsd


def dense_gather_ppd(student_rewards, teacher_rewards, beta=P.PAD_BETA):
    """Eq. 12 with a (B, n!, n) gather of all rankings and a reverse logcumsumexp (the direct vectorisation)."""
    batch, n = student_rewards.shape
    rankings = P.all_rankings(n).expand(batch, -1, -1)
    log_p = P.plackett_luce_logprob((beta * teacher_rewards.detach())[:, None, :], rankings)
    log_q = P.plackett_luce_logprob((beta * student_rewards)[:, None, :], rankings)
    log_m = torch.logaddexp(log_p, log_q) - LN2
    return 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)


def _forward_backward(loss_fn, student, teacher):
    def run():
        leaf = student.detach().requires_grad_()
        loss_fn(leaf, teacher).mean().backward()

    return run


def bench_exact(batch: int, n: int, repeats: int, naive_subset: int) -> dict:
    student, teacher = _rewards(batch, n)
    exact_ms = _median_ms(_forward_backward(P.ppd_loss, student, teacher), repeats, label="exact")
    exact_forward_ms = _median_ms(lambda: P.ppd_loss(student, teacher), repeats)
    dense_ms = _median_ms(_forward_backward(dense_gather_ppd, student, teacher), max(3, repeats // 10), warmup=1)

    # naive loop: agreement checked on all n! rankings at n = 5, timed on a subset at n and extrapolated
    small_s, small_t = _rewards(4, 5, seed=1)
    naive_error = (
        (
            naive_ppd(small_s.double(), small_t.double())
            - P.ppd_loss(small_s.double(), small_t.double(), reduction="none")
        )
        .abs()
        .max()
        .item()
    )
    total = math.factorial(n)
    subset = list(itertools.islice(itertools.permutations(range(n)), min(naive_subset, total)))
    naive_subset_ms = _median_ms(
        _forward_backward(lambda s, t: naive_ppd(s, t, rankings=subset), student, teacher), 3, warmup=1
    )
    naive_ms = naive_subset_ms * total / len(subset)
    exact_float64 = P.ppd_loss(student.double(), teacher.double(), reduction="none")
    return {
        "n": n,
        "batch": batch,
        "dtype": "float32",
        "exact_ppd_forward_backward_ms_median": round(exact_ms, 2),
        "exact_ppd_forward_backward_ms_min": _MIN_MS["exact"],
        "exact_ppd_forward_only_ms_median": round(exact_forward_ms, 2),
        "exact_ppd_repeats": repeats,
        "exact_float32_vs_float64_max_abs_diff": float(
            (P.ppd_loss(student, teacher, reduction="none").double() - exact_float64).abs().max()
        ),
        "dense_gather_forward_backward_ms_median": round(dense_ms, 1),
        "naive_loop_forward_backward_ms": round(naive_ms, 1),
        "naive_loop_extrapolated": len(subset) < total,
        "naive_loop_timed_rankings": len(subset),
        "naive_loop_total_rankings": total,
        "naive_loop_note": (
            f"timed the Python loop over the first {len(subset)} of {total} rankings (forward + "
            f"backward, median of 3) and scaled linearly by {total / len(subset):.2f}"
        )
        if len(subset) < total
        else "timed on all rankings",
        "naive_vs_exact_max_abs_diff_n5_float64": naive_error,
        "speedup_vs_naive": round(naive_ms / exact_ms, 1),
        "speedup_vs_dense_gather": round(dense_ms / exact_ms, 1),
        "goal_speedup_at_least_50x": naive_ms / exact_ms >= 50.0,
        "goal_under_50_ms": exact_ms < 50.0,
    }


def bench_mc(batch: int, ns, sample_sizes, seeds: int, repeats: int) -> list:
    rows = []
    for n in ns:
        student, teacher = _rewards(batch, n, seed=2)
        leaf = student.double().requires_grad_()
        exact = P.ppd_loss(leaf, teacher.double())
        (grad_exact,) = torch.autograd.grad(exact, leaf)
        exact_ms = _median_ms(_forward_backward(P.ppd_loss, student, teacher), repeats, label="exact_mc")
        for estimator in ("mixture", "split"):
            for k in sample_sizes:
                rel_errors, per_example_errors, cosines = [], [], []
                for seed in range(seeds):
                    generator = torch.Generator().manual_seed(seed)
                    leaf = student.double().requires_grad_()
                    mc = P.ppd_loss_mc(
                        leaf,
                        teacher.double(),
                        num_samples=k,
                        generator=generator,
                        estimator=estimator,
                        reduction="none",
                    )
                    (grad_mc,) = torch.autograd.grad(mc.mean(), leaf)
                    exact_rows = P.ppd_loss(student.double(), teacher.double(), reduction="none")
                    rel_errors.append(abs(mc.mean().item() - exact.item()) / exact.item())
                    per_example_errors.append(((mc - exact_rows).abs() / exact_rows).mean().item())
                    cosines.append(float((grad_mc * grad_exact).sum() / (grad_mc.norm() * grad_exact.norm())))
                mc_ms = _median_ms(
                    _forward_backward(
                        lambda s, t: P.ppd_loss_mc(s, t, num_samples=k, estimator=estimator), student, teacher
                    ),
                    repeats,
                    label="mc",
                )
                rows.append(
                    {
                        "n": n,
                        "estimator": estimator,
                        "num_samples": k,
                        "batch": batch,
                        "exact_value": round(exact.item(), 5),
                        "batch_mean_rel_error_mean": round(statistics.mean(rel_errors), 4),
                        "per_example_rel_error_mean": round(statistics.mean(per_example_errors), 4),
                        "grad_cosine_vs_exact_mean": round(statistics.mean(cosines), 4),
                        "grad_cosine_vs_exact_min": round(min(cosines), 4),
                        "mc_forward_backward_ms_median": round(mc_ms, 2),
                        "mc_forward_backward_ms_min": _MIN_MS["mc"],
                        "exact_forward_backward_ms_median": round(exact_ms, 2),
                        "exact_forward_backward_ms_min": _MIN_MS["exact_mc"],
                        "seeds": seeds,
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and seeds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats = 7 if args.quick else 30
    load_before = os.getloadavg()[0]
    result = {
        "benchmark": "PAD PPD loss (Eqs. 11-12): exact vs naive loop, Monte-Carlo vs exact",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "beta": P.PAD_BETA,
        "rewards": "teacher 0.2*N(0,1), student = teacher + 0.15*N(0,1)",
        "exact": bench_exact(batch=128, n=8, repeats=repeats, naive_subset=2000),
        "monte_carlo": bench_mc(
            batch=128,
            ns=(6, 8),
            sample_sizes=(64, 256, 1024),
            seeds=3 if args.quick else 5,
            repeats=3 if args.quick else 7,
        ),
    }
    # other processes on a shared 2-core machine inflate the medians; record how busy it was
    result["load_average_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
