"""An open stream holds no OS thread and no database connection.

One real uvicorn process; its thread count comes from /proc/<pid>/status
and its database connections from /proc (the ``database_connections``
fixture: files into the SQLite test database, or TCP connections to the
PostgreSQL cluster).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from notify.workers import GROWTH
from tests.support.servers import auth
from tests.support.sse import events

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc"
)


SYNC_THREADS = 2
POOL_BOUND = SYNC_THREADS * GROWTH  # the most request threads a server starts
FILES_PER_CONNECTION = 3  # SQLite's database, -wal and -shm; PostgreSQL's is 1


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


class Holder:
    """Streams kept open until released, each in its own task."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url
        self.release = asyncio.Event()
        self.ready = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _hold(self, token: str) -> None:
        async with self.client.stream(
            "GET", self.url + "/events/", headers=auth(token)
        ) as response:
            assert response.status_code == 200
            reader = events(response)
            try:
                first = await anext(reader)
                assert first.event == "ready"
                self.ready += 1
                await self.release.wait()
            finally:
                await reader.aclose()  # type: ignore[attr-defined]

    async def open(self, tokens: list[str]) -> None:
        """Open one stream per token; return once each has its ready event."""
        target = self.ready + len(tokens)
        self.tasks += [asyncio.create_task(self._hold(t)) for t in tokens]
        while self.ready < target:
            failed = [t for t in self.tasks if t.done()]
            if failed:
                await failed[0]  # raises what went wrong
                raise AssertionError("a stream ended early")
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        self.release.set()
        for task in self.tasks:
            if not task.done():
                task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        errors = [e for e in errors if not isinstance(e, asyncio.CancelledError)]
        if errors:
            raise errors[0]


@pytest.mark.timing
async def test_open_streams_hold_no_thread_and_no_database_connection(
    start_server, tokens, database_connections
):
    # No periodic resync: only the streams themselves touch the database.
    server = start_server(
        NOTIFY_RESYNC_SECONDS="3600",
        NOTIFY_HEARTBEAT_SECONDS="30",
        NOTIFY_MAX_STREAMS_PER_USER="0",
        NOTIFY_SYNC_THREADS=str(SYNC_THREADS),
    )
    assert server.proc is not None
    pid = server.proc.pid
    people = [tokens["alice"], tokens["bob"], tokens["carol"]]
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        holder = Holder(client, server.url)
        try:
            async with asyncio.timeout(40):
                await holder.open([people[i % 3] for i in range(10)])
                threads, fds = thread_count(pid), database_connections(pid)
                assert fds, "the server has no database connection at all?"

                await holder.open([people[i % 3] for i in range(290)])
                assert holder.ready == 300
                # The request threads may start one the first streams did
                # not need yet, or grow when theirs are slow (a loaded
                # machine), up to the pool's bound; never one per stream.
                assert thread_count(pid) - threads <= POOL_BOUND
                more = len(database_connections(pid)) - len(fds)
                assert more <= POOL_BOUND * FILES_PER_CONNECTION
        finally:
            async with asyncio.timeout(20):
                await holder.aclose()
