"""index.json validation (schema and self-consistency), confined shard names, and `prepare`'s input traps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinystories.corpus import CorpusError
from tinystories.data import DatasetWriter, ShardError, TokenLoader, prepare, stats, verify
from tinystories.tokenizer import Tokenizer

TINY = Tokenizer.train(["the cat sat on the mat. " * 20, "once upon a time there was a dog"], vocab_size=300)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinystories.cli", "data", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Two shards per split of random stories, written by the real writer."""
    out = tmp_path_factory.mktemp("ds")
    writer = DatasetWriter(
        out,
        {"n_vocab": TINY.n_vocab, "eot_token": TINY.eot_token, "tokenizer_fingerprint": TINY.fingerprint},
        shard_tokens=400,
        block_tokens=150,
        level=1,
    )
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 12)):
        stories = [
            np.append(rng.integers(0, TINY.eot_token, int(rng.integers(20, 120))), TINY.eot_token).astype(np.uint16)
            for _ in range(n)
        ]
        writer.add(split, stories, list(range(n)))
    TINY.save(out / "tokenizer.json")
    index = writer.finish()
    assert all(len(index["splits"][s]["shards"]) >= 2 for s in ("train", "val"))
    return out


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "copy"))


def edit_index(data_dir: Path, change) -> None:
    index = json.loads((data_dir / "index.json").read_text())
    change(index)
    (data_dir / "index.json").write_text(json.dumps(index))


def _dup_shard(i):
    i["splits"]["train"]["shards"].append(dict(i["splits"]["train"]["shards"][0]))


# (what is done to index.json, a text every report must hold: the field it names)
DAMAGE = {
    "shard removed": (lambda i: i["splits"]["train"]["shards"].pop(), "splits.train.tokens"),
    "shard removed, totals fixed": (
        lambda i: (
            [i["splits"]["train"]["shards"].pop()]
            and [
                i["splits"]["train"].__setitem__(k, sum(s[k] for s in i["splits"]["train"]["shards"]))
                for k in ("stories", "tokens", "bytes")
            ]
        ),
        "does not list",
    ),
    "shard duplicated": (_dup_shard, "listed twice"),
    "eot changed": (lambda i: i.__setitem__("eot_token", 5), "eot_token: 5, but tokenizer.json"),
    "eot beyond n_vocab": (lambda i: i.__setitem__("eot_token", 70000), "eot_token: 70000 is not below"),
    "dtype changed": (lambda i: i.__setitem__("dtype", "uint32"), "dtype: uint32"),
    "dtype unknown": (lambda i: i.__setitem__("dtype", "float64"), "dtype: 'float64' is not one of"),
    "split removed": (lambda i: i["splits"].pop("val"), "splits: 'val' is a required property"),
    "shard tokens a string": (
        lambda i: i["splits"]["train"]["shards"][0].__setitem__("tokens", "12"),
        "splits.train.shards[0].tokens: '12' is not of type 'integer'",
    ),
    "shard entry a list": (
        lambda i: i["splits"]["val"]["shards"].__setitem__(1, ["val-00001.tok.zst"]),
        "splits.val.shards[1]: ",
    ),
    "shard without sha256": (lambda i: i["splits"]["val"]["shards"][0].pop("sha256"), "'sha256' is a required"),
    "splits a list": (lambda i: i.__setitem__("splits", []), "splits: [] is not of type 'object'"),
    "n_vocab missing": (lambda i: i.pop("n_vocab"), "'n_vocab' is a required property"),
    "file escapes": (
        lambda i: i["splits"]["train"]["shards"][0].__setitem__("file", "../../../etc/hostname"),
        "splits.train.shards[0].file: '../../../etc/hostname' does not match",
    ),
    "absolute file": (
        lambda i: i["splits"]["val"]["shards"][0].__setitem__("file", "/etc/hostname"),
        "splits.val.shards[0].file: '/etc/hostname' does not match",
    ),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_verify_finds_every_damaged_index(copy, name):
    change, expected = DAMAGE[name]
    assert verify(copy)["ok"]
    edit_index(copy, change)
    report = verify(copy)
    assert not report["ok"] and any(expected in p for p in report["problems"]), report["problems"]
    if name not in ("shard removed, totals fixed", "eot changed"):  # those need the folder or the tokenizer
        with pytest.raises(ShardError):  # the loader refuses the same index with a message, never a KeyError
            TokenLoader(copy, batch_size=2, seq_len=8)


def test_cli_verify_names_the_field_without_a_traceback(copy):
    edit_index(copy, lambda i: i["splits"]["train"]["shards"][1].__setitem__("bytes", None))
    run = cli("verify", str(copy))
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    assert "splits.train.shards[1].bytes: None is not of type 'integer'" in run.stdout


def test_no_reader_follows_a_shard_name_out_of_the_dataset(copy, tmp_path):
    outside = tmp_path / "outside.tok.zst"
    shutil.copy(copy / "train-00000.tok.zst", outside)  # a real shard, so only the name can stop a reader
    edit_index(copy, lambda i: i["splits"]["train"]["shards"][0].__setitem__("file", "../outside.tok.zst"))
    with pytest.raises(ShardError, match="not a plain file name in the dataset folder"):
        stats(copy)
    with pytest.raises(ShardError, match=r"shards\[0\]\.file: '\.\./outside\.tok\.zst' does not match"):
        TokenLoader(copy, batch_size=2, seq_len=8)


# ---- prepare's input traps ---------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "stories.txt"
    path.write_text("".join(f"Story {i}: the cat sat on the mat.\n<|endoftext|>\n" for i in range(30)))
    return path


def test_prepare_refuses_the_same_input_twice(corpus, tmp_path):
    alias = tmp_path / "alias.txt"
    alias.symlink_to(corpus)
    for inputs in ([corpus, corpus], [corpus, alias], [corpus, tmp_path / "." / "stories.txt"]):
        with pytest.raises(CorpusError, match="given twice"):
            prepare(inputs, tmp_path / "ds", TINY, progress=False)
    assert not (tmp_path / "ds").exists()


def test_prepare_refuses_a_train_input_reused_for_validation(corpus, tmp_path):
    with pytest.raises(CorpusError, match="is both a train input and a --val-input"):
        prepare([corpus], tmp_path / "ds", TINY, val_inputs=[corpus], progress=False)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"<|endoftext|>\n<|endoftext|>\n"])
def test_prepare_refuses_an_input_without_stories(corpus, tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(content)
    with pytest.raises(CorpusError, match="empty.txt: holds no story"):
        prepare([corpus, empty], tmp_path / "ds", TINY, progress=False)


def test_cli_prepare_traps_are_one_line(corpus, tmp_path):
    TINY.save(tmp_path / "tok.json")
    run = cli(
        "prepare",
        str(corpus),
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok.json"),
        "--out",
        str(tmp_path / "ds"),
        "--no-progress",
    )
    assert run.returncode == 2 and "given twice" in run.stderr and "Traceback" not in run.stderr
    run = cli(
        "prepare",
        str(corpus),
        "--val-input",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok.json"),
        "--out",
        str(tmp_path / "ds"),
        "--no-progress",
    )
    assert run.returncode == 2 and "--val-input" in run.stderr and "Traceback" not in run.stderr
