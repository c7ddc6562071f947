"""Speed levers of the HF sampling backend (:func:`workbench.sampling.hf_generate`), each a switch of
:class:`HfSampling`.

Sampling n responses per prompt from the student is the dominant cost of PAD, ADPA+ and PLaD. The levers:

* ``merge_lora`` — a peft LoRA student samples through W + s·BA, one matmul per adapted layer instead of three.
  The merged weight is a new tensor swapped in for the sampling call; the base weight and the adapter are never
  written, so training goes on from exactly the same parameters (the in-place ``merge``/``unmerge`` of peft
  returns W + ΔW − ΔW, not W, in floating point).
* ``dequantize_4bit`` — a bitsandbytes 4-bit model (a QLoRA student, an NF4 teacher) samples through its weights
  dequantized once to the compute dtype (and, with ``merge_lora``, its LoRA delta added), one plain matmul per layer
  instead of a dequantization in every decode step. It applies only when the dequantized copy fits: at most
  ``DEQUANTIZE_FREE_SHARE`` of the memory free on the model's device when sampling starts (checked, and logged
  either way); the memory estimate counts the copy in the sampling phases (``workbench.memory``).
* ``share_prefill`` — each prompt is prefilled once for its n samples: the prompt rows of ``generate``'s prefill
  are taken once each and the KV cache is expanded n-fold after it, instead of prefilling n copies of the prompt.
* ``prune_finished`` — a row that has produced eos leaves the decode forwards: its KV cache rows are dropped and
  each step runs the unfinished rows only (``generate`` computes every row until the whole batch has finished,
  ~30% of a SmolLM2 batch's decode rows at 64 new tokens). ``generate`` still samples every row from the full
  logits tensor (a finished row's are zeros, and its token is padding), so the random stream and the unfinished
  rows' samples are those of the plain path wherever a row's result does not depend on how many rows share the
  matmul.
* ``sort_by_length`` — prompts sorted by token length before they are cut into batches (less left padding); the
  output comes back in the caller's order.
* ``static_cache`` / ``compile_decode`` — transformers' static KV cache, and ``torch.compile`` of the decode
  step on top of it (on CPU too).

``generate`` already ends a batch once every sequence has produced eos (its ``StopCheck``).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import torch

logger = logging.getLogger("workbench.sampling")


@dataclass(frozen=True)
class HfSampling:
    """The HF backend's speed levers. The defaults are those that leave every gym model's samples bit-identical to
    the plain batched ``generate`` (``tests/test_sampling.py`` pins them to samples drawn before the levers
    existed): a gym model has no LoRA adapter, and a shared prefill computes the same rows. Levers that change
    samples are part of the stage cache key when they apply (:meth:`cache_identity`)."""

    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "sample a peft LoRA model through merged weights (changes its samples by float rounding; "
            "holds one merged copy of each adapted weight while sampling; quantized layers stay unmerged)"
        },
    )
    dequantize_4bit: bool = field(
        default=True,
        metadata={
            "help": "sample a bitsandbytes 4-bit model through its weights dequantized once (plus a merged LoRA "
            "delta) when that copy fits in half the free device memory (changes its samples by float rounding)"
        },
    )
    share_prefill: bool = field(
        default=True,
        metadata={"help": "prefill each prompt once and expand its KV cache n-fold (the same samples)"},
    )
    prune_finished: bool = field(
        default=True,
        metadata={"help": "drop a row from the decode forwards once it has produced eos (the same samples)"},
    )
    sort_by_length: bool = field(
        default=False,
        metadata={
            "help": "batch prompts sorted by token length (other batches, so other samples; a shard of the "
            "unsorted list no longer reproduces the whole list's batches)"
        },
    )
    static_cache: bool = field(
        default=False, metadata={"help": "transformers' static KV cache (attention over the full cache length)"}
    )
    compile_decode: bool = field(
        default=False, metadata={"help": "torch.compile the decode step (needs static_cache; compiles per shape)"}
    )

    def __post_init__(self):
        if self.compile_decode and not self.static_cache:
            raise ValueError("compile_decode=True needs static_cache=True (generate compiles only a static cache)")

    @classmethod
    def from_switches(cls, switches: dict) -> HfSampling:
        """The levers a dict of switches (field name -> bool) sets; an unknown name is a ``ValueError`` naming it."""
        known = {f.name for f in fields(cls)}
        if not isinstance(switches, dict) or set(switches) - known:
            unknown = sorted(set(switches) - known) if isinstance(switches, dict) else switches
            raise ValueError(f"unknown {unknown!r}; use a dict of {sorted(known)} to True/False")
        return cls(**switches)

    def cache_identity(self, model) -> dict:
        """The entries of the sampling cache key for the levers that change ``model``'s samples; empty for the
        defaults on a model without LoRA, so such keys are what they were before the levers."""
        key = {}
        dequantized = self.dequantize_4bit and bool(four_bit_layers(model))
        if dequantized:
            key["weights"] = "dequantized"
        if self.merge_lora and mergeable_lora_layers(model, dequantized=dequantized):
            key["lora"] = "merged"
        if self.sort_by_length:
            key["sorted_by_length"] = True
        if self.static_cache:
            key["cache_implementation"] = "static"
        if self.compile_decode:
            key["compiled"] = True
        return key

    def fitted(self, model, free_bytes: int | None = None) -> HfSampling:
        """These levers with ``dequantize_4bit`` turned off when ``model``'s dequantized weights do not fit
        (:func:`dequantized_fits`; ``free_bytes`` defaults to what the device has free now). Decided once per
        sampling call, so the cache key and the samples agree."""
        if not self.dequantize_4bit or not four_bit_layers(model):
            return self
        return self if dequantized_fits(model, free_bytes) else replace(self, dequantize_4bit=False)

    def generate_kwargs(self, model, max_cache_len: int) -> dict:
        """Keyword arguments of ``model.generate`` for the cache levers: a static cache of ``max_cache_len``
        positions (made here, sized by the batch alone: ``generate``'s own would grow to the longest earlier call,
        so a batch's samples would depend on what ran before it), and the compile switch."""
        if not self.static_cache:
            return {}
        from transformers import CompileConfig, StaticCache

        config = generating_model(model).config.get_text_config(decoder=True)
        try:
            kwargs: dict = {"cache": StaticCache(config=config, max_cache_len=max_cache_len)}
        except (ValueError, TypeError, NotImplementedError) as error:  # a model without a static cache layout
            logger.warning("no static cache for %s (%s); sampling with the dynamic cache", type(model).__name__, error)
            return {}
        if self.compile_decode:
            compile_config = CompileConfig(dynamic=False)
            compile_config._compile_all_devices = True  # generate compiles on accelerators only unless told
            kwargs["compile_config"] = compile_config
        else:
            kwargs["disable_compile"] = True  # a static cache alone: never compile behind the switch's back
        return kwargs


# --- merge_lora ---


def mergeable_lora_layers(model, dequantized: bool = False) -> list:
    """``model``'s peft LoRA linear layers that merge exactly in floating point: a plain ``nn.Linear`` base with
    float weights (or, with ``dequantized``, a bitsandbytes 4-bit base that ``dequantized_4bit`` will make one),
    adapters active and not merged, no LoRA variant (DoRA, aLoRA) on an active adapter."""
    # peft's LoRA linear layer, and its layer over a bitsandbytes 4-bit base (mergeable once ``dequantized_4bit``
    # swapped the base)
    kinds = {_loaded("peft.tuners.lora.layer", "Linear"), _loaded("peft.tuners.lora.bnb", "Linear4bit")} - {None}
    layers = []
    for module in model.modules():
        if type(module) not in kinds or module.merged or module.disable_adapters:
            continue
        base = module.get_base_layer()
        active = [a for a in module.active_adapters if a in module.lora_A]
        plain = type(base) is torch.nn.Linear and base.weight.is_floating_point()
        if (
            (plain or (dequantized and _is_four_bit(base)))
            and active
            and not any(a in module.lora_variant for a in active)
        ):
            layers.append(module)
    return layers


@contextmanager
def merged_lora(model, enabled: bool = True):
    """Inside the block each mergeable LoRA layer of ``model`` computes with its merged weight
    $W' = W + \\sum_a s_a B_a A_a$ (one matmul); on exit the original weight tensors are put back, untouched.

    The merged weight is a new tensor (peak memory: one more copy of each adapted weight while sampling), never
    ``W`` written in place, so the base weights, the adapter and any optimizer state stay bit-identical. Only for
    inference: dropout on the adapter's input is skipped, as ``eval()`` does.
    """
    swapped = []
    try:
        if enabled:
            with torch.no_grad():
                for module in mergeable_lora_layers(model):
                    base = module.get_base_layer()
                    active = [a for a in module.active_adapters if a in module.lora_A]
                    weight = base._parameters["weight"]
                    # a dequantized copy (dequantized_4bit) is this call's own tensor: add the delta in place
                    merged = weight.detach() if getattr(weight, "sampling_copy", False) else weight.detach().clone()
                    for adapter in active:  # the order of peft's own merge
                        merged += module.get_delta_weight(adapter).to(merged.dtype)
                    swapped.append((module, base, weight, list(module.merged_adapters)))
                    base._parameters["weight"] = torch.nn.Parameter(merged, requires_grad=False)
                    module.merged_adapters = list(active)  # forward takes the base layer alone
        yield len(swapped)
    finally:
        for module, base, weight, merged_adapters in swapped:
            base._parameters["weight"] = weight
            module.merged_adapters = merged_adapters


# --- dequantize_4bit ---

DEQUANTIZE_FREE_SHARE = 0.5  # the dequantized copy may take this share of the free memory; the rest is for the cache


def four_bit_layers(model) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """``(owner, attribute, layer)`` of each bitsandbytes 4-bit linear layer of ``model``: bare (an NF4 teacher) or
    the base layer of a peft LoRA layer (a QLoRA student)."""
    kind = _loaded("bitsandbytes.nn", "Linear4bit")
    if kind is None:
        return []
    return [
        (owner, name, child)
        for owner in model.modules()
        for name, child in owner.named_children()
        if isinstance(child, kind)
    ]


def _loaded(module: str, name: str):
    """Class ``name`` of ``module`` when that module is already imported, else None. A model holds instances of a
    class only once its module is loaded, so asking imports nothing (peft takes seconds to import)."""
    return getattr(sys.modules.get(module), name, None)


def _is_four_bit(layer) -> bool:
    kind = _loaded("bitsandbytes.nn", "Linear4bit")
    return kind is not None and isinstance(layer, kind)


def _compute_dtype(layer) -> torch.dtype:
    return getattr(layer, "compute_dtype", None) or (torch.bfloat16 if layer.weight.is_cuda else torch.float32)


def _dequantized_weight(layer) -> torch.Tensor:
    """A 4-bit layer's weight dequantized (out, in), the layer left as it is. On CPU bitsandbytes repacks a layer's
    weight for its bfloat16 kernel at the first inference forward (``packing_format_for_cpu``, block scales rounded
    to bfloat16): that layout is unpacked from a copy of the quant state (bitsandbytes' inverse rewrites the state
    it is given), keeping the scales the kernel computes with rather than quantizing them again."""
    import copy

    import bitsandbytes.functional as bnb_functional

    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        state = copy.deepcopy(state)
        state.original_nested = False
        data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data, state)
        state.absmax = state.absmax.T.reshape(-1).float()  # the packed layout's (blocks per row, rows) scales
    return bnb_functional.dequantize_4bit(data, state)


def dequantized_bytes(model) -> int:
    """Bytes of ``model``'s 4-bit layers dequantized to their compute dtype (what ``dequantized_4bit`` adds)."""
    total = 0
    for _, _, layer in four_bit_layers(model):
        total += layer.in_features * layer.out_features * _compute_dtype(layer).itemsize
    return total


def free_memory_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now: CUDA's free memory, else the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def dequantized_fits(model, free_bytes: int | None = None) -> bool:
    """Whether ``model``'s dequantized 4-bit weights take at most ``DEQUANTIZE_FREE_SHARE`` of ``free_bytes``
    (default: free on the model's device now); logs the decision and its numbers either way."""
    need = dequantized_bytes(model)
    free = free_memory_bytes(model.device) if free_bytes is None else free_bytes
    fits = need <= DEQUANTIZE_FREE_SHARE * free
    logger.info(
        "4-bit weights dequantized for sampling: %.2f GiB, %.2f GiB free on %s: %s",
        need / 2**30,
        free / 2**30,
        model.device,
        "sampling from the dequantized copy" if fits else f"does not fit in {DEQUANTIZE_FREE_SHARE:.0%}; kept 4-bit",
    )
    return fits


@contextmanager
def dequantized_4bit(model, enabled: bool = True):
    """Inside the block each bitsandbytes 4-bit linear layer of ``model`` is replaced by a plain ``nn.Linear`` whose
    weight is its dequantized weight in the compute dtype (marked ``sampling_copy``, so ``merged_lora`` adds a LoRA
    delta into it rather than copying it again); on exit the 4-bit layers are put back, never written."""
    swapped = []
    try:
        if enabled:
            with torch.no_grad():
                for owner, name, layer in four_bit_layers(model):
                    weight = _dequantized_weight(layer).to(_compute_dtype(layer))
                    plain = torch.nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
                    plain.weight = torch.nn.Parameter(weight, requires_grad=False)
                    plain.weight.sampling_copy = True
                    if layer.bias is not None:
                        plain.bias = torch.nn.Parameter(layer.bias.detach().to(weight.dtype), requires_grad=False)
                    plain.train(layer.training)
                    setattr(owner, name, plain)
                    swapped.append((owner, name, layer))
        yield len(swapped)
    finally:
        for owner, name, layer in swapped:
            setattr(owner, name, layer)


# --- share_prefill ---


def _expandable(cache) -> bool:
    """A cache whose layers hold only per-row keys and values (full or sliding attention), so expanding its rows
    is all a shared prefill needs."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer

    kinds = (DynamicLayer, DynamicSlidingWindowLayer, StaticLayer)
    return cache is not None and all(type(layer) in kinds for layer in getattr(cache, "layers", [None]))


def _repeat_cache_rows(cache, n: int) -> None:
    """Each row of ``cache`` repeated n times in place of itself (row i → rows i·n … i·n + n − 1)."""
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        layer.keys = layer.keys.repeat_interleave(n, dim=0)
        layer.values = layer.values.repeat_interleave(n, dim=0)
        if hasattr(layer, "batch_size"):
            layer.batch_size = layer.keys.shape[0]
        if layer.is_compileable:  # a static layer's tensors keep a fixed address (what a compiled decode needs)
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)


def generating_model(model):
    """The transformers model whose ``generate`` runs: the base model of a peft wrapper, else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def shared_prefill(model, n: int, enabled: bool = True):
    """Inside the block, ``generate`` with ``num_return_sequences=n`` prefills each prompt once: its prefill gets
    the expanded rows (each prompt n times in a row), keeps every n-th, runs the model's own prefill on those and
    repeats the cache rows and last-position logits n-fold. Decoding then runs on the n·B rows as before.

    The per-row arithmetic of the prefill is the same, so are the samples wherever a row's result does not depend
    on how many rows share the matmul (measured on CPU: ``tests/test_sampling.py``). Anything else — rows that are
    not n copies, a cache that is not empty or not plain keys and values, a transformers without ``_prefill`` —
    prefills as ``generate`` does.
    """
    target = generating_model(model)
    prefill = getattr(target, "_prefill", None)
    if not enabled or n <= 1 or prefill is None or target.config.is_encoder_decoder:
        yield False
        return

    def prefill_once(input_ids, generation_config, model_kwargs, *args, **kwargs):
        rows, length = input_ids.shape
        cache = model_kwargs.get("cache")
        groups = input_ids.view(rows // n, n, length) if rows % n == 0 else None
        if (
            groups is None
            or not bool((groups == groups[:, :1]).all())
            or not _expandable(cache)
            or cache.get_seq_length() != 0
            or model_kwargs.get("inputs_embeds") is not None
        ):
            return prefill(input_ids, generation_config, model_kwargs, *args, **kwargs)
        once = {
            name: value[::n] if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows else value
            for name, value in model_kwargs.items()
        }
        outputs = prefill(input_ids[::n], generation_config, once, *args, **kwargs)  # (B, T) prefill
        _repeat_cache_rows(cache, n)  # (B, ...) -> (B·n, ...)
        outputs.logits = outputs.logits.repeat_interleave(n, dim=0)  # (B·n, kept, V)
        return outputs

    target._prefill = prefill_once
    try:
        yield True
    finally:
        del target._prefill  # the class's method again


# --- prune_finished ---


def _select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (indices into the cache's current rows) of every layer of ``cache``, in place."""
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        if hasattr(layer, "batch_size"):
            layer.batch_size = layer.keys.shape[0]


@contextmanager
def pruned_decode(model, eos_token_ids, enabled: bool = True):
    """Inside the block, ``generate``'s decode forwards skip finished rows: a row whose fed token is an eos id is
    dropped from the KV cache and from every later forward, whose logits come back as zeros in its place (``generate``
    pads a finished row whatever it samples). The prefill and any forward on a cache this cannot prune (a static or
    compiled cache) run as before."""
    target = generating_model(model)
    eos = torch.as_tensor(sorted(set(eos_token_ids or [])), dtype=torch.long)
    if not enabled or not len(eos) or target.config.is_encoder_decoder:
        yield False
        return
    state: dict = {}  # per generate call: the cache it prunes, the rows still in it (indices into all rows)
    pending: list = []

    def before(module, args, kwargs):
        ids, cache = kwargs.get("input_ids"), kwargs.get("past_key_values", kwargs.get("cache"))
        decoding = (
            not args
            and torch.is_tensor(ids)
            and ids.dim() == 2
            and ids.shape[1] == 1
            and kwargs.get("inputs_embeds") is None
            and _expandable(cache)
            and not any(getattr(layer, "is_compileable", False) for layer in cache.layers)
            and cache.get_seq_length() > 0
        )
        if not decoding:
            pending.append(None)
            return None
        rows = ids.shape[0]
        if state.get("cache") is not cache or state.get("rows") != rows:  # a new generate call: every row in
            state.update(cache=cache, rows=rows, kept=torch.arange(rows, device=ids.device))
        kept = state["kept"]
        done = torch.isin(ids[kept, 0], eos.to(ids.device))
        if bool(done.any()) and not bool(done.all()):  # never prune to nothing: the call is about to end anyway
            keep = (~done).nonzero().squeeze(1)
            _select_cache_rows(cache, keep)
            kept = state["kept"] = kept[keep]
        pending.append(kept)
        if len(kept) == rows:
            return None
        sub = dict(kwargs)
        for name, value in kwargs.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows and name != "cache_position":
                sub[name] = value[kept]
        return args, sub

    def after(module, args, kwargs, output):
        kept = pending.pop()
        if kept is None or len(kept) == state["rows"]:
            return None
        logits = output.logits
        full = logits.new_zeros(state["rows"], *logits.shape[1:])
        full[kept] = logits
        output.logits = full
        return output

    handles = [
        target.register_forward_pre_hook(before, with_kwargs=True),
        target.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield True
    finally:
        for handle in handles:
            handle.remove()


# --- sort_by_length ---


def length_order(lengths: list[int]) -> list[int]:
    """Indices of ``lengths`` from shortest to longest (stable: equal lengths keep their order)."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def restore_order(grouped: list, order: list[int], n: int) -> list:
    """Groups of ``n`` items laid out in ``order`` (group k belongs to prompt ``order[k]``) back in prompt order."""
    restored: list = [None] * len(grouped)
    for k, prompt in enumerate(order):
        restored[prompt * n : (prompt + 1) * n] = grouped[k * n : (k + 1) * n]
    return restored
