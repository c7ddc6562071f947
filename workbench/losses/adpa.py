"""DCKD and ADPA losses (Gao et al., ICLR 2025, "Advantage-Guided Distillation for Preference Alignment in Small
Language Models"), as pure tensor functions of a top-k teacher cache and student logits.

Conventions shared by every function here:

* ``student_logits (B, T, V)`` are aligned so position ``t`` predicts response token ``t``. Every loss reads them
  only at a few ids per position (the teacher's top-k, the label), so a :class:`GatheredLogps` — the student's
  log-probs at those ids, computed through a chunked head without a (B, T, V) tensor — may stand in for them.
* ``mask (B, T)`` is 1 on response tokens, 0 on prompt and padding. Masked-out positions never reach the result
  (values there may be garbage: ids such as ``-100``, NaN log-probs) and receive zero gradient.
* A teacher cache is ``*_topk_ids (B, T, k) int64`` and ``*_topk_logps (B, T, k)`` (log-probs of those ids under
  the teacher's full softmax); the tail mass ``1 - sum_k p`` is implied and recovered by :func:`tail_logmass`.
* ``reduction="mean"`` averages per-sequence losses over the batch; ``"none"`` returns them ``(B,)``.

Equation numbers refer to the ADPA paper (``papers/adpa.md`` maps each equation to a function here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from workbench.losses.tensors import (
    GatheredLogps,
    add_sft_term,
    check_logits_mask,
    check_reduction,
    check_topk,
    live_values,
    logps_at,
    masked_mean,
    masked_sum,
    safe_ids,
    safe_logps,
    shape_text,
)
from workbench.losses.topk import (
    ADVANTAGE_CLAMP_RANGE,
    MISSING_LOGP_RULES,
    advantage_from_topk,
    tail_logmass,
    topk_forward_kl,
)

__all__ = [
    "DCKD_ALPHA",
    "GatheredLogps",
    "ADVANTAGE_CLAMP_RANGE",
    "MISSING_LOGP_RULES",
    "tail_logmass",
    "topk_forward_kl",
    "sft_loss",
    "dckd_loss",
    "advantage_from_topk",
    "adpa_loss",
    "adpa_policy_gradient_surrogate",
    "q_argmax_kd_loss",
    "q_softmax_kd_loss",
    "reverse_ce_dpo_only_loss",
    "LOSSES",
]

DCKD_ALPHA = 0.2  # best FsfairX score in the alpha sweep (ADPA §4.5, Fig. 5); released recipe uses 0.1


def sft_loss(student_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood of the response tokens under the student, per sequence.

    ADPA §3.1 (the SFT term of Eq. 1, 7, 10, 30, 31).

    .. math:: \\mathcal{L}_{\\text{SFT}} = -\\frac{1}{|y|}\\sum_{t=1}^{|y|}\\log\\pi_\\theta(y_t \\mid x, y_{<t})

    Args:
        student_logits: (B, T, V) student logits; position t predicts labels[:, t].
        labels: (B, T) int64 response token ids (any value, e.g. -100, where mask is 0).
        mask: (B, T) 1 on response tokens.

    Returns:
        (B,) mean token NLL per sequence (0 for a sequence with no response token).
    """
    check_logits_mask(student_logits, mask, "student_logits", "mask")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != tuple(mask.shape):
        got = shape_text(labels) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape (B, T) = {tuple(mask.shape)}, got {got}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    safe_labels = labels.masked_fill(~mask.bool(), 0)  # (B, T)
    live = safe_labels[mask.bool()]
    if live.numel() and (int(live.min()) < 0 or int(live.max()) >= student_logits.shape[-1]):
        raise ValueError(f"labels holds ids outside [0, {student_logits.shape[-1]}) on unmasked positions")
    # $\log \pi_\theta(y_t \mid x, y_{<t})$
    token_logps = logps_at(student_logits, mask, safe_labels[..., None]).squeeze(-1)  # (B, T)
    return masked_mean(-token_logps, mask)


def dckd_loss(
    chosen_student_logits: Tensor,
    chosen_labels: Tensor,
    chosen_mask: Tensor,
    chosen_teacher_topk_ids: Tensor,
    chosen_teacher_topk_logps: Tensor,
    rejected_student_logits: Tensor | None = None,
    rejected_mask: Tensor | None = None,
    rejected_teacher_topk_ids: Tensor | None = None,
    rejected_teacher_topk_logps: Tensor | None = None,
    *,
    alpha: float = DCKD_ALPHA,
    use_rejected: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """SFT on the chosen response plus alpha times the teacher-to-student KL on both chosen and rejected responses.

    ADPA Eq. (7) (with Eq. 5 and 6).

    .. math:: \\mathcal{L}_{\\text{DCKD}} = \\mathcal{L}_{\\text{SFT}}(y_w)
              + \\alpha\\bigl(\\mathcal{L}_{\\text{KLD-}w} + \\mathcal{L}_{\\text{KLD-}l}\\bigr)

    Normalisation: both KL terms are per-token means over each response (:func:`topk_forward_kl`), as in Eq. (1) and
    in the released code, not the plain sums over t written in Eq. (5)/(6); so alpha is a per-token weight.
    ``use_rejected=False`` is the ablation "DCKD w/o dispreferred response" (ADPA Table 2); the ablation
    "w/o DPO teacher" needs no switch: pass an SFT teacher's cache instead.

    Args:
        chosen_student_logits: (B, T_w, V) student logits on x + y_w.
        chosen_labels: (B, T_w) y_w token ids.
        chosen_mask: (B, T_w) 1 on y_w tokens.
        chosen_teacher_topk_ids: (B, T_w, k) DPO teacher top-k ids on y_w.
        chosen_teacher_topk_logps: (B, T_w, k) their log-probs.
        rejected_student_logits: (B, T_l, V) student logits on x + y_l (unused if ``use_rejected=False``).
        rejected_mask: (B, T_l) 1 on y_l tokens.
        rejected_teacher_topk_ids: (B, T_l, k) DPO teacher top-k ids on y_l.
        rejected_teacher_topk_logps: (B, T_l, k) their log-probs.
        alpha: KL weight; default 0.2 (best in the paper's sweep, §4.5 Fig. 5).
        use_rejected: include L_KLD-l.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    # $\mathcal{L}_{\text{SFT}}(y_w)$
    per_sequence = sft_loss(chosen_student_logits, chosen_labels, chosen_mask)  # (B,)
    # $\mathcal{L}_{\text{KLD-}w}$, Eq. (5)
    kl = topk_forward_kl(chosen_teacher_topk_ids, chosen_teacher_topk_logps, chosen_student_logits, chosen_mask)
    if use_rejected:
        missing = [
            name
            for name, value in (
                ("rejected_student_logits", rejected_student_logits),
                ("rejected_mask", rejected_mask),
                ("rejected_teacher_topk_ids", rejected_teacher_topk_ids),
                ("rejected_teacher_topk_logps", rejected_teacher_topk_logps),
            )
            if value is None
        ]
        if missing:
            raise ValueError(f"use_rejected=True needs {', '.join(missing)}")
        if rejected_student_logits.shape[0] != chosen_student_logits.shape[0]:
            raise ValueError(
                f"rejected_student_logits has batch size {rejected_student_logits.shape[0]} but "
                f"chosen_student_logits has {chosen_student_logits.shape[0]}"
            )
        # $\mathcal{L}_{\text{KLD-}l}$, Eq. (6)
        kl = kl + topk_forward_kl(
            rejected_teacher_topk_ids, rejected_teacher_topk_logps, rejected_student_logits, rejected_mask
        )
    # $\mathcal{L}_{\text{SFT}} + \alpha(\mathcal{L}_{\text{KLD-}w} + \mathcal{L}_{\text{KLD-}l})$
    return reduce(per_sequence + alpha * kl)


"""How to fill log pi(a) for a token a absent from a teacher's top-k cache: (topk_logps (B,T,k), V) -> (B,T).

``tail_uniform``: the tail mass spread evenly over the V - k unseen tokens, i.e. the *mean* unseen probability. A
token that made the other teacher's top-k is probably above that mean, so this tends to under-estimate its log-prob.
``tail_max``: ``min(min_i l_i, log m_tail)``, the largest value any unseen token can take (each unseen probability is
at most the smallest cached one and at most the tail mass): an upper bound on log pi(a). With V >> k the tail mass
exceeds the smallest cached probability and this is exactly the paper's rule (§4.1: "subtracting the lowest
probability in the reference's top 50").
"""


# ---------------------------------------------------------------------------------------------------------------
# losses on student-generated responses y_hat
# ---------------------------------------------------------------------------------------------------------------


def _check_advantage_inputs(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    advantage_ids: Tensor,
    advantages: Tensor,
    ids_name: str = "advantage_ids",
    values_name: str = "advantages",
) -> None:
    check_logits_mask(student_logits_hat, mask_hat, "student_logits_hat", "mask_hat")
    check_topk(
        advantage_ids,
        advantages,
        ids_name,
        values_name,
        leading=student_logits_hat.shape[:2],
        vocab_size=student_logits_hat.shape[-1],
        mask=mask_hat,
    )


def _student_topk(student_logits_hat: Tensor | GatheredLogps, mask_hat: Tensor, ids: Tensor) -> Tensor:
    """Student log-probs at the cached ids: (B, T, k)."""
    return logps_at(student_logits_hat, mask_hat, safe_ids(ids, mask_hat))


def _time_reduce(per_token: Tensor, mask: Tensor, length_normalize: bool) -> Tensor:
    """Sum over response tokens (Eq. 10), or the per-sequence mean (Eq. 30/31, released code) if length_normalize."""
    return masked_mean(per_token, mask) if length_normalize else masked_sum(per_token, mask)


def adpa_loss(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    advantage_ids: Tensor,
    advantages: Tensor,
    gamma: float,
    sft_term: Tensor | float | None = None,
    reduction: str = "mean",
    *,
    length_normalize: bool = False,
) -> Tensor:
    """SFT loss minus gamma times the student's expected advantage, summed over the tokens of its own response.

    ADPA Eq. (10) (objective Eq. 9).

    .. math:: \\mathcal{L}_{\\text{ADPA}} = \\mathcal{L}_{\\text{SFT}}(x, y_w)
              - \\gamma\\sum_{t=1}^{|\\hat y|}\\sum_{a\\in\\mathcal{A}}\\pi_\\theta(a\\mid\\hat s_t)\\,A(\\hat s_t, a)

    Normalisation: Eq. (10) sums over t and takes the expectation over the data, so we sum over each sequence's
    response tokens and average over the batch. ``length_normalize=True`` divides by |y_hat| instead, as the
    released code does (it averages over all response tokens) and as Eq. (30)/(31) do; gamma values are not
    comparable between the two settings.
    Actions outside the cached support get advantage 0: their mass is neither rewarded nor penalised. Since
    ``sum_a pi = 1``, this is the same as giving them any constant c and shifting the cached advantages by -c, i.e.
    the outside tokens act as a zero-advantage baseline. Advantages are treated as constants (detached). Eq. (10)
    has no beta: pass advantages from ``advantage_from_topk(..., beta=1)`` to match it literally, or keep beta and
    read gamma as gamma/beta.

    Args:
        student_logits_hat: (B, T, V) student logits on x + y_hat (y_hat sampled from the student).
        mask_hat: (B, T) 1 on y_hat tokens.
        advantage_ids: (B, T, k) ids of the advantage support (DPO teacher top-k).
        advantages: (B, T, k) A(s_t, a) on those ids, e.g. from :func:`advantage_from_topk`.
        gamma: weight of the advantage term (paper sweeps 0.5-5, §4.1; released recipe 1.6).
        sft_term: optional precomputed SFT loss on y_w, scalar or (B,), added as is.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        length_normalize: divide by |y_hat| instead of summing over t.

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    _check_advantage_inputs(student_logits_hat, mask_hat, advantage_ids, advantages)
    student_topk = _student_topk(student_logits_hat, mask_hat, advantage_ids)  # (B, T, k)
    advantage = live_values(advantages, mask_hat).to(student_topk.dtype)  # (B, T, k)
    # $\sum_{a} \pi_\theta(a \mid \hat s_t) A(\hat s_t, a)$
    expected_advantage = (student_topk.exp() * advantage).sum(-1)  # (B, T)
    # $-\gamma \sum_t \mathbb{E}_{\pi_\theta}[A]$
    per_sequence = -gamma * _time_reduce(expected_advantage, mask_hat, length_normalize)  # (B,)
    return reduce(add_sft_term(per_sequence, sft_term))


def adpa_policy_gradient_surrogate(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    advantage_ids: Tensor,
    advantages: Tensor,
    gamma: float,
    reduction: str = "mean",
    *,
    length_normalize: bool = False,
) -> Tensor:
    """Surrogate whose gradient is the policy-gradient form of the ADPA term: advantage-weighted log-likelihood.

    ADPA Eq. (12) (equal to Eq. 11 by the log-derivative trick).

    .. math:: \\nabla_\\theta\\mathcal{L} = -\\gamma\\sum_t\\mathbb{E}_{a\\sim\\pi_\\theta(\\cdot\\mid\\hat s_t)}
              \\bigl[\\nabla_\\theta\\log\\pi_\\theta(a\\mid\\hat s_t)\\,A(\\hat s_t,a)\\bigr],\\quad
              \\tilde{\\mathcal{L}}
              = -\\gamma\\sum_t\\sum_a \\operatorname{sg}[\\pi_\\theta(a)]\\log\\pi_\\theta(a)\\,A(a)

    The expectation is taken exactly over the cached support (advantage 0 elsewhere), with the sampling weights
    ``pi_theta`` stop-gradiented (``sg``). Its value is not the ADPA loss; its gradient equals the gradient of the
    advantage term of :func:`adpa_loss` (checked in the tests). No SFT term.

    Args:
        student_logits_hat: (B, T, V) student logits on x + y_hat.
        mask_hat: (B, T) 1 on y_hat tokens.
        advantage_ids: (B, T, k) ids of the advantage support.
        advantages: (B, T, k) A(s_t, a) on those ids.
        gamma: weight of the advantage term.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        length_normalize: as in :func:`adpa_loss`.

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    _check_advantage_inputs(student_logits_hat, mask_hat, advantage_ids, advantages)
    student_topk = _student_topk(student_logits_hat, mask_hat, advantage_ids)  # (B, T, k)
    advantage = live_values(advantages, mask_hat).to(student_topk.dtype)  # (B, T, k)
    # $\sum_a \operatorname{sg}[\pi_\theta(a)] \log \pi_\theta(a) A(a)$
    weighted_loglik = (student_topk.exp().detach() * student_topk * advantage).sum(-1)  # (B, T)
    per_sequence = -gamma * _time_reduce(weighted_loglik, mask_hat, length_normalize)  # (B,)
    return reduce(per_sequence)


def q_argmax_kd_loss(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    advantage_ids: Tensor,
    advantages: Tensor,
    gamma: float,
    sft_term: Tensor | float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """SFT loss plus gamma times the student's mean cross-entropy to the highest-advantage token at each state.

    ADPA Eq. (30) (Appendix D, "Q-argmax KD").

    .. math:: \\mathcal{L}_{\\text{Q-argmax}} = \\mathcal{L}_{\\text{SFT}}(x,y) + \\frac{\\gamma}{|\\hat y|}
              \\sum_{t=1}^{|\\hat y|}\\operatorname{CE}\\bigl(\\mathbf{1}\\{\\arg\\max_a A(\\hat s_t,a)\\},
              \\pi_\\theta(\\cdot\\mid\\hat s_t)\\bigr)

    The argmax runs over the cached support only (the advantage of uncached tokens is unknown, not 0 here); ties go
    to the first id in cache order. Adding a constant to A does not move the argmax (the paper's footnote 6), so
    argmax of A is argmax of Q.

    Args:
        student_logits_hat: (B, T, V) student logits on x + y_hat.
        mask_hat: (B, T) 1 on y_hat tokens.
        advantage_ids: (B, T, k) ids of the advantage support.
        advantages: (B, T, k) A(s_t, a) on those ids.
        gamma: weight of the distillation term.
        sft_term: optional precomputed SFT loss on y, scalar or (B,).
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    _check_advantage_inputs(student_logits_hat, mask_hat, advantage_ids, advantages)
    student_topk = _student_topk(student_logits_hat, mask_hat, advantage_ids)  # (B, T, k)
    advantage = live_values(advantages, mask_hat).to(student_topk.dtype)  # (B, T, k)
    # $a^*_t = \arg\max_a A(\hat s_t, a)$ (slot in the cache)
    best_slot = advantage.argmax(dim=-1, keepdim=True)  # (B, T, 1)
    # $\operatorname{CE}(\mathbf{1}\{a^*_t\}, \pi_\theta) = -\log \pi_\theta(a^*_t \mid \hat s_t)$
    cross_entropy = -torch.gather(student_topk, -1, best_slot).squeeze(-1)  # (B, T)
    per_sequence = gamma * masked_mean(cross_entropy, mask_hat)  # (B,)
    return reduce(add_sft_term(per_sequence, sft_term))


def q_softmax_kd_loss(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    advantage_ids: Tensor,
    advantages: Tensor,
    gamma: float,
    sft_term: Tensor | float | None = None,
    reduction: str = "mean",
    *,
    temperature: float = 1.0,
) -> Tensor:
    """SFT loss plus gamma times the mean KL from softmax(advantage / temperature) to the student, per state.

    ADPA Eq. (31) (Appendix D, "Q-softmax KD").

    .. math:: \\mathcal{L}_{\\text{Q-softmax}} = \\mathcal{L}_{\\text{SFT}}(x,y) + \\frac{\\gamma}{|\\hat y|}
              \\sum_{t=1}^{|\\hat y|} D_{\\text{KL}}\\bigl(\\operatorname{softmax}(A(\\hat s_t,\\cdot)/\\tau)
              \\,\\|\\,\\pi_\\theta(\\cdot\\mid\\hat s_t)\\bigr)

    The softmax runs over the cached support, so the target is zero outside it and the KL is exact (no tail bucket).
    ``temperature=1`` is the paper's Eq. (31). Note that A already carries beta (0.01-0.05), so at tau = 1 the
    target is close to uniform over the k ids, which is the "over-softened" target the paper blames for this
    variant's 28.2% win rate (Table 6). KL and CE to the target differ by the target's entropy, a constant.

    Args:
        student_logits_hat: (B, T, V) student logits on x + y_hat.
        mask_hat: (B, T) 1 on y_hat tokens.
        advantage_ids: (B, T, k) ids of the advantage support.
        advantages: (B, T, k) A(s_t, a) on those ids.
        gamma: weight of the distillation term.
        sft_term: optional precomputed SFT loss on y, scalar or (B,).
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        temperature: tau > 0 dividing A before the softmax.

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    reduce = check_reduction(reduction)
    _check_advantage_inputs(student_logits_hat, mask_hat, advantage_ids, advantages)
    student_topk = _student_topk(student_logits_hat, mask_hat, advantage_ids)  # (B, T, k)
    advantage = live_values(advantages, mask_hat).to(student_topk.dtype)  # (B, T, k)
    # $\log q(a) = \log \operatorname{softmax}(A/\tau)_a$ over the cached ids
    target_logps = torch.log_softmax(advantage / temperature, dim=-1)  # (B, T, k)
    # $D_{\text{KL}}(q \,\|\, \pi_\theta) = \sum_a q(a)(\log q(a) - \log \pi_\theta(a))$
    kl = (target_logps.exp() * (target_logps - student_topk)).sum(-1)  # (B, T)
    per_sequence = gamma * masked_mean(kl, mask_hat)  # (B,)
    return reduce(add_sft_term(per_sequence, sft_term))


def reverse_ce_dpo_only_loss(
    student_logits_hat: Tensor,
    mask_hat: Tensor,
    dpo_topk_ids: Tensor,
    dpo_topk_logps: Tensor,
    gamma: float,
    beta: float,
    sft_term: Tensor | float | None = None,
    reduction: str = "mean",
    *,
    missing_rule: str = "tail_max",
    vocab_size: int | None = None,
    length_normalize: bool = False,
) -> Tensor:
    """SFT loss plus gamma*beta times the reverse cross-entropy of the student against the DPO teacher, summed over t.

    ADPA Table 2 ablation "ADPA w/o reference teacher" (Eq. 10 with log pi_ref set to 0; written out in the slides).

    .. math:: \\mathcal{L} = \\mathcal{L}_{\\text{SFT}}(x,y) - \\gamma\\sum_{t=1}^{|\\hat y|}\\sum_{a\\in\\mathcal{A}}
              \\pi_\\theta(a\\mid\\hat s_t)\\,\\beta\\log\\pi_{\\text{dpo}}(a\\mid\\hat s_t)
              = \\mathcal{L}_{\\text{SFT}} + \\gamma\\beta\\sum_t H(\\pi_\\theta, \\pi_{\\text{dpo}})

    Unlike the ADPA term, every summand here has the same sign (log pi_dpo <= 0), so outside tokens cannot be given
    0: the student could then zero the loss by moving all its mass off the teacher's top-k. The student's mass
    outside the cached ids is therefore charged at ``-log pi_dpo`` of an uncached token, filled by
    ``MISSING_LOGP_RULES[missing_rule]`` on the DPO cache (one tail bucket). Exact when k = V.

    Args:
        student_logits_hat: (B, T, V) student logits on x + y_hat.
        mask_hat: (B, T) 1 on y_hat tokens.
        dpo_topk_ids: (B, T, k) DPO teacher top-k ids on the student's states.
        dpo_topk_logps: (B, T, k) their log-probs.
        gamma: weight of the term (as in ADPA).
        beta: the DPO teacher's beta (as in ADPA's advantage).
        sft_term: optional precomputed SFT loss on y_w, scalar or (B,).
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        missing_rule: key of ``MISSING_LOGP_RULES`` for the tail bucket.
        vocab_size: V, needed by "tail_uniform".
        length_normalize: as in :func:`adpa_loss`.

    Returns:
        scalar, or (B,) with ``reduction="none"``.
    """
    reduce = check_reduction(reduction)
    _check_advantage_inputs(
        student_logits_hat,
        mask_hat,
        dpo_topk_ids,
        dpo_topk_logps,
        ids_name="dpo_topk_ids",
        values_name="dpo_topk_logps",
    )
    try:
        fill_rule = MISSING_LOGP_RULES[missing_rule]
    except KeyError:
        raise ValueError(f"missing_rule must be one of {sorted(MISSING_LOGP_RULES)}, got {missing_rule!r}") from None
    student_topk = _student_topk(student_logits_hat, mask_hat, dpo_topk_ids)  # (B, T, k)
    dpo_logps = safe_logps(dpo_topk_logps.detach(), mask_hat).to(student_topk.dtype)  # (B, T, k)
    # $\log \hat\pi_{\text{dpo}}(a)$ for uncached $a$, and the student's mass there
    dpo_uncached = fill_rule(dpo_logps, vocab_size)  # (B, T)
    student_tail = tail_logmass(student_topk).exp()  # (B, T)
    # $\sum_a \pi_\theta(a)\log\pi_{\text{dpo}}(a)$ = cached ids + tail bucket
    expected_dpo_logp = (student_topk.exp() * dpo_logps).sum(-1) + student_tail * dpo_uncached  # (B, T)
    per_sequence = -gamma * beta * _time_reduce(expected_dpo_logp, mask_hat, length_normalize)  # (B,)
    return reduce(add_sft_term(per_sequence, sft_term))


LOSSES: dict[str, Callable[..., Tensor]] = {
    "dckd": dckd_loss,
    "adpa": adpa_loss,
    "q_argmax": q_argmax_kd_loss,
    "q_softmax": q_softmax_kd_loss,
    "adpa_no_ref": reverse_ce_dpo_only_loss,
}
