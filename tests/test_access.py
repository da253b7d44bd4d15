"""Access is re-checked while streams are open: two real servers sharing
Redis, and the change made from a third process (or a request)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aredis
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from notify import receivers
from notify.access import credential_key, revoke_message
from notify.broker import serving
from notify.broker.redis import decode
from notify.tokens import create_token
from tests.support.servers import UvicornServer, auth, manage
from tests.support.sse import Event, events

REVOKED_WITHIN = 2.0  # seconds, the contract's bound


class Stream:
    """One open stream, read in the background."""

    def __init__(
        self, url: str, cookies: dict[str, str] | None = None, **request: Any
    ) -> None:
        self.url = url
        self.cookies = cookies
        self.request = request
        self.events: list[Event] = []
        self.status = 0
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with (
            httpx.AsyncClient(timeout=30, cookies=self.cookies) as client,
            client.stream("GET", self.url + "/events/", **self.request) as response,
        ):
            self.status = response.status_code
            if response.status_code != 200:
                self.ready.set()
                return
            async for event in events(response):
                self.events.append(event)
                if event.event == "ready":
                    self.ready.set()

    @property
    def ended(self) -> bool:
        return self.task.done()

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]

    def titles(self) -> list[str]:
        return [e.json()["title"] for e in self.named("notification")]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def all_ready(streams: list[Stream], within: float) -> None:
    """Wait until each stream has its answer (``ready``, or a refusal); past
    ``within`` seconds, fail saying how each stands."""
    waits = [asyncio.ensure_future(s.ready.wait()) for s in streams]
    _, pending = await asyncio.wait(waits, timeout=within)
    for wait in pending:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    if pending:
        states = [
            f"status {s.status}, events {[e.event for e in s.events]}, "
            + (f"ended: {s.task.exception()!r}" if s.ended else "reading")
            for s in streams
            if not s.ready.is_set()
        ]
        raise AssertionError(
            f"{len(pending)} of {len(streams)} streams not ready in {within} s: "
            + "; ".join(states)
        )


async def _open(url: str, **request: Any) -> Stream:
    stream = Stream(url, **request)
    async with asyncio.timeout(10):
        await stream.ready.wait()
    assert stream.status == 200
    return stream


async def _ends_revoked(stream: Stream, reason: str) -> None:
    async with asyncio.timeout(REVOKED_WITHIN):
        await asyncio.wait([stream.task])
    assert stream.task.exception() is None
    revoked = stream.named("revoked")
    assert [e.json() for e in revoked] == [{"reason": reason}]
    assert stream.events[-1].event == "revoked"


async def _status(
    url: str, cookies: dict[str, str] | None = None, **request: Any
) -> int:
    async with httpx.AsyncClient(timeout=10, cookies=cookies) as client:
        response = await client.get(url + "/events/", **request)
        return response.status_code


def _shell(env: dict[str, str], code: str) -> str:
    return manage(env, "shell", "-c", code)


async def _log_in(url: str, username: str) -> dict[str, str]:
    """A fresh session of ``username`` on the server: its cookies."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        form = await client.get("/accounts/login/")
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert found
        response = await client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": f"pw-{username}",
                "csrfmiddlewaretoken": found.group(1),
            },
        )
        assert response.status_code == 302, response.text[:300]
        return dict(client.cookies)


async def _publish(url: str, token: str, **payload: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            url + "/api/notifications",
            json={"audience": "all"} | payload,
            headers=auth(token),
        )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _received(stream: Stream, title: str) -> None:
    async with asyncio.timeout(5):
        while title not in stream.titles():
            assert not stream.ended, stream.events
            await asyncio.sleep(0.02)


@pytest.fixture
def pair(
    start_server: Callable[..., UvicornServer],
    redis_url: str,
    server_env: dict[str, str],
) -> tuple[UvicornServer, UvicornServer, dict[str, str]]:
    """Two servers sharing Redis, and the environment of a third process."""
    one = start_server("one", REDIS_URL=redis_url)
    two = start_server("two", REDIS_URL=redis_url)
    return one, two, server_env | {"REDIS_URL": redis_url}


async def test_a_revoked_token_ends_its_streams_in_every_process(pair, users, tokens):
    one, two, env = pair
    _, other = await sync_to_async(create_token)(users["alice"], name="alice-laptop")
    name = await sync_to_async(
        lambda: users["alice"].api_tokens.exclude(name="alice-laptop").get().name
    )()
    revoked = [
        await _open(one.url, headers=auth(tokens["alice"])),
        await _open(two.url, headers=auth(tokens["alice"])),
    ]
    kept = [
        await _open(two.url, headers=auth(other)),
        await _open(one.url, headers=auth(tokens["bob"])),
    ]
    await asyncio.to_thread(manage, env, "notify_token", "revoke", name)
    for stream in revoked:
        await _ends_revoked(stream, "token-revoked")
    assert await _status(one.url, headers=auth(tokens["alice"])) == 401
    # The same user's other token, and everybody else, go on streaming.
    await _publish(one.url, tokens["admin"], title="still here")
    for stream in kept:
        await _received(stream, "still here")
        assert not stream.named("revoked")
        await stream.close()


async def test_logging_out_ends_that_sessions_streams_only(pair, users, tokens):
    one, two, _ = pair
    first = await _log_in(one.url, "alice")
    second = await _log_in(two.url, "alice")
    assert first != second
    ended = [await _open(one.url, cookies=first), await _open(two.url, cookies=first)]
    kept = [
        await _open(two.url, cookies=second),
        await _open(one.url, headers=auth(tokens["alice"])),
    ]
    only_session = {"sessionid": first["sessionid"]}
    async with httpx.AsyncClient(base_url=two.url, cookies=only_session) as client:
        page = await client.get("/")
        csrf = client.cookies.get("csrftoken")
        assert page.status_code == 200 and csrf
        response = await client.post("/accounts/logout/", headers={"X-CSRFToken": csrf})
        assert response.status_code in (200, 302)
    for stream in ended:
        await _ends_revoked(stream, "logged-out")
    assert await _status(one.url, cookies=first) == 401
    await _publish(one.url, tokens["admin"], title="after logout")
    for stream in kept:
        await _received(stream, "after logout")
        await stream.close()


async def test_deactivating_a_user_from_another_process_ends_all_their_streams(
    pair, users, tokens
):
    one, two, env = pair
    session = await _log_in(one.url, "alice")
    alice = [
        await _open(one.url, cookies=session),
        await _open(two.url, headers=auth(tokens["alice"])),
    ]
    bob = await _open(two.url, headers=auth(tokens["bob"]))
    code = "from django.contrib.auth.models import User\n" + (
        "u = User.objects.get(username='alice'); u.is_active = False; u.save()"
    )
    await asyncio.to_thread(_shell, env, code)
    for stream in alice:
        await _ends_revoked(stream, "user-inactive")
    assert await _status(two.url, headers=auth(tokens["alice"])) == 401
    assert await _status(one.url, cookies=session) == 401
    await _publish(one.url, tokens["admin"], title="for the others")
    await _received(bob, "for the others")
    await bob.close()


async def test_deleting_a_user_ends_their_streams(pair, users, tokens):
    one, two, env = pair
    alice = await _open(two.url, headers=auth(tokens["alice"]))
    code = "from django.contrib.auth.models import User\n" + (
        "User.objects.get(username='alice').delete()"
    )
    await asyncio.to_thread(_shell, env, code)
    await _ends_revoked(alice, "user-inactive")


async def test_a_password_change_ends_the_users_sessions_not_their_tokens(
    pair, users, tokens
):
    one, two, env = pair
    session = await _log_in(one.url, "alice")
    by_session = await _open(two.url, cookies=session)
    by_token = await _open(one.url, headers=auth(tokens["alice"]))
    code = "from django.contrib.auth.models import User\n" + (
        "u = User.objects.get(username='alice'); u.set_password('new-pw'); u.save()"
    )
    await asyncio.to_thread(_shell, env, code)
    await _ends_revoked(by_session, "session-ended")
    assert await _status(one.url, cookies=session) == 401
    await _publish(one.url, tokens["admin"], title="tokens stay")
    await _received(by_token, "tokens stay")
    await by_token.close()


async def test_a_flushed_session_ends_its_streams(pair, users):
    one, two, env = pair
    session = await _log_in(one.url, "alice")
    stream = await _open(two.url, cookies=session)
    key = session["sessionid"]
    code = "from django.contrib.sessions.backends.db import SessionStore\n" + (
        f"SessionStore({key!r}).flush()"
    )
    await asyncio.to_thread(_shell, env, code)
    await _ends_revoked(stream, "session-ended")


async def test_a_session_reaching_its_expiry_ends_its_streams(pair, users):
    one, _, env = pair
    session = await _log_in(one.url, "alice")
    key = session["sessionid"]
    code = (
        "from datetime import timedelta\n"
        "from django.contrib.sessions.models import Session\n"
        "from django.utils import timezone\n"
        f"Session.objects.filter(pk={key!r})"
        ".update(expire_date=timezone.now() + timedelta(seconds=3))"
    )
    await asyncio.to_thread(_shell, env, code)  # no signal: only the clock
    stream = await _open(one.url, cookies=session)
    async with asyncio.timeout(3 + REVOKED_WITHIN + 1):
        await asyncio.wait([stream.task])
    assert [e.json() for e in stream.named("revoked")] == [{"reason": "session-ended"}]


async def test_group_changes_take_effect_on_open_streams(pair, users, tokens):
    one, two, env = pair
    bob = await _open(one.url, headers=auth(tokens["bob"]))
    carol = await _open(two.url, headers=auth(tokens["carol"]))
    await _publish(
        one.url, tokens["admin"], title="ops 1", audience={"groups": ["ops"]}
    )
    await _received(bob, "ops 1")
    seen = await _publish(one.url, tokens["admin"], title="before")
    await _received(carol, "before")

    code = (
        "from django.contrib.auth.models import Group, User\n"
        "ops = Group.objects.get(name='ops')\n"
        "User.objects.get(username='bob').groups.remove(ops)\n"
        "ops.user_set.add(User.objects.get(username='carol'))"
    )
    await asyncio.to_thread(_shell, env, code)
    # Carol joined: her stream closes (no revoked event) and her reconnect
    # with the cursor finds what the group got meanwhile.
    async with asyncio.timeout(REVOKED_WITHIN):
        await asyncio.wait([carol.task])
    assert not carol.named("revoked")
    await asyncio.sleep(0.5)  # let bob's routing change too
    sent = await _publish(
        one.url, tokens["admin"], title="ops 2", audience={"groups": ["ops"]}
    )
    assert sent["recipients"] == 1
    await _publish(one.url, tokens["admin"], title="everyone")
    await _received(bob, "everyone")
    assert "ops 2" not in bob.titles() and not bob.ended

    cursor = seen["id"]
    again = await _open(
        two.url, headers=auth(tokens["carol"]) | {"Last-Event-ID": str(cursor)}
    )
    await _received(again, "everyone")
    assert again.titles() == ["ops 2", "everyone"]
    for stream in (bob, again):
        await stream.close()


@pytest.mark.django_db(transaction=True)
async def test_a_revocation_from_a_request_reaches_streams_without_redis(
    start_server, users, tokens
):
    """One process, the in-process broker: the token deleted through the
    admin ends the stream all the same."""
    server = start_server()
    stream = await _open(server.url, headers=auth(tokens["alice"]))
    admin = await _log_in(server.url, "admin")
    token_pk = await sync_to_async(
        lambda: User.objects.get(username="alice").api_tokens.get().pk
    )()
    async with httpx.AsyncClient(base_url=server.url, cookies=admin) as client:
        path = f"/admin/notify/apitoken/{token_pk}/delete/"
        page = await client.get(path)
        assert page.status_code == 200
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert found
        response = await client.post(
            path, data={"post": "yes", "csrfmiddlewaretoken": found.group(1)}
        )
        assert response.status_code == 302
    await _ends_revoked(stream, "token-revoked")


async def test_a_revocation_between_authentication_and_subscription_still_applies():
    """A stream whose credential was read just before a revocation arrived,
    and that subscribed just after, still ends; one opened after it is not
    touched, nor is another credential's."""
    from notify.access import credential_key, rechecker, revoke_message
    from notify.broker.memory import MemoryBroker

    broker = MemoryBroker()
    checker = rechecker(broker)
    loop = asyncio.get_running_loop()
    async with broker.subscribe(["user:1"]):  # the broker is running
        since = loop.time()
        await broker.publish(revoke_message(7, credential_key(42), "token-revoked"))
        later = loop.time()
        async with (
            broker.subscribe(["user:7"], credential=42) as late,
            broker.subscribe(["user:7"], credential=43) as other,
            broker.subscribe(["user:7"], credential=42) as reopened,
        ):
            checker.missed(late, since)
            checker.missed(other, since)
            checker.missed(reopened, later + 0.001)
            assert late.ended and [m.control for m in late.drain(9)] == ["revoke t42"]
            assert not other.ended and not other.drain(9)
            assert not reopened.ended and not reopened.drain(9)
    await broker.aclose()


def _announced(redis_url: str, env: dict[str, str], code: str) -> list[bytes]:
    """What a shell running ``code`` sends to the servers through Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe("notify:events")
        _shell(env, code)
        found = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                found.append(message["data"])
        return found
    finally:
        pubsub.close()
        client.close()


def test_saving_a_user_announces_only_changes_that_matter(users, redis_url, server_env):
    env = server_env | {"REDIS_URL": redis_url}
    load = "from django.contrib.auth.models import User\n"
    load += "u = User.objects.get(username='alice')\n"
    assert _announced(redis_url, env, load + "u.first_name = 'A'; u.save()") == []
    changed = _announced(redis_url, env, load + "u.set_password('x'); u.save()")
    assert [m.split(b"\n")[0] for m in changed] == [
        f"0||user:{users['alice'].pk}|recheck".encode()
    ]


@pytest.mark.timing
def test_an_unreachable_redis_holds_a_save_up_for_two_seconds_at_most(
    users, server_env
):
    from tests.support.servers import free_port

    env = server_env | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    code = "from django.contrib.auth.models import User\n" + (
        "import time; u = User.objects.get(username='alice'); t = time.monotonic()\n"
        "u.is_active = False; u.save(); print(time.monotonic() - t)"
    )
    took = float(_shell(env, code).strip().splitlines()[-1])
    assert took < 2.5


async def test_a_session_expiry_is_watched_once_however_often_it_is_rechecked():
    from notify.access import rechecker
    from notify.broker.memory import MemoryBroker

    broker = MemoryBroker()
    checker = rechecker(broker)
    async with broker.subscribe(["user:1"], credential="k") as sub:
        later = time.time() + 3600
        for _ in range(100):
            checker.expire_at(sub, later)
        assert len(checker._expiries) == 1
        checker.expire_at(sub, later + 60)  # extended: the old entry is stale
        assert sub.expires == later + 60
    await broker.aclose()


async def test_a_revocation_announced_while_redis_was_down_applies_once_it_is_back(
    workdir, server_env, users, tokens
):
    from tests.support.servers import RedisServer

    redis = RedisServer(workdir)
    redis.start()
    env = server_env | {"REDIS_URL": redis.url}
    server = UvicornServer(workdir, env, "redis-down")
    server.start()
    try:
        stream = await _open(server.url, headers=auth(tokens["alice"]))
        redis.stop()
        code = "from notify.models import APIToken\n" + (
            "APIToken.objects.get(user__username='alice').delete()"
        )
        await asyncio.to_thread(_shell, env, code)  # announced to nobody
        await asyncio.sleep(1)
        assert not stream.ended
        redis.start()
        async with asyncio.timeout(10):
            await asyncio.wait([stream.task])
        assert [e.json() for e in stream.named("revoked")] == [
            {"reason": "token-revoked"}
        ]
    finally:
        server.stop()
        redis.stop()


async def test_access_changes_are_sent_in_the_order_they_were_committed(
    redis_url, settings, close_broker
):
    # A logout announces "logged-out", then deleting its session announces
    # "session-ended": whichever a stream gets first is the reason it shows.
    prefix = f"notify-test-{uuid.uuid4().hex[:8]}:"
    settings.NOTIFY_BROKER = {
        "BACKEND": "notify.broker.redis.RedisBroker",
        "OPTIONS": {"url": redis_url, "prefix": prefix},
    }
    client = aredis.Redis.from_url(redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(f"{prefix}events")
    serving()  # this test's loop stands for a server's
    messages = [
        revoke_message(7, credential_key(f"session-{i}"), "logged-out")
        for i in range(40)
    ]

    def commit_all() -> None:  # as the receivers do, from a request's thread
        for message in messages:
            receivers._deliver(message)

    try:
        await asyncio.to_thread(commit_all)
        sent: list[str | None] = []
        async with asyncio.timeout(10):
            while len(sent) < len(messages):
                found = await listener.get_message(timeout=1.0)
                if found is not None:
                    sent.append(decode(found["data"]).control)
        assert sent == [message.control for message in messages]
    finally:
        await listener.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


def test_a_recheck_of_many_streams_reads_each_kind_of_record_once(
    users, django_assert_max_num_queries
):
    """check() answers every pair as one re-check at a time would, with a
    query per kind of record (users, groups, tokens, sessions and their
    users) however many pairs there are."""
    from django.contrib.auth.models import Group
    from django.test import Client

    from notify.access import SESSION_ENDED, TOKEN_REVOKED, USER_INACTIVE, check

    def session_of(user: User) -> str:
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    alive, _ = create_token(alice)
    revoked, _ = create_token(alice)
    revoked_pk = revoked.pk
    revoked.delete()
    bobs, _ = create_token(bob)
    alices_session, bobs_session = session_of(alice), session_of(bob)
    carols_token, _ = create_token(carol)
    carol.is_active = False
    carol.save()
    ops = Group.objects.get(name="ops")
    items: list[tuple[int, int | str | None]] = [
        (alice.pk, alive.pk),
        (alice.pk, revoked_pk),
        (alice.pk, bobs.pk),  # another user's token
        (bob.pk, bobs.pk),
        (alice.pk, alices_session),
        (alice.pk, bobs_session),  # another user's session
        (bob.pk, bobs_session),
        (alice.pk, "no-such-session"),
        (bob.pk, None),
        (carol.pk, carols_token.pk),
        (987654, None),  # a deleted user
    ]
    with django_assert_max_num_queries(6):
        verdicts = check(items * 20)
    reasons = [v.reason for v in verdicts[: len(items)]]
    assert reasons == [
        None,
        TOKEN_REVOKED,
        TOKEN_REVOKED,
        None,
        None,
        SESSION_ENDED,
        None,
        SESSION_ENDED,
        None,
        USER_INACTIVE,
        USER_INACTIVE,
    ]
    assert [v.reason for v in verdicts] == reasons * 20
    assert verdicts[3].channels == {"all", f"user:{bob.pk}", f"group:{ops.pk}"}
    assert verdicts[0].channels == {"all", f"user:{alice.pk}"}
    assert verdicts[4].expires is not None
