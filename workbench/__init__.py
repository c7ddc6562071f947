"""prefdistill-workbench: preference distillation (PAD, DCKD/ADPA, PLaD, baselines) on real transformers models.

Submodules are imported lazily by the caller (``from workbench import losses``); importing the package itself
does no network access and loads no model.
"""

import logging

__version__ = "0.1.0"


class _NoKernelsHubHint(logging.Filter):
    """bitsandbytes (imported by transformers' Trainer through peft) logs at import, on CPUs with AVX512-BF16, that
    ``pip install kernels`` would fetch a faster 4-bit kernel — from the Hugging Face hub, at import time. The workbench
    does not want that (no network at import), so the hint is dropped; every other bitsandbytes message stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsHubHint())
