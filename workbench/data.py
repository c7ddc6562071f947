"""Preference and SFT data loaders returning ``datasets.Dataset`` in TRL's conversational formats.

Two standard formats leave this module:

* **preference** — ``prompt`` (messages ending with a user turn), ``chosen`` and ``rejected`` (assistant
  turns; one message each for every preset), optional float ``score_chosen`` / ``score_rejected``;
* **messages** (SFT) — ``messages``, a conversation ending with an assistant turn.

A message is ``{"role": "system" | "user" | "assistant", "content": str}``.

``source`` is a registered preset name (``PRESETS``: UltraFeedback, DPO-MIX-7K, HelpSteer2 with the ADPA
helpfulness rule, Anthropic-HH helpful), any hub id (``owner/name``), or a local ``.jsonl`` / ``.json`` /
``.parquet`` file. Each native schema has one converter (``SCHEMAS``); a local file in a hub dataset's
native schema goes through the same converter via ``schema=``::

    ds = load_preference_data("ultrafeedback", max_rows=2000)           # hub (GPU users)
    ds = load_preference_data("pairs.jsonl", schema="helpsteer2")       # local file, native schema

Rows are validated after conversion (``find_invalid_rows``): missing fields, wrong types, blank text,
wrong roles, chosen == rejected, over-long prompts. ``on_invalid="raise"`` raises ``DataValidationError``
naming the first bad row, its field, the problem and the fix; ``"filter"`` drops the bad rows and logs one
line per reason with its count on the ``workbench.data`` logger. Nothing is dropped silently.

The hub is reached only inside the load functions (``datasets.load_dataset``), never at import.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from datasets import Dataset

__all__ = [
    "DataValidationError",
    "InvalidRow",
    "DatasetPreset",
    "PRESETS",
    "SFT_PRESETS",
    "SCHEMAS",
    "MESSAGES_FEATURE",
    "load_preference_data",
    "load_sft_data",
    "find_invalid_rows",
    "validate_preference_rows",
    "validate_sft_rows",
    "filter_invalid_rows",
    "to_messages",
    "split_shared_prefix",
    "parse_hh_dialogue",
    "parse_helpsteer2_prompt",
    "convert_helpsteer2",
    "write_jsonl",
    "read_jsonl",
]

logger = logging.getLogger("workbench.data")

OnInvalid = Literal["raise", "filter"]
Kind = Literal["preference", "messages"]

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
SCORE_COLUMNS = ("score_chosen", "score_rejected")
PROMPT_ROLES = frozenset({"system", "user", "assistant"})
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

MESSAGES_FEATURE = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
PREFERENCE_FEATURES = datasets.Features({c: MESSAGES_FEATURE for c in PREFERENCE_COLUMNS})
SCORED_PREFERENCE_FEATURES = datasets.Features(
    {**PREFERENCE_FEATURES, **{c: datasets.Value("float64") for c in SCORE_COLUMNS}}
)
MESSAGES_FEATURES = datasets.Features({"messages": MESSAGES_FEATURE})

Message = dict[str, str]


# ----------------------------------------------------------------------------------------------------------
# Errors and validation
# ----------------------------------------------------------------------------------------------------------


class DataValidationError(ValueError):
    """A dataset row (or column) does not meet the standard format.

    Attributes:
        row: 0-based index of the first offending row in the converted dataset (None for a missing column).
        field: the offending column.
        reason: one of ``REASONS``.
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None, reason: str = ""):
        super().__init__(message)
        self.row = row
        self.field = field
        self.reason = reason


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


_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {"preference": PREFERENCE_COLUMNS, "messages": ("messages",)}
_ROW_CHECKS = {"preference": _preference_row_problem, "messages": _messages_row_problem}


def _require_columns(ds: Dataset, kind: Kind) -> None:
    if kind not in _REQUIRED_COLUMNS:
        raise ValueError(f"kind must be one of {sorted(_REQUIRED_COLUMNS)}, got {kind!r}")
    for name in _REQUIRED_COLUMNS[kind]:
        if name not in ds.column_names:
            raise DataValidationError(
                f"column '{name}' is missing (columns: {ds.column_names}); the {kind} format needs "
                f"{list(_REQUIRED_COLUMNS[kind])} — pass schema=<preset> if the data is in a hub dataset's "
                f"native schema (schemas: {sorted(SCHEMAS)})",
                field=name,
                reason="missing",
            )


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
    _require_columns(ds, kind)
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


# ----------------------------------------------------------------------------------------------------------
# Native schema → standard schema
# ----------------------------------------------------------------------------------------------------------


def _clean_messages(messages: Any) -> list[Message] | None:
    """Messages reduced to ``{"role", "content"}`` (None if not a list of dicts)."""
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        return None
    return [{"role": m.get("role"), "content": m.get("content")} for m in messages]


def split_shared_prefix(
    chosen: list[Message] | None, rejected: list[Message] | None
) -> tuple[list[Message] | None, list[Message] | None, list[Message] | None]:
    """Split two full conversations into (shared prompt, chosen completion, rejected completion).

    The prompt is the longest common prefix that ends with a user turn, capped so each completion keeps at
    least its last message (identical conversations then show up as chosen == rejected in validation).
    """
    chosen, rejected = _clean_messages(chosen), _clean_messages(rejected)
    if not chosen or not rejected:
        return None, chosen, rejected
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1]["role"] != "user":
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str | None) -> list[Message] | None:
    """Anthropic-HH ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` transcript → messages (stripped)."""
    if not isinstance(text, str):
        return None
    parts = _HH_TURN.split(text)
    messages = []
    if parts[0].strip():  # text before the first marker belongs to the opening user turn
        messages.append({"role": "user", "content": parts[0].strip()})
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _HH_ROLES[speaker], "content": content.strip()})
    return messages


_HELPSTEER2_TURN = re.compile(r"\s*<extra_id_1>(User|Assistant)[ \t]*\n?")
_HELPSTEER2_ROLES = {"User": "user", "Assistant": "assistant"}


def parse_helpsteer2_prompt(text: str | None) -> list[Message] | None:
    """HelpSteer2 prompt → messages.

    Multi-turn prompts are stored as
    ``{user 1}<extra_id_1>Assistant\\n{assistant 1}<extra_id_1>User\\n{user 2}`` (HelpSteer2 dataset card);
    the rated response answers the last user turn.
    """
    if not isinstance(text, str):
        return None
    parts = _HELPSTEER2_TURN.split(text)
    messages = [{"role": "user", "content": parts[0].strip()}]
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _HELPSTEER2_ROLES[speaker], "content": content.strip()})
    return messages


def _assistant(text: Any) -> list[Message] | None:
    return [{"role": "assistant", "content": text}] if isinstance(text, str) else None


def _user(text: Any) -> list[Message] | None:
    return [{"role": "user", "content": text}] if isinstance(text, str) else None


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _implicit_prompt_row(row: dict[str, Any]) -> dict[str, Any]:
    """chosen/rejected hold the whole conversation; the prompt is their shared prefix."""
    prompt, chosen, rejected = split_shared_prefix(row.get("chosen"), row.get("rejected"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _ultrafeedback_row(row: dict[str, Any]) -> dict[str, Any]:
    """HuggingFaceH4/ultrafeedback_binarized: prompt str; chosen/rejected = [user, assistant]."""
    out = _implicit_prompt_row(row)
    if not out["prompt"] and isinstance(row.get("prompt"), str):
        out["prompt"] = _user(row["prompt"])
    return {
        **out,
        "score_chosen": _float(row.get("score_chosen")),
        "score_rejected": _float(row.get("score_rejected")),
    }


def _ultrafeedback_cleaned_row(row: dict[str, Any]) -> dict[str, Any]:
    """argilla/ultrafeedback-binarized-preferences-cleaned: as H4's, scores in ``chosen-rating``."""
    out = _ultrafeedback_row({**row, "score_chosen": None, "score_rejected": None})
    return {
        **out,
        "score_chosen": _float(row.get("chosen-rating")),
        "score_rejected": _float(row.get("rejected-rating")),
    }


def _dpo_mix_row(row: dict[str, Any]) -> dict[str, Any]:
    """argilla/dpo-mix-7k: chosen/rejected = full conversations (system, multi-turn), ``*_rating`` scores."""
    out = _implicit_prompt_row(row)
    return {
        **out,
        "score_chosen": _float(row.get("chosen_rating")),
        "score_rejected": _float(row.get("rejected_rating")),
    }


def _hh_row(row: dict[str, Any]) -> dict[str, Any]:
    """Anthropic/hh-rlhf: chosen/rejected = raw transcripts; the shared prefix is the prompt."""
    return _implicit_prompt_row(
        {"chosen": parse_hh_dialogue(row.get("chosen")), "rejected": parse_hh_dialogue(row.get("rejected"))}
    )


def _map_rows(
    row_fn: Callable[[dict[str, Any]], dict[str, Any]], features: datasets.Features
) -> Callable[[Dataset], Dataset]:
    def convert(ds: Dataset) -> Dataset:
        return ds.map(row_fn, remove_columns=ds.column_names, features=features, desc=f"convert {row_fn.__name__}")

    convert.__name__ = f"convert{row_fn.__name__}"
    convert.__doc__ = row_fn.__doc__
    return convert


def convert_helpsteer2(ds: Dataset) -> Dataset:
    """nvidia/HelpSteer2 rows (one rated response each) → preference pairs by helpfulness (ADPA §4.1).

    The two responses to the same prompt form a pair; chosen = higher ``helpfulness``, rejected = lower;
    pairs with equal helpfulness are dropped ("excluding those where the scores ... are identical",
    ADPA §4.1). Responses are grouped by prompt text and paired in order of appearance, so a prompt that
    occurs twice yields two pairs; a leftover odd response is dropped. Both drops are logged with counts.
    Scores are the helpfulness ratings (0–4).
    """
    for name in ("prompt", "response", "helpfulness"):
        if name not in ds.column_names:
            raise DataValidationError(
                f"column '{name}' is missing (columns: {ds.column_names}); the helpsteer2 schema needs "
                "prompt, response, helpfulness",
                field=name,
                reason="missing",
            )
    columns = ds.select_columns(["prompt", "response", "helpfulness"]).to_dict()
    prompts, responses, helpfulness = columns["prompt"], columns["response"], columns["helpfulness"]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    rows, n_pairs, n_ties, n_unpaired = [], 0, 0, 0
    for p, idx in groups.items():
        n_unpaired += len(idx) % 2
        for a, b in zip(idx[0::2], idx[1::2]):
            n_pairs += 1
            if helpfulness[a] == helpfulness[b]:
                n_ties += 1
                continue
            hi, lo = (a, b) if helpfulness[a] > helpfulness[b] else (b, a)
            rows.append(
                {
                    "prompt": parse_helpsteer2_prompt(p),
                    "chosen": _assistant(responses[hi]),
                    "rejected": _assistant(responses[lo]),
                    "score_chosen": _float(helpfulness[hi]),
                    "score_rejected": _float(helpfulness[lo]),
                }
            )
    logger.info(
        "helpsteer2: %d responses → %d pairs; dropped %d tied pair(s) (equal helpfulness, ADPA §4.1) "
        "and %d unpaired response(s); kept %d pairs",
        len(ds),
        n_pairs,
        n_ties,
        n_unpaired,
        len(rows),
    )
    return Dataset.from_list(rows, features=SCORED_PREFERENCE_FEATURES)


def convert_standard(ds: Dataset) -> Dataset:
    """Rows already in (or close to) TRL's preference format.

    Plain strings are wrapped (prompt → one user turn, chosen/rejected → one assistant turn); without a
    ``prompt`` column the shared prefix of the chosen/rejected conversations is the prompt (TRL's implicit
    prompt). Other columns are kept.
    """
    if "prompt" not in ds.column_names and {"chosen", "rejected"} <= set(ds.column_names):
        if isinstance(ds.features["chosen"], datasets.Value):
            raise DataValidationError(
                "column 'prompt' is missing and chosen/rejected are plain strings, so there is no prompt to "
                "recover; add a prompt column or pass schema=<preset> (e.g. 'hh-rlhf' for raw transcripts)",
                field="prompt",
                reason="missing",
            )
        return ds.map(_implicit_prompt_row, desc="convert implicit prompt")
    wrap = {"prompt": _user, "chosen": _assistant, "rejected": _assistant}
    string_columns = [c for c in wrap if c in ds.column_names and isinstance(ds.features[c], datasets.Value)]
    if not string_columns:
        return ds
    features = ds.features.copy()
    for c in string_columns:
        features[c] = MESSAGES_FEATURE

    def wrap_strings(row: dict[str, Any]) -> dict[str, Any]:
        return {c: wrap[c](row[c]) for c in string_columns}

    return ds.map(wrap_strings, features=features, desc="wrap strings as messages")


def convert_messages(ds: Dataset) -> Dataset:
    """SFT rows with a ``messages`` column (e.g. HuggingFaceH4/deita-10k-v0-sft); other columns dropped."""
    _require_columns(ds, "messages")
    extra = [c for c in ds.column_names if c != "messages"]
    return ds.remove_columns(extra) if extra else ds


# native schema name → dataset-level converter to the standard preference format
SCHEMAS: dict[str, Callable[[Dataset], Dataset]] = {
    "standard": convert_standard,
    "ultrafeedback": _map_rows(_ultrafeedback_row, SCORED_PREFERENCE_FEATURES),
    "ultrafeedback-cleaned": _map_rows(_ultrafeedback_cleaned_row, SCORED_PREFERENCE_FEATURES),
    "dpo-mix-7k": _map_rows(_dpo_mix_row, SCORED_PREFERENCE_FEATURES),
    "helpsteer2": convert_helpsteer2,
    "hh-rlhf": _map_rows(_hh_row, PREFERENCE_FEATURES),
}


# ----------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPreset:
    """A hub dataset and how to read it.

    ``splits`` maps the workbench's split names (``train``, ``test``) to the hub's; a hub split name is
    accepted as well, and a slice suffix is kept (``"train[:1%]"``).
    """

    hub_id: str
    schema: str = field(metadata={"help": "key of SCHEMAS (preference) or 'messages' (SFT)"})
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    config: str | None = None
    data_dir: str | None = None
    description: str = ""

    def hub_split(self, split: str) -> str:
        """The hub split for ``split`` (a workbench name or a hub name, optionally with a slice)."""
        base, bracket, rest = split.partition("[")
        if base in self.splits:
            base = self.splits[base]
        elif base not in self.splits.values():
            known = sorted(set(self.splits) | set(self.splits.values()))
            raise ValueError(
                f"{self.hub_id} has no split {split!r}; known: {known} (make a held-out set with "
                "ds.train_test_split(test_size=..., seed=...) if you need one)"
            )
        return base + bracket + rest

    @property
    def convert(self) -> Callable[[Dataset], Dataset]:
        return convert_messages if self.schema == "messages" else SCHEMAS[self.schema]


PRESETS: dict[str, DatasetPreset] = {
    "ultrafeedback": DatasetPreset(
        "HuggingFaceH4/ultrafeedback_binarized",
        "ultrafeedback",
        {"train": "train_prefs", "test": "test_prefs"},
        description="UltraFeedback binarized (Zephyr); scores are GPT-4 overall scores (1-10)",
    ),
    "ultrafeedback-cleaned": DatasetPreset(
        "argilla/ultrafeedback-binarized-preferences-cleaned",
        "ultrafeedback-cleaned",
        {"train": "train"},
        description="UltraFeedback binarized by mean preference rating, TruthfulQA removed; train only",
    ),
    "dpo-mix-7k": DatasetPreset(
        "argilla/dpo-mix-7k",
        "dpo-mix-7k",
        description="DPO-MIX-7K (ADPA §4.1): capybara + orca + ultrafeedback pairs with high-rated chosen",
    ),
    "helpsteer2": DatasetPreset(
        "nvidia/HelpSteer2",
        "helpsteer2",
        {"train": "train", "test": "validation", "validation": "validation"},
        description="HelpSteer2 paired by helpfulness, ties dropped (ADPA §4.1)",
    ),
    "hh-helpful": DatasetPreset(
        "Anthropic/hh-rlhf",
        "hh-rlhf",
        data_dir="helpful-base",
        description="Anthropic HH-RLHF helpful-base; prompt = shared prefix of the transcripts",
    ),
}

SFT_PRESETS: dict[str, DatasetPreset] = {
    "deita-10k": DatasetPreset(
        "HuggingFaceH4/deita-10k-v0-sft",
        "messages",
        {"train": "train_sft", "test": "test_sft"},
        description="Deita-10K-V0, the SFT set of ADPA §4.1",
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _resolve_schema(name: str) -> Callable[[Dataset], Dataset]:
    if name in SCHEMAS:
        return SCHEMAS[name]
    if name in PRESETS:
        return PRESETS[name].convert
    raise ValueError(f"unknown schema {name!r}; known schemas: {sorted(SCHEMAS)} (or a preset: {sorted(PRESETS)})")


def _unknown_source(source: str, presets: Mapping[str, DatasetPreset]) -> ValueError:
    listing = "\n".join(f"  {name:22s} {p.hub_id} — {p.description}" for name, p in presets.items())
    return ValueError(
        f"unknown dataset preset {source!r}. Known presets:\n{listing}\n"
        f"Or pass a local file ({', '.join(LOCAL_SUFFIXES)}) or a hub id 'owner/name'."
    )


def _load_local(path: Path, on_invalid: OnInvalid = "raise") -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    from workbench.data_files import load_json_file  # line by line: a bad line names the file and line

    return load_json_file(path, on_invalid)


def _load_raw(
    source: str | os.PathLike,
    split: str,
    presets: Mapping[str, DatasetPreset],
    load_kwargs: Mapping[str, Any] | None,
    on_invalid: OnInvalid = "raise",
) -> tuple[Dataset, DatasetPreset | None]:
    """(raw dataset, its preset or None) from a preset name, a local file, or a hub id."""
    source_str = os.fspath(source)
    if source_str in presets:
        preset = presets[source_str]
        ds = datasets.load_dataset(
            preset.hub_id,
            name=preset.config,
            data_dir=preset.data_dir,
            split=preset.hub_split(split),
            **dict(load_kwargs or {}),
        )
        return ds, preset
    path = Path(source_str)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        return _load_local(path, on_invalid), None
    if "/" in source_str:
        return datasets.load_dataset(source_str, split=split, **dict(load_kwargs or {})), None
    raise _unknown_source(source_str, presets)


def _subsample(ds: Dataset, max_rows: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``max_rows`` rows, in original order."""
    if max_rows is None or max_rows >= len(ds):
        return ds
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_rows, replace=False))
    logger.info("kept %d of %d rows (max_rows=%d, seed=%d)", max_rows, len(ds), max_rows, seed)
    return ds.select(idx.tolist())


def load_preference_data(
    source: str | os.PathLike,
    split: str = "train",
    *,
    schema: str | None = None,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
    max_rows: int | None = None,
    on_invalid: OnInvalid = "raise",
    seed: int = 0,
    load_kwargs: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load preference pairs as ``prompt`` / ``chosen`` / ``rejected`` (+ scores when the source has them).

    Args:
        source: a key of ``PRESETS``, a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or a hub id.
        split: ``"train"`` / ``"test"`` (mapped to the preset's hub split) or a hub split name; a slice
            such as ``"train[:1000]"`` is passed through. Ignored for local files.
        schema: the native schema of the rows (a key of ``SCHEMAS`` or a preset name); default: the
            preset's, else ``"standard"``.
        max_prompt_chars: drop/raise on prompts whose message contents exceed this many characters.
        tokenizer, max_prompt_tokens: the same limit in tokens of the chat-formatted prompt.
        max_rows: keep a seeded random subset of this many valid rows (original order kept).
        on_invalid: ``"raise"`` (``DataValidationError``) or ``"filter"`` (drop, log counts).
        seed: seed of the ``max_rows`` subset.
        load_kwargs: extra keyword arguments for ``datasets.load_dataset`` (``revision``, ``cache_dir``, ...).

    Returns:
        ``datasets.Dataset`` in TRL's conversational preference format.
    """
    raw, preset = _load_raw(source, split, PRESETS, load_kwargs, on_invalid)
    convert = _resolve_schema(schema) if schema is not None else (preset.convert if preset else convert_standard)
    ds = convert(raw)
    ds = validate_preference_rows(
        ds,
        max_prompt_chars=max_prompt_chars,
        tokenizer=tokenizer,
        max_prompt_tokens=max_prompt_tokens,
        on_invalid=on_invalid,
    )
    return _subsample(ds, max_rows, seed)


def to_messages(ds: Dataset) -> Dataset:
    """Preference rows → SFT rows: ``messages = prompt + chosen`` (other columns dropped)."""
    _require_columns(ds, "preference")

    def join(row: dict[str, Any]) -> dict[str, Any]:
        prompt, chosen = row["prompt"], row["chosen"]
        return {"messages": None if prompt is None or chosen is None else prompt + chosen}

    return ds.map(join, remove_columns=ds.column_names, features=MESSAGES_FEATURES, desc="prompt + chosen")


def load_sft_data(
    source: str | os.PathLike,
    split: str = "train",
    *,
    schema: str | None = None,
    max_prompt_chars: int | None = None,
    tokenizer: Any | None = None,
    max_prompt_tokens: int | None = None,
    max_rows: int | None = None,
    on_invalid: OnInvalid = "raise",
    seed: int = 0,
    load_kwargs: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load SFT conversations as a ``messages`` column.

    ``source`` is a key of ``SFT_PRESETS`` (``"deita-10k"``), a preference preset (SFT on prompt + chosen,
    via ``to_messages``), a local file or a hub id. Data with a ``messages`` column is used as is; other
    data is read as preference rows (``schema`` as in ``load_preference_data``) and turned into messages.
    Other arguments as in ``load_preference_data``; the prompt-length limits apply to all turns before the
    last.
    """
    source_str = os.fspath(source)
    if source_str in PRESETS:
        raw, preset = _load_raw(source_str, split, PRESETS, load_kwargs, on_invalid)
    else:
        raw, preset = _load_raw(source_str, split, SFT_PRESETS, load_kwargs, on_invalid)
    if schema is None and (preset.schema == "messages" if preset else "messages" in raw.column_names):
        ds = convert_messages(raw)
    else:
        convert = _resolve_schema(schema) if schema is not None else (preset.convert if preset else convert_standard)
        ds = to_messages(convert(raw))
    ds = validate_sft_rows(
        ds,
        max_prompt_chars=max_prompt_chars,
        tokenizer=tokenizer,
        max_prompt_tokens=max_prompt_tokens,
        on_invalid=on_invalid,
    )
    return _subsample(ds, max_rows, seed)


# ----------------------------------------------------------------------------------------------------------
# JSONL helpers
# ----------------------------------------------------------------------------------------------------------


def write_jsonl(rows: Iterable[Mapping[str, Any]] | Dataset, path: str | os.PathLike) -> Path:
    """Write rows (dicts or a Dataset) as JSON lines (UTF-8, one object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read JSON lines into a list of dicts (blank lines skipped). For datasets use ``Dataset.from_json``."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
