"""Verified files of nested values without pickle: the stage cache's entries and a checkpoint's objective state.

A value is tensors, numpy arrays, lists of token ids, numbers, strings and None nested in lists, tuples and dicts.
It is written as one safetensors file: the arrays as tensors; the nesting, the key it was stored under and a
SHA-256 of both plus every tensor's bytes in the header's metadata. Reading parses no code (safetensors and JSON
only) and recomputes the checksum, so a truncated file, flipped bytes or an entry of another key is a
:class:`CorruptFile`, never a wrong value used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "workbench-verified/1"


class CorruptFile(ValueError):
    """A verified file that cannot be read back as written: ``path`` and ``reason``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def canonical(key: Any) -> str:
    """The JSON text of a key as :func:`workbench.cache.content_hash` hashes it (dict order does not matter)."""
    return json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))


def _is_token_lists(value) -> bool:
    """A list of lists of ints (sampled token ids): stored as one flat tensor and the lengths."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(row, list) for row in value)
        and all(type(i) is int for row in value for i in row)
    )


def _flatten(value, tensors: dict[str, torch.Tensor]):
    """The nesting of ``value`` as JSON, its arrays moved into ``tensors`` under fresh names."""

    def put(tensor: torch.Tensor) -> str:
        name = str(len(tensors))
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a view: safetensors stores whole tensors
        tensors[name] = tensor
        return name

    if isinstance(value, torch.Tensor):
        return {"tensor": put(value)}
    if isinstance(value, np.ndarray):
        return {"array": put(torch.from_numpy(np.ascontiguousarray(value)))}
    if _is_token_lists(value):
        flat = torch.tensor([i for row in value for i in row], dtype=torch.int64)
        return {"token_lists": put(flat), "lengths": put(torch.tensor([len(row) for row in value]))}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_flatten(v, tensors) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"dict keys must be strings to be stored; got {sorted(map(repr, value))[:5]}")
        return {"dict": {k: _flatten(v, tensors) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, np.generic):
        return {"value": value.item()}
    raise TypeError(
        f"cannot store a {type(value).__name__} without pickle; use tensors, arrays, lists, dicts, numbers or strings"
    )


def _unflatten(node: dict, tensors: dict[str, torch.Tensor]):
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "array" in node:
        return tensors[node["array"]].numpy()
    if "token_lists" in node:
        flat, lengths = tensors[node["token_lists"]].tolist(), tensors[node["lengths"]].tolist()
        starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]
    if "list" in node:
        return [_unflatten(v, tensors) for v in node["list"]]
    if "tuple" in node:
        return tuple(_unflatten(v, tensors) for v in node["tuple"])
    if "dict" in node:
        return {k: _unflatten(v, tensors) for k, v in node["dict"].items()}
    return node["value"]


def _checksum(key: str, structure: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(key.encode())
    digest.update(structure.encode())
    for name in sorted(tensors, key=int):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_verified(path: str | Path, value: Any, key: Any = None) -> Path:
    """Write ``value`` (stored under ``key``) to ``path`` in one rename: a crash never leaves half a file, and two
    processes writing one path never write one file."""
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_flatten(value, tensors), separators=(",", ":"))
    key_text = canonical(key)
    metadata = {
        "format": FORMAT,
        "key": key_text,
        "structure": structure,
        "sha256": _checksum(key_text, structure, tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(save(tensors, metadata=metadata))
    tmp.replace(path)
    return path


def read_verified(path: str | Path, key: Any = None) -> Any:
    """The value written to ``path`` under ``key``; :class:`CorruptFile` when the file is truncated, altered, of
    another format, or holds another key's value."""
    from safetensors.torch import load

    path = Path(path)
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if 8 + size > len(data):
            raise CorruptFile(path, f"truncated ({len(data)} bytes, its header alone needs {8 + size})")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        tensors = load(data)
    except CorruptFile:
        raise
    except Exception as error:  # struct, JSON, UTF-8 or safetensors errors: not a readable file
        raise CorruptFile(path, f"unreadable ({type(error).__name__}: {error})") from None
    if metadata.get("format") != FORMAT:
        raise CorruptFile(path, f"not a {FORMAT} file (format {metadata.get('format')!r})")
    key_text = canonical(key)
    if metadata.get("key") != key_text:
        raise CorruptFile(path, "holds the value of another key")
    if _checksum(key_text, metadata.get("structure", ""), tensors) != metadata.get("sha256"):
        raise CorruptFile(path, "checksum mismatch: its bytes changed after it was written")
    try:
        return _unflatten(json.loads(metadata["structure"]), tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptFile(path, f"its structure does not match its tensors ({error})") from None
