"""Benchmark: a recipe's phases (PAD, DCKD/ADPA/ADPA+ or PLaD) on its real architectures with random weights —
measured peak memory beside ``workbench.memory.estimate``, time per phase, tokens/s and the training step's MFU.
Prints one JSON object.

    python bench/bench_recipe_gpu.py recipes/pad_llama3_8b_to_3b_qlora.yaml          # GPU, ~5 min on one H200
    python bench/bench_recipe_gpu.py recipes/plad_llama2_13b_to_7b_qlora.yaml --steps 1
    python bench/bench_recipe_gpu.py          # on a CPU: the same path at toy widths (--shrink), seconds

No hub: the models' configs come from ``tests/fixtures/model_configs`` (the recipes' models), each model is built
with random weights, saved to a temporary folder (once per architecture: ADPA's two teachers share one) and loaded by
``workbench.models.load`` with the recipe's quantization / LoRA / gradient checkpointing, as a run loads its
checkpoints. Random weights cost what trained ones cost: the same shapes, kernels and (with ``min_new_tokens``) the
same generated lengths. The method and its hyperparameters are the recipe's method config
(``workbench.train.method_config``), the sizes ``memory.estimate``'s assumptions (prompt / response lengths, batch
sizes, the MCQ prompt length), and the phases are the estimate's, each measured beside its estimate:

PAD (``run_pad`` keeps teacher and student loaded through every phase):
  sampling            ``generate`` (the recipe's temperature) of n responses per prompt for ``sampling_batch_size``
                      prompts, forced to ``max_new_tokens``;
  teacher_likelihood  the teacher's no-grad response log-probs of ``scoring_batch_size`` sequences, head chunked
                      (``workbench.logprobs.batch_response_token_logps``);
  teacher_mcq         the teacher's next-token logits after ``scoring_batch_size`` MCQ prompts
                      (``workbench.scoring.last_position_logits``);
  training            the listwise step (``ListwiseObjective``, the recipe's loss) on ``batch_size`` prompts × n
                      responses.
DCKD / ADPA / ADPA+ (the student stays loaded; each teacher is loaded for its top-k pass and freed after it, as
``teacher_topk_by_name`` does, so no teacher is in memory while the student samples or trains):
  sampling            one ŷ per prompt from the student (``state_source='student'``, the recipes') for
                      ``sampling_batch_size`` prompts, forced to ``max_new_tokens`` (DCKD alone samples none, but the
                      estimate counts the phase);
  teacher_likelihood  each teacher the method's stages cache (π_dpo, and π_ref for ADPA) in turn: its top-k pass
                      over ``scoring_batch_size`` sequences (``workbench.topk_cache._response_topk``, the chunked head
                      and top-k of ``teacher_topk``); the peak of the passes, the sum of their times;
  training            each stage's objective (``DckdObjective``, ``OnPolicyObjective``) on ``batch_size`` pairs with
                      synthetic top-k ids / log-probs of the cache's shapes, a fresh AdamW per stage as each stage's
                      trainer has; the phase's figures are the last stage's (ADPA for ADPA+), ``stages`` has each.
PLaD (teacher and student loaded while sampling; the teacher freed before training, as ``train_run`` does, and
never scoring — PLaD uses only its samples):
  sampling            one student sample per prompt for ``sampling_batch_size`` prompts, forced to ``max_new_tokens``;
  teacher_sampling    one teacher sample per prompt, likewise;
  training            the calibration step (``PladObjective``, the recipe's loss) on ``batch_size`` pairs.
Every training phase: AdamW on the trainable parameters; the median of ``--steps`` timed steps after one warm-up step.

Memory is ``torch.cuda.max_memory_allocated`` (reset before each phase) plus ``memory.CUDA_CONTEXT_BYTES``, the
estimator's assumed context (reported apart); on CPU no peak is measured (None) and the run checks the code path.
MFU: training FLOPs (forward 2·N·tokens + attention, backward the same for the activation gradients, twice that
for full fine-tuning, plus one more forward with gradient checkpointing) / step time / the GPU's dense bf16 peak
(``--peak-tflops``; known: H100/H200 989, A100 312).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = ROOT / "tests" / "fixtures" / "model_configs"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
# --shrink: the same architectures at toy widths and lengths, so the whole path runs on a CPU in seconds
SHRUNK_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
)
SHRUNK_SHAPE = dict(prompt_tokens=12, max_new_tokens=8, sampling_batch_size=2, scoring_batch_size=4)


def model_config(name: str, shrink: bool) -> dict:
    config = json.loads((MODEL_CONFIGS / name.replace("/", "--") / "config.json").read_text())
    if shrink:
        config.update(SHRUNK_DIMS)
        config.pop("quantization_config", None)
    return config


def training_flops(config: dict, sequences: int, seq_len: int, *, lora: bool, checkpointing: bool) -> float:
    """FLOPs of one training step of ``sequences`` × ``seq_len`` tokens (matmuls only; see the module docstring)."""
    from workbench.memory import dims_from_config

    dims = dims_from_config(config)
    tokens = sequences * seq_len
    dense = 2 * (dims.layers * dims.layer_linear_params + dims.vocab * dims.hidden) * tokens  # decoder + head
    attention = 4 * dims.layers * dims.heads * dims.head_dim * seq_len * tokens  # QKᵀ and AV, causal halves ignored
    forward = dense + attention
    backward = forward * (1 if lora else 2)
    return forward + backward + (forward if checkpointing else 0)


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class Phase:
    """Peak allocated memory (CUDA) and wall time of a block."""

    def __init__(self, device: str):
        self.device, self.peak, self.seconds = device, None, None

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        self.seconds = time.perf_counter() - self.start
        return False


def build_random(name: str, config: dict, folder: Path, dtype: torch.dtype, device: str) -> Path:
    """A ``save_pretrained`` folder of ``name``'s architecture with random weights (and the gym's tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.gym.tokenizer import build_tokenizer

    target = folder / name.replace("/", "--")
    cfg = AutoConfig.for_model(**config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(target)
    build_tokenizer().save_pretrained(target)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return target


@dataclass
class Bench:
    """What the phases of every method share: the device, the recipe's method config and estimate, the random
    checkpoints by role, random token ids, the loaded student, and the phases measured so far."""

    device: str
    cfg: Any  # the recipe's PadConfig / AdpaConfig / PladConfig
    estimate: Any  # memory.MemoryEstimate of the recipe (shrunk sizes with --shrink)
    sampling_batch_size: int  # prompts per generate call, as the estimate's RunShape reads them
    scoring_batch_size: int  # sequences per teacher forward, likewise
    configs: dict[str, dict]  # role (a recipe key: student, teacher, teacher_dpo...) → config.json fields
    folders: dict[str, Path]  # role → random checkpoint
    steps: int
    peak: float | None
    student: Any = None
    load_seconds: float = 0.0
    phases: dict = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def shape(self) -> dict:
        return self.estimate.assumptions

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.shape["dtype"])

    @property
    def vocab(self) -> int:
        return min(config["vocab_size"] for config in self.configs.values())

    def ids(self, rows: int, length: int) -> torch.Tensor:
        return torch.randint(3, self.vocab, (rows, length), generator=self.generator).to(self.device)

    def response_mask(self, rows: int, length: int) -> torch.Tensor:
        """(rows, length) bool: True on the positions after the prompt, as ``collate_examples`` marks a response."""
        mask = torch.zeros(rows, length, dtype=torch.bool, device=self.device)
        mask[:, self.shape["prompt_tokens"] :] = True
        return mask

    def load(self, role: str, **kwargs):
        """The model of ``role`` loaded as a run loads it (``workbench.models.load``), timed into ``load_seconds``."""
        from workbench.models import load

        start = time.perf_counter()
        model, _ = load(str(self.folders[role]), device=self.device, **{"dtype": self.dtype, **kwargs})
        self.load_seconds += time.perf_counter() - start
        return model

    def load_teacher(self, role: str):
        teacher = self.load(role, quantization=self.shape["teacher_quantization"])
        teacher.eval()
        return teacher

    def record(self, name: str, *phases: Phase, **extra) -> None:
        """One estimated phase: the peak of ``phases`` (several passes make one phase, e.g. one per teacher) beside
        the estimate of ``name``, and their summed time."""
        from workbench import memory

        peaks = [p.peak for p in phases if p.peak is not None]
        measured = max(peaks) + memory.CUDA_CONTEXT_BYTES if peaks else None
        estimated = self.estimate.total(name)
        self.phases[name] = {
            "measured_gib": None if measured is None else measured / memory.GIB,
            "estimated_gib": estimated / memory.GIB,
            "estimate_over_measured": None if measured is None else estimated / measured,
            "seconds": sum(p.seconds for p in phases),
            **extra,
        }
        # each phase as soon as it is measured: a run stopped by a time limit still leaves what it measured
        print(json.dumps({"phase": name, **self.phases[name]}, default=float), file=sys.stderr, flush=True)

    def sample(self, name: str, model, samples_per_prompt: int) -> None:
        """``generate`` of ``samples_per_prompt`` responses for each of ``sampling_batch_size`` prompts, every
        response ``max_new_tokens`` long (the estimate's KV cache)."""
        model.eval()
        prompt_len, new = self.shape["prompt_tokens"], self.shape["max_new_tokens"]
        prompts = self.ids(self.sampling_batch_size, prompt_len)
        from workbench.precision import autocast_of

        with torch.no_grad(), autocast_of(model), Phase(self.device) as phase:
            generated = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                temperature=self.cfg.temperature,
                num_return_sequences=samples_per_prompt,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
            )
        steps = generated.shape[1] - prompt_len  # decode steps of the batch, one new token per row each
        # per step: memory.estimate_time(decode_step_s=...) takes it as the framework's floor
        self.record(
            name,
            phase,
            tokens_per_s=steps * generated.shape[0] / phase.seconds,
            seconds_per_decode_step=phase.seconds / steps,
        )

    def teacher_likelihood(self, teacher, **extra) -> None:
        """The teacher's no-grad log-probs of the response positions of ``scoring_batch_size`` sequences."""
        from workbench.logprobs import batch_response_token_logps, scoring_chunk

        rows, seq_len = self.scoring_batch_size, self.shape["train_seq_len"]
        seqs = self.ids(rows, seq_len)
        with torch.no_grad(), Phase(self.device) as phase:
            logps = batch_response_token_logps(
                teacher,
                seqs,
                torch.ones_like(seqs),
                self.response_mask(rows, seq_len)[:, 1:],
                chunk=scoring_chunk(self.shape["logits_chunk"]),
            )
        assert torch.isfinite(logps).all(), "teacher log-probs must be finite"
        self.record("teacher_likelihood", phase, tokens_per_s=rows * seq_len / phase.seconds, **extra)

    def train(self, objective, inputs: dict, sequences: int) -> tuple[Phase, dict]:
        """The step of ``objective`` on ``inputs`` (``sequences`` rows of ``train_seq_len`` tokens through the
        student) with a fresh AdamW on the trainable parameters: ``steps`` timed steps after one warm-up step."""
        self.student.train()
        cuda = self.device.startswith("cuda")
        from workbench.precision import autocast_of

        trainable = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=cuda)
        losses, times = [], []
        with Phase(self.device) as phase:
            for step in range(self.steps + 1):
                started = time.perf_counter()
                with autocast_of(self.student):  # bf16-mixed: as the Trainer's autocast
                    loss, _ = objective(self.student, inputs)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                losses.append(loss.detach().item())
                if step:  # the first step allocates AdamW's states and warms the kernels
                    times.append(time.perf_counter() - started)
        assert all(map(math.isfinite, losses)), f"training losses must be finite, got {losses}"
        step_s, seq_len = statistics.median(times), self.shape["train_seq_len"]
        flops = training_flops(
            self.configs["student"],
            sequences,
            seq_len,
            lora=bool(self.shape["lora"]),
            checkpointing=bool(self.shape["gradient_checkpointing"]),
        )
        top = peak_tflops(self.device, self.peak)
        return phase, {
            "step_seconds": step_s,
            "tokens_per_s": sequences * seq_len / step_s,
            "tflops_per_s": flops / step_s / 1e12,
            "mfu": None if top is None else flops / step_s / (top * 1e12),
            "losses": losses,
        }


# --- the methods' phases ---


def pad_phases(bench: Bench) -> None:
    from workbench.methods.pad import ListwiseObjective
    from workbench.scoring import last_position_logits

    cfg, shape = bench.cfg, bench.shape
    teacher = bench.load_teacher("teacher")
    bench.sample("sampling", bench.student, cfg.n)
    bench.teacher_likelihood(teacher)
    # the MCQ prompt lists the n responses: the teacher's logits after its last position only
    rows, length = bench.scoring_batch_size, shape["mcq_seq_len"]
    mcq = bench.ids(rows, length)
    with torch.no_grad(), Phase(bench.device) as phase:
        last_position_logits(teacher, mcq, torch.ones_like(mcq), torch.full((rows,), length - 1, device=bench.device))
    bench.record("teacher_mcq", phase, tokens_per_s=rows * length / phase.seconds)
    del mcq

    sequences, seq_len = shape["train_sequences"], shape["train_seq_len"]
    batch = bench.ids(sequences, seq_len)
    inputs = {
        "input_ids": batch,
        "attention_mask": torch.ones_like(batch),
        "response_mask": bench.response_mask(sequences, seq_len),
        "teacher_rewards": torch.randn(sequences // cfg.n, cfg.n, generator=bench.generator).to(bench.device),
    }
    objective = ListwiseObjective(
        cfg.loss, cfg.beta, cfg.m, seed=cfg.seed, sft_weight=cfg.sft_weight, logits_chunk=shape["logits_chunk"]
    )
    phase, metrics = bench.train(objective, inputs, sequences)
    bench.record("training", phase, **metrics)


def adpa_stage(cfg, stage: str, chunk: int | None) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """(objective, response fields, top-k caches ``<field>_<teacher>``) of one stage of ``METHOD_STAGES``, as
    ``workbench.methods.adpa``'s stage functions build them (``chunk``: the estimate's logits_chunk)."""
    from workbench.methods.adpa import ON_POLICY_LOSSES, DckdObjective, OnPolicyObjective

    if stage == "dckd":
        fields = ("chosen", "rejected") if cfg.use_rejected else ("chosen",)
        return (
            DckdObjective(cfg.alpha, cfg.use_rejected, logits_chunk=chunk),
            fields,
            tuple(f"{f}_dpo" for f in fields),
        )
    if stage not in ON_POLICY_LOSSES:
        raise ValueError(f"ADPA stage {stage!r} distils no teacher; the bench runs dckd and {sorted(ON_POLICY_LOSSES)}")
    objective = OnPolicyObjective(
        stage,
        cfg.gamma,
        cfg.beta,
        cfg.missing_rule,
        cfg.advantage_clamp,
        cfg.length_normalize,
        cfg.q_temperature,
        logits_chunk=chunk,
    )
    return objective, ("chosen", "hat"), tuple(f"hat_{t}" for t in ON_POLICY_LOSSES[stage].teachers)


def topk_pair_inputs(bench: Bench, fields: tuple[str, ...], caches: tuple[str, ...], rows: int) -> dict:
    """A ``TopkPairCollator`` batch of random ids: per field (B, L) ids / mask and shifted (B, L-1) labels / mask,
    per cache (B, L-1, k) top-k ids (distinct per position) and log-probs (best first, some mass left to the tail)."""
    seq_len, k = bench.shape["train_seq_len"], bench.cfg.k
    out = {}
    for name in fields:
        ids = bench.ids(rows, seq_len)
        out.update(
            {
                f"{name}_input_ids": ids,
                f"{name}_attention_mask": torch.ones_like(ids),
                f"{name}_labels": ids[:, 1:],
                f"{name}_mask": bench.response_mask(rows, seq_len)[:, 1:],
            }
        )
    for cache in caches:
        first = torch.randint(0, bench.vocab, (rows, seq_len - 1, 1), generator=bench.generator)
        logps = torch.randn(rows, seq_len - 1, k + 1, generator=bench.generator).log_softmax(-1)[..., :k]
        out[f"{cache}_ids"] = ((first + torch.arange(k)) % bench.vocab).to(bench.device)
        out[f"{cache}_logps"] = logps.sort(-1, descending=True).values.to(bench.device)
    return out


def adpa_phases(bench: Bench) -> None:
    from workbench.logprobs import scoring_chunk
    from workbench.methods.adpa import METHOD_STAGES
    from workbench.topk_cache import _response_topk, release_memory

    cfg, shape = bench.cfg, bench.shape
    stages = {stage: adpa_stage(cfg, stage, shape["logits_chunk"] or 0) for stage in METHOD_STAGES[cfg.method]}
    bench.sample("sampling", bench.student, 1)  # one ŷ per prompt (Alg. 1 line 5)

    # the teachers whose top-k the stages read (cache "<field>_<teacher>"), each loaded for its pass and freed
    # after it, as teacher_topk_by_name does: one teacher in memory at a time
    teachers = dict.fromkeys(
        f"teacher_{cache.rsplit('_', 1)[1]}" for _, _, caches in stages.values() for cache in caches
    )
    rows, seq_len = bench.scoring_batch_size, shape["train_seq_len"]
    passes = {}
    for role in teachers:
        teacher = bench.load_teacher(role)
        seqs = bench.ids(rows, seq_len)
        batch = {
            "input_ids": seqs,
            "attention_mask": torch.ones_like(seqs),
            "response_mask": bench.response_mask(rows, seq_len),
        }
        with torch.no_grad(), Phase(bench.device) as passes[role]:
            topk = _response_topk(teacher, batch, cfg.k, bench.vocab, scoring_chunk(shape["logits_chunk"]))
        assert all(np.isfinite(logps).all() for _, logps, _ in topk), f"{role}'s top-k log-probs must be finite"
        del teacher
        release_memory()
    bench.record(
        "teacher_likelihood",
        *passes.values(),
        tokens_per_s=len(passes) * rows * seq_len / sum(p.seconds for p in passes.values()),
        teacher_seconds={role: p.seconds for role, p in passes.items()},
    )

    pairs = shape["train_sequences"] // 2  # the estimate's n = 2 sequences per pair: (y_w, y_l) or (y_w, ŷ)
    timed, metrics = [], {}
    for stage, (objective, fields, caches) in stages.items():
        phase, metrics[stage] = bench.train(
            objective, topk_pair_inputs(bench, fields, caches, pairs), sequences=pairs * len(fields)
        )
        timed.append(phase)
    # the phase's figures are the last stage's (ADPA+: ADPA, the last of Alg. 2), ``stages`` holds each stage's
    bench.record("training", *timed, **metrics[list(stages)[-1]], stages=metrics)


def plad_phases(bench: Bench) -> None:
    from workbench.methods.plad import PladObjective
    from workbench.topk_cache import release_memory

    cfg, shape = bench.cfg, bench.shape
    teacher = bench.load_teacher("teacher")
    bench.sample("sampling", bench.student, 1)  # one student sample per prompt: ŷ−
    bench.sample("teacher_sampling", teacher, 1)  # one teacher sample per prompt: ŷ+
    del teacher  # a black box: only its samples outlive sampling (train_run frees it before training)
    release_memory()

    pairs, seq_len = shape["train_sequences"] // 2, shape["train_seq_len"]
    batch = bench.ids(2 * pairs, seq_len)  # chosen rows first, then rejected (PairCollator)
    inputs = {
        "input_ids": batch,
        "attention_mask": torch.ones_like(batch),
        "response_mask": bench.response_mask(2 * pairs, seq_len),
    }
    if cfg.loss == "plad_margin":  # Eq. 5 scores both samples against the reference y (no grad)
        reference = bench.ids(pairs, seq_len)
        inputs.update(
            reference_input_ids=reference,
            reference_attention_mask=torch.ones_like(reference),
            reference_response_mask=bench.response_mask(pairs, seq_len),
        )
    objective = PladObjective(
        cfg.loss,
        cfg.beta,
        cfg.length_normalize,
        cfg.score_ngram_orders,
        cfg.sft_weight,
        logits_chunk=shape["logits_chunk"] or 0,
    )
    phase, metrics = bench.train(objective, inputs, 2 * pairs)
    bench.record("training", phase, **metrics)


@dataclass(frozen=True)
class Method:
    """A method family on the bench: the recipe keys naming its models, its name, the student's ``lora`` argument
    as its pipeline passes it to ``workbench.models.load``, and its phases."""

    roles: tuple[str, ...]
    name: Callable[[Any], str]
    student_lora: Callable[[Any], Any]
    phases: Callable[[Bench], None]


METHODS = {  # keyed by workbench.train's pipeline (the recipe's notebook)
    "pad": Method(
        ("teacher", "student"), lambda cfg: f"pad-{cfg.loss}", lambda cfg: True if cfg.lora else None, pad_phases
    ),
    "adpa": Method(
        ("teacher_dpo", "teacher_ref", "student"),
        lambda cfg: cfg.method,
        lambda cfg: True if cfg.lora else None,
        adpa_phases,
    ),
    "plad": Method(("teacher", "student"), lambda cfg: cfg.method, lambda cfg: cfg.lora_config(), plad_phases),
}


def run(
    path: str,
    *,
    device: str,
    shrink: bool = False,
    steps: int = 3,
    peak: float | None = None,
    workdir: str | None = None,
    precision: str | None = None,
) -> dict:
    import yaml

    from workbench import memory
    from workbench.precision import mark_autocast
    from workbench.train import method_config, recipe_pipeline

    pipeline = recipe_pipeline(path)
    method = METHODS[pipeline]
    cfg = method_config(pipeline, yaml.safe_load(Path(path).read_text()))
    values = memory.recipe_values(path)
    values["device"] = device
    if precision:  # the student's precision knob (default: the recipe's, 'auto')
        values["precision"] = precision
    if shrink:
        values.update(SHRUNK_SHAPE)
    configs = {role: model_config(values[role], shrink) for role in method.roles}
    est = memory.estimate(values, model_configs={values[role]: configs[role] for role in method.roles})
    a = est.assumptions
    out = {
        "recipe": str(path),
        "method": method.name(cfg),
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "shrunk": shrink,
        "torch": torch.__version__,
        "assumptions": {
            k: a[k]
            for k in (
                "student_params",
                "teacher_params",
                "trainable_params",
                "train_seq_len",
                "mcq_seq_len",
                "teacher_quantization",
                "lora",
                "gradient_checkpointing",
                "logits_chunk",
                "precision",
            )
        },
        "cuda_context_assumed_gib": memory.CUDA_CONTEXT_BYTES / memory.GIB,
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        start = time.perf_counter()
        built, folders = {}, {}
        for role in method.roles:
            key = json.dumps(configs[role], sort_keys=True)
            if key not in built:  # same architecture (ADPA's two teachers): one random checkpoint serves both
                built[key] = build_random(values[role], configs[role], Path(tmp), getattr(torch, a["dtype"]), device)
            folders[role] = built[key]
        out["build_seconds"] = time.perf_counter() - start
        print(
            json.dumps(
                {"built": {role: str(folder.name) for role, folder in folders.items()}, "seconds": out["build_seconds"]}
            ),
            file=sys.stderr,
            flush=True,
        )
        sizes = memory.run_shape(values)
        bench = Bench(
            device, cfg, est, sizes.sampling_batch_size, sizes.scoring_batch_size, configs, folders, steps, peak
        )
        # the student in the estimate's precision: bf16-mixed trains (and samples) float32 weights under autocast
        mixed = a["precision"] == "bf16-mixed" and not a["lora"]
        student_dtype = torch.float32 if (mixed or a["precision"] == "32-true") else bench.dtype
        bench.student = mark_autocast(
            bench.load(
                "student",
                lora=method.student_lora(cfg),
                dtype=student_dtype,
                quantization=a["student_quantization"],
                gradient_checkpointing=bool(a["gradient_checkpointing"]),
            ),
            torch.bfloat16 if mixed else None,
        )
        method.phases(bench)
        out["load_seconds"] = bench.load_seconds
    missing = set(est.phases) ^ set(bench.phases)
    assert not missing, f"measured phases {sorted(bench.phases)} differ from the estimate's {sorted(est.phases)}"
    out["phases"] = {name: bench.phases[name] for name in est.phases}
    out["peak_tflops_assumed"] = peak_tflops(device, peak)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "recipe",
        nargs="?",
        default=str(ROOT / "recipes" / "pad_llama3_8b_to_3b_qlora.yaml"),
        help="a PAD, DCKD/ADPA/ADPA+ or PLaD recipe (default: recipes/pad_llama3_8b_to_3b_qlora.yaml)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--shrink",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="toy widths and lengths: the code path (default: on a CPU, where full size does not fit)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (MFU)")
    parser.add_argument("--workdir", default=None, help="where the random checkpoints are written (default: /tmp)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["auto", "bf16-mixed", "bf16-true", "32-true"],
        help="the student's precision (default: the recipe's; 'auto' = bf16-mixed on a GPU)",
    )
    args = parser.parse_args(argv)
    shrink = args.shrink if args.shrink is not None else not args.device.startswith("cuda")
    print(
        json.dumps(
            run(
                args.recipe,
                device=args.device,
                shrink=shrink,
                steps=args.steps,
                peak=args.peak_tflops,
                workdir=args.workdir,
                precision=args.precision,
            ),
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
