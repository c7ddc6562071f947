"""PAD training as a script, for full-size and multi-GPU runs of a recipe without a notebook kernel.

    python -m workbench.train_pad recipes/pad_gemma2_9b_to_2b_qlora.yaml -p max_new_tokens 512
    accelerate launch --config_file accelerate/ddp.yaml -m workbench.train_pad recipes/pad_gemma2_9b_to_2b.yaml

It reads the parameters of notebook 03 (a papermill recipe file, then ``-p name value`` overrides; any other
``PadConfig`` field such as ``max_new_tokens`` is accepted too) and composes the shared stages exactly as
:func:`workbench.methods.pad.run_pad` does — ``sample_responses`` → ``teacher_rewards`` (Eq. 7-9) →
``DistillTrainer`` with the registered listwise loss — for ``iterations`` rounds. It does not evaluate: gold
evaluation of gym runs is notebook 03's; real datasets need a judge (``workbench.evaluate``).

Under ``accelerate launch`` the main process samples and scores first and writes the stage cache; the other
processes then read the same cached results, so every rank builds identical rows and the ``Trainer``'s
distributed sampler shards them (global batch = ``batch_size`` × processes × gradient accumulation). Sampling
and scoring are therefore *not* sharded across processes yet (the other ranks wait): sharding the prompts and
merging by prompt index is future work. Prompts come from the gym or, for any other ``dataset``, from
``workbench.data.load_preference_data`` (prompts only: PAD samples its own responses).

Outputs (main process): ``history.json`` (the training log: loss curve), ``config.json`` and, unless
``save_model`` is false, the trained student under ``output_dir/student``.
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
    unknown = set(values) - known - {"save_model"}
    if unknown:
        raise ValueError(f"unknown PAD parameters {sorted(unknown)}; known: {sorted(known)}")
    return PadConfig(**{k: v for k, v in values.items() if k in known})


def train_prompts(cfg) -> list:
    """The prompts of a run: gym prompts (train split) or the prompts of a preference dataset."""
    if cfg.dataset == "gym":
        from workbench.methods.common import gym_prompts

        return [p.text for p in gym_prompts("train", cfg.train_prompts, cfg.seed + 101)]
    from workbench.data import load_preference_data

    rows = load_preference_data(cfg.dataset, "train", max_rows=cfg.train_prompts, seed=cfg.seed, on_invalid="filter")
    return list(rows["prompt"])


def train_pad(cfg, *, save_model: bool = True) -> list[dict]:
    """Sample → teacher rewards → listwise distillation for ``cfg.iterations`` rounds; returns the log history."""
    from accelerate import PartialState

    from workbench.methods.pad import distill_round
    from workbench.models import load
    from workbench.trainers import set_threads

    import torch

    set_threads()
    # cpu=True lets processes launched by accelerate/torchrun on a machine without CUDA join a gloo group
    state = PartialState(cpu=not torch.cuda.is_available())
    device = "cpu" if state.device.type == "cpu" else str(state.device)
    started = time.perf_counter()
    teacher, teacher_tok = load(cfg.teacher, quantization=cfg.quantization, device=device)
    student, student_tok = load(cfg.student, lora=True if cfg.lora else None, device=device)
    prompts_text = train_prompts(cfg)
    history: list[dict] = []
    for round_ in range(cfg.iterations):
        # the main process fills the stage cache; the others then read identical samples and scores
        log, _, _ = distill_round(cfg, student, student_tok, teacher, teacher_tok, prompts_text, round_,
                                  stage_guard=state.main_process_first,
                                  progress=cfg.progress and state.is_main_process)
        history += log
    if state.is_main_process:
        out = Path(cfg.output_dir)
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
    cfg = pad_config(params)
    logging.basicConfig(level=logging.INFO)
    train_pad(cfg, save_model=save_model)


if __name__ == "__main__":
    main()
