"""Novelty: are completions new stories, or recitations of the training data?

As in the paper: training stories are cut in the middle, the model completes the first half, and each
completion is compared with the story's true ending and with the whole training corpus:

- Rouge-L F1 (longest common word subsequence) with the original ending;
- the fraction of the completion's word n-grams that occur in the original ending, and anywhere in the corpus;
- the nearest *other* training story: the one whose text holds the longest common subsequence with the
  completion, relative to the completion's length (LCS precision); candidates come from an n-gram index.

Stories are compared as lower-cased word sequences.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinystories.evaluate.students import Student

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Crochemore et al. 2001): O(len(b)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """Rouge-L F1 of two word sequences."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_overlap(candidate: Sequence[str], reference_ngrams: set[tuple[str, ...]], n: int) -> float:
    """Fraction of the candidate's n-grams found in the reference set (0 when the candidate has none)."""
    grams = ngrams(candidate, n)
    return sum(g in reference_ngrams for g in grams) / len(grams) if grams else 0.0


def cut_story(story: str) -> tuple[str, str]:
    """Split a story at the word boundary nearest its middle character: (beginning, true ending)."""
    middle = len(story) // 2
    spaces = [m.start() for m in re.finditer(r" ", story)]
    if not spaces:
        raise ValueError(f"story too short to cut: {story[:60]!r}")
    cut = min(spaces, key=lambda i: abs(i - middle))
    return story[:cut], story[cut:]


class CorpusIndex:
    """An inverted index of word n-grams over the training stories (held in memory: ~100K stories is fine)."""

    def __init__(self, stories: Sequence[str], n: int = 4):
        self.stories, self.n = list(stories), n
        self.tokens = [words(s) for s in self.stories]
        self.postings: dict[tuple[str, ...], list[int]] = {}
        for story_id, tokens in enumerate(self.tokens):
            for gram in set(ngrams(tokens, n)):
                self.postings.setdefault(gram, []).append(story_id)

    def fraction_in_corpus(self, candidate: Sequence[str]) -> float:
        grams = ngrams(candidate, self.n)
        return sum(g in self.postings for g in grams) / len(grams) if grams else 0.0

    def nearest(
        self, candidate: Sequence[str], *, exclude: int | None = None, candidates: int = 20
    ) -> tuple[int | None, float]:
        """(story id, LCS precision) of the story that best contains the candidate, among the ones sharing most
        n-grams."""
        shared: Counter[int] = Counter()
        for gram in set(ngrams(candidate, self.n)):
            shared.update(self.postings.get(gram, ()))
        if exclude is not None:
            shared.pop(exclude, None)
        best, best_score = None, 0.0
        for story_id, _ in shared.most_common(candidates):
            score = lcs_length(candidate, self.tokens[story_id]) / len(candidate)
            if score > best_score:
                best, best_score = story_id, score
        return best, best_score


@dataclass
class NoveltyItem:
    story_index: int
    beginning: str
    original_ending: str
    completion: str
    rouge_l_ending: float
    ngram_overlap_ending: float
    ngram_overlap_corpus: float
    nearest_story: int | None
    nearest_lcs_precision: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_novelty(
    student: Student,
    corpus: Sequence[str],
    *,
    n_stories: int = 100,
    n: int = 4,
    seed: int = 0,
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 16,
    index: CorpusIndex | None = None,
) -> list[NoveltyItem]:
    """Cut ``n_stories`` stories drawn from ``corpus`` (seeded), complete them and measure overlaps.

    Greedy decoding by default: it is the decoding most likely to recite memorized text.
    """
    index = index or CorpusIndex(corpus, n)
    eligible = [i for i, s in enumerate(corpus) if len(words(s)) >= 2 * n + 2]
    chosen = random.Random(seed).sample(eligible, min(n_stories, len(eligible)))
    items = []
    for first in range(0, len(chosen), batch_size):
        group = chosen[first : first + batch_size]
        cuts = [cut_story(corpus[i]) for i in group]
        completions = student.complete(
            [b for b, _ in cuts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed + first,
        )
        for story_id, (beginning, ending), completion in zip(group, cuts, completions):
            done, truth = words(completion), words(ending)
            nearest, precision = index.nearest(done, exclude=story_id) if done else (None, 0.0)
            items.append(
                NoveltyItem(
                    story_index=story_id,
                    beginning=beginning,
                    original_ending=ending,
                    completion=completion,
                    rouge_l_ending=rouge_l(done, truth),
                    ngram_overlap_ending=ngram_overlap(done, set(ngrams(truth, n)), n),
                    ngram_overlap_corpus=index.fraction_in_corpus(done),
                    nearest_story=nearest,
                    nearest_lcs_precision=precision,
                )
            )
    return items


METRICS = ("rouge_l_ending", "ngram_overlap_ending", "ngram_overlap_corpus", "nearest_lcs_precision")


def distribution(items: Sequence[NoveltyItem]) -> dict[str, dict[str, float]]:
    """Mean and quantiles (min, 10%, 50%, 90%, max) of each metric."""
    import numpy as np

    out = {}
    for metric in METRICS:
        values = np.array([getattr(item, metric) for item in items], dtype=float)
        if values.size == 0:
            continue
        q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
        out[metric] = {"mean": float(values.mean()), "min": q[0], "p10": q[1], "p50": q[2], "p90": q[3], "max": q[4]}
    return {m: {k: float(v) for k, v in d.items()} for m, d in out.items()}
