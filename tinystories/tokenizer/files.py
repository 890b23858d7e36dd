"""The tokenizer's file formats: GPT-2's ``vocab.json`` + ``merges.txt``, our one-file JSON, Hugging Face's
``tokenizer.json``, and the pretrained GPT-2 files (cached, downloaded and checked on first use).

Every reader returns the parts a :class:`~tinystories.tokenizer.Tokenizer` is built from: token bytes by
id, merges as (left, right, result) ids in rank order, and the special tokens' ids. Token bytes are
spelled in these files with GPT-2's reversible byte-to-character map (:func:`bytes_to_unicode`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.atomic import atomic_write_bytes

FORMAT_NAME = "tinystories-bpe"
FORMAT_VERSION = 1

Parts = tuple[list[bytes], list[tuple[int, int, int]], dict[str, int]]

# Known pretrained tokenizers: files, their official URLs and sha256 (the digests tiktoken pins).
PRETRAINED = {
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
ALIASES = {"gpt-neo": "gpt2", "gpt_neo": "gpt2", "EleutherAI/gpt-neo-125M": "gpt2", "openai-community/gpt2": "gpt2"}


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


def token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(text: str, where: str) -> bytes:
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{where}: {text!r} is not a byte-level BPE token (character {e.args[0]!r})") from None


# ------------------------------------------------------------------------------------------------ GPT-2 files
def read_gpt2_files(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> Parts:
    """GPT-2's ``encoder.json``/``vocab.json`` and ``vocab.bpe``/``merges.txt`` (GPT-Neo uses the same)."""
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
            vocab[i] = str_to_token(text, str(vocab_path))
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
        left, right = (str_to_token(p, f"{merges_path}:{lineno}") for p in parts)
        try:
            merges.append((id_of[left], id_of[right], id_of[left + right]))
        except KeyError:
            raise ValueError(
                f"{merges_path}:{lineno}: merge {line!r} uses or makes a token not in {vocab_path}"
            ) from None
    return vocab, merges, specials


def pretrained_files(name: str) -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of a pretrained tokenizer (``"gpt2"``; ``"gpt-neo"`` is the same) in the cache.

    The cache is ``$TINYSTORIES_CACHE/<name>/`` or ``~/.cache/tinystories/<name>/``. Missing files are
    downloaded (and checked against their sha256) unless ``TINYSTORIES_OFFLINE=1``; when that is not
    possible the error says which files to put there.
    """
    canonical = ALIASES.get(name, name)
    if canonical not in PRETRAINED:
        raise ValueError(f"unknown pretrained tokenizer {name!r}; known: {sorted([*PRETRAINED, *ALIASES])}")
    root = Path(os.environ.get("TINYSTORIES_CACHE") or Path.home() / ".cache" / "tinystories") / canonical
    for filename, (url, sha256) in PRETRAINED[canonical].items():
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
    return root / "vocab.json", root / "merges.txt"


def _download(url: str, target: Path, sha256: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise OSError(f"downloaded {url} has sha256 {digest}, expected {sha256}")
    atomic_write_bytes(target, data)


# ------------------------------------------------------------------------------------------------ JSON files
def parse_tokenizer_json(text: str, source: str) -> Parts:
    """Our JSON format, or a Hugging Face byte-level BPE ``tokenizer.json``; errors name ``source``."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{source}: cannot read a tokenizer JSON file: {e}") from None
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        return _parse_ours(data, source)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return _parse_hf(data, source)
    raise ValueError(f"{source}: not a {FORMAT_NAME} file (nor a Hugging Face BPE tokenizer.json)")


def _parse_ours(data: dict[str, Any], source: str) -> Parts:
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{source}: unsupported {FORMAT_NAME} version {data.get('version')!r} (expected {FORMAT_VERSION})"
        )
    if data.get("pattern") != "gpt2":
        raise ValueError(f"{source}: unsupported pre-tokenization pattern {data.get('pattern')!r} (expected 'gpt2')")
    try:
        specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
        vocab = [b"" if t is None else str_to_token(t, f"{source}: vocab[{i}]") for i, t in enumerate(data["vocab"])]
        id_of = {t: i for i, t in enumerate(vocab) if t}
        merges = [(int(a), int(b), id_of[vocab[int(a)] + vocab[int(b)]]) for a, b in data["merges"]]
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{source}: malformed {FORMAT_NAME} file ({type(e).__name__}: {e})") from None
    return vocab, merges, specials


def _parse_hf(data: dict[str, Any], source: str) -> Parts:
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise ValueError(
            f"{source}: only byte-level BPE with GPT-2 pre-tokenization (ByteLevel, use_regex, "
            f"no prefix space) is supported, found pre_tokenizer {pre!r}"
        )
    model = data["model"]
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    n_vocab = max([*model["vocab"].values(), *specials.values()]) + 1
    vocab: list[bytes] = [b""] * n_vocab
    for text, i in model["vocab"].items():
        if i not in specials.values():
            vocab[i] = str_to_token(text, source)
    id_of = {t: i for i, t in enumerate(vocab) if t}
    merges = []
    for m in model["merges"]:
        left, right = m.split(" ") if isinstance(m, str) else m
        lb, rb = str_to_token(left, source), str_to_token(right, source)
        merges.append((id_of[lb], id_of[rb], id_of[lb + rb]))
    return vocab, merges, specials


def our_json(
    vocab: Sequence[bytes], merges: Sequence[tuple[int, int, int]], specials: dict[str, int], fingerprint: str
) -> str:
    """Our one-file JSON format (docs/tokenizer.md): token strings by id (null at special ids), merges as
    [left, right] id pairs in rank order."""
    special_ids = set(specials.values())
    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": "gpt2",
        "n_vocab": len(vocab),
        "special_tokens": specials,
        "fingerprint": fingerprint,
        "vocab": [None if i in special_ids else token_to_str(t) for i, t in enumerate(vocab)],
        "merges": [[a, b] for a, b, _ in merges],
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def hf_json(vocab: Sequence[bytes], merges: Sequence[tuple[int, int, int]], specials: dict[str, int]) -> str:
    """A Hugging Face ``tokenizers`` tokenizer.json (loaded by ``tokenizers.Tokenizer.from_file``, which then
    encodes like ``encode(text, allowed_special="all")``)."""
    special_ids = set(specials.values())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t, i in sorted(specials.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {(t.decode() if i in special_ids else token_to_str(t)): i for i, t in enumerate(vocab)},
            "merges": [[token_to_str(vocab[a]), token_to_str(vocab[b])] for a, b, _ in merges],
        },
    }
    return json.dumps(data, ensure_ascii=False) + "\n"
