"""Scoring responses with a model: response-only token log-probs, rewards, raw logits for IRL, MCQ selection.

Every function is batched, computes log-softmax in chunks of positions (no full (B, T, V) log-prob tensor is
kept), and caches its result by (model fingerprint, tokenizer, texts, parameters), so repeated scoring in an
alpha sweep or a rerun is nearly free.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from tqdm.auto import tqdm

from workbench.cache import StageCache, content_hash, default_cache, model_fingerprint, tokenizer_fingerprint
from workbench.encoding import DEFAULT_MCQ_TEMPLATE, McqTemplate, PromptLike, as_messages, collate_examples, prompt_text


def gather_token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """log softmax(logits)[label] per position, computed ``chunk`` positions at a time.

    Args:
        logits: (B, T, V), ``logits[:, t]`` predicts ``labels[:, t]``.
        labels: (B, T) token ids (any value where masked; clamped to a valid id).
    Returns:
        token_logps: (B, T).
    """
    out = []
    for start in range(0, logits.shape[1], chunk):
        part = logits[:, start : start + chunk].float()  # (B, c, V)
        ids = labels[:, start : start + chunk].clamp(min=0).unsqueeze(-1)
        # $\log p(y_t) = f_t - \log Z_t$
        out.append(part.gather(-1, ids).squeeze(-1) - torch.logsumexp(part, dim=-1))
    return torch.cat(out, dim=1)


def _score_key(model, tokenizer, prompts, responses, **params):
    return {
        "model": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "texts": content_hash([[as_messages(p) for p in prompts], list(responses)]),
        **params,
    }


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    return tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False)


def response_token_logps(
    model,
    tokenizer,
    prompts: Sequence[PromptLike],
    responses: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    cache: StageCache | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of each response given its prompt, over response tokens only.

    Returns:
        token_logps: (N, T) log p(y_t | y_<t, x), 0 where masked.
        mask: (N, T) bool, True on the response's tokens (its eos included).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
    cache = cache or default_cache()
    key = _score_key(model, tokenizer, prompts, responses, stage="token_logps", max_length=max_length, packed=True)

    def compute():
        rows = []
        was_training = model.training
        model.eval()
        for start in _batches(len(prompts), batch_size, "scoring", progress):
            batch = collate_examples(
                tokenizer, prompts[start : start + batch_size], responses[start : start + batch_size], max_length
            )
            with torch.no_grad():
                logits = model(
                    input_ids=batch["input_ids"].to(model.device),
                    attention_mask=batch["attention_mask"].to(model.device),
                ).logits
            # position t-1 predicts token t
            token_logps = gather_token_logps(logits[:, :-1], batch["input_ids"][:, 1:].to(logits.device)).cpu()
            mask = batch["response_mask"][:, 1:]
            for lp, m in zip(token_logps, mask):
                rows.append(lp[m])
        model.train(was_training)
        # packed once: the cache stores two tensors, not one tensor per response
        width = max((len(r) for r in rows), default=0)
        packed = torch.zeros(len(rows), width)
        packed_mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            packed[i, : len(row)] = row
            packed_mask[i, : len(row)] = True
        return packed, packed_mask

    token_logps, mask = cache.get_or_compute("token_logps", key, compute)
    return token_logps, mask


def avg_logp_rewards(model, tokenizer, prompts, responses, **kwargs) -> torch.Tensor:
    """PAD Eq. (7) rewards r(y|x) = (1/|y|) log p(y|x) of each response: (N,)."""
    from workbench.losses.pad import avg_logp_reward

    token_logps, mask = response_token_logps(model, tokenizer, prompts, responses, **kwargs)
    return avg_logp_reward(token_logps, mask)


def sequence_logps(model, tokenizer, prompts, responses, **kwargs) -> torch.Tensor:
    """log p(y|x) = Σ_t log p(y_t | y_<t, x) of each response: (N,)."""
    token_logps, mask = response_token_logps(model, tokenizer, prompts, responses, **kwargs)
    return (token_logps * mask).sum(-1)


def response_logits(model, tokenizer, prompt: PromptLike, response: str) -> dict[str, torch.Tensor]:
    """Raw logits over one response, for the IRL view (PAD Eq. 3-5).

    Returns ``logits (T+1, V)`` where row t (t < T) predicts response token t and row T is the position after
    the last response token; ``labels (T,)``; ``logits_before`` is row 0's context (the prompt end).
    """
    batch = collate_examples(tokenizer, [prompt], [response])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0].float()
    positions = batch["response_mask"][0].nonzero().squeeze(-1)  # token positions of the response
    # logits at position p predict token p+1: rows predicting each response token, plus the one after the last
    rows = torch.cat([positions - 1, positions[-1:]])
    return {"logits": logits[rows].cpu(), "labels": batch["input_ids"][0, positions].cpu()}


# --- multiple-choice selection probability (PAD Eq. 8) ---


def option_letter_ids(tokenizer, context: str, letters: Sequence[str]) -> list[list[int]]:
    """Token ids that spell each option letter right after ``context`` (the rendered MCQ prompt).

    Both the bare letter and the space-prefixed letter are accepted when each is a single token (SentencePiece
    and byte-level BPE tokenizers differ here); a letter with no single-token spelling is an error.
    """
    prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
    result = []
    for letter in letters:
        ids = []
        for spelling in (letter, " " + letter):
            full = tokenizer(context + spelling, add_special_tokens=False)["input_ids"]
            if (full[: len(prefix)] == prefix and len(full) == len(prefix) + 1
                    and full[-1] != tokenizer.unk_token_id):  # an unknown word is no letter
                ids.append(full[-1])
        if not ids:
            raise ValueError(
                f"option letter {letter!r} is not a single token after the MCQ prompt for this tokenizer "
                f"({type(tokenizer).__name__}); pass an McqTemplate whose `letters` are single tokens"
            )
        result.append(sorted(set(ids)))
    flat = [i for ids in result for i in ids]
    if len(flat) != len(set(flat)):
        raise ValueError(f"option letters {list(letters)} share token ids {result}; choose distinct letters")
    return result


def _orders(n: int, order: str, rng: random.Random) -> list[list[int]]:
    """Option orders to present: the response at position j of order o is ``responses[o[j]]``."""
    if order == "identity":
        return [list(range(n))]
    if order == "random":  # PAD: each response is mapped to a random letter
        return [rng.sample(range(n), n)]
    if order == "cyclic":  # every response appears once under every letter: removes position bias
        return [[(j + shift) % n for j in range(n)] for shift in range(n)]
    raise ValueError(f"order={order!r}; use 'random' (the paper), 'cyclic' or 'identity'")


def mcq_selection_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    response_groups: Sequence[Sequence[str]],
    *,
    template: McqTemplate = DEFAULT_MCQ_TEMPLATE,
    order: str = "random",
    seed: int = 0,
    batch_size: int = 32,
    cache: StageCache | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """log p_sel(y_i) (PAD Eq. 8): the judge's probability of y_i's letter, renormalised over the option letters.

    ``order='random'`` maps responses to letters at random (the paper); ``'cyclic'`` averages the selection
    probability over the n cyclic shifts of the order, so no response keeps a favoured position.

    Args:
        prompts: P user questions (plain text, placed into the template).
        response_groups: P groups of n responses each.
    Returns:
        log_p_sel: (P, n), each row a log-distribution over that group's responses.
    """
    n_options = {len(g) for g in response_groups}
    if len(n_options) != 1:
        raise ValueError(f"response groups have different sizes {sorted(n_options)}; MCQ needs equal-size groups")
    if len(prompts) != len(response_groups):
        raise ValueError(f"{len(prompts)} prompts but {len(response_groups)} response groups")
    (n,) = n_options
    cache = cache or default_cache()
    key = _score_key(
        model, tokenizer, list(prompts), [list(g) for g in response_groups],
        stage="mcq", template=repr(template), order=order, seed=seed,
    )

    def compute():
        rng = random.Random(seed)
        jobs = []  # (group index, order) per rendered MCQ prompt
        texts = []
        for g, (prompt, group) in enumerate(zip(prompts, response_groups)):
            for o in _orders(n, order, rng):
                jobs.append((g, o))
                question = template.render(prompt, [group[i] for i in o])
                texts.append(prompt_text(tokenizer, question))
        letter_ids = option_letter_ids(tokenizer, texts[0], template.letters[:n])
        log_sel = torch.full((len(prompts), n), float("-inf"))
        counts = torch.zeros(len(prompts), 1)
        was_training = model.training
        model.eval()
        for start in _batches(len(texts), batch_size, "mcq", progress):
            chunk = texts[start : start + batch_size]
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in chunk]
            width = max(map(len, encoded))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
            attention = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
            with torch.no_grad():
                logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits
            last = torch.tensor([len(e) - 1 for e in encoded], device=logits.device)
            next_logits = logits[torch.arange(len(chunk), device=logits.device), last].float().cpu()  # (b, V)
            # a letter's logit sums its spellings: $\log \sum_{s} e^{f(s)}$
            letter_logits = torch.stack([torch.logsumexp(next_logits[:, i], -1) for i in letter_ids], -1)
            # renormalise over the option letters: $p_{sel}(c_j) = e^{f(c_j)} / \sum_{j'} e^{f(c_{j'})}$
            letter_logps = letter_logits.log_softmax(-1)  # (b, n) by letter position
            for (g, o), row in zip(jobs[start : start + batch_size], letter_logps):
                by_response = torch.empty(n)
                by_response[torch.tensor(o)] = row
                log_sel[g] = torch.logaddexp(log_sel[g], by_response)
                counts[g] += 1
        model.train(was_training)
        # mean probability over the presented orders
        return log_sel - counts.log()

    return cache.get_or_compute("mcq", key, compute)
