"""The stages of one PAD round, each callable on its own (notebook 03 shows them one by one): sample n responses
per prompt from the student (:func:`sample_round`, §4.1), score them with the teacher (:func:`score_round`: likelihood
r, MCQ log p_sel, calibrated r̂, Eq. 7-9), or both sharded over processes (:func:`sample_and_score`).
:func:`check_round_samples` refuses stages that are not a round of the run's config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from workbench.backends.vllm import model_source, release_vllm_engines
from workbench.distributed import is_distributed, map_in_shards, unsharded
from workbench.losses.pad import calibrated_reward
from workbench.methods.config import hf_levers, vllm_engine_options
from workbench.rewards import teacher_rewards, user_text
from workbench.sampling import group_responses, sample_responses

if TYPE_CHECKING:
    from workbench.methods.pad import PadConfig

REWARD_SIGNALS = ("likelihood", "log_p_sel", "calibrated")


class RoundSamples(NamedTuple):
    """One round's student samples and teacher rewards: P prompts (chat messages), P groups of n responses, and
    each of ``REWARD_SIGNALS`` as a (P, n) tensor."""

    prompts: list
    groups: list[list[str]]
    rewards: dict[str, torch.Tensor]


def vllm_student_folder(cfg: PadConfig, round_: int) -> Path:
    return Path(cfg.output_dir) / f"vllm_student_round{round_}"


def save_in_compute_dtype(model, folder) -> None:
    """``model.save_pretrained(folder)``; a bf16-mixed student (float32 weights under bfloat16 autocast) is saved in
    bfloat16, config included, so vLLM serves it in the dtype it computes in (vLLM's dtype 'auto' would serve float32
    weights in float16)."""
    from workbench.precision import autocast_dtype

    dtype = autocast_dtype(model)
    if dtype is None:
        model.save_pretrained(folder)
        return
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=weights)
    config = Path(folder) / "config.json"  # save_pretrained writes the parameters' dtype there
    config.write_text(
        json.dumps(
            {**json.loads(config.read_text()), "dtype": str(dtype).removeprefix("torch.")}, indent=2, sort_keys=True
        )
        + "\n"
    )


def vllm_student_source(cfg: PadConfig, student, student_tok, round_: int, state=None):
    """What the vLLM backend samples from in a round: the student as loaded (its ``name_or_path``) in round 0;
    later, its current weights saved to ``output_dir/vllm_student_round<k>`` (merged if LoRA), because vLLM reads
    weights from disk, not from the trained model in memory."""
    if round_ == 0:
        return student
    # the previous round's engine holds the previous weights (and GPU memory); a vLLM teacher's engine stays
    release_vllm_engines(model_source(student) if round_ == 1 else str(vllm_student_folder(cfg, round_ - 1)))
    folder = vllm_student_folder(cfg, round_)
    if state is None or state.is_main_process:
        model = student
        if hasattr(student, "merge_and_unload"):  # a peft model: vLLM gets base + adapter merged
            model = copy.deepcopy(student).merge_and_unload()
        save_in_compute_dtype(model, folder)
        student_tok.save_pretrained(folder)
    if is_distributed(state):
        state.wait_for_everyone()
    return str(folder)


def sample_and_score(
    cfg: PadConfig,
    student,
    student_tok,
    teacher,
    teacher_tok,
    prompt_texts,
    round_: int,
    *,
    state=None,
    progress: bool = False,
) -> RoundSamples:
    """n samples per prompt from the student (§4.1) and their teacher rewards (Eq. 7-9), sharded over processes.

    With several processes (``state``: accelerate's ``PartialState``) each samples and scores only its shard of
    whole sampling batches, batch b keeping its global seed, and the shards are merged by prompt index
    (:mod:`workbench.distributed`): every process gets the rows one process computes — the same samples, and
    the same rewards up to the float rounding of differently composed scoring batches. Each process caches only
    its own shard (race-free on a shared filesystem).
    """
    with unsharded(student) as whole:  # an FSDP-sharded student (round 2 on) samples through a whole copy
        return _sample_and_score(
            cfg, whole, student_tok, teacher, teacher_tok, prompt_texts, round_, state=state, progress=progress
        )


def _sample_and_score(
    cfg: PadConfig,
    student,
    student_tok,
    teacher,
    teacher_tok,
    prompt_texts,
    round_: int,
    *,
    state=None,
    progress: bool = False,
) -> RoundSamples:
    source = student
    if cfg.sampling_backend == "vllm":  # every process: the round's weights are saved once, behind a barrier
        source = vllm_student_source(cfg, student, student_tok, round_, state)

    def sample_and_score_shard(shard_prompts, first_batch):
        # batch b of the whole list is seeded seed + b; this shard starts at batch first_batch
        prompts, groups = sample_round(
            cfg, source, student_tok, shard_prompts, round_, first_batch=first_batch, progress=progress
        )
        rewards = score_round(
            cfg, teacher, teacher_tok, prompts, groups, round_, first_group=first_batch * cfg.sampling_batch_size
        )
        signals = [rewards[name].tolist() for name in REWARD_SIGNALS]
        return [
            (prompt, group, *(signal[i] for signal in signals))
            for i, (prompt, group) in enumerate(zip(prompts, groups))
        ]

    merged = map_in_shards(sample_and_score_shard, prompt_texts, cfg.sampling_batch_size, state)
    prompts = [record[0] for record in merged]
    groups = [record[1] for record in merged]
    rewards = {
        name: torch.tensor([record[2 + k] for record in merged], dtype=torch.float32)
        for k, name in enumerate(REWARD_SIGNALS)
    }
    return RoundSamples(prompts, groups, rewards)


def sample_round(
    cfg: PadConfig, student, student_tok, prompt_texts, round_: int = 0, *, first_batch: int = 0, progress=False
) -> tuple[list, list[list[str]]]:
    """The sampling stage of a round (§4.1): ``cfg.n`` responses per prompt from the student at
    ``cfg.temperature``, sampling batch b seeded ``cfg.seed * 1000 + round_ + first_batch + b``. Returns
    (prompts as chat messages, P groups of n responses), what :func:`score_round` reads."""
    samples = sample_responses(
        student,
        student_tok,
        prompt_texts,
        n=cfg.n,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.sampling_batch_size,
        seed=cfg.seed * 1000 + round_ + first_batch,
        backend=cfg.sampling_backend,
        engine_options=vllm_engine_options(cfg),
        hf_levers=hf_levers(cfg),
        progress=progress,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )
    return group_responses(samples)


def score_round(
    cfg: PadConfig, teacher, teacher_tok, prompts, groups, round_: int = 0, *, first_group: int = 0
) -> dict[str, torch.Tensor]:
    """The scoring stages of a round (§4.2): the teacher's likelihood reward r (Eq. 7), its MCQ selection log p_sel
    (Eq. 8, option orders drawn with seed ``cfg.seed + round_``) and the calibrated r̂ at ``cfg.alpha`` (Eq. 9),
    each (P, n), keyed by ``REWARD_SIGNALS``."""
    return teacher_rewards(
        teacher,
        teacher_tok,
        prompts,
        groups,
        alpha=cfg.alpha,
        order=cfg.mcq_order,
        seed=cfg.seed + round_,
        first_group=first_group,
        batch_size=cfg.scoring_batch_size,
        backend=cfg.scoring_backend,
        engine_options=vllm_engine_options(cfg),
    )


def check_round_samples(cfg: PadConfig, samples: RoundSamples, prompt_texts) -> None:
    """Refuse stages computed elsewhere that are not a round of ``cfg`` on these prompts: other prompts, another
    n, a missing signal or rewards calibrated at another α."""
    if len(samples.prompts) != len(prompt_texts) or len(samples.groups) != len(prompt_texts):
        raise ValueError(
            f"the given round has {len(samples.groups)} prompts, the run trains on {len(prompt_texts)}: sample "
            "them with sample_round(cfg, ..., pad_prompts(cfg)[0])"
        )
    mismatched = [user_text(p) for p, q in zip(samples.prompts, prompt_texts) if user_text(p) != user_text(q)]
    if mismatched:
        raise ValueError(f"{len(mismatched)} prompts of the given round are not the run's, e.g. {mismatched[0]!r}")
    if {len(g) for g in samples.groups} != {cfg.n}:
        raise ValueError(f"the given round has groups of {sorted({len(g) for g in samples.groups})}, cfg.n={cfg.n}")
    missing = [name for name in REWARD_SIGNALS if name not in samples.rewards]
    if missing:
        raise ValueError(f"the given round lacks the reward signals {missing}: score it with score_round")
    shapes = {tuple(samples.rewards[name].shape) for name in REWARD_SIGNALS}
    if shapes != {(len(samples.groups), cfg.n)}:
        raise ValueError(f"reward shapes {sorted(shapes)}; each signal must be (prompts, n)")
    for name in REWARD_SIGNALS:
        if not torch.isfinite(samples.rewards[name]).all():
            raise ValueError(f"the given round's {name} rewards hold non-finite values: they cannot be trained on")
    expected = calibrated_reward(samples.rewards["likelihood"], samples.rewards["log_p_sel"], cfg.alpha)
    if not torch.allclose(samples.rewards["calibrated"], expected, atol=1e-5, equal_nan=False):
        raise ValueError(f"the given round's calibrated rewards are not (1 - α) r + α log p_sel at alpha={cfg.alpha}")


def round_rows(samples: RoundSamples) -> list[dict]:
    """One row per prompt: prompt, responses and each teacher reward signal (floats as computed)."""
    signals = {name: values.tolist() for name, values in samples.rewards.items()}
    return [
        {"prompt": prompt, "responses": group, **{name: values[i] for name, values in signals.items()}}
        for i, (prompt, group) in enumerate(zip(samples.prompts, samples.groups))
    ]
