"""The one reader of story corpora, the end-of-text separator, and the TinyStoriesInstruct layout.

Formats read, streamed so memory stays flat whatever the corpus size:

* ``.txt``: TinyStories as published, stories separated by ``<|endoftext|>`` (normally on a line of
  its own). TinyStoriesInstruct files use the same separator, so their records (``Features: ...``,
  ``Words: ...``, ``Summary: ...``, ``Story:``) are read whole, instructions included. A file without any
  separator is split at blank lines, with a warning on stderr (one rule for every command that reads it).
* ``.jsonl``: one JSON object per line with a ``text`` or ``story`` field (``text`` wins). With
  ``instruct=True`` a record without ``text`` is rendered in the Instruct layout (:func:`instruct_text`)
  from its ``features`` / ``words`` / ``summary`` / ``random_sentence`` fields (also read from a nested
  ``instruction`` object, as in ``TinyStories_all_data``).
* Any of the above compressed with zstd (``.txt.zst``, ``.jsonl.zst``), concatenated frames included.
* ``.json``: one JSON array of such records (``data00.json`` of ``TinyStories_all_data``: ``story``,
  ``instruction`` with ``prompt:`` / ``words`` / ``features``, ``summary``, ``source``), and ``.tar.gz``
  archives of them (``TinyStories_all_data.tar.gz``), read member by member straight from the archive, so
  memory is bounded by one member, not the archive.
* ``.parquet`` with a ``text`` (or ``story``) column, the Hub's converted splits, read in record batches
  through ``pyarrow`` (the ``parquet`` extra).

Stories are stripped of surrounding whitespace and empty ones are skipped. Invalid UTF-8 is an error
naming the file, the line and the byte offset (of the decompressed stream for ``.zst``). :func:`read_text_chunks`
reads a text file raw instead (for tokenizer training and held-out loss), in pieces cut only where
GPT-2 pre-tokenization is unaffected.

The Instruct layout (docs/synthesis.md) is written here and only here: one ``Name: value`` line per
instruction in a fixed order, then ``Story:`` and a newline, then the story. ``tinystories synth
--instruct``, ``tinystories data prepare --instruct`` and ``tinystories eval grade --instruct`` all use it.
"""

from __future__ import annotations

import codecs
import io
import itertools
import json
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from tinystories.vocabulary import FEATURE_LABELS, PARTS_OF_SPEECH

if TYPE_CHECKING:
    import zstandard

EOT = "<|endoftext|>"
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".txt.zst", ".jsonl.zst", ".json", ".tar.gz", ".parquet")
TEXT_FIELDS = ("text", "story")
_CHUNK_BYTES = 16 << 20  # read_text_chunks' piece size
_TXT_PIECE_BYTES = 1 << 18  # .txt stories are split out of pieces this long
_BLANK_LINE = re.compile(r"\n[ \t]*\n")  # where a .txt without any separator is split into stories


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file (and line) and the problem."""


def corpus_format(path: str | Path) -> tuple[str, bool]:
    """(``"txt"``, ``"jsonl"``, ``"json"``, ``"tar"`` or ``"parquet"``, zstd-compressed?) from the file name."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1], suffix.endswith(".zst")
    raise CorpusError(f"{path}: unsupported corpus file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


# ------------------------------------------------------------------------------------------------ Instruct
def format_instructions(
    *,
    words: Mapping[str, str] | Sequence[str] | str | None = None,
    features: Sequence[str] = (),
    summary: str | None = None,
    sentence: str | None = None,
) -> str:
    """The Instruct header: the given instructions in the fixed order, each on its own line, then "Story:"
    and a newline, which is where the story (or a model's continuation) begins.

    ``features``: our names (``bad_ending``) or the layout's labels (``BadEnding``); ``words``: a
    ``{part of speech: word}`` dict (printed verb, noun, adjective) or a list in the order to print.
    """
    if isinstance(features, str):
        features = [features]
    lines = []
    if features:
        lines.append("Features: " + ", ".join(FEATURE_LABELS.get(f, f) for f in features))
    if isinstance(words, Mapping):
        words = [words[p] for p in PARTS_OF_SPEECH if p in words]
    if isinstance(words, str):
        words = [words]
    if words:
        lines.append("Words: " + ", ".join(words))
    if summary:
        lines.append(f"Summary: {summary}")
    if sentence:
        lines.append(f"Random sentence: {sentence}")
    return "".join(line + "\n" for line in lines) + "Story:\n"


def instruct_text(record: Mapping[str, Any], story: str | None = None) -> str:
    """A story record in the Instruct layout: its instructions, then ``story`` (default: the record's).

    A synthesis record names its chosen instruction types in ``instructions`` and only those are shown;
    any other record shows every instruction field it has, top-level or in a nested ``instruction``.
    """
    nested = record.get("instruction")
    fields = {**(nested if isinstance(nested, Mapping) else {}), **record}
    chosen = record.get("instructions")
    wanted = set(chosen) if chosen is not None else {"features", "words", "summary", "sentence"}
    header = format_instructions(
        words=fields.get("words") if "words" in wanted else None,
        features=(fields.get("features") or ()) if "features" in wanted else (),
        summary=fields.get("summary") if "summary" in wanted else None,
        sentence=fields.get("random_sentence") if "sentence" in wanted else None,
    )
    return header + (record["story"] if story is None else story).strip()


# ------------------------------------------------------------------------------------------------ files
class _ZstdFrames(io.RawIOBase):
    """Decompresses concatenated zstd frames; a truncated last frame is an error, not an early end."""

    def __init__(self, raw: IO[bytes], path: Path):
        import zstandard

        self._raw, self._path = raw, path
        self._dctx = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame: zstandard.ZstdDecompressionObj | None = None
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
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
                try:
                    parts.append(self._frame.decompress(chunk))
                except self._error as e:
                    raise CorpusError(f"{self._path}: corrupt zstd data ({e})") from None
                chunk = self._frame.unused_data if self._frame.eof else b""
            self._out, self._pos = b"".join(parts), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n


def _decompressed(raw: IO[bytes], path: Path) -> IO[bytes]:
    """The content stream of an open file: decompressed when its name ends in ``.zst``."""
    return io.BufferedReader(_ZstdFrames(raw, path)) if path.name.lower().endswith(".zst") else raw


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
    path: str | os.PathLike,
    errors: Literal["strict", "replace"] = "strict",
    on_read: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """Decoded text of a UTF-8 file (zstd-compressed when it ends in ``.zst``) in pieces of about 16 MB,
    cut only where pre-tokenization is unaffected. Invalid UTF-8 raises ValueError naming the file and byte
    offset (of the decompressed stream for .zst), unless ``errors="replace"`` (U+FFFD, as Python does).
    ``on_read(n)`` is told each time n more bytes of the file itself have been read (for progress bars)."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as raw:
        stream = _decompressed(raw, path)
        pending = bytearray()
        offset = 0  # stream offset of pending[0]
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
                    raise ValueError(f"{path}: invalid UTF-8 at byte offset {offset + e.start} ({e.reason})") from None
                offset += cut
                del pending[:cut]
            if not block:
                return


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 file (zstd-compressed when it ends in ``.zst``)."""
    return "".join(read_text_chunks(path))


# ------------------------------------------------------------------------------------------------ stories
class CorpusReader:
    """Iterates the stories of several corpus files in order, reporting how far it has read.

    ``total_bytes`` is the on-disk size of all inputs and ``bytes_read`` the on-disk bytes consumed
    so far (compressed bytes for ``.zst``), which is what a progress bar needs.
    """

    def __init__(self, paths: Sequence[str | Path] | str | Path, *, instruct: bool = False):
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
        self.file_index = 0  # which of `paths` the last story came from

    def __iter__(self) -> Iterator[str]:
        for stories, _ in self.chunks():
            yield from stories

    def chunks(self) -> Iterator[tuple[list[str], int]]:
        """The stories in lists as they are read (a piece of text, a JSON member, a parquet batch), each with the
        index of its file in ``paths``: for callers that handle stories in batches, without a Python step per story."""
        done = 0
        for file_index, path in enumerate(self.paths):
            self.file_index = file_index
            kind, _ = corpus_format(path)
            with open(path, "rb") as raw:
                read = {
                    "txt": self._read_txt,
                    "jsonl": self._read_jsonl,
                    "json": self._read_json_array,
                    "tar": self._read_tar,
                    "parquet": self._read_parquet,
                }[kind]
                for stories in read(path, raw):
                    self.bytes_read = done + raw.tell()
                    self.stories_read += len(stories)
                    yield stories, self.file_index
            done += path.stat().st_size
            self.bytes_read = done

    def _lines(self, path: Path, raw: IO[bytes]) -> Iterator[tuple[int, str]]:
        stream = _decompressed(raw, path)
        offset = 0  # of the decompressed stream
        for line_no in itertools.count(1):
            try:
                line = stream.readline()
            except CorpusError as e:  # a damaged .zst
                raise CorpusError(f"{e} near line {line_no}") from None
            if not line:
                return
            try:
                yield line_no, line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{line_no}: invalid UTF-8 at byte offset {offset + e.start} ({e.reason})"
                ) from None
            offset += len(line)

    def _read_txt(self, path: Path, raw: IO[bytes]) -> Iterator[list[str]]:
        # Pieces of text split on EOT at C speed (not line by line: that was the slowest part of `prepare`).
        stream = _decompressed(raw, path)
        utf8 = codecs.getincrementaldecoder("utf-8")()
        decoder = io.IncrementalNewlineDecoder(utf8, translate=True)  # \r\n and \r read as \n, as open() does
        offset = newlines = 0  # bytes and newlines of the stream read so far
        parts: list[str] = []  # the text since the last EOT (joined only once an EOT follows: linear time)
        tail = ""  # the last len(EOT) - 1 characters of `parts`, where an EOT cut between pieces begins
        separated = False  # an EOT was seen
        while True:
            try:
                data = stream.read(_TXT_PIECE_BYTES)
            except CorpusError as e:  # a damaged .zst
                raise CorpusError(f"{e} near line {newlines + 1}") from None
            held = utf8.getstate()[0]  # an incomplete character left from the previous piece
            try:
                piece = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:  # e.start counts from the held bytes
                at, line = offset - len(held) + e.start, newlines + (held + data)[: e.start].count(b"\n") + 1
                raise CorpusError(f"{path}:{line}: invalid UTF-8 at byte offset {at} ({e.reason})") from None
            offset, newlines = offset + len(data), newlines + data.count(b"\n")
            if not data:
                parts.append(piece)  # a final "\r" the newline decoder held back
                break
            if EOT not in tail + piece:
                parts.append(piece)
                tail = (tail + piece)[1 - len(EOT) :]
                continue
            separated = True
            stories = ("".join(parts) + piece).split(EOT)
            parts = [stories.pop()]
            tail = parts[0][1 - len(EOT) :]
            if stories := [story for s in stories if (story := s.strip())]:
                yield stories
        story = "".join(parts).strip()
        if story and not separated and _BLANK_LINE.search(story):
            stories = [s for t in _BLANK_LINE.split(story) if (s := t.strip())]
            print(
                f"warning: {path} has no {EOT} separators: split into {len(stories)} stories at blank lines",
                file=sys.stderr,
            )
            yield stories
        elif story:
            yield [story]

    def _read_jsonl(self, path: Path, raw: IO[bytes]) -> Iterator[list[str]]:
        for line_no, line in self._lines(path, raw):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
            if story := self._record_story(record, f"{path}:{line_no}"):
                yield [story]

    def _record_story(self, record: Any, where: str) -> str:
        """The story of one JSON record (rendered in the Instruct layout when asked); '' for an empty one."""
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
        field = next((f for f in TEXT_FIELDS if f in record), None)
        if field is None:
            raise CorpusError(f"{where}: no 'text' or 'story' field (fields: {', '.join(sorted(record)) or 'none'})")
        value = record[field]
        if not isinstance(value, str):
            raise CorpusError(f"{where}: field '{field}' is {type(value).__name__}, not a string")
        story = value.strip()
        if self.instruct and field == "story" and story:
            story = instruct_text(record, story)
        return story

    def _json_array_stories(self, data: bytes, where: str) -> list[str]:
        try:
            records = json.loads(data)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{where}: invalid UTF-8 at byte offset {e.start}") from None
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}: invalid JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
        if not isinstance(records, list):
            raise CorpusError(f"{where}: expected a JSON array of story records, got {type(records).__name__}")
        return [story for i, record in enumerate(records) if (story := self._record_story(record, f"{where}[{i}]"))]

    def _read_json_array(self, path: Path, raw: IO[bytes]) -> Iterator[list[str]]:
        yield self._json_array_stories(raw.read(), str(path))

    def _read_tar(self, path: Path, raw: IO[bytes]) -> Iterator[list[str]]:
        """The JSON array members of a tar archive (gzip, bz2, xz or none), one member in memory at a time."""
        member = None
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    if not member.name.lower().endswith(".json"):
                        raise CorpusError(f"{path}: member {member.name} is not a .json file of story records")
                    data = archive.extractfile(member).read()  # type: ignore[union-attr]
                    yield self._json_array_stories(data, f"{path}:{member.name}")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            where = f"in member {member.name}" if member is not None else "before the first member"
            raise CorpusError(f"{path}: truncated or damaged archive ({where}): {e}") from None

    def _read_parquet(self, path: Path, raw: IO[bytes]) -> Iterator[list[str]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CorpusError(f"{path}: reading .parquet needs pyarrow: pip install 'tinystories[parquet]'") from None
        try:  # pyarrow's errors (ArrowInvalid, ArrowIOError...) are ValueError or OSError subclasses
            table = pq.ParquetFile(raw)
            columns = table.schema_arrow.names
            column = next((f for f in TEXT_FIELDS if f in columns), None)
            if column is None:
                raise CorpusError(f"{path}: no 'text' or 'story' column (columns: {', '.join(columns)})")
            for batch in table.iter_batches(batch_size=4096, columns=[column]):
                yield [
                    story
                    for value in batch.column(0).to_pylist()
                    if isinstance(value, str) and (story := value.strip())
                ]
        except CorpusError:
            raise
        except (ValueError, OSError) as e:
            raise CorpusError(f"{path}: not a readable parquet file: {e}") from None


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
