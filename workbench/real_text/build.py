"""Train the real-text teacher into the cache: SmolLM2-135M-Instruct's own answers to ``verifiable`` train prompts,
gold-ranked (its best answer, repaired by program to meet every constraint, ≻ its worst), then DPO from SmolLM2 with
SmolLM2 as the reference (the gym's DPO-teacher recipe on real text, with repaired chosen answers:
:func:`workbench.dpo_teacher.gold_ranked_own_pairs`, :func:`workbench.dpo_teacher.train_dpo`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from workbench.cache import build_folder_once
from workbench.data.verifiable import gold_reward, make_prompts, repaired_answer
from workbench.dpo_teacher import gold_ranked_own_pairs, train_dpo
from workbench.gym.build import library_versions
from workbench.real_text.store import TEACHER, TEACHERS, TeacherRecipe, is_built, teacher_root

logger = logging.getLogger("workbench.real_text")


def build_teacher(
    name: str = TEACHER, *, recipe: TeacherRecipe | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Train real-text teacher ``name`` (or ``recipe``) into the cache, or find it built there; returns its
    ``save_pretrained`` folder. Loading the preset never comes here (:func:`workbench.real_text.store.find_teacher`)."""
    import shutil

    if recipe is None:
        if name not in TEACHERS:
            raise ValueError(f"real-text teacher {name!r}; use one of {sorted(TEACHERS)}")
        recipe = TEACHERS[name]
    root = teacher_root(recipe)
    if force:
        shutil.rmtree(root, ignore_errors=True)
    return build_folder_once(root, lambda folder: _train_teacher(recipe, folder, progress), is_built)


def _train_teacher(recipe: TeacherRecipe, tmp: Path, progress: bool) -> None:
    """Sample, pair, DPO and save into ``tmp`` (``build.json`` last)."""
    import torch

    from workbench.models import load, resolve
    from workbench.trainers import set_threads
    from workbench.weights import weights_record

    set_threads()
    started = time.perf_counter()
    base_dir = Path(resolve(recipe.base))
    model, tokenizer = load(recipe.base)
    prompts = make_prompts(recipe.prompts, "train", seed=recipe.prompt_seed)
    pairs, pair_stats = gold_ranked_own_pairs(
        model,
        tokenizer,
        prompts,
        gold_reward,
        n=recipe.samples,
        temperature=recipe.temperature,
        seed=recipe.seed,
        max_new_tokens=recipe.max_new_tokens,
        repair=repaired_answer if recipe.chosen == "repaired" else None,
        progress=progress,
    )
    sampled = time.perf_counter()
    del model
    teacher, log = train_dpo(
        base_dir,
        tokenizer,
        pairs,
        beta=recipe.beta,
        loss=recipe.dpo_loss,
        loss_weights=recipe.dpo_loss_weights,
        lr=recipe.lr,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        work_dir=tmp.with_name(tmp.name + "-dpo-run"),
        progress=progress,
    )
    bad = [n for n, p in teacher.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"the DPO teacher has non-finite weights ({bad[:3]}); not saved. Lower TeacherRecipe.lr")
    tmp.mkdir(parents=True, exist_ok=True)
    teacher.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "recipe": asdict(recipe),
        "key": recipe.key(),
        "libraries": library_versions(),
        "threads": torch.get_num_threads(),
        "weights": weights_record(tmp),
        "dpo_pairs": pair_stats,
        "seconds": {
            "sampling": sampled - started,
            "dpo": time.perf_counter() - sampled,
            "total": time.perf_counter() - started,
        },
        "final_train_loss": next((r["train_loss"] for r in reversed(log) if "train_loss" in r), None),
        "log": log,
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2))
    logger.info("real-text teacher built in %.1f s", info["seconds"]["total"])
