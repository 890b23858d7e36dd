"""Byte-level BPE tokenizer, GPT-2 compatible, with a native (C++) core.

``Tokenizer.from_pretrained("gpt2")`` (also ``"gpt-neo"``: the same tokenizer) encodes exactly like
tiktoken's ``gpt2`` encoding, several times faster. The same class trains new tokenizers
(``Tokenizer.train``), keeps only the K most used tokens of a corpus (``restrict``, as the TinyStories
paper did with GPT-Neo's top 10K tokens), and saves to our one-file JSON format or to a Hugging Face
``tokenizers`` ``tokenizer.json`` (the formats: :mod:`tinystories.tokenizer.files`).

Model: ``vocab[id]`` is the byte string of token ``id``; ``merges[r] = (left, right, result)`` joins
two adjacent tokens, lower ranks first; special tokens (``<|endoftext|>``) are matched in the text
before pre-tokenization and are never produced by merges.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from tinystories import _core
from tinystories.atomic import atomic_write_bytes
from tinystories.corpus import EOT, read_text_chunks
from tinystories.progress import Progress
from tinystories.tokenizer import files

if TYPE_CHECKING:
    from numpy.typing import NDArray

# The pre-tokenization pattern, for reference and for exports; the C++ scanner implements it exactly.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

AllowedSpecial = Literal["all", "none_raise"] | Iterable[str]
Corpus = str | os.PathLike | Iterable[str | os.PathLike]


def _replace_surrogates(text: str) -> str:
    # What tiktoken does with strings that cannot be UTF-8 (lone surrogates): each becomes U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """A byte-level BPE tokenizer with GPT-2 pre-tokenization (see the module docstring)."""

    def __init__(self, vocab: Sequence[bytes], merges: Sequence[tuple[int, int, int]], special_tokens: dict[str, int]):
        """Build from token bytes (index = id; entries at special ids are ignored), merges in rank order
        as (left, right, result) ids, and special token ids. Raises ValueError on an inconsistent model."""
        # tuple() of a tuple[int, int, int] is typed tuple[int, ...]: mypy loses the length, the values keep it
        merge_tuples = cast(list[tuple[int, int, int]], [tuple(m) for m in merges])
        self._core = _core.BpeTokenizer(list(vocab), merge_tuples, sorted(special_tokens.items()))
        self._special_tokens = dict(special_tokens)
        self._all_special_ids = sorted(self._special_tokens.values())

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> Tokenizer:
        """Load GPT-2's ``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt`` (GPT-Neo uses the same)."""
        return cls(*files.read_gpt2_files(vocab_json, merges_txt))

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> Tokenizer:
        """GPT-2's tokenizer (``"gpt2"``; ``"gpt-neo"`` is the same) from the local cache, downloaded on first
        use (see :func:`tinystories.tokenizer.files.pretrained_files`)."""
        return cls.from_gpt2_files(*files.pretrained_files(name))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load our JSON format (``save``); a Hugging Face byte-level BPE ``tokenizer.json`` also works."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read a tokenizer JSON file: {e}") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> Tokenizer:
        """A tokenizer from the text of a ``save``d file (or of a HF tokenizer.json); errors name ``source``."""
        parts = files.parse_tokenizer_json(text, source)
        try:
            return cls(*parts)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_json(self) -> str:
        """The tokenizer in our one-file JSON format (what ``save`` writes; ``from_json`` reads it).
        Token bytes are spelled with GPT-2's byte-to-character map, as in vocab.json; merges are
        [left, right] id pairs in rank order (docs/tokenizer.md)."""
        return files.our_json(self._core.vocab(), self._core.merges(), self._special_tokens, self.fingerprint)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_json()`` to path atomically (temporary file + rename)."""
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def save_hf(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face ``tokenizers`` tokenizer.json (``tokenizers.Tokenizer.from_file`` loads it and
        encodes like ``encode(text, allowed_special="all")``). A folder path gets ``tokenizer.json`` inside."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "tokenizer.json"
        atomic_write_bytes(path, files.hf_json(self._core.vocab(), self._core.merges(), self._special_tokens).encode())

    # ---- training and restriction ----------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts_or_files: Corpus,
        vocab_size: int,
        special_tokens: Sequence[str] = (EOT,),
        *,
        num_threads: int | None = None,
        errors: Literal["strict", "replace"] = "strict",
        progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE over the GPT-2 pre-tokenization.

        ``texts_or_files``: a str (text), a path (``os.PathLike``: a UTF-8 ``.txt`` or ``.txt.zst`` file) or an
        iterable of them. Special tokens are cut out of the text (never merged across) and get the last ids.
        Ids: 0..255 are the bytes, then one id per merge, then the special tokens; ``vocab_size`` counts all.
        Deterministic: each step merges the most frequent adjacent pair; ties go to the pair whose
        (left bytes, right bytes) is lexicographically smallest. Stops early if no pair is left.
        ``progress``: show a rich progress bar while reading.
        """
        specials = list(special_tokens)
        _check_special_tokens(specials)
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size {vocab_size} is below 256 byte tokens + {len(specials)} special tokens")
        trainer = _core.BpeTrainer(specials, _threads(num_threads))
        for batch in _iter_corpus_batches(texts_or_files, errors, "counting pre-tokens" if progress else None):
            trainer.add_texts(batch)
        if trainer.num_pieces() == 0:
            raise ValueError("empty corpus: no text to train on")
        vocab, merges = trainer.train(vocab_size - len(specials))
        special_ids = {t: len(vocab) + k for k, t in enumerate(specials)}
        return cls([*vocab, *(b"" for _ in specials)], merges, special_ids)

    def restrict(
        self,
        top_k: int,
        corpus: Corpus,
        *,
        num_threads: int | None = None,
        errors: Literal["strict", "replace"] = "strict",
        progress: bool = False,
    ) -> Tokenizer:
        """Keep ``top_k`` tokens: the 256 byte tokens, the special tokens, then the tokens most frequent when
        this tokenizer encodes ``corpus`` (ties: lower id first; unused tokens last, in id order), each with
        the tokens its merges are built from. Merges producing dropped tokens are dropped, so the result is
        a standard byte-level BPE (lossless); ids are renumbered 0..top_k-1 keeping their order."""
        n_required = 256 + len(self._special_tokens)
        if not n_required <= top_k <= self.n_vocab:
            raise ValueError(
                f"top_k must be between {n_required} (bytes + special tokens) and n_vocab {self.n_vocab}, got {top_k}"
            )
        counts = np.zeros(self.n_vocab, dtype=np.int64)
        for batch in _iter_corpus_batches(corpus, errors, "counting tokens" if progress else None):
            for ids in self.encode_batch_to_numpy(batch, num_threads=num_threads, allowed_special="all"):
                counts += np.bincount(ids, minlength=self.n_vocab)
        vocab, merges = self._core.vocab(), self._core.merges()
        parents: dict[int, tuple[int, int]] = {}
        for left, right, result in merges:
            parents.setdefault(result, (left, right))  # the first merge that builds a token
        keep = {i for i, t in enumerate(vocab) if len(t) == 1 and i not in parents} | set(self._special_tokens.values())
        for token in sorted(range(self.n_vocab), key=lambda i: (-counts[i], i)):
            if len(keep) == top_k:
                break
            closure, stack = set(), [token]
            while stack:
                t = stack.pop()
                if t not in keep and t not in closure:
                    closure.add(t)
                    stack.extend(parents.get(t, ()))
            if len(keep) + len(closure) <= top_k:
                keep |= closure
        new_id = {old: new for new, old in enumerate(sorted(keep))}
        return Tokenizer(
            [vocab[old] for old in sorted(keep)],
            [(new_id[a], new_id[b], new_id[r]) for a, b, r in merges if r in keep and a in keep and b in keep],
            {t: new_id[i] for t, i in self._special_tokens.items()},
        )

    # ---- encoding ---------------------------------------------------------------------------------

    def _allowed_ids(self, allowed_special: AllowedSpecial) -> list[int]:
        if allowed_special == "none_raise":
            return []
        if allowed_special == "all":
            return self._all_special_ids
        if isinstance(allowed_special, str):
            raise ValueError(
                f'allowed_special must be "all", "none_raise" or a set of special tokens, got {allowed_special!r}'
            )
        allowed = set(allowed_special)
        unknown = allowed - self._special_tokens.keys()
        if unknown:
            raise ValueError(
                f"unknown special token(s) {sorted(unknown)}; this tokenizer has {sorted(self._special_tokens)}"
            )
        return sorted(self._special_tokens[t] for t in allowed)

    def encode(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> list[int]:
        """Token ids of text, exactly as tiktoken: allowed special tokens become their id; any other
        special token in the text raises ValueError (use ``encode_ordinary`` to treat them as text)."""
        allowed = self._allowed_ids(allowed_special)
        try:
            return self._core.encode(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode(_replace_surrogates(text), allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text with special tokens treated as plain text."""
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            return self._core.encode_ordinary(_replace_surrogates(text))

    def encode_to_numpy(
        self, text: str, *, allowed_special: AllowedSpecial = "none_raise"
    ) -> NDArray[np.unsignedinteger]:
        """``encode`` into a numpy array: uint16 when n_vocab <= 65536, else uint32."""
        allowed = self._allowed_ids(allowed_special)
        try:
            return self._core.encode_to_numpy(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode_to_numpy(_replace_surrogates(text), allowed)

    def encode_batch(
        self, texts: Sequence[str], *, num_threads: int | None = None, allowed_special: AllowedSpecial = "none_raise"
    ) -> list[list[int]]:
        """``encode`` of each text on ``num_threads`` C++ threads (default: all cores) without the GIL."""
        allowed = self._allowed_ids(allowed_special)
        texts = list(texts)
        try:
            return self._core.encode_batch(texts, allowed, _threads(num_threads))
        except UnicodeEncodeError:
            return self._core.encode_batch([_replace_surrogates(t) for t in texts], allowed, _threads(num_threads))

    def encode_batch_to_numpy(
        self, texts: Sequence[str], *, num_threads: int | None = None, allowed_special: AllowedSpecial = "none_raise"
    ) -> list[NDArray[np.unsignedinteger]]:
        """``encode_batch`` with one numpy array per text (dtype as in ``encode_to_numpy``)."""
        allowed = self._allowed_ids(allowed_special)
        texts = list(texts)
        try:
            return self._core.encode_batch_to_numpy(texts, allowed, _threads(num_threads))
        except UnicodeEncodeError:
            return self._core.encode_batch_to_numpy(
                [_replace_surrogates(t) for t in texts], allowed, _threads(num_threads)
            )

    def decode_bytes(self, ids: Sequence[int] | NDArray[np.integer]) -> bytes:
        """The bytes of the tokens (special tokens give their text). ValueError on an unknown id."""
        return self._core.decode_bytes(ids)

    def decode(self, ids: Sequence[int] | NDArray[np.integer]) -> str:
        """Text of the tokens; bytes that are not valid UTF-8 become U+FFFD (as tiktoken's decode)."""
        return self._core.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self._core.decode_bytes([token_id])

    # ---- properties -------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>``; ValueError when this tokenizer has none."""
        if EOT not in self._special_tokens:
            raise ValueError(f"this tokenizer has no {EOT} token (special tokens: {sorted(self._special_tokens)})")
        return self._special_tokens[EOT]

    @property
    def vocab(self) -> list[bytes]:
        """Bytes of every token by id (special tokens: their text)."""
        return self._core.vocab()

    @property
    def merges(self) -> list[tuple[int, int, int]]:
        """(left, right, result) ids in rank order."""
        return self._core.merges()

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 hex of (token bytes, merges, special tokens): equal iff two tokenizers encode alike."""
        h = hashlib.sha256(b"tinystories-bpe-v1\0")
        for token in self._core.vocab():
            h.update(len(token).to_bytes(4, "little") + token)
        h.update(np.asarray(self._core.merges(), dtype="<u4").tobytes())
        h.update(json.dumps(sorted(self._special_tokens.items())).encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        merges = len(self._core.merges())
        return f"Tokenizer(n_vocab={self.n_vocab}, merges={merges}, special_tokens={self._special_tokens})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[type[Tokenizer], tuple[list[bytes], list[tuple[int, int, int]], dict[str, int]]]:
        """Pickle as the constructor's arguments (the native core cannot be pickled), so a tokenizer goes to
        ``multiprocessing`` and ``DataLoader`` workers. They rebuild exactly this tokenizer (vocab entries at
        special ids are ignored by the constructor, as here) and cost a tenth of the JSON form's round trip."""
        return type(self), (self._core.vocab(), self._core.merges(), self._special_tokens)


def resolve_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a name (``"gpt2"``, ``"gpt-neo"``), a JSON file (ours or HF), or a folder holding
    ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``."""
    path = Path(spec)
    if isinstance(spec, str) and (spec in files.PRETRAINED or spec in files.ALIASES) and not path.exists():
        return Tokenizer.from_pretrained(spec)
    if path.is_file():
        return Tokenizer.load(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.load(path / "tokenizer.json")
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return Tokenizer.from_gpt2_files(path / "vocab.json", path / "merges.txt")
        raise ValueError(f"{path}: folder has neither tokenizer.json nor vocab.json + merges.txt")
    raise ValueError(
        f"cannot resolve tokenizer {str(spec)!r}: not a known name "
        f"({sorted([*files.PRETRAINED, *files.ALIASES])}), file or folder"
    )


def _threads(num_threads: int | None) -> int:
    if num_threads is None:  # the cores this process may run on (containers often allow fewer than exist)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads


def _check_special_tokens(specials: Sequence[str]) -> None:
    if isinstance(specials, str):
        raise TypeError("special_tokens must be a sequence of strings, not one string")
    for t in specials:
        if not isinstance(t, str) or not t:
            raise ValueError(f"special tokens must be non-empty strings, got {t!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"duplicate special tokens in {list(specials)}")


def _iter_corpus_batches(
    corpus: Corpus, errors: Literal["strict", "replace"], progress: str | None = None, batch_chars: int = 16 << 20
) -> Iterator[list[str]]:
    """Lists of texts (about batch_chars each) from a text, a file path or an iterable of them; with
    ``progress`` (a description), a progress bar over the bytes read (sized when the corpus is a list of files)."""
    items: Iterable[str | os.PathLike] = [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus
    total = None
    if isinstance(items, (list, tuple)) and all(isinstance(i, os.PathLike) and Path(i).is_file() for i in items):
        total = sum(Path(i).stat().st_size for i in items)
    with Progress(progress or "", total, unit="bytes", enabled=progress is not None) as bar:
        batch: list[str] = []
        size = 0
        for item in items:
            if isinstance(item, os.PathLike):
                chunks: Iterable[str] = read_text_chunks(item, errors, on_read=bar.advance)
            elif isinstance(item, str):
                chunks = [item]
                bar.advance(len(item))
            else:
                raise TypeError(f"corpus items must be str (text) or os.PathLike (file), got {type(item).__name__}")
            for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size >= batch_chars:
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch
