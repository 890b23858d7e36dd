"""Grading completions like a teacher, as Eldan & Li (2023) did: the job that samples each student, holds the
judge conversation of :mod:`tinystories.evaluate.conversation` about every completion, and caches the results.

Results are JSONL records, one per completion, keyed by a hash of (checkpoint, beginning, sample seed,
generation settings, judge model, prompt version): a rerun pays only for items it has not seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.evaluate.conversation import PROMPT_VERSION, judge_completion
from tinystories.evaluate.judge import Chat, ChatReply, LLMJudge
from tinystories.jsonl import JsonlLog, read_jsonl
from tinystories.progress import Progress

if TYPE_CHECKING:
    from tinystories.evaluate.students import Student


# ------------------------------------------------------------------------------------------------ cache
def cache_key(
    *,
    checkpoint_id: str,
    beginning: str,
    seed: int,
    sample: int,
    generation: dict[str, Any],
    judge_model: str,
    prompt_version: str = PROMPT_VERSION,
) -> str:
    """Stable id of one graded item; any change to what determines the grade gives a new key."""
    payload = json.dumps(
        {
            "checkpoint": checkpoint_id,
            "beginning": beginning,
            "seed": seed,
            "sample": sample,
            "generation": generation,
            "judge_model": judge_model,
            "prompt_version": prompt_version,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# Records with these statuses are final: a rerun reuses them. "error" (the API failed after all retries)
# is retried by the next run, since nothing was learned about the completion.
FINAL_STATUSES = ("ok", "failed")


def final_records_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in records if r.get("status") in FINAL_STATUSES}


# ------------------------------------------------------------------------------------------------ beginnings
def load_beginnings(path: str | Path | None = None) -> list[str]:
    """The shipped story beginnings, or a user file: one beginning per line (blank lines and # comments skipped)."""
    if path is None:
        text, source = resources.files("tinystories").joinpath("assets/beginnings.txt").read_text("utf-8"), "shipped"
    else:
        text, source = Path(path).read_text("utf-8"), str(path)
    beginnings = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not beginnings:
        raise ValueError(f"{source} beginnings file holds no beginnings")
    return beginnings


# ------------------------------------------------------------------------------------------------ grading
@dataclass(frozen=True)
class GradeSettings:
    judge_model: str
    samples: int = 10  # completions per beginning
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ValueError(f"samples ({self.samples}) and max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.judge_model:
            raise ValueError("judge_model must name the judge")

    def generation(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }


def beginning_seed(seed: int, beginning: str) -> int:
    """The generator seed of one beginning's batch: independent of the order and number of beginnings."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{beginning}".encode()).digest()[:4], "little")


def _student_fields(student: Student) -> dict[str, Any]:
    info = student.info
    return {
        "checkpoint": info.name,
        "checkpoint_id": info.identity,
        "run": info.run,
        "step": info.step,
        "hidden_size": info.hidden_size,
        "num_layers": info.num_layers,
        "num_parameters": info.num_parameters,
    }


# assess(chat, item) -> the outcome fields of a record (status ok/failed, ...); raises when the API failed.
Assess = Callable[[Chat, dict[str, Any]], Awaitable[dict[str, Any]]]


def grade(
    students: Sequence[Student],
    judge: LLMJudge,
    beginnings: Sequence[str],
    settings: GradeSettings,
    results_path: str | Path,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Grade every student's completions of every beginning; returns this plan's final records (cached and new).

    ``judge``: an :class:`~tinystories.evaluate.judge.LLMJudge` (or anything with the same ``session()``).
    """

    async def assess(chat: Chat, item: dict[str, Any]) -> dict[str, Any]:
        return await judge_completion(chat, item["beginning"], item["completion"], request_id=item["key"][:24])

    prompts = [{"prompt": b, "beginning_index": i, "beginning": b} for i, b in enumerate(beginnings)]
    return run_judged(
        students, judge, prompts, settings, results_path, assess, prompt_version=PROMPT_VERSION, progress=progress
    )


def run_judged(
    students: Sequence[Student],
    judge: LLMJudge,
    prompts: Sequence[dict[str, Any]],
    settings: GradeSettings,
    results_path: str | Path,
    assess: Assess,
    *,
    prompt_version: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``settings.samples`` completions of each prompt (``{"prompt": text, **fields}``) per student
    and ``assess`` each in a session of ``judge``; one JSONL record per completion in ``results_path``.

    Cached records (same key, status ok or failed) are reused without generating or requesting anything.
    Records whose judge call failed (status error) keep their completion and the judge's turns answered before
    the failure (``turns``): the conversation is judged again from there, without paying for those turns twice.
    """
    results_path = Path(results_path)
    existing = list(read_jsonl(results_path))
    final = final_records_by_key(existing)
    errored = {r["key"]: r for r in existing if r.get("status") == "error"}  # the last one has the most turns
    plan: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    for student in students:
        missing: dict[str, list[dict[str, Any]]] = {}
        for fields in prompts:
            for sample in range(settings.samples):
                key = cache_key(
                    checkpoint_id=student.info.identity,
                    beginning=fields["prompt"],
                    seed=settings.seed,
                    sample=sample,
                    generation=settings.generation(),
                    judge_model=settings.judge_model,
                    prompt_version=prompt_version,
                )
                item = {
                    "key": key,
                    **_student_fields(student),
                    **fields,
                    "sample": sample,
                    "seed": settings.seed,
                    "generation": settings.generation(),
                    "judge_model": settings.judge_model,
                    "prompt_version": prompt_version,
                }
                plan.append(item)
                if key in final:
                    continue
                if key in errored:
                    item["completion"] = errored[key]["completion"]
                else:
                    missing.setdefault(fields["prompt"], []).append(item)
                todo.append(item)
        _generate(student, missing, settings, progress=progress)
    if todo:
        paid = {key: record.get("turns", []) for key, record in errored.items()}
        asyncio.run(_judge_all(judge, assess, todo, paid, results_path, progress=progress))
    final = final_records_by_key(read_jsonl(results_path))
    return [final[item["key"]] for item in plan if item["key"] in final]


def _generate(
    student: Student, missing: dict[str, list[dict[str, Any]]], settings: GradeSettings, *, progress: bool
) -> None:
    """Fill in the completions of the missing items: one batch of all samples per prompt, seeded per prompt."""
    if not missing:
        return
    with Progress(f"sampling {student.info.name}", len(missing), enabled=progress) as bar:
        for prompt, items in missing.items():
            completions = student.complete(
                [prompt] * settings.samples,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                seed=beginning_seed(settings.seed, prompt),
            )
            for item in items:
                item["completion"] = completions[item["sample"]]
            bar.advance()


def _replaying(chat: Chat, paid: list[dict[str, Any]], turns: list[dict[str, Any]]) -> Chat:
    """``chat`` that appends every answered turn to ``turns``, and answers from ``paid`` (the turns of an
    interrupted run) a request already paid for: same request id, same messages."""
    earlier = {(t["id"], t["prompt_sha256"]): t for t in paid}

    async def replaying_chat(messages: list[dict[str, str]], request_id: str, **options: Any) -> ChatReply:
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()
        turn = earlier.get((request_id, digest))
        if turn is None:
            reply = await chat(messages, request_id, **options)
            turn = {
                "id": request_id,
                "prompt_sha256": digest,
                "text": reply.text,
                "usage": reply.usage,
                "cost_usd": reply.cost_usd,
            }
        turns.append(turn)
        return ChatReply(turn["text"], dict(turn["usage"]), turn["cost_usd"])

    return replaying_chat


async def _judge_all(
    judge: LLMJudge,
    assess: Assess,
    items: list[dict[str, Any]],
    paid: dict[str, list[dict[str, Any]]],
    results_path: Path,
    *,
    progress: bool,
) -> None:
    with JsonlLog(results_path, fsync="always") as log, Progress("judging", len(items), enabled=progress) as bar:
        async with judge.session() as chat:

            async def one(item: dict[str, Any]) -> None:
                turns: list[dict[str, Any]] = []
                try:
                    outcome = await assess(_replaying(chat, paid.get(item["key"], []), turns), item)
                except Exception as exc:  # the API failed or the budget stopped: keep the completion and every
                    # answered turn (with its text), so the next run goes on from there
                    outcome = {
                        "status": "error",
                        "grades": None,
                        "failure": "api_error",
                        "failure_detail": {"error": f"{type(exc).__name__}: {exc}"},
                        "turns": turns,
                        "cost_usd": sum(t["cost_usd"] for t in turns),
                    }
                log.append({**item, **outcome, "time": time.time()})
                bar.advance()

            await asyncio.gather(*(one(item) for item in items))
