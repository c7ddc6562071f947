"""Shared tensor plumbing of the loss modules: argument checks, reductions, masked sums, the gathered log-probs
that stand in for full student logits. Annotated lightly: no paper equation lives here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def shape_text(x) -> str:
    """A tensor's shape as ``(B, T, V)`` text, or the type name of anything else."""
    return "(" + ", ".join(str(d) for d in x.shape) + ")" if isinstance(x, Tensor) else type(x).__name__


@dataclass(frozen=True)
class GatheredLogps:
    """The student's log-probs at a few token ids per position, standing in for its ``(B, T, V)`` logits.

    ``logps[b, t, j] = log softmax(student_logits[b, t])[ids[b, t, j]]``; built by a chunked output head
    (:func:`workbench.methods.adpa.student_logps`) so no ``(B, T, V)`` tensor is kept for backward. A loss reads the
    ids it needs with :meth:`at`; asking at a response position for an id that was not gathered is an error.

    Attributes:
        ids: (B, T, J) int64 gathered ids (any order, repeats allowed).
        logps: (B, T, J) float log-probs at ``ids`` (with gradient).
        vocab_size: V of the student's head.
    """

    ids: Tensor
    logps: Tensor
    vocab_size: int

    @property
    def shape(self) -> torch.Size:
        """(B, T, V), the shape of the logits this stands in for."""
        return torch.Size((*self.logps.shape[:2], self.vocab_size))

    @property
    def dtype(self) -> torch.dtype:
        return self.logps.dtype

    def is_floating_point(self) -> bool:
        return self.logps.is_floating_point()

    def at(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Log-probs at ``ids (B, T, k)``: (B, T, k). Positions off ``mask`` take any gathered value."""
        match = ids[..., :, None] == self.ids[..., None, :]  # (B, T, k, J)
        missing = ~match.any(-1) & mask.bool()[..., None]  # (B, T, k)
        if bool(missing.any()):
            b, t, j = (int(i) for i in missing.nonzero()[0])
            raise ValueError(
                f"id {int(ids[b, t, j])} at row {b}, position {t} was not gathered: build the "
                f"GatheredLogps with every id the loss reads (teacher top-k ids, labels)"
            )
        slot = match.to(torch.uint8).argmax(-1)  # (B, T, k): first gathered copy
        return torch.gather(self.logps, -1, slot)


def logps_at(student: Tensor | GatheredLogps, mask: Tensor, ids: Tensor) -> Tensor:
    """log softmax(student logits) at ``ids (B, T, k)``: (B, T, k), from full logits or a :class:`GatheredLogps`."""
    if isinstance(student, GatheredLogps):
        return student.at(ids, mask)
    return torch.gather(log_softmax(student), -1, ids)


def check_logits_mask(logits: Tensor | GatheredLogps, mask: Tensor, logits_name: str, mask_name: str) -> None:
    if isinstance(logits, GatheredLogps):
        if logits.logps.dim() != 3 or tuple(logits.ids.shape) != tuple(logits.logps.shape):
            raise ValueError(
                f"{logits_name}: GatheredLogps ids {shape_text(logits.ids)} and logps "
                f"{shape_text(logits.logps)} must be the same (B, T, J) shape"
            )
    elif not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(
            f"{logits_name} must be a (B, T, V) tensor, got shape "
            f"{shape_text(logits) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{logits_name} must be floating point, got {logits.dtype}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(logits.shape[:2]):
        got = shape_text(mask) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"{mask_name} must have shape (B, T) = {tuple(logits.shape[:2])} matching "
            f"{logits_name} {shape_text(logits)}, got {got}"
        )


def check_topk(
    ids: Tensor,
    logps: Tensor,
    ids_name: str,
    logps_name: str,
    *,
    leading: tuple | None = None,
    vocab_size: int | None = None,
    mask: Tensor | None = None,
) -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 3:
        raise ValueError(
            f"{ids_name} must be a (B, T, k) tensor, got "
            f"{shape_text(ids) if isinstance(ids, Tensor) else type(ids).__name__}"
        )
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{ids_name} must be an integer tensor, got {ids.dtype}")
    if not isinstance(logps, Tensor) or tuple(logps.shape) != tuple(ids.shape):
        got = shape_text(logps) if isinstance(logps, Tensor) else type(logps).__name__
        raise ValueError(f"{logps_name} must have the same shape as {ids_name} {shape_text(ids)}, got {got}")
    if not logps.is_floating_point():
        raise ValueError(f"{logps_name} must be floating point, got {logps.dtype}")
    if leading is not None and tuple(ids.shape[:2]) != tuple(leading):
        raise ValueError(
            f"{ids_name} has leading shape {tuple(ids.shape[:2])} but the student's (B, T) is {tuple(leading)}"
        )
    if vocab_size is not None:
        if ids.shape[-1] > vocab_size:
            raise ValueError(f"{ids_name} has k = {ids.shape[-1]} > vocabulary size V = {vocab_size}")
        live = ids if mask is None else ids[mask.bool()]
        if live.numel() and (int(live.min()) < 0 or int(live.max()) >= vocab_size):
            raise ValueError(f"{ids_name} holds ids outside [0, {vocab_size}) on unmasked positions")


def check_reduction(reduction: str) -> Callable[[Tensor], Tensor]:
    try:
        return REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}") from None


REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda per_sequence: per_sequence.mean(),
    "sum": lambda per_sequence: per_sequence.sum(),
    "none": lambda per_sequence: per_sequence,
}


def add_sft_term(per_sequence: Tensor, sft_term: Tensor | float | None) -> Tensor:
    if sft_term is None:
        return per_sequence
    sft = torch.as_tensor(sft_term, dtype=per_sequence.dtype, device=per_sequence.device)
    if sft.dim() > 1 or (sft.dim() == 1 and sft.shape[0] != per_sequence.shape[0]):
        raise ValueError(f"sft_term must be a scalar or shape ({per_sequence.shape[0]},), got {shape_text(sft)}")
    return per_sequence + sft


def log_softmax(logits: Tensor) -> Tensor:
    # half-precision logits are upcast: log-softmax over a large V loses too much in bf16
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1)


def masked_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    """Sum over T of (B, T) values where mask is set; `where` (not a product) so NaN at padding cannot leak."""
    return torch.where(mask.bool(), per_token, torch.zeros_like(per_token)).sum(-1)


def masked_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the response tokens of each sequence; a sequence with no response token gives 0."""
    n_tokens = mask.bool().sum(-1).clamp(min=1).to(per_token.dtype)  # (B,)
    return masked_sum(per_token, mask) / n_tokens


def safe_ids(ids: Tensor, mask: Tensor) -> Tensor:
    """Ids at masked-out positions replaced by 0 so `gather` never sees a pad id such as -100."""
    return ids.masked_fill(~mask.bool()[..., None], 0)


def live_values(values: Tensor, mask: Tensor) -> Tensor:
    """Detached (B, T, k) targets with masked-out positions set to 0 (garbage such as NaN there cannot leak)."""
    values = values.detach()
    return torch.where(mask.bool()[..., None], values, torch.zeros_like(values))


def safe_logps(logps: Tensor, mask: Tensor) -> Tensor:
    """Log-probs at masked-out positions replaced by a valid sub-distribution (each log(1/(2k)), total mass 1/2).

    Garbage there (NaN, 0 for every slot) would otherwise give NaN gradients through `where` in backward.
    """
    fill = -math.log(2 * logps.shape[-1])
    return torch.where(mask.bool()[..., None], logps, torch.full_like(logps, fill))


def check_batch_vectors(**named: Tensor) -> None:
    """Every argument is a floating (B,) tensor, all with the same B."""
    shape = None
    for name, value in named.items():
        if not isinstance(value, Tensor) or value.dim() != 1 or not value.is_floating_point():
            got = shape_text(value) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a floating (B,) tensor, got {got}")
        if shape is None:
            shape, first = tuple(value.shape), name
        elif tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {shape_text(value)} but {first} has {shape}")
