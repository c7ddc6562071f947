"""Peak-memory estimate of a distillation run, before any weight is loaded: ``estimate(cfg)`` and ``check_fits``.

A run has three phases and the peak is the largest of them:

* ``sampling``: the student generates n responses per prompt (KV cache, one layer's prefill activations);
* ``teacher_scoring``: the teacher's no-grad forward over (prompt, response) pairs and over the MCQ prompts that
  list all n responses; ``workbench.scoring`` keeps the final hidden states (B, T, H) and applies the head to
  one chunk of response positions at a time (likelihood) or to the last position only (MCQ), never (B, T, V);
* ``training``: one optimizer step of the student: weights, trainable parameters' gradients and AdamW states,
  the activations autograd saves for backward, and the transient logits / log-softmax buffers.

The teacher's weights sit in memory through every phase (``run_pad`` keeps it loaded) unless it is cached
(``teacher_cached=True``: its scores were computed beforehand).

Activation terms are counted tensor by tensor from what autograd saves in transformers' Llama and Gemma-2
layers (RMSNorm upcasts, q/k/v after RoPE and ``repeat_kv``, SDPA output and log-sum-exp, the padding mask,
the MLP's gate/up/act/product, and peft LoRA's dropout outputs, masks and ``lora_A`` outputs); with a frozen
base (LoRA) a linear layer saves no input for a weight gradient. The per-layer counts match the tensors saved by
autograd exactly for Llama and Gemma-2 in float32 and bfloat16, with and without LoRA (measured on CPU), and the
whole estimate is checked against the measured peak RSS of a training step in ``tests/test_memory.py``.
On a GPU it was measured once per method family: ``bench/bench_recipe_gpu.py`` on an H200 ran four QLoRA recipes'
real architectures (random weights), and every phase's ``torch.cuda.max_memory_allocated`` (plus the assumed
``CUDA_CONTEXT_BYTES``) lies within 15% of this estimate (``results/device/2026-12-04-h200/``, checked by
``tests/test_memory.py``); allocator fragmentation beyond that is not modelled.

Model dimensions come from a ``transformers`` config: a gym preset (no build needed), a local folder, a hub id
(``AutoConfig``; offline it needs the Hugging Face cache), or ``model_configs`` — a folder of
``<org>--<name>/config.json`` files or a mapping name → folder/config — so recipes are sized without a download.
"""

from workbench.memory.batch import AUTO_SAMPLING_BATCHES, fit_sampling_batch, resolve_sampling_batch
from workbench.memory.dims import (
    CUDA_CONTEXT_BYTES,
    DTYPE_BYTES,
    GIB,
    INT8_BYTES_PER_PARAM,
    LORA_TARGETS,
    NF4_BYTES_PER_PARAM,
    SCORING_CHUNK,
    SCORING_LOGIT_BYTES,
    ModelDims,
    dims_from_config,
    model_dims,
)
from workbench.memory.peak import (
    MemoryEstimate,
    WillNotFitError,
    check_fits,
    device_memory_bytes,
    estimate,
    suggestions,
)
from workbench.memory.recipes import header_lines, main, recipe_estimate, recipe_values, update_recipe_header
from workbench.memory.shape import VLLM_DEFAULT_GPU_SHARE, RunShape, run_shape
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
    scoring_bytes,
    weight_bytes,
)
from workbench.memory.timing import GPUS, estimate_time

__all__ = [
    "AUTO_SAMPLING_BATCHES",
    "fit_sampling_batch",
    "resolve_sampling_batch",
    "GIB",
    "DTYPE_BYTES",
    "NF4_BYTES_PER_PARAM",
    "INT8_BYTES_PER_PARAM",
    "CUDA_CONTEXT_BYTES",
    "SCORING_CHUNK",
    "SCORING_LOGIT_BYTES",
    "LORA_TARGETS",
    "ModelDims",
    "dims_from_config",
    "model_dims",
    "weight_bytes",
    "fsdp_layer_params",
    "fsdp_resident_bytes",
    "lora_params",
    "adamw_state_bytes",
    "gradient_bytes",
    "layer_activation_bytes",
    "final_activation_bytes",
    "autocast_weight_bytes",
    "checkpointed_layer_bytes",
    "logits_peak_bytes",
    "backward_transient_bytes",
    "kv_cache_bytes",
    "forward_transient_bytes",
    "dequant_transient_bytes",
    "scoring_bytes",
    "VLLM_DEFAULT_GPU_SHARE",
    "RunShape",
    "run_shape",
    "MemoryEstimate",
    "estimate",
    "WillNotFitError",
    "device_memory_bytes",
    "suggestions",
    "check_fits",
    "GPUS",
    "estimate_time",
    "recipe_values",
    "recipe_estimate",
    "header_lines",
    "update_recipe_header",
    "main",
]
