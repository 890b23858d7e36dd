"""``tinystories synth``: write a TinyStories-style corpus with any OpenAI-compatible model, and ``synth stats``.

tinystories synth --n 100000 --out stories.jsonl --model gpt-4o-mini --concurrency 128 --max-cost-usd 50
tinystories synth --n 20000 --out instruct.jsonl --instruct --ood-combination words,summary
tinystories synth stats stories.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinystories.llm.client import add_client_arguments, client_config_from_args
from tinystories.runtime.arguments import dataclass_options
from tinystories.synth.job import SynthConfig, side_path, synthesize
from tinystories.synth.prompts import DEFAULT_OOD_COMBINATION, INSTRUCTION_TYPES
from tinystories.synth.stats import corpus_stats, plot_stats, print_stats


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{stats}")
    stats = sub.add_parser("stats", help="counts, lengths, vocabulary coverage, diversity, features (table + PNG)")
    stats.add_argument("file", type=Path)
    stats.add_argument("--png", type=Path, help="where to save the plots (default: FILE.stats.png)")
    parser.add_argument("--n", type=int, help="number of stories (ids 0..n-1 for this seed)")
    parser.add_argument("--out", type=Path, help="output JSONL (appended; re-run the same command to resume)")
    parser.add_argument("--model", default="gpt-4o-mini")
    add_client_arguments(parser, cost_help="stop cleanly before spending more than this (all runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruct", action="store_true", help="precede stories with instructions (docs/synthesis.md)")
    parser.add_argument(
        "--ood-combination",
        default=",".join(DEFAULT_OOD_COMBINATION),
        help=f"instruction types held out for the OOD split, from {','.join(INSTRUCTION_TYPES)}",
    )
    parser.add_argument("--batch-api", action="store_true", help="use the OpenAI Batch API (half price, slower)")
    parser.add_argument("--batch-poll-s", type=float, default=30.0)
    parser.add_argument(
        "--backend",
        choices=("openai", "template"),
        default="openai",
        help="'template': offline template stories, no API",
    )
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--min-words", type=int, default=50, help="shorter stories are flagged too_short")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.8, help="0 disables near-dup search")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    if args.action == "stats":
        stats = corpus_stats(args.file)
        print_stats(stats, args.file)
        png = args.png or args.file.with_name(args.file.name + ".stats.png")
        plot_stats(stats, png)
        print(f"plots: {png}")
        return 0
    if args.n is None or args.out is None:
        print("tinystories synth: --n and --out are required (or use: tinystories synth stats FILE)", file=sys.stderr)
        return 2
    try:
        config = SynthConfig(
            **{
                **dataclass_options(SynthConfig, args),
                "ood_combination": tuple(t.strip() for t in args.ood_combination.split(",") if t.strip()),
                "progress": not args.no_progress,
                "client": client_config_from_args(args),
            }
        )
        summary = synthesize(config)
    except ValueError as e:  # bad options or files: a clear message, not a traceback
        print(f"tinystories synth: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary.written} new records ({summary.flagged} flagged: {dict(summary.flag_counts)}), "
        f"{summary.already_done} from earlier runs, {summary.failed} failed requests "
        f"(see {side_path(args.out, '.failed')}), ${summary.cost_usd:.4f} this run"
        + (f"; stopped: {summary.stopped}" if summary.stopped else "")
    )
    if summary.failed:  # the job is not done: say so in the exit status, so no script takes it for finished
        print(
            f"tinystories synth: {summary.failed} requests failed; run the same command again to retry them",
            file=sys.stderr,
        )
    return 0 if summary.stopped in (None, "budget") and not summary.failed else 1
