"""Evaluation: grade models like a teacher with a judge LLM, probe their knowledge, measure memorization and
held-out loss.

``students`` (the models under evaluation: our checkpoints or any Hugging Face causal LM), ``judge`` (the
judge LLM over :mod:`tinystories.llm`), ``conversation`` (the paper's judge conversation, grade parsing),
``grading`` (the grading job, the results cache), ``instruct`` (instruction following of Instruct models),
``probes`` (factual / reasoning / context-tracking suites), ``novelty``, ``heldout`` (loss, perplexity, bits per
byte), ``report`` (statistics, tables, PNGs) and ``cli`` (``tinystories eval``).
"""

from tinystories.evaluate.conversation import parse_grades
from tinystories.evaluate.grading import GradeSettings, grade
from tinystories.evaluate.judge import LLMJudge

# `students` (and the modules that run models) import torch; they are imported by name, so that reports and
# grade parsing stay quick to load.
__all__ = ["GradeSettings", "LLMJudge", "grade", "parse_grades"]
