"""Evaluation: gold reward on the gym (or another prompt set with one), win rates, ranking agreement (Kendall τ), and
seed statistics.

On the gym every number is *measured* with the exact gold reward; so on ``verifiable`` prompts, whose gold reward a
program computes too (``workbench.data.PROMPT_PRESETS``: pass its ``gold_reward``). For real models without a gold
reward use a judge (:func:`judge_win_rate`), a different and weaker measurement, labelled as such in its output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr
from scipy.stats import t as student_t

from workbench.gym.world import Prompt, gold_reward
from workbench.metering import unmetered


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and the half-width of a Student-t confidence interval over ``values`` (e.g. seeds)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "ci95": float("nan"), "n": n}
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci95": half, "n": n}


GoldReward = Callable[[object, str], float]  # (prompt object or its text, response) -> gold in [0, 1]


def gold_rewards(
    prompts: Sequence[Prompt | str], responses: Sequence[str], gold_reward: GoldReward = gold_reward
) -> np.ndarray:
    """Gold reward of each (prompt, response) pair: (N,); ``gold_reward``: the prompts' set's (default: the gym's;
    ``PROMPT_PRESETS[name].gold_reward`` for another set)."""
    return np.array([gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)])


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of paired items where a beats b by gold reward, ties counting one half."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"win_rate needs paired scores; got shapes {a.shape} and {b.shape}")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def gold_ranked_pairs(prompts, mix: dict, rng, max_tries: int) -> list[dict]:
    """(x, y_w, y_l) per gym prompt: two answers drawn from ``mix`` until their gold rewards differ, the better one
    chosen; a prompt whose draws tie ``max_tries`` times is skipped. Rows: ``prompt`` (text), ``chosen``,
    ``rejected``, ``chosen_gold``, ``rejected_gold``."""
    from workbench.gym.world import sample_candidate

    rows = []
    for prompt in prompts:
        for _ in range(max_tries):
            a, b = sample_candidate(prompt, mix, rng), sample_candidate(prompt, mix, rng)
            gold_a, gold_b = gold_reward(prompt, a), gold_reward(prompt, b)
            if gold_a != gold_b:
                break
        else:
            continue
        if gold_a < gold_b:
            a, b, gold_a, gold_b = b, a, gold_b, gold_a
        rows.append({"prompt": prompt.text, "chosen": a, "rejected": b, "chosen_gold": gold_a, "rejected_gold": gold_b})
    return rows


# how a pair whose two answers score the same counts in reward accuracy
TIE_CREDITS = {"half": 0.5, "none": 0.0}


@unmetered()
def reward_accuracy(model, tokenizer, pairs, *, ties: str) -> float:
    """Fraction of pairs whose chosen answer has the higher per-token log-likelihood (PAD Eq. 7; ADPA §4.5).

    .. math:: \\mathrm{RA} = \\Pr\\Bigl[\\tfrac{1}{|y_w|}\\log\\pi_\\theta(y_w|x)
              > \\tfrac{1}{|y_l|}\\log\\pi_\\theta(y_l|x)\\Bigr]

    Args:
        pairs: rows with ``prompt``, ``chosen``, ``rejected`` (a list of dicts or a ``datasets.Dataset``).
        ties: ``"half"`` counts a tie as half a win (the comparison table, as :func:`win_rate`); ``"none"`` counts it
            as a loss (strictly higher, as the ADPA runs report it).
    """
    from workbench.scoring import avg_logp_rewards

    if ties not in TIE_CREDITS:
        raise ValueError(f"ties={ties!r}; use one of {sorted(TIE_CREDITS)}")
    columns = (
        pairs
        if hasattr(pairs, "column_names")
        else {k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")}
    )
    chosen = avg_logp_rewards(model, tokenizer, columns["prompt"], columns["chosen"])  # (N,)
    rejected = avg_logp_rewards(model, tokenizer, columns["prompt"], columns["rejected"])  # (N,)
    if ties == "half":
        return win_rate(chosen.numpy(), rejected.numpy())
    return float((chosen > rejected).float().mean())


def _mean_per_set(correlation, scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """Mean ± CI of ``correlation(a, b).statistic`` over response sets; constant sets are skipped (counted)."""
    values = []
    for a, b in zip(np.asarray(scores_a), np.asarray(scores_b)):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        values.append(correlation(a, b).statistic)
    return {**mean_ci(values), "skipped_sets": int(len(scores_a) - len(values))}


def mean_kendall_tau(scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """Mean per-set Kendall τ between two scorings of the same response sets: (sets, n) each.

    Sets on which either scoring is constant have no ranking and are skipped (their count is returned).
    """
    return _mean_per_set(kendalltau, scores_a, scores_b)


def mean_spearman(scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """Mean per-set Spearman ρ between two scorings of the same response sets: (sets, n) each (skips as above)."""
    return _mean_per_set(spearmanr, scores_a, scores_b)


@unmetered()
def evaluate_policy(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    n: int = 4,
    temperature: float = 0.8,
    seed: int = 0,
    max_new_tokens: int = 32,
    progress: bool = False,
    gold_reward: GoldReward = gold_reward,
) -> dict:
    """Sample ``n`` answers per held-out prompt and score them with the gold reward of the prompts' set
    (``gold_reward``; default: the gym's).

    Returns ``gold`` (mean ± CI over prompts of the per-prompt mean), the per-prompt means
    (``per_prompt``, for paired win rates), the mean response length in words, and the raw samples.
    """
    from workbench.sampling import sample_responses

    samples = sample_responses(
        model,
        tokenizer,
        [p.text for p in prompts],
        n=n,
        temperature=temperature,
        seed=seed,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    golds = gold_rewards([prompts[i] for i in samples["prompt_id"]], samples["response"], gold_reward)
    golds = golds.reshape(len(prompts), n)
    per_prompt = golds.mean(axis=1)
    return {
        "gold": mean_ci(per_prompt),
        "per_prompt": per_prompt.tolist(),
        "length": float(np.mean([len(r.split()) for r in samples["response"]])),
        "samples": samples,
    }


@unmetered()
def judge_win_rate(
    judge,
    tokenizer,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    template=None,
    seed: int = 0,
) -> dict:
    """Win rate of A over B by a local judge model's MCQ selection (both orders averaged).

    The judge is asked in ``template``, else in the wording saved beside it (``mcq_template.json``), else in the
    general wording. This is *not* a gold measurement: it inherits the judge's biases. Reported with
    ``measurement='judge'``.
    """
    from workbench.encoding import DEFAULT_MCQ_TEMPLATE, saved_mcq_template
    from workbench.scoring import mcq_selection_logprobs

    template = template or saved_mcq_template(tokenizer) or DEFAULT_MCQ_TEMPLATE
    pairs = [[a, b] for a, b in zip(responses_a, responses_b)]
    log_sel = mcq_selection_logprobs(
        judge, tokenizer, list(prompts), pairs, template=template, order="cyclic", seed=seed
    )
    p_a = log_sel[:, 0].exp().numpy()
    return {
        "measurement": "judge",
        "win_rate": float(np.mean(p_a > 0.5) + 0.5 * np.mean(p_a == 0.5)),
        "mean_p_a": float(p_a.mean()),
    }


def length_bucket_gains(
    after: Sequence[float], before: Sequence[float], lengths: Sequence[float], edges: Sequence[float]
) -> list[dict]:
    """Win rate of ``after`` over ``before`` per bucket of generation length (PLaD Fig. 3).

    ``after``/``before`` are paired per-prompt gold rewards, ``lengths`` the per-prompt length (words) that
    defines the buckets (PLaD: the student's generation length); bucket k is ``(edges[k], edges[k+1]]`` (the
    first also takes ``edges[0]`` itself). Each bucket reports its prompt count, ``win_rate`` (ties ½), the
    ``delta_win_rate`` = win rate − ½ (0 = no change against the initial student) and the mean gold gain.
    """
    after, before, lengths = (np.asarray(x, dtype=float) for x in (after, before, lengths))
    if not after.shape == before.shape == lengths.shape:
        raise ValueError(f"after {after.shape}, before {before.shape} and lengths {lengths.shape} must be paired")
    rows = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (lengths > low) & (lengths <= high) | ((lengths == low) & (k == 0))
        count = int(inside.sum())
        rate = win_rate(after[inside], before[inside]) if count else float("nan")
        rows.append(
            {
                "low": float(low),
                "high": float(high),
                "prompts": count,
                "win_rate": rate,
                "delta_win_rate": rate - 0.5 if count else float("nan"),
                "gold_gain": float((after[inside] - before[inside]).mean()) if count else float("nan"),
            }
        )
    return rows


def prompt_lengths(evaluation: dict) -> np.ndarray:
    """Mean word count per prompt of an :func:`evaluate_policy` result's samples: (prompts,)."""
    samples = evaluation["samples"]
    counts = np.array([len(r.split()) for r in samples["response"]], dtype=float)
    prompt_ids = np.asarray(samples["prompt_id"])
    return np.bincount(prompt_ids, weights=counts) / np.bincount(prompt_ids)


def before_after_metrics(before: dict, after: dict, length_edges: Sequence[float]) -> dict:
    """The metrics every method run reports from two :func:`evaluate_policy` results on the same prompts:
    gold before/after, paired win rate vs the initial student, lengths, per-prompt golds and the length-bucket
    gains (PLaD Fig. 3, bucketed by the initial student's answer length)."""
    return {
        "gold_before": before["gold"],
        "gold_after": after["gold"],
        "win_rate_vs_initial": win_rate(after["per_prompt"], before["per_prompt"]),
        "length_before": before["length"],
        "length_after": after["length"],
        "per_prompt_before": before["per_prompt"],
        "per_prompt_after": after["per_prompt"],
        "length_buckets": length_bucket_gains(
            after["per_prompt"], before["per_prompt"], prompt_lengths(before), length_edges
        ),
    }


# --- AlpacaEval-style judging (GPU machines; a weaker, judge-based measurement) ---


def write_alpaca_eval_outputs(instructions, outputs, generator: str, path):
    """Write model outputs in AlpacaEval's ``model_outputs`` JSON format (instruction, output, generator)."""
    import json
    from pathlib import Path

    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs; pass one output each")
    rows = [
        {"instruction": i, "output": o, "generator": generator, "dataset": "workbench"}
        for i, o in zip(instructions, outputs)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return path


def alpaca_eval_command(
    model_outputs, reference_outputs=None, annotators_config: str | None = None, output_path=None
) -> list[str]:
    """The ``alpaca_eval evaluate`` command line for saved outputs (judge per ``annotators_config``)."""
    command = ["alpaca_eval", "evaluate", "--model_outputs", str(model_outputs)]
    if reference_outputs is not None:
        command += ["--reference_outputs", str(reference_outputs)]
    if annotators_config:
        command += ["--annotators_config", annotators_config]
    if output_path is not None:
        command += ["--output_path", str(output_path)]
    return command


def run_alpaca_eval(model_outputs, **kwargs) -> int:
    """Run AlpacaEval on saved outputs (needs ``pip install alpaca-eval`` and its judge's API key or a local
    judge config); returns the process exit code. Results are judge-based, labelled as such by AlpacaEval."""
    import shutil
    import subprocess

    if shutil.which("alpaca_eval") is None:
        raise RuntimeError(
            "AlpacaEval is not installed: pip install alpaca-eval (and configure its judge); "
            "write outputs with write_alpaca_eval_outputs() to evaluate them elsewhere"
        )
    return subprocess.run(alpaca_eval_command(model_outputs, **kwargs), check=False).returncode
