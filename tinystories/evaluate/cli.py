"""``tinystories eval``: grade checkpoints with a judge LLM, run the capability probes, measure novelty and
held-out loss.

    tinystories eval grade runs/a/ckpt.pt runs/b/ckpt.pt --judge-model gpt-4o --out eval/
    tinystories eval probes runs/a/ckpt.pt --hf-model ~/models/gpt2-xl --html eval/probes.html
    tinystories eval novelty runs/a/ckpt.pt --stories train.txt
    tinystories eval loss runs/a/ckpt.pt --text valid.txt

Grading (see :mod:`tinystories.evaluate.conversation` for the judge conversation) writes one JSONL record per
completion to ``<out>/grades.jsonl``; records are keyed by (checkpoint content, beginning, sample seed,
generation settings, judge model, prompt version), so a rerun only generates and pays for new items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.atomic import atomic_write_text
from tinystories.corpus import iter_stories, read_text
from tinystories.evaluate import novelty, probes, report
from tinystories.evaluate.grading import GradeSettings, grade, load_beginnings
from tinystories.evaluate.instruct import grade_instruction_following, load_instructions, summarize_instruct
from tinystories.evaluate.judge import LLMJudge
from tinystories.jsonl import read_jsonl
from tinystories.llm.client import add_client_arguments, client_config_from_args

if TYPE_CHECKING:
    from tinystories.evaluate.students import Student


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="{grade,probes,novelty,loss,report}", required=True)

    def models(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "checkpoints", nargs="*", type=Path, help="our checkpoint files, or run folders (their newest checkpoint)"
        )
        p.add_argument(
            "--all-checkpoints",
            action="store_true",
            help="a run folder stands for every checkpoint it holds (grades vs training step)",
        )
        p.add_argument(
            "--hf-model",
            action="append",
            default=[],
            type=Path,
            metavar="DIR",
            help="a Hugging Face causal LM directory (repeatable)",
        )
        p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
        p.add_argument(
            "--dtype",
            default="auto",
            choices=["auto", "fp32", "fp16", "bf16"],
            help="autocast dtype of our checkpoints; auto: as the trainer chooses for the device",
        )

    def judge(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--judge-model", required=required, help="the judge model name (e.g. gpt-4o)")
        add_client_arguments(p, concurrency=32, cost_help="stop cleanly once the judge has cost this much")

    g = sub.add_parser("grade", help="complete story beginnings and grade them with a judge LLM")
    models(g)
    judge(g, required=True)
    g.add_argument("--beginnings", type=Path, help="one beginning per line (default: the shipped set)")
    g.add_argument("--limit-beginnings", type=int, help="use only the first N beginnings (or instruction sets)")
    g.add_argument(
        "--instruct",
        action="store_true",
        help="Instruct checkpoints: score instruction following (words, summary, features) instead",
    )
    g.add_argument("--instructions", type=Path, help="instruction sets, JSONL (default: the shipped set)")
    g.add_argument("--samples", type=int, default=10, help="completions per beginning")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", type=Path, default=Path("eval"), help="results folder (grades.jsonl, PNGs)")

    r = sub.add_parser("report", help="tables and plots from a grades.jsonl, without any request")
    r.add_argument("results", type=Path)
    r.add_argument("--out", type=Path, help="folder for the PNGs (default: beside the results)")

    p = sub.add_parser("probes", help="factual / reasoning / context-tracking prompt suites, greedy, scored")
    models(p)
    judge(p, required=False)
    p.add_argument(
        "--suites",
        default=",".join(("factual", "reasoning", "context")),
        help="comma-separated shipped suite names or JSON files",
    )
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--judge", action="store_true", help="ask the judge to settle the partially correct ones")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--jsonl", type=Path, help="write every completion and verdict here")

    n = sub.add_parser("novelty", help="complete cut training stories; overlap with the true ending and the corpus")
    models(n)
    n.add_argument(
        "--stories",
        type=Path,
        action="append",
        required=True,
        help="the training corpus, read as `tinystories data prepare` reads it (.txt with <|endoftext|> "
        "separators, or .jsonl with 'text' or 'story'; optionally .zst)",
    )
    n.add_argument("--n", type=int, default=100, help="stories to cut and complete")
    n.add_argument("--ngram", type=int, default=4)
    n.add_argument("--temperature", type=float, default=0.0)
    n.add_argument("--max-new-tokens", type=int, default=200)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--show", type=int, default=5, help="closest matches to print")
    n.add_argument("--jsonl", type=Path, help="write every item here")

    loss = sub.add_parser("loss", help="held-out loss, perplexity and bits per byte")
    models(loss)
    source = loss.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, help="a .txt/.txt.zst file (<|endoftext|> separates documents)")
    source.add_argument("--data", type=Path, help="a token-shard folder (tinystories data prepare)")
    loss.add_argument("--split", default="val")
    loss.add_argument("--stride", type=int, help="sliding-window stride in tokens (default: the window, --seq-len)")
    loss.add_argument("--max-bytes", type=int, help="score only the head of the text")
    loss.add_argument("--batch-size", type=int, default=8)
    loss.add_argument(
        "--seq-len",
        type=int,
        help="window in tokens (default: the length each checkpoint was trained at; a HF model: its context)",
    )
    loss.add_argument("--json", type=Path, help="also write the results here")


def _load_students(args: argparse.Namespace) -> list[Student]:
    from tinystories.evaluate.students import load_student  # torch: only the commands that run models load it
    from tinystories.model.checkpoint import list_checkpoints

    paths = []
    for path in args.checkpoints:
        found = list_checkpoints(path) if args.all_checkpoints and path.is_dir() else []
        paths += found or [path]
    students = [load_student(c, device=args.device, dtype=args.dtype) for c in paths]
    students += [load_student(d, hf=True, device=args.device) for d in args.hf_model]
    if not students:
        raise SystemExit("tinystories eval: give at least one checkpoint or --hf-model DIR")
    return students


def run_cli(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:  # bad input: one clear line, not a traceback
        print(f"tinystories eval {args.eval_command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    command = args.eval_command
    if command == "report":
        records = list(read_jsonl(args.results))
        if any("checks" in r for r in records):
            return _instruct_report(records)
        return _report(records, args.out or args.results.parent)
    if command == "grade":
        return _cli_grade(args)
    students = _load_students(args)
    if command == "probes":
        return _cli_probes(args, students)
    if command == "novelty":
        return _cli_novelty(args, students)
    return _cli_loss(args, students)


def _cli_grade(args: argparse.Namespace) -> int:
    # everything that can be wrong in the arguments is checked before the models are loaded and sampled
    settings = GradeSettings(
        judge_model=args.judge_model,
        samples=args.samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    judge = make_judge(args)
    if args.instruct:
        instructions = load_instructions(args.instructions)[: args.limit_beginnings]
        records = grade_instruction_following(
            _load_students(args), judge, instructions, settings, args.out / "instruct.jsonl"
        )
        status = _judge_exit_status(judge)
        return _instruct_report(records) or status
    beginnings = load_beginnings(args.beginnings)[: args.limit_beginnings]
    records = grade(_load_students(args), judge, beginnings, settings, args.out / "grades.jsonl")
    status = _judge_exit_status(judge)
    return _report(records, args.out) or status


def _instruct_report(records: list[dict[str, Any]]) -> int:
    from rich.console import Console
    from rich.table import Table

    groups = report.group_by_model(records)
    summaries = {name: summarize_instruct(rs) for name, rs in groups.items()}
    kinds = sorted({k for s in summaries.values() for k in s["pass_rates"]})
    table = Table(title="instruction following (score = fraction of checks passed, mean ± 95% CI; pass rates)")
    for column in ("model", "scored", "score", *kinds):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, s in summaries.items():
        table.add_row(
            name,
            f"{s['n_scored']}/{s['n_items']}",
            str(s["score"]),
            *(f"{s['pass_rates'][k]:.0%}" if k in s["pass_rates"] else "-" for k in kinds),
        )
    Console().print(table)
    return 0


def _report(records: list[dict[str, Any]], out: Path) -> int:
    from rich.console import Console

    console = Console()
    groups = report.group_by_model(records)
    if not groups:
        console.print("no graded records")
        return 1
    console.print(report.summary_table(groups))
    hidden, layers, _ = report.layout_grid(groups)
    if len(hidden) * len(layers) > 1:
        console.print(report.layout_table(groups))
        console.print(f"wrote {report.layout_png(groups, out / 'grades_by_shape.png')}")
    curves = report.curves_png(groups, out / "grades_vs_step.png")
    if curves:
        console.print(f"wrote {curves}")
    return 0


def make_judge(args: argparse.Namespace) -> LLMJudge:
    """The judge LLM behind the shared client layer, configured from the command line."""
    config = client_config_from_args(args)
    if not config.prices.has_price(args.judge_model):
        print(f"note: no price known for {args.judge_model}; its cost is counted as 0 (see --prices)")
    try:
        config.resolve_api_key()  # before any completion is generated, not after
    except ValueError as exc:
        raise SystemExit(f"tinystories eval: {exc}") from None
    return LLMJudge(args.judge_model, config)


def _print_judge_stats(judge: LLMJudge) -> None:
    stats = judge.stats
    if stats is not None:
        print(
            f"judge: {stats.succeeded} requests answered, {stats.failed} failed, ${stats.cost_usd:.4f}"
            + (f"; stopped early: {stats.stopped}" if stats.stopped else "")
        )


def _judge_exit_status(judge: LLMJudge) -> int:
    """1 when judge requests failed or the judge stopped for anything but the budget (items are left to grade)."""
    _print_judge_stats(judge)
    stats = judge.stats
    if stats is None or (not stats.failed and stats.stopped in (None, "budget")):
        return 0
    print(
        "tinystories eval: some items are not graded (judge requests failed); run the same command again",
        file=sys.stderr,
    )
    return 1


def _cli_probes(args: argparse.Namespace, students: list[Student]) -> int:
    suite_probes = [p for name in args.suites.split(",") if name for p in probes.load_suite(name)]
    results = [r for s in students for r in probes.run_probes(s, suite_probes, max_new_tokens=args.max_new_tokens)]
    if args.judge:
        if not args.judge_model:
            raise SystemExit("tinystories eval probes: --judge needs --judge-model")
        judge = make_judge(args)

        async def judge_pass() -> int:
            async with judge.session() as chat:
                return await probes.judge_partials(chat, results, suite_probes)

        settled = asyncio.run(judge_pass())
        print(f"the judge settled {settled} of the partially correct completions")
        _print_judge_stats(judge)
    probes.render_terminal(results)
    if args.html:
        print(f"wrote {probes.render_html(results, args.html)}")
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in results))
    return 0


def _cli_novelty(args: argparse.Namespace, students: list[Student]) -> int:
    from rich.console import Console
    from rich.table import Table

    corpus = list(iter_stories(args.stories))
    index = novelty.CorpusIndex(corpus, args.ngram)
    console = Console()
    lines = []
    for student in students:
        items = novelty.run_novelty(
            student,
            corpus,
            n_stories=args.n,
            n=args.ngram,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            index=index,
        )
        table = Table(
            title=f"novelty of {student.info.name}: {len(items)} cut stories, "
            f"{len(corpus)} training stories, {args.ngram}-grams"
        )
        for column in ("metric", "mean", "min", "10%", "median", "90%", "max"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for metric, d in novelty.distribution(items).items():
            table.add_row(metric, *(f"{d[k]:.3f}" for k in ("mean", "min", "p10", "p50", "p90", "max")))
        console.print(table)
        closest = sorted(items, key=lambda i: max(i.rouge_l_ending, i.nearest_lcs_precision), reverse=True)
        for item in closest[: args.show]:
            console.print(
                f"[bold]story {item.story_index}[/] rouge-L vs ending {item.rouge_l_ending:.2f}, "
                f"LCS precision vs story {item.nearest_story} {item.nearest_lcs_precision:.2f}\n"
                f"  completion: {item.completion.strip()[:300]!r}\n"
                f"  true ending: {item.original_ending.strip()[:300]!r}"
            )
            if item.nearest_story is not None:
                console.print(f"  nearest story: {corpus[item.nearest_story][:300]!r}")
        lines += [json.dumps({"model": student.info.name, **i.as_dict()}, ensure_ascii=False) + "\n" for i in items]
    if args.jsonl:
        atomic_write_text(args.jsonl, "".join(lines))
    return 0


def _cli_loss(args: argparse.Namespace, students: list[Student]) -> int:
    from rich.console import Console
    from rich.table import Table

    from tinystories.evaluate import heldout
    from tinystories.evaluate.students import GPTNeoStudent

    text = read_text(args.text) if args.text else None
    table = Table(title=f"held-out loss on {args.text or f'{args.data}:{args.split}'}")
    for column in ("model", "tokens", "bytes", "loss (nats/token)", "perplexity", "bits per byte"):
        table.add_column(column, justify="left" if column == "model" else "right")
    results = []
    for student in students:
        if text is not None:
            result = heldout.text_loss(
                student,
                text,
                source=str(args.text),
                stride=args.stride,
                batch_size=args.batch_size,
                max_bytes=args.max_bytes,
                seq_len=args.seq_len,
            )
        elif isinstance(student, GPTNeoStudent):
            result = heldout.split_loss(
                student, args.data, split=args.split, batch_size=args.batch_size, seq_len=args.seq_len
            )
        else:
            raise SystemExit(f"{student.info.name}: --data shards hold our tokenizer's ids; use --text for HF models")
        table.add_row(
            result.model,
            f"{result.tokens:,}",
            f"{result.bytes:,}",
            f"{result.loss:.4f}",
            f"{result.perplexity:.3f}",
            f"{result.bits_per_byte:.4f}",
        )
        results.append(result.as_dict())
    Console().print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0
