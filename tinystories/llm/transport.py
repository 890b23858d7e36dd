"""A lean HTTP/1.1 keep-alive transport under the ``openai`` SDK (the SDK still builds and checks every request).

One request per connection at a time, idle connections reused LIFO, O(1) per request (the stock httpx pool
rescans all connections on every request, which dominates the CPU of a client with hundreds in flight).
Chunked and Content-Length bodies, TLS for https, httpx's timeouts and exceptions; Content-Encoding is
decoded by httpx. It speaks to the server directly: when the environment names a proxy for the URL
(:func:`proxy_for`), the client uses httpx's own transport, which honours the proxy variables.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
import urllib.request

import httpx2

from tinystories.llm.wire import read_chunked_body


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, any case),
    or None when there is none or ``NO_PROXY`` exempts the host."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # typeshed lacks the undocumented (but long-standing) urllib.request.proxy_bypass_environment
    if not proxy or urllib.request.proxy_bypass_environment(parts.netloc, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class KeepAliveTransport(httpx2.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` doing plain HTTP/1.1 keep-alive over asyncio streams (see the module
    docstring)."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        tls = url.scheme == "https"
        origin = (url.scheme, url.host, url.port or (443 if tls else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1".encode("ascii")]
        head.extend(name + b": " + value for name, value in request.headers.raw)
        if "host" not in request.headers:
            head.append(b"Host: " + url.netloc)
        if body and "content-length" not in request.headers:
            head.append(b"Content-Length: " + str(len(body)).encode())
        payload = b"\r\n".join(head) + b"\r\n\r\n" + body
        idle = self._idle.setdefault(origin, [])
        while idle:
            connection = idle.pop()
            if not connection.usable():
                connection.close()
                continue
            try:  # a kept-alive connection the server closed meanwhile fails before any answer: retry
                return await self._exchange(connection, payload, request, timeouts, origin)
            except _StaleConnection:
                continue
        connection = await self._connect(origin, tls, timeouts.get("connect"))
        try:
            return await self._exchange(connection, payload, request, timeouts, origin)
        except _StaleConnection as e:
            raise httpx2.RemoteProtocolError("server closed the connection without answering", request=request) from e

    async def _connect(self, origin: tuple[str, str, int], tls: bool, timeout: float | None) -> _Connection:
        _, host, port = origin
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_context if tls else None,
                    server_hostname=host if tls else None,
                    limit=1 << 20,
                ),
                timeout,
            )
        except asyncio.TimeoutError as e:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from e
        except OSError as e:
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {e}") from e
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        payload: bytes,
        request: httpx2.Request,
        timeouts: dict,
        origin: tuple[str, str, int],
    ) -> httpx2.Response:
        reader = connection.reader
        try:
            connection.writer.write(payload)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeouts.get("read"))
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _StaleConnection() from e
                raise
            lines = head[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            pairs = [line.split(b":", 1) for line in lines[1:] if b":" in line]
            headers = [(k.strip(), v.strip()) for k, v in pairs]
            fields = {k.lower(): v for k, v in headers}
            if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                content = b""
            elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                content = await asyncio.wait_for(read_chunked_body(reader), timeouts.get("read"))
            elif b"content-length" in fields:
                content = await asyncio.wait_for(
                    reader.readexactly(int(fields[b"content-length"])), timeouts.get("read")
                )
            else:
                content = await asyncio.wait_for(reader.read(), timeouts.get("read"))
                fields[b"connection"] = b"close"
        except asyncio.TimeoutError as e:
            connection.close()
            raise httpx2.ReadTimeout("timed out waiting for the response", request=request) from e
        except _StaleConnection:
            connection.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            connection.close()
            raise httpx2.ReadError(f"reading the response failed: {e!r}", request=request) from e
        except BaseException:  # cancelled mid-answer: the connection is in an unknown state
            connection.close()
            raise
        if fields.get(b"connection", b"").lower() == b"close":
            connection.close()
        else:
            self._idle.setdefault(origin, []).append(connection)
        return httpx2.Response(
            status, headers=headers, stream=httpx2.ByteStream(content), extensions={"http_version": b"HTTP/1.1"}
        )

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
