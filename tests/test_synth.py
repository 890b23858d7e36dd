"""Synthesis end to end: the real `openai` client against the real test server on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _processes import wait_until

pytest.importorskip("openai")

from tinystories.jsonl import JsonlLog, read_jsonl  # noqa: E402
from tinystories.llm import ClientConfig, PriceTable  # noqa: E402
from tinystories.synth import (
    INSTRUCTION_TYPES,
    DuplicateIndex,
    SynthConfig,
    SynthSummary,
    parse_prompt,  # noqa: E402
    synthesize,
    validate,
)
from tinystories.synth.prompts import story_id  # noqa: E402
from tinystories.synth.stats import corpus_stats  # noqa: E402
from tinystories.testing import Faults, OpenAIServer  # noqa: E402
from tinystories.testing.openai_server import Answer, default_answer  # noqa: E402
from tinystories.vocabulary import FEATURES, NOUNS  # noqa: E402

# Short timeouts and backoffs keep the fault tests fast; stalls outlast the client timeout.
FAST = dict(timeout_s=0.5, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=6)
PRICES = PriceTable({"test-model": (1000.0, 2000.0)})  # absurd prices make budgets easy to hit


def client_config(server: OpenAIServer, **overrides) -> ClientConfig:
    return ClientConfig(
        **{"base_url": server.url, "api_key": "test", "concurrency": 16, "prices": PRICES, **FAST, **overrides}
    )


def run(server: OpenAIServer, out: Path, n: int, **overrides) -> SynthSummary:
    client = overrides.pop("client", None) or client_config(server)
    return synthesize(SynthConfig(n=n, out=out, model="test-model", progress=False, client=client, **overrides))


def records(path: Path) -> list[dict]:
    return list(read_jsonl(path))


def test_thirty_percent_faults_give_exactly_n_valid_unique_records(tmp_path):
    n = 120
    with OpenAIServer(faults=Faults(rate=0.3, stall_s=1.0)) as server:
        summary = run(server, tmp_path / "s.jsonl", n)
        outcomes = Counter(e.outcome for e in server.log)
    got = records(tmp_path / "s.jsonl")
    assert summary.written == n and summary.failed == 0
    assert sorted(r["id"] for r in got) == sorted(story_id(0, i) for i in range(n))
    assert all(r["valid"] for r in got), [r["flags"] for r in got if r["flags"]]
    assert set(outcomes) == {"ok", "rate_limit", "server_error", "stall", "malformed", "length", "empty"}
    assert all(r["finish_reason"] == "stop" for r in got)
    faulted = [r for r in got if r["attempt_errors"]]
    assert faulted and all(r["attempts"] == len(r["attempt_errors"]) + 1 for r in faulted)
    for r in got:  # the recorded sample is the one the prompt asked for
        words, features = parse_prompt(r["prompt"])
        assert words == r["words"] and features == r["features"]


def test_requests_that_always_fail_are_recorded_and_retried_next_run(tmp_path):
    out = tmp_path / "s.jsonl"
    doomed = {story_id(0, 3), story_id(0, 7)}
    with OpenAIServer(faults=Faults(always_fail=frozenset(doomed))) as server:
        first = run(server, out, 10, client=client_config(server, max_attempts=3))
        assert first.failed == 2 and first.written == 8
        failures = records(Path(str(out) + ".failed"))
        assert {f["id"] for f in failures} == doomed and all(f["attempts"] == 3 for f in failures)
        assert all(f["error"].startswith("http_500") for f in failures)
        server.faults = Faults()  # the outage is over
        server.log.clear()
        second = run(server, out, 10)
        assert second.written == 2 and set(server.requested_ids()) == doomed
    assert len({r["id"] for r in records(out)}) == 10


@pytest.mark.parametrize("retry_after", ["soon", "nan", "inf", "1e12", "-3"])
def test_an_unreadable_or_endless_retry_after_is_bounded_and_the_job_finishes(tmp_path, retry_after):
    """Issue 22.9: `soon` crashed synth; `inf` or `1e12` waited forever. Unreadable: back off as after any
    failure; too long: wait at most max_retry_after_s (tiny here, so the test ends either way)."""
    n = 6
    faults = Faults(rate=1.0, kinds=("rate_limit",), max_per_request=1, retry_after=retry_after)
    with OpenAIServer(faults=faults) as server:
        summary = run(server, tmp_path / "s.jsonl", n, client=client_config(server, max_retry_after_s=0.05))
        outcomes = Counter(e.outcome for e in server.log)
    assert summary.written == n and summary.failed == 0 and summary.stopped is None
    assert outcomes == {"rate_limit": n, "ok": n}
    assert all(r["attempt_errors"] == ["rate_limit"] for r in records(tmp_path / "s.jsonl"))


def test_retry_after_is_read_in_seconds_milliseconds_or_a_date_and_bounded():
    from email.utils import formatdate

    from tinystories.llm.wire import retry_after_seconds

    assert retry_after_seconds({"retry-after": "2"}, 300) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}, 300) == 1.5
    assert retry_after_seconds({"retry-after": "inf"}, 300) == retry_after_seconds({"retry-after": "1e12"}, 300) == 300
    assert retry_after_seconds({"retry-after": "-3"}, 300) == 0.0
    assert retry_after_seconds({"retry-after": formatdate(0, usegmt=True)}, 300) == 0.0  # a date long past
    in_an_hour = formatdate(time.time() + 3600, usegmt=True)
    assert retry_after_seconds({"retry-after": in_an_hour}, 300) == 300
    for unreadable in ("soon", "nan", "", "Mon, 99 Foo 2025"):
        assert retry_after_seconds({"retry-after": unreadable}, 300) is None
    assert retry_after_seconds({"retry-after-ms": "soon", "retry-after": "1"}, 300) == 1.0
    assert retry_after_seconds({}, 300) is None
    with pytest.raises(ValueError, match="max_retry_after_s must be finite"):
        ClientConfig(max_retry_after_s=float("inf"))


def test_sigkill_mid_run_then_resume_gives_exactly_n_and_no_recorded_id_is_requested_again(tmp_path):
    n, out = 150, tmp_path / "s.jsonl"
    answered, first_run = itertools.count(1), [True]

    def answer(body: dict) -> Answer:
        if first_run[0] and next(answered) == 40:  # hold every later answer: the first run cannot end before the
            server.latency_s = 3600.0  # kill, however slow the machine (a wait the server's stop cuts short)
        return default_answer(body)

    faults = Faults(rate=0.2, kinds=("rate_limit", "server_error"))
    with OpenAIServer(answer, faults=faults, latency_s=0.05) as server:
        cmd = [
            sys.executable,
            "-m",
            "tinystories.cli",
            "synth",
            "--num-stories",
            str(n),
            "--out",
            str(out),
            "--model",
            "test-model",
            "--base-url",
            server.url,
            "--concurrency",
            "4",
            "--timeout-s",
            "3600",
            "--backoff-s",
            "0.01",
            "--backoff-max-s",
            "0.05",
            "--no-progress",
            "--fsync",
            "always",
        ]
        env = {**os.environ, "OPENAI_API_KEY": "test"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") >= 30, what="30 stories written")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        recorded = {r["id"] for r in records(out)}
        assert 30 <= len(recorded) < n, "the run should have been killed midway"
        with open(out, "ab") as f:  # what a write cut short by a crash would leave behind
            f.write(b'{"id": "0-999", "story": "Once upon a ti')
        server.log.clear()
        first_run[0], server.latency_s = False, 0.05
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        requested_again = set(server.requested_ids()) & recorded
    assert not requested_again
    got = records(out)
    assert len(got) == n and len({r["id"] for r in got}) == n
    assert out.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_budget_stop_is_clean_and_counts_earlier_runs(tmp_path, workers):
    out = tmp_path / "s.jsonl"
    with OpenAIServer() as server:
        summary = run(server, out, 200, client=client_config(server, max_cost_usd=20.0, concurrency=4, workers=workers))
        assert summary.stopped == "budget"
        spent = sum(r["cost_usd"] for r in records(out))
        assert 0 < summary.written < 200
        assert spent <= 20.0
        server.log.clear()
        again = run(server, out, 200, client=client_config(server, max_cost_usd=20.0, concurrency=4))
        assert again.stopped == "budget" and again.written <= 1
        assert sum(r["cost_usd"] for r in records(out)) <= 20.0
    with pytest.raises(ValueError, match="needs a price"):
        synthesize(
            SynthConfig(
                n=1,
                out=tmp_path / "x.jsonl",
                model="unpriced",
                progress=False,
                client=ClientConfig(base_url="http://127.0.0.1:9/v1", max_cost_usd=1.0),
            )
        )


@pytest.mark.parametrize("ood", [("words", "summary"), ("features", "sentence")])
def test_instruct_layout_and_ood_split(tmp_path, ood):
    out = tmp_path / "s.jsonl"
    with OpenAIServer(faults=Faults(rate=0.2, kinds=("server_error", "empty"))) as server:
        run(server, out, 90, instruct=True, ood_combination=ood)
    got = records(out)
    assert len(got) == 90
    splits = Counter(r["split"] for r in got)
    assert splits["ood"] > 0 and splits["train"] > 0
    labels = {"features": "Features: ", "words": "Words: ", "summary": "Summary: ", "sentence": "Random sentence: "}
    for r in got:
        assert r["split"] == ("ood" if set(r["instructions"]) == set(ood) else "train")
        head, story = r["text"].split("\nStory:\n", 1)
        assert story == r["story"]
        lines = head.split("\n")
        assert [next(t for t in INSTRUCTION_TYPES if line.startswith(labels[t])) for line in lines] == [
            t for t in INSTRUCTION_TYPES if t in r["instructions"]
        ]
        if "summary" in r["instructions"]:
            assert r["summary"] and "\n" not in r["summary"] and f"Summary: {r['summary']}" in lines
        assert r["random_sentence"] in r["story"]
        if "words" in r["instructions"]:
            assert f"Words: {r['words']['verb']}, {r['words']['noun']}, {r['words']['adjective']}" in lines


def test_batch_api_end_to_end_with_failed_lines_retried(tmp_path):
    out, n = tmp_path / "s.jsonl", 40
    with OpenAIServer(faults=Faults(rate=0.3, kinds=("server_error", "length"))) as server:
        runs = 0
        while len(records(out)) < n and runs < 5:
            run(server, out, n, batch_api=True, batch_poll_s=0.02, instruct=True)
            runs += 1
        batch_lines = [e for e in server.log if e.path == "/v1/batches"]
        chat_calls = [e for e in server.log if e.path == "/v1/chat/completions"]
    got = records(out)
    assert len(got) == n and len({r["id"] for r in got}) == n and runs >= 2
    assert not chat_calls and batch_lines
    assert all(r["backend"] == "batch" and r["finish_reason"] == "stop" for r in got)
    one = got[0]
    full = PRICES.cost("test-model", one["usage"]["prompt_tokens"], one["usage"]["completion_tokens"])
    assert one["cost_usd"] == pytest.approx(full / 2)  # the Batch API is half price
    assert all(b.get("merged") or b["custom_ids"] for b in records(Path(str(out) + ".batches")))


def test_template_backend_and_stats(tmp_path):
    out = tmp_path / "s.jsonl"
    synthesize(SynthConfig(n=120, out=out, backend="template", progress=False))
    stats = corpus_stats(out)
    assert stats["records"] == 120 == stats["valid"]
    assert 0 < stats["coverage"]["verb"] < 1 and 0 < stats["distinct"]["distinct-1"] < stats["distinct"]["distinct-3"]
    assert set(stats["features"]) == set(FEATURES)
    with pytest.raises(ValueError, match="--seed 0; resume it with the same options"):
        synthesize(SynthConfig(n=120, out=out, backend="template", seed=1, progress=False))
    with pytest.raises(ValueError, match="same options"):
        synthesize(SynthConfig(n=120, out=out, backend="template", instruct=True, progress=False))
    from tinystories.cli import main

    assert main(["synth", "stats", str(out), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_of_a_missing_file_names_it(tmp_path, capsys):
    """Issue 22.19: one line naming the file, exit 2, not a traceback saying "no records"."""
    from tinystories.cli import main

    missing = tmp_path / "MISSING.jsonl"
    assert main(["synth", "stats", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err and "no records" not in err and "Traceback" not in err


def test_jsonl_log_repairs_a_torn_tail(tmp_path):
    path = tmp_path / "log.jsonl"
    with JsonlLog(path) as log:
        log.append({"id": "a"})
        log.append({"id": "b"})
    path.write_bytes(path.read_bytes() + b'{"id": "c", "sto')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    with JsonlLog(path) as log:
        log.append({"id": "d"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "d"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "e"}\n')
    damaged: list[str] = []
    assert [r["id"] for r in read_jsonl(path, on_damaged=damaged.append)] == ["a", "e"]  # the rest stays readable
    assert len(damaged) == 1 and damaged[0].startswith(f"{path}:2: skipped a damaged line")


def test_validation_flags_and_duplicates():
    words = {"verb": "run", "noun": "dog", "adjective": "happy"}
    story = "The happy dog ran to the park. " * 12
    assert validate(story, words) == []
    assert validate(story.replace("ran", "sat"), words) == ["missing_word:run"]
    assert validate("The happy dog ran.", words) == ["too_short"]
    assert validate("# Title\n" + story, words) == ["not_plain_text"]
    index = DuplicateIndex(threshold=0.8)
    rng = random.Random(0)
    base = [rng.choice(NOUNS) for _ in range(200)]
    assert index.add("a", " ".join(base)) == []
    assert index.add("b", " ".join(base).upper()) == ["duplicate_of:a"]
    assert index.add("c", " ".join(base[:100] + ["zebra"] + base[101:])) == ["near_duplicate_of:a"]
    assert index.add("d", " ".join(rng.choice(NOUNS) for _ in range(200))) == []


@pytest.mark.parametrize("instruct", [False, True])
def test_output_feeds_data_prepare(tmp_path, gpt2_files, instruct):
    from tinystories.corpus import iter_stories
    from tinystories.data import prepare
    from tinystories.tokenizer import Tokenizer

    out = tmp_path / "s.jsonl"
    synthesize(SynthConfig(n=50, out=out, backend="template", instruct=instruct, progress=False))
    expected = [r["text"] if instruct else r["story"] for r in records(out)]
    assert list(iter_stories([out])) == expected
    if instruct:
        assert all(t.startswith(("Features: ", "Words: ", "Summary: ", "Random sentence: ")) for t in expected)
    index = prepare([out], tmp_path / "ds", Tokenizer.from_gpt2_files(*gpt2_files), val_fraction=0.1, progress=False)
    assert sum(split["stories"] for split in index["splits"].values()) == 50
