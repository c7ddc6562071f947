"""``python -m workbench.real_text build [--force]``: train the real-text teacher into the cache (about 25 min on 2
CPU cores). ``python -m workbench.real_text report``: measure the pair on held-out ``verifiable`` prompts — the
teacher's and the student's gold (greedy and sampled; the student, SmolLM2 as shipped, is also the reference teacher)
with the paired teacher − student gap — and write it as JSON (``results/real_text/pair.json``)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from workbench.real_text.build import build_teacher
from workbench.real_text.report import pair_report
from workbench.real_text.store import TEACHER


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.real_text", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train the real-text teacher into the cache")
    build.add_argument("--force", action="store_true", help="retrain even when the cache has the build")
    report = commands.add_parser("report", help="measure the teacher-student pair on held-out prompts")
    report.add_argument("--prompts", type=int, default=128, help="held-out prompts")
    report.add_argument("--samples", type=int, default=4, help="sampled answers per prompt (T = 0.8)")
    report.add_argument("--split", default="test", help="test, or validation while designing the recipe")
    report.add_argument("--out", default="results/real_text/pair.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    if args.command == "build":
        folder = build_teacher(TEACHER, force=args.force)
        print(f"{TEACHER}: {folder} ({time.perf_counter() - started:.0f} s)")
        return
    result = pair_report(args.prompts, args.samples, split=args.split)
    result["command"] = (
        f"python -m workbench.real_text report --prompts {args.prompts} --samples {args.samples} --split {args.split}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=1))


if __name__ == "__main__":
    main()
