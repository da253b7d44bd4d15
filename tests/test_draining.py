"""A stopping server ends its streams NOTIFY_DRAIN_RATE a second, each one
cleanly, and answers its long polls at once (notify/draining.py); with 0,
uvicorn cuts them when its grace period ends. Real uvicorn, real SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from notify.access import reconnect_message
from notify.broker.base import Fanout, Message, Subscription
from notify.draining import drain
from tests.support.metrics import scrape
from tests.support.servers import UvicornServer, auth, wait_for


@pytest.fixture
def stoppable(
    workdir: Path, server_env: dict[str, str], transactional_db: None
) -> Iterator[list[UvicornServer]]:
    started: list[UvicornServer] = []
    yield started
    for server in started:
        server.stop()


async def _stream(
    url: str, token: str, ready: asyncio.Event
) -> tuple[list[str], float | None, str | None]:
    """The stream's lines; when its response ended (loop time), or None and
    the error that cut it."""
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", url + "/events/", headers=auth(token)) as response,
    ):
        assert response.status_code == 200
        try:
            async for line in response.aiter_lines():
                lines.append(line)
                if line == "event: ready":
                    ready.set()
        except httpx.HTTPError as exc:
            return lines, None, repr(exc)
    return lines, asyncio.get_running_loop().time(), None


async def _open(
    server: UvicornServer, token: str, count: int
) -> list[asyncio.Task[tuple[list[str], float | None, str | None]]]:
    readies = [asyncio.Event() for _ in range(count)]
    tasks = [
        asyncio.create_task(_stream(server.url, token, ready)) for ready in readies
    ]
    async with asyncio.timeout(20):
        await asyncio.gather(*(ready.wait() for ready in readies))
    return tasks


async def test_a_stopping_server_ends_its_streams_at_the_drain_rate_each_cleanly(
    workdir, server_env, tokens, stoppable
):
    server = UvicornServer(
        workdir,
        server_env | {"NOTIFY_DRAIN_RATE": "20", "NOTIFY_MAX_STREAMS_PER_USER": "0"},
        "draining",
        grace=15,
    )
    stoppable.append(server)
    server.start()
    streams = await _open(server, tokens["alice"], 30)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=30) as client:
        poll = asyncio.create_task(
            client.get(
                server.url + "/events/poll?timeout=25", headers=auth(tokens["bob"])
            )
        )
        async with asyncio.timeout(10):  # until the poll is waiting too
            while True:
                found = await scrape(client, server.url, tokens["admin"])
                if found["notify_open_streams"] >= 31:
                    break
                await asyncio.sleep(0.05)
        assert server.proc is not None
        stopped_at = loop.time()
        server.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            answered = await poll
            poll_took = loop.time() - stopped_at
            results = await asyncio.gather(*streams)

    # The long poll answered at once, with nothing, rather than after 25 s.
    assert answered.status_code == 200
    assert answered.json()["events"] == []
    assert poll_took < 4, poll_took

    ends = []
    for lines, ended_at, error in results:
        assert error is None, f"a stream was cut instead of ended: {error}"
        assert ended_at is not None
        ends.append(ended_at)
        # Its last words: a retry hint, short and its own (spread 0.25-1.5 s),
        # so that its browser comes back soon, to another worker.
        retries = [
            int(m[1]) for m in map(re.compile(r"retry: (\d+)$").match, lines) if m
        ]
        assert len(retries) == 2, lines  # the prelude's, then the drain's
        assert retries[0] == 3000
        assert 250 <= retries[1] <= 1500
        # And the stream's cursor, though it was sent no notification: a
        # browser's EventSource then resumes from it, missing nothing
        # published while it reconnects.
        assert lines[-3:] == ["id: 0", f"retry: {retries[1]}", ""]
    # 31 subscriptions (30 streams and the poll) at 20 a second: about 1.5 s
    # from the first end to the last, not all in one instant.
    spread = max(ends) - min(ends)
    assert 1.0 <= spread <= 4.0, spread
    assert len({round(t, 1) for t in ends}) >= 10

    # Stopped as a stopped uvicorn stops: it raises the signal again once done.
    assert server.proc.wait(10) in (0, -signal.SIGTERM)
    assert server.said("stopping: ending 31 open streams, 20 a second")
    assert server.said("stopping: ended 31 streams in ")


async def test_with_a_drain_rate_of_0_streams_are_cut_when_the_grace_period_ends(
    workdir, server_env, tokens, stoppable
):
    server = UvicornServer(
        workdir, server_env | {"NOTIFY_DRAIN_RATE": "0"}, "not-draining", grace=2
    )
    stoppable.append(server)
    server.start()
    streams = await _open(server, tokens["alice"], 3)
    assert server.proc is not None
    stopped_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*streams)
    waited = time.monotonic() - stopped_at
    assert 1.5 <= waited <= 6, waited
    for lines, ended_at, error in results:
        assert ended_at is None and error is not None, lines
        assert [line for line in lines if line.startswith("retry: ")] == [
            "retry: 3000"
        ]  # the prelude's only
    proc = server.proc
    wait_for(lambda: proc.poll() is not None, 10, "uvicorn's exit")
    assert not server.said("stopping: ending")


class _Broker:
    """What drain() reads of a broker: its fanout."""

    def __init__(self) -> None:
        self.fanout = Fanout(None)


def _subscribe(broker: _Broker, n: int) -> Subscription:
    sub = Subscription([f"user:{n}", "all"], 8)
    broker.fanout.add(sub)
    return sub


async def test_the_drain_paces_its_ends_and_ends_streams_opened_meanwhile():
    broker = _Broker()
    subs = [_subscribe(broker, n) for n in range(20)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(drain(100, broker))  # type: ignore[arg-type]
    try:
        ended_at: dict[Subscription, float] = {}
        async with asyncio.timeout(5):
            while len(ended_at) < len(subs):
                for sub in subs:
                    if sub.ended and sub not in ended_at:
                        ended_at[sub] = loop.time()
                await asyncio.sleep(0.005)
        # 20 at 100 a second: the last about 0.19 s after the first.
        assert 0.1 <= max(ended_at.values()) - began <= 1.0
        for sub in subs:
            (message,) = sub.drain(8)
            assert message.control == "reconnect" and message.frame.startswith(
                b"retry: "
            )
        # One opened after the drain went through them all is ended too.
        late = _subscribe(broker, 99)
        async with asyncio.timeout(2):
            while True:
                if late.ended:
                    break
                await asyncio.sleep(0.01)
        # Ended ones are not ended again.
        assert all(not sub.drain(8) for sub in subs)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_full_queue_still_takes_its_end_and_the_stream_is_not_cut():
    owner = asyncio.create_task(asyncio.sleep(60))
    sub = Subscription(["all"], 2, owner=owner)
    live = [Message(i, ("all",), b"id: %d\n\n" % i) for i in (1, 2)]
    for message in live:
        sub.deliver(message)
    assert sub.full()
    end = reconnect_message(None)

    sub.end(end)

    assert sub.drain(8) == [*live, end]
    assert not sub.lagged and not owner.cancelled()
    sub.deliver(Message(3, ("all",), b"id: 3\n\n"))  # nothing after the end
    assert sub.drain(8) == ()
    owner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await owner
