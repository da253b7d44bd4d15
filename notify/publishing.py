"""Publishing: validate, authorize, commit, then fan out.

The database is the source of truth: a notification is committed before any
stream hears of it, and if the broker cannot be reached the notification still
stands; every server process reads it back from the database once its broker
connection returns (see ``broker/base.py``).

Ids must become visible in id order, or a stream that sent id 11 could later
skip a late-committing id 10. SQLite serializes writers already (IMMEDIATE
transactions); on PostgreSQL a transaction-level advisory lock does it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Required, TypedDict, Unpack, cast

from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from notify import accounts, active_users, metrics, wire
from notify.broker import (
    Broker,
    Message,
    forget_broker,
    get_broker,
    has_broker,
    is_serving,
)
from notify.conf import conf
from notify.exceptions import (
    BrokerUnavailableError,
    RateLimitedError,
    ValidationError,
)
from notify.insertion import PreparedInsert
from notify.models import Audience, Notification
from notify.prepared import Prepared
from notify.validation import Draft, validate

logger = logging.getLogger(__name__)

_ADVISORY_LOCK = 0x6E6F7469  # "noti"
_INSERT = PreparedInsert(Notification)


@dataclass(frozen=True)
class Published:
    notification: Notification
    message: Message


def _serialize_publishers() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])


# Counts run by every publish, compiled once (notify/prepared.py). Grouping by
# a column the filter fixes makes a count a one-row query a Prepared can hold.
_SENT_SINCE = Prepared(
    lambda sender_id, since: (
        Notification.objects.filter(sender_id=sender_id, created_at__gt=since)
        .values("sender_id")
        .annotate(n=Count("id"))
        .values_list("n")
    ),
    [int, datetime],
)


def _check_rate(sender_id: int, now: datetime) -> None:
    rate = conf.publish_rate
    since = now - timedelta(seconds=rate.period)
    if _SENT_SINCE.value(sender_id, since, default=0) >= rate.count:
        window = Notification.objects.filter(sender_id=sender_id, created_at__gt=since)
        oldest = window.order_by("created_at").values_list("created_at", flat=True)[0]
        wait = (oldest + timedelta(seconds=rate.period) - now).total_seconds()
        raise RateLimitedError(max(1, math.ceil(wait)))


def _resolve(draft: Draft, in_transaction: bool) -> tuple[list[int], list[int], int]:
    users = get_user_model()._default_manager
    if draft.audience == Audience.USER:
        username = accounts.names().username
        found = dict(
            users.filter(**{f"{username}__in": draft.usernames}).values_list(
                username, "pk"
            )
        )
        missing = [u for u in draft.usernames if u not in found]
        if missing:
            raise ValidationError(
                {"audience": [f"Unknown users: {', '.join(missing)}."]}
            )
        user_ids = list(found.values())
        return user_ids, [], users.filter(pk__in=user_ids, is_active=True).count()
    if draft.audience == Audience.GROUP:
        found = dict(
            Group.objects.filter(name__in=draft.group_names).values_list("name", "pk")
        )
        missing = [g for g in draft.group_names if g not in found]
        if missing:
            raise ValidationError(
                {"audience": [f"Unknown groups: {', '.join(missing)}."]}
            )
        group_ids = list(found.values())
        count = users.filter(groups__in=group_ids, is_active=True).distinct().count()
        return [], group_ids, count
    return [], [], active_users.count(in_transaction=in_transaction)


def persist(
    draft: Draft,
    sender: AbstractBaseUser | None = None,
    *,
    sender_id: int | None = None,
) -> Published:
    """Save ``draft`` (in the caller's transaction, if any) and return it with
    its broker message. The sender is a user, or only its primary key
    (``sender_id``) when that is all the caller has."""
    if sender is not None:
        sender_id = sender.pk
    in_transaction = connection.in_atomic_block
    with transaction.atomic():
        _serialize_publishers()
        now = timezone.now()
        if sender_id is not None:
            _check_rate(sender_id, now)
        user_ids, group_ids, recipients = _resolve(draft, in_transaction)
        n = Notification(
            level=draft.level,
            title=draft.title,
            body=draft.body,
            url=draft.url,
            data=draft.data,
            created_at=now,
            expires_at=draft.expires_at,
            audience=draft.audience,
            recipients=recipients,
        )
        if sender is not None:
            n.sender = cast(Any, sender)  # AUTH_USER_MODEL, whatever the stubs say
        else:
            n.sender_id = sender_id
        _INSERT.insert(n)
        if user_ids:
            n.users.set(user_ids)
        if group_ids:
            n.groups.set(group_ids)
    return Published(n, wire.message(n, user_ids, group_ids))


async def send(
    message: Message, broker: Broker | None = None, *, count: bool = True
) -> bool:
    """Hand a message to the broker. False (logged) when the broker is
    unreachable: for notifications, the servers' resync delivers it later."""
    if count:
        metrics.PUBLISHED.inc()
    temporary = broker is None and not has_broker() and not is_serving()
    broker = broker or get_broker()
    try:
        await broker.publish(message)
        return True
    except BrokerUnavailableError as exc:
        logger.warning("message %d not broadcast now (%s)", message.id, exc)
        return False
    finally:
        if temporary:
            forget_broker()
            await broker.aclose()


class Fields(TypedDict, total=False):
    """The keyword arguments of :func:`publish` and :func:`apublish`.

    ``title`` is required; ``audience`` is ``"all"`` (the default),
    ``{"users": [username, ...]}`` or ``{"groups": [name, ...]}``;
    ``expires_at`` is a datetime or an ISO 8601 string.
    """

    title: Required[str]
    audience: str | dict[str, list[str]]
    body: str
    level: str
    url: str | None
    data: dict[str, Any] | None
    expires_at: datetime | str | None


def _draft(fields: Fields) -> Draft:
    payload: dict[str, Any] = {"audience": "all"}
    payload.update((k, v) for k, v in fields.items() if v is not None)
    return validate(payload)


async def apublish(
    *, sender: AbstractBaseUser | None = None, **fields: Unpack[Fields]
) -> Notification:
    """Publish a notification from async code; return it once committed.

    Raises :class:`~notify.exceptions.ValidationError` (bad fields, unknown
    users or groups) or :class:`~notify.exceptions.RateLimitedError`.
    """
    published = await sync_to_async(persist)(_draft(fields), sender)
    await send(published.message)
    return published.notification


def publish(
    *, sender: AbstractBaseUser | None = None, **fields: Unpack[Fields]
) -> Notification:
    """Publish from sync code (a shell, a management command, a worker).

    Same arguments and errors as :func:`apublish`. Inside
    ``transaction.atomic()`` the broadcast waits for the commit.
    """
    published = persist(_draft(fields), sender)
    transaction.on_commit(lambda: async_to_sync(send)(published.message))
    return published.notification
