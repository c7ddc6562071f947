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

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 packs two weights per byte; one absmax per 64-weight block, stored as fp32 (4/64 B) or, with double
# quantisation, as uint8 (1/64 B) plus one fp32 per 256 blocks (QLoRA §2)
NF4_BYTES_PER_PARAM = {False: 0.5 + 4 / 64, True: 0.5 + 1 / 64 + 4 / (64 * 256)}
INT8_BYTES_PER_PARAM = 1.0 + 4 / 4096  # LLM.int8: one byte per weight plus per-row scales (approximate)
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # CUDA context + cuBLAS workspace: assumed, not measured here
SCORING_CHUNK = 256  # positions per chunk: gather_token_logps, and workbench.scoring's head (DEFAULT_LOGITS_CHUNK)
SCORING_LOGIT_BYTES = 8  # per element of a scoring head chunk: float32 logits + log-sum-exp's float32 temporary
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # peft "all-linear" on a decoder (lm_head excluded)


# --- model dimensions ---


@dataclass(frozen=True)
class ModelDims:
    """What the memory arithmetic needs from a decoder-only transformer's config."""

    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied_embeddings: bool
    attention: str = "sdpa"  # "sdpa" | "eager" (Gemma-2: eager, for its attention soft-capping)
    norms_per_layer: int = 2  # Llama 2, Gemma-2 4 (pre and post norms)
    attn_softcap: bool = False
    mask_kinds: int = 1  # (B, 1, T, T) additive masks eager attention builds per forward (Gemma-2: full and sliding)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i), "down": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Parameters of a separate output head (0 when tied to the input embedding)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (self.layers * self.norms_per_layer + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_linear_params + self.embedding_params + self.head_params + self.norm_params


def dims_from_config(config, name: str = "") -> ModelDims:
    """ModelDims of a ``transformers`` config (or a dict of its ``config.json`` fields)."""
    if isinstance(config, Mapping):
        config = dict(config)
        get = config.get
    else:
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    if isinstance(config, Mapping) and "text_config" in config:
        return dims_from_config(config["text_config"], name)
    model_type = get("model_type") or "llama"
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    gemma2 = model_type in ("gemma2", "gemma3", "gemma3_text")
    attention = get("_attn_implementation") or ("eager" if model_type == "gemma2" else "sdpa")
    return ModelDims(
        name=name or str(get("_name_or_path") or model_type),
        model_type=model_type,
        vocab=int(get("vocab_size")),
        hidden=hidden,
        layers=int(get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        intermediate=int(get("intermediate_size")),
        tied_embeddings=bool(get("tie_word_embeddings", True)),
        attention=attention,
        norms_per_layer=4 if gemma2 else 2,
        attn_softcap=bool(get("attn_logit_softcapping")),
        mask_kinds=_mask_kinds(get("layer_types"), gemma2 and bool(get("sliding_window"))),
    )


def _mask_kinds(layer_types, alternating_sliding: bool) -> int:
    """How many (B, 1, T, T) masks a forward builds: one per attention kind of ``layer_types`` (a hub config.json
    of Gemma-2 has none; its model alternates sliding and full layers)."""
    if layer_types:
        return len(set(layer_types))
    return 2 if alternating_sliding else 1


def _gym_dims(name: str) -> ModelDims | None:
    from workbench.models import gym_preset

    preset = gym_preset(name)
    if preset is None:
        return None
    from workbench.gym.build import SIZES
    from workbench.gym.tokenizer import build_tokenizer

    size, role = preset
    shape = SIZES[size].student if role == "student" else SIZES[size].teacher
    return dims_from_config(shape.llama_config(build_tokenizer()), name)


def _config_in_folder(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name.replace("/", "--") / "config.json", folder / name / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def model_dims(name_or_config, model_configs: str | Path | Mapping | None = None) -> ModelDims:
    """ModelDims of a model name (gym preset, folder, hub id) or config; see the module docstring for lookup.

    ``model_configs`` (or ``$WORKBENCH_MODEL_CONFIGS``, a folder) is searched first for hub ids.
    """
    if not isinstance(name_or_config, str):
        return dims_from_config(name_or_config)
    name = name_or_config
    model_configs = model_configs if model_configs is not None else os.environ.get("WORKBENCH_MODEL_CONFIGS")
    if isinstance(model_configs, Mapping):
        if name in model_configs:
            found = model_configs[name]
            if isinstance(found, (str, Path)):
                path = Path(found)
                return dims_from_config(json.loads((path / "config.json" if path.is_dir() else path).read_text()), name)
            return dims_from_config(found, name)
    elif model_configs:
        path = _config_in_folder(Path(model_configs), name)
        if path is not None:
            return dims_from_config(json.loads(path.read_text()), name)
    gym = _gym_dims(name)
    if gym is not None:
        return gym
    local = Path(name) / "config.json"
    if local.is_file():
        return dims_from_config(json.loads(local.read_text()), name)
    from workbench.models import GGUF_PRESETS, LAYER_DROP_PRESETS, resolve

    if name in GGUF_PRESETS or name in LAYER_DROP_PRESETS:
        return dims_from_config(json.loads((Path(resolve(name)) / "config.json").read_text()), name)
    from transformers import AutoConfig

    try:
        return dims_from_config(AutoConfig.from_pretrained(name), name)
    except (OSError, ValueError) as error:  # ValueError: not a valid hub id
        raise OSError(
            f"cannot read the config of {name!r} (offline, or not a model id); pass model_configs= a folder of "
            f"'<org>--<name>/config.json' files, or set $WORKBENCH_MODEL_CONFIGS"
        ) from error


# --- parameters and their states ---


def weight_bytes(
    dims: ModelDims,
    dtype_bytes: int,
    quantization: str | None = None,
    *,
    double_quant: bool = True,
    kbit_prepared: bool = False,
) -> dict[str, int]:
    """Bytes of a model's weights: decoder linears (NF4/int8 when quantized), embeddings and head, norms.

    bitsandbytes quantizes the decoder's linear layers only; embeddings, the output head and norms stay in the
    compute dtype, and ``prepare_model_for_kbit_training`` (QLoRA training) upcasts them to float32.
    """
    linear = dims.layers * dims.layer_linear_params
    if quantization == "4bit":
        linear_bytes = linear * NF4_BYTES_PER_PARAM[double_quant]
    elif quantization == "8bit":
        linear_bytes = linear * INT8_BYTES_PER_PARAM
    elif quantization is None:
        linear_bytes = linear * dtype_bytes
    else:
        raise ValueError(f"quantization={quantization!r}; use None, '4bit' or '8bit'")
    other_bytes = 4 if (quantization and kbit_prepared) else dtype_bytes
    return {
        "linear": int(linear_bytes),
        "embeddings": (dims.embedding_params + dims.head_params) * other_bytes,
        "norms": dims.norm_params * other_bytes,
    }


def fsdp_layer_params(dims: ModelDims) -> int:
    """Parameters of one decoder layer: one FSDP unit of accelerate's transformer-layer wrap."""
    return dims.layer_linear_params + dims.norms_per_layer * dims.hidden


def fsdp_resident_bytes(
    dims: ModelDims, dtype_bytes: int, world: int, gathered_bytes: int | None = None
) -> dict[str, int]:
    """A student's weights on each of ``world`` processes while FSDP2 (accelerate's preparation) trains it: every
    parameter as a 1/world shard, plus the whole output group (final norm, output layer, and the input embedding
    when tied), which stays gathered from forward to backward, plus two decoder layers gathered at a time (the one
    running and the one prefetched). Mixed precision gathers in the compute dtype (``gathered_bytes``: accelerate's
    ``MixedPrecisionPolicy(param_dtype=bfloat16)``) over float32 shards."""
    gathered = dtype_bytes if gathered_bytes is None else gathered_bytes
    output_group = dims.hidden + (dims.embedding_params if dims.tied_embeddings else dims.head_params)
    return {
        "student_weights": dims.params * dtype_bytes // world,
        "fsdp_output_group": output_group * gathered,
        "fsdp_gathered_layers": 2 * fsdp_layer_params(dims) * gathered,
    }


def lora_params(dims: ModelDims, r: int, targets=LORA_TARGETS) -> int:
    """LoRA parameters: r·(in + out) per targeted linear layer, per decoder layer (A: r×in, B: out×r)."""
    shapes = dims.linear_shapes()
    return dims.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def adamw_state_bytes(trainable_params: int, param_bytes: int) -> int:
    """AdamW keeps two moments per trainable parameter, in the parameter's dtype: 2·P·bytes."""
    return 2 * trainable_params * param_bytes


def gradient_bytes(trainable_params: int, param_bytes: int) -> int:
    """One gradient per trainable parameter, in the parameter's dtype."""
    return trainable_params * param_bytes


# --- activations saved for backward ---


def layer_activation_bytes(
    dims: ModelDims,
    seq_len: int,
    act_bytes: int,
    *,
    frozen_base: bool = False,
    lora_r: int | None = None,
    lora_dropout: float = 0.0,
    mask_bytes: int = 1,
    lora_targets=LORA_TARGETS,
    autocast: bool = False,
) -> int:
    """Bytes autograd saves per token in one decoder layer (multiply by batch·seq tokens and layers).

    Counted from the layer's operations (b = activation bytes, h hidden, q = heads·head_dim, i intermediate):
    RMSNorm keeps its float32 input and (trainable weight only) the normalised value; a trainable linear keeps
    its input; attention keeps q, k, v (k, v repeated to all heads when grouped, as ``repeat_kv`` does with a
    padding mask), its output, the log-sum-exp and the padding mask (sdpa) or the T×T probabilities (eager);
    the MLP keeps gate, up, act(gate) and their product. LoRA (frozen base) adds per targeted layer the float32
    dropout output and dropout mask (``mask_bytes``: 1 on CUDA, 4 on CPU) or, without dropout, a float32 copy
    of the input, plus ``lora_A``'s output.

    Under ``autocast`` (mixed precision: float32 weights, ``act_bytes`` = 2 the compute dtype) the residual stream
    stays float32, so every RMSNorm keeps float32 values, and each linear layer saves its own compute-dtype cast of
    its input (q, k, v and gate, up cast the same normed input once each); the rest is as in the compute dtype.
    The weights' compute-dtype copies that autocast saves are counted apart (:func:`autocast_weight_bytes`).

    Args:
        seq_len: tokens per sequence T (the mask and eager attention are T×T per sequence).
    Returns:
        bytes per token per layer.
    """
    if autocast and frozen_base:
        raise ValueError(
            "autocast is counted for a fully trained student; a LoRA student's base is frozen in the "
            "compute dtype (no autocast)"
        )
    b, h, q, i, H = act_bytes, dims.hidden, dims.q_dim, dims.intermediate, dims.heads
    gemma_norm = dims.norms_per_layer == 4
    grouped = dims.kv_heads < dims.heads
    kv = q if grouped else dims.kv_dim
    total = 0
    # RMSNorm: float32 input copy (+ normalised value when its weight trains); Gemma keeps both in float32
    if gemma_norm or autocast:
        total += dims.norms_per_layer * (4 * h + (0 if frozen_base else 4 * h) + 4)
    else:
        total += dims.norms_per_layer * (4 * h + (0 if frozen_base else b * h) + 4)
    if autocast:  # q, k, v, gate and up each save their own cast of the (float32) normed input
        total += 5 * b * h
    elif not frozen_base:  # inputs of the attention and MLP input projections (the norms' outputs)
        total += 2 * b * h
    # attention: q, k, v after RoPE (+ repeat_kv); output (also o_proj's input)
    total += b * (q + 2 * kv) + b * q
    if dims.attention == "eager":
        # T×T per head: softmax output in float32, its cast to the compute dtype, tanh output when soft-capped
        total += H * seq_len * (4 + (b if b != 4 else 0) + (b if dims.attn_softcap else 0))
    else:
        total += 4 * H + seq_len * b  # log-sum-exp (float32) and the padding mask, one per layer
    # MLP: act(gate) keeps gate; the product keeps act and up; down_proj keeps the product (trainable only)
    total += 3 * b * i + (0 if frozen_base else b * i)
    if lora_r:
        shapes = dims.linear_shapes()
        ins = [shapes[t][0] for t in lora_targets]
        if lora_dropout > 0:
            total += sum(ins) * (4 + mask_bytes)
        elif b != 4:
            total += sum(ins) * 4  # each LoRA layer casts its input to float32 for lora_A
        else:  # float32: lora_A shares the saved norm outputs and attention output; only down's input is new
            total += 2 * 4 * h + 4 * i
        total += len(ins) * lora_r * 4
    return total


def final_activation_bytes(
    dims: ModelDims, act_bytes: int, *, frozen_base: bool, chunked: bool, autocast: bool = False
) -> int:
    """Bytes per token saved outside the decoder layers: the final norm (and its output, kept by a trainable
    head or by the chunked head's checkpoint), embedding ids. Under ``autocast`` the final norm runs in float32:
    the chunked head's checkpoint keeps its float32 output, an unchunked head its compute-dtype cast."""
    b, h = act_bytes, dims.hidden
    float_norm = dims.norms_per_layer == 4 or autocast
    norm = (8 * h if float_norm else 4 * h + (0 if frozen_base else b * h)) + 4
    keeps_output = chunked or not frozen_base
    output_bytes = 4 if (autocast and chunked) else b
    return norm + (output_bytes * h if keeps_output else 0) + 8


def autocast_weight_bytes(dims: ModelDims, act_bytes: int, *, layers: int, head: bool) -> int:
    """The compute-dtype copies of float32 weights that autocast makes and autograd saves for backward: the linear
    layers of ``layers`` decoder layers, and the output layer's (the input embedding's when tied) with ``head``.
    The embedding lookup itself is not autocast."""
    head_params = dims.embedding_params if dims.tied_embeddings else dims.head_params
    return act_bytes * (layers * dims.layer_linear_params + (head_params if head else 0))


def checkpointed_layer_bytes(dims: ModelDims, act_bytes: int) -> int:
    """With gradient checkpointing a layer keeps only its input hidden state: b·h per token (float32 under autocast:
    the residual stream)."""
    return act_bytes * dims.hidden


def logits_peak_bytes(
    sequences: int, seq_len: int, vocab: int, logits_bytes: int, *, chunk: int | None, checkpointed_chunks: bool = False
) -> int:
    """Peak bytes of the logits and log-softmax buffers around the loss of a training step.

    Unchunked (``student_token_logps`` default): the float32 logits (or their float32 copies per 256-position
    chunk) stay saved for backward, 4·N·V; log-sum-exp's backward, grad·exp(x − lse), holds three float32
    temporaries of a chunk at once while it is still saved; in bfloat16 the full-size gradient of the logits
    accumulates across chunks (2·b·N·V). Chunked with checkpointing (``WORKBENCH_LOGITS_CHUNK``): only one
    chunk exists at a time: c·B·V·(logits, float32 copy, three float32 temporaries, gradient in compute dtype).

    Args:
        sequences: B sequences of ``seq_len`` tokens; vocab: V.
    """
    tokens = sequences * seq_len
    if checkpointed_chunks:
        c = min(chunk, seq_len)
        per_elem = (4 if logits_bytes == 4 else logits_bytes + 4) + 12 + (0 if logits_bytes == 4 else logits_bytes)
        return sequences * c * vocab * per_elem
    c = min(chunk or SCORING_CHUNK, seq_len)
    saved = 4 * tokens * vocab
    chunk_grads = 3 * 4 * sequences * c * vocab
    full_grads = 2 * logits_bytes * tokens * vocab if (logits_bytes != 4 and seq_len > c) else 0
    return saved + chunk_grads + full_grads


def backward_transient_bytes(dims: ModelDims, tokens: int, act_bytes: int, residual_bytes: int | None = None) -> int:
    """Gradient buffers alive while one layer back-propagates: its MLP's three (N, i) gradients and two (N, h) of
    the residual stream (float32 under autocast: ``residual_bytes``)."""
    residual = act_bytes if residual_bytes is None else residual_bytes
    return tokens * (act_bytes * 3 * dims.intermediate + residual * 2 * dims.hidden)


# --- inference phases ---


def kv_cache_bytes(dims: ModelDims, sequences: int, length: int, act_bytes: int) -> int:
    """KV cache of generation: layers × 2 (K and V) × sequences × length × kv_heads·head_dim × bytes."""
    return dims.layers * 2 * sequences * length * dims.kv_dim * act_bytes


def forward_transient_bytes(dims: ModelDims, sequences: int, seq_len: int, act_bytes: int) -> int:
    """One layer's live tensors in a no-grad forward, at the larger of its two moments (nothing is kept for a
    backward, so attention's tensors are freed before the MLP runs):

    * attention: the layer's input (also its residual) and its normed copy, q/k/v/out (k, v repeated to the query
      heads), and for eager attention the T×T scores at softmax, its peak: the scores in the compute dtype, their
      float32 copy (``softmax(..., dtype=float32)`` converts a bfloat16 input before it computes; float16 on CUDA
      has a fused path without it, counted here all the same) and the float32 probabilities;
    * MLP: the layer's input (the caller still holds it), the new residual and its normed copy, and act(gate), up
      and their product (the gate projection is freed once activated).

    Eager attention's additive (B, 1, T, T) masks, one per attention kind, live through the whole forward.
    Measured on an H200 (``bench/bench_recipe_gpu.py``, Gemma-2-9B's MCQ pass, 8 × 2608 tokens): counting the
    softmax as 6 bytes per score and no masks left the phase 17% under the measured peak.
    """
    tokens = sequences * seq_len
    scores = masks = 0
    if dims.attention == "eager":
        squares = sequences * seq_len * seq_len
        scores = squares * dims.heads * (act_bytes + 4 + (4 if act_bytes != 4 else 0))
        masks = squares * act_bytes * dims.mask_kinds
    attention = tokens * act_bytes * (2 * dims.hidden + 4 * dims.q_dim) + scores
    mlp = tokens * act_bytes * (3 * dims.hidden + 3 * dims.intermediate)
    return masks + max(attention, mlp)


def dequant_transient_bytes(dims: ModelDims, quantization: str | None, act_bytes: int) -> int:
    """A quantized linear layer is dequantized on the fly: its largest weight in the compute dtype."""
    if not quantization:
        return 0
    return max(a * b for a, b in dims.linear_shapes().values()) * act_bytes


def scoring_bytes(
    dims: ModelDims, sequences: int, seq_len: int, act_bytes: int, *, head_positions: int
) -> dict[str, int]:
    """Peak of a no-grad scoring pass of ``workbench.scoring``: the larger of its two moments, never B·T·V.

    * inside the decoder: one layer's transients (:func:`forward_transient_bytes`);
    * at the output head: the final hidden states (B, T, H) in the compute dtype (or the response rows gathered
      from them, no more) plus the logits of ``head_positions`` positions per row at a time — float32 logits and
      log-sum-exp's one float32 temporary, 8 bytes each (the compute-dtype head output, 2 + 4 < 8, is freed
      before; Gemma-2's soft-capping runs in place). Likelihood: ``min(chunk, response tokens)``; MCQ: 1.

    Args:
        sequences: B rows per scoring batch of ``seq_len`` tokens.
        head_positions: positions per row that the head is applied to at once.
    Returns:
        {term: bytes} of the larger moment.
    """
    in_decoder = {"layer_transient": forward_transient_bytes(dims, sequences, seq_len, act_bytes)}
    at_head = {
        "hidden_states": sequences * seq_len * dims.hidden * act_bytes,
        "head_logits_chunk": sequences * min(head_positions, seq_len) * dims.vocab * SCORING_LOGIT_BYTES,
    }
    return max((in_decoder, at_head), key=lambda terms: sum(terms.values()))


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


def _method_defaults(values: Mapping) -> dict:
    """What a method's parameters imply about its memory: ADPA/DCKD (``teacher_dpo``/``teacher_ref``) train on
    pairs against cached top-k teacher log-probs; PLaD (``loss='plad_*'``) trains on pseudo-pairs sampled from both
    models; PAD (the rest) trains on n student samples with both models loaded."""
    if "teacher_dpo" in values:  # one ŷ per prompt; each teacher loaded for its top-k pass only, then freed
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
    if str(values.get("loss", "")).startswith("plad"):  # the teacher samples, is freed, and never scores
        return {
            "n": 2,
            "samples_per_prompt": 1,
            "mcq": False,
            "teacher_generates": True,
            "teacher_scores": False,
            "teacher_in_training": False,
        }
    return {"samples_trained_student": int(values.get("iterations", 1) or 1) > 1}


def run_shape(cfg_or_dict, **overrides) -> RunShape:
    """A RunShape from a RunShape, a method config dataclass (PadConfig...) or a dict of notebook parameters;
    keys RunShape does not know are ignored, ``overrides`` win."""
    if isinstance(cfg_or_dict, RunShape):
        values = dataclasses.asdict(cfg_or_dict)
    elif dataclasses.is_dataclass(cfg_or_dict):
        values = dataclasses.asdict(cfg_or_dict)
    else:
        values = dict(cfg_or_dict)
    for key, value in _method_defaults(values).items():
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
    if values.get("lora") and isinstance(values["lora"], Mapping):  # a LoRA config dict
        lora = values["lora"]
        values.update(lora_r=lora.get("r", 8), lora_dropout=lora.get("lora_dropout", 0.05), lora=True)
    known = {f.name for f in dataclasses.fields(RunShape)}
    return RunShape(**{k: v for k, v in values.items() if k in known})


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
        "dequantize": dequant_transient_bytes(student, shape.student_quantization, sb),
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
            "dequantize": dequant_transient_bytes(teacher, shape.quantization, b),
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


# --- command line: the estimate of a recipe ---


def recipe_values(path: str | Path) -> dict:
    """A recipe file's parameters plus the RunShape fields of its ``# @estimate {json}`` header line (sequence
    lengths and the like): what its estimate is computed from."""
    import re

    import yaml

    text = Path(path).read_text()
    extra = re.search(r"^# @estimate (\{.*\})$", text, re.M)
    return {**(yaml.safe_load(text) or {}), **(json.loads(extra.group(1)) if extra else {})}


def recipe_estimate(
    path: str | Path, *, model_configs=None, decode_step_s: float = 0.0, **overrides
) -> tuple[MemoryEstimate, dict | None]:
    """Estimate and time of a recipe file: :func:`recipe_values` and the ``# @time {json}`` (``estimate_time``
    arguments) line of its header (``decode_step_s``: :func:`estimate_time`'s floor on a decode step)."""
    import re

    values = {**recipe_values(path), **overrides}
    timing = re.search(r"^# @time (\{.*\})$", Path(path).read_text(), re.M)
    hours = (
        estimate_time(values, model_configs=model_configs, decode_step_s=decode_step_s, **json.loads(timing.group(1)))
        if timing
        else None
    )
    return estimate(values, model_configs=model_configs), hours


def header_lines(result: MemoryEstimate, hours: dict | None) -> dict[str, str]:
    """The recipe header's generated comment lines, keyed by their fixed opening words."""
    phases = ", ".join(f"{phase} {result.total(phase) / GIB:.1f}" for phase in result.phases)
    lines = {
        "# estimated peak memory": f"# estimated peak memory (workbench.memory.estimate, not measured): "
        f"{result.peak_gib:.1f} GiB per GPU, in phase {result.peak_phase}",
        "#   phases (GiB):": f"#   phases (GiB): {phases}",
    }
    if hours:
        gpu, mfu = hours["assumptions"]["gpu"], hours["assumptions"]["mfu"]
        lines["# estimated time"] = (
            f"# estimated time (workbench.memory.estimate_time, {gpu} at {mfu:.0%} MFU, "
            f"not measured): {hours['gpu_hours']:.1f} GPU-hours"
        )
        lines["#   stages (GPU-hours):"] = "#   stages (GPU-hours): " + ", ".join(
            f"{k} {v:.1f}" for k, v in hours["stages"].items()
        )
    return lines


def update_recipe_header(path: str | Path, *, model_configs=None) -> list[str]:
    """Rewrite a recipe's generated header lines (peak memory, phases, time, stages) from the current estimator;
    returns the lines that changed. Every other line, hand-written notes included, is kept as it is."""
    path = Path(path)
    result, hours = recipe_estimate(path, model_configs=model_configs)
    wanted = header_lines(result, hours)
    old_lines = path.read_text().splitlines(keepends=True)
    new_lines, changed, seen = [], [], set()
    for line in old_lines:
        opening = next((k for k in wanted if line.startswith(k)), None)
        if opening is not None and opening not in seen:
            seen.add(opening)
            if line.rstrip("\n") != wanted[opening]:
                changed.append(wanted[opening])
            line = wanted[opening] + "\n"
        new_lines.append(line)
    missing = set(wanted) - seen
    if missing:
        raise ValueError(f"{path}: no header line starting with {sorted(missing)}; copy the header of another recipe")
    path.write_text("".join(new_lines))
    return changed


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Estimated peak memory (and GPU-hours) of recipe files.")
    parser.add_argument("recipes", nargs="+", help="recipes/*.yaml")
    parser.add_argument("--model-configs", default=None, help="folder of <org>--<name>/config.json (offline)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the breakdown")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rewrite each recipe's generated header lines (memory, phases, time) in place",
    )
    parser.add_argument(
        "--strategy",
        choices=["single", "ddp", "fsdp"],
        default=None,
        help="the launch to estimate per process (with --world-size): accelerate/ddp.yaml or fsdp.yaml",
    )
    parser.add_argument("--world-size", type=int, default=None, help="processes (GPUs) of that launch")
    parser.add_argument(
        "--decode-step-s",
        type=float,
        default=0.0,
        help="seconds per decode step of a sampling batch, as bench/bench_recipe_gpu.py measures it "
        "(seconds_per_decode_step): the time estimate's floor on a step (default 0: bandwidth-"
        "bound decoding, as an engine with CUDA graphs nears)",
    )
    args = parser.parse_args(argv)
    launch = {k: v for k, v in (("strategy", args.strategy), ("world_size", args.world_size)) if v is not None}
    if launch and args.update:
        parser.error("--update writes the recipe's single-GPU header; drop --strategy/--world-size")
    for path in args.recipes:
        if args.update:
            changed = update_recipe_header(path, model_configs=args.model_configs)
            print(f"{path}: " + ("\n  ".join(["updated", *changed]) if changed else "up to date"))
            continue
        result, hours = recipe_estimate(
            path, model_configs=args.model_configs, decode_step_s=args.decode_step_s, **launch
        )
        if args.json:
            print(json.dumps({"recipe": str(path), **result.to_dict(), "time": hours}))
        else:
            print(f"== {path}\n{result}")
            if hours:
                print(
                    f"  estimated {hours['gpu_hours']:.1f} GPU-hours on {hours['assumptions']['gpu']}: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in hours["stages"].items())
                )


if __name__ == "__main__":
    main()
