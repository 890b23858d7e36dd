"""The LLM client honours HTTP_PROXY / HTTPS_PROXY / NO_PROXY, tested through a real forward proxy on loopback."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("openai")

from tinystories.llm import ChatRequest, ClientConfig, run_chat  # noqa: E402
from tinystories.llm.transport import proxy_for  # noqa: E402
from tinystories.testing import OpenAIServer  # noqa: E402

HOST = "llm.proxy-test.invalid"  # resolvable only by the proxy: a request that arrives went through it


class ForwardProxy:
    """A minimal HTTP forward proxy: absolute-form requests to ``HOST:port`` are piped to ``127.0.0.1:port``;
    CONNECT (what a client sends for https) is recorded and refused. ``seen`` lists each request line."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        self.seen.append(line)
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT" or not target.startswith(f"http://{HOST}:"):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        port = int(target.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(head)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def __enter__(self) -> ForwardProxy:
        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            self._ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def _ask(base_url: str) -> list:
    results: list = []
    config = ClientConfig(base_url=base_url, api_key="test", timeout_s=5, max_attempts=1)
    request = ChatRequest("a", {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    run_chat([request], config, results.append)
    return results


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_requests_go_through_http_proxy_and_no_proxy_is_honoured(no_proxy_env):
    with OpenAIServer() as server, ForwardProxy() as proxy:
        port = server.url.split(":")[2].split("/")[0]
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
        results = _ask(f"http://{HOST}:{port}/v1")
        assert results[0].ok, results[0].error
        assert proxy.seen and proxy.seen[0].startswith(f"POST http://{HOST}:{port}/v1/chat/completions ")
        assert [e.path for e in server.log] == ["/v1/chat/completions"]

        direct = _ask(server.url)  # 127.0.0.1 is in NO_PROXY: straight to the server
        assert direct[0].ok, direct[0].error
        assert len(proxy.seen) == 1 and len(server.log) == 2


def test_https_proxy_is_used_for_https_urls(no_proxy_env):
    with ForwardProxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        assert proxy_for(f"https://{HOST}/v1") == proxy.url
        results = _ask(f"https://{HOST}/v1")  # the proxy refuses the tunnel: the request fails, but via it
        assert not results[0].ok
        assert proxy.seen and proxy.seen[0].startswith(f"CONNECT {HOST}:443 ")


def test_proxy_for_reads_the_environment(no_proxy_env):
    assert proxy_for("http://example.org/v1") is None
    no_proxy_env.setenv("http_proxy", "http://proxy.local:3128")
    no_proxy_env.setenv("no_proxy", ".internal.org")
    assert proxy_for("http://example.org/v1") == "http://proxy.local:3128"
    assert proxy_for("http://llm.internal.org:8000/v1") is None
    assert proxy_for("https://example.org/v1") is None  # no HTTPS proxy named
