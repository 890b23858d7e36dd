"""The teacher-style judge of Eldan & Li (2023): prompts, grade parsing, the results cache, summary statistics.

The judge conversation follows the paper. The first turn shows the story beginning and the student's
completion separated by ``***`` and asks for a general assessment (grammar, consistency with the
beginning, whether the sentence split by ``***`` is finished). The second turn asks for grades out of 10
for grammar, creativity, consistency and plot, and the likely age group of the writer (A-F). When the
grades cannot be read, the judge gets exactly one follow-up question; if that fails too, the item is
recorded as a failure with its reason. A score is never guessed.

Results are JSONL records, one per completion, keyed by a hash of (checkpoint, beginning, sample seed,
generation settings, judge model, prompt version): a rerun pays only for items it has not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bump whenever a prompt text or the parsing rules change: cached grades from another version are not reused.
PROMPT_VERSION = "paper-v1"

SCORES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
MIN_GRADE, MAX_GRADE = 0.0, 10.0

ASSESSMENT_PROMPT = """\
In the following exercise, the student is given a beginning of a story. The student needs to complete it \
into a full story. The exercise tests the student's language abilities and creativity. The symbol *** marks \
the separator between the prescribed beginning and the student's completion:

{beginning}***{completion}

Please provide your general assessment about the part written by the student (the one after the *** \
symbol). Is it grammatically correct? Is it consistent with the beginning of the story? Pay special \
attention to whether the student manages to complete the sentence which is split in the middle by the \
separator ***."""

GRADING_REQUEST = """\
Now, grade the student's completion in terms of grammar, creativity, consistency with the story's \
beginning and whether the plot makes sense. Moreover, please provide your best guess of what the age of \
the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. \
B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.

Give each grade as a whole number from 1 to 10 and answer with exactly these five lines:
Grammar: <grade>/10
Creativity: <grade>/10
Consistency: <grade>/10
Plot: <grade>/10
Age group: <letter A-F>"""

FOLLOW_UP_PROMPT = """\
I could not read your grades ({problem}). Please answer again with only these five lines, each grade a \
number from 1 to 10 and the age group a single letter from A to F:
Grammar: <grade>/10
Creativity: <grade>/10
Consistency: <grade>/10
Plot: <grade>/10
Age group: <letter>"""


def assessment_prompt(beginning: str, completion: str) -> str:
    """The first judge turn. The beginning keeps its trailing text exactly, so a split word stays visible."""
    return ASSESSMENT_PROMPT.format(beginning=beginning.rstrip(" "), completion=completion)


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Grades:
    grammar: float
    creativity: float
    consistency: float
    plot: float
    age_group: str  # one of AGE_GROUPS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GradeParseError(ValueError):
    """The judge's answer holds no complete, valid set of grades.

    reason: "missing" (some field absent), "out_of_range" (a grade outside 0-10 or on another scale),
    "refusal" (the judge declined). ``found`` holds the fields that were read, for the record.
    """

    def __init__(self, reason: str, detail: str, found: dict[str, Any]):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.found = reason, detail, found


_NUMBER = r"(-?\d+(?:\.\d+)?)"
# "Grammar: 8/10", "**Grammar** - 8 out of 10", "grammar (7.5)", "Grammar: good, 8/10". The gap between the
# name and the number may hold words but no digits and no line break, so one line never lends its number
# to another field.
_SCORE_PATTERNS = {
    name: re.compile(rf"\b{name}\b[^\d\n]{{0,60}}?{_NUMBER}(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?",
                     re.IGNORECASE)
    for name in SCORES
}
_AGE_PATTERN = re.compile(r"\bage(?:\s*group)?\b[^A-Za-z\n]{0,20}?(?:group\s*)?\(?\b((?-i:[A-F]))\b(?![\w'])",
                          re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t|i won'?t|i will not|i'?m (?:not )?(?:able|unable)|"
    r"unable to|as an ai)\b", re.IGNORECASE)


def parse_grades(text: str) -> Grades:
    """Read the four grades and the age group from a judge answer, or raise :class:`GradeParseError`."""
    text = text.replace("\u2019", "'")
    found: dict[str, Any] = {}
    problems: list[str] = []
    out_of_range: list[str] = []
    for name, pattern in _SCORE_PATTERNS.items():
        match = pattern.search(text)
        if match is None:
            problems.append(f"no {name} grade")
            continue
        value, scale = float(match.group(1)), match.group(2)
        if scale is not None and float(scale) != MAX_GRADE:
            out_of_range.append(f"{name} given as {match.group(1)}/{scale}, not out of 10")
        elif not MIN_GRADE <= value <= MAX_GRADE:
            out_of_range.append(f"{name} grade {match.group(1)} is outside 0-10")
        else:
            found[name] = value
    age = _AGE_PATTERN.search(text)
    if age is None:
        problems.append("no age group A-F")
    else:
        found["age_group"] = age.group(1).upper()

    if out_of_range:
        raise GradeParseError("out_of_range", "; ".join(out_of_range), found)
    if problems:
        if not found and _REFUSAL.search(text):
            raise GradeParseError("refusal", "the judge declined to grade", found)
        raise GradeParseError("missing", "; ".join(problems), found)
    return Grades(**found)


def follow_up_prompt(error: GradeParseError) -> str:
    return FOLLOW_UP_PROMPT.format(problem=error.detail)


# ------------------------------------------------------------------------------------------------ conversation
@dataclass
class ChatReply:
    text: str
    usage: dict[str, int]
    cost_usd: float


# (messages, request id) -> the judge's reply; raises when the API failed after all its retries.
Chat = Callable[[list[dict[str, str]], str], Awaitable[ChatReply]]


async def judge_completion(chat: Chat, beginning: str, completion: str, *, request_id: str) -> dict[str, Any]:
    """The paper's two-turn conversation, plus at most one follow-up when the grades cannot be read.

    Returns the record fields: status ("ok" or "failed"), grades (or None), failure reason, the whole
    conversation, token usage and cost. API errors propagate to the caller.
    """
    messages = [{"role": "user", "content": assessment_prompt(beginning, completion)}]
    usage: dict[str, int] = {}
    cost = 0.0

    async def ask(turn: int) -> str:
        nonlocal cost
        reply = await chat(messages, f"{request_id}-{turn}")
        for name, value in reply.usage.items():
            usage[name] = usage.get(name, 0) + int(value)
        cost += reply.cost_usd
        messages.append({"role": "assistant", "content": reply.text})
        return reply.text

    await ask(1)
    messages.append({"role": "user", "content": GRADING_REQUEST})
    answer = await ask(2)
    grades, failure, follow_up = None, None, False
    try:
        grades = parse_grades(answer)
    except GradeParseError as first:
        follow_up = True
        messages.append({"role": "user", "content": follow_up_prompt(first)})
        answer = await ask(3)
        try:
            grades = parse_grades(answer)
        except GradeParseError as second:
            failure = {"reason": second.reason, "detail": second.detail, "found": second.found,
                       "first_attempt": {"reason": first.reason, "detail": first.detail}}
    return {"status": "ok" if grades else "failed", "grades": grades.as_dict() if grades else None,
            "failure": failure["reason"] if failure else None, "failure_detail": failure,
            "follow_up": follow_up, "judge_text": answer, "conversation": messages, "usage": usage,
            "cost_usd": cost}


class JudgeAPIError(RuntimeError):
    """The judge's API failed for one request after all the client's retries."""


class JudgeStopped(RuntimeError):
    """The client stopped sending (budget reached, or an error no retry can fix such as a bad key)."""


class LLMJudge:
    """The judge behind the project's one client layer, :mod:`tinystories.llm_client`.

    Concurrency, retries with backoff and jitter, Retry-After, cost accounting, the budget stop and
    fatal-error handling all come from ``ChatClient.run``. Judge conversations go turn by turn, so
    requests are fed to that run as the conversations produce them, and each turn awaits its own result.

        judge = LLMJudge("gpt-4o", ClientConfig(concurrency=32, max_cost_usd=5))
        async with judge.session() as chat:
            reply = await chat(messages, "request-id")
    """

    def __init__(self, model: str, config: Any):
        self.model, self.config = model, config
        self.stats: Any = None  # the client's RunStats of the last session

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Chat]:
        from tinystories.llm_client import ChatClient, ChatRequest

        # Later turns first: conversations already under way finish before new ones start, so a budget
        # stop leaves few paid-for but unfinished conversations behind.
        queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        order = itertools.count()
        waiting: dict[str, asyncio.Future] = {}

        async def requests() -> AsyncIterator[Any]:
            while (request := (await queue.get())[2]) is not None:
                yield request

        def on_result(result: Any) -> None:
            future = waiting.pop(result.id, None)
            if future is not None and not future.done():
                future.set_result(result)

        async with ChatClient(self.config) as client:
            runner = asyncio.create_task(client.run(requests(), on_result))

            def stop_waiting(task: asyncio.Task) -> None:
                reason = _stop_reason(task)
                for future in waiting.values():
                    if not future.done():
                        future.set_exception(JudgeStopped(reason))
                waiting.clear()

            runner.add_done_callback(stop_waiting)

            async def chat(messages: list[dict[str, str]], request_id: str) -> ChatReply:
                if runner.done():
                    raise JudgeStopped(_stop_reason(runner))
                future = asyncio.get_running_loop().create_future()
                waiting[request_id] = future
                request = ChatRequest(id=request_id, body={"model": self.model, "messages": list(messages)})
                await queue.put((-len(messages), next(order), request))
                result = await future
                if not result.ok:
                    raise JudgeAPIError(f"{result.error} (after {result.attempts} attempts)")
                return ChatReply(result.text, dict(result.usage), result.cost_usd)

            try:
                yield chat
            finally:
                await queue.put((1, next(order), None))  # after every real request
                self.stats = await runner


def _stop_reason(task: asyncio.Task) -> str:
    if task.cancelled():
        return "the judge client was cancelled"
    if task.exception() is not None:
        return f"the judge client failed: {task.exception()}"
    return f"the judge client stopped: {task.result().stopped or 'finished'}"


# ------------------------------------------------------------------------------------------------ cache
def cache_key(*, checkpoint_id: str, beginning: str, seed: int, sample: int, generation: dict[str, Any],
              judge_model: str, prompt_version: str = PROMPT_VERSION) -> str:
    """Stable id of one graded item; any change to what determines the grade gives a new key."""
    payload = json.dumps({"checkpoint": checkpoint_id, "beginning": beginning, "seed": seed, "sample": sample,
                          "generation": generation, "judge_model": judge_model, "prompt_version": prompt_version},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# Records with these statuses are final: a rerun reuses them. "error" (the API failed after all retries)
# is retried by the next run, since nothing was learned about the completion.
FINAL_STATUSES = ("ok", "failed")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a results file.

    A line that is not JSON can only come from a write torn by a crash (every record is written with one
    call); it is skipped with a warning, and its item is simply graded again by the next run.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            warnings.warn(f"{path}: skipping line {number}, not valid JSON ({exc.msg}); a torn write?", stacklevel=2)
    return records


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSONL line with a single write and fsync, so a crash never leaves a torn line mid-file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # A previous crash may have left a torn line without its newline; start ours on a fresh line.
        if os.fstat(fd).st_size and _last_byte(path) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def final_records_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in records if r.get("status") in FINAL_STATUSES}


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class ScoreSummary:
    n: int
    mean: float
    ci95: float  # half-width of the 95% t-interval of the mean (nan when n < 2)

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        return f"{self.mean:.2f} ± {self.ci95:.2f}" if self.n > 1 else f"{self.mean:.2f}"


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30, as in statistical tables.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion (relative error < 1e-7)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))


def mean_ci95(values: Sequence[float]) -> ScoreSummary:
    """Mean and the half-width of its 95% Student-t confidence interval."""
    n = len(values)
    if n == 0:
        return ScoreSummary(0, math.nan, math.nan)
    mean = math.fsum(values) / n
    if n == 1:
        return ScoreSummary(1, mean, math.nan)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return ScoreSummary(n, mean, t975(n - 1) * math.sqrt(variance / n))


AGE_INDEX = {letter: i for i, letter in enumerate(AGE_GROUPS, 1)}  # A=1 ... F=6, for averaging


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-score mean ± 95% CI over the graded records, the age group as A=1..F=6, and failure counts."""
    records = list(records)
    graded = [r["grades"] for r in records if r.get("status") == "ok"]
    summary: dict[str, Any] = {name: mean_ci95([g[name] for g in graded]) for name in SCORES}
    summary["age"] = mean_ci95([AGE_INDEX[g["age_group"]] for g in graded])
    failures: dict[str, int] = {}
    for r in records:
        if r.get("status") != "ok":
            reason = r.get("failure") or r.get("status", "unknown")
            failures[reason] = failures.get(reason, 0) + 1
    summary["n_graded"], summary["n_items"], summary["failures"] = len(graded), len(records), failures
    return summary


def age_letter(index: float) -> str:
    """The age group nearest to a mean index (A=1 ... F=6)."""
    if math.isnan(index):
        return "-"
    return list(AGE_GROUPS)[min(max(round(index), 1), 6) - 1]
