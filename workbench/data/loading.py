"""Loading a preset, hub id or local file into the standard format, validated, optionally subsampled."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Dataset

from workbench.data.columns import LOCAL_SUFFIXES, MESSAGES_FEATURES, OnInvalid, logger
from workbench.data.presets import PRESETS, SFT_PRESETS, DatasetPreset
from workbench.data.schemas import SCHEMAS, convert_messages, convert_standard, require_columns
from workbench.data.validation import validate_preference_rows, validate_sft_rows


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


def load_local(path: Path, on_invalid: OnInvalid = "raise") -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    from workbench.data.files import load_json_file  # line by line: a bad line names the file and line

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
        return load_local(path, on_invalid), None
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
    require_columns(ds, "preference")

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
