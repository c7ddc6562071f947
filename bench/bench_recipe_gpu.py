"""Benchmark: a PAD recipe's phases on its real architectures with random weights — measured peak memory beside
``workbench.memory.estimate``, time per phase, training tokens/s and MFU. Prints one JSON object.

    python bench/bench_recipe_gpu.py recipes/pad_llama3_8b_to_3b_qlora.yaml          # GPU, ~5 min on one H200
    python bench/bench_recipe_gpu.py          # on a CPU: the same path at toy widths (--shrink), seconds

No hub: the teacher's and the student's configs come from ``tests/fixtures/model_configs`` (the recipes' models),
each model is built with random weights, saved to a temporary folder and loaded by ``workbench.models.load`` with the
recipe's quantization / LoRA / gradient checkpointing, as a run loads its checkpoints. Random weights cost what
trained ones cost: the same shapes, kernels and (with ``min_new_tokens``) the same generated lengths.

Phases, in the order a PAD round runs them, both models loaded (as ``run_pad`` keeps them), each at the recipe's
sizes (``memory.estimate``'s assumptions: prompt / response lengths, batch sizes, the MCQ prompt length):
  sampling            ``generate`` (T = 0.8) of n responses per prompt for ``sampling_batch_size`` prompts, forced to
                      ``max_new_tokens``;
  teacher_likelihood  the teacher's no-grad response log-probs of ``scoring_batch_size`` sequences, head chunked
                      (``workbench.scoring.batch_response_token_logps``);
  teacher_mcq         the teacher's next-token logits after ``scoring_batch_size`` MCQ prompts
                      (``workbench.scoring.last_position_logits``);
  training            PAD's PPD step (``ListwiseObjective``) on ``batch_size`` prompts × n responses, AdamW on the
                      trainable parameters; the median of ``--steps`` timed steps after one warm-up step.
Memory is ``torch.cuda.max_memory_allocated`` (reset before each phase) plus ``memory.CUDA_CONTEXT_BYTES``, the
estimator's assumed context (reported apart); on CPU no peak is measured (None) and the run checks the code path.
MFU: training FLOPs (forward 2·N·tokens + attention, backward the same for the activation gradients, twice that
for full fine-tuning, plus one more forward with gradient checkpointing) / step time / the GPU's dense bf16 peak
(``--peak-tflops``; known: H100/H200 989, A100 312).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = ROOT / "tests" / "fixtures" / "model_configs"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
# --shrink: the same architectures at toy widths and lengths, so the whole path runs on a CPU in seconds
SHRUNK_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, vocab_size=512)
SHRUNK_SHAPE = dict(prompt_tokens=12, max_new_tokens=8, sampling_batch_size=2, scoring_batch_size=4)


def recipe_values(path: str | Path) -> dict:
    """A PAD recipe's parameters with its ``# @estimate`` RunShape fields (``memory.recipe_values``)."""
    from workbench.memory import recipe_values as values_of

    values = values_of(path)
    if "teacher_dpo" in values or str(values.get("loss", "")).startswith("plad"):
        raise ValueError(f"{path}: only PAD recipes are benchmarked here (teacher + student, listwise loss)")
    return values


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


def run(path: str, *, device: str, shrink: bool = False, steps: int = 3, peak: float | None = None,
        workdir: str | None = None) -> dict:
    from workbench import memory
    from workbench.methods.pad import ListwiseObjective
    from workbench.models import load, lora_config
    from workbench.scoring import batch_response_token_logps, last_position_logits

    values = recipe_values(path)
    values["device"] = device
    if shrink:
        values.update(SHRUNK_SHAPE)
    configs = {name: model_config(values[name], shrink) for name in ("teacher", "student")}
    by_name = {values["teacher"]: configs["teacher"], values["student"]: configs["student"]}
    est = memory.estimate(values, model_configs=by_name)
    a = est.assumptions
    dtype = getattr(torch, a["dtype"])
    n, seq_len, prompt_len = int(values["n"]), a["train_seq_len"], a["prompt_tokens"]
    vocab = min(configs["teacher"]["vocab_size"], configs["student"]["vocab_size"])
    gen = torch.Generator(device="cpu").manual_seed(0)

    def ids(rows: int, length: int) -> torch.Tensor:
        return torch.randint(3, vocab, (rows, length), generator=gen).to(device)

    out = {"recipe": str(path), "device": torch.cuda.get_device_name() if device.startswith("cuda") else
           platform.processor() or platform.machine(), "shrunk": shrink, "torch": torch.__version__,
           "assumptions": {k: a[k] for k in ("student_params", "teacher_params", "trainable_params", "train_seq_len",
                                             "mcq_seq_len", "teacher_quantization", "lora", "gradient_checkpointing",
                                             "logits_chunk")},
           "cuda_context_assumed_gib": memory.CUDA_CONTEXT_BYTES / memory.GIB, "phases": {}}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        start = time.perf_counter()
        folders = {role: build_random(values[role], configs[role], Path(tmp), dtype, device)
                   for role in ("teacher", "student")}
        out["build_seconds"] = time.perf_counter() - start
        student, _ = load(str(folders["student"]), lora=lora_config(True) if values.get("lora") else None,
                          quantization=values.get("student_quantization") or None, dtype=dtype, device=device,
                          gradient_checkpointing=bool(values.get("gradient_checkpointing")))
        teacher, _ = load(str(folders["teacher"]), quantization=values.get("quantization") or None, dtype=dtype,
                          device=device)
        teacher.eval()
        out["load_seconds"] = time.perf_counter() - start - out["build_seconds"]

        def record(name: str, phase: Phase, **extra) -> None:
            measured = None if phase.peak is None else phase.peak + memory.CUDA_CONTEXT_BYTES
            estimated = est.total(name)
            out["phases"][name] = {
                "measured_gib": None if measured is None else measured / memory.GIB,
                "estimated_gib": estimated / memory.GIB,
                "estimate_over_measured": None if measured is None else estimated / measured,
                "seconds": phase.seconds, **extra}

        # sampling: n responses per prompt, every response max_new_tokens long
        student.eval()
        prompts = ids(int(values.get("sampling_batch_size", 32)), prompt_len)
        with torch.no_grad(), Phase(device) as phase:
            generated = student.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                         temperature=0.8, num_return_sequences=n, max_new_tokens=a["max_new_tokens"],
                                         min_new_tokens=a["max_new_tokens"], pad_token_id=0)
        new_tokens = (generated.shape[1] - prompt_len) * generated.shape[0]
        record("sampling", phase, tokens_per_s=new_tokens / phase.seconds)

        # teacher scoring: likelihood of the response positions (chunked head), then the MCQ prompt's last position
        rows = int(values.get("scoring_batch_size", 32))
        seqs = ids(rows, seq_len)
        mask = torch.ones_like(seqs)
        target = torch.zeros(rows, seq_len - 1, dtype=torch.bool, device=device)
        target[:, prompt_len - 1:] = True
        chunk = memory.SCORING_CHUNK if not a["logits_chunk"] else a["logits_chunk"]
        with torch.no_grad(), Phase(device) as phase:
            logps = batch_response_token_logps(teacher, seqs, mask, target, chunk=chunk)
        assert torch.isfinite(logps).all(), "teacher log-probs must be finite"
        record("teacher_likelihood", phase, tokens_per_s=rows * seq_len / phase.seconds)
        mcq = ids(rows, a["mcq_seq_len"])
        with torch.no_grad(), Phase(device) as phase:
            last_position_logits(teacher, mcq, torch.ones_like(mcq), torch.full((rows,), a["mcq_seq_len"] - 1,
                                                                             device=device))
        record("teacher_mcq", phase, tokens_per_s=rows * a["mcq_seq_len"] / phase.seconds)
        del generated, logps, seqs, mcq

        # training: PPD on batch_size prompts × n responses
        student.train()
        os.environ["WORKBENCH_LOGITS_CHUNK"] = str(a["logits_chunk"] or 0)
        objective = ListwiseObjective("ppd", float(values.get("beta", 10.0)))
        trainable = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=device.startswith("cuda"))
        sequences = a["train_sequences"]
        batch = ids(sequences, seq_len)
        response = torch.zeros_like(batch, dtype=torch.bool)
        response[:, prompt_len:] = True
        inputs = {"input_ids": batch, "attention_mask": torch.ones_like(batch), "response_mask": response,
                  "teacher_rewards": torch.randn(sequences // n, n, generator=gen).to(device)}
        losses, times = [], []
        with Phase(device) as phase:
            for step in range(steps + 1):
                started = time.perf_counter()
                loss, _ = objective(student, inputs)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                losses.append(loss.detach().item())
                if step:  # the first step allocates AdamW's states and warms the kernels
                    times.append(time.perf_counter() - started)
        assert all(map(lambda v: v == v, losses)), f"training losses must be finite, got {losses}"
        step_s = statistics.median(times)
        flops = training_flops(configs["student"], sequences, seq_len, lora=bool(values.get("lora")),
                               checkpointing=bool(values.get("gradient_checkpointing")))
        top = peak_tflops(device, peak)
        record("training", phase, step_seconds=step_s, tokens_per_s=sequences * seq_len / step_s,
               tflops_per_s=flops / step_s / 1e12, mfu=None if top is None else flops / step_s / (top * 1e12),
               losses=losses)
    out["peak_tflops_assumed"] = top
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "pad_llama3_8b_to_3b_qlora.yaml"),
                        help="a PAD recipe (default: recipes/pad_llama3_8b_to_3b_qlora.yaml)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shrink", action=argparse.BooleanOptionalAction, default=None,
                        help="toy widths and lengths: the code path (default: on a CPU, where full size does not fit)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (MFU)")
    parser.add_argument("--workdir", default=None, help="where the random checkpoints are written (default: /tmp)")
    args = parser.parse_args(argv)
    shrink = args.shrink if args.shrink is not None else not args.device.startswith("cuda")
    print(json.dumps(run(args.recipe, device=args.device, shrink=shrink, steps=args.steps,
                         peak=args.peak_tflops, workdir=args.workdir), indent=1, default=float))


if __name__ == "__main__":
    main()
