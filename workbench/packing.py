"""Padding-free training forwards: a padded (B, L) batch runs as fewer rows of packed sequences.

A batch of B sequences padded to length L costs B·L positions in every linear layer, whatever its real length.
Packing places the sequences end to end into rows of at most L positions (first-fit decreasing), each sequence with
position ids restarting at 0, and runs the model with ``attention_mask=None``: transformers then builds a
block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``), so a token attends
to its own sequence only, as in the padded batch. The outputs (logits, hidden states) are scattered back to the
padded (B, L) layout, zeros at padding, so every loss reads exactly the tensors it read before, up to float rounding
(tests/test_packing.py).

Rows never exceed L, so attention costs at most what the padded batch cost (packing all sequences into one row of
B·L tokens would make a dense attention mask B times larger, which flash-attention's varlen kernels avoid but
CPU attention does not).

:func:`padding_free` switches it on for one model with forward hooks, so every objective and ``Trainer``'s own
causal-LM loss (``labels`` are packed too, each sequence's first label ignored, as a padded batch never predicts it)
run padding-free unchanged.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from workbench.logprobs import unwrapped

logger = logging.getLogger("workbench.trainers")


def packing_supported() -> bool:
    """Whether the installed transformers builds block-diagonal masks from packed position ids."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


def check_padding_free(enabled: bool) -> None:
    """A clear error, when the run is configured, if ``padding_free`` is asked of a transformers without it."""
    if enabled and not packing_supported():
        import transformers

        raise ValueError(
            "padding_free=True needs transformers' packed-sequence masks (masking_utils.find_packed_sequence_indices), "
            f"which transformers {transformers.__version__} lacks: pip install -U transformers, or padding_free False"
        )


@dataclass(frozen=True)
class PackPlan:
    """Where each real token of a padded batch goes in the packed rows.

    ``source`` (k, P): for each packed position, the flat index ``b·L + t`` of the padded token it holds, −1 in a
    row's unused tail. ``position_ids`` (k, P): each sequence's positions from 0 (the tail continues the last
    sequence's count, so it starts no new segment; no real token attends to it, being after them all).
    ``first`` (k, P) bool: the first token of a sequence (its label is never predicted)."""

    source: torch.Tensor
    position_ids: torch.Tensor
    first: torch.Tensor
    batch: int
    length: int

    @property
    def real(self) -> torch.Tensor:
        return self.source >= 0

    def pack(self, padded: torch.Tensor, fill) -> torch.Tensor:
        """(B, L, ...) -> (k, P, ...), ``fill`` in the unused tails."""
        flat = padded.reshape(self.batch * self.length, *padded.shape[2:])
        out = flat[self.source.clamp(min=0)]
        mask = self.real.reshape(*self.real.shape, *([1] * (padded.dim() - 2)))
        return torch.where(mask, out, torch.as_tensor(fill, dtype=padded.dtype, device=padded.device))

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(k, P, ...) -> (B, L, ...), zeros at padding; differentiable."""
        rest = packed.shape[2:]
        flat = packed.new_zeros(self.batch * self.length, *rest)
        keep = self.real.reshape(-1)
        index = self.source.reshape(-1)[keep]
        flat = flat.index_copy(0, index, packed.reshape(-1, *rest)[keep])
        return flat.reshape(self.batch, self.length, *rest)


def plan_packing(attention_mask: torch.Tensor) -> PackPlan:
    """First-fit-decreasing packing of the real tokens of each row of ``attention_mask`` (B, L) into rows of at most
    L positions. Each row's real tokens must be contiguous (left or right padding)."""
    batch, length = attention_mask.shape
    mask = attention_mask.bool()
    lengths = mask.sum(1).tolist()
    starts = mask.int().argmax(1).tolist()
    if not bool((mask.int().diff(dim=1).abs().sum(1) <= 2).all()):
        raise ValueError("padding_free packs rows whose real tokens are contiguous; a row has a gap in attention_mask")
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(batch), key=lambda r: -lengths[r]):
        if lengths[row] == 0:
            continue
        for slot, free in enumerate(room):
            if free >= lengths[row]:
                bins[slot].append(row)
                room[slot] -= lengths[row]
                break
        else:
            bins.append([row])
            room.append(length - lengths[row])
    width = max((length - free for free in room), default=1)
    source = torch.full((max(len(bins), 1), width), -1, dtype=torch.long)
    positions = torch.zeros_like(source)
    first = torch.zeros_like(source, dtype=torch.bool)
    for k, rows in enumerate(bins):
        at = 0
        for row in rows:
            n = lengths[row]
            source[k, at : at + n] = row * length + starts[row] + torch.arange(n)
            positions[k, at : at + n] = torch.arange(n)
            first[k, at] = True
            at += n
        positions[k, at:] = torch.arange(width - at) + (lengths[rows[-1]] if rows else 0)
    device = attention_mask.device
    return PackPlan(source.to(device), positions.to(device), first.to(device), batch, length)


@dataclass
class PackingStats:
    """Token counts of the batches a :func:`padding_free` block ran: real tokens, padded slots (B·L) and packed
    slots (k·P), summed over forwards."""

    forwards: int = 0
    real_tokens: int = 0
    padded_slots: int = 0
    packed_slots: int = 0


def _packable(kwargs: dict) -> bool:
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    return (
        torch.is_tensor(ids)
        and torch.is_tensor(mask)
        and ids.dim() == 2
        and mask.shape == ids.shape
        and kwargs.get("position_ids") is None
        and kwargs.get("inputs_embeds") is None
        and kwargs.get("past_key_values") is None
        and kwargs.get("cache") is None
    )


@contextmanager
def padding_free(model, enabled: bool = True):
    """Inside the block, each forward of ``model`` called with ``input_ids`` and a 2-D ``attention_mask`` (keyword
    arguments, no cache) runs on packed rows (:func:`plan_packing`); its logits and hidden states come back in the
    padded layout, and ``labels`` (B, L) are packed with each sequence's first label ignored, so the model's own
    loss is the padded batch's. Yields a :class:`PackingStats` (``None`` when off)."""
    if not enabled:
        yield None
        return
    check_padding_free(True)
    model = unwrapped(model)  # hooks on the causal LM itself, inside DDP / accelerate wrappers
    stats = PackingStats()
    plans: list[PackPlan | None] = []

    def before(module, args, kwargs):
        if args or not _packable(kwargs) or bool(kwargs["attention_mask"].all()):
            plans.append(None)
            return None
        plan = plan_packing(kwargs["attention_mask"])
        plans.append(plan)
        stats.forwards += 1
        stats.real_tokens += int(plan.real.sum())
        stats.padded_slots += plan.batch * plan.length
        stats.packed_slots += plan.source.numel()
        packed = dict(kwargs)
        packed["input_ids"] = plan.pack(kwargs["input_ids"], 0)
        packed["attention_mask"] = None
        packed["position_ids"] = plan.position_ids
        packed["use_cache"] = False
        if torch.is_tensor(kwargs.get("labels")):
            labels = plan.pack(kwargs["labels"], -100)
            packed["labels"] = labels.masked_fill(plan.first, -100)
        return args, packed

    def after(module, args, kwargs, output):
        plan = plans.pop()
        if plan is None:
            return None
        width = plan.source.shape[1]
        logits = getattr(output, "logits", None)
        if torch.is_tensor(logits) and logits.dim() == 3 and logits.shape[1] == width:
            output.logits = plan.unpack(logits)
        elif torch.is_tensor(logits):  # logits_to_keep: positions of the packed rows mean nothing padded
            output.logits = None
        hidden = getattr(output, "hidden_states", None)
        if hidden is not None:
            output.hidden_states = tuple(plan.unpack(h) for h in hidden)
        return output

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
        if stats.forwards:
            logger.info(
                "padding-free: %d forwards, %d real tokens in %d packed slots (padded: %d)",
                stats.forwards,
                stats.real_tokens,
                stats.packed_slots,
                stats.padded_slots,
            )
