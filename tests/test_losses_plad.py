"""PLaD calibration losses, the A.7 score function and the pseudo-pair builder, against explicit definitions."""

import math

import pytest
import torch

from workbench import losses as loss_registry
from workbench.losses import plad as P


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _vec(seed, n=6, scale=5.0, dtype=torch.float64):
    return (scale * torch.randn(n, generator=_generator(seed))).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Eq. (4): ranking calibration hinge
# ---------------------------------------------------------------------------------------------------------------


def test_ranking_hinge_values_match_definition():
    chosen, rejected = _vec(0), _vec(1)
    for beta in (0.0, 0.5, 1.0, 3.0):
        expected = torch.tensor(
            [max(0.0, beta - (c - r)) for c, r in zip(chosen.tolist(), rejected.tolist())], dtype=torch.float64
        )
        got = P.ranking_calibration_loss(chosen, rejected, beta=beta, reduction="none")
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(P.ranking_calibration_loss(chosen, rejected, beta=beta), expected.mean())
        torch.testing.assert_close(
            P.ranking_calibration_loss(chosen, rejected, beta=beta, reduction="sum"), expected.sum()
        )


def test_ranking_hinge_zero_when_margin_met_and_linear_otherwise():
    beta = 1.0
    gaps = torch.tensor([-3.0, -0.5, 0.0, 0.25, 0.999, 1.0, 1.5, 10.0], dtype=torch.float64)
    rejected = torch.full_like(gaps, -20.0)
    loss = P.ranking_calibration_loss(rejected + gaps, rejected, beta=beta, reduction="none")
    satisfied = gaps >= beta
    assert torch.all(loss[satisfied] == 0)
    # slope -1 in the gap below the margin: loss = beta - gap exactly
    torch.testing.assert_close(loss[~satisfied], beta - gaps[~satisfied])


def test_ranking_hinge_gradient_zero_in_satisfied_region():
    beta = 1.0
    chosen = torch.tensor([0.0, -1.0, -5.0, -2.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0, -1.5, -4.0, -3.0], dtype=torch.float64, requires_grad=True)  # gaps 3, .5, -1, 1
    P.ranking_calibration_loss(chosen, rejected, beta=beta, reduction="sum").backward()
    # satisfied (gap 3, and gap exactly beta at the kink): zero gradient; violated: -1 / +1
    torch.testing.assert_close(chosen.grad, torch.tensor([0.0, -1.0, -1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rejected.grad, torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64))


def test_ranking_hinge_batch_independence_and_validation():
    chosen, rejected = _vec(2), _vec(3)
    full = P.ranking_calibration_loss(chosen, rejected, reduction="none")
    for b in range(len(chosen)):
        single = P.ranking_calibration_loss(chosen[b : b + 1], rejected[b : b + 1], reduction="none")
        torch.testing.assert_close(single, full[b : b + 1])
    with pytest.raises(ValueError, match="beta"):
        P.ranking_calibration_loss(chosen, rejected, beta=-1.0)
    with pytest.raises(ValueError, match="rejected_logps"):
        P.ranking_calibration_loss(chosen, rejected[:3])
    with pytest.raises(ValueError, match="reduction"):
        P.ranking_calibration_loss(chosen, rejected, reduction="avg")


# ---------------------------------------------------------------------------------------------------------------
# Eq. (5): margin calibration hinge
# ---------------------------------------------------------------------------------------------------------------


def test_margin_hinge_matches_definition_including_negative_score_gap():
    chosen, rejected = _vec(4), _vec(5)
    chosen_scores = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1, 0.6], dtype=torch.float64)
    rejected_scores = torch.tensor([0.3, 0.8, 0.5, 0.1, 0.4, 0.2], dtype=torch.float64)
    beta = 2.0
    expected = torch.tensor(
        [
            max(0.0, beta * (sp - sm) - (c - r))
            for c, r, sp, sm in zip(
                chosen.tolist(), rejected.tolist(), chosen_scores.tolist(), rejected_scores.tolist()
            )
        ],
        dtype=torch.float64,
    )
    got = P.margin_calibration_loss(chosen, rejected, chosen_scores, rejected_scores, beta=beta, reduction="none")
    torch.testing.assert_close(got, expected)


def test_margin_hinge_reduces_to_ranking_hinge_when_score_gap_is_one():
    chosen, rejected = _vec(6), _vec(7)
    ones, zeros = torch.ones_like(chosen), torch.zeros_like(chosen)
    torch.testing.assert_close(
        P.margin_calibration_loss(chosen, rejected, ones, zeros, beta=1.5, reduction="none"),
        P.ranking_calibration_loss(chosen, rejected, beta=1.5, reduction="none"),
    )


def test_margin_hinge_scores_detached_by_default():
    chosen = torch.tensor([-5.0, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-4.0, -9.0], dtype=torch.float64)
    scores_plus = torch.tensor([0.8, 0.9], dtype=torch.float64, requires_grad=True)
    scores_minus = torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True)
    P.margin_calibration_loss(chosen, rejected, scores_plus, scores_minus, reduction="sum").backward()
    assert scores_plus.grad is None and scores_minus.grad is None
    torch.testing.assert_close(chosen.grad, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    P.margin_calibration_loss(
        chosen, rejected, scores_plus, scores_minus, beta=2.0, reduction="sum", detach_scores=False
    ).backward()
    torch.testing.assert_close(scores_plus.grad, torch.tensor([2.0, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# App. A.7: n-gram F score from the student's own representations
# ---------------------------------------------------------------------------------------------------------------


def _ngram_f_loop(cand, ref, mask_cand, mask_ref, n):
    """Brute force: python loops over n-grams of the unmasked positions, max of mean aligned cosines."""
    out = []
    for b in range(cand.shape[0]):

        def grams(h, m):
            idx = [i for i in range(h.shape[1] - n + 1) if all(bool(m[b, i + k]) for k in range(n))]
            return [[h[b, i + k] / h[b, i + k].norm() for k in range(n)] for i in idx]

        gc, gr = grams(cand, mask_cand), grams(ref, mask_ref)
        if not gc or not gr:
            out.append(0.0)
            continue

        def sim(u, v):
            return sum(float(u[k] @ v[k]) for k in range(n)) / n

        precision = sum(max(0.0, max(sim(u, v) for v in gr)) for u in gc) / len(gc)
        recall = sum(max(0.0, max(sim(u, v) for u in gc)) for v in gr) / len(gr)
        out.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return torch.tensor(out, dtype=torch.float64)


def _states(seed, batch=3, length=7, dim=5):
    return torch.randn(batch, length, dim, generator=_generator(seed), dtype=torch.float64)


def _response_mask(lengths, offsets, total):
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for b, (n, o) in enumerate(zip(lengths, offsets)):
        mask[b, o : o + n] = True
    return mask


MASK_CAND = _response_mask((7, 4, 2), (0, 1, 3), 7)
MASK_REF = _response_mask((5, 6, 3), (2, 0, 1), 7)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_f_score_matches_loop(n):
    cand, ref = _states(10), _states(11)
    got = P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=n)
    torch.testing.assert_close(got, _ngram_f_loop(cand, ref, MASK_CAND, MASK_REF, n))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_f_score_identical_inputs_give_one(n):
    states = _states(12)
    mask = _response_mask((7, 5, 3), (0, 2, 1), 7)
    torch.testing.assert_close(P.ngram_f_score(states, states, mask, mask, n=n), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 2])
def test_ngram_f_score_symmetry_and_bounds(n):
    cand, ref = _states(13), _states(14)
    forward = P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=n)
    backward = P.ngram_f_score(ref, cand, MASK_REF, MASK_CAND, n=n)
    torch.testing.assert_close(forward, backward)  # F symmetric: P(a, b) = R(b, a)
    assert torch.all(forward >= 0) and torch.all(forward <= 1)
    # anti-aligned states: every cosine < 0 is clipped, so F = 0, still in bounds
    opposite = P.ngram_f_score(cand[:, :1].expand(-1, 7, -1), -cand[:, :1].expand(-1, 7, -1), MASK_CAND, MASK_REF, n=n)
    torch.testing.assert_close(opposite, torch.zeros(3, dtype=torch.float64))


def test_ngram_f_score_scale_and_padding_invariance():
    cand, ref = _states(15), _states(16)
    base = P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=2)
    scales = torch.rand(3, 7, 1, generator=_generator(17), dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(P.ngram_f_score(cand * scales, ref, MASK_CAND, MASK_REF, n=2), base)
    garbage_cand = torch.where(MASK_CAND[..., None], cand, torch.full_like(cand, float("nan")))
    padded_ref = torch.cat([ref, torch.full((3, 4, 5), 1e6, dtype=torch.float64)], dim=1)
    padded_mask_ref = torch.cat([MASK_REF, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(P.ngram_f_score(garbage_cand, padded_ref, MASK_CAND, padded_mask_ref, n=2), base)


def test_ngram_f_score_short_sequences_batch_independence_and_gradients():
    cand = _states(18).requires_grad_(True)
    ref = _states(19)
    # row 2 of the candidate has only 2 tokens: no 3-gram, so F_3 = 0 there
    got = P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=3)
    assert got[2] == 0
    for b in range(3):
        single = P.ngram_f_score(cand[b : b + 1], ref[b : b + 1], MASK_CAND[b : b + 1], MASK_REF[b : b + 1], n=3)
        torch.testing.assert_close(single, got[b : b + 1])
    got.sum().backward()
    assert torch.isfinite(cand.grad).all()
    assert torch.all(cand.grad[~MASK_CAND] == 0)
    # NaN at padding neither leaks into the value nor into the gradient
    garbage = torch.where(MASK_CAND[..., None], _states(18), torch.nan).requires_grad_(True)
    P.ngram_f_score(garbage, ref, MASK_CAND, MASK_REF, n=2).sum().backward()
    assert torch.isfinite(garbage.grad).all() and torch.all(garbage.grad[~MASK_CAND] == 0)
    assert P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=8).abs().sum() == 0  # n > T


def test_calibration_score_sums_orders_and_validates():
    cand, ref = _states(20), _states(21)
    total = P.calibration_score(cand, ref, MASK_CAND, MASK_REF, ns=(1, 2))
    torch.testing.assert_close(
        total,
        P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=1) + P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=2),
    )
    with pytest.raises(ValueError, match="n must be"):
        P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF, n=0)
    with pytest.raises(ValueError, match="hidden size"):
        P.ngram_f_score(cand, ref[..., :3], MASK_CAND, MASK_REF)
    with pytest.raises(ValueError, match="mask_ref"):
        P.ngram_f_score(cand, ref, MASK_CAND, MASK_REF[:, :4])


def test_margin_loss_with_score_from_hidden_states_end_to_end():
    """Teacher sample identical to the reference gets s = 1, so the margin is beta * (1 - s_student)."""
    ref = _states(22)
    student_sample = _states(23)
    mask = torch.ones(3, 7, dtype=torch.bool)
    s_plus = P.calibration_score(ref, ref, mask, mask)
    s_minus = P.calibration_score(student_sample, ref, mask, mask)
    chosen = torch.zeros(3, dtype=torch.float64)
    rejected = torch.zeros(3, dtype=torch.float64)
    loss = P.margin_calibration_loss(chosen, rejected, s_plus, s_minus, beta=1.0, reduction="none")
    torch.testing.assert_close(loss, 1.0 - s_minus)


# ---------------------------------------------------------------------------------------------------------------
# §4.2 pseudo-preference pairs and the Fig. 2 real-pair mixing
# ---------------------------------------------------------------------------------------------------------------


def _pair_data(n=20):
    prompts = [f"p{i}" for i in range(n)]
    teacher = [f"teacher {i}" for i in range(n)]
    student = [f"student {i}" for i in range(n)]
    student[3] = "teacher 3"  # identical -> skipped
    student[7] = "  teacher 7 \n"  # identical up to whitespace -> skipped
    teacher[11] = "   "  # empty -> skipped
    return prompts, teacher, student


def _gold_pairs(prompts, teacher, student):
    """Gold order flips every third prompt (the student's sample wins there)."""
    return [
        {"prompt": p, "chosen": s, "rejected": t} if i % 3 == 0 else {"prompt": p, "chosen": t, "rejected": s}
        for i, (p, t, s) in enumerate(zip(prompts, teacher, student))
    ]


def test_pseudo_pairs_teacher_chosen_and_skip_counts():
    prompts, teacher, student = _pair_data()
    rows, counts = P.make_pseudo_pairs(prompts, teacher, student)
    assert counts == {
        "n_input": 20,
        "n_pairs": 17,
        "n_pseudo": 17,
        "n_real": 0,
        "n_real_flipped": 0,
        "skipped_identical": 2,
        "skipped_empty": 1,
    }
    assert [r["prompt"] for r in rows] == [p for i, p in enumerate(prompts) if i not in (3, 7, 11)]
    for row in rows:
        i = prompts.index(row["prompt"])
        assert (row["chosen"], row["rejected"], row["source"]) == (teacher[i], student[i], "pseudo")


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.6, 1.0])
def test_pseudo_pairs_real_ratio_exact_counts(ratio):
    prompts, teacher, student = _pair_data()
    gold = _gold_pairs(prompts, teacher, student)
    rows, counts = P.make_pseudo_pairs(prompts, teacher, student, real_pairs=gold, real_ratio=ratio, seed=3)
    assert counts["n_pairs"] == len(rows) == 17  # dataset size does not depend on the ratio
    assert counts["n_real"] == round(ratio * 17) == sum(r["source"] == "real" for r in rows)
    assert counts["n_pseudo"] == 17 - counts["n_real"]
    flipped = 0
    for row in rows:
        i = prompts.index(row["prompt"])
        if row["source"] == "real":
            assert row == {**gold[i], "source": "real"}
            flipped += row["chosen"] == student[i]
        else:
            assert row["chosen"] == teacher[i]
    assert counts["n_real_flipped"] == flipped


def test_pseudo_pairs_real_mixing_is_seeded():
    prompts, teacher, student = _pair_data()
    gold = _gold_pairs(prompts, teacher, student)

    def real_prompts(seed):
        rows, _ = P.make_pseudo_pairs(prompts, teacher, student, real_pairs=gold, real_ratio=0.5, seed=seed)
        return [r["prompt"] for r in rows if r["source"] == "real"]

    assert real_prompts(0) == real_prompts(0)
    assert any(real_prompts(0) != real_prompts(s) for s in (1, 2, 3))


def test_pseudo_pairs_validation():
    prompts, teacher, student = _pair_data()
    gold = _gold_pairs(prompts, teacher, student)
    with pytest.raises(ValueError, match="same length"):
        P.make_pseudo_pairs(prompts, teacher[:-1], student)
    with pytest.raises(ValueError, match="real_pairs"):
        P.make_pseudo_pairs(prompts, teacher, student, real_ratio=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.make_pseudo_pairs(prompts, teacher, student, real_pairs=gold, real_ratio=1.5)
    with pytest.raises(ValueError, match="aligned"):
        P.make_pseudo_pairs(prompts, teacher, student, real_pairs=gold[:-1], real_ratio=0.5)
    sparse = [g if i < 5 else None for i, g in enumerate(gold)]  # only 4 usable (prompt 3 is skipped)
    rows, counts = P.make_pseudo_pairs(prompts, teacher, student, real_pairs=sparse, real_ratio=4 / 17)
    assert counts["n_real"] == 4
    with pytest.raises(ValueError, match="usable real pair"):
        P.make_pseudo_pairs(prompts, teacher, student, real_pairs=sparse, real_ratio=0.5)
    wrong = [dict(g, prompt="other") for g in gold]
    with pytest.raises(ValueError, match="different prompt"):
        P.make_pseudo_pairs(prompts, teacher, student, real_pairs=wrong, real_ratio=0.5)


# ---------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry():
    assert P.LOSSES == {"plad_ranking": P.ranking_calibration_loss, "plad_margin": P.margin_calibration_loss}
    for name, fn in P.LOSSES.items():
        assert loss_registry.LOSSES[name] is fn
    assert math.isclose(P.PLAD_BETA, 1.0) and math.isclose(P.PLAD_SAMPLING_TEMPERATURE, 0.7)
