"""Benchmark: one optimizer step of our distillation trainer (``DistillTrainer`` + PAD's PPD listwise objective)
against TRL's ``DPOTrainer`` on the same gym model and the same sequences. Prints one JSON object.

    WORKBENCH_THREADS=1 python bench/bench_train_step.py            # ~1-2 min on 2 CPU cores
    WORKBENCH_THREADS=1 python bench/bench_train_step.py --quick

Both trainers see the same batch of sequences: B prompts × (chosen, rejected) for DPO; the same B prompts with
responses [chosen, rejected] and teacher rewards [1, 0] for PPD (n = 2), and also B/2 prompts × n = 4 responses
(the same number of sequences, PAD's setting). DPO is timed with its reference model (its standard step: one
extra no-grad forward) and with ``precompute_ref_log_probs`` (policy forward/backward only, like ours); both in
float32 without activation checkpointing, as ours runs (TRL's DPOConfig defaults to bfloat16 autocast and
checkpointing: on a CPU without bfloat16 instructions that step was ~15x slower). Step time
is the median of steps after warm-up, measured between ``on_step_begin`` and ``on_step_end`` (data loading,
collation, forward, backward, optimizer step); the goal is ours ≤ 1.1 × DPO's.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import tempfile
import time

import datasets
import torch
from transformers import LlamaForCausalLM, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (seconds), and the padded token shape of the model's training inputs."""

    def __init__(self):
        self.times: list[float] = []
        self.shapes: list[tuple] = []
        self._start = None

    def watch(self, model):
        def record(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if module.training and ids is not None:
                self.shapes.append(tuple(ids.shape))

        model.register_forward_pre_hook(record, with_kwargs=True)
        return model

    def tokens(self) -> float:
        """Mean padded tokens per training forward."""
        return statistics.mean(a * b for a, b in self.shapes) if self.shapes else float("nan")

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def pair_rows(count: int, seed: int) -> list[dict]:
    """Gym prompts with a correct (chosen) and a worse (rejected) answer, as plain strings."""
    from workbench.gym.world import make_prompts, sample_candidate

    rng = random.Random(seed)
    rows = []
    for prompt in make_prompts(count, "train", seed=seed):
        rows.append(
            {
                "prompt": prompt.text,
                "chosen": sample_candidate(prompt, {"correct": 1.0}, rng),
                "rejected": sample_candidate(prompt, {"near_miss": 0.5, "wrong": 0.5}, rng),
            }
        )
    return rows


def quiet(trainer):
    """No per-log printing: stdout carries only the JSON report."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def median_ms(times: list[float], warmup: int) -> float:
    return 1e3 * statistics.median(times[warmup:])


def time_ours(path: str, tokenizer, rows: list[dict], n: int, batch: int, steps: int, warmup: int) -> dict:
    from workbench.methods.pad import ListwiseObjective
    from workbench.trainers import DistillTrainer, ListwiseCollator, training_arguments

    if n == 2:
        data = {
            "prompt": [r["prompt"] for r in rows],
            "responses": [[r["chosen"], r["rejected"]] for r in rows],
            "teacher_rewards": [[1.0, 0.0] for _ in rows],
        }
    else:  # n = 4: two prompts' answers per prompt, same sequence count per step with half the prompts
        data = {"prompt": [], "responses": [], "teacher_rewards": []}
        for a, b in zip(rows[::2], rows[1::2]):
            data["prompt"].append(a["prompt"])
            data["responses"].append([a["chosen"], a["rejected"], b["chosen"], b["rejected"]])
            data["teacher_rewards"].append([1.0, 0.0, 0.5, 0.2])
    timer = StepTimer()
    model = timer.watch(LlamaForCausalLM.from_pretrained(path))
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(out, steps=steps, lr=1e-4, batch_size=batch, progress=False, warmup_ratio=0.0)
        trainer = DistillTrainer(
            model=model,
            args=args,
            train_dataset=datasets.Dataset.from_dict(data),
            data_collator=ListwiseCollator(tokenizer),
            objective=ListwiseObjective("ppd", 10.0),
            callbacks=[timer],
        )
        quiet(trainer).train()
    return {
        "step_ms": round(median_ms(timer.times, warmup), 2),
        "prompts_per_step": batch,
        "sequences_per_step": batch * n,
        "padded_tokens_per_forward": round(timer.tokens(), 1),
        "forwards_per_step": len(timer.shapes) / steps,
    }


def time_dpo(path: str, tokenizer, rows: list[dict], batch: int, steps: int, warmup: int, precompute: bool) -> dict:
    from trl import DPOConfig, DPOTrainer

    from workbench.trainers import checkpointing_argument

    data = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
        }
    )
    timer = StepTimer()
    policy = timer.watch(LlamaForCausalLM.from_pretrained(path))
    reference = LlamaForCausalLM.from_pretrained(path)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            beta=0.1,
            learning_rate=1e-4,
            max_steps=steps,
            per_device_train_batch_size=batch,
            lr_scheduler_type="cosine",
            save_strategy="no",
            report_to=[],
            logging_steps=max(1, steps // 4),
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            precompute_ref_log_probs=precompute,
            # as ours: float32, no recomputation (TRL's defaults are bfloat16 autocast and checkpointing)
            bf16=False,
            **{checkpointing_argument(): False},
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        quiet(trainer).train()
    return {
        "step_ms": round(median_ms(timer.times, warmup), 2),
        "pairs_per_step": batch,
        "sequences_per_step": 2 * batch,
        "padded_tokens_per_forward": round(timer.tokens(), 1),
        "forwards_per_step": len(timer.shapes) / steps,
        "precompute_ref_log_probs": precompute,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gym-teacher-ref", help="a gym preset (the policy trained by both)")
    parser.add_argument("--batch", type=int, default=32, help="pairs (= prompts at n = 2) per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps = 15
    warmup = max(2, args.steps // 5)
    logging.disable(logging.WARNING)
    from workbench.models import resolve
    from workbench.trainers import set_threads

    set_threads()
    path = resolve(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = pair_rows(args.batch * args.steps, seed=0)
    params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(path).parameters())
    results = {
        "dpo_with_reference": time_dpo(path, tokenizer, rows, args.batch, args.steps, warmup, precompute=False),
        "dpo_precomputed_reference": time_dpo(path, tokenizer, rows, args.batch, args.steps, warmup, precompute=True),
        "ours_ppd_n2": time_ours(path, tokenizer, rows, 2, args.batch, args.steps, warmup),
        "ours_ppd_n4": time_ours(path, tokenizer, rows, 4, args.batch // 2, args.steps, warmup),
    }
    dpo, dpo_policy = results["dpo_with_reference"]["step_ms"], results["dpo_precomputed_reference"]["step_ms"]
    report = {
        "benchmark": "train_step",
        "model": args.model,
        "params": params,
        "batch_pairs": args.batch,
        "steps": args.steps,
        "warmup_steps": warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.processor() or platform.machine(),
        "results": results,
        "ratio_ours_n2_vs_dpo": round(results["ours_ppd_n2"]["step_ms"] / dpo, 3),
        "ratio_ours_n4_vs_dpo": round(results["ours_ppd_n4"]["step_ms"] / dpo, 3),
        "ratio_ours_n2_vs_dpo_policy_only": round(results["ours_ppd_n2"]["step_ms"] / dpo_policy, 3),
        "goal": "ours <= 1.1 x DPO step",
    }
    report["goal_met"] = report["ratio_ours_n2_vs_dpo"] <= 1.1 and report["ratio_ours_n4_vs_dpo"] <= 1.1
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
