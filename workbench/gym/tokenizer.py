"""The gym's word-level tokenizer: built with `tokenizers`, wrapped as a `PreTrainedTokenizerFast`.

It has pad/bos/eos/unk, role tokens and a chat template, so sampling, scoring and training treat it exactly like
a real model's tokenizer (``apply_chat_template``, ``save_pretrained``, ``AutoTokenizer.from_pretrained``).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from workbench.gym.world import vocabulary

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# every turn ends with eos, so generation of an assistant turn stops at eos
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] | trim + ' ' + eos_token + ' ' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh gym tokenizer (deterministic: the same ids on every machine)."""
    specials = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    vocab = {token: i for i, token in enumerate(specials + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        model_max_length=512,
        padding_side="left",  # decoder-only generation pads on the left
        additional_special_tokens=ROLE_TOKENS,
        **SPECIAL_TOKENS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
