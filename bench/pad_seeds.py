"""PAD on the gym over seeds: mean ± 95% CI of the student's gold reward for several settings. Prints JSON.

    python bench/pad_seeds.py [--seeds 0,1,2] [--out runs/pad_seeds.json]

Defaults: the default gym, PAD as published (``--sft-weight 0``) at each loss's gym rate (``--lr`` unset: GYM_LR).
The v1-gym table of papers/pad.md: ``--teacher gym-v1-teacher-dpo --student gym-v1-student --sft-weight 1 --lr 1e-3``.
"""

import argparse
import json
import time

SETTINGS = {
    "ppd_n4": dict(loss="ppd", n=4),
    "vpd_n4": dict(loss="vpd", n=4),
    "ppd_n8": dict(loss="ppd", n=8),
    "ppd_n4_x2_iterations": dict(loss="ppd", n=4, iterations=2, steps=150),
    "ppd_n8_as_published": dict(loss="ppd", n=8, sft_weight=0.0),
    "vpd_n8_as_published": dict(loss="vpd", n=8, sft_weight=0.0),
}


def main() -> None:
    from workbench.evaluate import mean_ci
    from workbench.methods.pad import PadConfig, run_pad

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", default="runs/pad_seeds.json")
    parser.add_argument("--teacher", default="gym-teacher-dpo")
    parser.add_argument("--student", default="gym-student")
    parser.add_argument("--sft-weight", type=float, default=0.0, help="NLL anchor (0: PAD as published)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (unset: the loss's GYM_LR)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for name in args.settings.split(","):
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            defaults = dict(teacher=args.teacher, student=args.student, sft_weight=args.sft_weight, lr=args.lr)
            m = run_pad(
                PadConfig(
                    **{**defaults, **SETTINGS[name]},
                    seed=seed,
                    progress=False,
                    output_dir=f"runs/pad_seeds/{name}/seed{seed}",
                )
            ).metrics
            runs.append(
                {
                    "gold_before": m["gold_before"]["mean"],
                    "gold_after": m["gold_after"]["mean"],
                    "win_rate": m["win_rate_vs_initial"],
                    "seconds": time.perf_counter() - start,
                }
            )
        table[name] = {
            "settings": SETTINGS[name],
            "gold_before": runs[0]["gold_before"],
            "gold_after": mean_ci([r["gold_after"] for r in runs]),
            "win_rate_vs_initial": mean_ci([r["win_rate"] for r in runs]),
            "seconds_per_run": mean_ci([r["seconds"] for r in runs]),
            "seeds": seeds,
        }
        print(name, json.dumps(table[name], default=float), flush=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=2, default=float)


if __name__ == "__main__":
    main()
