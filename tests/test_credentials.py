"""``credentials.identify``: the stream's own authentication agrees with
Django's ``get_user`` on every session, and with the bearer-token rule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.test import Client, RequestFactory
from django.utils import timezone

from notify.credentials import Identity, identify, identify_all
from notify.tokens import create_token

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="pw-alice-1")


def _logged_in(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _request(**headers: Any) -> Any:
    return RequestFactory().get("/events/", **headers)


def _with_session(key: str) -> Any:
    request = _request(HTTP_COOKIE=f"sessionid={key}")
    request.session = SessionStore(key)
    return request


def _django_user_id(key: str) -> int:
    user = get_user(_with_session(key))
    return int(user.pk) if user.is_authenticated else 0


def test_a_logged_in_session_is_its_user(alice):
    key = _logged_in(alice)
    assert identify(_with_session(key)) == Identity(alice.pk)
    assert _django_user_id(key) == alice.pk


def test_no_cookie_and_an_unknown_session_are_nobody(alice):
    assert identify(_request()) == Identity(0)
    assert identify(_with_session("x" * 32)) == Identity(0)


@pytest.mark.parametrize(
    "change",
    ["logged-out", "expired", "deactivated", "deleted", "password", "no-hash"],
)
def test_a_session_django_rejects_is_rejected(alice, change):
    key = _logged_in(alice)
    if change == "logged-out":
        SessionStore(key).delete()
    elif change == "expired":
        past = timezone.now() - timedelta(seconds=1)
        Session.objects.filter(session_key=key).update(expire_date=past)
    elif change == "deactivated":
        User.objects.filter(pk=alice.pk).update(is_active=False)
    elif change == "deleted":
        alice.delete()
    elif change == "password":
        alice.set_password("another-pw-2")
        alice.save()
    else:
        session = SessionStore(key)
        session.load()
        del session["_auth_user_hash"]
        session.save()
    assert identify(_with_session(key)) == Identity(0)


def test_a_password_change_ends_the_session_as_django_does(alice):
    key = _logged_in(alice)
    alice.set_password("another-pw-2")
    alice.save()
    identify(_with_session(key))
    # Django's get_user flushed it: the session row is gone.
    assert not Session.objects.filter(session_key=key).exists()


def test_a_session_signed_with_an_old_secret_is_kept_by_its_fallback(alice, settings):
    key = _logged_in(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    assert identify(_with_session(key)) == Identity(alice.pk)


def test_a_bearer_token_is_its_user_and_never_falls_back_to_the_session(alice):
    _, secret = create_token(alice)
    key = _logged_in(alice)
    assert identify(_request(HTTP_AUTHORIZATION=f"Bearer {secret}")) == Identity(
        alice.pk, by_token=True
    )
    bad = _request(HTTP_AUTHORIZATION="Bearer nope", HTTP_COOKIE=f"sessionid={key}")
    assert identify(bad) == Identity(0, by_token=True, bad_token=True)
    assert identify(_request(HTTP_AUTHORIZATION="Bearer ")).bad_token


def test_a_token_of_a_deactivated_user_is_refused(alice):
    _, secret = create_token(alice)
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert identify(_request(HTTP_AUTHORIZATION=f"Bearer {secret}")).user_id == 0


def test_another_session_engine_is_left_to_django(alice, settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    from django.contrib.sessions.backends.signed_cookies import (
        SessionStore as CookieStore,
    )

    store = CookieStore()
    store["_auth_user_id"] = str(alice.pk)
    store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    store["_auth_user_hash"] = alice.get_session_auth_hash()
    store.save()
    request = _request(HTTP_COOKIE=f"sessionid={store.session_key}")
    request.session = CookieStore(store.session_key)
    assert identify(request) == Identity(alice.pk)


class StaffOnlyBackend(ModelBackend):
    """Reads a field the session check does not load."""

    def user_can_authenticate(self, user: Any) -> bool:
        return bool(super().user_can_authenticate(user) and user.is_staff)


@pytest.mark.parametrize("staff", [True, False])
def test_a_backend_that_reads_other_fields_of_the_user_decides(alice, settings, staff):
    backend = f"{__name__}.StaffOnlyBackend"
    settings.AUTHENTICATION_BACKENDS = [backend]
    User.objects.filter(pk=alice.pk).update(is_staff=staff)
    client = Client()
    client.force_login(alice, backend=backend)
    key = client.cookies["sessionid"].value
    expected = alice.pk if staff else 0
    assert identify(_with_session(key)).user_id == expected
    assert _django_user_id(key) == expected


def test_many_requests_at_once_get_the_answers_each_gets_alone(alice, settings):
    bob = User.objects.create_user("bob", password="pw-bob-1")
    carol = User.objects.create_user("carol", password="pw-carol-1")
    _, bob_token = create_token(bob)
    alice_key, carol_key = _logged_in(alice), _logged_in(carol)
    changed_keys = [_logged_in(bob), _logged_in(bob)]  # one for each pass
    bob.set_password("another-pw-2")  # Django flushes these sessions
    bob.save()

    def requests(changed_key: str) -> list[Any]:
        return [
            _with_session(alice_key),
            _request(HTTP_AUTHORIZATION=f"Bearer {bob_token}"),
            _request(HTTP_AUTHORIZATION="Bearer ntf_no-such-token"),
            _request(HTTP_AUTHORIZATION="Bearer "),
            _request(),
            _with_session("x" * 32),
            _with_session(carol_key),
            _with_session(changed_key),
            _with_session(alice_key),  # twice in one batch
        ]

    together = identify_all(requests(changed_keys[0]))
    expected = [
        Identity(alice.pk),
        Identity(bob.pk, by_token=True),
        Identity(0, by_token=True, bad_token=True),
        Identity(0, by_token=True, bad_token=True),
        Identity(0),
        Identity(0),
        Identity(carol.pk),
        Identity(0),
        Identity(alice.pk),
    ]
    assert together == expected
    assert [identify(request) for request in requests(changed_keys[1])] == expected
    assert not Session.objects.filter(session_key__in=changed_keys).exists()
    credentials = [i.credential for i in together if isinstance(i, Identity)]
    assert credentials[0] == credentials[-1] == alice_key
    assert credentials[6] == carol_key
