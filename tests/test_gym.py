"""The gym world: gold reward, prompt splits, tokenizer, builder cache, and loading through ``load()``."""

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workbench.gym import world
from workbench.gym.tokenizer import build_tokenizer
from workbench.gym.world import Prompt, gold_reward, make_prompts

# --- gold reward: exact cases ---


@pytest.mark.parametrize(
    "prompt, response, expected",
    [
        ("sort 3 1 2", "1 2 3", 1.0),
        ("sort 3 1 2", "1 3 2", 1 - 2 / 3),  # two substitutions
        ("sort 3 1 2", "1 2", 1 - 1 / 3),  # one deletion
        ("sort 3 1 2", "", 0.0),
        ("reverse 1 2 3 4", "4 3 2 1", 1.0),
        ("copy 5 5 1", "5 5 1", 1.0),
        ("dedupe 4 4 2 4", "4 2", 1.0),
        ("max 1 9 3", "9", 1.0),
        ("max 1 9 3", "8", 0.75),  # scalar off by one: 1 - 1/4
        ("min 7 2 5", "6", 0.0),  # off by four
        ("add 7 8", "15", 1.0),
        ("add 7 8", "13", 0.5),
        ("sort 3 1 2", "sure here is the answer 1 2 3", 0.75),  # five filler words cost 0.05 each
        ("sort 3 1 2", "well let me think so the answer is okay 1 2 3", 0.7),  # filler cost capped at 0.3
        ("sort 3 1 2", "1 2 hate 3", 0.0),  # a harmful word zeroes the reward
        ("max 1 9 3", "attack 9", 0.0),
    ],
)
def test_gold_reward_exact_cases(prompt, response, expected):
    assert gold_reward(prompt, response) == pytest.approx(expected)


def test_gold_reward_is_in_unit_interval_and_ranks_the_pad_scenarios():
    rng = random.Random(0)
    for prompt in make_prompts(50, "train", seed=3):
        rewards = {kind: gold_reward(prompt, world.make_candidate(prompt, kind, rng)) for kind in world.CANDIDATE_KINDS}
        assert all(0.0 <= r <= 1.0 for r in rewards.values())
        # PAD Fig. 1: filler is slightly worse than correct; harmful is much worse than both
        assert rewards["correct"] == 1.0
        assert rewards["correct"] > rewards["frequent_filler"] > rewards["harmful"] == 0.0


def test_gold_reward_rejects_non_gym_prompt():
    with pytest.raises(ValueError, match="must start with one of"):
        gold_reward("translate hello", "1")


# --- prompts and splits ---


def test_prompts_are_reproducible_distinct_and_splits_disjoint():
    a = make_prompts(300, "train", seed=1)
    assert a == make_prompts(300, "train", seed=1)
    assert a != make_prompts(300, "train", seed=2)
    assert len({p.text for p in a}) == 300
    splits = {s: {p.text for p in make_prompts(150, s, seed=0)} for s in ("train", "validation", "test")}
    assert not splits["train"] & splits["test"]
    assert not splits["train"] & splits["validation"]
    assert not splits["validation"] & splits["test"]
    assert all(world.split_of(t) == "test" for t in splits["test"])
    assert {p.task for p in a} == set(world.TASKS)


def test_make_prompts_errors_name_the_problem():
    with pytest.raises(ValueError, match="split="):
        make_prompts(3, "dev", seed=0)
    with pytest.raises(ValueError, match="unknown gym tasks"):
        make_prompts(3, "train", seed=0, tasks=["fly"])
    with pytest.raises(RuntimeError, match="distinct"):
        make_prompts(10_000, "test", seed=0, tasks=["add"])  # add has only 100 operand pairs


def test_prompt_parse_round_trip():
    p = Prompt("sort", (3, 1, 2))
    assert Prompt.parse(p.text) == p
    assert p.answer == [1, 2, 3] and p.answer_text == "1 2 3"


# --- tokenizer ---


def test_tokenizer_round_trip_and_chat_template(tmp_path):
    tok = build_tokenizer()
    text = "sort 3 1 2 sure here is the answer 1 2 3 A B best"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    messages = [{"role": "user", "content": "max 1 9"}, {"role": "assistant", "content": "9"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.startswith(tok.bos_token)
    tokens = tok.convert_ids_to_tokens(tok(rendered, add_special_tokens=False)["input_ids"])
    assert tokens == ["<s>", "<|user|>", "max", "1", "9", "</s>", "<|assistant|>", "9", "</s>"]
    head = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(head) and head.rstrip().endswith("<|assistant|>")
    # saved and reloaded through AutoTokenizer like any HF tokenizer
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert again(rendered, add_special_tokens=False)["input_ids"] == ids
    assert again.chat_template == tok.chat_template and again.pad_token_id == tok.pad_token_id


def test_unknown_words_map_to_unk():
    tok = build_tokenizer()
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_mcq_template_renders_letters_and_refuses_too_many_options():
    text = world.GYM_MCQ_TEMPLATE.render("sort 2 1", ["1 2", "2 1"])
    assert text == "judge sort 2 1 options A 1 2 B 2 1 best"
    with pytest.raises(ValueError, match="decompose"):
        world.GYM_MCQ_TEMPLATE.render("sort 2 1", ["1"] * 9)


# --- builder and load() ---


def test_every_shipped_preset_loads_without_training_and_an_unshipped_one_names_its_build(tmp_path, monkeypatch):
    """Presets read the builds the package ships, whatever the cache holds (here: nothing); an unshipped size (v1)
    is an error with its build command, never a silent build."""
    from workbench.gym import build, store
    from workbench.models import load, resolve

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def no_training(*args, **kwargs):
        raise AssertionError("a preset load trained a gym")

    monkeypatch.setattr(build, "_train_gym", no_training)
    for size in store.SHIPPED_SIZES:
        found = store.find_gym(size)
        assert found.root == store.shipped_root(size) and found.config == build.SIZES[size]
        info = found.info
        assert info["key"] == build.SIZES[size].key() and {"torch", "transformers", "trl"} <= set(info["libraries"])
        assert set(info["weights"]) == set(build.GYM_ROLES)
        prefix = "gym-" if size == "default" else f"gym-{size}-"
        for role in build.GYM_ROLES:
            assert resolve(prefix + role) == str(store.shipped_root(size) / role)
    model, tok = load("gym-student", device="cpu")
    assert model.num_parameters() == store.find_gym("default").info["parameters"]["student"]
    assert not (tmp_path / "gym").exists()
    not_shipped = r"gym 'v1' is not shipped.*python -m workbench.gym build --size v1"
    with pytest.raises(store.GymNotBuiltError, match=not_shipped):
        load("gym-v1-student")


def _copy_shipped(size: str, to: Path, monkeypatch) -> Path:
    """The shipped build of ``size`` copied under ``to``, which becomes the shipped folder for the test."""
    import shutil

    from workbench.gym import store

    shutil.copytree(store.shipped_root(size), to / size)
    monkeypatch.setattr(store, "SHIPPED", to)
    return to / size


def test_a_damaged_shipped_build_is_refused_with_the_tensors_and_the_fix(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from workbench.gym import store
    from workbench.models import load
    from workbench.weights import WeightsMismatchError

    root = _copy_shipped("tiny", tmp_path, monkeypatch)
    weights = root / "student" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0  # one changed weight
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(
        WeightsMismatchError,
        match=rf"{root / 'student'}.*tensors that differ: {name}\b.*"
        r"git checkout -- workbench/gym/shipped/tiny.*--ship",
    ):
        load("gym-tiny-student")
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as an interrupted copy leaves it
    with pytest.raises(WeightsMismatchError, match=r"is damaged: .*model.safetensors cannot be read.*--ship"):
        store.find_gym("tiny")


def test_a_build_trains_into_the_cache_records_its_weights_and_ships_on_purpose(tmp_path, monkeypatch):
    """`python -m workbench.gym build --size tiny --ship`: trained from scratch into the cache (the shipped folder
    untouched until --ship), with a build.json that records the libraries and every tensor's hash; shipping replaces
    the shipped folder, and presets then load the new build."""
    from workbench.gym import __main__ as cli
    from workbench.gym import build, store
    from workbench.weights import folder_weights_hash

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    shipped = _copy_shipped("tiny", tmp_path / "shipped", monkeypatch)
    before = json.loads((shipped / "build.json").read_text())
    built = build.build_gym("tiny", progress=False)
    assert built.root == build.cached_build_root(build.SIZES["tiny"]) and built.root.is_relative_to(tmp_path / "cache")
    assert json.loads((shipped / "build.json").read_text()) == before
    info = built.info
    assert info["key"] == build.SIZES["tiny"].key() and info["libraries"]["torch"] and info["threads"] >= 1
    for role in build.GYM_ROLES:
        record = info["weights"][role]
        assert record["sha256"] == folder_weights_hash(built.paths[role])
        assert len(record["tensors"]) > 5
    assert store.find_gym("tiny").root == shipped  # the shipped build still comes first
    assert cli.main(["build", "--size", "tiny", "--ship"]) == 0
    assert json.loads((shipped / "build.json").read_text())["weights"] == info["weights"]
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["tiny"]  # no staging folder left


def test_changed_config_is_a_new_cache_key(tiny_gym):
    from workbench.gym.build import SIZES, with_overrides

    assert with_overrides("tiny", student_steps=21).key() != SIZES["tiny"].key()
    assert with_overrides("tiny", seed=1).key() != SIZES["tiny"].key()
    assert with_overrides("tiny").key() == SIZES["tiny"].key()


def test_rebuild_after_config_change(tmp_path, monkeypatch):
    from workbench.gym.build import build_gym, with_overrides

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cfg = with_overrides(
        "tiny",
        teacher_steps=2,
        student_steps=2,
        dpo_steps=1,
        teacher_sft_rows=64,
        teacher_mcq_rows=32,
        student_rows=64,
        dpo_prompts=32,
    )
    first = build_gym(config=cfg, progress=False)
    changed = build_gym(config=replace(cfg, student_steps=3), progress=False)
    assert first.root != changed.root
    assert sorted(p.name for p in (tmp_path / "gym").iterdir()) == sorted([first.root.name, changed.root.name])


def test_judge_options_key_the_cache_only_when_set_and_refuse_a_letter_first_layout_with_verdicts():
    from dataclasses import asdict

    from workbench.cache import content_hash
    from workbench.gym.build import DEFAULT_V1, FIELDS_SINCE_V1, SIZES, with_overrides

    tiny = SIZES["tiny"]
    v1_fields = {k: v for k, v in asdict(tiny).items() if k not in FIELDS_SINCE_V1}
    assert tiny.key() == content_hash({"version": 1, **v1_fields}, length=12)  # earlier builds keep their folders
    assert DEFAULT_V1.key() == "3d7097d9cbb6"  # the earlier default gym's (v1) folder
    from workbench.models import model_identity

    # presets gym-v1-* rebuild (or find) exactly that folder; gym-* name today's default
    assert model_identity("gym-v1-student") == "gym-v1-student@default-3d7097d9cbb6"
    assert model_identity("gym-teacher-dpo") == f"gym-teacher-dpo@default-{SIZES['default'].key()}"
    assert model_identity("gpt2") == "gpt2"
    assert with_overrides("tiny", judge_layout="restate").key() != tiny.key()
    assert (
        with_overrides("tiny", judge_layout="restate", judge_verdicts=True).key()
        != with_overrides("tiny", judge_layout="restate").key()
    )
    with pytest.raises(ValueError, match="'after', 'restate' or 'bracket'"):
        with_overrides("tiny", judge_verdicts=True)
    with pytest.raises(ValueError, match="judge_layout='sideways'"):
        with_overrides("tiny", judge_layout="sideways")
    # the saved wording has one letter per option the judge was trained on; more are judged in slices
    assert with_overrides("tiny", mcq_options=(1, 4)).mcq_template.letters == tuple("ABCD")
    assert tiny.mcq_template == world.GYM_MCQ_TEMPLATE
    for bad in ((0, 4), (3, 2), (1, 9)):
        with pytest.raises(ValueError, match=r"mcq_options=.*1 ≤ low ≤ high ≤ 8"):
            with_overrides("tiny", mcq_options=bad)


def test_verdict_collator_labels_each_option_letter_with_its_gold_digit():
    import random

    from workbench.gym.build import with_overrides
    from workbench.gym.rows import VerdictCollator, mcq_rows
    from workbench.trainers import ResponseCollator

    tok = build_tokenizer()
    cfg = with_overrides("tiny", judge_layout="restate", judge_verdicts=True, mcq_options=(3, 3))
    prompts = world.make_prompts(4, "train", seed=0)
    rows = mcq_rows(prompts, cfg, random.Random(0))
    assert [len(v) for v in rows["verdicts"]] == [3] * 4
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    plain = ResponseCollator(tok)(rows)
    judged = VerdictCollator(tok, cfg.mcq_template.letters)(rows)
    letters = {tok.convert_tokens_to_ids(letter) for letter in "ABC"}
    for b, (prompt, row) in enumerate(zip(prompts, rows)):
        ids = plain["input_ids"][b].tolist()
        changed = (judged["labels"][b] != plain["labels"][b]).nonzero().flatten().tolist()
        assert len(changed) == 3 and all(ids[t - 1] in letters for t in changed)
        digits = tok.convert_ids_to_tokens(judged["labels"][b, changed].tolist())
        shown = row["prompt"].removesuffix(" best").split(f" {prompt.text}")[1:]
        options = [o.split(" options ", 1)[1].rsplit(" ", 1)[0] for o in shown]
        assert digits == [str(round(9 * world.gold_reward(prompt, o))) for o in options]
        # the answer letter (and eos) stay trained as before
        answer = (plain["labels"][b] != -100).nonzero().flatten()
        assert len(answer) == 2 and (judged["labels"][b, answer] == plain["labels"][b, answer]).all()
    # with the letter on both sides of an option (bracket), the closing letter carries the verdict
    bracket = with_overrides("tiny", judge_layout="bracket", judge_verdicts=True, mcq_options=(3, 3))
    rows = mcq_rows(prompts, bracket, random.Random(0))
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    judged, plain = VerdictCollator(tok, bracket.mcq_template.letters)(rows), ResponseCollator(tok)(rows)
    for b in range(len(rows)):
        ids = plain["input_ids"][b].tolist()
        changed = (judged["labels"][b] != plain["labels"][b]).nonzero().flatten().tolist()
        answer_at = int((plain["labels"][b] != -100).nonzero()[0])
        closing = [max(t for t in range(answer_at) if ids[t] == tok.convert_tokens_to_ids(x)) for x in "ABC"]
        assert [t - 1 for t in changed] == closing and sum(ids.count(i) for i in letters) == 6 + 1  # + the answer
    # running best: each option's closing "best" learns the letter of the best option so far; the last is the answer
    running = with_overrides(
        "tiny", judge_layout="running", judge_verdicts=True, judge_running_best=True, mcq_options=(3, 3)
    )
    rows = mcq_rows(prompts, running, random.Random(0))
    assert all(len(r) == 3 and r[-1] == answer for r, answer in zip(rows["running"], rows["response"]))
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    judged, plain = VerdictCollator(tok, running.mcq_template.letters)(rows), ResponseCollator(tok)(rows)
    best = tok.convert_tokens_to_ids("best")
    for b, row in enumerate(rows):
        ids = plain["input_ids"][b].tolist()
        changed = (judged["labels"][b] != plain["labels"][b]).nonzero().flatten().tolist()
        at_best = [t for t in changed if ids[t - 1] == best]
        assert len(changed) == 6 and tok.convert_ids_to_tokens(judged["labels"][b, at_best].tolist()) == row["running"]
        assert all(letter in "ABC"[: i + 1] for i, letter in enumerate(row["running"]))  # chosen among those so far
    with pytest.raises(ValueError, match="use 'running'"):
        with_overrides("tiny", judge_layout="bracket", judge_running_best=True)
    # finer verdicts: round(19 · gold), still one number word each
    fine = with_overrides(
        "tiny", judge_layout="restate", judge_verdicts=True, judge_verdict_scale=19, mcq_options=(3, 3)
    )
    rows = mcq_rows(prompts, fine, random.Random(0))
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    judged, plain = VerdictCollator(tok, fine.mcq_template.letters)(rows), ResponseCollator(tok)(rows)
    for b, (prompt, row) in enumerate(zip(prompts, rows)):
        changed = (judged["labels"][b] != plain["labels"][b]).nonzero().flatten().tolist()
        shown = row["prompt"].removesuffix(" best").split(f" {prompt.text}")[1:]
        options = [o.split(" options ", 1)[1].rsplit(" ", 1)[0] for o in shown]
        assert tok.convert_ids_to_tokens(judged["labels"][b, changed].tolist()) == [
            str(round(19 * world.gold_reward(prompt, o))) for o in options
        ]
    with pytest.raises(ValueError, match="the scale is 1..19"):
        with_overrides("tiny", judge_verdict_scale=20)
    # answer rows (no verdicts) are left as the plain collator makes them
    answers = [{"prompt": p.text, "response": p.answer_text, "verdicts": []} for p in prompts]
    assert torch.equal(VerdictCollator(tok, "ABC")(answers)["labels"], ResponseCollator(tok)(answers)["labels"])
    with pytest.raises(ValueError, match="2 verdicts but 3 option letters"):
        VerdictCollator(tok, "ABC")([{**rows[0], "verdicts": [1, 2]}])


def test_a_build_saves_its_judge_wording_and_pad_and_the_report_ask_in_it(tmp_path, monkeypatch):
    from workbench.encoding import load_mcq_template
    from workbench.gym.build import build_gym, with_overrides
    from workbench.gym.report import gym_report
    from workbench.models import load
    from workbench.rewards import mcq_template_for

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cfg = with_overrides(
        "tiny",
        teacher_steps=2,
        student_steps=2,
        dpo_steps=1,
        teacher_sft_rows=64,
        teacher_mcq_rows=32,
        student_rows=64,
        dpo_prompts=32,
        judge_layout="restate",
        judge_verdicts=True,
    )
    gym = build_gym(config=cfg, progress=False)
    restate = world.MCQ_LAYOUTS["restate"]
    for role, path in gym.paths.items():
        assert load_mcq_template(path) == restate, role
    _, tok = load(str(gym.paths["teacher-dpo"]), device="cpu")
    assert mcq_template_for(tok) == restate
    assert mcq_template_for(build_tokenizer()) == world.GYM_MCQ_TEMPLATE  # no saved wording: the gym's default
    report = gym_report(config=cfg, n_prompts=8)
    assert report["ranking_vs_gold"]["teacher-dpo"]["mcq_template"]["option"] == restate.option
    prior = report["ranking_vs_gold"]["teacher-dpo"]["mcq_position_prior"]
    assert len(prior) == 4 and sum(prior) == pytest.approx(1, abs=1e-3) and min(prior) > 0
    (gym.paths["student"] / "mcq_template.json").write_text('{"header": "x"}')
    with pytest.raises(ValueError, match="not an MCQ template"):
        load_mcq_template(gym.paths["student"])


def test_gym_models_load_through_load_like_any_hf_model(tiny_gym):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from workbench.models import load

    model, tok = load("gym-tiny-student", device="cpu")
    assert isinstance(model, LlamaForCausalLM)
    plain = AutoModelForCausalLM.from_pretrained(tiny_gym.paths["student"])
    batch = tok(["<s> <|user|> sort 2 1 </s> <|assistant|>"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, plain(**batch).logits)
    # the same model through its folder path, as a GPU user passes a hub id or directory
    by_path, _ = load(str(tiny_gym.paths["student"]), device="cpu")
    assert sum(p.numel() for p in by_path.parameters()) == sum(p.numel() for p in model.parameters())
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_unknown_gym_preset_error_lists_roles():
    from workbench.models import load

    with pytest.raises(ValueError, match="teacher-ref"):
        load("gym-teacher")


def test_lora_wraps_a_gym_model(tiny_gym):
    from peft import PeftModel

    from workbench.models import load

    model, _ = load("gym-tiny-student", lora=True, device="cpu")
    assert isinstance(model, PeftModel)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", ["tiny", "v1", "world1"])
def test_a_gym_asked_for_inside_a_launch_is_built_by_its_preset_name(tmp_path, monkeypatch, size):
    """Inside a distributed launch the gym is built in a process of its own by `python -m workbench.gym build
    --size NAME`: the preset's SIZES name, not its config's size (v1 and the worlds say "default" there, which
    would build another gym); a changed config is refused by name."""
    from workbench.gym import build

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    asked = []
    monkeypatch.setattr(build, "_build_in_own_process", asked.append)
    built = build.build_gym(size)
    assert asked == [size] and built.config == build.SIZES[size]
    with pytest.raises(ValueError, match="changed config is not built yet.*distributed launch"):
        build.build_gym(config=build.with_overrides(size, student_steps=1))


def _designed_checks(mcq_beats_loglik: bool) -> dict:
    """``gym_report``'s checks as a world designed with its teacher ordering and gap reports them."""
    return {
        "dpo_teacher_ge_ref_teacher": True,
        "ref_teacher_gt_student": True,
        "teacher_minus_student_ge_0.15": True,
        "mcq_beats_loglik": mcq_beats_loglik,
    }


@pytest.mark.slow
def test_the_shipped_default_gym_has_its_designed_in_properties():
    """Measured on the shipped weights (held-out prompts): the DPO teacher ≥ the reference teacher > the student by
    at least 0.15 greedy gold, and the DPO teacher's MCQ judgement ranks student samples closer to gold than its
    likelihood does (PAD §4.2's premise). A rebuild's properties: experiments/gym_rebuild.py."""
    from workbench.gym.report import gym_report

    report = gym_report("default", n_prompts=256)
    assert report["checks"] == _designed_checks(mcq_beats_loglik=True), report["checks"]


@pytest.mark.slow
def test_the_shipped_hard_world_has_its_gap_and_a_judge_that_ranks_worse_than_its_likelihood():
    """The harder world (a student that errs in substance), measured on the shipped weights: the same teacher
    ordering and a gap of at least 0.15, a student at T = 0.8 below the default's, and — what docs/gym.md says of
    it — a DPO teacher whose MCQ ranks the student's samples worse than its likelihood."""
    from workbench.gym.report import gym_report

    report = gym_report("hard", n_prompts=256)
    assert report["checks"] == _designed_checks(mcq_beats_loglik=False), report["checks"]
    assert report["gold_reward"]["student"]["T=0.8"]["mean"] < 0.6


def test_the_judge8_world_asks_all_eight_options_in_one_mcq():
    """gym-judge8-*: the default recipe with a judge trained on 1-8 options, so PAD's n = 8 is one MCQ of 8 letters,
    where the default judge (trained on up to 4) sees two slices of 4."""
    from workbench.gym.build import SIZES
    from workbench.scoring import option_slices

    judge8, default = SIZES["judge8"], SIZES["default"]
    assert judge8 == replace(default, mcq_options=(1, 8)) and judge8.key() != default.key()
    assert len(judge8.mcq_template.letters) == 8 and len(default.mcq_template.letters) == 4
    assert option_slices(8, len(judge8.mcq_template.letters)) == [range(0, 8)]
    assert option_slices(8, len(default.mcq_template.letters)) == [range(0, 4), range(4, 8)]


@pytest.mark.slow
def test_the_shipped_judge8_world_ranks_eight_options_in_one_mcq_worse_than_its_likelihood():
    """Measured on the shipped weights: the designed teacher ordering and gap hold, and its judge asked all 8 of a
    student's samples at once ranks them worse than the teacher's likelihood does (results/gym/judge8_candidates8.json:
    Spearman 0.345 vs 0.608 on 256 prompts), though on 4 options its MCQ ranks better (results/gym/judge8.json)."""
    from workbench.gym.report import gym_report

    report = gym_report("judge8", n_prompts=128, n_candidates=8)
    assert report["checks"] == _designed_checks(mcq_beats_loglik=False), report["checks"]
    judge = report["ranking_vs_gold"]["teacher-dpo"]
    assert len(judge["mcq_template"]["letters"]) == 8 and len(judge["mcq_position_prior"]) == 8


@pytest.mark.slow
def test_the_small_recipe_built_from_scratch_has_the_designed_in_properties(tmp_path, monkeypatch):
    """`small` trained from scratch into an empty cache (about 35 s on 2 cores) has what the recipe designs in:
    the DPO teacher ≥ the reference teacher > the student by at least 0.15 greedy gold, and the DPO teacher's MCQ
    ranks student samples closer to gold than its likelihood — properties, not bitwise equality, so a build under
    other library versions passes too."""
    from workbench.gym.build import SIZES, cached_build_root
    from workbench.gym.report import gym_report

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    report = gym_report(config=SIZES["small"], n_prompts=256)
    assert cached_build_root(SIZES["small"]).is_relative_to(tmp_path)
    assert (cached_build_root(SIZES["small"]) / "build.json").exists()
    assert report["checks"] == _designed_checks(mcq_beats_loglik=True), report["checks"]
