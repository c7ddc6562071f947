"""PAD losses (Preference-Aligned Distillation, "Capturing Nuanced Preferences: Preference-Aligned Distillation
for Small Language Models"), as pure tensor functions.

Conventions:

* ``*_rewards (B, n)``: one reward per sampled response, ``n`` responses per prompt (PAD §4.1 samples ``n = 4``).
* A ranking is a ``(..., n)`` long tensor of response indices, best first: ``ranking[..., 0]`` is the top item.
* Plackett-Luce (PL) distributions use scores ``beta * rewards``; ``beta = 10`` is PAD's value (App. B.1, Table 4).
* ``*_logits (B, T, V)`` are aligned so position ``t`` predicts response token ``t`` (for a Hugging Face causal LM,
  ``logits[:, :-1]`` against ``input_ids[:, 1:]``). ``mask (B, T)`` is 1 on response tokens; masked-out positions
  never reach a result (ids such as ``-100`` or NaN log-probs there are harmless) and receive zero gradient.
* ``reduction="mean"`` averages per-prompt losses over the batch; ``"sum"`` sums; ``"none"`` returns ``(B,)``.
* Teacher rewards are constants: every loss detaches them.

Exact distributions over all ``n!`` rankings are built from a prefix/suffix factorisation (see
:func:`ranking_logprobs_all`), so PPD at ``n = 8`` never materialises a ``(B, n!, n)`` tensor. Equation numbers
refer to the PAD paper; ``papers/pad.md`` maps each equation to a function here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from workbench.losses.plackett_luce import (
    MAX_EXACT_N,
    SUFFIX_SIZE,
    all_rankings,
    check_exact_n,
    pl_factors,
    plackett_luce_logprob,
    ranking_logprobs_all,
    sample_rankings,
)
from workbench.losses.tensors import check_reduction, shape_text

__all__ = [
    "PAD_BETA",
    "MAX_EXACT_N",
    "avg_logp_reward",
    "log_partition",
    "irl_token_rewards",
    "calibrated_reward",
    "plackett_luce_logprob",
    "all_rankings",
    "ranking_logprobs_all",
    "sample_rankings",
    "vpd_loss",
    "ppd_loss",
    "ppd_loss_mc",
    "decompose_groups",
    "decomposed_loss",
    "LOSSES",
]

PAD_BETA = 10.0  # "beta = 10" (PAD App. B.1, Table 4; searched over [1, 2, 5, 8, 10])
_LN2 = math.log(2.0)
_CHUNK_ELEMENTS = 1 << 18  # rankings x batch processed per step of the exact JSD (~1 MB in float32)


# ---------------------------------------------------------------------------------------------------------------
# validation (plumbing)
# ---------------------------------------------------------------------------------------------------------------


def _check_rewards(student_rewards: Tensor, teacher_rewards: Tensor) -> None:
    for name, x in (("student_rewards", student_rewards), ("teacher_rewards", teacher_rewards)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating (B, n) tensor, got {shape_text(x)}")
    if student_rewards.shape != teacher_rewards.shape:
        raise ValueError(
            f"student_rewards {shape_text(student_rewards)} and teacher_rewards "
            f"{shape_text(teacher_rewards)} must have the same (B, n) shape"
        )
    if student_rewards.shape[1] < 1:
        raise ValueError("need at least one response per prompt (n >= 1)")


def _check_beta(beta: float) -> None:
    if not (float(beta) > 0.0 and math.isfinite(float(beta))):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")


# ---------------------------------------------------------------------------------------------------------------
# §3: language models as reward functions
# ---------------------------------------------------------------------------------------------------------------


def avg_logp_reward(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Reward = mean log-probability of the response tokens (length-normalised log-likelihood).

    PAD Eq. (7).

    $r(y \\mid x) = \\frac{1}{|y|} \\log p_\\pi(y \\mid x) = \\frac{1}{|y|} \\sum_t \\log p_\\pi(y_t \\mid y_{<t}, x)$

    Args:
        token_logps: (B, T) per-token log-probs of the sampled tokens; values at masked-out positions are ignored.
        mask: (B, T) bool or 0/1, 1 on response tokens.

    Returns:
        (B,) rewards; a row with no response token gets 0.
    """
    if token_logps.shape != mask.shape:
        raise ValueError(f"token_logps {shape_text(token_logps)} and mask {shape_text(mask)} must have the same shape")
    mask = mask.bool()
    # $\sum_t \log p(y_t \mid y_{<t}, x)$ over response tokens only
    total = torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)  # (B,)
    # $|y|$
    length = mask.sum(-1).clamp_min(1).to(token_logps.dtype)  # (B,)
    return total / length


def log_partition(logits: Tensor) -> Tensor:
    """Log of the partition function at each position: logsumexp of the logits over the vocabulary.

    PAD §3, the $Z_t$ of Eqs. (4)-(5).

    $\\log Z_t = \\log \\sum_{v \\in \\mathcal{V}} \\exp f_\\pi(v \\mid y_{<t}, x)$

    Args:
        logits: (B, T, V).

    Returns:
        (B, T) log-partition values.
    """
    return torch.logsumexp(logits, dim=-1)  # (B, T)


def irl_token_rewards(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Token reward = logit of the chosen token minus the log-partition of the next position (0 after the last).

    PAD Eq. (4), with $\\log Z_{|y|+1} = 0$ (§3).

    $u(y_t \\mid y_{<t}, x) = f_t - \\log Z_{t+1}$,  $f_t = f_\\pi(y_t \\mid y_{<t}, x)$,
    $Z_{t+1} = \\sum_{v} \\exp f_\\pi(v \\mid y_{\\le t}, x)$

    Alignment: ``logits[:, t]`` is the distribution that predicts ``labels[:, t]``, so $f_t$ is ``logits[:, t]``
    gathered at ``labels[:, t]`` and $\\log Z_{t+1}$ is :func:`log_partition` of ``logits[:, t + 1]``. At the last
    response token of a row (``mask[t]`` set, ``mask[t + 1]`` not, or ``t = T - 1``) the next term is 0. The mask
    is assumed contiguous per row (prompt, then response, then padding); a hole would end a segment there.

    The rewards telescope (PAD Eq. 5): $\\sum_t u_t = \\log p_\\pi(y \\mid x) + \\log Z_1$, where
    $\\log Z_1$ is the log-partition at the first response position and does not depend on $y$, so ranking by
    $\\sum_t u_t$ is ranking by $\\log p_\\pi(y \\mid x)$ (Eq. 6) and, length-normalised, by :func:`avg_logp_reward`.

    Args:
        logits: (B, T, V) logits aligned with ``labels``.
        labels: (B, T) long token ids (anything, e.g. -100, where ``mask`` is 0).
        mask: (B, T) bool or 0/1, 1 on response tokens.

    Returns:
        (B, T) token rewards, 0 at masked-out positions.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) with labels and mask (B, T); got logits {shape_text(logits)}, "
            f"labels {shape_text(labels)}, mask {shape_text(mask)}"
        )
    mask = mask.bool()
    safe_labels = labels.masked_fill(~mask, 0)  # (B, T) pad ids never reach gather
    # $f_t = f_\pi(y_t \mid y_{<t}, x)$
    chosen_logits = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    # $\log Z_t$ at every position
    log_z = log_partition(logits)  # (B, T)
    # $\log Z_{t+1}$: the next position's partition, inside the response only
    next_log_z = torch.cat([log_z[:, 1:], torch.zeros_like(log_z[:, :1])], dim=1)  # (B, T)
    next_in_response = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1) & mask  # (B, T)
    # $\log Z_{|y|+1} = 0$ at the last response token
    next_log_z = torch.where(next_in_response, next_log_z, torch.zeros_like(next_log_z))  # (B, T)
    # $u_t = f_t - \log Z_{t+1}$
    token_rewards = chosen_logits - next_log_z  # (B, T)
    return torch.where(mask, token_rewards, torch.zeros_like(token_rewards))


# ---------------------------------------------------------------------------------------------------------------
# §4.2: reward calibration
# ---------------------------------------------------------------------------------------------------------------


def calibrated_reward(rewards: Tensor | None, log_p_sel: Tensor, alpha: float) -> Tensor:
    """Calibrated reward = (1 - alpha) x likelihood reward + alpha x log MCQ selection probability.

    PAD Eq. (9).

    $\\hat{r}^{tch}(y) = (1 - \\alpha)\\, r^{tch}(y) + \\alpha \\log p_{sel}(y)$

    ``alpha = 1`` uses the selection probability alone; then ``rewards`` may be ``None`` (PAD §5.3 notes this
    skips the teacher's log-likelihood pass). ``alpha = 0`` and ``alpha = 1`` return one term exactly, so an
    infinite value in the unused term cannot turn into ``0 * inf = nan``.

    Args:
        rewards: (B, n) teacher rewards $r^{tch}$ (:func:`avg_logp_reward`), or ``None`` when ``alpha == 1``.
        log_p_sel: (B, n) log selection probabilities from MCQ prompting (PAD Eq. 8,
            ``workbench.scoring.mcq_selection_logprobs``).
        alpha: calibration ratio in [0, 1]; PAD uses 0.8 (§5.1).

    Returns:
        (B, n) calibrated rewards $\\hat{r}^{tch}$.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha (reward calibration ratio, PAD Eq. 9) must lie in [0, 1], got {alpha!r}")
    if alpha == 1.0:
        return log_p_sel.clone()
    if rewards is None:
        raise ValueError("rewards may be None only when alpha == 1")
    if rewards.shape != log_p_sel.shape:
        raise ValueError(
            f"rewards {shape_text(rewards)} and log_p_sel {shape_text(log_p_sel)} must have the same shape"
        )
    if alpha == 0.0:
        return rewards.clone()
    # $\hat{r} = (1-\alpha) r + \alpha \log p_{sel}$
    return (1.0 - alpha) * rewards + alpha * log_p_sel  # (B, n)


# ---------------------------------------------------------------------------------------------------------------
# §4.3: vanilla preference distillation
# ---------------------------------------------------------------------------------------------------------------


def vpd_loss(
    student_rewards: Tensor, teacher_rewards: Tensor, beta: float = PAD_BETA, reduction: str = "mean"
) -> Tensor:
    """Negative log-likelihood of the teacher's ranking under the student's Plackett-Luce model at scale beta.

    PAD Eq. (10). The paper prints Eq. (10) without the minus sign; the text calls it an NLL loss to *maximise*
    the probability of the teacher's preference, so the loss here is the negative log-likelihood.

    $\\mathcal{L}_{VPD} = -\\sum_{i=1}^{n} \\log \\frac{\\exp(\\beta r^{stu}(y^{(i)}))}{\\sum_{j=i}^{n}
    \\exp(\\beta r^{stu}(y^{(j)}))}$, with $y^{(1)} \\succ \\dots \\succ y^{(n)}$ sorted by $\\hat{r}^{tch}$

    Ties in the teacher rewards are broken by response index (stable sort).

    Args:
        student_rewards: (B, n) student rewards $r^{stu}$ (:func:`avg_logp_reward`); carries the gradient.
        teacher_rewards: (B, n) calibrated teacher rewards $\\hat{r}^{tch}$ (:func:`calibrated_reward`); detached.
        beta: reward scale; PAD uses 10 (App. B.1).
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.
    """
    _check_rewards(student_rewards, teacher_rewards)
    _check_beta(beta)
    reduce = check_reduction(reduction)
    # $\tau_n$: responses sorted by teacher reward, best first
    ranking = torch.argsort(teacher_rewards.detach(), dim=-1, descending=True, stable=True)  # (B, n)
    # $-\log p_{stu}(\tau_n)$ under PL($\beta r^{stu}$)
    return reduce(-plackett_luce_logprob(beta * student_rewards, ranking))  # (B,) -> reduced


# ---------------------------------------------------------------------------------------------------------------
# §4.3: probabilistic preference distillation (exact)
# ---------------------------------------------------------------------------------------------------------------


class _FactorisedJSD(torch.autograd.Function):
    """Per-example JSD between two PL distributions given as (prefix, suffix) factors, without materialising n!.

    Inputs are grouped by remaining set: prefix (G, r!, B), suffix (G, m!, B), so the G * r! * m! = n! rankings
    of group g have log-probabilities prefix[g, :, None] + suffix[g, None]. The forward pass walks the groups in
    chunks and, when the student needs a gradient, accumulates it at once: the JSD gradient w.r.t. each
    log-probability is $\\frac{1}{2} q (\\log q - \\log m)$ times the upstream per-example scalar, so backward only
    scales the saved sums. The teacher side gets no gradient.
    """

    @staticmethod
    def forward(ctx, teacher_prefix, teacher_suffix, student_prefix, student_suffix, groups_per_chunk):
        n_groups, _, batch = teacher_prefix.shape
        jsd = teacher_prefix.new_zeros(batch)  # (B,)
        need_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        grad_prefix = torch.empty_like(student_prefix) if need_grad else None
        grad_suffix = torch.empty_like(student_suffix) if need_grad else None
        for start in range(0, n_groups, groups_per_chunk):
            stop = min(start + groups_per_chunk, n_groups)
            # $\log p(\tau)$, $\log q(\tau)$ for the rankings of these groups
            log_p = teacher_suffix[start:stop, None] + teacher_prefix[start:stop, :, None]  # (g, r!, m!, B)
            log_q = student_suffix[start:stop, None] + student_prefix[start:stop, :, None]  # (g, r!, m!, B)
            # $\log m = \log \frac{p + q}{2}$
            log_m = torch.logaddexp(log_p, log_q).sub_(_LN2)  # (g, r!, m!, B)
            # $p (\log p - \log m)$ summed: the $D_{KL}(P \| M)$ part
            jsd += (log_p - log_m).mul_(log_p.exp()).sum((0, 1, 2))  # (B,)
            # $q (\log q - \log m)$: the $D_{KL}(Q \| M)$ part, and twice the gradient w.r.t. $\log q$
            weighted = (log_q - log_m).mul_(log_q.exp())  # (g, r!, m!, B)
            jsd += weighted.sum((0, 1, 2))
            if need_grad:
                grad_prefix[start:stop] = weighted.sum(2)  # (g, r!, B)
                grad_suffix[start:stop] = weighted.sum(1)  # (g, m!, B)
        ctx.save_for_backward(grad_prefix, grad_suffix)
        # $\mathrm{JSD} = \frac{1}{2}[D_{KL}(P \| M) + D_{KL}(Q \| M)]$
        return jsd.mul_(0.5)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_jsd):
        grad_prefix, grad_suffix = ctx.saved_tensors
        half = 0.5 * grad_jsd  # (B,)
        return (
            None,
            None,
            None if grad_prefix is None else grad_prefix * half,
            None if grad_suffix is None else grad_suffix * half,
            None,
        )


def ppd_loss(
    student_rewards: Tensor, teacher_rewards: Tensor, beta: float = PAD_BETA, reduction: str = "mean"
) -> Tensor:
    """Jensen-Shannon divergence between the teacher's and the student's Plackett-Luce distributions over all n!
    rankings, per prompt.

    PAD Eqs. (11)-(12).

    $\\mathcal{L}_{PPD} = \\frac{1}{2} \\big[ D_{KL}(P \\| M) + D_{KL}(Q \\| M) \\big]$, $M = \\frac{P + Q}{2}$,
    $P(\\tau) = \\mathrm{PL}(\\tau; \\beta \\hat{r}^{tch})$, $Q(\\tau) = \\mathrm{PL}(\\tau; \\beta r^{stu})$

    Computed in log space ($\\log m = \\mathrm{logaddexp}(\\log p, \\log q) - \\log 2$), exactly, per example, then
    reduced over the batch; $0 \\le \\mathcal{L}_{PPD} \\le \\log 2$. Note: the authors' released code computes
    $D_{KL}(M \\| P)$ (and $D_{KL}(M \\| Q)$) instead of $D_{KL}(P \\| M)$, and forms the mixture across batch
    elements; this function is the true per-example JSD of Eq. (12), so batch elements never mix.

    Cost: O(n! * B) time and O(chunk) extra memory (n = 8, B = 128, float32: ~20 ms forward + backward on 2 CPU
    threads, ~600x a per-ranking Python loop, see ``bench/bench_ppd.py``); refused for n > ``MAX_EXACT_N``:
    use :func:`ppd_loss_mc` or
    :func:`decomposed_loss` (PAD §4.4).

    Args:
        student_rewards: (B, n) student rewards $r^{stu}$; carries the gradient.
        teacher_rewards: (B, n) calibrated teacher rewards $\\hat{r}^{tch}$; detached.
        beta: reward scale; PAD uses 10 (App. B.1).
        reduction: "mean" (scalar), "sum" or "none" ((B,)).

    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.
    """
    _check_rewards(student_rewards, teacher_rewards)
    _check_beta(beta)
    reduce = check_reduction(reduction)
    batch, n = student_rewards.shape
    check_exact_n(n)
    if n == 1:  # a single ranking: P = Q
        return reduce(student_rewards.sum(-1) * 0.0)
    m = min(n, SUFFIX_SIZE)
    with torch.no_grad():
        teacher_prefix, teacher_suffix, structure = pl_factors(
            beta * teacher_rewards.detach().to(student_rewards.dtype), m
        )
    student_prefix, student_suffix, _ = pl_factors(beta * student_rewards, m)
    order = structure[4].to(student_rewards.device)
    n_groups, suffix_len = teacher_suffix.shape[:2]
    # prefixes grouped by remaining set: (G, r!, B)
    teacher_prefix = teacher_prefix.index_select(0, order).view(n_groups, -1, batch)
    student_prefix = student_prefix.index_select(0, order).view(n_groups, -1, batch)
    groups_per_chunk = max(1, _CHUNK_ELEMENTS // (teacher_prefix.shape[1] * suffix_len * batch))
    jsd = _FactorisedJSD.apply(teacher_prefix, teacher_suffix, student_prefix, student_suffix, groups_per_chunk)  # (B,)
    return reduce(jsd)


# ---------------------------------------------------------------------------------------------------------------
# §4.3: probabilistic preference distillation (Monte-Carlo, any n)
# ---------------------------------------------------------------------------------------------------------------

_MC_ESTIMATORS = ("mixture", "split")


def ppd_loss_mc(
    student_rewards: Tensor,
    teacher_rewards: Tensor,
    beta: float = PAD_BETA,
    num_samples: int = 256,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    estimator: str = "mixture",
) -> Tensor:
    """Monte-Carlo Jensen-Shannon divergence between teacher and student Plackett-Luce distributions, from K
    rankings sampled from each (Gumbel-perturbed sorting) and exact PL log-probabilities of those rankings.

    PAD Eq. (12), estimated. For any sampled ranking $\\tau$, $\\log p(\\tau)$, $\\log q(\\tau)$ and
    $\\log m(\\tau) = \\mathrm{logaddexp}(\\log p, \\log q) - \\log 2$ are exact (O(n) each). With
    $\\tau^p_k \\sim P$, $\\tau^q_k \\sim Q$, $k = 1..K$:

    * ``estimator="split"`` (each KL term by its own sample mean):
      $\\widehat{\\mathrm{JSD}} = \\frac{1}{2K} \\sum_k [\\log p - \\log m](\\tau^p_k)
      + \\frac{1}{2K} \\sum_k [\\log q - \\log m](\\tau^q_k)$.
    * ``estimator="mixture"`` (default): the 2K draws are a stratified sample of $M$, so with
      $t = p / (p + q) = \\sigma(\\log p - \\log q)$,
      $\\widehat{\\mathrm{JSD}} = \\frac{1}{2K} \\sum_{\\tau \\in \\text{all } 2K}
      \\big[ t \\log 2t + (1 - t) \\log 2(1 - t) \\big](\\tau)$. Every term lies in $[0, \\log 2]$, so the
      estimate is never negative and its variance is at most $(\\log 2)^2 / (8K)$; "split" terms are unbounded
      below ($\\log p - \\log m \\to -\\infty$ where $q \\gg p$) and it can return negative values.

    Both values are unbiased for the JSD. Gradient (w.r.t. student rewards only): sampling from $Q$ depends on
    the student, so there is no pathwise gradient; the exact gradient is
    $\\nabla \\mathrm{JSD} = \\frac{1}{2} \\mathbb{E}_{Q}[(\\log q - \\log m) \\nabla \\log q]$ (the terms through
    $\\log m$ cancel), estimated by score function (REINFORCE) with a baseline:
    "split" uses the student draws, $\\frac{1}{2K} \\sum_k (w_k - b_k) \\nabla \\log q(\\tau^q_k)$, $w = \\log q -
    \\log m$, $b_k$ the leave-one-out mean of $w$; "mixture" uses all 2K draws importance-weighted to $M$,
    $\\frac{1}{2K} \\sum (1 - t)(\\log 2(1 - t) - b) \\nabla \\log q$, where draws $k$ (from P) and $K + k$
    (from Q) form one stratified draw of $M$ and share the baseline $b_k$, the $(1 - t)$-weighted mean of
    $\\log 2(1 - t)$ over the other K - 1 pairs
    (valid because $\\mathbb{E}_M[(1 - t) \\nabla \\log q] = \\frac{1}{2}\\mathbb{E}_Q[\\nabla \\log q] = 0$
    and $b_k$ is independent of pair $k$).
    The returned tensor is ``value.detach() + (surrogate - surrogate.detach())``: its value is the estimate, its
    gradient the score-function estimate. Bias: none; both the value and the gradient are unbiased (a nonlinear
    function of the estimate, e.g. its square or a ratio of two estimates, would be biased).
    Variance: O(1/K), the gradient's larger than the value's. Measured by ``bench/bench_ppd.py`` (n = 8, B = 128,
    teacher rewards 0.2 N(0, 1), beta = 10, K = 256): "mixture" 0.1 % relative error of the batch-mean loss, 1.8 %
    mean per-example error, gradient cosine 0.994 to :func:`ppd_loss`; "split" 0.2 %, 4.3 %, 0.96. Exact PPD is
    cheaper than K = 256 at n <= 8, so use this for n > 8 (or inside :func:`decomposed_loss` with large groups).

    Args:
        student_rewards: (B, n) student rewards; carries the gradient.
        teacher_rewards: (B, n) calibrated teacher rewards; detached.
        beta: reward scale; PAD uses 10 (App. B.1).
        num_samples: K rankings drawn from each of P and Q (2K per prompt); K >= 2 for the baseline.
        generator: optional ``torch.Generator`` (on the rewards' device) for reproducible draws.
        reduction: "mean" (scalar), "sum" or "none" ((B,)).
        estimator: "mixture" (default, bounded terms) or "split" (one sample mean per KL term).

    Returns:
        The estimated loss: a scalar, or (B,) with ``reduction="none"``.
    """
    _check_rewards(student_rewards, teacher_rewards)
    _check_beta(beta)
    reduce = check_reduction(reduction)
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be >= 2 (leave-one-out baseline), got {num_samples!r}")
    if estimator not in _MC_ESTIMATORS:
        raise ValueError(f"estimator must be one of {_MC_ESTIMATORS}, got {estimator!r}")
    k = int(num_samples)
    teacher_scores = beta * teacher_rewards.detach().to(student_rewards.dtype)  # (B, n)
    student_scores = beta * student_rewards  # (B, n)
    # $\tau^p_k \sim P$, $\tau^q_k \sim Q$ by Gumbel-perturbed sorting
    rankings = torch.cat(
        [sample_rankings(teacher_scores, k, generator), sample_rankings(student_scores.detach(), k, generator)], dim=1
    )  # (B, 2K, n)
    log_p = plackett_luce_logprob(teacher_scores[:, None, :], rankings)  # (B, 2K)
    log_q = plackett_luce_logprob(student_scores[:, None, :], rankings)  # (B, 2K) differentiable
    with torch.no_grad():
        # $\log m = \mathrm{logaddexp}(\log p, \log q) - \log 2$
        log_m = torch.logaddexp(log_p, log_q) - _LN2  # (B, 2K)
        if estimator == "split":
            # $\frac{1}{2}\overline{[\log p - \log m]}_{P} + \frac{1}{2}\overline{[\log q - \log m]}_{Q}$
            value = 0.5 * (log_p - log_m)[:, :k].mean(-1) + 0.5 * (log_q - log_m)[:, k:].mean(-1)  # (B,)
            # $w = \log q - \log m$ on the student draws, leave-one-out baseline
            weight = (log_q - log_m)[:, k:]  # (B, K)
            weight = weight - (weight.sum(-1, keepdim=True) - weight) / (k - 1)
            weight = torch.cat([torch.zeros_like(weight), weight], dim=1)  # (B, 2K) teacher draws unused
            scale = 0.5 / k
        else:
            # $1 - t = q / (p + q)$
            one_minus_t = torch.sigmoid(log_q - log_p)  # (B, 2K)
            # $\log 2t$ and $\log 2(1 - t)$ as $\log p - \log m$ and $\log q - \log m$
            term = (1.0 - one_minus_t) * (log_p - log_m) + one_minus_t * (log_q - log_m)  # (B, 2K) in [0, ln 2]
            value = term.mean(-1)  # (B,)
            # $(1 - t)(\log 2(1 - t) - b)$; draws k and K + k form one stratified draw of M, and its baseline
            # $b_k$ (the (1 - t)-weighted mean score of the other K - 1 pairs) is independent of pair k
            score = log_q - log_m  # (B, 2K) $= \log 2(1 - t)$
            pair_weighted = 0.5 * (one_minus_t * score)[:, :k] + 0.5 * (one_minus_t * score)[:, k:]  # (B, K)
            pair_mass = 0.5 * one_minus_t[:, :k] + 0.5 * one_minus_t[:, k:]  # (B, K)
            baseline = (pair_weighted.sum(-1, keepdim=True) - pair_weighted) / (
                pair_mass.sum(-1, keepdim=True) - pair_mass
            ).clamp_min(torch.finfo(log_q.dtype).tiny)
            weight = one_minus_t * (score - torch.cat([baseline, baseline], dim=1))  # (B, 2K)
            scale = 1.0 / (2 * k)
    # surrogate whose gradient is the score-function estimate of $\nabla \mathrm{JSD}$
    surrogate = scale * (weight * log_q).sum(-1)  # (B,)
    return reduce(value + (surrogate - surrogate.detach()))


# ---------------------------------------------------------------------------------------------------------------
# §4.4 / App. A: preference decomposition
# ---------------------------------------------------------------------------------------------------------------


def decompose_groups(n: int, m: int, generator: torch.Generator | None = None) -> Tensor:
    """Partition of the n responses into k = n / m groups of m (random if a generator is given, else contiguous).

    PAD Eq. (13): the decomposition $\\phi(\\tau_n) = \\{\\tau_m^{(1)}, \\dots, \\tau_m^{(k)}\\}$ (§4.4, Fig. 3).

    $\\{0, \\dots, n-1\\} = G_1 \\sqcup \\dots \\sqcup G_k, \\quad |G_i| = m$

    Args:
        n: responses per prompt.
        m: group size; must divide n.
        generator: optional ``torch.Generator`` for a random split (CPU).

    Returns:
        (k, m) long index tensor; row i lists the responses of group i.
    """
    if m < 1 or n < 1 or n % m != 0:
        raise ValueError(
            f"group size m = {m} must be a positive divisor of n = {n} (PAD §4.4 splits n responses "
            f"into k = n / m groups)"
        )
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return order.view(n // m, m)


def decomposed_loss(
    loss_fn: Callable[..., Tensor], student_rewards: Tensor, teacher_rewards: Tensor, groups: Tensor, **kw
) -> Tensor:
    """Sum over groups of the loss on each group's sub-list of responses.

    PAD Eqs. (13)-(14) and App. A.

    $\\mathcal{L}(\\phi(\\tau_n)) = \\sum_{i=1}^{k} \\mathcal{L}(\\tau_m^{(i)})$

    For VPD this is Eq. (14) exactly (the log-likelihood of independent sub-rankings is a sum). For KL the sum is
    exact too when both distributions factorise over groups (App. A). For PPD the sum of per-group JSDs is what
    App. A trains, but it is *not* the JSD between the two product distributions, whose mixture does not factorise
    over groups: that JSD is at most the sum (conditionally independent groups, so the mutual-information form
    is subadditive), with equality only in degenerate cases. Groups are evaluated in one batched call of
    ``loss_fn`` on (B * k, m) rewards.

    Args:
        loss_fn: a loss with signature ``loss_fn(student_rewards, teacher_rewards, ..., reduction=...)``
            returning (B',) with ``reduction="none"`` (every entry of ``LOSSES``).
        student_rewards: (B, n).
        teacher_rewards: (B, n).
        groups: (k, m) long indices from :func:`decompose_groups`.
        **kw: forwarded to ``loss_fn`` (``beta``, ``num_samples``, ``generator``, ...); ``reduction`` (default
            "mean") is applied to the per-prompt sums.

    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"``.
    """
    _check_rewards(student_rewards, teacher_rewards)
    reduce = check_reduction(kw.pop("reduction", "mean"))
    if groups.dim() != 2:
        raise ValueError(f"groups must be a (k, m) index tensor, got {shape_text(groups)}")
    batch = student_rewards.shape[0]
    n_groups, size = groups.shape
    index = groups.to(student_rewards.device).reshape(-1)  # (k m,)
    # $\tau_m^{(i)}$: each group's responses as its own prompt row
    student_groups = student_rewards.index_select(1, index).reshape(batch * n_groups, size)  # (B k, m)
    teacher_groups = teacher_rewards.index_select(1, index).reshape(batch * n_groups, size)  # (B k, m)
    per_group = loss_fn(student_groups, teacher_groups, reduction="none", **kw)  # (B k,)
    # $\sum_i \mathcal{L}(\tau_m^{(i)})$
    return reduce(per_group.view(batch, n_groups).sum(-1))  # (B,) -> reduced


LOSSES: dict[str, Callable[..., Tensor]] = {
    "vpd": vpd_loss,
    "ppd": ppd_loss,
    "ppd_mc": ppd_loss_mc,
}
