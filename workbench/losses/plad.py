"""PLaD losses (Zhang et al., 2024, "PLaD: Preference-based Large Language Model Distillation with Pseudo-Preference
Pairs"), as pure tensor functions, plus the pure-python pseudo-pair builder of its §4.2.

Conventions shared by every function here:

* ``*_logps (B,)`` are sequence log-likelihoods log P_theta(y | x) of a response under the **student**. Eq. (4)/(5)
  write log P_theta(y|x), i.e. the token sum; the paper's Conclusion also credits "length normalization", so the
  caller chooses (``workbench.scoring.sequence_logps`` for sums, ``avg_logp_rewards`` for per-token means). The
  functions here do not care which, but beta = 1 means very different things on the two scales (see
  ``papers/plad.md``).
* ``*_hidden_states (B, T, D)`` are the student's own last-layer token representations of a response (conditioned on
  the prompt), with a ``*_mask (B, T)`` that is 1 on response tokens. Masked-out positions never reach the result.
* ``reduction="mean"`` averages per-pair losses over the batch; ``"sum"`` sums them; ``"none"`` returns ``(B,)``.

Equation numbers refer to the PLaD paper (``papers/plad.md`` maps each equation to a function here).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from workbench.losses.tensors import check_batch_vectors, check_reduction, shape_text

__all__ = [
    "PLAD_BETA",
    "PLAD_SAMPLING_TEMPERATURE",
    "ranking_calibration_loss",
    "margin_calibration_loss",
    "ngram_f_score",
    "calibration_score",
    "make_pseudo_pairs",
    "LOSSES",
]

PLAD_BETA = 1.0  # margin beta in the main experiments (PLaD App. A.6)
PLAD_SAMPLING_TEMPERATURE = 0.7  # tau (PLaD App. A.6), read as the sampling temperature of Eq. 1


# ---------------------------------------------------------------------------------------------------------------
# calibration losses (PLaD §4.3)
# ---------------------------------------------------------------------------------------------------------------


def ranking_calibration_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    beta: float = PLAD_BETA,
    reduction: str = "mean",
) -> Tensor:
    """Hinge on the student's log-likelihood gap: zero once the teacher's output beats the student's by beta.

    PLaD Eq. (4).

    .. math:: \\mathcal{L}^{\\text{cal}}_{\\text{rank}} = \\max\\bigl(0,\\ \\beta - \\log P_\\theta(\\hat y_+ \\mid x)
              + \\log P_\\theta(\\hat y_- \\mid x)\\bigr)

    The gradient is exactly zero for pairs whose gap already exceeds beta (and at the kink, where torch's relu
    subgradient is 0), and -1 / +1 with respect to chosen / rejected log-likelihood otherwise.

    Args:
        chosen_logps: (B,) student log-likelihood of y_+ (the teacher's sample), summed or length-normalised.
        rejected_logps: (B,) student log-likelihood of y_- (the student's own sample), same normalisation.
        beta: margin (paper: 1.0, App. A.6); must be >= 0.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    reduce = check_reduction(reduction)
    check_batch_vectors(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    # $\log P_\theta(\hat y_+|x) - \log P_\theta(\hat y_-|x)$
    logp_gap = chosen_logps - rejected_logps  # (B,)
    # $\max(0, \beta - \text{gap})$
    return reduce(torch.relu(beta - logp_gap))


def margin_calibration_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    beta: float = PLAD_BETA,
    reduction: str = "mean",
    *,
    detach_scores: bool = True,
) -> Tensor:
    """Hinge whose margin is beta times how much closer the teacher's output is to the reference than the student's.

    PLaD Eq. (5) (score function: App. A.7, Eq. 6-8).

    .. math:: \\mathcal{L}^{\\text{cal}}_{\\text{margin}} = \\max\\Bigl(0,\\ \\beta\\bigl(s(y;\\hat y_+;x)
              - s(y;\\hat y_-;x)\\bigr) - \\log P_\\theta(\\hat y_+ \\mid x) + \\log P_\\theta(\\hat y_- \\mid x)\\Bigr)

    ``s(y; y_hat; x)`` is the similarity of a sample y_hat to the gold reference y, computed from the student's
    representations (:func:`calibration_score`). As printed, the margin is not clipped at 0: when the student's sample
    is closer to the reference than the teacher's (score gap < 0), the hinge tolerates chosen being *less* likely
    than rejected by up to that amount. By default the scores are treated as constants (the margin is a target, not
    something to optimise); ``detach_scores=False`` lets gradients flow into them.

    Args:
        chosen_logps: (B,) student log-likelihood of y_+ (teacher sample).
        rejected_logps: (B,) student log-likelihood of y_- (student sample).
        chosen_scores: (B,) s(y; y_+; x), e.g. from :func:`calibration_score`.
        rejected_scores: (B,) s(y; y_-; x).
        beta: scale of the score gap (paper: 1.0, App. A.6); must be >= 0.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        detach_scores: stop gradients through the scores.

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    reduce = check_reduction(reduction)
    check_batch_vectors(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_scores=chosen_scores,
        rejected_scores=rejected_scores,
    )
    if detach_scores:
        chosen_scores, rejected_scores = chosen_scores.detach(), rejected_scores.detach()
    # $\beta\,(s(y;\hat y_+;x) - s(y;\hat y_-;x))$: a per-pair margin
    margin = beta * (chosen_scores - rejected_scores).to(chosen_logps.dtype)  # (B,)
    # $\log P_\theta(\hat y_+|x) - \log P_\theta(\hat y_-|x)$
    logp_gap = chosen_logps - rejected_logps  # (B,)
    return reduce(torch.relu(margin - logp_gap))


# ---------------------------------------------------------------------------------------------------------------
# score function (PLaD App. A.7)
# ---------------------------------------------------------------------------------------------------------------


def _check_hidden(hidden: Tensor, mask: Tensor, name: str, mask_name: str) -> None:
    if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        got = shape_text(hidden) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"{name} must be a floating (B, T, D) tensor, got {got}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(hidden.shape[:2]):
        got = shape_text(mask) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{mask_name} must have shape (B, T) = {tuple(hidden.shape[:2])}, got {got}")


def _ngram_valid(mask: Tensor, n: int) -> Tensor:
    """(B, T - n + 1) True where all n positions i..i+n-1 are response tokens."""
    return mask.bool().unfold(-1, n, 1).all(-1)


def ngram_f_score(
    hidden_states_cand: Tensor,
    hidden_states_ref: Tensor,
    mask_cand: Tensor,
    mask_ref: Tensor,
    n: int = 1,
    *,
    eps: float = 1e-8,
) -> Tensor:
    """Harmonic mean of n-gram precision and recall under greedy cosine matching of the student's token states.

    PLaD App. A.7, Eq. (7)-(8) (the F_n of Eq. 6; BERTScore extended to n-grams, as in SLiC).

    .. math:: g_{ij} = \\frac{1}{n}\\sum_{m=0}^{n-1}\\cos(e_{i+m}, e'_{j+m}),\\quad
              P_n = \\frac{1}{|I|}\\sum_{i \\in I}\\bigl[\\max_{j \\in J} g_{ij}\\bigr]_+,\\quad
              R_n = \\frac{1}{|J|}\\sum_{j \\in J}\\bigl[\\max_{i \\in I} g_{ij}\\bigr]_+,\\quad
              F_n = \\frac{2 P_n R_n}{P_n + R_n}

    ``I`` / ``J`` are the start positions of the candidate's / reference's n-grams that lie wholly inside the
    response mask. An n-gram's representation is the concatenation of its L2-normalised token vectors, scaled to unit
    norm, so the n-gram cosine ``g_ij`` is the mean of the n aligned token cosines (n = 1 is BERTScore without idf).
    Each greedy match is clipped at 0 (``[.]_+``), so P, R and F lie in [0, 1] (the printed A.7 leaves negative
    cosines unspecified; with them the harmonic mean is unbounded). F = 0 when P + R = 0, or when either side has no
    complete n-gram (shorter than n tokens). Properties (tested): F(a, a) = 1; F(a, b) = F(b, a) and P(a, b) = R(b, a);
    invariance to rescaling any token vector; invariance to padding.

    Args:
        hidden_states_cand: (B, T_c, D) student token representations of the candidate y_hat.
        hidden_states_ref: (B, T_r, D) student token representations of the reference y (same D).
        mask_cand: (B, T_c) 1 on candidate response tokens.
        mask_ref: (B, T_r) 1 on reference response tokens.
        n: n-gram order >= 1.
        eps: floor on vector norms and on P + R.

    Returns:
        (B,) F_n in [0, 1].
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    _check_hidden(hidden_states_cand, mask_cand, "hidden_states_cand", "mask_cand")
    _check_hidden(hidden_states_ref, mask_ref, "hidden_states_ref", "mask_ref")
    if (
        hidden_states_cand.shape[0] != hidden_states_ref.shape[0]
        or hidden_states_cand.shape[-1] != hidden_states_ref.shape[-1]
    ):
        raise ValueError(
            f"hidden_states_cand {shape_text(hidden_states_cand)} and hidden_states_ref "
            f"{shape_text(hidden_states_ref)} must agree in batch size and hidden size"
        )
    batch, len_cand, len_ref = hidden_states_cand.shape[0], hidden_states_cand.shape[1], hidden_states_ref.shape[1]
    dtype = torch.promote_types(hidden_states_cand.dtype, torch.float32)
    if len_cand < n or len_ref < n:
        return hidden_states_cand.new_zeros(batch, dtype=dtype)
    # $\hat e = e / \|e\|$; masked positions zeroed so NaN padding cannot leak
    cand = torch.where(mask_cand.bool()[..., None], hidden_states_cand.to(dtype), 0.0)  # (B, T_c, D)
    ref = torch.where(mask_ref.bool()[..., None], hidden_states_ref.to(dtype), 0.0)  # (B, T_r, D)
    cand = cand / cand.norm(dim=-1, keepdim=True).clamp(min=eps)
    ref = ref / ref.norm(dim=-1, keepdim=True).clamp(min=eps)
    # $\cos(e_i, e'_j)$
    with torch.autocast(cand.device.type, enabled=False):  # a mixed-precision step would run it in bfloat16
        token_cos = cand @ ref.transpose(-1, -2)  # (B, T_c, T_r)
    # $g_{ij} = \frac1n \sum_m \cos(e_{i+m}, e'_{j+m})$ over n-gram start positions
    n_cand, n_ref = len_cand - n + 1, len_ref - n + 1
    ngram_cos = sum(token_cos[:, m : m + n_cand, m : m + n_ref] for m in range(n)) / n  # (B, I, J)
    valid_cand = _ngram_valid(mask_cand, n)  # (B, I)
    valid_ref = _ngram_valid(mask_ref, n)  # (B, J)
    pair_valid = valid_cand[:, :, None] & valid_ref[:, None, :]  # (B, I, J)
    neg_inf = torch.finfo(dtype).min
    ngram_cos = torch.where(pair_valid, ngram_cos, torch.full_like(ngram_cos, neg_inf))
    # $[\max_j g_{ij}]_+$ per candidate n-gram, $[\max_i g_{ij}]_+$ per reference n-gram
    best_for_cand = ngram_cos.max(dim=2).values.clamp(min=0.0)  # (B, I)
    best_for_ref = ngram_cos.max(dim=1).values.clamp(min=0.0)  # (B, J)
    count_cand = valid_cand.sum(-1)  # (B,)
    count_ref = valid_ref.sum(-1)  # (B,)
    # $P_n$, $R_n$: means over the valid n-grams of each side
    precision = torch.where(valid_cand, best_for_cand, 0.0).sum(-1) / count_cand.clamp(min=1).to(dtype)  # (B,)
    recall = torch.where(valid_ref, best_for_ref, 0.0).sum(-1) / count_ref.clamp(min=1).to(dtype)  # (B,)
    # $F_n = 2 P_n R_n / (P_n + R_n)$, 0 when P + R = 0 (clamped denominator keeps the gradient finite)
    f_score = 2 * precision * recall / (precision + recall).clamp(min=eps)  # (B,)
    has_ngrams = (count_cand > 0) & (count_ref > 0)
    return torch.where(has_ngrams, f_score, torch.zeros_like(f_score))


def calibration_score(
    hidden_states_cand: Tensor,
    hidden_states_ref: Tensor,
    mask_cand: Tensor,
    mask_ref: Tensor,
    ns: Sequence[int] = (1,),
) -> Tensor:
    """Sum over n-gram orders of the n-gram F-measure between a sample and the reference: the score s of Eq. (5).

    PLaD App. A.7, Eq. (6).

    .. math:: s(\\hat y, y; x) = \\sum_{n} F_n\\bigl(e(\\hat y, x), e(y, x)\\bigr)

    The paper does not say which orders n are summed; ``ns=(1,)`` (BERTScore-F) is our default, so s lies in
    [0, len(ns)].

    Args:
        hidden_states_cand: (B, T_c, D) student representations of y_hat given x.
        hidden_states_ref: (B, T_r, D) student representations of the reference y given x.
        mask_cand: (B, T_c) 1 on candidate response tokens.
        mask_ref: (B, T_r) 1 on reference response tokens.
        ns: n-gram orders to sum.

    Returns:
        (B,) score in [0, len(ns)].
    """
    if not ns:
        raise ValueError("ns must name at least one n-gram order")
    return sum(ngram_f_score(hidden_states_cand, hidden_states_ref, mask_cand, mask_ref, n=n) for n in ns)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "plad_ranking": ranking_calibration_loss,
    "plad_margin": margin_calibration_loss,
}


# ---------------------------------------------------------------------------------------------------------------
# pseudo-preference pairs (PLaD §4.2, Eq. 3; real-pair mixing of §5.3 / Fig. 2) — plain python, no tensors
# ---------------------------------------------------------------------------------------------------------------


def _is_empty(response: Any) -> bool:
    return response is None or (isinstance(response, str) and not response.strip())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


def make_pseudo_pairs(
    prompts: Sequence[Any],
    teacher_responses: Sequence[Any],
    student_responses: Sequence[Any],
    *,
    real_pairs: Sequence[dict | None] | None = None,
    real_ratio: float = 0.0,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows with the teacher's sample as chosen and the student's as rejected, optionally with a fraction
    replaced by gold-ranked pairs.

    PLaD §4.2, Eq. (3) (and Alg. 1 step 2); ``real_ratio`` reproduces the §5.3 / Fig. 2 experiment.

    .. math:: (\\hat y_+, \\hat y_-) := (\\hat y^T, \\hat y^S),\\quad \\hat y^T \\sim p(\\cdot\\mid x),\\;
              \\hat y^S \\sim q_\\theta(\\cdot\\mid x)

    Prompts whose two responses are identical (after stripping surrounding whitespace) carry no preference signal and
    are skipped, as are prompts with an empty response; both are counted.

    Real pairs (Fig. 2): "real" means the *ordering* comes from a reward (the paper re-ranks the same teacher/student
    pair with a reward model; in the gym, the gold reward). ``real_pairs[i]`` is the row for ``prompts[i]``
    (``{"prompt", "chosen", "rejected"}``, its prompt equal to ``prompts[i]``), or None where no gold order exists
    (e.g. a reward tie). Exactly ``round(real_ratio * n_pairs)`` of the kept prompts, drawn without replacement by
    ``random.Random(seed)`` among those with a usable real pair, take the real row instead of the pseudo row; so the
    set of prompts and the dataset size do not depend on the ratio, only the orderings do. Raises if fewer usable
    real pairs exist than requested.

    Args:
        prompts: N prompts (strings or message lists; passed through unchanged).
        teacher_responses: N teacher samples (y^T, chosen).
        student_responses: N student samples (y^S, rejected).
        real_pairs: optional N gold-ranked rows aligned with ``prompts`` (entries may be None).
        real_ratio: fraction in [0, 1] of the kept pairs to take from ``real_pairs``.
        seed: seed of the draw of which prompts use their real pair.

    Returns:
        ``(rows, counts)``: rows ``{"prompt", "chosen", "rejected", "source"}`` with source "pseudo" or "real", in
        prompt order; counts ``n_input``, ``n_pairs``, ``n_pseudo``, ``n_real``, ``n_real_flipped`` (real rows whose
        chosen is the student's sample, i.e. the teacher-is-better assumption failed), ``skipped_identical``,
        ``skipped_empty``.
    """
    n_input = len(prompts)
    if len(teacher_responses) != n_input or len(student_responses) != n_input:
        raise ValueError(
            f"prompts, teacher_responses and student_responses must have the same length, got "
            f"{n_input}, {len(teacher_responses)}, {len(student_responses)}"
        )
    if not 0.0 <= real_ratio <= 1.0:
        raise ValueError(f"real_ratio must be in [0, 1], got {real_ratio}")
    if real_ratio > 0 and real_pairs is None:
        raise ValueError("real_ratio > 0 needs real_pairs")
    if real_pairs is not None and len(real_pairs) != n_input:
        raise ValueError(f"real_pairs must be aligned with prompts (length {n_input}), got length {len(real_pairs)}")

    counts = {
        "n_input": n_input,
        "n_pairs": 0,
        "n_pseudo": 0,
        "n_real": 0,
        "n_real_flipped": 0,
        "skipped_identical": 0,
        "skipped_empty": 0,
    }
    rows: list[dict[str, Any]] = []
    kept_index: list[int] = []  # prompt index of each row
    for i, (prompt, teacher, student) in enumerate(zip(prompts, teacher_responses, student_responses)):
        if _is_empty(teacher) or _is_empty(student):
            counts["skipped_empty"] += 1
            continue
        if _same(teacher, student):
            counts["skipped_identical"] += 1
            continue
        # $(\hat y_+, \hat y_-) := (\hat y^T, \hat y^S)$
        rows.append({"prompt": prompt, "chosen": teacher, "rejected": student, "source": "pseudo"})
        kept_index.append(i)

    n_pairs = len(rows)
    n_real = round(real_ratio * n_pairs)
    if n_real:
        usable = []
        for row_number, i in enumerate(kept_index):
            real = real_pairs[i]
            if real is None:
                continue
            missing = {"prompt", "chosen", "rejected"} - set(real)
            if missing:
                raise ValueError(f"real_pairs[{i}] lacks {sorted(missing)}")
            if real["prompt"] != prompts[i]:
                raise ValueError(f"real_pairs[{i}] has a different prompt from prompts[{i}]")
            if _is_empty(real["chosen"]) or _is_empty(real["rejected"]) or _same(real["chosen"], real["rejected"]):
                continue
            usable.append(row_number)
        if len(usable) < n_real:
            raise ValueError(
                f"real_ratio={real_ratio} asks for {n_real} real pairs of {n_pairs}, but only "
                f"{len(usable)} kept prompts have a usable real pair"
            )
        for row_number in sorted(random.Random(seed).sample(usable, n_real)):
            i = kept_index[row_number]
            real = real_pairs[i]
            rows[row_number] = {
                "prompt": real["prompt"],
                "chosen": real["chosen"],
                "rejected": real["rejected"],
                "source": "real",
            }
            if _same(real["chosen"], student_responses[i]):
                counts["n_real_flipped"] += 1
    counts.update(n_pairs=n_pairs, n_real=n_real, n_pseudo=n_pairs - n_real)
    return rows, counts
