"""`prepare`'s cheaper compression (zstd parameters tuned for 16-bit tokens) and its batched split rule."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from tinystories import _core
from tinystories.data import prepare, read_index
from tinystories.data.shards import ShardError
from tinystories.data.writer import DEFAULT_ZSTD_PARAMS, stories_in_val, story_in_val


@pytest.mark.parametrize("fraction", [0.0, 1e-12, 0.01, 0.3, 0.5, 0.999, 1 - 2**-53])
def test_batched_split_rule_equals_the_rule(real_stories, fraction):
    stories = real_stories[:600] + ["", "a", "é" * 300]
    assert stories_in_val(stories, fraction) == [story_in_val(s, fraction) for s in stories]


def test_default_shards_use_the_tuned_parameters_and_stay_plain_zstd(tmp_path, gpt2_files, shared_data):
    from tinystories.tokenizer import Tokenizer

    gpt2 = Tokenizer.from_gpt2_files(*gpt2_files)
    src = shared_data / "tinystories" / "tinystories_v1_train_head.txt.zst"
    index = prepare([src], tmp_path / "tuned", gpt2, val_fraction=0.0, threads=2, progress=False)
    assert index["zstd_params"] == DEFAULT_ZSTD_PARAMS
    shard = tmp_path / "tuned" / index["splits"]["train"]["shards"][0]["file"]
    # Still an ordinary zstd stream (docs/shard_format.md): `zstd -dc` gives the raw uint16 tokens.
    raw = zstandard.ZstdDecompressor().stream_reader(shard.read_bytes(), read_across_frames=True).read()
    tokens = np.frombuffer(raw, dtype=np.uint16)
    assert len(tokens) == index["splits"]["train"]["tokens"] and (tokens == 50256).sum() == 2316
    # 480K tokens: one full 256K-token block and a short one, together >= 2x smaller than uint16
    assert len(tokens) * 2 / shard.stat().st_size > 2.0
    plain = prepare([src], tmp_path / "plain", gpt2, val_fraction=0.0, threads=2, progress=False, level=3)
    assert read_index(tmp_path / "plain")["zstd_params"] == {} and plain["zstd_level"] == 3
    assert plain["splits"]["train"]["bytes"] > index["splits"]["train"]["bytes"]


def test_bad_zstd_parameters_are_rejected_before_any_file_is_made(tmp_path):
    path = tmp_path / "x.tok.zst"
    with pytest.raises(ValueError, match="unknown zstd parameter 'search'"):
        _core.ShardWriter(str(path), 2, 1024, 7, 1, {"search": 3})
    with pytest.raises(ShardError, match=r"x\.tok\.zst: zstd parameter \d+ = 99 is not supported"):
        _core.ShardWriter(str(path), 2, 1024, 7, 1, {"window_log": 99})
    assert list(tmp_path.iterdir()) == []
