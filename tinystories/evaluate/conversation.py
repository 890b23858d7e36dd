"""The judge conversation of Eldan & Li (2023): the prompts, reading the grades, and the conversation itself.

The first turn shows the story beginning and the student's completion separated by ``***`` and asks for a general
assessment (grammar, consistency with the beginning, whether the sentence split by ``***`` is finished). The
second turn asks for grades out of 10 for grammar, creativity, consistency and plot, and the likely age group of
the writer (A-F). When the grades cannot be read, the judge gets exactly one follow-up question; if that fails
too, the item is recorded as a failure with its reason. A score is never guessed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tinystories.evaluate.judge import Chat

# Bump whenever a prompt text or the parsing rules change: cached grades from another version are not reused.
PROMPT_VERSION = "paper-v2"

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


ASSESSMENT_MAX_TOKENS = 512  # a few paragraphs of assessment
GRADES_MAX_TOKENS = 200  # five short lines, with room for a sentence around them


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
    "ambiguous" (a range, several grades or several age groups), "refusal" (the judge declined).
    ``found`` holds the fields that were read, for the record.
    """

    def __init__(self, reason: str, detail: str, found: dict[str, Any]):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.found = reason, detail, found


_NUMBER = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"  # an exponent is matched so that "1e1/10" is never read as 1/10
# A field's name (markdown and "Consistency with the beginning" included) opens a segment that runs to the next
# field's name or the end of the line; only its "X/10" ("X out of 10") form is read, so "Grammar has 3 slips"
# or "the first 2 sentences" never lend a number. A later segment of the same field overrides an earlier one.
_FIELD = re.compile(r"\b(grammar|creativity|consistency|plot|age(?:\s*group)?)\b", re.IGNORECASE)
_RANGE_START = r"(?:(\d+(?:\.\d+)?)\s*(?:-|\u2013|to|or|and)\s*)?"  # "7-8/10": read, then refused as ambiguous
_GRADE = re.compile(rf"(?<![\w.]){_RANGE_START}{_NUMBER}\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
# Age-group letters are capitals standing alone; "A" followed by a lower-case word is the article.
_LETTER = re.compile(r"(?<![\w'])([A-F])(?![\w'])(?!(?<=A)\s+(?!or\b|and\b)[a-z])")
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:no|')t|i won'?t|i will not|i'?m (?:not )?(?:able|unable)|"
    r"unable to|as an ai)\b",
    re.IGNORECASE,
)


def _segments(text: str) -> list[tuple[str, str]]:
    """(field, the text after its name up to the next field's name or the line's end), in order."""
    out = []
    for line in text.splitlines():
        matches = list(_FIELD.finditer(line))
        for m, after in zip(matches, matches[1:] + [None]):
            name = m.group(1).lower()
            segment = line[m.end() : after.start() if after else None]
            out.append(("age_group" if name.startswith("age") else name, segment))
    return out


def parse_grades(text: str) -> Grades:
    """Read the four grades and the age group from a judge answer, or raise :class:`GradeParseError`.

    Only "Name ... X/10" counts (the last such segment per field); a range ("7-8/10"), two different grades
    in one segment, or several age letters ("B or C", an echoed option list) make the field ambiguous.
    """
    text = text.replace("\u2019", "'")
    read: dict[str, Any] = {}  # field -> value, or ("ambiguous" | "out_of_range", detail)
    for name, segment in _segments(text):
        if name == "age_group":
            letters = sorted(set(_LETTER.findall(segment)))
            if letters:
                read[name] = (
                    letters[0] if len(letters) == 1 else ("ambiguous", f"several age groups ({' or '.join(letters)})")
                )
            continue
        grades = list(_GRADE.finditer(segment))
        if not grades:
            continue
        values = {(g.group(2), g.group(3)) for g in grades}
        first = grades[0]
        if first.group(1) is not None:
            read[name] = ("ambiguous", f"{name} given as a range {first.group(0).strip()}")
        elif len(values) > 1:
            read[name] = ("ambiguous", f"several {name} grades ({', '.join(sorted(f'{v}/{s}' for v, s in values))})")
        elif "e" in first.group(2).lower():
            read[name] = ("ambiguous", f"{name} given as {first.group(2)}/{first.group(3)}, not a plain number")
        elif float(first.group(3)) != MAX_GRADE:
            read[name] = ("out_of_range", f"{name} given as {first.group(2)}/{first.group(3)}, not out of 10")
        elif not MIN_GRADE <= float(first.group(2)) <= MAX_GRADE:
            read[name] = ("out_of_range", f"{name} grade {first.group(2)} is outside 0-10")
        else:
            read[name] = float(first.group(2))
    found = {k: v for k, v in read.items() if not isinstance(v, tuple)}
    for reason in ("out_of_range", "ambiguous"):
        details = [v[1] for v in read.values() if isinstance(v, tuple) and v[0] == reason]
        if details:
            raise GradeParseError(reason, "; ".join(details), found)
    problems = [f"no {name} grade" for name in SCORES if name not in read]
    problems += [] if "age_group" in read else ["no age group A-F"]
    if problems:
        if not found and _REFUSAL.search(text):
            raise GradeParseError("refusal", "the judge declined to grade", found)
        raise GradeParseError("missing", "; ".join(problems), found)
    return Grades(**found)


def follow_up_prompt(error: GradeParseError) -> str:
    return FOLLOW_UP_PROMPT.format(problem=error.detail)


# ------------------------------------------------------------------------------------------------ conversation
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
        reply = await chat(
            messages, f"{request_id}-{turn}", max_tokens=ASSESSMENT_MAX_TOKENS if turn == 1 else GRADES_MAX_TOKENS
        )
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
            failure = {
                "reason": second.reason,
                "detail": second.detail,
                "found": second.found,
                "first_attempt": {"reason": first.reason, "detail": first.detail},
            }
    return {
        "status": "ok" if grades else "failed",
        "grades": grades.as_dict() if grades else None,
        "failure": failure["reason"] if failure else None,
        "failure_detail": failure,
        "follow_up": follow_up,
        "judge_text": answer,
        "conversation": messages,
        "usage": usage,
        "cost_usd": cost,
    }
