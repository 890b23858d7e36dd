"""The append-only JSONL logs: one rule for a torn last line in every log the package writes.

A crash can only tear the last line (a write cut short). Every reader skips it; every writer cuts it off
when it opens the file, then appends whole lines. The same must hold in each stage that keeps a log:
synthesis records, judge grades (see test_evaluate_judge_server.py), training metrics and the sweep's
reading of them, and the test server's request log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinystories.jsonl import JsonlLog, read_jsonl, repair_torn_tail

TORN = b'{"id": "torn", "sto'


def lines_of(path: Path) -> list[dict]:
    """Every line of the file, each required to be a whole JSON record (an independent reading)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the file ends in a torn line"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_reader_skips_a_torn_last_line_and_reports_any_other_bad_line_by_file_and_line(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "b"}\n' + TORN)
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    assert path.read_bytes().endswith(TORN)  # reading never changes the file
    assert capsys.readouterr().err == ""  # a torn last line is no damage: a writer may be finishing it
    path.write_bytes(b'{"id": "a"}\n{"id": "x", "lo{"id": "b"}\n[1, 2]\n{"id": "c"}\n')
    damaged: list[str] = []
    assert [r["id"] for r in read_jsonl(path, on_damaged=damaged.append)] == ["a", "c"]  # the rest stays readable
    assert len(damaged) == 2
    assert damaged[0].startswith(f"{path}:2: skipped a damaged line, not a JSON record")
    assert damaged[1].startswith(f"{path}:3: skipped a line that is not a JSON object")
    assert [r["id"] for r in read_jsonl(path)] == ["a", "c"]
    assert f"warning: {path}:2: skipped a damaged line" in capsys.readouterr().err  # by default: on stderr
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


def test_a_failed_write_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    """Issue 22.1: a full disk lets half a line in, then fails; the writer undoes it before raising (or, when
    even that fails, before its next append), so later records never follow a partial line."""
    import errno

    from tinystories import jsonl

    path = tmp_path / "log.jsonl"
    real_write, real_truncate = os.write, os.ftruncate
    state = {"full": False, "truncate_fails": False}

    def write(fd: int, data) -> int:
        if state["full"]:
            if len(data) > 4:
                return real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def ftruncate(fd: int, length: int) -> None:
        if state["truncate_fails"]:
            raise OSError(errno.EIO, "Input/output error")
        real_truncate(fd, length)

    monkeypatch.setattr(jsonl.os, "write", write)
    monkeypatch.setattr(jsonl.os, "ftruncate", ftruncate)
    with JsonlLog(path, fsync="never") as log:
        log.append({"id": "a"})
        state["full"] = True
        with pytest.raises(OSError, match="No space left"):
            log.append({"id": "lost", "text": "x" * 100})
        assert [r["id"] for r in lines_of(path)] == ["a"]
        state["truncate_fails"] = True
        with pytest.raises(OSError, match="No space left"):
            log.append({"id": "lost too", "text": "x" * 100})
        assert not path.read_bytes().endswith(b"\n")  # the undo failed as well: the next append redoes it
        state.update(full=False, truncate_fails=False)
        log.append({"id": "b"})
    assert [r["id"] for r in lines_of(path)] == ["a", "b"]


def test_writer_cuts_a_torn_tail_then_appends_whole_lines(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    with JsonlLog(path, fsync="always") as log:
        log.append({"id": "a"})
        log.append({"id": "b", "text": "é\n"})
    path.write_bytes(path.read_bytes() + TORN)
    with JsonlLog(path) as log:
        log.append({"id": "c"})
    assert [r["id"] for r in lines_of(path)] == ["a", "b", "c"]
    assert "cut a torn last line" in capsys.readouterr().err
    assert repair_torn_tail(path) == 0  # a whole file is left alone
    path.write_bytes(TORN)  # nothing but a torn line
    assert repair_torn_tail(path) == len(TORN) and path.read_bytes() == b""
    with pytest.raises(ValueError, match="fsync must be"):
        JsonlLog(path, fsync="sometimes")


def test_a_torn_tail_longer_than_the_read_back_step_is_found(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + b"x" * (3 << 20))  # 3 MiB without a newline: read back in 1 MiB steps
    assert repair_torn_tail(path) == 3 << 20
    assert [r["id"] for r in lines_of(path)] == ["a"]


def test_synthesis_resumes_after_a_torn_record(tmp_path):
    from tinystories.synth import SynthConfig, synthesize

    out = tmp_path / "stories.jsonl"
    synthesize(SynthConfig(n=3, out=out, backend="template", progress=False))
    out.write_bytes(out.read_bytes() + TORN)
    summary = synthesize(SynthConfig(n=5, out=out, backend="template", progress=False))
    assert (summary.already_done, summary.written) == (3, 2)
    assert [r["id"] for r in lines_of(out)] == [f"0-{i}" for i in range(5)]


def test_training_metrics_and_the_sweep_reader_follow_the_same_rule(tmp_path):
    from tinystories.train.metrics import Metrics

    run = tmp_path / "run"
    run.mkdir()
    metrics = Metrics(run, tensorboard=False)
    metrics.write({"step": 10, "loss": 3.0})
    metrics.close()
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes() + b'{"step": 20, "lo')
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [10]  # what `sweep analyze` reads
    metrics = Metrics(run, tensorboard=False)  # a resumed trainer reopens the log
    metrics.write({"step": 20, "val_loss": 2.5})
    metrics.close()
    assert [r["step"] for r in lines_of(run / "metrics.jsonl")] == [10, 20]


def test_the_test_servers_request_log_follows_the_same_rule(tmp_path):
    import urllib.request

    from tinystories.testing import OpenAIServer

    log = tmp_path / "requests.jsonl"
    log.write_bytes(TORN)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Summarize"}]}).encode()
    with OpenAIServer(log_path=log) as server:
        request = urllib.request.Request(
            f"{server.url}/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", "X-Client-Request-Id": "q1"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert [(r["request_id"], r["outcome"]) for r in lines_of(log)] == [("q1", "ok")]


def test_logs_are_created_with_the_umasks_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with JsonlLog(tmp_path / "log.jsonl") as log:
            log.append({"id": "a"})
    finally:
        os.umask(old)
    assert (tmp_path / "log.jsonl").stat().st_mode & 0o777 == 0o640
