"""``python -m workbench.gym build [--size tiny|default|v1] [--force]`` and ``python -m workbench.gym report``.

``v1`` is the default gym until stop 12 (``build.DEFAULT_V1``), kept so measurements made on it can be rebuilt."""

import argparse
import json
import logging
import sys


def main(argv=None) -> int:
    from workbench.gym.build import SIZES

    parser = argparse.ArgumentParser(prog="python -m workbench.gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train the gym's teachers and student (cached)")
    build.add_argument("--size", default="default", choices=list(SIZES))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    report = sub.add_parser("report", help="measure the gym's properties on held-out prompts (JSON)")
    report.add_argument("--size", default="default", choices=list(SIZES))
    report.add_argument("--prompts", type=int, default=256)
    report.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.command == "build":
        from workbench.gym.build import build_gym

        gym = build_gym(args.size, force=args.force)
        print(json.dumps({"root": str(gym.root), **gym.info}, indent=2))
    else:
        from workbench.gym.report import gym_report

        print(json.dumps(gym_report(args.size, n_prompts=args.prompts, seed=args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
