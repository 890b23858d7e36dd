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
from tinystories.tokenizer import EOT, GPT2_PATTERN, Tokenizer, bytes_to_unicode, read_text_chunks, resolve_tokenizer

tiktoken = pytest.importorskip("tiktoken")

# ---- references and fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_files):
    """tiktoken's GPT-2 encoding built offline from the shared vocab.json (ranks = ids)."""
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    encoder = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    ranks = {bytes(byte_of[c] for c in token): i for token, i in encoder.items() if token != EOT}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.fixture(scope="session")
def story_text(real_stories) -> str:
    return "\n<|endoftext|>\n".join(real_stories)


# Pieces that stress pre-tokenization: contractions in both cases, odd white space (all 25 White_Space
# code points, U+001C..U+001F which str.isspace() but not \s accepts, zero-width space), digits of
# several scripts, combining marks, emoji with joiners and skin tones, CJK, letters new in Unicode 16.
FRAGMENTS = [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "''", "’s", " '", "'x",
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \t ", "\u00a0", "\u1680", "\u2000", "\u200a", "\u2028",
    "\u2029", "\u202f", "\u205f", "\u3000", "\u0085", "\x0b", "\x0c", "\x1c", "\x1f", "\u200b", "\ufeff",
    "0", "42", "3.14", "١٢٣", "１２", "Ⅻ", "½", "²",
    "e\u0301", "\u0301", "a\u0308\u0323", "क्षि", "🎉", "👍🏽", "👩‍👩‍👧", "🇯🇵", "日本語", "한국어", "中文",
    "Lily", " the", "Hello", "ß", "İ", "ǅ", "\U000105c0", "\U00011f00", "\ufffd", "<|", "|>", "<|endoftext",
    "!", "?!", "...", "—", "“", "”", "$", "\\", "\x00", "\x7f", "\U0010ffff", "\ue000",
]
unicode_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.characters(), st.text(max_size=3)), max_size=40).map("".join)


# ---- encoding parity with tiktoken ---------------------------------------------------------------


def test_real_stories_match_tiktoken(gpt2, tiktoken_gpt2, story_text):
    assert gpt2.encode(story_text, allowed_special="all") == tiktoken_gpt2.encode(story_text, allowed_special="all")
    assert gpt2.encode_ordinary(story_text) == tiktoken_gpt2.encode_ordinary(story_text)


def test_other_story_files_match_tiktoken(gpt2, tiktoken_gpt2, shared_data):
    for name in ["tinystoriesv2_gpt4_train_head", "tinystories_v1_train_continuation_lowercased", "tinystories_v1_valid_head_unsegmented"]:
        text = "".join(read_text_chunks(shared_data / "tinystories" / f"{name}.txt.zst"))
        assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all"), name
    fixture = (shared_data / "tinystories" / "cs336_fixture_tinystories_sample.txt").read_text(encoding="utf-8")
    assert gpt2.encode(fixture, allowed_special="all") == tiktoken_gpt2.encode(fixture, allowed_special="all")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=unicode_text)
def test_unicode_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text


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


def test_numpy_dtype_is_uint32_for_large_vocabularies():
    # 256 bytes + every two-byte pair: 65,792 tokens; pair (a, b) gets id 256 + (255-a)*256 + (255-b).
    pairs = [(a, b) for a in range(255, -1, -1) for b in range(255, -1, -1)]
    big = Tokenizer([bytes([b]) for b in range(256)] + [bytes(p) for p in pairs],
                    [(a, b, 256 + k) for k, (a, b) in enumerate(pairs)], {})
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
    with pytest.raises(TypeError):
        gpt2.encode(b"bytes")  # type: ignore[arg-type]


def test_properties(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_token == 50256 and gpt2.special_tokens == {EOT: 50256}
    assert gpt2.token_bytes(15496) == b"Hello"
    assert len(gpt2.fingerprint) == 64
    no_eot = Tokenizer([bytes([b]) for b in range(256)], [], {})
    with pytest.raises(ValueError, match="no <|endoftext|>"):
        no_eot.eot_token
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
    assert loaded.encode("Hi there! " + EOT, allowed_special="all") == gpt2.encode("Hi there! " + EOT, allowed_special="all")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temporary file left behind
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
