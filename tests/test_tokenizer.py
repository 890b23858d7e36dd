"""tinystories.tokenizer against independent references: tiktoken (encoding), the `regex` module and a
slow pure-Python BPE (training), Hugging Face `tokenizers` (export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystories import _core
from tinystories.corpus import EOT, read_text_chunks
from tinystories.tokenizer import GPT2_PATTERN, Tokenizer, bytes_to_unicode, resolve_tokenizer

# ---- references and fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_files):
    """tiktoken's GPT-2 encoding built offline from the shared vocab.json (ranks = ids)."""
    tiktoken = pytest.importorskip("tiktoken")
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    encoder = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    ranks = {bytes(byte_of[c] for c in token): i for token, i in encoder.items() if token != EOT}
    return tiktoken.Encoding(
        name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )


@pytest.fixture(scope="session")
def story_text(real_stories) -> str:
    return "\n<|endoftext|>\n".join(real_stories)


# Pieces that stress pre-tokenization: contractions in both cases, odd white space (all 25 White_Space
# code points, U+001C..U+001F which str.isspace() but not \s accepts, zero-width space), digits of
# several scripts, combining marks, emoji with joiners and skin tones, CJK, letters new in Unicode 16.
FRAGMENTS = [
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "'LL",
    "'",
    "''",
    "’s",
    " '",
    "'x",
    " ",
    "  ",
    "   ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    " \t ",
    "\u00a0",
    "\u1680",
    "\u2000",
    "\u200a",
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
    "\u0085",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1f",
    "\u200b",
    "\ufeff",
    "0",
    "42",
    "3.14",
    "١٢٣",
    "１２",
    "Ⅻ",
    "½",
    "²",
    "e\u0301",
    "\u0301",
    "a\u0308\u0323",
    "क्षि",
    "🎉",
    "👍🏽",
    "👩‍👩‍👧",
    "🇯🇵",
    "日本語",
    "한국어",
    "中文",
    "Lily",
    " the",
    "Hello",
    "ß",
    "İ",
    "ǅ",
    "\U000105c0",
    "\U00011f00",
    "\ufffd",
    "<|",
    "|>",
    "<|endoftext",
    "!",
    "?!",
    "...",
    "—",
    "“",
    "”",
    "$",
    "\\",
    "\x00",
    "\x7f",
    "\U0010ffff",
    "\ue000",
]
unicode_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.characters(), st.text(max_size=3)), max_size=40).map(
    "".join
)


# ---- encoding parity with tiktoken ---------------------------------------------------------------


def test_real_stories_match_tiktoken(gpt2, tiktoken_gpt2, story_text):
    assert gpt2.encode(story_text, allowed_special="all") == tiktoken_gpt2.encode(story_text, allowed_special="all")
    assert gpt2.encode_ordinary(story_text) == tiktoken_gpt2.encode_ordinary(story_text)


def test_other_story_files_match_tiktoken(gpt2, tiktoken_gpt2, shared_data):
    for name in [
        "tinystoriesv2_gpt4_train_head",
        "tinystories_v1_train_continuation_lowercased",
        "tinystories_v1_valid_head_unsegmented",
    ]:
        text = "".join(read_text_chunks(shared_data / "tinystories" / f"{name}.txt.zst"))
        assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all"), name
    fixture = (shared_data / "tinystories" / "cs336_fixture_tinystories_sample.txt").read_text(encoding="utf-8")
    assert gpt2.encode(fixture, allowed_special="all") == tiktoken_gpt2.encode(fixture, allowed_special="all")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=unicode_text)
def test_unicode_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    # text round-trips; a lone surrogate (not encodable as UTF-8) comes back as U+FFFD, as in tiktoken
    as_utf8 = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert gpt2.decode(gpt2.encode_ordinary(text)) == as_utf8


@settings(max_examples=150, deadline=None)
@given(text=st.lists(st.sampled_from(FRAGMENTS + [EOT, "a", "b"]), max_size=30).map("".join))
def test_special_tokens_match_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={EOT}) == tiktoken_gpt2.encode(text, allowed_special={EOT})
    if EOT in text:
        with pytest.raises(ValueError, match="disallowed special token '<|endoftext|>'"):
            gpt2.encode(text)
        with pytest.raises(ValueError):
            tiktoken_gpt2.encode(text)
    else:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


def test_character_classes_match_tiktoken_for_every_code_point():
    """Our \\p{L}, \\p{N}, \\s tables agree with tiktoken's regex engine on all of Unicode."""
    tiktoken = pytest.importorskip("tiktoken")
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    byte_ranks = {bytes([b]): b for b in range(256)}

    def tiktoken_class(pattern: str) -> set[str]:
        # tiktoken drops the text its pattern does not match, so what comes back is the class.
        probe = tiktoken.Encoding(name="probe", pat_str=pattern, mergeable_ranks=byte_ranks, special_tokens={})
        return set(bytes(probe.encode_ordinary("".join(chars))).decode("utf-8"))

    expected = {"L": tiktoken_class(r"\p{L}"), "N": tiktoken_class(r"\p{N}"), "S": tiktoken_class(r"\s")}
    # Ours: c is a letter iff "a"+c is one pre-token, a number iff "1"+c is, white space iff "\t"+c is.
    ours = {
        "L": {c for c in chars if len(_core.pretokenize("a" + c)) == 1},
        "N": {c for c in chars if len(_core.pretokenize("1" + c)) == 1},
        "S": {c for c in chars if len(_core.pretokenize("\t" + c)) == 1},
    }
    for name in expected:
        diff = sorted(f"U+{ord(c):04X}" for c in expected[name] ^ ours[name])
        assert not diff, f"class {name} differs from tiktoken at {diff[:10]} ({len(diff)} code points)"


def test_pretokenize_matches_regex_module_on_ascii():
    regex = pytest.importorskip("regex")
    text = "I'm   here, they'll've 42x!!  \n\n\n  yes\t\tno 'quote' ...  end  "
    assert _core.pretokenize(text) == regex.findall(GPT2_PATTERN, text)


def test_long_pieces_use_the_same_bpe(gpt2, tiktoken_gpt2):
    # Over 64 bytes the merge loop switches to the heap version; both must give tiktoken's result.
    for text in [" " * 5000 + "x", "a" * 3000, "ab" * 700, "😀" * 300, "1234567890" * 50, "!?" * 100]:
        assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "a\ud800b \udfff"
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2.encode_batch([text, "ok"]) == [tiktoken_gpt2.encode(text), tiktoken_gpt2.encode("ok")]


# ---- decoding and round trips ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=unicode_text)
def test_round_trip(gpt2, text):
    ids = gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text
    assert gpt2.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=20))
def test_decode_replaces_invalid_utf8_like_tiktoken(gpt2, tiktoken_gpt2, ids):
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)
    assert gpt2.decode_bytes(ids) == tiktoken_gpt2.decode_bytes(ids)


def test_decode_accepts_numpy_and_rejects_bad_ids(gpt2):
    ids = gpt2.encode_to_numpy("Hello world")
    assert gpt2.decode(ids) == "Hello world"
    for bad in ([50257], [-1], np.array([1, 99999])):
        with pytest.raises(ValueError, match="out of range"):
            gpt2.decode(bad)


# ---- API details -------------------------------------------------------------------------------------


def test_batch_and_numpy_agree_with_encode(gpt2, real_stories):
    stories = [s + "\n" + EOT for s in real_stories[:300]]
    expected = [gpt2.encode(s, allowed_special="all") for s in stories]
    for threads in (1, 2, 4):
        assert gpt2.encode_batch(stories, num_threads=threads, allowed_special="all") == expected
    arrays = gpt2.encode_batch_to_numpy(stories, num_threads=2, allowed_special="all")
    assert all(a.dtype == np.uint16 for a in arrays)
    assert [a.tolist() for a in arrays] == expected
    single = gpt2.encode_to_numpy(stories[0], allowed_special="all")
    assert single.dtype == np.uint16 and single.tolist() == expected[0]
    assert gpt2.encode_batch([]) == []


def test_batch_raises_on_disallowed_special(gpt2):
    with pytest.raises(ValueError, match="endoftext"):
        gpt2.encode_batch(["fine", "bad " + EOT], num_threads=2)


def test_concurrent_calls_from_python_threads(gpt2, real_stories):
    # encode releases the GIL; concurrent calls must each borrow their own piece cache.
    from concurrent.futures import ThreadPoolExecutor

    stories = real_stories[:200]
    expected = [gpt2.encode(s) for s in stories]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(gpt2.encode, stories * 3))
        batches = list(pool.map(lambda chunk: gpt2.encode_batch(chunk, num_threads=2), [stories] * 4))
    assert got == expected * 3 and batches == [expected] * 4


def test_bad_argument_types(gpt2):
    with pytest.raises(TypeError, match="expected str, got bytes"):
        gpt2.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected str, got int"):
        gpt2.encode_batch(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of integers"):
        gpt2.decode(["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_threads"):
        gpt2.encode_batch(["x"], num_threads=0)


def test_overlapping_special_tokens_prefer_the_longest():
    vocab = [bytes([b]) for b in range(256)] + [b"", b""]
    tok = Tokenizer(vocab, [], {"<a>": 256, "<a>b": 257})
    assert tok.encode("x<a>b<a>", allowed_special="all") == [120, 257, 256]
    assert tok.encode("x<a>c", allowed_special={"<a>"}) == [120, 256, 99]
    with pytest.raises(ValueError, match="'<a>b'"):  # a disallowed special anywhere refuses the text
        tok.encode("x<a>b", allowed_special={"<a>"})


def test_numpy_dtype_is_uint32_for_large_vocabularies():
    # 256 bytes + every two-byte pair: 65,792 tokens; pair (a, b) gets id 256 + (255-a)*256 + (255-b).
    pairs = [(a, b) for a in range(255, -1, -1) for b in range(255, -1, -1)]
    big = Tokenizer(
        [bytes([b]) for b in range(256)] + [bytes(p) for p in pairs],
        [(a, b, 256 + k) for k, (a, b) in enumerate(pairs)],
        {},
    )
    ids = big.encode_to_numpy("\x00\x00ab")
    assert ids.dtype == np.uint32 and ids.tolist() == [65791, 256 + 158 * 256 + 157]
    assert big.decode(ids) == "\x00\x00ab"


def test_allowed_special_validation(gpt2):
    assert gpt2.encode(EOT, allowed_special={EOT}) == [50256]
    assert gpt2.encode_ordinary(EOT) == [27, 91, 437, 1659, 5239, 91, 29]
    with pytest.raises(ValueError, match="unknown special token"):
        gpt2.encode("x", allowed_special={"<|bruh|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        gpt2.encode("x", allowed_special="none")


def test_properties(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_token == 50256 and gpt2.special_tokens == {EOT: 50256}
    assert gpt2.token_bytes(15496) == b"Hello"
    assert len(gpt2.fingerprint) == 64
    no_eot = Tokenizer([bytes([b]) for b in range(256)], [], {})
    with pytest.raises(ValueError, match="no <|endoftext|>"):
        _ = no_eot.eot_token
    assert no_eot.fingerprint != gpt2.fingerprint


@pytest.mark.parametrize(
    "vocab, merges, specials, message",
    [
        ([bytes([b]) for b in range(255)], [], {}, "byte 255 has no single-byte token"),
        ([bytes([b]) for b in range(256)] + [b"ab"], [(97, 98, 255)], {}, "not the concatenation"),
        ([bytes([b]) for b in range(256)] + [b"a"], [], {}, "same bytes"),
        ([bytes([b]) for b in range(256)], [(97, 98, 300)], {}, "outside the vocabulary"),
        ([bytes([b]) for b in range(256)], [], {EOT: 256}, "outside the vocabulary"),
    ],
)
def test_inconsistent_models_are_rejected(vocab, merges, specials, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer(vocab, merges, specials)


# ---- files: save/load, GPT-2 files, pretrained cache, resolve ------------------------------------------


def test_save_load_round_trip(gpt2, tmp_path):
    path = tmp_path / "tok.json"
    gpt2.save(path)
    loaded = Tokenizer.load(path)
    assert loaded == gpt2 and loaded.fingerprint == gpt2.fingerprint
    assert loaded.encode("Hi there! " + EOT, allowed_special="all") == gpt2.encode(
        "Hi there! " + EOT, allowed_special="all"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temporary file left behind
    assert Tokenizer.from_json(gpt2.to_json()) == gpt2 and path.read_text(encoding="utf-8") == gpt2.to_json()
    assert resolve_tokenizer(path) == gpt2
    (tmp_path / "dataset").mkdir()
    gpt2.save(tmp_path / "dataset" / "tokenizer.json")
    assert resolve_tokenizer(tmp_path / "dataset") == gpt2


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(bad)
    bad.write_text(json.dumps({"format": "tinystories-bpe", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        Tokenizer.load(bad)
    bad.write_text(json.dumps({"format": "tinystories-bpe", "version": 1, "pattern": "gpt2", "vocab": []}))
    with pytest.raises(ValueError, match="malformed"):
        Tokenizer.load(bad)
    with pytest.raises(ValueError, match="cannot resolve"):
        resolve_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="checkpoint.pt: not a tinystories-bpe file"):
        Tokenizer.from_json("[1, 2]", source="checkpoint.pt")


def test_gpt2_file_errors(gpt2_files, tmp_path):
    vocab, merges = gpt2_files
    broken = tmp_path / "merges.txt"
    broken.write_text("#version: 0.2\nĠ t\nthis line is bad\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merges.txt:3"):
        Tokenizer.from_gpt2_files(vocab, broken)
    broken.write_text("#version: 0.2\nĠ zzzzzzqq\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not in"):
        Tokenizer.from_gpt2_files(vocab, broken)


def test_from_pretrained_uses_the_cache_and_explains_missing_files(gpt2, gpt2_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path))
    monkeypatch.setenv("TINYSTORIES_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="vocab.json.*merges.txt.*from_gpt2_files"):
        Tokenizer.from_pretrained("gpt2")
    (tmp_path / "gpt2").mkdir()
    for f in gpt2_files:
        (tmp_path / "gpt2" / f.name).symlink_to(f)
    assert Tokenizer.from_pretrained("gpt-neo") == gpt2
    assert resolve_tokenizer("gpt2") == gpt2
    with pytest.raises(ValueError, match="unknown pretrained"):
        Tokenizer.from_pretrained("llama")


def test_invalid_utf8_file_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"Once upon a time.\nA cat \xff\xfe sat.\n")
    with pytest.raises(ValueError, match=r"bad\.txt: invalid UTF-8 at byte offset 24"):
        list(read_text_chunks(path))
    assert "".join(read_text_chunks(path, errors="replace")) == "Once upon a time.\nA cat \ufffd\ufffd sat.\n"
    with pytest.raises(ValueError, match="errors must be"):
        list(read_text_chunks(path, errors="ignore"))  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(read_text_chunks(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_bytes(b"")
    assert list(read_text_chunks(tmp_path / "empty.txt")) == []
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.train([tmp_path / "empty.txt"], 300)


def test_file_chunks_cut_only_where_pre_tokens_do_not_change(shared_data, monkeypatch):
    import tinystories.corpus as tokenizer_module

    path = shared_data / "tinystories" / "tinystories_v1_valid_head_unsegmented.txt.zst"
    whole = "".join(read_text_chunks(path))
    monkeypatch.setattr(tokenizer_module, "_CHUNK_BYTES", 4096)
    chunks = list(read_text_chunks(path))
    assert len(chunks) > 100 and "".join(chunks) == whole
    assert [p for c in chunks for p in _core.pretokenize(c)] == _core.pretokenize(whole)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.sampled_from(FRAGMENTS).map(str.encode), st.binary(max_size=4), st.just(b".\n")), max_size=30
    ),
    chunk=st.integers(1, 16),
)
def test_file_reading_with_any_bytes_and_chunk_size(parts, chunk):
    """Chunked reading decodes exactly like bytes.decode, and reports the same first error offset."""
    import tempfile

    import tinystories.corpus as tokenizer_module

    data = b"".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.txt"
        path.write_bytes(data)
        saved, tokenizer_module._CHUNK_BYTES = tokenizer_module._CHUNK_BYTES, chunk
        try:
            assert "".join(read_text_chunks(path, errors="replace")) == data.decode("utf-8", "replace")
            try:
                expected = data.decode("utf-8")
            except UnicodeDecodeError as e:
                with pytest.raises(ValueError, match=f"invalid UTF-8 at byte offset {e.start} "):
                    list(read_text_chunks(path))
            else:
                assert "".join(read_text_chunks(path)) == expected
        finally:
            tokenizer_module._CHUNK_BYTES = saved


# ---- training -----------------------------------------------------------------------------------------


def reference_train(texts: list[str], vocab_size: int, specials: list[str]) -> list[tuple[bytes, bytes]]:
    """Slow, obviously-correct BPE training with the documented tie-break: recount every pair each step,
    merge the most frequent; ties -> smallest (left bytes, right bytes)."""
    regex = pytest.importorskip("regex")
    words: Counter[tuple[bytes, ...]] = Counter()
    special_re = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    for text in texts:
        for segment in regex.split(special_re, text) if specials else [text]:
            for piece in regex.findall(GPT2_PATTERN, segment):
                words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    merges = []
    while 256 + len(merges) < vocab_size - len(specials):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p[0], p[1]))
        merges.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def merge_bytes(tok: Tokenizer) -> list[tuple[bytes, bytes]]:
    vocab = tok.vocab
    return [(vocab[a], vocab[b]) for a, b, _ in tok.merges]


def test_train_matches_reference_on_real_stories(real_stories):
    texts = ["\n".join(s + "\n" + EOT for s in real_stories[:120])]
    tok = Tokenizer.train(texts, 256 + 200 + 1, num_threads=2)
    assert merge_bytes(tok) == reference_train(texts, 256 + 200 + 1, [EOT])
    assert tok.n_vocab == 457 and tok.eot_token == 456
    assert [tok.token_bytes(b) for b in range(256)] == [bytes([b]) for b in range(256)]
    assert tok.decode(tok.encode(texts[0], allowed_special="all")) == texts[0]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(
        st.lists(st.sampled_from(["a", "b", "ab", " ", "  ", "\n", "'s", "é", "1", "<s>", "😀"]), max_size=30).map(
            "".join
        ),
        max_size=5,
    ),
    merges=st.integers(0, 25),
    threads=st.integers(1, 3),
)
def test_train_matches_reference_with_ties(texts, merges, threads):
    specials = ["<s>"]
    if not any(t.replace("<s>", "") for t in texts):
        with pytest.raises(ValueError, match="empty corpus"):
            Tokenizer.train(texts, 256 + merges + 1, specials, num_threads=threads)
        return
    tok = Tokenizer.train(texts, 256 + merges + 1, specials, num_threads=threads)
    assert merge_bytes(tok) == reference_train(texts, 256 + merges + 1, specials)
    for text in texts:
        assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_train_on_files_cut_for_threads(shared_data, tmp_path):
    # A 1.6 MB text without special tokens is split for the counting threads at safe newlines.
    text = "".join(read_text_chunks(shared_data / "tinystories" / "tinystories_v1_valid_head_unsegmented.txt.zst")) * 2
    path = tmp_path / "valid.txt"
    path.write_text(text, encoding="utf-8")
    from_file = Tokenizer.train(path, 256 + 30, special_tokens=(), num_threads=2)
    assert merge_bytes(from_file) == reference_train([text], 256 + 30, [])
    assert Tokenizer.train([text], 256 + 30, special_tokens=(), num_threads=1) == from_file


def test_train_is_deterministic_across_threads_and_inputs(shared_data, real_stories):
    zst = shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"
    a = Tokenizer.train([zst], 600, num_threads=1)
    b = Tokenizer.train(zst, 600, num_threads=2)
    assert a == b and a.n_vocab == 600


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="below 256 byte tokens"):
        Tokenizer.train(["some text"], 256)
    with pytest.raises(ValueError, match="empty corpus"):
        Tokenizer.train(["", EOT], 300)
    with pytest.raises(ValueError, match="duplicate special"):
        Tokenizer.train(["x"], 300, ["<a>", "<a>"])
    with pytest.raises(ValueError, match="non-empty"):
        Tokenizer.train(["x"], 300, [""])
    with pytest.raises(TypeError, match="corpus items"):
        Tokenizer.train([b"bytes"], 300)  # type: ignore[list-item]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text\nmore \xc3( bad\n")
    with pytest.raises(ValueError, match=r"bad\.txt: invalid UTF-8 at byte offset 15"):
        Tokenizer.train([bad], 300)
    assert Tokenizer.train([bad], 300, errors="replace").n_vocab <= 300


def test_train_stops_when_no_pair_is_left():
    tok = Tokenizer.train(["ab ab"], 1000)
    assert merge_bytes(tok) == [(b"a", b"b"), (b" ", b"ab")]
    assert tok.n_vocab == 259 and tok.eot_token == 258


# ---- restriction --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def restricted(gpt2, real_stories) -> Tokenizer:
    return gpt2.restrict(2000, ["\n".join(s + "\n" + EOT for s in real_stories[:500])])


def test_restrict_keeps_bytes_top_tokens_and_closure(gpt2, restricted, real_stories):
    assert restricted.n_vocab == 2000 and restricted.eot_token == 1999
    vocab = restricted.vocab
    assert sorted(t for t in vocab[:-1] if len(t) == 1) == [bytes([b]) for b in range(256)]
    produced = {r for _, _, r in restricted.merges}
    assert all(len(vocab[i]) == 1 or i in produced for i in range(1999))  # every token has its merge
    assert all(a < 2000 and b < 2000 for a, b, _ in restricted.merges)
    # The most frequent GPT-2 tokens of the corpus are all kept.
    counts = Counter(t for s in real_stories[:500] for t in gpt2.encode(s))
    kept = set(vocab)
    assert all(gpt2.token_bytes(t) in kept for t, _ in counts.most_common(300))
    # Ids keep GPT-2's order.
    old_ids = [gpt2.encode_ordinary(t.decode("utf-8", "replace")) for t in vocab[256:400]]
    assert all(len(ids) == 1 for ids in old_ids) and [ids[0] for ids in old_ids] == sorted(ids[0] for ids in old_ids)


@settings(max_examples=150, deadline=None)
@given(text=unicode_text)
def test_restricted_round_trip(restricted, text):
    ids = restricted.encode(text)
    assert max(ids, default=0) < 2000
    assert restricted.decode(ids) == text


def test_restricted_encodes_stories_losslessly_and_saves(restricted, real_stories, tmp_path):
    stories = real_stories[500:700]
    batch = restricted.encode_batch(stories, num_threads=2)
    assert [restricted.decode(ids) for ids in batch] == stories
    restricted.save(tmp_path / "r.json")
    assert Tokenizer.load(tmp_path / "r.json").encode_batch(stories) == batch


def test_restrict_errors(gpt2):
    with pytest.raises(ValueError, match="top_k must be between 257"):
        gpt2.restrict(256, ["text"])
    with pytest.raises(ValueError, match="top_k must be between"):
        gpt2.restrict(60000, ["text"])


# ---- Hugging Face tokenizers export --------------------------------------------------------------------


def hf_from(tok: Tokenizer, path: Path):
    tokenizers = pytest.importorskip("tokenizers")
    tok.save_hf(path)
    return tokenizers.Tokenizer.from_file(str(path if path.suffix else path / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_gpt2(gpt2, tmp_path_factory):
    return hf_from(gpt2, tmp_path_factory.mktemp("hf") / "tokenizer.json")


def test_hf_export_matches_on_real_stories(gpt2, hf_gpt2, real_stories):
    stories = [s + "\n" + EOT for s in real_stories[:400]]
    assert [e.ids for e in hf_gpt2.encode_batch(stories)] == gpt2.encode_batch(stories, allowed_special="all")
    ids = gpt2.encode(stories[0], allowed_special="all")
    assert hf_gpt2.decode(ids, skip_special_tokens=False) == gpt2.decode(ids)


@settings(max_examples=200, deadline=None)
@given(text=unicode_text)
def test_hf_export_matches_on_unicode(gpt2, hf_gpt2, text):
    assert hf_gpt2.encode(text).ids == gpt2.encode(text, allowed_special="all")


def test_hf_export_of_trained_and_restricted(restricted, real_stories, tmp_path):
    trained = Tokenizer.train(["\n".join(real_stories[:200])], 700)
    for name, tok in [("trained", trained), ("restricted", restricted)]:
        hf = hf_from(tok, tmp_path / name)  # a folder path gets tokenizer.json inside
        stories = real_stories[700:800] + ["héllo 🎉 世界 " + EOT + " 'll  x"]
        assert [e.ids for e in hf.encode_batch(stories)] == tok.encode_batch(stories, allowed_special="all"), name
        assert Tokenizer.load(tmp_path / name / "tokenizer.json") == tok  # and it loads back


def test_hf_export_loads_in_transformers(gpt2, tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2.save_hf(tmp_path / "tokenizer.json")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast("Once upon a time")["input_ids"] == gpt2.encode("Once upon a time")


# ---- command line -------------------------------------------------------------------------------------


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinystories.cli", "tokenizer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_train_encode_restrict_export(shared_data, gpt2_files, tmp_path):
    corpus = str(shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst")
    out = tmp_path / "tok.json"
    run = cli("train", corpus, "--vocab-size", "400", "--out", str(out), "--threads", "2")
    assert run.returncode == 0, run.stderr
    tok = Tokenizer.load(out)
    assert tok.n_vocab == 400
    run = cli("encode", "--tokenizer", str(out), "--text", "Once upon a time" + EOT)
    assert run.returncode == 0, run.stderr
    assert [int(i) for i in run.stdout.split()] == tok.encode("Once upon a time" + EOT, allowed_special="all")

    gpt2_dir = Path(gpt2_files[0]).parent
    run = cli(
        "restrict", "--tokenizer", str(gpt2_dir), "--vocab-size", "1000", corpus, "--out", str(tmp_path / "r.json")
    )
    assert run.returncode == 0, run.stderr
    assert Tokenizer.load(tmp_path / "r.json").n_vocab == 1000
    run = cli("export-hf", "--tokenizer", str(tmp_path / "r.json"), "--out", str(tmp_path / "hf"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    story = tmp_path / "story.txt"
    story.write_text("A dog ran.\n", encoding="utf-8")
    run = cli("encode", "--tokenizer", str(out), "--file", str(story), "--out", str(tmp_path / "ids.npy"))
    assert run.returncode == 0, run.stderr
    assert np.load(tmp_path / "ids.npy").tolist() == tok.encode("A dog ran.\n")


def test_cli_reports_bad_utf8_and_can_replace(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\x80oops\n" * 3)
    run = cli("train", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "t.json"))
    assert run.returncode == 2
    assert f"{bad}: invalid UTF-8 at byte offset 10" in run.stderr
    assert not (tmp_path / "t.json").exists()
    run = cli("train", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "t.json"), "--errors", "replace")
    assert run.returncode == 0, run.stderr
    assert Tokenizer.load(tmp_path / "t.json").n_vocab <= 300
    run = cli("encode", "--tokenizer", str(tmp_path / "missing.json"), "--text", "x")
    assert run.returncode == 2 and "cannot resolve tokenizer" in run.stderr
