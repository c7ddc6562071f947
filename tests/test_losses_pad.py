"""PAD losses against brute-force definitions (loops over itertools.permutations) on small inputs, plus
invariances, bounds, gradients, the Monte-Carlo estimator and the decomposition of App. A."""

import itertools
import math

import pytest
import torch

from workbench import losses as loss_registry
from workbench.losses import pad as P

LN2 = math.log(2.0)
F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------
# brute-force references
# ---------------------------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rewards(seed, batch, n, scale=0.3, dtype=F64):
    return (scale * torch.randn(batch, n, generator=_gen(seed))).to(dtype)


def _pair(seed, batch, n, scale=0.3, noise=0.2):
    """Teacher rewards and nearby student rewards (the student is a perturbed teacher)."""
    teacher = _rewards(seed, batch, n, scale)
    student = teacher + _rewards(seed + 1000, batch, n, noise)
    return student, teacher


def _pl_prob_python(scores, ranking):
    """Eq. 2 as a product over positions, in Python floats."""
    prob = 1.0
    for i in range(len(ranking)):
        prob *= math.exp(scores[ranking[i]]) / sum(math.exp(scores[j]) for j in ranking[i:])
    return prob


def _pl_logprob_torch(scores, ranking):
    """Eq. 2 for one ranking, batched over rows, differentiable: a loop over positions."""
    total = scores.new_zeros(scores.shape[0])
    for i in range(len(ranking)):
        rest = scores[:, list(ranking[i:])]
        total = total + scores[:, ranking[i]] - torch.logsumexp(rest, dim=-1)
    return total


def _jsd_bruteforce(student_rewards, teacher_rewards, beta):
    """Eq. 12 by definition: a loop over all n! rankings, per example. Differentiable in both arguments."""
    n = student_rewards.shape[1]
    log_p, log_q = [], []
    for ranking in itertools.permutations(range(n)):
        log_p.append(_pl_logprob_torch(beta * teacher_rewards, ranking))
        log_q.append(_pl_logprob_torch(beta * student_rewards, ranking))
    log_p, log_q = torch.stack(log_p, -1), torch.stack(log_q, -1)
    p, q = log_p.exp(), log_q.exp()
    m = 0.5 * (p + q)
    return 0.5 * (p * (log_p - m.log())).sum(-1) + 0.5 * (q * (log_q - m.log())).sum(-1)


def _kl(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _jsd_from_logprobs(log_p, log_q):
    log_m = torch.logaddexp(log_p, log_q) - LN2
    return 0.5 * _kl(log_p, log_m) + 0.5 * _kl(log_q, log_m)


def _ppd_both_ways(a, b, beta=P.PAD_BETA):
    """JSD(P_a, P_b) and JSD(P_b, P_a) through ppd_loss, swapping which side is the 'teacher'."""
    return (P.ppd_loss(a, b, beta=beta, reduction="none"), P.ppd_loss(b, a, beta=beta, reduction="none"))


def _cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


# ---------------------------------------------------------------------------------------------------------------
# Eq. 2: Plackett-Luce
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_plackett_luce_matches_python_product_and_sums_to_one(n):
    scores = _rewards(n, 3, n, scale=1.5)
    rankings = list(itertools.permutations(range(n)))
    index = torch.tensor(rankings).expand(3, -1, -1)  # (B, n!, n)
    logprobs = P.plackett_luce_logprob(scores[:, None, :], index)  # (B, n!)
    for b in range(3):
        brute = [_pl_prob_python(scores[b].tolist(), r) for r in rankings]
        assert torch.allclose(logprobs[b].exp(), torch.tensor(brute, dtype=F64), rtol=1e-12, atol=1e-15)
        assert math.isclose(sum(brute), 1.0, rel_tol=1e-12)
    assert torch.allclose(logprobs.logsumexp(-1), torch.zeros(3, dtype=F64), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7])
def test_ranking_logprobs_all_matches_loop_over_permutations(n):
    scores = _rewards(10 + n, 2, n, scale=2.0)
    fast = P.ranking_logprobs_all(scores)  # (B, n!)
    loop = torch.stack([_pl_logprob_torch(scores, r) for r in itertools.permutations(range(n))], -1)
    assert fast.shape == (2, math.factorial(n))
    assert torch.allclose(fast, loop, atol=1e-11)
    assert torch.equal(P.all_rankings(n), torch.tensor(list(itertools.permutations(range(n)))).view(-1, n))


@pytest.mark.parametrize("n", [8, 9])
def test_ranking_logprobs_all_is_normalised_and_matches_dense_gather(n):
    scores = _rewards(20 + n, 2, n, scale=3.0)
    fast = P.ranking_logprobs_all(scores)
    assert torch.allclose(fast.logsumexp(-1), torch.zeros(2, dtype=F64), atol=1e-10)
    rows = torch.randint(0, math.factorial(n), (500,), generator=_gen(n))
    dense = P.plackett_luce_logprob(scores[:, None, :], P.all_rankings(n)[rows].expand(2, -1, -1))
    assert torch.allclose(fast[:, rows], dense, atol=1e-10)


def test_ranking_logprobs_all_gradient_matches_dense():
    scores = _rewards(3, 2, 6, scale=2.0).requires_grad_()
    weights = _rewards(4, 2, 720)
    (grad_fast,) = torch.autograd.grad((P.ranking_logprobs_all(scores) * weights).sum(), scores)
    dense = P.plackett_luce_logprob(scores[:, None, :], P.all_rankings(6).expand(2, -1, -1))
    (grad_dense,) = torch.autograd.grad((dense * weights).sum(), scores)
    assert torch.allclose(grad_fast, grad_dense, atol=1e-11)


def test_sample_rankings_follow_plackett_luce():
    scores = torch.tensor([[1.0, 0.0, -0.5]], dtype=F64)
    samples = P.sample_rankings(scores, 20000, _gen(0))[0]  # (K, n)
    assert torch.equal(samples.sort(-1).values, torch.arange(3).expand(20000, 3))
    exact = P.ranking_logprobs_all(scores)[0].exp()
    codes = (samples[:, 0] * 3 + samples[:, 1]).tolist()
    for k, ranking in enumerate(itertools.permutations(range(3))):
        freq = codes.count(ranking[0] * 3 + ranking[1]) / 20000
        assert abs(freq - exact[k].item()) < 4 * math.sqrt(exact[k].item() / 20000) + 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Eq. 10: VPD
# ---------------------------------------------------------------------------------------------------------------


def test_vpd_matches_bruteforce_and_is_a_negative_log_likelihood():
    student, teacher = _pair(0, 4, 5)
    beta = 3.0
    loss = P.vpd_loss(student, teacher, beta=beta, reduction="none")
    for b in range(4):
        order = sorted(range(5), key=lambda i: -teacher[b, i].item())
        prob = _pl_prob_python((beta * student[b]).tolist(), order)
        assert math.isclose(loss[b].item(), -math.log(prob), rel_tol=1e-12)
    assert (loss >= 0).all()
    assert torch.allclose(P.vpd_loss(student, teacher, beta=beta), loss.mean())
    assert torch.allclose(P.vpd_loss(student, teacher, beta=beta, reduction="sum"), loss.sum())


def test_vpd_gradient_reaches_student_only():
    student, teacher = _pair(1, 3, 4)
    student.requires_grad_()
    teacher.requires_grad_()
    P.vpd_loss(student, teacher).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Eqs. 11-12: PPD exact
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_ppd_matches_bruteforce_value_and_gradient(n):
    student, teacher = _pair(30 + n, 3, n)
    beta = 4.0
    student_fast = student.clone().requires_grad_()
    student_slow = student.clone().requires_grad_()
    fast = P.ppd_loss(student_fast, teacher, beta=beta, reduction="none")
    slow = _jsd_bruteforce(student_slow, teacher, beta)
    assert torch.allclose(fast, slow, atol=1e-12)
    (grad_fast,) = torch.autograd.grad(fast.sum(), student_fast)
    (grad_slow,) = torch.autograd.grad(slow.sum(), student_slow)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-12)


def test_ppd_equals_jsd_of_ranking_distributions_at_n8():
    student, teacher = _pair(2, 3, 8)
    loss = P.ppd_loss(student, teacher, reduction="none")
    log_p = P.ranking_logprobs_all(P.PAD_BETA * teacher)
    log_q = P.ranking_logprobs_all(P.PAD_BETA * student)
    assert torch.allclose(loss, _jsd_from_logprobs(log_p, log_q), atol=1e-12)
    assert torch.allclose(P.ppd_loss(student, teacher), loss.mean())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scale,beta", [(1e-4, 1.0), (0.3, 10.0), (3.0, 10.0), (50.0, 10.0), (1.0, 1e4)])
def test_ppd_bounded_by_zero_and_ln2(dtype, scale, beta):
    student, teacher = _pair(3, 6, 6, scale=scale, noise=scale)
    loss = P.ppd_loss(student.to(dtype), teacher.to(dtype), beta=beta, reduction="none")
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.isfinite(loss).all()
    assert (loss >= -tol).all() and (loss <= LN2 + tol).all()


def test_ppd_reaches_ln2_for_disjoint_supports():
    teacher = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=F64)
    loss = P.ppd_loss(teacher.flip(-1), teacher, beta=1e3)  # opposite, near-deterministic rankings
    assert math.isclose(loss.item(), LN2, rel_tol=1e-9)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_ppd_symmetric(n):
    student, teacher = _pair(4 + n, 4, n, scale=0.5)
    forward, backward = _ppd_both_ways(student, teacher)
    assert torch.allclose(forward, backward, atol=1e-12)


def test_ppd_zero_iff_equal_rewards():
    student, teacher = _pair(5, 4, 6)
    assert torch.allclose(P.ppd_loss(teacher.clone(), teacher, reduction="none"), torch.zeros(4, dtype=F64), atol=1e-13)
    assert (P.ppd_loss(student, teacher, reduction="none") > 1e-6).all()


def test_ppd_invariant_to_per_example_reward_shift():
    student, teacher = _pair(6, 5, 6)
    shift_s, shift_t = _rewards(7, 5, 1, scale=100.0), _rewards(8, 5, 1, scale=100.0)
    base = P.ppd_loss(student, teacher, reduction="none")
    shifted = P.ppd_loss(student + shift_s, teacher + shift_t, reduction="none")
    assert torch.allclose(base, shifted, atol=1e-9)


def test_ppd_batch_elements_never_mix():
    student, teacher = _pair(9, 6, 5)
    perm = torch.randperm(6, generator=_gen(0))
    base = P.ppd_loss(student, teacher, reduction="none")
    assert torch.allclose(P.ppd_loss(student[perm], teacher[perm], reduction="none"), base[perm], atol=1e-14)
    changed = teacher.clone()
    changed[0] = -changed[0]
    assert torch.allclose(P.ppd_loss(student, changed, reduction="none")[1:], base[1:], atol=1e-14)


@pytest.mark.parametrize("n", [4, 8])
def test_ppd_invariant_to_response_order(n):
    student, teacher = _pair(10 + n, 3, n)
    perm = torch.randperm(n, generator=_gen(n))
    assert torch.allclose(
        P.ppd_loss(student[:, perm], teacher[:, perm], reduction="none"),
        P.ppd_loss(student, teacher, reduction="none"),
        atol=1e-12,
    )


@pytest.mark.parametrize("beta", [1.0, 10.0, 1e3, 1e5])
def test_ppd_gradients_finite_and_teacher_detached(beta):
    student, teacher = _pair(11, 4, 6, scale=1.0, noise=1.0)
    student = student.float().requires_grad_()
    teacher = teacher.float().requires_grad_()
    loss = P.ppd_loss(student, teacher, beta=beta)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None


# ---------------------------------------------------------------------------------------------------------------
# Eq. 12: PPD Monte-Carlo
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_ppd_mc_close_to_exact_value_and_gradient(n):
    student, teacher = _pair(40 + n, 8, n, scale=0.2, noise=0.15)
    student = student.requires_grad_()
    exact = P.ppd_loss(student, teacher)
    (grad_exact,) = torch.autograd.grad(exact, student)
    for estimator, rel_tol, min_cos in (("mixture", 0.03, 0.97), ("split", 0.06, 0.9)):
        mc = P.ppd_loss_mc(student, teacher, num_samples=1024, generator=_gen(n), estimator=estimator)
        (grad_mc,) = torch.autograd.grad(mc, student)
        assert abs(mc.item() - exact.item()) < rel_tol * exact.item(), estimator
        assert _cosine(grad_mc, grad_exact) > min_cos, estimator


@pytest.mark.parametrize("estimator", ["mixture", "split"])
def test_ppd_mc_value_and_gradient_unbiased(estimator):
    student, teacher = _pair(12, 2, 3, scale=0.2, noise=0.2)
    student = student.requires_grad_()
    exact = P.ppd_loss(student, teacher, reduction="sum")
    (grad_exact,) = torch.autograd.grad(exact, student)
    runs, values, grads = 400, [], []
    generator = _gen(1)
    for _ in range(runs):
        mc = P.ppd_loss_mc(student, teacher, num_samples=4, generator=generator, reduction="sum", estimator=estimator)
        values.append(mc.item())
        grads.append(torch.autograd.grad(mc, student)[0])
    values, grads = torch.tensor(values), torch.stack(grads)
    assert abs(values.mean() - exact.item()) < 4 * values.std() / math.sqrt(runs)
    stderr = grads.std(0) / math.sqrt(runs)
    assert ((grads.mean(0) - grad_exact).abs() < 4.5 * stderr + 1e-12).all()


def test_ppd_mc_mixture_terms_bounded_and_reproducible():
    student, teacher = _pair(13, 5, 6, scale=2.0, noise=2.0)
    first = P.ppd_loss_mc(student, teacher, num_samples=16, generator=_gen(3), reduction="none")
    again = P.ppd_loss_mc(student, teacher, num_samples=16, generator=_gen(3), reduction="none")
    assert torch.equal(first, again)
    assert (first >= 0).all() and (first <= LN2 + 1e-12).all()


def test_ppd_mc_works_beyond_exact_limit():
    student, teacher = _pair(14, 2, 12)
    student = student.requires_grad_()
    loss = P.ppd_loss_mc(student, teacher, num_samples=64, generator=_gen(0))
    loss.backward()
    assert 0 <= loss.item() <= LN2 and torch.isfinite(student.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# Eqs. 13-14, App. A: decomposition
# ---------------------------------------------------------------------------------------------------------------


def test_decompose_groups_partitions_range():
    assert torch.equal(P.decompose_groups(6, 2), torch.arange(6).view(3, 2))
    random_groups = P.decompose_groups(8, 4, generator=_gen(0))
    assert random_groups.shape == (2, 4)
    assert torch.equal(random_groups.flatten().sort().values, torch.arange(8))


def _joint_logprobs(scores, groups):
    """Log-probabilities of every decomposed ranking (tau^(1), ..., tau^(k)) under independent groups (Eq. 13)."""
    per_group = [P.ranking_logprobs_all(scores[:, g]) for g in groups.tolist()]  # each (B, m!)
    joint = per_group[0]
    for sub in per_group[1:]:
        joint = (joint[:, :, None] + sub[:, None, :]).reshape(joint.shape[0], -1)  # outer sum over outcomes
    return joint, per_group


@pytest.mark.parametrize("n,m", [(4, 2), (6, 3), (6, 2)])
def test_kl_of_decomposed_rankings_is_sum_of_group_kls(n, m):
    student, teacher = _pair(50 + n + m, 3, n)
    groups = P.decompose_groups(n, m, generator=_gen(m))
    joint_p, groups_p = _joint_logprobs(P.PAD_BETA * teacher, groups)
    joint_q, groups_q = _joint_logprobs(P.PAD_BETA * student, groups)
    assert joint_p.shape[1] == math.factorial(m) ** (n // m)
    assert torch.allclose(joint_p.logsumexp(-1), torch.zeros(3, dtype=F64), atol=1e-12)
    assert torch.allclose(_kl(joint_p, joint_q), sum(_kl(p, q) for p, q in zip(groups_p, groups_q)), atol=1e-12)
    # App. A's JSD decomposition holds for the groupwise mixture only: the JSD of the product distributions is
    # at most the sum of group JSDs (and here strictly less).
    joint_jsd = _jsd_from_logprobs(joint_p, joint_q)
    summed = P.decomposed_loss(P.ppd_loss, student, teacher, groups, reduction="none")
    assert torch.allclose(summed, sum(_jsd_from_logprobs(p, q) for p, q in zip(groups_p, groups_q)), atol=1e-12)
    assert (joint_jsd <= summed + 1e-12).all() and (joint_jsd < summed - 1e-6).all()


def test_decomposed_loss_equals_sum_of_group_losses():
    student, teacher = _pair(15, 4, 8)
    groups = P.decompose_groups(8, 4, generator=_gen(2))
    for loss_fn in (P.vpd_loss, P.ppd_loss):
        total = P.decomposed_loss(loss_fn, student, teacher, groups, beta=5.0, reduction="none")
        by_hand = sum(loss_fn(student[:, g], teacher[:, g], beta=5.0, reduction="none") for g in groups.tolist())
        assert torch.allclose(total, by_hand, atol=1e-12)
        assert torch.allclose(P.decomposed_loss(loss_fn, student, teacher, groups, beta=5.0), by_hand.mean())
    # Eq. 14: log p(phi(tau_n)) = sum_i log p(tau_m^(i)), so decomposed VPD is the NLL of the joint ranking
    joint, _ = _joint_logprobs(5.0 * student, groups)
    vpd = P.decomposed_loss(P.vpd_loss, student, teacher, groups, beta=5.0, reduction="none")
    assert (vpd >= -joint.logsumexp(-1) - 1e-12).all()


# ---------------------------------------------------------------------------------------------------------------
# §3: rewards from language models
# ---------------------------------------------------------------------------------------------------------------


def _padded_batch(seed, batch=3, length=7, vocab=11):
    logits = 2.0 * torch.randn(batch, length, vocab, generator=_gen(seed), dtype=F64)
    labels = torch.randint(0, vocab, (batch, length), generator=_gen(seed + 1))
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b, (start, size) in enumerate([(0, 7), (2, 3), (4, 1)]):  # prompt prefix, response, right padding
        mask[b, start : start + size] = True
    labels = labels.masked_fill(~mask, -100)
    return logits, labels, mask


def test_irl_token_rewards_telescope_to_log_likelihood_plus_log_z1():
    logits, labels, mask = _padded_batch(0)
    rewards = P.irl_token_rewards(logits, labels, mask)
    token_logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    log_likelihood = torch.where(mask, token_logps, 0.0).sum(-1)
    first = mask.float().argmax(-1)
    log_z1 = torch.logsumexp(logits[torch.arange(3), first], -1)
    assert torch.allclose(rewards.sum(-1), log_likelihood + log_z1, atol=1e-12)  # Eq. 5
    assert (rewards[~mask] == 0).all()
    last = 2 + 3 - 1  # row 1: the last response token has log Z_{|y|+1} = 0
    assert torch.isclose(rewards[1, last], logits[1, last, labels[1, last]])
    assert torch.allclose(P.log_partition(logits), torch.logsumexp(logits, -1))


def test_avg_logp_reward_is_masked_mean_and_ignores_padding_garbage():
    _, _, mask = _padded_batch(1)
    token_logps = -torch.rand(3, 7, generator=_gen(2), dtype=F64)
    garbage = token_logps.masked_fill(~mask, float("nan"))
    reward = P.avg_logp_reward(garbage, mask)
    expected = torch.stack([token_logps[b][mask[b]].mean() for b in range(3)])
    assert torch.allclose(reward, expected)
    empty = P.avg_logp_reward(token_logps, torch.zeros_like(mask))
    assert torch.equal(empty, torch.zeros(3, dtype=F64))


# ---------------------------------------------------------------------------------------------------------------
# Eq. 9: calibration; errors; registry
# ---------------------------------------------------------------------------------------------------------------


def test_calibrated_reward_formula_and_endpoints():
    rewards, log_p_sel = _rewards(0, 2, 4), -torch.rand(2, 4, generator=_gen(1), dtype=F64)
    assert torch.allclose(P.calibrated_reward(rewards, log_p_sel, 0.8), 0.2 * rewards + 0.8 * log_p_sel)
    assert torch.equal(P.calibrated_reward(None, log_p_sel, 1.0), log_p_sel)
    assert torch.equal(P.calibrated_reward(rewards, log_p_sel, 0.0), rewards)
    infinite = log_p_sel.clone()
    infinite[0, 0] = -math.inf  # an option the MCQ never selects: alpha = 0 must not give 0 * inf = nan
    assert torch.equal(P.calibrated_reward(rewards, infinite, 0.0), rewards)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_calibrated_reward_rejects_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        P.calibrated_reward(_rewards(0, 1, 3), _rewards(1, 1, 3), alpha)


def test_value_errors():
    student, teacher = _pair(0, 1, 11)
    with pytest.raises(ValueError, match="ppd_loss_mc"):
        P.ppd_loss(student, teacher)
    with pytest.raises(ValueError, match="ppd_loss_mc"):
        P.ranking_logprobs_all(student)
    with pytest.raises(ValueError, match="divisor"):
        P.decompose_groups(6, 4)
    with pytest.raises(ValueError, match="divisor"):
        P.decompose_groups(6, 0)
    with pytest.raises(ValueError, match="same"):
        P.vpd_loss(student[:, :4], teacher[:, :5])
    with pytest.raises(ValueError, match="reduction"):
        P.ppd_loss(student[:, :3], teacher[:, :3], reduction="avg")
    with pytest.raises(ValueError, match="num_samples"):
        P.ppd_loss_mc(student, teacher, num_samples=1)
    with pytest.raises(ValueError, match="beta"):
        P.vpd_loss(student, teacher, beta=0.0)


def test_registry():
    assert P.LOSSES == {"vpd": P.vpd_loss, "ppd": P.ppd_loss, "ppd_mc": P.ppd_loss_mc}
    for name in P.LOSSES:
        assert loss_registry.get_loss(name) is P.LOSSES[name]
