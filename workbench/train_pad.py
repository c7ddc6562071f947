"""PAD training as a script: ``python -m workbench.train_pad <recipe>`` is ``python -m workbench.train --pipeline pad
<recipe>`` (:mod:`workbench.train`, which trains every method family and reads the pipeline from the recipe); kept
so the commands of earlier recipes and notes still run."""

from __future__ import annotations

from workbench.train import main as _main
from workbench.train import method_config, parse_value, script_exit, train

__all__ = ["main", "pad_config", "parse_value", "train_pad"]


def pad_config(params: dict):
    """``PadConfig`` from notebook 03's parameters (:func:`workbench.train.method_config`)."""
    return method_config("pad", params)


def train_pad(cfg, *, save_model: bool = True, save_rows: bool = False) -> list[dict]:
    """PAD's ``train_run`` in this process, outputs written by the main one (:func:`workbench.train.train`)."""
    return train("pad", cfg, save_model=save_model, save_rows=save_rows)


def main(argv=None) -> bool:
    return _main(argv, pipeline="pad")


if __name__ == "__main__":
    script_exit(main())
