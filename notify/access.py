"""Access re-checks: an open stream ends once its credential stops being valid.

A stream is opened with one credential (:attr:`Identity.credential`): an API
token (its primary key) or a session (its key). Whatever invalidates one is a
model signal in the process that made the change (a request, the admin, a
shell, ``notify_token revoke``, a worker), and becomes a broker message, so it
reaches every server process (through Redis) within milliseconds:

- ``revoke <target>`` for a change whose outcome is known: a logout, a deleted
  session, a deleted token, a deactivated or deleted user. The fanout queues
  ``event: revoked`` as the last frame of the matching streams of that user;
  each then ends, and a reconnect with the same credential gets 401.
- ``recheck`` for a change that needs the database to tell: a user saved (a
  new password ends the sessions whose hash no longer matches), group
  membership changed. The :class:`Rechecker` of each process re-runs the
  credential check for that user's streams on the opening thread, and also
  whenever a session reaches its expiry.

Groups: a stream that left a group stops receiving that group's messages at
once (its routing changes in place); a stream that joined one is closed with a
short ``retry:``, and the browser reconnects with its cursor, so the database
replays whatever the new group got meanwhile, in order.

The session key never leaves the process: messages name a session by a digest.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import heapq
import logging
import random
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.contrib import auth

from notify import metrics, sse
from notify.broker import Broker, Message, Subscription
from notify.credentials import session_users
from notify.models import APIToken
from notify.opening import get_opener
from notify.prepared import PreparedIn
from notify.visibility import load_viewers

logger = logging.getLogger(__name__)

LOGGED_OUT = "logged-out"
SESSION_ENDED = "session-ended"
TOKEN_REVOKED = "token-revoked"
USER_INACTIVE = "user-inactive"

EVERY_CREDENTIAL = "*"


def credential_key(credential: int | str | None) -> str:
    """How messages name a credential: ``t<token id>`` or ``s<digest>``."""
    if isinstance(credential, int):
        return f"t{credential}"
    if isinstance(credential, str):
        return "s" + hashlib.sha256(credential.encode()).hexdigest()[:32]
    return ""


def matches(sub: Subscription, target: str) -> bool:
    return sub.credential is not None and credential_key(sub.credential) == target


def _channels(user_ids: Iterable[int]) -> tuple[str, ...]:
    return tuple(sorted({f"user:{int(pk)}" for pk in user_ids}))


def revoke_message(user_id: int, target: str, reason: str) -> Message:
    """End ``user_id``'s streams opened with ``target`` (or every one)."""
    frame = sse.event("revoked", {"reason": reason})
    return Message(0, _channels([user_id]), frame, control=f"revoke {target}")


def recheck_message(user_ids: Iterable[int], newest: int | None = None) -> Message:
    """Ask every process to check these users' streams against the database.

    ``newest``: the newest notification id when their groups changed; a
    stream that must reconnect for a new group resumes from there."""
    control = "recheck" if newest is None else f"recheck {newest}"
    return Message(0, _channels(user_ids), b"", control=control)


def reconnect_message(newest: int | None) -> Message:
    """End a stream so that its browser reconnects soon: a ``retry:`` spread
    over a second keeps a large group change from turning into one burst of
    reconnects. With ``newest``, the stream first moves the browser's cursor
    back to it (an ``id:`` without data), so that the reconnect replays what a
    new group received since the change, even below ids already sent (the
    client drops what it has seen)."""
    frame = sse.retry(random.randint(250, 1500))
    control = "reconnect" if newest is None else f"reconnect {newest}"
    return Message(0, (), frame, control=control)


def _user_of(sub: Subscription) -> int:
    for channel in sub.channels:
        if channel.startswith("user:"):
            return int(channel[5:])
    return 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a re-check: ``reason`` to end the stream (None: it
    stays), the channels it is entitled to now, and when to look again."""

    reason: str | None
    channels: frozenset[str] = frozenset()
    expires: float | None = None


_LIVE_TOKENS = PreparedIn(
    lambda pks: APIToken.objects.filter(pk__in=pks, user__is_active=True).values_list(
        "pk", "user_id"
    ),
    int,
)


@cache
def _active_query(user_model: Any) -> PreparedIn | None:
    """Active users among some ids, in one query; None when the user model
    has no ``is_active`` column (then each user is loaded, see below)."""
    if "is_active" not in {f.attname for f in user_model._meta.concrete_fields}:
        return None
    return PreparedIn(
        lambda pks: user_model._default_manager.filter(
            pk__in=pks, is_active=True
        ).values_list("pk"),
        int,
    )


def _active_users(user_ids: set[int]) -> set[int]:
    user_model: Any = auth.get_user_model()
    query = _active_query(user_model)
    if query is not None:
        return {int(pk) for (pk,) in query.rows(sorted(user_ids))}
    users = user_model._default_manager.filter(pk__in=user_ids)
    return {int(user.pk) for user in users if getattr(user, "is_active", True)}


def check(items: Sequence[tuple[int, int | str | None]]) -> list[Verdict]:
    """Re-check ``(user id, credential)`` pairs against the database
    (synchronous: it runs on the opening thread). Each kind of lookup (users,
    their groups, tokens, sessions) is one query per 64 distinct records, not
    one per pair: a group change re-checks hundreds of streams at once. Only
    active users' credentials are looked up."""
    active = _active_users({user_id for user_id, _ in items})
    viewers = load_viewers(active)
    token_ids = sorted({c for u, c in items if isinstance(c, int) and u in active})
    tokens = dict(_LIVE_TOKENS.rows(token_ids)) if token_ids else {}
    sessions = session_users(
        {c for u, c in items if isinstance(c, str) and u in active}
    )
    verdicts = []
    for user_id, credential in items:
        if user_id not in active:
            verdicts.append(Verdict(USER_INACTIVE))
            continue
        channels = viewers[user_id].channels
        if isinstance(credential, int):
            alive = tokens.get(credential) == user_id
            verdicts.append(Verdict(None if alive else TOKEN_REVOKED, channels))
        elif isinstance(credential, str):
            owner, expires = sessions[credential]
            if owner != user_id:
                verdicts.append(Verdict(SESSION_ENDED))
            else:
                verdicts.append(Verdict(None, channels, expires))
        else:
            verdicts.append(Verdict(None, channels))
    return verdicts


_CHUNK = 256  # subscriptions re-checked per trip to the opening thread


class Rechecker:
    """Per event loop: runs ``recheck`` messages and session expiries.

    Subscriptions to look at collect in a set, and one task at a time checks
    them all in one trip to the opening thread, so a burst of changes costs
    one database round per burst, not one per stream.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._loop = asyncio.get_running_loop()
        self._pending: set[Subscription] = set()
        self._newest: dict[Subscription, int] = {}  # see recheck_message
        self._task: asyncio.Task[None] | None = None
        self._expiries: list[tuple[float, int, Subscription]] = []
        self._pushed = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due_at = float("inf")

    def __call__(self, subs: Sequence[Subscription], newest: str = "") -> None:
        self._pending.update(subs)
        if newest.isdigit():
            mark = int(newest)
            for sub in subs:
                self._newest[sub] = min(self._newest.get(sub, mark), mark)
        if self._task is None:
            self._task = self._loop.create_task(
                self._run(), context=contextvars.Context()
            )

    def missed(self, sub: Subscription, since: float) -> None:
        """Apply to a new subscription the control messages for its user that
        arrived after ``since`` (loop time; when its credential was read) and
        before it subscribed: a revocation in that window would otherwise
        never reach it."""
        fanout = self._broker.fanout
        if not fanout.recent or fanout.recent[-1][0] < since:
            return
        user = f"user:{_user_of(sub)}"
        found = []
        for at, message in reversed(fanout.recent):
            if at < since:
                break
            if user in message.channels:
                found.append(message)
        for message in reversed(found):
            fanout.apply_control(message, (sub,))

    def expire_at(self, sub: Subscription, expires: float) -> None:
        """Re-check ``sub`` when its session expires (POSIX time)."""
        if sub.expires == expires:
            return  # already due then
        sub.expires = expires
        self._pushed += 1
        if self._pushed > 64 and self._pushed > len(self._expiries) // 2:
            self._expiries = [e for e in self._expiries if not e[2].ended]
            heapq.heapify(self._expiries)
            self._pushed = 0
        heapq.heappush(self._expiries, (expires, id(sub), sub))
        self._arm()

    def _arm(self) -> None:
        if not self._expiries:
            return
        due = self._expiries[0][0]
        if due >= self._due_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._due_at = due
        delay = max(0.0, due - time.time())
        self._timer = self._loop.call_at(self._loop.time() + delay, self._expired)

    def _expired(self) -> None:
        self._timer, self._due_at = None, float("inf")
        now = time.time()
        due = []
        while self._expiries and self._expiries[0][0] <= now:
            expires, _, sub = heapq.heappop(self._expiries)
            if not sub.ended and sub.expires == expires:  # else superseded
                sub.expires = None
                due.append(sub)
        if due:
            self(due)
        self._arm()

    async def _run(self) -> None:
        try:
            while self._pending:
                # A bounded chunk per trip to the opening thread: a change to
                # a large group must not hold new streams up for long.
                subs: list[Subscription] = []
                while self._pending and len(subs) < _CHUNK:
                    sub = self._pending.pop()
                    if not (sub.ended or sub.lagged):
                        subs.append(sub)
                    else:
                        self._newest.pop(sub, None)
                if not subs:
                    continue
                items = [(_user_of(s), s.credential) for s in subs]
                try:
                    verdicts = await get_opener().run(check, items)
                except Exception:
                    logger.exception("re-checking %d streams failed", len(subs))
                    await asyncio.sleep(1)
                    self._pending.update(subs)
                    continue
                for sub, verdict in zip(subs, verdicts, strict=True):
                    self._apply(sub, verdict, self._newest.pop(sub, None))
        finally:
            self._task = None

    def _apply(self, sub: Subscription, verdict: Verdict, newest: int | None) -> None:
        if sub.ended or sub.lagged:
            return
        if verdict.reason is not None:
            sub.end(revoke_message(_user_of(sub), EVERY_CREDENTIAL, verdict.reason))
            metrics.REVOKED.inc()
            return
        channels = frozenset(sub.channels)
        if verdict.channels != channels:
            if verdict.channels <= channels:
                self._broker.resubscribe(sub, verdict.channels)
            else:
                sub.end(reconnect_message(newest))
                return
        if verdict.expires is not None:
            self.expire_at(sub, verdict.expires)


_recheckers: weakref.WeakKeyDictionary[Broker, Rechecker] = weakref.WeakKeyDictionary()


def rechecker(broker: Broker) -> Rechecker:
    """The broker's rechecker, hooked into its fanout on first use."""
    found = _recheckers.get(broker)
    if found is None:
        found = _recheckers[broker] = Rechecker(broker)
        broker.fanout.on_recheck = found
        broker.fanout.matches = matches
    return found
