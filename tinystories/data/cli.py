"""``tinystories data download|prepare|stats|verify``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from tinystories.data.download import DATASETS, download, list_files
from tinystories.data.inspect import stats, verify
from tinystories.data.writer import DEFAULT_LEVEL, DEFAULT_SHARD_TOKENS, prepare
from tinystories.runtime.arguments import (
    ArgumentParser,
    add_instruct_argument,
    add_no_progress_argument,
    add_out_argument,
    add_threads_argument,
    add_tokenizer_argument,
    add_vocab_size_argument,
    one_line_errors,
)
from tinystories.runtime.errors import WorkFailed

if TYPE_CHECKING:
    from rich.console import Console


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = sub.add_parser("download", help="fetch the published TinyStories files from the Hugging Face Hub")
    d.add_argument("names", nargs="*", metavar="NAME", help=f"{', '.join(DATASETS)} or all")
    add_out_argument(d, "the folder to put the files in (required unless --list)")
    d.add_argument("--revision", default="main", help="branch, tag or commit of roneneldan/TinyStories")
    d.add_argument("--list", action="store_true", help="show the names, their files and sizes")
    add_no_progress_argument(d)
    p = sub.add_parser("prepare", help="tokenize corpora into zstd token shards")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help=".txt / .jsonl (optionally .zst), .json arrays, TinyStories_all_data.tar.gz, .parquet",
    )
    add_tokenizer_argument(p, required=True, note="required here (the shards hold this tokenizer's ids)")
    add_out_argument(p, "the dataset folder", required=True)
    add_vocab_size_argument(
        p, note="restrict the tokenizer to its N most frequent tokens on these inputs (paper: 10000); default: all"
    )
    p.deprecate("--top-k", "--vocab-size")
    p.add_argument(
        "--val-fraction", type=float, default=0.01, help="share of stories (by text hash) held out for validation"
    )
    p.add_argument(
        "--val-input",
        action="append",
        default=[],
        metavar="FILE",
        help="a held-out file that forms the validation split instead (repeatable; --val-fraction unused)",
    )
    add_threads_argument(p)
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument(
        "--level",
        type=int,
        default=None,
        help=f"a plain zstd level (default: level {DEFAULT_LEVEL} with a shorter search, ~2.05x smaller than uint16)",
    )
    add_instruct_argument(
        p, note="render the records' words/features/summary (JSONL, .json, .tar.gz) in the Instruct layout"
    )
    add_no_progress_argument(p)
    s = sub.add_parser("stats", help="counts, tokens-per-story histogram, top tokens")
    s.add_argument("data_dir", metavar="DIR", help="a prepared dataset folder")
    s.add_argument("--top-tokens", type=int, default=20, metavar="N", help="how many frequent tokens to list")
    s.deprecate("--top", "--top-tokens")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    v = sub.add_parser("verify", help="check every shard's sha256 and block hashes")
    v.add_argument("data_dir", metavar="DIR", help="a prepared dataset folder")


@one_line_errors("tinystories data")
def run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.action == "download":
        return _download(args, console)
    if args.action == "prepare":
        return _prepare(args, console)
    if args.action == "verify":
        return _verify(args, console)
    return _stats(args, console)


def _prepare(args: argparse.Namespace, console: Console) -> int:
    index = prepare(
        args.inputs,
        args.out,
        args.tokenizer,
        top_k=args.vocab_size,
        val_fraction=args.val_fraction,
        threads=args.threads,
        shard_tokens=args.shard_tokens,
        progress=not args.no_progress,
        instruct=args.instruct,
        val_inputs=args.val_input,
        level=args.level,
    )
    for split, info in index["splits"].items():
        console.print(
            f"{split}: {info['stories']:,} stories, {info['tokens']:,} tokens, "
            f"{len(info['shards'])} shards, {info['bytes'] / 1e6:.1f} MB"
        )
    console.print(f"wrote {args.out} in {index.get('prepare_seconds', 0):.1f} s")
    return 0


def _verify(args: argparse.Namespace, console: Console) -> int:
    report = verify(args.data_dir)
    for problem in report["problems"]:
        console.print(f"[red]FAIL[/red] {problem}", highlight=False, soft_wrap=True)
    verdict = "[green]OK[/green]" if report["ok"] else f"[red]{len(report['problems'])} problem(s)[/red]"
    console.print(f"{verdict}: {report['shards']} shards, {report['tokens']:,} tokens, {report['bytes'] / 1e6:.1f} MB")
    if not report["ok"]:
        raise WorkFailed(f"{args.data_dir}: {len(report['problems'])} problem(s), listed above")
    return 0


def _stats(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    result = stats(args.data_dir, top=args.top_tokens)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    table = Table(title=f"{args.data_dir} ({result['dtype']}, n_vocab {result['n_vocab']:,})")
    for col in ("split", "stories", "tokens", "shards", "MB", "x vs raw", "tokens/story p10/p50/p90/max"):
        table.add_column(col, justify="right")
    for split, s in result["splits"].items():
        q = s.get("tokens_per_story", {})
        table.add_row(
            split,
            f"{s['stories']:,}",
            f"{s['tokens']:,}",
            str(s["shards"]),
            f"{s['bytes'] / 1e6:.2f}",
            str(s["compression_vs_raw"]),
            "/".join(str(q.get(k, "-")) for k in ("p10", "p50", "p90", "max")),
        )
    console.print(table)
    for split, s in result["splits"].items():
        if s.get("histogram"):
            peak = max(c for _, _, c in s["histogram"]) or 1
            console.print(f"[bold]{split}[/bold] tokens per story")
            for lo, hi, c in s["histogram"]:
                console.print(f"  {lo:>6}-{hi - 1:<6} {'#' * round(40 * c / peak):<40} {c:,}", highlight=False)
    console.print(
        "[bold]top tokens[/bold]: "
        + ", ".join(f"{t['text']!r}" if "text" in t else str(t["id"]) for t in result["top_tokens"])
    )
    return 0


def _download(args: argparse.Namespace, console: Console) -> int:
    if args.list:
        from rich.table import Table

        table = Table(title=f"roneneldan/TinyStories at {args.revision}")
        for col in ("name", "file", "MB"):
            table.add_column(col, justify="right" if col == "MB" else "left")
        rows = list_files(args.revision)
        for row in rows:
            size = "offline" if row["offline"] else "missing" if row["bytes"] is None else f"{row['bytes'] / 1e6:,.1f}"
            table.add_row(row["name"], row["file"], size)
        console.print(table)
        if rows[0]["offline"]:
            console.print(f"sizes: offline ({rows[0]['offline']})", highlight=False, soft_wrap=True)
        return 0
    if args.out is None or not args.names:
        raise ValueError("give one or more names and --out DIR (or --list to see the names)")
    for path in download(args.names, args.out, revision=args.revision, progress=not args.no_progress):
        console.print(f"{path}  ({path.stat().st_size / 1e6:,.1f} MB)", highlight=False)
    return 0
