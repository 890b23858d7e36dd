"""Stories from a model: the one batched, left-padded, KV-cache text sampler.

Prompts of different lengths are batched with left padding; every row keeps its own positions, so a
prompt gives the same story alone or in a batch. Decoding uses the KV cache and stops at <|endoftext|>.
The trainer's sampled stories, ``tinystories sample`` and the evaluation's students all come from
:func:`generate_texts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from tinystories.model.gpt_neo import GPTNeo
from tinystories.tokenizer import Tokenizer


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of token rows padded on the left to the longest, so that every row's next
    token falls in the same column."""
    width = max(len(ids) for ids in rows)
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(rows):
        batch[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return batch, mask


def generate_texts(model: GPTNeo, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 200,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, use_cache: bool = True, include_prompt: bool = True,
                   fit: Literal["shorten_output", "cut_prompt"] = "shorten_output") -> list[str]:
    """The continuation of each prompt (after the prompt's text unless ``include_prompt=False``), cut at the
    first <|endoftext|>. An empty prompt starts a story from <|endoftext|> (what the models saw between
    stories). temperature=0 is greedy; ``seed`` makes sampling repeatable.

    When a prompt and ``max_new_tokens`` do not fit in the context, ``fit="shorten_output"`` generates
    fewer tokens (an error if a prompt fills the context alone) and ``fit="cut_prompt"`` keeps only the
    end of the prompt (the words next to the cut matter most; an error if no prompt token fits).
    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    context = model.config.max_position_embeddings
    eot = tokenizer.eot_token
    encoded = [tokenizer.encode(p, allowed_special="all") if p else [eot] for p in prompts]
    if fit == "cut_prompt":
        room = context - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {context}-token "
                             f"context")
        encoded = [ids[-room:] for ids in encoded]
    elif fit != "shorten_output":
        raise ValueError(f"fit must be 'shorten_output' or 'cut_prompt', got {fit!r}")
    longest = max(len(ids) for ids in encoded)
    if longest >= context:
        raise ValueError(f"a prompt of {longest} tokens fills the model's context of {context} tokens")
    device = next(model.parameters()).device
    batch, mask = left_pad(encoded, eot)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        out = model.generate(batch.to(device), min(max_new_tokens, context - longest), temperature=temperature,
                             top_k=top_k, top_p=top_p, eos_token=eot, attention_mask=mask.to(device),
                             use_cache=use_cache, generator=generator)
    finally:
        model.train(was_training)
    texts = []
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        new = out[row, batch.shape[1]:].tolist()
        if eot in new:
            new = new[:new.index(eot)]
        texts.append(tokenizer.decode((ids if include_prompt and prompt else []) + new))
    return texts
