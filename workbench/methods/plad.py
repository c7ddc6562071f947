"""PLaD pipeline (Preference-based LLM Distillation with pseudo-preference pairs, Zhang et al. 2024):
teacher sample ≻ student sample (§4.2, Eq. 3) → calibration loss on the student's own likelihoods (Eq. 4 / Eq. 5)
→ gold evaluation, with the paper's three experiments as parameters (real-pair ratio, Fig. 2; length buckets,
Fig. 3; data fraction, Fig. 4).

Everything it uses is shared: :func:`workbench.sampling.sample_responses` (the teacher is used as a black box:
only its samples), :func:`workbench.losses.plad.make_pseudo_pairs`, the loss registry and ``DistillTrainer``.
``run_plad(PladConfig(...))`` is what notebook 07 and the comparison harness call.

**Other prompt sets with a gold reward** (``dataset="verifiable"``, real English: ``docs/verifiable.md``): as on the
gym, scored by that set's gold reward (real pairs, T-S win rate, length buckets included). The reference y of Eq. 5
(``plad_margin``) is the prompt's ``answer_text``: on ``verifiable`` a short answer built by program that meets every
constraint (a witness, not fluent text), the only reference that set has; the ranking loss (Eq. 4) never reads it.

**Preference datasets** (``dataset`` = a ``workbench.data`` preset such as ``hh-helpful``, a hub id, or a local
file read in ``dataset_schema``): D is the dataset's prompts (the pairs' responses are not trained on; the chosen
response is the reference y of Eq. 5), pseudo-pairs are teacher sample ≻ student sample as on the gym. There is no
gold reward: no gold evaluation, length buckets, T-S win rate or real pairs (``real_ratio`` must be 0); the run
reports training metrics and, when ``judge`` names a judge model, its win rate of the trained over the initial
student on held-out prompts (:func:`workbench.methods.common.no_gold_evaluation`).

Gym defaults (documented departures from the paper, each a parameter):

* **full fine-tuning** (``lora=False``). The paper trains LoRA (r = 8, α = 32, dropout 0.1) for efficiency on 7B
  models; the gym student has a 48-dim hidden state, so an r = 8 adapter is not a meaningful saving, and full
  fine-tuning keeps PLaD on the same footing as every other method in the comparison. ``lora=True`` uses the
  paper's adapter.
* **learning rate 1e-3** (paper: 1e-4 with LoRA on 7B models), linear schedule as in the paper, no warm-up. On the
  v1 gym's validation split the published loss only lowered the gold reward, least at 1e-4; on today's default gym it
  improves it, best at 1e-4 (the rate the comparison harness uses, ``workbench.compare.GYM_LR``; with
  ``sft_weight = 1`` also 1e-4).
* ``sft_weight`` (default 0 = as published) adds SLiC's cross-entropy regulariser on ŷ+, beyond PLaD.
* **length-normalised log-likelihood** in Eq. 4 (``length_normalize=True``; ``papers/plad.md`` ambiguity 1).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import datasets
import numpy as np
import torch

from workbench.backends.vllm import release_vllm_engines
from workbench.distributed import map_in_shards
from workbench.encoding import as_messages
from workbench.logprobs import chunked_logps_at, gather_token_logps, logits_chunk_setting, student_token_logps
from workbench.losses import get_loss
from workbench.losses.pad import avg_logp_reward
from workbench.losses.plad import PLAD_BETA, PLAD_SAMPLING_TEMPERATURE, calibration_score, make_pseudo_pairs
from workbench.methods import FAMILIES
from workbench.methods.checks import check_run_sizes
from workbench.methods.common import (
    DEFAULT_LENGTH_EDGES,
    RunResult,
    TrainedRun,
    distillation_prompts,
    finish_run,
    gold_of,
    has_gold,
    held_out_evaluation,
    held_out_prompts,
    load_frozen_teacher,
    metrics_kept_on_divergence,
    no_gold_evaluation,
    run_checkpoints,
    teacher_samples,
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
    hf_levers,
    judge_field,
    knob,
    resolve_lr,
    sampling_batch_size_field,
    sampling_levers_field,
    vllm_engine_options,
)
from workbench.sampling import sample_responses
from workbench.topk_cache import release_memory
from workbench.trainers import PairCollator, set_threads, train_distill

logger = logging.getLogger("workbench.plad")


@dataclass
class PladConfig(TrainingKnobs):
    """Parameters of a PLaD run; defaults run the gym on CPU in well under a minute, paper values in ``help``."""

    memory_shape: ClassVar[str] = FAMILIES["plad"].memory_shape  # workbench.memory.MEMORY_SHAPES

    teacher: str = field(default="gym-teacher-dpo", metadata={"help": "teacher id/path/preset (used black-box)"})
    student: str = field(default="gym-student", metadata={"help": "student id/path/preset"})
    dataset: str = dataset_field(
        "its prompts form D (e.g. 'hh-helpful': §5.1); on the gym, gold references and gold evaluation"
    )
    dataset_schema: str = dataset_schema_field()
    judge: str = judge_field("training metrics only")
    train_prompts: int = field(default=1024, metadata={"help": "size of the distillation set D (prompts only)"})
    data_fraction: float = field(
        default=1.0,
        metadata={
            "help": "fraction of D used (PLaD Fig. 4: 5%..100%); a seeded prefix, so smaller sets nest in larger"
        },
    )
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts for gold (or judge) evaluation"})
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt for gold evaluation"})
    loss: str = field(
        default="plad_ranking",
        metadata={"help": "'plad_ranking' (Eq. 4) or 'plad_margin' (Eq. 5); paper picks by validation"},
    )
    beta: float = field(default=PLAD_BETA, metadata={"help": "hinge margin β (PLaD App. A.6: 1.0)"})
    length_normalize: bool = field(
        default=True,
        metadata={
            "help": "per-token mean log-lik in Eq. 4/5 (True) or the literal sum (False); papers/plad.md ambiguity 1"
        },
    )
    score_ngram_orders: tuple[int, ...] = field(
        default=(1,),
        metadata={"help": "n-gram orders summed in the margin score s (App. A.7 Eq. 6; unstated, default F1 only)"},
    )
    temperature: float = field(
        default=PLAD_SAMPLING_TEMPERATURE,
        metadata={"help": "sampling temperature of both teacher and student (App. A.6: τ = 0.7)"},
    )
    sft_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a per-token NLL on the teacher's sample ŷ+ (SLiC's regulariser; beyond PLaD, which "
            "uses L_cal alone: 0 = as published)"
        },
    )
    real_ratio: float = field(
        default=0.0, metadata={"help": "fraction of pairs re-ordered by the gold reward (PLaD §5.3 / Fig. 2)"}
    )
    max_new_tokens: int = field(
        default=24, metadata={"help": "longest sampled response in tokens (gym: 24; verifiable: 128; real data: 512)"}
    )
    sampling_batch_size: int = sampling_batch_size_field(
        "prompts per sampling batch of teacher and student (batch b seeded seed + b; the unit a process's shard is "
        "made of)"
    )
    sampling_backend: str = field(
        default="hf",
        metadata={
            "help": "'hf' (model.generate) or 'vllm' (optional: pip install vllm; the teacher is then served by vLLM "
            "and never loaded into the training process)"
        },
    )
    vllm_gpu_memory: float = field(
        default=0.0, metadata={"help": "share of GPU memory each vLLM engine reserves (0 = vLLM's default, 0.9)"}
    )
    vllm_options: dict = field(default_factory=dict, metadata={"help": VLLM_OPTIONS_HELP})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate (None: the default gym's validation-chosen rate, GYM_LR['plad'] or "
            "['plad+sft'] with sft_weight > 0; paper: 1e-4 with LoRA on 7B students)"
        },
    )
    steps: int = field(default=300, metadata={"help": "optimizer steps (a fixed budget across data fractions)"})
    batch_size: int = field(default=8, metadata={"help": "pairs per step (paper: 8 per device)"})
    lr_scheduler: str = field(default="linear", metadata={"help": "paper: linear"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "not stated in the paper"})
    gradient_accumulation_steps: int = knob("gradient_accumulation_steps")
    gradient_checkpointing: bool = knob("gradient_checkpointing")
    logits_chunk: int = knob("logits_chunk")
    padding_free: bool = knob("padding_free")
    sampling_levers: dict = sampling_levers_field()
    precision: str = knob("precision")
    report_to: str = knob("report_to")
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (the paper's setting) instead of all"})
    lora_r: int = field(default=8, metadata={"help": "PLaD §5.1: 8"})
    lora_alpha: int = field(default=32, metadata={"help": "PLaD §5.1: 32"})
    lora_dropout: float = field(default=0.1, metadata={"help": "PLaD §5.1: 0.1"})
    length_edges: tuple[float, ...] = field(
        default=DEFAULT_LENGTH_EDGES,
        metadata={"help": "word-count bucket edges of the initial student's answers (PLaD Fig. 3)"},
    )
    seed: int = 0
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "None or '4bit' / '8bit' for the teacher (and the judge): NF4 is the QLoRA single-GPU setting"
        },
    )
    save_steps: int = field(default=0, metadata={"help": SAVE_STEPS_HELP})
    output_dir: str = "runs/plad"
    progress: bool = True

    def samples_a_trained_student(self) -> bool:
        """PLaD samples once, before training."""
        return False

    def __post_init__(self):
        if self.quantization == "":
            self.quantization = None
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization={self.quantization!r}; use None, '4bit' or '8bit'")
        check_sampling_batch_size(self.sampling_batch_size)
        if not has_gold(self) and self.real_ratio:
            raise ValueError(
                f"real_ratio={self.real_ratio} needs a reward to order pairs (PLaD Fig. 2); only the prompt sets "
                f"with a gold reward (the gym, 'verifiable') have one, dataset={self.dataset!r} does not: use "
                f"real_ratio=0"
            )
        check_run_sizes(self)
        check_dataset_options(self)
        check_vllm_options(self)
        self.check_training_knobs()
        check_save_steps(self)
        self.lr = resolve_lr(self.lr, "plad+sft" if self.sft_weight > 0 else "plad")
        if self.loss not in ("plad_ranking", "plad_margin"):
            raise ValueError(
                f"loss={self.loss!r}; PLaD's calibration losses are 'plad_ranking' (Eq. 4) and 'plad_margin' (Eq. 5)"
            )
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction={self.data_fraction}; must be in (0, 1] (PLaD Fig. 4)")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ValueError(f"real_ratio={self.real_ratio}; must be in [0, 1] (PLaD Fig. 2)")
        if self.beta < 0 or self.temperature <= 0 or self.steps < 1:
            raise ValueError(
                f"beta={self.beta} must be ≥ 0, temperature={self.temperature} > 0, steps={self.steps} ≥ 1"
            )
        self.score_ngram_orders = tuple(int(n) for n in self.score_ngram_orders)
        self.length_edges = tuple(float(e) for e in self.length_edges)
        if list(self.length_edges) != sorted(self.length_edges) or len(self.length_edges) < 2:
            raise ValueError(f"length_edges={self.length_edges} must be ≥ 2 increasing edges")
        get_loss(self.loss)

    @property
    def method(self) -> str:
        name = "plad" if self.loss == "plad_ranking" else "plad-margin"
        return name + ("+sft" if self.sft_weight else "")

    def lora_config(self) -> dict | None:
        if not self.lora:
            return None
        return dict(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout)


# --- the objective ---


def response_states(hidden_states: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align each row's response-token states: (B, L, D), (B, L) -> (B, T, D), (B, T) with T the longest
    response (the representation e(ŷ, x) of PLaD App. A.7: states of the response tokens given the prompt)."""
    lengths = response_mask.sum(-1)  # (B,)
    width = int(lengths.max()) if len(lengths) else 0
    out = hidden_states.new_zeros(hidden_states.shape[0], max(width, 1), hidden_states.shape[-1])
    mask = torch.zeros(hidden_states.shape[0], max(width, 1), dtype=torch.bool, device=hidden_states.device)
    for b in range(hidden_states.shape[0]):
        states = hidden_states[b][response_mask[b]]
        out[b, : len(states)] = states
        mask[b, : len(states)] = True
    return out, mask


@dataclass
class PladObjective:
    """Student log-likelihoods of (ŷ+, ŷ−) fed to the ranking (Eq. 4) or margin (Eq. 5) calibration loss.

    ``sft_weight`` > 0 adds λ·(−(1/|ŷ+|) log P_θ(ŷ+|x)), the cross-entropy regulariser of SLiC (Zhao et al. 2023,
    where PLaD's calibration losses come from) on the teacher's sample — *beyond PLaD*, whose Alg. 1 uses L_cal
    alone; 0 is PLaD as published.
    """

    loss: str = "plad_ranking"
    beta: float = PLAD_BETA
    length_normalize: bool = True
    score_ngram_orders: tuple[int, ...] = (1,)
    sft_weight: float = 0.0
    logits_chunk: int | None = None  # the chunked head (None: $WORKBENCH_LOGITS_CHUNK, off)

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)

    def sequence_logps(self, token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # $\frac{1}{|\hat y|}\log P_\theta(\hat y|x)$ (length-normalised) or $\log P_\theta(\hat y|x)$ (Eq. 4 literal)
        if self.length_normalize:
            return avg_logp_reward(token_logps, mask)
        return (token_logps * mask).sum(-1)

    def __call__(self, model, inputs):
        margin = self.loss == "plad_margin"
        chunk = self.logits_chunk if self.logits_chunk is not None else logits_chunk_setting()
        mask = inputs["response_mask"][:, 1:]
        if margin and chunk:  # Eq. 5 also reads the student's last-layer states; the chunked head keeps no logits
            token_logps, final_states = chunked_logps_at(
                model,
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["input_ids"][:, 1:, None],
                chunk,
                output_hidden_states=True,
            )
            token_logps = token_logps[..., 0]  # (2B, L-1)
        elif margin:
            out = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True
            )
            token_logps = gather_token_logps(out.logits[:, :-1], inputs["input_ids"][:, 1:])  # (2B, L-1)
            final_states = out.hidden_states[-1]
        else:  # through the chunked head when logits_chunk is set: no (2B, L, V) logits kept for backward
            token_logps, mask = student_token_logps(model, inputs, logits_chunk=chunk)  # (2B, L-1)
        logps = self.sequence_logps(token_logps, mask)  # (2B,)
        chosen_logps, rejected_logps = logps.chunk(2)  # (B,), (B,)
        if margin:
            # $s(y; \hat y; x) = \sum_n F_n(e(\hat y, x), e(y, x))$ on the student's last-layer states (App. A.7)
            states, states_mask = response_states(final_states, inputs["response_mask"])
            with torch.no_grad():
                ref = model(
                    input_ids=inputs["reference_input_ids"],
                    attention_mask=inputs["reference_attention_mask"],
                    output_hidden_states=True,
                )
            ref_states, ref_mask = response_states(ref.hidden_states[-1], inputs["reference_response_mask"])
            ref_states, ref_mask = torch.cat([ref_states, ref_states]), torch.cat([ref_mask, ref_mask])
            scores = calibration_score(states, ref_states, states_mask, ref_mask, ns=self.score_ngram_orders)
            chosen_scores, rejected_scores = scores.chunk(2)
            # $\max(0, \beta(s_+ - s_-) - \log P(\hat y_+|x) + \log P(\hat y_-|x))$ (Eq. 5)
            loss = self.loss_fn(chosen_logps, rejected_logps, chosen_scores, rejected_scores, beta=self.beta)
            extra = {"score_gap": (chosen_scores - rejected_scores).mean().detach()}
        else:
            # $\max(0, \beta - \log P(\hat y_+|x) + \log P(\hat y_-|x))$ (Eq. 4)
            loss = self.loss_fn(chosen_logps, rejected_logps, beta=self.beta)
            extra = {}
        gap = (chosen_logps - rejected_logps).detach()
        metrics = {
            "calibration_loss": loss.detach(),
            "logp_gap": gap.mean(),
            "hinge_active": (gap < self.beta).float().mean(),
            **extra,
        }
        if self.sft_weight:
            # $-\frac{1}{|\hat y_+|}\log P_\theta(\hat y_+|x)$ (per token, whatever ``length_normalize`` says)
            sft = -avg_logp_reward(token_logps[: len(chosen_logps)], mask[: len(chosen_logps)]).mean()
            loss = loss + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics


# --- data ---


def gold_ranked_pair(prompt, teacher_response: str, student_response: str) -> dict:
    """The (teacher, student) pair ordered by gold reward — PLaD §5.3's 'real' pair, with the prompt set's gold reward
    (:func:`~workbench.methods.common.gold_of`) standing in for the reward model. A gold tie keeps the pseudo order
    (the reward states no preference), so every pair has a real version and ``real_ratio = 1`` is always possible."""
    if gold_of(prompt, student_response) > gold_of(prompt, teacher_response):
        return {"prompt": prompt, "chosen": student_response, "rejected": teacher_response}
    return {"prompt": prompt, "chosen": teacher_response, "rejected": student_response}


def pseudo_pair_rows(teacher, teacher_tok, student, student_tok, prompts, cfg, state=None) -> tuple[list[dict], dict]:
    """Pseudo-preference rows (teacher ≻ student, Eq. 3) with ``real_ratio`` gold-ordered (Fig. 2), and stats
    (gold statistics on a prompt set with a gold reward only; on other data only counts and sample lengths).

    With several processes (``state``: accelerate's ``PartialState``) each samples teacher and student on its shard
    of whole sampling batches (each batch keeps its single-process seed) and the samples are merged in prompt order,
    so every process builds the rows one process builds."""
    texts = [p.text for p in prompts]
    chat = [as_messages(t) for t in texts]
    backend = {
        "backend": cfg.sampling_backend,
        "engine_options": vllm_engine_options(cfg),
        "hf_levers": hf_levers(cfg),
    }

    def sample_pair(shard, first_batch):
        y_t = teacher_samples(
            teacher,
            teacher_tok,
            shard,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            progress=cfg.progress,
            batch_size=cfg.sampling_batch_size,
            first_batch=first_batch,
            **backend,
        )
        # vLLM samples the student from its folder: before training, the loaded weights
        y_s = sample_responses(
            student,
            student_tok,
            [p.text for p in shard],
            n=1,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.sampling_batch_size,
            seed=cfg.seed * 1000 + 8 + first_batch,
            progress=cfg.progress,
            **backend,
        )["response"]
        return list(zip(y_t, y_s))

    samples = map_in_shards(sample_pair, prompts, cfg.sampling_batch_size, state)
    y_teacher, y_student = [t for t, _ in samples], [s for _, s in samples]
    if cfg.sampling_backend == "vllm":  # PLaD samples once: the engines' GPU memory goes back before training
        release_vllm_engines(teacher, student)
    gold = has_gold(cfg)
    real = [gold_ranked_pair(c, t, s) for c, t, s in zip(chat, y_teacher, y_student)] if gold else None
    rows, counts = make_pseudo_pairs(
        chat, y_teacher, y_student, real_pairs=real, real_ratio=cfg.real_ratio, seed=cfg.seed
    )
    answers = {json.dumps(c, sort_keys=True): p.answer_text for c, p in zip(chat, prompts)}
    for row in rows:
        # y for Eq. 5 (ambiguity 3): the prompt set's answer (the gym's gold answer, verifiable's witness), or the
        # dataset's chosen response
        row["reference"] = answers[json.dumps(row["prompt"], sort_keys=True)]
    if not gold:
        return rows, {
            **counts,
            "gold_statistics": "skipped: no gold reward on this dataset",
            "teacher_sample_length": float(np.mean([len(y.split()) for y in y_teacher])),
            "student_sample_length": float(np.mean([len(y.split()) for y in y_student])),
        }
    # T-S WR (PLaD Table 1): gold win rate of the teacher's sample over the student's, ties excluded
    gold_t = np.array([gold_of(c, y) for c, y in zip(chat, y_teacher)])
    gold_s = np.array([gold_of(c, y) for c, y in zip(chat, y_student)])
    decided = gold_t != gold_s
    # how often a training pair's order agrees with gold (ties count as agreeing: the reward has no preference)
    agrees = [gold_of(r["prompt"], r["chosen"]) >= gold_of(r["prompt"], r["rejected"]) for r in rows]
    stats = {
        **counts,
        "teacher_student_win_rate": float((gold_t > gold_s)[decided].mean()) if decided.any() else float("nan"),
        "pair_order_gold_agreement": float(np.mean(agrees)) if rows else float("nan"),
        "teacher_sample_gold": float(gold_t.mean()),
        "student_sample_gold": float(gold_s.mean()),
    }
    return rows, stats


# --- the pipeline ---


def train_on_pairs(cfg: PladConfig, student, student_tok, rows: list[dict], pair_stats: dict, state=None) -> list[dict]:
    """Train the student with the calibration loss (Eq. 4 / 5) on the pseudo-pair rows; returns the training log.
    Notebook 07 (``run_plad``) and ``python -m workbench.train`` (also under ``accelerate launch``) both call it;
    with ``cfg.save_steps`` the training resumes from ``output_dir/checkpoints/train``."""
    if not rows:
        raise RuntimeError(f"no pseudo-preference pairs survived ({pair_stats}); raise train_prompts")
    checkpoints = run_checkpoints(cfg, state)
    objective = PladObjective(
        cfg.loss, cfg.beta, cfg.length_normalize, cfg.score_ngram_orders, cfg.sft_weight, cfg.logits_chunk
    )
    collator = PairCollator(student_tok, with_reference=cfg.loss == "plad_margin")
    return train_distill(
        student,
        datasets.Dataset.from_list(rows),
        collator,
        objective,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        checkpoints=checkpoints and checkpoints.stage("train"),
        **cfg.training_overrides("train"),
    )


def train_run(cfg: PladConfig, *, state=None, device: str | None = None) -> TrainedRun:
    """Train only (no evaluation): pseudo pairs from teacher and student samples (sharded over ``state``'s
    processes), the teacher released, then the calibration loss; rows: the pseudo pairs."""
    teacher, teacher_tok = load_frozen_teacher(
        cfg.teacher, quantization=cfg.quantization, served_by_vllm=cfg.sampling_backend == "vllm", device=device
    )
    student, student_tok = cfg.load_student(device)
    rows, pair_stats = pseudo_pair_rows(
        teacher, teacher_tok, student, student_tok, distillation_prompts(cfg), cfg, state=state
    )
    del teacher
    release_memory()
    history = train_on_pairs(cfg, student, student_tok, rows, pair_stats, state=state)
    return TrainedRun(history, student, student_tok, {"pairs": rows}, {"pairs": pair_stats})


def check_given_pairs(cfg: PladConfig, pairs) -> None:
    """Refuse pseudo pairs computed beforehand that cannot be a run's: not (rows, stats), no rows, a row without
    the fields the losses read, or a pair with no preference (identical answers)."""
    if not (isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[1], dict)):
        raise ValueError("pairs=(rows, stats), as pseudo_pair_rows(...) returns them")
    rows = pairs[0]
    if not rows:
        raise ValueError("the given pseudo pairs hold no rows: nothing to train on")
    for i, row in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected", "reference") if k not in row]
        if missing:
            raise ValueError(f"pseudo pair row {i} lacks {missing}: make the rows with pseudo_pair_rows")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"pseudo pair row {i} has the same answer on both sides: it carries no preference")


def run_plad(cfg: PladConfig, *, student=None, pairs: tuple[list[dict], dict] | None = None) -> RunResult:
    """Run PLaD end to end (module docstring) and save metrics to ``cfg.output_dir``.

    The staged path (notebook 07): ``student`` = (model, tokenizer) from ``cfg.load_student()`` (trained in place)
    and ``pairs`` = (rows, stats) from :func:`pseudo_pair_rows` on ``distillation_prompts(cfg)``, checked, then
    trained on as given (the teacher is then never loaded)."""
    set_threads()
    started = time.perf_counter()
    gold = has_gold(cfg)
    if pairs is not None:
        check_given_pairs(cfg, pairs)
    student, student_tok = student or cfg.load_student()
    prompts, held_out = distillation_prompts(cfg), held_out_prompts(cfg)
    if not gold:  # no gold reward: plain prompts, for a judge
        held_out = [p.text for p in held_out]
    before = held_out_evaluation(cfg, student, student_tok, held_out, gold=gold)
    if pairs is None:
        teacher, teacher_tok = load_frozen_teacher(
            cfg.teacher, quantization=cfg.quantization, served_by_vllm=cfg.sampling_backend == "vllm"
        )
        pairs = pseudo_pair_rows(teacher, teacher_tok, student, student_tok, prompts, cfg)
        del teacher  # black box: only its samples are needed from here on
        release_memory()
    rows, pair_stats = pairs
    history: list[dict] = []
    with metrics_kept_on_divergence(
        cfg, cfg.method, history, pairs=pair_stats, gold_before=before["gold"] if gold else None
    ):
        history += train_on_pairs(cfg, student, student_tok, rows, pair_stats)
    if gold:
        return finish_run(
            cfg,
            student,
            student_tok,
            held_out,
            before,
            history,
            started,
            pairs=pair_stats,
            training=training_summary(history),
        )
    after = held_out_evaluation(cfg, student, student_tok, held_out, gold=False)
    metrics = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "config": asdict(cfg),
        **no_gold_evaluation(cfg, held_out, before, after),
        "pairs": pair_stats,
        "training": training_summary(history),
        "seconds": time.perf_counter() - started,
    }
    result = RunResult(metrics, history, student, student_tok)
    result.save(cfg.output_dir)
    return result
