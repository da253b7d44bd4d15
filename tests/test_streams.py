"""The event stream itself: prelude, framing, heartbeat, cleanup, slow clients.

In-process tests drive ``project.asgi.application`` through
``ApplicationCommunicator`` (the only way to watch the generator clean up after
``http.disconnect``); the heartbeat and slow-client tests run a real uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from notify import metrics, sse, streams, wire
from notify.access import reconnect_message
from notify.broker import get_broker
from notify.inbox import amark_read
from notify.models import Notification
from notify.publishing import apublish, persist
from notify.replay import areplay_batch
from notify.validation import validate
from project.asgi import application
from tests.support.asgi import ApplicationCommunicator, http_scope
from tests.support.metrics import scrape
from tests.support.servers import auth
from tests.support.sse import Event, events

WAIT = 10.0


pytestmark = pytest.mark.usefixtures("fast_password_hashing", "close_broker")


# -- in process ---------------------------------------------------------------


@dataclass
class Stream:
    """One GET /events/ through the ASGI application."""

    communicator: Any
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    _buffer: bytes = b""

    async def chunk(self) -> bytes:
        message = await self.communicator.receive_output(timeout=WAIT)
        assert message["type"] == "http.response.body", message
        assert message.get("more_body"), "the stream ended"
        body: bytes = message["body"]
        self.chunks.append(body)
        return body

    async def prelude(self) -> bytes:
        """The padding comment and the retry hint that open the stream; the
        events sent in the same write are left for :meth:`blocks`."""
        first = await self.chunk()
        end = first.index(b"\n\n", first.index(b"retry: ")) + 2
        self._buffer += first[end:]
        return first[:end]

    async def blocks(self, count: int) -> list[str]:
        """The next ``count`` event blocks (text between blank lines)."""
        found: list[str] = []
        while True:
            while b"\n\n" in self._buffer and len(found) < count:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                found.append(block.decode())
            if len(found) == count:
                return found
            self._buffer += await self.chunk()


@contextlib.asynccontextmanager
async def open_stream(token: str) -> AsyncIterator[Stream]:
    """Start a stream; on exit disconnect and wait for the application."""
    scope = http_scope("GET", "/events/", token, accept="text/event-stream")
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    stream = Stream(communicator)
    try:
        start = await communicator.receive_output(timeout=WAIT)
        assert start["type"] == "http.response.start", start
        stream.status = start["status"]
        stream.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        yield stream
    finally:
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=WAIT)


def _ready(last_id: int, heartbeat: int = 15) -> str:
    return f'event: ready\ndata: {{"last_id":{last_id},"heartbeat":{heartbeat}}}'


async def test_stream_headers_and_prelude(tokens):
    async with open_stream(tokens["alice"]) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-cache, no-store, no-transform"
        assert stream.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in stream.headers
        # The prelude and ready go out together: one write, not two.
        assert await stream.chunk() == (
            sse.padding(2048) + b"retry: 3000\n\n" + _ready(0).encode() + b"\n\n"
        )


@pytest.mark.parametrize("padding", [0, 1, 64, 4096])
async def test_padding_setting_sizes_the_first_comment(tokens, settings, padding):
    settings.NOTIFY_PADDING_BYTES = padding
    settings.NOTIFY_RETRY_MS = 1500
    async with open_stream(tokens["alice"]) as stream:
        first = await stream.prelude()
    assert first == sse.padding(padding) + b"retry: 1500\n\n"
    assert len(first) == padding + len(b"retry: 1500\n\n")


async def test_ready_names_the_newest_notification_the_user_can_see(tokens, users):
    everyone = await apublish(title="for all")
    await apublish(title="for bob", audience={"users": ["bob"]})
    async with open_stream(tokens["alice"]) as stream:
        await stream.prelude()
        assert await stream.blocks(1) == [_ready(everyone.id)]


async def test_live_notifications_are_framed_with_their_id_in_order(tokens, users):
    async with open_stream(tokens["alice"]) as stream:
        await stream.prelude()
        await stream.blocks(1)
        published = [
            await apublish(title=f"n{i}", body="line one\r\nline two\n\ndata: x")
            for i in range(3)
        ]
        blocks = await stream.blocks(3)
    notes = await asyncio.gather(
        *(Notification.objects.aget(pk=n.pk) for n in published)
    )
    assert [b.encode() + b"\n\n" for b in blocks] == [wire.frame(n) for n in notes]


async def test_read_state_changes_are_events_without_an_id(tokens, users):
    alice: User = users["alice"]
    async with open_stream(tokens["alice"]) as stream:
        await stream.prelude()
        await stream.blocks(1)
        note = await apublish(title="read me")
        (framed,) = await stream.blocks(1)
        assert framed.startswith(f"id: {note.id}\nevent: notification\n")
        assert await amark_read(alice.pk, note.id)
        assert await stream.blocks(1) == [f'event: read\ndata: {{"ids":[{note.id}]}}']


@pytest.mark.parametrize("when", ["before_ready", "after_ready", "after_events"])
async def test_disconnect_releases_the_subscription(tokens, users, when):
    open_before = metrics.OPEN_STREAMS.value
    async with open_stream(tokens["bob"]) as stream:
        await stream.prelude()
        if when != "before_ready":
            assert await stream.blocks(1) == [_ready(0)]
            assert len(get_broker().fanout.subscriptions) == 1
            assert metrics.OPEN_STREAMS.value == open_before + 1
        if when == "after_events":
            await apublish(title="one")
            await apublish(title="two", audience={"groups": ["ops"]})
            assert len(await stream.blocks(2)) == 2
    # open_stream sent http.disconnect and the application has returned.
    broker = get_broker()
    assert broker.fanout.subscriptions == set()
    assert broker.fanout.channels() == set()
    assert metrics.OPEN_STREAMS.value == open_before


async def test_streams_are_released_independently(tokens, users):
    async with open_stream(tokens["alice"]) as alice:
        await alice.prelude()
        await alice.blocks(1)
        async with open_stream(tokens["bob"]) as bob:
            await bob.prelude()
            await bob.blocks(1)
            assert len(get_broker().fanout.subscriptions) == 2
        assert len(get_broker().fanout.subscriptions) == 1
        note = await apublish(title="still here")
        (framed,) = await alice.blocks(1)
        assert framed.startswith(f"id: {note.id}\n")
    assert get_broker().fanout.subscriptions == set()


# -- real uvicorn -------------------------------------------------------------


async def _next_event(reader: AsyncIterator[Event]) -> Event:
    async with asyncio.timeout(WAIT):
        return await anext(reader)


async def test_heartbeat_comment_arrives_when_idle(start_server, tokens):
    server = start_server(NOTIFY_HEARTBEAT_SECONDS="1")
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        client.stream(
            "GET", server.url + "/events/", headers=auth(tokens["alice"])
        ) as response,
    ):
        lines = response.aiter_lines()
        seen: list[str] = []
        async with asyncio.timeout(WAIT):
            while len([line for line in seen if line == ": ping"]) < 2:
                seen.append(await anext(lines))
        await lines.aclose()  # type: ignore[attr-defined]
    assert seen[:3] == ["retry: 3000", "", "event: ready"]
    assert json.loads(seen[3].removeprefix("data: ")) == {"last_id": 0, "heartbeat": 1}
    # Only pings (and the blank lines ending them) after the ready event.
    assert set(seen[5:]) == {": ping", ""}


# The slow client: a raw socket with a tiny receive buffer that reads its first
# bytes and then stops reading, so the server's writes back up and its queue
# overflows while a normal client keeps up.


def _open_slow_stream(port: int, token: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            b"GET /events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: text/event-stream\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        received = b""
        while b"event: ready" not in received:
            chunk = sock.recv(1024)
            if not chunk:
                raise AssertionError(f"closed before ready: {received!r}")
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received
    except BaseException:
        sock.close()
        raise
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> bool:
    """Drain the socket; True once the server has closed it."""
    deadline = time.monotonic() + timeout
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            continue
    return False


async def _collect(
    client: httpx.AsyncClient, url: str, token: str, ready: asyncio.Event
) -> list[Event]:
    """Every notification on one stream until the "last" one arrives."""
    got: list[Event] = []
    async with client.stream("GET", url + "/events/", headers=auth(token)) as response:
        assert response.status_code == 200
        reader = events(response)
        try:
            assert (await _next_event(reader)).event == "ready"
            ready.set()
            async for event in reader:
                if event.event == "notification":
                    got.append(event)
                    if event.json()["title"] == "last":
                        return got
        finally:
            await reader.aclose()  # type: ignore[attr-defined]
    raise AssertionError("the normal stream ended early")


async def test_slow_client_is_disconnected_while_others_get_everything(
    start_server, tokens
):
    server = start_server(NOTIFY_QUEUE_SIZE="8", NOTIFY_PUBLISH_RATE="100000/s")
    # Near the size limits (multi-byte text), so that few notifications fill
    # the socket buffers; the loopback send buffer alone can hold MiBs.
    body = "€" * 4000
    data = {"blob": "y" * 15000}
    slow = await asyncio.to_thread(_open_slow_stream, server.port, tokens["bob"])
    try:
        async with httpx.AsyncClient(timeout=WAIT) as client:
            ready = asyncio.Event()
            normal = asyncio.create_task(
                _collect(client, server.url, tokens["alice"], ready)
            )
            async with asyncio.timeout(WAIT):
                await ready.wait()

            async def publish(title: str) -> int:
                response = await client.post(
                    server.url + "/api/notifications",
                    json={
                        "audience": "all",
                        "title": title,
                        "body": body,
                        "data": data,
                    },
                    headers=auth(tokens["admin"]),
                )
                assert response.status_code == 201, response.text
                return int(response.json()["id"])

            # Publish until the server gives up on the slow client (bounded:
            # some 16 MiB at most, far more than the socket buffers hold).
            published: list[int] = []
            disconnects = 0
            while disconnects == 0:
                assert len(published) < 600, "the slow client was never dropped"
                for i in range(20):
                    published.append(await publish(f"n{len(published) + i}"))
                scraped = await scrape(client, server.url, tokens["admin"])
                disconnects = int(scraped["notify_slow_client_disconnects_total"])
            published.append(await publish("last"))

            async with asyncio.timeout(30):
                got = await normal
        assert disconnects >= 1
        assert [int(e.id or 0) for e in got] == published
        assert [e.json()["id"] for e in got] == published
        assert all(e.json()["body"] == body for e in got)
        assert all(e.json()["data"] == data for e in got)

        # The server closed the slow connection: once its buffers drain, the
        # reader sees the end (or a reset) instead of waiting forever.
        assert await asyncio.to_thread(_read_until_closed, slow, 30)
    finally:
        slow.close()


async def test_openings_past_the_backlog_are_refused_at_once(tokens, settings):
    """A reconnect storm past NOTIFY_OPEN_BACKLOG gets a cheap JSON 503 with
    Retry-After; the opening already admitted streams as usual."""
    settings.NOTIFY_OPEN_BACKLOG = 1
    first, second = (
        ApplicationCommunicator(application, http_scope("GET", "/events/", tokens[u]))
        for u in ("alice", "bob")
    )
    await first.send_input({"type": "http.request", "body": b""})
    await second.send_input({"type": "http.request", "body": b""})
    refused = await second.receive_output(timeout=WAIT)
    assert refused["status"] == 503
    headers = dict(refused["headers"])
    assert 2 <= int(headers[b"Retry-After"]) <= 8
    body = await second.receive_output(timeout=WAIT)
    assert json.loads(body["body"]) == {"error": "too many streams opening; retry"}
    admitted = await first.receive_output(timeout=WAIT)
    assert admitted["status"] == 200
    first.future.cancel()
    await first.wait(timeout=WAIT)
    await second.wait(timeout=WAIT)


async def test_a_stream_ended_while_replaying_sends_no_live_id_past_the_replay(
    tokens, users, settings, monkeypatch
):
    """A stopping server ends a stream between two batches of its replay,
    with a newer notification queued live: the stream's last id is what it
    replayed, so the reconnect still gets the rows the replay never sent.
    The first batch comes with the opening; the stream reads the second."""
    settings.NOTIFY_REPLAY_BATCH = 1
    older = [await apublish(title=f"older {i}") for i in range(3)]
    replay = areplay_batch
    calls: list[int] = []

    async def first_batch_then_stop(user_id: int, after: int, limit: int) -> Any:
        rows = await replay(user_id, after, limit)
        calls.append(after)
        if len(calls) == 1:
            published = await sync_to_async(persist)(
                validate({"audience": "all", "title": "live"})
            )
            (sub,) = get_broker().fanout.subscriptions
            sub.deliver(published.message)  # as the fanout would, meanwhile
            sub.end(reconnect_message(None))  # as draining.drain() does
        return rows

    monkeypatch.setattr(streams, "areplay_batch", first_batch_then_stop)
    scope = http_scope(
        "GET", "/events/", tokens["alice"], accept="text/event-stream",
        last_event_id="0",
    )  # fmt: skip
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    body = b""
    while True:
        message = await communicator.receive_output(timeout=WAIT)
        body += message.get("body", b"")
        if message["type"] == "http.response.body" and not message.get("more_body"):
            break
    await communicator.wait(timeout=WAIT)
    ids = re.findall(rb"^id: (\d+)$", body, re.M)
    # Two rows, then the cursor at the second: not the live one's id (4).
    first, second = (str(n.id).encode() for n in older[:2])
    assert calls == [older[0].id]
    assert ids == [first, second, second], body
    assert re.search(rb"id: %d\nretry: \d+\n\n$" % older[1].id, body), body


async def test_a_cursor_of_thousands_of_digits_is_a_400_naming_it(tokens):
    scope = http_scope("GET", "/events/", tokens["bob"], last_event_id="9" * 5000)
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=WAIT)
    assert start["status"] == 400
    answer = await communicator.receive_output(timeout=WAIT)
    assert "Last-Event-ID" in json.loads(answer["body"])["errors"]
    await communicator.wait(timeout=WAIT)
