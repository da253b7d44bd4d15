"""The broker's :class:`~notify.broker.History`, backed by the database:
the newest id, and every notification after an id as the broker's message
(how a server fills a gap, or catches up after Redis was away)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from notify import accounts, wire
from notify.broker import Message
from notify.models import Audience, Notification
from notify.visibility import unexpired

P = ParamSpec("P")
R = TypeVar("R")


def messages_since(after: int, limit: int) -> list[Message]:
    rows = list(
        unexpired(Notification.objects.filter(id__gt=after), timezone.now()).order_by(
            "id"
        )[:limit]
    )
    ids = [n.id for n in rows]
    users: dict[int, list[int]] = defaultdict(list)
    groups: dict[int, list[int]] = defaultdict(list)
    through_u = Notification.users.through.objects.filter(notification_id__in=ids)
    user_column = accounts.names().addressed_user
    for nid, uid in through_u.values_list("notification_id", user_column):
        users[nid].append(uid)
    through_g = Notification.groups.through.objects.filter(notification_id__in=ids)
    for nid, gid in through_g.values_list("notification_id", "group_id"):
        groups[nid].append(gid)
    # A row whose users or groups were all deleted is addressed to nobody
    # now, but it is still returned (with no channels): the fanout must see
    # its id, and a batch shorter than ``limit`` must mean "nothing more".
    return [
        wire.message(n, users[n.id], groups[n.id])
        if n.audience == Audience.ALL or users[n.id] or groups[n.id]
        else Message(n.id, (), b"")
        for n in rows
    ]


def latest_id() -> int:
    return Notification.objects.aggregate(m=Max("id"))["m"] or 0


def _fresh(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` on a connection that is known to be usable (for the
    broker's background task, which lives longer than any request)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        return func(*args, **kwargs)

    return run


class DatabaseHistory:
    """The broker's :class:`~notify.broker.History`, backed by the database."""

    async def latest_id(self) -> int:
        return await sync_to_async(_fresh(latest_id))()

    async def since(self, after: int, limit: int) -> list[Message]:
        return await sync_to_async(_fresh(messages_since))(after, limit)
