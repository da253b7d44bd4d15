"""API tokens: ``last_used_at`` is written when a token authenticates, at most
once a minute per token."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notify.credentials import identify
from notify.models import APIToken
from notify.tokens import create_token
from tests.support.servers import auth
from tests.support.sse import events

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


@pytest.fixture
def alice(db: None) -> User:
    return User.objects.create_user("alice", password="pw-alice-1")


def _writes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "UPDATE" in q["sql"]]


def _last_used(token: APIToken) -> Any:
    return APIToken.objects.get(pk=token.pk).last_used_at


def test_a_token_used_by_the_api_records_when_and_writes_once_a_minute(alice):
    token, secret = create_token(alice)
    assert _last_used(token) is None
    client = Client(headers=auth(secret))
    before = timezone.now()
    with CaptureQueriesContext(connection) as first:
        assert client.get("/api/notifications").status_code == 200
    used = _last_used(token)
    assert used is not None and used >= before
    assert len(_writes(first)) == 1
    with CaptureQueriesContext(connection) as second:
        assert client.get("/api/notifications").status_code == 200
    assert _writes(second) == []
    assert _last_used(token) == used


def test_a_token_opening_a_stream_records_when_and_writes_once_a_minute(alice):
    token, secret = create_token(alice)
    request = RequestFactory().get("/events/", headers=auth(secret))
    with CaptureQueriesContext(connection) as first:
        assert identify(request).user_id == alice.pk
    assert _last_used(token) is not None
    assert len(_writes(first)) == 1
    with CaptureQueriesContext(connection) as second:
        assert identify(request).user_id == alice.pk
    assert _writes(second) == []


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
    token = await APIToken.objects.aget(user=users["alice"])
    assert token.last_used_at is not None
