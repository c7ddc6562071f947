"""Benchmark of the teacher top-k cache (workbench.topk_cache) on the default gym. Prints one JSON object.

Measures: building the cache (a miss: teacher forward passes), reading it back (a hit), its size per response
token, and one DCKD training step with the cached teacher against the same step with the teacher run online
(kept in memory and called every step, which is what the cache avoids).

    WORKBENCH_THREADS=1 python bench/bench_topk_cache.py            # ~10 s on 2 CPU cores
    WORKBENCH_THREADS=1 python bench/bench_topk_cache.py --quick    # fewer pairs and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from workbench.cache import StageCache
from workbench.losses.adpa import dckd_loss
from workbench.methods.adpa import DckdObjective, TopkPairCollator, gym_preference_pairs
from workbench.methods.common import gym_prompts
from workbench.models import load
from workbench.topk_cache import teacher_topk
from workbench.trainers import set_threads


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    set_threads()
    pairs_count = 128 if args.quick else args.pairs
    repeats = 3 if args.quick else 10
    teacher, teacher_tok = load("gym-teacher-dpo", device="cpu")
    student, student_tok = load("gym-student", device="cpu")
    pairs = gym_preference_pairs(gym_prompts("train", pairs_count, 7), seed=7)
    texts = (pairs["prompt"], pairs["chosen"])
    with tempfile.TemporaryDirectory() as root:
        store = StageCache(root)
        start = time.perf_counter()
        cache = teacher_topk(teacher, teacher_tok, student_tok, *texts, k=args.k, cache=store)
        miss_s = time.perf_counter() - start
        hit_ms, _ = _timed(
            lambda: teacher_topk(teacher, teacher_tok, student_tok, *texts, k=args.k, cache=store), repeats
        )
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        rejected = teacher_topk(
            teacher, teacher_tok, student_tok, pairs["prompt"], pairs["rejected"], k=args.k, cache=store
        )
    tokens = int(sum(cache.lengths))

    # one DCKD step (forward + backward) on a batch of 32: cached teacher vs the teacher run online
    rows = [
        {"index": i, "prompt": pairs["prompt"][i], "chosen": pairs["chosen"][i], "rejected": pairs["rejected"][i]}
        for i in range(32)
    ]
    collator = TopkPairCollator(student_tok, ("chosen", "rejected"), {"chosen_dpo": cache, "rejected_dpo": rejected})
    batch = collator(rows)
    objective = DckdObjective(alpha=1.0)

    def cached_step():
        student.zero_grad()
        loss, _ = objective(student, batch)
        loss.backward()

    def online_step():
        student.zero_grad()
        topk = {}
        for name in ("chosen", "rejected"):
            with torch.no_grad():
                logits = teacher(
                    input_ids=batch[f"{name}_input_ids"], attention_mask=batch[f"{name}_attention_mask"]
                ).logits[:, :-1]
            logps, ids = torch.topk(torch.log_softmax(logits.float(), -1), args.k, -1)
            topk[name] = (ids, logps)
        student_logits = {
            name: student(input_ids=batch[f"{name}_input_ids"], attention_mask=batch[f"{name}_attention_mask"]).logits[
                :, :-1
            ]
            for name in ("chosen", "rejected")
        }
        loss = dckd_loss(
            student_logits["chosen"],
            batch["chosen_labels"],
            batch["chosen_mask"],
            *topk["chosen"],
            student_logits["rejected"],
            batch["rejected_mask"],
            *topk["rejected"],
            alpha=1.0,
        )
        loss.backward()

    cached_ms, _ = _timed(cached_step, repeats)
    online_ms, _ = _timed(online_step, repeats)
    teacher_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": len(os.sched_getaffinity(0)),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "responses": pairs_count,
                "response_tokens": tokens,
                "k": args.k,
                "build_seconds (miss)": round(miss_s, 3),
                "load_ms (hit)": round(hit_ms, 2),
                "bytes_on_disk": disk,
                "bytes_per_token": round(disk / tokens, 1),
                "bytes_per_token_arrays": args.k * 8 + 4,
                "dckd_step_ms": {"cached_teacher": round(cached_ms, 2), "online_teacher": round(online_ms, 2)},
                "teacher_parameter_bytes_not_in_memory_during_training": teacher_bytes,
                "mean_teacher_tail_mass": float(np.mean(np.exp(np.concatenate(cache.tail_logps)))),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
