"""Local JSON / JSON Lines data files read line by line, so every fault names the file and the line.

``datasets``' JSON reader reports a malformed line as ``DatasetGenerationError`` (the cause only in a log line),
non-UTF-8 bytes as a ``UnicodeDecodeError`` without file or row, and an empty file as a bare ``StopIteration``.
Here each JSON Lines line is decoded and parsed on its own: a bad one is a :class:`DataFileError` (a
``DataValidationError``) with the file, the 1-based line number and the fix, or, with ``on_invalid="filter"``,
skipped with a logged count. The rows that pass are then read by ``datasets`` as before.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset

from workbench.data.columns import DataValidationError

logger = logging.getLogger("workbench.data")

FIX = (
    "fix or delete the line (each line of a .jsonl file is one JSON object, UTF-8 encoded), or pass "
    "on_invalid='filter' to skip bad lines"
)


class DataFileError(DataValidationError):
    """A data file that cannot be read as rows: ``path`` and ``line`` (1-based; None for the whole file)."""

    def __init__(self, message: str, *, path: Path, line: int | None = None, reason: str = "malformed"):
        super().__init__(message, row=None if line is None else line - 1, reason=reason)
        self.path = path
        self.line = line


def _line_problem(raw: bytes) -> str | None:
    """Why one JSON Lines line is not a row, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"is not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); re-save the file as UTF-8"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return f"is not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(value, dict):
        return f"is a JSON {type(value).__name__}, not an object of fields"
    return None


def _read_lines(path: Path, on_invalid: str) -> tuple[list[bytes], int]:
    """(the lines of a JSON Lines file that are rows, the number of bad lines skipped); blank lines are skipped, a
    bad line raises, or with ``on_invalid="filter"`` is skipped and counted."""
    kept, bad = [], []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            problem = _line_problem(raw)
            if problem is None:
                kept.append(raw)
                continue
            if on_invalid != "filter":
                raise DataFileError(f"{path}, line {number}: {problem}; {FIX}", path=path, line=number)
            bad.append((number, problem))
    if bad:
        number, problem = bad[0]
        logger.warning("skipped %d unreadable line(s) of %s (first: line %d %s)", len(bad), path, number, problem)
    if not kept:
        why = "holds no rows" if not bad else f"holds no readable rows ({len(bad)} bad line(s) skipped)"
        raise DataFileError(
            f"{path} {why}; a .jsonl file needs one JSON object per line, e.g. "
            '{"prompt": ..., "chosen": ..., "rejected": ...}',
            path=path,
            reason="empty",
        )
    return kept, len(bad)


def _from_json(path: Path) -> Dataset:
    """``Dataset.from_json`` with its errors naming the file."""
    try:
        return Dataset.from_json(str(path))
    except Exception as error:  # datasets wraps the reader's error; its cause says more
        cause = error.__cause__ or error
        raise DataFileError(
            f"{path}: datasets could not read the rows ({type(cause).__name__}: {cause}); check that "
            f"every row has the same fields with the same types",
            path=path,
        ) from error


def load_json_file(path: str | os.PathLike, on_invalid: str = "raise") -> Dataset:
    """A local ``.jsonl`` / ``.json`` file as a ``Dataset``, each JSON Lines line checked first (see module docstring).

    A ``.json`` file holding one JSON array is parsed whole: a syntax error names its line."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if path.suffix == ".json" and head.startswith(b"["):
        try:
            rows = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataFileError(
                f"{path} is not UTF-8 (byte offset {error.start}); re-save the file as UTF-8", path=path
            ) from None
        except json.JSONDecodeError as error:
            raise DataFileError(
                f"{path}, line {error.lineno}: not valid JSON ({error.msg}); fix the file", path=path, line=error.lineno
            ) from None
        if not rows:
            raise DataFileError(
                f"{path} holds an empty JSON array; it needs one object per row", path=path, reason="empty"
            )
        return _from_json(path)
    lines, skipped = _read_lines(path, on_invalid)
    if not skipped:
        return _from_json(path)
    with tempfile.TemporaryDirectory(prefix="workbench-rows-") as folder:  # the readable lines alone
        kept = Path(folder) / path.name
        kept.write_bytes(b"\n".join(lines) + b"\n")
        return _from_json(kept)


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
