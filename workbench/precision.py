"""Mixed precision of a loaded model: the autocast dtype a bf16-mixed student computes in, recorded on the model."""

from __future__ import annotations

import contextlib

import torch

from workbench.logprobs import unwrapped

AUTOCAST_ATTRIBUTE = "workbench_autocast"  # set on a bf16-mixed student: its float32 weights compute in this dtype


def mark_autocast(model, dtype: torch.dtype | None):
    """Record that ``model`` (float32 weights) trains under ``dtype`` autocast, so its sampling runs so too."""
    setattr(model, AUTOCAST_ATTRIBUTE, dtype)
    return model


def autocast_dtype(model) -> torch.dtype | None:
    """The dtype ``model`` (or the model inside its DDP / accelerate wrapper) computes in under autocast
    (:func:`mark_autocast`), or None."""
    return getattr(unwrapped(model), AUTOCAST_ATTRIBUTE, None)


def autocast_of(model):
    """The autocast context ``model`` computes in: bfloat16 for a bf16-mixed student (:func:`mark_autocast`), else
    none. ``workbench.sampling`` generates under it, so a float32 student samples at bfloat16 speed: autocast keeps
    one bfloat16 copy of its weights for the whole call."""
    dtype = autocast_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)
