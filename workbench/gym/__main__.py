"""``python -m workbench.gym build [--size S] [--force] [--ship]`` and ``python -m workbench.gym report [--size S]``.

Sizes: ``default`` (every notebook's gym), ``tiny`` (tests), ``world1`` / ``world2`` (the default recipe with
seeds 1 and 2), ``hard`` (a student that also errs in substance) and ``judge8`` (a judge trained on up to 8 options)
ship with the package; ``v1`` (an earlier
recipe whose judge ranked worse than its likelihood) is built on request, as is ``small`` (the smallest recipe with
the designed-in properties; the suite builds it from scratch). ``build`` trains into the cache and never touches the
shipped files; ``--ship`` then replaces the shipped build with it."""

import argparse
import json
import logging
import sys


def main(argv=None) -> int:
    from workbench.gym.build import SIZES

    parser = argparse.ArgumentParser(prog="python -m workbench.gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train the gym's teachers and student into the cache")
    build.add_argument("--size", default="default", choices=list(SIZES))
    build.add_argument("--force", action="store_true", help="re-train even if the cache holds this build")
    build.add_argument(
        "--ship",
        action="store_true",
        help="then replace the package's shipped build of this size with it (workbench/gym/shipped)",
    )
    report = sub.add_parser("report", help="measure the gym's properties on held-out prompts (JSON)")
    report.add_argument("--size", default="default", choices=list(SIZES))
    report.add_argument("--prompts", type=int, default=256)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument(
        "--candidates", type=int, default=4, help="student samples per set the teachers rank (PAD's n; default 4)"
    )
    report.add_argument(
        "--split", default="test", choices=["validation", "test"], help="held-out prompts (design on validation)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.command == "build":
        from workbench.gym.build import build_gym
        from workbench.gym.store import ship

        gym = build_gym(args.size, force=args.force)
        shipped = {"shipped_to": str(ship(args.size))} if args.ship else {}
        info = {key: value for key, value in gym.info.items() if key != "weights"}  # hashes: in build.json
        print(json.dumps({"root": str(gym.root), **shipped, **info}, indent=2))
    else:
        from workbench.gym.report import gym_report

        print(
            json.dumps(
                gym_report(
                    args.size, n_prompts=args.prompts, n_candidates=args.candidates, seed=args.seed, split=args.split
                ),
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
