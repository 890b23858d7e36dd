"""Evaluation: grade models like a teacher with a judge LLM, probe their knowledge, measure memorization and
held-out loss.

``students`` (the models under evaluation: our checkpoints or any Hugging Face causal LM), ``judge`` (the
judge LLM over :mod:`tinystories.llm`), ``grading`` (the paper's judge conversation, grade parsing, the
results cache), ``instruct`` (instruction following of Instruct models), ``probes`` (factual / reasoning /
context-tracking suites), ``novelty``, ``heldout`` (loss, perplexity, bits per byte), ``report`` (statistics,
tables, PNGs) and ``cli`` (``tinystories eval``).
"""

from tinystories.evaluate.grading import GradeSettings, grade, parse_grades
from tinystories.evaluate.judge import LLMJudge
from tinystories.evaluate.students import GPTNeoStudent, HFStudent, Student, StudentInfo, load_student

__all__ = ["GPTNeoStudent", "GradeSettings", "HFStudent", "LLMJudge", "Student", "StudentInfo", "grade",
           "load_student", "parse_grades"]
