"""Tests for workbench.data: converters per native schema, validation, filtering, subsampling, hub path.

All data are the synthetic fixtures in tests/fixtures (see its README); the hub path is exercised by
monkeypatching ``datasets.load_dataset``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytest
from datasets import Dataset

from workbench import data

FIXTURES = Path(__file__).parent / "fixtures"
UF = FIXTURES / "ultrafeedback.jsonl"
UF_CLEANED = FIXTURES / "ultrafeedback_cleaned.jsonl"
DPO_MIX = FIXTURES / "dpo_mix_7k.jsonl"
HELPSTEER2 = FIXTURES / "helpsteer2.jsonl"
HH = FIXTURES / "hh_rlhf.jsonl"
BAD = FIXTURES / "standard_bad.jsonl"
MESSAGES = FIXTURES / "messages.jsonl"

datasets.disable_progress_bars()


def assert_standard(ds: Dataset, *, scores: bool) -> None:
    """TRL conversational preference format: prompt ends with user; chosen/rejected one assistant message."""
    expected = {"prompt", "chosen", "rejected"} | ({"score_chosen", "score_rejected"} if scores else set())
    assert set(ds.column_names) == expected
    for row in ds:
        assert isinstance(row["prompt"], list) and row["prompt"]
        assert all(set(m) == {"role", "content"} for m in row["prompt"])
        assert row["prompt"][-1]["role"] == "user"
        assert {m["role"] for m in row["prompt"]} <= {"system", "user", "assistant"}
        for name in ("chosen", "rejected"):
            assert len(row[name]) == 1 and row[name][0]["role"] == "assistant"
            assert isinstance(row[name][0]["content"], str) and row[name][0]["content"].strip()
        assert row["chosen"] != row["rejected"]
        if scores:
            assert isinstance(row["score_chosen"], float) and isinstance(row["score_rejected"], float)
            assert row["score_chosen"] > row["score_rejected"]


# ---------------------------------------------------------------------------------------------------------
# converters
# ---------------------------------------------------------------------------------------------------------


def test_ultrafeedback_converter():
    raw = data.read_jsonl(UF)
    ds = data.load_preference_data(UF, schema="ultrafeedback")
    assert len(ds) == len(raw) == 6
    assert_standard(ds, scores=True)
    for row, src in zip(ds, raw):
        assert row["prompt"] == [{"role": "user", "content": src["prompt"]}]
        assert row["chosen"] == src["chosen"][1:]
        assert row["rejected"] == src["rejected"][1:]
        assert row["score_chosen"] == src["score_chosen"]


def test_ultrafeedback_cleaned_converter():
    raw = data.read_jsonl(UF_CLEANED)
    ds = data.load_preference_data(UF_CLEANED, schema="ultrafeedback-cleaned")
    assert len(ds) == 5
    assert_standard(ds, scores=True)
    assert [r["score_chosen"] for r in ds] == [r["chosen-rating"] for r in raw]
    assert [r["score_rejected"] for r in ds] == [r["rejected-rating"] for r in raw]


def test_dpo_mix_converter_keeps_system_and_multi_turn_prompt():
    ds = data.load_preference_data(DPO_MIX, schema="dpo-mix-7k")
    assert len(ds) == 6
    assert_standard(ds, scores=True)
    assert [m["role"] for m in ds[1]["prompt"]] == ["system", "user"]
    assert [m["role"] for m in ds[2]["prompt"]] == ["user", "assistant", "user"]
    assert ds[2]["chosen"][0]["content"].startswith("Most beginners")
    assert ds[2]["rejected"] == [{"role": "assistant", "content": "Two days."}]
    assert ds[0]["score_chosen"] == 5.0 and ds[0]["score_rejected"] == 2.0


def test_helpsteer2_pairs_by_helpfulness_and_drops_ties(caplog):
    caplog.set_level(logging.INFO, logger="workbench.data")
    ds = data.load_preference_data(HELPSTEER2, schema="helpsteer2")
    # 8 responses → 4 prompts → 1 tie dropped (ADPA §4.1) → 3 pairs
    assert len(ds) == 3
    assert_standard(ds, scores=True)
    assert "dropped 1 tied pair" in caplog.text and "kept 3 pairs" in caplog.text
    prompts = [r["prompt"][-1]["content"] for r in ds]
    assert "Write one sentence about the ocean." not in prompts  # the tied prompt
    assert ds[0]["prompt"] == [{"role": "user", "content": "c#"}]
    assert ds[0]["chosen"][0]["content"].startswith("C# is")
    # multi-turn prompt: <extra_id_1> markers → user / assistant / user
    assert ds[1]["prompt"] == [
        {"role": "user", "content": "What is a good name for a goldfish?"},
        {"role": "assistant", "content": "How about Bubbles?"},
        {"role": "user", "content": "Something more unusual, please."},
    ]
    # better response listed second in the file still becomes chosen
    assert ds[2]["chosen"][0]["content"].startswith("1. Leavening")
    assert (ds[2]["score_chosen"], ds[2]["score_rejected"]) == (4.0, 2.0)


def test_helpsteer2_unpaired_response_is_counted(caplog):
    caplog.set_level(logging.INFO, logger="workbench.data")
    rows = data.read_jsonl(HELPSTEER2)[:3]  # prompt "c#" pair + one lone response
    ds = data.convert_helpsteer2(Dataset.from_list(rows))
    assert len(ds) == 1
    assert "1 unpaired response" in caplog.text


def test_hh_converter_parses_transcripts():
    ds = data.load_preference_data(HH, schema="hh-rlhf")
    assert len(ds) == 6
    assert_standard(ds, scores=False)
    assert ds[0]["prompt"] == [{"role": "user", "content": "How do I boil an egg?"}]
    assert ds[0]["chosen"][0]["content"].startswith("Place the egg")
    assert [m["role"] for m in ds[2]["prompt"]] == ["user", "assistant", "user"]
    assert ds[2]["prompt"][2]["content"] == "He likes gardening."
    for row in ds:
        for m in row["prompt"] + row["chosen"] + row["rejected"]:
            assert "Human:" not in m["content"] and "Assistant:" not in m["content"]


def test_schema_accepts_preset_name():
    by_schema = data.load_preference_data(HH, schema="hh-rlhf")
    by_preset = data.load_preference_data(HH, schema="hh-helpful")
    assert by_schema.to_list() == by_preset.to_list()


def test_parse_hh_dialogue():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:"
    assert data.parse_hh_dialogue(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": ""},
    ]


def test_split_shared_prefix_identical_conversations_keep_last_turn():
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    prompt, chosen, rejected = data.split_shared_prefix(conv, conv)
    assert prompt == conv[:1] and chosen == rejected == conv[1:]


def test_standard_schema_wraps_strings_and_recovers_implicit_prompt(tmp_path):
    strings = data.write_jsonl(
        [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}], tmp_path / "strings.jsonl"
    )
    ds = data.load_preference_data(strings)
    assert ds[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]

    conv = lambda answer: [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": answer},
    ]  # noqa: E731
    implicit = data.write_jsonl([{"chosen": conv("Hello!"), "rejected": conv("Go away.")}], tmp_path / "implicit.jsonl")
    ds = data.load_preference_data(implicit)
    assert ds[0]["prompt"] == conv("")[:1] and ds[0]["rejected"] == conv("Go away.")[1:]


def test_jsonl_round_trip(tmp_path):
    rows = [{"a": 1, "b": "é"}, {"a": 2, "b": "x"}]
    path = data.write_jsonl(rows, tmp_path / "sub" / "rows.jsonl")
    assert data.read_jsonl(path) == rows


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_row", "pattern"),
    [
        (1, r"row 1: field 'rejected' is missing"),
        (
            3,
            r"row 1: field 'chosen' is empty \(message 0 has blank content\); "
            r"remove the row or pass on_invalid='filter'",
        ),
        (4, r"row 1: field 'rejected' is identical to 'chosen'; .*on_invalid='filter'"),
        (5, r"row 1: field 'prompt' is too long \(430 chars > max_prompt_chars=200\); raise the limit"),
    ],
)
def test_validation_error_names_row_field_problem_and_fix(bad_row, pattern):
    ds = Dataset.from_json(str(BAD)).select([0, bad_row])
    with pytest.raises(data.DataValidationError, match=pattern) as info:
        data.validate_preference_rows(ds, max_prompt_chars=200)
    assert info.value.row == 1
    assert isinstance(info.value, ValueError)


def test_load_raises_on_first_bad_row_with_total():
    with pytest.raises(
        data.DataValidationError, match=r"^row 1: field 'rejected' is missing.*\(4 invalid row\(s\) in total"
    ):
        data.load_preference_data(BAD, max_prompt_chars=200)


def test_filter_drops_exactly_bad_rows_and_logs_counts(caplog):
    caplog.set_level(logging.WARNING, logger="workbench.data")
    ds = data.load_preference_data(BAD, max_prompt_chars=200, on_invalid="filter")
    good = [data.read_jsonl(BAD)[i] for i in (0, 2, 6)]
    assert [r["prompt"] for r in ds] == [g["prompt"] for g in good]
    assert_standard(ds, scores=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "workbench.data"]
    assert len(lines) == 4  # one line per reason
    for reason in ("missing", "empty", "identical", "prompt_too_long"):
        assert any(f"dropped 1 of 7 rows: {reason} " in line for line in lines)


def test_filter_invalid_rows_returns_counts():
    raw = data.convert_standard(Dataset.from_json(str(BAD)))
    kept, counts = data.filter_invalid_rows(raw, max_prompt_chars=200)
    assert counts == {"missing": 1, "empty": 1, "identical": 1, "prompt_too_long": 1}
    assert len(kept) == len(raw) - sum(counts.values()) == 3
    kept, counts = data.filter_invalid_rows(raw)  # no length limit → the long prompt stays
    assert len(kept) == 4 and "prompt_too_long" not in counts


def test_wrong_type_and_roles():
    def pref(prompt, chosen, rejected):
        return Dataset.from_list([{"prompt": prompt, "chosen": chosen, "rejected": rejected}])

    u = [{"role": "user", "content": "q"}]
    a = [{"role": "assistant", "content": "a"}]
    b = [{"role": "assistant", "content": "b"}]
    cases = [
        (
            Dataset.from_dict({"prompt": ["q"], "chosen": [a], "rejected": [b]}),
            r"row 0: field 'prompt' must be a list of \{'role', 'content'\} messages, got str",
        ),
        (pref(u + a, a, b), r"row 0: field 'prompt' must end with a user turn, got 'assistant'"),
        (pref(u, u, b), r"row 0: field 'chosen' must hold assistant turns only"),
        (pref([{"role": "robot", "content": "q"}], a, b), r"row 0: field 'prompt' has unknown role 'robot'"),
        (pref([], a, b), r"row 0: field 'prompt' is empty"),
    ]
    for ds, pattern in cases:
        with pytest.raises(data.DataValidationError, match=pattern):
            data.validate_preference_rows(ds)


def test_missing_column_raises_even_when_filtering():
    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]}]
    )
    with pytest.raises(data.DataValidationError, match=r"column 'rejected' is missing"):
        data.validate_preference_rows(ds, on_invalid="filter")


def test_bad_on_invalid_value():
    with pytest.raises(ValueError, match="on_invalid must be 'raise' or 'filter'"):
        data.load_preference_data(UF, schema="ultrafeedback", on_invalid="drop")


def _word_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tok.chat_template = chat_template
    return tok


def test_prompt_token_limit():
    raw = data.convert_standard(Dataset.from_json(str(BAD)).select([0, 5]))
    tok = _word_tokenizer()
    n_words = len(raw[1]["prompt"][0]["content"].split())
    with pytest.raises(
        data.DataValidationError,
        match=rf"row 1: field 'prompt' is too long \({n_words} tokens > max_prompt_tokens=50\)",
    ):
        data.validate_preference_rows(raw, tokenizer=tok, max_prompt_tokens=50)
    data.validate_preference_rows(raw, tokenizer=tok, max_prompt_tokens=n_words)
    # with a chat template the formatted prompt is counted (role tags add tokens)
    templated = _word_tokenizer("{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}<assistant>")
    with pytest.raises(data.DataValidationError, match=rf"\({n_words + 2} tokens > max_prompt_tokens={n_words}\)"):
        data.validate_preference_rows(raw, tokenizer=templated, max_prompt_tokens=n_words)
    with pytest.raises(ValueError, match="max_prompt_tokens needs a tokenizer"):
        data.validate_preference_rows(raw, max_prompt_tokens=5)


# ---------------------------------------------------------------------------------------------------------
# subsampling, presets, hub path
# ---------------------------------------------------------------------------------------------------------


def test_max_rows_is_a_seeded_subset_in_original_order():
    full = [r["prompt"] for r in data.load_preference_data(UF, schema="ultrafeedback")]
    subsets = []
    for seed in range(5):
        ds = data.load_preference_data(UF, schema="ultrafeedback", max_rows=3, seed=seed)
        again = data.load_preference_data(UF, schema="ultrafeedback", max_rows=3, seed=seed)
        prompts = [r["prompt"] for r in ds]
        assert len(ds) == 3 and prompts == [r["prompt"] for r in again]
        positions = [full.index(p) for p in prompts]
        assert positions == sorted(positions)
        subsets.append(tuple(positions))
    assert len(set(subsets)) > 1
    assert len(data.load_preference_data(UF, schema="ultrafeedback", max_rows=100)) == 6


def test_max_rows_counts_valid_rows():
    ds = data.load_preference_data(BAD, max_prompt_chars=200, on_invalid="filter", max_rows=2)
    assert len(ds) == 2


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="unknown dataset preset 'ultrafeedbak'") as info:
        data.load_preference_data("ultrafeedbak")
    for name in data.PRESETS:
        assert name in str(info.value)


def test_unknown_schema_lists_schemas():
    with pytest.raises(ValueError, match=r"unknown schema 'helpsteer'.*helpsteer2"):
        data.load_preference_data(HELPSTEER2, schema="helpsteer")


def test_missing_local_file():
    with pytest.raises(FileNotFoundError, match="no data file"):
        data.load_preference_data(FIXTURES / "nope.jsonl")


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset; record calls; serve a fixture file."""
    calls = []
    served = {}

    def fake_load_dataset(path, name=None, *, data_dir=None, split=None, **kwargs):
        calls.append({"path": path, "name": name, "data_dir": data_dir, "split": split, **kwargs})
        return Dataset.from_json(str(served["file"]))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    def serve(file: Path):
        served["file"] = file
        return calls

    return serve


@pytest.mark.parametrize(
    ("preset", "split", "fixture", "hub_id", "data_dir", "hub_split", "n_rows"),
    [
        ("ultrafeedback", "train", UF, "HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs", 6),
        ("ultrafeedback", "test", UF, "HuggingFaceH4/ultrafeedback_binarized", None, "test_prefs", 6),
        (
            "ultrafeedback",
            "train[:10]",
            UF,
            "HuggingFaceH4/ultrafeedback_binarized",
            None,
            "train_prefs[:10]",
            6,
        ),
        (
            "ultrafeedback-cleaned",
            "train",
            UF_CLEANED,
            "argilla/ultrafeedback-binarized-preferences-cleaned",
            None,
            "train",
            5,
        ),
        ("dpo-mix-7k", "test", DPO_MIX, "argilla/dpo-mix-7k", None, "test", 6),
        ("helpsteer2", "test", HELPSTEER2, "nvidia/HelpSteer2", None, "validation", 3),
        ("hh-helpful", "train", HH, "Anthropic/hh-rlhf", "helpful-base", "train", 6),
    ],
)
def test_hub_presets_call_load_dataset(fake_hub, preset, split, fixture, hub_id, data_dir, hub_split, n_rows):
    calls = fake_hub(fixture)
    ds = data.load_preference_data(preset, split)
    assert calls == [{"path": hub_id, "name": None, "data_dir": data_dir, "split": hub_split}]
    assert len(ds) == n_rows
    assert_standard(ds, scores=preset != "hh-helpful")


def test_hub_id_and_load_kwargs(fake_hub):
    calls = fake_hub(UF)
    ds = data.load_preference_data(
        "someone/uf-copy", "train", schema="ultrafeedback", load_kwargs={"revision": "abc123"}
    )
    assert calls == [
        {"path": "someone/uf-copy", "name": None, "data_dir": None, "split": "train", "revision": "abc123"}
    ]
    assert len(ds) == 6


def test_preset_unknown_split(fake_hub):
    calls = fake_hub(UF_CLEANED)
    with pytest.raises(ValueError, match=r"has no split 'test'.*train_test_split"):
        data.load_preference_data("ultrafeedback-cleaned", "test")
    assert calls == []


# ---------------------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------------------


def test_load_sft_data_validates_messages(caplog):
    with pytest.raises(
        data.DataValidationError, match=r"row 3: field 'messages' must end with an assistant turn, got 'user'"
    ):
        data.load_sft_data(MESSAGES)
    caplog.set_level(logging.WARNING, logger="workbench.data")
    ds = data.load_sft_data(MESSAGES, on_invalid="filter")
    assert len(ds) == 4 and ds.column_names == ["messages"]
    assert "dropped 1 of 5 rows: bad_role" in caplog.text


def test_to_messages_and_sft_from_preference_schema():
    pref = data.load_preference_data(UF, schema="ultrafeedback")
    msgs = data.to_messages(pref)
    assert msgs.column_names == ["messages"]
    assert msgs[0]["messages"] == pref[0]["prompt"] + pref[0]["chosen"]
    sft = data.load_sft_data(UF, schema="ultrafeedback")
    assert sft.to_list() == msgs.to_list()


def test_sft_presets_call_load_dataset(fake_hub):
    calls = fake_hub(MESSAGES)
    ds = data.load_sft_data("deita-10k", "test", on_invalid="filter")
    assert calls == [{"path": "HuggingFaceH4/deita-10k-v0-sft", "name": None, "data_dir": None, "split": "test_sft"}]
    assert len(ds) == 4
    calls.clear()
    fake_hub(UF)
    ds = data.load_sft_data("ultrafeedback")  # preference preset → prompt + chosen
    assert calls[0]["split"] == "train_prefs"
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant"]


# ---------------------------------------------------------------------------------------------------------
# unreadable files: every fault names the file and the line
# ---------------------------------------------------------------------------------------------------------

GOOD_LINE = b'{"prompt": "Sort: 3 1 2", "chosen": "1 2 3", "rejected": "3 2 1"}'


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        (b'{"prompt": "x", "chosen": "a",', r"line 2: is not valid JSON"),
        (
            '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}'.encode("latin-1"),
            r"line 2: is not UTF-8 \(byte 0xe9",
        ),
        (b'["prompt", "chosen"]', r"line 2: is a JSON list, not an object"),
    ],
)
def test_an_unreadable_line_names_file_and_line_or_is_skipped_with_a_count(tmp_path, caplog, bad_line, problem):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + bad_line + b"\n\n" + GOOD_LINE.replace(b"Sort", b"Reverse") + b"\n")
    with pytest.raises(data.DataValidationError, match=rf"{path}, {problem}.*on_invalid='filter'") as raised:
        data.load_preference_data(path)
    assert raised.value.path == path and raised.value.line == 2
    with caplog.at_level(logging.WARNING, logger="workbench.data"):
        ds = data.load_preference_data(path, on_invalid="filter")
    assert [row["prompt"][0]["content"] for row in ds] == ["Sort: 3 1 2", "Reverse: 3 1 2"]
    assert f"skipped 1 unreadable line(s) of {path} (first: line 2" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_an_empty_file_is_named(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    for on_invalid in ("raise", "filter"):
        with pytest.raises(data.DataValidationError, match=rf"{path} holds no rows"):
            data.load_preference_data(path, on_invalid=on_invalid)
    with pytest.raises(data.DataValidationError, match=r"holds no rows"):
        data.load_sft_data(path)


def test_a_json_array_file_names_the_line_of_a_syntax_error(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n{"prompt": "a" "chosen": "b"}\n]\n')
    with pytest.raises(data.DataValidationError, match=rf"{path}, line 3: not valid JSON"):
        data.load_preference_data(path)
    path.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"}]')
    assert len(data.load_preference_data(path)) == 1
