"""Benchmark: the HF sampling backend's speed levers (``workbench.sampling_levers.HfSampling``), cumulative, on
SmolLM2-135M-Instruct with and without a LoRA adapter, on SmolLM2 in bitsandbytes NF4 with a LoRA adapter (the
QLoRA case) and on the gym student (``--models`` picks some). Prints one JSON object.

    python bench/bench_sampling.py           # 32 prompts x n = 4 x 64 new tokens in batches of 32 prompts, 2 threads,
                                             # then the quick configuration (8 x 4 x 32)
    python bench/bench_sampling.py --quick   # the quick configuration only
    python bench/bench_sampling.py --compile # also + torch.compile of the decode step (compiles per shape)

Ladder (each step adds one lever to the one before): ``plain`` (batched ``generate`` with
``num_return_sequences=n``, every lever off: the sampling path before the levers), ``+dequantize_4bit`` (a 4-bit
model only), ``+merge_lora``,
``+share_prefill``, ``+prune_finished`` (= the default levers), ``+sort_by_length``, ``+static_cache`` (and
``+compile_decode`` with ``--compile``); a model without LoRA skips ``+merge_lora`` (nothing to merge: the plain
path). A batch is 32 prompts, the pipelines' ``sampling_batch_size`` (``--batch-size``); sorting needs more than one
batch to act on (``--batch-size 8``). Repetitions are interleaved (rep 1 of every
step, then rep 2, ...), each on the same prompts and seed without a cache; figures are medians over repetitions.
``tokens_per_s`` counts the returned response tokens over the whole call; ``prefill_s`` and ``s_per_decode_step``
are the model's forward time in prefills and per decode step (forward hooks; the sampling between steps is
outside); ``same_samples_as_plain`` / ``..._previous_step`` say whether a step drew exactly those samples.
``speedup_vs_plain`` is the median over repetitions of plain time / step time, each pair from the same repetition;
``default_speedup`` is that of ``+prune_finished``, the default levers. The 1-minute load average is recorded at
start and end (``os.getloadavg``): other processes on the cores slow every step alike, so read the ratios rather
than the absolute rates. The LoRA adapter (r = 16, all linear layers) is trained three steps first, so that its B
is not zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time

import torch

OFF = dict(dequantize_4bit=False, merge_lora=False, share_prefill=False, prune_finished=False)
LADDER = [  # (step, the HfSampling fields it sets, cumulative)
    ("plain", OFF),
    ("+dequantize_4bit", {**OFF, "dequantize_4bit": True}),
    ("+merge_lora", {**OFF, "dequantize_4bit": True, "merge_lora": True}),
    ("+share_prefill", {**OFF, "dequantize_4bit": True, "merge_lora": True, "share_prefill": True}),
    ("+prune_finished", {}),  # the default levers
    ("+sort_by_length", dict(sort_by_length=True)),
    ("+static_cache", dict(sort_by_length=True, static_cache=True)),
]
COMPILE_STEP = ("+compile_decode", dict(sort_by_length=True, static_cache=True, compile_decode=True))
DEFAULT_STEP = "+prune_finished"
MODELS = {  # label -> (preset, LoRA, prompt set, quantization)
    "smollm2-135m-instruct+lora": ("smollm2-135m-instruct", True, "verifiable", None),
    "smollm2-135m-instruct": ("smollm2-135m-instruct", False, "verifiable", None),
    "gym-student": ("gym-student", False, "gym", None),
    "smollm2-135m-instruct-4bit+lora": ("smollm2-135m-instruct", True, "verifiable", "4bit"),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def forward_timer(model):
    """A list of (query length, seconds) per forward call of the model ``generate`` runs (a prefill has the prompt's
    length, a decode step 1), and the hooks' handles."""
    from workbench.sampling_levers import generating_model

    target, calls, started = generating_model(model), [], []

    def before(module, args, kwargs):
        started.append(time.perf_counter())

    def after(module, args, kwargs, output):
        calls.append((kwargs["input_ids"].shape[1], time.perf_counter() - started.pop()))

    return calls, [
        target.register_forward_pre_hook(before, with_kwargs=True),
        target.register_forward_hook(after, with_kwargs=True),
    ]


def train_adapter_a_little(model, tokenizer, prompts) -> None:
    """A few optimizer steps on the adapter, so that B != 0 (a fresh LoRA adapter adds nothing: its B is zero)."""
    from workbench.encoding import prompt_text

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    texts = [prompt_text(tokenizer, p) for p in prompts[:4]]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.train()
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def machine_info(threads: int) -> dict:
    """The machine a benchmark ran on, with the 1-minute load average at its start (add ``loadavg_end`` at the end)."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def bench_config(
    models: dict, prompts: dict, steps: list, *, n: int, count: int, max_new_tokens: int, reps: int, batch_size: int
):
    """Every (model, step) timed ``reps`` times, interleaved; medians and the plain / default ratio per model."""
    from workbench.cache import StageCache
    from workbench.sampling import sample_responses
    from workbench.sampling_levers import four_bit_layers, mergeable_lora_layers

    off = StageCache(enabled=False)

    def applies(step: str, model) -> bool:  # a step whose lever has nothing to act on is the step before it
        quantized = bool(four_bit_layers(model))
        if step == "+dequantize_4bit":
            return quantized
        return step != "+merge_lora" or bool(mergeable_lora_layers(model, dequantized=quantized))

    ladders = {
        label: [(step, levers) for step, levers in steps if applies(step, model)]
        for label, (model, _) in models.items()
    }
    runs = {label: {step: [] for step, _ in ladders[label]} for label in models}
    samples = {label: {} for label in models}
    for rep in range(reps):
        for label, (model, tokenizer) in models.items():
            for step, levers in ladders[label]:
                calls, handles = forward_timer(model)
                start = time.perf_counter()
                out = sample_responses(
                    model,
                    tokenizer,
                    prompts[label][:count],
                    n=n,
                    temperature=0.8,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    seed=0,
                    cache=off,
                    progress=False,
                    hf_levers=levers,
                )
                seconds = time.perf_counter() - start
                for handle in handles:
                    handle.remove()
                decode = [t for length, t in calls if length == 1]
                runs[label][step].append(
                    {
                        "s": seconds,
                        "tokens": sum(len(ids) for ids in out["response_ids"]),
                        "prefill_s": sum(t for length, t in calls if length > 1),
                        "decode_steps": len(decode),
                        "decode_s": sum(decode),
                    }
                )
                samples[label].setdefault(step, [list(ids) for ids in out["response_ids"]])
                print(f"rep {rep} {label} {step}: {seconds:.2f} s", file=sys.stderr, flush=True)
    result = {}
    for label, by_step in runs.items():
        rows, previous = {}, None
        plain = [run["s"] for run in by_step["plain"]]
        for step, timings in by_step.items():
            seconds = statistics.median(run["s"] for run in timings)
            decode_s = statistics.median(run["decode_s"] / run["decode_steps"] for run in timings)
            rows[step] = {
                "median_s": round(seconds, 3),
                "min_s": round(min(run["s"] for run in timings), 3),
                "max_s": round(max(run["s"] for run in timings), 3),
                "tokens": timings[0]["tokens"],
                "tokens_per_s": round(timings[0]["tokens"] / seconds, 1),
                "prefill_s": round(statistics.median(run["prefill_s"] for run in timings), 3),
                "decode_steps": timings[0]["decode_steps"],
                "s_per_decode_step": round(decode_s, 4),
                "speedup_vs_plain": round(statistics.median(p / run["s"] for p, run in zip(plain, timings)), 3),
                "speedup_vs_plain_per_rep": [round(p / run["s"], 3) for p, run in zip(plain, timings)],
                "same_samples_as_plain": samples[label][step] == samples[label]["plain"],
                "same_samples_as_previous_step": previous is None or samples[label][step] == samples[label][previous],
            }
            previous = step
        result[label] = {"steps": rows, "default_speedup": rows[DEFAULT_STEP]["speedup_vs_plain"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="only the quick configuration: 8 prompts x 4 x 32")
    parser.add_argument("--compile", action="store_true", help="add the +compile_decode step")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)

    from workbench.data.presets import PROMPT_PRESETS
    from workbench.models import load

    machine = machine_info(args.threads)
    started = time.time()
    models, prompts = {}, {}
    for label in args.models:
        preset, lora, prompt_set, quantization = MODELS[label]
        models[label] = load(preset, device="cpu", lora=LORA if lora else None, quantization=quantization)
        prompts[label] = [p.text for p in PROMPT_PRESETS[prompt_set].prompts("train", args.prompts, seed=0)]
        if lora:
            train_adapter_a_little(*models[label], prompts[label])
    steps = LADDER + ([COMPILE_STEP] if args.compile else [])
    configs = [("quick", 8, 4, 32)] if args.quick else [("target", args.prompts, args.n, args.max_new_tokens)]
    configs += [] if args.quick else [("quick", 8, 4, 32)]
    results = {
        "machine": machine,
        "lora": LORA,
        "steps": {step: levers for step, levers in steps},
        "reps": args.reps,
    }
    for name, count, n, max_new in configs:
        results[name] = {
            "prompts": count,
            "n": n,
            "max_new_tokens": max_new,
            "batch_size": args.batch_size,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "models": bench_config(
                models,
                prompts,
                steps,
                n=n,
                count=count,
                max_new_tokens=max_new,
                reps=args.reps,
                batch_size=args.batch_size,
            ),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
