"""The baselines of the three papers on the same pipeline as PAD and PLaD: same distillation prompts, same cached
student / teacher samples, same teacher annotations, same gold evaluation.

* ``kd``: token forward KL (Hinton et al. 2015) on the gold answers (``kd_targets="teacher"``: teacher samples);
  ``DistillTrainer`` + ``LOSSES["kd"]``.
* ``seqkd``: NLL (Kim & Rush 2016) on one teacher sample per prompt at T = 0.7 — the very ŷ+ of PLaD's pairs;
  ``train_sft``.
* ``reverse-kl``: token reverse KL (MiniLLM's single-step term) on the student's own samples (PAD's n = 4, T = 0.8);
  ``DistillTrainer`` + ``LOSSES["reverse_kl"]``.
* ``dpo``: DPO (Rafailov et al. 2023) on the max/min teacher-scored student samples (PAD App. B.3); TRL
  ``DPOTrainer`` (``backend="workbench"``: ``DistillTrainer`` + ``LOSSES["dpo"]``, tested to agree).
* ``simpo``: SimPO (Meng et al. 2024) on the same pairs; TRL ``CPOTrainer(loss_type="simpo", cpo_alpha=0)`` (or ours).
* ``pro``: PRO + SFT (Song et al. 2024) on the n samples ranked by the teacher; ``DistillTrainer`` + ``LOSSES["pro"]``.

Simplifications, stated plainly:

* **reverse-kl is not MiniLLM.** Only the single-step per-token reverse KL on the student's samples is trained
  (see ``workbench.losses.baselines.reverse_kl_loss``): no policy-gradient long-term term, no teacher-mixed sampling,
  no pre-training loss, and the samples are drawn from the initial student once per round (``iterations`` rounds
  re-sample from the updated student; default 1), not on-policy at every step.
* **kd / seqkd / reverse-kl use our trainer, not TRL's ``GKDTrainer``**: GKD generates on the fly at every step
  (on-policy or teacher-generated), a different, online regime; ours are the offline recipes of PAD App. B.3 and
  PLaD §5.1, and they reuse the cached samples the preference methods see, so the comparison is controlled.
* The teacher annotation for dpo / simpo / pro defaults to PAD's calibrated reward r̂ (α = 0.8), the very signal
  PAD trains on, so preference methods differ only in the loss. PAD App. B.3 feeds its baselines the MCQ
  selection probability alone (``score="mcq"``); on the v1 gym that signal was near chance on the student's samples
  (measured: Kendall τ with gold ≈ 0.0, max/min pairs agree with gold 48 % of the time, against 69 % for r̂ and 75 %
  for the teacher's likelihood); on today's default gym the MCQ ranks better than the likelihood (README), so
  ``score="mcq"`` is a fair choice there too.
* ``dataset``: the gym or another prompt set with a gold reward (``"verifiable"``, real English: real models, e.g.
  SmolLM2, and ``max_new_tokens`` ≈ 128); ``kd`` there trains on teacher samples (``kd_targets="teacher"``), since
  verifiable's ``answer_text`` is a witness built by program, not an answer to distil (``gold`` is refused).
* Gym defaults: full fine-tuning, 300 steps of 16 (prompts, pairs or sequences) — the same budget as PAD's gym
  run — at each method's validation-chosen rate (``lr=None``: ``workbench.methods.GYM_LR``), the rate the
  comparison harness uses too.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import ClassVar

import datasets
import numpy as np
import torch

from workbench.evaluate import evaluate_policy
from workbench.logprobs import student_token_logps
from workbench.losses import get_loss
from workbench.losses.baselines import DPO_BETA, SIMPO_BETA, SIMPO_GAMMA_BETA_RATIO
from workbench.losses.pad import avg_logp_reward
from workbench.methods import FAMILIES
from workbench.methods.checks import check_run_sizes, check_sampling_temperature
from workbench.methods.common import (
    DEFAULT_LENGTH_EDGES,
    HELD_OUT_SEED,
    RunResult,
    distillation_prompts,
    finish_run,
    gold_of,
    gold_reward_of,
    has_gold,
    metrics_kept_on_divergence,
    preset_prompts,
    teacher_samples,
)
from workbench.methods.config import StudentPrecision, check_dataset_options, knob, resolve_lr
from workbench.models import quiet_checkpointing_renames
from workbench.sampling import group_responses, sample_responses
from workbench.scoring import sequence_logps
from workbench.trainers import (
    ListwiseCollator,
    PairCollator,
    ResponseCollator,
    prepare_trainer,
    set_threads,
    train_distill,
    train_sft,
)

logger = logging.getLogger("workbench.baselines")

BASELINES = ("kd", "seqkd", "reverse-kl", "dpo", "simpo", "pro")
ON_STUDENT_SAMPLES = ("reverse-kl", "dpo", "simpo", "pro")
DEFAULT_BETA = {"dpo": DPO_BETA, "simpo": SIMPO_BETA}


@dataclass
class BaselineConfig(StudentPrecision):
    """Parameters of a baseline run; defaults share PAD's gym budget and samples (see module docstring)."""

    memory_shape: ClassVar[str] = FAMILIES["baselines"].memory_shape  # workbench.memory.MEMORY_SHAPES

    method: str = field(default="seqkd", metadata={"help": f"one of {BASELINES}"})
    teacher: str = field(default="gym-teacher-dpo", metadata={"help": "teacher id/path/preset"})
    student: str = field(default="gym-student", metadata={"help": "student id/path/preset"})
    dataset: str = field(
        default="gym",
        metadata={
            "help": "a prompt set with a gold reward (workbench.data.PROMPT_PRESETS): 'gym', or 'verifiable' (real "
            "English, docs/verifiable.md) with real models"
        },
    )
    train_prompts: int = field(default=1024, metadata={"help": "distillation prompts (same set as PAD / PLaD)"})
    data_fraction: float = field(default=1.0, metadata={"help": "fraction of the prompts used (PLaD Fig. 4)"})
    eval_prompts: int = 128
    eval_samples: int = 4
    n: int = field(default=4, metadata={"help": "student samples per prompt (PAD §4.1 / App. B.3: 4)"})
    temperature: float = field(default=0.8, metadata={"help": "student sampling temperature (PAD §4.1: 0.8)"})
    teacher_temperature: float = field(
        default=0.7,
        metadata={"help": "temperature of SeqKD's teacher samples (PLaD's τ = 0.7, so SeqKD sees PLaD's ŷ+)"},
    )
    score: str = field(
        default="calibrated",
        metadata={
            "help": "teacher annotation: 'calibrated' (PAD's r̂, Eq. 9), 'mcq' (log p_sel alone, PAD App. B.3 "
            "literally) or 'likelihood'"
        },
    )
    alpha: float = field(default=0.8, metadata={"help": "calibration ratio for score='calibrated' (PAD Eq. 9)"})
    mcq_order: str = field(default="random", metadata={"help": "'random' (PAD) or 'cyclic'"})
    kd_targets: str = field(default="gold", metadata={"help": "KD sequences: 'gold' answers or 'teacher' samples"})
    kd_temperature: float = field(default=1.0, metadata={"help": "KD softmax temperature (Hinton et al.)"})
    beta: float | None = field(default=None, metadata={"help": "DPO β (default 0.1) / SimPO β (default 2.0)"})
    simpo_gamma_beta_ratio: float = field(default=SIMPO_GAMMA_BETA_RATIO, metadata={"help": "SimPO γ/β (0.5)"})
    pro_dynamic_temperature: bool = field(
        default=True, metadata={"help": "PRO's temperature from teacher-score gaps (released code) instead of T = 1"}
    )
    pro_sft_weight: float | None = field(default=None, metadata={"help": "PRO SFT weight (default 0.05 (n-1)^2)"})
    backend: str = field(default="trl", metadata={"help": "dpo/simpo trainer: 'trl' (DPO/CPOTrainer) or 'workbench'"})
    iterations: int = field(default=1, metadata={"help": "rounds of re-sampling the student (student-sample methods)"})
    max_new_tokens: int = field(
        default=24, metadata={"help": "longest sampled response in tokens (gym: 24; verifiable: 128)"}
    )
    lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate (None: the method's validation-chosen rate on the default gym, GYM_LR[method])"
        },
    )
    steps: int = field(default=300, metadata={"help": "optimizer steps per round"})
    batch_size: int = field(default=16, metadata={"help": "prompts / pairs / sequences per step"})
    warmup_ratio: float = 0.1
    length_edges: tuple[float, ...] = DEFAULT_LENGTH_EDGES
    seed: int = 0
    lora: bool = False
    quantization: str | None = None
    precision: str = knob("precision")
    output_dir: str = "runs/baseline"
    progress: bool = True

    def __post_init__(self):
        if self.method not in BASELINES:
            raise ValueError(f"method={self.method!r}; baselines are {BASELINES}")
        if self.score not in ("mcq", "calibrated", "likelihood"):
            raise ValueError(f"score={self.score!r}; use 'mcq', 'calibrated' or 'likelihood'")
        if self.kd_targets not in ("gold", "teacher"):
            raise ValueError(f"kd_targets={self.kd_targets!r}; use 'gold' or 'teacher'")
        if self.backend not in ("trl", "workbench"):
            raise ValueError(f"backend={self.backend!r}; use 'trl' or 'workbench'")
        if not has_gold(self):
            raise ValueError(
                f"dataset={self.dataset!r}: the baselines run on a prompt set with a gold reward "
                f"(workbench.data.PROMPT_PRESETS: 'gym', 'verifiable'); a preference dataset has none to evaluate them"
            )
        check_dataset_options(self)
        if self.method == "kd" and self.kd_targets == "gold" and self.dataset != "gym":
            raise ValueError(
                f"kd_targets='gold' on dataset={self.dataset!r}: its answer_text is a witness built by program "
                f"(docs/verifiable.md), not an answer to distil; use kd_targets='teacher'"
            )
        if self.n < 2 and self.method in ("dpo", "simpo", "pro"):
            raise ValueError(f"n={self.n}; a teacher-annotated pair or ranking needs n ≥ 2 student samples")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction={self.data_fraction}; must be in (0, 1] (PLaD Fig. 4)")
        if self.iterations < 1 or self.steps < 1:
            raise ValueError(f"iterations={self.iterations}, steps={self.steps}; both must be ≥ 1")
        check_run_sizes(self)
        if self.method in ("dpo", "simpo", "pro"):  # they rank the n student samples
            check_sampling_temperature(self, self.n)
        self.length_edges = tuple(float(e) for e in self.length_edges)
        self.lr = resolve_lr(self.lr, self.method)
        self.check_precision()
        if self.beta is None and self.method in DEFAULT_BETA:
            self.beta = DEFAULT_BETA[self.method]


# --- batches and objectives ---


# logit losses need the response mask, not LM labels
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "response_mask")


@dataclass
class TeacherLogitObjective:
    """A token-level divergence between the teacher's and the student's next-token distributions on the batch's
    responses: ``kd`` (forward KL, Hinton et al. 2015) or ``reverse_kl`` (MiniLLM's single-step term)."""

    teacher: object
    loss: str = "kd"
    temperature: float = 1.0

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)
        self.teacher.eval()

    def __call__(self, model, inputs):
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        student_logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # (B, L-1, V)
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_ids=ids.to(self.teacher.device), attention_mask=attention.to(self.teacher.device)
            ).logits[:, :-1]
        teacher_logits = teacher_logits.to(student_logits.device)
        mask = inputs["response_mask"][:, 1:]  # position t scores token t+1
        kwargs = {"temperature": self.temperature} if self.loss == "kd" else {}
        # KD: $\frac{T^2}{|y|}\sum_t KL(p_T \| q_T)$; reverse KL: $\frac{1}{|\hat y|}\sum_t KL(q_\theta \| p)$
        loss = self.loss_fn(teacher_logits, student_logits, mask, **kwargs)
        return loss, {f"{self.loss}_loss": loss.detach()}


@dataclass
class PairPreferenceObjective:
    """DPO (summed log-likelihoods against a frozen reference) or SimPO (per-token means, no reference) on
    (chosen, rejected) pairs — our trainer's path, the TRL trainers' twin (``backend="workbench"``)."""

    loss: str = "dpo"
    beta: float = DPO_BETA
    gamma_beta_ratio: float = SIMPO_GAMMA_BETA_RATIO

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)

    def __call__(self, model, inputs):
        token_logps, mask = student_token_logps(model, inputs)  # (2B, L-1)
        if self.loss == "dpo":
            # $\log\pi_\theta(y|x) = \sum_t \log\pi_\theta(y_t|y_{<t},x)$
            chosen, rejected = (token_logps * mask).sum(-1).chunk(2)
            loss, chosen_rewards, rejected_rewards = self.loss_fn(
                chosen, rejected, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"], beta=self.beta
            )
        else:
            # $\frac{1}{|y|}\log\pi_\theta(y|x)$
            chosen, rejected = avg_logp_reward(token_logps, mask).chunk(2)
            loss, chosen_rewards, rejected_rewards = self.loss_fn(
                chosen, rejected, beta=self.beta, gamma_beta_ratio=self.gamma_beta_ratio
            )
        return loss, {
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        }


@dataclass
class ProObjective:
    """PRO on the teacher's ranking of the n student samples: rewards are the student's per-token mean
    log-likelihoods sorted best-first; the SFT term is the token-summed NLL of the best response (PRO code)."""

    dynamic_temperature: bool = True
    sft_weight: float | None = None

    def __post_init__(self):
        self.loss_fn = get_loss("pro")

    def __call__(self, model, inputs):
        scores = inputs["teacher_rewards"]  # (B, n), sorted best-first by the collator's rows
        token_logps, mask = student_token_logps(model, inputs)
        # $r_i = \frac{1}{|y_i|}\log\pi_\theta(y_i|x)$, (B, n) best-first
        rewards = avg_logp_reward(token_logps, mask).view(scores.shape)
        # $\mathcal{L}_{SFT} = -\log\pi_\theta(y_1|x)$ (token sum) of the best response
        nll_best = -(token_logps * mask).sum(-1).view(scores.shape)[:, 0]
        loss = self.loss_fn(
            rewards,
            rank_scores=scores if self.dynamic_temperature else None,
            sft_term=nll_best,
            sft_weight=self.sft_weight,
        )
        return loss, {"sft_nll": nll_best.mean().detach()}


# --- data: teacher annotation of student samples (PAD App. B.3) ---


def student_groups(student, tokenizer, prompts, cfg, round_: int = 0) -> tuple[list, list[list[str]]]:
    """n student samples per prompt, drawn exactly as PAD draws them (same seeds, so the cache is shared)."""
    samples = sample_responses(
        student,
        tokenizer,
        [p.text for p in prompts],
        n=cfg.n,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed * 1000 + round_,
        progress=cfg.progress,
    )
    return group_responses(samples)


def teacher_scores(teacher, tokenizer, chat_prompts, groups, cfg, round_: int = 0) -> torch.Tensor:
    """The teacher's annotation of each sample, (P, n): MCQ log p_sel, calibrated r̂ or avg log-lik (PAD Eq. 7-9)."""
    from workbench.rewards import teacher_rewards

    signals = teacher_rewards(
        teacher, tokenizer, chat_prompts, groups, alpha=cfg.alpha, order=cfg.mcq_order, seed=cfg.seed + round_
    )
    return signals[{"mcq": "log_p_sel", "calibrated": "calibrated", "likelihood": "likelihood"}[cfg.score]]


def annotated_pairs(chat_prompts, groups, scores: torch.Tensor) -> tuple[list[dict], dict]:
    """Teacher-as-annotator pairs (PAD App. B.3): chosen = argmax, rejected = argmin of the teacher's score.

    Groups whose best and worst have equal scores or equal text are skipped (counted). ``gold_accuracy`` is the
    fraction of kept pairs whose chosen answer also has the higher gold reward (ties count ½).
    """
    rows, ties, identical, agree = [], 0, 0, []
    for prompt, group, row in zip(chat_prompts, groups, scores.tolist()):
        best, worst = int(np.argmax(row)), int(np.argmin(row))
        if row[best] == row[worst]:
            ties += 1
            continue
        if group[best].strip() == group[worst].strip() or not group[best].strip() or not group[worst].strip():
            identical += 1
            continue
        rows.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst]})
        gold_best, gold_worst = gold_of(prompt, group[best]), gold_of(prompt, group[worst])
        agree.append(1.0 if gold_best > gold_worst else 0.5 if gold_best == gold_worst else 0.0)
    return rows, {
        "pairs": len(rows),
        "skipped_ties": ties,
        "skipped_identical_or_empty": identical,
        "gold_accuracy": float(np.mean(agree)) if agree else float("nan"),
    }


def ranked_lists(chat_prompts, groups, scores: torch.Tensor, score: str) -> list[dict]:
    """Rows for PRO: the n samples sorted best-first by the teacher, with their (sorted) scores as the dynamic
    temperature's ``rank_scores`` — selection probabilities p_sel for ``score="mcq"`` (PAD App. B.3)."""
    values = scores.exp() if score == "mcq" else scores
    rows = []
    for prompt, group, row in zip(chat_prompts, groups, values.tolist()):
        order = sorted(range(len(group)), key=lambda i: -row[i])
        rows.append(
            {"prompt": prompt, "responses": [group[i] for i in order], "teacher_rewards": [row[i] for i in order]}
        )
    return rows


def _check_shared_vocabulary(teacher_tok, student_tok, method: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ValueError(
            f"{method} compares next-token distributions, so teacher and student must share a "
            f"vocabulary; these tokenizers differ (use seqkd, dpo, simpo, pro or PLaD instead)"
        )


# --- trainers ---


def _trl_common(cfg, output_dir: str) -> dict:
    """TRL ``DPOConfig`` / ``CPOConfig`` arguments of a baseline run. TRL's configs default to bfloat16 autocast and
    activation checkpointing (trl 1.x); a baseline trains in its ``precision`` knob's mode (float32 on a CPU) and
    without checkpointing, as the workbench backend and every method do, unless ``$WORKBENCH_TRAINING_ARGS`` asks."""
    from workbench.trainers import checkpointing_argument, env_training_overrides

    args = dict(
        output_dir=output_dir,
        learning_rate=cfg.lr,
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=max(0, round(cfg.warmup_ratio * cfg.steps)),
        logging_steps=max(1, min(10, cfg.steps // 4)),
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=not cfg.progress,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.autocasts(),
        fp16=False,
        **{checkpointing_argument(): False},
    )
    args.update(env_training_overrides())
    return args


def _conversational(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in rows],
            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
        }
    )


def train_trl_pairs(student, tokenizer, rows: list[dict], cfg) -> list[dict]:
    """DPO with TRL ``DPOTrainer`` (reference = a frozen copy of the student before training) or SimPO with TRL
    ``CPOTrainer(loss_type="simpo", cpo_alpha=0)`` (pure SimPO; TRL's ``simpo_gamma`` is the absolute γ)."""
    output_dir = tempfile.mkdtemp(prefix="workbench-trl-")
    try:
        if cfg.method == "dpo":
            from trl import DPOConfig, DPOTrainer

            is_peft = hasattr(student, "peft_config")
            reference = None if is_peft else copy.deepcopy(student).eval()  # peft: adapters off = reference
            args = DPOConfig(beta=cfg.beta, loss_type=["sigmoid"], **_trl_common(cfg, output_dir))
            trainer = DPOTrainer(
                model=student,
                ref_model=reference,
                args=args,
                train_dataset=_conversational(rows),
                processing_class=tokenizer,
            )
        else:
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            # its pair collator reads the raw columns: say so (TRL otherwise sets it and logs a warning per run)
            args = CPOConfig(
                beta=cfg.beta,
                loss_type="simpo",
                cpo_alpha=0.0,
                remove_unused_columns=False,
                simpo_gamma=cfg.beta * cfg.simpo_gamma_beta_ratio,
                **_trl_common(cfg, output_dir),
            )
            trainer = CPOTrainer(
                model=student, args=args, train_dataset=_conversational(rows), processing_class=tokenizer
            )
        with quiet_checkpointing_renames():  # DPOTrainer asks the model is_gradient_checkpointing every step
            prepare_trainer(trainer, cfg.progress).train()
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    student.eval()
    return trainer.state.log_history


def train_workbench_pairs(student, tokenizer, rows: list[dict], cfg) -> list[dict]:
    """DPO / SimPO through ``DistillTrainer`` and the registry losses (the TRL path's twin)."""
    float_columns: tuple[str, ...] = ()
    if cfg.method == "dpo":
        prompts = [r["prompt"] for r in rows]
        # $\log\pi_{ref}(y|x)$ of the student before this round (constants, cached)
        ref_chosen = sequence_logps(student, tokenizer, prompts, [r["chosen"] for r in rows])
        ref_rejected = sequence_logps(student, tokenizer, prompts, [r["rejected"] for r in rows])
        rows = [
            {**r, "ref_chosen_logps": float(c), "ref_rejected_logps": float(j)}
            for r, c, j in zip(rows, ref_chosen, ref_rejected)
        ]
        float_columns = ("ref_chosen_logps", "ref_rejected_logps")
    objective = PairPreferenceObjective(cfg.method, cfg.beta, cfg.simpo_gamma_beta_ratio)
    return train_distill(
        student,
        datasets.Dataset.from_list(rows),
        PairCollator(tokenizer, float_columns=float_columns),
        objective,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        warmup_ratio=cfg.warmup_ratio,
        **cfg.autocast_overrides(),
    )


def _train_round(cfg, teacher, teacher_tok, student, student_tok, prompts, round_: int) -> tuple[list[dict], dict]:
    """One round of a baseline's training on its data; returns (log history, data statistics)."""
    chat = [[{"role": "user", "content": p.text}] for p in prompts]
    common = dict(
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + round_,
        progress=cfg.progress,
        warmup_ratio=cfg.warmup_ratio,
        **cfg.autocast_overrides(),
    )
    if cfg.method in ("kd", "seqkd"):
        if cfg.method == "kd" and cfg.kd_targets == "gold":
            responses = [p.answer_text for p in prompts]
        else:
            responses = teacher_samples(
                teacher,
                teacher_tok,
                prompts,
                temperature=cfg.teacher_temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
                progress=cfg.progress,
            )
        rows = [{"prompt": c, "response": y} for c, y in zip(chat, responses) if y.strip()]
        stats = {
            "sequences": len(rows),
            "skipped_empty": len(chat) - len(rows),
            "target_gold": float(np.mean([gold_of(r["prompt"], r["response"]) for r in rows])),
        }
        if cfg.method == "seqkd":
            # $-\frac{1}{|y^T|}\log q_\theta(y^T|x)$ on the teacher's samples (Kim & Rush 2016)
            return train_sft(student, student_tok, datasets.Dataset.from_list(rows), **common), stats
        objective = TeacherLogitObjective(teacher, "kd", cfg.kd_temperature)
        collator = ResponseCollator(student_tok, fields=SEQUENCE_FIELDS)
        return train_distill(student, datasets.Dataset.from_list(rows), collator, objective, **common), stats
    chat, groups = student_groups(student, student_tok, prompts, cfg, round_)
    if cfg.method == "reverse-kl":
        rows = [{"prompt": c, "response": y} for c, g in zip(chat, groups) for y in g if y.strip()]
        stats = {
            "sequences": len(rows),
            "sample_gold": float(np.mean([gold_of(r["prompt"], r["response"]) for r in rows])),
        }
        objective = TeacherLogitObjective(teacher, "reverse_kl")
        collator = ResponseCollator(student_tok, fields=SEQUENCE_FIELDS)
        return train_distill(student, datasets.Dataset.from_list(rows), collator, objective, **common), stats
    scores = teacher_scores(teacher, teacher_tok, chat, groups, cfg, round_)
    if cfg.method == "pro":
        rows = ranked_lists(chat, groups, scores, cfg.score)
        objective = ProObjective(cfg.pro_dynamic_temperature, cfg.pro_sft_weight)
        return train_distill(
            student, datasets.Dataset.from_list(rows), ListwiseCollator(student_tok), objective, **common
        ), {"lists": len(rows)}
    rows, stats = annotated_pairs(chat, groups, scores)
    if not rows:
        raise RuntimeError(f"no teacher-annotated pairs ({stats}); raise train_prompts or n")
    train = train_trl_pairs if cfg.backend == "trl" else train_workbench_pairs
    return train(student, student_tok, rows, cfg), stats


def run_baseline(cfg: BaselineConfig) -> RunResult:
    """Train and evaluate one baseline (module docstring) and save metrics to ``cfg.output_dir``."""
    from workbench.models import load

    set_threads()
    started = time.perf_counter()
    teacher, teacher_tok = load(cfg.teacher, quantization=cfg.quantization)
    student, student_tok = cfg.load_student()
    if cfg.method in ("kd", "reverse-kl"):
        _check_shared_vocabulary(teacher_tok, student_tok, cfg.method)
    prompts = distillation_prompts(cfg)
    held_out = preset_prompts(cfg.dataset, "test", cfg.eval_prompts, HELD_OUT_SEED)
    before = evaluate_policy(
        student,
        student_tok,
        held_out,
        n=cfg.eval_samples,
        seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens,
        gold_reward=gold_reward_of(cfg),
    )
    rounds = cfg.iterations if cfg.method in ON_STUDENT_SAMPLES else 1
    history, data = [], []
    with metrics_kept_on_divergence(cfg, cfg.method, history, data=data, gold_before=before["gold"]):
        for round_ in range(rounds):
            log, stats = _train_round(cfg, teacher, teacher_tok, student, student_tok, prompts, round_)
            history += [{**entry, "round": round_} for entry in log]
            data.append({"round": round_, **stats})
    return finish_run(cfg, student, student_tok, held_out, before, history, started, data=data)
