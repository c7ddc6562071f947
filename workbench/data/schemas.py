"""Native dataset schemas (UltraFeedback, DPO-MIX-7K, HelpSteer2, Anthropic-HH) -> the standard preference format."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import datasets
from datasets import Dataset

from workbench.data.columns import (
    MESSAGES_FEATURE,
    PREFERENCE_COLUMNS,
    PREFERENCE_FEATURES,
    SCORED_PREFERENCE_FEATURES,
    DataValidationError,
    Kind,
    Message,
    logger,
)


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
    require_columns(ds, "messages")
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


_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {"preference": PREFERENCE_COLUMNS, "messages": ("messages",)}


def require_columns(ds: Dataset, kind: Kind) -> None:
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
