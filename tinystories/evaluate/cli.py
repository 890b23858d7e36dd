"""``tinystories eval``: grade checkpoints with a judge LLM, run the capability probes, measure novelty and
held-out loss.

    tinystories eval grade runs/a/ckpt.pt runs/b/ckpt.pt --judge-model gpt-4o --out eval/
    tinystories eval probes runs/a/ckpt.pt --hf-model ~/models/gpt2-xl --out eval/
    tinystories eval novelty runs/a/ckpt.pt --stories train.txt
    tinystories eval loss runs/a/ckpt.pt --stories valid.txt

Grading (see :mod:`tinystories.evaluate.conversation` for the judge conversation) writes one JSONL record per
completion to ``<out>/grades.jsonl``; records are keyed by (checkpoint content, beginning, sample seed,
generation settings, judge model, prompt version), so a rerun only generates and pays for new items. Probes,
novelty and loss write to ``--out DIR`` only when given (see :mod:`tinystories.evaluate.outputs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.atomic import atomic_write_text
from tinystories.corpus import EOT, iter_stories
from tinystories.evaluate import novelty, probes, report
from tinystories.evaluate.grading import GradeSettings, grade, load_beginnings
from tinystories.evaluate.instruct import grade_instruction_following, load_instructions, summarize_instruct
from tinystories.evaluate.judge import LLMJudge
from tinystories.evaluate.outputs import jsonl_text, save_results
from tinystories.jsonl import read_jsonl
from tinystories.llm.client import client_config_from_args
from tinystories.runtime.arguments import (
    ArgumentParser,
    add_checkpoint_arguments,
    add_data_argument,
    add_device_arguments,
    add_instruct_argument,
    add_judge_model_argument,
    add_llm_client_arguments,
    add_max_new_tokens_argument,
    add_no_progress_argument,
    add_num_samples_argument,
    add_num_stories_argument,
    add_out_argument,
    add_sampling_arguments,
    add_show_argument,
    add_split_argument,
    add_stories_argument,
    one_line_errors,
)
from tinystories.runtime.errors import WorkFailed

if TYPE_CHECKING:
    from tinystories.evaluate.students import Student

_NOT_WITHOUT_OUT = "nothing is written without it; other models' results there are kept"


def _add_model_arguments(p: ArgumentParser) -> None:
    add_checkpoint_arguments(p, nargs="*", note="with --all-checkpoints, every checkpoint it holds")
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
    add_device_arguments(p)


def _add_judge_arguments(p: ArgumentParser, *, required: bool) -> None:
    add_judge_model_argument(p, required=required, note=None if required else "for --judge")
    add_llm_client_arguments(
        p, cost_note="the judge's", concurrency=32, concurrency_note="default 32 here (two requests per item)"
    )


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{grade,probes,novelty,loss,report}", required=True)

    g = sub.add_parser("grade", help="complete story beginnings and grade them with a judge LLM")
    _add_model_arguments(g)
    _add_judge_arguments(g, required=True)
    g.add_argument("--beginnings", type=Path, help="one beginning per line (default: the shipped set)")
    g.add_argument("--limit-beginnings", type=int, help="use only the first N beginnings (or instruction sets)")
    add_instruct_argument(g, note="score instruction following (words, summary, features) instead of grades")
    g.add_argument("--instructions", type=Path, help="instruction sets, JSONL (default: the shipped set)")
    add_num_samples_argument(g, default=10, note="default 10 here (a mean grade needs several)")
    g.deprecate("--samples", "--num-samples")
    add_sampling_arguments(g)
    add_max_new_tokens_argument(g)
    add_out_argument(g, "the results folder (grades.jsonl, PNGs); default eval here", default="eval")
    add_no_progress_argument(g)

    r = sub.add_parser("report", help="tables and plots from a grades.jsonl, without any request")
    r.add_argument("results", type=Path, metavar="FILE", help="a grades.jsonl or instruct.jsonl that grade wrote")
    add_out_argument(r, "the folder for the PNGs (default: beside FILE)")

    p = sub.add_parser("probes", help="factual / reasoning / context-tracking prompt suites, greedy, scored")
    _add_model_arguments(p)
    _add_judge_arguments(p, required=False)
    p.add_argument(
        "--suites",
        default=",".join(("factual", "reasoning", "context")),
        help="comma-separated shipped suite names or JSON files",
    )
    add_max_new_tokens_argument(p, default=12, note="default 12 here (an answer is a word or two)")
    p.add_argument("--judge", action="store_true", help="ask the judge to settle the partially correct ones")
    add_out_argument(p, f"a folder for probes.html and probes.jsonl; {_NOT_WITHOUT_OUT}")
    for old in ("--html", "--jsonl"):  # the old meaning for one more release: exactly this file, this run only
        p.add_argument(old, type=Path, help=argparse.SUPPRESS)
        p.deprecate(old, "--out")

    n = sub.add_parser("novelty", help="complete cut training stories; overlap with the true ending and the corpus")
    _add_model_arguments(n)
    add_stories_argument(n, required=True, note="the training corpus")
    add_num_stories_argument(n, default=100, note="default 100 here (stories cut and completed)")
    n.deprecate("--n", "--num-stories")
    n.add_argument("--ngram", type=int, default=4, help="n of the n-grams compared with the corpus")
    add_sampling_arguments(n, temperature=0.0, note="default 0 here (greedy: the decoding most likely to recite)")
    add_max_new_tokens_argument(n)
    add_show_argument(n, default=5, note="default 5 here (the completions closest to a training story)")
    add_out_argument(n, f"a folder for novelty.jsonl; {_NOT_WITHOUT_OUT}")
    n.add_argument("--jsonl", type=Path, help=argparse.SUPPRESS)  # the old meaning for one more release
    n.deprecate("--jsonl", "--out")

    loss = sub.add_parser("loss", help="held-out loss, perplexity and bits per byte")
    _add_model_arguments(loss)
    source = loss.add_mutually_exclusive_group(required=True)
    add_stories_argument(source, note="held-out stories, scored with <|endoftext|> between them")
    loss.deprecate("--text", "--stories")
    add_data_argument(source, note="scores its --split in the trainer's packed layout (our checkpoints only)")
    add_split_argument(loss)
    loss.add_argument("--stride", type=int, help="sliding-window stride in tokens (default: the window, --seq-len)")
    loss.add_argument("--max-bytes", type=int, help="score only the head of the text")
    loss.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    loss.add_argument(
        "--no-eot",
        action="store_true",
        help="with --stories: score each story alone after an <|endoftext|> prefix, no separator scored "
        "(lm-eval's loglikelihood_rolling: its bits_per_byte and word_perplexity)",
    )
    loss.add_argument(
        "--seq-len",
        type=int,
        help="window in tokens (default: the length each checkpoint was trained at; a HF model: its context)",
    )
    add_out_argument(loss, f"a folder for loss.json; {_NOT_WITHOUT_OUT}")
    loss.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # the old meaning for one more release
    loss.deprecate("--json", "--out")


def _check_models(args: argparse.Namespace) -> None:
    """The models named exist: said before anything is loaded."""
    if not args.checkpoints and not args.hf_model:
        raise ValueError("give at least one CHECKPOINT or --hf-model DIR")
    for path in [*args.checkpoints, *args.hf_model]:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")


def _load_students(args: argparse.Namespace) -> list[Student]:
    from tinystories.evaluate.students import load_student  # torch: only the commands that run models load it
    from tinystories.model.checkpoint import list_checkpoints

    paths = []
    for path in args.checkpoints:
        found = list_checkpoints(path) if args.all_checkpoints and path.is_dir() else []
        paths += found or [path]
    students = [load_student(c, device=args.device, dtype=args.dtype) for c in paths]
    return students + [load_student(d, hf=True, device=args.device) for d in args.hf_model]


@one_line_errors("tinystories eval")
def run_cli(args: argparse.Namespace) -> int:
    if args.action == "report":
        if not args.results.is_file():  # read_jsonl reads a missing log as empty
            raise FileNotFoundError(f"{args.results}: no such file")
        records = list(read_jsonl(args.results))
        if any("checks" in r for r in records):
            return _instruct_report(records)
        return _report(records, args.out or args.results.parent)
    if args.action == "grade":
        return _cli_grade(args)
    _check_models(args)
    students = _load_students(args)
    if args.action == "probes":
        return _cli_probes(args, students)
    if args.action == "novelty":
        return _cli_novelty(args, students)
    return _cli_loss(args, students)


def _cli_grade(args: argparse.Namespace) -> int:
    # everything that can be wrong in the arguments is checked before the models are loaded and sampled
    settings = GradeSettings(
        judge_model=args.judge_model,
        samples=args.num_samples,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    judge = make_judge(args)
    _check_models(args)
    progress = not args.no_progress
    if args.instruct:
        instructions = load_instructions(args.instructions)[: args.limit_beginnings]
        records = grade_instruction_following(
            _load_students(args), judge, instructions, settings, args.out / "instruct.jsonl", progress=progress
        )
        _instruct_report(records)
    else:
        beginnings = load_beginnings(args.beginnings)[: args.limit_beginnings]
        records = grade(_load_students(args), judge, beginnings, settings, args.out / "grades.jsonl", progress=progress)
        _report(records, args.out)
    if _judge_exit_status(judge):
        raise WorkFailed("some items are not graded (judge requests failed); run the same command again")
    return 0


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
        raise WorkFailed("no graded records")
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
    config.resolve_api_key()  # before any completion is generated, not after
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
    return 0 if stats is None or (not stats.failed and stats.stopped in (None, "budget")) else 1


def _cli_probes(args: argparse.Namespace, students: list[Student]) -> int:
    if args.judge and not args.judge_model:
        raise ValueError("--judge needs --judge-model")
    suite_probes = [p for name in args.suites.split(",") if name for p in probes.load_suite(name)]
    results = [r for s in students for r in probes.run_probes(s, suite_probes, max_new_tokens=args.max_new_tokens)]
    if args.judge:
        judge = make_judge(args)

        async def judge_pass() -> int:
            async with judge.session() as chat:
                return await probes.judge_partials(chat, results, suite_probes)

        settled = asyncio.run(judge_pass())
        print(f"the judge settled {settled} of the partially correct completions")
        _print_judge_stats(judge)
    probes.render_terminal(results)
    records = [r.as_dict() for r in results]
    if args.out:
        everyone = save_results(args.out / "probes.jsonl", records, key=lambda r: r.get("model"))
        print(f"wrote {probes.render_html([probes.ProbeResult(**r) for r in everyone], args.out / 'probes.html')}")
    if args.html:
        print(f"wrote {probes.render_html(results, args.html)}")
    if args.jsonl:
        atomic_write_text(args.jsonl, jsonl_text(records))
    return 0


def _cli_novelty(args: argparse.Namespace, students: list[Student]) -> int:
    from rich.console import Console
    from rich.table import Table

    corpus = list(iter_stories(args.stories))
    index = novelty.CorpusIndex(corpus, args.ngram)
    console = Console()
    records = []
    for student in students:
        items = novelty.run_novelty(
            student,
            corpus,
            n_stories=args.num_stories,
            n=args.ngram,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
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
        records += [{"model": student.info.name, **i.as_dict()} for i in items]
    if args.out:
        save_results(args.out / "novelty.jsonl", records, key=lambda r: r.get("model"))
    if args.jsonl:
        atomic_write_text(args.jsonl, jsonl_text(records))
    return 0


# What each convention of `eval loss` counts (tinystories.evaluate.heldout), printed under its table.
_LOSS_CAPTIONS = {
    "stream": "tokens: the stories joined by <|endoftext|>, separators scored too, in consecutive windows of 'window' "
    "tokens (--data: the trainer's packed split); bytes: the stories' UTF-8 (separators count 0). "
    "--no-eot: lm-eval's convention",
    "stories": "tokens: each story alone after an unscored <|endoftext|> prefix, no separator scored, in windows of "
    "'window' tokens (lm-eval's loglikelihood_rolling); bytes: the stories' UTF-8; words: lm-eval's count",
}


def _cli_loss(args: argparse.Namespace, students: list[Student]) -> int:
    from rich.console import Console
    from rich.table import Table

    from tinystories.evaluate import heldout
    from tinystories.evaluate.students import GPTNeoStudent

    if args.no_eot and not args.stories:
        raise ValueError("--no-eot scores stories one by one: give them with --stories")
    source = ", ".join(map(str, args.stories)) if args.stories else f"{args.data}:{args.split}"
    stories = list(iter_stories(args.stories)) if args.stories else []
    table = Table(title=f"held-out loss on {source}", caption=_LOSS_CAPTIONS["stories" if args.no_eot else "stream"])
    columns = ("model", "window", "tokens", "bytes", "loss (nats/token)", "perplexity", "bits per byte", "word ppl")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    results = []
    for student in students:
        scoring = dict(stride=args.stride, batch_size=args.batch_size, max_bytes=args.max_bytes, seq_len=args.seq_len)
        if args.no_eot:
            result = heldout.stories_loss(student, stories, source=source, **scoring)
        elif args.stories:
            result = heldout.text_loss(student, EOT.join(stories), source=source, **scoring)
        elif isinstance(student, GPTNeoStudent):
            result = heldout.split_loss(
                student, args.data, split=args.split, batch_size=args.batch_size, seq_len=args.seq_len
            )
        else:
            raise ValueError(
                f"{student.info.name}: --data shards hold our tokenizer's ids; use --stories for HF models"
            )
        word_ppl = result.word_perplexity
        table.add_row(
            result.model,
            f"{result.window:,}",
            f"{result.tokens:,}",
            f"{result.bytes:,}",
            f"{result.loss:.4f}",
            f"{result.perplexity:.3f}",
            f"{result.bits_per_byte:.4f}",
            f"{word_ppl:.3f}" if word_ppl is not None else "-",
        )
        results.append(result.as_dict())
    Console().print(table)
    if args.out:
        save_results(args.out / "loss.json", results, key=lambda r: (r.get("model"), r.get("source")))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0
