"""Plackett-Luce rankings (PAD §2): the log-probability of a ranking, every ranking of n items with its factorised
log-probability, and sampled rankings."""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from workbench.losses.tensors import shape_text

MAX_EXACT_N = 10  # 10! = 3.6 M rankings per prompt; beyond that use ppd_loss_mc


SUFFIX_SIZE = 5  # orderings of the last 5 items are tabulated per subset (see pl_factors)


def check_exact_n(n: int) -> None:
    if n > MAX_EXACT_N:
        raise ValueError(
            f"the exact distribution over all n! rankings is limited to n <= {MAX_EXACT_N} "
            f"(n = {n} gives {math.factorial(n):,} rankings per prompt); use ppd_loss_mc "
            f"(Monte-Carlo JSD) or decomposed_loss (PAD §4.4) for larger n"
        )


def plackett_luce_logprob(scores: Tensor, rankings: Tensor) -> Tensor:
    """Log-probability of a ranking: sum over positions of the chosen score minus logsumexp of the remaining ones.

    PAD Eq. (2) (ListMLE form; O(n) per ranking with a reverse cumulative logsumexp).

    $\\log p(\\tau_n) = \\sum_{i=1}^{n} \\Big[ s_{\\tau(i)} - \\log \\sum_{j=i}^{n} \\exp s_{\\tau(j)} \\Big]$

    Args:
        scores: (..., n) item scores, e.g. ``beta * rewards`` (B, n); broadcast against ``rankings``' leading dims.
        rankings: (..., n) long, a permutation of ``range(n)`` per row, best item first.

    Returns:
        (...) log-probabilities, the shape of ``rankings[..., 0]``.
    """
    if rankings.shape[-1] != scores.shape[-1]:
        raise ValueError(f"scores {shape_text(scores)} and rankings {shape_text(rankings)} must share the last dim n")
    scores = scores.expand(*rankings.shape[:-1], scores.shape[-1])
    # $s_{\tau(i)}$: scores in ranked order
    ranked = scores.gather(-1, rankings)  # (..., n)
    # $\log \sum_{j \ge i} \exp s_{\tau(j)}$: reverse cumulative logsumexp
    tail = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)  # (..., n)
    return (ranked - tail).sum(-1)  # (...)


@functools.cache
def _all_rankings_cpu(n: int) -> Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long).view(-1, n)


def all_rankings(n: int) -> Tensor:
    """All n! rankings of n items in ``itertools.permutations`` (lexicographic) order, computed once per n.

    PAD Eq. (11): the set $\\mathcal{T}$ of all rankings.

    Args:
        n: number of items.

    Returns:
        (n!, n) long CPU tensor; row ``k`` is the ranking whose log-probability is column ``k`` of
        :func:`ranking_logprobs_all`. Shared cache: do not modify in place.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_exact_n(n)
    return _all_rankings_cpu(n)


@functools.cache
def pl_structure(n: int, m: int):
    """Index tensors for :func:`pl_factors` (pure combinatorics of n items; CPU, cached per (n, m)).

    A ranking is split into a prefix (its first r = n - m items) and a suffix (the ordering of the m items left).
    Returns (subset_masks, prefix_levels, remaining_index, suffix_levels, prefix_order_by_remaining):
      subset_masks (2^n - 1, n) bool: row b - 1 marks the members of bit-set b;
      prefix_levels: per prefix length i = 1..r, (child_items, complement_bits - 1, width) over the prefixes of
        length i - 1 in lexicographic order, each followed by its width = n - i + 1 unused items ascending;
      remaining_index (N_r,): index of each length-r prefix's remaining set among combinations(range(n), m);
      suffix_levels: per subset size k = 2..m, (members, child_subset_index, bits - 1, C(n, k), k);
      prefix_order_by_remaining (N_r,): a stable sort of the prefixes by their remaining set.
    """
    r = n - m
    subset_masks = torch.tensor([[(bits >> i) & 1 for i in range(n)] for bits in range(1, 1 << n)], dtype=torch.bool)
    prefixes: list[tuple[int, ...]] = [()]
    prefix_levels = []
    for i in range(r):
        children, complement = [], []
        for prefix in prefixes:
            unused = [j for j in range(n) if j not in prefix]
            complement.append(sum(1 << j for j in unused) - 1)
            children.extend(unused)
        prefix_levels.append((torch.tensor(children), torch.tensor(complement), n - i))
        prefixes = [prefix + (j,) for prefix in prefixes for j in range(n) if j not in prefix]
    combos = {k: list(itertools.combinations(range(n), k)) for k in range(1, m + 1)}
    position = {k: {subset: idx for idx, subset in enumerate(combos[k])} for k in combos}
    remaining_index = torch.tensor([position[m][tuple(j for j in range(n) if j not in prefix)] for prefix in prefixes])
    suffix_levels = []
    for k in range(2, m + 1):
        members = [j for subset in combos[k] for j in subset]
        child = [position[k - 1][tuple(x for x in subset if x != j)] for subset in combos[k] for j in subset]
        bits = [sum(1 << j for j in subset) - 1 for subset in combos[k]]
        suffix_levels.append((torch.tensor(members), torch.tensor(child), torch.tensor(bits), len(combos[k]), k))
    order = torch.argsort(remaining_index, stable=True)
    return subset_masks, prefix_levels, remaining_index, suffix_levels, order


def pl_factors(scores: Tensor, m: int):
    """Prefix and suffix log-probabilities whose sums are the PL log-probabilities of all n! rankings.

    PAD Eq. (2), factorised. With prefix $P = (\\tau(1), \\dots, \\tau(r))$ and remaining set $R = [n] \\setminus P$,
    $\\log p(\\tau) = C(P) + S_R(\\sigma)$ where $C(P) = \\sum_{i \\le r} [s_{\\tau(i)} - \\mathrm{LSE}(s_{[n]
    \\setminus \\tau(<i)})]$ and $S_R(\\sigma)$ is the PL log-probability of the ordering $\\sigma$ of $R$ alone.
    $S_R$ is built by the recursion $S_R(j, \\sigma') = s_j - \\mathrm{LSE}(s_R) + S_{R \\setminus j}(\\sigma')$
    over subsets of size 2..m, so each subset's table is computed once and shared by all r! prefixes that leave it.

    Args:
        scores: (B, n).
        m: suffix size, 1 <= m <= n.

    Returns:
        prefix (N_r, B) over prefixes in lexicographic order; suffix (C(n, m), m!, B) over subsets in
        ``itertools.combinations`` order and orderings in lexicographic order; the structure tuple.
    """
    batch, n = scores.shape
    structure = pl_structure(n, m)
    subset_masks, prefix_levels, _, suffix_levels, _ = structure
    subset_masks = subset_masks.to(scores.device)
    scores_t = scores.t()  # (n, B)
    # $\mathrm{LSE}(s_A)$ for every non-empty subset A
    subset_lse = torch.where(subset_masks[:, :, None], scores_t[None], -math.inf).logsumexp(1)  # (2^n - 1, B)
    prefix = scores_t.new_zeros(1, batch)  # (1, B) the empty prefix
    for children, complement, width in prefix_levels:
        children, complement = children.to(scores.device), complement.to(scores.device)
        # $s_j - \mathrm{LSE}(s_{[n] \setminus P})$ for each unused item j of each prefix P
        step = (
            scores_t.index_select(0, children).view(-1, width, batch)
            - subset_lse.index_select(0, complement)[:, None, :]
        )  # (N_{i-1}, width, B)
        prefix = (prefix[:, None, :] + step).view(-1, batch)  # (N_i, B)
    suffix = scores_t.new_zeros(n, 1, batch)  # (n, 1!, B): a single item has one ordering, log-prob 0
    for members, child, bits, n_subsets, k in suffix_levels:
        members, child, bits = members.to(scores.device), child.to(scores.device), bits.to(scores.device)
        # $s_j - \mathrm{LSE}(s_R)$ for each first item j of each size-k subset R
        first = (
            scores_t.index_select(0, members).view(n_subsets, k, batch) - subset_lse.index_select(0, bits)[:, None, :]
        )  # (C(n,k), k, B)
        # $S_R(j, \sigma') = s_j - \mathrm{LSE}(s_R) + S_{R \setminus j}(\sigma')$
        rest = suffix.reshape(suffix.shape[0], -1).index_select(0, child).view(n_subsets, k, -1, batch)
        suffix = (rest + first[:, :, None, :]).view(n_subsets, -1, batch)  # (C(n,k), k!, B)
    return prefix, suffix, structure


def ranking_logprobs_all(scores: Tensor) -> Tensor:
    """Log-probabilities of all n! rankings under the Plackett-Luce model of the given scores.

    PAD Eq. (11) (Eq. 2 evaluated on every $\\tau_n \\in \\mathcal{T}$).

    $\\log p(\\tau) = \\sum_{i=1}^{n} \\big[ s_{\\tau(i)} - \\log \\sum_{j \\ge i} \\exp s_{\\tau(j)} \\big]
    \\quad \\forall \\tau \\in \\mathcal{T}, \\qquad \\sum_{\\tau} p(\\tau) = 1$

    Column ``k`` belongs to ``all_rankings(n)[k]`` (``itertools.permutations`` order). Computed by the cached
    prefix/suffix factorisation of :func:`pl_factors`: about e * n! additions per example instead of the
    (B, n!, n) gather + reverse logcumsumexp that :func:`plackett_luce_logprob` on ``all_rankings(n)`` costs
    (the same numbers; at n = 8, B = 128 the gather form allocates 165 MB per tensor and is ~50x slower).

    Args:
        scores: (B, n) item scores, e.g. ``beta * rewards``; n <= ``MAX_EXACT_N``.

    Returns:
        (B, n!) log-probabilities (a transposed view); ``logsumexp`` over the last dim is 0.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, n), got {shape_text(scores)}")
    batch, n = scores.shape
    if n < 1:
        raise ValueError("need n >= 1 items")
    check_exact_n(n)
    if n == 1:
        return scores * 0.0  # (B, 1): one ranking, probability 1
    prefix, suffix, structure = pl_factors(scores, min(n, SUFFIX_SIZE))
    remaining_index = structure[2].to(scores.device)
    # $\log p(\tau) = C(P) + S_R(\sigma)$, prefixes outer, suffix orderings inner = lexicographic order
    logprobs = suffix.index_select(0, remaining_index) + prefix[:, None, :]  # (N_r, m!, B)
    return logprobs.reshape(-1, batch).t()  # (B, n!)


def sample_rankings(scores: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Exact Plackett-Luce samples: sort the scores perturbed by i.i.d. Gumbel noise, descending.

    PAD Eq. (2) (Gumbel-max trick: $\\arg\\mathrm{sort}_\\downarrow(s + g)$, $g \\sim \\mathrm{Gumbel}(0, 1)$,
    is distributed as $p(\\tau)$).

    $\\tau = \\mathrm{argsort}_{\\downarrow}(s_i + g_i), \\quad g_i = -\\log(-\\log u_i), u_i \\sim U(0, 1)$

    Args:
        scores: (B, n); no gradient flows through a sample.
        num_samples: K rankings per row.
        generator: optional ``torch.Generator`` on ``scores.device`` for reproducible draws.

    Returns:
        (B, K, n) long rankings, best first.
    """
    batch, n = scores.shape
    tiny = torch.finfo(scores.dtype).tiny
    uniform = torch.rand(batch, num_samples, n, generator=generator, dtype=scores.dtype, device=scores.device)
    # $g = -\log(-\log u)$, $u \in [\text{tiny}, 1)$
    gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))  # (B, K, n)
    perturbed = scores.detach()[:, None, :] + gumbel  # (B, K, n)
    return torch.argsort(perturbed, dim=-1, descending=True)  # (B, K, n)
