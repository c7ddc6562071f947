"""The work a run does with each model: token positions forwarded, per model name.

A model loaded by :func:`workbench.models.load` reports each forward call to every meter that is running
(:func:`metered`): the positions of its input (batch × length, padding included — the work done, not the text's
length), split into positions under gradient (training) and without (sampling, scoring, a teacher's targets), and
the number of calls. A generation step forwards only the new position of each sequence (the rest sits in the KV
cache), so sampling counts one position per generated token plus the prompt once. Work inside :func:`unmetered`
(an evaluation during a run) is not counted. A stage-cache entry keeps what computing it cost
(:func:`recording`), and a cache hit adds that cost back (:func:`replay`): a run's count does not depend on what
an earlier run left in the cache; a hit on an entry written before entries kept their cost is counted in
``unknown_hits``, so a partial count says so. A vLLM engine forwards outside this process's torch models, so its work
is not counted (the comparison's record marks such a run's count incomplete).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

FIELDS = ("positions", "grad_positions", "calls")


class Meter:
    """Counts per model name: ``{"positions", "grad_positions", "calls"}``; ``unknown_hits``: stage-cache hits whose
    cost the entry did not keep."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.unknown_hits = 0

    def add(self, name: str, positions: int, grad: bool, calls: int = 1) -> None:
        row = self.counts.setdefault(name, dict.fromkeys(FIELDS, 0))
        row["positions"] += positions
        row["grad_positions"] += positions if grad else 0
        row["calls"] += calls

    def cost(self) -> dict:
        """What a cache entry keeps: ``{"by_model": counts, "unknown_hits": k}``."""
        return {"by_model": self.counts, "unknown_hits": self.unknown_hits}

    def merge(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        for name, row in counts.items():
            mine = self.counts.setdefault(name, dict.fromkeys(FIELDS, 0))
            for field in FIELDS:
                mine[field] += int(row.get(field, 0))


_ACTIVE: list[Meter] = []  # the runs' meters (paused by unmetered)
_RECORDERS: list[Meter] = []  # cache entries being computed (never paused: an entry keeps its whole cost)
_PAUSED = [0]


@contextlib.contextmanager
def _pushed(stack: list[Meter]) -> Iterator[Meter]:
    meter = Meter()
    stack.append(meter)
    try:
        yield meter
    finally:
        stack.remove(meter)


def metered() -> contextlib.AbstractContextManager[Meter]:
    """A meter that counts every metered model's forwards in the block (meters nest: each running one counts)."""
    return _pushed(_ACTIVE)


class unmetered(contextlib.ContextDecorator):  # noqa: N801 (used like the context managers beside it)
    """The runs' meters do not count the forwards of the block, or of a function it decorates: work that is not the
    run's cost (an evaluation, a validation point). A cache entry computed in it still keeps its cost."""

    def __enter__(self):
        _PAUSED[0] += 1
        return self

    def __exit__(self, *exc):
        _PAUSED[0] -= 1
        return False


def recording() -> contextlib.AbstractContextManager[Meter]:
    """What the block costs, as a meter of its own (running meters count it as well), so a cache entry keeps its cost
    whether or not a run is metering."""
    return _pushed(_RECORDERS)


def _listening() -> list[Meter]:
    """The meters a forward now counts in."""
    return _RECORDERS + ([] if _PAUSED[0] else _ACTIVE)


def replay(cost: Mapping | None) -> None:
    """Add ``cost`` (a cache entry's :meth:`Meter.cost`; None: the entry did not keep it) to every listening meter."""
    for meter in _listening():
        if cost is None:
            meter.unknown_hits += 1
        else:
            meter.merge(cost["by_model"])
            meter.unknown_hits += int(cost.get("unknown_hits", 0))


def _positions(args: tuple, kwargs: dict) -> int:
    """Batch × length of a causal LM's input (``input_ids`` or ``inputs_embeds``, by keyword or first argument)."""
    tensor = kwargs.get("input_ids")
    if tensor is None and args:
        tensor = args[0]
    if tensor is None:
        embeds = kwargs.get("inputs_embeds")
        return int(embeds.shape[0] * embeds.shape[1]) if embeds is not None else 0
    return int(tensor.numel())


def count_forwards(model, name: str):
    """Report ``model``'s forwards to the listening meters under ``name`` (once per model; a copy keeps the hook and
    the name). The hook sits on the decoder (``get_decoder()``), which the model's forward, generation and the
    chunked scoring that calls the decoder directly (``workbench.logprobs``) all run through."""
    if getattr(model, "_workbench_metered", None) is not None:
        return model
    import torch

    def hook(module, args, kwargs):
        listening = _listening()
        if listening:
            positions = _positions(args, kwargs)
            for meter in listening:
                meter.add(name, positions, torch.is_grad_enabled())

    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    (decoder if isinstance(decoder, torch.nn.Module) else model).register_forward_pre_hook(hook, with_kwargs=True)
    model._workbench_metered = name
    return model
