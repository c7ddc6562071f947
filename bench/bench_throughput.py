"""Benchmark: tokens/s of sampling and scoring on the gym models, and the stage cache's speed-up (a second call
with the same inputs versus the first). Prints one JSON object.

    WORKBENCH_THREADS=1 python bench/bench_throughput.py           # ~1 min on 2 CPU cores
    WORKBENCH_THREADS=1 python bench/bench_throughput.py --quick
    .venv-vllm/bin/python bench/bench_throughput.py --backend vllm   # the same through vLLM engines (make test-vllm
                                                                    # builds .venv-vllm; on a CPU, vLLM's CPU build)

Sampling: ``sample_responses`` (batched ``generate`` with KV cache, T = 0.8) from the student and from the
teacher; tokens/s counts generated tokens (the gym's answers are short). Scoring: ``response_token_logps``
(teacher log-probs of every (prompt, response) token) and ``mcq_selection_logprobs`` (PAD Eq. 8: one MCQ prompt per
group of n responses); tokens/s counts the real (unpadded)
input tokens. Each stage runs twice against an empty cache folder: the first call computes and stores, the second
loads (``StageCache`` hit); ``cache_speedup`` = first / second. ``--backend vllm`` samples and scores through vLLM
engines (``--vllm-options``, a JSON object of ``vllm.LLM`` options); each engine is started before the clock runs
and its start-up time reported apart (``engine_start_s``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time

import torch


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="gym-teacher-dpo")
    parser.add_argument("--student", default="gym-student")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument(
        "--vllm-options",
        type=json.loads,
        default={"kv_cache_memory_bytes": 1 << 30},
        help="JSON object of vllm.LLM options (default: a 1 GiB KV cache, which a CPU engine needs)",
    )
    args = parser.parse_args()
    if args.quick:
        args.prompts = 64
    if args.backend == "vllm":  # vLLM's engines log to stdout, where this benchmark prints its JSON
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    logging.disable(logging.WARNING)

    from workbench.backends.vllm import model_source, vllm_engine
    from workbench.cache import StageCache
    from workbench.encoding import collate_examples, prompt_text
    from workbench.methods.common import gym_prompts
    from workbench.models import load
    from workbench.rewards import mcq_template_for, user_text
    from workbench.sampling import group_responses, sample_responses
    from workbench.scoring import mcq_selection_logprobs, response_token_logps
    from workbench.trainers import set_threads

    set_threads()
    teacher, teacher_tok = load(args.teacher, device="cpu")
    student, student_tok = load(args.student, device="cpu")
    prompts = [p.text for p in gym_prompts("train", args.prompts, seed=7)]
    results = {}
    vllm = args.backend == "vllm"
    backend = {"backend": args.backend, "engine_options": args.vllm_options if vllm else None}
    if vllm:  # engines start before the clock runs (one per model, reused by every stage)
        start = lambda model: vllm_engine(model_source(model), **args.vllm_options)  # noqa: E731
        results["engine_start_s"] = {
            role: round(timed(lambda: start(model))[1], 1)
            for role, model in (("student", student), ("teacher", teacher))
        }
    with tempfile.TemporaryDirectory() as folder:
        cache = StageCache(folder)

        for role, name, model, tokenizer in (
            ("student", args.student, student, student_tok),
            ("teacher", args.teacher, teacher, teacher_tok),
        ):

            def sample():
                return sample_responses(
                    model,
                    tokenizer,
                    prompts,
                    n=args.n,
                    temperature=0.8,
                    max_new_tokens=args.max_new_tokens,
                    seed=0,
                    cache=cache,
                    progress=False,
                    **backend,
                )

            drawn, first = timed(sample)
            _, second = timed(sample)
            generated = sum(len(ids) for ids in drawn["response_ids"])
            results[f"sampling_{role}"] = {
                "model": name,
                "sequences": len(drawn),
                "generated_tokens": generated,
                "tokens_per_s": round(generated / first, 1),
                "first_s": round(first, 3),
                "cached_s": round(second, 4),
                "cache_speedup": round(first / second, 1),
            }
            if role == "student":
                samples = drawn

        flat_prompts, groups = group_responses(samples)
        pairs_prompts = [p for p in flat_prompts for _ in range(args.n)]
        pairs = [y for g in groups for y in g]

        def score():
            return response_token_logps(teacher, teacher_tok, pairs_prompts, pairs, cache=cache, **backend)

        _, first = timed(score)
        _, second = timed(score)
        batch = collate_examples(teacher_tok, pairs_prompts, pairs)
        tokens = int(batch["attention_mask"].sum())
        results["scoring_token_logps"] = {
            "model": args.teacher,
            "sequences": len(pairs),
            "input_tokens": tokens,
            "tokens_per_s": round(tokens / first, 1),
            "first_s": round(first, 3),
            "cached_s": round(second, 4),
            "cache_speedup": round(first / second, 1),
        }

        template = mcq_template_for(teacher_tok)
        questions = [user_text(p) for p in flat_prompts]

        def mcq():
            return mcq_selection_logprobs(
                teacher,
                teacher_tok,
                questions,
                groups,
                template=template,
                order="random",
                seed=0,
                cache=cache,
                **backend,
            )

        _, first = timed(mcq)
        _, second = timed(mcq)
        mcq_tokens = sum(
            len(teacher_tok(prompt_text(teacher_tok, template.render(q, g)), add_special_tokens=False)["input_ids"])
            for q, g in zip(questions, groups)
        )
        results["scoring_mcq"] = {
            "model": args.teacher,
            "mcq_prompts": len(groups),
            "input_tokens": mcq_tokens,
            "tokens_per_s": round(mcq_tokens / first, 1),
            "first_s": round(first, 3),
            "cached_s": round(second, 4),
            "cache_speedup": round(first / second, 1),
        }
        results["cache"] = {"hits": cache.hits, "misses": cache.misses}
    report = {
        "benchmark": "throughput",
        "backend": args.backend,
        **({"vllm_options": args.vllm_options} if vllm else {}),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.processor() or platform.machine(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
