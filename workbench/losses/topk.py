"""Quantities of a top-k teacher cache (ADPA): the tail mass its k entries leave, the forward KL to a top-k teacher
(Eq. 7's KL term), and the advantage from two teachers' caches with its rules for ids one cache misses."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from workbench.losses.tensors import (
    check_logits_mask,
    check_topk,
    logps_at,
    masked_mean,
    safe_ids,
    safe_logps,
)

ADVANTAGE_CLAMP_RANGE = (1e-8, 1.0 - 1e-8)  # released code's `prob_stabilize` clamp, applied to advantage targets


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
