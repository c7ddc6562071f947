"""One evaluation for every run: held-out prompts and samples, gold, win rates, reward accuracy, ranking agreement."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import TrainerCallback

from workbench.evaluate import evaluate_policy, gold_ranked_pairs, length_bucket_gains, prompt_lengths, win_rate
from workbench.evaluate import reward_accuracy as pair_accuracy
from workbench.metering import FIELDS, unmetered
from workbench.methods.common import HELD_OUT_SEED, RunResult, preset_prompts
from workbench.rewards import user_text

logger = logging.getLogger("workbench.compare")

# --- one evaluation for every run ---


@dataclass(frozen=True)
class EvalConfig:
    """What every run is evaluated on (the defaults equal the method pipelines' own evaluation, so the samples of
    the trained student come from the stage cache)."""

    teacher: str = "gym-teacher-dpo"
    student: str = "gym-student"
    eval_prompts: int = 128
    eval_samples: int = 4
    max_new_tokens: int = 24
    alpha: float = 0.8  # the teacher ranking for Kendall τ is PAD's calibrated r̂ (Eq. 9)
    mcq_order: str = "random"
    length_edges: tuple[float, ...] = (0, 2, 4, 6, 8, float("inf"))
    split: str = "test"  # the split evaluated on: "test" for the table, "validation" for choosing settings
    dataset: str = "gym"  # the prompt set with a gold reward (workbench.data.PROMPT_PRESETS): "gym" or "verifiable"
    temperature: float = 0.8  # the table's setting (PAD §4.1's sampling temperature)
    # the other settings every run and reference is also scored at (0: greedy, one answer per prompt), so a claim
    # such as "the student beats its teacher" can be read at each side's best setting
    also_at: tuple[float, ...] = (0.0, 0.3, 1.0)
    curve_every: int = 50  # validation gold every this many optimizer steps of a run's training (0: no curve)
    curve_prompts: int = 32
    curve_samples: int = 2

    def held_out(self):
        return preset_prompts(self.dataset, self.split, self.eval_prompts, HELD_OUT_SEED)

    def gold_reward(self):
        """The gold reward of the prompt set, as ``evaluate_policy`` takes it."""
        from workbench.data.presets import PROMPT_PRESETS

        return PROMPT_PRESETS[self.dataset].gold_reward

    def preference_pairs(self, held_out=None) -> list[dict]:
        """The fixed held-out pairs reward accuracy is measured on (:func:`heldout_preference_pairs`), from
        ``held_out`` when the caller has drawn them already."""
        return heldout_preference_pairs(self.held_out() if held_out is None else held_out, self.dataset)

    def evaluate(self, model, tokenizer, held_out, seed: int, temperature: float | None = None) -> dict:
        """``evaluate_policy`` of ``model`` on the held-out prompts: ``eval_samples`` each (one when greedy) at
        ``max_new_tokens`` and ``temperature`` (default: the table's), seeded like the run, scored by the prompt
        set's gold reward."""
        temperature = self.temperature if temperature is None else temperature
        return evaluate_policy(
            model,
            tokenizer,
            held_out,
            n=self.eval_samples if temperature > 0 else 1,
            temperature=temperature,
            seed=seed,
            max_new_tokens=self.max_new_tokens,
            gold_reward=self.gold_reward(),
        )

    def evaluate_settings(self, model, tokenizer, held_out, seed: int) -> dict:
        """Gold at each of ``also_at``, by :func:`setting_name`: ``{"greedy": {"gold", "per_prompt"}, ...}``."""
        out = {}
        for temperature in self.also_at:
            evaluation = self.evaluate(model, tokenizer, held_out, seed, temperature)
            out[setting_name(temperature)] = {k: evaluation[k] for k in ("gold", "per_prompt")}
        return out

    def models(self) -> dict[str, str]:
        """The teacher and student these runs start from, by :func:`workbench.models.model_identity`."""
        from workbench.models import model_identity

        return {
            "teacher": model_identity(self.teacher),
            "student": model_identity(self.student),
            **({"split": self.split} if self.split != "test" else {}),
            **({"dataset": self.dataset} if self.dataset != "gym" else {}),
        }

    def weights(self) -> dict[str, str | None]:
        """The teacher's and student's weights as built here (:func:`workbench.models.weights_fingerprint`; None
        for a model that is neither a gym preset nor the real-text teacher): the same :meth:`models` built under
        other libraries differ here."""
        from workbench.models import weights_fingerprint

        return {"teacher": weights_fingerprint(self.teacher), "student": weights_fingerprint(self.student)}


def setting_name(temperature: float) -> str:
    """A sampling setting's name in records and tables: "greedy" for 0, else "T=0.8"."""
    return "greedy" if temperature == 0 else f"T={float(temperature)}"


def held_out_tasks(n_prompts: int, split: str = "test") -> list[str]:
    """The gym task of each held-out prompt the records score, in their order (:meth:`EvalConfig.held_out`: the
    same prompts in every world of the recipe)."""
    return [p.task for p in EvalConfig(eval_prompts=n_prompts, split=split).held_out()]


EVAL_OVERRIDES = ("teacher", "student", "eval_prompts", "eval_samples", "max_new_tokens", "dataset")


def heldout_preference_pairs(prompts, dataset: str = "gym", seed: int = HELD_OUT_SEED) -> list[dict]:
    """One gold-ranked pair per held-out prompt: a fixed, model-independent test set for reward accuracy (DESIGN:
    chosen avg-log-lik > rejected). Gym: two of the gym's candidate kinds (the judge mix) of different gold.
    Verifiable: the program-built satisfying answer ≻ its near miss, the same answer with the prompt's first
    constraint broken (``workbench.data.verifiable.near_miss_answer``)."""
    if dataset == "verifiable":
        from workbench.data.verifiable import near_miss_answer, satisfying_answer

        pairs = [(p, satisfying_answer(p), near_miss_answer(p)) for p in prompts]
        return [{"prompt": p.text, "chosen": c, "rejected": r} for p, c, r in pairs if r is not None]
    from workbench.gym.build import JUDGE_MIX

    rows = gold_ranked_pairs(prompts, JUDGE_MIX, random.Random(seed), max_tries=100)
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def reward_accuracy(model, tokenizer, pairs: Sequence[dict]) -> float:
    """Reward accuracy as the comparison table reports it: a tie counts one half
    (:func:`workbench.evaluate.reward_accuracy`)."""
    return pair_accuracy(model, tokenizer, pairs, ties="half")


EXAMPLES = 4  # held-out prompts whose first sample a record keeps, to read what a run's numbers stand for


def _evaluation_summary(evaluation: dict) -> dict:
    samples = evaluation["samples"]
    first = [i for i, sample_id in enumerate(samples["sample_id"]) if sample_id == 0][:EXAMPLES]
    return {
        "gold": evaluation["gold"],
        "per_prompt": evaluation["per_prompt"],
        "length": evaluation["length"],
        "prompt_lengths": prompt_lengths(evaluation).tolist(),
        "examples": [{"prompt": user_text(samples["prompt"][i]), "response": samples["response"][i]} for i in first],
    }


def reference_evaluations(seed: int, eval_cfg: EvalConfig = EvalConfig()) -> dict:
    """The initial student and the teacher on the held-out prompts (seeded like every run), with their reward
    accuracy on the held-out pairs."""
    from workbench.models import load

    held_out = eval_cfg.held_out()
    pairs = eval_cfg.preference_pairs(held_out)
    out = {}
    for role, name in (("student", eval_cfg.student), ("teacher", eval_cfg.teacher)):
        model, tokenizer = load(name)
        evaluation = eval_cfg.evaluate(model, tokenizer, held_out, seed)
        out[role] = {
            **_evaluation_summary(evaluation),
            "reward_accuracy": reward_accuracy(model, tokenizer, pairs),
            "by_temperature": eval_cfg.evaluate_settings(model, tokenizer, held_out, seed),
        }
    return out


def evaluate_run(result: RunResult, references: dict, seed: int, eval_cfg: EvalConfig = EvalConfig()) -> dict:
    """The harness's uniform evaluation of a trained student (module docstring); JSON-ready."""
    from workbench.methods.pad_ranking import ranking_agreement
    from workbench.models import load

    started = time.perf_counter()
    held_out = eval_cfg.held_out()
    model, tokenizer = result.model, result.tokenizer
    after = eval_cfg.evaluate(model, tokenizer, held_out, seed)
    initial, teacher_eval = references["student"], references["teacher"]
    teacher, teacher_tok = load(eval_cfg.teacher)
    ranking = ranking_agreement(
        model,
        tokenizer,
        teacher,
        teacher_tok,
        after["samples"],
        alpha=eval_cfg.alpha,
        mcq_order=eval_cfg.mcq_order,
        seed=seed,
    )
    return {
        **_evaluation_summary(after),
        "win_rate_vs_initial": win_rate(after["per_prompt"], initial["per_prompt"]),
        "win_rate_vs_teacher": win_rate(after["per_prompt"], teacher_eval["per_prompt"]),
        "reward_accuracy": reward_accuracy(model, tokenizer, eval_cfg.preference_pairs(held_out)),
        "tau_student_teacher": ranking["tau_student_teacher"]["mean"],
        "tau_student_gold": ranking["tau_student_gold"]["mean"],
        # τ skips a set whose samples one scoring cannot rank (all equal): how many sets each mean is over
        "tau_sets": {
            pair: {k: ranking[f"tau_{pair}"][k] for k in ("n", "skipped_sets")}
            for pair in ("student_teacher", "student_gold")
        },
        "length_buckets": length_bucket_gains(
            after["per_prompt"], initial["per_prompt"], initial["prompt_lengths"], eval_cfg.length_edges
        ),
        "by_temperature": eval_cfg.evaluate_settings(model, tokenizer, held_out, seed),
        "eval_seconds": time.perf_counter() - started,
    }


class ValidationCurve(TrainerCallback):
    """The student's gold on ``curve_prompts`` validation prompts (``curve_samples`` each at the table's temperature)
    before training, every ``curve_every`` optimizer steps and at the end of each training call, steps counted
    across a run's calls (rounds, stages). Sampling reseeds torch, so each point runs under a forked RNG: the run
    trains exactly as it would without the curve. ``points``: ``[{"step", "gold"}]``; ``seconds``: the time the
    points took."""

    def __init__(self, eval_cfg: EvalConfig, seed: int):
        if eval_cfg.curve_every < 1:
            raise ValueError(f"curve_every={eval_cfg.curve_every}; a curve needs a point every ≥ 1 steps")
        self.every = eval_cfg.curve_every
        self.cfg = dataclasses.replace(
            eval_cfg, split="validation", eval_prompts=eval_cfg.curve_prompts, eval_samples=eval_cfg.curve_samples
        )
        self.prompts = self.cfg.held_out()
        self.seed = seed
        self.points: list[dict] = []
        self.seconds = 0.0
        self._offset = 0
        self._tokenizer = None

    def _measure(self, model, step: int) -> None:
        import torch

        from workbench.models import load_tokenizer

        started = time.perf_counter()
        self._tokenizer = self._tokenizer or load_tokenizer(self.cfg.student)
        training = model.training
        model.eval()
        with torch.random.fork_rng(), unmetered():
            gold = self.cfg.evaluate(model, self._tokenizer, self.prompts, self.seed)["gold"]["mean"]
        model.train(training)
        self.points.append({"step": self._offset + step, "gold": gold})
        self.seconds += time.perf_counter() - started

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.points:  # the student before its first step
            self._measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._measure(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            self._measure(model, state.global_step)
        self._offset += state.global_step


class OptimizerSteps(TrainerCallback):
    """The optimizer steps of a run, summed over its training calls (rounds, stages)."""

    def __init__(self):
        self.steps = 0

    def on_train_end(self, args, state, control, **kwargs):
        self.steps += state.global_step


def run_cost(meter, steps: int, student: str, config: dict | None = None) -> dict:
    """A run's cost beside its wall time (the record's ``train_seconds``): optimizer steps and the token positions
    forwarded (``workbench.metering``) by the student-sized models (the model named ``student`` and its copies: the
    policy, a DPO reference) and by every other model (the teachers), each with the positions under gradient and the
    forward calls. ``uncounted``: the run's vLLM backends (``config``'s ``sampling_backend`` / ``scoring_backend``),
    whose engines forward outside this process's models; ``complete`` is False when there is one, or when a
    stage-cache hit did not keep what it cost."""
    uncounted = [f"{k}=vllm" for k in ("sampling_backend", "scoring_backend") if (config or {}).get(k) == "vllm"]
    roles = {"student": dict.fromkeys(FIELDS, 0), "teacher": dict.fromkeys(FIELDS, 0)}
    for name, row in meter.counts.items():
        role = roles["student" if name == student else "teacher"]
        for field in FIELDS:
            role[field] += row[field]
    return {
        "optimizer_steps": steps,
        **roles,
        "by_model": meter.counts,
        "complete": meter.unknown_hits == 0 and not uncounted,
        "unknown_hits": meter.unknown_hits,
        **({"uncounted": uncounted} if uncounted else {}),
    }


@contextlib.contextmanager
def fresh_stage_cache():
    """Run with an empty, temporary stage cache (samples and scores recomputed), e.g. to time a method cold."""
    import workbench.cache as cache_module

    saved = cache_module._DEFAULT_CACHE
    with tempfile.TemporaryDirectory(prefix="workbench-cold-") as root:
        cache_module._DEFAULT_CACHE = cache_module.StageCache(root)
        try:
            yield
        finally:
            cache_module._DEFAULT_CACHE = saved
