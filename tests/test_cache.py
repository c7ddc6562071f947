"""Stage cache keying: model fingerprints change when weights change (also under fused optimizers)."""

import datasets
import torch

from workbench.cache import StageCache, content_hash, model_fingerprint


def test_content_hash_ignores_dict_order_and_sees_values():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_stage_cache_hit_and_miss(tmp_path):
    cache = StageCache(tmp_path)
    calls = []
    compute = lambda: calls.append(1) or torch.arange(3)  # noqa: E731
    first = cache.get_or_compute("stage", {"k": 1}, compute)
    again = cache.get_or_compute("stage", {"k": 1}, compute)
    other = cache.get_or_compute("stage", {"k": 2}, compute)
    assert torch.equal(first, again) and torch.equal(first, other)
    assert len(calls) == 2 and cache.hits == 1 and cache.misses == 2


def test_fingerprint_changes_after_trainer_training(tiny_models):
    from copy import deepcopy

    from workbench.trainers import train_sft

    model, tok = tiny_models["student"]
    model = deepcopy(model)
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    rows = datasets.Dataset.from_dict({"prompt": ["sort 2 1"] * 8, "response": ["1 2"] * 8})
    train_sft(model, tok, rows, steps=2, lr=1e-2, batch_size=4, progress=False)  # fused AdamW by default
    assert model_fingerprint(model) != before


def test_fingerprint_sees_in_place_edits(tiny_models):
    from copy import deepcopy

    model = deepcopy(tiny_models["student"][0])
    before = model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).data.add_(1e-3)
    assert model_fingerprint(model) != before


def test_usage_and_clearing_per_stage_from_the_command_line(tmp_path, capsys):
    import json
    import os
    import time

    import pytest

    from workbench.cache import cache_usage, clear_stages, main

    cache = StageCache(tmp_path)
    for k in range(3):
        cache.get_or_compute("samples", {"k": k}, lambda: torch.zeros(100))
    cache.get_or_compute("topk", {"k": 0}, lambda: torch.zeros(1000))
    old = cache.path("samples", {"k": 0})
    os.utime(old, (time.time() - 3 * 86400,) * 2)  # written three days ago
    usage = cache_usage(tmp_path)
    assert {stage: u["entries"] for stage, u in usage.items()} == {"samples": 3, "topk": 1}
    assert usage["topk"]["bytes"] == cache.path("topk", {"k": 0}).stat().st_size > usage["samples"]["bytes"] / 3
    assert usage["samples"]["oldest"] < usage["samples"]["newest"] - 2 * 86400
    assert clear_stages(["samples"], tmp_path, older_than_days=1) == {"samples": 1} and not old.exists()
    with pytest.raises(ValueError, match=r"no stage \['mcq'\].*'samples', 'topk'"):
        clear_stages(["mcq"], tmp_path)
    main(["--root", str(tmp_path), "--clear"])  # every stage
    printed = json.loads(capsys.readouterr().out)
    assert printed["deleted"] == {"samples": 2, "topk": 1} and printed["total_bytes"] == 0
    calls = []
    cache.get_or_compute("samples", {"k": 1}, lambda: calls.append(1) or torch.zeros(100))
    assert calls == [1]  # a cleared entry is recomputed when next needed


def _build_slowly(target: str, log: str) -> str:
    """One process of the race below: build ``target`` once, logging each build."""
    import time
    from pathlib import Path

    from workbench.cache import build_folder_once

    def build(folder):
        with open(log, "a") as f:
            f.write("built\n")
        folder.mkdir()
        time.sleep(0.5)  # long enough for the other process to arrive while this one builds
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_text("weights")

    from workbench.models import saved_model_complete

    return str(build_folder_once(Path(target), build, saved_model_complete))


def test_a_cache_folder_is_built_once_when_processes_race_and_rebuilt_when_incomplete(tmp_path):
    """Two processes asking for one converted model (the ranks of an accelerate launch on a fresh cache) build it
    once — the other waits on the lock and finds it — and no temporary folder is left; a folder a crashed writer
    left without its weights is built again rather than loaded."""
    import multiprocessing

    from workbench.models import saved_model_complete

    target, log = tmp_path / "converted" / "model", tmp_path / "builds.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_build_slowly, [(str(target), str(log))] * 2)
    assert results == [str(target)] * 2 and log.read_text() == "built\n"
    assert saved_model_complete(target) and [p.name for p in target.parent.iterdir()] == ["model"]  # no tmp left
    (target / "model.safetensors").unlink()  # what the old race left: a config, no weights
    assert not saved_model_complete(target)
    _build_slowly(str(target), str(log))
    assert log.read_text() == "built\n" * 2 and saved_model_complete(target)
