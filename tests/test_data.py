"""Token shards, the native loader and `prepare`: round trips, determinism, resumption, ranks, damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinystories import _core
from tinystories.data import (
    IGNORE_INDEX,
    DatasetWriter,
    ShardError,
    TokenLoader,
    prepare,
    read_index,
    stats,
    story_in_val,
    verify,
)
from tinystories.data import writer as data_module
from tinystories.tokenizer import Tokenizer

# A tiny real tokenizer for datasets written straight from token arrays (ids below its EOT).
TINY = Tokenizer.train(["the cat sat on the mat. " * 20, "once upon a time there was a dog"], vocab_size=300)
EOT = TINY.eot_token


def write_dataset(
    out: Path, splits: dict[str, list[np.ndarray]], *, shard_tokens: int = 5000, block_tokens: int = 700
) -> dict:
    """A dataset written straight from token arrays (each story gets its EOT appended)."""
    writer = DatasetWriter(
        out,
        {"n_vocab": TINY.n_vocab, "eot_token": EOT, "tokenizer_fingerprint": TINY.fingerprint},
        shard_tokens=shard_tokens,
        block_tokens=block_tokens,
        level=3,
    )
    for split, stories in splits.items():
        arrays = [np.append(np.asarray(s, dtype=np.uint16), np.uint16(EOT)) for s in stories]
        writer.add(split, arrays, list(range(len(arrays))))
    TINY.save(out / "tokenizer.json")
    return writer.finish()


def random_stories(rng: np.random.Generator, n: int, *, max_len: int = 300, vocab: int = EOT) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(1, max_len))) for _ in range(n)]


def stream_of(stories: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.append(s, EOT) for s in stories]).astype(np.int64)


def drain(loader: TokenLoader) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.copy(), y.copy()) for x, y in loader])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """~60K tokens over several shards and blocks per split."""
    rng = np.random.default_rng(0)
    splits = {"train": random_stories(rng, 400), "val": random_stories(rng, 60)}
    out = tmp_path_factory.mktemp("ds")
    write_dataset(out, splits)
    return out, splits


# ---- shard files -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 400), min_size=1, max_size=30),
    block_tokens=st.integers(1, 500),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_shard_round_trip_property(tmp_path, lengths, block_tokens, wide, seed):
    dtype = np.uint32 if wide else np.uint16
    tokens = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, size=sum(lengths), dtype=dtype, endpoint=True)
    path = str(tmp_path / f"s{seed}-{block_tokens}.tok.zst")
    writer = _core.ShardWriter(path, tokens.itemsize, block_tokens, 1)
    split = len(lengths) // 2  # two calls: appending must continue the same blocks
    cut = sum(lengths[:split])
    writer.add_stories(tokens[:cut], np.array(lengths[:split], dtype=np.int64))
    writer.add_stories(tokens[cut:], np.array(lengths[split:], dtype=np.int64))
    info = writer.finish()
    assert not os.path.exists(path + ".tmp")
    reader = _core.ShardReader(path)
    assert (reader.n_tokens, reader.token_bytes, reader.file_bytes) == (len(tokens), tokens.itemsize, info["bytes"])
    assert reader.story_lengths.tolist() == lengths
    assert reader.n_blocks == -(-len(tokens) // block_tokens)
    blocks = [reader.read_block(b) for b in range(reader.n_blocks)]
    assert all(b.dtype == dtype for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), tokens)
    # The file is a plain zstd stream too (header and index are skippable frames).
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True).read()
    np.testing.assert_array_equal(np.frombuffer(raw, dtype=dtype), tokens)


@pytest.fixture(scope="module")
def small_shard(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("shard") / "s.tok.zst"
    writer = _core.ShardWriter(str(path), 2, 50, 3)
    tokens = np.random.default_rng(2).integers(0, 1000, size=180, dtype=np.uint16)
    writer.add_stories(tokens, np.array([100, 80]))
    writer.finish()
    return path.read_bytes()


def read_everything(path: Path) -> None:
    reader = _core.ShardReader(str(path))
    for b in range(reader.n_blocks):
        reader.read_block(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_detected(tmp_path, small_shard, data):
    """Every single-bit flip, truncation or appended garbage gives a ShardError naming the file."""
    damaged = bytearray(small_shard)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        damaged = damaged[: data.draw(st.integers(0, len(damaged) - 1))]
    else:
        damaged += data.draw(st.binary(min_size=1, max_size=40))
    path = tmp_path / "damaged.tok.zst"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ShardError, match=r"damaged\.tok\.zst: "):
        read_everything(path)


def test_parallel_compression_writes_the_same_bytes(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 300, size=10_000, dtype=np.uint16)
    files = []
    for threads in (1, 3):
        path = tmp_path / f"t{threads}.tok.zst"
        writer = _core.ShardWriter(str(path), 2, 700, 5, threads)
        for chunk in np.array_split(tokens, 7):
            writer.add_stories(chunk, np.array([len(chunk)]))
        writer.finish()
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert _core.ShardReader(str(tmp_path / "t3.tok.zst")).n_blocks == 15


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_xxh64_matches_zstd_frame_checksum(data):
    # zstd's frame checksum is the low 32 bits of XXH64(content, seed 0): an independent reference.
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    assert int.from_bytes(frame[-4:], "little") == _core.xxh64(data) & 0xFFFFFFFF


def test_xxh64_known_values():
    assert _core.xxh64(b"") == 0xEF46DB3751D8E999
    assert _core.xxh64(b"abc") == 0x44BC2CF5AD770999


def test_writer_rejects_bad_input(tmp_path):
    path = str(tmp_path / "bad.tok.zst")
    writer = _core.ShardWriter(path, 2, 16, 1)
    with pytest.raises(ShardError, match="uint16"):
        writer.add_stories(np.zeros(4, dtype=np.uint32), np.array([4]))
    with pytest.raises(ShardError, match="sum to 5 but 4"):
        writer.add_stories(np.zeros(4, dtype=np.uint16), np.array([2, 3]))
    with pytest.raises(ShardError, match="story length"):
        writer.add_stories(np.zeros(4, dtype=np.uint16), np.array([4, 0]))
    del writer  # an unfinished writer leaves nothing behind
    assert os.listdir(tmp_path) == []


# ---- loader: round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_packed_every_token_once_per_epoch(dataset, shuffle):
    out, splits = dataset
    stream = stream_of(splits["train"])
    T = 64
    loader = TokenLoader(out, batch_size=7, seq_len=T, shuffle=shuffle, loop=False, seed=3)
    x, y = drain(loader)
    assert loader.tokens_per_epoch == len(stream) - 1
    assert len(x) == -(-(len(stream) - 1) // T)
    # Every row is a window of the stream at a multiple of T; together they tile it exactly once.
    windows = {}  # window content -> its starts (random tokens: practically unique)
    for s in range(0, len(stream) - 1, T):
        windows.setdefault(stream[s : s + T].tobytes(), []).append(s)
    starts = []
    for xr, yr in zip(x, y):
        n = int((yr != IGNORE_INDEX).sum())
        start = windows[xr.tobytes()].pop() if n == T else len(stream) - 1 - n  # only the last one is short
        np.testing.assert_array_equal(xr[:n], stream[start : start + n])
        np.testing.assert_array_equal(yr[:n], stream[start + 1 : start + 1 + n])
        assert (xr[n:] == EOT).all() and (yr[n:] == IGNORE_INDEX).all()
        starts.append(start)
    assert sorted(starts) == list(range(0, len(stream) - 1, T))
    assert (starts == sorted(starts)) != shuffle


def test_packed_in_order_equals_stream(dataset):
    out, splits = dataset
    stream = stream_of(splits["val"])
    x, y = drain(TokenLoader(out, split="val", batch_size=4, seq_len=50, shuffle=False, loop=False))
    mask = y != IGNORE_INDEX
    np.testing.assert_array_equal(x[mask], stream[:-1])
    np.testing.assert_array_equal(y[mask], stream[1:])


def test_uint32_tokens_for_large_vocabularies(tmp_path):
    n_vocab, eot = 100_000, 99_999
    writer = DatasetWriter(
        tmp_path,
        {"n_vocab": n_vocab, "eot_token": eot, "tokenizer_fingerprint": "x"},
        shard_tokens=3000,
        block_tokens=500,
        level=1,
    )
    stories = [np.append(s, eot).astype(np.uint32) for s in random_stories(np.random.default_rng(4), 40, vocab=eot)]
    writer.add("train", stories, list(range(len(stories))))
    assert writer.finish()["dtype"] == "uint32"
    x, y = drain(TokenLoader(tmp_path, batch_size=3, seq_len=33, shuffle=False, loop=False))
    stream = np.concatenate(stories).astype(np.int64)
    assert stream.max() >= 1 << 16
    np.testing.assert_array_equal(x[y != IGNORE_INDEX], stream[:-1])


def test_stories_mode_rows_start_at_stories_and_pad(dataset):
    out, splits = dataset
    T = 40
    x, y = drain(TokenLoader(out, split="val", batch_size=5, seq_len=T, mode="stories", shuffle=False, loop=False))
    # Expected rows: each story (with its EOT) cut into consecutive pieces of T targets.
    expected = []
    for s in splits["val"]:
        toks = np.append(s, EOT)
        for off in range(0, len(toks) - 1, T):
            expected.append(toks[off : off + T + 1])
    assert len(x) == len(expected)
    for xr, yr, piece in zip(x, y, expected):
        n = len(piece) - 1
        np.testing.assert_array_equal(xr[:n], piece[:-1])
        np.testing.assert_array_equal(yr[:n], piece[1:])
        assert (xr[n:] == EOT).all() and (yr[n:] == IGNORE_INDEX).all()
    loader = TokenLoader(out, split="val", batch_size=5, seq_len=T, mode="stories")
    assert loader.tokens_per_epoch == sum(len(s) for s in splits["val"]) == int((y != IGNORE_INDEX).sum())


def test_stories_mode_shuffled_epoch_is_a_permutation(dataset):
    out, _ = dataset
    kw = dict(split="train", batch_size=8, seq_len=32, mode="stories", loop=False)
    ordered = {r.tobytes() for r in np.concatenate(drain(TokenLoader(out, shuffle=False, **kw)), axis=1)}
    shuffled_x, shuffled_y = drain(TokenLoader(out, shuffle=True, seed=1, **kw))
    rows = [r.tobytes() for r in np.concatenate([shuffled_x, shuffled_y], axis=1)]
    assert len(rows) == len(set(rows)) == len(ordered) and set(rows) == ordered


def test_batches_are_zero_copy_int64_for_torch(dataset):
    import torch

    x, y = next(TokenLoader(dataset[0], batch_size=3, seq_len=16))
    assert x.dtype == y.dtype == np.int64 and x.shape == y.shape == (3, 16)
    assert not x.flags.owndata and x.base is y.base  # both view one native buffer
    assert torch.from_numpy(x).shape == (3, 16)


def test_pin_memory(dataset):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
            TokenLoader(dataset[0], batch_size=2, seq_len=8, pin_memory=True)
        return
    x, y = next(TokenLoader(dataset[0], batch_size=2, seq_len=8, pin_memory=True))
    assert x.is_pinned() and y.is_pinned() and x.dtype == torch.int64


def test_epochs_differ_and_are_deterministic(dataset):
    out, _ = dataset
    a = TokenLoader(out, batch_size=8, seq_len=64, seed=5, prefetch=2, threads=1)
    per_epoch = a.sequences_per_epoch
    first = [next(a)[0].copy() for _ in range(-(-2 * per_epoch // 8))]
    b = TokenLoader(out, batch_size=8, seq_len=64, seed=5, prefetch=7, threads=3)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate([next(b)[0] for _ in first]))
    rows = np.concatenate(first)
    e0, e1 = rows[:per_epoch], rows[per_epoch : 2 * per_epoch]
    assert {r.tobytes() for r in e0} == {r.tobytes() for r in e1}  # same windows...
    assert not np.array_equal(e0, e1)  # ...in another order
    other = TokenLoader(out, batch_size=8, seq_len=64, seed=6)
    assert not np.array_equal(next(other)[0], first[0])


# ---- loader: resume and ranks ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["packed", "stories"])
def test_resume_equals_straight_run(dataset, mode):
    out, _ = dataset
    kw = dict(split="val", batch_size=6, seq_len=48, mode=mode, seed=11)
    straight = TokenLoader(out, **kw)
    n = straight.sequences_per_epoch // 6 + 5  # crosses an epoch boundary
    k = n // 2
    expected = [tuple(a.copy() for a in next(straight)) for _ in range(n)]
    first = TokenLoader(out, **kw)
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.state()))
    del first
    resumed = TokenLoader(out, **kw, threads=3, prefetch=1)  # threads and prefetch do not change the stream
    resumed.load_state(state)
    for want in expected[k:]:
        got = next(resumed)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert resumed.epoch >= 1


def test_load_state_rejects_other_config(dataset):
    out, _ = dataset
    state = TokenLoader(out, batch_size=6, seq_len=48).state()
    with pytest.raises(ValueError, match="seq_len: saved 48, now 32"):
        TokenLoader(out, batch_size=6, seq_len=32).load_state(state)


@pytest.mark.parametrize("mode", ["packed", "stories"])
def test_ranks_are_disjoint_and_cover_the_split(dataset, mode):
    out, _ = dataset
    world = 3
    kw = dict(split="train", batch_size=5, seq_len=32, mode=mode, seed=2, loop=False, world_size=world)
    per_rank = [
        {r.tobytes() for r in np.concatenate(drain(TokenLoader(out, rank=r, **kw)), axis=1)} for r in range(world)
    ]
    everything = {r.tobytes() for r in np.concatenate(drain(TokenLoader(out, **{**kw, "world_size": 1})), axis=1)}
    for i in range(world):
        for j in range(i + 1, world):
            assert not per_rank[i] & per_rank[j]
    assert set().union(*per_rank) == everything
    # Looping ranks stay disjoint within an epoch too.
    loop_kw = {**kw, "loop": True}
    epoch_rows = TokenLoader(out, **{**loop_kw, "world_size": 1}).sequences_per_epoch // world
    looped = []
    for r in range(world):
        loader = TokenLoader(out, rank=r, **loop_kw)
        rows = np.concatenate([np.concatenate(next(loader), axis=1) for _ in range(epoch_rows // 5)])
        looped.append({row.tobytes() for row in rows})
    assert not (looped[0] & looped[1]) and not (looped[1] & looped[2]) and not (looped[0] & looped[2])


def test_validation_pass_repeats_on_reiteration(dataset):
    out, _ = dataset
    val = TokenLoader(out, split="val", batch_size=4, seq_len=32, shuffle=False, loop=False)
    first = drain(val)
    again = drain(val)
    np.testing.assert_array_equal(first[0], again[0])
    assert len(val) == -(-len(first[0]) // 4)


# ---- damage ----------------------------------------------------------------------------------


@pytest.fixture
def damaged(dataset, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(dataset[0], out)
    return out


def test_missing_shard(damaged):
    (damaged / "train-00001.tok.zst").unlink()
    with pytest.raises(ShardError, match=r"train-00001\.tok\.zst: missing shard"):
        TokenLoader(damaged, batch_size=2, seq_len=8)


def test_truncated_shard(damaged):
    path = damaged / "train-00000.tok.zst"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"train-00000\.tok\.zst: truncated"):
        TokenLoader(damaged, batch_size=2, seq_len=8)
    with pytest.raises(ShardError, match=r"train-00000\.tok\.zst: truncated or damaged"):
        _core.ShardReader(str(path))  # the file alone: no index trailer at the end


def test_flipped_byte_in_block_fails_on_read(damaged):
    path = damaged / "val-00000.tok.zst"
    info = _core.ShardReader(str(path)).block_info(1)
    data = bytearray(path.read_bytes())
    data[info["offset"] + info["compressed_bytes"] // 2] ^= 0x10
    path.write_bytes(bytes(data))
    loader = TokenLoader(damaged, split="val", batch_size=4, seq_len=32, shuffle=False, loop=False)
    with pytest.raises(ShardError, match=r"val-00000\.tok\.zst: block 1 hash mismatch"):
        drain(loader)
    report = verify(damaged)
    assert not report["ok"] and any("val-00000.tok.zst" in p for p in report["problems"])


def test_flipped_byte_in_index_fails_on_open(damaged):
    path = damaged / "val-00000.tok.zst"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"val-00000\.tok\.zst: index hash mismatch"):
        TokenLoader(damaged, split="val", batch_size=2, seq_len=8)


def test_other_shard_format_version(damaged):
    path = damaged / "val-00000.tok.zst"
    data = bytearray(path.read_bytes())
    data[16] = 7  # the header's version field
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"val-00000\.tok\.zst: shard format version 7"):
        TokenLoader(damaged, split="val", batch_size=2, seq_len=8)


def test_other_index_format_version(damaged):
    index = json.loads((damaged / "index.json").read_text())
    index["format_version"] = 2
    (damaged / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"index\.json: format version 2"):
        TokenLoader(damaged, batch_size=2, seq_len=8)


def test_tokenizer_fingerprint_mismatch(dataset):
    with pytest.raises(ShardError, match=rf"index\.json: tokenizer fingerprint {TINY.fingerprint[:16]}.*differs"):
        TokenLoader(dataset[0], batch_size=2, seq_len=8, expected_fingerprint="cd" * 32)
    TokenLoader(dataset[0], batch_size=2, seq_len=8, expected_fingerprint=TINY.fingerprint)


def test_verify_clean_and_sha256_mismatch(damaged):
    assert verify(damaged)["ok"]
    index = json.loads((damaged / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    (damaged / "index.json").write_text(json.dumps(index))
    report = verify(damaged)
    assert not report["ok"] and any("train-00000.tok.zst" in p and "sha256" in p for p in report["problems"])


@pytest.mark.parametrize("field", ["blocks", "block_tokens"])
def test_verify_checks_a_shards_blocks_and_the_index_block_tokens(damaged, field):
    """Issue 22.15: wrong `blocks` (per shard) and `block_tokens` (the index) passed verify."""
    index = json.loads((damaged / "index.json").read_text())
    shard = index["splits"]["val"]["shards"][0]
    assert _core.ShardReader(str(damaged / shard["file"])).n_blocks > 1  # more than one block: the rule applies
    if field == "blocks":
        shard["blocks"] += 1
        expected = f"val-00000.tok.zst: {shard['blocks'] - 1} blocks, but index.json says {shard['blocks']}"
    else:
        index["block_tokens"] += 1
        expected = f"block 0 holds {index['block_tokens'] - 1} tokens, but index.json says block_tokens"
    (damaged / "index.json").write_text(json.dumps(index))
    report = verify(damaged)
    assert not report["ok"] and any(expected in p for p in report["problems"]), report["problems"]


def test_verify_reports_an_index_without_its_tokenizer_entry(damaged):
    index = json.loads((damaged / "index.json").read_text())
    del index["tokenizer"]
    (damaged / "index.json").write_text(json.dumps(index))
    report = verify(damaged)
    assert not report["ok"] and any("'tokenizer' is a required property" in p for p in report["problems"])
    assert "top_tokens" in stats(damaged)  # stats go on with token ids alone


def test_loop_needs_a_sequence_per_rank(tmp_path):
    write_dataset(tmp_path, {"train": [np.arange(5)], "val": []})
    with pytest.raises(ShardError, match="too few for world_size 4"):
        TokenLoader(tmp_path, batch_size=1, seq_len=8, world_size=4, rank=0)
    assert len(list(TokenLoader(tmp_path, split="val", batch_size=1, seq_len=8, loop=False))) == 0


# ---- prepare -----------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


class CountingTokenizer:
    """The real tokenizer, counting the texts it encodes and failing after ``fail_after`` calls."""

    def __init__(self, tok: Tokenizer, fail_after: int | None = None):
        self.tok, self.fail_after, self.calls, self.texts = tok, fail_after, 0, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_batch_to_numpy(self, texts, **kw):
        self.calls += 1
        self.texts += len(texts)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Interrupted("simulated interruption")
        return self.tok.encode_batch_to_numpy(texts, **kw)


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_gpt2_files(*gpt2_files)


def split_tokens(data_dir: Path, split: str) -> list[np.ndarray]:
    """The stories of a split, read back shard by shard (each ends with its EOT)."""
    stories = []
    for shard in read_index(data_dir)["splits"][split]["shards"]:
        reader = _core.ShardReader(str(data_dir / shard["file"]))
        tokens = np.concatenate([reader.read_block(b) for b in range(reader.n_blocks)])
        stories += np.split(tokens, np.cumsum(reader.story_lengths)[:-1])
    return stories


def test_prepare_round_trip_on_real_stories(tmp_path, gpt2, real_stories, shared_data):
    src = shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"
    index = prepare([src], tmp_path, gpt2, val_fraction=0.05, shard_tokens=150_000, progress=False, threads=2)
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "prepare-state.json").exists()
    assert (tmp_path / "tokenizer.json").is_file()
    assert index["dtype"] == "uint16" and index["eot_token"] == 50256
    assert index["tokenizer"]["fingerprint"] == gpt2.fingerprint
    expected = {"train": [], "val": []}
    for story in real_stories:
        expected["val" if story_in_val(story, 0.05) else "train"].append(story)
    assert 0.02 < len(expected["val"]) / len(real_stories) < 0.08
    for split, stories in expected.items():
        got = split_tokens(tmp_path, split)
        assert index["splits"][split]["stories"] == len(got) == len(stories)
        for toks, story in zip(got, stories):
            assert toks[-1] == 50256 and gpt2.decode(toks[:-1].tolist()) == story
        assert index["splits"][split]["tokens"] == sum(map(len, got))
    assert len(index["splits"]["train"]["shards"]) >= 3
    assert verify(tmp_path)["ok"]
    # Shards are much smaller than a uint16 .bin of the same tokens (these 150K-token shards are single short
    # blocks; full 256K-token blocks are >= 2x smaller: benchmarks/bench_prepare.py).
    assert index["splits"]["train"]["tokens"] * 2 / index["splits"]["train"]["bytes"] > 1.9


def test_split_is_deterministic_across_order_and_threads(tmp_path, gpt2, real_stories):
    stories = real_stories[:600]
    forward, backward = tmp_path / "f.txt", tmp_path / "b.jsonl"
    forward.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    backward.write_text("".join(json.dumps({"story": s}) + "\n" for s in reversed(stories)))
    a = prepare([forward], tmp_path / "a", gpt2, val_fraction=0.1, threads=1, progress=False, level=3)
    b = prepare([forward], tmp_path / "b", gpt2, val_fraction=0.1, threads=2, progress=False, level=3)
    prepare([backward], tmp_path / "c", gpt2, val_fraction=0.1, threads=2, progress=False, level=3)
    for split in ("train", "val"):
        assert [s["sha256"] for s in a["splits"][split]["shards"]] == [
            s["sha256"] for s in b["splits"][split]["shards"]
        ]
        decoded_a = sorted(gpt2.decode(t[:-1].tolist()) for t in split_tokens(tmp_path / "a", split))
        decoded_c = sorted(gpt2.decode(t[:-1].tolist()) for t in split_tokens(tmp_path / "c", split))
        assert decoded_a == decoded_c


def test_interrupted_prepare_resumes_to_the_same_shards(tmp_path, gpt2, real_stories, monkeypatch):
    monkeypatch.setattr("tinystories.data.writer.BATCH_STORIES", 256)
    src = tmp_path / "stories.txt"
    src.write_text("".join(f"{s}\n<|endoftext|>\n" for s in real_stories))
    kw = dict(val_fraction=0.05, shard_tokens=60_000, progress=False, level=3)
    reference = prepare([src], tmp_path / "ref", gpt2, **kw)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        prepare([src], out, CountingTokenizer(gpt2, fail_after=6), **kw)  # in the 4th batch
    # Nothing a reader could take for a dataset, and no half-written shard under a shard name.
    assert not (out / "index.json").exists() and not list(out.glob("*.tmp"))
    finished = sorted(p.name for p in out.glob("*.tok.zst"))
    assert finished and len(finished) < len(reference["splits"]["train"]["shards"])
    with pytest.raises(ShardError, match=r"index\.json: missing"):
        TokenLoader(out, batch_size=2, seq_len=8)
    resumed_tok = CountingTokenizer(gpt2)
    resumed = prepare([src], out, resumed_tok, **kw)
    for split in ("train", "val"):
        assert [s["sha256"] for s in resumed["splits"][split]["shards"]] == [
            s["sha256"] for s in reference["splits"][split]["shards"]
        ]
    assert resumed_tok.texts < len(real_stories) - 300  # finished shards were not tokenized again
    # Killed after the last shards but before index.json: the rerun adds nothing twice.
    out2 = tmp_path / "out2"
    real_write = data_module.atomic_write_json

    def fail_on_index(path, obj, **kwargs):
        if path.name == "index.json":
            raise Interrupted("killed before the index")
        real_write(path, obj, **kwargs)

    monkeypatch.setattr(data_module, "atomic_write_json", fail_on_index)
    with pytest.raises(Interrupted):
        prepare([src], out2, gpt2, **kw)
    monkeypatch.setattr(data_module, "atomic_write_json", real_write)
    again = prepare([src], out2, CountingTokenizer(gpt2), **kw)
    assert again["splits"] == reference["splits"]
    # Finished: a second call returns the index; a different request is refused.
    assert prepare([src], out, resumed_tok, **kw)["splits"] == resumed["splits"]
    with pytest.raises(ShardError, match="already holds a different dataset"):
        prepare([src], out, resumed_tok, **{**kw, "val_fraction": 0.2})


def test_cli_prepare_top_k_stats_verify(tmp_path, gpt2_files, real_stories):
    import subprocess
    import sys

    from tinystories.data import load_dataset_tokenizer

    src = tmp_path / "stories.jsonl.zst"
    src.write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"story": s}) + "\n" for s in real_stories[:400]).encode()
        )
    )
    out = tmp_path / "ds"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tinystories.cli", "data", *args], capture_output=True, text=True, timeout=300
        )

    run = cli(
        "prepare",
        str(src),
        "--tokenizer",
        str(gpt2_files[0].parent),
        "--out",
        str(out),
        "--vocab-size",
        "2000",
        "--val-fraction",
        "0.1",
        "--threads",
        "2",
        "--no-progress",
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "train: " in run.stdout and "val: " in run.stdout
    index = read_index(out)
    assert index["n_vocab"] == 2000 and index["prepare_config"]["top_k"] == 2000
    tok = load_dataset_tokenizer(out)
    assert tok.n_vocab == 2000 and tok.fingerprint == index["tokenizer"]["fingerprint"]
    stories = [tok.decode(t[:-1].tolist()) for t in split_tokens(out, "train") + split_tokens(out, "val")]
    assert sorted(stories) == sorted(real_stories[:400])  # the restricted vocabulary is still lossless

    run = cli("stats", str(out), "--json", "--top-tokens", "5")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["splits"]["train"]["stories"] + report["splits"]["val"]["stories"] == 400
    assert report["top_tokens"][0]["count"] >= report["top_tokens"][1]["count"] and "text" in report["top_tokens"][0]
    assert cli("stats", str(out)).returncode == 0

    assert cli("verify", str(out)).returncode == 0
    shard = out / index["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x04
    shard.write_bytes(bytes(data))
    run = cli("verify", str(out))
    assert run.returncode == 1 and shard.name in run.stdout and "sha256 mismatch" in run.stdout


def test_val_inputs_form_the_validation_split(tmp_path, gpt2, real_stories):
    train, held_out = tmp_path / "train.txt", tmp_path / "held_out.jsonl"
    train.write_text("".join(f"{s}\n<|endoftext|>\n" for s in real_stories[:200]))
    held_out.write_text("".join(json.dumps({"text": s}) + "\n" for s in real_stories[200:230]))
    index = prepare([train], tmp_path / "ds", gpt2, val_inputs=[held_out], val_fraction=0.5, progress=False, level=3)
    decoded = {
        split: [gpt2.decode(t[:-1].tolist()) for t in split_tokens(tmp_path / "ds", split)]
        for split in ("train", "val")
    }
    assert decoded == {"train": real_stories[:200], "val": real_stories[200:230]}
    assert index["prepare_config"]["val_fraction"] == 0.0


def test_a_val_input_without_separators_is_split_at_blank_lines_as_everywhere(tmp_path, gpt2, real_stories, capsys):
    """Issue 22.20: prepare took such a file as one story without a word; the corpus reader's one rule splits it
    at blank lines, with a warning (as the interpret commands always did)."""
    train, held_out = tmp_path / "train.txt", tmp_path / "held_out.txt"
    train.write_text("".join(f"{s}\n<|endoftext|>\n" for s in real_stories[:50]))
    held = [" ".join(s.split()) for s in real_stories[50:70]]  # one paragraph each
    held_out.write_text("\n\n".join(held) + "\n")
    prepare([train], tmp_path / "ds", gpt2, val_inputs=[held_out], progress=False, level=3)
    assert [gpt2.decode(t[:-1].tolist()) for t in split_tokens(tmp_path / "ds", "val")] == held
    assert f"warning: {held_out} has no <|endoftext|> separators: split into 20 stories at blank lines" in (
        capsys.readouterr().err
    )


def test_a_prepare_failing_on_a_later_line_leaves_no_folder_behind(tmp_path, gpt2):
    """Issue 22.15: a .jsonl whose first story is fine but a later line is not left a folder with tokenizer.json."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Once upon a time."}\n{"txt": "Tom"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no 'text' or 'story' field"):
        prepare([bad], tmp_path / "ds", gpt2, progress=False)
    assert not (tmp_path / "ds").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is kept (empty, as it was)
    with pytest.raises(ValueError):
        prepare([bad], tmp_path / "kept", gpt2, progress=False)
    assert list((tmp_path / "kept").iterdir()) == []
