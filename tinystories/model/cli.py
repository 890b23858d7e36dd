"""``tinystories sample`` (stories from a checkpoint) and ``tinystories export`` (a Hugging Face directory).

tinystories sample runs/demo-... --prompt "Once upon a time" --prompt "Lily saw a dog"
tinystories sample C --greedy --max-new-tokens 200
tinystories sample C --temperature 0.7 --top-p 0.9 --num-samples 4 --seed 1
tinystories export runs/33m --format hf --out hf/33m [--push-to-hub me/tinystories-33m]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinystories.model.card import DEFAULT_LICENSE, TrainingFacts, model_card, training_facts
from tinystories.model.checkpoint import (
    checkpoint_model,
    is_hf_directory,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
)
from tinystories.model.generate import generate_texts, prompt_ids
from tinystories.model.hf import export_hf
from tinystories.model.hub import check_push, push_to_hub
from tinystories.runtime.arguments import (
    ArgumentParser,
    add_checkpoint_arguments,
    add_device_arguments,
    add_max_new_tokens_argument,
    add_num_samples_argument,
    add_out_argument,
    add_sampling_arguments,
    one_line_errors,
)
from tinystories.runtime.device import autocast_context, resolve_device, resolve_execution


def add_sample_arguments(parser: ArgumentParser) -> None:
    add_checkpoint_arguments(parser, note="also a Hugging Face GPTNeoForCausalLM folder")
    parser.deprecate("--checkpoint", "CHECKPOINT")
    parser.add_argument(
        "--prompt", action="append", default=None, help="a prompt (repeat for a batch); default: one empty prompt"
    )
    add_num_samples_argument(parser)
    add_max_new_tokens_argument(parser)
    parser.deprecate("--max-tokens", "--max-new-tokens")
    add_sampling_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token")


@one_line_errors("tinystories sample")
def run_sample(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, 0)
    # The trainer's resolution; decoding with the KV cache runs the plain path, eager.
    execution = resolve_execution(device, dtype=args.dtype, impl="torch", compile=False, given=("dtype",))
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device=device)
    print(execution.describe(), file=sys.stderr)  # once the checkpoint is known good: a bad one is one line
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num_samples)]
    context, longest = model.config.max_position_embeddings, max(len(prompt_ids(tokenizer, p)) for p in prompts)
    if longest < context < longest + args.max_new_tokens:  # a prompt that fills the context is generate_texts' error
        print(
            f"tinystories sample: note: --max-new-tokens {args.max_new_tokens} does not fit the model's context of "
            f"{context} tokens: at most {context - longest} new tokens follow the longest prompt ({longest} tokens)",
            file=sys.stderr,
        )
    with autocast_context(device, execution.dtype):
        texts = generate_texts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            use_cache=not args.no_cache,
        )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- story {i + 1} ---")
        print(text.strip())
    return 0


def add_export_arguments(parser: ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.deprecate("--checkpoint", "CHECKPOINT")
    parser.add_argument("--format", choices=["hf"], default="hf", help="output format (Hugging Face GPTNeoForCausalLM)")
    add_out_argument(parser, "the model folder (must not exist or be empty)", required=True)
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload the folder to this Hub model repository, OWNER/NAME (token: HF_TOKEN; Hub: HF_ENDPOINT)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument(
        "--license",
        default=DEFAULT_LICENSE,
        help=f"the model card's licence id (default {DEFAULT_LICENSE}, the data's)",
    )


@one_line_errors("tinystories export")
def run_export(args: argparse.Namespace) -> int:
    out = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # say so before loading the model
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new one")
    if args.push_to_hub:
        check_push(args.push_to_hub)
    source = Path(args.checkpoint)
    if source.is_dir() and not list_checkpoints(source) and is_hf_directory(source):
        model, tokenizer, _ = load_checkpoint(source)
        facts = TrainingFacts()
    else:
        payload = read_checkpoint(source)
        model, tokenizer = checkpoint_model(payload, source)
        facts = training_facts(payload)
    card = model_card(
        args.push_to_hub or str(out), model.config, model.num_parameters(), facts, sys.argv[1:], license=args.license
    )
    out = export_hf(model, out, tokenizer, card=card)
    print(f"exported {args.checkpoint} to {out} (GPTNeoForCausalLM, {model.num_parameters() / 1e6:.2f}M params)")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0
