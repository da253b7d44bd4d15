"""What must hold on every database backend alike (the suite runs once per
backend: ``--database=sqlite`` and ``--database=postgres``).

- NUL (U+0000) in any string of a publish is a 400 naming its field, before
  the database sees it (PostgreSQL refuses NUL in text and in JSON; SQLite
  would store it).
- Publishers in several OS processes commit in id order: a reader never sees
  an id below one it has already seen (SQLite's IMMEDIATE transactions,
  PostgreSQL's transaction-level advisory lock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import AsyncClient

from notify.exceptions import ValidationError
from notify.models import Notification
from notify.publishing import publish
from notify.tokens import create_token
from notify.validation import NUL
from tests.support.api import body, post_json
from tests.support.servers import ROOT, wait_for

NUL_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"title": "a\x00b"}, "title"),
    ({"title": "\x00"}, "title"),
    ({"body": "line\x00"}, "body"),
    ({"url": "/path\x00"}, "url"),
    ({"url": "https://example.com/\x00"}, "url"),
    ({"data": {"k": "v\x00"}}, "data"),
    ({"data": {"k\x00": 1}}, "data"),
    ({"data": {"list": [1, {"deep": ["x", "\x00"]}]}}, "data"),
    ({"audience": {"users": ["alice", "bo\x00b"]}}, "audience"),
    ({"audience": {"groups": ["\x00ops"]}}, "audience"),
]


@pytest.mark.parametrize(("fields", "field"), NUL_FIELDS)
async def test_nul_anywhere_in_a_published_string_is_400_naming_the_field(
    admin, fields, field
):
    payload = {"audience": "all", "title": "ok", **fields}
    response = await post_json(admin, payload)
    assert response.status_code == 400, response.content
    errors = body(response)["errors"]
    assert list(errors) == [field]
    assert errors[field] == [NUL]
    assert not await Notification.objects.aexists()


@pytest.mark.parametrize(("fields", "field"), NUL_FIELDS)
def test_nul_is_refused_by_field_from_python_callers_too(users, fields, field):
    with pytest.raises(ValidationError) as caught:
        publish(**{"audience": "all", "title": "ok", **fields})
    assert caught.value.errors == {field: [NUL]}
    assert not Notification.objects.exists()


async def test_the_text_nul_escape_and_other_control_characters_are_stored(admin):
    """Only U+0000 itself is refused: the six characters \\u0000, and other
    control characters, are text like any other, on every backend."""
    payload = {
        "audience": "all",
        "title": "\\u0000 \x01\x1f",
        "body": "tab\tnew\nline\x7f",
        "data": {"\\u0000": ["\\u0000", "\x01"]},
    }
    response = await post_json(admin, payload)
    assert response.status_code == 201, response.content
    stored = await Notification.objects.aget(pk=body(response)["id"])
    assert (stored.title, stored.body, stored.data) == (
        payload["title"],
        payload["body"],
        payload["data"],
    )


PUBLISHER = """
import random, sys, time
from pathlib import Path

import django

django.setup()
from django.db import transaction

from notify.publishing import publish

name, count, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(name)
(barrier.parent / f"ready-{name}").touch()
deadline = time.monotonic() + 30
while not barrier.exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.002)
for i in range(count):
    # Work between taking an id and committing: the window in which another
    # publisher's later id could otherwise become visible first.
    with transaction.atomic():
        publish(title=f"{name}-{i}")
        time.sleep(rng.uniform(0, 0.004))
"""


def test_publishers_in_several_processes_commit_in_id_order(
    transactional_db, server_env, tmp_path
):
    processes, each = 4, 40
    barrier = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, f"p{k}", str(each), str(barrier)],
            env=server_env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in range(processes)
    ]
    seen: set[int] = set()
    newest = 0
    late: list[tuple[int, int]] = []  # (an id seen late, the newest seen before)
    try:
        wait_for(
            lambda: (
                all((tmp_path / f"ready-p{k}").exists() for k in range(processes))
                or any(w.poll() is not None for w in workers)
            ),
            60,
            "publisher processes",
        )
        barrier.touch()
        deadline = time.monotonic() + 60
        while len(seen) < processes * each:
            assert time.monotonic() < deadline, f"only {len(seen)} committed"
            if any(w.poll() not in (None, 0) for w in workers):
                break
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT id FROM {Notification._meta.db_table} ORDER BY id"
                )
                ids = [row[0] for row in cursor.fetchall()]
            fresh = [i for i in ids if i not in seen]
            late += [(i, newest) for i in fresh if i < newest]
            seen.update(fresh)
            newest = max(seen, default=0)
    finally:
        outputs = []
        for worker in workers:
            try:
                out, _ = worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate(timeout=10)
            outputs.append(out.decode(errors="replace"))
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
    assert not late, f"ids became visible after a higher one: {late[:10]}"
    assert len(seen) == processes * each
    titles = Notification.objects.order_by("id").values_list("title", flat=True)
    for k in range(processes):
        mine = [t for t in titles if t.startswith(f"p{k}-")]
        assert mine == [f"p{k}-{i}" for i in range(each)]


@pytest.mark.parametrize(
    "path", ["/api/notifications", "/events/poll?timeout=0", "/events/", "/"]
)
async def test_a_session_cookie_with_nul_is_nobody(users, path):
    """A quoted cookie value may escape any byte ("\\000" is NUL once Django
    unquotes it): a session key no session has, on every backend."""
    client = AsyncClient(raise_request_exception=False)
    # Sent quoted, as Cookie: sessionid="abc\\000defghijkl"
    client.cookies[settings.SESSION_COOKIE_NAME] = "abc\x00defghijkl"
    response = await client.get(path)
    assert response.status_code in (302, 401), response.status_code


def test_a_default_token_name_fits_its_column_for_the_longest_username(db):
    """PostgreSQL enforces varchar lengths (SQLite does not): the default
    name, "<username>-<6 hex digits>", must fit in 100 characters."""
    user = User.objects.create(username="u" * 150)
    token, _ = create_token(user)
    token.refresh_from_db()
    assert len(token.name) <= 100
    assert token.name.startswith("u" * 50)


async def test_data_reads_the_same_live_and_from_the_database(admin, close_broker):
    """jsonb (PostgreSQL) keeps an object's keys in an order of its own; data
    is put in that order when published, so the publish response (the live
    event's JSON) and every read from the database agree, on every backend."""
    data = {"zeta": 1, "a": [{"kk": 1, "k": 2}], "mm": {"y": 1, "b": 2}, "ä": 0, "é": 1}
    created = body(
        await post_json(admin, {"audience": "all", "title": "t", "data": data})
    )
    inbox = body(await admin.get("/api/notifications"))["results"]
    poll = body(await admin.get("/events/poll", {"after": 0, "timeout": 0}))["events"]
    forms = {
        "published": created["data"],
        "inbox": inbox[0]["data"],
        "poll": poll[0]["data"]["data"],
    }
    assert {json.dumps(form) for form in forms.values()} == {
        '{"a": [{"k": 2, "kk": 1}], "mm": {"b": 2, "y": 1}, "\\u00e4": 0, '
        '"\\u00e9": 1, "zeta": 1}'
    }, forms
    assert created["data"] == data


async def test_numbers_in_data_read_the_same_live_and_from_the_database(
    admin, close_broker
):
    """jsonb keeps numbers as decimals: 1e+16 comes back as 10000000000000000
    and -0.0 as 0.0. Published data takes those forms, on every backend."""
    data = {
        "big": 1e16,
        "huge": 1.5e300,
        "small": 1e-07,
        "int": 12345678901234567890123,
        "one": 1.0,
        "negzero": -0.0,
        "tenth": 0.1,
        "tiny": 5e-324,
        "max": 1.7976931348623157e308,
    }
    created = body(
        await post_json(admin, {"audience": "all", "title": "t", "data": data})
    )
    inbox = body(await admin.get("/api/notifications"))["results"]
    poll = body(await admin.get("/events/poll", {"after": 0, "timeout": 0}))["events"]
    forms = [created["data"], inbox[0]["data"], poll[0]["data"]["data"]]
    assert len({json.dumps(form) for form in forms}) == 1, forms
    stored = forms[0]
    assert stored["big"] == 10**16 and isinstance(stored["big"], int)
    assert stored["huge"] == int(Decimal("1.5e300"))
    assert json.dumps(stored["negzero"]) == "0.0"
    assert [stored[k] for k in ("small", "one", "tenth", "tiny")] == [
        1e-07,
        1.0,
        0.1,
        5e-324,
    ]
    assert stored["int"] == 12345678901234567890123
    assert stored["max"] == int(Decimal("1.7976931348623157e308"))


async def test_data_too_large_as_stored_is_refused(admin):
    """The 16 KiB limit applies to data as stored: 1e300 takes 301 digits."""
    response = await post_json(
        admin, {"audience": "all", "title": "t", "data": {"n": [1e300] * 60}}
    )
    assert response.status_code == 400
    assert list(body(response)["errors"]) == ["data"]
