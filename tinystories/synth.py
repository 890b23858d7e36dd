"""Story synthesis with any OpenAI-compatible LLM (TinyStories, section 2), and the Instruct corpus."""

from __future__ import annotations

import re

from tinystories.vocabulary import FEATURES

SUMMARY_MARKER = "Summarize the following children's story in one short sentence, using only simple words.\n\nStory:\n"
_WORDS_RE = re.compile(r'the verb "([a-z]+)", the noun "([a-z]+)" and the adjective "([a-z]+)"')


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
