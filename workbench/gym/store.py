"""Where a gym preset's models are found: the builds the package ships, then builds in the cache. Never trains.

The default gym, ``tiny`` (tests), ``world1`` / ``world2`` (the default recipe built with seeds 1 and 2, the
comparison's other worlds), ``hard`` (a student that errs in substance) and ``judge8`` (a judge trained on up to 8
options) ship as package data under
``shipped/<size>/``: the three ``save_pretrained`` folders
and a ``build.json`` with the build config, its cache key, the library versions it was built under and a hash of
every tensor. Shipping the weights, like a dataset or a pretrained checkpoint, keeps
every number measured on them reproducible whatever libraries are installed later; a rebuild under other versions
gives other weights (``experiments/gym_rebuild.py`` measures how far they move).

``python -m workbench.gym build --size S`` re-trains into the cache; ``--ship`` then replaces ``shipped/S`` with
that build on purpose.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from workbench.gym.build import GYM_ROLES, SIZES, GymBuild, cached_build_root, is_built, library_versions
from workbench.weights import verify_weights, weights_record

logger = logging.getLogger("workbench.gym")

SHIPPED = Path(__file__).resolve().parent / "shipped"
SHIPPED_SIZES = ("default", "tiny", "world1", "world2", "hard", "judge8")
BUILD_MINUTES = {
    "tiny": "about 10 s",
    "small": "about 35 s",
    "default": "about 8 min",
    "world1": "about 8 min",
    "world2": "about 8 min",
    "hard": "about 8 min",
    "judge8": "about 10 min",
    "v1": "about 5 min",
}  # on 2 CPU cores


class GymNotBuiltError(FileNotFoundError):
    """A gym preset whose build is neither shipped nor in the cache (loading never trains one)."""


def shipped_root(size: str) -> Path:
    return SHIPPED / size


def find_gym(size: str = "default") -> GymBuild:
    """The build of gym ``size`` to load: the shipped one when its recipe is the code's, else one in the cache;
    its weights are checked against its ``build.json``. Raises :class:`GymNotBuiltError` (with the build command)
    when there is neither, and :class:`workbench.weights.WeightsMismatchError` when a folder is damaged."""
    if size not in SIZES:
        raise ValueError(f"gym size {size!r}; use one of {sorted(SIZES)}")
    config = SIZES[size]
    shipped = shipped_root(size)
    if is_built(shipped):
        recorded = json.loads((shipped / "build.json").read_text()).get("key")
        if recorded == config.key():
            verify_build(shipped, fix=_restore_fix(size))
            return GymBuild(shipped, config)
        logger.warning(
            "the shipped gym %s was built from another recipe (key %s; the code's recipe is %s): looking "
            "for a build of the code's recipe in the cache",
            size,
            recorded,
            config.key(),
        )
    cached = cached_build_root(config)
    if is_built(cached):
        verify_build(cached, fix=f"Rebuild it: python -m workbench.gym build --size {size} --force")
        return GymBuild(cached, config)
    where = "is not shipped with the package" if size not in SHIPPED_SIZES else "has no shipped build of this recipe"
    raise GymNotBuiltError(
        f"gym {size!r} {where} and is not built in the cache ({cached}); loading a preset never trains one. Build "
        f"it once ({BUILD_MINUTES.get(size, 'minutes')} on 2 CPU cores): python -m workbench.gym build --size {size}"
    )


def _restore_fix(size: str) -> str:
    return (
        f"Restore the shipped files (git checkout -- workbench/gym/shipped/{size}, or pip install "
        f"--force-reinstall prefdistill-workbench), or rebuild and ship them: "
        f"python -m workbench.gym build --size {size} --force --ship"
    )


def verify_build(root: Path, fix: str) -> None:
    """Check each role's weights against ``root/build.json``'s record; a build saved before builds recorded their
    weights is taken as it is."""
    weights = json.loads((root / "build.json").read_text()).get("weights")
    for role in GYM_ROLES if weights else ():
        verify_weights(root / role, weights[role], fix)


def ship(size: str) -> Path:
    """Replace ``shipped/<size>`` with the cache's build of ``size`` (``python -m workbench.gym build --ship``)."""
    config = SIZES[size]
    source = cached_build_root(config)
    if not is_built(source):
        raise GymNotBuiltError(
            f"no build of gym {size!r} in the cache to ship: python -m workbench.gym build "
            f"--size {size} --ship builds it first"
        )
    SHIPPED.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=SHIPPED))
    try:
        for role in GYM_ROLES:
            shutil.copytree(source / role, staging / role)
        info = json.loads((source / "build.json").read_text())
        info["key"] = config.key()
        info.setdefault("libraries", library_versions())
        info["weights"] = {role: weights_record(staging / role) for role in GYM_ROLES}
        (staging / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        target = shipped_root(size)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("shipped gym %s from %s to %s", size, source, target)
    return target
