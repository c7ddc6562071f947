"""The sampling batch a device fits: ``sampling_batch_size=0`` (auto) resolved from the estimate's headroom."""

from __future__ import annotations

import logging

from workbench.memory.dims import GIB
from workbench.memory.peak import WillNotFitError, device_memory_bytes, estimate

logger = logging.getLogger("workbench.memory")

# prompts per generate call tried, largest first: beyond 128 a call gains no matmul efficiency worth its padding
AUTO_SAMPLING_BATCHES = (128, 64, 32, 16, 8, 4, 2, 1)


def sampling_peak_bytes(result) -> int:
    """The largest of an estimate's sampling phases (the student's, and the teacher's where it generates)."""
    return max(result.total(phase) for phase in result.phases if phase.endswith("sampling"))


def fit_sampling_batch(cfg, device=None, *, headroom: float = 0.1, model_configs=None) -> tuple[int, str]:
    """The largest batch of ``AUTO_SAMPLING_BATCHES`` (prompts per generate call) whose sampling phases, as
    :func:`~workbench.memory.estimate` counts them, fit ``device``'s memory with ``headroom`` to spare, and a line
    that says why. ``device``: as :func:`~workbench.memory.device_memory_bytes` (default: CUDA when available,
    else the CPU's memory). Raises :class:`~workbench.memory.WillNotFitError` when not even one prompt fits."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    capacity, described = device_memory_bytes(device)
    for batch in AUTO_SAMPLING_BATCHES:
        needed = sampling_peak_bytes(estimate(cfg, sampling_batch_size=batch, model_configs=model_configs))
        if needed * (1 + headroom) <= capacity:
            return batch, (
                f"sampling_batch_size auto: {batch} prompts per generate call (sampling needs ~{needed / GIB:.1f} "
                f"GiB with {headroom:.0%} to spare; device: {described})"
            )
    raise WillNotFitError(
        f"sampling one prompt at a time needs ~{needed / GIB:.1f} GiB, device has {capacity / GIB:.1f} GiB: "
        f"{described}; try a smaller max_new_tokens or quantization='4bit'"
    )


def resolve_sampling_batch(cfg, device=None, *, model_configs=None):
    """``cfg`` with ``sampling_batch_size`` 0 (auto) replaced by :func:`fit_sampling_batch`'s choice (logged and
    printed: it decides which samples a seed draws); any other value is left as it is. Returns ``cfg``."""
    if getattr(cfg, "sampling_batch_size", None) != 0:
        return cfg
    batch, why = fit_sampling_batch(cfg, device, model_configs=model_configs)
    cfg.sampling_batch_size = batch
    logger.info(why)
    print(why)
    return cfg
