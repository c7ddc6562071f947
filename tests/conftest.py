"""Shared fixtures. Tests use their own cache folder (``.cache/test`` in the repo, or ``$WORKBENCH_TEST_CACHE``)
so they never read a user's cached gym or scores; notebooks run by papermill inherit it."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["WORKBENCH_CACHE"] = os.environ.get("WORKBENCH_TEST_CACHE", str(ROOT / ".cache" / "test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_gym():
    """The tiny gym (built once per cache; a few seconds)."""
    from workbench.gym.build import build_gym

    return build_gym("tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_models(tiny_gym):
    """(teacher-dpo, teacher-ref, student) of the tiny gym, each as (model, tokenizer)."""
    from workbench.models import load

    return {role: load(f"gym-tiny-{role}", device="cpu") for role in ("teacher-dpo", "teacher-ref", "student")}
