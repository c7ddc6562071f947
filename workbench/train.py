"""Training of any recipe as a script — PAD, DCKD / ADPA / ADPA+, PLaD — for full-size and multi-GPU runs without a
notebook kernel.

    python -m workbench.train recipes/adpa_plus_llama3_8b_to_1b_qlora.yaml -p steps 10
    accelerate launch --config_file accelerate/ddp.yaml -m workbench.train recipes/adpa_llama3_8b_to_1b.yaml
    accelerate launch --config_file accelerate/ddp.yaml -m workbench.train recipes/plad_llama2_13b_to_7b.yaml
    python -m workbench.train --pipeline plad -p teacher gym-teacher-dpo -p student gym-student -p steps 50

It reads the parameters of the recipe's notebook (a papermill parameters file, then ``-p name value`` overrides; any
other field of the method's config is accepted too). The pipeline is the recipe's notebook — its ``# notebook:``
line: 03 → PAD, 06 → the ADPA family, 07 → PLaD — or ``--pipeline``. Each pipeline's ``train_run`` composes the same
stages as the notebook's ``run_*`` without the evaluation (gold evaluation of gym runs is the notebooks'; real
datasets need a judge, ``workbench.evaluate``). Parameters that only steer a notebook's extra sections (notebook 06's
sweeps, notebook 07's Fig. 2/4 sweeps) are ignored with a log line; notebook 06's ``output_dir/<method>`` is
``output_dir`` here.

Under ``accelerate launch`` (W > 1 processes) every stage that runs a model over the prompts is sharded: the items are
split into W contiguous runs of whole batches, each process computes only its run (batch b keeps its single-process
seed), and the results are gathered and merged by item index (:mod:`workbench.distributed`) — PAD's student samples
and teacher rewards, ADPA's student (or teacher) states ŷ and both teachers' top-k caches, PLaD's teacher and
student samples. So every rank builds the rows one process builds, and the ``Trainer``'s distributed sampler shards
their batches (global batch = ``batch_size`` × processes × ``gradient_accumulation_steps``). Each process caches only
its own shard, so no two processes write the same cache entry.

Outputs (main process) in ``output_dir``: ``history.json`` (the training log: loss curve), ``config.json`` (the
config, the pipeline, the process count, seconds and the run's facts: ADPA's stage diagnostics, PLaD's pair counts),
with ``-p save_rows true`` the rows it trained on (``rows_<name>.jsonl``: PAD ``round<k>``, ADPA ``states_<stage>``,
PLaD ``pairs``) and, unless ``save_model`` is false, the trained student under ``output_dir/student``.

Before any model loads it logs the estimated peak memory of one process of the launch (:mod:`workbench.memory`, with
the launch's strategy and process count) and, on a GPU, refuses a run that will not fit, naming the levers;
``-p memory_check false`` skips that check.

An interrupted run resumes when the same command is run again: the sampling and scoring stages from their cached
pieces (:mod:`workbench.distributed`), and with ``-p save_steps N`` (the PAD and PLaD recipes set it) the training
from its newest checkpoint in ``output_dir/checkpoints`` (:class:`workbench.trainers.Checkpoints`).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from workbench.methods import FAMILIES

logger = logging.getLogger("workbench.train")

SCRIPT_OPTIONS = {"save_model", "save_rows", "memory_check"}  # parameters of this script, not of a method config
LAUNCH_STRATEGIES = {"FSDP": "fsdp", "MULTI_GPU": "ddp", "MULTI_CPU": "ddp"}  # accelerate's type -> memory.RunShape


# the method families a recipe trains (the registry's families with a notebook of their own)
PIPELINES = {name: family for name, family in FAMILIES.items() if family.notebook}


def parse_value(text: str):
    """A ``-p`` value as papermill's command line reads it: a Python/JSON literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def recipe_pipeline(recipe: str | Path) -> str:
    """The pipeline of a recipe file, from its ``# notebook: notebooks/<stem>.ipynb`` line."""
    match = re.search(r"^# notebook: .*?([0-9]{2}_\w+)\.ipynb", Path(recipe).read_text(), re.MULTILINE)
    by_notebook = {p.notebook: name for name, p in PIPELINES.items()}
    if not match or match.group(1) not in by_notebook:
        raise ValueError(
            f"{recipe}: no '# notebook: notebooks/<name>.ipynb' line naming one of "
            f"{sorted(by_notebook)}; pass --pipeline {'|'.join(PIPELINES)}"
        )
    return by_notebook[match.group(1)]


def method_config(pipeline: str, params: dict):
    """The method config from a notebook's parameters (``quantization = ""`` and a zero ``m`` mean off, as there);
    notebook-only parameters are dropped with a log line, unknown ones refused by name."""
    spec = PIPELINES[pipeline]
    cls = spec.config_class()
    values = {k: v for k, v in params.items() if k not in SCRIPT_OPTIONS}
    ignored = sorted(set(values) & spec.notebook_only)
    if ignored:
        logger.info("ignoring notebook %s's section parameters %s (the script trains one run)", spec.notebook, ignored)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known - spec.notebook_only
    if unknown:
        raise ValueError(f"unknown {pipeline.upper()} parameters {sorted(unknown)}; known: {sorted(known)}")
    values = {k: v for k, v in values.items() if k in known}
    for name in spec.zero_is_none & set(values):
        values[name] = values[name] or None
    if "quantization" in values:
        values["quantization"] = values["quantization"] or None
    return cls(**values)


def samples_a_trained_student(pipeline: str, cfg) -> bool:
    """True when the run samples from its student after training it (PAD with ``iterations`` > 1, ADPA+: ŷ from the
    DCKD student). Under FSDP that student is sharded: it samples through a whole copy
    (:func:`workbench.distributed.unsharded`), built for full fine-tuning only."""
    return cfg.samples_a_trained_student()


def trained_mixed_precision() -> str | None:
    """The mixed precision the Trainer's accelerator trained in ('bf16' under precision bf16-mixed, else 'no'), or
    None when no accelerator was made."""
    from accelerate.state import AcceleratorState

    return str(AcceleratorState().mixed_precision) if AcceleratorState._shared_state else None


def strategy_name(state) -> str:
    """accelerate's distributed type of this run by name: ``FSDP``, ``MULTI_GPU``, ``MULTI_CPU``, ``NO``...

    ``state`` is a ``PartialState``, which never says FSDP: the Trainer's ``AcceleratorState`` turns a multi-device
    group (not a CPU one) into FSDP when the launch config asks for it (``ACCELERATE_USE_FSDP``); this says so before
    that state exists, as it will."""
    name = str(state.distributed_type).rsplit(".", 1)[-1]
    asks_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return "FSDP" if asks_fsdp and name.startswith("MULTI_") and name != "MULTI_CPU" else name


def fsdp_version() -> int:
    """The FSDP version of this launch (accelerate's ``FSDP_VERSION``; 1 when unset, as accelerate reads it)."""
    return int(os.environ.get("FSDP_VERSION", "1"))


def check_strategy(pipeline: str, cfg, state) -> None:
    """Refuse, before any model loads, a run that FSDP cannot serve: one that samples a trained LoRA student
    (:func:`samples_a_trained_student`), or, under FSDP version 1, one that reads the student through the chunked
    head (``logits_chunk``: it calls the output layer outside the model's forward, where FSDP1 may hold that layer's
    weights sharded; under FSDP2 the chunked head reads the output group's unsharded weight, tested on CPU)."""
    if strategy_name(state) != "FSDP":
        return
    if getattr(cfg, "logits_chunk", 0) and fsdp_version() < 2:
        raise ValueError(
            f"logits_chunk={cfg.logits_chunk}: the chunked head calls the student's output layer outside "
            f"its forward, where FSDP version 1 holds that layer's weights sharded: launch with "
            f"fsdp_version: 2 (accelerate/fsdp.yaml), or add -p logits_chunk 0 (and unset "
            f"$WORKBENCH_LOGITS_CHUNK; the memory estimate then counts the full logits)"
        )
    if samples_a_trained_student(pipeline, cfg) and getattr(cfg, "lora", False):
        raise ValueError(
            f"{pipeline.upper()} {getattr(cfg, 'method', '')} samples from its LoRA student after "
            f"training it, which FSDP has sharded across the processes (a whole copy to sample from is "
            f"built for full fine-tuning only): launch LoRA runs with accelerate/ddp.yaml, or split the "
            f"run (PAD: one iteration per run from the last run's output_dir/student; ADPA+: method dckd, "
            f"then method adpa from its student)"
        )


def save_rows_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=float) + "\n")


def launch_memory_estimate(cfg, state, capacity=None):
    """The estimated peak memory of one process of this launch (:func:`workbench.memory.estimate` with the launch's
    strategy and process count: under FSDP each process trains a shard); with ``capacity`` (a device, or bytes) it
    raises :class:`workbench.memory.WillNotFitError` before any model loads when the estimate exceeds it. None, with
    a warning, when the run's shape cannot be estimated (e.g. a model config that cannot be read)."""
    from workbench import memory

    launch = dict(strategy=LAUNCH_STRATEGIES.get(strategy_name(state), "single"), world_size=state.num_processes)
    try:
        estimate = memory.estimate(cfg, **launch)
    except (ValueError, OSError, KeyError) as error:
        logger.warning("no memory estimate for this run (%s); training without the up-front check", error)
        return None
    if state.is_main_process:
        logger.info(
            "estimated peak memory per process (%s, %d process(es)): %.1f GiB in phase '%s' "
            "(python -m workbench.memory for the breakdown)",
            launch["strategy"],
            launch["world_size"],
            estimate.peak_bytes / memory.GIB,
            estimate.peak_phase,
        )
    if capacity is not None:
        memory.check_fits(estimate, capacity)
    return estimate


def resolve_launch_sampling_batch(cfg, state, device: str) -> None:
    """``sampling_batch_size`` 0 (auto) set from the memory estimate on this device; under a launch every process
    takes the smallest choice, so all shard the same batches."""
    from workbench import memory

    if getattr(cfg, "sampling_batch_size", None) != 0:
        return
    batch, why = memory.fit_sampling_batch(cfg, device)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        batch = min(gather_object([batch]))
    cfg.sampling_batch_size = batch
    if state.is_main_process:
        logger.info("%s%s", why, f"; {batch} on every process" if state.num_processes > 1 else "")


def train(
    pipeline: str, cfg, *, save_model: bool = True, save_rows: bool = False, memory_check: bool = True
) -> list[dict]:
    """Train ``cfg`` with ``pipeline``'s ``train_run`` in this process (one of several under ``accelerate launch``),
    write the outputs from the main process and return the training log."""
    import torch

    from accelerate import PartialState
    from workbench.distributed import full_state_dict, is_sharded
    from workbench.divergence import TrainingDiverged
    from workbench.methods.common import save_student, training_summary
    from workbench.trainers import set_threads

    set_threads()
    # cpu=True lets processes launched by accelerate/torchrun on a machine without CUDA join a gloo group
    state = PartialState(cpu=not torch.cuda.is_available())
    device = "cpu" if state.device.type == "cpu" else str(state.device)
    check_strategy(pipeline, cfg, state)
    resolve_launch_sampling_batch(cfg, state, device)
    if memory_check:  # on a GPU, refuse now rather than fail mid-run (the notebooks do the same)
        launch_memory_estimate(cfg, state, device if device.startswith("cuda") else None)
    strategy = strategy_name(state)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and strategy != "FSDP":
        logger.warning(
            "the accelerate config asks for FSDP, but these processes run %s (no CUDA): data parallel, "
            "every process holds the whole student",
            strategy,
        )
    cfg.progress = cfg.progress and state.is_main_process  # one progress bar, not one per process
    started = time.perf_counter()
    try:
        run = PIPELINES[pipeline].train_run()(cfg, state=state, device=device)
    except TrainingDiverged as error:
        if state.is_main_process:  # what the run had before it diverged: its config and the log to that step
            error.save(cfg.output_dir, pipeline=pipeline, config=asdict(cfg), training=training_summary(error.history))
        raise
    sharded = is_sharded(run.model)  # FSDP2 shards the student
    weights = full_state_dict(run.model) if save_model and sharded else None  # collective: every process
    if state.is_main_process:
        training = training_summary(run.history)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(run.history, indent=2, default=float))
        (out / "config.json").write_text(
            json.dumps(
                {
                    **asdict(cfg),
                    "pipeline": pipeline,
                    "processes": state.num_processes,
                    "distributed_type": strategy,
                    "sharded_parameters": sharded,
                    "student_precision": cfg.student_precision(device),
                    "mixed_precision": trained_mixed_precision(),
                    "seconds": time.perf_counter() - started,
                    "training": training,
                    **run.info,
                },
                indent=2,
                default=str,
            )
        )
        if save_rows:
            for name, rows in run.rows.items():
                save_rows_jsonl(out / f"rows_{name}.jsonl", rows)
        if save_model:
            save_student(run.model, run.tokenizer, out / "student", state_dict=weights)
        stages = "; ".join(
            f"{stage}: {t['logged_steps']} logged steps, loss {t['loss_first']:.4g} -> {t['loss_last']:.4g}"
            if "loss_first" in t
            else f"{stage}: no loss logged"
            for stage, t in training.items()
        )
        logger.info(
            "%s trained in %d process(es), %.0f s (%s); outputs in %s",
            pipeline,
            state.num_processes,
            time.perf_counter() - started,
            stages,
            out,
        )
    state.wait_for_everyone()
    return run.history


def main(argv=None, pipeline: str | None = None) -> bool:
    """Train from the command line; returns whether this process was a member of a distributed group (closed at the
    end), for :func:`script_exit`."""
    description = (
        __doc__.split("\n\n")[0]
        if pipeline is None
        else f"{pipeline.upper()} training as a script: python -m workbench.train --pipeline {pipeline}"
    )
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="a papermill parameters file (recipes/*.yaml)")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override one parameter, as papermill's -p",
    )
    if pipeline is None:
        parser.add_argument(
            "--pipeline", choices=sorted(PIPELINES), help="the method family (default: the recipe's '# notebook:' line)"
        )
    args = parser.parse_args(argv)
    pipeline = pipeline or args.pipeline or (recipe_pipeline(args.recipe) if args.recipe else None)
    if pipeline is None:
        parser.error(f"without a recipe, name the method family: --pipeline {'|'.join(sorted(PIPELINES))}")
    params = {}
    if args.recipe:
        import yaml

        params.update(yaml.safe_load(Path(args.recipe).read_text()) or {})
    params.update({name: parse_value(value) for name, value in args.parameter})
    logging.basicConfig(level=logging.INFO)
    cfg = method_config(pipeline, params)
    try:
        train(
            pipeline,
            cfg,
            save_model=bool(params.get("save_model", True)),
            save_rows=bool(params.get("save_rows", False)),
            memory_check=bool(params.get("memory_check", True)),
        )
    finally:
        # a gloo group left to the interpreter's exit can abort a process after its work is done ("terminate called
        # without an active exception", pytorch/pytorch#190489); the script owns the group, so it closes it
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.destroy_process_group()
    return distributed


def script_exit(distributed: bool) -> None:
    """End a launched training process whose work is done and saved. A member of a distributed group exits without
    the interpreter's teardown: even with its group destroyed, gloo's worker threads can still abort it there
    (SIGABRT, "terminate called without an active exception", the abort :func:`main`'s comment cites; seen once in
    CI after a 2-process FSDP run had saved every output), which would fail the launch. Logs and streams are
    flushed first. A single process exits normally. Only for ``__main__`` blocks: it ends the calling process."""
    if distributed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    script_exit(main())
