"""Model and auth signals that end or re-check open streams (see
:mod:`notify.access`), connected by ``NotifyConfig.ready``.

Each receiver runs in the process that made the change and hands a message to
the broker once the change is committed; with Redis, every server process gets
it. In a server process the message goes to its event loop's broker without
the saving thread waiting, after the ones committed before it; elsewhere (a
shell, a worker) it is sent at once, for at most ``ANNOUNCE_TIMEOUT`` seconds,
so an unreachable Redis never holds up a save for long. Saves that change nothing an open stream depends on send
nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_init, post_save
from django.utils import timezone

from notify import accounts, active_users
from notify.access import (
    EVERY_CREDENTIAL,
    LOGGED_OUT,
    SESSION_ENDED,
    TOKEN_REVOKED,
    USER_INACTIVE,
    credential_key,
    recheck_message,
    revoke_message,
)
from notify.broker import Message, serving_loop
from notify.models import APIToken
from notify.opening import latest_id

logger = logging.getLogger(__name__)


ANNOUNCE_TIMEOUT = 2.0


def _announce(message: Message | Callable[[], Message]) -> None:
    """Send ``message`` (or what the callable makes, then) once committed."""
    transaction.on_commit(lambda: _deliver(message() if callable(message) else message))


def _deliver(message: Message) -> None:
    loop = serving_loop()
    unsent = [message] if loop is None else _outbox(loop).put(message)
    for leftover in unsent:
        async_to_sync(_send_briefly)(leftover)


class _Outbox:
    """A server loop's access messages, sent one after another in the order
    they were committed, so a logout's "logged-out" reaches its streams before
    the "session-ended" of the session that the logout then deletes. (Sent as
    a coroutine each, they raced for the broker's connections, and either
    could arrive first.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: collections.deque[Message] = collections.deque()
        self._sending = False

    def put(self, message: Message) -> list[Message]:
        """Queue ``message`` from any thread. What the loop will not send (it
        is closing) is handed back, in order: this message and any that other
        threads queued behind it meanwhile."""
        with self._lock:
            self._pending.append(message)
            if self._sending:
                return []
            self._sending = True
        try:
            self._loop.call_soon_threadsafe(self._start)
        except RuntimeError:  # the loop is closing
            with self._lock:
                self._sending = False
                unsent = list(self._pending)
                self._pending.clear()
            return unsent
        return []

    def _start(self) -> None:
        # Not in any request's context: it outlives them.
        self._loop.create_task(self._send_all(), context=contextvars.Context())

    async def _send_all(self) -> None:
        from notify.publishing import send

        while True:
            with self._lock:
                if not self._pending:
                    self._sending = False
                    return
                message = self._pending.popleft()
            try:
                await send(message, count=False)
            except Exception as exc:
                logger.warning("access change not announced (%s)", exc)


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = (
    weakref.WeakKeyDictionary()
)
_outboxes_lock = threading.Lock()


def _outbox(loop: asyncio.AbstractEventLoop) -> _Outbox:
    with _outboxes_lock:
        outbox = _outboxes.get(loop)
        if outbox is None:
            outbox = _outboxes[loop] = _Outbox(loop)
        return outbox


async def _send_briefly(message: Message) -> None:
    from notify.publishing import send

    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            await send(message, count=False)
    except TimeoutError:
        logger.warning("access change not announced: the broker did not answer")


def _logged_out(sender: Any, request: Any, user: Any, **_: Any) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and user.pk is not None and key:
        _announce(revoke_message(user.pk, credential_key(key), LOGGED_OUT))


def _session_deleted(sender: Any, instance: Any, **_: Any) -> None:
    expire_date = getattr(instance, "expire_date", None)
    if expire_date is not None and expire_date <= timezone.now():
        return  # expired already: its streams were re-checked at its expiry
    try:
        data = instance.get_decoded()
        user_id = int(data.get(auth.SESSION_KEY))
    except (TypeError, ValueError, AttributeError):
        return  # not a signed-in session, or not one we can read
    _announce(
        revoke_message(user_id, credential_key(instance.session_key), SESSION_ENDED)
    )


def _token_deleted(
    sender: Any, instance: APIToken, origin: Any = None, **_: Any
) -> None:
    model = getattr(origin, "model", type(origin))
    if origin is not None and model is not APIToken:
        return  # deleted with its user, which says so itself
    _announce(
        revoke_message(instance.user_id, credential_key(instance.pk), TOKEN_REVOKED)
    )


_LOADED = "_notify_access"  # what open streams depend on, as loaded or saved


def _access(user: Any) -> tuple[Any, Any]:
    return (user.__dict__.get("password"), user.__dict__.get("is_active"))


def _user_loaded(sender: Any, instance: Any, **_: Any) -> None:
    instance.__dict__[_LOADED] = _access(instance)


def _user_saved(
    sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any
) -> None:
    before = instance.__dict__.get(_LOADED)
    now = instance.__dict__[_LOADED] = _access(instance)
    if created or before is None or before[1] != now[1]:
        _active_changed()
    if created or raw or before == now:
        return  # nobody streams yet, a fixture, or nothing that matters changed
    if not getattr(instance, "is_active", True):
        _announce(revoke_message(instance.pk, EVERY_CREDENTIAL, USER_INACTIVE))
    else:
        # A new password (the session hash): the database tells.
        _announce(recheck_message([instance.pk]))


def _active_changed() -> None:
    """Users were created, deleted, activated or deactivated: the kept count
    is stale now, and again once the change commits."""
    active_users.forget()
    transaction.on_commit(active_users.forget)


def _user_deleted(sender: Any, instance: Any, **_: Any) -> None:
    _active_changed()
    _announce(revoke_message(instance.pk, EVERY_CREDENTIAL, USER_INACTIVE))


_CLEARING = "_notify_clearing"


def _groups_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **_: Any
) -> None:
    user_model = auth.get_user_model()
    if not isinstance(instance, user_model):
        if action == "pre_clear":  # group.user_set.clear(): who is leaving
            leaving = getattr(instance, accounts.names().group_users)
            setattr(instance, _CLEARING, list(leaving.values_list("pk")))
            return
        if action == "post_clear":
            users = [pk for (pk,) in getattr(instance, _CLEARING, [])]
        else:
            users = list(pk_set or ())
    else:
        users = [instance.pk]
    if action in ("post_add", "post_remove", "post_clear") and users:
        # With the newest id at the change: a stream that joins a group
        # reconnects from there (see access.Rechecker).
        _announce(lambda: recheck_message(users, latest_id()))


def _session_model() -> Any:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    get_model = getattr(store, "get_model_class", None)
    return get_model() if get_model is not None else None


def connect() -> None:
    user_model = auth.get_user_model()
    uid = "notify.receivers."
    user_logged_out.connect(_logged_out, dispatch_uid=uid + "logged_out")
    post_delete.connect(_token_deleted, sender=APIToken, dispatch_uid=uid + "token")
    post_init.connect(_user_loaded, sender=user_model, dispatch_uid=uid + "user_init")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid=uid + "user_saved")
    post_delete.connect(
        _user_deleted, sender=user_model, dispatch_uid=uid + "user_deleted"
    )
    groups = getattr(user_model, "groups", None)
    if groups is not None:
        m2m_changed.connect(
            _groups_changed, sender=groups.through, dispatch_uid=uid + "groups"
        )
    session_model = _session_model()
    if session_model is not None:
        post_delete.connect(
            _session_deleted, sender=session_model, dispatch_uid=uid + "session"
        )
