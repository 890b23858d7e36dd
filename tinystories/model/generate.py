"""Stories from a model: a row's settings and token choice (:class:`Row`, :func:`choose_token`), and the texts
of a batch of prompts (:func:`generate_texts`, through :func:`generate_rows`).

Every row keeps its own positions, so a prompt gives the same story alone or in a batch. Each row is sampled
alone, with its own settings and its own random generator (row ``r`` of a call seeded ``s`` uses seed ``s + r``),
so a row's story never depends on which other rows share its batch. Decoding runs in the one engine,
:mod:`tinystories.model.engine` (continuous batching over a per-slot KV cache), and stops at <|endoftext|>.
The trainer's sampled stories, ``tinystories sample`` and the evaluation's students come from
:func:`generate_texts`; ``tinystories serve`` feeds the same engine from its requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tinystories.model.engine import Engine, Job
from tinystories.model.gpt_neo import GPTNeo, sample_next_token
from tinystories.tokenizer import Tokenizer


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of token rows padded on the left to the longest, so that every row's next
    token falls in the same column."""
    width = max(len(ids) for ids in rows)
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(rows):
        batch[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    return batch, mask


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """A prompt's tokens; an empty prompt is <|endoftext|>, where the models saw every story begin."""
    return tokenizer.encode(prompt, allowed_special="all") if prompt else [tokenizer.eot_token]


@dataclass
class Row:
    """One story to continue: its prompt tokens, its own sampling settings and random generator, and an
    optional ``on_token(token) -> keep_going`` called with each new token as it is sampled.

    ``presence_penalty``, ``frequency_penalty`` and ``logit_bias`` (token id -> added score) change the scores
    before sampling as OpenAI's API defines them, from the tokens this row chose so far (``counts``). With
    ``logprobs=k`` each choice also records the chosen token's log-probability (``chosen_logprobs``) and the
    ``k`` most likely tokens with theirs (``top_logprobs``), both read from the model's own distribution
    (before temperature, penalties and bias).
    """

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    on_token: Callable[[int], bool] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None
    counts: dict[int, int] = field(default_factory=dict)
    chosen_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


def _adjusted(row: Row, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` (1, V) with the row's penalties and bias: ``score[j] -= count[j] * frequency_penalty +
    (count[j] > 0) * presence_penalty``, then ``score[j] += logit_bias[j]``."""
    penalised = row.counts and (row.presence_penalty or row.frequency_penalty)
    if not penalised and not row.logit_bias:
        return logits
    logits = logits.float().clone()
    if penalised:
        ids = torch.tensor(list(row.counts), dtype=torch.long, device=logits.device)
        counts = torch.tensor(list(row.counts.values()), dtype=logits.dtype, device=logits.device)
        logits[0, ids] -= counts * row.frequency_penalty + row.presence_penalty
    if row.logit_bias:
        ids = torch.tensor(list(row.logit_bias), dtype=torch.long, device=logits.device)
        logits[0, ids] += torch.tensor(list(row.logit_bias.values()), dtype=logits.dtype, device=logits.device)
    return logits


def choose_token(row: Row, logits: torch.Tensor) -> int:
    """The next token of ``row`` from its next-position ``logits`` (1, V), sampled with the row's own settings
    and generator. Everything done per row per step lives here, whichever loop drives the batch."""
    token = int(
        sample_next_token(
            _adjusted(row, logits),
            temperature=row.temperature,
            top_k=row.top_k,
            top_p=row.top_p,
            generator=row.generator,
        )
    )
    row.counts[token] = row.counts.get(token, 0) + 1
    if row.logprobs is not None:
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        row.chosen_logprobs.append(float(logprobs[token]))
        row.top_logprobs.append(_top(logprobs, row.logprobs))
    return token


def choose_tokens(rows: Sequence[Row], logits: torch.Tensor) -> list[int]:
    """:func:`choose_token` for each row of a batch, ``logits`` (rows, V): the engine's one call per step. The
    plain greedy rows (no penalty, bias or log-probs) take one argmax together; every other row is chosen alone."""
    plain = [
        not (r.temperature or r.logit_bias or r.presence_penalty or r.frequency_penalty or r.logprobs is not None)
        for r in rows
    ]
    tokens = [0] * len(rows)
    if any(plain):
        greedy = logits if all(plain) else logits[[i for i, p in enumerate(plain) if p]]
        best = iter(sample_next_token(greedy, temperature=0).tolist())
        for i, row in enumerate(rows):
            if plain[i]:
                tokens[i] = token = next(best)
                row.counts[token] = row.counts.get(token, 0) + 1
    for i, row in enumerate(rows):
        if not plain[i]:
            tokens[i] = choose_token(row, logits[i : i + 1])
    return tokens


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist()))


@dataclass
class PromptScore:
    """Each prompt token's log-probability given the tokens before it (``None`` for the first, which has
    nothing before it) and the ``k`` most likely tokens at its position (``None`` for the first)."""

    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


@torch.no_grad()
def score_prompt(model: GPTNeo, prompt: Sequence[int], k: int = 0) -> PromptScore:
    """The log-probabilities of ``prompt``'s tokens under ``model`` (one forward pass over the prompt, in eval
    mode, no dropout), as OpenAI's ``echo`` + ``logprobs`` report them. The prompt must fit in the context."""
    if model.training:
        raise ValueError("score_prompt needs the model in eval mode (model.eval())")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    logits = model(ids).logits
    assert logits is not None
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # position t predicts token t + 1
    chosen = logprobs.gather(-1, ids[0, 1:, None])[:, 0].tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if k > 0:
        values, best = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
        top = [list(zip(i, v)) for i, v in zip(best.tolist(), values.tolist())]
    return PromptScore([None, *chosen], [None, *top])


def generate_rows(model: GPTNeo, rows: Sequence[Row], eos: int, *, use_cache: bool = True) -> list[list[int]]:
    """The new tokens of each row (without the <|endoftext|> that ends it), all rows batched at once through
    the engine (:class:`tinystories.model.engine.Engine`).

    A row stops at ``eos``, after its own ``max_new_tokens``, or when its ``on_token`` returns False, and
    leaves the batch at once. Each row's prompt plus its ``max_new_tokens`` must fit in the context.
    ``use_cache=False`` recomputes every row's whole prefix each token instead (``model.generate``, the
    reference the engine is tested against).
    """
    if not use_cache:
        return _generate_without_cache(model, rows, eos)
    engine = Engine(model, eos, choose_tokens, max_batch=max(1, len(rows)))
    job = Job(list(rows))
    engine.submit(job)
    engine.run()
    return job.tokens


def _generate_without_cache(model: GPTNeo, rows: Sequence[Row], eos: int) -> list[list[int]]:
    batch, mask = left_pad([row.prompt for row in rows], eos)
    device = next(model.parameters()).device
    new: list[list[int]] = [[] for _ in rows]
    done = [row.max_new_tokens <= 0 for row in rows]

    def choose(logits: torch.Tensor) -> torch.Tensor:
        tokens = []
        for i, row in enumerate(rows):
            token = eos if done[i] else choose_token(row, logits[i : i + 1])
            tokens.append(token)
            if done[i] or token == eos:
                done[i] = True
                continue
            new[i].append(token)
            keep_going = row.on_token(token) if row.on_token is not None else True
            done[i] = not keep_going or len(new[i]) >= row.max_new_tokens
        return torch.tensor(tokens, dtype=torch.long, device=logits.device)

    if not all(done):
        was_training = model.training
        model.eval()
        try:  # a row that reaches its own limit before the others is closed by the eos `choose` gives it next
            steps = max(row.max_new_tokens for row in rows)
            model.generate(
                batch.to(device), steps, eos_token=eos, attention_mask=mask.to(device), use_cache=False, choose=choose
            )
        finally:
            model.train(was_training)
    return new


def generate_texts(
    model: GPTNeo,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    include_prompt: bool = True,
    fit: Literal["shorten_output", "cut_prompt"] = "shorten_output",
) -> list[str]:
    """The continuation of each prompt (after the prompt's text unless ``include_prompt=False``), cut at the
    first <|endoftext|>. An empty prompt starts a story from <|endoftext|> (what the models saw between
    stories). temperature=0 is greedy; ``seed`` makes sampling repeatable: prompt ``r`` is sampled with its
    own generator seeded ``seed + r``.

    When a prompt and ``max_new_tokens`` do not fit in the context, ``fit="shorten_output"`` generates
    fewer tokens (an error if a prompt fills the context alone) and ``fit="cut_prompt"`` keeps only the
    end of the prompt (the words next to the cut matter most; an error if no prompt token fits).
    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    context = model.config.max_position_embeddings
    eot = tokenizer.eot_token
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    if fit == "cut_prompt":
        room = context - max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {context}-token context"
            )
        encoded = [ids[-room:] for ids in encoded]
    elif fit != "shorten_output":
        raise ValueError(f"fit must be 'shorten_output' or 'cut_prompt', got {fit!r}")
    longest = max(len(ids) for ids in encoded)
    if longest >= context:
        raise ValueError(f"a prompt of {longest} tokens fills the model's context of {context} tokens")
    device = next(model.parameters()).device
    rows = [
        Row(
            ids,
            min(max_new_tokens, context - longest),
            temperature,
            top_k,
            top_p,
            torch.Generator(device=device).manual_seed(seed + r) if seed is not None else None,
        )
        for r, ids in enumerate(encoded)
    ]
    new = generate_rows(model, rows, eot, use_cache=use_cache)
    return [
        tokenizer.decode((ids if include_prompt and prompt else []) + tokens)
        for prompt, ids, tokens in zip(prompts, encoded, new)
    ]
