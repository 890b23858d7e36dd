"""``tinystories synth``: write a TinyStories-style corpus with any OpenAI-compatible model, and ``synth stats``.

tinystories synth --num-stories 100000 --out stories.jsonl --model gpt-4o-mini --concurrency 128 --max-cost-usd 50
tinystories synth --num-stories 20000 --out instruct.jsonl --instruct --ood-combination words,summary
tinystories synth stats stories.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinystories.llm.client import client_config_from_args
from tinystories.runtime.arguments import (
    ArgumentParser,
    add_instruct_argument,
    add_llm_client_arguments,
    add_max_new_tokens_argument,
    add_no_progress_argument,
    add_num_stories_argument,
    add_out_argument,
    add_seed_argument,
    add_temperature_argument,
    dataclass_options,
    one_line_errors,
)
from tinystories.runtime.errors import WorkFailed
from tinystories.synth.job import SynthConfig, side_path, synthesize
from tinystories.synth.prompts import DEFAULT_OOD_COMBINATION, INSTRUCTION_TYPES
from tinystories.synth.stats import corpus_stats, plot_stats, print_stats


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{stats}")
    stats = sub.add_parser("stats", help="counts, lengths, vocabulary coverage, diversity, features (table + PNG)")
    stats.add_argument("file", type=Path, metavar="FILE", help="a corpus JSONL that synth wrote")
    add_out_argument(stats, "the plots' PNG (default: FILE.stats.png)")
    stats.deprecate("--png", "--out")
    add_num_stories_argument(parser, note="required here (story ids 0..N-1 for this seed)")
    parser.deprecate("--n", "--num-stories")
    add_out_argument(parser, "the corpus JSONL (appended; run the same command again to resume)")
    parser.add_argument("--model", default="gpt-4o-mini", help="the writer LLM")
    add_llm_client_arguments(parser, cost_note="counting every run of this --out")
    add_seed_argument(parser)
    add_instruct_argument(parser, note="write instructions (words, summary, features) before each story")
    parser.add_argument(
        "--ood-combination",
        default=",".join(DEFAULT_OOD_COMBINATION),
        help=f"instruction types held out for the OOD split, from {','.join(INSTRUCTION_TYPES)}",
    )
    parser.add_argument("--batch-api", action="store_true", help="use the OpenAI Batch API (half price, slower)")
    parser.add_argument("--batch-poll-s", type=float, default=30.0, help="seconds between looks at a batch's status")
    parser.add_argument(
        "--backend",
        choices=("openai", "template"),
        default="openai",
        help="'template': offline template stories, no API",
    )
    add_max_new_tokens_argument(parser, default=1024, note="default 1024 here (the writer LLM's max_tokens)")
    parser.deprecate("--max-tokens", "--max-new-tokens")
    add_temperature_argument(parser, note="the writer LLM's")
    parser.add_argument("--min-words", type=int, default=50, help="shorter stories are flagged too_short")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.8, help="0 disables near-dup search")
    parser.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        default="interval",
        help="when records reach the disk: after each one, every few seconds, or when the OS decides",
    )
    add_no_progress_argument(parser)


@one_line_errors("tinystories synth")
def run_cli(args: argparse.Namespace) -> int:
    if args.action == "stats":
        stats = corpus_stats(args.file)
        print_stats(stats, args.file)
        png = args.out or args.file.with_name(args.file.name + ".stats.png")
        plot_stats(stats, png)
        print(f"plots: {png}")
        return 0
    if args.num_stories is None or args.out is None:
        raise ValueError("--num-stories and --out are required (or use: tinystories synth stats FILE)")
    config = SynthConfig(
        **{
            **dataclass_options(SynthConfig, args),
            "n": args.num_stories,
            "max_tokens": args.max_new_tokens,
            "ood_combination": tuple(t.strip() for t in args.ood_combination.split(",") if t.strip()),
            "progress": not args.no_progress,
            "client": client_config_from_args(args),
        }
    )
    summary = synthesize(config)
    print(
        f"{args.out}: {summary.written} new records ({summary.flagged} flagged: {dict(summary.flag_counts)}), "
        f"{summary.already_done} from earlier runs, {summary.failed} failed requests "
        f"(see {side_path(args.out, '.failed')}), ${summary.cost_usd:.4f} this run"
        + (f"; stopped: {summary.stopped}" if summary.stopped else "")
    )
    if summary.failed:  # the job is not done: say so in the exit status, so no script takes it for finished
        raise WorkFailed(f"{summary.failed} requests failed; run the same command again to retry them")
    if summary.stopped not in (None, "budget"):
        raise WorkFailed(f"stopped: {summary.stopped}; run the same command again to go on")
    return 0
