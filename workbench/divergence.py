"""Stopping a diverged training run: a non-finite loss or gradient norm ends it with an error that says where and
what to try, before the optimizer applies the step (so no non-finite weights are trained, and no checkpoint of them
is saved), and the run's metrics gathered so far are written.

``Trainer`` by default replaces a non-finite loss by the running average in its logs (``logging_nan_inf_filter``),
so a run at lr = 1e6 logged ``loss`` 0 while its gradient norm was NaN; the workbench's trainers log the true loss.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

logger = logging.getLogger("workbench.trainers")


class TrainingDiverged(RuntimeError):
    """A training step whose loss or gradient norm is not finite.

    Attributes: ``step`` (1-based optimizer step), ``quantity`` ("loss" / "gradient norm"), ``value``,
    ``last_finite_loss`` and its step, ``history``: the training call's log so far, the diverged step last.
    """

    def __init__(
        self,
        step: int,
        quantity: str,
        value: float,
        last_finite: tuple[int, float] | None,
        history: list[dict],
        lr: float | None,
    ):
        self.step, self.quantity, self.value = step, quantity, value
        self.last_finite_step, self.last_finite_loss = last_finite if last_finite else (None, None)
        self.history = history
        where = (
            f"the last finite loss was {self.last_finite_loss:.6g} at step {self.last_finite_step}"
            if last_finite
            else "no step had a finite loss"
        )
        lower = f"lr={lr:g}, try {lr / 10:g}" if lr else "a lower lr"
        super().__init__(
            f"training diverged at step {step}: the {quantity} is {value} ({where}); the step was not "
            f"applied and no checkpoint of it saved. Try a lower learning rate ({lower}) or float32 "
            f"training (precision='32-true'), and check the data of that step"
        )

    def summary(self) -> dict:
        """The facts of the divergence, JSON-ready (non-finite values as text)."""
        return {
            "step": self.step,
            "quantity": self.quantity,
            "value": str(self.value),
            "last_finite_loss": self.last_finite_loss,
            "last_finite_step": self.last_finite_step,
            "message": str(self),
        }

    def save(self, output_dir: str | Path, history: list[dict] | None = None, **facts) -> Path:
        """Write ``metrics.json`` (``facts`` and ``diverged``: :meth:`summary`) and ``history.json`` (``history``,
        default this call's log) to ``output_dir``: what the run measured before it diverged."""
        history = self.history if history is None else history
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {**facts, "diverged": self.summary()}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (folder / "history.json").write_text(json.dumps(history, indent=2, default=str))
        logger.error("metrics of the diverged run written to %s", folder / "metrics.json")
        return folder


class DivergenceGuard:
    """Mixed into a ``Trainer``: :meth:`note_loss` sees each micro-batch's loss (the objective's, unscaled), and
    Trainer's gradient-norm hook checks the norm of every optimizer step, after backward and before the optimizer
    applies it. Across processes the verdict is reduced, so every process stops at the same step."""

    _last_finite: tuple[int, float] | None = None
    _nonfinite_loss: float | None = None

    def note_loss(self, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        step = self.state.global_step + 1
        if math.isfinite(value):
            self._last_finite = (step, value)
        elif self._nonfinite_loss is None:
            self._nonfinite_loss = value

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(norm) if norm is not None else 0.0
        bad = torch.tensor(
            [float(self._nonfinite_loss is not None or not math.isfinite(value))], device=self.args.device
        )
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            self._diverged(value)
        return norm

    def _diverged(self, grad_norm: float) -> None:
        step = self.state.global_step + 1
        quantity, value = (
            ("loss", self._nonfinite_loss) if self._nonfinite_loss is not None else ("gradient norm", grad_norm)
        )
        entry = {
            "step": step,
            "loss": self._nonfinite_loss if self._nonfinite_loss is not None else float("nan"),
            "grad_norm": grad_norm,
            "diverged": True,
        }
        history = [*self.state.log_history, entry]
        error = TrainingDiverged(step, quantity, value, self._last_finite, history, self.args.learning_rate)
        logger.error("%s", error)
        raise error
