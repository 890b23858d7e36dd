"""Quality flags of a synthesized story: required words missing, too short, not plain text, and (near-)duplicates."""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

from tinystories.vocabulary import letter_words, missing_words

_NOT_PLAIN = re.compile(r"(^#{1,6}\s|\*\*|__|```|^\s*[-*+]\s|^\s*\d+\.\s|<[a-z/][^>]*>|^title:)", re.I | re.M)


def validate(story: str, words: dict[str, str], *, min_words: int = 50) -> list[str]:
    """Flags for a story: missing_word:<w>, too_short, not_plain_text. An empty list means valid."""
    flags = [f"missing_word:{w}" for w in missing_words(story, words)]
    if len(story.split()) < min_words:
        flags.append("too_short")
    if _NOT_PLAIN.search(story) or any(ord(c) > 0x2FFF for c in story):
        flags.append("not_plain_text")
    return flags


class DuplicateIndex:
    """Exact duplicates (hash of the normalized text) and near duplicates (MinHash over word 5-shingles
    with LSH banding, estimated Jaccard >= threshold). Memory: ~`bands` dict entries per story."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, bands: int = 16, shingle: int = 5):
        self.threshold, self.num_perm, self.bands, self.shingle = threshold, num_perm, bands, shingle
        self._rows = num_perm // bands
        rng = np.random.default_rng(1234)  # fixed: signatures must agree across runs
        self._a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
        self._exact: dict[bytes, str] = {}
        self._bands: list[dict[bytes, str]] = [{} for _ in range(bands)]
        self._signatures: dict[str, np.ndarray] = {}

    def _signature(self, words: list[str]) -> np.ndarray:
        n = self.shingle
        shingles = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        hashes = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
        # (a*x + b) mod 2^64 is a fine universal-ish hash family for MinHash on 32-bit inputs
        return (hashes[:, None] * self._a[None, :] + self._b[None, :]).min(axis=0)

    def add(self, story_id: str, text: str) -> list[str]:
        """Index `text`; returns flags (duplicate_of:<id> / near_duplicate_of:<id>) against earlier texts."""
        words = letter_words(text)
        key = hashlib.blake2b(" ".join(words).encode(), digest_size=16).digest()
        if key in self._exact:
            return [f"duplicate_of:{self._exact[key]}"]
        self._exact[key] = story_id
        if self.threshold <= 0 or len(words) < self.shingle:
            return []
        signature = self._signature(words)
        flags: list[str] = []
        for band, table in enumerate(self._bands):
            band_key = signature[band * self._rows : (band + 1) * self._rows].tobytes()
            other = table.get(band_key)
            if other is None:
                table[band_key] = story_id
            elif not flags and float((self._signatures[other] == signature).mean()) >= self.threshold:
                flags.append(f"near_duplicate_of:{other}")
        self._signatures[story_id] = signature
        return flags
