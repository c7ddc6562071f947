"""Scale-out: the shipped accelerate configs parse; shards of whole batches tile the items; and a 2-process DDP run of
the PAD trainer (gloo, CPU), which samples and scores its prompts in shards, trains on the same samples and teacher
rewards as 1 process and gives the same loss curve with the same global batch."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "accelerate").glob("*.yaml"))

# tiny PAD run: 16 gym prompts, n = 4 decomposed into groups of m = 2 (PAD Eq. 13), 4 optimizer steps; sampling
# batches of 3 prompts (6 batches, the last one short: 2 processes sample 9 and 7 prompts), teacher scoring in
# batches of 5 sequences (so a process's scoring batches differ from one process's)
PARAMS = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    n=4,
    m=2,
    train_prompts=16,
    steps=4,
    sampling_batch_size=3,
    scoring_batch_size=5,
    progress=False,
    save_model=False,
    save_rows=True,
)


def test_accelerate_configs_parse_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    assert {p.name for p in CONFIGS} >= {"ddp.yaml", "fsdp.yaml"}
    kinds = {p.name: str(load_config_from_file(str(p)).distributed_type) for p in CONFIGS}
    assert "MULTI_GPU" in kinds["ddp.yaml"] and "FSDP" in kinds["fsdp.yaml"]


def _pad_args(params: dict) -> list[str]:
    return [arg for name, value in params.items() for arg in ("-p", name, str(value))]


def _launch_env() -> dict:
    """A launched run's environment: one thread per process, and none of the caller's training overrides."""
    env = dict(os.environ, WORKBENCH_THREADS="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORKBENCH_TRAINING_ARGS", None)
    env.pop("WORKBENCH_LOGITS_CHUNK", None)
    return env


def _run(command: list[str], env: dict) -> None:
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _curve(folder: Path) -> list[dict]:
    history = json.loads((folder / "history.json").read_text())
    return [entry for entry in history if "loss" in entry and "train_runtime" not in entry]


def _rows(folder: Path, name: str = "round0") -> list[dict]:
    return [json.loads(line) for line in (folder / f"rows_{name}.jsonl").read_text().splitlines()]


class FakeState:
    """Process ``process_index`` of ``num_processes``, splitting with accelerate's own split_between_processes."""

    def __init__(self, process_index, num_processes):
        self.process_index, self.num_processes = process_index, num_processes

    def split_between_processes(self, inputs):
        from accelerate import PartialState

        return PartialState.split_between_processes(self, inputs)


@pytest.mark.parametrize(
    "items, batch_size, processes", [(16, 3, 2), (16, 4, 2), (10, 4, 3), (5, 8, 2), (7, 1, 4), (0, 4, 2)]
)
def test_batch_shards_are_whole_batches_that_tile_the_items(items, batch_size, processes):
    from workbench.distributed import Shard, batch_shard

    shards = [batch_shard(items, batch_size, FakeState(rank, processes)) for rank in range(processes)]
    covered = [i for shard in shards for i in range(shard.start, shard.stop)]
    assert covered == list(range(items))  # contiguous, in rank order, no overlap
    for shard in shards:
        if len(shard):  # starts on a batch boundary, as its first batch (whose seed it uses)
            assert shard.start == shard.first_batch * batch_size
            assert shard.stop % batch_size == 0 or shard.stop == items
    assert batch_shard(items, batch_size) == batch_shard(items, batch_size, FakeState(0, 1)) == Shard(0, items, 0)


def test_gather_in_order_is_the_identity_with_one_process():
    from workbench.distributed import Shard, gather_in_order

    assert gather_in_order(["a", "b"], Shard(0, 2, 0)) == ["a", "b"]
    with pytest.raises(ValueError, match="3 rows for a shard of 2"):
        gather_in_order(["a", "b", "c"], Shard(0, 2, 0))


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_two_process_ddp_shards_sampling_and_equals_one_process(tiny_gym, tmp_path):
    env = _launch_env()
    # 1 process × 4 prompts per step ...
    _run(
        [
            sys.executable,
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *_pad_args({**PARAMS, "batch_size": 4, "output_dir": tmp_path / "one"}),
        ],
        env,
    )
    # ... and 2 processes × 2 prompts per step (global batch 4), launched with the shipped DDP config; without
    # CUDA the processes join a gloo group on CPU
    _run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29517",
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *_pad_args({**PARAMS, "batch_size": 2, "output_dir": tmp_path / "two", "report_to": "tensorboard"}),
        ],
        env,
    )
    # sampled and scored in 2 shards, merged by prompt index: the same samples exactly, the same rewards up to
    # the float rounding of other scoring batches
    rows_one, rows_two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(rows_one) == len(rows_two) == PARAMS["train_prompts"]
    assert [(r["prompt"], r["responses"]) for r in rows_two] == [(r["prompt"], r["responses"]) for r in rows_one]
    for key in ("likelihood", "log_p_sel", "calibrated"):
        torch.testing.assert_close(
            torch.tensor([r[key] for r in rows_two]),
            torch.tensor([r[key] for r in rows_one]),
            rtol=1e-5,
            atol=1e-5,
            msg=f"teacher {key} differs between 2 processes and 1",
        )
    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
    assert len(one) == len(two) == PARAMS["steps"]
    for key in ("loss", "grad_norm", "ranking_loss", "learning_rate"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in two]),
            torch.tensor([e[key] for e in one]),
            rtol=1e-4,
            atol=1e-6,
            msg=f"{key} differs between 2 processes and 1",
        )
    # report_to: the main process alone writes the tracker run, with the processes' averaged curve
    events = list((tmp_path / "two" / "tensorboard" / "round0").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(events[0]))
    logged.Reload()
    torch.testing.assert_close(
        torch.tensor([e.value for e in logged.Scalars("train/loss")]),
        torch.tensor([e["loss"] for e in two]),
        rtol=1e-6,
        atol=1e-8,
    )


# tiny ADPA+ and PLaD runs sharded the same way: 16 pairs / prompts in sampling batches of 3 (6 batches, 9 + 7
# prompts per process) and teacher top-k batches of 5 (ADPA+: both teachers' caches on y_w, y_l and on ŷ, which it
# samples from the student after its DCKD stage); 4 steps per stage. PLaD keeps 14 of its 16 pairs (two empty samples),
# so it takes 3 steps: full global batches (a short last one is averaged per process under DDP, not per pair)
ADPA_PARAMS = dict(
    teacher_dpo="gym-tiny-teacher-dpo",
    teacher_ref="gym-tiny-teacher-ref",
    student="gym-tiny-student",
    method="adpa+",
    k=8,
    train_prompts=16,
    steps=4,
    sampling_batch_size=3,
    scoring_batch_size=5,
    progress=False,
    save_model=False,
    save_rows=True,
)
PLAD_PARAMS = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    train_prompts=16,
    steps=3,
    sampling_batch_size=3,
    progress=False,
    save_model=False,
    save_rows=True,
)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
@pytest.mark.parametrize(
    "pipeline, params, rows_name, curve_keys",
    [
        ("adpa", ADPA_PARAMS, "states_adpa", ("loss", "grad_norm", "learning_rate", "sft_loss")),
        ("plad", PLAD_PARAMS, "pairs", ("loss", "grad_norm", "learning_rate")),
    ],
)
def test_two_process_adpa_and_plad_shard_their_stages_and_equal_one_process(
    tiny_gym, tmp_path, pipeline, params, rows_name, curve_keys
):
    env = _launch_env()
    script = ["-m", "workbench.train", "--pipeline", pipeline]
    _run([sys.executable, *script, *_pad_args({**params, "batch_size": 4, "output_dir": tmp_path / "one"})], env)
    _run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29518",
            *script,
            *_pad_args({**params, "batch_size": 2, "output_dir": tmp_path / "two"}),
        ],
        env,
    )
    # the samples each process drew on its shard, merged by prompt index, are the samples of one process
    rows_one, rows_two = (_rows(tmp_path / run, rows_name) for run in ("one", "two"))
    assert rows_one and rows_two == rows_one
    config_one, config_two = (json.loads((tmp_path / run / "config.json").read_text()) for run in ("one", "two"))
    assert (config_one["processes"], config_two["processes"]) == (1, 2)
    if pipeline == "adpa":  # the merged top-k caches: the advantage diagnostics computed from them agree
        stage_one, stage_two = config_one["stages"][-1], config_two["stages"][-1]
        for key in ("dpo_expected_advantage", "dpo_mass_on_positive_advantage", "teacher_tail_mass"):
            assert stage_two[key] == pytest.approx(stage_one[key], rel=1e-5, abs=1e-7), key
    else:
        assert config_two["pairs"] == config_one["pairs"]
        assert config_one["pairs"]["n_pairs"] >= 4 * params["steps"]  # every step a full global batch
    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert len(one) == len(two) == params["steps"] * (2 if pipeline == "adpa" else 1)
    for key in curve_keys:
        torch.testing.assert_close(
            torch.tensor([e[key] for e in two]),
            torch.tensor([e[key] for e in one]),
            rtol=1e-4,
            atol=1e-6,
            msg=f"{key} differs between 2 processes and 1",
        )


@pytest.mark.skipif(
    shutil.which("accelerate") is None or torch.cuda.is_available(),
    reason="the CPU fallback of the FSDP config (needs the accelerate CLI and no CUDA)",
)
def test_the_fsdp_config_on_cpu_says_it_runs_data_parallel_and_trains_as_one_process(tiny_gym, tmp_path):
    """Without CUDA accelerate runs the FSDP config's processes as a CPU (gloo) group, not FSDP: the run must say so
    (log and config.json) rather than pass for a sharded run, and still train as one process does."""
    env = _launch_env()
    params = {**PARAMS, "save_rows": False}
    _run(
        [
            sys.executable,
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *_pad_args({**params, "batch_size": 4, "output_dir": tmp_path / "one"}),
        ],
        env,
    )
    out = subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "fsdp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29519",
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *_pad_args({**params, "batch_size": 2, "output_dir": tmp_path / "two"}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "asks for FSDP, but these processes run" in out.stderr
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert (config["processes"], config["distributed_type"], config["sharded_parameters"]) == (2, "MULTI_CPU", False)
    torch.testing.assert_close(
        torch.tensor([e["loss"] for e in _curve(tmp_path / "two")]),
        torch.tensor([e["loss"] for e in _curve(tmp_path / "one")]),
        rtol=1e-4,
        atol=1e-6,
    )


def _fsdp_launch(port: int) -> list[str]:
    """accelerate launch of 2 processes with the shipped FSDP2 config: on 2 GPUs as users run it; without CUDA through
    tests/fsdp_on_cpu.py, which lets accelerate's own FSDP2 preparation shard the student over a CPU (gloo) group."""
    launcher = ["-m", "workbench.train"] if torch.cuda.device_count() >= 2 else [str(ROOT / "tests" / "fsdp_on_cpu.py")]
    return [
        "accelerate",
        "launch",
        "--config_file",
        str(ROOT / "accelerate" / "fsdp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        *launcher,
    ]


@pytest.mark.skipif(
    shutil.which("accelerate") is None or torch.cuda.device_count() == 1,
    reason="needs the accelerate CLI, and 2 GPUs or none",
)
@pytest.mark.parametrize(
    "pipeline, params, rows",
    [
        (
            "pad",
            {**PARAMS, "iterations": 2, "save_model": True, "gradient_checkpointing": True},
            ("round1", "responses"),
        ),
        ("adpa", ADPA_PARAMS, ("states_adpa", "state")),
        ("plad", {**PLAD_PARAMS, "save_rows": False}, None),
    ],
)
def test_fsdp_shards_the_student_through_the_chunked_head_and_equals_one_process(
    tiny_gym, tmp_path, pipeline, params, rows
):
    """2 processes under accelerate/fsdp.yaml (FSDP2: every process holds a shard of the student's weights, gradients
    and optimizer states) train each method family with the chunked head (logits_chunk 4, which reads the output
    group's weight outside the model's forward) to the loss curve of 1 process with the same global batch (PAD with
    activation checkpointing, as the recipes train). Runs that sample their trained student — PAD's second
    iteration, ADPA+'s ŷ after DCKD — sample it through a whole copy (distributed.unsharded): the same samples as 1
    process. PAD's saved student is the whole model, gathered from the shards, with 1 process's weights."""
    env = _launch_env()
    params = {**params, "logits_chunk": 4}
    _run(
        [
            sys.executable,
            "-m",
            "workbench.train",
            "--pipeline",
            pipeline,
            *_pad_args({**params, "batch_size": 4, "output_dir": tmp_path / "one"}),
        ],
        env,
    )
    out = subprocess.run(
        [
            *_fsdp_launch(29531),
            "--pipeline",
            pipeline,
            *_pad_args({**params, "batch_size": 2, "output_dir": tmp_path / "two"}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "asks for FSDP, but" not in out.stderr
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert (config["processes"], config["distributed_type"], config["sharded_parameters"]) == (2, "FSDP", True)
    gpus = torch.cuda.device_count() >= 2  # bf16 on GPUs: looser curves, and samples after training may differ
    if rows and not gpus:
        name, field = rows
        assert [r[field] for r in _rows(tmp_path / "two", name)] == [r[field] for r in _rows(tmp_path / "one", name)]
    one, two = _curve(tmp_path / "one"), _curve(tmp_path / "two")
    assert len(one) == len(two) == params["steps"] * (2 if pipeline in ("pad", "adpa") else 1)
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in two]),
            torch.tensor([e[key] for e in one]),
            **(dict(rtol=1e-2, atol=1e-4) if gpus else dict(rtol=1e-4, atol=1e-6)),
            msg=f"{key} differs between FSDP on 2 processes and 1",
        )
    if params["save_model"]:
        from workbench.models import load

        saved, _ = load(str(tmp_path / "two" / "student"), device="cpu")
        reference, _ = load(str(tmp_path / "one" / "student"), device="cpu")
        weights = dict(saved.named_parameters())
        assert weights.keys() == dict(reference.named_parameters()).keys()
        for name, p in reference.named_parameters():
            torch.testing.assert_close(
                weights[name], p, **(dict(rtol=1e-2, atol=1e-3) if gpus else dict(rtol=1e-4, atol=1e-5)), msg=name
            )


@pytest.mark.skipif(
    shutil.which("accelerate") is None or torch.cuda.device_count() == 1,
    reason="needs the accelerate CLI, and 2 GPUs or none",
)
def test_fsdp_launch_refuses_a_lora_run_that_samples_its_trained_student_before_loading_it(tmp_path):
    env = dict(os.environ, WORKBENCH_THREADS="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(
        [
            *_fsdp_launch(29533),
            "--pipeline",
            "pad",
            *_pad_args({**PARAMS, "iterations": 2, "lora": True, "output_dir": tmp_path / "two"}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode != 0
    assert "samples from its LoRA student after training it" in out.stderr and "one iteration per run" in out.stderr
    assert not (tmp_path / "two").exists()


def test_the_pad_script_reads_recipe_parameters_like_the_notebook(tmp_path):
    from workbench.train import method_config, parse_value

    cfg = method_config(
        "pad", {"teacher": "t", "student": "s", "m": 0, "quantization": "", "lr": 1e-6, "max_new_tokens": 512}
    )
    assert cfg.m is None and cfg.quantization is None and cfg.max_new_tokens == 512
    assert (parse_value("4bit"), parse_value("1e-6"), parse_value("True"), parse_value("false")) == (
        "4bit",
        1e-6,
        True,
        False,
    )
    with pytest.raises(ValueError, match="unknown PAD parameters"):
        method_config("pad", {"teacher": "t", "studnet": "s"})


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc; zombies have an empty one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.skipif(
    shutil.which("accelerate") is None or not Path("/proc").is_dir(), reason="needs the accelerate CLI and Linux /proc"
)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_curve(tiny_gym, tmp_path, preempt, strategy):
    """Preemption of a multi-process job: a 2-process PAD run (gloo; DDP, or FSDP2 with the student's weights and
    optimizer states sharded) with checkpoints every 5 steps is killed — launcher and workers, SIGKILL — once its
    first checkpoint is on disk; the same launch again resumes from the newest checkpoint and writes the loss curve of
    a 2-process run that was never interrupted."""
    import signal
    import time

    env = dict(os.environ, WORKBENCH_THREADS="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for name in ("WORKBENCH_TRAINING_ARGS", "WORKBENCH_LOGITS_CHUNK", "WORKBENCH_STAGE_CHUNK"):
        env.pop(name, None)
    params = {**PARAMS, "steps": 300, "batch_size": 2, "save_steps": 5, "save_rows": False}

    if strategy == "fsdp" and torch.cuda.device_count() == 1:
        pytest.skip("FSDP needs 2 GPUs or none")

    def launch(out: Path, port: int) -> list[str]:
        port += 10 if strategy == "fsdp" else 0
        command = (
            _fsdp_launch(port) + ["--pipeline", "pad"]
            if strategy == "fsdp"
            else [
                "accelerate",
                "launch",
                "--config_file",
                str(ROOT / "accelerate" / "ddp.yaml"),
                "--num_processes",
                "2",
                "--main_process_port",
                str(port),
                "-m",
                "workbench.train",
                "--pipeline",
                "pad",
            ]
        )
        return [*command, *_pad_args({**params, "output_dir": out})]

    _run(launch(tmp_path / "reference", 29521), env)
    job = subprocess.Popen(
        launch(tmp_path / "run", 29522),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def kill():  # the launcher and both workers, without clean-up (torch's elastic agent starts the workers in
        # sessions of their own, so they are found by their command line, which names this run's output folder)
        os.killpg(job.pid, signal.SIGKILL)
        while _processes_naming(str(tmp_path / "run")):
            for pid in _processes_naming(str(tmp_path / "run")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    preempt(job, tmp_path / "run" / "checkpoints" / "round0", params["steps"], kill, timeout=200)
    again = subprocess.run(
        launch(tmp_path / "run", 29523), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    if again.returncode != 0 and "(SIGSEGV)" in again.stderr:
        # once in CI (2026-12-04, under the other test worker's load) a gloo worker of the resumed FSDP launch died of
        # SIGSEGV inside torch's all-gather, with no Python frame of ours; the launch resumes again from the newest
        # checkpoint, once. A fault of the checkpoint itself crashes this retry too, and the curve is checked after.
        import warnings

        warnings.warn(f"the resumed {strategy} launch crashed (SIGSEGV); launched once more: " + again.stderr[-600:])
        again = subprocess.run(
            launch(tmp_path / "run", 29524), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("resuming from") == 2  # each process, from the checkpoint the killed job left
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["sharded_parameters"] == (strategy == "fsdp")
    reference, resumed = _curve(tmp_path / "reference"), _curve(tmp_path / "run")
    assert [e["step"] for e in resumed] == [e["step"] for e in reference] and len(reference) == 60
    for key in ("loss", "grad_norm", "learning_rate"):
        torch.testing.assert_close(
            torch.tensor([e[key] for e in resumed]),
            torch.tensor([e[key] for e in reference]),
            rtol=1e-5,
            atol=1e-7,
            msg=f"{key} differs after the resume",
        )


def test_an_unsharded_model_samples_as_itself():
    from workbench.distributed import is_sharded, unsharded

    model = torch.nn.Linear(2, 2)
    with unsharded(model) as whole:
        assert whole is model and not is_sharded(model)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_a_launch_on_a_fresh_cache_trains_on_the_shipped_gym_and_builds_none(tmp_path):
    """The first `accelerate launch` of a gym run on a fresh cache: every rank loads the shipped gym (checked against
    its recorded hashes) and no rank trains one — a build inside a launch happens only when asked for
    (tests/test_gym.py: then in a process of its own, by the preset's name)."""
    env = dict(
        os.environ,
        WORKBENCH_THREADS="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        WORKBENCH_CACHE=str(tmp_path / "launch-cache"),
    )
    env.pop("WORKBENCH_TRAINING_ARGS", None)
    out = subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29535",
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *_pad_args({**PARAMS, "steps": 2, "batch_size": 2, "save_rows": False, "output_dir": tmp_path / "run"}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "building gym" not in out.stderr
    assert (tmp_path / "run" / "history.json").exists()
    assert not (tmp_path / "launch-cache" / "gym").exists()


UNSHARDED_CHECK = """
import json, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from workbench.distributed import is_sharded, unsharded
from workbench.models import load

dist.init_process_group("gloo")
rank = dist.get_rank()
model, tokenizer = load("gym-tiny-student", device="cpu")
for layer in model.model.layers:
    fully_shard(layer)
fully_shard([model.model.norm, model.get_input_embeddings(), model.get_output_embeddings()],
            reshard_after_forward=False)  # accelerate's output group (tied embedding)
fully_shard(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
torch.manual_seed(0)
ids = torch.randint(3, 40, (2, 10))
model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()  # a step: the copy must carry trained weights
optimizer.step()
with torch.no_grad():
    sharded_logits = model(input_ids=ids).logits
with unsharded(model) as copy:
    assert not is_sharded(copy) and is_sharded(model)
    with torch.no_grad():
        copy_logits = copy(input_ids=ids).logits
    # a different number of generate forwards on each process: no collective inside
    new_tokens = 3 + 5 * rank  # exactly (min_new_tokens: an early end-of-sequence would not shorten it)
    out = copy.generate(ids[:1, :4], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
result = {"max_diff": float((copy_logits - sharded_logits).abs().max()), "tokens": out.shape[1],
          "tied": copy.get_output_embeddings().weight is copy.get_input_embeddings().weight}
print(json.dumps(result) if rank == 0 else "", flush=True)
dist.destroy_process_group()
"""


def test_unsharded_gives_every_process_a_whole_copy_of_the_trained_sharded_student(tiny_gym, tmp_path):
    """distributed.unsharded on an FSDP2-sharded student (accelerate's grouping, one SGD step taken): a plain,
    tied model whose logits equal the sharded model's, that each process can run generate with on its own."""
    script = tmp_path / "check.py"
    script.write_text(UNSHARDED_CHECK)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29539", str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert result["max_diff"] < 1e-5 and result["tokens"] == 7 and result["tied"]


BF16_PARAMS = {**PARAMS, "precision": "bf16-mixed", "logits_chunk": 4, "save_model": True, "save_rows": False}


@pytest.fixture(scope="module")
def one_process_bf16_and_fp32(tiny_gym, tmp_path_factory):
    """The 1-process runs both launches are compared with (bf16-mixed and 32-true, global batch 4), run once."""
    folder = tmp_path_factory.mktemp("one_process")
    for name, precision in (("one", "bf16-mixed"), ("fp32", "32-true")):
        _run(
            [
                sys.executable,
                "-m",
                "workbench.train",
                "--pipeline",
                "pad",
                *_pad_args({**BF16_PARAMS, "precision": precision, "batch_size": 4, "output_dir": folder / name}),
            ],
            _launch_env(),
        )
    return folder


@pytest.mark.skipif(
    shutil.which("accelerate") is None or torch.cuda.device_count() == 1,
    reason="needs the accelerate CLI, and 2 GPUs or none",
)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_bf16_mixed_student_trains_under_ddp_and_fsdp_as_one_process(one_process_bf16_and_fp32, tmp_path, strategy):
    """precision bf16-mixed (the GPU default of a fully trained student) through the shipped launch configs: the
    Trainer's bf16 wins over their mixed_precision "no"; FSDP2 then gathers the float32 shards in bfloat16
    (accelerate's MixedPrecisionPolicy). The curve is 1 process's within bfloat16 tolerance; the saved student is
    float32 (master weights), and its weights moved as 1 process's did."""
    single = one_process_bf16_and_fp32
    launch = (
        _fsdp_launch(29551)
        if strategy == "fsdp"
        else [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "accelerate" / "ddp.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            "29553",
            "-m",
            "workbench.train",
        ]
    )
    _run(
        [*launch, "--pipeline", "pad", *_pad_args({**BF16_PARAMS, "batch_size": 2, "output_dir": tmp_path / "two"})],
        _launch_env(),
    )
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2 and config["distributed_type"] == ("FSDP" if strategy == "fsdp" else "MULTI_CPU")
    assert config["student_precision"] == "bf16-mixed" and config["mixed_precision"] == "bf16"
    folders = {"one": single / "one", "two": tmp_path / "two"}
    one, two = _curve(folders["one"]), _curve(folders["two"])
    assert len(one) == len(two) == PARAMS["steps"]
    torch.testing.assert_close(
        torch.tensor([e["loss"] for e in two]),
        torch.tensor([e["loss"] for e in one]),
        rtol=2e-2,
        atol=1e-3,
        msg="loss differs between 2 processes and 1",
    )
    # computed in bfloat16, not float32: 1 process in float32 gives another curve
    assert json.loads((single / "fp32" / "config.json").read_text())["mixed_precision"] == "no"
    fp32 = torch.tensor([e["loss"] for e in _curve(single / "fp32")])
    for run in (one, two):
        assert not torch.allclose(torch.tensor([e["loss"] for e in run]), fp32, rtol=1e-6, atol=0)
    from workbench.models import load

    initial, _ = load("gym-tiny-student", device="cpu")
    for folder in folders.values():  # the float32 master weights are what is saved
        assert json.loads((folder / "student" / "config.json").read_text())["dtype"] == "float32"
    saved = {run: load(str(folder / "student"), device="cpu")[0] for run, folder in folders.items()}
    for name, p in initial.named_parameters():
        moved = {run: (dict(model.named_parameters())[name] - p).abs().sum() for run, model in saved.items()}
        assert moved["two"] > 0.5 * moved["one"] > 0, name
