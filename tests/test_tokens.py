"""API tokens: ``last_used_at`` is written when a token authenticates, at most
once a minute per token, never by the request itself (it would wait for the
write lock behind a publish)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notify import tokens as tokens_module
from notify.credentials import identify
from notify.models import APIToken
from notify.tokens import create_token
from tests.support.locks import TOKENS, hold_lock, release
from tests.support.servers import auth
from tests.support.sse import events

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


@pytest.fixture
def alice(transactional_db: None) -> User:
    """Committed: the writes run on another thread and connection."""
    return User.objects.create_user("alice", password="pw-alice-1")


def _writes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "UPDATE" in q["sql"]]


def _last_used(token: APIToken) -> Any:
    """The stored time, once the writes already asked for are done."""
    tokens_module.write_used()
    return APIToken.objects.get(pk=token.pk).last_used_at


def _backdate(token: APIToken, **ago: float) -> Any:
    """Move ``last_used_at`` back: a write within the minute would show."""
    earlier = timezone.now() - timedelta(**ago)
    APIToken.objects.filter(pk=token.pk).update(last_used_at=earlier)
    return earlier


def test_a_token_used_by_the_api_records_when_and_writes_once_a_minute(alice):
    token, secret = create_token(alice)
    assert _last_used(token) is None
    client = Client(headers=auth(secret))
    before = timezone.now()
    with CaptureQueriesContext(connection) as first:
        assert client.get("/api/notifications").status_code == 200
    used = _last_used(token)
    assert used is not None and used >= before
    assert _writes(first) == []  # not in the request
    earlier = _backdate(token, minutes=5)
    with CaptureQueriesContext(connection) as second:
        assert client.get("/api/notifications").status_code == 200
    assert _writes(second) == []
    assert _last_used(token) == earlier


def test_a_token_opening_a_stream_records_when_and_writes_once_a_minute(alice):
    token, secret = create_token(alice)
    request = RequestFactory().get("/events/", headers=auth(secret))
    with CaptureQueriesContext(connection) as first:
        assert identify(request).user_id == alice.pk
    assert _last_used(token) is not None
    assert _writes(first) == []
    earlier = _backdate(token, minutes=5)
    with CaptureQueriesContext(connection) as second:
        assert identify(request).user_id == alice.pk
    assert _writes(second) == []
    assert _last_used(token) == earlier


def test_a_time_written_by_another_process_within_the_minute_is_kept(alice):
    token, secret = create_token(alice)
    recent = timezone.now() - timedelta(seconds=10)
    APIToken.objects.filter(pk=token.pk).update(last_used_at=recent)
    Client(headers=auth(secret)).get("/api/notifications")
    assert _last_used(token) == recent
    old = timezone.now() - timedelta(minutes=5)
    other, other_secret = create_token(alice)
    APIToken.objects.filter(pk=other.pk).update(last_used_at=old)
    Client(headers=auth(other_secret)).get("/api/notifications")
    assert _last_used(other) > old


def test_a_bad_token_writes_nothing(alice):
    token, _ = create_token(alice)
    with CaptureQueriesContext(connection) as queries:
        Client(headers=auth("ntf_not-a-real-token")).get("/api/notifications")
    assert _writes(queries) == []
    assert _last_used(token) is None


async def test_a_stream_opened_with_a_token_on_a_real_server_records_it(
    start_server, users, tokens
):
    server = start_server()
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/events/", headers=auth(tokens["alice"])) as response,
    ):
        assert response.status_code == 200
        async for event in events(response):
            assert event.event == "ready"
            break

    async def used() -> bool:
        token = await APIToken.objects.aget(user=users["alice"])
        return token.last_used_at is not None

    async with asyncio.timeout(tokens_module._GATHER + 5):  # written in a batch
        while not await used():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.1)


@pytest.mark.timing
def test_a_token_authenticates_without_waiting_for_the_write_lock(
    alice, test_database_url
):
    token, secret = create_token(alice)
    holder = hold_lock(test_database_url, 3, TOKENS)
    try:
        started = time.monotonic()
        response = Client(headers=auth(secret)).get("/api/notifications")
        took = time.monotonic() - started
    finally:
        release(holder)
    assert response.status_code == 200
    assert took < 1
    assert _last_used(token) is not None  # written once the lock was free


def test_many_tokens_are_written_in_short_statements(alice):
    """A reconnect storm's tokens go out 100 to an UPDATE: each holds SQLite's
    write lock briefly, and a publish waiting for it gets in between."""
    made = [create_token(alice)[0] for _ in range(250)]
    for token in made:
        tokens_module.touch(token.key_hash)
    # The thread that writes them would wait its gathering time; write now.
    with CaptureQueriesContext(connection) as queries:
        tokens_module.write_used()
    assert len(_writes(queries)) == 3
    assert not APIToken.objects.filter(last_used_at__isnull=True).exists()


def test_a_storm_of_fresh_tokens_is_looked_through_a_few_times_not_at_each_use():
    """Every token of a storm is seen within the minute, so none can be
    forgotten: the process looks for stale entries again only once it holds
    twice as many, not at each of the thousands of uses."""
    seen = tokens_module._Seen()
    uses = 50_000
    assert all(seen.due(f"key-{n}", 1000.0) for n in range(uses))
    assert not seen.due("key-7", 1001.0)  # written a second ago
    assert len(seen.at) == uses
    assert seen.prunes <= 3  # at 10,000, 20,000 and 40,000 entries

    # A minute on, the old entries go at the next look.
    seen.prune_above = 0
    assert seen.due("key-new", 1000.0 + tokens_module.TOUCH_EVERY)
    assert len(seen.at) == 1
    assert seen.due("key-7", 1000.0 + tokens_module.TOUCH_EVERY)
