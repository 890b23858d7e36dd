"""Instruction following of Instruct checkpoints: rule-checked where a rule is exact, judged where it is not.

Each shipped instruction set (``assets/instructions.jsonl``) holds any of: required words (one verb, noun
and adjective of the child vocabulary), story features, a one-sentence summary and a sentence the story
must contain. The student gets the instructions in the training layout of the Instruct corpus and writes
the story. Then:

- rules: every required word appears in some form (run/ran/running; the same check the synthesis
  corpus is validated with), the given sentence appears verbatim
  (case and spacing aside), and "dialogue" means at least one quoted utterance;
- judge: whether the story follows the summary and shows each other feature (bad ending, moral value,
  plot twist, foreshadowing, conflict), one YES/NO line each, with one follow-up when unreadable.

The score of a story is the fraction of its checks that pass; a story whose judge answer stays
unreadable is a recorded failure without a score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinystories.corpus import format_instructions
from tinystories.evaluate.conversation import GRADES_MAX_TOKENS
from tinystories.evaluate.grading import GradeSettings, run_judged
from tinystories.evaluate.judge import Chat, LLMJudge
from tinystories.evaluate.report import mean_ci95
from tinystories.vocabulary import FEATURE_LABELS, FEATURES, PARTS_OF_SPEECH, missing_words

if TYPE_CHECKING:
    from tinystories.evaluate.students import Student

INSTRUCT_PROMPT_VERSION = "instruct-v1"
RULE_FEATURES = frozenset({"dialogue"})  # features a rule decides exactly; the judge decides the others


@dataclass(frozen=True)
class Instruction:
    id: str
    words: dict[str, str] = field(default_factory=dict)  # part of speech -> word
    features: tuple[str, ...] = ()
    summary: str | None = None
    sentence: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "words": self.words,
            "features": list(self.features),
            "summary": self.summary,
            "sentence": self.sentence,
        }


def load_instructions(path: str | Path | None = None) -> list[Instruction]:
    """The shipped instruction sets, or a JSONL file of the same fields."""
    if path is None:
        text, source = (
            resources.files("tinystories").joinpath("assets/instructions.jsonl").read_text("utf-8"),
            "shipped instructions",
        )
    else:
        text, source = Path(path).read_text("utf-8"), str(path)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        where = f"{source} line {number}"
        unknown_pos = set(d.get("words", {})) - set(PARTS_OF_SPEECH)
        unknown_features = set(d.get("features", [])) - set(FEATURES)
        if "id" not in d:
            raise ValueError(f"{where}: no 'id'")
        if unknown_pos or unknown_features:
            raise ValueError(
                f"{where}: unknown part(s) of speech {sorted(unknown_pos)} or feature(s) "
                f"{sorted(unknown_features)}; known: {PARTS_OF_SPEECH}, {sorted(FEATURES)}"
            )
        if d.get("words") and set(d["words"]) != set(PARTS_OF_SPEECH):
            raise ValueError(f"{where}: 'words' needs one verb, one noun and one adjective (the Instruct layout)")
        if not (d.get("words") or d.get("features") or d.get("summary") or d.get("sentence")):
            raise ValueError(f"{where}: no instruction at all")
        out.append(
            Instruction(
                d["id"], dict(d.get("words", {})), tuple(d.get("features", ())), d.get("summary"), d.get("sentence")
            )
        )
    return out


def instruction_prompt(instruction: Instruction) -> str:
    """The instructions in the Instruct corpus layout (:func:`tinystories.corpus.format_instructions`), ending
    with ``Story:`` and a newline."""
    return format_instructions(
        words=instruction.words or None,
        features=instruction.features,
        summary=instruction.summary,
        sentence=instruction.sentence,
    )


# ------------------------------------------------------------------------------------------------ rules
def _normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("\u201c\u201d\u2018\u2019", "\"\"''"))
    return " ".join(text.split())


def rule_checks(instruction: Instruction, story: str) -> dict[str, bool]:
    """The checks a rule decides: "word:<w>" per required word, "sentence", "feature:dialogue"."""
    missing = set(missing_words(story, instruction.words))  # the synthesis corpus's own required-word check
    checks = {f"word:{word}": word not in missing for word in instruction.words.values()}
    if instruction.sentence:
        checks["sentence"] = _normalise(instruction.sentence) in _normalise(story)
    if "dialogue" in instruction.features:
        checks["feature:dialogue"] = (
            re.search(r"[\"\u201c][^\"\u201c\u201d]*\w[^\"\u201c\u201d]*[\"\u201d]", story) is not None
        )
    return checks


# ------------------------------------------------------------------------------------------------ judge
JUDGE_PROMPT = """\
A student was asked to write a short story for young children that follows these instructions:

{instructions}

Here is the student's story:

{story}

Answer each question with YES or NO, one line each, in exactly this format:
{questions}"""

FOLLOW_UP = """\
I could not read your answer ({problem}). Please reply with only these lines, each ending in YES or NO:
{lines}"""


def judged_questions(instruction: Instruction) -> dict[str, tuple[str, str]]:
    """check name -> (answer label, question) for the checks the judge decides."""
    questions = {}
    if instruction.summary:
        questions["summary"] = ("Summary", "does the story follow the summary?")
    for feature in instruction.features:
        if feature not in RULE_FEATURES:
            questions[f"feature:{feature}"] = (FEATURE_LABELS[feature], f"{FEATURES[feature]}?")
    return questions


def parse_yes_no(text: str, labels: Sequence[str]) -> dict[str, bool]:
    """label -> answer; raises ValueError naming the labels without a readable YES/NO."""
    answers, missing = {}, []
    for label in labels:
        match = re.search(rf"^\W*{re.escape(label)}\W*:[^\n]*?\b(yes|no)\b", text, re.IGNORECASE | re.MULTILINE)
        if match:
            answers[label] = match.group(1).lower() == "yes"
        else:
            missing.append(label)
    if missing:
        raise ValueError(f"no YES/NO for {', '.join(missing)}")
    return answers


async def judge_instruction_following(
    chat: Chat, instruction: Instruction, story: str, *, request_id: str
) -> dict[str, Any]:
    """Rule checks, then (when there is anything to judge) the judge's YES/NO answers; the record's outcome fields."""
    checks = rule_checks(instruction, story)
    questions = judged_questions(instruction)
    messages: list[dict[str, str]] = []
    usage: dict[str, int] = {}
    cost, failure = 0.0, None
    if questions:
        lines = "\n".join(f"{label}: YES or NO  ({question})" for label, question in questions.values())
        messages.append(
            {
                "role": "user",
                "content": JUDGE_PROMPT.format(
                    instructions=instruction_prompt(instruction).strip(), story=story.strip(), questions=lines
                ),
            }
        )
        labels = [label for label, _ in questions.values()]
        for turn in (1, 2):
            reply = await chat(messages, f"{request_id}-{turn}", max_tokens=GRADES_MAX_TOKENS)
            cost += reply.cost_usd
            for name, value in reply.usage.items():
                usage[name] = usage.get(name, 0) + int(value)
            messages.append({"role": "assistant", "content": reply.text})
            try:
                answers = parse_yes_no(reply.text, labels)
            except ValueError as exc:
                failure = str(exc)
                if turn == 1:
                    messages.append(
                        {
                            "role": "user",
                            "content": FOLLOW_UP.format(
                                problem=failure, lines="\n".join(f"{label}: YES or NO" for label in labels)
                            ),
                        }
                    )
                continue
            failure = None
            checks.update({name: answers[label] for name, (label, _) in questions.items()})
            break
    if failure:
        return {
            "status": "failed",
            "failure": "missing",
            "failure_detail": {"detail": failure},
            "checks": checks,
            "score": None,
            "conversation": messages,
            "usage": usage,
            "cost_usd": cost,
        }
    return {
        "status": "ok",
        "failure": None,
        "checks": checks,
        "score": sum(checks.values()) / len(checks),
        "conversation": messages,
        "usage": usage,
        "cost_usd": cost,
    }


def summarize_instruct(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean score ± 95% CI and the pass rate of each kind of check (word, sentence, summary, each feature)."""
    records = list(records)
    ok = [r for r in records if r.get("status") == "ok"]
    kinds: dict[str, list[bool]] = {}
    for r in ok:
        for name, passed in r["checks"].items():
            kinds.setdefault("word" if name.startswith("word:") else name, []).append(bool(passed))
    return {
        "score": mean_ci95([r["score"] for r in ok]),
        "n_scored": len(ok),
        "n_items": len(records),
        "pass_rates": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
    }


def grade_instruction_following(
    students: Sequence[Student],
    judge: LLMJudge,
    instructions: Sequence[Instruction],
    settings: GradeSettings,
    results_path: str | Path,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Instruct checkpoints: stories written to each instruction set, rule-checked and judged."""

    async def assess(chat: Chat, item: dict[str, Any]) -> dict[str, Any]:
        instruction = Instruction(**{**item["instruction"], "features": tuple(item["instruction"]["features"])})
        return await judge_instruction_following(chat, instruction, item["completion"], request_id=item["key"][:24])

    prompts = [{"prompt": instruction_prompt(ins), "instruction": ins.as_dict()} for ins in instructions]
    return run_judged(
        students,
        judge,
        prompts,
        settings,
        results_path,
        assess,
        prompt_version=INSTRUCT_PROMPT_VERSION,
        progress=progress,
    )
