"""Experiment: how far a rebuild of a shipped gym moves from the shipped weights under the installed libraries.

Every number the workbench quotes is measured on the shipped gym. A rebuild trains the same recipe again, here, under
whatever torch / transformers / TRL are installed (and the thread count: float sums depend on it), so it can give
other weights. This script rebuilds one size into the cache (``python -m workbench.gym build``'s builder; the
shipped files stay as they are), runs ``gym_report`` on both builds with the same held-out prompts and prints JSON:
each build's libraries and weights hashes, both reports' headline numbers and designed-in checks, and the rebuild's
differences from the shipped build.

    python experiments/gym_rebuild.py --size default          # ~6 min build + ~1 min per report on 2 cores
    python experiments/gym_rebuild.py --size tiny --prompts 64
"""

from __future__ import annotations

import argparse
import json
import sys


def headline(report: dict) -> dict:
    """The numbers a reader compares between two builds of one recipe."""
    gold = report["gold_reward"]
    judge = report["ranking_vs_gold"]["teacher-dpo"]
    return {
        **{f"greedy_gold_{role}": gold[role]["greedy"]["mean"] for role in gold},
        **{f"sampled_gold_{role}": gold[role]["T=0.8"]["mean"] for role in gold},
        "teacher_minus_student_greedy": report["teacher_minus_student_greedy"],
        "likelihood_spearman": judge["avg_loglik_spearman"]["mean"],
        "mcq_spearman": judge["mcq_spearman"]["mean"],
        "mcq_cyclic_spearman": judge["mcq_cyclic_spearman"]["mean"],
        "mcq_minus_likelihood": judge["mcq_minus_loglik"],
    }


def compare_builds(size: str, prompts: int, seed: int, force: bool) -> dict:
    from workbench.gym.build import GYM_ROLES, SIZES, build_gym
    from workbench.gym.report import gym_report
    from workbench.gym.store import find_gym, shipped_root

    shipped = find_gym(size)
    if shipped.root != shipped_root(size):
        raise SystemExit(f"gym {size!r} has no shipped build of this recipe to compare with")
    rebuilt = build_gym(config=SIZES[size], force=force, progress=False)
    builds = {"shipped": shipped, "rebuilt": rebuilt}
    reports = {
        "shipped": gym_report(size, n_prompts=prompts, seed=seed),
        "rebuilt": gym_report(config=SIZES[size], n_prompts=prompts, seed=seed),
    }
    out: dict = {"size": size, "held_out_prompts": prompts}
    for name, build in builds.items():
        info = build.info
        out[name] = {
            "root": str(build.root),
            "libraries": info.get("libraries"),
            "weights": {role: info["weights"][role]["sha256"] for role in GYM_ROLES},
            "build_seconds": info["seconds"]["total"],
            **headline(reports[name]),
            "checks": reports[name]["checks"],
        }
    out["same_weights"] = out["shipped"]["weights"] == out["rebuilt"]["weights"]
    out["rebuilt_minus_shipped"] = {
        key: out["rebuilt"][key] - out["shipped"][key] for key in headline(reports["shipped"])
    }
    return out


def main(argv=None) -> int:
    from workbench.gym.store import SHIPPED_SIZES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=SHIPPED_SIZES)
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts per report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="re-train even if the cache holds a rebuild")
    args = parser.parse_args(argv)
    print(json.dumps(compare_builds(args.size, args.prompts, args.seed, args.force), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
