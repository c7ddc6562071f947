"""DCKD, ADPA and ADPA+ pipelines (Gao et al., ICLR 2025) on the gym or a preference dataset, with the paper's
ablations as parameters.

Algorithm 1 (ADPA): SFT student → generate ŷ from it → cache the DPO and reference teachers' top-k on (x, ŷ) →
train on L_SFT(y_w) − γ Σ_t Σ_a π_θ(a|ŝ_t) A(ŝ_t, a) (Eq. 10). Algorithm 2 (ADPA+): the same, started from (and
with ŷ sampled from) the DCKD student (Eq. 7). Every method is a list of *stages* (``METHOD_STAGES``); every stage
composes the shared pieces: :func:`workbench.sampling.sample_responses`, :mod:`workbench.topk_cache`,
``DistillTrainer`` and the loss registry :data:`workbench.losses.LOSSES`.

**Gym preference data** (the paper's D_pref; the gym has none of its own). For each prompt two answers are drawn
from the gym's judge mix (:data:`PAIR_MIX`: correct, verbose, near-miss, copied, wrong and harmful answers) until
their gold rewards differ; the higher-gold one is y_w, the other y_l. So y_w is good but not always right
(mean gold ≈ 0.84, exactly correct ≈ 45%), like real chosen responses, and the SFT term alone cannot teach the
perfect answer: the teacher's signal has to. Held-out pairs built the same way on test prompts give the reward
accuracy of ADPA §4.5.

**Other prompt sets with a gold reward** (``dataset="verifiable"``: real English, no answer generator): the DPO
teacher samples :data:`SAMPLED_PAIR_SAMPLES` answers per prompt and the one of highest gold is y_w, the one of lowest
y_l (PAD App. B.3's max/min, with gold as the annotator); a prompt whose samples all score the same is skipped. The
run is scored by that gold reward as on the gym.

**Preference datasets** (``dataset`` = a ``workbench.data`` preset such as ``dpo-mix-7k`` / ``helpsteer2``, a hub
id, or a local file read in ``dataset_schema``): training uses the dataset's (x, y_w, y_l) pairs as the paper does;
held-out pairs come from the preset's test split or a fixed carve (:func:`workbench.methods.common.preference_splits`).
There is no gold reward: the run reports reward accuracy on the held-out pairs (the dataset's labels), training
metrics, and a judge's win rate over the initial student when ``judge`` names a judge model; gold fields are None
and ``gold_evaluation`` says why.

``run_adpa(AdpaConfig(method=..., seed=...))`` is the contract the comparison harness and notebook 06 use.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import datasets
import numpy as np
import torch

from workbench.distributed import map_in_shards, unsharded
from workbench.evaluate import gold_ranked_pairs, win_rate
from workbench.evaluate import reward_accuracy as pair_accuracy
from workbench.gym.build import JUDGE_MIX
from workbench.losses.adpa import (
    advantage_from_topk,
)
from workbench.metering import unmetered
from workbench.methods.adpa_config import METHOD_STAGES, STATE_SOURCE_NAMES, AdpaConfig
from workbench.methods.adpa_objectives import ON_POLICY_LOSSES, DckdObjective, OnPolicyObjective, TopkPairCollator
from workbench.methods.common import (
    HELD_OUT_SEED,
    RunResult,
    TrainedRun,
    gold_of,
    gold_reward_of,
    gym_prompts,
    has_gold,
    held_out_evaluation,
    loaded_once,
    metrics_kept_on_divergence,
    no_gold_evaluation,
    preference_splits,
    preset_prompts,
    run_checkpoints,
    training_summary,
)
from workbench.methods.config import hf_levers, vllm_engine_options
from workbench.real_text.store import TEACHERS
from workbench.sampling import group_responses, sample_responses
from workbench.topk_cache import TopkCache, topk_teacher
from workbench.trainers import (
    set_threads,
    train_distill,
    train_sft,
)

logger = logging.getLogger("workbench.adpa")

# the gym's judge mix (answers of every quality), so best-of-two is a realistic, imperfect "chosen"
PAIR_MIX = JUDGE_MIX

# teacher samples per prompt whose best and worst by gold make a pair on a prompt set without an answer generator
# (verifiable): with two, a reward in steps of 1/|C(x)| ties often and the prompt is lost
SAMPLED_PAIR_SAMPLES = 4


# ---------------------------------------------------------------------------------------------------------------
# data: gym preference pairs and reward accuracy
# ---------------------------------------------------------------------------------------------------------------


def gym_preference_pairs(prompts, seed: int, mix: dict | None = None, max_tries: int = 50) -> datasets.Dataset:
    """(x, y_w, y_l) per gym prompt (:func:`workbench.evaluate.gold_ranked_pairs` from ``mix``), as a Dataset with
    columns ``prompt`` (text), ``chosen``, ``rejected``, ``chosen_gold``, ``rejected_gold``; a prompt whose draws tie
    ``max_tries`` times is skipped (never seen on the gym: the mix has wrong answers)."""
    rows = gold_ranked_pairs(prompts, mix or PAIR_MIX, random.Random(f"pairs-{seed}"), max_tries)
    columns = ("prompt", "chosen", "rejected", "chosen_gold", "rejected_gold")
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in columns})


def gold_ranked_samples(prompts, groups: Sequence[Sequence[str]], gold_reward) -> datasets.Dataset:
    """(x, y_w, y_l) per prompt from its sampled answers: y_w the first of highest gold, y_l the first of lowest; a
    prompt whose answers all score the same is skipped. Columns as :func:`gym_preference_pairs`'."""
    rows: dict[str, list] = {name: [] for name in ("prompt", "chosen", "rejected", "chosen_gold", "rejected_gold")}
    for prompt, group in zip(prompts, groups):
        golds = [gold_reward(prompt.text, y) for y in group]
        best, worst = int(np.argmax(golds)), int(np.argmin(golds))
        if golds[best] == golds[worst]:
            continue
        for name, value in zip(rows, (prompt.text, group[best], group[worst], golds[best], golds[worst])):
            rows[name].append(value)
    return datasets.Dataset.from_dict(rows)


def sampled_preference_pairs(
    cfg: AdpaConfig, state=None, device: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out) pairs on a prompt set with a gold reward but no answer generator (``verifiable``): the DPO
    teacher's :data:`SAMPLED_PAIR_SAMPLES` samples per prompt (train prompts per seed, fixed test prompts) ranked by
    gold (:func:`gold_ranked_samples`). Sampling is sharded over ``state``'s processes in whole batches (batch b
    seeded ``seed·1000 + 11 + b`` however the prompts are sharded), so every process builds the pairs one builds;
    the teacher is loaded at the first piece and let go after the last."""
    from workbench.models import load

    splits = (
        (preset_prompts(cfg.dataset, "train", cfg.train_prompts, cfg.seed + 101), cfg.seed),
        (preset_prompts(cfg.dataset, "test", cfg.eval_prompts, HELD_OUT_SEED), HELD_OUT_SEED),
    )
    pairs = []
    with loaded_once(lambda: load(cfg.teacher_dpo, quantization=cfg.quantization, device=device)) as teacher:
        for prompts, seed in splits:

            def sample(texts, first_batch, seed=seed):
                model, tokenizer = teacher()
                samples = sample_responses(
                    model,
                    tokenizer,
                    texts,
                    n=SAMPLED_PAIR_SAMPLES,
                    temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.sampling_batch_size,
                    seed=seed * 1000 + 11 + first_batch,
                    progress=cfg.progress,
                    hf_levers=hf_levers(cfg),
                )
                return group_responses(samples)[1]

            groups = map_in_shards(sample, [p.text for p in prompts], cfg.sampling_batch_size, state)
            pairs.append(gold_ranked_samples(prompts, groups, gold_reward_of(cfg)))
    return pairs[0], pairs[1]


def preference_pairs(
    cfg: AdpaConfig, state=None, device: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out) pairs of a run: gold-ranked gym pairs (train prompts per seed, fixed test prompts), gold-ranked
    teacher samples on another prompt set with a gold reward (:func:`sampled_preference_pairs`), or the dataset's
    pairs (:func:`workbench.methods.common.preference_splits`; responses as text, no gold columns)."""
    if cfg.dataset == "gym":
        train = gym_preference_pairs(gym_prompts("train", cfg.train_prompts, cfg.seed + 101), seed=cfg.seed)
        return train, gym_preference_pairs(gym_prompts("test", cfg.eval_prompts, HELD_OUT_SEED), seed=HELD_OUT_SEED)
    if has_gold(cfg):
        return sampled_preference_pairs(cfg, state, device)
    return preference_splits(cfg.dataset, cfg.dataset_schema, cfg.train_prompts, cfg.eval_prompts, cfg.seed)


@unmetered()
def reward_accuracy(model, tokenizer, pairs: datasets.Dataset) -> float:
    """Reward accuracy as the ADPA runs report it (ADPA §4.5): y_w strictly above y_l, a tie counts as a miss
    (:func:`workbench.evaluate.reward_accuracy`)."""
    return pair_accuracy(model, tokenizer, pairs, ties="none")


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# state sources (App. E) and stages
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What the stages of one run share; ``state`` (accelerate's ``PartialState`` under ``accelerate launch``)
    shards sampling and the teachers' top-k passes over the processes (:func:`workbench.distributed.map_in_shards`)
    and ``device`` is where this process loads the teachers."""

    cfg: AdpaConfig
    student: object
    tokenizer: object
    pairs: datasets.Dataset
    history: list[dict]
    stages: list[dict]
    state: object = None
    device: str | None = None
    states: dict[str, list[str]] = field(default_factory=dict)  # stage name → its ŷ, one per pair
    checkpoints: object = None  # the run's Checkpoints (save_steps > 0): each stage resumes in stage<i>-<name>/
    given_states: list[str] | None = None  # ŷ of the first stage computed beforehand (notebook 06), used as given

    def stage_checkpoints(self, stage: int, name: str):
        return self.checkpoints and self.checkpoints.stage(f"stage{stage}-{name}")


def _sampled_states(ctx: RunContext, stage: int, model_of: Callable[[], tuple]) -> list[str]:
    """One ŷ per training prompt from the model ``model_of()`` returns as (model, tokenizer), in shards of whole
    sampling batches (batch b seeded ``seed·1000 + stage + b`` however the prompts are sharded); the model is
    loaded at the first piece of this process's shard and let go after the last (a loaded teacher is freed)."""
    cfg = ctx.cfg
    with loaded_once(model_of) as model_and_tokenizer:

        def sample(prompts, first_batch):
            model, tokenizer = model_and_tokenizer()
            return sample_responses(
                model,
                tokenizer,
                prompts,
                n=1,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.sampling_batch_size,
                seed=cfg.seed * 1000 + stage + first_batch,
                progress=cfg.progress,
                hf_levers=hf_levers(cfg),
            )["response"]

        return map_in_shards(sample, list(ctx.pairs["prompt"]), cfg.sampling_batch_size, ctx.state)


def _student_states(ctx: RunContext, stage: int) -> list[str]:
    """ŷ ~ π_θ(·|x) from the current student (Alg. 1 line 5; Alg. 2 line 6 after DCKD); an FSDP-sharded student
    samples through a whole copy (:func:`workbench.distributed.unsharded`)."""
    with unsharded(ctx.student) as student:
        return _sampled_states(ctx, stage, lambda: (student, ctx.tokenizer))


def _teacher_states(ctx: RunContext, stage: int) -> list[str]:
    """ŷ ~ π_dpo(·|x): teacher-generated states (App. E, Table 7 row 3); the teacher is freed afterwards."""
    from workbench.models import load

    return _sampled_states(
        ctx, stage, lambda: load(ctx.cfg.teacher_dpo, quantization=ctx.cfg.quantization, device=ctx.device)
    )


STATE_SOURCES: dict[str, Callable[[RunContext, int], list[str]]] = {
    "student": _student_states,
    "preferred": lambda ctx, stage: list(ctx.pairs["chosen"]),
    "dispreferred": lambda ctx, stage: list(ctx.pairs["rejected"]),
    "teacher": _teacher_states,
}
if tuple(STATE_SOURCES) != STATE_SOURCE_NAMES:
    raise RuntimeError(f"STATE_SOURCES {list(STATE_SOURCES)} differ from the config's {list(STATE_SOURCE_NAMES)}")


def _train(
    ctx: RunContext, rows, collator, objective, steps: int, stage: int, name: str, lr: float | None = None
) -> None:
    cfg = ctx.cfg
    log = train_distill(
        ctx.student,
        rows,
        collator,
        objective,
        steps=steps,
        lr=lr or cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + stage,
        warmup_ratio=cfg.warmup_ratio,
        progress=cfg.progress,
        checkpoints=ctx.stage_checkpoints(stage, name),
        **cfg.training_overrides(f"stage{stage}-{name}"),
    )
    ctx.history += [{**entry, "stage": name} for entry in log]


def _indexed(pairs: datasets.Dataset, **columns) -> datasets.Dataset:
    rows = pairs.add_column("index", list(range(len(pairs))))
    for name, values in columns.items():
        rows = rows.add_column(name, values)
    return rows


def _cache(ctx: RunContext, teacher: str, responses: Sequence[str]) -> TopkCache:
    """The teacher's top-k on (x, ŷ) for every training pair; each process computes its shard (loading the teacher
    only if its shard is not empty) and the entries are merged in pair order."""
    cfg = ctx.cfg
    name = {"dpo": cfg.teacher_dpo, "ref": cfg.teacher_ref}[teacher]

    with topk_teacher(
        name,
        ctx.tokenizer,
        k=cfg.k,
        quantization=cfg.quantization,
        batch_size=cfg.scoring_batch_size,
        progress=cfg.progress,
        backend=cfg.scoring_backend,
        engine_options=vllm_engine_options(cfg),
        device=ctx.device,
    ) as teacher_topk:

        def topk(items, first_batch):
            prompts, texts = zip(*items)
            cache = teacher_topk(list(prompts), list(texts))
            return [(cache.ids[i], cache.logps[i], cache.tail_logps[i], cache.teacher) for i in range(len(cache))]

        entries = map_in_shards(topk, list(zip(ctx.pairs["prompt"], responses)), cfg.scoring_batch_size, ctx.state)
    return TopkCache(
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        k=cfg.k,
        teacher=entries[0][3] if entries else "",
    )


def _stage_sft(ctx: RunContext, stage: int) -> dict:
    """L_SFT(y_w) alone on the same pairs: the α = γ = 0 baseline."""
    cfg = ctx.cfg
    rows = datasets.Dataset.from_dict({"prompt": ctx.pairs["prompt"], "response": ctx.pairs["chosen"]})
    log = train_sft(
        ctx.student,
        ctx.tokenizer,
        rows,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed + stage,
        warmup_ratio=cfg.warmup_ratio,
        progress=cfg.progress,
        checkpoints=ctx.stage_checkpoints(stage, "sft"),
        logits_chunk=cfg.logits_chunk,
        **cfg.training_overrides(f"stage{stage}-sft"),
    )
    ctx.history += [{**entry, "stage": "sft"} for entry in log]
    return {"stage": "sft"}


def _stage_dckd(ctx: RunContext, stage: int) -> dict:
    """DCKD (Eq. 7): π_dpo top-k on y_w and y_l, then SFT + α (KL_w + KL_l)."""
    cfg = ctx.cfg
    fields = ("chosen", "rejected") if cfg.use_rejected else ("chosen",)
    caches = {f"{name}_dpo": _cache(ctx, "dpo", ctx.pairs[name]) for name in fields}
    collator = TopkPairCollator(ctx.tokenizer, fields, caches)
    first_of_two = cfg.method == "adpa+"  # ADPA+'s DCKD stage has its own steps and rate
    steps = cfg.dckd_steps if (cfg.dckd_steps and first_of_two) else cfg.steps
    _train(
        ctx,
        _indexed(ctx.pairs),
        collator,
        DckdObjective(cfg.alpha, cfg.use_rejected, cfg.logits_chunk),
        steps,
        stage,
        "dckd",
        lr=cfg.dckd_lr if first_of_two else cfg.lr,
    )
    return {"stage": "dckd", "teacher_tail_mass_chosen": _mean_tail(caches["chosen_dpo"])}


def _stage_on_policy(loss: str) -> Callable[[RunContext, int], dict]:
    def stage_fn(ctx: RunContext, stage: int) -> dict:
        """ŷ from the state source → teacher top-k on (x, ŷ) → L_SFT(y_w) + the registered loss on ŷ."""
        cfg = ctx.cfg
        given = ctx.given_states if stage == 0 else None
        hats = given if given is not None else STATE_SOURCES[cfg.state_source](ctx, stage)
        ctx.states[loss] = hats
        spec = ON_POLICY_LOSSES[loss]
        caches = {f"hat_{teacher}": _cache(ctx, teacher, hats) for teacher in spec.teachers}
        collator = TopkPairCollator(ctx.tokenizer, ("chosen", "hat"), caches)
        objective = OnPolicyObjective(
            loss,
            cfg.gamma,
            cfg.beta,
            cfg.missing_rule,
            cfg.advantage_clamp,
            cfg.length_normalize,
            cfg.q_temperature,
            cfg.logits_chunk,
        )
        _train(ctx, _indexed(ctx.pairs, hat=hats), collator, objective, cfg.steps, stage, loss)
        info = {
            "stage": loss,
            "state_source": cfg.state_source,
            "state_length": float(np.mean([len(y.split()) for y in hats])),
        }
        if has_gold(cfg):
            info["state_gold"] = float(np.mean([gold_of(p, y) for p, y in zip(ctx.pairs["prompt"], hats)]))
        if "ref" in spec.teachers:
            info.update(advantage_summary(caches["hat_dpo"], caches["hat_ref"], cfg.beta, cfg.missing_rule))
        return info

    return stage_fn


STAGES: dict[str, Callable[[RunContext, int], dict]] = {
    "sft": _stage_sft,
    "dckd": _stage_dckd,
    **{loss: _stage_on_policy(loss) for loss in ON_POLICY_LOSSES},
}


def _mean_tail(cache: TopkCache) -> float:
    return float(np.mean(np.exp(np.concatenate(cache.tail_logps))))


def advantage_summary(dpo: TopkCache, ref: TopkCache, beta: float, missing_rule: str = "tail_max") -> dict:
    """Diagnostics of A on the cached states, weighted by π_dpo: E_dpo[A] (≈ β KL(π_dpo‖π_ref) on the support),
    the π_dpo-mass on tokens with A > 0, and the teacher's tail mass outside its top-k."""
    expected, positive = [], []
    for i in range(len(dpo)):
        _, adv = advantage_from_topk(
            torch.from_numpy(dpo.ids[i]).long()[None],
            torch.from_numpy(dpo.logps[i])[None],
            torch.from_numpy(ref.ids[i]).long()[None],
            torch.from_numpy(ref.logps[i])[None],
            beta,
            missing_rule,
        )
        probs = torch.from_numpy(dpo.logps[i]).exp()[None]  # (1, T, k)
        # $\sum_a \pi_{\text{dpo}}(a) A(a)$ and $\sum_a \pi_{\text{dpo}}(a) \mathbf{1}[A(a) > 0]$, mean over t
        expected.append(float((probs * adv).sum(-1).mean()))
        positive.append(float((probs * (adv > 0)).sum(-1).mean()))
    return {
        "dpo_expected_advantage": float(np.mean(expected)),
        "dpo_mass_on_positive_advantage": float(np.mean(positive)),
        "teacher_tail_mass": _mean_tail(dpo),
    }


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------


def train_stages(ctx: RunContext) -> None:
    """Train ``ctx.student`` through the stages of ``ctx.cfg.method`` (``METHOD_STAGES``), appending the training
    log to ``ctx.history``, each stage's diagnostics (and seconds) to ``ctx.stages`` and its ŷ to ``ctx.states``.
    Notebook 06 (``run_adpa``) and ``python -m workbench.train`` (also under ``accelerate launch``) both call it."""
    for stage, name in enumerate(METHOD_STAGES[ctx.cfg.method]):
        t0 = time.perf_counter()
        info = STAGES[name](ctx, stage)
        ctx.stages.append({**info, "seconds": time.perf_counter() - t0})


def train_run(cfg: AdpaConfig, *, state=None, device: str | None = None) -> TrainedRun:
    """Train only (no evaluation): the student through ``cfg.method``'s stages on the training pairs, sampling and
    top-k passes sharded over ``state``'s processes; rows: each on-policy stage's ŷ per pair."""
    student, tokenizer = cfg.load_student(device)
    pairs, _ = preference_pairs(cfg, state, device)
    if not len(pairs):
        raise RuntimeError(f"no training pairs in {cfg.dataset!r} (train_prompts={cfg.train_prompts})")
    ctx = RunContext(
        cfg, student, tokenizer, pairs, [], [], state=state, device=device, checkpoints=run_checkpoints(cfg, state)
    )
    train_stages(ctx)
    rows = {
        f"states_{name}": [{"prompt": p, "state": y} for p, y in zip(pairs["prompt"], hats)]
        for name, hats in ctx.states.items()
    }
    return TrainedRun(ctx.history, student, tokenizer, rows, {"train_pairs": len(pairs), "stages": ctx.stages})


def harness_kwargs(kwargs: dict) -> dict:
    """The comparison's shared overrides as AdpaConfig fields: ``teacher`` becomes ``teacher_dpo`` (and a gym
    preset's reference teacher, its sibling, or the real-text teacher's base model, ``teacher_ref``); harness
    plumbing the config lacks is dropped."""
    known = {f.name for f in fields(AdpaConfig)}
    kwargs = dict(kwargs)
    if "teacher" in kwargs and "teacher" not in known:
        teacher = kwargs.pop("teacher")
        kwargs.setdefault("teacher_dpo", teacher)
        if teacher.startswith("gym-") and teacher.endswith("teacher-dpo"):
            kwargs.setdefault("teacher_ref", teacher.replace("teacher-dpo", "teacher-ref"))
        if teacher in TEACHERS:  # the real-text teacher's reference is the model its DPO started from
            kwargs.setdefault("teacher_ref", TEACHERS[teacher].base)
    # the harness's plumbing keys are optional for a config; everything else must be a real field
    return {k: v for k, v in kwargs.items() if k in known or k not in ("output_dir", "progress")}


def sample_states(cfg: AdpaConfig, student, tokenizer, pairs: datasets.Dataset, stage: int = 0) -> list[str]:
    """The ŷ an on-policy stage ``stage`` trains on, one per training pair, from ``cfg.state_source`` (App. E):
    sampled from ``student`` (batch b seeded ``seed·1000 + stage + b``), the pairs' own responses, or the DPO
    teacher's samples. ``run_adpa(cfg, states=...)`` trains its first stage on them."""
    ctx = RunContext(cfg, student, tokenizer, pairs, [], [])
    return STATE_SOURCES[cfg.state_source](ctx, stage)


def check_given_stages(cfg: AdpaConfig, pairs, states) -> None:
    """Refuse stages computed beforehand that cannot be this run's: pairs without the columns the stages read or
    with no rows, ŷ not one string per training pair, or ŷ for a method whose first stage does not train on ŷ."""
    if pairs is not None:
        train, held_out = pairs
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in train.column_names]
        if missing or not len(train):
            raise ValueError(
                f"the given training pairs have {len(train)} rows and lack {missing}: make them with "
                "preference_pairs(cfg)"
            )
        if not isinstance(held_out, datasets.Dataset):
            raise ValueError("pairs=(training pairs, held-out pairs), both datasets.Dataset (preference_pairs(cfg))")
    if states is None:
        return
    first = METHOD_STAGES[cfg.method][0]
    if first not in ON_POLICY_LOSSES:
        raise ValueError(
            f"method={cfg.method!r} starts with a {first!r} stage, which trains on no ŷ"
            + (": ADPA+ samples its ŷ from the DCKD student after its first stage" if first == "dckd" else "")
        )
    rows = len(pairs[0]) if pairs is not None else cfg.train_prompts
    if len(states) != rows or not all(isinstance(y, str) for y in states):
        raise ValueError(f"states: {len(states)} ŷ for {rows} training pairs; give one string per pair (sample_states)")


def run_adpa(cfg: AdpaConfig, *, student=None, pairs=None, states: list[str] | None = None) -> RunResult:
    """Train the student with ``cfg.method`` (``METHOD_STAGES``) and evaluate it on held-out prompts.

    The staged path (notebook 06) passes what it computed and showed: ``student`` = (model, tokenizer) from
    ``cfg.load_student()`` (trained in place), ``pairs`` = ``preference_pairs(cfg)`` and ``states``, the first
    stage's ŷ (:func:`sample_states`), each checked before anything runs and trained on as given.

    Returns a :class:`RunResult` whose metrics hold ``method``, ``dataset``, ``reward_accuracy`` (before / after,
    on held-out pairs), ``training`` (loss per stage), per-stage diagnostics and ``seconds``, and the evaluation:
    on a prompt set with a gold reward (the gym, ``verifiable``) ``gold_before`` / ``gold_after`` (mean ± CI over
    held-out prompts), ``win_rate_vs_initial``, ``per_prompt_*`` and ``length_*``; on other data those gold fields
    are None, ``gold_evaluation`` says why and ``judge`` holds the judge's win rate when ``cfg.judge`` is set. They
    are saved to ``cfg.output_dir``.
    """
    set_threads()
    started = time.perf_counter()
    gold = has_gold(cfg)
    check_given_stages(cfg, pairs, states)
    student, tokenizer = student or cfg.load_student()
    pairs, held_out_pairs = pairs or preference_pairs(cfg)
    if not len(pairs):
        raise RuntimeError(f"no training pairs in {cfg.dataset!r} (train_prompts={cfg.train_prompts})")
    held_out = (
        preset_prompts(cfg.dataset, "test", cfg.eval_prompts, HELD_OUT_SEED) if gold else list(held_out_pairs["prompt"])
    )
    ctx = RunContext(cfg, student, tokenizer, pairs, [], [], checkpoints=run_checkpoints(cfg), given_states=states)

    def evaluate() -> tuple[dict | list | None, float]:
        accuracy = reward_accuracy(student, tokenizer, held_out_pairs) if len(held_out_pairs) else float("nan")
        return held_out_evaluation(cfg, student, tokenizer, held_out, gold=gold, temperature=cfg.temperature), accuracy

    before, accuracy_before = evaluate()
    with metrics_kept_on_divergence(
        cfg, cfg.method, ctx.history, stages=ctx.stages, gold_before=before["gold"] if gold else None
    ):
        train_stages(ctx)
    after, accuracy_after = evaluate()
    if gold:
        evaluation = {
            "gold_before": before["gold"],
            "gold_after": after["gold"],
            "win_rate_vs_initial": win_rate(after["per_prompt"], before["per_prompt"]),
            "per_prompt_before": before["per_prompt"],
            "per_prompt_after": after["per_prompt"],
            "length_before": before["length"],
            "length_after": after["length"],
        }
        train_pairs = {
            "count": len(pairs),
            "chosen_gold": float(np.mean(pairs["chosen_gold"])),
            "rejected_gold": float(np.mean(pairs["rejected_gold"])),
        }
    else:
        evaluation = no_gold_evaluation(cfg, held_out, before, after)
        train_pairs = {"count": len(pairs), "held_out": len(held_out_pairs)}
    metrics = {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "config": asdict(cfg),
        **evaluation,
        "reward_accuracy_before": accuracy_before,
        "reward_accuracy": accuracy_after,
        "train_pairs": train_pairs,
        "training": training_summary(ctx.history),
        "stages": ctx.stages,
        "seconds": time.perf_counter() - started,
    }
    result = RunResult(metrics, ctx.history, student, tokenizer)
    result.save(cfg.output_dir)
    return result
