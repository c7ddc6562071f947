"""Benchmark: padding-free training steps (``workbench.packing.padding_free``) against padded ones. Prints one JSON
object.

    python bench/bench_padding_free.py            # gym student and SmolLM2-135M + LoRA, 4 steps x 3 repetitions
    python bench/bench_padding_free.py --quick    # the gym student only

Each model trains on batches of its own samples (n = 4 per prompt at T = 0.8, so lengths vary as in PAD's listwise
batches): a step is the forward, the response log-likelihood loss and backward and an AdamW step, on the same
batches padded and packed, repetitions interleaved, from the same weights. Reported per model: median seconds per
step, real tokens per step, padded and packed positions per step, the speedup (padded / packed, median over
repetitions) and the largest difference of the per-step losses (the loss is unchanged up to float rounding).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time

import torch
from bench_sampling import machine_info  # bench/ is on sys.path when a benchmark runs as a script

MODELS = {  # label -> (preset, LoRA, prompt set)
    "gym-student": ("gym-student", False, "gym"),
    "smollm2-135m-instruct+lora": ("smollm2-135m-instruct", True, "verifiable"),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def batches_of_samples(model, tokenizer, prompts, *, batch_rows: int, steps: int, max_new_tokens: int):
    """``steps`` collated batches of ``batch_rows`` (prompt, response) rows sampled from ``model``."""
    from workbench.cache import StageCache
    from workbench.encoding import collate_examples
    from workbench.sampling import sample_responses

    needed = batch_rows * steps // 4
    rows = sample_responses(
        model,
        tokenizer,
        prompts[:needed],
        n=4,
        temperature=0.8,
        max_new_tokens=max_new_tokens,
        seed=0,
        cache=StageCache(enabled=False),
        progress=False,
    )
    out = []
    for start in range(0, len(rows), batch_rows):
        part = rows.select(range(start, min(start + batch_rows, len(rows))))
        batch = collate_examples(tokenizer, list(part["prompt"]), list(part["response"]), None)
        batch.pop("truncated")
        out.append(batch)
    return out


def run_steps(model, batches, packed: bool):
    """Seconds per step, losses and packing counts of one pass over ``batches`` (a fresh AdamW)."""
    from workbench.logprobs import student_token_logps
    from workbench.packing import padding_free

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    seconds, losses = [], []
    with padding_free(model, enabled=packed) as stats:
        for batch in batches:
            start = time.perf_counter()
            logps, mask = student_token_logps(model, batch, logits_chunk=0)
            loss = -(logps * mask).sum() / mask.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
            losses.append(float(loss))
    return seconds, losses, stats


def bench_model(label, model, tokenizer, prompts, args) -> dict:
    batches = batches_of_samples(
        model, tokenizer, prompts, batch_rows=args.batch_rows, steps=args.steps, max_new_tokens=args.max_new_tokens
    )
    real = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    padded_slots = statistics.mean(b["input_ids"].numel() for b in batches)
    runs = {"padded": [], "packed": []}
    packed_slots = None
    for rep in range(args.reps):
        for mode in ("padded", "packed"):
            copy_ = copy.deepcopy(model)  # every pass from the same weights
            seconds, losses, stats = run_steps(copy_, batches, mode == "packed")
            runs[mode].append((statistics.median(seconds), losses))
            if stats is not None:
                packed_slots = stats.packed_slots / stats.forwards
            print(f"rep {rep} {label} {mode}: {statistics.median(seconds):.3f} s/step", file=sys.stderr, flush=True)
    padded_s = [s for s, _ in runs["padded"]]
    packed_s = [s for s, _ in runs["packed"]]
    loss_gap = max(abs(a - b) for (_, la), (_, lb) in zip(runs["padded"], runs["packed"]) for a, b in zip(la, lb))
    return {
        "batch_rows": args.batch_rows,
        "steps": len(batches),
        "real_tokens_per_step": round(real, 1),
        "padded_positions_per_step": round(padded_slots, 1),
        "packed_positions_per_step": round(packed_slots, 1),
        "padded_s_per_step": round(statistics.median(padded_s), 4),
        "packed_s_per_step": round(statistics.median(packed_s), 4),
        "padded_tokens_per_s": round(real / statistics.median(padded_s), 1),
        "packed_tokens_per_s": round(real / statistics.median(packed_s), 1),
        "speedup": round(statistics.median(p / q for p, q in zip(padded_s, packed_s)), 3),
        "speedup_per_rep": [round(p / q, 3) for p, q in zip(padded_s, packed_s)],
        "max_loss_difference": float(f"{loss_gap:.3g}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=32, help="sequences per step (prompts x n)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the gym student only")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    from workbench.data.presets import PROMPT_PRESETS
    from workbench.models import load

    started = time.time()
    result = {
        "machine": machine_info(args.threads),
        "reps": args.reps,
        "models": {},
    }
    for label in ["gym-student"] if args.quick else list(MODELS):
        preset, lora, prompt_set = MODELS[label]
        model, tokenizer = load(preset, device="cpu", lora=LORA if lora else None)
        prompts = [p.text for p in PROMPT_PRESETS[prompt_set].prompts("train", args.batch_rows * args.steps, seed=0)]
        result["models"][label] = bench_model(label, model, tokenizer, prompts, args)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
