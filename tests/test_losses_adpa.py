"""DCKD / ADPA losses against brute-force full-vocabulary definitions on tiny tensors (V = 12)."""

import math

import pytest
import torch

from workbench import losses as loss_registry
from workbench.losses import adpa as A

B, T, V = 3, 5, 12
BETA, GAMMA = 0.1, 1.5


# ---------------------------------------------------------------------------------------------------------------
# fixtures and brute-force references
# ---------------------------------------------------------------------------------------------------------------


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _logits(seed, scale=2.0, dtype=torch.float64, shape=(B, T, V)):
    return (scale * torch.randn(*shape, generator=_generator(seed))).to(dtype)


def _mask(lengths=(5, 3, 1), offsets=(0, 1, 2)):
    """Response mask with a 'prompt' prefix (offset) and right padding."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (n, o) in enumerate(zip(lengths, offsets)):
        mask[b, o : o + n] = True
    return mask


def _topk(full_logps, k):
    logps, ids = torch.topk(full_logps, k, dim=-1)
    return ids, logps


def _peaked_teacher_logps(seed, k, boost=30.0):
    """Full teacher log-probs whose top-k carries all but ~V * exp(-boost) of the mass."""
    logits = _logits(seed)
    chosen = torch.stack(
        [torch.randperm(V, generator=_generator(seed + b * T + t))[:k] for b in range(B) for t in range(T)]
    ).view(B, T, k)
    logits.scatter_add_(-1, chosen, torch.full(chosen.shape, boost, dtype=logits.dtype))
    return torch.log_softmax(logits, -1)


def _masked_mean_loop(values, mask):
    out = torch.zeros(values.shape[0], dtype=values.dtype)
    for b in range(values.shape[0]):
        idx = mask[b].nonzero().flatten()
        out[b] = values[b, idx].mean() if len(idx) else 0.0
    return out


def _full_kl(teacher_full_logps, student_logits, mask):
    """Exact full-vocabulary KL(teacher || student), mean over response tokens."""
    q = torch.log_softmax(student_logits, -1)
    per_token = (teacher_full_logps.exp() * (teacher_full_logps - q)).sum(-1)
    return _masked_mean_loop(per_token, mask)


def _bucket_kl_loop(ids, teacher_logps, student_logits, mask):
    """(k+1)-bucket KL written as a loop over positions."""
    q = torch.softmax(student_logits, -1)
    per_token = torch.zeros(ids.shape[:2], dtype=student_logits.dtype)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            p_k = teacher_logps[b, t].exp()
            q_k = q[b, t, ids[b, t]]
            p_tail, q_tail = 1 - p_k.sum(), 1 - q_k.sum()
            kl = (p_k * (p_k / q_k).log()).sum()
            if p_tail > 1e-12:
                kl = kl + p_tail * math.log(p_tail / q_tail)
            per_token[b, t] = kl
    return _masked_mean_loop(per_token, mask)


def _sft_loop(student_logits, labels, mask):
    q = torch.log_softmax(student_logits, -1)
    nll = torch.zeros(labels.shape, dtype=student_logits.dtype)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if mask[b, t]:
                nll[b, t] = -q[b, t, labels[b, t]]
    return _masked_mean_loop(nll, mask)


def _full_advantage(ids, advantages):
    """Scatter a (B, T, k) advantage onto the full vocabulary, 0 elsewhere."""
    full = torch.zeros(*ids.shape[:2], V, dtype=advantages.dtype)
    return full.scatter(-1, ids, advantages)


def _teachers(seed=0, k=V):
    dpo_full = torch.log_softmax(_logits(seed + 100), -1)
    ref_full = torch.log_softmax(_logits(seed + 200), -1)
    return dpo_full, ref_full, _topk(dpo_full, k), _topk(ref_full, k)


# ---------------------------------------------------------------------------------------------------------------
# tail_logmass
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 11])
def test_tail_logmass_matches_definition(k):
    ids, logps = _topk(torch.log_softmax(_logits(1), -1), k)
    expected = torch.log(1 - logps.exp().sum(-1))
    torch.testing.assert_close(A.tail_logmass(logps), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tail_logmass_clamp_is_finite_and_floored(dtype):
    full = torch.log_softmax(_logits(2, dtype=dtype), -1)
    floor = math.log(torch.finfo(dtype).eps)
    tail = A.tail_logmass(full)  # k = V: exact tail is 0
    assert torch.isfinite(tail).all()
    torch.testing.assert_close(tail, torch.full_like(tail, floor), rtol=1e-4, atol=1e-4)
    over = torch.zeros(2, 3, dtype=dtype)  # sum p = 3 > 1: rounding gone wild
    assert torch.isfinite(A.tail_logmass(over)).all()
    assert (A.tail_logmass(over) >= floor - 1e-4).all()


# ---------------------------------------------------------------------------------------------------------------
# topk_forward_kl and the tail bucket
# ---------------------------------------------------------------------------------------------------------------


def test_topk_kl_exact_when_k_equals_vocab():
    teacher = torch.log_softmax(_logits(3), -1)
    ids, logps = _topk(teacher, V)
    student, mask = _logits(4), _mask()
    torch.testing.assert_close(A.topk_forward_kl(ids, logps, student, mask), _full_kl(teacher, student, mask))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_kl_matches_bucket_loop(k):
    ids, logps = _topk(torch.log_softmax(_logits(5), -1), k)
    student, mask = _logits(6), _mask()
    torch.testing.assert_close(A.topk_forward_kl(ids, logps, student, mask), _bucket_kl_loop(ids, logps, student, mask))


@pytest.mark.parametrize("k", [2, 5])
def test_topk_kl_close_to_full_when_tail_tiny(k):
    teacher = _peaked_teacher_logps(7, k)
    ids, logps = _topk(teacher, k)
    student, mask = _logits(8), _mask()
    torch.testing.assert_close(
        A.topk_forward_kl(ids, logps, student, mask), _full_kl(teacher, student, mask), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_kl_nonnegative_and_below_full_kl(dtype):
    mask = torch.ones(B, T, dtype=torch.bool)
    for seed in range(20):
        k = 1 + seed % V
        teacher = torch.log_softmax(_logits(seed, scale=1 + seed % 4, dtype=dtype), -1)
        ids, logps = _topk(teacher, k)
        student = _logits(seed + 50, scale=1 + seed % 3, dtype=dtype)
        kl = A.topk_forward_kl(ids, logps, student, mask)
        assert (kl >= 0).all()
        # chain rule of KL: lumping the tail can only lose divergence
        assert (kl <= _full_kl(teacher.double(), student.double(), mask).to(dtype) + 1e-5).all()
        same = A.topk_forward_kl(ids, logps, teacher.clone(), mask)  # student == teacher
        assert (same >= 0).all() and (same < 1e-5).all()


# ---------------------------------------------------------------------------------------------------------------
# SFT and DCKD
# ---------------------------------------------------------------------------------------------------------------


def test_sft_loss_matches_loop():
    student, mask = _logits(9), _mask()
    labels = torch.randint(0, V, (B, T), generator=_generator(9)).masked_fill(~mask, -100)
    torch.testing.assert_close(A.sft_loss(student, labels, mask), _sft_loop(student, labels, mask))


def _dckd_inputs(k=V, seed=10):
    teacher_w = torch.log_softmax(_logits(seed), -1)
    teacher_l = torch.log_softmax(_logits(seed + 1), -1)
    student_w, student_l = _logits(seed + 2), _logits(seed + 3)
    mask_w, mask_l = _mask(), _mask(lengths=(4, 4, 2), offsets=(1, 0, 3))
    labels = torch.randint(0, V, (B, T), generator=_generator(seed)).masked_fill(~mask_w, -100)
    ids_w, logps_w = _topk(teacher_w, k)
    ids_l, logps_l = _topk(teacher_l, k)
    args = (student_w, labels, mask_w, ids_w, logps_w, student_l, mask_l, ids_l, logps_l)
    return args, (teacher_w, teacher_l)


@pytest.mark.parametrize("alpha", [0.1, A.DCKD_ALPHA, 2.0])
def test_dckd_matches_full_vocab_definition(alpha):
    args, (teacher_w, teacher_l) = _dckd_inputs()
    student_w, labels, mask_w, _, _, student_l, mask_l, _, _ = args
    sft = _sft_loop(student_w, labels, mask_w)
    kl_w = _full_kl(teacher_w, student_w, mask_w)
    kl_l = _full_kl(teacher_l, student_l, mask_l)
    per_sequence = A.dckd_loss(*args, alpha=alpha, reduction="none")
    assert per_sequence.shape == (B,)
    torch.testing.assert_close(per_sequence, sft + alpha * (kl_w + kl_l))
    torch.testing.assert_close(A.dckd_loss(*args, alpha=alpha), (sft + alpha * (kl_w + kl_l)).mean())
    # ablation "w/o dispreferred response": the rejected inputs are not needed
    no_rejected = A.dckd_loss(*args[:5], alpha=alpha, use_rejected=False, reduction="none")
    torch.testing.assert_close(no_rejected, sft + alpha * kl_w)


# ---------------------------------------------------------------------------------------------------------------
# advantage from two caches
# ---------------------------------------------------------------------------------------------------------------


def test_advantage_exact_when_both_caches_are_full():
    dpo_full, ref_full, (dpo_ids, dpo_logps), (ref_ids, ref_logps) = _teachers(k=V)
    ids, adv = A.advantage_from_topk(dpo_ids, dpo_logps, ref_ids, ref_logps, BETA, "tail_max")
    torch.testing.assert_close(_full_advantage(ids, adv), BETA * (dpo_full - ref_full))


def _hand_cache(ref_probs):
    dpo_ids = torch.tensor([[[1, 2, 3]]])
    dpo_logps = torch.tensor([[[0.5, 0.3, 0.1]]], dtype=torch.float64).log()
    ref_ids = torch.tensor([[[2, 3, 4]]])
    ref_logps = torch.tensor([[ref_probs]], dtype=torch.float64).log()
    return dpo_ids, dpo_logps, ref_ids, ref_logps


def test_missing_token_rules_on_hand_built_example():
    beta, vocab = 0.5, 10
    cache = _hand_cache([0.4, 0.2, 0.1])  # reference tail mass 0.3, over V - k = 7 unseen tokens
    ids, uniform = A.advantage_from_topk(*cache, beta, "tail_uniform", vocab_size=vocab)
    _, tail_max = A.advantage_from_topk(*cache, beta, "tail_max")
    assert ids.tolist() == [[[1, 2, 3]]]
    found = [beta * math.log(0.3 / 0.4), beta * math.log(0.1 / 0.2)]  # tokens 2, 3: both teachers cached them
    torch.testing.assert_close(uniform[0, 0, 1:], torch.tensor(found, dtype=torch.float64))
    torch.testing.assert_close(tail_max[0, 0, 1:], torch.tensor(found, dtype=torch.float64))
    # token 1 is missing from the reference cache
    assert uniform[0, 0, 0].item() == pytest.approx(beta * (math.log(0.5) - math.log(0.3 / 7)))
    assert tail_max[0, 0, 0].item() == pytest.approx(beta * (math.log(0.5) - math.log(0.1)))  # paper's rule
    assert tail_max[0, 0, 0] < uniform[0, 0, 0]  # upper bound on pi_ref -> lower bound on A
    # tail mass (0.05) below the smallest cached probability (0.15): the tail is the tighter bound
    _, tight = A.advantage_from_topk(*_hand_cache([0.5, 0.3, 0.15]), beta, "tail_max")
    assert tight[0, 0, 0].item() == pytest.approx(beta * (math.log(0.5) - math.log(0.05)))


def test_advantage_clamp_squashes_negative_advantages():
    cache = _hand_cache([0.4, 0.2, 0.1])
    _, raw = A.advantage_from_topk(*cache, 5.0, "tail_uniform", vocab_size=10)
    _, clamped = A.advantage_from_topk(*cache, 5.0, "tail_uniform", vocab_size=10, advantage_clamp=True)
    assert (raw[0, 0, 1:] < 0).all() and raw[0, 0, 0] > 1  # tokens 2, 3 down-weighted by DPO; token 1 up
    assert clamped[0, 0, 1:].tolist() == [1e-8, 1e-8]
    assert clamped[0, 0, 0].item() == 1 - 1e-8


def test_advantage_matches_dpo_ids_and_ignores_reference_only_tokens():
    _, _, (dpo_ids, dpo_logps), (ref_ids, ref_logps) = _teachers(seed=1, k=4)
    ids, adv = A.advantage_from_topk(dpo_ids, dpo_logps, ref_ids, ref_logps, BETA, vocab_size=V)
    assert torch.equal(ids, dpo_ids) and adv.shape == dpo_logps.shape and torch.isfinite(adv).all()


# ---------------------------------------------------------------------------------------------------------------
# ADPA and its policy-gradient form
# ---------------------------------------------------------------------------------------------------------------


def _adpa_inputs(k=V, seed=20, dtype=torch.float64):
    _, _, (dpo_ids, dpo_logps), (ref_ids, ref_logps) = _teachers(seed, k=k)
    ids, adv = A.advantage_from_topk(
        dpo_ids, dpo_logps, ref_ids, ref_logps, BETA, "tail_uniform", vocab_size=V if k < V else V + 1
    )
    return _logits(seed + 1, dtype=dtype), _mask(), ids, adv.to(dtype)


@pytest.mark.parametrize("k", [V, 4])
def test_adpa_matches_full_vocab_definition(k):
    logits, mask, ids, adv = _adpa_inputs(k)
    full_adv = _full_advantage(ids, adv)  # 0 outside the cached support
    expected_adv_term = torch.stack(
        [
            -GAMMA * sum((torch.softmax(logits[b, t], -1) * full_adv[b, t]).sum() for t in range(T) if mask[b, t])
            if mask[b].any()
            else torch.tensor(0.0, dtype=logits.dtype)
            for b in range(B)
        ]
    )
    sft = torch.tensor([0.3, 1.0, 2.0], dtype=logits.dtype)
    per_sequence = A.adpa_loss(logits, mask, ids, adv, GAMMA, sft_term=sft, reduction="none")
    torch.testing.assert_close(per_sequence, sft + expected_adv_term)
    torch.testing.assert_close(A.adpa_loss(logits, mask, ids, adv, GAMMA, sft_term=0.5), 0.5 + expected_adv_term.mean())
    normalised = A.adpa_loss(logits, mask, ids, adv, GAMMA, reduction="none", length_normalize=True)
    torch.testing.assert_close(normalised, expected_adv_term / mask.sum(-1).clamp(min=1))


@pytest.mark.parametrize("k", [V, 4])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_adpa_gradient_equals_policy_gradient_surrogate(k, length_normalize):
    logits, mask, ids, adv = _adpa_inputs(k, seed=30)
    logits.requires_grad_(True)
    loss = A.adpa_loss(logits, mask, ids, adv, GAMMA, length_normalize=length_normalize)
    surrogate = A.adpa_policy_gradient_surrogate(logits, mask, ids, adv, GAMMA, length_normalize=length_normalize)
    (grad_loss,) = torch.autograd.grad(loss, logits)
    (grad_surrogate,) = torch.autograd.grad(surrogate, logits)
    assert grad_loss.abs().max() > 1e-4
    torch.testing.assert_close(grad_loss, grad_surrogate)


def test_adpa_pushes_probability_toward_positive_advantage():
    logits = torch.zeros(1, 1, V, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[[0, 1]]])
    adv = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(A.adpa_loss(logits, torch.ones(1, 1), ids, adv, 1.0), logits)
    assert grad[0, 0, 0] < 0 < grad[0, 0, 1]  # descent raises token 0, lowers token 1


# ---------------------------------------------------------------------------------------------------------------
# Appendix D variants and the w/o-reference ablation
# ---------------------------------------------------------------------------------------------------------------


def test_q_argmax_matches_cross_entropy_to_best_action():
    logits, mask, ids, adv = _adpa_inputs(V, seed=40)
    full_adv = _full_advantage(ids, adv)
    best = full_adv.argmax(-1)  # (B, T) argmax over the whole vocabulary
    expected = GAMMA * _sft_loop(logits, best, mask)
    torch.testing.assert_close(A.q_argmax_kd_loss(logits, mask, ids, adv, GAMMA, reduction="none"), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_q_softmax_matches_kl_to_softmax_advantage(temperature):
    logits, mask, ids, adv = _adpa_inputs(V, seed=50)
    target = torch.log_softmax(_full_advantage(ids, adv) / temperature, -1)  # k = V: support is the vocabulary
    expected = GAMMA * _full_kl(target, logits, mask)
    got = A.q_softmax_kd_loss(logits, mask, ids, adv, GAMMA, reduction="none", temperature=temperature)
    torch.testing.assert_close(got, expected)


def test_reverse_ce_exact_when_k_equals_vocab():
    dpo_full, _, (dpo_ids, dpo_logps), _ = _teachers(seed=60, k=V)
    logits, mask = _logits(61), _mask()
    per_token = (torch.softmax(logits, -1) * dpo_full).sum(-1)  # sum_a pi_theta(a) log pi_dpo(a)
    expected = -GAMMA * BETA * torch.where(mask, per_token, 0.0).sum(-1)
    got = A.reverse_ce_dpo_only_loss(
        logits, mask, dpo_ids, dpo_logps, GAMMA, BETA, reduction="none", missing_rule="tail_max"
    )
    torch.testing.assert_close(got, expected)
    assert (got >= 0).all()  # a cross-entropy: log pi_dpo <= 0


@pytest.mark.parametrize("rule", ["tail_uniform", "tail_max"])
def test_reverse_ce_charges_mass_outside_the_cache(rule):
    k = 4
    dpo_full, _, (dpo_ids, dpo_logps), _ = _teachers(seed=70, k=k)
    logits, mask = _logits(71), _mask()
    fill = A.MISSING_LOGP_RULES[rule](dpo_logps, V)  # (B, T)
    probs = torch.softmax(logits, -1)
    per_token = torch.zeros(B, T, dtype=logits.dtype)
    for b in range(B):
        for t in range(T):
            inside = probs[b, t, dpo_ids[b, t]]
            per_token[b, t] = (inside * dpo_logps[b, t]).sum() + (1 - inside.sum()) * fill[b, t]
    expected = -GAMMA * BETA * torch.where(mask, per_token, 0.0).sum(-1)
    got = A.reverse_ce_dpo_only_loss(
        logits, mask, dpo_ids, dpo_logps, GAMMA, BETA, reduction="none", missing_rule=rule, vocab_size=V
    )
    torch.testing.assert_close(got, expected)
    # moving all student mass off the cached ids must not make the loss vanish
    off_cache = torch.full_like(logits, 0.0).scatter(-1, dpo_ids, -50.0)
    off = A.reverse_ce_dpo_only_loss(
        off_cache, mask, dpo_ids, dpo_logps, GAMMA, BETA, reduction="none", missing_rule=rule, vocab_size=V
    )
    assert (off[mask.any(-1)] > 0).all()


# ---------------------------------------------------------------------------------------------------------------
# invariances shared by every loss: masks, batch independence, finite gradients
# ---------------------------------------------------------------------------------------------------------------


def _all_losses(logits, mask, ids, adv, dpo_logps, labels, reduction):
    """Every registered loss evaluated on shared inputs; logits double as chosen, rejected and y_hat logits."""
    return {
        "topk_kl": A.topk_forward_kl(ids, dpo_logps, logits, mask),
        "sft": A.sft_loss(logits, labels, mask),
        "dckd": A.dckd_loss(logits, labels, mask, ids, dpo_logps, logits, mask, ids, dpo_logps, reduction=reduction),
        "adpa": A.adpa_loss(logits, mask, ids, adv, GAMMA, reduction=reduction),
        "adpa_pg": A.adpa_policy_gradient_surrogate(logits, mask, ids, adv, GAMMA, reduction=reduction),
        "q_argmax": A.q_argmax_kd_loss(logits, mask, ids, adv, GAMMA, reduction=reduction),
        "q_softmax": A.q_softmax_kd_loss(logits, mask, ids, adv, GAMMA, reduction=reduction),
        "adpa_no_ref": A.reverse_ce_dpo_only_loss(
            logits, mask, ids, dpo_logps, GAMMA, BETA, reduction=reduction, vocab_size=V
        ),
    }


def _shared_inputs(seed=80, k=5, dtype=torch.float64, scale=2.0):
    _, _, (dpo_ids, dpo_logps), (ref_ids, ref_logps) = _teachers(seed, k=k)
    _, adv = A.advantage_from_topk(dpo_ids, dpo_logps, ref_ids, ref_logps, BETA, vocab_size=V)
    mask = _mask()
    labels = torch.randint(0, V, (B, T), generator=_generator(seed)).masked_fill(~mask, -100)
    logits = _logits(seed + 1, scale=scale, dtype=dtype)
    return logits, mask, dpo_ids, adv.to(dtype), dpo_logps.to(dtype), labels


def _gathered(logits, mask, *id_sets, seed=0):
    """The GatheredLogps a chunked head would build: log-probs of ``logits`` at the ids (labels, teacher top-k), in
    a shuffled column order with repeats, and any id off the mask."""
    ids = torch.cat([i if i.dim() == 3 else i[..., None] for i in id_sets], -1)
    ids = ids.masked_fill(~mask.bool()[..., None], 0).clamp(min=0)
    order = torch.randperm(ids.shape[-1], generator=_generator(seed))
    ids = torch.cat([ids[..., order], ids[..., :2]], -1)  # shuffled, two repeated columns
    return A.GatheredLogps(ids, torch.gather(torch.log_softmax(logits, -1), -1, ids), V)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_every_loss_reads_gathered_logps_as_it_reads_the_full_logits(reduction):
    """A GatheredLogps (the chunked head's output: no (B, T, V) tensor kept for backward) stands in for the logits in
    every loss: the same values and the same gradient with respect to the logits."""
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs(seed=85)
    logits.requires_grad_(True)
    full = _all_losses(logits, mask, ids, adv, dpo_logps, labels, reduction)
    gathered = _all_losses(_gathered(logits, mask, labels, ids), mask, ids, adv, dpo_logps, labels, reduction)
    for name in full:
        torch.testing.assert_close(gathered[name], full[name], msg=name)
        (want,) = torch.autograd.grad(full[name].sum(), logits, retain_graph=True)
        (got,) = torch.autograd.grad(gathered[name].sum(), logits, retain_graph=True)
        torch.testing.assert_close(got, want, msg=name)


def test_gathered_logps_refuse_an_id_they_do_not_hold():
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs(seed=86)
    labels_only = _gathered(logits, mask, labels)
    A.sft_loss(labels_only, labels, mask)  # what it holds
    with pytest.raises(ValueError, match=r"was not gathered: build the GatheredLogps with every id the loss reads"):
        A.adpa_loss(labels_only, mask, ids, adv, GAMMA)
    with pytest.raises(ValueError, match="ids .* and logps .* must be the same"):
        A.sft_loss(A.GatheredLogps(labels_only.ids, labels_only.logps[..., :1], V), labels, mask)


def test_padded_positions_change_nothing():
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs()
    pad = ~mask
    noisy_logits = torch.where(pad[..., None], 100 * torch.randn_like(logits), logits)
    bad_ids = ids.masked_fill(pad[..., None], -100)
    nan_adv = adv.masked_fill(pad[..., None], float("nan"))
    nan_logps = dpo_logps.masked_fill(pad[..., None], float("nan"))
    noisy_logits.requires_grad_(True)
    clean = _all_losses(logits, mask, ids, adv, dpo_logps, labels, "none")
    dirty = _all_losses(noisy_logits, mask, bad_ids, nan_adv, nan_logps, labels, "none")
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name], msg=name)
        (grad,) = torch.autograd.grad(dirty[name].sum(), noisy_logits)
        assert torch.isfinite(grad).all(), name
        assert (grad[pad] == 0).all(), name
    # a float mask gives the same result as a bool mask
    float_mask = _all_losses(logits, mask.double(), ids, adv, dpo_logps, labels, "none")
    for name in clean:
        torch.testing.assert_close(float_mask[name], clean[name], msg=name)


def test_batch_elements_never_mix():
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs(seed=90)
    logits.requires_grad_(True)
    base = _all_losses(logits, mask, ids, adv, dpo_logps, labels, "none")
    other_logits = logits.detach().clone()
    other_logits[1:] = _logits(91)[1:]
    changed = _all_losses(other_logits, mask, ids, adv, dpo_logps, labels, "none")
    for name in base:
        assert base[name].shape == (B,), name
        torch.testing.assert_close(changed[name][0], base[name][0], msg=name)
        (grad,) = torch.autograd.grad(base[name][0], logits, retain_graph=True)
        assert (grad[1:] == 0).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_with_extreme_logits(dtype):
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs(seed=100, dtype=dtype, scale=40.0)
    logits.requires_grad_(True)
    for name, value in _all_losses(logits, mask, ids, adv, dpo_logps, labels, "mean").items():
        value = value.mean() if value.dim() else value
        assert torch.isfinite(value), name
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(grad).all(), name


def test_empty_response_gives_zero():
    logits, _, ids, adv, dpo_logps, labels = _shared_inputs(seed=110)
    empty = torch.zeros(B, T, dtype=torch.bool)
    for name, value in _all_losses(logits, empty, ids, adv, dpo_logps, labels, "none").items():
        assert (value == 0).all(), name


# ---------------------------------------------------------------------------------------------------------------
# registry and errors
# ---------------------------------------------------------------------------------------------------------------


def test_registry():
    assert set(A.LOSSES) == {"dckd", "adpa", "q_argmax", "q_softmax", "adpa_no_ref"}
    for name, fn in A.LOSSES.items():
        assert loss_registry.get_loss(name) is fn


def test_errors_name_the_argument():
    logits, mask, ids, adv, dpo_logps, labels = _shared_inputs(seed=120)
    cases = [
        ("teacher_topk_logps", lambda: A.topk_forward_kl(ids, dpo_logps[..., :3], logits, mask)),
        ("teacher_topk_ids", lambda: A.topk_forward_kl(ids.float(), dpo_logps, logits, mask)),
        ("teacher_topk_ids", lambda: A.topk_forward_kl(ids[:, :2], dpo_logps[:, :2], logits, mask)),
        ("teacher_topk_ids", lambda: A.topk_forward_kl(ids + V, dpo_logps, logits, mask)),
        ("mask", lambda: A.topk_forward_kl(ids, dpo_logps, logits, mask[:, :2])),
        ("student_logits", lambda: A.topk_forward_kl(ids, dpo_logps, logits[0], mask)),
        ("labels", lambda: A.sft_loss(logits, labels[:, :2], mask)),
        ("labels", lambda: A.sft_loss(logits, labels.masked_fill(mask, V), mask)),
        ("rejected_student_logits", lambda: A.dckd_loss(logits, labels, mask, ids, dpo_logps)),
        ("ref_topk_ids", lambda: A.advantage_from_topk(ids, dpo_logps, ids[:2], dpo_logps[:2], BETA, vocab_size=V)),
        ("missing_rule", lambda: A.advantage_from_topk(ids, dpo_logps, ids, dpo_logps, BETA, "nearest")),
        ("vocab_size", lambda: A.advantage_from_topk(ids, dpo_logps, ids, dpo_logps, BETA, "tail_uniform")),
        ("advantages", lambda: A.adpa_loss(logits, mask, ids, adv[..., :2], GAMMA)),
        ("mask_hat", lambda: A.adpa_loss(logits, mask[:2], ids, adv, GAMMA)),
        ("reduction", lambda: A.adpa_loss(logits, mask, ids, adv, GAMMA, reduction="avg")),
        ("sft_term", lambda: A.adpa_loss(logits, mask, ids, adv, GAMMA, sft_term=torch.zeros(B + 1))),
        ("temperature", lambda: A.q_softmax_kd_loss(logits, mask, ids, adv, GAMMA, temperature=0.0)),
        (
            "dpo_topk_logps",
            lambda: A.reverse_ce_dpo_only_loss(logits, mask, ids, dpo_logps[..., :1], GAMMA, BETA, vocab_size=V),
        ),
    ]
    for argument, call in cases:
        with pytest.raises(ValueError, match=argument):
            call()
