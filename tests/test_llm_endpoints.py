"""Unusable endpoints stop a job early and say why (the circuit breaker), a connect timeout apart from the
answer's, and a non-zero exit while requests are left failed: the real `openai` client on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from _processes import alive, wait_until

pytest.importorskip("openai")

from _evaluate_fixtures import ScriptedStudent, make_judge  # noqa: E402

from tinystories.evaluate import cli as eval_cli  # noqa: E402
from tinystories.evaluate import grading  # noqa: E402
from tinystories.jsonl import read_jsonl  # noqa: E402
from tinystories.llm import ChatRequest, ClientConfig, run_chat  # noqa: E402
from tinystories.synth import SynthConfig, synthesize  # noqa: E402
from tinystories.synth.prompts import story_id  # noqa: E402
from tinystories.testing import Faults, OpenAIServer  # noqa: E402

N = 60


def fast_client(url: str, **overrides) -> ClientConfig:
    return ClientConfig(
        **{
            "base_url": url,
            "api_key": "test",
            "concurrency": 4,
            "timeout_s": 0.5,
            "max_attempts": 3,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            **overrides,
        }
    )


def dead_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there, connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "endpoint, says",
    [
        ("refused", "connection"),
        ("not_found", "http_404: <html><head><title>404 Not Found"),
        ("html", "malformed: not a chat completion: b'<!DOCTYPE html><html><body><h1>Welcome to the router login"),
        ("hang", "timeout"),
    ],
)
def test_an_unusable_endpoint_stops_the_job_early_and_names_the_problem(tmp_path, endpoint, says):
    out = tmp_path / "s.jsonl"
    if endpoint == "refused":
        summary = synthesize(
            SynthConfig(
                n=N, out=out, model="m", progress=False, client=fast_client(f"http://127.0.0.1:{dead_port()}/v1")
            )
        )
        requested = None
    else:
        with OpenAIServer(faults=Faults(endpoint=endpoint)) as server:
            summary = synthesize(SynthConfig(n=N, out=out, model="m", progress=False, client=fast_client(server.url)))
            requested = set(server.requested_ids())
    assert summary.stopped.startswith("the endpoint looks unusable: the first 10 attempts all failed"), summary.stopped
    assert says in summary.stopped
    failed = {r["id"] for r in read_jsonl(Path(f"{out}.failed"))}
    # stopped early, not after N x 3 attempts: 10 failures, and the requests in flight when it tripped
    assert summary.written == 0 and summary.failed == len(failed) < 10 + 4
    if requested is not None:  # nothing requested is lost: it is in .failed, retried by the next run
        assert len(requested) < 10 + 4 and requested <= failed


@pytest.mark.parametrize("kind", ["server_error", "malformed"])
def test_a_burst_that_fails_every_first_attempt_does_not_trip_the_breaker(tmp_path, kind):
    """Issue 22.10: every request's first attempt fails and its retry succeeds; with more requests in flight than
    the breaker's K, counting those first attempts stopped the job at 9 of 20."""
    n = 20
    with OpenAIServer(faults=Faults(rate=1.0, kinds=(kind,), max_per_request=1)) as server:
        client = fast_client(server.url, concurrency=16)
        summary = synthesize(SynthConfig(n=n, out=tmp_path / "s.jsonl", model="m", progress=False, client=client))
        outcomes = [e.outcome for e in server.log]
    assert summary.stopped is None and summary.written == n and summary.failed == 0
    assert outcomes.count(kind) == n and outcomes.count("ok") == n


def test_worker_processes_stop_on_an_unusable_endpoint_too(tmp_path):
    with OpenAIServer(faults=Faults(endpoint="not_found")) as server:
        requests = [
            ChatRequest(f"r{i}", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}) for i in range(400)
        ]
        stats = run_chat(requests, fast_client(server.url, workers=2, concurrency=4), lambda r: None)
        assert "http_404" in stats.stopped and len(server.log) < 100


def test_a_run_of_failures_after_answers_stops_the_job(tmp_path):
    doomed = frozenset(story_id(0, i) for i in range(5, N))  # the endpoint breaks after five stories
    with OpenAIServer(faults=Faults(always_fail=doomed)) as server:
        summary = synthesize(
            SynthConfig(
                n=N,
                out=tmp_path / "s.jsonl",
                model="m",
                progress=False,
                client=fast_client(server.url, concurrency=1, max_consecutive_failures=4),
            )
        )
    assert summary.written == 5 and summary.failed == 4
    assert summary.stopped.startswith("the endpoint looks unusable: 4 requests in a row failed (the last: http_500")


ANSWER_TIMEOUT_S = 300.0


def test_connect_timeout_is_apart_from_the_answer_timeout():
    with socket.socket() as listener:  # a full accept queue: the kernel drops further SYNs, connect() hangs
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())
        results = []
        started = time.monotonic()
        run_chat(
            [ChatRequest("a", {"model": "m", "messages": []})],
            fast_client(
                f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
                timeout_s=ANSWER_TIMEOUT_S,
                connect_timeout_s=0.2,
                max_attempts=2,
            ),
            results.append,
        )
        filler.close()
    assert results[0].error == "timeout" and results[0].attempts == 2
    # Not a speed budget: with the answer timeout instead, the two attempts would take twice ANSWER_TIMEOUT_S.
    assert time.monotonic() - started < ANSWER_TIMEOUT_S


def test_grading_stops_on_an_unusable_judge_and_exits_non_zero(tmp_path):
    with OpenAIServer(faults=Faults(endpoint="html")) as server:
        judge = make_judge(server, attempts=3, concurrency=4)
        settings = grading.GradeSettings(judge_model="judge-test", samples=10, max_new_tokens=8)
        records = grading.grade(
            [ScriptedStudent()],
            judge,
            ["Tom had a red ball and"] * 1,
            settings,
            tmp_path / "grades.jsonl",
            progress=False,
        )
        # The breaker trips once 10 attempts counted (a first attempt counts only with its failed retry); each of
        # the 4 requests in flight then may hold an uncounted first attempt and one more under way: far below
        # the 10 samples x 3 attempts a run without the breaker makes.
        assert records == [] and len(server.log) <= 10 + 2 * 4
    assert "router login page" in judge.stats.stopped
    assert {r["status"] for r in read_jsonl(tmp_path / "grades.jsonl")} == {"error"}
    assert eval_cli._judge_exit_status(judge) == 1


def synth_cli(server: OpenAIServer, out: Path, capsys) -> tuple[int, str, str]:
    from tinystories.cli import main

    status = main(
        [
            "synth",
            "--num-stories",
            "12",
            "--out",
            str(out),
            "--model",
            "m",
            "--base-url",
            server.url,
            "--max-attempts",
            "2",
            "--backoff-s",
            "0.01",
            "--timeout-s",
            "2",
            "--no-progress",
        ]
    )
    return status, *capsys.readouterr()


def test_cli_exits_non_zero_on_an_unusable_endpoint_and_while_requests_are_left_failed(tmp_path, capsys):
    with OpenAIServer(faults=Faults(endpoint="not_found")) as server:
        status, out, _ = synth_cli(server, tmp_path / "a.jsonl", capsys)
    assert status == 1 and "the endpoint looks unusable" in out and "404 Not Found" in out
    with OpenAIServer(faults=Faults(always_fail=frozenset({story_id(0, 3)}))) as server:
        status, out, err = synth_cli(server, tmp_path / "b.jsonl", capsys)
        assert status == 1 and "1 requests failed" in err, out + err
        server.faults = Faults()
        assert synth_cli(server, tmp_path / "b.jsonl", capsys)[0] == 0  # retried: nothing is left failed


PARENT = """
import multiprocessing, sys, threading, time
from tinystories.llm import ChatRequest, ClientConfig, run_chat

def report_workers():
    while len(multiprocessing.active_children()) < 2:
        time.sleep(0.05)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)

threading.Thread(target=report_workers, daemon=True).start()
requests = [ChatRequest(f"r{i}", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}) for i in range(50)]
run_chat(requests, ClientConfig(base_url=sys.argv[1], api_key="test", workers=2, concurrency=4, timeout_s=600),
         lambda r: None)
"""


def descendants(pid: int) -> set[int]:
    """Live (not zombie) processes under ``pid``, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_workers_and_their_resource_tracker_exit_when_the_parent_is_sigkilled():
    import signal
    import subprocess
    import sys

    with OpenAIServer(latency_s=600) as server:  # a model so slow that the workers are busy when the parent dies
        parent = subprocess.Popen([sys.executable, "-c", PARENT, server.url], stdout=subprocess.PIPE, text=True)
        left_behind: set[int] = set()
        try:
            workers = {int(pid) for pid in parent.stdout.readline().split()}
            wait_until(lambda: len(server.log) >= 4, what="the workers' requests")  # the workers are sending
            left_behind = descendants(parent.pid)
            assert len(workers) == 2 and workers <= left_behind and len(left_behind) >= 3  # + the resource tracker
            parent.send_signal(signal.SIGKILL)
            parent.wait(60)
            wait_until(lambda: not any(alive(pid) for pid in left_behind), what="the workers to exit")
        finally:
            for pid in left_behind | descendants(parent.pid) | {parent.pid}:  # nothing outlives the test
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_the_circuit_breaker_counts_only_what_says_the_endpoint_is_unusable():
    from tinystories.llm.client import ChatResult, CircuitBreaker

    breaker = CircuitBreaker(3)
    for problem in ("rate_limit", "truncated", "rate_limit"):
        breaker.attempt(problem)
    for _ in range(5):  # it answered (cut at max_tokens): later attempts alone never trip it
        breaker.attempt("http_500: oops")
    assert breaker.tripped is None
    for ok in (False, False, True, False, False):
        breaker.result(ChatResult("r", error=None if ok else "timeout"))
    assert breaker.tripped is None
    breaker.result(ChatResult("r", error="http_502: <html>bad gateway</html>"))
    assert breaker.tripped.startswith("the endpoint looks unusable: 3 requests in a row failed (the last: http_502")
    off = CircuitBreaker(0)
    for _ in range(50):
        off.attempt("connection: refused")
        off.result(ChatResult("r", error="connection: refused"))
        off.result(ChatResult("r"))
    assert off.tripped is None
