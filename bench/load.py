"""The load generator: many SSE streams on raw asyncio sockets, one publisher.

An httpx client per stream costs more than the server being measured, so each
stream is an ``asyncio.Protocol`` that writes one HTTP/1.1 GET, decodes the
chunked body incrementally and notes, for every event carrying an ``id:``, the
id and the ``time.monotonic()`` at which its bytes arrived. The publisher runs
in the same process, so publish and arrival times share one clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

HOST = "127.0.0.1"


class StreamClient(asyncio.Protocol):
    """One ``GET /events/`` connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.arrivals: list[tuple[int, float]] = []
        self.problems: list[str] = []
        self.lost = False
        self._raw = bytearray()
        self._sse = bytearray()
        self._in_head = True
        self._chunked = False
        self._need = 0  # chunk bytes still to copy
        self._skip = 0  # CRLF after a chunk still to drop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._in_head:
            self._raw += data
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._raw[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self._chunked = b"transfer-encoding: chunked" in head
            self._in_head = False
            data = bytes(self._raw[end + 4 :])
            self._raw.clear()
        if self._chunked:
            self._dechunk(data)
        else:
            self._sse += data
        self._events(now)

    def _fail(self, why: str) -> None:
        self.problems.append(why)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        self.close()

    def _dechunk(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        while raw:
            if self._need:
                take = min(self._need, len(raw))
                self._sse += raw[:take]
                del raw[:take]
                self._need -= take
                if self._need:
                    return
                self._skip = 2
            if self._skip:
                take = min(self._skip, len(raw))
                del raw[:take]
                self._skip -= take
                if self._skip:
                    return
            end = raw.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(raw[:end]).split(b";", 1)[0], 16)
            del raw[: end + 2]
            if size == 0:
                return
            self._need = size

    def _events(self, now: float) -> None:
        sse = self._sse
        start = 0
        while (end := sse.find(b"\n\n", start)) >= 0:
            # An id without data (a stream's last frame) is no event.
            if sse.startswith(b"id: ", start) and sse.find(b"\ndata:", start, end) > 0:
                line_end = sse.find(b"\n", start)
                self.arrivals.append((int(sse[start + 4 : line_end]), now))
            elif sse.startswith(b"event: ready", start):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif sse.startswith(b"event: ", start) and not sse.startswith(
                b"event: read\n", start
            ):
                self.problems.append(bytes(sse[start:end]).decode(errors="replace"))
            start = end + 2
        if start:
            del sse[:start]


def stream_request(credential: str, last_event_id: int | None = None) -> bytes:
    """A stream request with a bearer token, or a ``sessionid=...`` cookie;
    with ``last_event_id``, one that resumes as a reconnecting EventSource."""
    if credential.startswith("sessionid="):
        auth = f"Cookie: {credential}"
    else:
        auth = f"Authorization: Bearer {credential}"
    resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
    return (
        "GET /events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{auth}\r\n{resume}Accept: text/event-stream\r\n\r\n"
    ).encode()


class Streams:
    """The open streams against one server."""

    def __init__(self, port: int, tokens: list[str]) -> None:
        self.port = port
        self.tokens = tokens
        self.clients: list[StreamClient] = []

    async def open(
        self, total: int, *, concurrency: int = 64, last_event_id: int | None = None
    ) -> None:
        """Open streams until ``total`` are open and have sent ``ready``
        (resuming after ``last_event_id``, when given)."""
        if total > len(self.tokens):
            raise ValueError(f"{total} streams need {total} tokens")
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)

        async def one(token: str) -> None:
            async with gate:
                _, client = await loop.create_connection(
                    lambda: StreamClient(stream_request(token, last_event_id)),
                    HOST,
                    self.port,
                )
                self.clients.append(client)
                await client.ready

        await asyncio.gather(*(one(t) for t in self.tokens[len(self.clients) : total]))

    def forget_arrivals(self) -> None:
        for client in self.clients:
            client.arrivals.clear()

    def received_at_least(self, count: int) -> bool:
        return all(len(c.arrivals) >= count for c in self.clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


async def post_json(
    port: int, path: str, token: str, payload: Any
) -> tuple[float, int, Any]:
    """POST ``payload``; return (monotonic time the request was written, status, JSON)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sent = time.monotonic()
        writer.write(head + body)
        raw = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, content = raw.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head_bytes.lower():
        content = _dechunk_all(content)
    return sent, status, json.loads(content) if content else None


def _dechunk_all(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
