"""Time of a second α point vs the first in a calibration sweep (PAD Eq. 9): the first pays for sampling and the
teacher's two signals (likelihood, MCQ); later points hit the stage cache. Prints JSON.

    python bench/bench_alpha_cache.py [--prompts 256] [--n 4]
"""

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--teacher", default="gym-teacher-dpo")
    parser.add_argument("--student", default="gym-student")
    args = parser.parse_args()

    import workbench.cache as cache_module
    from workbench.cache import StageCache
    from workbench.methods.common import gym_prompts
    from workbench.methods.pad import teacher_rewards
    from workbench.models import load
    from workbench.sampling import group_responses, sample_responses
    from workbench.trainers import set_threads

    set_threads()
    teacher, teacher_tok = load(args.teacher, device="cpu")
    student, student_tok = load(args.student, device="cpu")
    with tempfile.TemporaryDirectory() as fresh:
        cache_module._DEFAULT_CACHE = StageCache(fresh)  # a cold cache for this measurement
        prompts = [p.text for p in gym_prompts("validation", args.prompts, 11)]

        def alpha_point(alpha: float) -> float:
            start = time.perf_counter()
            samples = sample_responses(student, student_tok, prompts, n=args.n, seed=0, progress=False)
            chat_prompts, groups = group_responses(samples)
            teacher_rewards(teacher, teacher_tok, chat_prompts, groups, alpha=alpha)
            return time.perf_counter() - start

        first = alpha_point(0.8)
        later = [alpha_point(a) for a in (0.6, 0.4, 0.2)]
        stats = cache_module._DEFAULT_CACHE
        print(
            json.dumps(
                {
                    "benchmark": "alpha sweep: sampling + teacher scoring per alpha point, cold then cached",
                    "prompts": args.prompts,
                    "n": args.n,
                    "threads": int(os.environ.get("WORKBENCH_THREADS", 0)) or None,
                    "first_alpha_s": round(first, 3),
                    "later_alpha_s": [round(t, 4) for t in later],
                    "second_over_first": round(later[0] / first, 4),
                    "goal_second_under_5pct": later[0] / first < 0.05,
                    "cache_hits": stats.hits,
                    "cache_misses": stats.misses,
                }
            )
        )


if __name__ == "__main__":
    main()
