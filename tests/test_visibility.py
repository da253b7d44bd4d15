"""Who sees what: a notification reaches only the users it is addressed to,
over every transport, and read-state changes reach only their owner.

Real uvicorn processes and a real redis-server; notifications are published
over HTTP with the admin's token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import AsyncClient

from tests.support.servers import auth
from tests.support.sse import Event, events

WHO = ["admin", "alice", "bob", "carol"]


@pytest.fixture
def members(users: dict[str, User]) -> dict[str, User]:
    """bob is in ops (from the users fixture); carol joins sales."""
    users["carol"].groups.add(Group.objects.get(name="sales"))
    return users


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    base: str,
    *,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> AsyncIterator[AsyncIterator[Event]]:
    async with client.stream(
        "GET", base + "/events/", headers=headers, params=params
    ) as response:
        assert response.status_code == 200, await response.aread()
        reader = events(response)
        try:
            ready = await until(reader, lambda e: True)
            assert [e.event for e in ready] == ["ready"]
            yield reader
        finally:
            await reader.aclose()  # type: ignore[attr-defined]


async def until(
    reader: AsyncIterator[Event], stop: Callable[[Event], bool], within: float = 10
) -> list[Event]:
    """Every event up to and including the first one ``stop`` accepts."""
    seen: list[Event] = []
    async with asyncio.timeout(within):
        async for event in reader:
            seen.append(event)
            if stop(event):
                return seen
    raise AssertionError(f"stream ended after {seen}")


def ids(seen: list[Event]) -> list[int]:
    return [e.json()["id"] for e in seen if e.event == "notification"]


async def publish(
    client: httpx.AsyncClient, base: str, token: str, audience: Any, title: str
) -> int:
    response = await client.post(
        base + "/api/notifications",
        json={"audience": audience, "title": title},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text
    created: int = response.json()["id"]
    return created


async def publish_mix(
    client: httpx.AsyncClient, base: str, token: str
) -> dict[str, list[int]]:
    """Publish one notification per kind of audience; return, per user, the
    ids addressed to them, in order (the last one, to all, ends each list)."""
    audiences: list[tuple[Any, set[str]]] = [
        ("all", set(WHO)),
        ({"users": ["alice"]}, {"alice"}),
        ({"groups": ["ops"]}, {"bob"}),
        ({"users": ["carol", "bob"]}, {"bob", "carol"}),
        ({"groups": ["sales"]}, {"carol"}),
        ({"groups": ["ops", "sales"]}, {"bob", "carol"}),
        ({"users": ["admin"]}, {"admin"}),
        ("all", set(WHO)),
    ]
    expected: dict[str, list[int]] = {name: [] for name in WHO}
    for i, (audience, readers) in enumerate(audiences):
        created = await publish(client, base, token, audience, f"#{i}")
        for name in readers:
            expected[name].append(created)
    return expected


async def test_live_streams_get_only_notifications_addressed_to_their_user(
    start_server, redis_url, tokens, members
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    where = {"admin": two, "alice": one, "bob": two, "carol": one}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        readers = {
            name: await stack.enter_async_context(
                stream(client, where[name].url, headers=auth(tokens[name]))
            )
            for name in WHO
        }
        expected = await publish_mix(client, one.url, tokens["admin"])
        last = expected["admin"][-1]
        for name, reader in readers.items():
            seen = await until(reader, lambda e: e.id == str(last))
            assert ids(seen) == expected[name], name


async def test_replay_poll_and_inbox_show_only_notifications_addressed_to_the_user(
    start_server, tokens, members
):
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        before = await publish(client, server.url, tokens["admin"], "all", "before")
        expected = await publish_mix(client, server.url, tokens["admin"])
        last = expected["admin"][-1]
        for name in WHO:
            headers = auth(tokens[name])
            async with stream(
                client, server.url, headers=headers, params={"lastEventId": str(before)}
            ) as reader:
                replayed = await until(reader, lambda e: e.id == str(last))
            assert ids(replayed) == expected[name], name

            poll = await client.get(
                server.url + "/events/poll",
                params={"after": before, "timeout": 0},
                headers=headers,
            )
            assert [e["id"] for e in poll.json()["events"]] == expected[name], name

            inbox = await client.get(server.url + "/api/notifications", headers=headers)
            listed = inbox.json()
            assert [n["id"] for n in listed["results"]] == [
                *expected[name][::-1],
                before,
            ], name
            assert listed["unread_count"] == len(expected[name]) + 1, name


async def test_a_waiting_poll_ignores_notifications_for_others(
    start_server, redis_url, tokens, members
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    async with httpx.AsyncClient(timeout=30) as client:
        start = await publish(client, one.url, tokens["admin"], "all", "start")
        waiting = asyncio.create_task(
            client.get(
                two.url + "/events/poll",
                params={"after": start, "timeout": 20},
                headers=auth(tokens["alice"]),
            )
        )
        await publish(client, one.url, tokens["admin"], {"users": ["bob"]}, "bob's")
        await publish(client, one.url, tokens["admin"], {"groups": ["ops"]}, "ops")
        mine = await publish(
            client, one.url, tokens["admin"], {"users": ["alice"]}, "a"
        )
        async with asyncio.timeout(15):
            response = await waiting
    assert [e["id"] for e in response.json()["events"]] == [mine]


def _read_events(seen: list[Event]) -> list[Any]:
    return [e.json() for e in seen if e.event == "read"]


async def test_read_events_reach_only_their_owner(
    start_server, redis_url, tokens, members
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        expected = await publish_mix(client, one.url, tokens["admin"])
        alice = await stack.enter_async_context(
            stream(client, one.url, headers=auth(tokens["alice"]))
        )
        bob = await stack.enter_async_context(
            stream(client, two.url, headers=auth(tokens["bob"]))
        )
        api = "/api/notifications"

        # Bob's changes first: if they leaked, alice would see them before hers.
        bobs = expected["bob"][1]
        response = await client.post(
            f"{one.url}{api}/{bobs}/read", headers=auth(tokens["bob"])
        )
        assert response.status_code == 204
        seen = await until(bob, lambda e: e.event == "read")
        assert _read_events(seen) == [{"ids": [bobs]}]
        assert seen[-1].id is None
        response = await client.post(
            f"{two.url}{api}/read-all", headers=auth(tokens["bob"])
        )
        assert response.status_code == 204
        seen = await until(bob, lambda e: e.event == "read")
        assert _read_events(seen) == [{"all": True, "up_to": expected["bob"][-1]}]

        # Alice cannot mark bob's notification read, and hears nothing of it.
        response = await client.post(
            f"{two.url}{api}/{bobs}/read", headers=auth(tokens["alice"])
        )
        assert response.status_code == 404
        alices = expected["alice"][1]
        response = await client.post(
            f"{two.url}{api}/{alices}/read", headers=auth(tokens["alice"])
        )
        assert response.status_code == 204
        seen = await until(alice, lambda e: e.event == "read")
        assert _read_events(seen) == [{"ids": [alices]}]

        # Bob's stream saw nothing of alice's.
        response = await client.post(
            f"{one.url}{api}/read-all", headers=auth(tokens["bob"])
        )
        seen = await until(bob, lambda e: e.event == "read")
        assert _read_events(seen) == [{"all": True, "up_to": expected["bob"][-1]}]


async def _session_cookie(user: User) -> str:
    client = AsyncClient()
    await client.aforce_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def test_read_events_reach_every_open_stream_of_the_user_in_every_process(
    start_server, redis_url, tokens, members
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    session = {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={await _session_cookie(members['alice'])}"
    }
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        expected = await publish_mix(client, one.url, tokens["admin"])
        streams = [
            await stack.enter_async_context(stream(client, base, headers=headers))
            for base, headers in [
                (one.url, auth(tokens["alice"])),
                (one.url, session),
                (two.url, auth(tokens["alice"])),
                (two.url, session),
            ]
        ]
        target = expected["alice"][0]
        response = await client.post(
            f"{two.url}/api/notifications/{target}/read", headers=auth(tokens["alice"])
        )
        assert response.status_code == 204
        for reader in streams:
            seen = await until(reader, lambda e: e.event == "read")
            assert _read_events(seen) == [{"ids": [target]}]

        response = await client.post(
            f"{one.url}/api/notifications/read-all", headers=auth(tokens["alice"])
        )
        assert response.status_code == 204
        for reader in streams:
            seen = await until(reader, lambda e: e.event == "read")
            assert _read_events(seen) == [{"all": True, "up_to": expected["alice"][-1]}]
