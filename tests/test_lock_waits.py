"""A request waiting for a database lock holds up no other request.

A separate process holds the lock a publish needs (SQLite's write lock, or on
PostgreSQL the publishers' advisory lock) while one publish and eight
unrelated inbox reads reach one real uvicorn process; the reads are answered
at once, and the publish, once the lock has been held past
``DATABASE_LOCK_TIMEOUT``, gets a JSON 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from notify.publishing import _ADVISORY_LOCK
from tests.support import forkserver
from tests.support.locks import PUBLISHERS, hold_lock, release
from tests.support.servers import auth

pytestmark = pytest.mark.timing

READS = 8
HOLD_SECONDS = 4.0
LOCK_TIMEOUT = "2"


@pytest.fixture
def hold(test_database_url: str) -> Iterator[Callable[[float], None]]:
    """``hold(seconds)``: another process holds the publishers' lock."""
    held: list[subprocess.Popen[str]] = []

    def start(seconds: float) -> None:
        lock = PUBLISHERS.format(_ADVISORY_LOCK)
        held.append(hold_lock(test_database_url, seconds, lock))

    yield start
    for holder in held:
        release(holder)


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw: object):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = await client.request(method, url, **kw)  # type: ignore[arg-type]
    return response, time.monotonic() - started


async def _publish_and_read(
    client: httpx.AsyncClient, tokens: dict[str, str], publishes: int
) -> list[tuple[httpx.Response, float]]:
    """Start ``publishes`` publishes, then the reads while they wait; the
    reads' latencies are checked here, the publishes' answers returned."""
    publishing = [
        asyncio.create_task(
            _timed(
                client,
                "POST",
                "/api/notifications",
                json={"audience": "all", "title": f"waits {i}"},
                headers=auth(tokens["admin"]),
            )
        )
        for i in range(publishes)
    ]
    await asyncio.sleep(0.5)  # the publishes are waiting for the lock now
    reads = await asyncio.gather(
        *(
            _timed(client, "GET", "/api/notifications", headers=auth(tokens[name]))
            for name in ["alice", "bob", "carol", "alice"] * (READS // 4)
        )
    )
    assert [r.status_code for r, _ in reads] == [200] * READS
    took = sorted(round(seconds, 2) for _, seconds in reads)
    assert took[-1] < 1.0, f"reads took {took} s"
    assert not any(task.done() for task in publishing)
    return list(await asyncio.gather(*publishing))


def _assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/json")
    assert "error" in response.json()
    assert int(response.headers["Retry-After"]) > 0


async def test_reads_are_not_held_up_behind_a_publish_waiting_for_the_lock(
    start_server, tokens, hold
):
    server = start_server(DATABASE_LOCK_TIMEOUT=LOCK_TIMEOUT)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        hold(HOLD_SECONDS)
        [(response, waited)] = await _publish_and_read(client, tokens, 1)
    _assert_busy(response)
    assert float(LOCK_TIMEOUT) - 0.5 < waited < HOLD_SECONDS


async def test_reads_are_not_held_up_when_more_publishes_wait_than_threads(
    start_server, tokens, hold
):
    server = start_server(DATABASE_LOCK_TIMEOUT=LOCK_TIMEOUT, NOTIFY_SYNC_THREADS="2")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        hold(HOLD_SECONDS)
        published = await _publish_and_read(client, tokens, 3)
    for response, _ in published:
        if response.status_code != 201:  # those queued may get the lock at last
            _assert_busy(response)


async def test_a_publish_waiting_less_than_the_timeout_succeeds(
    start_server, tokens, hold
):
    server = start_server(DATABASE_LOCK_TIMEOUT=LOCK_TIMEOUT)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        hold(1.0)
        response, waited = await _timed(
            client,
            "POST",
            "/api/notifications",
            json={"audience": "all", "title": "after the lock"},
            headers=auth(tokens["admin"]),
        )
    assert response.status_code == 201
    assert waited > 0.5


def test_the_lock_timeout_comes_from_the_environment(server_env):
    code = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'])"

    def load(value: str) -> subprocess.CompletedProcess[str]:
        return forkserver.run(
            [sys.executable, "-c", code],
            server_env | {"DATABASE_LOCK_TIMEOUT": value},
            timeout=60,
        )

    loaded = load("2.5")
    assert loaded.returncode == 0, loaded.stderr
    assert "'timeout': 2.5" in loaded.stdout or "lock_timeout=2500" in loaded.stdout
    refused = load("0")
    assert refused.returncode != 0
    assert "DATABASE_LOCK_TIMEOUT" in refused.stderr.strip().splitlines()[-1]
