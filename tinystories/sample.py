"""``tinystories sample``: stories from a checkpoint, a run directory or a Hugging Face directory.

    tinystories sample --checkpoint runs/demo-... --prompt "Once upon a time" --prompt "Lily saw a dog"
    tinystories sample --checkpoint C --greedy --max-tokens 200
    tinystories sample --checkpoint C --temperature 0.7 --top-p 0.9 --num-samples 4 --seed 1

Prompts of different lengths are batched with left padding; every row keeps its own positions, so a
prompt gives the same story alone or in a batch. Decoding uses the KV cache and stops at <|endoftext|>.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from tinystories.model import GPTNeo, load_checkpoint

__all__ = ["generate_texts", "load_checkpoint", "add_cli_arguments", "run_cli"]


def generate_texts(model: GPTNeo, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 200,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = None, use_cache: bool = True) -> list[str]:
    """The continuation of each prompt (prompt text included), cut at the first <|endoftext|>.

    An empty prompt starts a story from <|endoftext|> (what the models saw between stories)."""
    eot = tokenizer.eot_token
    encoded = [tokenizer.encode(p, allowed_special="all") if p else [eot] for p in prompts]
    device = next(model.parameters()).device
    width = max(len(ids) for ids in encoded)
    batch = torch.full((len(encoded), width), eot, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(encoded):
        batch[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    room = model.config.max_position_embeddings - max(len(ids) for ids in encoded)
    if room <= 0:
        raise ValueError(f"a prompt of {width} tokens fills the model's context of "
                         f"{model.config.max_position_embeddings} tokens")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out = model.generate(batch.to(device), min(max_new_tokens, room), temperature=temperature, top_k=top_k,
                         top_p=top_p, eos_token=eot, attention_mask=mask.to(device), use_cache=use_cache,
                         generator=generator)
    texts = []
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        new = out[row, width:].tolist()
        if eot in new:
            new = new[:new.index(eot)]
        texts.append(tokenizer.decode((ids if prompt else []) + new))
    return texts


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint .pt, run directory or HF model directory")
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt (repeat for a batch); default: one empty prompt")
    parser.add_argument("--num-samples", type=int, default=1, help="stories per prompt")
    parser.add_argument("--max-tokens", type=int, default=200, help="new tokens per story at most")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token")


def run_cli(args: argparse.Namespace) -> int:
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device=args.device)
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num_samples)]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens=args.max_tokens,
                           temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- story {i + 1} ---")
        print(text.strip())
    return 0
