"""ADPA §4.4 made measurable: how many reward evaluations does each reward granularity need to find a*?

At a state s_t (a prompt plus a prefix of a student's own response) the *advantage-optimal next action* is

    a*_t = argmax_{a in A_t} A(s_t, a),   A(s_t, a) = β log π_dpo(a|s_t) / π_ref(a|s_t)      (ADPA Eq. 8, §4.4)

over a candidate set A_t (here: the DPO teacher's top-m tokens at s_t, i.e. ADPA's own top-k support with
k = m; |A| = m). Three ways of learning about actions, each with its unit of cost (one "reward evaluation"):

* **distribution level** (ADPA): one forward pass of each teacher at s_t returns A(s_t, ·) for every action at
  once. One evaluation (of the teacher pair) identifies a* exactly: O(1).
* **token level** (ADPA App. C, Eq. 28 without the student's KL penalty): a query (s_t, a) returns the reward
  r(s_t, a) = A(s_t, a) of that one action. Success after B queries = a* was among the queried actions. Two query
  orders: ``uniform`` (enumerate A_t in random order: success min(B, m)/m, the O(|A|) of §4.4) and ``policy``
  (actions sampled from the student π_θ(·|s_t), as on-policy RL explores: success 1 − (1 − π_θ(a*|s_t))^B).
* **sequence level** (ADPA App. C, Eq. 26): only complete trajectories are scored, R(τ) = β log π_dpo(y|x) /
  π_ref(y|x) at EOS. For each candidate a, n Monte-Carlo rollouts y_{>t} ~ π_ref(·|s_t, a) to EOS give the soft
  Q-value estimate

      Q̂(s_t, a) / β = log π_dpo(a|s_t)/π_ref(a|s_t)
                      + log (1/n) Σ_i π_dpo(y^i_{>t}|s_t, a) / π_ref(y^i_{>t}|s_t, a)

  (prefix terms are the same for every candidate and dropped). Because E_{π_ref}[π_dpo/π_ref] = 1 exactly, Q̂
  converges to A(s_t, a) + const as n → ∞ — the token-level MDP reading of DPO (ADPA App. A; Rafailov et al.
  2024a): β log π_dpo/π_ref is Q* − V* for the KL-regularised problem with the DPO reward at EOS. So the three
  granularities aim at the *same* a*, and only the cost differs. Budget B = n·m rollouts (B < m: B random
  candidates with one rollout each). The theoretical cost of exhaustive enumeration is O(|A|^(T−t)).

The estimators (``*_success``) are pure functions of arrays, tested on hand-made distributions with known
answers; :func:`collect_states` gathers those arrays from the gym's models; :func:`run_sample_complexity` is the
experiment notebook 05 runs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from workbench.cache import StageCache, content_hash, default_cache, model_fingerprint

# ---------------------------------------------------------------------------------------------------------------
# estimators: pure functions of arrays
# ---------------------------------------------------------------------------------------------------------------


def distribution_level_success(budgets: Sequence[int], n_states: int) -> np.ndarray:
    """Success of the distribution-level advantage: exact once the teacher pair has been evaluated (budget ≥ 1).

    .. math:: a^*_t = \\arg\\max_a \\beta\\log\\frac{\\pi_{\\text{dpo}}(a|s_t)}{\\pi_{\\text{ref}}(a|s_t)}
              \\text{ from one forward pass of each teacher}

    Returns:
        (n_states, len(budgets)) success probabilities in {0, 1}.
    """
    row = (np.asarray(budgets) >= 1).astype(float)
    return np.tile(row, (n_states, 1))


def token_level_success(
    budgets: Sequence[int],
    num_actions: np.ndarray,
    best_policy_probs: np.ndarray | None = None,
    strategy: str = "uniform",
) -> np.ndarray:
    """Probability that a* is among B queried actions when each query reveals one action's reward r(s_t, a).

    ``uniform``: actions enumerated in a uniformly random order without repetition, P = min(B, m) / m.
    ``policy``: actions drawn i.i.d. from the student's policy, P = 1 − (1 − π_θ(a*|s_t))^B.

    Args:
        budgets: query budgets B.
        num_actions: (S,) candidate-set size m per state.
        best_policy_probs: (S,) π_θ(a*|s_t), needed by ``policy``.
        strategy: "uniform" or "policy".
    Returns:
        (S, len(budgets)) success probabilities.
    """
    budgets = np.asarray(budgets, dtype=float)[None, :]  # (1, nB)
    m = np.asarray(num_actions, dtype=float)[:, None]  # (S, 1)
    if strategy == "uniform":
        # $P = \min(B, m) / m$
        return np.minimum(budgets, m) / m
    if strategy == "policy":
        if best_policy_probs is None:
            raise ValueError("strategy='policy' needs best_policy_probs = π_θ(a*|s_t) per state")
        p = np.clip(np.asarray(best_policy_probs, dtype=float)[:, None], 0.0, 1.0)
        # $P = 1 - (1 - \pi_\theta(a^*))^B$
        return 1.0 - (1.0 - p) ** budgets
    raise ValueError(f"strategy={strategy!r}; use 'uniform' or 'policy'")


def soft_q_estimate(action_logratios: np.ndarray, continuation_logratios: np.ndarray) -> np.ndarray:
    """Q̂/β per candidate from rollouts: log ratio of the action plus the log-mean importance weight of its rollouts.

    .. math:: \\hat Q(s,a)/\\beta = \\log\\frac{\\pi_{\\text{dpo}}(a|s)}{\\pi_{\\text{ref}}(a|s)}
              + \\log\\frac{1}{n}\\sum_{i=1}^n
              \\frac{\\pi_{\\text{dpo}}(y^i_{>t}|s,a)}{\\pi_{\\text{ref}}(y^i_{>t}|s,a)}

    Args:
        action_logratios: (..., m) log π_dpo(a|s) − log π_ref(a|s).
        continuation_logratios: (..., m, n) log-ratio of each rollout's continuation (sum over its tokens).
    Returns:
        (..., m) estimates.
    """
    n = continuation_logratios.shape[-1]
    cont = torch.as_tensor(continuation_logratios, dtype=torch.float64)
    # $\log \frac{1}{n} \sum_i e^{w_i}$
    log_mean_weight = (torch.logsumexp(cont, dim=-1) - math.log(n)).numpy()
    return np.asarray(action_logratios, dtype=float) + log_mean_weight


def _argmax_random_ties(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """argmax over the last axis, ties broken uniformly at random."""
    noise = rng.random(values.shape)
    top = values >= values.max(-1, keepdims=True) - 1e-12
    return np.where(top, noise, -1.0).argmax(-1)


def sequence_level_success(
    budgets: Sequence[int],
    action_logratios: np.ndarray,
    continuation_logratios: np.ndarray,
    best: np.ndarray,
    *,
    trials: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """Probability that the Monte-Carlo soft-Q argmax from B rollouts is a*, estimated over ``trials`` redraws.

    For B ≥ m each candidate gets n = ⌊B/m⌋ rollouts drawn with replacement from its pool (the pool stands in for
    π_ref's rollout distribution); for B < m, B candidates chosen at random get one rollout each and the others
    are unknown (never chosen). Ties between estimates are broken at random.

    Args:
        budgets: rollout budgets B.
        action_logratios: (S, m) log π_dpo(a|s) − log π_ref(a|s) of each candidate.
        continuation_logratios: (S, m, N) pool of rollout continuation log-ratios per candidate.
        best: (S,) index of a* among the m candidates.
        trials: redraws per (state, budget).
    Returns:
        (S, len(budgets)) success probabilities.
    """
    rng = np.random.default_rng(seed)
    action_logratios = np.asarray(action_logratios, dtype=float)
    pools = np.asarray(continuation_logratios, dtype=float)
    n_states, m, pool_size = pools.shape
    out = np.zeros((n_states, len(budgets)))
    for j, budget in enumerate(budgets):
        n = max(1, int(budget) // m)
        draws = rng.integers(0, pool_size, size=(trials, n_states, m, n))  # (R, S, m, n)
        sampled = np.take_along_axis(np.broadcast_to(pools, (trials, n_states, m, pool_size)), draws, axis=-1)
        estimates = soft_q_estimate(np.broadcast_to(action_logratios, (trials, n_states, m)), sampled)  # (R, S, m)
        if budget < m:
            # only B random candidates are evaluated; the rest can never be picked
            order = rng.random((trials, n_states, m)).argsort(-1)
            evaluated = order < int(budget)
            estimates = np.where(evaluated, estimates, -np.inf)
        picked = _argmax_random_ties(estimates, rng)  # (R, S)
        out[:, j] = (picked == np.asarray(best)[None, :]).mean(0)
    return out


def budget_to_reach(budgets: Sequence[int], success: np.ndarray, target: float = 0.95) -> int | None:
    """Smallest budget whose mean success over states is ≥ ``target`` (None if none on the grid).

    Args:
        budgets: (nB,) increasing budgets.
        success: (S, nB) per-state success probabilities, or (nB,) means.
    """
    mean = success.mean(0) if np.ndim(success) == 2 else np.asarray(success)
    hits = [b for b, s in zip(budgets, mean) if s >= target - 1e-12]
    return int(hits[0]) if hits else None


def theoretical_costs(num_actions: float, remaining_steps: float) -> dict:
    """§4.4's enumeration counts: O(1), O(|A|), O(|A|^(T−t))."""
    return {"distribution": 1.0, "token": float(num_actions), "sequence": float(num_actions) ** float(remaining_steps)}


# ---------------------------------------------------------------------------------------------------------------
# data from the gym's models
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SampleComplexityConfig:
    """Parameters of the §4.4 experiment; defaults run on the gym on CPU in a couple of minutes."""

    teacher_dpo: str = field(default="gym-teacher-dpo", metadata={"help": "π_dpo"})
    teacher_ref: str = field(
        default="gym-teacher-ref", metadata={"help": "π_ref (also the rollout policy of the MC estimator)"}
    )
    student: str = field(default="gym-student", metadata={"help": "policy whose generations give the states"})
    n_states: int = field(default=48, metadata={"help": "states s_t (one random prefix of one student sample each)"})
    candidates: int = field(default=8, metadata={"help": "|A|: candidate actions = π_dpo's top-m tokens at s_t"})
    rollouts: int = field(default=128, metadata={"help": "rollout pool per candidate for the sequence-level estimator"})
    trials: int = field(default=200, metadata={"help": "redraws per (state, budget) for success probabilities"})
    beta: float = field(default=0.1, metadata={"help": "β of A (does not move any argmax)"})
    temperature: float = field(default=0.8, metadata={"help": "student sampling temperature for the states"})
    max_new_tokens: int = 24
    rollout_max_tokens: int = field(default=32, metadata={"help": "rollout length cap (gym answers end far earlier)"})
    target: float = field(default=0.95, metadata={"help": "success probability that counts as 'identified'"})
    seed: int = 0

    def __post_init__(self):
        if self.n_states < 1 or self.candidates < 2 or self.rollouts < 1 or self.trials < 1:
            raise ValueError("n_states, rollouts and trials must be ≥ 1 and candidates ≥ 2")
        if not 0 < self.target <= 1:
            raise ValueError(f"target={self.target}; a success probability in (0, 1]")


def next_token_logps(model, sequences: torch.Tensor) -> torch.Tensor:
    """log π(·|s) after each unpadded sequence: (N, L) ids → (N, V) log-probs."""
    with torch.no_grad():
        logits = model(input_ids=sequences.to(model.device)).logits[:, -1].float()
    return torch.log_softmax(logits, -1).cpu()


def continuation_logps(
    model, sequences: torch.Tensor, start: int, mask: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Σ log π(y_j | y_<j) over positions ``start ..`` where ``mask`` is set: (N, L) ids → (N,)."""
    from workbench.logprobs import gather_token_logps

    out = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size].to(model.device)
        with torch.no_grad():
            logits = model(input_ids=chunk).logits
        token_logps = gather_token_logps(logits[:, start - 1 : -1], chunk[:, start:]).cpu()  # (b, L - start)
        out.append((token_logps * mask[i : i + batch_size, start:]).sum(-1))
    return torch.cat(out)


def rollouts(
    model,
    prefix: torch.Tensor,
    candidates: torch.Tensor,
    n: int,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    seed: int,
    cache: StageCache | None = None,
) -> torch.Tensor:
    """n samples y_{>t} ~ π(·|s_t, a) to EOS for each candidate a (temperature 1, no top-k/top-p: exactly π).

    Args:
        prefix: (L,) token ids of s_t.
        candidates: (m,) candidate next tokens.
    Returns:
        (m, n, L + 1 + new) ids: prefix, candidate, continuation (``pad_id`` after EOS).
    """
    cache = cache or default_cache()
    key = {
        "model": model_fingerprint(model),
        "prefix": content_hash(prefix.tolist()),
        "candidates": candidates.tolist(),
        "n": n,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }

    def compute():
        starts = torch.cat([prefix.expand(len(candidates), -1), candidates[:, None]], 1)  # (m, L+1)
        batch = starts.repeat_interleave(n, 0)  # (m·n, L+1), all the same length: no padding
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=batch.to(model.device),
                attention_mask=torch.ones_like(batch).to(model.device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        return out.cpu().view(len(candidates), n, -1)

    return cache.get_or_compute("rollouts", key, compute)


def collect_states(cfg: SampleComplexityConfig, progress: bool = False) -> dict:
    """States from student samples, both teachers' next-token distributions there, and π_ref rollouts per candidate.

    Returns a dict of arrays: ``action_logratios (S, m)``, ``continuation_logratios (S, m, N)``, ``best (S,)``,
    ``best_policy_probs (S,)`` (student's π_θ(a*|s)), ``remaining (S,)`` (mean rollout length after a, EOS
    included), ``truncated`` (share of rollouts that hit the length cap), ``weight_mean`` (mean importance weight
    π_dpo/π_ref of continuations, ≈ 1 if the rollouts are exact π_ref samples), plus readable state texts.
    """
    from tqdm.auto import tqdm

    from workbench.encoding import encode_prompt
    from workbench.gym.world import make_prompts
    from workbench.models import load
    from workbench.sampling import sample_responses
    from workbench.topk_cache import check_shared_vocabulary

    dpo, tok = load(cfg.teacher_dpo)
    ref, ref_tok = load(cfg.teacher_ref)
    student, student_tok = load(cfg.student)
    check_shared_vocabulary(ref_tok, tok, "reference teacher", "DPO teacher")
    check_shared_vocabulary(student_tok, tok, "student", "DPO teacher")
    prompts = make_prompts(cfg.n_states, "validation", seed=cfg.seed + 55)
    samples = sample_responses(
        student,
        tok,
        [p.text for p in prompts],
        n=1,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        progress=False,
    )
    rng = random.Random(cfg.seed)
    m = cfg.candidates
    result = {
        k: []
        for k in (
            "action_logratios",
            "continuation_logratios",
            "best",
            "best_policy_probs",
            "remaining",
            "truncated",
            "weight_mean",
            "state_text",
            "candidates_text",
            "advantages",
        )
    }
    for prompt, response_ids in tqdm(list(zip(prompts, samples["response_ids"])), desc="states", disable=not progress):
        prompt_ids = encode_prompt(tok, prompt.text)
        response = list(response_ids) + [tok.eos_token_id]
        t = rng.randrange(len(response))  # state s_t = x + ŷ_<t
        prefix = torch.tensor(prompt_ids + response[:t])
        dpo_logps = next_token_logps(dpo, prefix[None])[0]  # (V,)
        ref_logps = next_token_logps(ref, prefix[None])[0]  # (V,)
        student_logps = next_token_logps(student, prefix[None])[0]  # (V,)
        candidates = torch.topk(dpo_logps, m).indices  # (m,) π_dpo's top-m
        # $\log \pi_{\text{dpo}}(a|s) - \log \pi_{\text{ref}}(a|s)$ on the candidates
        action_lr = (dpo_logps - ref_logps)[candidates]  # (m,)
        best = int(action_lr.argmax())
        seqs = rollouts(
            ref,
            prefix,
            candidates,
            cfg.rollouts,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
            max_new_tokens=cfg.rollout_max_tokens,
            seed=cfg.seed,
        )  # (m, N, L')
        flat = seqs.view(-1, seqs.shape[-1])  # (m·N, L')
        start = len(prefix) + 1  # first continuation position
        # continuation tokens up to and including the first EOS; a candidate that *is* EOS has none
        cont = flat[:, start:]
        is_eos = (cont == tok.eos_token_id).long()
        before_eos = (is_eos.cumsum(-1) - is_eos) == 0  # (m·N, new): positions up to the first EOS
        live = before_eos & (flat[:, start - 1 : start] != tok.eos_token_id)
        mask = torch.zeros_like(flat, dtype=torch.float32)
        mask[:, start:] = live.float()
        # $\log \frac{\pi_{\text{dpo}}(y_{>t}|s,a)}{\pi_{\text{ref}}(y_{>t}|s,a)}$ per rollout
        cont_lr = continuation_logps(dpo, flat, start, mask) - continuation_logps(ref, flat, start, mask)
        cont_lr = cont_lr.view(m, cfg.rollouts)
        finished = (is_eos.sum(-1) > 0) | (flat[:, start - 1] == tok.eos_token_id)
        result["action_logratios"].append(action_lr.numpy())
        result["continuation_logratios"].append(cont_lr.numpy())
        result["best"].append(best)
        result["best_policy_probs"].append(float(student_logps[candidates[best]].exp()))
        result["remaining"].append(float(1 + live.sum(-1).float().mean()))
        result["truncated"].append(float(1 - finished.float().mean()))
        result["weight_mean"].append(float(cont_lr.exp().mean()))
        result["state_text"].append(prompt.text + " | " + tok.decode(response[:t]))
        result["candidates_text"].append(tok.convert_ids_to_tokens(candidates.tolist()))
        result["advantages"].append((cfg.beta * action_lr).tolist())
    del dpo, ref, student
    arrays = {
        k: np.asarray(result[k])
        for k in (
            "action_logratios",
            "continuation_logratios",
            "best",
            "best_policy_probs",
            "remaining",
            "truncated",
            "weight_mean",
        )
    }
    return {
        **arrays,
        "state_text": result["state_text"],
        "candidates_text": result["candidates_text"],
        "advantages": result["advantages"],
    }


def budget_grid(candidates: int, rollouts: int) -> list[int]:
    """Powers of two from 1 up to candidates × rollouts (the largest sequence-level budget)."""
    top = candidates * rollouts
    grid = [2**i for i in range(int(math.log2(top)) + 1)]
    return sorted(set(grid + [candidates, top]))


def run_sample_complexity(cfg: SampleComplexityConfig, progress: bool = False) -> dict:
    """The experiment of notebook 05: success probability vs budget per granularity, budgets to reach the target.

    Returns a JSON-ready dict: ``budgets``, ``success`` (granularity → mean success per budget), ``success_ci``
    (95% CI half-widths over states), ``budget_to_target``, ``theory`` (§4.4 counts at this |A| and mean T − t),
    ``diagnostics`` (rollout truncation, importance-weight mean, π_θ(a*)) and a few example states.
    """
    from workbench.evaluate import mean_ci
    from workbench.trainers import set_threads

    set_threads()
    started = time.perf_counter()
    data = collect_states(cfg, progress=progress)
    n_states = len(data["best"])
    budgets = budget_grid(cfg.candidates, cfg.rollouts)
    num_actions = np.full(n_states, cfg.candidates)
    per_state = {
        "distribution-level advantage": distribution_level_success(budgets, n_states),
        "token-level reward (uniform enumeration)": token_level_success(budgets, num_actions, strategy="uniform"),
        "token-level reward (student-policy samples)": token_level_success(
            budgets, num_actions, data["best_policy_probs"], strategy="policy"
        ),
        "sequence-level reward (MC rollouts)": sequence_level_success(
            budgets,
            data["action_logratios"],
            data["continuation_logratios"],
            data["best"],
            trials=cfg.trials,
            seed=cfg.seed,
        ),
    }
    remaining = float(np.mean(data["remaining"]))
    return {
        "config": asdict(cfg),
        "budgets": budgets,
        "success": {k: v.mean(0).tolist() for k, v in per_state.items()},
        "success_ci": {k: [mean_ci(col)["ci95"] for col in v.T] for k, v in per_state.items()},
        "budget_to_target": {k: budget_to_reach(budgets, v, cfg.target) for k, v in per_state.items()},
        "theory": theoretical_costs(cfg.candidates, remaining),
        "diagnostics": {
            "states": n_states,
            "mean_remaining_steps": remaining,
            "rollouts_truncated": float(np.mean(data["truncated"])),
            "importance_weight_mean": mean_ci(data["weight_mean"]),
            "student_prob_of_best": mean_ci(data["best_policy_probs"]),
            "best_is_dpo_top1": float(np.mean(np.asarray(data["best"]) == 0)),
        },
        "examples": [
            {"state": s, "candidates": c, "advantages": [round(a, 4) for a in adv], "best": int(b)}
            for s, c, adv, b in list(
                zip(data["state_text"], data["candidates_text"], data["advantages"], data["best"])
            )[:5]
        ],
        "seconds": time.perf_counter() - started,
    }
