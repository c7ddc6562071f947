"""A teacher trained by DPO on gold-ranked pairs of its own samples: the pairs (:func:`gold_ranked_own_pairs`) and
the DPO step (:func:`train_dpo`), shared by the gym's DPO teacher (:mod:`workbench.gym.build`) and the real-text
teacher (:mod:`workbench.real_text.build`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger("workbench.gym")


def gold_ranked_own_pairs(
    model,
    tokenizer,
    prompts,
    gold,
    *,
    n: int,
    temperature: float,
    seed: int,
    max_new_tokens: int | None = None,
    min_chosen_gold: float = 0.0,
    repair=None,
    progress: bool = False,
):
    """Gold-ranked DPO pairs of ``model``'s own samples (``n`` per prompt): its best ≻ its worst by ``gold(prompt,
    response)``; a prompt whose samples all tie, or whose best scores below ``min_chosen_gold``, is skipped and
    counted. With ``repair(prompt, response) -> str | None`` the chosen answer is the best sample repaired (None:
    the prompt is skipped, counted), kept where it scores above the worst sample. Returns the conversational pair
    dataset TRL takes and the counts (the gym's DPO teacher and the real-text teacher are trained on such pairs)."""
    import datasets

    from workbench.cache import StageCache
    from workbench.sampling import group_responses, sample_responses

    samples = sample_responses(
        model,
        tokenizer,
        [p.text for p in prompts],
        n=n,
        temperature=temperature,
        seed=seed,
        cache=StageCache(enabled=False),
        progress=progress,
        **({"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}),
    )
    _, groups = group_responses(samples)
    rows = {"prompt": [], "chosen": [], "rejected": []}
    ties = weak = unrepaired = 0
    sampled_gold = []
    for prompt, group in zip(prompts, groups):
        golds = [gold(prompt, r) for r in group]
        sampled_gold += golds
        best, worst = max(range(len(group)), key=golds.__getitem__), min(range(len(group)), key=golds.__getitem__)
        chosen, chosen_gold = group[best], golds[best]
        if repair is not None:
            chosen = repair(prompt, group[best])
            if chosen is None:
                unrepaired += 1
                continue
            chosen_gold = gold(prompt, chosen)
        if chosen_gold <= golds[worst]:
            ties += 1
            continue
        if chosen_gold < min_chosen_gold:
            weak += 1
            continue
        rows["prompt"].append([{"role": "user", "content": prompt.text}])
        rows["chosen"].append([{"role": "assistant", "content": chosen}])
        rows["rejected"].append([{"role": "assistant", "content": group[worst]}])
    if not rows["prompt"]:
        raise RuntimeError(f"no DPO pairs: all {ties} prompts' samples tied on gold; sample more prompts or answers")
    logger.info(
        "DPO pairs: %d kept; skipped %d prompts whose chosen answer did not beat the worst sample on gold, %d "
        "whose chosen answer scored below %.2f and %d whose best sample could not be repaired",
        len(rows["prompt"]),
        ties,
        weak,
        min_chosen_gold,
        unrepaired,
    )
    return datasets.Dataset.from_dict(rows), {
        "pairs": len(rows["prompt"]),
        "skipped_ties": ties,
        "skipped_weak_chosen": weak,
        "skipped_unrepaired": unrepaired,
        "sampled_gold": sum(sampled_gold) / len(sampled_gold),
    }


def train_dpo(
    ref_dir: Path,
    tokenizer,
    pairs,
    *,
    beta: float,
    loss: tuple[str, ...],
    loss_weights: tuple[float, ...] | None,
    lr: float,
    steps: int,
    batch_size: int,
    seed: int,
    work_dir: Path,
    progress: bool = False,
):
    """TRL's DPO from the model saved in ``ref_dir`` (also its frozen reference) on ``pairs``: cosine schedule with
    10% warm-up, bfloat16 autocast over float32 weights, no activation checkpointing. Returns the trained model
    (eval mode) and the trainer's log history."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from workbench.trainers import checkpointing_argument

    policy = AutoModelForCausalLM.from_pretrained(ref_dir)
    reference = AutoModelForCausalLM.from_pretrained(ref_dir)
    args = DPOConfig(
        output_dir=str(work_dir),
        beta=beta,
        loss_type=list(loss),
        loss_weights=list(loss_weights) if loss_weights else None,
        learning_rate=lr,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
        # TRL's own defaults (trl 1.x), spelled out so a new TRL cannot change the builds: DPO has always
        # trained under bfloat16 autocast (float32 master weights). Activation checkpointing, TRL's other default,
        # recomputes the same forward (the same weights, bit for bit) at ~20% more time: off.
        bf16=True,
        **{checkpointing_argument(): False},
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    shutil.rmtree(work_dir, ignore_errors=True)
    return trainer.model.eval(), trainer.state.log_history
