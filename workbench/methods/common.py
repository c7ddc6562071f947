"""Pieces every method pipeline shares: the run result, the prompt sets with a gold reward (``PROMPT_PRESETS``: the
gym, ``verifiable``) and gold scoring of chat prompts, and the path of preference data: train / held-out rows, and
evaluation without a gold reward (a judge when one is configured, otherwise none: the run reports training
metrics)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.encoding import as_messages
from workbench.metering import unmetered
from workbench.methods.config import RESUME_NEUTRAL, has_gold
from workbench.rewards import user_text

logger = logging.getLogger("workbench.methods")


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

    def save_student(self, output_dir: str | Path) -> Path:
        """The trained student in ``output_dir/student`` (:func:`save_student`)."""
        if self.model is None:
            raise ValueError("this result holds no trained model (a record read back from disk?)")
        return save_student(self.model, self.tokenizer, Path(output_dir) / "student")


def save_student(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> Path:
    """A trained student and its tokenizer as a ``save_pretrained`` folder (a LoRA run: its adapter, which names
    its base model), loadable by ``workbench.models.load``; ``state_dict``: weights gathered from FSDP shards."""
    folder = Path(folder)
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class TrainedRun:
    """What a method's ``train_run`` returns (training only, no evaluation; ``python -m workbench.train``): the
    training log, the trained student, the rows it trained on by name (saved with ``-p save_rows true``) and
    run facts for ``config.json`` (stage diagnostics, pair counts)."""

    history: list[dict]
    model: object
    tokenizer: object
    rows: dict[str, list[dict]]
    info: dict


@contextlib.contextmanager
def loaded_once(load: Callable[[], Any]):
    """Yields ``get()``, which returns ``load()``'s value, loading it at the first call only; when the block ends
    the value is let go and accelerator memory released. A stage computed in resumable pieces
    (:func:`workbench.distributed.map_in_shards`) so loads its model once, and not at all when it has no piece."""
    held: list = []

    def get():
        if not held:
            held.append(load())
        return held[0]

    try:
        yield get
    finally:
        held.clear()
        from workbench.topk_cache import release_memory

        release_memory()


def run_checkpoints(cfg, state=None):
    """The run's :class:`workbench.trainers.Checkpoints` (``<output_dir>/checkpoints``, every ``cfg.save_steps``
    steps), or None when ``save_steps`` is 0.

    The folder records the settings of the run that made it (``run.json``); resuming with other settings would
    mix two runs, so that is refused, naming the settings that differ and the ways out."""
    from dataclasses import MISSING, asdict, fields

    from workbench.trainers import Checkpoints

    if not cfg.save_steps:
        return None
    folder = Path(cfg.output_dir) / "checkpoints"
    settings = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in RESUME_NEUTRAL}, default=str))
    record = folder / "run.json"
    if record.exists():
        # settings recorded by an older version: neutral ones are ignored, fields it lacked count at their default
        saved = {k: v for k, v in json.loads(record.read_text()).items() if k not in RESUME_NEUTRAL}
        defaults = json.loads(
            json.dumps({f.name: f.default for f in fields(cfg) if f.default is not MISSING}, default=str)
        )
        saved = {**{k: defaults[k] for k in set(settings) - set(saved) if k in defaults}, **saved}
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            differences = "; ".join(f"{k}: {saved.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise ValueError(
                f"{folder} holds checkpoints of a run with other settings ({differences}); resume with "
                f"the same settings, or start afresh in another output_dir (or delete {folder})"
            )
    elif state is None or state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
        tmp.replace(record)
    return Checkpoints(folder, cfg.save_steps)


def gym_prompts(split: str, count: int, seed: int):
    """``count`` gym prompts of ``split`` (train prompts per run seed; held-out prompts fixed across runs)."""
    from workbench.gym.world import make_prompts

    return make_prompts(count, split, seed=seed)


HELD_OUT_SEED = 1000  # every method evaluates on the same held-out prompts


def preset_prompts(dataset: str, split: str, count: int, seed: int) -> list:
    """``count`` prompts of ``split`` of the prompt set ``dataset`` (a ``PROMPT_PRESETS`` name: ``"gym"`` gives
    :func:`gym_prompts`' prompts), each with ``text`` and ``answer_text``."""
    from workbench.data.presets import PROMPT_PRESETS

    return PROMPT_PRESETS[dataset].prompts(split, count, seed)


def gold_reward_of(cfg):
    """The gold reward ``(prompt, response) -> [0, 1]`` of the run's prompt set (``cfg.dataset``, a
    ``PROMPT_PRESETS`` name), as ``workbench.evaluate.evaluate_policy`` takes it."""
    from workbench.data.presets import PROMPT_PRESETS

    return PROMPT_PRESETS[cfg.dataset].gold_reward


def gold_of(prompt, response: str) -> float:
    """Gold reward of a response to a (chat or plain) prompt of a set with a gold reward: the reward of the set whose
    parser reads the prompt's user text (``PROMPT_PRESETS``; the sets' texts are disjoint: a gym prompt starts with
    a task name, a verifiable one with an English question), so a prompt carries its own scorer."""
    from workbench.data.presets import PROMPT_PRESETS

    text = user_text(prompt)
    for preset in PROMPT_PRESETS.values():
        try:
            parsed = preset.parse(text)
        except ValueError:
            continue
        return preset.gold_reward(parsed, response)
    raise ValueError(
        f"no gold reward for the prompt {text[:80]!r}: it is none of the prompt sets with one "
        f"({sorted(PROMPT_PRESETS)}; workbench.data.PROMPT_PRESETS)"
    )


def finish_run(
    cfg, student, tokenizer, held_out, before: dict, history: list[dict], started: float, **extra
) -> RunResult:
    """Evaluate the trained student on the held-out prompts, build the metrics (before/after, win rate, length
    buckets, ``extra``), save them to ``cfg.output_dir`` and return the run."""
    import time
    from dataclasses import asdict

    from workbench.evaluate import before_after_metrics, evaluate_policy

    after = evaluate_policy(
        student,
        tokenizer,
        held_out,
        n=cfg.eval_samples,
        seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens,
        gold_reward=gold_reward_of(cfg),
    )
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


# --- preference datasets: no gold reward ---


def response_text(messages) -> str:
    """A response column entry (assistant messages, or already text) as one text."""
    if isinstance(messages, str):
        return messages
    return "\n\n".join(m["content"] for m in messages)


def preference_splits(source: str, schema: str | None, train_rows: int, held_out_rows: int, seed: int):
    """(train, held-out) pairs of a preference dataset (``workbench.data.load_preference_data``: preset, hub id or
    local file; invalid rows filtered and counted), columns ``prompt`` (messages), ``chosen`` / ``rejected`` (text).

    Held-out rows are the preset's test split when it has one; otherwise (local files, hub ids, train-only presets)
    a fixed carve (``HELD_OUT_SEED``) of at most half the rows, disjoint from the train rows. Train rows are a
    ``seed``-ed subset of ``train_rows``, in file order.
    """
    import numpy as np

    from workbench.data import PRESETS, load_preference_data

    def load(split: str, **kwargs):
        ds = load_preference_data(source, split, schema=schema or None, on_invalid="filter", **kwargs)
        return ds.map(
            lambda row: {"chosen": response_text(row["chosen"]), "rejected": response_text(row["rejected"])},
            remove_columns=[c for c in ds.column_names if c not in ("prompt", "chosen", "rejected")],
        )

    preset = PRESETS.get(str(source))
    if preset is not None and "test" in preset.splits:
        return load("train", max_rows=train_rows, seed=seed), load("test", max_rows=held_out_rows, seed=HELD_OUT_SEED)
    rows = load("train")
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(rows))
    held = sorted(order[: min(held_out_rows, len(rows) // 2)].tolist())
    rest = sorted(order[len(held) :].tolist())
    if len(rest) > train_rows:
        rest = sorted(np.random.default_rng(seed).choice(rest, size=train_rows, replace=False).tolist())
    return rows.select(rest), rows.select(held)


def conversation_text(prompt) -> str:
    """A chat prompt as the plain question text a judge's MCQ template reads (earlier turns prefixed by role)."""
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@unmetered()
def no_gold_evaluation(cfg, prompts, answers_before: list[str] | None, answers_after: list[str] | None) -> dict:
    """Metrics of a run on data without a gold reward: gold fields ``None`` with the reason in ``gold_evaluation``,
    and, when ``cfg.judge`` names a model, its MCQ win rate of the trained student's answers over the initial
    student's (``workbench.evaluate.judge_win_rate``; a judge measurement, weaker than gold, labelled as such).

    ``answers_*`` hold ``len(answers) / len(prompts)`` answers per prompt, prompt-major (None without a judge).
    """
    reason = (
        f"skipped: dataset {cfg.dataset!r} has no gold reward (only the prompt sets of "
        "workbench.data.PROMPT_PRESETS, the gym and 'verifiable', have an exact scorer); "
    )
    out = {"gold_before": None, "gold_after": None, "win_rate_vs_initial": None, "judge": None}
    if not cfg.judge or not len(prompts):
        why = "no judge configured (judge='')" if not cfg.judge else "no held-out prompts to judge"
        return {**out, "gold_evaluation": reason + why + ", so the run reports training metrics only"}
    from workbench.evaluate import judge_win_rate
    from workbench.models import load
    from workbench.topk_cache import release_memory

    per_prompt = len(answers_after) // len(prompts)
    questions = [conversation_text(p) for p in prompts for _ in range(per_prompt)]
    judge, judge_tok = load(cfg.judge, quantization=cfg.quantization)
    try:
        judged = judge_win_rate(judge, judge_tok, questions, answers_after, answers_before, seed=cfg.seed)
    finally:
        del judge
        release_memory()
    return {
        **out,
        "gold_evaluation": reason + f"judged by {cfg.judge!r} instead (see 'judge')",
        "judge": {
            **judged,
            "judge": cfg.judge,
            "comparison": "trained student vs initial student",
            "pairs": len(questions),
        },
    }


def load_frozen_teacher(
    name: str, *, quantization: str | None = None, served_by_vllm: bool = False, device: str | None = None
):
    """(teacher, tokenizer): the loaded model, or when a vLLM engine serves it the folder / hub id it reads the
    weights from (they never enter this process) and the tokenizer alone."""
    from workbench.models import load, load_tokenizer, resolve

    if served_by_vllm:
        if quantization:
            logger.info("the teacher is served by vLLM, so quantization=%r does not apply to it", quantization)
        source = str(resolve(name))  # resolved once: a preset may be built or converted on first use
        return source, load_tokenizer(source)
    return load(name, quantization=quantization, device=device)


@unmetered()
def held_out_evaluation(cfg, model, tokenizer, held_out, *, gold: bool, temperature: float = 0.8):
    """What a run measures on its held-out prompts, before and after training: the gold evaluation of its prompt set
    (``evaluate_policy`` with :func:`gold_reward_of`), else the answers a judge will compare (None when no judge is
    configured)."""
    from workbench.evaluate import evaluate_policy

    sampling = {
        "n": cfg.eval_samples,
        "temperature": temperature,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
    }
    if gold:
        return evaluate_policy(model, tokenizer, held_out, **sampling, gold_reward=gold_reward_of(cfg))
    return policy_answers(model, tokenizer, held_out, **sampling) if cfg.judge else None


@unmetered()
def policy_answers(model, tokenizer, prompts, *, n: int, temperature: float, seed: int, max_new_tokens: int):
    """``n`` sampled answers per prompt (prompt-major texts), as the judge compares them."""
    from workbench.sampling import sample_responses

    return list(
        sample_responses(
            model,
            tokenizer,
            list(prompts),
            n=n,
            temperature=temperature,
            seed=seed,
            max_new_tokens=max_new_tokens,
            progress=False,
        )["response"]
    )


@contextlib.contextmanager
def metrics_kept_on_divergence(cfg, method: str, history: list[dict], **facts):
    """A method run's training block: when it diverges (``workbench.divergence.TrainingDiverged``),
    ``cfg.output_dir`` gets the metrics so far — ``method``, the config, ``facts`` (e.g. the evaluation before
    training) and the training summary of ``history`` (the run's log, which the block extends in place) followed by
    the diverged call's log — then the error goes on."""
    from dataclasses import asdict

    from workbench.divergence import TrainingDiverged

    try:
        yield
    except TrainingDiverged as error:
        full = [*history, *error.history]
        error.save(
            cfg.output_dir,
            history=full,
            method=method,
            dataset=getattr(cfg, "dataset", None),
            config=asdict(cfg),
            **facts,
            training=training_summary(full),
        )
        raise


def training_summary(history: list[dict]) -> dict:
    """First and last logged loss and the final mean training loss per stage of a Trainer log history."""
    stages: dict[str, dict] = {}
    for entry in history:
        stage = stages.setdefault(str(entry.get("stage", "train")), {})
        if "loss" in entry:
            stage.setdefault("loss_first", float(entry["loss"]))
            stage["loss_last"] = float(entry["loss"])
            stage["logged_steps"] = stage.get("logged_steps", 0) + 1
        if "train_loss" in entry:
            stage["train_loss"] = float(entry["train_loss"])
    return stages


DEFAULT_LENGTH_EDGES = (0, 2, 4, 6, 8, float("inf"))  # words; gym answers are 1-9 words (paper: (20, 30] peak)


@dataclass(frozen=True)
class DatasetPrompt:
    """A prompt of a preference dataset shaped like a gym prompt: ``text`` (chat messages) and ``answer_text``
    (the dataset's chosen response: the reference y of Eq. 5)."""

    text: list
    answer_text: str


def dataset_prompts(cfg, held_out: bool) -> list[DatasetPrompt]:
    train, test = preference_splits(cfg.dataset, cfg.dataset_schema, cfg.train_prompts, cfg.eval_prompts, cfg.seed)
    rows = test if held_out else train
    return [DatasetPrompt(p, y) for p, y in zip(rows["prompt"], rows["chosen"])]


def distillation_prompts(cfg) -> list:
    """The distillation set D (train prompts of a prompt set with a gold reward, per seed, or the dataset's train
    prompts), cut to ``data_fraction`` as a prefix (Fig. 4)."""
    if has_gold(cfg):
        prompts = preset_prompts(getattr(cfg, "dataset", "gym"), "train", cfg.train_prompts, cfg.seed + 101)
    else:
        prompts = dataset_prompts(cfg, held_out=False)
    return prompts[: max(1, round(cfg.data_fraction * len(prompts)))]


def held_out_prompts(cfg) -> list:
    """The evaluation prompts: fixed test prompts of a prompt set with a gold reward (the gym, ``verifiable``), or the
    dataset's held-out rows (``preference_splits``)."""
    if has_gold(cfg):
        return preset_prompts(cfg.dataset, "test", cfg.eval_prompts, HELD_OUT_SEED)
    return dataset_prompts(cfg, held_out=True)


def teacher_samples(
    teacher,
    tokenizer,
    prompts,
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    progress: bool = False,
    backend: str = "hf",
    engine_options: dict | None = None,
    batch_size: int = 32,
    first_batch: int = 0,
    hf_levers=None,
) -> list[str]:
    """One teacher sample per prompt (Alg. 1 line 6); the seed rule is fixed, so SeqKD trains on PLaD's ŷ+.
    ``first_batch``: the global index of the first prompt's sampling batch when ``prompts`` is a process's shard."""
    from workbench.sampling import sample_responses

    samples = sample_responses(
        teacher,
        tokenizer,
        [p.text for p in prompts],
        n=1,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed * 1000 + 7 + first_batch,
        progress=progress,
        backend=backend,
        engine_options=engine_options,
        hf_levers=hf_levers,
    )
    return list(samples["response"])
