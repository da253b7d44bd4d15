"""Openings read together on the Opener's thread (notify/opening.py): a batch
gives each stream what it would get alone, with fewer queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.http import HttpRequest
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notify.conf import conf
from notify.models import Notification
from notify.opening import CURSOR_AHEAD, CURSOR_EXPIRED, _open_batch, open_stream
from notify.publishing import publish
from notify.retention import prune
from notify.visibility import newest_visible_id

pytestmark = pytest.mark.usefixtures("fast_password_hashing")


def _requests(
    tokens: dict[str, str], cursors: list[tuple[str, int | None]]
) -> list[tuple[HttpRequest, int | None]]:
    factory = RequestFactory()
    return [
        (factory.get("/events/", HTTP_AUTHORIZATION=f"Bearer {tokens[name]}"), cursor)
        for name, cursor in cursors
    ]


def test_a_batch_gives_each_opening_what_it_would_get_alone(tokens, users):
    first = publish(title="to all")
    publish(title="to ops", audience={"groups": ["ops"]})
    latest = publish(title="to carol", audience={"users": ["carol"]})
    tokens = tokens | {"nobody": "ntf_not-a-token"}
    cursors = [
        ("alice", first.id),
        ("bob", first.id),
        ("nobody", None),
        ("carol", latest.id + 100),  # ahead of the database
        ("admin", None),
    ]
    with CaptureQueriesContext(connection) as each:
        alone = [
            open_stream(request, cursor)
            for request, cursor in _requests(tokens, cursors)
        ]
    with CaptureQueriesContext(connection) as together:
        batch = _open_batch(_requests(tokens, cursors))

    assert batch == [(True, found) for found in alone]
    alice, bob, nobody, carol, admin = (opening for _, opening in alone)
    assert nobody is None
    assert alice is not None and bob is not None and carol is not None
    assert (alice.newest, alice.latest, alice.cursor) == (first.id, latest.id, first.id)
    assert bob.newest == latest.id - 1  # the group's, not carol's
    assert (carol.reset, carol.cursor, carol.newest) == (CURSOR_AHEAD, None, latest.id)
    assert alice.replayed is None  # not behind
    assert bob.replayed is not None and bob.replayed.count == 1
    # Alone, each opening reads its token, its groups, the newest id of all,
    # its newest visible id and, with a cursor, the retention mark. Together:
    # the five tokens in one query, the four viewers' groups in one, the
    # newest of all and the retention mark once; only the newest visible id
    # is read per viewer. Bob is behind: his replay, who its group row is
    # addressed to, his read cursor and marks.
    assert len(each) == 5 + 4 * 3 + 2 + 4
    assert len(together) == 1 + 1 + 1 + 4 + 1 + 4


def test_after_a_broadcast_no_viewer_needs_a_newest_id_query(tokens, users):
    """The newest row is to everyone: it is every viewer's newest, read
    with the newest of all, as each viewer's own query would find it."""
    publish(title="to carol", audience={"users": ["carol"]})
    publish(title="to ops", audience={"groups": ["ops"]})
    broadcast = publish(title="to all", expires_at=timezone.now() + timedelta(hours=1))
    cursors: list[tuple[str, int | None]] = [
        ("alice", None),
        ("bob", None),
        ("carol", None),
    ]
    with CaptureQueriesContext(connection) as together:
        batch = _open_batch(_requests(tokens, cursors))
    for (ok, (_, opening)), (name, _) in zip(batch, cursors, strict=True):
        assert ok and opening is not None
        assert opening.newest == opening.latest == broadcast.id
        assert opening.newest == newest_visible_id(users[name].pk)
    # The tokens, the groups, the newest row: nothing per viewer.
    assert len(together) == 3


def test_an_expired_broadcast_is_nobodys_newest(tokens, users):
    kept = publish(title="to all")
    mine = publish(title="to carol", audience={"users": ["carol"]})
    gone = publish(title="to all, expiring")
    Notification.objects.filter(pk=gone.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    cursors: list[tuple[str, int | None]] = [("alice", None), ("carol", None)]
    [(_, (_, alice)), (_, (_, carol))] = _open_batch(_requests(tokens, cursors))
    assert alice is not None and carol is not None
    assert (alice.newest, alice.latest) == (kept.id, gone.id)
    assert (carol.newest, carol.latest) == (mine.id, gone.id)


def test_a_cursor_below_retention_is_reset_in_a_batch(tokens, users):
    old = publish(title="old")
    publish(title="missed")
    prune(timezone.now() + timedelta(days=conf.retention_days + 1))  # all so far
    publish(title="new")
    cursors = [("alice", old.id), ("bob", None)]
    [(_, (_, alice)), (_, (_, bob))] = _open_batch(_requests(tokens, cursors))
    assert alice is not None and bob is not None
    assert (alice.reset, alice.cursor) == (CURSOR_EXPIRED, 0)
    assert (bob.reset, bob.cursor) == (None, None)


class BrokenBackend(ModelBackend):
    """A backend whose get_user fails: Django's own get_user is asked for
    its sessions, and raises."""

    def get_user(self, user_id: Any) -> Any:
        raise RuntimeError("the backend is broken")


def _session_request(user: Any, backend: str | None = None) -> Any:
    """A stream's request, signed in by session (as the middleware leaves it)."""
    client = Client()
    client.force_login(user, backend=backend)
    request = RequestFactory().get("/events/")
    request.COOKIES["sessionid"] = client.cookies["sessionid"].value
    request.session = SessionStore(request.COOKIES["sessionid"])
    return request


def _broken_session(settings: Any, user: Any) -> Any:
    backend = f"{__name__}.BrokenBackend"
    settings.AUTHENTICATION_BACKENDS = [backend, *settings.AUTHENTICATION_BACKENDS]
    return _session_request(user, backend)


def test_an_opening_that_fails_fails_alone(tokens, users, settings):
    broken = _broken_session(settings, users["bob"])
    items = [*_requests(tokens, [("alice", None)]), (broken, None)]
    items += _requests(tokens, [("carol", None)])

    (ok_alice, alice), (ok_broken, error), (ok_carol, carol) = _open_batch(items)

    assert ok_alice and alice[0].user_id == users["alice"].pk
    assert not ok_broken and isinstance(error, RuntimeError)
    assert ok_carol and carol[0].user_id == users["carol"].pk


def test_a_session_that_django_renews_is_kept_when_another_opening_fails(
    tokens, users, settings
):
    # A session whose hash only the old SECRET_KEY verifies: Django's
    # get_user moves it to a new key, once. An opening that fails beside it
    # must not make it be checked twice (the second time, its old key is gone).
    renewed = _session_request(users["alice"])
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    broken = _broken_session(settings, users["bob"])

    (ok, (identity, opening)), (failed, _) = _open_batch(
        [(renewed, None), (broken, None)]
    )

    assert ok and not failed
    assert identity.user_id == users["alice"].pk and opening is not None
    assert identity.credential == renewed.session.session_key  # the new key
