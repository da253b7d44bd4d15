"""``python -m bench.loadgen_check``: the load generator against a scripted
server, so its parsing and reconnect rules can be trusted at scale.

One stream, five connections: a 429 with ``Retry-After: 1``; a 502 (retried
after the initial 200 ms); a 200 whose head, padding, ``retry: 300``,
``ready`` and three events arrive in 5-byte chunks, then a reset; a 200 that
must carry ``Last-Event-ID: 8``, repeats event 8 before two new ones, sends
a cursor without data (``id: 9``, no event, as a group change moves a
cursor back) and ``retry: 250``, and ends its response with the last chunk
while the connection stays open (as a stopping worker's streams end, through
nginx); a 200 that must carry ``Last-Event-ID: 9`` and sends events 10 and 11.
Expected: statuses 429, 502, 200, 200, 200; two losses, one of them an ended
response, and two reconnects (300 and 250 ms plus the jitter); ids 6–11 once
each; two duplicates (8 and 10); no gap.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench import loadgen, servers

HEADERS: list[bytes] = []


def _chunk(data: bytes) -> bytes:
    return b"%X\r\n" % len(data) + data + b"\r\n"


def _event(i: int) -> bytes:
    return b'id: %d\nevent: notification\ndata: {"id":%d,"body":"%s"}\n\n' % (
        i,
        i,
        b"x" * 300,
    )


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    HEADERS.append(head)
    attempt = len(HEADERS)
    if attempt == 1:
        writer.write(
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"
        )
    elif attempt == 2:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = b": " + b"p" * 2048 + b"\nretry: 300\n\n"
        body += b'event: ready\ndata: {"last_id": 5, "heartbeat": 15}\n\n'
        ids = {3: (6, 7, 8), 4: (8, 9, 10)}.get(attempt, (10, 11))
        body += b"".join(_event(i) for i in ids)
        if attempt == 4:
            body += b"id: 9\nretry: 250\n\n"
        for k in range(0, len(body), 5):
            writer.write(_chunk(body[k : k + 5]))
        if attempt == 4:
            writer.write(b"0\r\n\r\n")  # the response ends; the connection stays
        await writer.drain()
        if attempt == 3:
            writer.transport.abort()
            return
        await reader.read()  # until the generator closes it, or quits
    await writer.drain()
    writer.close()


async def _check() -> list[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text("t0\n")
        proc = await asyncio.create_subprocess_exec(
            str(loadgen.build()),
            *("--port", str(port), "--tokens", str(tokens)),
            *("--jitter-ms", "100", "--retry-ms", "200"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=servers._child_setup,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"open 1\n")
        await asyncio.sleep(3.5)
        proc.stdin.write(b"stats\ncounts\nquit\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            await proc.stdout.readline()
            stats = json.loads(await proc.stdout.readline())
            counts = json.loads(await proc.stdout.readline())
            await proc.wait()
    server.close()
    await server.wait_closed()
    problems = []
    expect = {
        "ready": 1,
        "losses": 2,
        "ended": 1,
        "reconnects": 2,
        "dups": 2,
        "gaps": 0,
    }
    for key, value in expect.items():
        if stats[key] != value:
            problems.append(f"{key}: {stats[key]}, expected {value}")
    if stats["status"] != {"200": 3, "429": 1, "502": 1}:
        problems.append(f"statuses: {stats['status']}")
    if sorted(counts["ids"]) != [[i, 1] for i in range(6, 12)]:
        problems.append(f"ids: {counts['ids']}")
    if (
        len(HEADERS) != 5
        or b"Last-Event-ID: 8\r\n" not in HEADERS[3]
        or b"Last-Event-ID: 9\r\n" not in HEADERS[4]
    ):
        problems.append(f"requests: {HEADERS}")
    if any(b"Last-Event-ID" in h for h in HEADERS[:3]):
        problems.append("Last-Event-ID sent before any id was received")
    fastest = loadgen.hist_quantile(stats["reconnect_ms"], 0.0)
    slowest = loadgen.hist_quantile(stats["reconnect_ms"], 1.0)
    # Each after its retry (250 or 300 ms) plus up to 100 ms of jitter.
    if fastest is None or slowest is None or not 250 <= fastest <= slowest <= 450:
        problems.append(f"loss → ready {fastest}–{slowest} ms, expected 250–450")
    return problems


def main() -> int:
    problems = asyncio.run(_check())
    for problem in problems:
        print(f"loadgen check: {problem}", file=sys.stderr)
    print("loadgen check: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
