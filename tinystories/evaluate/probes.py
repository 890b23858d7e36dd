"""Capability prompt suites: factual knowledge, reasoning and context tracking, scored automatically.

Each prompt is story text that stops right before a word the story makes obvious ("Alice was so tired
when she got back home so she went straight to" -> bed). The model completes it greedily and the
completion is scored by rule:

- correct: an accepted answer starts within the first ``WINDOW`` words, after leading filler words
  ("the", "her", ...) are skipped;
- partial: a partial answer (e.g. "room" for bed) starts within that window, or an accepted answer
  appears later in the completion's first sentence;
- wrong: anything else.

Partial verdicts are the ambiguous ones; ``--judge`` asks the judge LLM to settle them (recorded as judged).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.atomic import atomic_write_text
from tinystories.evaluate.judge import Chat

if TYPE_CHECKING:
    from rich.console import Console

    from tinystories.evaluate.students import Student

SUITES = ("factual", "reasoning", "context")
VERDICTS = ("correct", "partial", "wrong")
WINDOW = 4
FILLERS = frozenset("the a an his her their my your our its some this that very so".split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?\n]")


@dataclass(frozen=True)
class Probe:
    suite: str
    id: str
    prompt: str
    accept: tuple[str, ...]
    partial: tuple[str, ...] = ()


def load_suite(name_or_path: str | Path) -> list[Probe]:
    """A shipped suite by name (factual, reasoning, context) or a JSON file of the same layout."""
    if str(name_or_path) in SUITES:
        text = resources.files("tinystories").joinpath(f"assets/probes/{name_or_path}.json").read_text("utf-8")
        source = f"shipped suite {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"probe suite {name_or_path!r}: neither one of {SUITES} nor a file")
        text, source = path.read_text("utf-8"), str(path)
    data = json.loads(text)
    probes = []
    for i, item in enumerate(data.get("prompts", [])):
        for key in ("id", "prompt", "accept"):
            if key not in item:
                raise ValueError(f"{source}: prompt #{i} has no {key!r} field")
        if not item["accept"]:
            raise ValueError(f"{source}: prompt {item['id']!r} lists no accepted answer")
        probes.append(
            Probe(
                data.get("suite", Path(str(name_or_path)).stem),
                item["id"],
                item["prompt"],
                tuple(item["accept"]),
                tuple(item.get("partial", ())),
            )
        )
    if not probes:
        raise ValueError(f"{source}: no prompts")
    return probes


def _words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")
    return [w[:-2] if w.endswith("'s") else w for w in _WORD.findall(text)]


def _find(words: list[str], phrase: Sequence[str], *, start: int = 0, stop: int | None = None) -> int | None:
    """Index of the first occurrence of ``phrase`` in ``words`` starting in [start, stop)."""
    stop = len(words) if stop is None else min(stop, len(words))
    for i in range(start, stop):
        if words[i : i + len(phrase)] == list(phrase):
            return i
    return None


@dataclass(frozen=True)
class Verdict:
    verdict: str  # correct | partial | wrong
    matched: str | None  # the answer that decided it
    judged: bool = False  # settled by the judge LLM rather than the rule


def score_completion(probe: Probe, completion: str) -> Verdict:
    sentence = _SENTENCE_END.split(completion.lstrip(), maxsplit=1)[0]
    words = _words(sentence)
    lead = 0
    while lead < len(words) and words[lead] in FILLERS:
        lead += 1
    window_end = lead + WINDOW
    for answer in probe.accept:
        if _find(words, _words(answer), start=lead, stop=window_end) is not None:
            return Verdict("correct", answer)
    for answer in probe.partial:  # partial answers may themselves be fillers ("her" for a name)
        if _find(words, _words(answer), stop=window_end) is not None:
            return Verdict("partial", answer)
    for answer in probe.accept:
        if _find(words, _words(answer)) is not None:
            return Verdict("partial", answer)
    return Verdict("wrong", None)


@dataclass
class ProbeResult:
    model: str
    suite: str
    id: str
    prompt: str
    completion: str
    verdict: str
    matched: str | None
    judged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_probes(
    student: Student, probes: Sequence[Probe], *, max_new_tokens: int = 12, batch_size: int = 32
) -> list[ProbeResult]:
    """Greedy completions of every probe by one student, scored by rule."""
    results = []
    for first in range(0, len(probes), batch_size):
        group = probes[first : first + batch_size]
        completions = student.complete([p.prompt for p in group], max_new_tokens=max_new_tokens, temperature=0.0)
        for probe, completion in zip(group, completions):
            verdict = score_completion(probe, completion)
            results.append(
                ProbeResult(
                    student.info.name, probe.suite, probe.id, probe.prompt, completion, verdict.verdict, verdict.matched
                )
            )
    return results


# ------------------------------------------------------------------------------------------------ judge pass
JUDGE_PROMPT = """\
A story for young children stops in the middle of a sentence, and a student wrote the next words.

Story: {prompt}
Student's continuation: {completion}

The expected kind of answer is: {accept}. Does the student's continuation give a correct, sensible \
answer at this point of the story? Reply with exactly one word: CORRECT or WRONG."""
_JUDGE_VERDICT = re.compile(r"\b(CORRECT|WRONG)\b")


def judge_prompt(probe: Probe, completion: str) -> str:
    return JUDGE_PROMPT.format(prompt=probe.prompt, completion=completion.strip(), accept=", ".join(probe.accept))


def parse_judge_verdict(text: str) -> str | None:
    """ "correct"/"wrong" when the judge answered with exactly one of the two words, else None."""
    found = set(_JUDGE_VERDICT.findall(text.upper()))
    return found.pop().lower() if len(found) == 1 else None


async def judge_partials(chat: Chat, results: Sequence[ProbeResult], probes: Sequence[Probe]) -> int:
    """Ask the judge about every partially correct result; settle it when the answer is clear.

    An unclear answer, or an API failure, leaves the rule's "partial" in place. Returns how many were settled.
    """
    by_id = {p.id: p for p in probes}

    async def settle(result: ProbeResult) -> bool:
        messages = [{"role": "user", "content": judge_prompt(by_id[result.id], result.completion)}]
        try:
            reply = await chat(messages, f"probe-{result.model}-{result.id}")
        except Exception:
            return False
        verdict = parse_judge_verdict(reply.text)
        if verdict is None:
            return False
        result.verdict, result.judged = verdict, True
        return True

    settled = await asyncio.gather(*(settle(r) for r in results if r.verdict == "partial"))
    return sum(settled)


# ------------------------------------------------------------------------------------------------ reports
def tally(results: Iterable[ProbeResult]) -> dict[tuple[str, str], dict[str, int]]:
    """(model, suite) -> counts of each verdict."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in results:
        counts.setdefault((r.model, r.suite), dict.fromkeys(VERDICTS, 0))[r.verdict] += 1
    return counts


def _grid(results: Sequence[ProbeResult]) -> tuple[list[str], list[tuple[str, str, str]], dict]:
    models = list(dict.fromkeys(r.model for r in results))
    rows = list(dict.fromkeys((r.suite, r.id, r.prompt) for r in results))
    cells = {(r.id, r.model): r for r in results}
    return models, rows, cells


RICH_STYLE = {"correct": "green", "partial": "yellow", "wrong": "red"}


def render_terminal(results: Sequence[ProbeResult], *, console: Console | None = None) -> None:
    """Prompts as rows, models side by side as columns, completions coloured by verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    models, rows, cells = _grid(results)
    for suite in dict.fromkeys(s for s, _, _ in rows):
        table = Table(title=f"probes: {suite}", show_lines=True, expand=True)
        table.add_column("prompt", ratio=3)
        for model in models:
            table.add_column(model, ratio=2)
        for row_suite, probe_id, prompt in rows:
            if row_suite != suite:
                continue
            line = [Text("…" + prompt[-90:] if len(prompt) > 90 else prompt)]
            for model in models:
                r = cells.get((probe_id, model))
                line.append(
                    Text(r.completion.strip()[:60] + (" (judged)" if r.judged else ""), style=RICH_STYLE[r.verdict])
                    if r
                    else Text("-")
                )
            table.add_row(*line)
        console.print(table)
    summary = Table(title="probe scores (correct / partial / wrong)")
    summary.add_column("model")
    suites = list(dict.fromkeys(s for s, _, _ in rows))
    for suite in suites:
        summary.add_column(suite, justify="right")
    counts = tally(results)
    for model in models:
        summary.add_row(model, *(_count_text(counts.get((model, s))) for s in suites))
    console.print(summary)


def _count_text(c: dict[str, int] | None) -> str:
    return "-" if c is None else f"{c['correct']} / {c['partial']} / {c['wrong']}"


HTML_COLOURS = {"correct": "#c8f7c5", "partial": "#fff3b0", "wrong": "#f8c4c4"}


def render_html(results: Sequence[ProbeResult], path: str | Path, *, title: str = "tinystories probes") -> Path:
    """One self-contained HTML page (inline CSS, no scripts): a table per suite, models side by side."""
    models, rows, cells = _grid(results)
    counts = tally(results)
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #999;padding:4px 8px;vertical-align:top;max-width:28em}"
        + "".join(f".{v}{{background:{c}}}" for v, c in HTML_COLOURS.items())
        + "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Greedy completions. <span class='correct'>correct</span> "
        "<span class='partial'>partially correct</span> <span class='wrong'>wrong</span></p>",
    ]
    suites = list(dict.fromkeys(s for s, _, _ in rows))
    parts.append(
        "<h2>Summary (correct / partial / wrong)</h2><table><tr><th>model</th>"
        + "".join(f"<th>{esc(s)}</th>" for s in suites)
        + "</tr>"
    )
    for model in models:
        parts.append(
            f"<tr><td>{esc(model)}</td>"
            + "".join(f"<td>{_count_text(counts.get((model, s)))}</td>" for s in suites)
            + "</tr>"
        )
    parts.append("</table>")
    for suite in suites:
        parts.append(
            f"<h2>{esc(suite)}</h2><table><tr><th>prompt</th>" + "".join(f"<th>{esc(m)}</th>" for m in models) + "</tr>"
        )
        for row_suite, probe_id, prompt in rows:
            if row_suite != suite:
                continue
            parts.append(f"<tr><td>{esc(prompt)}</td>")
            for model in models:
                r = cells.get((probe_id, model))
                if r is None:
                    parts.append("<td>-</td>")
                else:
                    note = " <i>(judged)</i>" if r.judged else ""
                    parts.append(f"<td class='{r.verdict}' title='{r.verdict}'>{esc(r.completion.strip())}{note}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
