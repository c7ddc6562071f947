"""Benchmark of the chunked head (``logits_chunk``) on a DCKD training step at a real vocabulary size: step time and
peak memory with the full (B, T, V) logits against the student's log-probs read at the labels and teacher top-k ids
a chunk of positions at a time (``workbench.losses.adpa.GatheredLogps``). Prints one JSON object.

Each variant runs in its own process; its peak is measured after a warm-up step (CPU: peak RSS, VmHWM; CUDA: the
allocator's max_memory_allocated). The model is a random-weight Llama of the given shape (default: SmolLM2's
49 152-token vocabulary), the batch random ids with a random top-k "teacher" cache; the numbers are the trade-off on
the machine that runs it (``bench/device_check.sh`` runs it on a GPU at LLaMA-3's vocabulary).

    WORKBENCH_THREADS=2 python bench/bench_chunked_head.py            # ~1 min on 2 CPU cores
    WORKBENCH_THREADS=2 python bench/bench_chunked_head.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _batch(torch, args, generator) -> dict:
    """A TopkPairCollator-shaped DCKD batch: per field (B, L) ids, shifted labels and response mask, top-k cache."""
    batch = {}
    prompt = args.seq // 4
    for field in ("chosen", "rejected"):
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
        mask = torch.zeros(args.batch, args.seq - 1, dtype=torch.long)
        mask[:, prompt:] = 1
        first = torch.randint(0, args.vocab, (args.batch, args.seq - 1, 1), generator=generator)
        logps = torch.randn(args.batch, args.seq - 1, args.k + 1, generator=generator).log_softmax(-1)[..., : args.k]
        batch.update(
            {
                f"{field}_input_ids": ids,
                f"{field}_attention_mask": torch.ones_like(ids),
                f"{field}_labels": ids[:, 1:],
                f"{field}_mask": mask,
                f"{field}_dpo_ids": (first + torch.arange(args.k)) % args.vocab,
                f"{field}_dpo_logps": logps.sort(-1, descending=True).values,
            }
        )
    return batch


def child(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.methods.adpa import DckdObjective
    from workbench.trainers import set_threads

    set_threads()
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        intermediate_size=4 * args.hidden,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    objective = DckdObjective(alpha=1.0, logits_chunk=args.chunk)
    batch = {k: v.to(args.device) for k, v in _batch(torch, args, torch.Generator().manual_seed(0)).items()}

    def step():
        loss, _ = objective(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)  # synchronises the device

    step()  # warm-up: AdamW states allocated, lazy initialisation done
    if cuda:  # the caching allocator's peak of live tensors
        torch.cuda.reset_peak_memory_stats()
        before, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated
    else:  # peak RSS (VmHWM), reset
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, peak = _peak_rss(), _peak_rss
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    return {
        "logits_chunk": args.chunk,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_ms": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "peak_mib": peak() / 2**20,
        "peak_above_steady_mib": (peak() - before) / 2**20,
        "first_loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (chosen + rejected forwards)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence, a quarter of them prompt")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=128, help="logits_chunk of the chunked variant")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--device",
        default=None,
        help="cuda (peak: max_memory_allocated) or cpu (peak RSS); default: cuda when available",
    )
    parser.add_argument("--dtype", default="float32", help="weights dtype, e.g. bfloat16 on a GPU")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seq, args.steps = 128, 3
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(child(args)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed tensors leave RSS: it tracks live bytes
    common = [
        f"--{k}={getattr(args, k)}"
        for k in ("vocab", "hidden", "layers", "batch", "seq", "k", "steps", "device", "dtype")
    ]
    variants = {}
    for name, chunk in (("full_logits", 0), ("chunked", args.chunk)):
        out = subprocess.run(
            [sys.executable, __file__, "--child", f"--chunk={chunk}", *common],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        variants[name] = json.loads(out.stdout.strip().splitlines()[-1])
    full, chunked = variants["full_logits"], variants["chunked"]
    logits_mib = 2 * args.batch * (args.seq - 1) * args.vocab * 4 / 2**20
    print(
        json.dumps(
            {
                "bench": "chunked_head_dckd_step",
                "machine": platform.processor() or platform.machine(),
                "threads": os.environ.get("WORKBENCH_THREADS", "all"),
                "shape": {
                    k: getattr(args, k) for k in ("vocab", "hidden", "layers", "batch", "seq", "k", "chunk", "dtype")
                },
                "float32_logits_of_one_step_mib": logits_mib,
                **variants,
                "same_loss": abs(full["first_loss"] - chunked["first_loss"]) <= 1e-4 * abs(full["first_loss"]),
                "peak_ratio_chunked_over_full": chunked["peak_above_steady_mib"] / full["peak_above_steady_mib"],
                "time_ratio_chunked_over_full": chunked["step_ms"] / full["step_ms"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
