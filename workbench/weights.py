"""Fingerprints of a ``save_pretrained`` folder's weights, and their check on load.

A folder's weights hash covers every tensor's name, dtype, shape and bytes, in name order, so a re-save with other
file metadata hashes alike and any changed weight does not. A record (``weights_record``) keeps that hash and one
per tensor, so a mismatch names the tensors that differ; ``verify_weights`` raises :class:`WeightsMismatchError`
with the folder and the fix the caller gives.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


class WeightsMismatchError(RuntimeError):
    """A model folder's weights are missing, unreadable or not the ones its record names."""


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``folder``'s ``*.safetensors`` files (a truncated or garbled file raises
    :class:`WeightsMismatchError` naming it)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except Exception as error:  # safetensors raises its own error type for truncated or garbled headers
            raise WeightsMismatchError(f"{file} cannot be read ({type(error).__name__}: {error})") from error
    return tensors


def folder_weights_hash(folder: Path) -> str:
    """sha256 (16 hex digits) of the tensors in ``folder``'s ``*.safetensors`` files — names, dtypes, shapes and
    bytes, in name order."""
    return weights_record(Path(folder))["sha256"]


def weights_record(folder: Path) -> dict:
    """``{"sha256": folder hash, "tensors": {name: 16-hex hash}}`` of ``folder``'s weights."""
    tensors = _tensors(Path(folder))
    whole = hashlib.sha256()
    per_tensor = {}
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        parts = (
            f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode(),
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
        for part in parts:
            whole.update(part)
        per_tensor[name] = hashlib.sha256(b"".join(parts)).hexdigest()[:16]
    return {"sha256": whole.hexdigest()[:16], "tensors": per_tensor}


_VERIFIED: set[tuple] = set()  # (folder, record, the files' sizes and mtimes) already checked in this process


def verify_weights(folder: Path, record: dict, fix: str) -> None:
    """Raise :class:`WeightsMismatchError` unless ``folder``'s weights are the ones ``record`` (a
    :func:`weights_record`) names; the message names the folder, the tensors that differ and ``fix``. A folder is
    hashed once per process while its files are unchanged."""
    folder = Path(folder)
    stamp = (
        str(folder),
        record["sha256"],
        tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.glob("*.safetensors"))),
    )
    if stamp in _VERIFIED:
        return
    try:
        here = weights_record(folder)
    except (WeightsMismatchError, FileNotFoundError) as error:
        raise WeightsMismatchError(f"the model folder {folder} is damaged: {error}. {fix}") from error
    if here["sha256"] == record["sha256"]:
        _VERIFIED.add(stamp)
        return
    expected = record.get("tensors", {})
    changed = sorted(
        name for name in expected.keys() | here["tensors"].keys() if expected.get(name) != here["tensors"].get(name)
    )
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise WeightsMismatchError(
        f"the weights in {folder} are not the ones recorded for it (hash {here['sha256']}, "
        f"recorded {record['sha256']}; tensors that differ: {shown or 'none named'}). {fix}"
    )
