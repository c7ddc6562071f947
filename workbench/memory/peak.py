"""The estimate itself: peak bytes per phase of a run's shape, and whether it fits a device."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.memory.dims import CUDA_CONTEXT_BYTES, DTYPE_BYTES, GIB, SCORING_CHUNK, model_dims
from workbench.memory.shape import VLLM_DEFAULT_GPU_SHARE, run_shape
from workbench.memory.terms import (
    adamw_state_bytes,
    autocast_weight_bytes,
    backward_transient_bytes,
    checkpointed_layer_bytes,
    dequant_transient_bytes,
    final_activation_bytes,
    forward_transient_bytes,
    fsdp_layer_params,
    fsdp_resident_bytes,
    gradient_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_peak_bytes,
    lora_params,
    sampling_dequant_bytes,
    scoring_bytes,
    weight_bytes,
)


@dataclass
class MemoryEstimate:
    """Predicted peak memory of a run: the peak phase and each phase's terms in bytes."""

    peak_bytes: int
    peak_phase: str
    phases: dict[str, dict[str, int]]
    assumptions: dict

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_gib": round(self.peak_gib, 3),
            "peak_phase": self.peak_phase,
            "phases": self.phases,
            "assumptions": self.assumptions,
        }

    def __str__(self) -> str:
        unit, scale = ("GiB", GIB) if self.peak_bytes >= GIB else ("MiB", 2**20)
        lines = [
            f"estimated peak memory {self.peak_bytes / scale:.2f} {unit} in phase '{self.peak_phase}' "
            f"(workbench.memory.estimate; device {self.assumptions['device']}, {self.assumptions['dtype']}, "
            f"student {self.assumptions.get('precision')})"
        ]
        for phase, terms in self.phases.items():
            lines.append(f"  {phase:<18} {sum(terms.values()) / scale:9.2f} {unit}")
            for term, value in sorted(terms.items(), key=lambda kv: -kv[1]):
                if value:
                    lines.append(f"    {term:<30} {value / scale:9.3f} {unit}")
        shown = {k: v for k, v in self.assumptions.items() if k not in ("device", "dtype", "precision")}
        lines.append("  assumptions: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


def estimate(cfg_or_dict, *, model_configs=None, **overrides) -> MemoryEstimate:
    """Peak memory of a run (bytes, per device) with a breakdown by phase and term; see the module docstring.

    Args:
        cfg_or_dict: a RunShape, a method config (``PadConfig``...) or a dict of notebook parameters (teacher,
            student, n, batch_size, quantization, lora, max_new_tokens ... ; unknown keys are ignored).
        model_configs: where to read hub models' configs offline (folder or mapping), see :func:`model_dims`.
        overrides: RunShape fields that win over ``cfg_or_dict`` (e.g. ``prompt_tokens=1024``).
    """
    shape = run_shape(cfg_or_dict, **overrides)
    configs = model_configs if model_configs is not None else shape.model_configs
    student = model_dims(shape.student, configs)
    teacher = model_dims(shape.teacher, configs) if shape.teacher and not shape.teacher_cached else None
    teacher_ref = model_dims(shape.teacher_ref, configs) if teacher and shape.teacher_ref else None
    b = DTYPE_BYTES[shape.dtype]
    # the student's weights: float32 under 32-true and (full fine-tuning) bf16-mixed, whose autocast computes in
    # bfloat16; a LoRA student's frozen base is in the compute dtype unless 32-true
    autocast = shape.precision == "bf16-mixed" and not shape.lora
    sb = 4 if (shape.precision == "32-true" or autocast) else b
    cuda = shape.device.startswith("cuda")
    world = max(1, shape.world_size)
    fsdp = shape.strategy == "fsdp" and world > 1

    # weights resident through the run
    kbit_student = bool(shape.student_quantization) and shape.lora
    student_w = weight_bytes(student, sb, shape.student_quantization, kbit_prepared=kbit_student)
    student_weights = sum(student_w.values())
    teacher_weights = sum(weight_bytes(teacher, b, shape.quantization).values()) if teacher else 0
    if teacher_ref is not None:  # scored after the first teacher is freed: the larger one is resident
        teacher_weights = max(teacher_weights, sum(weight_bytes(teacher_ref, b, shape.quantization).values()))
    # every process loads the whole student and samples with it; under FSDP the Trainer shards it for training
    common = {"student_weights": student_weights, "teacher_weights": teacher_weights}
    if cuda:
        common["cuda_context"] = CUDA_CONTEXT_BYTES
    in_training = dict(common, teacher_weights=teacher_weights if shape.teacher_in_training else 0)
    sharded = (
        fsdp_resident_bytes(student, sb, world, gathered_bytes=2 if autocast else None)
        if fsdp and not shape.lora
        else None
    )
    if sharded:
        in_training.update(sharded)
        if shape.samples_trained_student:  # later rounds sample a whole copy; the trained shards stay
            common["fsdp_student_shards"] = sharded["student_weights"]

    phases: dict[str, dict[str, int]] = {}
    # sampling: n responses per prompt, batched generate with a KV cache
    seqs = shape.sampling_batch_size * shape.samples_per_prompt
    phases["sampling"] = {
        **(common if shape.teacher_in_sampling else dict(common, teacher_weights=0)),
        "kv_cache": kv_cache_bytes(student, seqs, shape.train_seq_len, sb),
        "prefill_layer": forward_transient_bytes(student, seqs, shape.prompt_tokens, sb),
        "next_token_logits": seqs * student.vocab * (4 + sb),
        **sampling_dequant_bytes(student, shape.student_quantization, sb, shape.dequantize_4bit),
    }
    if autocast:
        # a bf16-mixed student samples under autocast (workbench.precision.autocast_of): one bfloat16 copy of its
        # weights for the call; its keys stay float32 after RoPE (the residual stream's dtype), values bfloat16
        phases["sampling"].update(
            autocast_weight_copies=autocast_weight_bytes(student, 2, layers=student.layers, head=True),
            kv_cache=kv_cache_bytes(student, seqs, shape.train_seq_len, 3),
            next_token_logits=seqs * student.vocab * (4 + 2),
        )
    if teacher is not None and shape.teacher_generates:
        phases["teacher_sampling"] = {
            **common,
            "kv_cache": kv_cache_bytes(teacher, shape.sampling_batch_size, shape.train_seq_len, b),
            "prefill_layer": forward_transient_bytes(teacher, shape.sampling_batch_size, shape.prompt_tokens, b),
            "next_token_logits": shape.sampling_batch_size * teacher.vocab * (4 + b),
            **sampling_dequant_bytes(teacher, shape.quantization, b, shape.dequantize_4bit),
        }
    # teacher scoring: likelihood pass (head on a chunk of response positions), then the longer MCQ pass (head on
    # the last position only); the scorers' chunk is $WORKBENCH_LOGITS_CHUNK as training's, else SCORING_CHUNK
    if teacher is not None and shape.teacher_scores:
        response_tokens = shape.max_new_tokens + 1
        passes = {"likelihood": (shape.train_seq_len, min(shape.logits_chunk or SCORING_CHUNK, response_tokens))}
        if shape.mcq:
            passes["mcq"] = (shape.mcq_seq_len, 1)
        for name, (length, head_positions) in passes.items():
            terms = scoring_bytes(teacher, shape.scoring_batch_size, length, b, head_positions=head_positions)
            phases[f"teacher_{name}"] = {
                **common,
                **{f"{name}_{k}": v for k, v in terms.items()},
                "dequantize": dequant_transient_bytes(teacher, shape.quantization, b),
            }

    # training step
    seqs, seq_len = shape.batch_size * shape.n, shape.train_seq_len
    tokens = seqs * seq_len
    frozen = bool(shape.lora)
    if shape.lora:
        trainable, param_bytes = lora_params(student, shape.lora_r), 4  # peft keeps adapters in float32
        head_grad = 0
    else:
        trainable, param_bytes = student.params, sb
        head_grad = (student.embedding_params if student.tied_embeddings else student.head_params) * param_bytes
    grads = gradient_bytes(trainable, param_bytes)
    states = adamw_state_bytes(trainable, param_bytes)
    reduce_scatter = 0
    if fsdp:
        # gradients and optimizer states live as shards; the output group's gradient is whole until that group's
        # reduce-scatter (early in backward); each layer's whole gradient meets its reduce-scatter copy there
        grads, states = grads // world, states // world
        # a layer's whole gradient, in the gathered dtype, beside its reduce-scatter copy
        reduce_scatter = 2 * fsdp_layer_params(student) * (2 if autocast else param_bytes) if not shape.lora else 0
    # a k-bit-prepared model runs its residual stream in float32; autocast computes in bfloat16 over a float32 one
    act_b = 4 if kbit_student else (2 if autocast else sb)
    residual_b = 4 if autocast else act_b
    per_layer = layer_activation_bytes(
        student,
        seq_len,
        act_b,
        frozen_base=frozen,
        lora_r=shape.lora_r if shape.lora else None,
        lora_dropout=shape.lora_dropout,
        mask_bytes=1 if cuda else 4,
        autocast=autocast,
    )
    head_chunk = shape.logits_chunk if shape.training_head_chunked else None
    chunked = bool(head_chunk)
    final = final_activation_bytes(student, act_b, frozen_base=frozen, chunked=chunked, autocast=autocast)
    # autocast's bfloat16 copies of the float32 weights (none under FSDP: it gathers them in bfloat16): all of them
    # in its cache at the end of forward; in backward, those autograd saved (with checkpointing, the recomputed
    # layer's; the chunked head recomputes its own per chunk)
    copies = autocast and not fsdp

    def casts(layers: int) -> int:
        return autocast_weight_bytes(student, act_b, layers=layers, head=not chunked) if copies else 0

    # the step's forwards (ADPA family: y_w, then y_l or ŷ) each keep their activations for backward, but back-
    # propagate one after the other: a recomputed layer, its buffers and a head chunk belong to one forward's rows
    forward_seqs = max(1, seqs // max(1, shape.forwards_per_step))
    forward_tokens = forward_seqs * seq_len
    if shape.gradient_checkpointing:  # layer inputs saved; one layer's activations exist again in its backward
        activations = tokens * (student.layers * checkpointed_layer_bytes(student, residual_b) + final)
        recomputed = forward_tokens * per_layer
        cast_start, cast_layer = casts(0), casts(1)
    else:
        activations, recomputed = tokens * (student.layers * per_layer + final), 0
        cast_start = cast_layer = casts(student.layers)
    # unchunked, every forward's logits stay saved until its backward: all rows count
    logits = logits_peak_bytes(
        forward_seqs if chunked else seqs, seq_len, student.vocab, act_b, chunk=head_chunk, checkpointed_chunks=chunked
    )
    transient = backward_transient_bytes(student, forward_tokens, act_b, residual_bytes=residual_b)
    ddp_buckets = grads if shape.strategy == "ddp" and world > 1 else 0
    base = {**in_training, "optimizer_states": states}
    candidates = {
        # start of backward: every saved activation, the logits buffers, the first (head) gradient
        "backward_start": {
            **base,
            "activations": activations,
            "logits_and_log_softmax": logits,
            "head_gradient": head_grad,
            "ddp_buckets": ddp_buckets,
            "autocast_weight_copies": cast_start,
        },
        # inside a layer's backward: activations of the layers below still saved, that layer's buffers
        "backward_layer": {
            **base,
            "activations": activations,
            "recomputed_layer": recomputed,
            "autocast_weight_copies": cast_layer,
            "backward_buffers": transient,
            "fsdp_reduce_scatter": reduce_scatter,
            # FSDP: the output group's gradient is reduce-scattered once backward leaves it, unless
            # the input embedding (the end of backward) shares its weight
            "head_gradient": head_grad // world if fsdp and not student.tied_embeddings else head_grad,
            "ddp_buckets": ddp_buckets,
        },
        # after backward / optimizer step: all gradients (fused AdamW, no extra copies)
        "optimizer_step": {**base, "gradients": grads, "ddp_buckets": ddp_buckets},
    }
    if shape.forwards_per_step > 1:
        # the last forward to back-propagate (ADPA family: y_w after y_l or ŷ) does so beside every gradient the
        # first left, with its own activations alone still saved
        later = {
            **base,
            "gradients": grads,
            "activations": activations * forward_seqs // seqs,
            "ddp_buckets": ddp_buckets,
        }
        candidates["later_forward_head"] = {
            **later,
            "logits_and_log_softmax": logits,
            "autocast_weight_copies": cast_start,
        }
        candidates["later_forward_layer"] = {
            **later,
            "recomputed_layer": recomputed,
            "backward_buffers": transient,
            "autocast_weight_copies": cast_layer,
            "fsdp_reduce_scatter": reduce_scatter,
        }
    if copies:
        # end of forward: autocast's cache holds every weight's copy until the loss is computed
        candidates["forward_end"] = {
            **base,
            "activations": activations,
            "ddp_buckets": ddp_buckets,
            "autocast_weight_copies": autocast_weight_bytes(student, act_b, layers=student.layers, head=True),
        }
    if sharded and not student.tied_embeddings:
        # FSDP, untied: the input embedding's own group is gathered again for its backward, last, when the saved
        # activations are gone; its whole gradient meets its reduce-scatter copy
        candidates["backward_embedding"] = {
            **base,
            "gradients": grads,
            "fsdp_gathered_embedding": student.embedding_params * (2 if autocast else sb),
            "fsdp_reduce_scatter": 2 * student.embedding_params * param_bytes,
        }
    worst = max(candidates, key=lambda k: sum(candidates[k].values()))
    phases["training"] = {k: v for k, v in candidates[worst].items()}
    phases["training"]["dequantize"] = dequant_transient_bytes(student, shape.student_quantization, sb)

    peak_phase = max(phases, key=lambda k: sum(phases[k].values()))
    assumptions = {
        "device": shape.device,
        "dtype": shape.dtype,
        "precision": shape.precision,
        "teacher": shape.teacher,
        "student": shape.student,
        "student_params": student.params,
        "trainable_params": trainable,
        "teacher_params": teacher.params if teacher else 0,
        "train_sequences": seqs,
        "train_seq_len": seq_len,
        "mcq_seq_len": shape.mcq_seq_len,
        "prompt_tokens": shape.prompt_tokens,
        "max_new_tokens": shape.max_new_tokens,
        "teacher_quantization": shape.quantization,
        "student_quantization": shape.student_quantization,
        "dequantize_4bit": shape.dequantize_4bit,
        "lora": shape.lora,
        "gradient_checkpointing": shape.gradient_checkpointing,
        "logits_chunk": shape.logits_chunk,
        "training_head_chunked": chunked,
        "teacher_cached": shape.teacher_cached,
        "strategy": shape.strategy,
        "world_size": world,
        "training_peak_at": worst,
        "vllm_engines": shape.vllm_engines,
        "vllm_gpu_memory": shape.vllm_gpu_memory or VLLM_DEFAULT_GPU_SHARE,
    }
    return MemoryEstimate(
        int(sum(phases[peak_phase].values())),
        peak_phase,
        {k: {t: int(v) for t, v in terms.items()} for k, terms in phases.items()},
        assumptions,
    )


class WillNotFitError(MemoryError):
    """The estimated peak memory exceeds the device's memory."""


def device_memory_bytes(device) -> tuple[int, str]:
    """(bytes available, description) of 'cuda', 'cuda:1', 'cpu', a torch.device, or a number of bytes."""
    if isinstance(device, (int, float)):
        return int(device), f"{device / GIB:.1f} GiB"
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return int(
            free
        ), f"cuda:{index} ({torch.cuda.get_device_name(index)}, {free / GIB:.1f} of {total / GIB:.1f} GiB free)"
    import psutil

    available = psutil.virtual_memory().available
    return int(available), f"cpu ({available / GIB:.1f} GiB available)"


def suggestions(shape: dict) -> list[str]:
    """The memory levers a run has not pulled yet, largest first."""
    tips = []
    if not shape.get("teacher_quantization") and shape.get("teacher") and not shape.get("teacher_cached"):
        tips.append("quantization='4bit' (teacher in NF4)")
    if not shape.get("lora"):
        tips.append("lora=True (train LoRA adapters instead of the full student)")
    if shape.get("precision") == "bf16-mixed" and not shape.get("lora"):
        tips.append(
            "FSDP over several GPUs (accelerate/fsdp.yaml), or precision='bf16-true' (half the student's "
            "memory, but AdamW steps under ~1/256 of a weight are lost at the papers' learning rates)"
        )
    tips.append("a smaller batch_size (with a larger gradient_accumulation_steps to keep the global batch)")
    if not shape.get("gradient_checkpointing"):
        tips.append("gradient checkpointing (gradient_checkpointing=True)")
    if not shape.get("logits_chunk"):
        tips.append("chunked log-probs (logits_chunk=128)")
    if not shape.get("teacher_cached") and shape.get("teacher"):
        tips.append("precomputed teacher scores (teacher_cached)")
    if shape.get("dequantize_4bit") and "4bit" in (
        shape.get("teacher_quantization"),
        shape.get("student_quantization"),
    ):
        tips.append("sampling_levers={'dequantize_4bit': False} (sample 4-bit, no dequantized copy)")
    return tips


def check_fits(estimate: MemoryEstimate, device="cuda", *, headroom: float = 0.0) -> MemoryEstimate:
    """Raise ``WillNotFitError`` when ``estimate`` (plus ``headroom`` as a fraction) exceeds the device's memory;
    return the estimate unchanged otherwise.

    ``device``: 'cuda', 'cuda:N', 'cpu', a torch.device, or a capacity in bytes.
    """
    capacity, described = device_memory_bytes(device)
    engines = estimate.assumptions.get("vllm_engines", 0)
    if engines and estimate.assumptions.get("device", "cuda").startswith("cuda"):
        share = estimate.assumptions["vllm_gpu_memory"]
        if engines * share >= 1:
            raise WillNotFitError(
                f"{engines} vLLM engines reserving {share:.0%} of the GPU each leave nothing for training; set "
                "vllm_gpu_memory (e.g. 0.3) so engines and training share the GPU"
            )
        # vLLM engines sit on the same GPU: training gets what they leave
        capacity *= 1 - engines * share
        described += f", less {engines} vLLM engine(s) at {share:.0%} each"
    needed = estimate.peak_bytes * (1 + headroom)
    if needed > capacity:
        tips = "; ".join(suggestions(estimate.assumptions))
        raise WillNotFitError(
            f"this run needs ~{needed / GIB:.1f} GiB (estimated peak in phase '{estimate.peak_phase}'), "
            f"device has {capacity / GIB:.1f} GiB: {described}; try {tips}"
        )
    return estimate
