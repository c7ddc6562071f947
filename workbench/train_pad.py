"""PAD training as a script, for full-size and multi-GPU runs of a recipe without a notebook kernel.

    python -m workbench.train_pad recipes/pad_gemma2_9b_to_2b_qlora.yaml -p steps 10
    accelerate launch --config_file accelerate/ddp.yaml -m workbench.train_pad recipes/pad_gemma2_9b_to_2b.yaml

It reads the parameters of notebook 03 (a papermill recipe file, then ``-p name value`` overrides; any other
``PadConfig`` field is accepted too) and composes the shared stages exactly as
:func:`workbench.methods.pad.run_pad` does — ``sample_responses`` → ``teacher_rewards`` (Eq. 7-9) →
``DistillTrainer`` with the registered listwise loss — for ``iterations`` rounds. It does not evaluate: gold
evaluation of gym runs is notebook 03's; real datasets need a judge (``workbench.evaluate``).

Under ``accelerate launch`` (W > 1 processes) sampling and teacher scoring are sharded: the prompts' sampling
batches (``sampling_batch_size`` prompts each) are split into W contiguous runs, each process samples and scores
only its run (batch b keeps its single-process seed ``seed + b``), and the per-prompt results are gathered with
``accelerate.utils.gather_object`` and merged by prompt index (:mod:`workbench.distributed`). So every rank builds
identical rows — the samples of a 1-process run exactly, its teacher rewards up to float rounding — and the
``Trainer``'s distributed sampler shards them (global batch = ``batch_size`` × processes ×
``gradient_accumulation_steps``). Each process caches only its own shard, keyed by the shard's prompts and seed,
so no two processes write the same cache entry. Prompts come from the gym or, for any other ``dataset``, from
``workbench.data.load_preference_data`` (prompts only: PAD samples its own responses).

Full-size knobs are parameters like any other (``gradient_accumulation_steps``, ``gradient_checkpointing``,
``logits_chunk``, ``max_new_tokens``, ``sampling_batch_size``, ``scoring_batch_size``, ``sampling_backend``,
``scoring_backend``, ``vllm_gpu_memory``);
``$WORKBENCH_TRAINING_ARGS`` / ``$WORKBENCH_LOGITS_CHUNK`` still override them at launch.

Outputs (main process): ``history.json`` (the training log: loss curve), ``config.json``, with ``-p save_rows
true`` each round's training rows (``rows_round<k>.jsonl``: prompt, responses and the teacher's three reward
signals) and, unless ``save_model`` is false, the trained student under ``output_dir/student``.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path

logger = logging.getLogger("workbench.train_pad")


SCRIPT_OPTIONS = {"save_model", "save_rows"}  # parameters of this script, not of PadConfig


def parse_value(text: str):
    """A ``-p`` value as papermill's command line reads it: a Python/JSON literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def pad_config(params: dict):
    """``PadConfig`` from notebook 03's parameters (``m = 0`` and ``quantization = ""`` mean off, as there)."""
    from workbench.methods.pad import PadConfig

    values = dict(params)
    if "m" in values:
        values["m"] = values["m"] or None
    if "quantization" in values:
        values["quantization"] = values["quantization"] or None
    known = {f.name for f in fields(PadConfig)}
    unknown = set(values) - known - SCRIPT_OPTIONS
    if unknown:
        raise ValueError(f"unknown PAD parameters {sorted(unknown)}; known: {sorted(known)}")
    return PadConfig(**{k: v for k, v in values.items() if k in known})


def save_round_rows(path: Path, samples) -> None:
    """One JSON line per prompt: prompt, responses and each teacher reward signal (floats written exactly)."""
    signals = {name: values.tolist() for name, values in samples.rewards.items()}
    with path.open("w") as f:
        for i, (prompt, group) in enumerate(zip(samples.prompts, samples.groups)):
            row = {"prompt": prompt, "responses": group, **{name: values[i] for name, values in signals.items()}}
            f.write(json.dumps(row) + "\n")


def train_pad(cfg, *, save_model: bool = True, save_rows: bool = False) -> list[dict]:
    """Sample → teacher rewards → listwise distillation for ``cfg.iterations`` rounds; returns the log history."""
    from accelerate import PartialState

    from workbench.methods.pad import distill_round, load_teacher, pad_prompts
    from workbench.models import load
    from workbench.trainers import set_threads

    import torch

    set_threads()
    # cpu=True lets processes launched by accelerate/torchrun on a machine without CUDA join a gloo group
    state = PartialState(cpu=not torch.cuda.is_available())
    device = "cpu" if state.device.type == "cpu" else str(state.device)
    started = time.perf_counter()
    teacher, teacher_tok = load_teacher(cfg, device=device)
    student, student_tok = load(cfg.student, lora=True if cfg.lora else None, device=device)
    prompts_text, _ = pad_prompts(cfg)
    out = Path(cfg.output_dir)
    history: list[dict] = []
    for round_ in range(cfg.iterations):
        # each process samples and scores its shard of the prompts; all then train on the merged rows
        log, samples = distill_round(cfg, student, student_tok, teacher, teacher_tok, prompts_text, round_,
                                     state=state, progress=cfg.progress and state.is_main_process)
        history += log
        if save_rows and state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_round_rows(out / f"rows_round{round_}.jsonl", samples)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=2, default=float))
        (out / "config.json").write_text(json.dumps(
            {**asdict(cfg), "processes": state.num_processes, "seconds": time.perf_counter() - started},
            indent=2, default=str))
        if save_model:
            student.save_pretrained(out / "student")
            student_tok.save_pretrained(out / "student")
    state.wait_for_everyone()
    return history


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="a papermill parameters file (recipes/*.yaml)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter, as papermill's -p")
    args = parser.parse_args(argv)
    params = {}
    if args.recipe:
        import yaml

        params.update(yaml.safe_load(Path(args.recipe).read_text()) or {})
    params.update({name: parse_value(value) for name, value in args.parameter})
    save_model = bool(params.pop("save_model", True))
    save_rows = bool(params.pop("save_rows", False))
    logging.basicConfig(level=logging.INFO)
    cfg = pad_config(params)
    train_pad(cfg, save_model=save_model, save_rows=save_rows)


if __name__ == "__main__":
    main()
