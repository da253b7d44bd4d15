"""End to end: real uvicorn servers, real Redis, a publisher in another process."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from tests.support.servers import (
    RedisServer,
    UvicornServer,
    auth,
    manage,
    slot_counts,
    wait_for,
)
from tests.support.sse import Event, events


async def _collect(
    url: str, token: str, until: int, seen: list[Event], ready: asyncio.Event
) -> None:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url + "/events/", headers=auth(token)) as response,
    ):
        assert response.status_code == 200
        async for event in events(response):
            seen.append(event)
            if event.event == "ready":
                ready.set()
            if event.event == "notification" and event.json()["id"] >= until:
                return


async def test_cross_process_delivery_reaches_every_client_once(
    start_server, redis_url, tokens, server_env, django_db_reset_sequences
):
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    seen: dict[str, list[Event]] = {"alice@one": [], "bob@two": [], "carol@two": []}
    where = {"alice@one": one, "bob@two": two, "carol@two": two}
    ready = {who: asyncio.Event() for who in seen}
    readers = [
        asyncio.create_task(
            _collect(server.url, tokens[who.split("@")[0]], 1, seen[who], ready[who])
        )
        for who, server in where.items()
    ]
    async with asyncio.timeout(10):
        await asyncio.gather(*(event.wait() for event in ready.values()))

    env = server_env | {"REDIS_URL": redis_url}
    output = await asyncio.to_thread(
        manage, env, "notify_send", "--all", "--title", "Deploy at 5"
    )
    assert output.strip() == "1"

    async with asyncio.timeout(10):
        await asyncio.gather(*readers)
    for who, got in seen.items():
        notes = [e for e in got if e.event == "notification"]
        assert [e.json()["title"] for e in notes] == ["Deploy at 5"], who
        assert [e.id for e in notes] == ["1"], who


@pytest.mark.django_db(transaction=True)
async def test_a_gap_of_thousands_with_orphan_rows_reaches_open_streams_in_full():
    """Catching up reads the gap in batches; notifications whose addressees
    were all deleted are mixed in and must not end it early."""
    from notify.broker import Subscription
    from notify.broker.base import Fanout
    from notify.history import DatabaseHistory
    from notify.models import Audience, Notification

    def make() -> tuple[int, list[int]]:
        alice = User.objects.create_user("gap-alice")
        rows = Notification.objects.bulk_create(
            Notification(
                title=f"n{i}", audience=Audience.USER if i % 7 else Audience.ALL
            )
            for i in range(3000)
        )
        # Every third user-addressed row keeps alice; the others address
        # nobody any more, as if their users had been deleted.
        mine = [n for i, n in enumerate(rows) if i % 7 == 0 or i % 3 == 0]
        through = Notification.users.through
        through.objects.bulk_create(
            through(notification_id=n.id, user_id=alice.pk)
            for i, n in enumerate(rows)
            if i % 7 and i % 3 == 0
        )
        return alice.pk, [n.id for n in mine]

    alice_id, expected = await sync_to_async(make)()
    fanout = Fanout(DatabaseHistory())
    fanout.last_id = expected[0] - 1
    sub = Subscription(frozenset({"all", f"user:{alice_id}"}), 10_000)
    fanout.add(sub)
    async with asyncio.timeout(30):
        await fanout.resync()
    received = []
    while (message := sub.get_nowait()) is not None:
        received.append(message.id)
    assert received == expected


async def test_a_server_started_while_redis_is_down_serves_then_goes_live(
    workdir, server_env, tokens
):
    """Streams and long polls work from the database while Redis is away
    (within NOTIFY_RESYNC_SECONDS, 1 s here), and delivery goes live through
    Redis once it is up, with nothing lost and nothing doubled."""
    alice_id = await User.objects.values_list("pk", flat=True).aget(username="alice")
    redis = RedisServer(workdir)  # its port, not started yet
    server = UvicornServer(workdir, server_env | {"REDIS_URL": redis.url}, "no-redis")
    super(UvicornServer, server).start()  # its own start() waits for a 200
    ids: list[int] = []
    arrived = {n: asyncio.Event() for n in range(1, 4)}
    ready = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream(
                "GET", server.url + "/events/", headers=auth(tokens["alice"])
            ) as response,
        ):
            assert response.status_code == 200
            async for event in events(response):
                if event.event == "ready":
                    ready.set()
                elif event.event == "notification":
                    ids.append(int(event.id or 0))
                    arrived[len(ids)].set()
                    if len(ids) == 3:
                        return

    try:
        wait_for(lambda: _answers(server.url), 30, "uvicorn without Redis")
        reader = asyncio.create_task(read())
        async with httpx.AsyncClient(timeout=30) as client:
            async with asyncio.timeout(10):
                await ready.wait()
            poll = await client.get(
                server.url + "/events/poll",
                params={"after": 0, "timeout": 0},
                headers=auth(tokens["alice"]),
            )
            assert poll.status_code == 200, poll.text
            first = await _publish(client, server.url, tokens["admin"], "while down")
            async with asyncio.timeout(5):
                await arrived[1].wait()
            redis.start()
            try:
                await asyncio.sleep(3)  # the reader connects within its 1 s backoff
                # The stream counted while Redis was away is counted there now.
                assert slot_counts(redis.url) == {str(alice_id): "1"}
                await _publish(client, server.url, tokens["admin"], "live 1")
                last = await _publish(client, server.url, tokens["admin"], "live 2")
                async with asyncio.timeout(5):
                    await reader
            finally:
                redis.stop()
    finally:
        server.stop()
    assert ids == list(range(first, last + 1))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


async def _publish(client: httpx.AsyncClient, base: str, token: str, title: str) -> int:
    response = await client.post(
        base + "/api/notifications",
        json={"audience": "all", "title": title},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text
    created: int = response.json()["id"]
    return created
