"""Model -> token log-probs: the output head applied in chunks, with or without gradient.

The no-grad scorers never hold (B, T, V) logits: the decoder gives the final (normed) hidden states (B, T, H) and
the head (with Gemma-2's final-logit soft-capping) is applied only where a distribution is read, ``chunk``
positions per row at a time. The training path (:func:`student_token_logps`) recomputes each head chunk in
backward, so no (B, L, V) logits tensor is kept for the gradient either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial

import torch

logger = logging.getLogger("workbench.scoring")


DEFAULT_LOGITS_CHUNK = 256  # positions per row per head chunk when $WORKBENCH_LOGITS_CHUNK is off (memory.py too)


# config fields whose model forward rescales the head's logits in a way head_logits does not (Cohere, Granite)
UNMODELLED_LOGIT_SCALES = ("logit_scale", "logits_scaling")


_warned: set[str] = set()


def gather_token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """log softmax(logits)[label] per position, computed ``chunk`` positions at a time.

    Args:
        logits: (B, T, V), ``logits[:, t]`` predicts ``labels[:, t]``.
        labels: (B, T) token ids (any value where masked; clamped to a valid id).
    Returns:
        token_logps: (B, T).
    """
    out = []
    for start in range(0, logits.shape[1], chunk):
        part = logits[:, start : start + chunk].float()  # (B, c, V)
        ids = labels[:, start : start + chunk].clamp(min=0).unsqueeze(-1)
        # $\log p(y_t) = f_t - \log Z_t$
        out.append(part.gather(-1, ids).squeeze(-1) - torch.logsumexp(part, dim=-1))
    return torch.cat(out, dim=1)


def scoring_chunk(logits_chunk: int | None = None) -> int:
    """Positions per row per head chunk: ``logits_chunk``, else ``$WORKBENCH_LOGITS_CHUNK``, else 256."""

    chunk = logits_chunk if logits_chunk is not None else (logits_chunk_setting() or DEFAULT_LOGITS_CHUNK)
    if int(chunk) < 1:
        raise ValueError(f"logits_chunk={logits_chunk!r}; use a positive number of positions such as 128")
    return int(chunk)


def head_logits(hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """The output head on final hidden states, as the model's forward computes its logits, in float32 (no grad).

    Gemma-2 soft-caps the final logits: $f \\leftarrow c \\tanh(f / c)$, here in place (one (·, V) buffer, not
    three as the autograd-safe :func:`_head_logps_at` needs).

    Args:
        hidden: (..., H) after the decoder's final norm.
    Returns:
        logits: (..., V) float32.
    """
    logits = head(hidden).float()
    if softcap:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def hidden_state_head(model) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]] | str:
    """``(decoder, head_fn)`` of a causal LM (unwrapped from DDP / peft), or the reason the logits cannot be
    recomputed from the decoder's hidden states (the caller then runs the plain forward).

    ``decoder(input_ids=, attention_mask=, use_cache=False).last_hidden_state`` is (B, T, H) after the final norm;
    ``head_fn(hidden (..., H)) -> (..., V)`` float32 logits equal to the forward's (Gemma-2/3 soft-capping included).
    """

    inner = unwrapped(model)
    peft_config = getattr(inner, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "a prompt-learning adapter adds virtual tokens in the peft wrapper's forward"
    get_decoder, get_head = getattr(inner, "get_decoder", None), getattr(inner, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return f"{type(inner).__name__} has no get_decoder() / get_output_embeddings()"
    decoder, head = get_decoder(), get_head()
    if decoder is None or decoder is inner or head is None:
        return f"{type(inner).__name__} exposes no separate decoder and output head"
    config = getattr(inner, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in UNMODELLED_LOGIT_SCALES:
        if getattr(text_config, name, None) not in (None, 1, 1.0):
            return f"its config sets {name}={getattr(text_config, name)!r}, which its forward applies to the logits"
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return decoder, lambda hidden: head_logits(hidden, head, softcap)


def warn_full_logits(model, reason: str) -> None:
    key = f"{type(model).__name__}: {reason}"
    if key not in _warned:
        _warned.add(key)
        logger.warning("scoring %s with full (B, T, V) logits (model(...).logits): %s", type(model).__name__, reason)


def response_logit_chunks(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor, chunk: int
):
    """Float32 logits at the target positions of one batch, flat in row-major order, a chunk at a time (no grad).

    The decoder runs once; the head is applied to the target positions only, ``chunk`` positions per row
    (B·chunk rows) at a time, so at most (B, chunk, V) float32 logits exist while a consumer reduces each chunk.

    Args:
        input_ids, attention_mask: (B, L) on the model's device.
        target_mask: (B, L-1) bool, True where position t's distribution (which scores token t+1) is wanted.
    Yields:
        (logits (m, V), start) for consecutive slices ``[start, start + m)`` of the M = target_mask.sum() targets,
        in the order of ``target_mask.nonzero()``.
    """
    step = chunk * input_ids.shape[0]
    found = hidden_state_head(model)
    if isinstance(found, str):
        warn_full_logits(model, found)
        rows = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][target_mask]  # (M, V)
        head_fn = torch.Tensor.float
    else:
        decoder, head_fn = found
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = hidden[:, :-1][target_mask]  # (M, H): the head never sees prompt or padding positions
        del hidden  # (B, L, H) freed before any logits exist
    for start in range(0, len(rows), step):
        yield head_fn(rows[start : start + step]), start


def batch_response_token_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor, chunk: int
) -> torch.Tensor:
    """log p(y_t | y_<t, x) at the target positions of one batch (see :func:`response_logit_chunks`): (M,)."""
    labels = input_ids[:, 1:][target_mask]  # (M,)
    parts = [
        gather_token_logps(logits[None], labels[None, start : start + len(logits)], chunk=len(logits))[0]
        for logits, start in response_logit_chunks(model, input_ids, attention_mask, target_mask, chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=input_ids.device)


LOGITS_CHUNK_ENV = "WORKBENCH_LOGITS_CHUNK"


def logits_chunk_setting() -> int | None:
    """Positions per chunk for :func:`student_token_logps` from ``$WORKBENCH_LOGITS_CHUNK`` (unset or 0: off)."""
    raw = os.environ.get(LOGITS_CHUNK_ENV, "").strip()
    if not raw:
        return None
    try:
        chunk = int(raw)
    except ValueError:
        raise ValueError(f"${LOGITS_CHUNK_ENV}={raw!r}; use a number of positions such as 128, or 0 for off") from None
    if chunk < 0:
        raise ValueError(f"${LOGITS_CHUNK_ENV}={chunk}; use a positive number of positions, or 0 for off")
    return chunk or None


def student_token_logps(model, batch: dict, *, logits_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the batch's response tokens under ``model`` (with gradient).

    ``logits_chunk`` (default ``$WORKBENCH_LOGITS_CHUNK``, off) computes them ``logits_chunk`` positions at a time
    from the final hidden states (:func:`chunked_token_logps`) so no (B, L, V) logits tensor is kept for backward.

    Returns ``token_logps (B, L-1)`` and ``mask (B, L-1)`` where position t scores token t+1.
    """

    chunk = logits_chunk if logits_chunk is not None else logits_chunk_setting()
    if chunk:
        token_logps = chunked_token_logps(model, batch["input_ids"], batch["attention_mask"], chunk)
        return token_logps, batch["response_mask"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = gather_token_logps(logits[:, :-1], batch["input_ids"][:, 1:])
    return token_logps, batch["response_mask"][:, 1:]


def unwrapped(model):
    """The causal LM inside DDP / accelerate wrappers (a peft model forwards attribute access to its base)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _head_logps_at(hidden: torch.Tensor, ids: torch.Tensor, head, softcap: float | None) -> torch.Tensor:
    """log softmax(head(hidden)) at ``ids`` for one chunk: hidden (B, c, H), ids (B, c, J) -> (B, c, J)."""
    logits = head(hidden).float()  # (B, c, V)
    if softcap:  # Gemma-2 final-logit soft-capping, as its forward applies it
        logits = torch.tanh(logits / softcap) * softcap
    # $\log p(a) = f_a - \log Z$
    return logits.gather(-1, ids.clamp(min=0)) - torch.logsumexp(logits, dim=-1, keepdim=True)


def _head_function(head: torch.nn.Module):
    """The output head as a function of hidden states, for calls outside the model's forward.

    A head that FSDP2 shards in a group of its own (accelerate's FSDP2 puts the final norm, the output layer and tied
    input embeddings in one group that stays unsharded after forward) is applied through its weight: calling the
    module would run that group's hooks once per chunk, and the first chunk's post-backward would reshard (free) the
    weight the other chunks still read (a segfault on CPU, found by tests/test_accelerate.py). Its weight is the
    unsharded tensor from the end of forward until the group's own post-backward, which runs after every chunk's
    backward (the chunks read the final hidden states, the group's output), so the gradients land where FSDP
    reduce-scatters them."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return head
    if not isinstance(head, FSDPModule):
        return head
    weight, bias = head.weight, getattr(head, "bias", None)
    if type(weight).__name__ == "DTensor":
        raise RuntimeError(
            "the FSDP-sharded output layer is resharded after the model's forward, so the chunked head "
            "cannot read it: keep the output layer unsharded after forward (accelerate's FSDP2 does "
            "for its final-norm/output group), or train with logits_chunk 0"
        )
    return partial(torch.nn.functional.linear, weight=weight, bias=bias)


def output_vocab_size(model) -> int:
    """V of the model's output head (its logits' last dimension)."""
    inner = unwrapped(model)
    head = inner.get_output_embeddings()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else int(inner.config.vocab_size)


def chunked_logps_at(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    ids: torch.Tensor,
    chunk: int,
    *,
    output_hidden_states: bool = False,
):
    """The student's log-probs at ``ids`` through the output head ``chunk`` positions at a time, each chunk
    recomputed in backward.

    The model runs once with ``output_hidden_states`` and ``logits_to_keep=1`` (so its own forward, and any DDP
    wrapper's hooks, still run); the head is applied to the final (normed) hidden states per chunk under
    activation checkpointing, so at most (B, chunk, V) logits exist at a time, in forward and in backward.
    Equal to the full computation up to float rounding (tested), also under FSDP2 (:func:`_head_function`).

    Args:
        input_ids, attention_mask: (B, L).
        ids: (B, L-1, J) token ids per position; position t is the distribution over token t+1.
        output_hidden_states: also return the final hidden states (B, L, H) (PLaD's margin score reads them).
    Returns:
        logps (B, L-1, J), and the hidden states with ``output_hidden_states``.
    """
    from torch.utils.checkpoint import checkpoint

    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, use_cache=False
    )
    final = out.hidden_states[-1]  # (B, L, H), after the final norm
    hidden = final[:, :-1]
    inner = unwrapped(model)
    head = _head_function(inner.get_output_embeddings())
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    parts = [
        checkpoint(
            _head_logps_at,
            hidden[:, start : start + chunk],
            ids[:, start : start + chunk],
            head,
            softcap,
            use_reentrant=False,
        )
        for start in range(0, hidden.shape[1], chunk)
    ]
    logps = torch.cat(parts, dim=1)
    return (logps, final) if output_hidden_states else logps


def chunked_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """Token log-probs (B, L-1) through the chunked head (:func:`chunked_logps_at`); position t scores token t+1."""
    return chunked_logps_at(model, input_ids, attention_mask, input_ids[:, 1:, None], chunk)[..., 0]


def last_position_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """Float32 logits of the next token after each row's last real position (no grad): the decoder's
    hidden states (b, T, H), then the head on the b rows ``hidden[i, last[i]]`` only, never (b, T, V).

    Args:
        input_ids, attention_mask: (b, T), right-padded.
        last: (b,) index of each row's last real token.
    Returns:
        next_logits: (b, V).
    """
    rows = torch.arange(len(last), device=last.device)
    found = hidden_state_head(model)
    if isinstance(found, str):
        warn_full_logits(model, found)
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, last].float()
    decoder, head_fn = found
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head_fn(hidden[rows, last])  # (b, H) -> (b, V)
