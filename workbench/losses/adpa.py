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

import math
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
ADVANTAGE_CLAMP_RANGE = (1e-8, 1.0 - 1e-8)  # released code's `prob_stabilize` clamp, applied to advantage targets


# ---------------------------------------------------------------------------------------------------------------
# top-k cache quantities
# ---------------------------------------------------------------------------------------------------------------


def tail_logmass(topk_logps: Tensor, min_tail: float | None = None) -> Tensor:
    """Log of the probability mass outside the top-k: log(1 - sum_k p_k), floored at `min_tail` for stability.

    Top-k cache identity (ADPA §4.1, "top 50 probabilities"; no equation number in the paper).

    .. math:: \\log m_{\\text{tail}} = \\log\\bigl(1 - \\textstyle\\sum_{i \\le k} e^{\\ell_i}\\bigr)
              = \\operatorname{log1mexp}\\bigl(\\operatorname{logsumexp}_i \\ell_i\\bigr)

    The clamp: when k = V, or when rounding makes ``sum_k p`` reach or exceed 1, the exact tail is 0 (log = -inf) or
    undefined. We clamp ``logsumexp`` to at most ``log(1 - min_tail)``, so the returned value is at least
    ``log(min_tail)`` (default ``min_tail = torch.finfo(dtype).eps``: 1.2e-7 in float32, log ~ -15.9; 2.2e-16 in
    float64). A tail smaller than ``min_tail`` is reported as ``min_tail``; gradients through a clamped entry are 0.
    Because the same floor is applied to teacher and student in :func:`topk_forward_kl`, the tail bucket contributes
    exactly 0 when k = V.

    Args:
        topk_logps: (..., k) log-probabilities of the k cached tokens, e.g. (B, T, k).
        min_tail: floor on the returned tail mass (not its log); default machine epsilon of the dtype.

    Returns:
        (...) log tail mass, e.g. (B, T); finite everywhere for finite input.
    """
    if min_tail is None:
        min_tail = torch.finfo(topk_logps.dtype).eps
    # $L = \log \sum_{i \le k} p_i$, clamped to $L \le \log(1 - m_{\min})$
    log_topk_mass = torch.logsumexp(topk_logps, dim=-1).clamp(max=math.log1p(-min_tail))  # (...)
    # $\operatorname{log1mexp}(L)$: $\log(-\operatorname{expm1} L)$ near 0, $\operatorname{log1p}(-e^{L})$ far from it
    near_zero = log_topk_mass > -math.log(2.0)
    return torch.where(
        near_zero,
        torch.log(-torch.expm1(log_topk_mass)),
        torch.log1p(-torch.exp(log_topk_mass.clamp(max=-math.log(2.0)))),
    )


def topk_forward_kl(
    teacher_topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    student_logits: Tensor,
    mask: Tensor,
) -> Tensor:
    """Per-token forward KL(teacher || student) over the k cached tokens plus one tail bucket, averaged per sequence.

    ADPA Eq. (5)/(6) term (the KL inside the sum), per-token normalised as in Eq. (1).

    .. math:: \\frac{1}{|y|}\\sum_t \\Bigl[\\sum_{a \\in K_t} \\pi_t(a)\\log\\frac{\\pi_t(a)}{\\pi_\\theta(a)}
              + m_t \\log\\frac{m_t}{m_\\theta}\\Bigr],\\quad m_t = 1-\\sum_{a\\in K_t}\\pi_t(a),\\;
              m_\\theta = 1-\\sum_{a\\in K_t}\\pi_\\theta(a)

    The tail bucket lumps every token outside the teacher's top-k ``K_t`` (for both models the *same* set of ids),
    so the summand is the KL between two (k+1)-point distributions: it is >= 0 and, by the chain rule of KL, a lower
    bound on the full-vocabulary KL, with equality when k = V or when the student's tail is proportional to the
    teacher's. Per-token values are clamped at 0 to remove float rounding of order eps (both buckets' tails are
    floored at eps by :func:`tail_logmass`).

    Args:
        teacher_topk_ids: (B, T, k) int64 teacher top-k token ids.
        teacher_topk_logps: (B, T, k) teacher log-probs of those ids (full-softmax normalised).
        student_logits: (B, T, V) student logits; position t predicts response token t.
        mask: (B, T) 1 on response tokens.

    Returns:
        (B,) mean per-token KL over each sequence's response tokens (0 for a sequence with none).
    """
    check_logits_mask(student_logits, mask, "student_logits", "mask")
    check_topk(
        teacher_topk_ids,
        teacher_topk_logps,
        "teacher_topk_ids",
        "teacher_topk_logps",
        leading=student_logits.shape[:2],
        vocab_size=student_logits.shape[-1],
        mask=mask,
    )
    ids = safe_ids(teacher_topk_ids, mask)  # (B, T, k)
    # $\log \pi_\theta(a)$ for $a \in K_t$
    student_topk = logps_at(student_logits, mask, ids)  # (B, T, k)
    teacher_topk = safe_logps(teacher_topk_logps, mask).to(student_topk.dtype)  # (B, T, k)
    # $\log m_t$, $\log m_\theta$: mass outside the same $K_t$
    teacher_tail = tail_logmass(teacher_topk)  # (B, T)
    student_tail = tail_logmass(student_topk)  # (B, T)
    teacher_buckets = torch.cat([teacher_topk, teacher_tail[..., None]], dim=-1)  # (B, T, k+1)
    student_buckets = torch.cat([student_topk, student_tail[..., None]], dim=-1)  # (B, T, k+1)
    # $\sum_j p_j (\log p_j - \log q_j)$, with $0 \log 0 = 0$
    teacher_probs = teacher_buckets.exp()  # (B, T, k+1)
    per_bucket = torch.where(
        teacher_probs > 0, teacher_probs * (teacher_buckets - student_buckets), torch.zeros_like(teacher_probs)
    )  # (B, T, k+1)
    per_token = per_bucket.sum(-1).clamp(min=0.0)  # (B, T)
    return masked_mean(per_token, mask)


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


# ---------------------------------------------------------------------------------------------------------------
# advantage from two teacher caches
# ---------------------------------------------------------------------------------------------------------------


def _missing_logp_tail_uniform(topk_logps: Tensor, vocab_size: int | None) -> Tensor:
    """Missing token's log-prob if the tail mass were spread evenly: log m_tail - log(V - k). Needs vocab_size."""
    k = topk_logps.shape[-1]
    if vocab_size is None:
        raise ValueError("missing_rule='tail_uniform' needs vocab_size (V) to spread the tail over V - k tokens")
    if vocab_size <= k:
        raise ValueError(f"missing_rule='tail_uniform' needs vocab_size > k, got vocab_size={vocab_size}, k={k}")
    # $\log \hat\pi(a) = \log m_{\text{tail}} - \log(V - k)$
    return tail_logmass(topk_logps) - math.log(vocab_size - k)  # (B, T)


def _missing_logp_tail_max(topk_logps: Tensor, vocab_size: int | None) -> Tensor:
    """Largest log-prob any token outside the top-k can have: min(smallest top-k log-prob, log tail mass)."""
    # $\log \hat\pi(a) = \min\bigl(\min_{i \le k} \ell_i,\ \log m_{\text{tail}}\bigr)$
    return torch.minimum(topk_logps.min(dim=-1).values, tail_logmass(topk_logps))  # (B, T)


MISSING_LOGP_RULES: dict[str, Callable[[Tensor, int | None], Tensor]] = {
    "tail_uniform": _missing_logp_tail_uniform,
    "tail_max": _missing_logp_tail_max,
}
"""How to fill log pi(a) for a token a absent from a teacher's top-k cache: (topk_logps (B,T,k), V) -> (B,T).

``tail_uniform``: the tail mass spread evenly over the V - k unseen tokens, i.e. the *mean* unseen probability. A
token that made the other teacher's top-k is probably above that mean, so this tends to under-estimate its log-prob.
``tail_max``: ``min(min_i l_i, log m_tail)``, the largest value any unseen token can take (each unseen probability is
at most the smallest cached one and at most the tail mass): an upper bound on log pi(a). With V >> k the tail mass
exceeds the smallest cached probability and this is exactly the paper's rule (§4.1: "subtracting the lowest
probability in the reference's top 50").
"""


def advantage_from_topk(
    dpo_topk_ids: Tensor,
    dpo_topk_logps: Tensor,
    ref_topk_ids: Tensor,
    ref_topk_logps: Tensor,
    beta: float,
    missing_rule: str = "tail_max",
    *,
    vocab_size: int | None = None,
    advantage_clamp: bool = False,
) -> tuple[Tensor, Tensor]:
    """Advantage of each DPO-teacher top-k token: beta times its DPO-teacher log-prob minus its reference log-prob.

    ADPA Eq. (8) (derived in Appendix A, Eq. 25).

    .. math:: A_{\\text{dpo}}(s_t, a)
              = \\beta\\log\\frac{\\pi_{\\text{dpo}}(a\\mid s_t)}{\\pi_{\\text{ref}}(a\\mid s_t)},
              \\qquad a \\in K^{\\text{dpo}}_t

    The support is the DPO teacher's top-k ``K^dpo_t``; tokens only in the reference's top-k are dropped (as in the
    paper, §4.1). For ``a in K^dpo_t`` missing from the reference's top-k, ``log pi_ref(a)`` is filled by
    ``MISSING_LOGP_RULES[missing_rule]`` applied to the reference cache ("tail_max" default, the paper's own rule:
    the largest probability an unseen token can have, an upper bound on pi_ref(a) hence a lower bound on A;
    "tail_uniform": the reference tail spread evenly over V - k tokens, the mean unseen probability, which tends
    to *over*-state A for such tokens). Cached positions that are padding give finite garbage; mask them downstream.

    ``advantage_clamp=True`` reproduces the released code, whose target loader clamps every target into
    ``[1e-8, 1 - 1e-8]`` as if it were a probability (``prob_stabilize``). For advantages this means: every A <= 0
    becomes 1e-8, so dispreferred tokens are no longer pushed down (the "decrease the probability of negative-
    advantage actions" half of Eq. 12 disappears); and every A >= 1 is capped at 1 - 1e-8. The objective then only
    rewards mass on tokens the DPO teacher up-weighted, with a bounded weight.

    Args:
        dpo_topk_ids: (B, T, k) DPO teacher top-k ids on the student's states.
        dpo_topk_logps: (B, T, k) their log-probs under the DPO teacher.
        ref_topk_ids: (B, T, k_ref) reference teacher top-k ids on the same states.
        ref_topk_logps: (B, T, k_ref) their log-probs under the reference teacher.
        beta: the DPO teacher's beta (paper: 0.05; released recipe: 0.01). Use beta=1 for the released code's raw
            log-ratio targets.
        missing_rule: key of ``MISSING_LOGP_RULES``.
        vocab_size: V, needed by "tail_uniform".
        advantage_clamp: clamp A into ``ADVANTAGE_CLAMP_RANGE`` as the released code does.

    Returns:
        (advantage_ids (B, T, k), advantages (B, T, k)): ids are ``dpo_topk_ids``; advantages carry no gradient.
    """
    check_topk(dpo_topk_ids, dpo_topk_logps, "dpo_topk_ids", "dpo_topk_logps")
    check_topk(ref_topk_ids, ref_topk_logps, "ref_topk_ids", "ref_topk_logps", leading=dpo_topk_ids.shape[:2])
    try:
        fill_rule = MISSING_LOGP_RULES[missing_rule]
    except KeyError:
        raise ValueError(f"missing_rule must be one of {sorted(MISSING_LOGP_RULES)}, got {missing_rule!r}") from None
    dpo_logps = dpo_topk_logps.detach()  # (B, T, k)
    ref_logps = ref_topk_logps.detach().to(dpo_logps.dtype)  # (B, T, k_ref)
    # match $a \in K^{\text{dpo}}_t$ against $K^{\text{ref}}_t$
    same_token = dpo_topk_ids[..., :, None] == ref_topk_ids[..., None, :]  # (B, T, k, k_ref)
    in_ref = same_token.any(-1)  # (B, T, k)
    # $\log \pi_{\text{ref}}(a)$ where cached (top-k ids are distinct, so at most one match)
    matched = torch.where(same_token, ref_logps[..., None, :], torch.zeros_like(ref_logps[..., None, :])).sum(-1)
    # $\log \hat\pi_{\text{ref}}(a)$ where not cached
    filled = fill_rule(ref_logps, vocab_size)[..., None].expand_as(matched)  # (B, T, k)
    ref_at_dpo = torch.where(in_ref, matched, filled)  # (B, T, k)
    # $A = \beta(\log \pi_{\text{dpo}}(a) - \log \pi_{\text{ref}}(a))$, Eq. (8)
    advantages = beta * (dpo_logps - ref_at_dpo)  # (B, T, k)
    if advantage_clamp:
        # released code: $A \leftarrow \operatorname{clamp}(A, 10^{-8}, 1 - 10^{-8})$
        advantages = advantages.clamp(*ADVANTAGE_CLAMP_RANGE)
    return dpo_topk_ids, advantages


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
