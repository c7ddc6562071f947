"""The method registry: every method the workbench trains, by name, with what the harnesses need to run it.

A *family* is one module of ``workbench.methods`` (its config class, ``train_run`` for the training script and
``run_<family>`` for a notebook or the comparison) and the notebook whose parameters its recipes hold. A *method*
is a family plus the config fields that make it (``pad-ppd`` = PAD with ``loss="ppd"``) and its learning rate on the
default gym. :mod:`workbench.compare`, :mod:`workbench.train` and the memory estimate read these tables; adding a
method is one module (or one more field value) plus one entry here. Modules are imported on use, so reading the
registry loads no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module


@dataclass(frozen=True)
class Family:
    """A method module: its config class, run entry points and notebook."""

    module: str  # workbench.methods.<module>
    config: str  # its config dataclass
    run: str  # its run_<family>(cfg) -> RunResult (notebooks, the comparison)
    notebook: str | None  # the notebook stem whose parameters a recipe holds (None: trained by the comparison only)
    memory_shape: str = "listwise"  # what loads when, for the memory estimate (workbench.memory.MEMORY_SHAPES)
    notebook_only: frozenset = frozenset()  # notebook parameters that steer its extra sections only
    zero_is_none: frozenset = frozenset()  # parameters whose 0 means "off" (None in the config)
    harness_kwargs: str | None = None  # a module function adapting the comparison's shared overrides to the config

    def load(self):
        return import_module(f"workbench.methods.{self.module}")

    def config_class(self):
        return getattr(self.load(), self.config)

    def run_function(self):
        return getattr(self.load(), self.run)

    def train_run(self):
        """``train_run(cfg, *, state=None, device=None) -> TrainedRun``, what ``python -m workbench.train`` calls."""
        return self.load().train_run


FAMILIES: dict[str, Family] = {
    "pad": Family(
        "pad",
        "PadConfig",
        "run_pad",
        "03_pad_train",
        zero_is_none=frozenset({"m"}),
        notebook_only=frozenset({"show", "publish"}),
    ),
    "adpa": Family(
        "adpa",
        "AdpaConfig",
        "run_adpa",
        "06_adpa_train",
        memory_shape="topk-pairs",
        notebook_only=frozenset(
            {"compare_to_adpa", "sweep", "alphas", "gammas", "sweep_steps", "sweep_seeds", "show", "publish"}
        ),
        harness_kwargs="harness_kwargs",
    ),
    "plad": Family(
        "plad",
        "PladConfig",
        "run_plad",
        "07_plad_train",
        memory_shape="pseudo-pairs",
        notebook_only=frozenset({"real_ratios", "data_fractions", "sweep_seeds", "show", "publish"}),
    ),
    "baselines": Family("baselines", "BaselineConfig", "run_baseline", None),
}


@dataclass(frozen=True)
class Method:
    """One registered method: its family, the config fields that make it, its default-gym learning rate and the
    gym-tuned loss weights (config defaults) it runs with."""

    family: str
    fields: dict = field(default_factory=dict)
    gym_lr: float = 1e-4
    tuned_fields: tuple[str, ...] = ()
    needs: str = ""  # what it asks of its teacher(s): the other half of choosing among methods gold cannot separate
    # "teacher": learns from the teacher alone; "gold": also trains on answers ranked or chosen by the gold reward
    # (on the gym: gold-ranked preference pairs, gold answers), so the comparison shows the two groups apart
    supervision: str = "teacher"

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]


# what a method asks of its teacher(s) (``Method.needs``), for the needs several methods share
PAD_NEEDS = "teacher log-likelihood + MCQ judgement of n student samples"
TEACHER_SAMPLES = "teacher samples (black-box teacher)"
TEACHER_SCORES = "teacher scores of n student samples"
BOTH_TEACHERS_TOPK = "preference pairs + DPO and reference teachers' top-k on student samples (same vocabulary)"

# Learning rates: each method's best on the default gym's validation split (``experiments/gym_tune.py``: seed 0,
# 128 prompts x 4 samples, grid {1e-4, 3e-4, 1e-3, 3e-3} and one step past a winning end; results/gym_tune/ holds
# the measurements, including a 3-seed re-check). The order is the comparison table's.
METHODS: dict[str, Method] = {
    "pad-vpd": Method("pad", {"loss": "vpd", "sft_weight": 0.0}, 3e-4, needs=PAD_NEEDS),
    "pad-ppd": Method("pad", {"loss": "ppd", "sft_weight": 0.0}, 1e-4, needs=PAD_NEEDS),
    "plad": Method("plad", {"sft_weight": 0.0}, 1e-4, needs=TEACHER_SAMPLES),
    "kd": Method(
        "baselines",
        {"method": "kd"},
        1e-4,
        needs="teacher logits on reference answers (same vocabulary)",
        supervision="gold",
    ),
    "seqkd": Method("baselines", {"method": "seqkd"}, 3e-4, needs=TEACHER_SAMPLES),
    "reverse-kl": Method(
        "baselines", {"method": "reverse-kl"}, 3e-4, needs="teacher logits on student samples (same vocabulary)"
    ),
    "dpo": Method("baselines", {"method": "dpo"}, 3e-5, needs=TEACHER_SCORES),
    "simpo": Method("baselines", {"method": "simpo"}, 3e-5, needs=TEACHER_SCORES),
    "pro": Method("baselines", {"method": "pro"}, 1e-4, needs=TEACHER_SCORES),
    # beyond the papers: the same objectives plus an NLL anchor on the teacher's preferred answer (sft_weight = 1)
    "pad-ppd+sft": Method("pad", {"loss": "ppd", "sft_weight": 1.0}, 3e-4, needs=PAD_NEEDS),
    "plad+sft": Method("plad", {"sft_weight": 1.0}, 1e-4, needs=TEACHER_SAMPLES),
    "sft": Method("adpa", {"method": "sft"}, 3e-3, needs="preference pairs only", supervision="gold"),
    "dckd": Method(
        "adpa",
        {"method": "dckd"},
        3e-3,
        ("alpha",),
        needs="preference pairs + DPO-teacher top-k logits (same vocabulary)",
        supervision="gold",
    ),
    "adpa": Method("adpa", {"method": "adpa"}, 1e-4, ("gamma",), needs=BOTH_TEACHERS_TOPK, supervision="gold"),
    "adpa+": Method(
        "adpa",
        {"method": "adpa+"},
        1e-4,
        ("alpha", "gamma"),
        needs="preference pairs + DPO and reference teachers' top-k (same vocabulary); two stages",
        supervision="gold",
    ),
    "adpa_no_ref": Method(
        "adpa",
        {"method": "adpa_no_ref"},
        1e-4,
        ("gamma",),
        needs="preference pairs + DPO-teacher top-k on student samples (same vocabulary)",
        supervision="gold",
    ),
    "q_argmax": Method("adpa", {"method": "q_argmax"}, 3e-3, ("gamma",), needs=BOTH_TEACHERS_TOPK, supervision="gold"),
    "q_softmax": Method(
        "adpa",
        {"method": "q_softmax"},
        3e-3,
        ("gamma",),
        needs=BOTH_TEACHERS_TOPK,
        supervision="gold",
    ),
}

# the learning-rate table the configs and harnesses read (lr=None: the method's rate here)
GYM_LR: dict[str, float] = {name: method.gym_lr for name, method in METHODS.items()}


def methods_of(family: str) -> tuple[str, ...]:
    """The registered methods of one family, in registry order."""
    return tuple(name for name, method in METHODS.items() if method.family == family)


def family_of_notebook(stem: str) -> str | None:
    """The family whose recipes name notebook ``stem`` (e.g. ``03_pad_train``), or None."""
    return next((name for name, spec in FAMILIES.items() if spec.notebook == stem), None)
