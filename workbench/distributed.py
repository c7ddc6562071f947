"""Sharding a per-item stage (sampling, teacher scoring) across the processes of ``accelerate launch``.

Items are split in whole batches: with B = ⌈items / batch_size⌉ batches, ``PartialState.split_between_processes``
gives each process a contiguous run of batch indices [b0, b1), i.e. items [b0·batch_size, b1·batch_size). A
stage seeded per batch (``sample_responses`` seeds batch b with ``seed + b``) computes its shard with
``seed + b0`` and reproduces exactly the batches one process would compute. ``gather_in_order`` then collects
every process's per-item results with ``accelerate.utils.gather_object`` and merges them by item index, so every
process ends up with the same list, in the single-process order.

Caching (race-free on a shared filesystem): each process caches only its own shard, under the key of the shard's
own inputs (its prompts and first-batch seed), so no two processes ever write the same cache entry and nobody
waits for another to fill one; the merged result is not cached. A rerun with the same number of processes hits
every shard's entry; a run with another number of processes (or one process) computes its own shards once.
With one process (``state`` None or a single process) nothing is split and nothing is gathered.

Resuming (a preempted full-size run): a shard is computed in pieces of whole batches, about
``$WORKBENCH_STAGE_CHUNK`` items each (default 1024), and each piece is cached under the key of its own inputs as it
finishes, so a rerun of a stage that was interrupted recomputes only the pieces it had not finished. Pieces are cut
on batch boundaries and keep their batches' seeds, so they reproduce the shard exactly; a stage of at most one
piece per process (every gym run) is one call, as before.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("workbench.distributed")


@dataclass(frozen=True)
class Shard:
    """This process's part of a batched stage: items [start, stop), the first of them in global batch
    ``first_batch``."""

    start: int
    stop: int
    first_batch: int

    def __len__(self) -> int:
        return self.stop - self.start


def is_distributed(state) -> bool:
    """True under a launcher with more than one process."""
    return state is not None and state.num_processes > 1


def batch_shard(items: int, batch_size: int, state=None) -> Shard:
    """This process's contiguous run of whole batches of ``batch_size`` items (all of them with one process).

    Processes past the last batch (fewer batches than processes) get an empty shard; they still take part in
    :func:`gather_in_order`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; shards are made of whole batches of at least 1 item")
    if not is_distributed(state):
        return Shard(0, items, 0)
    batches = list(range(math.ceil(items / batch_size)))
    with state.split_between_processes(batches) as mine:
        mine = list(mine)
    if not mine:
        return Shard(items, items, len(batches))
    return Shard(mine[0] * batch_size, min(items, (mine[-1] + 1) * batch_size), mine[0])


def gather_in_order(rows: list, shard: Shard, state=None) -> list[Any]:
    """Every process's ``rows`` (one picklable row per item of its shard), merged by item index, on every process.

    The merge sorts by the global item index, so it does not depend on the order in which processes answer; a
    gap or an overlap between shards is an error rather than a silently misaligned table.
    """
    if len(rows) != len(shard):
        raise ValueError(f"{len(rows)} rows for a shard of {len(shard)} items [{shard.start}, {shard.stop})")
    if not is_distributed(state):
        return list(rows)
    from accelerate.utils import gather_object

    # gather_object concatenates the processes' lists; each entry carries its global index
    pairs = gather_object([(shard.start + i, row) for i, row in enumerate(rows)])
    pairs.sort(key=lambda pair: pair[0])
    indices = [i for i, _ in pairs]
    if indices != list(range(len(indices))):
        raise RuntimeError(f"the processes' shards do not tile the items exactly: gathered indices {indices[:20]}...")
    return [row for _, row in pairs]


STAGE_CHUNK_ENV = "WORKBENCH_STAGE_CHUNK"
STAGE_CHUNK_DEFAULT = 1024


def stage_chunk_items() -> int:
    """Items per resumable piece of a stage: ``$WORKBENCH_STAGE_CHUNK`` (default 1024)."""
    raw = os.environ.get(STAGE_CHUNK_ENV, "").strip()
    if not raw:
        return STAGE_CHUNK_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${STAGE_CHUNK_ENV}={raw!r}; use a number of items per resumable piece, e.g. 1024")
    return value


def shard_pieces(shard: Shard, batch_size: int, chunk_items: int) -> list[Shard]:
    """``shard`` cut into consecutive pieces of whole batches, each at most ``max(1, chunk_items // batch_size)``
    batches (at least one batch per piece); every piece names its own first global batch."""
    per_piece = max(1, chunk_items // batch_size) * batch_size
    return [
        Shard(start, min(shard.stop, start + per_piece), shard.first_batch + (start - shard.start) // batch_size)
        for start in range(shard.start, shard.stop, per_piece)
    ]


def map_in_shards(compute, items: Sequence, batch_size: int, state=None, chunk_items: int | None = None) -> list[Any]:
    """``compute`` over this process's shard of ``items`` (whole batches), merged in item order on every process.

    ``compute(piece_items, first_batch)`` returns one picklable row per item; ``first_batch`` is the global index of
    the piece's first batch, so a stage that seeds batch b with ``seed + b`` passes ``seed + first_batch`` and
    reproduces the batches one process computes. The shard is computed in pieces of about ``chunk_items`` items
    (default :func:`stage_chunk_items`), one ``compute`` call each, so a stage that caches per call resumes after an
    interruption from its last finished piece. A process whose shard is empty does not call ``compute`` (so it
    loads no model) but still takes part in the gather.
    """
    if batch_size < 1:
        raise ValueError(
            f"batch_size={batch_size}: a sampling_batch_size of 0 (auto) is chosen before the run, by "
            "workbench.memory.resolve_sampling_batch(cfg, device) (workbench.train and notebooks 03, 06, 07 call it)"
        )
    shard = batch_shard(len(items), batch_size, state)
    if is_distributed(state):
        logger.info(
            "process %d of %d: items [%d, %d) of %d (from batch %d)",
            state.process_index,
            state.num_processes,
            shard.start,
            shard.stop,
            len(items),
            shard.first_batch,
        )
    pieces = shard_pieces(shard, batch_size, chunk_items or stage_chunk_items()) if len(shard) else []
    rows: list[Any] = []
    for number, piece in enumerate(pieces):
        rows += list(compute(list(items[piece.start : piece.stop]), piece.first_batch))
        if len(pieces) > 1:
            logger.info(
                "items [%d, %d) of %d done (piece %d of %d, cached: a rerun resumes after it)",
                piece.start,
                piece.stop,
                len(items),
                number + 1,
                len(pieces),
            )
    return gather_in_order(rows, shard, state)


# what torchrun / accelerate launch tell a worker about its launch (a process started without them runs alone)
LAUNCH_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
LAUNCH_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "FSDP_", "PET_")


def in_distributed_launch() -> bool:
    """True in a worker of a multi-process launch (torchrun / accelerate launch: ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def single_process_env() -> dict[str, str]:
    """This process's environment without the launch's variables: a child started with it runs on its own."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith(LAUNCH_ENV_PREFIXES)}


def _first_sharded_parameter(model):
    """A parameter FSDP2 shards across the processes (a DTensor), or None."""
    return next((p for p in model.parameters() if type(p).__name__ == "DTensor"), None)


def is_sharded(model) -> bool:
    """True when FSDP2 shards ``model``'s parameters (DTensors) across the processes."""
    return _first_sharded_parameter(model) is not None


def full_state_dict(model, *, on_every_process: bool = False) -> dict:
    """The whole (unsharded) state dict of an FSDP2-sharded model; every process must call it. By default gathered
    to the main process's CPU (the others get an empty dict); ``on_every_process``: on every process's device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not on_every_process))


@contextmanager
def unsharded(model) -> Iterator:
    """``model`` itself, or, when FSDP2 shards it, a whole copy of it on this process's device for the block.

    A sharded model all-gathers each unit in every forward, a collective every process must enter together, while
    ``generate`` on a shard of the prompts runs a different number of forwards on each process; so a trained
    student samples its next round (PAD iterations, ADPA+'s ŷ) from a copy built from the gathered weights (every
    process enters together), freed after the block. It costs one whole student per process beside the shards, as
    the first sampling pass held before the Trainer sharded it. The copy is the same causal LM class, weights,
    dtype and generation config."""
    sharded = _first_sharded_parameter(model)
    if sharded is None:
        yield model
        return
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from accelerate import init_empty_weights

    weights = full_state_dict(model, on_every_process=True)
    device, dtype = sharded.to_local().device, sharded.dtype
    with init_empty_weights(include_buffers=False):  # parameters take the gathered tensors; buffers are built
        copy = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
    copy.load_state_dict(weights, assign=True)
    del weights
    copy.tie_weights()
    copy.to(device).eval()
    copy.generation_config = model.generation_config
    try:
        yield copy
    finally:
        del copy
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
