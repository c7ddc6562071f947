"""Resuming an interrupted run: stages computed in cached pieces (``workbench.distributed.map_in_shards``) recompute
only what was not finished, and training with ``save_steps`` resumes from ``Trainer`` checkpoints to the same loss
curve and weights as a run that was never interrupted (PAD with decomposition, ADPA+ across its two stages, PLaD)."""

import json

import pytest
import torch

from workbench import cache as cache_module
from workbench.cache import StageCache
from workbench.distributed import Shard, map_in_shards, shard_pieces, stage_chunk_items
from workbench.stored import write_verified
from workbench.trainers import OBJECTIVE_STATE, Checkpoints


class Preempted(Exception):
    """Stands for the job being killed: raised from inside a stage or a training step."""


def _interrupt_at(monkeypatch, owner, name: str, call: int) -> None:
    """Make ``owner.name`` raise :class:`Preempted` at its ``call``-th call (counting from 1); calls before pass."""
    real = getattr(owner, name)
    count = {"calls": 0}

    def wrapped(*args, **kwargs):
        count["calls"] += 1
        if count["calls"] == call:
            raise Preempted(f"{name}, call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def _reference_then_interrupted(config_class, train_run, common: dict, owner, call: int, tmp_path, monkeypatch):
    """(the uninterrupted run, the config of a run with checkpoints every 2 steps that was killed in its
    objective's ``call``-th call); the rerun of that config is the test's."""
    reference = train_run(config_class(**common, output_dir=str(tmp_path / "reference")))
    cfg = config_class(**common, save_steps=2, output_dir=str(tmp_path / "run"))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, owner, "__call__", call)
        with pytest.raises(Preempted):
            train_run(cfg)
    return reference, cfg


def _curve(history: list[dict]) -> list[tuple]:
    return [
        (entry.get("stage", entry.get("round")), entry["step"], entry["loss"]) for entry in history if "loss" in entry
    ]


def _max_weight_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# stages in pieces
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, stop, first_batch, batch_size, chunk",
    [(0, 10, 0, 3, 6), (6, 16, 2, 3, 4), (0, 7, 0, 2, 1), (4, 8, 1, 4, 100)],
)
def test_pieces_are_whole_batches_that_tile_the_shard(start, stop, first_batch, batch_size, chunk):
    pieces = shard_pieces(Shard(start, stop, first_batch), batch_size, chunk)
    assert [i for p in pieces for i in range(p.start, p.stop)] == list(range(start, stop))
    for piece in pieces:
        assert piece.start == start + (piece.first_batch - first_batch) * batch_size  # its own batches' seeds
        assert len(piece) <= max(batch_size, chunk // batch_size * batch_size)
    assert len(pieces) == max(1, -(-(stop - start) // max(batch_size, chunk // batch_size * batch_size)))


def test_a_stage_in_pieces_equals_one_call(monkeypatch):
    seeded = lambda items, first_batch: [(item, first_batch + i // 3) for i, item in enumerate(items)]  # batch seeds
    whole = map_in_shards(seeded, list(range(10)), 3, chunk_items=10_000)
    assert map_in_shards(seeded, list(range(10)), 3, chunk_items=3) == whole
    assert whole[-1] == (9, 3)
    monkeypatch.setenv("WORKBENCH_STAGE_CHUNK", "4")
    assert stage_chunk_items() == 4
    monkeypatch.setenv("WORKBENCH_STAGE_CHUNK", "many")
    with pytest.raises(ValueError, match="WORKBENCH_STAGE_CHUNK='many'"):
        stage_chunk_items()


def test_an_interrupted_pad_stage_resumes_from_its_last_finished_piece(tiny_models, tmp_path, monkeypatch):
    """PAD's sample → teacher-reward stage over 8 prompts in 4 pieces, killed while scoring the third: the rerun
    loads the two finished pieces and the third's samples from the cache, computes only the rest (no work is done
    twice) and returns the samples of an uninterrupted one-piece run exactly, its rewards to float rounding."""
    from workbench.methods import pad, pad_rounds

    student, tok = tiny_models["student"]
    teacher, teacher_tok = tiny_models["teacher-dpo"]
    cfg = pad.PadConfig(n=2, sampling_batch_size=2, max_new_tokens=6, output_dir=str(tmp_path), progress=False)
    prompts = [p.text for p in pad.gym_prompts("train", 8, 5)]

    monkeypatch.setattr(cache_module, "_DEFAULT_CACHE", StageCache(tmp_path / "whole"))
    whole = pad.sample_and_score(cfg, student, tok, teacher, teacher_tok, prompts, 0)
    work = cache_module._DEFAULT_CACHE.misses

    pieces = StageCache(tmp_path / "pieces")
    monkeypatch.setattr(cache_module, "_DEFAULT_CACHE", pieces)
    monkeypatch.setenv("WORKBENCH_STAGE_CHUNK", "2")  # one sampling batch of 2 prompts per piece
    with monkeypatch.context() as patch:
        _interrupt_at(patch, pad_rounds, "teacher_rewards", 3)
        with pytest.raises(Preempted):
            pad.sample_and_score(cfg, student, tok, teacher, teacher_tok, prompts, 0)
    done_before = pieces.misses
    assert pieces.hits == 0 and 0 < done_before < 4 * 3  # pieces 1-2 whole, piece 3's samples
    resumed = pad.sample_and_score(cfg, student, tok, teacher, teacher_tok, prompts, 0)
    assert pieces.hits == done_before  # everything finished before is read back, nothing recomputed
    assert resumed.groups == whole.groups and resumed.prompts == whole.prompts
    for name, values in whole.rewards.items():
        torch.testing.assert_close(resumed.rewards[name], values, atol=1e-5, rtol=1e-5)
    assert pieces.misses > work  # 4 pieces cache more entries than one call (3 stages each)


def test_adpa_loads_each_teacher_once_for_all_pieces_of_its_top_k_pass(tiny_gym, tmp_path, monkeypatch):
    from workbench import models
    from workbench.methods import adpa

    loaded = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    monkeypatch.setenv("WORKBENCH_STAGE_CHUNK", "4")
    cfg = adpa.AdpaConfig(
        method="adpa+",
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        steps=2,
        train_prompts=12,
        batch_size=4,
        k=8,
        sampling_batch_size=2,
        scoring_batch_size=2,
        output_dir=str(tmp_path),
        progress=False,
    )
    adpa.train_run(cfg)
    # 3 pieces per pass; passes: the DPO teacher on y_w and on y_l (DCKD), then both teachers on ŷ (ADPA): one load
    # per pass, not one per piece
    assert loaded.count("gym-tiny-teacher-dpo") == 3 and loaded.count("gym-tiny-teacher-ref") == 1


# ---------------------------------------------------------------------------------------------------------------
# training checkpoints
# ---------------------------------------------------------------------------------------------------------------

PAD_RUN = dict(
    teacher="gym-tiny-teacher-dpo",
    student="gym-tiny-student",
    n=4,
    m=2,
    steps=6,
    batch_size=4,
    train_prompts=8,
    max_new_tokens=6,
    lr=1e-3,
    progress=False,
)


def test_an_interrupted_pad_run_resumes_to_the_uninterrupted_curve_and_weights(tiny_gym, tmp_path, monkeypatch):
    """Killed in step 5 of 6 with checkpoints every 2 steps: the rerun resumes at step 4 (weights, optimizer,
    scheduler, data position and the decomposition's generator) and ends where the uninterrupted run ends."""
    from workbench.methods import pad

    reference, cfg = _reference_then_interrupted(
        pad.PadConfig, pad.train_run, PAD_RUN, pad.ListwiseObjective, 5, tmp_path, monkeypatch
    )
    folder = tmp_path / "run" / "checkpoints" / "round0"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-4"]  # the newest kept, step 2's rotated away
    steps_run = []
    real_call = pad.ListwiseObjective.__call__
    monkeypatch.setattr(
        pad.ListwiseObjective,
        "__call__",
        lambda self, model, inputs: steps_run.append(1) or real_call(self, model, inputs),
    )
    resumed = pad.train_run(cfg)
    assert len(steps_run) == 2  # steps 5 and 6 only
    assert _curve(resumed.history) == _curve(reference.history) and len(_curve(reference.history)) == 6
    assert _max_weight_difference(resumed.model, reference.model) == 0.0
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-6"]


def test_a_resumed_run_reports_the_train_loss_of_the_whole_run(tiny_gym, tmp_path, monkeypatch):
    from workbench.methods import pad
    from workbench.methods.common import training_summary

    reference, cfg = _reference_then_interrupted(
        pad.PadConfig, pad.train_run, PAD_RUN, pad.ListwiseObjective, 5, tmp_path, monkeypatch
    )
    resumed = pad.train_run(cfg)
    whole = training_summary(reference.history)["train"]["train_loss"]
    logged = [entry["loss"] for entry in reference.history if "loss" in entry]
    assert whole == pytest.approx(sum(logged) / len(logged), rel=1e-6)  # one log per step: their mean
    assert training_summary(resumed.history)["train"]["train_loss"] == pytest.approx(whole, rel=1e-6)


def test_a_run_that_ran_out_of_memory_resumes_with_the_memory_knobs_on(tiny_gym, tmp_path, monkeypatch):
    """gradient_checkpointing and logits_chunk change memory, not the training: a run cut short resumes with them
    switched on, to the uninterrupted run's curve and weights (up to float rounding)."""
    from dataclasses import replace

    from workbench.methods import pad

    reference, cfg = _reference_then_interrupted(
        pad.PadConfig, pad.train_run, PAD_RUN, pad.ListwiseObjective, 5, tmp_path, monkeypatch
    )
    steps_run = []
    real_call = pad.ListwiseObjective.__call__
    monkeypatch.setattr(
        pad.ListwiseObjective,
        "__call__",
        lambda self, model, inputs: steps_run.append(self.logits_chunk) or real_call(self, model, inputs),
    )
    resumed = pad.train_run(replace(cfg, gradient_checkpointing=True, logits_chunk=3))
    assert steps_run == [3, 3]  # steps 5 and 6 only, through the chunked head
    torch.testing.assert_close(
        torch.tensor([loss for *_, loss in _curve(resumed.history)]),
        torch.tensor([loss for *_, loss in _curve(reference.history)]),
        rtol=1e-5,
        atol=1e-6,
    )
    assert _max_weight_difference(resumed.model, reference.model) < 1e-5


def test_resuming_with_other_settings_is_refused_by_name(tiny_gym, tmp_path):
    from workbench.methods.common import run_checkpoints
    from workbench.methods.pad import PadConfig

    first = run_checkpoints(PadConfig(**PAD_RUN, save_steps=2, output_dir=str(tmp_path)))
    assert isinstance(first, Checkpoints) and json.loads((tmp_path / "checkpoints" / "run.json").read_text())["m"] == 2
    # what does not change the training may differ: evaluation settings, the checkpoint interval
    assert run_checkpoints(PadConfig(**PAD_RUN, save_steps=3, eval_samples=1, output_dir=str(tmp_path))).every == 3
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 then, 0.002 now\).*another output_dir"):
        run_checkpoints(PadConfig(**{**PAD_RUN, "lr": 2e-3}, save_steps=2, output_dir=str(tmp_path)))
    assert run_checkpoints(PadConfig(**PAD_RUN, output_dir=str(tmp_path))) is None  # save_steps 0: none
    # a run.json of an older version: a since-neutral setting it recorded and a field it lacked (at its default) pass
    record = tmp_path / "checkpoints" / "run.json"
    older = json.loads(record.read_text())
    older.pop("mcq_order")
    record.write_text(json.dumps({**older, "logits_chunk": 64}))
    assert isinstance(run_checkpoints(PadConfig(**PAD_RUN, save_steps=2, output_dir=str(tmp_path))), Checkpoints)
    with pytest.raises(ValueError, match=r"other settings \(mcq_order: 'random' then, 'cyclic' now\)"):
        run_checkpoints(PadConfig(**PAD_RUN, mcq_order="cyclic", save_steps=2, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="save_steps=-1"):
        PadConfig(save_steps=-1)


def test_an_incomplete_checkpoint_is_skipped(tmp_path):
    checkpoints = Checkpoints(tmp_path, 2)
    for step, complete in ((2, True), (4, False)):  # step 4 cut short while saving: no trainer_state.json yet
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
            write_verified(folder / OBJECTIVE_STATE, {}, key=OBJECTIVE_STATE)
    assert checkpoints.latest() == str(tmp_path / "checkpoint-2")
    assert Checkpoints(tmp_path / "none", 2).latest() is None
    with pytest.raises(ValueError, match="save_steps=0"):
        Checkpoints(tmp_path, 0)


def test_a_checkpoint_whose_objective_state_is_corrupt_is_skipped_and_nothing_is_unpickled(tmp_path, caplog):
    import logging

    import torch

    from workbench.trainers import read_objective_state

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        write_verified(
            folder / OBJECTIVE_STATE,
            {"generator": torch.Generator().manual_seed(step).get_state()},
            key=OBJECTIVE_STATE,
        )
    newest = tmp_path / "checkpoint-4" / OBJECTIVE_STATE
    newest.write_bytes(newest.read_bytes()[:-5])  # cut short on disk
    with caplog.at_level(logging.WARNING, logger="workbench.trainers"):
        assert Checkpoints(tmp_path, 2).latest() == str(tmp_path / "checkpoint-2")
    assert f"skipping checkpoint {tmp_path / 'checkpoint-4'}: its objective state is corrupt" in caplog.text
    state = read_objective_state(tmp_path / "checkpoint-2")
    assert torch.equal(state["generator"], torch.Generator().manual_seed(2).get_state())


def test_adpa_plus_interrupted_in_its_second_stage_resumes_through_the_first(tiny_gym, tmp_path, monkeypatch):
    """Killed in the ADPA stage: the rerun passes through the finished DCKD stage (its final weights loaded, no
    step repeated; the same ŷ from the cache), resumes ADPA from its checkpoint and matches the uninterrupted run."""
    from workbench.methods import adpa

    common = dict(
        method="adpa+",
        teacher_dpo="gym-tiny-teacher-dpo",
        teacher_ref="gym-tiny-teacher-ref",
        student="gym-tiny-student",
        steps=4,
        train_prompts=12,
        batch_size=4,
        k=8,
        progress=False,
    )
    reference, cfg = _reference_then_interrupted(
        adpa.AdpaConfig, adpa.train_run, common, adpa.OnPolicyObjective, 3, tmp_path, monkeypatch
    )
    calls = []
    for name in ("DckdObjective", "OnPolicyObjective"):
        real = getattr(adpa, name).__call__
        monkeypatch.setattr(
            getattr(adpa, name),
            "__call__",
            lambda self, model, inputs, real=real, name=name: calls.append(name) or real(self, model, inputs),
        )
    resumed = adpa.train_run(cfg)
    assert calls == ["OnPolicyObjective"] * 2  # DCKD finished before; ADPA resumes at step 2 of 4
    assert _curve(resumed.history) == _curve(reference.history)
    assert {stage for stage, _, _ in _curve(reference.history)} == {"dckd", "adpa"}
    assert _max_weight_difference(resumed.model, reference.model) == 0.0


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_plad_resumes_its_training(lora, tiny_gym, tmp_path, monkeypatch):
    """With LoRA (PLaD's own setting) the checkpoints hold the adapter, and the resumed run still ends equal."""
    from workbench.methods import plad

    common = dict(
        teacher="gym-tiny-teacher-dpo",
        student="gym-tiny-student",
        train_prompts=24,
        steps=4,
        batch_size=4,
        lora=lora,
        lr=1e-2 if lora else None,
        progress=False,
    )
    reference, cfg = _reference_then_interrupted(
        plad.PladConfig, plad.train_run, common, plad.PladObjective, 4, tmp_path, monkeypatch
    )
    if lora:
        saved = {p.name for p in (tmp_path / "run" / "checkpoints" / "train").glob("checkpoint-*/*")}
        assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    resumed = plad.train_run(cfg)
    assert _curve(resumed.history) == _curve(reference.history) and len(_curve(reference.history)) >= 2
    assert _max_weight_difference(resumed.model, reference.model) == 0.0
    once = plad.train_run(plad.PladConfig(**{**common, "steps": 1}, output_dir=str(tmp_path / "one_step")))
    assert _max_weight_difference(resumed.model, once.model) > 0  # the weights compared did train


def test_a_killed_training_script_resumes_when_run_again(tiny_gym, tmp_path, preempt):
    """A real preemption: ``python -m workbench.train`` is killed (SIGKILL, no clean-up) once its first checkpoint is
    on disk; the same command run again resumes and writes the training log of an uninterrupted run."""
    import os
    import subprocess
    import sys

    params = {
        "teacher": "gym-tiny-teacher-dpo",
        "student": "gym-tiny-student",
        "n": 2,
        "steps": 200,
        "batch_size": 4,
        "train_prompts": 16,
        "max_new_tokens": 6,
        "lr": 1e-3,
        "progress": False,
    }

    def command(out, save_steps):
        pairs = {**params, "save_steps": save_steps, "output_dir": str(out), "save_model": False}
        return [
            sys.executable,
            "-m",
            "workbench.train",
            "--pipeline",
            "pad",
            *[a for k, v in pairs.items() for a in ("-p", k, str(v))],
        ]

    env = dict(os.environ, WORKBENCH_THREADS="1", OMP_NUM_THREADS="1")
    for name in ("WORKBENCH_TRAINING_ARGS", "WORKBENCH_LOGITS_CHUNK", "WORKBENCH_STAGE_CHUNK"):
        env.pop(name, None)
    subprocess.run(command(tmp_path / "reference", 5), env=env, check=True, capture_output=True)
    job = subprocess.Popen(command(tmp_path / "run", 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    preempt(job, tmp_path / "run" / "checkpoints" / "round0", params["steps"], job.kill)
    again = subprocess.run(command(tmp_path / "run", 5), env=env, check=True, capture_output=True, text=True)
    assert "resuming from" in again.stderr
    read = lambda out: [(e["step"], e["loss"]) for e in json.loads((out / "history.json").read_text()) if "loss" in e]
    # logged every 5 steps (the logging interval follows the checkpoints), however far the killed run had come
    assert read(tmp_path / "run") == read(tmp_path / "reference") and len(read(tmp_path / "reference")) == 40
