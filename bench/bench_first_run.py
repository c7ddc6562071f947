"""Benchmark: a new user's first run — the quick start's two commands on a fresh clone with an empty cache.

Clones this repository's HEAD into a temporary folder, optionally sets it up in a fresh virtualenv (``--fresh-venv``:
``python -m venv`` + ``make setup``, timed), then runs the quick start's notebook command ``--runs`` times, each with
an empty workbench cache (``WORKBENCH_CACHE`` pointed at a new folder) and a fresh output folder, and prints one JSON
object: every run's wall seconds, their median, the gold reward before/after and win rate each run measured, and
the seconds each shipped gym preset's first load takes in a fresh process (imports excluded), and for the first run
each code cell's seconds and whether it printed progress.

    python bench/bench_first_run.py                        # 3 runs of papermill ... -p n 8 in this environment
    python bench/bench_first_run.py --fresh-venv           # + a fresh virtualenv set up by make setup (~1-2 min more)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# each shipped preset's first load in a fresh process (weights checked against build.json), imports excluded
PRESET_LOADS = """
import json, time
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from workbench.models import load
seconds = {}
for name in ("gym-teacher-dpo", "gym-teacher-ref", "gym-student", "gym-tiny-student"):
    started = time.perf_counter()
    load(name, device="cpu")
    seconds[name] = round(time.perf_counter() - started, 3)
print(json.dumps(seconds))
"""


def cell_report(notebook: Path) -> list[dict]:
    """Each code cell's seconds (papermill's record) and whether it printed progress (a tqdm bar) on the way."""
    cells = json.loads(notebook.read_text())["cells"]
    report = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        printed = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {})) for o in cell.get("outputs", []))
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        report.append({"cell": index, "seconds": round(seconds, 1), "progress": "it/s" in printed or "s/it" in printed})
    return report


def timed(command: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fresh-venv", action="store_true", help="set the clone up in a new virtualenv first")
    parser.add_argument("--parameters", nargs="*", default=["-p", "n", "8"], help="papermill parameters")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="first-run-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ}
    env.pop("WORKBENCH_CACHE", None)
    out: dict = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
        ).stdout.strip(),
    }
    python = sys.executable
    if args.fresh_venv:
        subprocess.run([python, "-m", "venv", str(work / "venv")], check=True)
        python = str(work / "venv" / "bin" / "python")
        out["make_setup_seconds"] = timed(["make", "setup", f"PYTHON={python}"], clone, env)
        env["PATH"] = f"{work / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    out["preset_load_seconds"] = json.loads(
        subprocess.run(
            [python, "-c", PRESET_LOADS],
            cwd=clone,
            env={**env, "WORKBENCH_CACHE": str(work / "cache-load")},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    runs = []
    for run in range(args.runs):
        cache, output = work / f"cache{run}", work / f"out{run}"
        run_env = {**env, "WORKBENCH_CACHE": str(cache)}
        seconds = timed(
            [
                python,
                "-m",
                "papermill",
                "--no-progress-bar",
                "notebooks/03_pad_train.ipynb",
                str(work / f"out{run}.ipynb"),
                *args.parameters,
                "-p",
                "output_dir",
                str(output),
            ],
            clone,
            run_env,
        )
        summary = json.loads((output / "summary.json").read_text())
        if run == 0:
            out["cells"] = cell_report(work / "out0.ipynb")
        runs.append(
            {
                "seconds": round(seconds, 1),
                "gold_before": summary["gold_before"]["mean"],
                "gold_after": summary["gold_after"]["mean"],
                "gold_after_ci95": summary["gold_after"]["ci95"],
                "win_rate_vs_initial": summary["win_rate_vs_initial"],
            }
        )
    out["command"] = "papermill notebooks/03_pad_train.ipynb out.ipynb " + " ".join(args.parameters)
    out["runs"] = runs
    out["median_seconds"] = statistics.median(r["seconds"] for r in runs)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
