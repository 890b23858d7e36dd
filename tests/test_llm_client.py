"""The shared LLM client: retries, Retry-After, workers, prices, and its HTTP transport on real sockets."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

pytest.importorskip("openai")

from tinystories import synth  # noqa: E402
from tinystories.llm import ChatClient, ChatRequest, ClientConfig, PriceTable, run_chat  # noqa: E402
from tinystories.testing import Faults, OpenAIServer  # noqa: E402

FAST = dict(timeout_s=0.5, backoff_initial_s=0.01, backoff_max_s=0.05, max_attempts=6)
PRICES = PriceTable({"test-model": (1000.0, 2000.0)})


def client_config(server: OpenAIServer, **overrides) -> ClientConfig:
    return ClientConfig(
        **{"base_url": server.url, "api_key": "test", "concurrency": 16, "prices": PRICES, **FAST, **overrides}
    )


def test_worker_processes_and_client_results(tmp_path):
    with OpenAIServer(faults=Faults(rate=0.3, stall_s=1.0)) as server:
        requests = [
            ChatRequest(
                f"r{i}",
                {
                    "model": "test-model",
                    "messages": [{"role": "user", "content": synth.build_prompt("run", "dog", "happy", ["dialogue"])}],
                },
            )
            for i in range(60)
        ]
        results = []
        stats = run_chat(requests, client_config(server, workers=2, concurrency=8), results.append)
    assert stats.succeeded == 60 and sorted(r.id for r in results) == sorted(r.id for r in requests)
    assert all(r.ok and r.text and r.cost_usd > 0 for r in results)
    assert stats.cost_usd == pytest.approx(sum(r.cost_usd for r in results))


def test_an_idle_worker_finishing_early_is_not_taken_for_dead():
    # 5 requests fit in one chunk: worker 1 gets nothing and exits while worker 0 waits on a slow model
    with OpenAIServer(latency_s=1.5) as server:
        results = []
        requests = [
            ChatRequest(f"r{i}", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}) for i in range(5)
        ]
        stats = run_chat(requests, client_config(server, workers=2, timeout_s=10), results.append)
    assert stats.succeeded == 5 and len(results) == 5


def test_retry_after_is_honoured_and_bad_requests_are_not_retried():
    with OpenAIServer(faults=Faults(rate=1.0, kinds=("rate_limit",), max_per_request=1, retry_after_s=0.4)) as server:
        results = []
        run_chat(
            [ChatRequest("a", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})],
            client_config(server, timeout_s=10),
            results.append,
        )
        times = [e.time for e in server.log]
    assert results[0].ok and results[0].attempt_errors == ["rate_limit"]
    assert times[1] - times[0] >= 0.4
    with OpenAIServer() as server:
        results = []
        run_chat([ChatRequest("b", {"model": "m"})], client_config(server, timeout_s=10), results.append)  # 400
    assert results[0].error.startswith("http_400") and results[0].attempts == 1


def test_price_table_overrides(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"my-model": {"input": 1.0, "output": 3.0}, "batch_discount": 0.4}))
    (tmp_path / "p.toml").write_text("[gpt-4o-mini]\ninput = 9.0\noutput = 9.0\n")
    table = PriceTable.load(tmp_path / "p.json")
    assert table.cost("my-model", 1_000_000, 1_000_000) == pytest.approx(4.0)
    assert table.cost("my-model", 1_000_000, 0, batch=True) == pytest.approx(0.4)
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # dated snapshot -> prefix
    assert PriceTable.load(tmp_path / "p.toml").cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(9.0)
    assert not table.has_price("llama-3")
    (tmp_path / "bad.json").write_text(json.dumps({"m": {"input": 1}}))
    with pytest.raises(ValueError, match="bad.json.*'m'"):
        PriceTable.load(tmp_path / "bad.json")


def test_a_stop_wakes_the_workers_waiting_for_a_request_from_a_lazy_source():
    """A source that yields only when its callers are answered (the judge's queue) must not keep ``run`` from
    returning after a stop: workers blocked on it are woken, else every caller waits on the run for ever."""

    async def main():
        never = asyncio.Event()

        async def source():  # one request, then nothing until someone reacts to the stop (nobody does)
            await asyncio.sleep(0)  # the other workers start and queue up behind this one
            yield ChatRequest("q0", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
            await never.wait()

        # the first request alone is over the budget: it is dropped unsent and the run stops for "budget"
        config = ClientConfig(
            base_url="http://127.0.0.1:9/v1", api_key="t", concurrency=4, max_cost_usd=1e-9, prices=PRICES
        )
        async with ChatClient(config) as client:
            return await asyncio.wait_for(client.run(source(), lambda result: None), timeout=120)

    stats = asyncio.run(main())
    assert stats.stopped == "budget" and stats.attempts == 0


ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


async def _serve_raw(respond):
    """A bare HTTP server whose `respond(n, body) -> (bytes, close?)` writes whatever a test needs."""
    count = [0]

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                count[0] += 1
                data, close = respond(count[0], body)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", count


def _ask(respond, n=3, http_transport="keepalive"):
    async def main():
        server, url, count = await _serve_raw(respond)
        config = ClientConfig(base_url=url, api_key="t", concurrency=1, http_transport=http_transport, **FAST)
        async with ChatClient(config) as client:
            results = [await client.complete(ChatRequest(f"q{i}", {"model": "m", "messages": []})) for i in range(n)]
        server.close()
        return results, count[0]

    return asyncio.run(main())


@pytest.mark.parametrize("http_transport", ["keepalive", "httpx"])
def test_transport_reads_chunked_gzip_and_connection_close(http_transport):
    def respond(n, body):
        data = gzip.compress(json.dumps(ANSWER).encode())
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:10], data[10:])) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        return head + b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n" + chunks, True

    results, served = _ask(respond, http_transport=http_transport)
    assert [r.text for r in results] == ["Hello there."] * 3 and served == 3
    assert all(r.attempts == 1 and r.usage["total_tokens"] == 5 for r in results)


def test_transport_retries_a_keepalive_connection_the_server_dropped():
    def respond(n, body):  # answers keep-alive, then silently closes: the next request meets a dead socket
        data = json.dumps(ANSWER).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data), True

    results, served = _ask(respond)
    assert all(r.ok and r.attempts == 1 for r in results) and served == 3


def test_transport_turns_a_garbled_answer_into_a_retry():
    def respond(n, body):
        if n == 1:
            return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", True  # cut off mid-body
        data = json.dumps(ANSWER).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data), False

    results, _ = _ask(respond, n=1)
    assert results[0].ok and results[0].attempt_errors == ["connection"]
