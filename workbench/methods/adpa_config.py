"""DCKD / ADPA / ADPA+ run parameters: the methods as lists of stages, and AdpaConfig with the paper's defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

from workbench.losses.adpa import (
    MISSING_LOGP_RULES,
)
from workbench.methods import FAMILIES
from workbench.methods.checks import check_run_sizes
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
)
from workbench.topk_cache import TOPK_DEFAULT

logger = logging.getLogger("workbench.adpa")


# where ŷ comes from (ADPA App. E): workbench.methods.adpa.STATE_SOURCES implements each
STATE_SOURCE_NAMES = ("student", "preferred", "dispreferred", "teacher")

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
    dataset: str = dataset_field(
        "its (x, y_w, y_l) pairs (e.g. 'dpo-mix-7k', 'helpsteer2': §4.1); on the gym, gold-ranked pairs "
        "(module docstring)"
    )
    dataset_schema: str = dataset_schema_field()
    judge: str = judge_field("reward accuracy and training metrics only")
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
            "help": "learning rate of ADPA+'s DCKD stage (None: lr, which on the gym's validation prompts beat DCKD's "
            "own rate; results/gym_tune)"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "pairs per step (paper: 128)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "App. F: 0.1"})
    gradient_accumulation_steps: int = knob("gradient_accumulation_steps")
    gradient_checkpointing: bool = knob("gradient_checkpointing")
    logits_chunk: int = knob("logits_chunk")
    padding_free: bool = knob("padding_free")
    sampling_levers: dict = sampling_levers_field()
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
    sampling_batch_size: int = sampling_batch_size_field(
        "prompts per sampling batch of ŷ (batch b seeded seed + b; the unit a process's shard is made of)"
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
        if self.state_source not in STATE_SOURCE_NAMES:
            raise ValueError(
                f"state_source={self.state_source!r}; use one of {sorted(STATE_SOURCE_NAMES)} (ADPA App. E)"
            )
        if self.missing_rule not in MISSING_LOGP_RULES:
            raise ValueError(f"missing_rule={self.missing_rule!r}; use one of {sorted(MISSING_LOGP_RULES)}")
        if self.alpha < 0 or self.gamma < 0:
            raise ValueError(f"alpha={self.alpha}, gamma={self.gamma}; loss weights must be ≥ 0")
        if not self.beta > 0 or not self.q_temperature > 0:
            raise ValueError(f"beta={self.beta}, q_temperature={self.q_temperature}; both must be > 0")
        if self.scoring_batch_size < 1:
            raise ValueError(f"scoring_batch_size={self.scoring_batch_size}; must be ≥ 1")
        check_sampling_batch_size(self.sampling_batch_size)
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
