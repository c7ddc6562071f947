"""Baseline losses the preference-distillation papers compare against, as pure tensor functions.

Preference optimisation on teacher-annotated data ("Teacher-as-Annotator", PAD App. B.3): DPO, SimPO, PRO.
Logit-level distillation: Standard KD (forward KL), SeqKD (SFT on teacher samples), MiniLLM-style reverse KL.
Each function cites the paper that defines it; PAD App. B.3 and PLaD §5.1 say how the baselines are fed.

Conventions (shared with ``workbench.losses.adpa``):

* ``*_logps (B,)`` are sequence log-likelihoods (token sums) of a response; ``*_logps_avg (B,)`` are per-token means.
* ``*_logits (B, T, V)`` are aligned so position ``t`` predicts response token ``t``; ``mask (B, T)`` is 1 on
  response tokens. Masked-out positions never reach the result. Per-token losses are averaged over each sequence's
  response tokens (0 for a sequence with none), like ``adpa.sft_loss`` and ``adpa.topk_forward_kl``.
* ``reduction="mean"`` averages per-sequence losses over the batch; ``"sum"`` sums; ``"none"`` returns ``(B,)``.
* Teacher tensors are treated as constants (detached).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.losses.adpa import sft_loss, topk_forward_kl
from workbench.losses.tensors import (
    add_sft_term,
    check_batch_vectors,
    check_logits_mask,
    check_reduction,
    log_softmax,
    masked_mean,
    shape_text,
)

__all__ = [
    "DPO_BETA",
    "SIMPO_BETA",
    "SIMPO_GAMMA_BETA_RATIO",
    "PRO_SFT_WEIGHT",
    "dpo_loss",
    "simpo_loss",
    "pro_loss",
    "forward_kl_kd_loss",
    "topk_kd_loss",
    "reverse_kl_loss",
    "seqkd_loss",
    "LOSSES",
]

DPO_BETA = 0.1  # DPO reference code / TRL DPOConfig default
SIMPO_BETA = 2.0  # SimPO paper recommends beta in [2.0, 2.5] (Meng et al. 2024, §4 / App. B)
SIMPO_GAMMA_BETA_RATIO = 0.5  # gamma / beta; SimPO's released configs use 0.5-0.55
PRO_SFT_WEIGHT = 0.05  # released PRO scripts (`--sft_weight 0.05`), multiplied by (n - 1)^2 in its loss


# ---------------------------------------------------------------------------------------------------------------
# validation (plumbing)
# ---------------------------------------------------------------------------------------------------------------


def _check_teacher_student(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor) -> None:
    check_logits_mask(student_logits, mask, "student_logits", "mask")
    check_logits_mask(teacher_logits, mask, "teacher_logits", "mask")
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(
            f"teacher_logits {shape_text(teacher_logits)} and student_logits {shape_text(student_logits)} must "
            f"have the same shape (same vocabulary)"
        )


def _conservative_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): the logistic loss with labels flipped with probability eps."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


# ---------------------------------------------------------------------------------------------------------------
# preference optimisation on teacher-annotated pairs / rankings
# ---------------------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = DPO_BETA,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """Logistic loss on beta times the policy's log-ratio gain over the reference, chosen minus rejected.

    DPO: Rafailov et al. 2023, Eq. (7); ``label_smoothing`` is the conservative DPO of the reference code.

    .. math:: \\mathcal{L}_{\\text{DPO}} = -\\log\\sigma\\Bigl(
              \\beta\\log\\frac{\\pi_\\theta(y_w|x)}{\\pi_{\\text{ref}}(y_w|x)}
              - \\beta\\log\\frac{\\pi_\\theta(y_l|x)}{\\pi_{\\text{ref}}(y_l|x)}\\Bigr)

    With ``label_smoothing = eps > 0`` the loss is ``-(1-eps) log sigma(beta h) - eps log sigma(-beta h)`` (the
    preference label is assumed flipped with probability eps), as in the DPO reference code's ``preference_loss``
    and TRL's CPO/``aot`` losses. TRL 1.16's ``DPOTrainer`` ``loss_type="sigmoid"`` ignores label smoothing; at
    eps = 0 the two agree (tested). In distillation (PAD App. B.3) the pair is the max/min teacher-scored student
    samples and the reference is the initial student.

    Args:
        policy_chosen_logps: (B,) log pi_theta(y_w | x), summed over response tokens.
        policy_rejected_logps: (B,) log pi_theta(y_l | x).
        ref_chosen_logps: (B,) log pi_ref(y_w | x) (constants).
        ref_rejected_logps: (B,) log pi_ref(y_l | x).
        beta: KL-penalty strength (reference code / TRL default 0.1).
        label_smoothing: eps in [0, 0.5).
        reduction: "mean" (scalar), "sum" or "none" ((B,)) for the loss; rewards are always (B,).

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``; rewards are ``beta * (log pi_theta - log pi_ref)``, detached,
        shape (B,).
    """
    reduce = check_reduction(reduction)
    check_batch_vectors(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    ref_chosen_logps, ref_rejected_logps = ref_chosen_logps.detach(), ref_rejected_logps.detach()
    # $\log\frac{\pi_\theta(y_w)}{\pi_\theta(y_l)} - \log\frac{\pi_{\text{ref}}(y_w)}{\pi_{\text{ref}}(y_l)}$
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)  # (B,)
    # $-\log\sigma(\beta h)$ (conservative form if eps > 0)
    losses = _conservative_logistic(beta * logits, label_smoothing)  # (B,)
    # $\hat r(x, y) = \beta \log \frac{\pi_\theta(y|x)}{\pi_{\text{ref}}(y|x)}$
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()  # (B,)
    return reduce(losses), chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_logps_avg: Tensor,
    policy_rejected_logps_avg: Tensor,
    beta: float = SIMPO_BETA,
    gamma: float | None = None,
    gamma_beta_ratio: float | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """Logistic loss on beta times the gap in per-token log-likelihood, minus a target margin gamma; no reference.

    SimPO: Meng et al. 2024, Eq. (6).

    .. math:: \\mathcal{L}_{\\text{SimPO}} = -\\log\\sigma\\Bigl(\\frac{\\beta}{|y_w|}\\log\\pi_\\theta(y_w|x)
              - \\frac{\\beta}{|y_l|}\\log\\pi_\\theta(y_l|x) - \\gamma\\Bigr)

    The margin is given either as ``gamma`` or, as in SimPO's released configs, as ``gamma_beta_ratio`` = gamma/beta
    (default 0.5 when neither is given; giving both is an error). TRL 1.16 ``CPOTrainer`` with ``loss_type="simpo"``
    computes ``-logsigmoid(beta * (Δavg - simpo_gamma / beta))``, i.e. its ``simpo_gamma`` is our ``gamma``
    (absolute, not a ratio); pure SimPO there also needs ``cpo_alpha=0`` (CPOConfig defaults to 1.0, which adds an
    NLL term on y_w: CPO-SimPO). Values match TRL's ``cpo_loss`` (tested). ``label_smoothing`` as in :func:`dpo_loss`.

    Args:
        policy_chosen_logps_avg: (B,) (1/|y_w|) log pi_theta(y_w | x).
        policy_rejected_logps_avg: (B,) (1/|y_l|) log pi_theta(y_l | x).
        beta: reward scale (SimPO recommends 2.0-2.5).
        gamma: target reward margin (absolute).
        gamma_beta_ratio: gamma / beta.
        label_smoothing: eps in [0, 0.5).
        reduction: "mean" (scalar), "sum" or "none" ((B,)) for the loss.

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``; rewards are ``beta * logps_avg``, detached, (B,).
    """
    if gamma is not None and gamma_beta_ratio is not None:
        raise ValueError("give either gamma or gamma_beta_ratio, not both")
    if gamma is None:
        gamma = beta * (SIMPO_GAMMA_BETA_RATIO if gamma_beta_ratio is None else gamma_beta_ratio)
    reduce = check_reduction(reduction)
    check_batch_vectors(
        policy_chosen_logps_avg=policy_chosen_logps_avg, policy_rejected_logps_avg=policy_rejected_logps_avg
    )
    # $r(x, y) = \frac{\beta}{|y|}\log\pi_\theta(y|x)$
    chosen_rewards = beta * policy_chosen_logps_avg  # (B,)
    rejected_rewards = beta * policy_rejected_logps_avg  # (B,)
    # $-\log\sigma(r_w - r_l - \gamma)$
    losses = _conservative_logistic(chosen_rewards - rejected_rewards - gamma, label_smoothing)  # (B,)
    return reduce(losses), chosen_rewards.detach(), rejected_rewards.detach()


def pro_loss(
    rewards_by_rank: Tensor,
    rank_scores: Tensor | None = None,
    temperature: float = 1.0,
    sft_term: Tensor | float | None = None,
    sft_weight: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sum over ranks k of the softmax cross-entropy that the k-th best response beats all worse ones, plus SFT.

    PRO: Song et al. 2024 (AAAI), "Preference Ranking Optimization for Human Alignment", L_PRO + beta L_SFT.

    .. math:: \\mathcal{L}_{\\text{PRO}} = \\sum_{k=1}^{n-1} -\\log
              \\frac{\\exp\\bigl(r_k / \\mathcal{T}_k^k\\bigr)}
              {\\sum_{i=k}^{n}\\exp\\bigl(r_i / \\mathcal{T}_k^i\\bigr)},
              \\qquad \\mathcal{L} = \\mathcal{L}_{\\text{PRO}} + \\beta_{\\text{sft}}\\,\\mathcal{L}_{\\text{SFT}}

    ``r_i`` is the policy's length-normalised log-likelihood of the i-th best response (PRO's r_{pi_PRO};
    best-first). Temperatures:

    * ``rank_scores`` None: a constant ``T = temperature`` (PRO without a reward model; T = 1 is the plain
      Plackett-Luce listwise loss).
    * ``rank_scores`` (B, n), non-increasing, e.g. teacher rewards or PAD's MCQ selection probabilities (App. B.3):
      PRO's dynamic temperature ``1/T_k^i = s_k - s_i`` for i > k and ``1/T_k^k = max_{i>k} (s_k - s_i)``
      (``temperature`` is then unused). This is the released PRO code's form; responses with equal scores get a
      zero multiplier.

    The SFT term is the NLL of the best response (pass it precomputed as ``sft_term``; the released code uses the
    token-summed NLL). Its weight defaults to PRO's released recipe, ``0.05 * (n - 1)**2``; pass ``sft_weight`` to
    override. Without ``sft_term`` only L_PRO is returned.

    Args:
        rewards_by_rank: (B, n) policy rewards r_i sorted best-first, n >= 2.
        rank_scores: optional (B, n) external scores, non-increasing along n, for the dynamic temperature.
        temperature: constant T > 0 when ``rank_scores`` is None.
        sft_term: optional L_SFT of the best response, scalar or (B,).
        sft_weight: weight of ``sft_term``; default ``PRO_SFT_WEIGHT * (n - 1)**2``.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    if (
        not isinstance(rewards_by_rank, Tensor)
        or rewards_by_rank.dim() != 2
        or rewards_by_rank.shape[1] < 2
        or not rewards_by_rank.is_floating_point()
    ):
        got = shape_text(rewards_by_rank) if isinstance(rewards_by_rank, Tensor) else type(rewards_by_rank).__name__
        raise ValueError(f"rewards_by_rank must be a floating (B, n) tensor with n >= 2, got {got}")
    n = rewards_by_rank.shape[1]
    if rank_scores is None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        # $1/\mathcal{T}_k^i = 1/T$ for every k, i
        inverse_temperature = torch.full(
            (1, n, n), 1.0 / temperature, dtype=rewards_by_rank.dtype, device=rewards_by_rank.device
        )  # (1, n, n) indexed [., k, i]
    else:
        if not isinstance(rank_scores, Tensor) or tuple(rank_scores.shape) != tuple(rewards_by_rank.shape):
            got = shape_text(rank_scores) if isinstance(rank_scores, Tensor) else type(rank_scores).__name__
            raise ValueError(
                f"rank_scores must have the shape of rewards_by_rank {shape_text(rewards_by_rank)}, got {got}"
            )
        scores = rank_scores.detach().to(rewards_by_rank.dtype)  # (B, n)
        if bool((scores[:, 1:] > scores[:, :-1]).any()):
            raise ValueError("rank_scores must be non-increasing along n (responses sorted best-first)")
        # $1/\mathcal{T}_k^i = s_k - s_i$ for $i > k$
        gaps = scores[:, :, None] - scores[:, None, :]  # (B, n, n) indexed [b, k, i]
        later = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(diagonal=1)  # i > k
        # $1/\mathcal{T}_k^k = \max_{i>k}(s_k - s_i)$ (0 for the last rank, which has no term)
        self_gap = torch.where(later, gaps, torch.zeros_like(gaps)).amax(-1)  # (B, n)
        inverse_temperature = torch.where(later, gaps, torch.zeros_like(gaps))
        inverse_temperature = inverse_temperature + torch.diag_embed(self_gap)  # (B, n, n)
    # $z_{k,i} = r_i / \mathcal{T}_k^i$
    scaled = rewards_by_rank[:, None, :] * inverse_temperature  # (B, n, n)
    later_or_self = torch.ones(n, n, dtype=torch.bool, device=rewards_by_rank.device).triu()  # i >= k
    scaled = scaled.masked_fill(~later_or_self, float("-inf"))
    # $-\log\frac{e^{z_{k,k}}}{\sum_{i \ge k} e^{z_{k,i}}}$ for each k < n
    per_rank = torch.logsumexp(scaled, dim=-1) - torch.diagonal(scaled, dim1=-2, dim2=-1)  # (B, n)
    per_sequence = per_rank[:, :-1].sum(-1)  # (B,)
    if sft_term is not None:
        weight = PRO_SFT_WEIGHT * (n - 1) ** 2 if sft_weight is None else sft_weight
        per_sequence = add_sft_term(per_sequence, weight * torch.as_tensor(sft_term))
    return reduce(per_sequence)


# ---------------------------------------------------------------------------------------------------------------
# logit-level distillation
# ---------------------------------------------------------------------------------------------------------------


def forward_kl_kd_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Per-token KL from the teacher's temperature-softened next-token distribution to the student's, times T^2.

    Standard KD: Hinton et al. 2015 (soft targets, T^2 scaling), applied token-wise on gold or teacher-forced
    responses (PAD App. B.3; PLaD Eq. 2 with p' the data distribution).

    .. math:: \\mathcal{L}_{\\text{KD}} = \\frac{T^2}{|y|}\\sum_{t}\\sum_{a \\in V} p_T(a\\mid y_{<t})
              \\log\\frac{p_T(a\\mid y_{<t})}{q_T(a\\mid y_{<t})},\\quad
              p_T = \\operatorname{softmax}(z^{\\text{t}}/T),\\;
              q_T = \\operatorname{softmax}(z^{\\text{s}}/T)

    The T^2 factor (Hinton et al. §2) keeps gradient magnitudes comparable across temperatures; at T = 1 it is 1.
    Full vocabulary, so teacher and student must share it. For a top-k teacher cache use :func:`topk_kd_loss`.

    Args:
        teacher_logits: (B, T, V) teacher logits (constants).
        student_logits: (B, T, V) student logits.
        mask: (B, T) 1 on response tokens.
        temperature: T > 0.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    reduce = check_reduction(reduction)
    _check_teacher_student(teacher_logits, student_logits, mask)
    # $\log p_T$, $\log q_T$
    teacher_logps = log_softmax(teacher_logits.detach() / temperature)  # (B, T, V)
    student_logps = log_softmax(student_logits / temperature)  # (B, T, V)
    # $\sum_a p_T(a)(\log p_T(a) - \log q_T(a))$; F.kl_div handles p = 0
    per_token = F.kl_div(student_logps, teacher_logps, reduction="none", log_target=True).sum(-1)  # (B, T)
    return reduce(temperature**2 * masked_mean(per_token, mask))


def topk_kd_loss(
    teacher_topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    student_logits: Tensor,
    mask: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Standard KD from a top-k teacher cache: per-token forward KL over the k cached ids plus one tail bucket.

    Standard KD (Hinton et al. 2015) at T = 1, computed by ``adpa.topk_forward_kl`` (exact when k = V).

    .. math:: \\frac{1}{|y|}\\sum_t \\Bigl[\\sum_{a \\in K_t} p(a)\\log\\frac{p(a)}{q(a)}
              + m_t \\log\\frac{m_t}{m_\\theta}\\Bigr]

    Args:
        teacher_topk_ids: (B, T, k) teacher top-k ids.
        teacher_topk_logps: (B, T, k) their teacher log-probs.
        student_logits: (B, T, V) student logits.
        mask: (B, T) 1 on response tokens.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    return reduce(topk_forward_kl(teacher_topk_ids, teacher_topk_logps, student_logits, mask))


def reverse_kl_loss(
    teacher_logits: Tensor,
    student_logits: Tensor,
    mask: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Per-token KL from the student's next-token distribution to the teacher's, on the student's own samples.

    MiniLLM-style reverse KL: Gu et al. 2024 (ICLR), the single-step term of their gradient decomposition.

    .. math:: \\mathcal{L}_{\\text{RKL}} = \\frac{1}{|\\hat y|}\\sum_t \\sum_{a\\in V} q_\\theta(a\\mid\\hat y_{<t})
              \\log\\frac{q_\\theta(a\\mid\\hat y_{<t})}{p(a\\mid\\hat y_{<t})},\\quad \\hat y \\sim q_\\theta

    **This is a simplification of MiniLLM, not MiniLLM.** MiniLLM minimises the sequence-level reverse KL by policy
    gradient, splitting the gradient into a single-step part (this exact per-token KL, which needs no sampling over
    a) and a long-term part driven by future rewards log p/q; it also uses length-normalised long-term rewards,
    teacher-mixed sampling and a pre-training-loss regulariser. Here only the single-step term is kept: no
    long-term/policy-gradient term, no length-normalisation tricks, no teacher-mixed sampling, no PT loss. The
    samples y_hat are fixed tensors, so no gradient flows through the sampling. Mean over response tokens as
    elsewhere in this module.

    Args:
        teacher_logits: (B, T, V) teacher logits on x + y_hat (constants).
        student_logits: (B, T, V) student logits on x + y_hat.
        mask: (B, T) 1 on y_hat tokens.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``; >= 0, and 0 iff the distributions agree on every response token.
    """
    reduce = check_reduction(reduction)
    _check_teacher_student(teacher_logits, student_logits, mask)
    teacher_logps = log_softmax(teacher_logits.detach())  # (B, T, V)
    student_logps = log_softmax(student_logits)  # (B, T, V)
    # $\sum_a q_\theta(a)(\log q_\theta(a) - \log p(a))$
    per_token = F.kl_div(teacher_logps, student_logps, reduction="none", log_target=True).sum(-1)  # (B, T)
    return reduce(masked_mean(per_token.clamp(min=0.0), mask))


def seqkd_loss(
    student_logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Mean token NLL of the teacher's sampled responses under the student (SFT on teacher outputs).

    SeqKD: Kim and Rush 2016 (word-level NLL on the teacher's decoded sequences; PAD App. B.3). Reuses
    ``adpa.sft_loss``.

    .. math:: \\mathcal{L}_{\\text{SeqKD}} = -\\frac{1}{|y^T|}\\sum_t \\log q_\\theta(y^T_t \\mid x, y^T_{<t}),
              \\quad y^T \\sim p(\\cdot \\mid x)

    Args:
        student_logits: (B, T, V) student logits on x + y^T.
        labels: (B, T) teacher-sample token ids (any value where mask is 0).
        mask: (B, T) 1 on y^T tokens.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    return reduce(sft_loss(student_logits, labels, mask))


LOSSES: dict[str, Callable[..., Tensor | tuple[Tensor, Tensor, Tensor]]] = {
    "dpo": dpo_loss,
    "simpo": simpo_loss,
    "pro": pro_loss,
    "kd": forward_kl_kd_loss,
    "kd_topk": topk_kd_loss,
    "reverse_kl": reverse_kl_loss,
    "seqkd": seqkd_loss,
}
