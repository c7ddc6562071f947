"""The shape of a run (models, lengths, batch, precision, the method's memory shape) from a config or parameters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.memory.dims import DTYPE_BYTES

# --- the run ---


VLLM_DEFAULT_GPU_SHARE = 0.9  # vllm.LLM(gpu_memory_utilization=...)'s default


@dataclass
class RunShape:
    """The parts of a run's configuration that decide its memory (PadConfig / notebook parameters map here)."""

    student: str
    teacher: str | None = None
    teacher_ref: str | None = field(
        default=None,
        metadata={
            "help": "a second teacher that scores after the first is freed (ADPA's reference teacher: its own top-k "
            "pass, so the larger of the two is resident, and the scoring time doubles)"
        },
    )
    n: int = field(
        default=4, metadata={"help": "sequences per example in a training batch (PAD: n responses; DPO-style pairs: 2)"}
    )
    samples_per_prompt: int | None = field(
        default=None, metadata={"help": "responses the student samples per prompt (default: n; PLaD: 1)"}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per device per optimizer micro-step"})
    prompt_tokens: int | None = field(
        default=None,
        metadata={"help": "longest prompt in tokens with the chat template (default: 24 on the gym, 512 on real data)"},
    )
    max_new_tokens: int = 24
    quantization: str | None = field(default=None, metadata={"help": "teacher quantization ('4bit' = NF4)"})
    student_quantization: str | None = None
    dequantize_4bit: bool = field(
        default=True,
        metadata={
            "help": "the sampling lever (sampling_levers): a 4-bit model samples through a dequantized copy of its "
            "linears. Counted whenever on; at run time the sampler keeps 4-bit when the copy would take more than "
            "half the free memory (workbench.sampling_levers.dequantized_fits)"
        },
    )
    lora: bool = False
    lora_r: int = 8
    lora_dropout: float = 0.05
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "None: from $WORKBENCH_TRAINING_ARGS, as the trainer reads it"}
    )
    logits_chunk: int | None = field(
        default=None,
        metadata={"help": "positions per chunk of the checkpointed log-prob head; None: $WORKBENCH_LOGITS_CHUNK (off)"},
    )
    teacher_cached: bool = field(default=False, metadata={"help": "teacher scores precomputed: no teacher weights"})
    teacher_in_training: bool = field(
        default=True,
        metadata={
            "help": "teacher weights stay loaded while the student trains (run_pad: yes; top-k cache methods: no)"
        },
    )
    teacher_generates: bool = field(default=False, metadata={"help": "the teacher samples too (PLaD)"})
    teacher_in_sampling: bool = field(
        default=True,
        metadata={
            "help": "teacher weights loaded while the student samples (PAD, PLaD: yes; ADPA: no, each teacher is "
            "loaded only for its top-k pass)"
        },
    )
    teacher_scores: bool = field(
        default=True,
        metadata={
            "help": "the teacher scores responses (PAD: likelihood and MCQ; ADPA: the top-k pass); PLaD only samples "
            "from its teacher"
        },
    )
    training_head_chunked: bool = field(
        default=True,
        metadata={
            "help": "the training loss reads log-probs through the chunked head when logits_chunk is set (every "
            "loss: PAD, the ADPA family's top-k losses and its SFT stage, PLaD)"
        },
    )
    forwards_per_step: int = field(
        default=1,
        metadata={
            "help": "separate student forwards a training step's n sequences per example are split into (PAD, PLaD: "
            "one of all n; the ADPA family: one per field, y_w and y_l or ŷ): each back-propagates on its own, so one "
            "forward's head chunk and recomputed layer are alive at a time"
        },
    )
    samples_trained_student: bool = field(
        default=False,
        metadata={
            "help": "the run samples from its student after training it (PAD iterations > 1, ADPA+): under FSDP each "
            "process then holds a whole copy beside its shard (workbench.distributed.unsharded)"
        },
    )
    mcq: bool = field(default=True, metadata={"help": "PAD's MCQ selection pass (the longest teacher inputs)"})
    mcq_letters: int | None = field(
        default=None,
        metadata={
            "help": "options one MCQ prompt holds (the template's letters): a larger group is judged in balanced "
            "slices (workbench.scoring.option_slices); None: 8 (DEFAULT_MCQ_TEMPLATE), a gym judge's trained "
            "maximum for gym presets"
        },
    )
    vllm_engines: int = field(
        default=0,
        metadata={
            "help": "vLLM engines sharing the GPU with the loaded student (PAD: sampler and scorer stay up while it "
            "trains; ADPA/PLaD release theirs before training, so counting them is conservative): each reserves "
            "vllm_gpu_memory"
        },
    )
    vllm_gpu_memory: float = field(default=0.0, metadata={"help": "GPU share per vLLM engine (0: vLLM's 0.9)"})
    device: str | None = field(default=None, metadata={"help": "'cuda' or 'cpu' (default: CUDA when available)"})
    dtype: str | None = field(
        default=None,
        metadata={"help": "weights dtype (default: bfloat16 on CUDA, else float32, as workbench.models.load)"},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "the student's training precision, the method configs' knob: 'bf16-mixed' (float32 weights, "
            "gradients and AdamW states, bfloat16 autocast), 'bf16-true' (weights in dtype), '32-true'; 'auto': "
            "bf16-mixed on CUDA in bfloat16, else the weights dtype (32-true in float32)"
        },
    )
    sampling_batch_size: int = 32
    scoring_batch_size: int = 32
    world_size: int = 1
    strategy: str = field(default="single", metadata={"help": "'single', 'ddp' or 'fsdp' (full shard)"})
    model_configs: Any = None

    def __post_init__(self):
        from workbench.logprobs import logits_chunk_setting
        from workbench.trainers import checkpointing_argument, env_training_overrides

        if self.device is None:
            import torch

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype is None:
            self.dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype={self.dtype!r}; use one of {sorted(DTYPE_BYTES)}")
        if self.precision == "auto":
            if self.dtype == "float32":
                self.precision = "32-true"
            else:
                self.precision = "bf16-mixed" if self.device.startswith("cuda") else "bf16-true"
        if self.precision not in ("bf16-mixed", "bf16-true", "32-true"):
            raise ValueError(f"precision={self.precision!r}; use 'auto', 'bf16-mixed', 'bf16-true' or '32-true'")
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = bool(env_training_overrides().get(checkpointing_argument()))
        if self.logits_chunk is None:
            self.logits_chunk = logits_chunk_setting()
        if self.prompt_tokens is None:
            self.prompt_tokens = 24 if self.student.startswith("gym-") else 512
        if self.samples_per_prompt is None:
            self.samples_per_prompt = self.n
        if self.strategy not in ("single", "ddp", "fsdp"):
            raise ValueError(f"strategy={self.strategy!r}; use 'single', 'ddp' or 'fsdp'")
        for name in ("quantization", "student_quantization"):
            if getattr(self, name) == "":
                setattr(self, name, None)
        if self.mcq_letters is None:
            self.mcq_letters = _gym_judge_letters(self.teacher) or 8
        if self.mcq_letters < 1:
            raise ValueError(f"mcq_letters={self.mcq_letters}; an MCQ prompt holds at least one option")

    @property
    def train_seq_len(self) -> int:
        """Prompt + response + end-of-sequence token."""
        return self.prompt_tokens + self.max_new_tokens + 1

    @property
    def mcq_slices(self) -> int:
        """MCQ prompts per group of n responses: 1, or balanced slices when n exceeds the template's letters."""
        return math.ceil(self.n / self.mcq_letters)

    @property
    def mcq_options(self) -> int:
        """Options in the longest MCQ prompt (the largest balanced slice)."""
        return math.ceil(self.n / self.mcq_slices)

    @property
    def mcq_seq_len(self) -> int:
        """PAD's MCQ prompt lists its responses (with letters) after the question, plus ~32 template tokens."""
        return self.prompt_tokens + self.mcq_options * (self.max_new_tokens + 4) + 32


def _gym_judge_letters(teacher: str | None) -> int | None:
    """The option letters a gym preset's judge was trained on (its build's ``mcq_options[1]``), else None."""
    if not teacher or not teacher.startswith("gym-"):
        return None
    from workbench.gym.build import SIZES
    from workbench.models import gym_preset

    try:
        found = gym_preset(teacher)
    except ValueError:
        return None
    return SIZES[found[0]].mcq_options[1] if found else None


def listwise_shape(values: Mapping) -> dict:
    """PAD: n student samples per prompt, scored by the teacher (likelihood and MCQ), both models loaded."""
    return {"samples_trained_student": int(values.get("iterations", 1) or 1) > 1}


def topk_pairs_shape(values: Mapping) -> dict:
    """The ADPA family: (y_w, y_l or ŷ) pairs against cached top-k teacher log-probs; one ŷ per prompt; each
    teacher loaded for its top-k pass only, then freed."""
    return {
        "teacher": values["teacher_dpo"],
        "teacher_ref": values.get("teacher_ref"),
        "n": 2,
        "forwards_per_step": 2,
        "samples_per_prompt": 1,
        "mcq": False,
        "teacher_in_training": False,
        "teacher_in_sampling": False,
        "samples_trained_student": values.get("method") == "adpa+"
        and values.get("state_source", "student") == "student",
    }


def pseudo_pairs_shape(values: Mapping) -> dict:
    """PLaD: pseudo-pairs sampled from both models; the teacher samples, is freed, and never scores."""
    return {
        "n": 2,
        "samples_per_prompt": 1,
        "mcq": False,
        "teacher_generates": True,
        "teacher_scores": False,
        "teacher_in_training": False,
    }


# a method's memory shape (its family's ``memory_shape`` in workbench.methods) -> the RunShape fields it implies
MEMORY_SHAPES = {"listwise": listwise_shape, "topk-pairs": topk_pairs_shape, "pseudo-pairs": pseudo_pairs_shape}


def run_shape(cfg_or_dict, **overrides) -> RunShape:
    """A RunShape from a RunShape, a method config dataclass (PadConfig...) or a dict of notebook parameters;
    keys RunShape does not know are ignored, ``overrides`` win. The method's memory shape (``MEMORY_SHAPES``) is
    the config's ``memory_shape``, or a dict's ``memory_shape`` key; PAD's listwise shape when none is named."""
    memory_shape = getattr(cfg_or_dict, "memory_shape", None)
    if isinstance(cfg_or_dict, RunShape):
        values = dataclasses.asdict(cfg_or_dict)
    elif dataclasses.is_dataclass(cfg_or_dict):
        values = dataclasses.asdict(cfg_or_dict)
    else:
        values = dict(cfg_or_dict)
    memory_shape = values.pop("memory_shape", None) or memory_shape or "listwise"
    if memory_shape not in MEMORY_SHAPES:
        raise ValueError(f"memory_shape={memory_shape!r}; use one of {sorted(MEMORY_SHAPES)}")
    for key, value in MEMORY_SHAPES[memory_shape](values).items():
        values.setdefault(key, value)
    # vLLM engines beside training: PAD's student sampler and teacher scorer; PLaD's sampler (one engine at a time)
    backends = [values.get("sampling_backend"), values.get("scoring_backend")]
    values.setdefault("vllm_engines", backends.count("vllm"))
    plad_sampling = values.get("teacher_generates") and values.get("sampling_backend") == "vllm"
    if values.get("scoring_backend") == "vllm" or plad_sampling:  # the teacher is served by vLLM, not loaded here
        values.setdefault("teacher_cached", True)
    if values.get("prompt_tokens") is None:  # gym prompts are short; real datasets: PAD filters long prompts
        values["prompt_tokens"] = 24 if str(values.get("dataset", "gym")) == "gym" else 512
    values.update(overrides)
    levers = values.get("sampling_levers")
    if isinstance(levers, Mapping) and "dequantize_4bit" in levers:  # the config's sampling lever switch
        values.setdefault("dequantize_4bit", bool(levers["dequantize_4bit"]))
    if values.get("lora") and isinstance(values["lora"], Mapping):  # a LoRA config dict
        lora = values["lora"]
        values.update(lora_r=lora.get("r", 8), lora_dropout=lora.get("lora_dropout", 0.05), lora=True)
    known = {f.name for f in dataclasses.fields(RunShape)}
    return RunShape(**{k: v for k, v in values.items() if k in known})
