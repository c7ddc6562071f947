"""DCKD, ADPA and ADPA+ pipelines (Gao et al., ICLR 2025) on the gym or a preference dataset, with the paper's
ablations as parameters.

Algorithm 1 (ADPA): SFT student → generate ŷ from it → cache the DPO and reference teachers' top-k on (x, ŷ) →
train on L_SFT(y_w) − γ Σ_t Σ_a π_θ(a|ŝ_t) A(ŝ_t, a) (Eq. 10). Algorithm 2 (ADPA+): the same, started from (and
with ŷ sampled from) the DCKD student (Eq. 7). Every method is a list of *stages* (``METHOD_STAGES``); every stage
composes the shared pieces: :func:`workbench.sampling.sample_responses`, :mod:`workbench.topk_cache`,
``DistillTrainer`` and the loss registry :data:`workbench.losses.LOSSES`.

**Gym preference data** (the paper's D_pref; the gym has none of its own). For each prompt two answers are drawn
from the gym's judge mix (:data:`PAIR_MIX`: correct, verbose, near-miss, copied, wrong and harmful answers) until
their gold rewards differ; the higher-gold one is y_w, the other y_l. So y_w is good but not always right
(mean gold ≈ 0.84, exactly correct ≈ 45%), like real chosen responses, and the SFT term alone cannot teach the
perfect answer: the teacher's signal has to. Held-out pairs built the same way on test prompts give the reward
accuracy of ADPA §4.5.

**Preference datasets** (``dataset`` = a ``workbench.data`` preset such as ``dpo-mix-7k`` / ``helpsteer2``, a hub
id, or a local file read in ``dataset_schema``): training uses the dataset's (x, y_w, y_l) pairs as the paper does;
held-out pairs come from the preset's test split or a fixed carve (:func:`workbench.methods.common.preference_splits`).
There is no gold reward: the run reports reward accuracy on the held-out pairs (the dataset's labels), training
metrics, and a judge's win rate over the initial student when ``judge`` names a judge model; gold fields are None
and ``gold_evaluation`` says why.

``run_adpa(AdpaConfig(method=..., seed=...))`` is the contract the comparison harness and notebook 06 use.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import datasets
import numpy as np
import torch

from workbench.distributed import map_in_shards, unsharded
from workbench.encoding import collate_examples
from workbench.evaluate import mean_ci, win_rate
from workbench.gym.build import JUDGE_MIX
from workbench.logprobs import chunked_logps_at, logits_chunk_setting, output_vocab_size
from workbench.losses import get_loss
from workbench.losses.adpa import (
    MISSING_LOGP_RULES,
    GatheredLogps,
    advantage_from_topk,
    dckd_loss,
    sft_loss,
)
from workbench.methods import FAMILIES
from workbench.methods.checks import check_run_sizes
from workbench.methods.common import (
    HELD_OUT_SEED,
    SAVE_STEPS_HELP,
    VLLM_OPTIONS_HELP,
    RunResult,
    TrainedRun,
    TrainingKnobs,
    check_dataset_options,
    check_save_steps,
    check_vllm_options,
    gold_of,
    gym_prompts,
    held_out_evaluation,
    knob,
    loaded_once,
    metrics_kept_on_divergence,
    no_gold_evaluation,
    preference_splits,
    resolve_lr,
    run_checkpoints,
    training_summary,
    vllm_engine_options,
)
from workbench.sampling import sample_responses
from workbench.scoring import avg_logp_rewards
from workbench.topk_cache import TOPK_DEFAULT, TopkCache, topk_teacher
from workbench.trainers import (
    set_threads,
    train_distill,
    train_sft,
)

logger = logging.getLogger("workbench.adpa")

# the gym's judge mix (answers of every quality), so best-of-two is a realistic, imperfect "chosen"
PAIR_MIX = JUDGE_MIX


# ---------------------------------------------------------------------------------------------------------------
# data: gym preference pairs and reward accuracy
# ---------------------------------------------------------------------------------------------------------------


def gym_preference_pairs(prompts, seed: int, mix: dict | None = None, max_tries: int = 50) -> datasets.Dataset:
    """(x, y_w, y_l) per gym prompt: two answers from ``mix`` with different gold rewards, the better one chosen.

    Returns columns ``prompt`` (text), ``chosen``, ``rejected``, ``chosen_gold``, ``rejected_gold``; a prompt
    whose draws tie ``max_tries`` times is skipped (never seen on the gym: the mix has wrong answers).
    """
    from workbench.gym.world import gold_reward, sample_candidate

    mix = mix or PAIR_MIX
    rng = random.Random(f"pairs-{seed}")
    rows = {"prompt": [], "chosen": [], "rejected": [], "chosen_gold": [], "rejected_gold": []}
    for prompt in prompts:
        for _ in range(max_tries):
            a, b = sample_candidate(prompt, mix, rng), sample_candidate(prompt, mix, rng)
            gold_a, gold_b = gold_reward(prompt, a), gold_reward(prompt, b)
            if gold_a != gold_b:
                break
        else:
            continue
        if gold_a < gold_b:
            a, b, gold_a, gold_b = b, a, gold_b, gold_a
        for name, value in zip(rows, (prompt.text, a, b, gold_a, gold_b)):
            rows[name].append(value)
    return datasets.Dataset.from_dict(rows)


def preference_pairs(cfg: AdpaConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out) pairs of a run: gold-ranked gym pairs (train prompts per seed, fixed test prompts), or the
    dataset's pairs (:func:`workbench.methods.common.preference_splits`; responses as text, no gold columns)."""
    if cfg.dataset == "gym":
        train = gym_preference_pairs(gym_prompts("train", cfg.train_prompts, cfg.seed + 101), seed=cfg.seed)
        return train, gym_preference_pairs(gym_prompts("test", cfg.eval_prompts, HELD_OUT_SEED), seed=HELD_OUT_SEED)
    return preference_splits(cfg.dataset, cfg.dataset_schema, cfg.train_prompts, cfg.eval_prompts, cfg.seed)


def reward_accuracy(model, tokenizer, pairs: datasets.Dataset) -> float:
    """Fraction of pairs where the model's average log-likelihood of y_w exceeds that of y_l (ADPA §4.5).

    .. math:: \\mathrm{RA} = \\Pr\\Bigl[\\tfrac{1}{|y_w|}\\log\\pi_\\theta(y_w|x)
              > \\tfrac{1}{|y_l|}\\log\\pi_\\theta(y_l|x)\\Bigr]
    """
    chosen = avg_logp_rewards(model, tokenizer, pairs["prompt"], pairs["chosen"])  # (N,)
    rejected = avg_logp_rewards(model, tokenizer, pairs["prompt"], pairs["rejected"])  # (N,)
    return float((chosen > rejected).float().mean())


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------

METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "sft": ("sft",),  # the L_SFT(y_w) term alone, same data and steps (alpha = gamma = 0)
    "dckd": ("dckd",),  # Eq. 7
    "adpa": ("adpa",),  # Alg. 1, Eq. 10
    "adpa+": ("dckd", "adpa"),  # Alg. 2: ADPA from the DCKD student, ŷ from it
    "adpa_no_ref": ("adpa_no_ref",),  # Table 2 "w/o reference teacher"
    "q_argmax": ("q_argmax",),  # App. D Eq. 30
    "q_softmax": ("q_softmax",),  # App. D Eq. 31
}


@dataclass
class AdpaConfig(TrainingKnobs):
    """Parameters of a DCKD / ADPA / ADPA+ run; defaults run the gym on CPU in about a minute per method.

    Paper values are quoted in ``help``; the gym's students are tiny, so learning rates and steps differ.
    """

    memory_shape: ClassVar[str] = FAMILIES["adpa"].memory_shape  # workbench.memory.MEMORY_SHAPES

    teacher_dpo: str = field(default="gym-teacher-dpo", metadata={"help": "DPO teacher π_dpo (id/path/preset)"})
    teacher_ref: str = field(
        default="gym-teacher-ref",
        metadata={"help": "reference teacher π_ref: the SFT teacher π_dpo was trained from (Fig. 2)"},
    )
    student: str = field(default="gym-student", metadata={"help": "SFT student π'_θ (id/path/preset)"})
    dataset: str = field(
        default="gym",
        metadata={
            "help": "'gym' (gold-ranked pairs, see module docstring) or a preference dataset for workbench.data "
            "(preset e.g. 'dpo-mix-7k' / 'helpsteer2' (§4.1), hub id, or local file): its (x, y_w, y_l) pairs"
        },
    )
    dataset_schema: str = field(
        default="",
        metadata={
            "help": "native schema of a local dataset file (a workbench.data.SCHEMAS key or preset name; '' = the "
            "preset's, else TRL's standard format)"
        },
    )
    judge: str = field(
        default="",
        metadata={
            "help": "judge model (id/path/preset) for non-gym data: MCQ win rate of the trained over the initial "
            "student on held-out prompts ('' = none: reward accuracy and training metrics only)"
        },
    )
    method: str = field(default="adpa", metadata={"help": f"one of {sorted(METHOD_STAGES)}"})
    alpha: float = field(
        default=5.0,
        metadata={
            "help": "DCKD KL weight (Eq. 7; paper grid {0.1,...,5}, best 0.2 in Fig. 5 = DCKD_ALPHA; released recipe "
            "0.1; gym-tuned 5, the grid's end: DCKD validation gold at 0.2 / 0.5 / 1 / 2 / 5 / 10 = 0.833 / "
            "0.845 / 0.849 / 0.858 / 0.868 / 0.871, seeds 0-1, experiments/gym_tune.py; ADPA+ 0.860 at 1, 0.863 "
            "at 5)"
        },
    )
    gamma: float = field(
        default=3.0,
        metadata={
            "help": "weight of the advantage / Q-KD term (Eq. 10, 30, 31; paper grid {0.5,...,5}, released recipe 1.6; "
            "gym-tuned 3 with beta = 0.1: ADPA validation gold at 0.5 / 1 / 2 / 3 / 5 = 0.842 / 0.853 / 0.859 / "
            "0.859 / 0.845, seeds 0-1 (ADPA w/o reference: 0.874 / 0.884 / 0.891 / 0.894 / 0.896))"
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "β in A = β log(π_dpo/π_ref) (Eq. 8): the DPO teacher's β (gym: 0.1; paper 0.05; released 0.01)"
        },
    )
    k: int = field(default=TOPK_DEFAULT, metadata={"help": "teacher top-k cached per position (§4.1: 50)"})
    state_source: str = field(
        default="student",
        metadata={"help": "where ŷ comes from (App. E): 'student' (default), 'preferred', 'dispreferred', 'teacher'"},
    )
    use_rejected: bool = field(default=True, metadata={"help": "DCKD's KL on y_l (False: Table 2 ablation)"})
    missing_rule: str = field(
        default="tail_max",
        metadata={"help": "log π_ref of a DPO top-k token missing from the reference top-k (MISSING_LOGP_RULES)"},
    )
    advantage_clamp: bool = field(
        default=False,
        metadata={"help": "clamp A into [1e-8, 1-1e-8] as the released code does (False: the paper's raw log-ratio)"},
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "ADPA term as a per-token mean (released code) instead of the sum over t (Eq. 10)"},
    )
    q_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of Q-softmax KD (Eq. 31: 1)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature of ŷ and of evaluation"})
    max_new_tokens: int = 24
    lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate (None: the method's validation-chosen rate on the default gym, GYM_LR[method]; "
            "paper: 5e-7 released, max 1e-5 App. F)"
        },
    )
    steps: int = field(default=400, metadata={"help": "optimizer steps per stage"})
    dckd_steps: int | None = field(default=None, metadata={"help": "steps of ADPA+'s DCKD stage (None: steps)"})
    dckd_lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of ADPA+'s DCKD stage (None: lr; on the gym ADPA+'s own rate beat DCKD's, 0.863 vs "
            "0.845 at 1e-4 vs 1e-3, validation, seeds 0-1)"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "pairs per step (paper: 128)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "App. F: 0.1"})
    gradient_accumulation_steps: int = knob("gradient_accumulation_steps")
    gradient_checkpointing: bool = knob("gradient_checkpointing")
    logits_chunk: int = knob("logits_chunk")
    precision: str = knob("precision")
    report_to: str = knob("report_to")
    train_prompts: int = field(default=1024, metadata={"help": "preference pairs (gym prompts) for training"})
    eval_prompts: int = field(
        default=128, metadata={"help": "held-out prompts (gold reward or judge, and reward accuracy on their pairs)"}
    )
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt"})
    seed: int = 0
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter on the student"})
    quantization: str | None = field(default=None, metadata={"help": "None or '4bit' / '8bit' for the teachers"})
    sampling_batch_size: int = field(
        default=32,
        metadata={
            "help": "prompts per sampling batch of ŷ (batch b seeded seed + b; the unit a process's shard is made of)"
        },
    )
    scoring_batch_size: int = field(default=32, metadata={"help": "(x, y) sequences per teacher top-k batch"})
    scoring_backend: str = field(
        default="hf",
        metadata={
            "help": "'hf' (each teacher loaded for its top-k cache, then freed) or 'vllm' (optional: pip install vllm; "
            "each teacher served by a vLLM engine for its cache, released afterwards)"
        },
    )
    vllm_gpu_memory: float = field(
        default=0.0, metadata={"help": "share of GPU memory the vLLM engine reserves (0 = vLLM's default, 0.9)"}
    )
    vllm_options: dict = field(default_factory=dict, metadata={"help": VLLM_OPTIONS_HELP})
    save_steps: int = field(default=0, metadata={"help": SAVE_STEPS_HELP})
    output_dir: str = "runs/adpa"
    progress: bool = True

    def samples_a_trained_student(self) -> bool:
        """Whether ŷ is sampled from a student trained by an earlier stage (ADPA+ from the DCKD student)."""
        return self.state_source == "student" and len(METHOD_STAGES[self.method]) > 1

    def __post_init__(self):
        if self.quantization == "":
            self.quantization = None
        if self.method not in METHOD_STAGES:
            raise ValueError(f"method={self.method!r}; use one of {sorted(METHOD_STAGES)}")
        if self.state_source not in STATE_SOURCES:
            raise ValueError(f"state_source={self.state_source!r}; use one of {sorted(STATE_SOURCES)} (ADPA App. E)")
        if self.missing_rule not in MISSING_LOGP_RULES:
            raise ValueError(f"missing_rule={self.missing_rule!r}; use one of {sorted(MISSING_LOGP_RULES)}")
        if self.alpha < 0 or self.gamma < 0:
            raise ValueError(f"alpha={self.alpha}, gamma={self.gamma}; loss weights must be ≥ 0")
        if not self.beta > 0 or not self.q_temperature > 0:
            raise ValueError(f"beta={self.beta}, q_temperature={self.q_temperature}; both must be > 0")
        if self.sampling_batch_size < 1 or self.scoring_batch_size < 1:
            raise ValueError(
                f"sampling_batch_size={self.sampling_batch_size}, scoring_batch_size="
                f"{self.scoring_batch_size}; both must be ≥ 1"
            )
        if self.k < 1:
            raise ValueError(f"k={self.k}; cache at least one token per position")
        if self.steps < 1 or (self.dckd_steps is not None and self.dckd_steps < 1):
            raise ValueError(f"steps={self.steps}, dckd_steps={self.dckd_steps}; both must be ≥ 1")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization={self.quantization!r}; use None, '4bit' or '8bit'")
        check_run_sizes(self)
        check_dataset_options(self)
        check_vllm_options(self)
        check_save_steps(self)
        self.check_training_knobs()
        self.lr = resolve_lr(self.lr, self.method)
        self.dckd_lr = self.lr if self.dckd_lr is None else resolve_lr(self.dckd_lr, "dckd")


# ---------------------------------------------------------------------------------------------------------------
# batches and objectives
# ---------------------------------------------------------------------------------------------------------------


class MemoizedTokenizer:
    """A tokenizer proxy that memoizes chat rendering and tokenization (same outputs, each text encoded once).

    The collator re-encodes every row at every step through :func:`workbench.encoding.collate_examples`; on the
    gym that is about half of a training step. The proxy keeps that one shared encoding path and removes the cost.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._memo: dict = {}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def _cached(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def apply_chat_template(self, messages, **kwargs):
        key = ("template", json.dumps(messages, sort_keys=True), json.dumps(kwargs, sort_keys=True, default=str))
        return self._cached(key, lambda: self._tokenizer.apply_chat_template(messages, **kwargs))

    def __call__(self, text, **kwargs):
        if not isinstance(text, str):
            return self._tokenizer(text, **kwargs)
        key = ("encode", text, json.dumps(kwargs, sort_keys=True, default=str))
        return self._cached(key, lambda: self._tokenizer(text, **kwargs))


@dataclass
class TopkPairCollator:
    """Rows with ``index``, ``prompt`` and response columns -> one shifted batch per response field plus the
    teacher top-k caches placed at that field's response positions.

    For each field f (e.g. ``chosen``, ``rejected``, ``hat``) the batch holds ``f_input_ids``, ``f_attention_mask``
    (B, L), and ``f_labels``, ``f_mask`` (B, L-1) where position t of the logits predicts ``f_labels[:, t]``. For
    each cache name ``f_teacher`` it holds ``f_teacher_ids`` and ``f_teacher_logps`` (B, L-1, k).
    """

    tokenizer: object
    fields: tuple[str, ...]
    caches: dict[str, TopkCache]

    def __post_init__(self):
        if not isinstance(self.tokenizer, MemoizedTokenizer):
            self.tokenizer = MemoizedTokenizer(self.tokenizer)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        indices = [r["index"] for r in rows]
        for name in self.fields:
            batch = collate_examples(self.tokenizer, [r["prompt"] for r in rows], [r[name] for r in rows])
            out[f"{name}_input_ids"] = batch["input_ids"]
            out[f"{name}_attention_mask"] = batch["attention_mask"]
            out[f"{name}_labels"] = batch["input_ids"][:, 1:]  # (B, L-1)
            out[f"{name}_mask"] = batch["response_mask"][:, 1:]  # (B, L-1)
        for cache_name, cache in self.caches.items():
            name = cache_name.rsplit("_", 1)[0]
            ids, logps = cache.scatter(indices, out[f"{name}_mask"])
            out[f"{cache_name}_ids"], out[f"{cache_name}_logps"] = ids, logps
        return out


def shifted_logits(model, inputs: dict, name: str) -> torch.Tensor:
    """Student logits on field ``name``, (B, L-1, V): position t predicts ``inputs[name + '_labels'][:, t]``."""
    logits = model(input_ids=inputs[f"{name}_input_ids"], attention_mask=inputs[f"{name}_attention_mask"]).logits
    return logits[:, :-1]


def student_logps(model, inputs: dict, name: str, ids: Sequence[torch.Tensor], logits_chunk: int | None = None):
    """What the losses read of the student on field ``name``: its logits (B, L-1, V) or, with ``logits_chunk``
    (None: ``$WORKBENCH_LOGITS_CHUNK``, off), its log-probs at ``ids`` (each (B, L-1) or (B, L-1, k): labels, teacher
    top-k ids) through the chunked head — a :class:`~workbench.losses.adpa.GatheredLogps` the losses take in place
    of the logits, so no (B, L-1, V) tensor is kept for backward."""
    chunk = logits_chunk if logits_chunk is not None else logits_chunk_setting()
    if not chunk:
        return shifted_logits(model, inputs, name)
    vocab_size = output_vocab_size(model)
    wanted = torch.cat([i if i.dim() == 3 else i[..., None] for i in ids], dim=-1)  # (B, L-1, J)
    # off the response (and for out-of-range ids, which the losses reject by name) any valid id will do
    live = inputs[f"{name}_mask"].bool()[..., None]
    wanted = torch.where(live, wanted, torch.zeros_like(wanted)).clamp(0, vocab_size - 1)
    logps = chunked_logps_at(model, inputs[f"{name}_input_ids"], inputs[f"{name}_attention_mask"], wanted, chunk)
    return GatheredLogps(wanted, logps, vocab_size)


@dataclass
class DckdObjective:
    """L_DCKD = L_SFT(y_w) + α (L_KLD-w + L_KLD-l) (ADPA Eq. 5-7) on cached π_dpo top-k."""

    alpha: float
    use_rejected: bool = True
    logits_chunk: int | None = None  # the chunked head (None: $WORKBENCH_LOGITS_CHUNK, off)

    def __call__(self, model, inputs):
        chosen = student_logps(
            model, inputs, "chosen", (inputs["chosen_labels"], inputs["chosen_dpo_ids"]), self.logits_chunk
        )  # (B, Lw-1, V)
        rejected = {}
        if self.use_rejected:
            rejected = dict(
                rejected_student_logits=student_logps(
                    model, inputs, "rejected", (inputs["rejected_dpo_ids"],), self.logits_chunk
                ),
                rejected_mask=inputs["rejected_mask"],
                rejected_teacher_topk_ids=inputs["rejected_dpo_ids"],
                rejected_teacher_topk_logps=inputs["rejected_dpo_logps"],
            )
        # $\mathcal{L}_{\text{SFT}} + \alpha(\mathcal{L}_{\text{KLD-}w} + \mathcal{L}_{\text{KLD-}l})$, Eq. (7)
        loss = dckd_loss(
            chosen,
            inputs["chosen_labels"],
            inputs["chosen_mask"],
            inputs["chosen_dpo_ids"],
            inputs["chosen_dpo_logps"],
            alpha=self.alpha,
            use_rejected=self.use_rejected,
            **rejected,
        )
        with torch.no_grad():
            sft = sft_loss(chosen, inputs["chosen_labels"], inputs["chosen_mask"]).mean()
        return loss, {"sft_loss": sft}


def _advantage_targets(objective: OnPolicyObjective, inputs: dict, vocab_size: int):
    # $A(\hat s_t, a) = \beta \log \pi_{\text{dpo}}(a|\hat s_t) - \beta \log \pi_{\text{ref}}(a|\hat s_t)$, Eq. (8)
    return advantage_from_topk(
        inputs["hat_dpo_ids"],
        inputs["hat_dpo_logps"],
        inputs["hat_ref_ids"],
        inputs["hat_ref_logps"],
        objective.beta,
        objective.missing_rule,
        vocab_size=vocab_size,
        advantage_clamp=objective.advantage_clamp,
    )


def _dpo_targets(objective: OnPolicyObjective, inputs: dict, vocab_size: int):
    return inputs["hat_dpo_ids"], inputs["hat_dpo_logps"]


@dataclass(frozen=True)
class OnPolicyLoss:
    """How a loss on ŷ gets its targets and extra arguments from the cached teachers."""

    teachers: tuple[str, ...]  # caches needed on ŷ
    targets: Callable  # (objective, inputs, V) -> (ids (B,T,k), values (B,T,k))
    kwargs: Callable  # (objective, V) -> extra keyword arguments of the loss


ON_POLICY_LOSSES: dict[str, OnPolicyLoss] = {
    "adpa": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {"length_normalize": o.length_normalize}),
    "q_argmax": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {}),
    "q_softmax": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {"temperature": o.q_temperature}),
    "adpa_no_ref": OnPolicyLoss(
        ("dpo",),
        _dpo_targets,
        lambda o, V: {
            "beta": o.beta,
            "missing_rule": o.missing_rule,
            "vocab_size": V,
            "length_normalize": o.length_normalize,
        },
    ),
}


@dataclass
class OnPolicyObjective:
    """L_SFT(y_w) plus a registered loss on the student's logits along ŷ (ADPA Eq. 10, 30, 31, Table 2)."""

    loss: str
    gamma: float
    beta: float
    missing_rule: str = "tail_max"
    advantage_clamp: bool = False
    length_normalize: bool = False
    q_temperature: float = 1.0
    logits_chunk: int | None = None  # the chunked head (None: $WORKBENCH_LOGITS_CHUNK, off)

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)
        self.spec = ON_POLICY_LOSSES[self.loss]

    def __call__(self, model, inputs):
        chosen = student_logps(model, inputs, "chosen", (inputs["chosen_labels"],), self.logits_chunk)
        # $\mathcal{L}_{\text{SFT}}(x, y_w)$ per sequence
        sft = sft_loss(chosen, inputs["chosen_labels"], inputs["chosen_mask"])  # (B,)
        vocab_size = output_vocab_size(model)
        ids, values = self.spec.targets(self, inputs, vocab_size)  # (B, L-1, k) each
        hat = student_logps(model, inputs, "hat", (ids,), self.logits_chunk)  # (B, L-1, V)
        loss = self.loss_fn(
            hat, inputs["hat_mask"], ids, values, self.gamma, sft_term=sft, **self.spec.kwargs(self, vocab_size)
        )
        return loss, {"sft_loss": sft.detach().mean(), "distill_term": loss.detach() - sft.detach().mean()}


# ---------------------------------------------------------------------------------------------------------------
# state sources (App. E) and stages
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What the stages of one run share; ``state`` (accelerate's ``PartialState`` under ``accelerate launch``)
    shards sampling and the teachers' top-k passes over the processes (:func:`workbench.distributed.map_in_shards`)
    and ``device`` is where this process loads the teachers."""

    cfg: AdpaConfig
    student: object
    tokenizer: object
    pairs: datasets.Dataset
    history: list[dict]
    stages: list[dict]
    state: object = None
    device: str | None = None
    states: dict[str, list[str]] = field(default_factory=dict)  # stage name → its ŷ, one per pair
    checkpoints: object = None  # the run's Checkpoints (save_steps > 0): each stage resumes in stage<i>-<name>/

    def stage_checkpoints(self, stage: int, name: str):
        return self.checkpoints and self.checkpoints.stage(f"stage{stage}-{name}")


def _sampled_states(ctx: RunContext, stage: int, model_of: Callable[[], tuple]) -> list[str]:
    """One ŷ per training prompt from the model ``model_of()`` returns as (model, tokenizer), in shards of whole
    sampling batches (batch b seeded ``seed·1000 + stage + b`` however the prompts are sharded); the model is
    loaded at the first piece of this process's shard and let go after the last (a loaded teacher is freed)."""
    cfg = ctx.cfg
    with loaded_once(model_of) as model_and_tokenizer:

        def sample(prompts, first_batch):
            model, tokenizer = model_and_tokenizer()
            return sample_responses(
                model,
                tokenizer,
                prompts,
                n=1,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.sampling_batch_size,
                seed=cfg.seed * 1000 + stage + first_batch,
                progress=cfg.progress,
            )["response"]

        return map_in_shards(sample, list(ctx.pairs["prompt"]), cfg.sampling_batch_size, ctx.state)


def _student_states(ctx: RunContext, stage: int) -> list[str]:
    """ŷ ~ π_θ(·|x) from the current student (Alg. 1 line 5; Alg. 2 line 6 after DCKD); an FSDP-sharded student
    samples through a whole copy (:func:`workbench.distributed.unsharded`)."""
    with unsharded(ctx.student) as student:
        return _sampled_states(ctx, stage, lambda: (student, ctx.tokenizer))


def _teacher_states(ctx: RunContext, stage: int) -> list[str]:
    """ŷ ~ π_dpo(·|x): teacher-generated states (App. E, Table 7 row 3); the teacher is freed afterwards."""
    from workbench.models import load

    return _sampled_states(
        ctx, stage, lambda: load(ctx.cfg.teacher_dpo, quantization=ctx.cfg.quantization, device=ctx.device)
    )


STATE_SOURCES: dict[str, Callable[[RunContext, int], list[str]]] = {
    "student": _student_states,
    "preferred": lambda ctx, stage: list(ctx.pairs["chosen"]),
    "dispreferred": lambda ctx, stage: list(ctx.pairs["rejected"]),
    "teacher": _teacher_states,
}


def _train(
    ctx: RunContext, rows, collator, objective, steps: int, stage: int, name: str, lr: float | None = None
) -> None:
    cfg = ctx.cfg
    log = train_distill(
        ctx.student,
        rows,
        collator,
        objective,
        steps=steps,
        lr=lr or cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + stage,
        warmup_ratio=cfg.warmup_ratio,
        progress=cfg.progress,
        checkpoints=ctx.stage_checkpoints(stage, name),
        **cfg.training_overrides(f"stage{stage}-{name}"),
    )
    ctx.history += [{**entry, "stage": name} for entry in log]


def _indexed(pairs: datasets.Dataset, **columns) -> datasets.Dataset:
    rows = pairs.add_column("index", list(range(len(pairs))))
    for name, values in columns.items():
        rows = rows.add_column(name, values)
    return rows


def _cache(ctx: RunContext, teacher: str, responses: Sequence[str]) -> TopkCache:
    """The teacher's top-k on (x, ŷ) for every training pair; each process computes its shard (loading the teacher
    only if its shard is not empty) and the entries are merged in pair order."""
    cfg = ctx.cfg
    name = {"dpo": cfg.teacher_dpo, "ref": cfg.teacher_ref}[teacher]

    with topk_teacher(
        name,
        ctx.tokenizer,
        k=cfg.k,
        quantization=cfg.quantization,
        batch_size=cfg.scoring_batch_size,
        progress=cfg.progress,
        backend=cfg.scoring_backend,
        engine_options=vllm_engine_options(cfg),
        device=ctx.device,
    ) as teacher_topk:

        def topk(items, first_batch):
            prompts, texts = zip(*items)
            cache = teacher_topk(list(prompts), list(texts))
            return [(cache.ids[i], cache.logps[i], cache.tail_logps[i], cache.teacher) for i in range(len(cache))]

        entries = map_in_shards(topk, list(zip(ctx.pairs["prompt"], responses)), cfg.scoring_batch_size, ctx.state)
    return TopkCache(
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        k=cfg.k,
        teacher=entries[0][3] if entries else "",
    )


def _stage_sft(ctx: RunContext, stage: int) -> dict:
    """L_SFT(y_w) alone on the same pairs: the α = γ = 0 baseline."""
    cfg = ctx.cfg
    rows = datasets.Dataset.from_dict({"prompt": ctx.pairs["prompt"], "response": ctx.pairs["chosen"]})
    log = train_sft(
        ctx.student,
        ctx.tokenizer,
        rows,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + stage,
        warmup_ratio=cfg.warmup_ratio,
        progress=cfg.progress,
        checkpoints=ctx.stage_checkpoints(stage, "sft"),
        logits_chunk=cfg.logits_chunk,
        **cfg.training_overrides(f"stage{stage}-sft"),
    )
    ctx.history += [{**entry, "stage": "sft"} for entry in log]
    return {"stage": "sft"}


def _stage_dckd(ctx: RunContext, stage: int) -> dict:
    """DCKD (Eq. 7): π_dpo top-k on y_w and y_l, then SFT + α (KL_w + KL_l)."""
    cfg = ctx.cfg
    fields = ("chosen", "rejected") if cfg.use_rejected else ("chosen",)
    caches = {f"{name}_dpo": _cache(ctx, "dpo", ctx.pairs[name]) for name in fields}
    collator = TopkPairCollator(ctx.tokenizer, fields, caches)
    first_of_two = cfg.method == "adpa+"  # ADPA+'s DCKD stage has its own steps and rate
    steps = cfg.dckd_steps if (cfg.dckd_steps and first_of_two) else cfg.steps
    _train(
        ctx,
        _indexed(ctx.pairs),
        collator,
        DckdObjective(cfg.alpha, cfg.use_rejected, cfg.logits_chunk),
        steps,
        stage,
        "dckd",
        lr=cfg.dckd_lr if first_of_two else cfg.lr,
    )
    return {"stage": "dckd", "teacher_tail_mass_chosen": _mean_tail(caches["chosen_dpo"])}


def _stage_on_policy(loss: str) -> Callable[[RunContext, int], dict]:
    def stage_fn(ctx: RunContext, stage: int) -> dict:
        """ŷ from the state source → teacher top-k on (x, ŷ) → L_SFT(y_w) + the registered loss on ŷ."""
        cfg = ctx.cfg
        hats = STATE_SOURCES[cfg.state_source](ctx, stage)
        ctx.states[loss] = hats
        spec = ON_POLICY_LOSSES[loss]
        caches = {f"hat_{teacher}": _cache(ctx, teacher, hats) for teacher in spec.teachers}
        collator = TopkPairCollator(ctx.tokenizer, ("chosen", "hat"), caches)
        objective = OnPolicyObjective(
            loss,
            cfg.gamma,
            cfg.beta,
            cfg.missing_rule,
            cfg.advantage_clamp,
            cfg.length_normalize,
            cfg.q_temperature,
            cfg.logits_chunk,
        )
        _train(ctx, _indexed(ctx.pairs, hat=hats), collator, objective, cfg.steps, stage, loss)
        info = {
            "stage": loss,
            "state_source": cfg.state_source,
            "state_length": float(np.mean([len(y.split()) for y in hats])),
        }
        if cfg.dataset == "gym":
            info["state_gold"] = float(np.mean([gold_of(p, y) for p, y in zip(ctx.pairs["prompt"], hats)]))
        if "ref" in spec.teachers:
            info.update(advantage_summary(caches["hat_dpo"], caches["hat_ref"], cfg.beta, cfg.missing_rule))
        return info

    return stage_fn


STAGES: dict[str, Callable[[RunContext, int], dict]] = {
    "sft": _stage_sft,
    "dckd": _stage_dckd,
    **{loss: _stage_on_policy(loss) for loss in ON_POLICY_LOSSES},
}


def _mean_tail(cache: TopkCache) -> float:
    return float(np.mean(np.exp(np.concatenate(cache.tail_logps))))


def advantage_summary(dpo: TopkCache, ref: TopkCache, beta: float, missing_rule: str = "tail_max") -> dict:
    """Diagnostics of A on the cached states, weighted by π_dpo: E_dpo[A] (≈ β KL(π_dpo‖π_ref) on the support),
    the π_dpo-mass on tokens with A > 0, and the teacher's tail mass outside its top-k."""
    expected, positive = [], []
    for i in range(len(dpo)):
        _, adv = advantage_from_topk(
            torch.from_numpy(dpo.ids[i]).long()[None],
            torch.from_numpy(dpo.logps[i])[None],
            torch.from_numpy(ref.ids[i]).long()[None],
            torch.from_numpy(ref.logps[i])[None],
            beta,
            missing_rule,
        )
        probs = torch.from_numpy(dpo.logps[i]).exp()[None]  # (1, T, k)
        # $\sum_a \pi_{\text{dpo}}(a) A(a)$ and $\sum_a \pi_{\text{dpo}}(a) \mathbf{1}[A(a) > 0]$, mean over t
        expected.append(float((probs * adv).sum(-1).mean()))
        positive.append(float((probs * (adv > 0)).sum(-1).mean()))
    return {
        "dpo_expected_advantage": float(np.mean(expected)),
        "dpo_mass_on_positive_advantage": float(np.mean(positive)),
        "teacher_tail_mass": _mean_tail(dpo),
    }


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------


def train_stages(ctx: RunContext) -> None:
    """Train ``ctx.student`` through the stages of ``ctx.cfg.method`` (``METHOD_STAGES``), appending the training
    log to ``ctx.history``, each stage's diagnostics (and seconds) to ``ctx.stages`` and its ŷ to ``ctx.states``.
    Notebook 06 (``run_adpa``) and ``python -m workbench.train`` (also under ``accelerate launch``) both call it."""
    for stage, name in enumerate(METHOD_STAGES[ctx.cfg.method]):
        t0 = time.perf_counter()
        info = STAGES[name](ctx, stage)
        ctx.stages.append({**info, "seconds": time.perf_counter() - t0})


def train_run(cfg: AdpaConfig, *, state=None, device: str | None = None) -> TrainedRun:
    """Train only (no evaluation): the student through ``cfg.method``'s stages on the training pairs, sampling and
    top-k passes sharded over ``state``'s processes; rows: each on-policy stage's ŷ per pair."""
    student, tokenizer = cfg.load_student(device)
    pairs, _ = preference_pairs(cfg)
    if not len(pairs):
        raise RuntimeError(f"no training pairs in {cfg.dataset!r} (train_prompts={cfg.train_prompts})")
    ctx = RunContext(
        cfg, student, tokenizer, pairs, [], [], state=state, device=device, checkpoints=run_checkpoints(cfg, state)
    )
    train_stages(ctx)
    rows = {
        f"states_{name}": [{"prompt": p, "state": y} for p, y in zip(pairs["prompt"], hats)]
        for name, hats in ctx.states.items()
    }
    return TrainedRun(ctx.history, student, tokenizer, rows, {"train_pairs": len(pairs), "stages": ctx.stages})


def harness_kwargs(kwargs: dict) -> dict:
    """The comparison's shared overrides as AdpaConfig fields: ``teacher`` becomes ``teacher_dpo`` (and a gym
    preset's reference teacher, its sibling, ``teacher_ref``); harness plumbing the config lacks is dropped."""
    known = {f.name for f in fields(AdpaConfig)}
    kwargs = dict(kwargs)
    if "teacher" in kwargs and "teacher" not in known:
        teacher = kwargs.pop("teacher")
        kwargs.setdefault("teacher_dpo", teacher)
        if teacher.startswith("gym-") and teacher.endswith("teacher-dpo"):
            kwargs.setdefault("teacher_ref", teacher.replace("teacher-dpo", "teacher-ref"))
    # the harness's plumbing keys are optional for a config; everything else must be a real field
    return {k: v for k, v in kwargs.items() if k in known or k not in ("output_dir", "progress")}


def run_adpa(cfg: AdpaConfig) -> RunResult:
    """Train the student with ``cfg.method`` (``METHOD_STAGES``) and evaluate it on held-out prompts.

    Returns a :class:`RunResult` whose metrics hold ``method``, ``dataset``, ``reward_accuracy`` (before / after,
    on held-out pairs), ``training`` (loss per stage), per-stage diagnostics and ``seconds``, and the evaluation:
    on the gym ``gold_before`` / ``gold_after`` (mean ± CI over held-out prompts), ``win_rate_vs_initial``,
    ``per_prompt_*`` and ``length_*``; on other data those gold fields are None, ``gold_evaluation`` says why and
    ``judge`` holds the judge's win rate when ``cfg.judge`` is set. They are saved to ``cfg.output_dir``.
    """
    set_threads()
    started = time.perf_counter()
    gym = cfg.dataset == "gym"
    student, tokenizer = cfg.load_student()
    pairs, held_out_pairs = preference_pairs(cfg)
    if not len(pairs):
        raise RuntimeError(f"no training pairs in {cfg.dataset!r} (train_prompts={cfg.train_prompts})")
    held_out = gym_prompts("test", cfg.eval_prompts, HELD_OUT_SEED) if gym else list(held_out_pairs["prompt"])
    ctx = RunContext(cfg, student, tokenizer, pairs, [], [], checkpoints=run_checkpoints(cfg))

    def evaluate() -> tuple[dict | list | None, float]:
        accuracy = reward_accuracy(student, tokenizer, held_out_pairs) if len(held_out_pairs) else float("nan")
        return held_out_evaluation(cfg, student, tokenizer, held_out, gold=gym, temperature=cfg.temperature), accuracy

    before, accuracy_before = evaluate()
    with metrics_kept_on_divergence(
        cfg, cfg.method, ctx.history, stages=ctx.stages, gold_before=before["gold"] if gym else None
    ):
        train_stages(ctx)
    after, accuracy_after = evaluate()
    if gym:
        evaluation = {
            "gold_before": before["gold"],
            "gold_after": after["gold"],
            "win_rate_vs_initial": win_rate(after["per_prompt"], before["per_prompt"]),
            "per_prompt_before": before["per_prompt"],
            "per_prompt_after": after["per_prompt"],
            "length_before": before["length"],
            "length_after": after["length"],
        }
        train_pairs = {
            "count": len(pairs),
            "chosen_gold": float(np.mean(pairs["chosen_gold"])),
            "rejected_gold": float(np.mean(pairs["rejected_gold"])),
        }
    else:
        evaluation = no_gold_evaluation(cfg, held_out, before, after)
        train_pairs = {"count": len(pairs), "held_out": len(held_out_pairs)}
    metrics = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "config": asdict(cfg),
        **evaluation,
        "reward_accuracy_before": accuracy_before,
        "reward_accuracy": accuracy_after,
        "train_pairs": train_pairs,
        "training": training_summary(ctx.history),
        "stages": ctx.stages,
        "seconds": time.perf_counter() - started,
    }
    result = RunResult(metrics, ctx.history, student, tokenizer)
    result.save(cfg.output_dir)
    return result


def summarize_runs(runs: Sequence[dict]) -> dict:
    """Mean ± 95% CI over seeds of one method's runs (metrics dicts): gold after, win rate, reward accuracy."""
    return {
        "method": runs[0]["method"],
        "seeds": len(runs),
        "gold_after": mean_ci([r["gold_after"]["mean"] for r in runs]),
        "win_rate_vs_initial": mean_ci([r["win_rate_vs_initial"] for r in runs]),
        "reward_accuracy": mean_ci([r["reward_accuracy"] for r in runs]),
        "length_after": mean_ci([r["length_after"] for r in runs]),
        "seconds": mean_ci([r["seconds"] for r in runs]),
    }


def hyperparameter_sweep(cfg: AdpaConfig, name: str, values: Sequence[float]) -> list[dict]:
    """One run per value of ``name`` (e.g. α for DCKD, γ for ADPA: ADPA Fig. 5); the value goes into the output path.

    Returns rows ``{name: value, "gold_after", "reward_accuracy", "win_rate_vs_initial", "length_after"}``.
    """
    from dataclasses import replace

    rows = []
    for value in values:
        run = replace(cfg, **{name: value, "output_dir": f"{cfg.output_dir}/{cfg.method}-{name}={value:g}"})
        metrics = run_adpa(run).metrics
        rows.append(
            {
                name: float(value),
                **{
                    key: metrics.get(key)
                    for key in (  # gold fields: None off the gym
                        "gold_after",
                        "reward_accuracy",
                        "win_rate_vs_initial",
                        "length_after",
                    )
                },
            }
        )
    return rows


def method_table(
    methods: Sequence[str], seeds: Sequence[int], output_dir: str = "runs/adpa_table", **overrides
) -> dict:
    """Every method × seed with the same defaults (plus ``overrides``); per-method mean ± 95% CI over seeds.

    Returns ``{"rows": [summarize_runs(...) per method], "initial": gold of the SFT-init student, "runs": {...}}``
    and writes ``table.json`` to ``output_dir``; each run's metrics land in ``output_dir/<method>/seed=<s>``.
    """
    import json
    from pathlib import Path

    runs = {}
    for method in methods:
        runs[method] = []
        for seed in seeds:
            cfg = AdpaConfig(
                method=method,
                seed=seed,
                output_dir=f"{output_dir}/{method}/seed={seed}",
                **{"progress": False, **overrides},
            )
            metrics = run_adpa(cfg).metrics
            runs[method].append({k: v for k, v in metrics.items() if k != "config"})
            logger.info("%s seed %d: gold %.3f", method, seed, metrics["gold_after"]["mean"])
    first = next(iter(runs.values()))
    table = {
        "rows": [summarize_runs(r) for r in runs.values()],
        "initial": {
            "gold": mean_ci([r["gold_before"]["mean"] for r in first]),
            "reward_accuracy": mean_ci([r["reward_accuracy_before"] for r in first]),
            "length": mean_ci([r["length_before"] for r in first]),
        },
        "win_rate_vs_adpa": (
            {
                m: mean_ci([win_rate(a["per_prompt_after"], b["per_prompt_after"]) for a, b in zip(r, runs["adpa"])])
                for m, r in runs.items()
            }
            if "adpa" in runs
            else {}
        ),
        "seeds": list(seeds),
        "overrides": overrides,
        "runs": runs,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "table.json").write_text(json.dumps(table, indent=2, default=float))
    return table


def format_table(table: dict) -> str:
    """The method table as Markdown: gold after, win rate vs the initial student and vs ADPA, reward accuracy."""

    def cell(stat):
        return f"{stat['mean']:.3f} ± {stat['ci95']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"

    lines = [
        "| method | gold reward after | win rate vs initial student | win rate vs ADPA | reward accuracy | "
        "length (words) |",
        "|---|---|---|---|---|---|",
        f"| initial student (SFT init) | {cell(table['initial']['gold'])} | – | – | "
        f"{cell(table['initial']['reward_accuracy'])} | {table['initial']['length']['mean']:.2f} |",
    ]
    for row in table["rows"]:
        versus = table["win_rate_vs_adpa"].get(row["method"])
        lines.append(
            f"| {row['method']} | {cell(row['gold_after'])} | {cell(row['win_rate_vs_initial'])} | "
            f"{cell(versus) if versus else '–'} | {cell(row['reward_accuracy'])} | "
            f"{row['length_after']['mean']:.2f} |"
        )
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[str, object]:
    """``"steps=800"`` -> ("steps", 800); values are JSON when they parse, strings otherwise."""
    name, _, value = text.partition("=")
    if name not in AdpaConfig.__dataclass_fields__:
        raise SystemExit(f"--set {text!r}: {name!r} is not an AdpaConfig field")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workbench.methods.adpa --seeds 0,1,2 [--set steps=800 ...]``: the method table as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--methods", default=",".join(METHOD_STAGES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output-dir", default="runs/adpa_table")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an AdpaConfig field for every run, e.g. --set state_source=teacher",
    )
    args = parser.parse_args(argv)
    overrides = dict(_parse_override(item) for item in args.set)
    table = method_table(args.methods.split(","), [int(s) for s in args.seeds.split(",")], args.output_dir, **overrides)
    print(format_table(table))


if __name__ == "__main__":
    main()
