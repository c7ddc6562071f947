"""Row validation: each invalid row named with its field, problem and fix; raised or filtered with counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from workbench.data.columns import (
    PREFERENCE_COLUMNS,
    PROMPT_ROLES,
    SCORE_COLUMNS,
    DataValidationError,
    Kind,
    Message,
    OnInvalid,
    logger,
)
from workbench.data.schemas import require_columns

# reason → (what it means, how to fix it); the keys are the counts returned by ``filter_invalid_rows``.
REASONS: dict[str, tuple[str, str]] = {
    "missing": ("a field is null", "fill it in, remove the row, or pass on_invalid='filter'"),
    "wrong_type": (
        "a field is not a list of {'role', 'content'} messages (or a score is not a number)",
        "convert it (pass schema=<preset> if the data is in a hub dataset's native schema), "
        "or pass on_invalid='filter'",
    ),
    "empty": ("a field is empty or blank after strip", "remove the row or pass on_invalid='filter'"),
    "bad_role": (
        "roles out of place",
        "a prompt must end with a user turn and chosen/rejected hold assistant turns only "
        "(messages: end with an assistant turn); fix the roles or pass on_invalid='filter'",
    ),
    "identical": (
        "chosen == rejected",
        "a pair with identical responses carries no preference; remove the row or pass on_invalid='filter'",
    ),
    "prompt_too_long": (
        "prompt longer than the limit",
        "raise the limit, or pass on_invalid='filter' to drop long prompts",
    ),
}


@dataclass(frozen=True)
class InvalidRow:
    """One invalid row: its index, the first offending field, the reason key and a human-readable problem."""

    row: int
    field: str
    reason: str
    problem: str

    @property
    def message(self) -> str:
        """``row 17: field 'chosen' is empty; remove the row or pass on_invalid='filter'``."""
        return f"row {self.row}: field '{self.field}' {self.problem}; {REASONS[self.reason][1]}"


def _message_list_problem(value: Any) -> tuple[str, str] | None:
    """(reason, problem) if ``value`` is not a non-empty list of messages with non-blank string content."""
    if value is None:
        return "missing", "is missing (null)"
    if not isinstance(value, list):
        return "wrong_type", f"must be a list of {{'role', 'content'}} messages, got {type(value).__name__}"
    if not value:
        return "empty", "is empty (no messages)"
    for j, msg in enumerate(value):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            return "wrong_type", f"message {j} must be a dict with 'role' and 'content', got {msg!r:.60}"
        if msg["content"] is None:
            return "missing", f"is missing content (message {j} has content null)"
        if not isinstance(msg["content"], str) or not isinstance(msg["role"], str):
            return "wrong_type", f"message {j} must have string 'role' and 'content'"
        if msg["role"] not in PROMPT_ROLES:
            return (
                "bad_role",
                f"has unknown role {msg['role']!r} in message {j} (expected system/user/assistant)",
            )
        if not msg["content"].strip():
            return "empty", f"is empty (message {j} has blank content)"
    return None


def _prompt_length(prompt: list[Message], tokenizer: Any | None) -> int:
    """Summed characters of the message contents, or tokens of the chat-formatted prompt given a tokenizer."""
    if tokenizer is None:
        return sum(len(m["content"]) for m in prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _length_problem(
    prompt: list[Message], max_prompt_chars: int | None, tokenizer: Any | None, max_prompt_tokens: int | None
) -> str | None:
    if max_prompt_chars is not None:
        n = _prompt_length(prompt, None)
        if n > max_prompt_chars:
            return f"is too long ({n} chars > max_prompt_chars={max_prompt_chars})"
    if tokenizer is not None and max_prompt_tokens is not None:
        n = _prompt_length(prompt, tokenizer)
        if n > max_prompt_tokens:
            return f"is too long ({n} tokens > max_prompt_tokens={max_prompt_tokens})"
    return None


def _preference_row_problem(
    row: Mapping[str, Any],
    max_prompt_chars: int | None,
    tokenizer: Any | None,
    max_prompt_tokens: int | None,
) -> tuple[str, str, str] | None:
    """(field, reason, problem) of the first problem in a preference row, or None."""
    for name in PREFERENCE_COLUMNS:
        found = _message_list_problem(row.get(name))
        if found:
            return (name, *found)
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    if prompt[-1]["role"] != "user":
        return "prompt", "bad_role", f"must end with a user turn, got {prompt[-1]['role']!r}"
    for name, completion in (("chosen", chosen), ("rejected", rejected)):
        roles = {m["role"] for m in completion}
        if roles != {"assistant"}:
            return name, "bad_role", f"must hold assistant turns only, got roles {sorted(roles)}"
    if [m["content"].strip() for m in chosen] == [m["content"].strip() for m in rejected]:
        return "rejected", "identical", "is identical to 'chosen'"
    too_long = _length_problem(prompt, max_prompt_chars, tokenizer, max_prompt_tokens)
    if too_long:
        return "prompt", "prompt_too_long", too_long
    for name in SCORE_COLUMNS:
        score = row.get(name)
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            return name, "wrong_type", f"must be a number or null, got {type(score).__name__}"
    return None


def _messages_row_problem(
    row: Mapping[str, Any],
    max_prompt_chars: int | None,
    tokenizer: Any | None,
    max_prompt_tokens: int | None,
) -> tuple[str, str, str] | None:
    """(field, reason, problem) of the first problem in a ``messages`` row, or None."""
    messages = row.get("messages")
    found = _message_list_problem(messages)
    if found:
        return ("messages", *found)
    roles = [m["role"] for m in messages]
    if roles[-1] != "assistant":
        return "messages", "bad_role", f"must end with an assistant turn, got {roles[-1]!r}"
    if "user" not in roles:
        return "messages", "bad_role", "has no user turn"
    too_long = _length_problem(messages[:-1], max_prompt_chars, tokenizer, max_prompt_tokens)
    if too_long:
        return (
            "messages",
            "prompt_too_long",
            "prompt (all turns before the last) " + too_long.removeprefix("is "),
        )
    return None


_ROW_CHECKS = {"preference": _preference_row_problem, "messages": _messages_row_problem}


def find_invalid_rows(
    ds: Dataset,
    kind: Kind = "preference",
    *,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
) -> list[InvalidRow]:
    """All invalid rows of ``ds``, each reported once under its first problem.

    Args:
        ds: a dataset in the ``kind`` format.
        kind: ``"preference"`` (prompt/chosen/rejected) or ``"messages"``.
        max_prompt_chars: limit on the summed characters of the prompt's message contents.
        tokenizer: with ``max_prompt_tokens``, limit the chat-formatted prompt's token count instead/as well.
        max_prompt_tokens: token limit (needs ``tokenizer``).

    Returns:
        ``InvalidRow`` per bad row, in row order.

    Raises:
        DataValidationError: a required column is absent (no row can be kept).
    """
    require_columns(ds, kind)
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer; pass tokenizer=... or use max_prompt_chars")
    check = _ROW_CHECKS[kind]
    invalid = []
    i = 0
    for batch in ds.iter(batch_size=1024):
        for values in zip(*batch.values()):
            found = check(dict(zip(batch, values)), max_prompt_chars, tokenizer, max_prompt_tokens)
            if found:
                invalid.append(InvalidRow(i, *found))
            i += 1
    return invalid


def _raise_first(invalid: list[InvalidRow]) -> None:
    if not invalid:
        return
    first = invalid[0]
    counts = Counter(r.reason for r in invalid)
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    raise DataValidationError(
        f"{first.message} ({len(invalid)} invalid row(s) in total: {summary})",
        row=first.row,
        field=first.field,
        reason=first.reason,
    )


def filter_invalid_rows(
    ds: Dataset,
    kind: Kind = "preference",
    *,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Drop invalid rows; log one line per reason on ``workbench.data``.

    Args: as ``find_invalid_rows``.

    Returns:
        ``(kept, counts)``: the dataset without the invalid rows, and ``{reason: rows dropped}`` (each row
        counted once, under its first problem, so the counts sum to the rows dropped).
    """
    invalid = find_invalid_rows(
        ds, kind, max_prompt_chars=max_prompt_chars, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens
    )
    counts: dict[str, int] = {}
    for r in invalid:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    for reason, n in counts.items():
        first = next(r for r in invalid if r.reason == reason)
        logger.warning(
            "dropped %d of %d rows: %s (%s; first: %s)", n, len(ds), reason, REASONS[reason][0], first.message
        )
    if not invalid:
        return ds, counts
    bad = {r.row for r in invalid}
    return ds.select([i for i in range(len(ds)) if i not in bad]), counts


def _validate(
    ds: Dataset,
    kind: Kind,
    on_invalid: OnInvalid,
    max_prompt_chars: int | None,
    tokenizer: Any | None,
    max_prompt_tokens: int | None,
) -> Dataset:
    if on_invalid == "filter":
        kept, _ = filter_invalid_rows(
            ds,
            kind,
            max_prompt_chars=max_prompt_chars,
            tokenizer=tokenizer,
            max_prompt_tokens=max_prompt_tokens,
        )
        return kept
    if on_invalid == "raise":
        _raise_first(
            find_invalid_rows(
                ds,
                kind,
                max_prompt_chars=max_prompt_chars,
                tokenizer=tokenizer,
                max_prompt_tokens=max_prompt_tokens,
            )
        )
        return ds
    raise ValueError(f"on_invalid must be 'raise' or 'filter', got {on_invalid!r}")


def validate_preference_rows(
    ds: Dataset,
    *,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
    on_invalid: OnInvalid = "raise",
) -> Dataset:
    """Check a preference dataset; raise on the first bad row, or drop bad rows with logged counts.

    Args:
        ds: columns ``prompt``, ``chosen``, ``rejected`` (optional ``score_chosen``, ``score_rejected``).
        max_prompt_chars, tokenizer, max_prompt_tokens: prompt length limits (see ``find_invalid_rows``).
        on_invalid: ``"raise"`` → ``DataValidationError``; ``"filter"`` → ``filter_invalid_rows``.

    Returns:
        ``ds`` unchanged ("raise") or without the invalid rows ("filter").
    """
    return _validate(ds, "preference", on_invalid, max_prompt_chars, tokenizer, max_prompt_tokens)


def validate_sft_rows(
    ds: Dataset,
    *,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
    on_invalid: OnInvalid = "raise",
) -> Dataset:
    """``validate_preference_rows`` for the ``messages`` format (prompt = all turns before the last)."""
    return _validate(ds, "messages", on_invalid, max_prompt_chars, tokenizer, max_prompt_tokens)
