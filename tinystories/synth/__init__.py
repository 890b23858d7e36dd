"""Synthesis: a TinyStories-style corpus from any OpenAI-compatible LLM (the paper's section 2).

Each story's prompt injects randomness (a verb, noun and adjective a 3-4-year-old knows, and a random
subset of story features); the Instruct variant prefixes each story with its instructions and holds one
combination of instruction types out. ``prompts`` (what is sampled and asked), ``quality`` (validation
flags, duplicates), ``job`` (the resumable job and its files), ``online`` / ``batch_api`` (the backends;
``backend``: what they need from a job), ``stats`` and ``cli`` (``tinystories synth``).
"""

from tinystories.synth.job import SynthConfig, SynthSummary, synthesize
from tinystories.synth.prompts import INSTRUCTION_TYPES, build_prompt, parse_prompt, sample_spec
from tinystories.synth.quality import DuplicateIndex, validate

__all__ = [
    "INSTRUCTION_TYPES",
    "DuplicateIndex",
    "SynthConfig",
    "SynthSummary",
    "build_prompt",
    "parse_prompt",
    "sample_spec",
    "synthesize",
    "validate",
]
