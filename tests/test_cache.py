"""Stage cache keying: model fingerprints change when weights change (also under fused optimizers); entries are
stored without pickle and verified on read."""

import datasets
import pytest
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


def _entry_with_counts(tmp_path):
    import numpy as np

    cache = StageCache(tmp_path)
    calls = []
    value = {
        "token_logps": torch.arange(64, dtype=torch.float32) / 7,
        "ids": [[5, 6, 7], [], [8]],
        "pair": (np.arange(6, dtype=np.int32).reshape(2, 3), 0.5, "text", None),
    }
    compute = lambda: calls.append(1) or value  # noqa: E731
    return cache, compute, calls, value


def _assert_same(a, b):
    import numpy as np

    assert torch.equal(a["token_logps"], b["token_logps"]) and a["ids"] == b["ids"]
    assert np.array_equal(a["pair"][0], b["pair"][0]) and a["pair"][0].dtype == b["pair"][0].dtype
    assert a["pair"][1:] == b["pair"][1:] and isinstance(b["pair"], tuple)


def test_an_entry_reads_back_as_written_without_pickle(tmp_path):
    cache, compute, calls, value = _entry_with_counts(tmp_path)
    cache.get_or_compute("token_logps", {"k": 1}, compute)
    path = cache.path("token_logps", {"k": 1})
    assert path.suffix == ".safetensors" and b"pickle" not in path.read_bytes()
    _assert_same(value, cache.get_or_compute("token_logps", {"k": 1}, compute))
    assert calls == [1] and cache.hits == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped floats", "another key's entry", "old pickled format"])
def test_a_corrupt_entry_is_named_removed_and_recomputed(tmp_path, caplog, damage):
    import logging
    import struct

    cache, compute, calls, value = _entry_with_counts(tmp_path)
    cache.get_or_compute("token_logps", {"k": 1}, compute)
    path = cache.path("token_logps", {"k": 1})
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped floats":  # eight teacher log-probs off by +5, the file still a valid safetensors file
        start = bytes(data).index(struct.pack("<f", 10 / 7))
        for i in range(8):
            at = start + 4 * i
            data[at : at + 4] = struct.pack("<f", struct.unpack("<f", data[at : at + 4])[0] + 5)
        path.write_bytes(bytes(data))
    elif damage == "another key's entry":
        cache.get_or_compute("token_logps", {"k": 2}, lambda: {"other": torch.zeros(2)})
        cache.path("token_logps", {"k": 2}).replace(path)
    else:
        path.unlink()
        torch.save(value, path.with_suffix(".pt"))
    calls.clear()
    with caplog.at_level(logging.INFO, logger="workbench.cache"):
        _assert_same(value, cache.get_or_compute("token_logps", {"k": 1}, compute))
    assert calls == [1]  # recomputed
    assert str(path.with_suffix(".pt") if damage == "old pickled format" else path) in caplog.text
    assert not path.with_suffix(".pt").exists()
    _assert_same(value, cache.get_or_compute("token_logps", {"k": 1}, compute))
    assert calls == [1]  # the rewritten entry verifies


def test_no_pickle_is_read_from_a_cache_or_run_folder():
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "workbench"
    unsafe = [
        f"{p.relative_to(package)}:{n}"
        for p in sorted(package.rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "weights_only=False" in line
    ]
    assert unsafe == []
