"""Streaming readers for story corpora, in the formats people actually have.

* ``.txt``: TinyStories as published, stories separated by ``<|endoftext|>`` (normally on a line of
  its own). TinyStoriesInstruct files use the same separator, so their records (``Features: ...``,
  ``Words: ...``, ``Summary: ...``, ``Story: ...``) are read whole, instructions included.
* ``.jsonl``: one JSON object per line with a ``text`` or ``story`` field (``text`` wins). With
  ``instruct=True`` a record without ``text`` is rendered in the TinyStoriesInstruct layout from its
  ``features`` / ``words`` / ``summary`` / ``random_sentence`` fields (also read from a nested
  ``instruction`` object, as in ``TinyStories_all_data``), followed by ``Story:`` and the story.
* Any of the above compressed with zstd (``.txt.zst``, ``.jsonl.zst``).

Stories are stripped of surrounding whitespace and empty ones are skipped. Files are read line by
line, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

EOT_MARKER = "<|endoftext|>"
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".txt.zst", ".jsonl.zst")
TEXT_FIELDS = ("text", "story")
INSTRUCT_FIELDS = (("features", "Features"), ("words", "Words"), ("summary", "Summary"), ("random_sentence", "Random sentence"))


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file (and line) and the problem."""


def corpus_format(path: str | Path) -> tuple[str, bool]:
    """(``"txt"`` or ``"jsonl"``, zstd-compressed?) from the file name."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1], suffix.endswith(".zst")
    raise CorpusError(f"{path}: unsupported corpus file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def format_instruct_record(record: dict[str, Any], story: str) -> str:
    """The TinyStoriesInstruct text layout: one ``Name: value`` line per instruction, then ``Story:``."""
    nested = record.get("instruction") if isinstance(record.get("instruction"), dict) else {}
    lines = []
    for key, label in INSTRUCT_FIELDS:
        value = record.get(key, nested.get(key))
        if value in (None, "", [], ()):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"{label}: {value}")
    lines.append(f"Story: {story}" if not lines else f"Story:\n{story}")
    return "\n".join(lines)


class _ZstdFrames(io.RawIOBase):
    """Decompresses concatenated zstd frames; a truncated last frame is an error, not an early end."""

    def __init__(self, raw: IO[bytes], path: Path):
        import zstandard

        self._raw, self._path = raw, path
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos == len(self._out):
            chunk = self._raw.read(1 << 17)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise CorpusError(f"{self._path}: truncated zstd data (the last frame is incomplete)")
                return 0
            parts = []
            while chunk:
                if self._frame is None or self._frame.eof:
                    self._frame = self._dctx.decompressobj()
                parts.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
            self._out, self._pos = b"".join(parts), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n


class CorpusReader:
    """Iterates the stories of several corpus files in order, reporting how far it has read.

    ``total_bytes`` is the on-disk size of all inputs and ``bytes_read`` the on-disk bytes consumed
    so far (compressed bytes for ``.zst``), which is what a progress bar needs.
    """

    def __init__(self, paths: Sequence[str | Path], *, instruct: bool = False):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise CorpusError("no corpus files given")
        for path in self.paths:
            corpus_format(path)
            if not path.is_file():
                raise CorpusError(f"{path}: corpus file not found")
        self.instruct = instruct
        self.total_bytes = sum(p.stat().st_size for p in self.paths)
        self.bytes_read = 0
        self.stories_read = 0

    def __iter__(self) -> Iterator[str]:
        done = 0
        for path in self.paths:
            kind, _ = corpus_format(path)
            with open(path, "rb") as raw:
                read = self._read_txt if kind == "txt" else self._read_jsonl
                for story in read(path, raw):
                    self.bytes_read = done + raw.tell()
                    self.stories_read += 1
                    yield story
            done += path.stat().st_size
            self.bytes_read = done

    def _lines(self, path: Path, raw: IO[bytes]) -> Iterator[tuple[int, str]]:
        stream: IO[bytes] = io.BufferedReader(_ZstdFrames(raw, path)) if corpus_format(path)[1] else raw
        text = io.TextIOWrapper(stream, encoding="utf-8")
        line_no = 0
        try:
            for line_no, line in enumerate(text, 1):
                yield line_no, line
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: invalid UTF-8 near line {line_no + 1}: {e.reason}") from None
        except Exception as e:  # zstandard.ZstdError: name the file
            if type(e).__name__ == "ZstdError":
                raise CorpusError(f"{path}: corrupt zstd data near line {line_no + 1}: {e}") from None
            raise
        finally:
            text.detach()  # the caller owns (and closes) the raw file

    def _read_txt(self, path: Path, raw: IO[bytes]) -> Iterator[str]:
        parts: list[str] = []
        for _, line in self._lines(path, raw):
            if EOT_MARKER in line:
                pieces = line.split(EOT_MARKER)
                parts.append(pieces[0])
                for piece in pieces[1:]:
                    story = "".join(parts).strip()
                    if story:
                        yield story
                    parts = [piece]
            else:
                parts.append(line)
        story = "".join(parts).strip()
        if story:
            yield story

    def _read_jsonl(self, path: Path, raw: IO[bytes]) -> Iterator[str]:
        for line_no, line in self._lines(path, raw):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            field = next((f for f in TEXT_FIELDS if f in record), None)
            if field is None:
                raise CorpusError(f"{path}:{line_no}: no 'text' or 'story' field (fields: {', '.join(sorted(record)) or 'none'})")
            value = record[field]
            if not isinstance(value, str):
                raise CorpusError(f"{path}:{line_no}: field '{field}' is {type(value).__name__}, not a string")
            story = value.strip()
            if self.instruct and field == "story" and story:
                story = format_instruct_record(record, story)
            if story:
                yield story


def iter_stories(paths: Sequence[str | Path] | str | Path, *, instruct: bool = False) -> Iterator[str]:
    """Stories of all ``paths`` in order (see the module docstring for formats)."""
    return iter(CorpusReader(paths, instruct=instruct))


def input_signature(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """What identifies an input for restarts: absolute path, size and modification time."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": str(Path(p).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out
