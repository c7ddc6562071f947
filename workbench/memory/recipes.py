"""The estimate of a recipe file, its generated header lines, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.memory.dims import GIB
from workbench.memory.peak import MemoryEstimate, estimate
from workbench.memory.timing import estimate_time
from workbench.methods import FAMILIES, family_of_notebook

# --- command line: the estimate of a recipe ---


def recipe_values(path: str | Path) -> dict:
    """A recipe file's parameters plus the RunShape fields of its ``# @estimate {json}`` header line (sequence
    lengths and the like): what its estimate is computed from."""
    import re

    import yaml

    text = Path(path).read_text()
    extra = re.search(r"^# @estimate (\{.*\})$", text, re.M)
    values = {**(yaml.safe_load(text) or {}), **(json.loads(extra.group(1)) if extra else {})}
    notebook = re.search(r"^# notebook: .*?([0-9]{2}_\w+)\.ipynb", text, re.M)
    family = family_of_notebook(notebook.group(1)) if notebook else None
    if family is not None:  # the method family of the recipe's notebook names its memory shape
        values.setdefault("memory_shape", FAMILIES[family].memory_shape)
    return values


def recipe_estimate(
    path: str | Path, *, model_configs=None, decode_step_s: float = 0.0, **overrides
) -> tuple[MemoryEstimate, dict | None]:
    """Estimate and time of a recipe file: :func:`recipe_values` and the ``# @time {json}`` (``estimate_time``
    arguments) line of its header (``decode_step_s``: :func:`estimate_time`'s floor on a decode step)."""
    import re

    values = {**recipe_values(path), **overrides}
    timing = re.search(r"^# @time (\{.*\})$", Path(path).read_text(), re.M)
    hours = (
        estimate_time(values, model_configs=model_configs, decode_step_s=decode_step_s, **json.loads(timing.group(1)))
        if timing
        else None
    )
    return estimate(values, model_configs=model_configs), hours


def header_lines(result: MemoryEstimate, hours: dict | None) -> dict[str, str]:
    """The recipe header's generated comment lines, keyed by their fixed opening words."""
    phases = ", ".join(f"{phase} {result.total(phase) / GIB:.1f}" for phase in result.phases)
    lines = {
        "# estimated peak memory": f"# estimated peak memory (workbench.memory.estimate, not measured): "
        f"{result.peak_gib:.1f} GiB per GPU, in phase {result.peak_phase}",
        "#   phases (GiB):": f"#   phases (GiB): {phases}",
    }
    if hours:
        gpu, mfu = hours["assumptions"]["gpu"], hours["assumptions"]["mfu"]
        lines["# estimated time"] = (
            f"# estimated time (workbench.memory.estimate_time, {gpu} at {mfu:.0%} MFU, "
            f"not measured): {hours['gpu_hours']:.1f} GPU-hours"
        )
        lines["#   stages (GPU-hours):"] = "#   stages (GPU-hours): " + ", ".join(
            f"{k} {v:.1f}" for k, v in hours["stages"].items()
        )
    return lines


def update_recipe_header(path: str | Path, *, model_configs=None) -> list[str]:
    """Rewrite a recipe's generated header lines (peak memory, phases, time, stages) from the current estimator;
    returns the lines that changed. Every other line, hand-written notes included, is kept as it is."""
    path = Path(path)
    result, hours = recipe_estimate(path, model_configs=model_configs)
    wanted = header_lines(result, hours)
    old_lines = path.read_text().splitlines(keepends=True)
    new_lines, changed, seen = [], [], set()
    for line in old_lines:
        opening = next((k for k in wanted if line.startswith(k)), None)
        if opening is not None and opening not in seen:
            seen.add(opening)
            if line.rstrip("\n") != wanted[opening]:
                changed.append(wanted[opening])
            line = wanted[opening] + "\n"
        new_lines.append(line)
    missing = set(wanted) - seen
    if missing:
        raise ValueError(f"{path}: no header line starting with {sorted(missing)}; copy the header of another recipe")
    path.write_text("".join(new_lines))
    return changed


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Estimated peak memory (and GPU-hours) of recipe files.")
    parser.add_argument("recipes", nargs="+", help="recipes/*.yaml")
    parser.add_argument("--model-configs", default=None, help="folder of <org>--<name>/config.json (offline)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the breakdown")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rewrite each recipe's generated header lines (memory, phases, time) in place",
    )
    parser.add_argument(
        "--strategy",
        choices=["single", "ddp", "fsdp"],
        default=None,
        help="the launch to estimate per process (with --world-size): accelerate/ddp.yaml or fsdp.yaml",
    )
    parser.add_argument("--world-size", type=int, default=None, help="processes (GPUs) of that launch")
    parser.add_argument(
        "--decode-step-s",
        type=float,
        default=0.0,
        help="seconds per decode step of a sampling batch, as bench/bench_recipe_gpu.py measures it "
        "(seconds_per_decode_step): the time estimate's floor on a step (default 0: bandwidth-"
        "bound decoding, as an engine with CUDA graphs nears)",
    )
    args = parser.parse_args(argv)
    launch = {k: v for k, v in (("strategy", args.strategy), ("world_size", args.world_size)) if v is not None}
    if launch and args.update:
        parser.error("--update writes the recipe's single-GPU header; drop --strategy/--world-size")
    for path in args.recipes:
        if args.update:
            changed = update_recipe_header(path, model_configs=args.model_configs)
            print(f"{path}: " + ("\n  ".join(["updated", *changed]) if changed else "up to date"))
            continue
        result, hours = recipe_estimate(
            path, model_configs=args.model_configs, decode_step_s=args.decode_step_s, **launch
        )
        if args.json:
            print(json.dumps({"recipe": str(path), **result.to_dict(), "time": hours}))
        else:
            print(f"== {path}\n{result}")
            if hours:
                print(
                    f"  estimated {hours['gpu_hours']:.1f} GPU-hours on {hours['assumptions']['gpu']}: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in hours["stages"].items())
                )
