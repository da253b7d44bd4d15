"""A reconnect storm mixed with revocations, with real processes: a worker is
killed with ``kill -9`` while notifications flow and tokens are revoked from
another process. Nothing is lost or repeated for those still entitled, the
revoked are out within the contract's two seconds, no slot leaks, and nobody
sees a 5xx other than the contract's 503s, or an HTML error page."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field

import httpx
import redis
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from notify.tokens import create_token
from tests.support.servers import auth, manage
from tests.support.sse import events

CLIENTS = 24
REVOKED = 6


@dataclass
class Client:
    token: str
    cursor: int
    got: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    ended: str = ""  # "revoked" or "401"
    ended_at: float = 0.0


async def _run(client: Client, urls: list[str], rng: random.Random) -> None:
    """Connect, read, reconnect after a jittered pause with the cursor, as
    EventSource and notify.js do; until revoked or cancelled."""
    while True:
        url = rng.choice(urls)
        headers = auth(client.token) | {"Last-Event-ID": str(client.cursor)}
        try:
            async with (
                httpx.AsyncClient(timeout=10) as http,
                http.stream("GET", url + "/events/", headers=headers) as response,
            ):
                client.statuses.append(response.status_code)
                if response.status_code != 200:
                    body = await response.aread()
                    assert response.headers["Content-Type"] == "application/json"
                    assert body.startswith(b"{"), body[:100]
                    if response.status_code == 401:
                        client.ended, client.ended_at = "401", time.monotonic()
                        return
                else:
                    async for event in events(response):
                        if event.event == "notification":
                            client.got.append(int(event.id or 0))
                            client.cursor = client.got[-1]
                        elif event.event == "revoked":
                            client.ended = "revoked"
                            client.ended_at = time.monotonic()
                            return
        except httpx.TransportError:
            pass  # the worker was killed under us
        await asyncio.sleep(rng.uniform(0.1, 0.6))


async def test_a_storm_mixed_with_revocations_loses_and_leaks_nothing(
    start_server, redis_url, server_env, users, tokens
):
    env = {"REDIS_URL": redis_url, "NOTIFY_MAX_STREAMS_PER_USER": "2"}
    one = start_server("one", **env)
    two = start_server("two", **env)
    urls = [one.url, two.url]

    def make_users() -> list[tuple[str, str]]:
        made = []
        for i in range(CLIENTS):
            user = User.objects.create(username=f"storm-{i}")
            token, secret = create_token(user, name=f"storm-{i}")
            made.append((token.name, secret))
        return made

    made = await sync_to_async(make_users)()
    rng = random.Random(11)
    clients = [Client(secret, 0) for _, secret in made]
    tasks = [asyncio.create_task(_run(c, urls, rng)) for c in clients]
    published: list[int] = []

    async with httpx.AsyncClient(timeout=10) as http:

        async def publish(title: str) -> None:
            for _ in range(50):
                response = await http.post(
                    rng.choice(urls) + "/api/notifications",
                    json={"audience": "all", "title": title},
                    headers=auth(tokens["admin"]),
                )
                if response.status_code == 201:
                    published.append(response.json()["id"])
                    return
                assert response.status_code == 503, response.text
                await asyncio.sleep(0.2)
            raise AssertionError(f"{title!r} was never accepted")

        await asyncio.sleep(1.5)  # everyone connected
        for i in range(5):
            await publish(f"before {i}")

        await asyncio.to_thread(two.stop, signal.SIGKILL)
        urls[:] = [one.url]  # the storm: everyone comes back to one
        for i in range(5):
            await publish(f"storm {i}")

        names = [name for name, _ in made[:REVOKED]]
        code = "from notify.models import APIToken\n" + (
            f"for t in APIToken.objects.filter(name__in={names!r}): t.delete()"
        )
        await asyncio.to_thread(manage, server_env | env, "shell", "-c", code)
        revoked_at = time.monotonic()
        await asyncio.to_thread(two.start)
        urls.append(two.url)
        for i in range(5):
            await publish(f"after {i}")

        # Everybody still entitled catches up on everything, once, in order.
        async with asyncio.timeout(20):
            while any(c.cursor != published[-1] for c in clients[REVOKED:]):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks[:REVOKED])

    for task in tasks[REVOKED:]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    for client in clients[REVOKED:]:
        assert client.got == published
        assert not client.ended
    for client in clients[:REVOKED]:
        assert client.ended in ("revoked", "401")
        assert client.ended_at - revoked_at < 2.0
    statuses = {s for c in clients for s in c.statuses}
    assert statuses <= {200, 401, 429, 503}, statuses
    # A refused stream (429) could only come from the killed worker's counts,
    # which expire; afterwards nothing stays counted.
    store = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 3
        while True:
            counted = {key: store.hgetall(key) for key in store.keys("notify:slots:*")}
            if not any(counted.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert not any(counted.values()), counted
    finally:
        store.close()
