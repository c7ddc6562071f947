"""workbench.memory: the arithmetic of each term, the activation count against what autograd really saves, the
whole estimate against the measured peak RSS of a training step, check_fits, and the chunked log-prob head."""

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import memory

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "model_configs"
GIB = 2**30

PUBLISHED_PARAMS = {  # model cards, billions
    "google/gemma-2-2b-it": 2.61,
    "google/gemma-2-9b-it": 9.24,
    "meta-llama/Llama-3.2-1B-Instruct": 1.24,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
    "meta-llama/Llama-2-7b-hf": 6.74,
    "meta-llama/Llama-2-13b-hf": 13.02,
}


def small_config(kind="llama", layers=2, kv_heads=8, vocab=1000, **extra):
    from transformers import Gemma2Config, LlamaConfig

    common = dict(
        vocab_size=vocab,
        hidden_size=256,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=kv_heads,
        intermediate_size=688,
        **extra,
    )
    return Gemma2Config(head_dim=32, **common) if kind == "gemma2" else LlamaConfig(**common)


# --- model dimensions and parameter arithmetic ---


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_equals_transformers_and_the_model_card(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = memory.model_dims(name, CONFIGS)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(CONFIGS / name.replace("/", "--")))
    assert dims.params == sum(p.numel() for p in model.parameters())
    assert dims.params / 1e9 == pytest.approx(PUBLISHED_PARAMS[name], abs=0.01)


def test_gym_presets_are_sized_without_building_the_gym(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # an empty cache: a build would show up here
    dims = memory.model_dims("gym-tiny-student")
    assert (dims.hidden, dims.layers) == (16, 1) and dims.vocab > 0
    assert not (tmp_path / "gym").exists()


def test_weight_bytes_by_dtype_and_quantization():
    dims = memory.model_dims("meta-llama/Llama-3.1-8B-Instruct", CONFIGS)
    bf16 = sum(memory.weight_bytes(dims, 2).values())
    assert bf16 == 2 * dims.params
    nf4 = memory.weight_bytes(dims, 2, "4bit")
    linear = dims.layers * dims.layer_linear_params
    # NF4 with double quantisation: 4 bits + 8-bit absmax per 64 + fp32 per 256 blocks ≈ 4.127 bits
    assert nf4["linear"] == int(linear * (0.5 + 1 / 64 + 4 / 16384))
    assert nf4["embeddings"] == 2 * (dims.embedding_params + dims.head_params)  # not quantized by bitsandbytes
    assert sum(memory.weight_bytes(dims, 2, "8bit").values()) < bf16
    assert 5.0 < sum(nf4.values()) / GIB < 6.0  # 8B in NF4 with bf16 embeddings and head
    prepared = memory.weight_bytes(dims, 2, "4bit", kbit_prepared=True)
    assert prepared["embeddings"] == 2 * nf4["embeddings"]  # prepare_model_for_kbit_training upcasts to fp32
    with pytest.raises(ValueError, match="quantization"):
        memory.weight_bytes(dims, 2, "3bit")


def test_lora_parameter_count_equals_peft():
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from workbench.models import lora_config

    config = small_config(kv_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), lora_config(True))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory.lora_params(memory.dims_from_config(config), r=8) == trainable


def test_optimizer_and_gradient_bytes():
    assert memory.adamw_state_bytes(1000, 4) == 8000
    assert memory.gradient_bytes(1000, 2) == 2000


# --- activations: the count equals what autograd saves ---


def saved_activation_bytes(model, input_ids, attention_mask) -> int:
    """Bytes of the distinct non-parameter tensors that autograd keeps for backward of one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    seen, storages, stack = set(), {}, [out.logits.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    value = getattr(fn, name)
                except RuntimeError:
                    continue
                for tensor in value if isinstance(value, (tuple, list)) else [value]:
                    if isinstance(tensor, torch.Tensor):
                        storage = tensor.untyped_storage()
                        if storage.data_ptr() not in params:
                            storages[storage.data_ptr()] = storage.nbytes()
        stack += [next_fn for next_fn, _ in fn.next_functions]
    return sum(storages.values())


@pytest.mark.parametrize(
    "kind,dtype,lora_dropout,kv_heads",
    [
        ("llama", torch.float32, None, 8),
        ("llama", torch.bfloat16, None, 2),
        ("llama", torch.float32, 0.05, 8),
        ("llama", torch.bfloat16, 0.05, 2),
        ("llama", torch.bfloat16, 0.0, 8),
        ("llama", torch.float32, 0.0, 8),
        ("gemma2", torch.bfloat16, None, 8),
        ("gemma2", torch.float32, None, 4),
    ],
)
def test_layer_activation_count_equals_autograd_saved_tensors(kind, dtype, lora_dropout, kv_heads):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    batch, seq_len = 4, 48
    ids = torch.randint(0, 1000, (batch, seq_len))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0  # padding: the mask is materialised and k, v are repeated for grouped attention
    saved = {}
    for layers in (1, 3):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small_config(kind, layers, kv_heads)).to(dtype).train()
        if lora_dropout is not None:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=8, lora_alpha=16, lora_dropout=lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM"
                ),
            )
        saved[layers] = saved_activation_bytes(model, ids, mask)
    measured_per_layer = (saved[3] - saved[1]) / 2
    dims = memory.dims_from_config(small_config(kind, 1, kv_heads))
    predicted = (
        batch
        * seq_len
        * memory.layer_activation_bytes(
            dims,
            seq_len,
            torch.finfo(dtype).bits // 8,
            frozen_base=lora_dropout is not None,
            lora_r=8 if lora_dropout is not None else None,
            lora_dropout=lora_dropout or 0.0,
            mask_bytes=4,
        )
    )
    assert predicted == pytest.approx(measured_per_layer, rel=0.005)


@pytest.mark.parametrize("kind,kv_heads", [("llama", 8), ("llama", 2), ("gemma2", 8)])
def test_layer_activations_under_autocast_equal_autograd_saved_tensors(kind, kv_heads):
    """bf16-mixed: float32 weights under bfloat16 autocast (CPU autocast casts linear layers and attention as CUDA's
    does). Saved per layer: the activations, and autocast's bfloat16 copies of the layer's weights."""
    from transformers import AutoModelForCausalLM

    batch, seq_len = 4, 48
    ids = torch.randint(0, 1000, (batch, seq_len))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    saved = {}
    for layers in (1, 3):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small_config(kind, layers, kv_heads)).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            saved[layers] = saved_activation_bytes(model, ids, mask)
    measured_per_layer = (saved[3] - saved[1]) / 2
    dims = memory.dims_from_config(small_config(kind, 1, kv_heads))
    activations = batch * seq_len * memory.layer_activation_bytes(dims, seq_len, 2, autocast=True)
    copies = memory.autocast_weight_bytes(dims, 2, layers=1, head=False)
    assert activations + copies == pytest.approx(measured_per_layer, rel=0.005)
    # more than the bfloat16 student saves, less than twice it: the float32 residual stream and the per-layer casts
    pure = batch * seq_len * memory.layer_activation_bytes(dims, seq_len, 2)
    assert pure < activations < 2 * pure


def test_qlora_student_activations_are_counted_in_float32(tmp_path):
    """A 4-bit student prepared for k-bit training (norms and embeddings upcast) runs its residual stream in
    float32: its LoRA layer saves exactly the float32 count, although the compute dtype is bfloat16."""
    from transformers import LlamaForCausalLM

    from workbench.gym.tokenizer import build_tokenizer
    from workbench.models import load

    ids = torch.randint(0, 60, (4, 48))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    saved = {}
    for layers in (1, 3):
        torch.manual_seed(0)
        folder = tmp_path / str(layers)
        LlamaForCausalLM(small_config(layers=layers)).save_pretrained(folder)
        build_tokenizer().save_pretrained(folder)
        model, _ = load(str(folder), quantization="4bit", lora=True, device="cpu", dtype=torch.bfloat16)
        saved[layers] = saved_activation_bytes(model.train(), ids, mask)
    predicted = memory.layer_activation_bytes(
        memory.dims_from_config(small_config(layers=1)),
        48,
        4,
        frozen_base=True,
        lora_r=8,
        lora_dropout=0.05,
        mask_bytes=4,
    )
    assert 4 * 48 * predicted == pytest.approx((saved[3] - saved[1]) / 2, rel=0.005)


# --- the whole estimate against measured peak RSS of training steps (subprocess) ---

MEASURED = [
    # a few-M-param Llama, PAD-PPD step through DistillTrainer: B=8 prompts × n=4, T≈66 tokens, vocab 8192
    dict(name="full fp32", vocab=8192, hidden=256, layers=4, heads=8, intermediate=688, batch_size=8),
    dict(name="LoRA fp32", vocab=8192, hidden=256, layers=4, heads=8, intermediate=688, batch_size=8, lora=True),
    # the bfloat16 specs take half the prompts: a CPU without bfloat16 instructions (AVX2 only) multiplies bfloat16
    # matrices ~60x slower than float32 (each spec ~30 s instead of ~70 s; the ratios are those of twice the batch)
    dict(
        name="bf16, GQA, chunked head, checkpointing",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        kv_heads=2,
        intermediate=688,
        batch_size=2,
        dtype="bfloat16",
        logits_chunk=16,
        gradient_checkpointing=True,
    ),
    # bf16-mixed (the GPU default): float32 weights, gradients and AdamW states, bfloat16 autocast (Trainer bf16)
    dict(
        name="bf16-mixed",
        vocab=8192,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=4,
        dtype="bfloat16",
        precision="bf16-mixed",
    ),
    dict(
        name="bf16-mixed, GQA, chunked head, checkpointing",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        kv_heads=2,
        intermediate=688,
        batch_size=2,
        dtype="bfloat16",
        precision="bf16-mixed",
        logits_chunk=16,
        gradient_checkpointing=True,
    ),
    # DCKD step (ADPA family): B=6 pairs, chosen and rejected forwards, top-50 teacher cache, through the chunked head
    # (held to 5%: the second forward back-propagates beside every gradient the first left, which a count of the
    # first forward's backward alone misses by 12%)
    dict(
        name="DCKD top-k, chunked head, checkpointing",
        objective="dckd",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=6,
        logits_chunk=16,
        gradient_checkpointing=True,
        tolerance=0.05,
    ),
    # a LoRA student and a wide head chunk: the chunk sets the peak, and the step's two forwards (y_w, y_l)
    # back-propagate one after the other, so one forward's rows of it are alive (an H200 found twice that 17% over)
    dict(
        name="DCKD top-k, LoRA, chunked head, checkpointing",
        objective="dckd",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=6,
        logits_chunk=64,
        gradient_checkpointing=True,
        lora=True,
        tolerance=0.05,
    ),
]
TOPK = 50
N_RESPONSES, PROMPT_WORDS, RESPONSE_WORDS = 4, 20, 40


# teacher scoring (no grad) with the hidden-state head: likelihood of 32 sequences in chunks of 16 positions per row
# (the head chunk sets the peak), MCQ of 64 prompts at the last position (one decoder layer's transients set it).
# The full (B, T, V) float32 logits of the old scorers would be ~260 MiB and ~1.5 GiB here.
MEASURED_SCORING = [
    dict(
        name="scoring likelihood fp32",
        kind="likelihood",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=32,
        logits_chunk=16,
    ),
    dict(
        name="scoring mcq fp32", kind="mcq", vocab=32000, hidden=256, layers=4, heads=8, intermediate=688, batch_size=64
    ),
    # Gemma-2's eager attention in bfloat16: the T×T scores at softmax (bfloat16 scores, their float32 copy, float32
    # probabilities) and the full and sliding masks set the MCQ pass's peak (an H200 found the old count 17% under)
    dict(
        name="scoring mcq gemma2 bf16 eager",
        kind="mcq",
        model_type="gemma2",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=64,
        dtype="bfloat16",
    ),
]


# FSDP2 over 2 processes (gloo on CPU, through tests/fsdp_on_cpu.py): a full fp32 student with a 32k vocabulary and
# untied head, whose weights, gradients and AdamW states (sharded, but the output group whole) are most of a step
MEASURED_FSDP = [
    dict(
        name="FSDP2 full fp32, 2 processes, chunked head, checkpointing",
        vocab=32000,
        hidden=256,
        layers=4,
        heads=8,
        intermediate=688,
        batch_size=4,
        logits_chunk=16,
        gradient_checkpointing=True,
        world_size=2,
    ),
]


def _measure(specs: list[dict]) -> list[dict]:
    """Run each spec's training steps (or, with ``kind``, its teacher scoring pass) in this process; peak RSS
    (VmHWM, reset before each) minus RSS before the model is built (scoring: after, weights excluded). Prints
    JSON. Under an FSDP launch the peak is reset again when training begins, after the Trainer has sharded the
    student (each process builds it whole first); process 0 prints."""
    import logging
    import time

    import datasets
    import numpy as np
    import psutil
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.gym.tokenizer import build_tokenizer
    from workbench.methods.pad import ListwiseObjective
    from workbench.trainers import ListwiseCollator, train_distill

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    tokenizer = build_tokenizer()
    collator = ListwiseCollator(tokenizer)
    rows = datasets.Dataset.from_dict(
        {
            "prompt": ["sort " + " ".join(str(j % 10) for j in range(PROMPT_WORDS))] * 64,
            "responses": [[" ".join(str((j + k) % 10) for j in range(RESPONSE_WORDS)) for k in range(N_RESPONSES)]]
            * 64,
            "teacher_rewards": [[float(k) for k in range(N_RESPONSES)]] * 64,
        }
    )
    seq_len = int(collator([rows[0]])["input_ids"].shape[1])
    pairs = datasets.Dataset.from_dict(
        {
            "index": list(range(64)),
            "prompt": rows["prompt"],
            "chosen": [r[0] for r in rows["responses"]],
            "rejected": [r[1] for r in rows["responses"]],
        }
    )

    def topk_collator(vocab):
        """A random top-k "teacher" cache on the pairs (the memory of a step does not depend on its values)."""
        from workbench.methods.adpa import TopkPairCollator
        from workbench.topk_cache import TopkCache

        generator = np.random.default_rng(0)
        caches = {}
        for name in ("chosen", "rejected"):
            lengths = [
                int(collator([{"prompt": p, "responses": [r], "teacher_rewards": [0.0]}])["response_mask"][:, 1:].sum())
                for p, r in zip(pairs["prompt"], pairs[name])
            ]
            caches[f"{name}_dpo"] = TopkCache(
                ids=[generator.integers(0, vocab, (n, TOPK), dtype=np.int32) for n in lengths],
                logps=[np.full((n, TOPK), np.log(0.9 / TOPK), dtype=np.float32) for n in lengths],
                tail_logps=[np.full(n, np.log(0.1), dtype=np.float32) for n in lengths],
                k=TOPK,
            )
        return TopkPairCollator(tokenizer, ("chosen", "rejected"), caches)

    def build(spec):
        fields = dict(
            vocab_size=spec["vocab"],
            hidden_size=spec["hidden"],
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"],
            num_key_value_heads=spec.get("kv_heads", spec["heads"]),
            intermediate_size=spec["intermediate"],
            pad_token_id=tokenizer.pad_token_id,
        )
        weights = "float32" if spec.get("precision") == "bf16-mixed" else spec.get("dtype", "float32")
        if spec.get("model_type") == "gemma2":
            from transformers import Gemma2Config, Gemma2ForCausalLM

            config = Gemma2Config(head_dim=spec["hidden"] // spec["heads"], **fields)
            model = Gemma2ForCausalLM(config).to(getattr(torch, weights))
            assert model.config._attn_implementation == "eager"
            return model
        model = LlamaForCausalLM(LlamaConfig(**fields)).to(getattr(torch, weights))
        if spec.get("lora"):
            from peft import get_peft_model

            from workbench.models import lora_config

            model = get_peft_model(model, lora_config(True))
        return model

    def train(model, spec, steps):
        extra = {}
        if spec.get("gradient_checkpointing"):
            from workbench.trainers import checkpointing_arguments

            extra = checkpointing_arguments()  # the installed TrainingArguments' name: no deprecation warning
        if spec.get("precision") == "bf16-mixed":
            extra["bf16"] = True
        os.environ["WORKBENCH_LOGITS_CHUNK"] = str(spec.get("logits_chunk") or 0)
        if spec.get("objective") == "dckd":
            from workbench.methods.adpa import DckdObjective

            train_distill(
                model,
                pairs,
                topk_collator(spec["vocab"]),
                DckdObjective(alpha=1.0),
                steps=steps,
                lr=1e-4,
                batch_size=spec["batch_size"],
                progress=False,
                **extra,
            )
            return
        train_distill(
            model,
            rows,
            collator,
            ListwiseObjective("ppd", 10.0),
            steps=steps,
            lr=1e-4,
            batch_size=spec["batch_size"],
            progress=False,
            **extra,
        )

    def peak_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    def score(model, spec):
        """The teacher's scoring pass of ``spec``; returns the longest (padded) sequence it scored."""
        from workbench.cache import StageCache
        from workbench.gym.world import GYM_MCQ_TEMPLATE
        from workbench.scoring import mcq_selection_logprobs, response_token_logps

        off = StageCache(enabled=False)
        prompts = rows["prompt"][: spec["batch_size"]]
        groups = [r for r in rows["responses"][: spec["batch_size"]]]
        if spec["kind"] == "likelihood":
            response_token_logps(
                model,
                tokenizer,
                prompts,
                [g[0] for g in groups],
                batch_size=spec["batch_size"],
                logits_chunk=spec["logits_chunk"],
                cache=off,
            )
            return seq_len
        mcq_selection_logprobs(
            model,
            tokenizer,
            prompts,
            groups,
            template=GYM_MCQ_TEMPLATE,
            order="identity",
            batch_size=spec["batch_size"],
            cache=off,
        )
        question = GYM_MCQ_TEMPLATE.render(prompts[0], groups[0])
        return len(tokenizer(prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])

    from workbench.encoding import prompt_text

    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        from transformers import TrainerCallback

        from workbench import trainers

        class ResetPeak(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                gc.collect()
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")

        fit = trainers.fit

        def fit_from_the_sharded_student(trainer, *args, **kwargs):
            trainer.add_callback(ResetPeak())
            return fit(trainer, *args, **kwargs)

        trainers.fit = fit_from_the_sharded_student

    # warm-up: lazy imports, thread pools, Trainer and accelerate state
    warm = build(dict(vocab=64, hidden=32, layers=1, heads=2, intermediate=64))
    for kind in {spec.get("kind") for spec in specs} - {None}:
        score(warm, dict(kind=kind, batch_size=2, logits_chunk=4))
    train(warm, {"batch_size": 2}, 2)
    if any(spec.get("objective") == "dckd" for spec in specs):
        train(warm, {"batch_size": 2, "objective": "dckd", "vocab": 64, "logits_chunk": 4}, 2)
    results = []
    for spec in specs:
        model = build(spec).eval() if spec.get("kind") else None
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (Linux ≥ 4.0)
        before = psutil.Process().memory_info().rss
        start = time.perf_counter()
        if spec.get("kind"):
            length = score(model, spec)
        else:
            model, length = build(spec), seq_len
            train(model, spec, 2)  # step 2 back-propagates with AdamW's states allocated
        results.append(
            {
                "name": spec["name"],
                "peak_delta": peak_rss() - before,
                "seq_len": length,
                "seconds": time.perf_counter() - start,
            }
        )
        del model
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results))
    return results


def predicted_training_bytes(spec: dict, seq_len: int) -> int:
    config = {
        "model_type": "llama",
        "vocab_size": spec["vocab"],
        "hidden_size": spec["hidden"],
        "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["heads"],
        "num_key_value_heads": spec.get("kv_heads", spec["heads"]),
        "intermediate_size": spec["intermediate"],
        "tie_word_embeddings": False,
    }
    method = (
        dict(memory_shape="topk-pairs", teacher_dpo="probe", teacher_ref="probe", method="dckd")
        if spec.get("objective") == "dckd"
        else dict(n=N_RESPONSES)
    )  # DCKD: chosen and rejected of each pair (n = 2)
    estimate = memory.estimate(
        dict(
            student="probe",
            **method,
            batch_size=spec["batch_size"],
            lora=spec.get("lora", False),
            prompt_tokens=seq_len - 1,
            max_new_tokens=0,
            device="cpu",
            dtype=spec.get("dtype", "float32"),
            precision=spec.get("precision", "auto"),
            logits_chunk=spec.get("logits_chunk") or 0,
            gradient_checkpointing=spec.get("gradient_checkpointing", False),
            **(dict(strategy="fsdp", world_size=spec["world_size"]) if spec.get("world_size") else {}),
        ),
        model_configs={"probe": config},
    )
    assert estimate.assumptions["train_seq_len"] == seq_len
    return estimate.total("training")


MEASURE_ENV = dict(
    OMP_NUM_THREADS="1",
    WORKBENCH_THREADS="1",
    TOKENIZERS_PARALLELISM="false",
    # big tensors from mmap, returned on free: RSS then tracks live tensor bytes as a GPU caching
    # allocator's peak does, not glibc heap fragmentation (which adds 15-30% here)
    MALLOC_MMAP_THRESHOLD_="65536",
)


@pytest.fixture(scope="module")
def measured():
    env = dict(os.environ, **MEASURE_ENV)
    # a hang guard, not a speed limit: on a CPU without bfloat16 instructions (AVX2 only) the three bfloat16 specs
    # take 15-40 s each on the one thread, the whole run ~2 min alone and longer beside another test process
    out = subprocess.run(
        [sys.executable, __file__, json.dumps(MEASURED + MEASURED_SCORING)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {r["name"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def measured_fsdp():
    import shutil

    if shutil.which("accelerate") is None or torch.cuda.is_available():
        pytest.skip("measured on CPU through tests/fsdp_on_cpu.py (needs the accelerate CLI, no CUDA)")
    env = dict(os.environ, **MEASURE_ENV)
    out = subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "fsdp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29541",
            __file__,
            "--fsdp",
            json.dumps(MEASURED_FSDP),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {r["name"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("spec", MEASURED + MEASURED_FSDP, ids=[s["name"] for s in MEASURED + MEASURED_FSDP])
def test_estimate_within_15_percent_of_measured_peak_rss(spec, request):
    result = request.getfixturevalue("measured_fsdp" if spec.get("world_size") else "measured")[spec["name"]]
    predicted = predicted_training_bytes(spec, result["seq_len"])
    assert result["peak_delta"] > 150 * 2**20, "the measurement should dwarf allocator noise"
    ratio = predicted / result["peak_delta"]
    print(
        f"{spec['name']}: predicted {predicted / 2**20:.1f} MiB, measured {result['peak_delta'] / 2**20:.1f} MiB, "
        f"ratio {ratio:.3f}"
    )
    tolerance = spec.get("tolerance", 0.15)
    assert 1 - tolerance <= ratio <= 1 + tolerance


@pytest.mark.parametrize("spec", MEASURED_SCORING, ids=[s["name"] for s in MEASURED_SCORING])
def test_scoring_estimate_within_15_percent_of_measured_peak_rss(spec, measured):
    """The hidden-state scorers' peak (weights excluded) is what scoring_bytes predicts: one head chunk, or one
    decoder layer's transients — never the (B, T, V) logits the old scorers kept."""
    result = measured[spec["name"]]
    model_type = spec.get("model_type", "llama")
    dims = memory.dims_from_config(
        {
            "model_type": model_type,
            "vocab_size": spec["vocab"],
            "hidden_size": spec["hidden"],
            "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"],
            "intermediate_size": spec["intermediate"],
            "tie_word_embeddings": False,
            **({"sliding_window": 4096, "attn_logit_softcapping": 50.0} if model_type == "gemma2" else {}),
        }
    )
    positions = spec["logits_chunk"] if spec["kind"] == "likelihood" else 1
    act_bytes = torch.finfo(getattr(torch, spec.get("dtype", "float32"))).bits // 8
    predicted = sum(
        memory.scoring_bytes(dims, spec["batch_size"], result["seq_len"], act_bytes, head_positions=positions).values()
    )
    full_logits = spec["batch_size"] * result["seq_len"] * spec["vocab"] * act_bytes
    assert result["peak_delta"] > 100 * 2**20, "the measurement should dwarf allocator noise"
    ratio = predicted / result["peak_delta"]
    print(
        f"{spec['name']}: predicted {predicted / 2**20:.1f} MiB, measured {result['peak_delta'] / 2**20:.1f} MiB, "
        f"ratio {ratio:.3f}; full logits would be {full_logits / 2**20:.0f} MiB"
    )
    assert 0.85 <= ratio <= 1.15
    assert result["peak_delta"] < full_logits  # the old scorers kept these (plus a chunk) at least


DEVICE_RESULTS = sorted((ROOT / "results" / "device").glob("*/*_qlora.json"))


@pytest.mark.parametrize("result", DEVICE_RESULTS, ids=[p.stem for p in DEVICE_RESULTS])
def test_the_estimate_is_within_15_percent_of_each_phase_measured_on_a_gpu(result):
    """The committed GPU measurements (``bench/bench_recipe_gpu.py`` on an H200, see the folder's README): each
    recipe's estimate, recomputed by this code from the recipe file, within 15% of every phase's measured peak
    (``torch.cuda.max_memory_allocated`` + the assumed CUDA context) and of the run's peak."""
    measured = json.loads(result.read_text())
    recipe = ROOT / measured["recipe"]
    # a measurement made before the dequantize_4bit lever sampled the 4-bit teacher 4-bit: its assumptions lack it
    lever = {"dequantize_4bit": measured["assumptions"].get("dequantize_4bit", False)}
    estimate = memory.estimate({**memory.recipe_values(recipe), **lever}, model_configs=CONFIGS)
    for key, value in measured["assumptions"].items():  # the shapes measured are the shapes estimated
        assert estimate.assumptions[key] == value, (key, estimate.assumptions[key], value)
    phases = {name: phase["measured_gib"] * GIB for name, phase in measured["phases"].items()}
    assert set(phases) == set(estimate.phases), "every phase of the estimate is measured"
    ratios = {name: estimate.total(name) / peak for name, peak in phases.items()}
    ratios["run peak"] = estimate.peak_bytes / max(phases.values())
    print(result.stem, {name: round(ratio, 3) for name, ratio in ratios.items()})
    assert all(0.85 <= ratio <= 1.15 for ratio in ratios.values()), ratios
    # the recipe's header quotes this measurement (a newer one must be quoted there too)
    peak_phase = max(phases, key=phases.get)
    training = measured["phases"]["training"]
    header = recipe.read_text()
    assert (
        f"# measured on one {measured['device']}: peak {phases[peak_phase] / GIB:.1f} GiB in phase {peak_phase}, "
        f"training step {training['step_seconds']:.2f} s at {training['mfu']:.0%} MFU"
    ) in header
    assert str(result.relative_to(ROOT)) in header


@pytest.mark.gpu
def test_estimate_within_15_percent_of_cuda_peak_allocated():
    from transformers import LlamaForCausalLM

    from workbench.methods.pad import ListwiseObjective

    torch.cuda.reset_peak_memory_stats()
    config = small_config(layers=8, kv_heads=2, vocab=32000)
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    objective = ListwiseObjective("ppd", 10.0)
    batch, n, seq_len = 8, 4, 256
    ids = torch.randint(0, 32000, (batch * n, seq_len), device="cuda")
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "response_mask": torch.ones_like(ids).bool(),
        "teacher_rewards": torch.randn(batch, n, device="cuda"),
    }
    inputs["attention_mask"][0, -3:] = 0
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        loss, _ = objective(model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() - before + sum(p.numel() * 2 for p in model.parameters())
    predicted = memory.estimate(
        dict(student="probe", n=n, batch_size=batch, prompt_tokens=seq_len - 1, max_new_tokens=0, device="cuda"),
        model_configs={"probe": config.to_dict()},
    )
    predicted_bytes = predicted.total("training") - memory.CUDA_CONTEXT_BYTES
    assert 0.85 <= predicted_bytes / peak <= 1.15


# --- estimate: phases, levers, method mappings ---


def pad_recipe(**overrides):
    return dict(
        teacher="google/gemma-2-9b-it",
        student="google/gemma-2-2b-it",
        n=4,
        batch_size=1,
        prompt_tokens=512,
        max_new_tokens=512,
        device="cuda",
        dataset="ultrafeedback",
        **overrides,
    )


def test_each_lever_lowers_the_peak_it_should():
    base = memory.estimate(pad_recipe(), model_configs=CONFIGS)
    qlora = memory.estimate(pad_recipe(quantization="4bit", lora=True), model_configs=CONFIGS)
    assert qlora.phases["training"]["teacher_weights"] < base.phases["training"]["teacher_weights"] / 3
    assert qlora.phases["training"]["optimizer_states"] < base.phases["training"]["optimizer_states"] / 100
    checkpointed = memory.estimate(pad_recipe(gradient_checkpointing=True), model_configs=CONFIGS)
    assert checkpointed.total("training") < base.total("training")
    chunked = memory.estimate(pad_recipe(logits_chunk=64), model_configs=CONFIGS)
    assert chunked.phases["training"].get("logits_and_log_softmax", 0) < base.phases["training"].get(
        "logits_and_log_softmax", 1
    )
    # precision: 'auto' on CUDA is bf16-mixed, float32 weights and AdamW states (4 + 8 bytes per parameter) where
    # bf16-true keeps 2 + 4; a LoRA student is the same in both (a bfloat16 base, float32 adapters)
    true = memory.estimate(pad_recipe(precision="bf16-true"), model_configs=CONFIGS)
    assert base.assumptions["precision"] == "bf16-mixed" and true.assumptions["precision"] == "bf16-true"
    for term in ("student_weights", "optimizer_states"):
        assert base.phases["training"][term] == 2 * true.phases["training"][term], term
    assert true.total("training") < base.total("training") and "autocast_weight_copies" not in true.phases["sampling"]
    lora = {
        p: memory.estimate(pad_recipe(lora=True, precision=p), model_configs=CONFIGS).phases
        for p in ("bf16-mixed", "bf16-true")
    }
    assert lora["bf16-mixed"] == lora["bf16-true"]
    cached = memory.estimate(pad_recipe(teacher_cached=True), model_configs=CONFIGS)
    assert "teacher_mcq" not in cached.phases and cached.phases["training"]["teacher_weights"] == 0
    fsdp = memory.estimate(pad_recipe(world_size=4, strategy="fsdp"), model_configs=CONFIGS)
    assert fsdp.phases["training"]["optimizer_states"] == base.phases["training"]["optimizer_states"] // 4
    # each process samples with the whole student and trains a quarter of it, plus the output group whole (Gemma-2:
    # tied, so its 256k x 2304 embedding) and two gathered layers
    assert fsdp.phases["sampling"]["student_weights"] == base.phases["sampling"]["student_weights"]
    assert fsdp.phases["training"]["student_weights"] == base.phases["training"]["student_weights"] // 4
    assert fsdp.phases["training"]["fsdp_output_group"] == (256000 * 2304 + 2304) * 2
    # a later round samples a whole copy beside the trained shards (PAD iterations > 1; ADPA+ after DCKD)
    assert "fsdp_student_shards" not in fsdp.phases["sampling"]
    rounds = memory.estimate(pad_recipe(world_size=4, strategy="fsdp", iterations=2), model_configs=CONFIGS)
    assert rounds.phases["sampling"]["fsdp_student_shards"] == fsdp.phases["training"]["student_weights"]
    adpa = dict(
        memory_shape="topk-pairs",
        teacher_dpo="meta-llama/Llama-3.1-8B-Instruct",
        teacher_ref="meta-llama/Llama-3.1-8B",
        student="meta-llama/Llama-3.2-1B",
        device="cuda",
        world_size=2,
        strategy="fsdp",
    )
    assert memory.run_shape({**adpa, "method": "adpa+"}).samples_trained_student
    assert not memory.run_shape({**adpa, "method": "adpa"}).samples_trained_student
    assert (
        "fsdp_student_shards" in memory.estimate({**adpa, "method": "adpa+"}, model_configs=CONFIGS).phases["sampling"]
    )


@pytest.mark.parametrize("seq_len", [257, 1025, 4097])
def test_teacher_scoring_holds_one_head_chunk_never_b_t_v_logits(seq_len):
    """A scoring pass peaks in a decoder layer or at the head, where the vocabulary enters through one chunk of
    B·c positions (likelihood) or the B last positions (MCQ): growing V adds at most that, at any length T."""
    import dataclasses

    dims = memory.model_dims("google/gemma-2-9b-it", CONFIGS)
    batch, b, chunk = 32, 2, 128
    layer = memory.forward_transient_bytes(dims, batch, seq_len, b)
    hidden = batch * seq_len * dims.hidden * b
    likelihood = memory.scoring_bytes(dims, batch, seq_len, b, head_positions=chunk)
    mcq = memory.scoring_bytes(dims, batch, seq_len, b, head_positions=1)
    assert sum(likelihood.values()) == max(layer, hidden + batch * chunk * dims.vocab * 8)
    assert sum(mcq.values()) == max(layer, hidden + batch * dims.vocab * 8)
    wide = dataclasses.replace(dims, vocab=2 * dims.vocab)
    for terms, positions in ((likelihood, chunk), (mcq, 1)):
        grown = sum(memory.scoring_bytes(wide, batch, seq_len, b, head_positions=positions).values()) - sum(
            terms.values()
        )
        assert 0 <= grown <= batch * positions * dims.vocab * 8  # no T in the bound


def test_pad_recipe_scoring_phases_keep_no_full_logits():
    vocab = memory.model_dims("google/gemma-2-9b-it", CONFIGS).vocab
    short, long = (
        memory.estimate(pad_recipe(logits_chunk=128), model_configs=CONFIGS, prompt_tokens=t) for t in (512, 2048)
    )
    assert long.assumptions["mcq_seq_len"] > short.assumptions["mcq_seq_len"]
    assert short.phases["teacher_likelihood"]["likelihood_head_logits_chunk"] == 32 * 128 * vocab * 8  # one chunk
    for est in (short, long):  # at 2048-token prompts eager attention's T×T scores outgrow the head chunk
        terms = {**est.phases["teacher_likelihood"], **est.phases["teacher_mcq"]}
        logits = [v for k, v in terms.items() if k.startswith(("likelihood_", "mcq_")) and "logits" in k]
        full_logits = 32 * est.assumptions["mcq_seq_len"] * vocab * 2  # what the MCQ pass used to keep
        assert max(logits, default=0) < full_logits / 4
    # without $WORKBENCH_LOGITS_CHUNK the scorers use 256 positions per row, bounded by the response length
    default = memory.estimate(pad_recipe(logits_chunk=0), model_configs=CONFIGS)
    assert default.phases["teacher_likelihood"]["likelihood_head_logits_chunk"] == 32 * 256 * vocab * 8
    gym = memory.estimate(
        dict(
            teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", device="cpu", max_new_tokens=24, logits_chunk=0
        )
    )
    assert set(gym.phases) >= {"teacher_likelihood", "teacher_mcq"}


def test_gemma2_eager_attention_is_counted():
    dims = memory.model_dims("google/gemma-2-2b-it", CONFIGS)
    assert dims.attention == "eager" and dims.attn_softcap and dims.norms_per_layer == 4
    short, long = (memory.layer_activation_bytes(dims, t, 2) for t in (256, 1024))
    assert long - short == dims.heads * (1024 - 256) * (4 + 2 + 2)  # T×T per head: fp32 softmax, bf16, tanh


def test_run_shape_reads_pad_adpa_and_plad_parameters(monkeypatch):
    from workbench.methods.pad import PadConfig

    shape = memory.run_shape(PadConfig(teacher="gym-teacher-dpo", student="gym-student", lora=True, n=6))
    assert (shape.n, shape.lora, shape.mcq, shape.teacher_in_training, shape.prompt_tokens) == (6, True, True, True, 24)
    adpa = memory.run_shape(
        dict(
            memory_shape="topk-pairs",
            teacher_dpo="a",
            teacher_ref="b",
            student="c",
            method="adpa",
            dataset="dpo-mix-7k",
        )
    )
    assert (adpa.teacher, adpa.teacher_ref, adpa.n, adpa.mcq, adpa.teacher_in_training) == ("a", "b", 2, False, False)
    assert adpa.prompt_tokens == 512 and adpa.forwards_per_step == 2  # y_w, then y_l or ŷ: one forward each
    plad = memory.run_shape(dict(memory_shape="pseudo-pairs", teacher="a", student="c", loss="plad_ranking"))
    assert (plad.n, plad.teacher_generates, plad.forwards_per_step) == (2, True, 1)  # both samples in one forward
    monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", '{"gradient_checkpointing": true}')
    monkeypatch.setenv("WORKBENCH_LOGITS_CHUNK", "128")
    shape = memory.run_shape(dict(student="gym-student"))
    assert shape.gradient_checkpointing and shape.logits_chunk == 128


def test_estimate_prints_a_breakdown_and_serialises():
    estimate = memory.estimate(pad_recipe(quantization="4bit", lora=True), model_configs=CONFIGS)
    text = str(estimate)
    assert "estimated peak memory" in text and "training" in text and "teacher_weights" in text
    assert estimate.peak_bytes == max(estimate.total(phase) for phase in estimate.phases)
    json.dumps(estimate.to_dict())


def test_a_model_without_a_readable_config_gives_a_clear_error():
    with pytest.raises(OSError, match="model_configs"):
        memory.model_dims("/no/such/model/folder")


def test_check_fits_refuses_with_the_levers_and_passes_when_it_fits():
    estimate = memory.estimate(pad_recipe(), model_configs=CONFIGS)
    with pytest.raises(memory.WillNotFitError) as error:
        memory.check_fits(estimate, 24 * GIB)
    message = str(error.value)
    assert "needs ~" in message and "device has 24.0 GiB" in message
    for lever in (
        "quantization='4bit'",
        "lora=True",
        "precision='bf16-true'",
        "smaller batch_size",
        "gradient checkpointing",
    ):
        assert lever in message
    assert memory.check_fits(estimate, 10_000 * GIB) is estimate
    memory.check_fits(memory.estimate(dict(student="gym-tiny-student", device="cpu")), "cpu")


def test_time_estimate_is_on_the_scale_of_pads_reported_gpu_hours():
    # PAD Table 2: 12.32 A800 GPU-hours for one iteration at n = 4 (Gemma-2, ~60k UltraFeedback prompts)
    hours = memory.estimate_time(pad_recipe(), prompts=60_000, gpu="A800-80GB", model_configs=CONFIGS)
    assert 0.5 < hours["gpu_hours"] / 12.32 < 2.0
    assert set(hours["stages"]) == {"sampling", "teacher_scoring", "training"}
    # a per-step floor below the bandwidth-bound step changes nothing; above it, each of the batches' decode steps
    # takes the floor (HF generate measured 103 ms per step for a 1B LoRA student on an H200)
    same = memory.estimate_time(
        pad_recipe(), prompts=60_000, gpu="A800-80GB", model_configs=CONFIGS, decode_step_s=1e-6
    )
    assert same["stages"] == hours["stages"]
    slow = memory.estimate_time(
        pad_recipe(), prompts=60_000, gpu="A800-80GB", model_configs=CONFIGS, decode_step_s=0.103
    )
    slower = memory.estimate_time(
        pad_recipe(), prompts=60_000, gpu="A800-80GB", model_configs=CONFIGS, decode_step_s=0.2
    )
    shape = memory.run_shape(pad_recipe())
    steps = -(-60_000 // shape.sampling_batch_size) * shape.max_new_tokens  # batches × decode steps each
    assert slower["stages"]["sampling"] - slow["stages"]["sampling"] == pytest.approx(steps * 0.097 / 3600)
    assert slow["stages"]["sampling"] > 5 * hours["stages"]["sampling"]
    assert {k: v for k, v in slow["stages"].items() if k != "sampling"} == {
        k: v for k, v in hours["stages"].items() if k != "sampling"
    }


def test_the_cli_takes_a_measured_decode_step_time(capsys):
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "adpa_plus_llama3_8b_to_1b_qlora.yaml")
    configs = str(Path(__file__).parent / "fixtures" / "model_configs")
    sampling = {}
    for step in ("0", "0.103"):
        memory.main([recipe, "--model-configs", configs, "--decode-step-s", step])
        sampling[step] = float(re.search(r"GPU-hours on \S+: sampling ([\d.]+)", capsys.readouterr().out).group(1))
    _, hours = memory.recipe_estimate(recipe, model_configs=configs, decode_step_s=0.103)
    assert sampling["0.103"] == round(hours["stages"]["sampling"], 1) > 10 * sampling["0"]


# --- the chunked log-prob head (logprobs.student_token_logps) ---


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_chunked_token_logps_equal_the_full_computation(kind):
    from transformers import AutoModelForCausalLM

    from workbench.logprobs import student_token_logps

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(small_config(kind, layers=1, kv_heads=4, vocab=300))
    ids = torch.randint(0, 300, (3, 19))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": mask.bool()}
    results = []
    for chunk in (0, 5):
        model.zero_grad()
        token_logps, _ = student_token_logps(model, batch, logits_chunk=chunk)
        (token_logps * mask[:, 1:]).sum().backward()
        results.append((token_logps.detach(), [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_qlora_student_trains_with_chunked_logps_and_checkpointing(tiny_gym):
    """The 4-bit (NF4) + LoRA student path on CPU: bitsandbytes forward/backward, gradients reach the adapters."""
    import warnings

    from workbench.logprobs import student_token_logps
    from workbench.models import load

    model, tokenizer = load(
        "gym-tiny-student", quantization="4bit", lora=True, gradient_checkpointing=True, device="cpu"
    )
    model.train()
    from workbench.encoding import collate_examples

    batch = collate_examples(tokenizer, ["sort 3 1 2", "copy 4 4"], ["1 2 3", "4 4"])
    with warnings.catch_warnings():  # non-reentrant checkpointing (peft re-enables it): torch warns otherwise
        warnings.filterwarnings("error", message=".*use_reentrant.*")
        token_logps, mask = student_token_logps(model, batch, logits_chunk=4)
        loss = -(token_logps * mask).sum() / mask.sum()
        loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_sft_through_the_chunked_head_trains_like_trainers_own_loss(tiny_gym, monkeypatch, accumulation):
    """train_sft with logits_chunk reads the same loss as Trainer's causal-LM loss on the labels, normalised the same
    way (over the labelled tokens of the accumulated batch): the same loss curve and weights, without (B, T, V)
    logits. Rows of different lengths, so per-batch and accumulated normalisations would differ."""
    import datasets

    from workbench.models import load
    from workbench.trainers import train_sft

    monkeypatch.delenv("WORKBENCH_LOGITS_CHUNK", raising=False)
    monkeypatch.delenv("WORKBENCH_TRAINING_ARGS", raising=False)
    rows = datasets.Dataset.from_dict(
        {
            "prompt": [f"sort {' '.join(str((i * j) % 10) for j in range(2 + i % 5))}" for i in range(16)],
            "response": [" ".join(str((i + j) % 10) for j in range(1 + (i * 7) % 9)) for i in range(16)],
        }
    )
    runs = {}
    for chunk in (None, 3):
        model, tokenizer = load("gym-tiny-student", device="cpu")
        log = train_sft(
            model,
            tokenizer,
            rows,
            steps=4,
            lr=1e-3,
            batch_size=2,
            progress=False,
            logits_chunk=chunk,
            gradient_accumulation_steps=accumulation,
            logging_steps=1,
        )
        runs[chunk] = (
            [e["loss"] for e in log if "loss" in e and "train_runtime" not in e],
            {n: p.detach().clone() for n, p in model.named_parameters()},
        )
    (full_curve, full_weights), (chunked_curve, chunked_weights) = runs[None], runs[3]
    assert len(full_curve) == 4
    torch.testing.assert_close(torch.tensor(chunked_curve), torch.tensor(full_curve), rtol=1e-5, atol=1e-6)
    for name, weight in full_weights.items():
        torch.testing.assert_close(chunked_weights[name], weight, rtol=1e-4, atol=1e-6, msg=name)


def test_training_arguments_read_the_environment(monkeypatch):
    import warnings

    from workbench.methods.pad import PadConfig
    from workbench.trainers import CHECKPOINTING_NAMES, checkpointing_argument, training_arguments

    name = checkpointing_argument()  # activation_checkpointing since transformers 5.25, gradient_checkpointing before
    for spelled in CHECKPOINTING_NAMES:  # either name, passed on under this transformers' one: no deprecation warning
        monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", f'{{"gradient_accumulation_steps": 4, "{spelled}": true}}')
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*checkpointing.*deprecated", category=FutureWarning)
            args = training_arguments(steps=2, lr=1e-3, batch_size=2)
        assert args.gradient_accumulation_steps == 4 and getattr(args, name)
        assert getattr(args, f"{name}_kwargs") == {"use_reentrant": False}  # LoRA's frozen inputs need non-reentrant
        assert memory.RunShape(student="gym-student").gradient_checkpointing  # the estimate counts it
        assert PadConfig().gradient_checkpointing  # and so does the knob
    monkeypatch.setenv(
        "WORKBENCH_TRAINING_ARGS",
        '{"gradient_checkpointing": true, "gradient_checkpointing_kwargs": {"use_reentrant": true}}',
    )
    assert getattr(training_arguments(steps=2, lr=1e-3, batch_size=2), f"{name}_kwargs") == {"use_reentrant": True}
    monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", '{"gradient_accumulation_steps": 4}')
    assert (
        training_arguments(steps=2, lr=1e-3, batch_size=2, gradient_accumulation_steps=1).gradient_accumulation_steps
        == 1
    )  # a caller's argument wins
    monkeypatch.setenv("WORKBENCH_TRAINING_ARGS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        training_arguments(steps=2, lr=1e-3, batch_size=2)


if __name__ == "__main__":
    if sys.argv[1] == "--fsdp":  # under accelerate launch with accelerate/fsdp.yaml: shard on CPU
        import fsdp_on_cpu  # noqa: F401  (tests/ is this script's folder)
    _measure(json.loads(sys.argv[-1]))


def test_update_recipe_header_rewrites_only_the_generated_lines(tmp_path):
    """`python -m workbench.memory --update` puts the estimator's numbers into a recipe and keeps every other line."""
    root = Path(__file__).resolve().parents[1]
    configs = root / "tests" / "fixtures" / "model_configs"
    original = (root / "recipes" / "adpa_llama3_8b_to_1b_qlora.yaml").read_text()
    stale = re.sub(r"(not measured\): )[0-9.]+( GiB per GPU)", r"\g<1>999.9\g<2>", original)
    stale = re.sub(r"(not measured\): )[0-9.]+( GPU-hours)", r"\g<1>99.9\g<2>", stale)
    assert stale != original
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(stale)
    memory.main([str(recipe), "--model-configs", str(configs), "--update"])
    result, hours = memory.recipe_estimate(recipe, model_configs=configs)
    text = recipe.read_text()
    assert f": {result.peak_gib:.1f} GiB per GPU, in phase {result.peak_phase}" in text
    assert f": {hours['gpu_hours']:.1f} GPU-hours" in text
    generated = ("# estimated peak memory", "#   phases (GiB):", "# estimated time", "#   stages (GPU-hours):")
    kept = [line for line in text.splitlines() if not line.startswith(generated)]
    assert kept == [line for line in stale.splitlines() if not line.startswith(generated)]
    assert memory.update_recipe_header(recipe, model_configs=configs) == []  # a second run changes nothing
    bare = [line for line in original.splitlines(keepends=True) if not line.startswith("# estimated time")]
    (tmp_path / "bare.yaml").write_text("".join(bare))
    with pytest.raises(ValueError, match="no header line"):
        memory.update_recipe_header(tmp_path / "bare.yaml", model_configs=configs)


def test_a_vllm_teacher_leaves_the_process_and_vllm_engines_shrink_the_gpu_left_for_training():
    """``scoring_backend='vllm'``: no teacher weights or scoring phase in the training process; each vLLM engine
    (student sampling, teacher scoring) reserves its share of the GPU, so ``check_fits`` gives training the rest."""
    hf = memory.estimate(pad_recipe(), model_configs=CONFIGS)
    both = memory.estimate(
        pad_recipe(sampling_backend="vllm", scoring_backend="vllm", vllm_gpu_memory=0.3), model_configs=CONFIGS
    )
    assert hf.assumptions["teacher_params"] > 0 and hf.assumptions["vllm_engines"] == 0
    assert both.assumptions["teacher_params"] == 0 and both.assumptions["vllm_engines"] == 2
    assert both.peak_bytes < hf.peak_bytes
    capacity = 3 * both.peak_bytes  # the run alone fits; with two engines at 30% each, 40% of it is left
    memory.check_fits(both, capacity)
    with pytest.raises(memory.WillNotFitError, match="less 2 vLLM engine"):
        memory.check_fits(both, 2 * both.peak_bytes)
    default_share = memory.estimate(pad_recipe(sampling_backend="vllm", scoring_backend="vllm"), model_configs=CONFIGS)
    with pytest.raises(memory.WillNotFitError, match="set vllm_gpu_memory"):
        memory.check_fits(default_share, 100 * both.peak_bytes)


def test_plad_sampling_through_vllm_keeps_the_teacher_out_of_the_training_process():
    plad = dict(
        teacher="meta-llama/Llama-2-13b-hf",
        student="meta-llama/Llama-2-7b-hf",
        memory_shape="pseudo-pairs",
        loss="plad_ranking",
        batch_size=1,
        prompt_tokens=512,
        max_new_tokens=512,
        device="cuda",
        dataset="hh-helpful",
        lora=True,
    )  # the paper's LoRA student (a fully trained 7B's AdamW states would set the peak)
    hf = memory.estimate(plad, model_configs=CONFIGS)
    served = memory.estimate({**plad, "sampling_backend": "vllm"}, model_configs=CONFIGS)
    assert hf.assumptions["teacher_params"] > 0 and served.assumptions["teacher_params"] == 0
    assert served.assumptions["vllm_engines"] == 1 and served.peak_bytes < hf.peak_bytes


def test_adpa_and_plad_phases_hold_what_their_runs_hold():
    """ADPA: the student samples one ŷ with no teacher loaded; each teacher is loaded alone for its top-k pass; its
    losses read the student through the chunked head when logits_chunk is set (method 'sft' too: its loss is
    Trainer's, read through the chunked head). PLaD: the teacher samples and is freed; it never scores, so there is
    no teacher-scoring phase or time; both its losses read the chunked head."""
    sizes = dict(
        prompt_tokens=512,
        max_new_tokens=512,
        device="cuda",
        logits_chunk=128,
        gradient_checkpointing=True,
        batch_size=2,
    )
    adpa = dict(
        memory_shape="topk-pairs",
        teacher_dpo="meta-llama/Llama-3.1-8B-Instruct",
        teacher_ref="meta-llama/Llama-3.1-8B",
        student="meta-llama/Llama-3.2-1B",
        method="adpa",
        dataset="dpo-mix-7k",
        **sizes,
    )
    est = memory.estimate(adpa, model_configs=CONFIGS)
    one_teacher = sum(memory.weight_bytes(memory.model_dims("meta-llama/Llama-3.1-8B", CONFIGS), 2).values())
    assert list(est.phases) == ["sampling", "teacher_likelihood", "training"]
    assert est.phases["sampling"]["teacher_weights"] == 0 and est.phases["training"]["teacher_weights"] == 0
    assert est.phases["teacher_likelihood"]["teacher_weights"] == one_teacher  # not both teachers at once
    assert est.assumptions["training_head_chunked"]
    sft = memory.estimate({**adpa, "method": "sft"}, model_configs=CONFIGS)  # its SFT loss is chunked too
    assert sft.assumptions["training_head_chunked"]
    assert sft.total("training") == est.total("training")
    assert memory.run_shape(adpa).samples_per_prompt == 1
    plad = dict(
        teacher="meta-llama/Llama-2-13b-hf",
        student="meta-llama/Llama-2-7b-hf",
        memory_shape="pseudo-pairs",
        loss="plad_ranking",
        dataset="hh-helpful",
        lora=True,
        **sizes,
    )
    est = memory.estimate(plad, model_configs=CONFIGS)
    assert list(est.phases) == ["sampling", "teacher_sampling", "training"]
    assert est.phases["training"]["teacher_weights"] == 0 and est.phases["teacher_sampling"]["teacher_weights"] > 0
    assert est.assumptions["training_head_chunked"]
    margin = memory.estimate({**plad, "loss": "plad_margin"}, model_configs=CONFIGS)
    assert margin.assumptions["training_head_chunked"]
    assert "teacher_scoring" not in memory.estimate_time(plad, prompts=1000, model_configs=CONFIGS)["stages"]
    assert "teacher_scoring" in memory.estimate_time(adpa, prompts=1000, model_configs=CONFIGS)["stages"]


def test_the_mcq_phase_counts_the_balanced_slices_a_group_larger_than_the_letters_is_judged_in():
    from workbench.scoring import option_slices

    real = dict(
        teacher="meta-llama/Llama-3.1-8B-Instruct",
        student="meta-llama/Llama-3.2-3B-Instruct",
        prompt_tokens=512,
        max_new_tokens=512,
        device="cuda",
        dtype="bfloat16",
    )
    for n in (4, 8, 9, 16):
        shape = memory.run_shape(dict(real, n=n))
        widest = max(len(s) for s in option_slices(n, 8))  # what workbench.scoring shows one prompt
        assert (shape.mcq_slices, shape.mcq_options) == (len(option_slices(n, 8)), widest)
        assert shape.mcq_seq_len == 512 + widest * (512 + 4) + 32
    sliced = memory.estimate(dict(real, n=16), model_configs=CONFIGS)
    whole = memory.estimate(dict(real, n=16, mcq_letters=16), model_configs=CONFIGS)
    assert sliced.total("teacher_mcq") < whole.total("teacher_mcq")
    # but each slice restates the question: the time estimate reads more teacher tokens, not fewer
    hours = memory.estimate_time(dict(real, n=16), prompts=1000, model_configs=CONFIGS)["stages"]["teacher_scoring"]
    assert (
        hours
        > memory.estimate_time(dict(real, n=16, mcq_letters=16), prompts=1000, model_configs=CONFIGS)["stages"][
            "teacher_scoring"
        ]
    )
    # a gym preset's judge holds the options its build trained it on (the default gym: 4; v1: 8)
    assert memory.run_shape(dict(teacher="gym-teacher-dpo", student="gym-student", n=8)).mcq_options == 4
    assert memory.run_shape(dict(teacher="gym-v1-teacher-dpo", student="gym-v1-student", n=8)).mcq_options == 8
    with pytest.raises(ValueError, match="mcq_letters=0"):
        memory.run_shape(dict(real, n=4, mcq_letters=0))


def test_the_cli_estimates_a_recipe_per_process_of_an_fsdp_launch(capsys):
    recipe = str(ROOT / "recipes" / "pad_gemma2_9b_to_2b.yaml")
    memory.main([recipe, "--model-configs", str(CONFIGS), "--json"])
    memory.main([recipe, "--model-configs", str(CONFIGS), "--json", "--strategy", "fsdp", "--world-size", "4"])
    single, fsdp = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert fsdp["assumptions"]["strategy"] == "fsdp" and fsdp["assumptions"]["world_size"] == 4
    assert fsdp["phases"]["training"]["optimizer_states"] == single["phases"]["training"]["optimizer_states"] // 4
    assert fsdp["phases"]["sampling"] == single["phases"]["sampling"]  # sampled before the Trainer shards
    with pytest.raises(SystemExit):
        memory.main([recipe, "--update", "--strategy", "fsdp", "--world-size", "4"])


def test_auto_sampling_batch_is_the_largest_the_estimate_fits_and_is_set_before_the_run(caplog):
    """``sampling_batch_size=0``: the largest batch of AUTO_SAMPLING_BATCHES whose sampling phases fit the device
    with 10% to spare; set on the config (a run never sees 0), and an explicit batch is left alone."""
    from types import SimpleNamespace

    from workbench.distributed import map_in_shards
    from workbench.methods.pad import PadConfig
    from workbench.train import resolve_launch_sampling_batch

    cfg = PadConfig(teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", sampling_batch_size=0)
    needed = {
        b: memory.batch.sampling_peak_bytes(memory.estimate(cfg, sampling_batch_size=b))
        for b in memory.AUTO_SAMPLING_BATCHES
    }
    assert needed[128] > needed[64] > needed[1]  # the KV cache grows with the batch
    assert memory.fit_sampling_batch(cfg, int(needed[64] * 1.1) + 1)[0] == 64
    assert memory.fit_sampling_batch(cfg, int(needed[64] * 1.1) - 1)[0] == 32
    assert memory.fit_sampling_batch(cfg, 10**15)[0] == 128
    with pytest.raises(memory.WillNotFitError, match="one prompt at a time"):
        memory.fit_sampling_batch(cfg, int(needed[1]))
    with pytest.raises(ValueError, match=r"batch_size=0: .*resolve_sampling_batch"):
        map_in_shards(lambda items, first: items, [1, 2], cfg.sampling_batch_size)
    assert memory.resolve_sampling_batch(cfg, 10**15) is cfg and cfg.sampling_batch_size == 128
    assert memory.resolve_sampling_batch(cfg, 1).sampling_batch_size == 128  # only 0 is resolved
    launched = PadConfig(teacher="gym-tiny-teacher-dpo", student="gym-tiny-student", sampling_batch_size=0)
    with caplog.at_level("INFO", logger="workbench.train"):
        resolve_launch_sampling_batch(launched, SimpleNamespace(num_processes=1, is_main_process=True), "cpu")
    assert launched.sampling_batch_size in memory.AUTO_SAMPLING_BATCHES and "sampling_batch_size auto" in caplog.text
    with pytest.raises(ValueError, match=r"sampling_batch_size=-1; .*0 for the largest batch"):
        PadConfig(sampling_batch_size=-1)
