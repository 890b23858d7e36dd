"""Byte-level BPE tokenizer, GPT-2 compatible, with a native (C++) core.

``Tokenizer.from_pretrained("gpt2")`` (also ``"gpt-neo"``: the same tokenizer) encodes exactly like
tiktoken's ``gpt2`` encoding, several times faster. The same class trains new tokenizers
(``Tokenizer.train``), keeps only the K most used tokens of a corpus (``restrict``, as the TinyStories
paper did with GPT-Neo's top 10K tokens), and saves to our one-file JSON format or to a Hugging Face
``tokenizers`` ``tokenizer.json``.

Model: ``vocab[id]`` is the byte string of token ``id``; ``merges[r] = (left, right, result)`` joins
two adjacent tokens, lower ranks first; special tokens (``<|endoftext|>``) are matched in the text
before pre-tokenization and are never produced by merges.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

import numpy as np

from tinystories import _core
from tinystories.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Tokenizer", "resolve_tokenizer", "GPT2_PATTERN", "EOT"]

EOT = "<|endoftext|>"
# The pre-tokenization pattern, for reference and for exports; the C++ scanner implements it exactly.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FORMAT_NAME = "tinystories-bpe"
FORMAT_VERSION = 1

AllowedSpecial = Union[Literal["all", "none_raise"], Iterable[str]]
Corpus = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]

# Known pretrained tokenizers: files, their official URLs and sha256 (the digests tiktoken pins).
_PRETRAINED = {
    "gpt2": {
        "vocab.json": (
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
        "merges.txt": (
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
    }
}
_ALIASES = {"gpt-neo": "gpt2", "gpt_neo": "gpt2", "EleutherAI/gpt-neo-125M": "gpt2", "openai-community/gpt2": "gpt2"}


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (used by vocab.json/merges.txt)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@functools.lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _str_to_token(text: str, where: str) -> bytes:
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{where}: {text!r} is not a byte-level BPE token (character {e.args[0]!r})") from None


def _replace_surrogates(text: str) -> str:
    # What tiktoken does with strings that cannot be UTF-8 (lone surrogates): each becomes U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """A byte-level BPE tokenizer with GPT-2 pre-tokenization (see the module docstring)."""

    def __init__(self, vocab: Sequence[bytes], merges: Sequence[tuple[int, int, int]], special_tokens: dict[str, int]):
        """Build from token bytes (index = id; entries at special ids are ignored), merges in rank order
        as (left, right, result) ids, and special token ids. Raises ValueError on an inconsistent model."""
        self._core = _core.BpeTokenizer(list(vocab), [tuple(m) for m in merges], sorted(special_tokens.items()))
        self._special_tokens = dict(special_tokens)
        self._all_special_ids = sorted(self._special_tokens.values())

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> Tokenizer:
        """Load GPT-2's ``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt`` (GPT-Neo uses the same)."""
        vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
        try:
            encoder = json.loads(vocab_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{vocab_path}: cannot read a GPT-2 vocab.json: {e}") from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping token strings to integer ids")
        n_vocab = max(encoder.values()) + 1
        vocab: list[bytes] = [b""] * n_vocab
        specials: dict[str, int] = {}
        for text, i in encoder.items():
            if i < 0 or vocab[i] or i in specials.values():
                raise ValueError(f"{vocab_path}: id {i} (token {text!r}) is negative or used twice")
            if text.startswith("<|") and text.endswith("|>"):
                specials[text] = i
            else:
                vocab[i] = _str_to_token(text, str(vocab_path))
        missing = [i for i in range(n_vocab) if not vocab[i] and i not in specials.values()]
        if missing:
            raise ValueError(f"{vocab_path}: ids are not dense, missing e.g. {missing[:5]}")
        id_of = {t: i for i, t in enumerate(vocab) if t}
        merges: list[tuple[int, int, int]] = []
        try:
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{merges_path}: cannot read a GPT-2 merges.txt: {e}") from None
        for lineno, line in enumerate(lines, 1):
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{lineno}: expected two tokens separated by a space, got {line!r}")
            left, right = (_str_to_token(p, f"{merges_path}:{lineno}") for p in parts)
            try:
                merges.append((id_of[left], id_of[right], id_of[left + right]))
            except KeyError:
                raise ValueError(f"{merges_path}:{lineno}: merge {line!r} uses or makes a token not in {vocab_path}") from None
        return cls(vocab, merges, specials)

    @classmethod
    def from_pretrained(cls, name: str = "gpt2") -> Tokenizer:
        """GPT-2's tokenizer (``"gpt2"``; ``"gpt-neo"`` is the same) from the local cache.

        The cache is ``$TINYSTORIES_CACHE/<name>/`` or ``~/.cache/tinystories/<name>/``. Missing files are
        downloaded (and checked against their sha256) unless ``TINYSTORIES_OFFLINE=1``; when that is not
        possible the error says which files to put there.
        """
        canonical = _ALIASES.get(name, name)
        if canonical not in _PRETRAINED:
            raise ValueError(f"unknown pretrained tokenizer {name!r}; known: {sorted([*_PRETRAINED, *_ALIASES])}")
        root = Path(os.environ.get("TINYSTORIES_CACHE") or Path.home() / ".cache" / "tinystories") / canonical
        files = _PRETRAINED[canonical]
        for filename, (url, sha256) in files.items():
            target = root / filename
            if target.is_file():
                continue
            try:
                if os.environ.get("TINYSTORIES_OFFLINE", "") not in ("", "0"):
                    raise OSError("TINYSTORIES_OFFLINE is set")
                _download(url, target, sha256)
            except OSError as e:
                raise FileNotFoundError(
                    f"tokenizer {name!r}: {target} is missing and could not be downloaded from {url} ({e}). "
                    f"Put GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe) in {root}, set "
                    f"TINYSTORIES_CACHE to a folder holding {canonical}/vocab.json and {canonical}/merges.txt, "
                    f"or call Tokenizer.from_gpt2_files(vocab_json, merges_txt)."
                ) from None
        return cls.from_gpt2_files(root / "vocab.json", root / "merges.txt")

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
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{source}: cannot read a tokenizer JSON file: {e}") from None
        path = Path(source)
        if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
            return cls._from_our_json(data, path)
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
            return cls._from_hf_json(data, path)
        raise ValueError(f"{source}: not a {FORMAT_NAME} file (nor a Hugging Face BPE tokenizer.json)")

    @classmethod
    def _from_our_json(cls, data: dict, path: Path) -> Tokenizer:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported {FORMAT_NAME} version {data.get('version')!r} (expected {FORMAT_VERSION})")
        if data.get("pattern") != "gpt2":
            raise ValueError(f"{path}: unsupported pre-tokenization pattern {data.get('pattern')!r} (expected 'gpt2')")
        try:
            specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
            vocab = [b"" if t is None else _str_to_token(t, f"{path}: vocab[{i}]") for i, t in enumerate(data["vocab"])]
            id_of = {t: i for i, t in enumerate(vocab) if t}
            merges = [(int(a), int(b), id_of[vocab[int(a)] + vocab[int(b)]]) for a, b in data["merges"]]
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{path}: malformed {FORMAT_NAME} file ({type(e).__name__}: {e})") from None
        try:
            return cls(vocab, merges, specials)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def _from_hf_json(cls, data: dict, path: Path) -> Tokenizer:
        pre = data.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
            raise ValueError(f"{path}: only byte-level BPE with GPT-2 pre-tokenization (ByteLevel, use_regex, "
                             f"no prefix space) is supported, found pre_tokenizer {pre!r}")
        model = data["model"]
        specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
        n_vocab = max([*model["vocab"].values(), *specials.values()]) + 1
        vocab: list[bytes] = [b""] * n_vocab
        for text, i in model["vocab"].items():
            if i not in specials.values():
                vocab[i] = _str_to_token(text, str(path))
        id_of = {t: i for i, t in enumerate(vocab) if t}
        merges = []
        for m in model["merges"]:
            left, right = m.split(" ") if isinstance(m, str) else m
            lb, rb = _str_to_token(left, str(path)), _str_to_token(right, str(path))
            merges.append((id_of[lb], id_of[rb], id_of[lb + rb]))
        return cls(vocab, merges, specials)

    def to_json(self) -> str:
        """The tokenizer in our one-file JSON format (what ``save`` writes; ``from_json`` reads it).
        Token bytes are spelled with GPT-2's byte-to-character map, as in vocab.json; merges are
        [left, right] id pairs in rank order (docs/tokenizer.md)."""
        special_ids = set(self._special_tokens.values())
        vocab = [None if i in special_ids else _token_to_str(t) for i, t in enumerate(self._core.vocab())]
        data = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": "gpt2",
            "n_vocab": self.n_vocab,
            "special_tokens": self._special_tokens,
            "fingerprint": self.fingerprint,
            "vocab": vocab,
            "merges": [[a, b] for a, b, _ in self._core.merges()],
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_json()`` to path atomically (temporary file + rename)."""
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    def save_hf(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face ``tokenizers`` tokenizer.json (``tokenizers.Tokenizer.from_file`` loads it and
        encodes like ``encode(text, allowed_special="all")``). A folder path gets ``tokenizer.json`` inside."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "tokenizer.json"
        special_ids = set(self._special_tokens.values())
        vocab = self._core.vocab()
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        data = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for t, i in sorted(self._special_tokens.items(), key=lambda kv: kv[1])
            ],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {(t.decode() if i in special_ids else _token_to_str(t)): i for i, t in enumerate(vocab)},
                "merges": [[_token_to_str(vocab[a]), _token_to_str(vocab[b])] for a, b, _ in self._core.merges()],
            },
        }
        atomic_write_bytes(path, (json.dumps(data, ensure_ascii=False) + "\n").encode())

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
            raise ValueError(f"top_k must be between {n_required} (bytes + special tokens) and n_vocab {self.n_vocab}, got {top_k}")
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
            raise ValueError(f'allowed_special must be "all", "none_raise" or a set of special tokens, got {allowed_special!r}')
        allowed = set(allowed_special)
        unknown = allowed - self._special_tokens.keys()
        if unknown:
            raise ValueError(f"unknown special token(s) {sorted(unknown)}; this tokenizer has {sorted(self._special_tokens)}")
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

    def encode_to_numpy(self, text: str, *, allowed_special: AllowedSpecial = "none_raise") -> NDArray[np.unsignedinteger]:
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
            return self._core.encode_batch_to_numpy([_replace_surrogates(t) for t in texts], allowed, _threads(num_threads))

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
        return f"Tokenizer(n_vocab={self.n_vocab}, merges={len(self._core.merges())}, special_tokens={self._special_tokens})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


def resolve_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a name (``"gpt2"``, ``"gpt-neo"``), a JSON file (ours or HF), or a folder holding
    ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``."""
    path = Path(spec)
    if isinstance(spec, str) and (spec in _PRETRAINED or spec in _ALIASES) and not path.exists():
        return Tokenizer.from_pretrained(spec)
    if path.is_file():
        return Tokenizer.load(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.load(path / "tokenizer.json")
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return Tokenizer.from_gpt2_files(path / "vocab.json", path / "merges.txt")
        raise ValueError(f"{path}: folder has neither tokenizer.json nor vocab.json + merges.txt")
    raise ValueError(f"cannot resolve tokenizer {str(spec)!r}: not a known name ({sorted([*_PRETRAINED, *_ALIASES])}), file or folder")


# ---- helpers ------------------------------------------------------------------------------------


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


def _download(url: str, target: Path, sha256: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise OSError(f"downloaded {url} has sha256 {digest}, expected {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)


_CHUNK_BYTES = 16 << 20


def _safe_cut(buf: bytes | bytearray, lo: int = 0) -> int:
    """Last offset > lo where the text can be split without changing its GPT-2 pre-tokens: just before a
    newline whose previous byte is ASCII and not white space (0 when there is none)."""
    pos = len(buf)
    while True:
        pos = buf.rfind(b"\n", max(lo, 1), pos)
        if pos < 0:
            return 0
        prev = buf[pos - 1]
        if prev < 0x80 and chr(prev) not in " \t\n\r\x0b\x0c":
            return pos


def read_text_chunks(
    path: str | os.PathLike, errors: Literal["strict", "replace"] = "strict", on_read: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Decoded text of a UTF-8 ``.txt`` or zstd-compressed ``.zst`` file in pieces of about 16 MB, cut only
    where pre-tokenization is unaffected. Invalid UTF-8 raises ValueError naming the file and byte offset
    (of the decompressed stream for .zst), unless ``errors="replace"`` (U+FFFD, as Python does).
    ``on_read(n)`` is told each time n more bytes of the file itself have been read (for progress bars)."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as raw:
        if path.suffix == ".zst":
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            stream = raw
        pending = bytearray()
        offset = 0  # file offset of pending[0]
        reported = 0
        while True:
            block = stream.read(_CHUNK_BYTES)
            if on_read is not None:
                on_read(raw.tell() - reported)
                reported = raw.tell()
            scanned = len(pending)  # no safe cut before here (keeps long lines linear)
            pending += block
            cut = _safe_cut(pending, scanned) if block else len(pending)  # at the end: everything left
            if cut > 0:
                try:
                    yield bytes(pending[:cut]).decode("utf-8", errors=errors)
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path}: invalid UTF-8 at byte offset {offset + e.start} ({e.reason}); "
                        f"pass errors='replace' (CLI: --errors replace) to replace bad bytes with U+FFFD"
                    ) from None
                offset += cut
                del pending[:cut]
            if not block:
                return


def _iter_corpus_batches(
    corpus: Corpus, errors: Literal["strict", "replace"], progress: str | None = None, batch_chars: int = 16 << 20
) -> Iterator[list[str]]:
    """Lists of texts (about batch_chars each) from a text, a file path or an iterable of them; with
    ``progress`` (a description), a rich progress bar over the bytes read."""
    items: Iterable[str | os.PathLike] = [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus
    with _progress_bar(progress, items) as advance:
        batch: list[str] = []
        size = 0
        for item in items:
            if isinstance(item, os.PathLike):
                chunks: Iterable[str] = read_text_chunks(item, errors, on_read=advance)
            elif isinstance(item, str):
                chunks = [item]
                advance(len(item))
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


@contextlib.contextmanager
def _progress_bar(description: str | None, items: Iterable[object]) -> Iterator[Callable[[int], None]]:
    """Yields advance(n_bytes); draws a rich bar (sized by the files when items is a list of paths)."""
    if description is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    total = None
    if isinstance(items, (list, tuple)) and all(isinstance(i, os.PathLike) and Path(i).is_file() for i in items):
        total = sum(Path(i).stat().st_size for i in items)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# ---- command line: tinystories tokenizer train|restrict|encode|export-hf ----------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("train", help="train a byte-level BPE on text files")
    p.add_argument("files", nargs="+", type=Path, help="UTF-8 .txt or .txt.zst files")
    p.add_argument("--vocab-size", type=int, required=True, help="total tokens: 256 bytes + merges + special tokens")
    p.add_argument("--special-tokens", nargs="*", default=[EOT], help=f"default: {EOT}")
    p.add_argument("--out", type=Path, required=True, help="output JSON (our format)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="invalid UTF-8: fail or replace")

    p = sub.add_parser("restrict", help="keep the K most frequent tokens of a corpus (closed under merges)")
    p.add_argument("--tokenizer", default="gpt2", help="name, JSON file or folder (default gpt2)")
    p.add_argument("--top-k", type=int, required=True)
    p.add_argument("corpus", nargs="+", type=Path, help="UTF-8 .txt or .txt.zst files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--errors", choices=["strict", "replace"], default="strict")

    p = sub.add_parser("encode", help="print the token ids of text (or save them as .npy)")
    p.add_argument("--tokenizer", default="gpt2")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to encode")
    src.add_argument("--file", type=Path, help="a UTF-8 .txt or .txt.zst file")
    p.add_argument("--out", type=Path, default=None, help="write ids to this .npy instead of printing them")
    p.add_argument("--allowed-special", default="all", help='"all", "none_raise" or comma-separated tokens')
    p.add_argument("--errors", choices=["strict", "replace"], default="strict")

    p = sub.add_parser("export-hf", help="write a Hugging Face tokenizers tokenizer.json")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--out", type=Path, required=True, help="tokenizer.json path or folder")


def run_cli(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tinystories tokenizer {args.action}: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "train":
        tok = Tokenizer.train(args.files, args.vocab_size, args.special_tokens, num_threads=args.threads,
                              errors=args.errors, progress=True)
        tok.save(args.out)
        print(f"trained {tok!r} -> {args.out}")
    elif args.action == "restrict":
        tok = resolve_tokenizer(args.tokenizer).restrict(args.top_k, args.corpus, num_threads=args.threads,
                                                         errors=args.errors, progress=True)
        tok.save(args.out)
        print(f"restricted to {tok!r} -> {args.out}")
    elif args.action == "encode":
        tok = resolve_tokenizer(args.tokenizer)
        allowed = args.allowed_special if args.allowed_special in ("all", "none_raise") else set(args.allowed_special.split(","))
        text = args.text if args.text is not None else "".join(read_text_chunks(args.file, args.errors))
        ids = tok.encode_to_numpy(text, allowed_special=allowed)
        if args.out is not None:
            np.save(args.out, ids)
            print(f"{len(ids)} tokens -> {args.out}")
        else:
            print(" ".join(map(str, ids.tolist())))
    elif args.action == "export-hf":
        resolve_tokenizer(args.tokenizer).save_hf(args.out)
        print(f"wrote {args.out}")
    return 0
