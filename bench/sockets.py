"""CPU per delivery over TCP on the loopback against a Unix socket.

``python -m bench.sockets [--streams 9000] [--broadcasts 20] [--rounds 2]``

The hop from a worker to nginx, without either: a uvloop server holds
``--streams`` accepted connections and writes one SSE frame of 239 bytes to
each of them per broadcast, ``--broadcasts`` times 0.1 s apart, the way a
worker fans a broadcast out; a second process reads all of them with
``epoll``, the way nginx does. Each side's CPU time over the broadcasts,
divided by the deliveries, for TCP over 127.0.0.1 and for a Unix socket,
``--rounds`` times each, alternating. Prints one line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import select
import socket
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from typing import Any

import uvloop

from bench import servers

FRAME = b"id: 123456\nevent: notification\ndata: " + b"x" * 200 + b"\n\n"


def _read(
    kind: str, address: Any, n: int, want: int, ready: Event, go: Event, done: Any
) -> None:
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    conns = []
    for _ in range(n):
        conn = socket.socket(family, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(address)
        conn.setblocking(False)
        conns.append(conn)
    poller = select.epoll()
    by_fd = {}
    for conn in conns:
        poller.register(conn.fileno(), select.EPOLLIN)
        by_fd[conn.fileno()] = conn
    ready.set()
    go.wait(60)
    started, got = time.process_time(), 0
    deadline = time.monotonic() + 120
    while got < want and time.monotonic() < deadline:
        for fd, _ in poller.poll(1):
            while True:
                try:
                    data = by_fd[fd].recv(65536)
                except BlockingIOError:
                    break
                if not data:  # closed: nothing more will come
                    poller.unregister(fd)
                    break
                got += len(data)
                if len(data) < 65536:
                    break
    done.put((time.process_time() - started, got))


async def _once(kind: str, n: int, broadcasts: int, path: str) -> tuple[float, float]:
    writers: list[asyncio.StreamWriter] = []
    all_in = asyncio.Event()

    async def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if len(writers) == n:
            all_in.set()

    server: asyncio.Server
    if kind == "unix":
        server = await asyncio.start_unix_server(accepted, path, backlog=4096)
        address: Any = path
    else:
        server = await asyncio.start_server(accepted, "127.0.0.1", 0, backlog=4096)
        address = server.sockets[0].getsockname()
    fork = multiprocessing.get_context("fork")
    ready, go, done = fork.Event(), fork.Event(), fork.Queue()
    want = n * len(FRAME) * broadcasts
    reader = fork.Process(
        target=_read, args=(kind, address, n, want, ready, go, done), daemon=True
    )
    reader.start()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(all_in.wait(), 60)
        if not await loop.run_in_executor(None, ready.wait, 60):
            raise RuntimeError(f"{kind}: the reader did not connect within 60 s")
        go.set()
        started = time.process_time()
        for _ in range(broadcasts):
            for writer in writers:
                writer.transport.write(FRAME)
            await asyncio.sleep(0.1)
        written = time.process_time() - started
        read, got = await loop.run_in_executor(None, done.get, True, 180)
    finally:
        if reader.is_alive():
            reader.terminate()
        reader.join(10)
        server.close()
        for writer in writers:
            writer.transport.abort()
    if got < want:
        raise RuntimeError(f"{kind}: read {got} of {want} bytes")
    deliveries = n * broadcasts
    return written / deliveries * 1e6, read / deliveries * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sockets", description=__doc__)
    p.add_argument("--streams", type=int, default=9000)
    p.add_argument("--broadcasts", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    # Each side holds a file per connection.
    limit = servers.raise_fd_limit()
    if limit < args.streams + 256:
        p.error(
            f"--streams {args.streams} needs {args.streams + 256} open files; the limit is {limit}"
        )
    with tempfile.TemporaryDirectory(prefix="notify-sockets-") as tmp:
        path = os.path.join(tmp, "s.sock")
        for _ in range(args.rounds):
            for kind in ("tcp", "unix"):
                if os.path.exists(path):
                    os.unlink(path)
                write, read = uvloop.run(
                    _once(kind, args.streams, args.broadcasts, path)
                )
                print(
                    f"{kind:4} {args.streams} streams: writer {write:5.2f} µs, "
                    f"reader {read:5.2f} µs, both {write + read:5.2f} µs per delivery"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
