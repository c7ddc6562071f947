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

from workbench.data.columns import (
    LOCAL_SUFFIXES,
    MESSAGES_FEATURE,
    MESSAGES_FEATURES,
    PREFERENCE_COLUMNS,
    PREFERENCE_FEATURES,
    PROMPT_ROLES,
    SCORE_COLUMNS,
    SCORED_PREFERENCE_FEATURES,
    DataValidationError,
    Kind,
    Message,
    OnInvalid,
)
from workbench.data.files import read_jsonl, write_jsonl
from workbench.data.loading import load_local, load_preference_data, load_sft_data, to_messages
from workbench.data.presets import PRESETS, SFT_PRESETS, DatasetPreset
from workbench.data.schemas import (
    SCHEMAS,
    convert_helpsteer2,
    convert_messages,
    convert_standard,
    parse_helpsteer2_prompt,
    parse_hh_dialogue,
    split_shared_prefix,
)
from workbench.data.validation import (
    REASONS,
    InvalidRow,
    filter_invalid_rows,
    find_invalid_rows,
    validate_preference_rows,
    validate_sft_rows,
)

__all__ = [
    "DataValidationError",
    "InvalidRow",
    "DatasetPreset",
    "PRESETS",
    "SFT_PRESETS",
    "SCHEMAS",
    "MESSAGES_FEATURE",
    "LOCAL_SUFFIXES",
    "load_local",
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
    "OnInvalid",
    "Kind",
    "PREFERENCE_COLUMNS",
    "SCORE_COLUMNS",
    "PROMPT_ROLES",
    "PREFERENCE_FEATURES",
    "SCORED_PREFERENCE_FEATURES",
    "MESSAGES_FEATURES",
    "Message",
    "convert_standard",
    "convert_messages",
    "REASONS",
]
