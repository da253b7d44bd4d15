"""Resuming streams and long polls: nothing lost, nothing doubled.

Real uvicorn processes and a real redis-server; notifications are published
over HTTP with the admin's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, override_settings
from django.utils import timezone

from notify import retention, wire
from notify.models import Notification, RetentionMark
from notify.publishing import persist, send
from notify.validation import validate
from tests.support.servers import RedisServer, auth
from tests.support.sse import Event, events

CURSORS = ["Last-Event-ID", "last_event_id", "lastEventId"]
FAST = {"NOTIFY_PUBLISH_RATE": "100000/s"}


def cursor_args(via: str, cursor: int) -> dict[str, Any]:
    if via == "Last-Event-ID":
        return {"headers": {"Last-Event-ID": str(cursor)}}
    return {"params": {via: str(cursor)}}


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    base: str,
    token: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> AsyncIterator[AsyncIterator[Event]]:
    async with client.stream(
        "GET", base + "/events/", headers=auth(token) | (headers or {}), params=params
    ) as response:
        assert response.status_code == 200, await response.aread()
        reader = events(response)
        try:
            yield reader
        finally:
            await reader.aclose()  # type: ignore[attr-defined]


async def next_event(reader: AsyncIterator[Event], within: float = 10) -> Event:
    async with asyncio.timeout(within):
        return await anext(reader)


async def notifications(
    reader: AsyncIterator[Event], count: int, within: float = 10
) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(within):
        async for event in reader:
            if event.event == "notification":
                got.append(event)
                if len(got) == count:
                    break
    return got


async def publish(
    client: httpx.AsyncClient, base: str, token: str, **fields: Any
) -> dict[str, Any]:
    payload = {"audience": "all", "title": "hello"} | fields
    response = await client.post(
        base + "/api/notifications", json=payload, headers=auth(token)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def as_wire(created: dict[str, Any]) -> dict[str, Any]:
    """The wire JSON inside a publish response."""
    return {k: v for k, v in created.items() if k != "recipients"}


# Lossless resume across processes


async def _reconnecting_client(
    client: httpx.AsyncClient,
    bases: list[str],
    token: str,
    seed: int,
    cursor: int,
    published: list[int],
    done: asyncio.Event,
) -> list[int]:
    """Read, hang up at random, reconnect with the cursor; until the end."""
    rng = random.Random(seed)
    got: list[int] = []
    attempt = 0
    while not (done.is_set() and cursor == published[-1]):
        via = CURSORS[attempt % len(CURSORS)]
        base = bases[attempt % len(bases)]
        attempt += 1
        budget = rng.randint(0, 8)  # hang up after this many notifications
        async with stream(client, base, token, **cursor_args(via, cursor)) as reader:
            ready = await next_event(reader)
            assert ready.event == "ready"
            assert ready.json()["last_id"] >= cursor
            taken = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0.05, 0.6)):
                    async for event in reader:
                        if taken >= budget:
                            break
                        if event.event != "notification":
                            continue
                        number = int(event.id or 0)
                        assert event.json()["id"] == number
                        got.append(number)
                        cursor = number
                        taken += 1
    return got


async def test_reconnecting_clients_on_two_servers_get_every_notification_once_in_order(
    start_server, redis_url, tokens
):
    one = start_server("one", REDIS_URL=redis_url, **FAST)
    two = start_server("two", REDIS_URL=redis_url, **FAST)
    bases = [one.url, two.url]
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        start = await publish(client, one.url, tokens["admin"], title="before")
        published: list[int] = [start["id"]]
        done = asyncio.Event()
        readers = [
            asyncio.create_task(
                _reconnecting_client(
                    client,
                    bases[i % 2 :] + bases[: i % 2],
                    tokens[name],
                    seed=i,
                    cursor=start["id"],
                    published=published,
                    done=done,
                )
            )
            for i, name in enumerate(["alice", "bob", "carol", "admin"])
        ]
        rng = random.Random(7)
        async with asyncio.timeout(50):
            for i in range(150):
                created = await publish(
                    client, bases[i % 2], tokens["admin"], title=f"n{i}"
                )
                published.append(created["id"])
                await asyncio.sleep(rng.uniform(0, 0.01))
            done.set()
            results = await asyncio.gather(*readers)
    expected = published[1:]
    assert expected == sorted(set(expected))
    for name, got in zip(["alice", "bob", "carol", "admin"], results, strict=True):
        assert got == expected, name


@pytest.mark.parametrize("via", CURSORS)
async def test_a_notification_published_while_disconnected_is_replayed(
    start_server, redis_url, tokens, via
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    async with httpx.AsyncClient(timeout=10) as client:
        first = await publish(client, one.url, tokens["admin"], title="seen")
        async with stream(client, one.url, tokens["alice"]) as reader:
            ready = await next_event(reader)
            assert ready.json()["last_id"] == first["id"]
        missed = [
            await publish(client, one.url, tokens["admin"], title=f"missed {i}")
            for i in range(3)
        ]
        kwargs = cursor_args(via, first["id"])
        async with stream(client, two.url, tokens["alice"], **kwargs) as reader:
            assert (await next_event(reader)).event == "ready"
            replayed = await notifications(reader, 3)
            live = await publish(client, one.url, tokens["admin"], title="live")
            [after] = await notifications(reader, 1)
    assert [int(e.id or 0) for e in replayed] == [m["id"] for m in missed]
    assert [e.json() for e in replayed] == [as_wire(m) for m in missed]
    assert after.json()["id"] == live["id"]


async def test_the_last_event_id_header_wins_over_the_query_string(
    start_server, tokens
):
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        a, b = [await publish(client, server.url, tokens["admin"]) for _ in range(2)]
        async with stream(
            client,
            server.url,
            tokens["alice"],
            headers={"Last-Event-ID": str(a["id"])},
            params={"lastEventId": "0"},
        ) as reader:
            await next_event(reader)
            [replayed] = await notifications(reader, 1)
    assert replayed.json()["id"] == b["id"]


async def test_without_a_cursor_nothing_is_replayed_and_ready_names_the_newest_visible_id(
    start_server, tokens
):
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        mine = await publish(client, server.url, tokens["admin"], title="for all")
        await publish(client, server.url, tokens["admin"], audience={"users": ["bob"]})
        async with stream(client, server.url, tokens["alice"]) as reader:
            ready = await next_event(reader)
            assert ready.event == "ready"
            assert ready.json() == {"last_id": mine["id"], "heartbeat": 2}
            live = await publish(client, server.url, tokens["admin"], title="live")
            [first] = await notifications(reader, 1)
    assert first.json()["id"] == live["id"]


async def test_ready_is_zero_when_the_user_sees_nothing(start_server, tokens):
    server = start_server()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        stream(client, server.url, tokens["carol"]) as reader,
    ):
        assert (await next_event(reader)).json()["last_id"] == 0


async def test_a_cursor_beyond_the_newest_id_is_reset_and_the_stream_goes_on(
    start_server, tokens
):
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        newest = await publish(client, server.url, tokens["admin"])
        cursor = newest["id"] + 1000
        async with stream(
            client, server.url, tokens["alice"], params={"last_event_id": str(cursor)}
        ) as reader:
            reset = await next_event(reader)
            ready = await next_event(reader)
            later = await publish(client, server.url, tokens["admin"])
            live = await next_event(reader)
    assert (reset.event, reset.json()) == ("reset", {"reason": "cursor-ahead"})
    assert ready.event == "ready"
    assert ready.json()["last_id"] == newest["id"]
    assert (live.event, live.id) == ("notification", str(later["id"]))


# Retention


def _backdated(count: int, days: int) -> list[int]:
    ids = []
    for i in range(count):
        n = persist(validate({"audience": "all", "title": f"old {i}"})).notification
        Notification.objects.filter(pk=n.pk).update(
            created_at=timezone.now() - timedelta(days=days)
        )
        ids.append(n.id)
    return ids


@pytest.fixture
def pruned(users: Any) -> tuple[list[int], list[int]]:
    """Three notifications pruned by retention, then two retained ones."""
    old = _backdated(3, days=40)
    recent = _backdated(2, days=1)
    with override_settings(NOTIFY_RETENTION_DAYS=30):
        assert retention.prune() == 3
    assert RetentionMark.objects.get().pruned_through == old[-1]
    return old, recent


async def test_a_cursor_older_than_retention_gets_reset_then_the_retained_backlog(
    start_server, tokens, pruned
):
    old, recent = pruned
    server = start_server()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        stream(
            client, server.url, tokens["bob"], headers={"Last-Event-ID": str(old[0])}
        ) as reader,
    ):
        reset = await next_event(reader)
        assert reset.event == "reset"
        assert reset.id is None
        assert reset.json() == {"reason": "cursor-expired"}
        backlog = await notifications(reader, 2)
    assert [int(e.id or 0) for e in backlog] == recent


async def test_a_cursor_at_the_retention_mark_is_not_reset(
    start_server, tokens, pruned
):
    old, recent = pruned
    server = start_server()
    async with (
        httpx.AsyncClient(timeout=10) as client,
        stream(
            client, server.url, tokens["bob"], params={"lastEventId": str(old[-1])}
        ) as reader,
    ):
        first = await next_event(reader)
        assert first.event == "ready"
        backlog = await notifications(reader, 2)
    assert [int(e.id or 0) for e in backlog] == recent


# Expiry


async def _wait_past(expires_at: str) -> None:
    left = datetime.fromisoformat(expires_at) - timezone.now()
    assert left < timedelta(seconds=10)
    await asyncio.sleep(max(left.total_seconds(), 0) + 0.1)


async def test_an_expired_notification_is_never_streamed_replayed_polled_listed_or_counted(
    start_server, redis_url, tokens
):
    server = start_server(REDIS_URL=redis_url)
    # At least 4 s ahead (whole seconds): three publishes and a listing fit
    # in it on a busy CI machine, where 1-2 s did not always.
    soon = (timezone.now() + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with httpx.AsyncClient(timeout=10, headers=auth(tokens["alice"])) as client:
        before = await publish(client, server.url, tokens["admin"], title="first")
        fleeting = await publish(
            client, server.url, tokens["admin"], title="fleeting", expires_at=soon
        )
        lasting = await publish(client, server.url, tokens["admin"], title="lasting")
        listed = (await client.get(server.url + "/api/notifications")).json()
        assert fleeting["id"] in [n["id"] for n in listed["results"]]
        assert listed["unread_count"] == 3
        await _wait_past(fleeting["expires_at"])

        poll = await client.get(
            server.url + "/events/poll", params={"after": before["id"], "timeout": 0}
        )
        assert [e["id"] for e in poll.json()["events"]] == [lasting["id"]]
        listed = (await client.get(server.url + "/api/notifications")).json()
        assert [n["id"] for n in listed["results"]] == [lasting["id"], before["id"]]
        assert listed["unread_count"] == 2
        unread = await client.get(
            server.url + "/api/notifications", params={"unread": "1"}
        )
        assert fleeting["id"] not in [n["id"] for n in unread.json()["results"]]

        kwargs = cursor_args("Last-Event-ID", before["id"])
        async with stream(client, server.url, tokens["alice"], **kwargs) as reader:
            assert (await next_event(reader)).event == "ready"
            [replayed] = await notifications(reader, 1)
            assert replayed.json()["id"] == lasting["id"]
            # A late copy of an expired notification reaching the live stream
            # (say, held up in transit) is dropped there too.
            late = await _expired_row()
            await _broadcast(late, redis_url)
            after = await publish(client, server.url, tokens["admin"], title="after")
            [live] = await notifications(reader, 1)
            assert live.json()["id"] == after["id"]


@sync_to_async
def _expired_row() -> Notification:
    n = persist(validate({"audience": "all", "title": "stale"})).notification
    n.expires_at = timezone.now() - timedelta(seconds=5)
    n.save(update_fields=["expires_at"])
    return n


async def _broadcast(n: Notification, redis_url: str) -> None:
    config = {
        "BACKEND": "notify.broker.redis.RedisBroker",
        "OPTIONS": {"url": redis_url, "prefix": "notify:"},
    }
    with override_settings(NOTIFY_BROKER=config):
        assert await send(wire.message(n, [], []))


# Redis outages


async def test_a_notification_published_while_redis_is_down_reaches_the_open_stream(
    start_server, workdir, tokens
):
    redis_server = RedisServer(workdir)
    redis_server.start()
    try:
        server = start_server(REDIS_URL=redis_server.url)
        async with (
            httpx.AsyncClient(timeout=10) as client,
            stream(client, server.url, tokens["alice"]) as reader,
        ):
            assert (await next_event(reader)).event == "ready"
            await asyncio.to_thread(redis_server.stop)
            during = await publish(client, server.url, tokens["admin"], title="down")
            await asyncio.to_thread(redis_server.start)
            [recovered] = await notifications(reader, 1, within=30)
            assert recovered.json()["id"] == during["id"]
            later = await publish(client, server.url, tokens["admin"], title="up")
            [live] = await notifications(reader, 1)
            assert live.json()["id"] == later["id"]
    finally:
        redis_server.stop()


# Long poll


async def test_poll_returns_at_once_when_newer_notifications_exist(
    start_server, tokens
):
    server = start_server()
    async with httpx.AsyncClient(timeout=10, headers=auth(tokens["alice"])) as client:
        a = await publish(client, server.url, tokens["admin"], title="a")
        b = await publish(client, server.url, tokens["admin"], title="b")
        async with asyncio.timeout(8):  # far below the 55 s asked for
            response = await client.get(
                server.url + "/events/poll",
                params={"after": a["id"] - 1, "timeout": 55},
            )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    got = response.json()
    expected = [as_wire(n) for n in (a, b)]
    assert got == {
        "events": [
            {"id": n["id"], "event": "notification", "data": n} for n in expected
        ],
        "last_id": b["id"],
    }


async def test_poll_waits_and_returns_what_is_published_meanwhile(
    start_server, redis_url, tokens
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    async with httpx.AsyncClient(timeout=40, headers=auth(tokens["bob"])) as client:
        a = await publish(client, one.url, tokens["admin"])
        waiting = asyncio.create_task(
            client.get(
                two.url + "/events/poll", params={"after": a["id"], "timeout": 30}
            )
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        b = await publish(client, one.url, tokens["admin"], title="meanwhile")
        async with asyncio.timeout(10):
            response = await waiting
    got = response.json()
    assert [e["id"] for e in got["events"]] == [b["id"]]
    assert got["last_id"] == b["id"]


async def test_poll_returns_nothing_after_its_timeout(start_server, tokens):
    server = start_server()
    async with httpx.AsyncClient(timeout=10, headers=auth(tokens["alice"])) as client:
        a = await publish(client, server.url, tokens["admin"])
        after = await client.get(
            server.url + "/events/poll", params={"after": a["id"], "timeout": "0.5"}
        )
        fresh = await client.get(server.url + "/events/poll", params={"timeout": "0.2"})
    assert after.json() == {"events": [], "last_id": a["id"]}
    assert fresh.json() == {"events": [], "last_id": a["id"]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("after", "abc"),
        ("after", "-1"),
        ("after", "1.5"),
        ("after", str(2**64)),
        ("timeout", "abc"),
        ("timeout", "-1"),
        ("timeout", "55.5"),
        ("timeout", "56"),
        ("timeout", "nan"),
        ("timeout", "inf"),
    ],
)
async def test_poll_rejects_a_bad_after_or_timeout_naming_it(tokens, field, value):
    client = AsyncClient()
    response = await client.get(
        "/events/poll", {field: value}, headers=auth(tokens["alice"])
    )
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", str(2**64)])
async def test_stream_rejects_a_bad_cursor_naming_it(tokens, value):
    for header, query, name in [
        ({"Last-Event-ID": value}, {}, "Last-Event-ID"),
        ({}, {"last_event_id": value}, "last_event_id"),
        ({}, {"lastEventId": value}, "lastEventId"),
    ]:
        response = await AsyncClient().get(
            "/events/", query, headers=auth(tokens["alice"]) | header
        )
        assert response.status_code == 400
        assert list(response.json()["errors"]) == [name]
