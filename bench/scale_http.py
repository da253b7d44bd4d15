"""One-shot HTTP/1.1 requests with wall-clock timing, for publish and probes.

The send time is ``time.time_ns()`` (CLOCK_REALTIME), the clock the load
generator stamps arrivals with, so latency is arrival − send across processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Reply:
    sent_ns: int
    seconds: float
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


async def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    payload: Any = None,
    within: float = 30,
) -> Reply:
    """Status 0 means no answer (refused, reset or timed out)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if payload is not None:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    sent_ns, started = time.time_ns(), time.monotonic()
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(head.encode() + body)
                raw = await reader.read(-1)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return Reply(sent_ns, time.monotonic() - started, 0, b"")
    seconds = time.monotonic() - started
    head_bytes, _, content = raw.partition(b"\r\n\r\n")
    try:
        status = int(head_bytes.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Reply(sent_ns, seconds, 0, b"")
    if b"transfer-encoding: chunked" in head_bytes.lower():
        content = _dechunk(content)
    return Reply(sent_ns, seconds, status, content)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
