"""Byte counts of a run's terms: weights and optimizer states, activations saved for backward, inference phases."""

from __future__ import annotations

from workbench.memory.dims import (
    INT8_BYTES_PER_PARAM,
    LORA_TARGETS,
    NF4_BYTES_PER_PARAM,
    SCORING_CHUNK,
    SCORING_LOGIT_BYTES,
    ModelDims,
)

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


def sampling_dequant_bytes(dims: ModelDims, quantization: str | None, act_bytes: int, dequantize_4bit: bool) -> dict:
    """A quantized model's dequantization while it samples: with the ``dequantize_4bit`` lever a 4-bit model's
    decoder linears are dequantized once for the call (every one in the compute dtype, ``dequantized_weights``),
    else one layer at a time on the fly (``dequantize``)."""
    if quantization == "4bit" and dequantize_4bit:
        return {"dequantized_weights": dims.layers * dims.layer_linear_params * act_bytes}
    return {"dequantize": dequant_transient_bytes(dims, quantization, act_bytes)}


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
