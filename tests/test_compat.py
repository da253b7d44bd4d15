"""``notify.compat.send_event``: django-eventstream's call, notify's notification."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User

from notify.broker import forget_broker, get_broker
from notify.compat import audience_for, send_event
from notify.exceptions import ValidationError
from notify.models import Notification
from notify.publishing import publish
from notify.validation import NOT_UNICODE
from notify.visibility import load_viewer


def _make_users() -> dict[str, User]:
    # No passwords: hashing them would dominate these tests' run time.
    made = {name: User.objects.create(username=name) for name in ("alice", "bob")}
    made["bob"].groups.add(Group.objects.create(name="ops"))
    return made


@pytest.fixture
def users(db: None) -> dict[str, User]:
    return _make_users()


@pytest.fixture
def live_users(transactional_db: None) -> dict[str, User]:
    return _make_users()


def test_signature_matches_django_eventstream():
    import django_eventstream  # type: ignore[import-untyped]

    theirs = inspect.signature(django_eventstream.send_event).parameters
    ours = inspect.signature(send_event).parameters
    assert [(p.name, p.default) for p in ours.values()] == [
        (p.name, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize(
    ("channel", "audience"),
    [
        ("", "all"),
        ("all", "all"),
        ("broadcast", "all"),
        ("user-alice", {"users": ["alice"]}),
        ("user-first.last@example.com", {"users": ["first.last@example.com"]}),
        ("group-ops", {"groups": ["ops"]}),
        ("group-on-call", {"groups": ["on-call"]}),
    ],
)
def test_channel_names_map_to_audiences(channel, audience):
    assert audience_for(channel) == audience


@pytest.mark.parametrize(
    "channel", ["room-1", "user-", "group-", "group- ", "alice", "All", "user_alice"]
)
def test_unknown_channel_raises_value_error_naming_it(channel):
    with pytest.raises(ValueError, match="unknown channel") as caught:
        audience_for(channel)
    assert repr(channel) in str(caught.value)


def test_user_channel_addresses_that_user_with_event_type_as_title(users):
    n = send_event(
        "user-alice",
        "Build finished",
        {"body": "main is green", "level": "success", "url": "/builds/7", "sha": "a1"},
    )
    n.refresh_from_db()
    assert n.audience == "user"
    assert list(n.users.values_list("username", flat=True)) == ["alice"]
    assert (n.title, n.body, n.level, n.url) == (
        "Build finished",
        "main is green",
        "success",
        "/builds/7",
    )
    assert n.data == {"sha": "a1"}
    assert n.sender is None


def test_group_channel_with_title_in_data_uses_that_title(users):
    n = send_event("group-ops", "disk", {"title": "Disk 91% full", "host": "db1"})
    n.refresh_from_db()
    assert n.audience == "group"
    assert list(n.groups.values_list("name", flat=True)) == ["ops"]
    assert n.title == "Disk 91% full"
    assert n.data == {"host": "db1"}


@pytest.mark.parametrize("channel", ["", "all", "broadcast"])
def test_broadcast_channels_reach_everyone(users, channel):
    n = send_event(channel, "Maintenance at 22:00", {})
    assert n.audience == "all"
    assert n.recipients == User.objects.filter(is_active=True).count()


@pytest.mark.parametrize(
    ("data", "stored"),
    [
        ("plain text", {"value": "plain text"}),
        (42, {"value": 42}),
        ([1, "two"], {"value": [1, "two"]}),
        (None, {"value": None}),
    ],
)
def test_non_dict_data_is_kept_under_value(users, data, stored):
    n = send_event("all", "Heads up", data)
    n.refresh_from_db()
    assert n.data == stored


def test_data_is_encoded_like_django_eventstream(users):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    n = send_event("all", "Invoice", {"paid_at": when, "amount": Decimal("9.50")})
    n.refresh_from_db()
    assert n.data == {"paid_at": "2026-01-02T03:04:05Z", "amount": "9.50"}


def test_expires_at_datetime_becomes_the_expiry(users):
    soon = datetime.now(UTC) + timedelta(hours=1)
    n = send_event("all", "Flash sale", {"expires_at": soon})
    n.refresh_from_db()
    assert n.expires_at is not None
    assert abs((n.expires_at - soon).total_seconds()) < 1
    assert n.data == {}


def test_json_encode_false_takes_json_text(users):
    n = send_event(
        "user-bob", "Deploy", '{"body": "v2 is live", "env": "prod"}', json_encode=False
    )
    n.refresh_from_db()
    assert (n.title, n.body, n.data) == ("Deploy", "v2 is live", {"env": "prod"})


def test_json_encode_false_with_text_that_is_not_json_keeps_it(users):
    n = send_event("all", "Note", "not json", json_encode=False)
    n.refresh_from_db()
    assert n.data == {"value": "not json"}


def test_skip_user_ids_is_refused_and_nothing_is_saved(users):
    with pytest.raises(ValueError, match="skip_user_ids"):
        send_event("all", "Hello", {}, skip_user_ids=[users["bob"].pk])
    assert not Notification.objects.exists()


def test_empty_skip_user_ids_and_async_publish_are_accepted(users):
    n = send_event("all", "Hello", {}, skip_user_ids=[], async_publish=False)
    assert Notification.objects.filter(pk=n.pk).exists()


def test_unknown_user_is_a_validation_error_naming_them(users):
    with pytest.raises(ValidationError, match="nobody") as caught:
        send_event("user-nobody", "Hello", {})
    assert isinstance(caught.value, ValueError)
    assert not Notification.objects.exists()


def test_bad_fields_are_validation_errors(users):
    with pytest.raises(ValidationError) as caught:
        send_event("all", "Hello", {"level": "urgent", "url": "//evil.example/x"})
    assert set(caught.value.errors) == {"level", "url"}


async def test_sent_event_reaches_only_the_addressed_users_streams(live_users):
    alice = await sync_to_async(load_viewer)(live_users["alice"].pk)
    bob = await sync_to_async(load_viewer)(live_users["bob"].pk)
    broker = get_broker()
    try:
        async with (
            broker.subscribe(alice.channels) as alice_sub,
            broker.subscribe(bob.channels) as bob_sub,
        ):
            n = await sync_to_async(send_event)("group-ops", "Pager", {"sev": 2})
            async with asyncio.timeout(5):
                message = await bob_sub.get()
            assert message.id == n.id
            assert b"event: notification" in message.frame
            assert b'"title":"Pager"' in message.frame
            assert b'"data":{"sev":2}' in message.frame
            assert alice_sub.get_nowait() is None
    finally:
        forget_broker()
        await broker.aclose()


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"title": "a\ud800b"}, "title"),
        ({"title": "ok", "body": "\udfff"}, "body"),
        ({"title": "ok", "url": "/a\ud800"}, "url"),
        ({"title": "ok", "data": {"k": "\ud800"}}, "data"),
        ({"title": "ok", "data": {"\ud800": 1}}, "data"),
        ({"title": "ok", "audience": {"users": ["al\ud800ice"]}}, "audience"),
    ],
)
def test_text_no_database_can_store_is_a_validation_error(users, fields, field):
    """Lone surrogates come from JSON escapes or from Python callers; they are
    refused by field, before the database sees them."""
    with pytest.raises(ValidationError) as caught:
        publish(**{"audience": "all", **fields})
    assert caught.value.errors == {field: [NOT_UNICODE]}
    assert not Notification.objects.exists()
