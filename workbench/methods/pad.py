"""PAD pipeline (Preference-Aligned Distillation): sample → teacher rewards (calibrated) → VPD/PPD training,
for ``iterations`` rounds of re-sampling from the updated student (PAD Fig. 3), then gold evaluation.

Everything it uses is shared: :func:`workbench.sampling.sample_responses`, :mod:`workbench.scoring`,
``DistillTrainer`` and the loss registry. ``run_pad(PadConfig(...))`` is what notebook 03 calls.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar, NamedTuple

import datasets
import numpy as np
import torch

from workbench.backends.vllm import release_vllm_engines
from workbench.evaluate import win_rate
from workbench.logprobs import student_token_logps
from workbench.losses import get_loss
from workbench.losses.pad import decompose_groups, decomposed_loss
from workbench.methods import FAMILIES
from workbench.methods.checks import check_ranking_loss, check_run_sizes, check_sampling_temperature
from workbench.methods.common import (
    HELD_OUT_SEED,
    RunResult,
    TrainedRun,
    gold_of,
    gym_prompts,  # noqa: F401  (importable from here too)
    has_gold,
    held_out_evaluation,
    load_frozen_teacher,
    metrics_kept_on_divergence,
    no_gold_evaluation,
    preference_splits,
    preset_prompts,
    run_checkpoints,
    training_summary,
)
from workbench.methods.config import (
    SAVE_STEPS_HELP,
    VLLM_OPTIONS_HELP,
    TrainingKnobs,
    check_dataset_options,
    check_sampling_batch_size,
    check_save_steps,
    check_vllm_options,
    dataset_field,
    dataset_schema_field,
    judge_field,
    knob,
    resolve_lr,
    sampling_batch_size_field,
    sampling_levers_field,
    vllm_engine_options,
)
from workbench.methods.pad_ranking import ranking_agreement
from workbench.methods.pad_rounds import (  # noqa: F401  (the round's stages, importable from here too)
    REWARD_SIGNALS,
    RoundSamples,
    check_round_samples,
    round_rows,
    sample_and_score,
    sample_round,
    score_round,
    vllm_student_folder,
)
from workbench.sampling import sample_responses
from workbench.trainers import ListwiseCollator, set_threads, train_distill

logger = logging.getLogger("workbench.pad")


@dataclass
class PadConfig(TrainingKnobs):
    """Parameters of a PAD run; defaults run the gym on CPU in minutes, paper values quoted in ``help``."""

    memory_shape: ClassVar[str] = FAMILIES["pad"].memory_shape  # workbench.memory.MEMORY_SHAPES

    teacher: str = field(default="gym-teacher-dpo", metadata={"help": "teacher id/path/preset"})
    student: str = field(default="gym-student", metadata={"help": "student id/path/preset"})
    dataset: str = dataset_field(
        "PAD uses its prompts only and samples its own responses (e.g. 'ultrafeedback-cleaned')"
    )
    dataset_schema: str = dataset_schema_field()
    judge: str = judge_field("teacher agreement and training metrics only")
    train_prompts: int = field(default=1024, metadata={"help": "prompts sampled per round"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts for gold evaluation"})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt per round (PAD §4.1: 4)"})
    m: int | None = field(default=None, metadata={"help": "decompose the n responses into groups of m (Eq. 13)"})
    iterations: int = field(default=1, metadata={"help": "rounds of re-sampling from the student (Fig. 3)"})
    alpha: float = field(default=0.8, metadata={"help": "reward calibration ratio (Eq. 9; paper: 0.8)"})
    beta: float = field(default=10.0, metadata={"help": "PL reward scale (Eq. 10-11; paper: 10)"})
    loss: str = field(default="ppd", metadata={"help": "'vpd', 'ppd' or 'ppd_mc'"})
    sft_weight: float = field(
        default=0.0,
        metadata={"help": "weight of an NLL anchor on the teacher's top response (beyond the paper; 0 = as published)"},
    )
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (PAD §4.1: 0.8)"})
    max_new_tokens: int = field(
        default=24,
        metadata={"help": "longest sampled response in tokens (gym: 24; verifiable: 128; real data: 512)"},
    )
    max_prompt_tokens: int | None = field(
        default=None,
        metadata={
            "help": "cut longer prompts to this many tokens, logged with a count (None: a prompt longer than the "
            "student's context minus max_new_tokens is an error naming its row)"
        },
    )
    sampling_batch_size: int = sampling_batch_size_field(
        "prompts per generate call; batch b is seeded seed + b (and shards across processes whole)"
    )
    scoring_batch_size: int = field(
        default=32, metadata={"help": "sequences per teacher forward pass (likelihood and MCQ scoring)"}
    )
    sampling_backend: str = field(
        default="hf", metadata={"help": "'hf' (model.generate) or 'vllm' (optional: pip install vllm)"}
    )
    scoring_backend: str = field(
        default="hf",
        metadata={
            "help": "'hf' (the loaded teacher) or 'vllm' (optional: pip install vllm; the teacher's weights are served "
            "by a vLLM engine and never loaded into the training process)"
        },
    )
    vllm_gpu_memory: float = field(
        default=0.0,
        metadata={
            "help": "share of GPU memory each vLLM engine reserves (0 = vLLM's default, 0.9; lower it, e.g. 0.3, when "
            "the student trains on the same GPU)"
        },
    )
    vllm_options: dict = field(default_factory=dict, metadata={"help": VLLM_OPTIONS_HELP})
    mcq_order: str = field(default="random", metadata={"help": "'random' (paper), 'cyclic' (debiased)"})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate (None: the default gym's validation-chosen rate of this loss, GYM_LR[gym_method]; "
            "paper: 8e-7 / 1e-6 on 2B-3B models)"
        },
    )
    steps: int = field(default=300, metadata={"help": "optimizer steps per round"})
    batch_size: int = field(default=16, metadata={"help": "prompts per step (paper: 128)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "paper: 0.1"})
    gradient_accumulation_steps: int = knob("gradient_accumulation_steps")
    gradient_checkpointing: bool = knob("gradient_checkpointing")
    logits_chunk: int = knob("logits_chunk")
    padding_free: bool = knob("padding_free")
    sampling_levers: dict = sampling_levers_field()
    precision: str = knob("precision")
    report_to: str = knob("report_to")
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt for gold evaluation"})
    seed: int = 0
    lora: bool = False
    quantization: str | None = None
    save_steps: int = field(default=0, metadata={"help": SAVE_STEPS_HELP})
    output_dir: str = "runs/pad"
    progress: bool = True

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha}; the calibration ratio must be in [0, 1] (PAD Eq. 9)")
        if self.n < 2:
            raise ValueError(f"n={self.n}; a preference needs at least 2 responses per prompt")
        if self.m is not None and (self.m < 2 or self.n % self.m):
            raise ValueError(f"m={self.m} must be ≥ 2 and divide n={self.n} (PAD §4.4 decomposition)")
        if self.iterations < 1 or self.steps < 1:
            raise ValueError(f"iterations={self.iterations}, steps={self.steps}; both must be ≥ 1")
        get_loss(self.loss)  # a clear error listing the registered losses
        check_ranking_loss(self.loss, self.beta, self.m or self.n)
        check_sampling_temperature(self, self.n)
        check_run_sizes(self)
        self.lr = resolve_lr(self.lr, self.gym_method)
        check_dataset_options(self)
        check_vllm_options(self)
        check_save_steps(self)
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens={self.max_prompt_tokens}; a positive number of tokens, or None to "
                "refuse prompts longer than the student's context minus max_new_tokens"
            )
        for name in ("max_new_tokens", "scoring_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; must be ≥ 1")
        check_sampling_batch_size(self.sampling_batch_size)
        self.check_training_knobs()

    def samples_a_trained_student(self) -> bool:
        """Whether a later round samples from the student trained by an earlier one."""
        return self.iterations > 1

    @property
    def gym_method(self) -> str:
        """The comparison registry's name for this objective (its ``GYM_LR`` key): pad-vpd, pad-ppd, pad-ppd+sft."""
        if self.loss == "vpd":
            return "pad-vpd"
        return "pad-ppd+sft" if self.sft_weight > 0 else "pad-ppd"


@dataclass
class ListwiseObjective:
    """Student avg-log-lik rewards of the n responses (Eq. 7) fed to a listwise loss (VPD/PPD/PRO...).

    With ``m`` set, the n responses are decomposed into n/m random groups and the loss summed (Eq. 13-14).
    ``sft_weight`` > 0 adds the length-normalised NLL of the teacher's top-ranked response, -r^stu(y^(1)) — an
    anchor *beyond the paper* (as PRO adds SFT); 0 is PAD as published.
    """

    loss: str
    beta: float
    m: int | None = None
    seed: int = 0
    sft_weight: float = 0.0
    logits_chunk: int | None = None  # None: $WORKBENCH_LOGITS_CHUNK, as student_token_logps reads it

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict:
        """What a resumed run needs to draw the decomposition groups the uninterrupted run draws."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, model, inputs):
        from workbench.losses.pad import avg_logp_reward

        teacher = inputs["teacher_rewards"]  # (B, n)
        token_logps, mask = student_token_logps(model, inputs, logits_chunk=self.logits_chunk)
        # $r^{stu}(y) = \frac{1}{|y|}\log \pi_\theta(y|x)$, reshaped (B, n)
        student = avg_logp_reward(token_logps, mask).view(teacher.shape)
        if self.m is not None and self.m < teacher.shape[1]:
            groups = decompose_groups(teacher.shape[1], self.m, generator=self.generator).to(teacher.device)
            loss = decomposed_loss(self.loss_fn, student, teacher, groups, beta=self.beta)
        else:
            loss = self.loss_fn(student, teacher, beta=self.beta)
        metrics = {"ranking_loss": loss.detach()}
        if self.sft_weight:
            # $-\frac{1}{|y^{(1)}|}\log\pi_\theta(y^{(1)}|x)$ for the teacher's best response
            best = teacher.argmax(-1, keepdim=True)
            sft = -student.gather(-1, best).mean()
            loss = loss + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics


class RoundResult(NamedTuple):
    """One PAD round: its training log (entries tagged with the round) and the samples it trained on."""

    history: list[dict]
    samples: RoundSamples


def distill_round(
    cfg: PadConfig,
    student,
    student_tok,
    teacher,
    teacher_tok,
    prompt_texts,
    round_: int,
    *,
    state=None,
    progress: bool | None = None,
    checkpoints=None,
    samples: RoundSamples | None = None,
) -> RoundResult:
    """One PAD round (Fig. 3): sample n per prompt → teacher r̂ → listwise training of the student.

    ``state`` (accelerate's ``PartialState`` under ``accelerate launch``) shards sampling and scoring over the
    processes and merges the shards, so every process trains on identical rows (:func:`sample_and_score`); the
    ``Trainer``'s distributed sampler then splits the rows' batches. ``checkpoints`` (the run's
    :func:`~workbench.methods.common.run_checkpoints`) makes the round's training resumable, in ``round<k>/``.
    ``samples``: the round's stages computed already (:func:`sample_round`, :func:`score_round`, as notebook 03
    shows them), checked against ``cfg`` and trained on as given.
    """
    progress = cfg.progress if progress is None else progress
    if samples is None:
        samples = sample_and_score(
            cfg, student, student_tok, teacher, teacher_tok, prompt_texts, round_, state=state, progress=progress
        )
    else:
        check_round_samples(cfg, samples, prompt_texts)
    rows = datasets.Dataset.from_dict(
        {
            "prompt": samples.prompts,
            "responses": samples.groups,
            "teacher_rewards": samples.rewards["calibrated"].tolist(),
        }
    )
    objective = ListwiseObjective(
        cfg.loss, cfg.beta, cfg.m, seed=cfg.seed, sft_weight=cfg.sft_weight, logits_chunk=cfg.logits_chunk
    )
    log = train_distill(
        student,
        rows,
        ListwiseCollator(student_tok),
        objective,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + round_,
        warmup_ratio=cfg.warmup_ratio,
        progress=progress,
        checkpoints=checkpoints and checkpoints.stage(f"round{round_}"),
        **cfg.training_overrides(f"round{round_}"),
    )
    return RoundResult([{**entry, "round": round_} for entry in log], samples)


def load_teacher(cfg: PadConfig, device: str | None = None):
    """(teacher, tokenizer) of a run: loaded, or served by vLLM with ``scoring_backend='vllm'``
    (``methods.common.load_frozen_teacher``)."""
    return load_frozen_teacher(
        cfg.teacher, quantization=cfg.quantization, served_by_vllm=cfg.scoring_backend == "vllm", device=device
    )


def pad_prompts(cfg: PadConfig) -> tuple[list, list]:
    """(training prompts, held-out prompts) of a run; ``run_pad`` (notebook 03) and ``workbench.train`` (the
    ``accelerate launch`` script) both use it, so they train on the same prompts.

    On a prompt set with a gold reward (the gym, ``verifiable``): ``cfg.train_prompts`` train-split prompt texts and
    ``cfg.eval_prompts`` test-split prompt objects (gold reward). On a preference dataset:
    ``methods.common.preference_splits`` (the preset's test split, else a fixed carve disjoint from the training
    rows), prompts as messages.
    """
    if has_gold(cfg):
        return (
            [p.text for p in preset_prompts(cfg.dataset, "train", cfg.train_prompts, cfg.seed + 101)],
            preset_prompts(cfg.dataset, "test", cfg.eval_prompts, HELD_OUT_SEED),
        )
    train_rows, held_rows = preference_splits(
        cfg.dataset, cfg.dataset_schema, cfg.train_prompts, cfg.eval_prompts, cfg.seed
    )
    return list(train_rows["prompt"]), list(held_rows["prompt"])


def train_run(cfg: PadConfig, *, state=None, device: str | None = None) -> TrainedRun:
    """Train only (no evaluation): ``cfg.iterations`` rounds of sample → teacher r̂ → listwise training, sampling
    and scoring sharded over ``state``'s processes (:func:`sample_and_score`); rows: each round's samples and
    teacher rewards."""
    teacher, teacher_tok = load_teacher(cfg, device=device)
    student, student_tok = cfg.load_student(device)
    prompts_text, _ = pad_prompts(cfg)
    checkpoints = run_checkpoints(cfg, state)
    history: list[dict] = []
    rows: dict[str, list[dict]] = {}
    for round_ in range(cfg.iterations):
        log, samples = distill_round(
            cfg, student, student_tok, teacher, teacher_tok, prompts_text, round_, state=state, checkpoints=checkpoints
        )
        history += log
        rows[f"round{round_}"] = round_rows(samples)
    return TrainedRun(history, student, student_tok, rows, {"prompts": len(prompts_text)})


class PadModels(NamedTuple):
    """A run's models: the frozen teacher and the student it trains, each with its tokenizer."""

    teacher: object
    teacher_tok: object
    student: object
    student_tok: object


def load_models(cfg: PadConfig, device: str | None = None) -> PadModels:
    """The teacher (frozen; served by vLLM with ``scoring_backend='vllm'``) and the student ``cfg`` names."""
    teacher, teacher_tok = load_teacher(cfg, device=device)
    student, student_tok = cfg.load_student(device)
    return PadModels(teacher, teacher_tok, student, student_tok)


def run_pad(cfg: PadConfig, *, models: PadModels | None = None, first_round: RoundSamples | None = None) -> RunResult:
    """Run PAD end to end (see module docstring) and save metrics to ``cfg.output_dir``.

    On a prompt set with a gold reward (the gym, ``verifiable``) the held-out evaluation is that reward; on a
    preference dataset (no gold reward) the gold fields are None with the reason, the student's ranking agreement
    with the teacher is still measured, and a ``judge`` model, when named, compares the trained student's answers
    with the initial student's.

    The staged path (notebook 03): ``models`` from :func:`load_models` (the student is trained in place) and
    ``first_round``, round 0's samples and teacher rewards computed stage by stage (:func:`sample_round`,
    :func:`score_round`) on ``pad_prompts(cfg)[0]``, checked against ``cfg`` and trained on as given.
    """
    set_threads()
    started = time.perf_counter()
    teacher, teacher_tok, student, student_tok = models or load_models(cfg)
    gold = has_gold(cfg)
    train, held_out = pad_prompts(cfg)
    if first_round is not None:  # refused before any evaluation or training
        check_round_samples(cfg, first_round, train)
    before = held_out_evaluation(cfg, student, student_tok, held_out, gold=gold)
    checkpoints = run_checkpoints(cfg)
    history: list[dict] = []
    rounds = []
    with metrics_kept_on_divergence(
        cfg, f"pad-{cfg.loss}", history, rounds=rounds, gold_before=before["gold"] if gold else None
    ):
        for round_ in range(cfg.iterations):
            log, samples = distill_round(
                cfg,
                student,
                student_tok,
                teacher,
                teacher_tok,
                train,
                round_,
                checkpoints=checkpoints,
                samples=first_round if round_ == 0 else None,
            )
            history += log
            entry = {"round": round_, "prompts": len(samples.prompts)}
            if gold:
                entry["train_sample_gold"] = float(
                    np.mean([gold_of(p, y) for p, g in zip(samples.prompts, samples.groups) for y in g])
                )
            rounds.append(entry)
    after = held_out_evaluation(cfg, student, student_tok, held_out, gold=gold)
    if gold:
        evaluation = {
            "gold_before": before["gold"],
            "gold_after": after["gold"],
            "win_rate_vs_initial": win_rate(after["per_prompt"], before["per_prompt"]),
            "length_before": before["length"],
            "length_after": after["length"],
        }
        held_samples = after["samples"]
    else:
        evaluation = no_gold_evaluation(cfg, held_out, before, after)
        held_samples = sample_responses(
            student,
            student_tok,
            held_out,
            n=cfg.eval_samples,
            seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens,
            progress=False,
        )
    metrics = {
        "method": f"pad-{cfg.loss}",
        "dataset": cfg.dataset,
        "config": asdict(cfg),
        **evaluation,
        "ranking": ranking_agreement(
            student,
            student_tok,
            teacher,
            teacher_tok,
            held_samples,
            alpha=cfg.alpha,
            mcq_order=cfg.mcq_order,
            seed=cfg.seed,
            gold=gold,
            backend=cfg.scoring_backend,
            engine_options=vllm_engine_options(cfg),
        ),
        "rounds": rounds,
        "training": training_summary(history),
        "seconds": time.perf_counter() - started,
    }
    release_run_engines(cfg, student, teacher)
    result = RunResult(metrics, history, student, student_tok)
    result.save(cfg.output_dir)
    return result


def release_run_engines(cfg: PadConfig, student, teacher) -> None:
    """Shut down the vLLM engines a run started (each holds its share of the GPU, or of the RAM on a CPU): the
    student's of every round and the teacher's."""
    sources = []
    if cfg.sampling_backend == "vllm":
        sources += [student, *(str(vllm_student_folder(cfg, r)) for r in range(1, cfg.iterations))]
    if cfg.scoring_backend == "vllm":
        sources.append(teacher)
    if sources:
        release_vllm_engines(*sources)
