"""Bytes on the wire for the client's transport (no third-party dependency): compact JSON (orjson when installed:
it halves the JSON cost of a busy client or server; the test server reads request bodies with it too), HTTP/1.1
chunked bodies and the ``Retry-After`` header."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
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


def retry_after_seconds(headers: Mapping[str, str], limit: float) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date), at most `limit`
    (`inf` or `1e12` is the server's mistake, not a reason to wait forever); None, so the request backs off as
    after any failure, when the headers are absent or unreadable (`soon`, `nan`)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if name != "retry-after":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
        if not math.isnan(seconds):
            return min(limit, max(0.0, seconds))
    return None
