"""Build the gym's models on CPU: reference teacher (SFT + MCQ judging), DPO teacher, noisy student.

A build trains into ``<cache>/gym/<size>-<hash of the config>/`` as ordinary ``save_pretrained`` folders. Presets load
the builds the package ships (:mod:`workbench.gym.store`) and never train: building is asked for by name
(``python -m workbench.gym build``, :func:`build_gym`).

Designed-in properties (then *measured* by :mod:`workbench.gym.report`):

* the teacher is aligned: SFT on correct answers, then DPO on gold-ranked pairs of its own samples;
* its likelihood is miscalibrated in a known way: a frequent-but-worse phrasing (a filler preamble that costs
  gold reward) fills much of its SFT data, so its average log-likelihood likes verbose answers;
* its multiple-choice judgement is trained on gold-labelled option sets, so it stays close to gold;
* the student is several times smaller and learns from a noisier mix (wrong, verbose, harmful answers).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from workbench.cache import LOCK_HELD_ENV, build_folder_once, cache_lock, cache_root, content_hash
from workbench.distributed import in_distributed_launch, single_process_env
from workbench.dpo_teacher import gold_ranked_own_pairs, train_dpo
from workbench.gym.rows import VerdictCollator, mcq_rows, sft_rows
from workbench.gym.world import (
    MCQ_LAYOUTS,
    NUMBERS,
    gold_reward,
    make_prompts,
)

logger = logging.getLogger("workbench.gym")

GYM_VERSION = 1  # bump when the world or the recipe changes in a way the config does not show


@dataclass(frozen=True)
class ModelShape:
    """A small LlamaForCausalLM."""

    hidden: int
    layers: int
    heads: int
    intermediate: int

    def llama_config(self, tokenizer):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )


# answer mixes (candidate kind -> weight)
TEACHER_MIX = {"correct": 0.55, "frequent_filler": 0.45}
STUDENT_MIX = {
    "correct": 0.3,
    "frequent_filler": 0.1,
    "other_filler": 0.1,
    "near_miss": 0.2,
    "copy_input": 0.1,
    "wrong": 0.1,
    "harmful": 0.1,
}
JUDGE_MIX = {
    "correct": 0.2,
    "frequent_filler": 0.15,
    "other_filler": 0.1,
    "near_miss": 0.2,
    "copy_input": 0.1,
    "wrong": 0.1,
    "harmful": 0.15,
}


@dataclass(frozen=True)
class GymConfig:
    """Everything that determines a gym build (its hash keys the cache)."""

    size: str
    teacher: ModelShape
    student: ModelShape
    teacher_sft_rows: int
    teacher_mcq_rows: int
    teacher_steps: int
    teacher_lr: float
    student_rows: int
    student_steps: int
    student_lr: float
    dpo_prompts: int
    dpo_samples: int
    dpo_steps: int
    dpo_beta: float
    dpo_lr: float
    dpo_loss: tuple[str, ...] = ("sigmoid",)  # TRL loss types; ("sigmoid", "sft") adds NLL on chosen (RPO)
    dpo_loss_weights: tuple[float, ...] | None = None
    dpo_min_chosen_gold: float = 0.0  # keep a pair only if its chosen answer is at least this good (counted)
    batch_size: int = 32
    mcq_options: tuple[int, int] = (2, 8)  # judge on 2..8 options (PAD n up to 8)
    mcq_label_temperature: float = 0.1  # option label ~ softmax(gold / T): a graded, calibrated judge
    teacher_mix: dict = field(default_factory=lambda: dict(TEACHER_MIX))
    student_mix: dict = field(default_factory=lambda: dict(STUDENT_MIX))
    judge_mix: dict = field(default_factory=lambda: dict(JUDGE_MIX))
    seed: int = 0
    judge_layout: str = "before"  # how judging options are laid out: a key of world.MCQ_LAYOUTS
    judge_verdicts: bool = False  # also train each option letter's position to predict its option's verdict (below)
    judge_running_best: bool = False  # also train each option's closing "best" to predict the best option so far
    judge_verdict_scale: int = 9  # a verdict is round(scale · gold), one number word (the vocabulary has 0..19)

    def __post_init__(self):
        if self.judge_layout not in MCQ_LAYOUTS:
            raise ValueError(f"judge_layout={self.judge_layout!r}; use one of {sorted(MCQ_LAYOUTS)}")
        if self.judge_verdicts and not self.mcq_template.letter_closes_option:
            raise ValueError(
                f"judge_verdicts=True needs a layout whose letter closes each option (the letter's "
                f"position predicts the verdict); judge_layout={self.judge_layout!r} puts it first: use "
                "'after', 'restate' or 'bracket'"
            )
        low, high = self.mcq_options
        if not 1 <= low <= high <= len(MCQ_LAYOUTS[self.judge_layout].letters):
            raise ValueError(
                f"mcq_options={self.mcq_options}: judging rows show low..high options with 1 ≤ low ≤ "
                f"high ≤ {len(MCQ_LAYOUTS[self.judge_layout].letters)} (one letter each)"
            )
        if not 1 <= self.judge_verdict_scale <= len(NUMBERS) - 1:
            raise ValueError(
                f"judge_verdict_scale={self.judge_verdict_scale}: a verdict must be one number word, so "
                f"the scale is 1..{len(NUMBERS) - 1}"
            )
        if self.judge_running_best and not self.mcq_template.option.endswith(" best"):
            raise ValueError(
                f"judge_running_best=True needs a layout that closes each option with 'best' (where the "
                f"best option so far is asked); judge_layout={self.judge_layout!r}: use 'running'"
            )

    @property
    def mcq_template(self):
        """The judging wording, with as many option letters as the judge is trained on (``mcq_options[1]``): a
        larger group is judged in slices (``scoring.option_slices``) rather than under letters it never saw."""
        template = MCQ_LAYOUTS[self.judge_layout]
        return replace(template, letters=template.letters[: self.mcq_options[1]])

    def key(self) -> str:
        fields = asdict(self)
        for name, first in FIELDS_SINCE_V1.items():  # at their defaults they leave earlier builds' keys as they were
            if fields[name] == first:
                del fields[name]
        return content_hash({"version": GYM_VERSION, **fields}, length=12)


FIELDS_SINCE_V1 = {
    "judge_layout": "before",
    "judge_verdicts": False,
    "judge_running_best": False,
    "judge_verdict_scale": 9,
}


# the earlier default gym (v1): its judge lists the options after their letter and learns only the answer letter;
# its MCQ ranks student samples *worse* than its likelihood (Spearman with gold -0.09 vs 0.49), so PAD's calibration
# premise failed there. Kept so earlier measurements can be rebuilt (``experiments/gym_world.py v1``).
DEFAULT_V1 = GymConfig(
    size="default",
    teacher=ModelShape(hidden=128, layers=4, heads=4, intermediate=256),
    student=ModelShape(hidden=48, layers=2, heads=2, intermediate=96),
    teacher_sft_rows=24000,
    teacher_mcq_rows=12000,
    teacher_steps=900,
    teacher_lr=2e-3,
    student_rows=6000,
    student_steps=250,
    student_lr=3e-3,
    dpo_prompts=1024,
    dpo_samples=4,
    dpo_steps=60,
    dpo_beta=0.1,
    dpo_lr=1e-4,
    dpo_loss=("sigmoid", "sft"),
    dpo_min_chosen_gold=0.5,
)
# the default gym (``experiments/gym_world.py`` variant ``judge`` at 1500 teacher steps): a
# world whose student errs in style (filler, harmful words) more than in the numbers, and a judge that restates the
# question in each option, brackets it by its letter, learns each option's verdict round(19 · gold) and, at each
# option's closing "best", the best option so far — so its MCQ in the paper's random order ranks better than its
# likelihood. It is trained on 1-4 options; larger groups are judged in slices of at most 4.
JUDGE_WORLD = dict(
    student=ModelShape(hidden=64, layers=2, heads=2, intermediate=128),
    student_steps=1500,
    student_mix={"correct": 0.2, "frequent_filler": 0.45, "other_filler": 0.15, "harmful": 0.2},
    teacher_mcq_rows=20000,
    teacher_steps=1500,
    mcq_options=(1, 4),
    judge_mix={"correct": 0.25, "frequent_filler": 0.35, "other_filler": 0.15, "near_miss": 0.05, "harmful": 0.2},
    judge_layout="running",
    judge_verdicts=True,
    judge_running_best=True,
    judge_verdict_scale=19,
)
DEFAULT = replace(DEFAULT_V1, **JUDGE_WORLD)
HARD_STUDENT_MIX = {
    "correct": 0.1,
    "frequent_filler": 0.25,
    "other_filler": 0.1,
    "near_miss": 0.2,
    "wrong": 0.1,
    "copy_input": 0.15,
    "harmful": 0.1,
}
HARD_JUDGE_MIX = {
    "correct": 0.2,
    "frequent_filler": 0.2,
    "other_filler": 0.1,
    "near_miss": 0.15,
    "wrong": 0.1,
    "copy_input": 0.05,
    "harmful": 0.2,
}
SIZES: dict[str, GymConfig] = {
    "tiny": GymConfig(
        size="tiny",
        teacher=ModelShape(hidden=32, layers=2, heads=2, intermediate=64),
        student=ModelShape(hidden=16, layers=1, heads=2, intermediate=32),
        teacher_sft_rows=512,
        teacher_mcq_rows=256,
        teacher_steps=30,
        teacher_lr=3e-3,
        student_rows=512,
        student_steps=20,
        student_lr=3e-3,
        dpo_prompts=32,
        dpo_samples=4,
        dpo_steps=5,
        dpo_beta=0.1,
        dpo_lr=1e-3,
    ),
    # the smallest recipe that has the designed-in properties (DPO teacher ≥ reference > student by ≥ 0.15 greedy
    # gold, MCQ ranks better than likelihood; held at seeds 0, 1 and 2): the default's world and judge on models
    # 1/8 of its size. It trains in about 35 s on 2 cores, so the suite builds it from scratch to check them.
    "small": replace(
        DEFAULT,
        size="small",
        teacher=ModelShape(hidden=64, layers=2, heads=2, intermediate=128),
        student=ModelShape(hidden=32, layers=1, heads=2, intermediate=64),
        teacher_sft_rows=6000,
        teacher_mcq_rows=6000,
        teacher_steps=400,
        teacher_lr=3e-3,
        student_rows=3000,
        student_steps=150,
        dpo_prompts=256,
        dpo_steps=30,
    ),
    "default": DEFAULT,
    # presets gym-hard-*: a student that also errs in substance (near misses, wrong and copied answers), not in style
    # alone, trained less (600 steps), and a judge trained on such options too: a larger gap and far fewer prompts
    # at the ceiling, to see whether the comparison's ranking survives a harder world. Designed on validation
    # prompts (results/gym/hard_validation.json); there the judge's MCQ ranks the student's samples *worse* than
    # the teacher's likelihood does — PAD's calibration premise fails when the errors are in the numbers.
    "hard": replace(DEFAULT, student_mix=HARD_STUDENT_MIX, judge_mix=HARD_JUDGE_MIX, student_steps=600),
    # presets gym-judge8-*: the default recipe with a judge trained on 1-8 options, so PAD's n = 8 is judged in one
    # MCQ of 8 options (as PAD §4.2 asks all n at once) rather than in two slices of 4, each normalised on its own
    "judge8": replace(DEFAULT, mcq_options=(1, 8)),
    # presets gym-v1-*: the earlier default (its config still says size "default", so it keeps its cache folder)
    "v1": DEFAULT_V1,
    # presets gym-world1-* / gym-world2-*: the default recipe built with other seeds (data, initialisation, training
    # order) — other worlds of the same design, to check that a conclusion is not one build's accident
    "world1": replace(DEFAULT, seed=1),
    "world2": replace(DEFAULT, seed=2),
}


GYM_ROLES = ("teacher-ref", "teacher-dpo", "student")


@dataclass
class GymBuild:
    """Paths of a finished build (each a ``save_pretrained`` folder with model and tokenizer)."""

    root: Path
    config: GymConfig

    @property
    def paths(self) -> dict[str, Path]:
        return {role: self.root / role for role in GYM_ROLES}

    @property
    def info(self) -> dict:
        return json.loads((self.root / "build.json").read_text())


def _new_model(shape: ModelShape, tokenizer, seed: int):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(shape.llama_config(tokenizer))


def _dpo_pairs(teacher, tokenizer, cfg: GymConfig, progress: bool):
    return gold_ranked_own_pairs(
        teacher,
        tokenizer,
        make_prompts(cfg.dpo_prompts, "train", seed=cfg.seed + 17),
        gold_reward,
        n=cfg.dpo_samples,
        temperature=1.0,
        seed=cfg.seed,
        min_chosen_gold=cfg.dpo_min_chosen_gold,
        progress=progress,
    )


def _train_dpo(ref_dir: Path, tokenizer, pairs, cfg: GymConfig, progress: bool):
    return train_dpo(
        ref_dir,
        tokenizer,
        pairs,
        beta=cfg.dpo_beta,
        loss=cfg.dpo_loss,
        loss_weights=cfg.dpo_loss_weights,
        lr=cfg.dpo_lr,
        steps=cfg.dpo_steps,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        work_dir=ref_dir.parent / "dpo-run",
        progress=progress,
    )


def _save(model, tokenizer, folder: Path, config: GymConfig) -> None:
    """A ``save_pretrained`` folder, with the MCQ wording the build's judge learned (read by PAD's scorer)."""
    from workbench.encoding import save_mcq_template

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_mcq_template(config.mcq_template, folder)


def build_gym(
    size: str = "default", *, force: bool = False, progress: bool = True, config: GymConfig | None = None
) -> GymBuild:
    """Train the gym of ``size`` (or ``config``) into the cache, or find it built there; returns the folders of its
    three models. Loading a preset does not come here (:func:`workbench.gym.store.find_gym`)."""
    if config is None:
        if size not in SIZES:
            raise ValueError(f"gym size {size!r}; use one of {sorted(SIZES)}")
        config = SIZES[size]
    root = cached_build_root(config)
    if force:
        shutil.rmtree(root, ignore_errors=True)
    if is_built(root):
        return GymBuild(root, config)
    if in_distributed_launch():
        # the Trainer runs of a build inside a launch would train data parallel across it: one process builds it
        # in a process of its own (as `python -m workbench.gym build` would), the others wait for it
        # by its SIZES name: v1 and the worlds keep size "default" in their configs (and so their cache folders)
        name = size_name(config)
        if name is None:
            raise ValueError(
                f"gym {config.size!r} with a changed config is not built yet, and this process is one "
                f"of a distributed launch: build it in one process first (build_gym(config=...))"
            )
        with cache_lock(root):
            if not is_built(root):
                _build_in_own_process(name)
        return GymBuild(root, config)
    build_folder_once(root, lambda folder: _train_gym(config, folder, progress), is_built)
    return GymBuild(root, config)


def size_name(config: GymConfig) -> str | None:
    """The ``SIZES`` name of ``config`` (v1 and the worlds say size "default" in their configs), or None."""
    return next((name for name, preset in SIZES.items() if preset == config), None)


def cached_build_root(config: GymConfig) -> Path:
    return cache_root() / "gym" / f"{config.size}-{config.key()}"


def is_built(root: Path) -> bool:
    """A finished build (``build.json`` is written last)."""
    return (root / "build.json").exists()


def _build_in_own_process(size: str) -> None:
    import subprocess
    import sys

    logger.info("building gym %s in a process of its own (once for the launch)", size)
    out = subprocess.run(
        [sys.executable, "-m", "workbench.gym", "build", "--size", size],
        env={**single_process_env(), LOCK_HELD_ENV: "1"},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(
            f"building gym {size} failed (python -m workbench.gym build --size {size}):\n{out.stderr[-3000:]}"
        )


def _train_gym(config: GymConfig, tmp: Path, progress: bool) -> None:
    """Train the gym's three models into ``tmp`` (build.json last)."""
    import datasets
    import torch

    from workbench.gym.tokenizer import build_tokenizer
    from workbench.trainers import set_threads, train_sft

    set_threads()
    started = time.perf_counter()
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer()
    rng = random.Random(config.seed)
    timings, logs = {}, {}

    # (1) reference teacher: SFT on answers (with the frequent filler phrasing) + MCQ judging
    t0 = time.perf_counter()
    answers = sft_rows(make_prompts(config.teacher_sft_rows, "train", config.seed), config.teacher_mix, rng)
    judging = mcq_rows(make_prompts(config.teacher_mcq_rows, "train", config.seed + 1), config, rng)
    for extra in ("verdicts", "running"):
        if extra in judging:
            answers[extra] = [[] for _ in answers["prompt"]]
    teacher_rows = datasets.Dataset.from_dict({k: answers[k] + judging[k] for k in answers}).shuffle(seed=config.seed)
    teacher = _new_model(config.teacher, tokenizer, config.seed)
    collator = (
        VerdictCollator(tokenizer, config.mcq_template.letters)
        if config.judge_verdicts or config.judge_running_best
        else None
    )
    logs["teacher-ref"] = train_sft(
        teacher,
        tokenizer,
        teacher_rows,
        steps=config.teacher_steps,
        lr=config.teacher_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
        collator=collator,
    )
    _save(teacher, tokenizer, tmp / "teacher-ref", config)
    timings["teacher-ref"] = time.perf_counter() - t0

    # (2) DPO teacher: DPO from the reference teacher on gold-ranked pairs of its own samples
    t0 = time.perf_counter()
    pairs, pair_stats = _dpo_pairs(teacher, tokenizer, config, progress)
    dpo_teacher, logs["teacher-dpo"] = _train_dpo(tmp / "teacher-ref", tokenizer, pairs, config, progress)
    _save(dpo_teacher, tokenizer, tmp / "teacher-dpo", config)
    timings["teacher-dpo"] = time.perf_counter() - t0

    # (3) student: smaller, SFT on a noisy mix
    t0 = time.perf_counter()
    student_rows = datasets.Dataset.from_dict(
        sft_rows(make_prompts(config.student_rows, "train", config.seed + 2), config.student_mix, rng)
    )
    student = _new_model(config.student, tokenizer, config.seed + 3)
    logs["student"] = train_sft(
        student,
        tokenizer,
        student_rows,
        steps=config.student_steps,
        lr=config.student_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    _save(student, tokenizer, tmp / "student", config)
    timings["student"] = time.perf_counter() - t0

    from workbench.weights import weights_record

    info = {
        "config": asdict(config),
        "key": config.key(),
        "gym_version": GYM_VERSION,
        "libraries": library_versions(),
        "threads": torch.get_num_threads(),  # float sums, and so the weights, depend on it
        "weights": {role: weights_record(tmp / role) for role in GYM_ROLES},
        "parameters": {"teacher": teacher.num_parameters(), "student": student.num_parameters()},
        "dpo_pairs": pair_stats,
        "seconds": {**timings, "total": time.perf_counter() - started},
        "final_train_loss": {
            k: next((r["train_loss"] for r in reversed(v) if "train_loss" in r), None) for k, v in logs.items()
        },
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2))
    logger.info("gym %s built in %.1f s", config.size, info["seconds"]["total"])


def library_versions() -> dict[str, str]:
    """The versions of what a gym build's weights depend on."""
    import importlib.metadata
    import platform

    names = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "numpy", "safetensors")
    return {"python": platform.python_version(), **{name: importlib.metadata.version(name) for name in names}}


def with_overrides(size: str, **overrides) -> GymConfig:
    """A size's config with some fields changed (a changed config is a different cache key)."""
    return replace(SIZES[size], **overrides)
