"""Training loops: `transformers.Trainer` with the workbench's response-only collator.

``ResponseCollator`` turns rows of (prompt, response) into a right-padded batch whose labels cover the response
only. ``train_sft`` is plain SFT through ``Trainer`` (the gym builder, SeqKD and the SFT baselines use it);
method trainers subclass ``Trainer`` and override ``compute_loss`` with a loss from ``workbench.losses``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import datasets
import torch
from transformers import Trainer, TrainingArguments

from workbench.encoding import collate_examples

logger = logging.getLogger("workbench.trainers")


@dataclass
class ResponseCollator:
    """Rows with ``prompt`` (str or messages) and ``response`` (str) -> LM batch with response-only labels."""

    tokenizer: object
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_examples(self.tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                                 self.max_length)
        if int(batch["truncated"]):
            logger.warning("%d of %d rows truncated to max_length=%s", int(batch["truncated"]), len(rows),
                           self.max_length)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def training_arguments(
    output_dir: str | None = None,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    logging_steps: int = 10,
    progress: bool = True,
    **overrides,
) -> TrainingArguments:
    """TrainingArguments with the workbench's defaults: no checkpoints, no external loggers, cosine schedule."""
    output_dir = output_dir or tempfile.mkdtemp(prefix="workbench-run-")
    args = dict(
        output_dir=output_dir,
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=max(0, round(warmup_ratio * steps)),
        weight_decay=weight_decay,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    args.update(overrides)
    return TrainingArguments(**args)


def train_sft(
    model,
    tokenizer,
    rows: datasets.Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    max_length: int | None = None,
    progress: bool = True,
    **overrides,
) -> list[dict]:
    """Supervised fine-tuning on (prompt, response) rows through ``Trainer``; returns the log history."""
    missing = {"prompt", "response"} - set(rows.column_names)
    if missing:
        raise ValueError(f"SFT rows need columns 'prompt' and 'response'; missing {sorted(missing)}")
    args = training_arguments(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                              **overrides)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=ResponseCollator(tokenizer, max_length))
    trainer.train()
    model.eval()
    return trainer.state.log_history


def set_threads() -> None:
    """Use every core torch is allowed (a notebook kernel may start with fewer)."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
