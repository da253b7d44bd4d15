"""The publish API over HTTP: who may publish, the request body, the result.

Most requests go through Django's ``AsyncClient`` (the endpoints are plain,
non-streaming responses); CSRF, rate limiting and a Redis outage are checked
against real uvicorn processes.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import AsyncClient, override_settings

from notify.models import Notification
from notify.tokens import create_token
from tests.support.api import API, WIRE_KEYS, Client, body, post_json
from tests.support.servers import auth

CSRF_SECRET = "s3cr3tCSRFvalue0123456789abcdefg"  # Django's 32-character form


# Publish: who may


async def test_publish_without_credentials_is_401_json(users):
    response = await post_json(AsyncClient(), {"audience": "all", "title": "x"})
    assert response.status_code == 401
    assert body(response) == {"error": "authentication required"}
    assert response["WWW-Authenticate"].startswith("Bearer")


async def test_publish_with_an_unknown_token_is_401_and_never_falls_back_to_the_session(
    users,
):
    client = Client("ntf_not-a-real-token")
    await client.aforce_login(users["admin"])
    response = await post_json(client, {"audience": "all", "title": "x"})
    assert response.status_code == 401
    assert body(response) == {"error": "invalid API token"}


@pytest.mark.parametrize("how", ["session", "token"])
async def test_publish_by_a_non_staff_user_is_403_json(users, tokens, how):
    client = Client(tokens["alice"] if how == "token" else None)
    if how == "session":
        await client.aforce_login(users["alice"])
    response = await post_json(client, {"audience": "all", "title": "x"})
    assert response.status_code == 403
    assert "error" in body(response)
    assert await Notification.objects.acount() == 0


async def test_a_staff_users_token_without_publish_permission_is_403(users):
    _, secret = await _token(users["admin"], can_publish=False)
    response = await post_json(Client(secret), {"audience": "all", "title": "x"})
    assert response.status_code == 403


async def test_a_publish_token_of_a_non_staff_user_may_publish(users):
    _, secret = await _token(users["alice"], can_publish=True)
    response = await post_json(Client(secret), {"audience": "all", "title": "x"})
    assert response.status_code == 201


async def test_a_token_publishes_as_its_user_until_revoked_or_the_user_deactivated(
    users,
):
    token, secret = await _token(users["alice"], can_publish=True)
    client = Client(secret)
    payload = {"audience": "all", "title": "x"}

    sent = await post_json(client, payload)
    assert sent.status_code == 201
    n = await Notification.objects.aget(pk=body(sent)["id"])
    assert n.sender_id == users["alice"].pk

    alice = users["alice"]
    alice.is_active = False
    await alice.asave(update_fields=["is_active"])
    refused = await post_json(client, payload)
    assert refused.status_code == 401
    assert body(refused) == {"error": "invalid API token"}
    assert refused["WWW-Authenticate"].startswith("Bearer")

    alice.is_active = True
    await alice.asave(update_fields=["is_active"])
    assert (await post_json(client, payload)).status_code == 201

    await token.adelete()
    assert (await post_json(client, payload)).status_code == 401
    assert await Notification.objects.acount() == 2


async def test_an_empty_bearer_token_is_401(users):
    response = await post_json(Client(""), {"audience": "all", "title": "x"})
    assert response.status_code == 401
    assert body(response) == {"error": "invalid API token"}


async def _token(user: User, *, can_publish: bool) -> tuple[Any, str]:
    return await sync_to_async(create_token)(user, can_publish=can_publish)


async def _session_cookie(user: User) -> str:
    client = AsyncClient()
    await client.aforce_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def test_staff_session_needs_the_csrf_token_to_publish(start_server, users):
    server = start_server()
    session = await _session_cookie(users["admin"])
    payload = {"audience": "all", "title": "From the console"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        client.cookies.set(settings.SESSION_COOKIE_NAME, session)
        refused = await client.post(API, json=payload)
        assert refused.status_code == 403
        assert body(refused) == {"error": "CSRF token missing or incorrect"}

        client.cookies.set(settings.CSRF_COOKIE_NAME, CSRF_SECRET)
        wrong = await client.post(API, json=payload, headers={"X-CSRFToken": "x" * 32})
        assert wrong.status_code == 403

        accepted = await client.post(
            API, json=payload, headers={"X-CSRFToken": CSRF_SECRET}
        )
        assert accepted.status_code == 201, accepted.text
        assert body(accepted)["title"] == "From the console"

        read = f"{API}/{body(accepted)['id']}/read"
        assert (await client.post(read)).status_code == 403
        ok = await client.post(read, headers={"X-CSRFToken": CSRF_SECRET})
        assert ok.status_code == 204
    assert await Notification.objects.acount() == 1


# Publish: the request body


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"],
)
async def test_publish_with_a_wrong_content_type_is_415(admin, content_type):
    response = await admin.post(
        API,
        data=json.dumps({"audience": "all", "title": "x"}),
        content_type=content_type,
    )
    assert response.status_code == 415
    assert "error" in body(response)


async def test_publish_accepts_a_charset_parameter_on_the_content_type(admin):
    response = await admin.post(
        API,
        data=json.dumps({"audience": "all", "title": "x"}),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 201


@pytest.mark.parametrize("size", [64 * 1024 + 1, 2 * 1024 * 1024])
async def test_publish_body_over_64_kib_is_413(admin, size):
    padding = "x" * (size - len('{"audience":"all","title":"t","body":""}'))
    raw = '{"audience":"all","title":"t","body":"' + padding + '"}'
    assert len(raw) == size
    response = await admin.post(API, data=raw, content_type="application/json")
    assert response.status_code == 413
    assert "error" in body(response)


async def test_publish_chunked_body_over_64_kib_is_413(start_server, tokens):
    server = start_server()
    raw = json.dumps({"audience": "all", "title": "t", "body": "x" * 70_000}).encode()

    async def chunks() -> AsyncIterator[
        bytes
    ]:  # no Content-Length: the server must count itself
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post(
            API,
            content=chunks(),
            headers=auth(tokens["admin"]) | {"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert "error" in body(response)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"{'audience': 'all'}",
        b'{"audience":"all","title":"x"} trailing',
        b'{"audience":"all","title":"\xff\xfe"}',
        b'{"audience":"all","title":"\\ud800"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"data":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
    ],
    ids=[
        "truncated",
        "single-quotes",
        "trailing",
        "not-utf8",
        "lone-surrogate",
        "deep",
        "deep-object",
    ],
)
async def test_malformed_json_is_400_with_an_error_message(admin, raw):
    response = await admin.post(API, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert isinstance(body(response)["error"], str), body(response)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_rejected_as_malformed(admin, constant):
    raw = '{"audience":"all","title":"x","data":{"v":' + constant + "}}"
    response = await admin.post(API, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert "error" in body(response)
    assert await Notification.objects.acount() == 0


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("audience", {"audience": "everyone"}),
    ("audience", {"audience": None}),
    ("audience", {"audience": ["alice"]}),
    ("audience", {"audience": {"users": []}}),
    ("audience", {"audience": {"users": "alice"}}),
    ("audience", {"audience": {"users": [1]}}),
    ("audience", {"audience": {"users": [""]}}),
    ("audience", {"audience": {"groups": "ops"}}),
    ("audience", {"audience": {"users": ["alice"], "groups": ["ops"]}}),
    ("audience", {"audience": {"user": ["alice"]}}),
    ("title", {"title": None}),
    ("title", {"title": ""}),
    ("title", {"title": "   "}),
    ("title", {"title": "x" * 201}),
    ("title", {"title": 7}),
    ("body", {"body": "x" * 5001}),
    ("body", {"body": ["x"]}),
    ("level", {"level": "debug"}),
    ("level", {"level": "INFO"}),
    ("level", {"level": 1}),
    ("url", {"url": "javascript:alert(1)"}),
    ("url", {"url": "//evil.example/x"}),
    ("url", {"url": "/\\evil.example/x"}),
    ("url", {"url": "ftp://x"}),
    ("url", {"url": "http://"}),
    ("url", {"url": "https://example.com/a b"}),
    ("url", {"url": "/path\nSet-Cookie: x"}),
    ("url", {"url": 5}),
    ("data", {"data": []}),
    ("data", {"data": "text"}),
    ("data", {"data": 3}),
    ("data", {"data": {"blob": "x" * 17_000}}),
    ("expires_at", {"expires_at": "tomorrow"}),
    ("expires_at", {"expires_at": "2026-02-30T10:00:00Z"}),
    ("expires_at", {"expires_at": "2020-01-01T00:00:00Z"}),
    ("expires_at", {"expires_at": 1893456000}),
    ("expires_at", {"expires_at": ""}),
    ("expires_at", {"expires_at": "9999-12-31T23:59:59-23:59"}),
    ("expires_at", {"expires_at": "0001-01-01T00:00:00+23:59"}),
    ("colour", {"colour": "red"}),
    ("Title", {"Title": "x"}),
]


@pytest.mark.parametrize(
    ("field", "change"),
    BAD_FIELDS,
    ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)],
)
async def test_a_bad_field_is_400_naming_it(admin, field, change):
    payload = {"audience": "all", "title": "Hello"} | change
    response = await post_json(admin, payload)
    assert response.status_code == 400
    errors = body(response)["errors"]
    assert list(errors) == [field]
    assert errors[field]
    assert all(isinstance(m, str) and m for m in errors[field])
    assert await Notification.objects.acount() == 0


@pytest.mark.parametrize("missing", ["audience", "title"])
async def test_a_missing_required_field_is_400_naming_it(admin, missing):
    payload = {"audience": "all", "title": "Hello"}
    del payload[missing]
    response = await post_json(admin, payload)
    assert response.status_code == 400
    assert list(body(response)["errors"]) == [missing]


async def test_every_bad_field_is_reported_at_once(admin):
    payload = {"audience": "x", "title": "", "level": "loud", "url": "ftp://x", "n": 1}
    response = await post_json(admin, payload)
    assert response.status_code == 400
    assert set(body(response)["errors"]) == {"audience", "title", "level", "url", "n"}


@pytest.mark.parametrize(
    "payload", [[], [{"audience": "all", "title": "x"}], "x", 3, None]
)
async def test_a_json_body_that_is_not_an_object_is_400(admin, payload):
    response = await post_json(admin, payload)
    assert response.status_code == 400
    errors = body(response)["errors"]
    assert errors and all(isinstance(v, list) and v for v in errors.values())


async def test_fields_at_their_limits_are_accepted(admin):
    payload = {
        "audience": "all",
        "title": "\N{BELL}" * 200,
        "body": "b" * 5000,
        "level": "critical",
        "url": "/inbox?x=1#y",
        "data": {"blob": "d" * 16_000},
        "expires_at": "2999-01-01T00:00:00+02:00",
    }
    response = await post_json(admin, payload)
    assert response.status_code == 201, response.content
    got = body(response)
    assert got["title"] == payload["title"]
    assert got["expires_at"] == "2998-12-31T22:00:00Z"


@pytest.mark.parametrize(
    "url", ["https://example.com/x?y=1", "http://localhost:8000/", "/a"]
)
async def test_http_urls_and_local_paths_are_accepted(admin, url):
    response = await post_json(admin, {"audience": "all", "title": "x", "url": url})
    assert response.status_code == 201
    assert body(response)["url"] == url


async def test_unknown_users_are_400_naming_them(admin):
    response = await post_json(
        admin, {"audience": {"users": ["alice", "zed", "yann"]}, "title": "x"}
    )
    assert response.status_code == 400
    [message] = body(response)["errors"]["audience"]
    assert "zed" in message and "yann" in message and "alice" not in message
    assert await Notification.objects.acount() == 0


async def test_unknown_groups_are_400_naming_them(admin):
    response = await post_json(
        admin, {"audience": {"groups": ["ops", "nobody-here"]}, "title": "x"}
    )
    assert response.status_code == 400
    [message] = body(response)["errors"]["audience"]
    assert "nobody-here" in message and "ops" not in message


async def test_too_many_publishes_is_429_with_retry_after(start_server, tokens):
    server = start_server(NOTIFY_PUBLISH_RATE="2/m")
    async with httpx.AsyncClient(
        base_url=server.url, headers=auth(tokens["admin"]), timeout=10
    ) as client:
        for i in range(2):
            ok = await client.post(API, json={"audience": "all", "title": f"n{i}"})
            assert ok.status_code == 201
        limited = await client.post(API, json={"audience": "all", "title": "n2"})
        assert limited.status_code == 429
        assert "error" in body(limited)
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert await Notification.objects.acount() == 2


# Publish: the created notification


async def test_publish_returns_the_wire_json_plus_recipients(admin):
    payload = {
        "audience": "all",
        "title": "Deploy at 5",
        "body": "line one\nline two",
        "level": "warning",
        "url": "https://status.example.com/",
        "data": {"ticket": 42, "tags": ["a", "b"]},
        "expires_at": "2999-11-20T22:00:00Z",
    }
    response = await post_json(admin, payload)
    assert response.status_code == 201
    got = body(response)
    assert list(got) == [*WIRE_KEYS, "recipients"]
    n = await Notification.objects.aget()
    assert got["id"] == n.id
    assert {k: got[k] for k in ("title", "body", "level", "url", "data")} == {
        k: payload[k] for k in ("title", "body", "level", "url", "data")
    }
    assert got["audience"] == "all"
    assert got["expires_at"] == "2999-11-20T22:00:00Z"
    assert got["read"] is False
    assert got["created_at"].endswith("Z") and "T" in got["created_at"]
    # One line, no whitespace padding.
    compact = json.dumps(got, separators=(",", ":"), ensure_ascii=False)
    assert response.content.decode() == compact


async def _add_member(username: str, group: str, *, active: bool = True) -> None:
    def add() -> None:
        user, _ = User.objects.get_or_create(username=username)
        user.is_active = active
        user.save()
        user.groups.add(Group.objects.get(name=group))

    await sync_to_async(add)()


@pytest.mark.parametrize(
    ("audience", "recipients"),
    [
        ("all", 4),  # admin (the sender), alice, bob, carol; not dave
        ({"users": ["alice", "dave"]}, 1),
        ({"users": ["alice", "alice", "carol"]}, 2),
        ({"groups": ["ops", "sales"]}, 2),  # bob and alice, alice once
        ({"groups": ["sales"]}, 1),
    ],
)
async def test_recipients_counts_distinct_active_users(admin, audience, recipients):
    await _add_member("dave", "ops", active=False)
    await _add_member("alice", "ops")
    await _add_member("alice", "sales")
    response = await post_json(admin, {"audience": audience, "title": "x"})
    assert response.status_code == 201
    got = body(response)
    assert got["recipients"] == recipients
    assert got["audience"] == (
        audience if audience == "all" else next(iter(audience))[:-1]
    )


# Never a 500


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pools: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.uniform(-1e308, 1e308),
        lambda: "".join(
            rng.choice("ab\x00\n\r:/\\\"'é😀 \t<>") for _ in range(rng.randint(0, 30))
        ),
        lambda: rng.choice(
            [
                "all",
                "",
                "/x",
                "//x",
                "http://e.com",
                "javascript:x",
                "2999-01-01T00:00:00Z",
                "2000-01-01",
                "info",
                "critical",
                "alice",
                "ops",
                "\ud800",
                "9999-12-31T23:59:59-23:59",
            ]
        ),
        lambda: "x" * rng.choice([199, 200, 201, 4999, 5000, 5001, 17000]),
    ]
    if depth < 3:
        pools += [
            lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
            lambda: {
                rng.choice(["users", "groups", "k", "audience", ""]): _random_value(
                    rng, depth + 1
                )
                for _ in range(rng.randint(0, 3))
            },
        ]
    return rng.choice(pools)()


def _random_body(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _random_value(rng)
    # A valid base with zero to three fields replaced by anything at all.
    payload: dict[str, Any] = {
        "audience": rng.choice(
            [
                "all",
                {"users": ["alice", "bob"]},
                {"groups": ["ops"]},
                {"users": ["carol"]},
            ]
        ),
        "title": rng.choice(["ok", "x" * 200, "\x00", "a\r\nb", "\ud800", "é😀"]),
        "body": rng.choice(["", "\n\ndata: forged\n\n", "\udfff" * 3]),
        "data": rng.choice([{}, {"nested": {"list": [1, 2.5, None, "\x00"]}}]),
    }
    fields = [
        "audience",
        "title",
        "body",
        "level",
        "url",
        "data",
        "expires_at",
        "extra",
    ]
    for name in rng.sample(fields, rng.randint(0, 3)):
        payload[name] = _random_value(rng)
    return payload


@override_settings(NOTIFY_PUBLISH_RATE="100000/s")
async def test_random_publish_bodies_never_cause_a_server_error(admin):
    rng = random.Random(20261120)
    statuses: dict[int, int] = {}
    for _ in range(400):
        payload = _random_body(rng)
        # Escaped (\\ud800 arrives as a lone surrogate) or raw UTF-8 (then invalid).
        text = json.dumps(payload, ensure_ascii=rng.random() < 0.5)
        raw = text.encode("utf-8", "surrogatepass")
        response = await admin.post(API, data=raw, content_type="application/json")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (201, 400), (response.status_code, text[:300])
        assert body(response)
    assert statuses.get(201) and statuses.get(400)  # both paths were exercised


# Wrong methods


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", API),
        ("delete", API),
        ("patch", API),
        ("get", f"{API}/1/read"),
        ("get", f"{API}/read-all"),
        ("delete", f"{API}/read-all"),
        ("post", "/events/"),
        ("post", "/events/poll"),
        ("post", "/healthz"),
        ("put", "/metrics"),
    ],
)
async def test_a_wrong_method_is_405_json(admin, method, path):
    response = await getattr(admin, method)(path)
    assert response.status_code == 405
    assert "error" in body(response)
    assert response["Allow"]


# Unknown endpoints


@pytest.mark.parametrize("method", ["get", "post", "delete"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/notifications/42",
        "/api/notifications/",
        "/api/notifications/abc/read",
        "/api/notifications/1/read/again",
        "/api/notifications/read-all/",
        "/api/broadcasts",
        "/api/broadcasts/recent/",
        "/events/x",
        "/events/poll/",
        "/events/poll/1",
    ],
)
async def test_an_unknown_path_under_the_api_is_a_json_404(users, method, path):
    # Signed in by session, with CSRF checked: a POST without the token is a
    # 404 still, not the CSRF failure page.
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(users["alice"])
    response = await getattr(client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert body(response) == {"error": "no such endpoint"}


@pytest.mark.parametrize("path", ["/no-such-page", "/api/", "/api/orders", "/event"])
async def test_other_unknown_paths_keep_the_sites_own_404_page(admin, path):
    response = await admin.get(path)
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("evil.example", "this Host header is not served here"),
        ("bad host!", "this Host header is not served here"),
    ],
)
async def test_a_request_django_refuses_before_any_view_is_a_json_400(
    users, host, error
):
    client = AsyncClient(raise_request_exception=False)
    response = await client.get("/healthz", headers={"Host": host})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert body(response) == {"error": error}


@pytest.mark.parametrize(
    ("own_path", "own_page", "notify_path"),
    [
        # its own api/ after notify's include
        ("/api/orders", b"the host's orders", "/api/notifications/nope"),
        # its own page under events/, listed before notify's include
        ("/events/calendar", b"the host's calendar", "/events/archive"),
    ],
)
@override_settings(ROOT_URLCONF="tests.support.root_host_urls")
async def test_a_host_with_notify_at_its_root_keeps_its_own_paths(
    admin, own_path, own_page, notify_path
):
    own = await admin.get(own_path)
    assert own.status_code == 200
    assert own.content == own_page
    ours = await admin.get(notify_path)
    assert ours.status_code == 404
    assert body(ours) == {"error": "no such endpoint"}
