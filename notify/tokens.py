"""API tokens: ``Authorization: Bearer <token>``; only a hash is stored."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from notify.models import APIToken
from notify.prepared import Prepared

logger = logging.getLogger(__name__)

PREFIX = "ntf_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    user: AbstractBaseUser, *, name: str | None = None, can_publish: bool = False
) -> tuple[APIToken, str]:
    """Create a token for ``user``; return it with the secret (shown once)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    name = name or f"{user.get_username()[:93]}-{secrets.token_hex(3)}"  # 100 at most
    token = APIToken.objects.create(
        name=name,
        user=cast(Any, user),  # AUTH_USER_MODEL, whatever the stubs say
        key_hash=hash_token(secret),
        can_publish=can_publish,
    )
    return token, secret


@dataclass(frozen=True, slots=True)
class Bearer:
    present: bool
    token: APIToken | None


def usable() -> QuerySet[APIToken]:
    """The tokens that authenticate: those of active users. Every lookup of
    a bearer token starts here."""
    return APIToken.objects.filter(user__is_active=True)


_TOKEN = Prepared(
    lambda key_hash: usable().filter(key_hash=key_hash).select_related("user"),
    [str],
)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid bearer token allows, without its model instances."""

    user_id: int
    can_publish: bool


_GRANT = Prepared(
    lambda key_hash: (
        usable().filter(key_hash=key_hash).values_list("user_id", "can_publish")
    ),
    [str],
)


def grant(secret: str) -> Grant | None:
    """The token ``secret`` names, if it is valid and its user active: the
    question every publish asks, answered from one row of ids rather than
    the token and user instances :func:`bearer` builds (0.08 ms less of a
    publish's CPU, docs/PERFORMANCE.md)."""
    if not secret:
        return None
    key_hash = hash_token(secret)
    rows = _GRANT.rows(key_hash)
    if not rows:
        return None
    user_id, can_publish = rows[0]
    touch(key_hash)
    return Grant(int(user_id), bool(can_publish))


def bearer_secret(request: HttpRequest) -> str | None:
    """The secret of ``Authorization: Bearer <secret>`` ("" when empty), or
    None when the request sent no bearer token."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def bearer(request: HttpRequest) -> Bearer:
    """The request's bearer token, if it sent one and it is valid, with its
    active user (one query, compiled once: every API call asks this)."""
    secret = bearer_secret(request)
    if secret is None:
        return Bearer(False, None)
    if not secret:
        return Bearer(True, None)
    tokens = _TOKEN.instances(hash_token(secret))
    if not tokens:
        return Bearer(True, None)
    token = tokens[0]
    touch(token.key_hash)
    return Bearer(True, token)


TOUCH_EVERY = 60.0  # seconds between two writes of a token's last_used_at


class _Seen:
    """When this process last wrote (or found fresh) a token's last_used_at,
    by its key hash (not the id: a deleted token's id can come back), or
    rather by that string's own hash, an int a fraction of its size: there is
    one entry per token seen in the last minute, thousands in a reconnect
    storm (a collision only skips a write)."""

    KEEP = 10_000  # entries kept before the first look for stale ones

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.prune_above = self.KEEP
        self.prunes = 0

    def due(self, key_hash: str, now: float) -> bool:
        """Whether the token's use is to be written now (it then counts as
        written): not when it was, or was found fresh, within a minute."""
        seen = hash(key_hash)
        if now - self.at.get(seen, -TOUCH_EVERY) < TOUCH_EVERY:
            return False
        if len(self.at) > self.prune_above:
            self._prune(now)
        self.at[seen] = now
        return True

    def forget(self, key_hash: str) -> None:
        self.at.pop(hash(key_hash), None)

    def _prune(self, now: float) -> None:
        """Forget the tokens not seen for a minute. The next look is once
        the entries have doubled: a storm of thousands of tokens, all seen
        within the minute, would otherwise be looked through at every use."""
        self.prunes += 1
        for key, at in list(self.at.items()):
            if now - at >= TOUCH_EVERY:
                del self.at[key]
        self.prune_above = max(self.KEEP, 2 * len(self.at))


_touched = _Seen()

# The writes run on a thread of their own, so that authenticating never waits
# for the database's write lock (SQLite's is held by every publish, and may be
# by another process for seconds).
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-token-used")


def touch(key_hash: str) -> None:
    """Record that the token with ``key_hash`` authenticated a request.

    At most one write per token and process a minute, and only when the stored
    time is older than that, so a busy token costs no write per request
    however many processes serve it. The writes wait a moment on a thread of
    their own and go out together, one UPDATE per 100 tokens: a reconnect
    storm of thousands of tokens costs a few dozen statements, and the caller
    never waits for the database."""
    if not _touched.due(key_hash, time.monotonic()):
        return
    with _pending_lock:
        first = not _pending
        _pending.add(key_hash)
    if first:
        _writer.submit(_write_soon)


_GATHER = 2.0  # seconds the first pending write waits for others
# Tokens per UPDATE, and the pause between two UPDATEs. On SQLite each holds
# the database's write lock, which a publish needs too: 100 tokens hold it
# about 1 ms here where 500 held it 9-12 ms (and a process that shares a busy
# CPU holds it longer), and the pause lets a waiting writer in between.
_BATCH = 100
_PAUSE = 0.01
_pending: set[str] = set()
_pending_lock = threading.Lock()


def _write_soon() -> None:
    time.sleep(_GATHER)
    try:
        write_used()
    finally:
        # A write every few seconds at most: no connection kept between.
        connections.close_all()


def write_used() -> None:
    """Write the pending last-use times now."""
    with _pending_lock:
        batch = sorted(_pending)
        _pending.clear()
    if not batch:
        return
    close_old_connections()  # as a request would: CONN_MAX_AGE, broken ones
    used = timezone.now()
    stale = Q(last_used_at__isnull=True) | Q(
        last_used_at__lt=used - timedelta(seconds=TOUCH_EVERY)
    )
    for start in range(0, len(batch), _BATCH):
        if start:
            time.sleep(_PAUSE)
        chunk = batch[start : start + _BATCH]
        try:
            APIToken.objects.filter(stale, key_hash__in=chunk).update(last_used_at=used)
        except DatabaseError as exc:
            for key in chunk:
                _touched.forget(key)  # tried again at its next use
            logger.warning("API tokens' last use was not recorded (%s)", exc)


abearer = sync_to_async(bearer)
