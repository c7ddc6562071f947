"""Column names, features and row types of the standard preference and messages formats."""

from __future__ import annotations

import logging
from typing import Literal

import datasets

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
