"""The per-user stream cap, counted across real server processes in Redis."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.support.servers import auth, slot_counts
from tests.test_access import Stream

CAP = "3"
RESYNC = 1.0  # NOTIFY_RESYNC_SECONDS of the test servers (conftest)


async def _open(url: str, token: str) -> Stream:
    stream = Stream(url, headers=auth(token))
    async with asyncio.timeout(10):
        await stream.ready.wait()
    return stream


async def _refused(url: str, token: str, path: str = "/events/") -> None:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url + path, headers=auth(token)) as response,
    ):
        assert response.status_code == 429  # (an admitted stream never ends)
        await response.aread()
    assert response.headers["Content-Type"] == "application/json"
    assert "error" in response.json()
    assert int(response.headers["Retry-After"]) >= 1


async def _accepted_within(url: str, token: str, seconds: float) -> float:
    """Open streams until one is accepted; how long it took."""
    start = time.monotonic()
    async with asyncio.timeout(seconds):
        while True:
            stream = await _open(url, token)
            if stream.status == 200:
                await stream.close()
                return time.monotonic() - start
            await asyncio.sleep(0.1)


async def test_the_cap_counts_streams_and_polls_across_processes(
    start_server, redis_url, tokens
):
    one = start_server("one", REDIS_URL=redis_url, NOTIFY_MAX_STREAMS_PER_USER=CAP)
    two = start_server("two", REDIS_URL=redis_url, NOTIFY_MAX_STREAMS_PER_USER=CAP)
    held = [
        await _open(one.url, tokens["alice"]),
        await _open(one.url, tokens["alice"]),
        await _open(two.url, tokens["alice"]),
    ]
    assert [s.status for s in held] == [200, 200, 200]
    await _refused(one.url, tokens["alice"])
    await _refused(two.url, tokens["alice"])
    await _refused(two.url, tokens["alice"], "/events/poll?timeout=0")
    # Somebody else is not affected.
    bob = await _open(two.url, tokens["bob"])
    assert bob.status == 200
    await bob.close()

    await held.pop().close()
    assert await _accepted_within(one.url, tokens["alice"], RESYNC + 1) < RESYNC + 1
    for stream in held:
        await stream.close()


@pytest.mark.timing
async def test_a_killed_process_frees_its_slots(start_server, redis_url, tokens):
    one = start_server("one", REDIS_URL=redis_url, NOTIFY_MAX_STREAMS_PER_USER=CAP)
    two = start_server("two", REDIS_URL=redis_url, NOTIFY_MAX_STREAMS_PER_USER=CAP)
    kept = await _open(one.url, tokens["alice"])
    lost = [await _open(two.url, tokens["alice"]) for _ in range(2)]
    assert [s.status for s in [kept, *lost]] == [200, 200, 200]
    await _refused(one.url, tokens["alice"])

    assert two.proc is not None
    two.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    two.proc.wait(timeout=10)
    for stream in lost:
        await asyncio.gather(stream.task, return_exceptions=True)
    async with asyncio.timeout(RESYNC + 1):
        while True:
            again = await _open(one.url, tokens["alice"])
            if again.status == 200:
                break
            await asyncio.sleep(0.1)
    assert time.monotonic() - killed < RESYNC + 1
    second = await _open(one.url, tokens["alice"])
    assert second.status == 200  # both of the dead process's slots are free
    await _refused(one.url, tokens["alice"])
    for stream in (kept, again, second):
        await stream.close()


async def test_without_redis_one_process_counts_its_own(start_server, tokens):
    server = start_server(NOTIFY_MAX_STREAMS_PER_USER="2")
    held = [await _open(server.url, tokens["carol"]) for _ in range(2)]
    await _refused(server.url, tokens["carol"])
    await held[0].close()
    assert await _accepted_within(server.url, tokens["carol"], 2) < 2
    await held[1].close()


async def test_a_cap_of_zero_means_no_cap(start_server, tokens):
    server = start_server(NOTIFY_MAX_STREAMS_PER_USER="0")
    held = [await _open(server.url, tokens["carol"]) for _ in range(25)]
    assert {s.status for s in held} == {200}
    for stream in held:
        await stream.close()


async def test_counts_lost_in_redis_are_written_again(
    start_server, redis_url, users, tokens
):
    """Redis restarted without its data (or the process stalled past the
    counts' lifetime): the next admission notices, and the process writes all
    its counts again."""
    import redis

    server = start_server(REDIS_URL=redis_url, NOTIFY_MAX_STREAMS_PER_USER="5")
    held = [await _open(server.url, tokens["alice"]) for _ in range(2)]
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    held.append(await _open(server.url, tokens["alice"]))
    expected = {str(users["alice"].pk): "3"}
    async with asyncio.timeout(RESYNC + 2):
        while slot_counts(redis_url) != expected:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)
    for stream in held:
        await stream.close()
