"""Corpus readers: TinyStories .txt, .jsonl (plain and Instruct), their .zst forms, the all-data JSON arrays
(.json, .tar.gz), parquet, and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystories.corpus import CorpusError, CorpusReader, instruct_text, iter_stories


def write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if path.suffix == ".zst" else data)
    return path


def test_txt_separators_and_whitespace(tmp_path):
    text = "One.\nTwo lines\r\nhere.\n<|endoftext|>\n\n  <|endoftext|>\nInline<|endoftext|>Next story\nno end marker\n"
    for name in ("a.txt", "a.txt.zst"):
        assert list(iter_stories(write(tmp_path / name, text))) == [
            "One.\nTwo lines\nhere.",
            "Inline",
            "Next story\nno end marker",
        ]


def test_several_inputs_in_order_and_progress(tmp_path):
    a = write(tmp_path / "a.txt.zst", "A1\n<|endoftext|>\nA2\n<|endoftext|>\n")
    b = write(tmp_path / "b.jsonl", '{"text": "B1"}\n\n{"story": "B2", "id": 3}\n')
    reader = CorpusReader([a, b])
    assert list(reader) == ["A1", "A2", "B1", "B2"]
    assert reader.bytes_read == reader.total_bytes == a.stat().st_size + b.stat().st_size
    assert reader.stories_read == 4


def test_reading_streams(shared_data):
    # After the first story only one read-ahead chunk (128 KiB) of the 480 KB file has been consumed.
    reader = CorpusReader([shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"])
    it = iter(reader)
    next(it)
    assert 0 < reader.bytes_read < reader.total_bytes / 3


def test_real_tinystories_file(shared_data):
    # Checked against the file's documented facts (shared/data/SOURCES.md): 2,316 stories, and the decompressed
    # text is each story followed by "\n<|endoftext|>\n", with this sha256.
    stories = list(iter_stories(shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"))
    assert len(stories) == 2316 and stories[0].startswith("One day, a little girl named Lily found a needle")
    text = "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode("utf-8")
    assert hashlib.sha256(text).hexdigest() == "bdd6f40c699165c043e2d26cfb1198cb9ea17680f17c02c7b11be20f54819db8"


def test_jsonl_instruct_records(tmp_path):
    records = [
        {
            "story": "Tom ran.",
            "features": ["Dialogue", "BadEnding"],
            "words": ["run", "red", "big"],
            "summary": "Tom runs.",
        },
        {"story": "Sue sat.", "instruction": {"prompt": "...", "words": ["sit"], "features": []}},
        {"text": "Features: Twist\nStory: already laid out", "story": "ignored"},
    ]
    path = write(tmp_path / "i.jsonl.zst", "".join(json.dumps(r) + "\n" for r in records))
    assert list(iter_stories(path)) == ["Tom ran.", "Sue sat.", "Features: Twist\nStory: already laid out"]
    assert list(iter_stories(path, instruct=True)) == [
        "Features: Dialogue, BadEnding\nWords: run, red, big\nSummary: Tom runs.\nStory:\nTom ran.",
        "Words: sit\nStory:\nSue sat.",
        "Features: Twist\nStory: already laid out",
    ]
    assert instruct_text({}, "Plain.") == "Story:\nPlain."  # the one Instruct layout: "Story:" ends its line


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl:2: invalid JSON"),
        (
            "bad.jsonl",
            '{"title": "x", "body": "y"}\n',
            r"bad\.jsonl:1: no 'text' or 'story' field \(fields: body, title\)",
        ),
        ("bad.jsonl", '{"story": 5}\n', r"bad\.jsonl:1: field 'story' is int"),
        ("bad.jsonl", "[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
        ("bad.csv", "a,b\n", r"bad\.csv: unsupported corpus file type"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, name, content, message):
    with pytest.raises(CorpusError, match=message):
        list(iter_stories(write(tmp_path / name, content)))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".txt.zst"])
def test_invalid_utf8_far_into_a_file_names_its_line_and_byte_offset(tmp_path, suffix):
    """Issue 22.15: the error named the first line of the decoder's buffer and no offset."""
    jsonl = suffix == ".jsonl"
    lines = [(json.dumps({"text": f"Story {i} is fine."}) if jsonl else f"Story {i} is fine.") for i in range(3000)]
    raw = "".join(f"{line}\n" + ("" if jsonl else "<|endoftext|>\n") for line in lines).encode()
    bad_line = 1 + (2000 if jsonl else 4000)  # a separator line follows each .txt story
    at = raw.index(b"Story 2000 is") + len("Story 2000 is")
    raw = raw[:at] + b"\xe9t\xc3" + raw[at:]  # Latin-1, not UTF-8; then a character cut short
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw) if suffix.endswith(".zst") else raw)
    with pytest.raises(CorpusError) as caught:
        list(iter_stories(path))
    assert str(caught.value) == f"{path}:{bad_line}: invalid UTF-8 at byte offset {at} (invalid continuation byte)"


def test_a_character_cut_between_two_pieces_is_read_whole(tmp_path, monkeypatch):
    from tinystories import corpus

    monkeypatch.setattr(corpus, "_TXT_PIECE_BYTES", 7)  # "é" (2 bytes) and "😀" (4) fall across pieces
    write(tmp_path / "s.txt", "Lily said é😀 twice.\n<|endoftext|>\né😀 again\n")
    assert list(iter_stories(tmp_path / "s.txt")) == ["Lily said é😀 twice.", "é😀 again"]


def test_a_txt_without_separators_is_split_at_blank_lines_with_a_warning(tmp_path, capsys):
    write(tmp_path / "a.txt", "One story.\nStill one.\n\n  \nTwo.\n\nThree.\n")
    assert list(iter_stories(tmp_path / "a.txt")) == ["One story.\nStill one.", "Two.", "Three."]
    assert "a.txt has no <|endoftext|> separators: split into 3 stories at blank lines" in capsys.readouterr().err
    write(tmp_path / "b.txt", "One story.\n\nIts second paragraph.\n<|endoftext|>\nTwo.\n")  # separated: kept whole
    assert list(iter_stories(tmp_path / "b.txt")) == ["One story.\n\nIts second paragraph.", "Two."]
    write(tmp_path / "c.txt", "A single story.\n")
    assert list(iter_stories(tmp_path / "c.txt")) == ["A single story."] and capsys.readouterr().err == ""


def test_invalid_utf8_and_corrupt_zstd(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"fine\n<|endoftext|>\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"bin\.txt:3: invalid UTF-8 at byte offset 23 \(invalid start byte\)"):
        list(iter_stories(tmp_path / "bin.txt"))
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"Some story text here.\n" * 50)
    (tmp_path / "t.txt.zst").write_bytes(frame + frame[:-6])  # a second frame cut short
    with pytest.raises(CorpusError, match=r"t\.txt\.zst: truncated zstd data"):
        list(iter_stories(tmp_path / "t.txt.zst"))
    flipped = bytearray(frame)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "c.txt.zst").write_bytes(bytes(flipped))
    with pytest.raises(CorpusError, match=r"c\.txt\.zst: corrupt zstd data"):
        list(iter_stories(tmp_path / "c.txt.zst"))
    with pytest.raises(CorpusError, match=r"missing\.txt: corpus file not found"):
        CorpusReader([tmp_path / "missing.txt"])


# Story text: anything except the separator itself; may hold newlines, quotes and non-ASCII.
story_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: "<|endoftext|>" not in s
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stories=st.lists(story_text, max_size=8), compressed=st.booleans())
def test_round_trip_property(tmp_path, stories, compressed):
    # Universal newlines: \r and \r\n inside a story read back as \n, as for any text file.
    expected = [s.replace("\r\n", "\n").replace("\r", "\n").strip() for s in stories]
    expected = [s for s in expected if s]
    zst = ".zst" if compressed else ""
    txt = write(tmp_path / f"p.txt{zst}", "".join(f"{s}\n<|endoftext|>\n" for s in stories))
    assert list(iter_stories(txt)) == expected
    jsonl = write(tmp_path / f"p.jsonl{zst}", "".join(json.dumps({"story": s}) + "\n" for s in stories))
    assert list(iter_stories(jsonl)) == [s.strip() for s in stories if s.strip()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_unexpectedly(tmp_path, data):
    for name in ("x.txt", "x.jsonl", "x.txt.zst"):
        (tmp_path / name).write_bytes(data)
        try:
            stories = list(iter_stories(tmp_path / name))
        except CorpusError as e:
            assert name in str(e)
        else:
            assert all(isinstance(s, str) and s == s.strip() and s for s in stories)


# ---- the one Instruct layout: synthesis and `data prepare --instruct` write the same bytes ---------------------
def _prepared_stories(records: list[dict], out: Path, *, instruct: bool, fmt: str = "jsonl") -> list[str]:
    """``data prepare`` on the records (as a JSONL file or an all-data archive), and every story decoded back from
    the shards in order."""
    from tinystories.data import IGNORE_INDEX, TokenLoader, prepare
    from tinystories.tokenizer import Tokenizer

    source = out.with_suffix("." + fmt)
    if fmt == "jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        write_all_data(source, records, per_member=7)
    text = source if fmt == "jsonl" else "\n".join(iter_stories(source))  # Tokenizer.train reads text files
    tokenizer = Tokenizer.train([text], vocab_size=300)  # byte-level: decode(encode(text)) == text
    prepare([source], out, tokenizer, instruct=instruct, val_fraction=0.0, progress=False)
    loader = TokenLoader(out, batch_size=1, seq_len=4096, mode="stories", shuffle=False, loop=False, threads=1)
    return [tokenizer.decode(x[0, : int((y[0] != IGNORE_INDEX).sum())].tolist()) for x, y in loader]


def test_synth_instruct_records_prepare_to_synths_own_text(tmp_path):
    from tinystories.synth import SynthConfig, synthesize

    out = tmp_path / "instruct.jsonl"
    synthesize(SynthConfig(n=40, out=out, backend="template", instruct=True, seed=3, progress=False))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len({tuple(r["instructions"]) for r in records}) >= 5  # many combinations of instruction types
    # Without the rendered `text`, prepare renders the record's fields itself: byte for byte synth's text.
    fields_only = [{k: v for k, v in r.items() if k != "text"} for r in records]
    assert _prepared_stories(fields_only, tmp_path / "from-fields", instruct=True) == [r["text"] for r in records]
    assert _prepared_stories(records, tmp_path / "from-text", instruct=True) == [r["text"] for r in records]


def test_plain_synth_records_render_in_the_published_instruct_style(tmp_path):
    from tinystories.synth import SynthConfig, synthesize
    from tinystories.vocabulary import FEATURE_LABELS

    out = tmp_path / "plain.jsonl"
    synthesize(SynthConfig(n=12, out=out, backend="template", seed=5, progress=False))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = []
    for r in records:  # written out by hand: "Features: BadEnding, MoralValue", "Words: run, dog, happy"
        lines = [f"Features: {', '.join(FEATURE_LABELS[f] for f in r['features'])}"] if r["features"] else []
        lines.append("Words: " + ", ".join(r["words"][p] for p in ("verb", "noun", "adjective")))
        expected.append("\n".join(lines) + "\nStory:\n" + r["story"])
    assert any(r["features"] for r in records)
    assert _prepared_stories(records, tmp_path / "shards", instruct=True) == expected
    assert _prepared_stories(records, tmp_path / "plain-shards", instruct=False) == [r["story"] for r in records]


# ---- TinyStories_all_data: JSON arrays, alone or in a .tar.gz, and the Hub's parquet --------------------------
def all_data_records(stories: list[str]) -> list[dict]:
    """Records shaped like data00.json's (the real file's field names and nesting)."""
    words = [["hang", "foot", "cute"], ["run", "dog", "happy"], ["share", "toy", "red"]]
    features = [["Dialogue"], [], ["BadEnding", "Twist"]]
    return [
        {
            "story": "\n\n" + s,
            "instruction": {
                "prompt:": "Write a short story (3-5 paragraphs)...",
                "words": words[i % 3],
                "features": features[i % 3],
            },
            "summary": f"Summary number {i}.",
            "source": "GPT-4",
        }
        for i, s in enumerate(stories)
    ]


def write_all_data(path: Path, records: list[dict], *, per_member: int, damage: dict[int, bytes] | None = None) -> Path:
    """A TinyStories_all_data-style .tar.gz: data00.json, data01.json, ... of `per_member` records each;
    `damage[i]` replaces member i's bytes."""
    with tarfile.open(path, "w:gz") as archive:
        for m, start in enumerate(range(0, len(records), per_member)):
            data = (damage or {}).get(m) or json.dumps(records[start : start + per_member]).encode()
            info = tarfile.TarInfo(f"data{m:02d}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_all_data_archive_streams_every_story_in_order(tmp_path, real_stories):
    stories = real_stories[:200]
    path = write_all_data(tmp_path / "TinyStories_all_data.tar.gz", all_data_records(stories), per_member=64)
    reader = CorpusReader(path)
    assert list(reader) == stories
    assert reader.bytes_read == path.stat().st_size
    single = tmp_path / "data00.json"  # one member, unpacked
    single.write_text(json.dumps(all_data_records(stories[:5])), encoding="utf-8")
    assert list(iter_stories(single)) == stories[:5]


def test_all_data_instruct_layout_written_out_by_hand(tmp_path, real_stories):
    path = write_all_data(tmp_path / "all.tar.gz", all_data_records(real_stories[:3]), per_member=2)
    assert list(iter_stories(path, instruct=True)) == [
        f"Features: Dialogue\nWords: hang, foot, cute\nSummary: Summary number 0.\nStory:\n{real_stories[0]}",
        f"Words: run, dog, happy\nSummary: Summary number 1.\nStory:\n{real_stories[1]}",
        f"Features: BadEnding, Twist\nWords: share, toy, red\nSummary: Summary number 2.\nStory:\n{real_stories[2]}",
    ]


def test_prepare_instruct_from_the_archive_uses_the_one_formatter(tmp_path, real_stories):
    from tinystories.corpus import format_instructions

    records = all_data_records(real_stories[:20])
    expected = [
        format_instructions(
            words=r["instruction"]["words"], features=r["instruction"]["features"], summary=r["summary"]
        )
        + r["story"].strip()
        for r in records
    ]
    assert _prepared_stories(records, tmp_path / "shards", instruct=True, fmt="tar.gz") == expected


def test_truncated_archive_names_the_archive_and_member(tmp_path, real_stories):
    path = write_all_data(tmp_path / "all.tar.gz", all_data_records(real_stories[:300]), per_member=100)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    got = []
    with pytest.raises(CorpusError, match=r"cut\.tar\.gz: truncated or damaged archive \(in member data0[12]\.json\)"):
        for story in iter_stories(cut):
            got.append(story)
    assert got == real_stories[: len(got)] and len(got) >= 100  # the members before the cut, streamed first


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (b'[{"story": "Lily ran."}, {"story": ', r"bad\.tar\.gz:data01\.json: invalid JSON: Expecting value \(line 1"),
        (b'{"story": "Lily ran."}', r"bad\.tar\.gz:data01\.json: expected a JSON array of story records, got dict"),
        (b'[{"story": "Lily ran."}, {"words": []}]', r"bad\.tar\.gz:data01\.json\[1\]: no 'text' or 'story' field"),
        (b'[{"story": "Lily \xff ran."}]', r"bad\.tar\.gz:data01\.json: invalid UTF-8 at byte offset 17"),
    ],
)
def test_bad_member_names_the_archive_and_member(tmp_path, real_stories, member, message):
    path = write_all_data(tmp_path / "bad.tar.gz", all_data_records(real_stories[:4]), per_member=2, damage={1: member})
    with pytest.raises(CorpusError, match=message):
        list(iter_stories(path))


def test_parquet_text_column(tmp_path, real_stories):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": ["  " + s + "\n" for s in real_stories[:300]] + [""]}), path, row_group_size=100)
    reader = CorpusReader(path)
    assert list(reader) == real_stories[:300]
    assert reader.bytes_read == path.stat().st_size
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"body": ["x"]}), other)
    with pytest.raises(CorpusError, match=r"other\.parquet: no 'text' or 'story' column \(columns: body\)"):
        list(iter_stories(other))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorpusError, match=r"broken\.parquet: not a readable parquet file"):
        list(iter_stories(broken))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        CorpusError, match=r"train\.parquet: reading \.parquet needs pyarrow: pip install 'tinystories\[parquet\]'"
    ):
        list(iter_stories(path))


@pytest.mark.parametrize("piece", [1, 5, 12, 13, 14, 100])
def test_txt_pieces_split_anywhere_read_the_same(tmp_path, monkeypatch, piece):
    import tinystories.corpus as corpus

    text = "One.\nTwo\n<|endoftext|>\n<|endoftext|>Three é\n<|endoftext|><|endoftext|>\nFour\n" * 5 + "tail"
    path = write(tmp_path / "p.txt", text)
    expected = list(iter_stories(path))  # one piece: the whole file
    assert expected[:4] == ["One.\nTwo", "Three é", "Four\nOne.\nTwo", "Three é"] and expected[-1] == "Four\ntail"
    monkeypatch.setattr(corpus, "_TXT_PIECE_BYTES", piece)  # every place an EOT can be cut between pieces
    assert list(iter_stories(path)) == [s.strip() for s in text.split("<|endoftext|>") if s.strip()] == expected
