"""The gym's training rows: SFT answers from a candidate mix, MCQ judging examples with graded labels, and the
collator that trains each option's verdict."""

from __future__ import annotations

import logging
import math
import random

from workbench.gym.world import (
    NUMBERS,
    Prompt,
    gold_reward,
    sample_candidate,
)

logger = logging.getLogger("workbench.gym")


def sft_rows(prompts: list[Prompt], mix: dict, rng: random.Random) -> dict[str, list]:
    return {"prompt": [p.text for p in prompts], "response": [sample_candidate(p, mix, rng) for p in prompts]}


def label_weights(golds: list[float], temperature: float) -> list[float]:
    """Unnormalised softmax(gold / T) over a judging row's options: the answer letter is drawn from it (a graded,
    calibrated judge rather than a hard argmax)."""
    top = max(golds)
    return [math.exp((g - top) / temperature) for g in golds]


def mcq_rows(prompts: list[Prompt], cfg, rng: random.Random) -> dict[str, list]:
    """Judging examples of a :class:`~workbench.gym.build.GymConfig` ``cfg``: k options of mixed quality; the label
    letter is drawn from softmax(gold / T).

    With ``cfg.judge_verdicts`` each row also carries its options' gold rewards as numbers round(scale · gold)
    (``verdicts``), which :class:`VerdictCollator` trains at each option letter's position; with
    ``cfg.judge_running_best`` it carries, for each option, the letter of the best option so far (``running``,
    drawn like the answer from the options up to it; the last is the answer)."""
    template = cfg.mcq_template
    rows = {
        "prompt": [],
        "response": [],
        **({"verdicts": []} if cfg.judge_verdicts else {}),
        **({"running": []} if cfg.judge_running_best else {}),
    }
    low, high = cfg.mcq_options
    for prompt in prompts:
        k = rng.randint(low, high)
        options = [sample_candidate(prompt, cfg.judge_mix, rng) for _ in range(k)]
        golds = [gold_reward(prompt, o) for o in options]
        weights = label_weights(golds, cfg.mcq_label_temperature)
        label = rng.choices(range(k), weights)[0]
        rows["prompt"].append(template.render(prompt.text, options))
        rows["response"].append(template.letters[label])
        if cfg.judge_verdicts:
            rows["verdicts"].append([round(cfg.judge_verdict_scale * g) for g in golds])
        if cfg.judge_running_best:
            so_far = [rng.choices(range(j + 1), weights[: j + 1])[0] for j in range(k - 1)] + [label]
            rows["running"].append([template.letters[i] for i in so_far])
    return rows


class VerdictCollator:
    """LM batches of (prompt, response[, verdicts][, running]) rows: response-only labels, and for a row with
    verdicts the position of each option letter in its prompt (its last, closing occurrence) is labelled with that
    option's verdict number (the label need not be the next input token), so every option gets a local, graded
    target beside the one answer letter; with ``running`` each "best" in the prompt is labelled with the letter of
    the best option so far."""

    def __init__(self, tokenizer, letters, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.letter_ids = {tokenizer.convert_tokens_to_ids(letter) for letter in letters}
        self.digit_ids = [tokenizer.convert_tokens_to_ids(word) for word in NUMBERS]
        self.best_id = tokenizer.convert_tokens_to_ids("best")

    def __call__(self, rows: list[dict]) -> dict:
        from workbench.encoding import collate_examples

        batch = collate_examples(
            self.tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], self.max_length
        )
        labels = batch["labels"]
        for b, row in enumerate(rows):
            verdicts, running = row.get("verdicts") or [], row.get("running") or []
            if not verdicts and not running:
                continue
            ids = batch["input_ids"][b].tolist()
            answer_at = int(batch["response_mask"][b].nonzero()[0])
            if running:
                closes = [t for t in range(answer_at) if ids[t] == self.best_id]
                if len(closes) != len(running):
                    raise ValueError(
                        f"row {b}: {len(running)} running-best letters but {len(closes)} 'best' tokens "
                        f"in its prompt {row['prompt']!r}"
                    )
                for t, letter in zip(closes, running):
                    labels[b, t + 1] = self.tokenizer.convert_tokens_to_ids(letter)
            if not verdicts:
                continue
            last = {ids[t]: t for t in range(answer_at) if ids[t] in self.letter_ids}  # a letter's closing position
            letters = sorted(last.values())
            if len(letters) != len(verdicts):
                raise ValueError(
                    f"row {b}: {len(verdicts)} verdicts but {len(letters)} option letters in its prompt "
                    f"{row['prompt']!r}; an option's text must not contain a letter token"
                )
            for t, verdict in zip(letters, verdicts):
                labels[b, t + 1] = self.digit_ids[verdict]
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
