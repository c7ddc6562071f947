"""Pieces every method pipeline shares: the run result, gym prompt sets, and gold scoring of chat prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workbench.encoding import as_messages


@dataclass
class RunResult:
    """What a method run returns: metrics (JSON-ready), the training log, and the trained student."""

    metrics: dict
    history: list[dict]
    model: object = None
    tokenizer: object = None

    def save(self, output_dir: str | Path) -> Path:
        path = Path(output_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.json").write_text(json.dumps(self.metrics, indent=2, default=float))
        (path / "history.json").write_text(json.dumps(self.history, indent=2, default=float))
        return path


def user_text(prompt) -> str:
    """The last user message of a prompt (what the gold reward and MCQ templates read)."""
    return as_messages(prompt)[-1]["content"]


def gym_prompts(split: str, count: int, seed: int):
    """``count`` gym prompts of ``split`` (train prompts per run seed; held-out prompts fixed across runs)."""
    from workbench.gym.world import make_prompts

    return make_prompts(count, split, seed=seed)


HELD_OUT_SEED = 1000  # every method evaluates on the same held-out prompts


def gold_of(prompt, response: str) -> float:
    """Gold reward of a response to a (chat or plain) gym prompt."""
    from workbench.gym.world import gold_reward

    return gold_reward(user_text(prompt), response)


def finish_run(cfg, student, tokenizer, held_out, before: dict, history: list[dict], started: float,
               **extra) -> RunResult:
    """Evaluate the trained student on the held-out prompts, build the metrics (before/after, win rate, length
    buckets, ``extra``), save them to ``cfg.output_dir`` and return the run."""
    import time
    from dataclasses import asdict

    from workbench.evaluate import before_after_metrics, evaluate_policy

    after = evaluate_policy(student, tokenizer, held_out, n=cfg.eval_samples, seed=cfg.seed,
                            max_new_tokens=cfg.max_new_tokens)
    metrics = {
        "method": cfg.method,
        "config": asdict(cfg),
        **before_after_metrics(before, after, cfg.length_edges),
        **extra,
        "seconds": time.perf_counter() - started,
    }
    result = RunResult(metrics, history, student, tokenizer)
    result.save(cfg.output_dir)
    return result
