"""Teacher rewards per response group (PAD §4.2, Eq. 7-9): average log-likelihood, MCQ selection, calibrated.

Shared by PAD, the baselines' teacher annotation, the comparison's ranking agreement and the gym report.
"""

from __future__ import annotations

import random

import torch

from workbench.cache import tokenizer_fingerprint
from workbench.encoding import DEFAULT_MCQ_TEMPLATE, McqTemplate, as_messages
from workbench.losses.pad import calibrated_reward
from workbench.scoring import avg_logp_rewards, mcq_selection_logprobs, option_orders


def user_text(prompt) -> str:
    """The last user message of a prompt (what the gold reward and MCQ templates read)."""
    return as_messages(prompt)[-1]["content"]


def mcq_template_for(tokenizer) -> McqTemplate:
    """The MCQ wording saved beside the model (``mcq_template.json``, e.g. by a gym build), else the gym's own
    wording for gym models and the general wording for everything else."""
    from workbench.encoding import saved_mcq_template
    from workbench.gym.tokenizer import build_tokenizer
    from workbench.gym.world import GYM_MCQ_TEMPLATE

    saved = saved_mcq_template(tokenizer)
    if saved is not None:
        return saved
    gym = tokenizer_fingerprint(build_tokenizer())
    return GYM_MCQ_TEMPLATE if tokenizer_fingerprint(tokenizer) == gym else DEFAULT_MCQ_TEMPLATE


def shard_option_orders(n: int, seed: int, first_group: int, groups: int) -> list[list[int]]:
    """The random option order (PAD §4.2) that ``mcq_selection_logprobs(order="random", seed=seed)`` gives each of
    groups [first_group, first_group + groups) of a longer list: its generator replayed past the earlier groups.

    Returns one order per group; option j of group g shows response ``orders[g][j]``.
    """
    # the scorer's own draw, so a shard follows whatever it does
    rng = random.Random(seed)
    for _ in range(first_group):
        option_orders(n, "random", rng)
    return [option_orders(n, "random", rng)[0] for _ in range(groups)]


def teacher_rewards(
    teacher,
    tokenizer,
    prompts,
    groups,
    *,
    alpha: float,
    order: str = "random",
    seed: int = 0,
    first_group: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    backend: str = "hf",
    engine_options: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Teacher rewards per response group (PAD §4.2): avg log-lik r, MCQ log p_sel and calibrated r̂, each (P, n).

    ``first_group`` > 0 scores a shard: ``groups`` are groups [first_group, first_group + P) of a longer list
    scored with the same ``seed``, and get the option orders the whole list would show them, so the shards'
    rewards merge into the single-process rewards. ``backend="vllm"`` scores with a vLLM engine on the weights at
    ``teacher`` (a folder / hub id, or a loaded model's ``name_or_path``).
    """
    n = len(groups[0])
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [y for g in groups for y in g]
    questions = [user_text(p) for p in prompts]
    template = mcq_template_for(tokenizer)
    where = dict(batch_size=batch_size, progress=progress, backend=backend, engine_options=engine_options)
    # $r^{tch}(y) = \frac{1}{|y|}\log p(y|x)$ (Eq. 7)
    likelihood = avg_logp_rewards(teacher, tokenizer, flat_prompts, flat, **where).view(-1, n)
    # $\log p_{sel}(y_i) = \log p(c_i | Y_n, C_n, x)$ (Eq. 8)
    if order == "random" and first_group:
        # present each group in the order the whole list's draw gives it, then map letters back to responses
        orders = shard_option_orders(n, seed, first_group, len(groups))
        shown = [[group[i] for i in o] for group, o in zip(groups, orders)]
        by_letter = mcq_selection_logprobs(
            teacher, tokenizer, questions, shown, template=template, order="identity", **where
        )
        log_p_sel = torch.empty_like(by_letter)
        for g, o in enumerate(orders):
            log_p_sel[g, torch.tensor(o)] = by_letter[g]
    else:  # 'cyclic' and 'identity' orders do not depend on a group's position
        log_p_sel = mcq_selection_logprobs(
            teacher, tokenizer, questions, groups, template=template, order=order, seed=seed, **where
        )
    # $\hat r = (1-\alpha) r + \alpha \log p_{sel}$ (Eq. 9)
    return {
        "likelihood": likelihood,
        "log_p_sel": log_p_sel,
        "calibrated": calibrated_reward(likelihood, log_p_sel, alpha),
    }
