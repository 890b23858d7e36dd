"""The paper's synthesis prompt and what is sampled for each story (a pure function of seed and index).

Story ``index`` of a run with seed ``seed`` always gets the same id (``{seed}-{index}``), the same verb, noun
and adjective from the child vocabulary, the same features and (Instruct) the same instruction types, so a
run can be stopped at any point and the same command continues it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tinystories.vocabulary import ADJECTIVES, FEATURES, NOUNS, VERBS

SUMMARY_MARKER = "Summarize the following children's story in one short sentence, using only simple words.\n\nStory:\n"
_WORDS_RE = re.compile(r'the verb "([a-z]+)", the noun "([a-z]+)" and the adjective "([a-z]+)"')

# Instruct: the instruction types, in the order the layout prints them.
INSTRUCTION_TYPES = ("features", "words", "summary", "sentence")
DEFAULT_OOD_COMBINATION = ("words", "summary")


def build_prompt(verb: str, noun: str, adjective: str, features: list[str] | tuple[str, ...]) -> str:
    """The paper's prompt: simple words, the three required words, the sampled features."""
    prompt = (
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child would "
        f'likely understand. The story should use the verb "{verb}", the noun "{noun}" and the adjective '
        f'"{adjective}".'
    )
    if features:
        prompt += " The story should have the following features: " + ", ".join(FEATURES[f] for f in features) + "."
    return prompt + " Remember to only use simple words!"


def parse_prompt(prompt: str) -> tuple[dict[str, str], list[str]]:
    """Inverse of `build_prompt`: ({"verb": .., "noun": .., "adjective": ..}, features)."""
    match = _WORDS_RE.search(prompt)
    words = dict(zip(("verb", "noun", "adjective"), match.groups())) if match else {}
    return words, [name for name, phrase in FEATURES.items() if phrase in prompt]


def summary_prompt(story: str) -> str:
    return SUMMARY_MARKER + story


@dataclass(frozen=True)
class StorySpec:
    """Everything sampled for one story; a pure function of (seed, index)."""

    id: str
    index: int
    seed: int
    words: dict[str, str]
    features: tuple[str, ...]
    instructions: tuple[str, ...]  # Instruct only: which instruction types precede the story
    prompt: str


def story_id(seed: int, index: int) -> str:
    return f"{seed}-{index}"


def sample_spec(seed: int, index: int, *, instruct: bool = False) -> StorySpec:
    rng = random.Random(f"tinystories-synth:{seed}:{index}")  # str seeds hash with SHA-512: stable everywhere
    words = {"verb": rng.choice(VERBS), "noun": rng.choice(NOUNS), "adjective": rng.choice(ADJECTIVES)}
    instructions: tuple[str, ...] = ()
    while instruct and not instructions:  # a non-empty subset, uniform over the 15 of them
        instructions = tuple(t for t in INSTRUCTION_TYPES if rng.random() < 0.5)
    names = list(FEATURES)
    at_least = 1 if "features" in instructions else 0  # a "Features:" line needs a feature to name
    features = tuple(sorted(rng.sample(names, rng.randint(at_least, 3)), key=names.index))
    prompt = build_prompt(words["verb"], words["noun"], words["adjective"], features)
    return StorySpec(story_id(seed, index), index, seed, words, features, instructions, prompt)


def split_of(instructions: Iterable[str], ood_combination: Iterable[str]) -> str:
    """'ood' for the held-out combination of instruction types (kept out of training), else 'train'."""
    return "ood" if set(instructions) == set(ood_combination) else "train"


def pick_sentence(story: str, spec: StorySpec) -> str:
    sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]+[\"']?", story) if len(s.split()) >= 3]
    return random.Random(f"sentence:{spec.id}").choice(sentences) if sentences else story.strip().split("\n")[0]
