"""The prompt-length policy of sampling: a prompt must leave room in the model's context for the response.

A prompt longer than the context (``max_position_embeddings``) minus the generation budget (``max_new_tokens``)
is refused, with the count and the rows named; with ``max_prompt_tokens`` set, prompts longer than that are cut to
it instead (the last user message loses its start: the end of a prompt, where the question usually is, is kept),
with a logged count. Never silently: a 50,000-character prompt once ran a gym PAD round for 118 s and 11.8 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from workbench.encoding import Messages, encode_prompt

logger = logging.getLogger("workbench.sampling")

SHOWN_ROWS = 10  # rows named in a message


class PromptTooLong(ValueError):
    """Prompts longer than the limit: ``rows`` (0-based indices) and their ``lengths`` in tokens."""

    def __init__(self, message: str, rows: list[int], lengths: list[int]):
        super().__init__(message)
        self.rows, self.lengths = rows, lengths


def model_context(model) -> int | None:
    """The positions a loaded model attends over (its config's ``max_position_embeddings``), or None when unknown
    (a model given by name or folder, a config without it)."""
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None) if config is not None else None
    return int(value) if isinstance(value, int) and value > 0 else None


def prompt_budget(context: int | None, max_new_tokens: int, max_prompt_tokens: int | None) -> int | None:
    """The most prompt tokens allowed: ``max_prompt_tokens`` when set (it must fit the context with the
    response), else the context minus ``max_new_tokens``; None when neither is known."""
    room = None if context is None else context - max_new_tokens
    if room is not None and room < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} fills the model's context of {context} positions: no "
            f"room for a prompt; lower max_new_tokens"
        )
    if max_prompt_tokens is None:
        return room
    if max_prompt_tokens < 1:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens}; use a positive number of tokens, or None for the "
            f"model's context minus max_new_tokens"
        )
    if room is not None and max_prompt_tokens > room:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} with max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {context} positions; use max_prompt_tokens ≤ {room}"
        )
    return max_prompt_tokens


def _rows_text(rows: Sequence[int], lengths: Sequence[int]) -> str:
    shown = ", ".join(f"{row} ({n} tokens)" for row, n in zip(rows[:SHOWN_ROWS], lengths[:SHOWN_ROWS]))
    return shown + (f", … {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else "")


def fit_prompts(
    tokenizer,
    prompts: list[Messages],
    *,
    context: int | None,
    max_new_tokens: int,
    max_prompt_tokens: int | None = None,
) -> list[Messages]:
    """``prompts`` (chat messages) checked against the prompt budget (:func:`prompt_budget`): returned unchanged
    when all fit; over-long ones cut to ``max_prompt_tokens`` when it is set (logged with a count), else
    :class:`PromptTooLong` naming the count and rows."""
    budget = prompt_budget(context, max_new_tokens, max_prompt_tokens)
    if budget is None:
        return prompts
    lengths = [len(encode_prompt(tokenizer, m)) for m in prompts]
    over = [i for i, n in enumerate(lengths) if n > budget]
    if not over:
        return prompts
    over_lengths = [lengths[i] for i in over]
    if max_prompt_tokens is None:
        raise PromptTooLong(
            f"{len(over)} of {len(prompts)} prompts are longer than the {budget} tokens the model's context allows "
            f"({context} positions − max_new_tokens={max_new_tokens}): rows {_rows_text(over, over_lengths)}; "
            f"shorten or drop them, or set max_prompt_tokens (≤ {budget}) to cut them to that length",
            over,
            over_lengths,
        )
    fitted = list(prompts)
    for i in over:
        fitted[i] = _cut(tokenizer, prompts[i], budget, i)
    logger.warning(
        "cut %d of %d prompts to max_prompt_tokens=%d (their last user message loses its start): rows %s",
        len(over),
        len(prompts),
        budget,
        _rows_text(over, over_lengths),
    )
    return fitted


def _cut(tokenizer, messages: Messages, budget: int, row: int) -> Messages:
    """``messages`` with the start of the last user message dropped until the rendered prompt fits ``budget``."""
    content = messages[-1]["content"]
    ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    keep = len(ids)
    for _ in range(8):  # decoding and re-encoding a cut may shift a token or two
        excess = len(encode_prompt(tokenizer, [*messages[:-1], {**messages[-1], "content": content}])) - budget
        if excess <= 0:
            return [*messages[:-1], {**messages[-1], "content": content}]
        keep -= excess
        if keep < 1:
            break
        content = tokenizer.decode(ids[-keep:], skip_special_tokens=True)
    raise PromptTooLong(
        f"row {row}: the prompt cannot be cut to max_prompt_tokens={budget}: its other turns and the "
        f"chat template alone take more; raise max_prompt_tokens or shorten its earlier turns",
        [row],
        [len(encode_prompt(tokenizer, messages))],
    )
