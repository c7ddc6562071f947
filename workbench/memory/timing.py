"""GPU-hours of a run from FLOPs and memory bandwidth, to size it (not measured)."""

from __future__ import annotations

import math

from workbench.memory.dims import DTYPE_BYTES, model_dims
from workbench.memory.shape import run_shape
from workbench.memory.terms import kv_cache_bytes, weight_bytes

# --- time: a FLOP / bandwidth estimate, to size a run (not measured) ---

# dense bf16 peak FLOP/s and memory bandwidth (vendor datasheets); A800 = A100 with a slower interconnect
GPUS = {
    "A100-80GB": (312e12, 2.0e12),
    "A800-80GB": (312e12, 2.0e12),
    "H100-SXM": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "L40S": (362e12, 0.864e12),
    "RTX-4090": (165e12, 1.0e12),
}


def estimate_time(
    cfg_or_dict,
    *,
    prompts: int,
    iterations: int = 1,
    gpu: str = "A100-80GB",
    mfu: float = 0.35,
    bandwidth_efficiency: float = 0.6,
    fill: float = 0.5,
    decode_step_s: float = 0.0,
    model_configs=None,
    **overrides,
) -> dict:
    """GPU-hours of a run from FLOPs and bytes, per stage (an *estimate*; nothing is measured).

    Training costs 6·P FLOPs per token for full fine-tuning (forward 2P, backward 4P) and 4·P with LoRA (no
    weight gradients of the base), plus 2·P when gradient checkpointing recomputes the forward; scoring costs
    2·P per token; decoding is bandwidth-bound: every new token of a sampling batch reads the weights and the
    KV cache once. Sequences are assumed ``fill`` × their maximum length on average.

    ``decode_step_s`` is a floor on one decode step of a sampling batch (0: none): the bandwidth-bound step of a
    small model is ~1 ms on an H200, but an eager framework's per-step overhead can be far more — HF ``generate``
    of the recipes' LoRA students (LLaMA-3.2-1B to LLaMA-2-7B, 32-128 sequences) took 66-131 ms per step on an H200
    (``results/device/2026-12-04-h200``; a gVisor sandbox) — so pass the ``seconds_per_decode_step`` that
    ``bench/bench_recipe_gpu.py`` measures on your machine.

    Args:
        prompts: prompts per iteration (each gets n samples, teacher scores and one training pass).
        gpu: a key of ``GPUS``; mfu: achieved fraction of peak FLOP/s; bandwidth_efficiency likewise for bytes.
    Returns:
        {"gpu_hours": total, "stages": {stage: hours}, "assumptions": {...}}.
    """
    shape = run_shape(cfg_or_dict, **overrides)
    configs = model_configs if model_configs is not None else shape.model_configs
    student = model_dims(shape.student, configs)
    teacher = model_dims(shape.teacher, configs) if shape.teacher and not shape.teacher_cached else None
    flops, bandwidth = GPUS[gpu]
    flops, bandwidth = flops * mfu, bandwidth * bandwidth_efficiency
    b = DTYPE_BYTES[shape.dtype if shape.dtype != "float32" else "bfloat16"]
    prompt_len, response_len = fill * shape.prompt_tokens, fill * shape.max_new_tokens
    seq_len = prompt_len + response_len + 1
    student_bytes = sum(weight_bytes(student, b, shape.student_quantization).values())
    stages = {}
    # sampling: per batch of prompts, max_new_tokens decode steps reading weights + KV cache
    batches = math.ceil(prompts / shape.sampling_batch_size)
    kv = kv_cache_bytes(student, shape.sampling_batch_size * shape.samples_per_prompt, int(seq_len), b)
    decode = batches * shape.max_new_tokens * max((student_bytes + kv / 2) / bandwidth, decode_step_s)
    prefill = 2 * student.params * prompts * shape.samples_per_prompt * prompt_len / flops
    stages["sampling"] = decode + prefill
    if teacher is not None:
        teacher_tokens = prompts * shape.n * seq_len
        if shape.mcq:  # one MCQ prompt per group (or per balanced slice: each restates the question) holds all n
            teacher_tokens += prompts * (shape.mcq_slices * (prompt_len + 32) + shape.n * (response_len + 4))
        if shape.teacher_generates:
            teacher_bytes = sum(weight_bytes(teacher, b, shape.quantization).values())
            stages["teacher_sampling"] = batches * shape.max_new_tokens * max(teacher_bytes / bandwidth, decode_step_s)
        if shape.teacher_scores:
            stages["teacher_scoring"] = 2 * teacher.params * teacher_tokens * (2 if shape.teacher_ref else 1) / flops
    per_token = (4 if shape.lora else 6) + (2 if shape.gradient_checkpointing else 0)
    stages["training"] = per_token * student.params * prompts * shape.n * seq_len / flops
    hours = {k: iterations * v / 3600 for k, v in stages.items()}
    return {
        "gpu_hours": sum(hours.values()),
        "stages": hours,
        "assumptions": {
            "gpu": gpu,
            "mfu": mfu,
            "bandwidth_efficiency": bandwidth_efficiency,
            "fill": fill,
            "decode_step_s": decode_step_s,
            "prompts": prompts,
            "iterations": iterations,
        },
    }
