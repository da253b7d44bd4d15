"""The admin: adding a notification publishes it as the API does (validation,
``persist``, broadcast on commit); a sent notification is read-only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Group, User
from django.test import Client

from notify.models import Notification
from tests.support.api import note

ADD = "/admin/notify/notification/add/"


@pytest.fixture
def admin_client(users: dict[str, User]) -> Client:
    client = Client()
    client.force_login(users["admin"])
    return client


def _form(**fields: Any) -> dict[str, Any]:
    return {
        "audience": "all",
        "level": "info",
        "title": "Maintenance",
        "body": "",
        "url": "",
        "data": "{}",
        "expires_at_0": "",
        "expires_at_1": "",
    } | fields


def _errors(response: Any) -> dict[str, list[str]]:
    form = response.context["adminform"].form
    return {k: list(v) for k, v in form.errors.items()}


def test_adding_a_notification_publishes_it_like_the_api(
    admin_client, users, redis_url, settings
):
    prefix = f"notify-test-{uuid.uuid4().hex[:8]}:"
    settings.NOTIFY_BROKER = {
        "BACKEND": "notify.broker.redis.RedisBroker",
        "OPTIONS": {"url": redis_url, "prefix": prefix},
    }
    ops = Group.objects.get(name="ops")
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe(f"{prefix}events")
    try:
        response = admin_client.post(
            ADD,
            _form(audience="group", groups=[ops.pk], level="warning", url="/status"),
        )
        assert response.status_code == 302, _errors(response)
        n = Notification.objects.get()
        assert (n.title, n.level, n.audience, n.url) == (
            "Maintenance",
            "warning",
            "group",
            "/status",
        )
        assert list(n.groups.all()) == [ops]
        assert n.recipients == 1  # bob
        assert n.sender == users["admin"]
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
        assert message is not None, "not broadcast"
        assert str(n.pk).encode() in message["data"]
    finally:
        listener.close()
        client.close()


def test_the_admin_form_shows_the_apis_field_errors_and_sends_nothing(
    admin_client, users
):
    response = admin_client.post(
        ADD,
        _form(
            audience="user",
            url="//elsewhere.example/x",
            data='{"n": NaN}',
            expires_at_0="2001-01-01",
            expires_at_1="00:00:00",
        ),
    )
    assert response.status_code == 200
    errors = _errors(response)
    assert set(errors) == {"users", "url", "data", "expires_at"}
    assert errors["users"] == ["users must be a non-empty list of names."]
    assert errors["url"] == ["A path must start with exactly one '/'."]
    assert errors["expires_at"] == ["Must be in the future."]
    response = admin_client.post(ADD, _form(users=[users["alice"].pk]))
    assert _errors(response) == {"users": ["Only for the audience “Users”."]}
    assert not Notification.objects.exists()


def test_the_senders_rate_limit_applies(admin_client, users, settings):
    settings.NOTIFY_PUBLISH_RATE = "1/h"
    assert admin_client.post(ADD, _form(title="one")).status_code == 302
    refused = admin_client.post(ADD, _form(title="two"), follow=True)
    shown = [str(m) for m in refused.context["messages"]]
    assert any(m.startswith("Not sent: too many notifications") for m in shown)
    assert list(Notification.objects.values_list("title", flat=True)) == ["one"]


def test_a_sent_notification_is_read_only_and_can_be_deleted(admin_client, users):
    n = note("Sent", body="as it was")
    assert admin_client.get("/admin/notify/notification/").status_code == 200
    assert admin_client.get(ADD).status_code == 200
    page = f"/admin/notify/notification/{n.pk}/change/"
    shown = admin_client.get(page)
    assert shown.status_code == 200
    assert b'name="title"' not in shown.content
    assert b"as it was" in shown.content
    edit = admin_client.post(page, _form(title="Rewritten"))
    assert edit.status_code == 403
    n.refresh_from_db()
    assert n.title == "Sent"
    delete = f"/admin/notify/notification/{n.pk}/delete/"
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not Notification.objects.exists()


def test_the_wire_data_of_an_admin_notification_is_the_apis(admin_client, users):
    data = {"b": 1, "a": [1, 2]}
    response = admin_client.post(ADD, _form(data=json.dumps(data)))
    assert response.status_code == 302, _errors(response)
    assert Notification.objects.get().data == data
