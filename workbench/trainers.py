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
        logging_steps=max(1, min(logging_steps, steps // 4)),  # short runs still log a curve
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
    """Use every core torch is allowed (a notebook kernel may start with fewer); ``WORKBENCH_THREADS`` overrides.

    Small models on a busy machine run far faster with fewer threads than cores (OpenMP threads spin).
    """
    threads = os.environ.get("WORKBENCH_THREADS")
    torch.set_num_threads(int(threads) if threads else max(1, len(os.sched_getaffinity(0))))


# --- distillation: one Trainer subclass, the method supplies the objective ---


def student_token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the batch's response tokens under ``model`` (with gradient).

    Returns ``token_logps (B, L-1)`` and ``mask (B, L-1)`` where position t scores token t+1.
    """
    from workbench.scoring import gather_token_logps

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = gather_token_logps(logits[:, :-1], batch["input_ids"][:, 1:])
    return token_logps, batch["response_mask"][:, 1:]


@dataclass
class ListwiseCollator:
    """Rows with ``prompt``, ``responses`` (n strings) and ``teacher_rewards`` (n floats) -> a flat batch of
    B·n sequences plus ``teacher_rewards (B, n)``."""

    tokenizer: object
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sizes = {len(r["responses"]) for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"rows in a batch have different numbers of responses {sorted(sizes)}")
        prompts = [r["prompt"] for r in rows for _ in r["responses"]]
        responses = [y for r in rows for y in r["responses"]]
        batch = collate_examples(self.tokenizer, prompts, responses, self.max_length)
        batch["teacher_rewards"] = torch.tensor([r["teacher_rewards"] for r in rows], dtype=torch.float32)
        batch.pop("truncated")
        return batch


class DistillTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``objective(model, inputs) -> (loss, metrics)``.

    Works unchanged under ``accelerate launch`` (DDP/FSDP) because only ``compute_loss`` is replaced. Metrics
    returned by the objective are averaged over logging steps and appear in ``state.log_history``.
    """

    def __init__(self, *args, objective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.objective(model, inputs)
        for name, value in metrics.items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(value)
        self._metric_count += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        if self._metric_count:
            logs = {**logs, **{k: v / self._metric_count for k, v in self._metric_sums.items()}}
            self._metric_sums, self._metric_count = {}, 0
        super().log(logs, *args, **kwargs)


def train_distill(model, rows: datasets.Dataset, collator, objective, *, steps: int, lr: float,
                  batch_size: int, seed: int = 0, progress: bool = True, **overrides) -> list[dict]:
    """Run ``DistillTrainer`` for ``steps`` optimizer steps; returns the log history."""
    args = training_arguments(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                              **overrides)
    trainer = DistillTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                             objective=objective)
    trainer.train()
    model.eval()
    return trainer.state.log_history
