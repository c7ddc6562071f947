"""Baseline losses (DPO, SimPO, PRO, KD, reverse KL, SeqKD) against TRL 1.16 and brute-force definitions.

TRL parity, how it is done (TRL 1.16 has no standalone DPO loss function):

* DPO: ``trl.DPOTrainer._compute_loss`` is called unbound with a stub ``self`` (a SimpleNamespace holding only the
  attributes that method reads: beta, loss_types=["sigmoid"], precompute_ref_logps=True, f_divergence_type, ...,
  an accelerator whose gather is the identity) and a stub ``model`` whose output carries ``log_probs`` of shape
  (2B, T-1) with the wanted sequence log-prob in column 0 and zeros elsewhere (the trainer sums over T), so TRL's own
  loss code runs on our raw log-probs. Reference log-probs go in through ``inputs["ref_*_logps"]``.
* SimPO: ``trl.experimental.cpo.CPOTrainer.cpo_loss`` is called unbound with a stub ``self`` carrying beta,
  loss_type="simpo", simpo_gamma, label_smoothing, alpha=0 (AlphaPO off) and an accelerator with a device.
* Conservative DPO (label smoothing): TRL 1.16's DPO "sigmoid" ignores label_smoothing, so we compare with
  ``CPOTrainer.cpo_loss(loss_type="sigmoid")`` fed the policy-minus-reference log-ratios (the same formula).
"""

import collections
import math
import types

import pytest
import torch
import torch.nn.functional as F

from workbench import losses as loss_registry
from workbench.losses import adpa as A
from workbench.losses import baselines as BL

trl = pytest.importorskip("trl")


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _logps(seed, n=6, dtype=torch.float64):
    return (-30 * torch.rand(n, generator=_generator(seed))).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# TRL stubs
# ---------------------------------------------------------------------------------------------------------------


class _IdentityAccelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def _trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """(mean loss, metrics) from TRL 1.16 DPOTrainer._compute_loss on raw sequence log-probs."""
    from trl import DPOTrainer

    batch, length = policy_chosen.shape[0], 4
    log_probs = torch.zeros(2 * batch, length - 1, dtype=policy_chosen.dtype)
    log_probs[:, 0] = torch.cat([policy_chosen, policy_rejected])  # batch is [chosen, rejected]
    zeros = torch.zeros(2 * batch, length - 1)
    outputs = types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    stub = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=_IdentityAccelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": collections.defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    mask = torch.ones(2 * batch, length, dtype=torch.long)
    inputs = {
        "input_ids": torch.zeros(2 * batch, length, dtype=torch.long),
        "attention_mask": mask,
        "completion_mask": mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(stub, lambda **kwargs: outputs, inputs, return_outputs=False)
    return loss, stub._metrics["train"]


def _trl_cpo_loss(chosen, rejected, beta, loss_type, simpo_gamma=0.5, label_smoothing=0.0):
    """Per-sequence (losses, chosen_rewards, rejected_rewards) from TRL 1.16 CPOTrainer.cpo_loss."""
    from trl.experimental.cpo import CPOTrainer

    stub = types.SimpleNamespace(
        alpha=0.0,
        beta=beta,
        loss_type=loss_type,
        simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing,
        accelerator=_IdentityAccelerator(),
    )
    return CPOTrainer.cpo_loss(stub, chosen, rejected)


# ---------------------------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_dpo_trainer(beta):
    pc, pr, rc, rr = (_logps(s) for s in range(4))
    loss, chosen_rewards, rejected_rewards = BL.dpo_loss(pc, pr, rc, rr, beta=beta)
    trl_loss, metrics = _trl_dpo(pc, pr, rc, rr, beta)
    torch.testing.assert_close(loss, trl_loss)
    assert math.isclose(chosen_rewards.mean().item(), metrics["rewards/chosen"][0], rel_tol=1e-9)
    assert math.isclose(rejected_rewards.mean().item(), metrics["rewards/rejected"][0], rel_tol=1e-9)
    per_sequence, _, _ = BL.dpo_loss(pc, pr, rc, rr, beta=beta, reduction="none")
    for b in range(len(pc)):
        single, _ = _trl_dpo(pc[b : b + 1], pr[b : b + 1], rc[b : b + 1], rr[b : b + 1], beta)
        torch.testing.assert_close(per_sequence[b], single)


def test_dpo_label_smoothing_matches_reference_code_and_trl_cpo_sigmoid():
    pc, pr, rc, rr = (_logps(s) for s in range(4, 8))
    beta, eps = 0.2, 0.15
    got, _, _ = BL.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps, reduction="none")
    h = (pc - pr) - (rc - rr)
    expected = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)  # DPO reference `preference_loss`
    torch.testing.assert_close(got, expected)
    trl_losses, _, _ = _trl_cpo_loss(pc - rc, pr - rr, beta, "sigmoid", label_smoothing=eps)
    torch.testing.assert_close(got, trl_losses)
    with pytest.raises(ValueError, match="label_smoothing"):
        BL.dpo_loss(pc, pr, rc, rr, label_smoothing=0.5)


def test_dpo_rewards_gradients_and_batch_independence():
    pc, pr = _logps(8).requires_grad_(True), _logps(9).requires_grad_(True)
    rc, rr = _logps(10).requires_grad_(True), _logps(11).requires_grad_(True)
    loss, chosen_rewards, rejected_rewards = BL.dpo_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(chosen_rewards, 0.1 * (pc - rc).detach())
    torch.testing.assert_close(rejected_rewards, 0.1 * (pr - rr).detach())
    assert not chosen_rewards.requires_grad
    loss.backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert rc.grad is None and rr.grad is None  # the reference is a constant
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)
    full, _, _ = BL.dpo_loss(pc, pr, rc, rr, reduction="none")
    for b in range(len(pc)):
        single, _, _ = BL.dpo_loss(pc[b : b + 1], pr[b : b + 1], rc[b : b + 1], rr[b : b + 1], reduction="none")
        torch.testing.assert_close(single, full[b : b + 1])
    # a reward shift shared by chosen and rejected changes nothing
    shifted, _, _ = BL.dpo_loss(pc + 3, pr + 3, rc, rr, reduction="none")
    torch.testing.assert_close(shifted, full)


# ---------------------------------------------------------------------------------------------------------------
# SimPO
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,ratio,eps", [(2.0, 0.5, 0.0), (2.5, 0.55, 0.0), (0.1, 5.0, 0.1)])
def test_simpo_matches_trl_cpo_simpo(beta, ratio, eps):
    chosen_avg, rejected_avg = _logps(12) / 10, _logps(13) / 10
    got, chosen_rewards, rejected_rewards = BL.simpo_loss(
        chosen_avg, rejected_avg, beta=beta, gamma_beta_ratio=ratio, label_smoothing=eps, reduction="none"
    )
    trl_losses, trl_chosen, trl_rejected = _trl_cpo_loss(
        chosen_avg, rejected_avg, beta, "simpo", simpo_gamma=beta * ratio, label_smoothing=eps
    )
    torch.testing.assert_close(got, trl_losses)
    torch.testing.assert_close(chosen_rewards, trl_chosen)
    torch.testing.assert_close(rejected_rewards, trl_rejected)


def test_simpo_gamma_parametrisations_and_definition():
    chosen_avg, rejected_avg = _logps(14) / 10, _logps(15) / 10
    by_ratio, _, _ = BL.simpo_loss(chosen_avg, rejected_avg, beta=2.0, gamma_beta_ratio=0.7, reduction="none")
    by_gamma, _, _ = BL.simpo_loss(chosen_avg, rejected_avg, beta=2.0, gamma=1.4, reduction="none")
    torch.testing.assert_close(by_ratio, by_gamma)
    default, _, _ = BL.simpo_loss(chosen_avg, rejected_avg, reduction="none")  # beta 2, gamma/beta 0.5
    torch.testing.assert_close(default, -F.logsigmoid(2.0 * (chosen_avg - rejected_avg) - 1.0))
    with pytest.raises(ValueError, match="not both"):
        BL.simpo_loss(chosen_avg, rejected_avg, gamma=1.0, gamma_beta_ratio=0.5)


def test_simpo_gradients_and_batch_independence():
    chosen_avg, rejected_avg = (_logps(16) / 10).requires_grad_(True), (_logps(17) / 10).requires_grad_(True)
    loss, _, _ = BL.simpo_loss(chosen_avg, rejected_avg)
    loss.backward()
    assert torch.isfinite(chosen_avg.grad).all() and torch.all(chosen_avg.grad < 0)
    full, _, _ = BL.simpo_loss(chosen_avg, rejected_avg, reduction="none")
    for b in range(len(chosen_avg)):
        single, _, _ = BL.simpo_loss(chosen_avg[b : b + 1], rejected_avg[b : b + 1], reduction="none")
        torch.testing.assert_close(single, full[b : b + 1])


# ---------------------------------------------------------------------------------------------------------------
# PRO
# ---------------------------------------------------------------------------------------------------------------


def _pro_loop(rewards, scores=None, temperature=1.0):
    """Brute force: for each k, -log(exp(r_k / T_kk) / sum_{i>=k} exp(r_i / T_ki)), with python loops."""
    out = []
    for b in range(rewards.shape[0]):
        r = rewards[b].tolist()
        n = len(r)
        total = 0.0
        for k in range(n - 1):
            if scores is None:
                inv = {i: 1.0 / temperature for i in range(k, n)}
            else:
                s = scores[b].tolist()
                inv = {i: s[k] - s[i] for i in range(k + 1, n)}
                inv[k] = max(inv.values())
            denominator = sum(math.exp(r[i] * inv[i]) for i in range(k, n))
            total += -math.log(math.exp(r[k] * inv[k]) / denominator)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def _ranked(seed, batch=4, n=5):
    rewards = -3 * torch.rand(batch, n, generator=_generator(seed), dtype=torch.float64)
    scores = torch.rand(batch, n, generator=_generator(seed + 100), dtype=torch.float64).sort(-1, descending=True)[0]
    return rewards, scores


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pro_constant_temperature_matches_loop(n, temperature):
    rewards, _ = _ranked(20 + n, n=n)
    got = BL.pro_loss(rewards, temperature=temperature, reduction="none")
    torch.testing.assert_close(got, _pro_loop(rewards, temperature=temperature))


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_pro_dynamic_temperature_matches_loop(n):
    rewards, scores = _ranked(30 + n, n=n)
    scores[0, 1] = scores[0, 0]  # a tie: zero multiplier, as in the released code
    got = BL.pro_loss(rewards, rank_scores=scores, reduction="none")
    torch.testing.assert_close(got, _pro_loop(rewards, scores))


def test_pro_plackett_luce_identity_and_pairwise_case():
    """At T = 1, PRO is the Plackett-Luce NLL of the ranking; n = 2 is -log sigma(r_1 - r_2)."""
    rewards, _ = _ranked(40, n=4)
    got = BL.pro_loss(rewards, reduction="none")
    for b in range(4):
        r = rewards[b]
        plackett_luce = sum(-(r[k] - torch.logsumexp(r[k:], 0)) for k in range(4))
        torch.testing.assert_close(got[b], plackett_luce)
    pair = rewards[:, :2]
    torch.testing.assert_close(BL.pro_loss(pair, reduction="none"), -F.logsigmoid(pair[:, 0] - pair[:, 1]))
    # softmax invariance: a per-row reward shift changes nothing
    torch.testing.assert_close(
        BL.pro_loss(rewards + torch.tensor([[1.0], [-2.0], [5.0], [0.0]], dtype=torch.float64), reduction="none"), got
    )


def test_pro_sft_weight_default_and_override():
    rewards, _ = _ranked(41, n=4)
    sft = torch.tensor([2.0, 3.0, 1.0, 4.0], dtype=torch.float64)
    base = BL.pro_loss(rewards, reduction="none")
    torch.testing.assert_close(BL.pro_loss(rewards, sft_term=sft, reduction="none"), base + 0.05 * 9 * sft)
    torch.testing.assert_close(BL.pro_loss(rewards, sft_term=sft, sft_weight=1.0, reduction="none"), base + sft)
    torch.testing.assert_close(BL.pro_loss(rewards, sft_term=2.0, sft_weight=0.5), base.mean() + 1.0)


def test_pro_gradients_batch_independence_and_validation():
    rewards, scores = _ranked(42, n=5)
    rewards.requires_grad_(True)
    BL.pro_loss(rewards, rank_scores=scores).backward()
    assert torch.isfinite(rewards.grad).all()
    assert torch.all(rewards.grad[:, 0] < 0)  # the best response is always pushed up
    full = BL.pro_loss(rewards, rank_scores=scores, reduction="none")
    for b in range(rewards.shape[0]):
        torch.testing.assert_close(
            BL.pro_loss(rewards[b : b + 1], rank_scores=scores[b : b + 1], reduction="none"), full[b : b + 1]
        )
    with pytest.raises(ValueError, match="non-increasing"):
        BL.pro_loss(rewards, rank_scores=scores.flip(-1))
    with pytest.raises(ValueError, match="n >= 2"):
        BL.pro_loss(rewards[:, :1])
    with pytest.raises(ValueError, match="temperature"):
        BL.pro_loss(rewards, temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Standard KD (forward KL), reverse KL, SeqKD
# ---------------------------------------------------------------------------------------------------------------

B, T, V = 3, 5, 11
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)


def _logits(seed, scale=2.0):
    return scale * torch.randn(B, T, V, generator=_generator(seed), dtype=torch.float64)


def _kl_loop(p_logits, q_logits, mask, temperature=1.0):
    """Explicit per-token sum_a p log(p / q), mean over response tokens, with python loops."""
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        values = []
        for t in range(T):
            if not mask[b, t]:
                continue
            p = torch.softmax(p_logits[b, t] / temperature, -1)
            q = torch.softmax(q_logits[b, t] / temperature, -1)
            values.append(sum(float(p[a] * math.log(p[a] / q[a])) for a in range(V)))
        out[b] = sum(values) / len(values)
    return out


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_kd_matches_explicit_definition(temperature):
    teacher, student = _logits(50), _logits(51)
    got = BL.forward_kl_kd_loss(teacher, student, MASK, temperature=temperature, reduction="none")
    torch.testing.assert_close(got, temperature**2 * _kl_loop(teacher, student, MASK, temperature))
    torch.testing.assert_close(BL.forward_kl_kd_loss(teacher, teacher, MASK), torch.tensor(0.0, dtype=torch.float64))


def test_topk_kd_equals_full_kd_at_k_equals_v():
    teacher, student = _logits(52), _logits(53)
    logps, ids = torch.topk(torch.log_softmax(teacher, -1), V, dim=-1)
    torch.testing.assert_close(
        BL.topk_kd_loss(ids, logps, student, MASK, reduction="none"),
        BL.forward_kl_kd_loss(teacher, student, MASK, reduction="none"),
    )


def test_reverse_kl_matches_definition_nonnegative_and_zero_iff_equal():
    teacher, student = _logits(54), _logits(55)
    got = BL.reverse_kl_loss(teacher, student, MASK, reduction="none")
    torch.testing.assert_close(got, _kl_loop(student, teacher, MASK))
    assert torch.all(got > 0)
    assert not torch.allclose(got, BL.forward_kl_kd_loss(teacher, student, MASK, reduction="none"))
    torch.testing.assert_close(
        BL.reverse_kl_loss(teacher, teacher, MASK, reduction="none"), torch.zeros(B, dtype=torch.float64)
    )
    # shift-invariant logits give equal distributions: still zero; a difference on a masked position is ignored
    shifted = teacher + 7.0
    shifted[~MASK] = torch.randn(int((~MASK).sum()), V, generator=_generator(56), dtype=torch.float64)
    torch.testing.assert_close(
        BL.reverse_kl_loss(teacher, shifted, MASK, reduction="none"), torch.zeros(B, dtype=torch.float64)
    )
    for seed in range(57, 62):  # nonnegative on random pairs
        assert torch.all(BL.reverse_kl_loss(_logits(seed), _logits(seed + 10, 4.0), MASK, reduction="none") >= 0)


@pytest.mark.parametrize("name", ["kd", "reverse_kl"])
def test_logit_losses_gradients_and_batch_independence(name):
    fn = BL.LOSSES[name]
    teacher = _logits(63).requires_grad_(True)
    student = _logits(64).requires_grad_(True)
    fn(teacher, student, MASK).backward()
    assert teacher.grad is None  # teacher is a constant
    assert torch.isfinite(student.grad).all()
    assert torch.all(student.grad[~MASK] == 0)
    full = fn(teacher, student, MASK, reduction="none")
    for b in range(B):
        torch.testing.assert_close(
            fn(teacher[b : b + 1], student[b : b + 1], MASK[b : b + 1], reduction="none"), full[b : b + 1]
        )
    with pytest.raises(ValueError, match="same shape"):
        fn(teacher[..., :-1], student, MASK)


def test_seqkd_is_sft_on_teacher_samples():
    student = _logits(65)
    labels = torch.randint(0, V, (B, T), generator=_generator(66))
    labels[~MASK] = -100
    torch.testing.assert_close(
        BL.seqkd_loss(student, labels, MASK, reduction="none"), A.sft_loss(student, labels, MASK)
    )
    torch.testing.assert_close(BL.seqkd_loss(student, labels, MASK), A.sft_loss(student, labels, MASK).mean())


# ---------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_names_and_no_clash():
    assert set(BL.LOSSES) == {"dpo", "simpo", "pro", "kd", "kd_topk", "reverse_kl", "seqkd"}
    taken = {
        "vpd",
        "ppd",
        "ppd_mc",
        "dckd",
        "adpa",
        "q_argmax",
        "q_softmax",
        "adpa_no_ref",
        "plad_ranking",
        "plad_margin",
    }
    assert not set(BL.LOSSES) & taken
    for name, fn in BL.LOSSES.items():
        assert loss_registry.LOSSES[name] is fn
    assert BL.LOSSES["seqkd"] is BL.seqkd_loss
