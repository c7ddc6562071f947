"""The ADPA family's training objectives over a top-k teacher cache: the pair collator (with its memoised
tokenizer), DCKD's objective (Eq. 7) and the on-policy objectives (ADPA Eq. 10 and its ablations)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workbench.encoding import collate_examples
from workbench.logprobs import chunked_logps_at, logits_chunk_setting, output_vocab_size
from workbench.losses import get_loss
from workbench.losses.adpa import (
    GatheredLogps,
    advantage_from_topk,
    dckd_loss,
    sft_loss,
)
from workbench.topk_cache import TopkCache

logger = logging.getLogger("workbench.adpa")


class MemoizedTokenizer:
    """A tokenizer proxy that memoizes chat rendering and tokenization (same outputs, each text encoded once).

    The collator re-encodes every row at every step through :func:`workbench.encoding.collate_examples`; on the
    gym that is about half of a training step. The proxy keeps that one shared encoding path and removes the cost.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._memo: dict = {}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def _cached(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def apply_chat_template(self, messages, **kwargs):
        key = ("template", json.dumps(messages, sort_keys=True), json.dumps(kwargs, sort_keys=True, default=str))
        return self._cached(key, lambda: self._tokenizer.apply_chat_template(messages, **kwargs))

    def __call__(self, text, **kwargs):
        if not isinstance(text, str):
            return self._tokenizer(text, **kwargs)
        key = ("encode", text, json.dumps(kwargs, sort_keys=True, default=str))
        return self._cached(key, lambda: self._tokenizer(text, **kwargs))


@dataclass
class TopkPairCollator:
    """Rows with ``index``, ``prompt`` and response columns -> one shifted batch per response field plus the
    teacher top-k caches placed at that field's response positions.

    For each field f (e.g. ``chosen``, ``rejected``, ``hat``) the batch holds ``f_input_ids``, ``f_attention_mask``
    (B, L), and ``f_labels``, ``f_mask`` (B, L-1) where position t of the logits predicts ``f_labels[:, t]``. For
    each cache name ``f_teacher`` it holds ``f_teacher_ids`` and ``f_teacher_logps`` (B, L-1, k).
    """

    tokenizer: object
    fields: tuple[str, ...]
    caches: dict[str, TopkCache]

    def __post_init__(self):
        if not isinstance(self.tokenizer, MemoizedTokenizer):
            self.tokenizer = MemoizedTokenizer(self.tokenizer)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        indices = [r["index"] for r in rows]
        for name in self.fields:
            batch = collate_examples(self.tokenizer, [r["prompt"] for r in rows], [r[name] for r in rows])
            out[f"{name}_input_ids"] = batch["input_ids"]
            out[f"{name}_attention_mask"] = batch["attention_mask"]
            out[f"{name}_labels"] = batch["input_ids"][:, 1:]  # (B, L-1)
            out[f"{name}_mask"] = batch["response_mask"][:, 1:]  # (B, L-1)
        for cache_name, cache in self.caches.items():
            name = cache_name.rsplit("_", 1)[0]
            ids, logps = cache.scatter(indices, out[f"{name}_mask"])
            out[f"{cache_name}_ids"], out[f"{cache_name}_logps"] = ids, logps
        return out


def shifted_logits(model, inputs: dict, name: str) -> torch.Tensor:
    """Student logits on field ``name``, (B, L-1, V): position t predicts ``inputs[name + '_labels'][:, t]``."""
    logits = model(input_ids=inputs[f"{name}_input_ids"], attention_mask=inputs[f"{name}_attention_mask"]).logits
    return logits[:, :-1]


def student_logps(model, inputs: dict, name: str, ids: Sequence[torch.Tensor], logits_chunk: int | None = None):
    """What the losses read of the student on field ``name``: its logits (B, L-1, V) or, with ``logits_chunk``
    (None: ``$WORKBENCH_LOGITS_CHUNK``, off), its log-probs at ``ids`` (each (B, L-1) or (B, L-1, k): labels, teacher
    top-k ids) through the chunked head — a :class:`~workbench.losses.adpa.GatheredLogps` the losses take in place
    of the logits, so no (B, L-1, V) tensor is kept for backward."""
    chunk = logits_chunk if logits_chunk is not None else logits_chunk_setting()
    if not chunk:
        return shifted_logits(model, inputs, name)
    vocab_size = output_vocab_size(model)
    wanted = torch.cat([i if i.dim() == 3 else i[..., None] for i in ids], dim=-1)  # (B, L-1, J)
    # off the response (and for out-of-range ids, which the losses reject by name) any valid id will do
    live = inputs[f"{name}_mask"].bool()[..., None]
    wanted = torch.where(live, wanted, torch.zeros_like(wanted)).clamp(0, vocab_size - 1)
    logps = chunked_logps_at(model, inputs[f"{name}_input_ids"], inputs[f"{name}_attention_mask"], wanted, chunk)
    return GatheredLogps(wanted, logps, vocab_size)


@dataclass
class DckdObjective:
    """L_DCKD = L_SFT(y_w) + α (L_KLD-w + L_KLD-l) (ADPA Eq. 5-7) on cached π_dpo top-k."""

    alpha: float
    use_rejected: bool = True
    logits_chunk: int | None = None  # the chunked head (None: $WORKBENCH_LOGITS_CHUNK, off)

    def __call__(self, model, inputs):
        chosen = student_logps(
            model, inputs, "chosen", (inputs["chosen_labels"], inputs["chosen_dpo_ids"]), self.logits_chunk
        )  # (B, Lw-1, V)
        rejected = {}
        if self.use_rejected:
            rejected = dict(
                rejected_student_logits=student_logps(
                    model, inputs, "rejected", (inputs["rejected_dpo_ids"],), self.logits_chunk
                ),
                rejected_mask=inputs["rejected_mask"],
                rejected_teacher_topk_ids=inputs["rejected_dpo_ids"],
                rejected_teacher_topk_logps=inputs["rejected_dpo_logps"],
            )
        # $\mathcal{L}_{\text{SFT}} + \alpha(\mathcal{L}_{\text{KLD-}w} + \mathcal{L}_{\text{KLD-}l})$, Eq. (7)
        loss = dckd_loss(
            chosen,
            inputs["chosen_labels"],
            inputs["chosen_mask"],
            inputs["chosen_dpo_ids"],
            inputs["chosen_dpo_logps"],
            alpha=self.alpha,
            use_rejected=self.use_rejected,
            **rejected,
        )
        with torch.no_grad():
            sft = sft_loss(chosen, inputs["chosen_labels"], inputs["chosen_mask"]).mean()
        return loss, {"sft_loss": sft}


def _advantage_targets(objective: OnPolicyObjective, inputs: dict, vocab_size: int):
    # $A(\hat s_t, a) = \beta \log \pi_{\text{dpo}}(a|\hat s_t) - \beta \log \pi_{\text{ref}}(a|\hat s_t)$, Eq. (8)
    return advantage_from_topk(
        inputs["hat_dpo_ids"],
        inputs["hat_dpo_logps"],
        inputs["hat_ref_ids"],
        inputs["hat_ref_logps"],
        objective.beta,
        objective.missing_rule,
        vocab_size=vocab_size,
        advantage_clamp=objective.advantage_clamp,
    )


def _dpo_targets(objective: OnPolicyObjective, inputs: dict, vocab_size: int):
    return inputs["hat_dpo_ids"], inputs["hat_dpo_logps"]


@dataclass(frozen=True)
class OnPolicyLoss:
    """How a loss on ŷ gets its targets and extra arguments from the cached teachers."""

    teachers: tuple[str, ...]  # caches needed on ŷ
    targets: Callable  # (objective, inputs, V) -> (ids (B,T,k), values (B,T,k))
    kwargs: Callable  # (objective, V) -> extra keyword arguments of the loss


ON_POLICY_LOSSES: dict[str, OnPolicyLoss] = {
    "adpa": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {"length_normalize": o.length_normalize}),
    "q_argmax": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {}),
    "q_softmax": OnPolicyLoss(("dpo", "ref"), _advantage_targets, lambda o, V: {"temperature": o.q_temperature}),
    "adpa_no_ref": OnPolicyLoss(
        ("dpo",),
        _dpo_targets,
        lambda o, V: {
            "beta": o.beta,
            "missing_rule": o.missing_rule,
            "vocab_size": V,
            "length_normalize": o.length_normalize,
        },
    ),
}


@dataclass
class OnPolicyObjective:
    """L_SFT(y_w) plus a registered loss on the student's logits along ŷ (ADPA Eq. 10, 30, 31, Table 2)."""

    loss: str
    gamma: float
    beta: float
    missing_rule: str = "tail_max"
    advantage_clamp: bool = False
    length_normalize: bool = False
    q_temperature: float = 1.0
    logits_chunk: int | None = None  # the chunked head (None: $WORKBENCH_LOGITS_CHUNK, off)

    def __post_init__(self):
        self.loss_fn = get_loss(self.loss)
        self.spec = ON_POLICY_LOSSES[self.loss]

    def __call__(self, model, inputs):
        chosen = student_logps(model, inputs, "chosen", (inputs["chosen_labels"],), self.logits_chunk)
        # $\mathcal{L}_{\text{SFT}}(x, y_w)$ per sequence
        sft = sft_loss(chosen, inputs["chosen_labels"], inputs["chosen_mask"])  # (B,)
        vocab_size = output_vocab_size(model)
        ids, values = self.spec.targets(self, inputs, vocab_size)  # (B, L-1, k) each
        hat = student_logps(model, inputs, "hat", (ids,), self.logits_chunk)  # (B, L-1, V)
        loss = self.loss_fn(
            hat, inputs["hat_mask"], ids, values, self.gamma, sft_term=sft, **self.spec.kwargs(self, vocab_size)
        )
        return loss, {"sft_loss": sft.detach().mean(), "distill_term": loss.detach() - sft.detach().mean()}
