"""Content-addressed stage cache: expensive outputs keyed by a hash of everything that determines them.

A key is any JSON-serialisable description (model fingerprint, texts, stage parameters); the value is stored
with its key and a checksum under ``<root>/<stage>/<hash>.safetensors`` (:mod:`workbench.stored`: no pickle,
verified on read; a corrupt entry is removed and recomputed). Sweeps (alpha, beta, n) and reruns reuse the work, and an
interrupted run resumes from it (:mod:`workbench.distributed`).

``python -m workbench.cache`` prints what the cache holds per stage (entries, size, oldest and newest entry);
``--clear [STAGE ...]`` deletes entries (every stage when none is named), ``--older-than DAYS`` only those not
written for that long. Clearing loses nothing but time: an entry is recomputed when next needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench.metering import recording, replay

logger = logging.getLogger("workbench.cache")


def cache_root() -> Path:
    """``$WORKBENCH_CACHE`` or ``~/.cache/prefdistill-workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "prefdistill-workbench"))


LOCK_HELD_ENV = "WORKBENCH_CACHE_LOCK_HELD"  # set for a child process that builds under its parent's lock


def build_folder_once(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """``target``, built once across processes: ``build(folder)`` writes into a temporary folder of this process,
    which then replaces ``target`` in one rename. The first process to take ``target``'s file lock builds; others
    (the processes of an ``accelerate launch``, two notebooks) wait for it and find the folder built. A folder that
    is not ``complete`` (left by a crashed writer) is built again."""
    if complete(target):
        return target
    import shutil

    with cache_lock(target):
        if complete(target):
            return target
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder
            tmp.replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Hold ``target``'s file lock (``<cache_root>/locks/<hash of its path>.lock``, out of the folders it guards) for
    the block: one process at a time builds it. A child process started under its parent's lock
    (``$WORKBENCH_CACHE_LOCK_HELD``) does not take it again."""
    if os.environ.get(LOCK_HELD_ENV):
        yield
        return
    from filelock import FileLock

    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{content_hash(str(target.resolve()))}.lock")):
        yield


def content_hash(key: Any, length: int = 20) -> str:
    """Stable hash of a JSON-serialisable key (dict order does not matter)."""
    payload = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def model_fingerprint(model) -> str:
    """Hash of a model's config and weights (all weights up to 50 M parameters, a strided sample beyond).

    Two models with equal fingerprints give equal scores, so the fingerprint keys every cached score.
    """
    # cheap change detector: fused optimizers update weights in place without bumping ``_version``, so a sum
    # over every parameter is part of the key; the full hash is recomputed only when it changes
    import torch

    with torch.no_grad():
        probe = (
            sum(p._version for p in model.parameters()),
            float(sum(p.detach().float().sum() for p in model.parameters())),
        )
    cached = getattr(model, "_workbench_fingerprint", None)
    if cached is not None and cached[0] == probe:
        return cached[1]
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    total = sum(p.numel() for p in model.parameters())
    stride = max(1, total // 50_000_000)
    for name, param in sorted(model.named_parameters()):
        flat = param.detach().reshape(-1)[::stride].to("cpu").float()
        digest.update(name.encode())
        digest.update(flat.numpy().tobytes())
    fingerprint = digest.hexdigest()[:20]
    try:
        model._workbench_fingerprint = (probe, fingerprint)
    except AttributeError:
        pass
    return fingerprint


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of a tokenizer's vocabulary and chat template."""
    vocab = sorted(tokenizer.get_vocab().items())
    return content_hash([vocab, tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token])


class StageCache:
    """``get_or_compute(stage, key, compute)``: read ``<root>/<stage>/<hash(key)>.safetensors`` or compute and
    write it. An entry holds its key and a checksum (:mod:`workbench.stored`, no pickle) and is verified on every
    read: a corrupt one (truncated, altered, another key's) is logged with its path, removed and recomputed."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else cache_root() / "stages"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path(self, stage: str, key: Any) -> Path:
        return self.root / stage / f"{content_hash(key)}{ENTRY_SUFFIX}"

    def get_or_compute(self, stage: str, key: Any, compute: Callable[[], Any]) -> Any:
        if not self.enabled:
            return compute()
        from workbench.stored import CorruptFile, read_verified, write_verified

        path = self.path(stage, key)
        _drop_pickled(path.with_suffix(".pt"))
        if path.exists():
            try:
                value = read_verified(path, key)
            except CorruptFile as error:
                logger.warning(
                    "corrupt stage-cache entry %s (%s): removed, recomputing it (python -m workbench.cache "
                    "--clear %s empties the stage)",
                    path,
                    error.reason,
                    stage,
                )
                path.unlink(missing_ok=True)
            else:
                self.hits += 1
                logger.debug("cache hit %s", path)
                replay(_read_cost(path))
                return value
        self.misses += 1
        with recording() as spent:
            value = compute()
        write_verified(path, value, key)  # atomic: a crashed run never leaves a half-written entry
        _cost_path(path).write_text(json.dumps(spent.cost()))
        return value


ENTRY_SUFFIX = ".safetensors"
COST_SUFFIX = ".cost.json"  # beside an entry: the model forwards computing it took (workbench.metering)


def _cost_path(entry: Path) -> Path:
    return entry.with_suffix(COST_SUFFIX)


def _read_cost(entry: Path) -> dict | None:
    """The forwards an entry cost when computed, or None for an entry written before entries kept it."""
    try:
        return json.loads(_cost_path(entry).read_text())
    except (OSError, ValueError):
        return None


def _drop_pickled(path: Path) -> None:
    """An entry of the earlier pickled format (``.pt``) is never read (unpickling runs code): it is removed, and the
    entry is computed afresh in the verified format."""
    if path.exists():
        logger.info("stage-cache entry %s is in the old pickled format: removed, recomputing it", path)
        path.unlink(missing_ok=True)


_DEFAULT_CACHE: StageCache | None = None


def default_cache() -> StageCache:
    """The process-wide cache (``WORKBENCH_NO_CACHE=1`` disables it)."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = StageCache(enabled=os.environ.get("WORKBENCH_NO_CACHE") != "1")
    return _DEFAULT_CACHE


def _entries(root: Path, stages=None) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    if stages:
        unknown = sorted(set(stages) - {f.name for f in folders})
        if unknown:
            raise ValueError(f"no stage {unknown} in {root}; it holds {[f.name for f in folders]}")
        folders = [f for f in folders if f.name in stages]
    return {folder.name: sorted([*folder.glob(f"*{ENTRY_SUFFIX}"), *folder.glob("*.pt")]) for folder in folders}


def cache_usage(root: str | Path | None = None) -> dict[str, dict]:
    """Per stage folder of the stage cache (default ``<cache_root>/stages``): entries, bytes, and the times (Unix
    seconds) of the oldest and newest entry."""
    root = Path(root) if root is not None else cache_root() / "stages"
    usage = {}
    for stage, files in _entries(root).items():
        stats = [f.stat() for f in files]
        usage[stage] = {
            "entries": len(files),
            "bytes": sum(st.st_size for st in stats),
            "oldest": min((st.st_mtime for st in stats), default=None),
            "newest": max((st.st_mtime for st in stats), default=None),
        }
    return usage


def clear_stages(stages=None, root: str | Path | None = None, older_than_days: float | None = None) -> dict[str, int]:
    """Delete the entries of ``stages`` (all when None), or only those written more than ``older_than_days`` ago;
    returns the number deleted per stage."""
    root = Path(root) if root is not None else cache_root() / "stages"
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    deleted = {}
    for stage, files in _entries(root, stages).items():
        old = [f for f in files if cutoff is None or f.stat().st_mtime < cutoff]
        for f in old:
            f.unlink()
            _cost_path(f).unlink(missing_ok=True)
        deleted[stage] = len(old)
    return deleted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="What the stage cache holds; --clear deletes entries")
    parser.add_argument("--root", help="the stage cache folder (default: $WORKBENCH_CACHE/stages)")
    parser.add_argument("--clear", nargs="*", metavar="STAGE", help="delete entries of these stages (none named: all)")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="with --clear: only entries this old")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else cache_root() / "stages"
    out: dict = {"root": str(root)}
    if args.clear is not None:
        out["deleted"] = clear_stages(args.clear or None, root, args.older_than)
    stamp = lambda t: None if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))  # noqa: E731
    out["stages"] = {
        stage: {**u, "oldest": stamp(u["oldest"]), "newest": stamp(u["newest"])}
        for stage, u in cache_usage(root).items()
    }
    out["total_bytes"] = sum(v["bytes"] for v in out["stages"].values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
