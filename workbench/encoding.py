"""Chat encoding shared by every stage: (prompt, response) -> token ids with a response-only mask.

The prompt is rendered with the tokenizer's chat template and a generation prompt; the response is the rest of
the rendered conversation up to and including the first end-of-sequence token. Sampling, scoring, the top-k
cache and every trainer encode through here, so "which tokens are the response" is decided once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

Messages = list[dict]
PromptLike = str | Messages


def as_messages(prompt: PromptLike) -> Messages:
    """A prompt as chat messages: a plain string becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or prompt[-1].get("role") != "user":
        raise ValueError(f"a prompt must end with a user message; got roles {[m.get('role') for m in prompt]}")
    return list(prompt)


def prompt_text(tokenizer, prompt: PromptLike) -> str:
    """The rendered prompt, ending with the assistant generation prefix."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: PromptLike) -> list[int]:
    """Token ids of the rendered prompt (special tokens come from the template, not added twice)."""
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: PromptLike, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the response ends with the first eos token the template emits."""
    messages = as_messages(prompt)
    head = prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError(
            "the chat template renders the prompt differently with and without the answer, so the response "
            "tokens cannot be located; pass a tokenizer whose template extends the generation prompt"
        )
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in response_ids:
        response_ids = response_ids[: response_ids.index(eos) + 1]
    return prompt_ids, response_ids


def encode_within(
    tokenizer, prompt: PromptLike, response: str, max_length: int | None
) -> tuple[list[int], list[int], bool]:
    """:func:`encode_example` cut to ``max_length`` tokens: an over-long row keeps its response and loses prompt
    tokens from the left (at least one prompt token stays). Returns (prompt ids, response ids, whether cut)."""
    prompt_ids, response_ids = encode_example(tokenizer, prompt, response)
    if max_length is None or len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, False
    keep = max(max_length - len(response_ids), 1)
    return prompt_ids[-keep:], response_ids[: max_length - keep], True


def collate_examples(
    tokenizer,
    prompts: Sequence[PromptLike],
    responses: Sequence[str],
    max_length: int | None = None,
) -> dict:
    """Right-padded batch of prompt+response; ``labels`` are -100 off the response.

    Returns ``input_ids (B, L)``, ``attention_mask (B, L)``, ``labels (B, L)`` and ``response_mask (B, L)``
    where ``response_mask[b, t]`` marks that token t of row b is a response token.
    Over-long rows keep the whole response and lose prompt tokens from the left (the count is returned as
    ``truncated``), never silently.
    """
    import torch

    rows = [
        encode_within(tokenizer, prompt, response, max_length)
        for prompt, response in zip(prompts, responses, strict=True)
    ]
    truncated = sum(cut for _, _, cut in rows)
    rows = [(prompt_ids, response_ids) for prompt_ids, response_ids, _ in rows]
    width = max(len(p) + len(r) for p, r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (prompt_ids, response_ids) in enumerate(rows):
        ids = prompt_ids + response_ids
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
        response_mask[b, len(prompt_ids) : len(ids)] = True
    labels = input_ids.masked_fill(~response_mask, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "response_mask": response_mask,
        "truncated": torch.tensor(truncated),
    }


@dataclass(frozen=True)
class McqTemplate:
    """How a multiple-choice judging prompt is worded; the answer is one option letter.

    ``header``, ``footer`` and ``option`` may use ``{prompt}``; each option is
    ``option.format(letter=, response=, prompt=)`` (restating the question per option is allowed).
    """

    header: str
    option: str
    footer: str
    letters: tuple[str, ...] = tuple("ABCDEFGH")

    @property
    def letter_closes_option(self) -> bool:
        """Whether an option's letter (also) follows its response: the place a per-option verdict can be trained."""
        return self.option.rindex("{letter}") > self.option.index("{response}")

    def render(self, prompt: str, responses: Sequence[str]) -> str:
        if len(responses) > len(self.letters):
            raise ValueError(
                f"{len(responses)} options but the MCQ template has only {len(self.letters)} letters; "
                "decompose the responses into smaller groups (PAD §4.4) or extend `letters`"
            )
        options = [self.option.format(letter=l, response=r, prompt=prompt) for l, r in zip(self.letters, responses)]
        return self.header.format(prompt=prompt) + "".join(options) + self.footer.format(prompt=prompt)


MCQ_TEMPLATE_FILE = "mcq_template.json"


def save_mcq_template(template: McqTemplate, folder: str | Path) -> Path:
    """Write ``template`` beside a model (``<folder>/mcq_template.json``): the wording its judge was trained on."""
    path = Path(folder) / MCQ_TEMPLATE_FILE
    path.write_text(json.dumps(asdict(template), indent=1))
    return path


def saved_mcq_template(tokenizer) -> McqTemplate | None:
    """The MCQ wording saved beside the model a tokenizer was loaded from (its ``name_or_path``), if any."""
    return load_mcq_template(getattr(tokenizer, "name_or_path", "") or "")


def load_mcq_template(folder: str | Path) -> McqTemplate | None:
    """The MCQ wording saved beside a model by :func:`save_mcq_template`, or None when there is none."""
    path = Path(folder) / MCQ_TEMPLATE_FILE if folder else None
    if path is None or not path.is_file():
        return None
    fields = json.loads(path.read_text())
    try:
        return McqTemplate(**{**fields, "letters": tuple(fields.get("letters", McqTemplate.letters))})
    except TypeError as err:
        raise ValueError(f"{path}: not an MCQ template ({err}); it needs header, option and footer") from None


# the general wording for real chat models (PAD App. C style)
DEFAULT_MCQ_TEMPLATE = McqTemplate(
    header="Which response best answers the question below? Consider helpfulness, correctness and safety.\n\n"
    "Question: {prompt}\n\nResponses:",
    option="\n{letter}. {response}",
    footer="\n\nAnswer with the letter of the best response only.",
)
