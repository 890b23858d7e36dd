"""Bytes on the wire for the client's transport (no third-party dependency): compact JSON (orjson when installed:
it halves the JSON cost of a busy client or server; the test server reads request bodies with it too) and HTTP/1.1
chunked bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

try:
    import orjson

    # The signatures both implementations share (orjson's dumps also takes options, json's loads keywords).
    loads: Callable[[str | bytes | bytearray], Any] = orjson.loads
    dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # orjson is optional; the standard library gives the same bytes' meaning

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    loads = json.loads


async def read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (its trailers, if any, are read and dropped)."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
