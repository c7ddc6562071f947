"""Model dimensions from a transformers config, a gym preset, a folder or a hub id (no weights loaded)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 packs two weights per byte; one absmax per 64-weight block, stored as fp32 (4/64 B) or, with double
# quantisation, as uint8 (1/64 B) plus one fp32 per 256 blocks (QLoRA §2)
NF4_BYTES_PER_PARAM = {False: 0.5 + 4 / 64, True: 0.5 + 1 / 64 + 4 / (64 * 256)}
INT8_BYTES_PER_PARAM = 1.0 + 4 / 4096  # LLM.int8: one byte per weight plus per-row scales (approximate)
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # CUDA context + cuBLAS workspace: assumed, not measured here
SCORING_CHUNK = 256  # positions per chunk: gather_token_logps, and workbench.scoring's head (DEFAULT_LOGITS_CHUNK)
SCORING_LOGIT_BYTES = 8  # per element of a scoring head chunk: float32 logits + log-sum-exp's float32 temporary
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # peft "all-linear" on a decoder (lm_head excluded)


# --- model dimensions ---


@dataclass(frozen=True)
class ModelDims:
    """What the memory arithmetic needs from a decoder-only transformer's config."""

    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied_embeddings: bool
    attention: str = "sdpa"  # "sdpa" | "eager" (Gemma-2: eager, for its attention soft-capping)
    norms_per_layer: int = 2  # Llama 2, Gemma-2 4 (pre and post norms)
    attn_softcap: bool = False
    mask_kinds: int = 1  # (B, 1, T, T) additive masks eager attention builds per forward (Gemma-2: full and sliding)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i), "down": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Parameters of a separate output head (0 when tied to the input embedding)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (self.layers * self.norms_per_layer + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_linear_params + self.embedding_params + self.head_params + self.norm_params


def dims_from_config(config, name: str = "") -> ModelDims:
    """ModelDims of a ``transformers`` config (or a dict of its ``config.json`` fields)."""
    if isinstance(config, Mapping):
        config = dict(config)
        get = config.get
    else:
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    if isinstance(config, Mapping) and "text_config" in config:
        return dims_from_config(config["text_config"], name)
    model_type = get("model_type") or "llama"
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    gemma2 = model_type in ("gemma2", "gemma3", "gemma3_text")
    attention = get("_attn_implementation") or ("eager" if model_type == "gemma2" else "sdpa")
    return ModelDims(
        name=name or str(get("_name_or_path") or model_type),
        model_type=model_type,
        vocab=int(get("vocab_size")),
        hidden=hidden,
        layers=int(get("num_hidden_layers")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        intermediate=int(get("intermediate_size")),
        tied_embeddings=bool(get("tie_word_embeddings", True)),
        attention=attention,
        norms_per_layer=4 if gemma2 else 2,
        attn_softcap=bool(get("attn_logit_softcapping")),
        mask_kinds=_mask_kinds(get("layer_types"), gemma2 and bool(get("sliding_window"))),
    )


def _mask_kinds(layer_types, alternating_sliding: bool) -> int:
    """How many (B, 1, T, T) masks a forward builds: one per attention kind of ``layer_types`` (a hub config.json
    of Gemma-2 has none; its model alternates sliding and full layers)."""
    if layer_types:
        return len(set(layer_types))
    return 2 if alternating_sliding else 1


def _gym_dims(name: str) -> ModelDims | None:
    from workbench.models import gym_preset

    preset = gym_preset(name)
    if preset is None:
        return None
    from workbench.gym.build import SIZES
    from workbench.gym.tokenizer import build_tokenizer

    size, role = preset
    shape = SIZES[size].student if role == "student" else SIZES[size].teacher
    return dims_from_config(shape.llama_config(build_tokenizer()), name)


def _config_in_folder(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name.replace("/", "--") / "config.json", folder / name / "config.json"):
        if candidate.is_file():
            return candidate
    return None


def model_dims(name_or_config, model_configs: str | Path | Mapping | None = None) -> ModelDims:
    """ModelDims of a model name (gym preset, folder, hub id) or config; see the module docstring for lookup.

    ``model_configs`` (or ``$WORKBENCH_MODEL_CONFIGS``, a folder) is searched first for hub ids.
    """
    if not isinstance(name_or_config, str):
        return dims_from_config(name_or_config)
    name = name_or_config
    model_configs = model_configs if model_configs is not None else os.environ.get("WORKBENCH_MODEL_CONFIGS")
    if isinstance(model_configs, Mapping):
        if name in model_configs:
            found = model_configs[name]
            if isinstance(found, (str, Path)):
                path = Path(found)
                return dims_from_config(json.loads((path / "config.json" if path.is_dir() else path).read_text()), name)
            return dims_from_config(found, name)
    elif model_configs:
        path = _config_in_folder(Path(model_configs), name)
        if path is not None:
            return dims_from_config(json.loads(path.read_text()), name)
    gym = _gym_dims(name)
    if gym is not None:
        return gym
    local = Path(name) / "config.json"
    if local.is_file():
        return dims_from_config(json.loads(local.read_text()), name)
    from workbench.models import GGUF_PRESETS, LAYER_DROP_PRESETS, resolve

    if name in GGUF_PRESETS or name in LAYER_DROP_PRESETS:
        return dims_from_config(json.loads((Path(resolve(name)) / "config.json").read_text()), name)
    from transformers import AutoConfig

    try:
        return dims_from_config(AutoConfig.from_pretrained(name), name)
    except (OSError, ValueError) as error:  # ValueError: not a valid hub id
        raise OSError(
            f"cannot read the config of {name!r} (offline, or not a model id); pass model_configs= a folder of "
            f"'<org>--<name>/config.json' files, or set $WORKBENCH_MODEL_CONFIGS"
        ) from error
