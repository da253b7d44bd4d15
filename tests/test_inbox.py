"""The inbox API: listing, paging, read state."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from tests.support.api import API, WIRE_KEYS, body, note


@pytest.fixture
def inbox(users: Any) -> list[int]:
    """60 notifications for everyone, then one only bob can see (id 61)."""
    ids = [note(f"n{i}").id for i in range(60)]
    ids.append(note("for bob", {"users": ["bob"]}).id)
    return ids


async def test_inbox_lists_newest_first_with_a_default_page_of_50(client_for, inbox):
    response = await client_for("alice").get(API)
    assert response.status_code == 200
    got = body(response)
    ids = [n["id"] for n in got["results"]]
    assert ids == inbox[59:9:-1]
    assert got["next"] == inbox[10]
    assert got["unread_count"] == 60
    assert all(list(n) == WIRE_KEYS for n in got["results"])
    assert response["Cache-Control"] == "no-store"


async def test_inbox_pages_with_before_until_next_is_null(client_for, inbox):
    client = client_for("alice")
    seen: list[int] = []
    before = ""
    for _ in range(10):
        got = body(await client.get(API, {"limit": 25, "before": before}))
        seen += [n["id"] for n in got["results"]]
        if got["next"] is None:
            break
        before = got["next"]
    assert seen == inbox[59::-1]


async def test_inbox_limit_up_to_200(client_for, inbox):
    got = body(await client_for("bob").get(API, {"limit": 200}))
    assert [n["id"] for n in got["results"]] == inbox[::-1]
    assert got["next"] is None


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "0"),
        ("limit", "201"),
        ("limit", "-1"),
        ("limit", "ten"),
        ("limit", "1.5"),
        ("before", "abc"),
        ("before", "0"),
        ("before", str(2**64)),
        ("limit", str(2**64)),
        ("unread", "maybe"),
    ],
)
async def test_inbox_bad_query_values_are_400_naming_the_field(
    client_for, users, param, value
):
    response = await client_for("alice").get(API, {param: value})
    assert response.status_code == 400
    assert list(body(response)["errors"]) == [param]


async def test_mark_read_is_reflected_in_read_and_unread_count(client_for, inbox):
    alice = client_for("alice")
    target = inbox[5]
    response = await alice.post(f"{API}/{target}/read")
    assert response.status_code == 204
    assert response.content == b""
    again = await alice.post(f"{API}/{target}/read")
    assert again.status_code == 204

    got = body(await alice.get(API, {"limit": 200}))
    assert got["unread_count"] == 59
    assert [n["id"] for n in got["results"] if n["read"]] == [target]
    unread = body(await alice.get(API, {"unread": "1", "limit": 200}))
    assert [n["id"] for n in unread["results"]] == [
        i for i in inbox[59::-1] if i != target
    ]
    # Bob's read state is his own.
    assert body(await client_for("bob").get(API))["unread_count"] == 61


async def test_mark_all_read_marks_everything_visible_now(client_for, inbox):
    bob = client_for("bob")
    assert (await bob.post(f"{API}/read-all")).status_code == 204
    got = body(await bob.get(API, {"limit": 200}))
    assert got["unread_count"] == 0
    assert all(n["read"] for n in got["results"])
    assert body(await bob.get(API, {"unread": "1"}))["results"] == []

    later = await sync_to_async(note)("later")
    got = body(await bob.get(API, {"unread": "1"}))
    assert [n["id"] for n in got["results"]] == [later.id]
    assert got["unread_count"] == 1


async def test_marking_a_notification_the_user_cannot_see_is_404_json(
    client_for, inbox
):
    alice = client_for("alice")
    for target in (inbox[-1], 99_999, 2**64):  # bob's; none; beyond any id
        response = await alice.post(f"{API}/{target}/read")
        assert response.status_code == 404
        assert "error" in body(response)
    assert body(await alice.get(API))["unread_count"] == 60


async def test_inbox_requires_authentication(users):
    for method, path in [
        ("get", API),
        ("post", f"{API}/1/read"),
        ("post", f"{API}/read-all"),
    ]:
        response = await getattr(AsyncClient(), method)(path)
        assert response.status_code == 401, path
        assert "error" in body(response)
