"""Training loops: `transformers.Trainer` with the workbench's response-only collator.

``ResponseCollator`` turns rows of (prompt, response) into a right-padded batch whose labels cover the response
only. ``train_sft`` is plain SFT through ``Trainer`` (the gym builder, SeqKD and the SFT baselines use it);
method trainers subclass ``Trainer`` and override ``compute_loss`` with a loss from ``workbench.losses``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from workbench.divergence import DivergenceGuard
from workbench.encoding import collate_examples
from workbench.logprobs import chunked_logps_at, logits_chunk_setting
from workbench.packing import padding_free as packed_forwards
from workbench.stored import CorruptFile, read_verified, write_verified

logger = logging.getLogger("workbench.trainers")


@dataclass
class ResponseCollator:
    """Rows with ``prompt`` (str or messages) and ``response`` (str) -> LM batch with response-only labels.

    ``fields`` picks what the batch carries: the default suits ``Trainer``'s LM loss; logit losses ask for
    ``("input_ids", "attention_mask", "response_mask")``.
    """

    tokenizer: object
    max_length: int | None = None
    fields: tuple[str, ...] = ("input_ids", "attention_mask", "labels")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_examples(
            self.tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], self.max_length
        )
        if int(batch["truncated"]):
            logger.warning(
                "%d of %d rows truncated to max_length=%s", int(batch["truncated"]), len(rows), self.max_length
            )
        return {k: batch[k] for k in self.fields}


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
        logging_nan_inf_filter=False,  # the logs show a non-finite loss as it is, not as the running average
    )
    args.update(env_training_overrides())
    args.update(overrides)
    if args.get("save_strategy") == "steps" and args.get("logging_steps"):
        # checkpoints on logging steps: a resumed run logs what the uninterrupted run logs (Trainer's logged loss
        # averages the steps since the last log, and a resume starts that count afresh)
        args["logging_steps"] = math.gcd(int(args["logging_steps"]), int(args["save_steps"]))
    return TrainingArguments(**args)


TRAINING_ARGS_ENV = "WORKBENCH_TRAINING_ARGS"


def env_training_overrides() -> dict:
    """Extra ``TrainingArguments`` from ``$WORKBENCH_TRAINING_ARGS`` (a JSON object), for full-size runs launched
    by papermill or ``accelerate launch`` without a code change, e.g.
    ``{"gradient_accumulation_steps": 64, "gradient_checkpointing": true}``. Arguments a caller passes win."""
    raw = os.environ.get(TRAINING_ARGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        extra = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"${TRAINING_ARGS_ENV} must be a JSON object of TrainingArguments; got {raw!r}") from error
    if not isinstance(extra, dict):
        raise ValueError(f"${TRAINING_ARGS_ENV} must be a JSON object; got {raw!r}")
    spelled = [key for key in extra if key.removesuffix("_kwargs") in CHECKPOINTING_NAMES]
    if spelled:
        # either name of activation checkpointing, passed on under the one this transformers has (no deprecation
        # warning now, no error once transformers 6 drops the old name)
        name = checkpointing_argument()
        for key in spelled:
            extra.setdefault(name + ("_kwargs" if key.endswith("_kwargs") else ""), extra.pop(key))
        if extra.get(name):
            extra.update(checkpointing_arguments(extra.get(f"{name}_kwargs")))
    return extra


CHECKPOINTING_NAMES = ("activation_checkpointing", "gradient_checkpointing")


def checkpointing_argument() -> str:
    """``TrainingArguments``' name for activation checkpointing: transformers 5 renamed ``gradient_checkpointing``
    to ``activation_checkpointing`` (the old name still works, with a deprecation warning)."""
    from dataclasses import fields

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def checkpointing_arguments(kwargs: dict | None = None) -> dict:
    """``TrainingArguments`` turning activation checkpointing on under the installed name, with ``kwargs`` or, by
    default, non-reentrant (which works with frozen inputs — LoRA — without ``enable_input_require_grads``)."""
    name = checkpointing_argument()
    return {name: True, f"{name}_kwargs": kwargs or {"use_reentrant": False}}


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
    collator=None,
    checkpoints: Checkpoints | None = None,
    logits_chunk: int | None = None,
    tracking_dir: str | None = None,
    padding_free: bool = False,
    **overrides,
) -> list[dict]:
    """Supervised fine-tuning on (prompt, response) rows through ``Trainer``; returns the log history.

    ``collator`` replaces the response-only :class:`ResponseCollator` (e.g. one that adds labels of its own);
    ``checkpoints`` makes the call resumable (:class:`Checkpoints`); ``logits_chunk`` (default
    ``$WORKBENCH_LOGITS_CHUNK``, off) reads the same loss through the chunked head (:class:`ChunkedSftObjective`);
    ``tracking_dir`` is where a ``report_to`` TensorBoard writes (:func:`tracked`); ``padding_free`` trains on
    packed rows (:func:`workbench.packing.padding_free`)."""
    missing = {"prompt", "response"} - set(rows.column_names)
    if missing:
        raise ValueError(f"SFT rows need columns 'prompt' and 'response'; missing {sorted(missing)}")
    chunk = logits_chunk if logits_chunk is not None else logits_chunk_setting()
    args = training_arguments(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        **(checkpoints.arguments() if checkpoints else {}),
        **overrides,
    )
    collator = collator or ResponseCollator(tokenizer, max_length)
    with tracked(tracking_dir):
        if chunk:  # the same loss through the chunked head: no (B, T, V) logits
            trainer = DistillTrainer(
                model=model, args=args, train_dataset=rows, data_collator=collator, objective=ChunkedSftObjective(chunk)
            )
        else:
            trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    with packed_forwards(model, enabled=padding_free):
        return fit(prepare_trainer(trainer, progress), checkpoints)


@contextlib.contextmanager
def tracked(tracking_dir: str | None):
    """Trainers built inside write their TensorBoard logs (``report_to`` "tensorboard") to ``tracking_dir``
    instead of a time-stamped folder in ``TrainingArguments.output_dir`` (a temporary folder, or the checkpoints'):
    transformers' ``TensorBoardCallback`` reads ``$TENSORBOARD_LOGGING_DIR`` when the trainer is built."""
    if tracking_dir is None:
        yield
        return
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tracking_dir)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


@dataclass
class ChunkedSftObjective:
    """``Trainer``'s causal-LM loss on ``labels`` (mean negative log-likelihood of the labelled tokens) read through
    the chunked head (:func:`chunked_logps_at`), normalised as ``Trainer`` normalises the model's own loss: by the
    labelled tokens of the whole accumulated (and, across processes, global) batch when it passes that count,
    else of this batch. Same loss and gradients as the model's loss (tested)."""

    chunk: int
    takes_num_items = True  # DistillTrainer passes Trainer's num_items_in_batch

    def __call__(self, model, inputs, num_items_in_batch=None):
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        logps = chunked_logps_at(
            model, inputs["input_ids"], inputs["attention_mask"], labels.clamp(min=0)[..., None], self.chunk
        )[..., 0]
        nll = -(logps * mask).sum()
        items = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
        return nll / items, {}


@dataclass(frozen=True)
class Checkpoints:
    """Resumable training: ``Trainer``'s own checkpoints (weights or LoRA adapter, optimizer, scheduler, RNG states,
    the data position, the log so far) every ``every`` optimizer steps and at the end, under ``folder``; a training
    call that finds one there resumes from the newest complete one. Each training call of a run (a PAD round, an
    ADPA stage) gets its own sub-folder (:meth:`stage`), so a rerun passes through finished calls (their final
    weights are loaded, no step is repeated) and resumes the one that was cut short."""

    folder: Path
    every: int

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"save_steps={self.every}; checkpoints need a positive number of optimizer steps")

    def stage(self, name: str) -> Checkpoints:
        return replace(self, folder=Path(self.folder) / name)

    def arguments(self) -> dict:
        """``TrainingArguments`` that save here: every ``every`` steps and at the last, keeping the newest only
        (the older one is deleted only after the newer is written)."""
        return {
            "output_dir": str(self.folder),
            "save_strategy": "steps",
            "save_steps": self.every,
            "save_total_limit": 1,
        }

    def latest(self) -> str | None:
        """The newest complete checkpoint folder (``Trainer`` writes ``trainer_state.json`` last, the objective's
        state after it), or None; a folder cut short by a crash mid-save is skipped with a warning."""
        steps = {
            int(p.name.removeprefix("checkpoint-")): p
            for p in Path(self.folder).glob("checkpoint-*")
            if p.name.removeprefix("checkpoint-").isdigit()
        }
        for candidate in (steps[step] for step in sorted(steps, reverse=True)):
            if (candidate / "trainer_state.json").exists() and (candidate / OBJECTIVE_STATE).exists():
                try:
                    read_objective_state(candidate)
                except CorruptFile as error:
                    logger.warning(
                        "skipping checkpoint %s: its objective state is corrupt (%s)", candidate, error.reason
                    )
                    continue
                return str(candidate)
            logger.warning("skipping incomplete checkpoint %s (cut short while saving)", candidate)
        return None


OBJECTIVE_STATE = "objective_state.safetensors"  # verified, no pickle (workbench.stored)


def read_objective_state(checkpoint: str | Path) -> dict:
    """The objective's state saved in a checkpoint folder (:class:`ObjectiveStateCallback`), verified."""
    return read_verified(Path(checkpoint) / OBJECTIVE_STATE, key=OBJECTIVE_STATE)


class ObjectiveStateCallback(TrainerCallback):
    """Saves the objective's own state (e.g. the generator PAD's decomposition draws groups from) into each
    checkpoint, so a resumed run draws what the uninterrupted run draws; objectives without state save ``{}``."""

    def __init__(self, objective):
        self.objective = objective

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            state_dict = self.objective.state_dict() if hasattr(self.objective, "state_dict") else {}
            write_verified(folder / OBJECTIVE_STATE, state_dict, key=OBJECTIVE_STATE)


def fit(trainer, checkpoints: Checkpoints | None = None, objective=None) -> list[dict]:
    """``trainer.train()``, resumed from the newest complete checkpoint in ``checkpoints`` when there is one;
    returns the whole log history (a resumed run's includes the steps before the interruption)."""
    resume = checkpoints.latest() if checkpoints else None
    if checkpoints:
        trainer.add_callback(ObjectiveStateCallback(objective))
    if resume:
        from transformers import TrainerState

        saved = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        if saved.global_step >= trainer.args.max_steps:
            # a finished call: its final weights, no step (Trainer's resume would take one more step when the
            # last epoch is partial); the private loader is the one Trainer's resume uses (full, sharded, LoRA)
            logger.info("finished before: loading its final weights from %s", resume)
            trainer._load_from_checkpoint(resume)
            trainer.state = saved
            trainer.model.eval()
            return trainer.state.log_history
        logger.info("resuming from %s (step %d of %d)", resume, saved.global_step, trainer.args.max_steps)
        if objective is not None and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(read_objective_state(resume))
    trainer.train(resume_from_checkpoint=resume)
    if resume:
        whole_run_train_loss(trainer.state.log_history, saved.global_step)
    trainer.model.eval()
    return trainer.state.log_history


def whole_run_train_loss(history: list[dict], resumed_at: int) -> None:
    """Make the ``train_loss`` of a run resumed at step ``resumed_at`` the mean over the whole run (Trainer's
    averages the steps after the resume only). The logged losses before the resume tile its steps (a checkpoint
    falls on a logging step, :func:`training_arguments`), each the mean over the steps since the previous log."""
    final = next((entry for entry in reversed(history) if "train_loss" in entry), None)
    if final is None or not resumed_at:
        return
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry and last < entry["step"] <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if last != resumed_at:
        logger.warning(
            "the log before the resume covers %d of its %d steps: train_loss averages the steps after the resume only",
            last,
            resumed_at,
        )
        return
    steps = final["step"]
    final["train_loss"] = (total + final["train_loss"] * (steps - resumed_at)) / steps


_WATCHERS: contextvars.ContextVar[tuple] = contextvars.ContextVar("workbench_trainer_watchers", default=())


@contextlib.contextmanager
def watching(*callbacks):
    """Every method's Trainer built in this block also runs ``callbacks`` (``TrainerCallback``s, e.g. the
    comparison's validation curve); one instance sees each of a run's training calls (rounds, stages) in turn."""
    token = _WATCHERS.set(_WATCHERS.get() + callbacks)
    try:
        yield
    finally:
        _WATCHERS.reset(token)


def prepare_trainer(trainer, progress: bool):
    """A method's Trainer as every method runs it: the callbacks of an enclosing :func:`watching` added, and without
    ``progress`` no printed log dicts (the Trainer prints each instead of a bar, its PrinterCallback), so a quiet run
    (the harness, a notebook's sweep) prints nothing; the log history is kept and returned."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    for callback in _WATCHERS.get():
        trainer.add_callback(callback)
    return trainer


def set_threads() -> None:
    """Use every core torch is allowed (a notebook kernel may start with fewer); ``WORKBENCH_THREADS`` overrides.

    Small models on a busy machine run far faster with fewer threads than cores (OpenMP threads spin).
    """
    threads = os.environ.get("WORKBENCH_THREADS")
    torch.set_num_threads(int(threads) if threads else max(1, len(os.sched_getaffinity(0))))


# --- distillation: one Trainer subclass, the method supplies the objective ---


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


class DistillTrainer(DivergenceGuard, Trainer):
    """``transformers.Trainer`` whose loss is ``objective(model, inputs) -> (loss, metrics)``.

    Works unchanged under ``accelerate launch`` (DDP/FSDP) because only ``compute_loss`` is replaced. Metrics
    returned by the objective are averaged over logging steps and appear in ``state.log_history``. A non-finite
    loss or gradient norm stops the run (:class:`~workbench.divergence.TrainingDiverged`).
    """

    def __init__(self, *args, objective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # mixed precision (bf16=True): the model's forward runs under accelerate's autocast; so does the rest of the
        # objective, e.g. the chunked output head, which reads the final hidden states outside that forward
        with self.accelerator.autocast():
            return self._objective_loss(model, inputs, return_outputs, num_items_in_batch)

    def _objective_loss(self, model, inputs, return_outputs, num_items_in_batch):
        if getattr(self.objective, "takes_num_items", False):
            # a token-level loss normalised over the accumulated batch, as Trainer treats the model's own loss: it
            # then skips its division by the accumulation steps, and averages over processes by scaling
            counted = num_items_in_batch if self.model_accepts_loss_kwargs else None
            loss, metrics = self.objective(model, inputs, num_items_in_batch=counted)
            if counted is not None and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss, metrics = self.objective(model, inputs)
        self.note_loss(loss)
        for name, value in metrics.items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(value)
        self._metric_count += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        if self._metric_count:
            means = {k: v / self._metric_count for k, v in self._metric_sums.items()}
            if self.args.world_size > 1:  # every process logs at the same steps: average over processes, as loss is
                names = sorted(means)
                values = torch.tensor([means[k] for k in names], device=self.args.device)
                means = dict(zip(names, self.accelerator.reduce(values, reduction="mean").tolist()))
            logs = {**logs, **means}
            self._metric_sums, self._metric_count = {}, 0
        super().log(logs, *args, **kwargs)


def train_distill(
    model,
    rows: datasets.Dataset,
    collator,
    objective,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    checkpoints: Checkpoints | None = None,
    tracking_dir: str | None = None,
    padding_free: bool = False,
    **overrides,
) -> list[dict]:
    """Run ``DistillTrainer`` for ``steps`` optimizer steps; returns the log history. ``checkpoints`` makes the
    call resumable (:class:`Checkpoints`); ``tracking_dir`` is where a ``report_to`` TensorBoard writes;
    ``padding_free`` runs the student's forwards on packed rows (:func:`workbench.packing.padding_free`)."""
    args = training_arguments(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        **(checkpoints.arguments() if checkpoints else {}),
        **overrides,
    )
    with tracked(tracking_dir):
        trainer = prepare_trainer(
            DistillTrainer(model=model, args=args, train_dataset=rows, data_collator=collator, objective=objective),
            progress,
        )
    with packed_forwards(model, enabled=padding_free):
        return fit(trainer, checkpoints, objective)


@dataclass
class PairCollator:
    """Rows with ``prompt``, ``chosen``, ``rejected`` (and ``reference`` when ``with_reference``) -> one batch of
    2B sequences (chosen rows first, then rejected), plus a separate B-row ``reference_*`` batch and, for each
    name in ``float_columns``, a (B,) float tensor of that column (e.g. DPO's reference log-likelihoods)."""

    tokenizer: object
    with_reference: bool = False
    max_length: int | None = None
    float_columns: tuple[str, ...] = ()

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt"] for r in rows]
        batch = collate_examples(
            self.tokenizer,
            prompts + prompts,
            [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
            self.max_length,
        )
        batch.pop("truncated")
        if self.with_reference:
            ref = collate_examples(self.tokenizer, prompts, [r["reference"] for r in rows], self.max_length)
            batch.update({f"reference_{k}": ref[k] for k in ("input_ids", "attention_mask", "response_mask")})
        for name in self.float_columns:
            batch[name] = torch.tensor([r[name] for r in rows], dtype=torch.float32)
        return batch
