"""Who is connecting: a bearer token or the session, in synchronous code.

:func:`identify` answers the question every new stream asks, with queries
compiled once per process (:mod:`notify.prepared`) instead of the ORM calls
Django's authentication makes, which cost about a millisecond each to build.

The session path mirrors ``django.contrib.auth.get_user`` for the common case
only: the database session engine, ``ModelBackend`` (or a subclass that keeps
its ``get_user``), an integer primary key, and a session hash that verifies
with the current ``SECRET_KEY``. Anything else (another engine or backend, a
hash that needs a fallback key and so a session rewrite, an invalid hash that
Django answers by flushing the session) is handed to Django's own
``get_user``, so the outcome is always Django's. ``tests/test_canary.py``
fails when the Django code mirrored here changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import DEFAULT_DB_ALIAS, models
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from notify.prepared import PreparedIn
from notify.tokens import bearer_secret, hash_token, touch, usable

DB_SESSIONS = "django.contrib.sessions.backends.db"


@dataclass(frozen=True, slots=True)
class Identity:
    """``user_id`` is 0 when nobody is authenticated.

    ``credential`` is what an open stream is re-checked by (see
    :mod:`notify.access`): the API token's primary key, or the session key.
    ``expires``: when the session expires (POSIX time), if known.
    """

    user_id: int
    by_token: bool = False
    bad_token: bool = False
    credential: int | str | None = field(default=None, compare=False, repr=False)
    expires: float | None = field(default=None, compare=False)


_TOKEN_USERS = PreparedIn(
    lambda key_hashes: (
        usable()
        .filter(key_hash__in=key_hashes)
        .values_list("key_hash", "user_id", "id")
    ),
    str,
)


def identify(request: HttpRequest) -> Identity:
    """Bearer token first; otherwise the session. An invalid token never
    falls back to the session (the same rule as ``permissions.acaller``)."""
    [found] = identify_all([request])
    if isinstance(found, Exception):
        raise found
    return found


def identify_all(requests: Sequence[HttpRequest]) -> list[Identity | Exception]:
    """:func:`identify` for several requests: the same answers, in order, each
    lookup made once for all of them (tokens, sessions, their users) rather
    than once per request. Where checking one request raised (an
    authentication backend's error), its answer is that exception, and the
    others are answered all the same."""
    found: list[Identity | Exception | None] = [None] * len(requests)
    secrets: dict[int, str] = {}
    keys: dict[int, str | None] = {}
    for i, request in enumerate(requests):
        secret = bearer_secret(request)
        if secret is None:
            keys[i] = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        elif secret:
            secrets[i] = hash_token(secret)
        else:
            found[i] = Identity(0, by_token=True, bad_token=True)
    if secrets:
        hashes = sorted(set(secrets.values()))
        tokens = {h: (u, t) for h, u, t in _TOKEN_USERS.rows(hashes)}
        for i, key_hash in secrets.items():
            token = tokens.get(key_hash)
            if token is None:
                found[i] = Identity(0, by_token=True, bad_token=True)
                continue
            touch(key_hash)
            user_id, token_id = token
            found[i] = Identity(int(user_id), by_token=True, credential=int(token_id))
    if keys:
        sessions = _session_users(set(keys.values()))
        for i, key in keys.items():
            fast = sessions[key]
            if isinstance(fast, Exception):
                found[i] = fast
            elif fast is not None:
                found[i] = Identity(fast[0], credential=key, expires=fast[1])
            else:
                try:
                    found[i] = _django_identity(requests[i], key)
                except Exception as exc:
                    found[i] = exc
    answers = [answer for answer in found if answer is not None]
    if len(answers) != len(requests):
        raise RuntimeError("a request was left without an answer")
    return answers


def _django_identity(request: HttpRequest, key: str | None) -> Identity:
    user = auth.get_user(request)
    if not (user.is_authenticated and getattr(user, "is_active", True)):
        return Identity(0)
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None) or key
    expires = session.get_expiry_date().timestamp() if session is not None else None
    return Identity(int(user.pk), credential=key, expires=expires)


@cache
def _sessions_query() -> PreparedIn:
    model = _session_store().get_model_class()  # type: ignore[attr-defined]
    return PreparedIn(
        lambda keys, now: model.objects.filter(
            session_key__in=keys, expire_date__gt=now
        ).values_list("session_key", "session_data", "expire_date"),
        str,
        [datetime],
    )


_USING = DEFAULT_DB_ALIAS  # where the prepared queries run


@cache
def _users_query() -> PreparedIn:
    user_model = auth.get_user_model()
    return PreparedIn(
        lambda pks: user_model._default_manager.filter(pk__in=pks).values_list(
            "pk", "password", "is_active"
        ),
        int,
    )


def _session_store() -> type[SessionBase]:
    store: type[SessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
    return store


@cache
def _fast_path_applies(engine: str, user_model: Any) -> bool:
    # Once per engine and model: a method replaced on the model later is
    # not seen.
    fields = {f.name for f in user_model._meta.concrete_fields}
    return (
        engine == DB_SESSIONS
        and isinstance(user_model._meta.pk, models.AutoField | models.IntegerField)
        and {"password", "is_active"} <= fields
        and user_model.get_session_auth_hash is AbstractBaseUser.get_session_auth_hash
    )


@cache
def _in_field_order(model: Any, attnames: tuple[str, ...]) -> list[str]:
    """``attnames`` in the order of the model's columns, as ``from_db`` reads
    its values."""
    return [f.attname for f in model._meta.concrete_fields if f.attname in attnames]


_NOBODY = (0, None)

_ASK_DJANGO = None


_SessionAnswer = tuple[int, float | None] | Exception | None


def _session_users(keys: set[str | None]) -> dict[str | None, _SessionAnswer]:
    """For each session key: its user id (0 for nobody) and expiry, None (ask
    Django), or the exception its check raised. Two queries however many
    keys: the sessions, then their users."""
    user_model: Any = auth.get_user_model()
    if not _fast_path_applies(settings.SESSION_ENGINE, user_model):
        return dict.fromkeys(keys, _ASK_DJANGO)
    found: dict[str | None, _SessionAnswer] = {}
    lookup = []
    for key in keys:
        if not key or "\x00" in key:  # no session has NUL in its key
            found[key] = _NOBODY
        else:
            lookup.append(key)
    rows = _sessions_query().rows(sorted(lookup), timezone.now()) if lookup else []
    stored = {key: (data, expire_date) for key, data, expire_date in rows}
    claims: dict[str, tuple[_Claim, datetime]] = {}  # awaiting the user's row
    for key in lookup:
        if key not in stored:
            found[key] = _NOBODY  # no such session, or expired: load() finds {}
            continue
        data, expire_date = stored[key]
        try:
            claim = _claim(_session_store()().decode(data), user_model)
        except Exception as exc:
            found[key] = exc
            continue
        if isinstance(claim, _Claim):
            claims[key] = (claim, expire_date)
        else:
            found[key] = claim
    users_rows = _users_query().rows(sorted({c.pk for c, _ in claims.values()}))
    users = {pk: (password, active) for pk, password, active in users_rows}
    for key, (claim, expire_date) in claims.items():
        if claim.pk not in users:
            found[key] = _NOBODY  # the user is gone: Django's get_user finds None
            continue
        try:
            verdict = _verify(claim, users[claim.pk], user_model)
        except Exception as exc:
            found[key] = exc
            continue
        if verdict:
            found[key] = (claim.pk, expire_date.timestamp())
        else:
            found[key] = _ASK_DJANGO if verdict is None else _NOBODY
    return found


@dataclass(frozen=True, slots=True)
class _Claim:
    """A decoded session's user, and the backend that logged it in."""

    session: dict[str, Any]
    backend: ModelBackend
    pk: int


def _claim(
    session: dict[str, Any], user_model: Any
) -> _Claim | tuple[int, float | None] | None:
    """Whom a decoded session names, by which backend; or the answer
    already: nobody (``_NOBODY``), or None (ask Django)."""
    user_key = session.get(auth.SESSION_KEY)
    backend_path = session.get(auth.BACKEND_SESSION_KEY)
    if user_key is None or backend_path is None:
        return _NOBODY
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return _NOBODY
    backend = auth.load_backend(backend_path)
    if not isinstance(backend, ModelBackend) or (
        type(backend).get_user is not ModelBackend.get_user
    ):
        return _ASK_DJANGO
    try:
        pk = int(user_model._meta.pk.to_python(user_key))
    except (TypeError, ValueError, ValidationError):
        return _ASK_DJANGO
    return _Claim(session, backend, pk)


def _verify(claim: _Claim, row: tuple[str, Any], user_model: Any) -> bool | None:
    """True when the session's hash is its user's, False when the backend
    refuses the user, None otherwise (ask Django)."""
    password, is_active = row
    # As loaded from the database, its other fields deferred (read on first
    # use, as after a queryset's only()): no defaults built for them.
    loaded = {user_model._meta.pk.attname: claim.pk, "password": password}
    loaded["is_active"] = bool(is_active)
    names = _in_field_order(user_model, tuple(loaded))
    user = user_model.from_db(_USING, names, [loaded[name] for name in names])
    try:
        if not claim.backend.user_can_authenticate(user):
            return False
    except ObjectDoesNotExist:  # deleted since: a deferred field found no row
        return False
    session_hash = claim.session.get(auth.HASH_SESSION_KEY)
    if session_hash and constant_time_compare(
        session_hash, user.get_session_auth_hash()
    ):
        return True
    return None  # a fallback key (and a new session key) or a flush


def session_user(key: str) -> tuple[int, float | None]:
    """The user a session belongs to (0 for nobody) and when it expires, as
    :func:`identify` would find them, but without changing anything: no new
    session key for a hash made with a fallback key, no flush of a session
    whose hash no longer matches (that one just belongs to nobody). Open
    streams are re-checked with it (:mod:`notify.access`)."""
    return session_users([key])[key]


def session_users(keys: Iterable[str]) -> dict[str, tuple[int, float | None]]:
    """:func:`session_user` for several sessions: the common case in two
    queries for all of them (the sessions, then their users)."""
    answers: dict[str, tuple[int, float | None]] = {}
    for key, found in _session_users(set(keys)).items():
        if isinstance(found, Exception):
            raise found
        assert key is not None  # only the keys asked for
        answers[key] = _django_session_user(key) if found is None else found
    return answers


def _django_session_user(key: str) -> tuple[int, float | None]:
    """:func:`session_user` through Django's session store and backend."""
    store = _session_store()(key)
    session = store.load()  # {} when missing or expired; nothing is written
    user_key = session.get(auth.SESSION_KEY)
    backend_path = session.get(auth.BACKEND_SESSION_KEY)
    session_hash = session.get(auth.HASH_SESSION_KEY)
    if not (user_key and session_hash and isinstance(backend_path, str)) or (
        backend_path not in settings.AUTHENTICATION_BACKENDS
    ):
        return _NOBODY
    user_model: Any = auth.get_user_model()
    try:
        pk = user_model._meta.pk.to_python(user_key)
    except ValidationError:
        return _NOBODY
    user = auth.load_backend(backend_path).get_user(pk)
    if user is None or not getattr(user, "is_active", True):
        return _NOBODY
    hashes = [user.get_session_auth_hash()]
    fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
    if fallbacks is not None:
        hashes += list(fallbacks())
    if any(constant_time_compare(session_hash, h) for h in hashes):
        return int(user.pk), store.get_expiry_date().timestamp()
    return _NOBODY
