"""The registered datasets: hub id, split, native schema and load options per preset name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from datasets import Dataset

from workbench.data.schemas import SCHEMAS, convert_messages


@dataclass(frozen=True)
class DatasetPreset:
    """A hub dataset and how to read it.

    ``splits`` maps the workbench's split names (``train``, ``test``) to the hub's; a hub split name is
    accepted as well, and a slice suffix is kept (``"train[:1%]"``).
    """

    hub_id: str
    schema: str = field(metadata={"help": "key of SCHEMAS (preference) or 'messages' (SFT)"})
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    config: str | None = None
    data_dir: str | None = None
    description: str = ""

    def hub_split(self, split: str) -> str:
        """The hub split for ``split`` (a workbench name or a hub name, optionally with a slice)."""
        base, bracket, rest = split.partition("[")
        if base in self.splits:
            base = self.splits[base]
        elif base not in self.splits.values():
            known = sorted(set(self.splits) | set(self.splits.values()))
            raise ValueError(
                f"{self.hub_id} has no split {split!r}; known: {known} (make a held-out set with "
                "ds.train_test_split(test_size=..., seed=...) if you need one)"
            )
        return base + bracket + rest

    @property
    def convert(self) -> Callable[[Dataset], Dataset]:
        return convert_messages if self.schema == "messages" else SCHEMAS[self.schema]


PRESETS: dict[str, DatasetPreset] = {
    "ultrafeedback": DatasetPreset(
        "HuggingFaceH4/ultrafeedback_binarized",
        "ultrafeedback",
        {"train": "train_prefs", "test": "test_prefs"},
        description="UltraFeedback binarized (Zephyr); scores are GPT-4 overall scores (1-10)",
    ),
    "ultrafeedback-cleaned": DatasetPreset(
        "argilla/ultrafeedback-binarized-preferences-cleaned",
        "ultrafeedback-cleaned",
        {"train": "train"},
        description="UltraFeedback binarized by mean preference rating, TruthfulQA removed; train only",
    ),
    "dpo-mix-7k": DatasetPreset(
        "argilla/dpo-mix-7k",
        "dpo-mix-7k",
        description="DPO-MIX-7K (ADPA §4.1): capybara + orca + ultrafeedback pairs with high-rated chosen",
    ),
    "helpsteer2": DatasetPreset(
        "nvidia/HelpSteer2",
        "helpsteer2",
        {"train": "train", "test": "validation", "validation": "validation"},
        description="HelpSteer2 paired by helpfulness, ties dropped (ADPA §4.1)",
    ),
    "hh-helpful": DatasetPreset(
        "Anthropic/hh-rlhf",
        "hh-rlhf",
        data_dir="helpful-base",
        description="Anthropic HH-RLHF helpful-base; prompt = shared prefix of the transcripts",
    ),
}

SFT_PRESETS: dict[str, DatasetPreset] = {
    "deita-10k": DatasetPreset(
        "HuggingFaceH4/deita-10k-v0-sft",
        "messages",
        {"train": "train_sft", "test": "test_sft"},
        description="Deita-10K-V0, the SFT set of ADPA §4.1",
    ),
}
