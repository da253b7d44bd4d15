"""Bodies over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` are refused by the ASGI handler
before they are read: declared ones at once, chunked ones as soon as they pass
the limit. Against a real uvicorn, with raw sockets (a client library would
stop at the first refused write)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

MIB = 1024 * 1024
TEN_MB = 10 * MIB
CHUNK = 64 * 1024


@dataclass
class Exchange:
    status: int
    body: bytes
    sent: int  # body bytes the client got out before the answer
    seconds: float


def _exchange(port: int, head: bytes, body: Iterator[bytes]) -> Exchange:
    """Send ``head``, then ``body`` while watching for the answer; stop
    sending once it comes (or the server closes)."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        pending = b""
        received = b""
        while time.monotonic() - started < 20:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                if not pending:
                    pending = next(body, b"")
                if pending:
                    try:
                        n = sock.send(pending)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += n
                    pending = pending[n:]
        sock.settimeout(5)
        while True:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not part:
                break
            received += part
            if b"\r\n\r\n" in received:
                head_part, _, rest = received.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":", 1)[1])
                    for line in head_part.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(rest) >= length[0]:
                    break
    seconds = time.monotonic() - started
    status_line, _, rest = received.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return Exchange(int(status_line.split()[1]), payload, sent, seconds)


def _head(length: int | None, content_type: bytes = b"application/json") -> bytes:
    framing = (
        b"Transfer-Encoding: chunked"
        if length is None
        else b"Content-Length: %d" % length
    )
    return (
        b"POST /api/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: " + content_type + b"\r\n" + framing + b"\r\n\r\n"
    )


def _plain(total: int) -> Iterator[bytes]:
    for _ in range(total // CHUNK):
        yield b"x" * CHUNK


def _chunked(total: int) -> Iterator[bytes]:
    for part in _plain(total):
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(start_server):
    return start_server()


def test_a_declared_body_over_the_limit_is_413_json_unread(server):
    answer = _exchange(server.port, _head(TEN_MB), _plain(TEN_MB))
    assert answer.status == 413
    assert json.loads(answer.body) == {"error": "request body too large"}
    assert answer.seconds < 2
    assert answer.sent < TEN_MB


def test_a_chunked_body_is_cut_off_with_413_once_past_the_limit(server):
    before = _rss_kib(server.proc.pid)
    answer = _exchange(server.port, _head(None), _chunked(TEN_MB))
    assert answer.status == 413
    assert json.loads(answer.body) == {"error": "request body too large"}
    assert answer.seconds < 5
    assert answer.sent < TEN_MB
    # The server kept at most about the limit, never the body.
    assert _rss_kib(server.proc.pid) - before < 4 * 1024


def test_a_body_within_the_limit_reaches_the_view(server):
    """Unauthenticated: the view answers 401 (after the handler read it)."""
    size = MIB - 1
    answer = _exchange(server.port, _head(size), iter([b"x" * size]))
    assert answer.status == 401


def test_multipart_bodies_are_left_to_django(server):
    size = 2 * MIB
    head = _head(size, b"multipart/form-data; boundary=x")
    answer = _exchange(server.port, head, iter([b"x" * size]))
    assert answer.status == 401
