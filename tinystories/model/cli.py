"""``tinystories sample`` (stories from a checkpoint) and ``tinystories export`` (a Hugging Face directory).

tinystories sample --checkpoint runs/demo-... --prompt "Once upon a time" --prompt "Lily saw a dog"
tinystories sample --checkpoint C --greedy --max-tokens 200
tinystories sample --checkpoint C --temperature 0.7 --top-p 0.9 --num-samples 4 --seed 1
tinystories export --checkpoint runs/33m --format hf --out hf/33m
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from tinystories.model.checkpoint import load_checkpoint
from tinystories.model.generate import generate_texts
from tinystories.model.hf import export_hf
from tinystories.runtime.device import autocast_context, resolve_device, resolve_execution
from tinystories.runtime.errors import ConfigError


def _one_line_errors(command: str) -> Callable:
    """Bad input (a missing or foreign checkpoint, an occupied --out) is one line on stderr and exit 2."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except (FileNotFoundError, FileExistsError, ValueError) as exc:
                print(f"tinystories {command}: error: {exc}", file=sys.stderr)
                return 2

        return guarded

    return wrap


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint .pt, run directory or HF model directory")
    parser.add_argument(
        "--prompt", action="append", default=None, help="a prompt (repeat for a batch); default: one empty prompt"
    )
    parser.add_argument("--num-samples", type=int, default=1, help="stories per prompt")
    parser.add_argument("--max-tokens", type=int, default=200, help="new tokens per story at most")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="autocast dtype; auto: as the trainer chooses for this device (bf16 on sm_80+, "
        "fp16 on sm_7x, fp32 on CPU)",
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token")


@_one_line_errors("sample")
def run_sample(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device, 0)
        # The trainer's resolution; decoding with the KV cache runs the plain path, eager.
        execution = resolve_execution(device, dtype=args.dtype, impl="torch", compile=False, given=("dtype",))
    except ConfigError as exc:
        print(f"tinystories sample: error: {exc}", file=sys.stderr)
        return 2
    model, tokenizer, _ = load_checkpoint(args.checkpoint, device=device)
    print(execution.describe(), file=sys.stderr)  # once the checkpoint is known good: a bad one is one line
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num_samples)]
    with autocast_context(device, execution.dtype):
        texts = generate_texts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=args.max_tokens,
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


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint .pt file or a run directory (its latest checkpoint is used)"
    )
    parser.add_argument("--format", choices=["hf"], default="hf", help="output format (Hugging Face GPTNeoForCausalLM)")
    parser.add_argument("--out", required=True, help="output directory (must not exist or be empty)")


@_one_line_errors("export")
def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # say so before loading the model
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new one")
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    out = export_hf(model, args.out, tokenizer)
    print(f"exported {args.checkpoint} to {out} (GPTNeoForCausalLM, {model.num_parameters() / 1e6:.2f}M params)")
    return 0
