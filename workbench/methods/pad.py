"""PAD pipeline (Preference-Aligned Distillation): sample → teacher rewards (calibrated) → VPD/PPD training,
for ``iterations`` rounds of re-sampling from the updated student (PAD Fig. 3), then gold evaluation.

Everything it uses is shared: :func:`workbench.sampling.sample_responses`, :mod:`workbench.scoring`,
``DistillTrainer`` and the loss registry. ``run_pad(PadConfig(...))`` is what notebook 03 calls.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import torch

from workbench.cache import tokenizer_fingerprint
from workbench.encoding import DEFAULT_MCQ_TEMPLATE, McqTemplate
from workbench.evaluate import evaluate_policy, mean_kendall_tau, win_rate
from workbench.losses import get_loss
from workbench.losses.pad import calibrated_reward, decompose_groups, decomposed_loss
from workbench.sampling import group_responses, sample_responses
from workbench.scoring import avg_logp_rewards, mcq_selection_logprobs
from workbench.methods.common import HELD_OUT_SEED, RunResult, gold_of, gym_prompts, user_text
from workbench.trainers import ListwiseCollator, set_threads, student_token_logps, train_distill

logger = logging.getLogger("workbench.pad")


@dataclass
class PadConfig:
    """Parameters of a PAD run; defaults run the gym on CPU in minutes, paper values quoted in ``help``."""

    teacher: str = field(default="gym-teacher-dpo", metadata={"help": "teacher id/path/preset"})
    student: str = field(default="gym-student", metadata={"help": "student id/path/preset"})
    dataset: str = field(default="gym", metadata={"help": "'gym' or a preference dataset source (prompts used)"})
    train_prompts: int = field(default=1024, metadata={"help": "prompts sampled per round"})
    eval_prompts: int = field(default=128, metadata={"help": "held-out prompts for gold evaluation"})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt per round (PAD §4.1: 4)"})
    m: int | None = field(default=None, metadata={"help": "decompose the n responses into groups of m (Eq. 13)"})
    iterations: int = field(default=1, metadata={"help": "rounds of re-sampling from the student (Fig. 3)"})
    alpha: float = field(default=0.8, metadata={"help": "reward calibration ratio (Eq. 9; paper: 0.8)"})
    beta: float = field(default=10.0, metadata={"help": "PL reward scale (Eq. 10-11; paper: 10)"})
    loss: str = field(default="ppd", metadata={"help": "'vpd', 'ppd' or 'ppd_mc'"})
    sft_weight: float = field(default=0.0, metadata={
        "help": "weight of an NLL anchor on the teacher's top response (beyond the paper; 0 = as published)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (PAD §4.1: 0.8)"})
    max_new_tokens: int = 24
    mcq_order: str = field(default="random", metadata={"help": "'random' (paper), 'cyclic' (debiased)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (paper: 8e-7 / 1e-6 on 2B-3B models)"})
    steps: int = field(default=300, metadata={"help": "optimizer steps per round"})
    batch_size: int = field(default=16, metadata={"help": "prompts per step (paper: 128)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "paper: 0.1"})
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt for gold evaluation"})
    seed: int = 0
    lora: bool = False
    quantization: str | None = None
    output_dir: str = "runs/pad"
    progress: bool = True

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha}; the calibration ratio must be in [0, 1] (PAD Eq. 9)")
        if self.n < 2:
            raise ValueError(f"n={self.n}; a preference needs at least 2 responses per prompt")
        if self.m is not None and (self.m < 2 or self.n % self.m):
            raise ValueError(f"m={self.m} must be ≥ 2 and divide n={self.n} (PAD §4.4 decomposition)")
        if self.iterations < 1 or self.steps < 1:
            raise ValueError(f"iterations={self.iterations}, steps={self.steps}; both must be ≥ 1")
        get_loss(self.loss)  # a clear error listing the registered losses


def mcq_template_for(tokenizer) -> McqTemplate:
    """The gym's own MCQ wording for gym models, the general wording for everything else."""
    from workbench.gym.tokenizer import build_tokenizer
    from workbench.gym.world import GYM_MCQ_TEMPLATE

    gym = tokenizer_fingerprint(build_tokenizer())
    return GYM_MCQ_TEMPLATE if tokenizer_fingerprint(tokenizer) == gym else DEFAULT_MCQ_TEMPLATE


def teacher_rewards(teacher, tokenizer, prompts, groups, *, alpha: float, order: str = "random", seed: int = 0,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """Teacher rewards per response group (PAD §4.2): avg log-lik r, MCQ log p_sel and calibrated r̂, each (P, n)."""
    n = len(groups[0])
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [y for g in groups for y in g]
    # $r^{tch}(y) = \frac{1}{|y|}\log p(y|x)$ (Eq. 7)
    likelihood = avg_logp_rewards(teacher, tokenizer, flat_prompts, flat, progress=progress).view(-1, n)
    # $\log p_{sel}(y_i) = \log p(c_i | Y_n, C_n, x)$ (Eq. 8)
    log_p_sel = mcq_selection_logprobs(teacher, tokenizer, [user_text(p) for p in prompts], groups,
                                       template=mcq_template_for(tokenizer), order=order, seed=seed,
                                       progress=progress)
    # $\hat r = (1-\alpha) r + \alpha \log p_{sel}$ (Eq. 9)
    return {"likelihood": likelihood, "log_p_sel": log_p_sel,
            "calibrated": calibrated_reward(likelihood, log_p_sel, alpha)}


@dataclass
class ListwiseObjective:
    """Student avg-log-lik rewards of the n responses (Eq. 7) fed to a listwise loss (VPD/PPD/PRO...).

    With ``m`` set, the n responses are decomposed into n/m random groups and the loss summed (Eq. 13-14).
    ``sft_weight`` > 0 adds the length-normalised NLL of the teacher's top-ranked response, -r^stu(y^(1)) — an
    anchor *beyond the paper* (as PRO adds SFT); 0 is PAD as published.
    """

    loss: str
    beta: float
    m: int | None = None
    seed: int = 0
    sft_weight: float = 0.0

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, model, inputs):
        from workbench.losses.pad import avg_logp_reward

        teacher = inputs["teacher_rewards"]  # (B, n)
        token_logps, mask = student_token_logps(model, inputs)
        # $r^{stu}(y) = \frac{1}{|y|}\log \pi_\theta(y|x)$, reshaped (B, n)
        student = avg_logp_reward(token_logps, mask).view(teacher.shape)
        if self.m is not None and self.m < teacher.shape[1]:
            groups = decompose_groups(teacher.shape[1], self.m, generator=self.generator).to(teacher.device)
            loss = decomposed_loss(self.loss_fn, student, teacher, groups, beta=self.beta)
        else:
            loss = self.loss_fn(student, teacher, beta=self.beta)
        metrics = {"ranking_loss": loss.detach()}
        if self.sft_weight:
            # $-\frac{1}{|y^{(1)}|}\log\pi_\theta(y^{(1)}|x)$ for the teacher's best response
            best = teacher.argmax(-1, keepdim=True)
            sft = -student.gather(-1, best).mean()
            loss = loss + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics


def distill_round(cfg: PadConfig, student, student_tok, teacher, teacher_tok, prompt_texts, round_: int, *,
                  stage_guard=nullcontext, progress: bool | None = None):
    """One PAD round (Fig. 3): sample n per prompt → teacher r̂ → listwise training of the student.

    ``stage_guard`` wraps sampling and scoring (``accelerate``'s ``main_process_first`` lets the main process
    fill the stage cache that the other processes then read). Returns (log history tagged with the round,
    prompts, response groups).
    """
    progress = cfg.progress if progress is None else progress
    with stage_guard():
        samples = sample_responses(student, student_tok, prompt_texts, n=cfg.n, temperature=cfg.temperature,
                                   max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1000 + round_,
                                   progress=progress)
        prompts, groups = group_responses(samples)
        rewards = teacher_rewards(teacher, teacher_tok, prompts, groups, alpha=cfg.alpha, order=cfg.mcq_order,
                                  seed=cfg.seed + round_)
    rows = datasets.Dataset.from_dict({"prompt": prompts, "responses": groups,
                                       "teacher_rewards": rewards["calibrated"].tolist()})
    objective = ListwiseObjective(cfg.loss, cfg.beta, cfg.m, seed=cfg.seed, sft_weight=cfg.sft_weight)
    log = train_distill(student, rows, ListwiseCollator(student_tok), objective, steps=cfg.steps, lr=cfg.lr,
                        batch_size=cfg.batch_size, seed=cfg.seed + round_, warmup_ratio=cfg.warmup_ratio,
                        progress=progress)
    return [{**entry, "round": round_} for entry in log], prompts, groups


def run_pad(cfg: PadConfig) -> RunResult:
    """Run PAD end to end (see module docstring) and save metrics to ``cfg.output_dir``."""
    from workbench.models import load

    set_threads()
    started = time.perf_counter()
    teacher, teacher_tok = load(cfg.teacher, quantization=cfg.quantization)
    student, student_tok = load(cfg.student, lora=True if cfg.lora else None)
    if cfg.dataset != "gym":
        raise NotImplementedError("non-gym datasets need a judge-based evaluation; see workbench.evaluate")
    train = gym_prompts("train", cfg.train_prompts, cfg.seed + 101)
    held_out = gym_prompts("test", cfg.eval_prompts, HELD_OUT_SEED)
    before = evaluate_policy(student, student_tok, held_out, n=cfg.eval_samples, seed=cfg.seed,
                             max_new_tokens=cfg.max_new_tokens)
    history: list[dict] = []
    rounds = []
    for round_ in range(cfg.iterations):
        log, prompts, groups = distill_round(cfg, student, student_tok, teacher, teacher_tok,
                                             [p.text for p in train], round_)
        history += log
        rounds.append({"round": round_, "train_sample_gold": float(np.mean(
            [gold_of(p, y) for p, g in zip(prompts, groups) for y in g]))})
    after = evaluate_policy(student, student_tok, held_out, n=cfg.eval_samples, seed=cfg.seed,
                            max_new_tokens=cfg.max_new_tokens)
    metrics = {
        "method": f"pad-{cfg.loss}",
        "config": asdict(cfg),
        "gold_before": before["gold"],
        "gold_after": after["gold"],
        "win_rate_vs_initial": win_rate(after["per_prompt"], before["per_prompt"]),
        "length_before": before["length"],
        "length_after": after["length"],
        "ranking": ranking_agreement(student, student_tok, teacher, teacher_tok, after["samples"], held_out,
                                     cfg),
        "rounds": rounds,
        "seconds": time.perf_counter() - started,
    }
    result = RunResult(metrics, history, student, student_tok)
    result.save(cfg.output_dir)
    return result


def ranking_agreement(student, student_tok, teacher, teacher_tok, samples, held_out, cfg) -> dict:
    """Kendall τ of the student's avg-log-lik ranking with the teacher's calibrated ranking and with gold."""
    prompts, groups = group_responses(samples)
    n = len(groups[0])
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [y for g in groups for y in g]
    student_scores = avg_logp_rewards(student, student_tok, flat_prompts, flat).view(-1, n).numpy()
    teacher_scores = teacher_rewards(teacher, teacher_tok, prompts, groups, alpha=cfg.alpha,
                                     order=cfg.mcq_order, seed=cfg.seed)["calibrated"].numpy()
    gold = np.array([[gold_of(p, y) for y in g] for p, g in zip(prompts, groups)])
    return {"tau_student_teacher": mean_kendall_tau(student_scores, teacher_scores),
            "tau_student_gold": mean_kendall_tau(student_scores, gold),
            "tau_teacher_gold": mean_kendall_tau(teacher_scores, gold)}


def alpha_sweep(teacher_name: str, student_name: str, alphas, *, n: int = 4, prompts: int = 256, seed: int = 0,
                mcq_order: str = "random", temperature: float = 0.8, max_new_tokens: int = 24) -> dict:
    """Rank agreement with gold of the calibrated teacher reward r̂ for each α (PAD Eq. 9, Fig. 5's premise).

    The student's samples and the teacher's two signals are computed once (and cached); each α only mixes
    them. Returns per-α mean per-set Spearman ρ and Kendall τ with gold (± 95% CI over prompt sets), plus the
    timings of the first and of each later α point.
    """
    from workbench.evaluate import mean_spearman
    from workbench.models import load

    t0 = time.perf_counter()
    teacher, teacher_tok = load(teacher_name)
    student, student_tok = load(student_name)
    held_out = gym_prompts("validation", prompts, seed + 7)
    samples = sample_responses(student, student_tok, [p.text for p in held_out], n=n, temperature=temperature,
                               max_new_tokens=max_new_tokens, seed=seed, progress=False)
    groups_prompts, groups = group_responses(samples)
    gold = np.array([[gold_of(p, y) for y in g] for p, g in zip(groups_prompts, groups)])
    rows = []
    for i, alpha in enumerate(alphas):
        start = time.perf_counter()
        signals = teacher_rewards(teacher, teacher_tok, groups_prompts, groups, alpha=float(alpha), order=mcq_order,
                                  seed=seed)
        scores = signals["calibrated"].numpy()
        spearman = mean_spearman(scores, gold)
        rows.append({"alpha": float(alpha), "spearman": spearman, "kendall": mean_kendall_tau(scores, gold),
                     "seconds": time.perf_counter() - start + (start - t0 if i == 0 else 0.0)})
    return {"rows": rows, "n": n, "prompts": prompts, "valid_sets": len(gold) - spearman["skipped_sets"]}
