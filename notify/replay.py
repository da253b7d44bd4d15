"""Replay for a resuming stream or a long-poll: the next visible
notifications after a cursor, oldest first, with their read flags."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from asgiref.sync import sync_to_async
from django.utils import timezone

from notify import wire
from notify.models import ReadCursor, ReadMark
from notify.prepared import Prepared
from notify.visibility import visible


@cache
def _replay_query(limit: int) -> Prepared:
    return Prepared(
        lambda user_id, now, after: (
            visible(user_id, now).filter(id__gt=after).order_by("id")[:limit]
        ),
        [int, datetime, int],
    )


_READ_UP_TO = Prepared(
    lambda user_id: ReadCursor.objects.filter(user_id=user_id).values_list("up_to"),
    [int],
)
_MARKED_BETWEEN = Prepared(
    lambda user_id, after, through: ReadMark.objects.filter(
        user_id=user_id, notification_id__gt=after, notification_id__lte=through
    ).values_list("notification_id"),
    [int, int, int],
)


def replay_batch(user_id: int, after: int, limit: int) -> list[wire.WireNotification]:
    """The next ``limit`` visible notifications with ``id > after``, oldest
    first. Every reconnecting client that missed something runs this, so its
    queries are compiled once (notify/prepared.py)."""
    rows = _replay_query(limit).instances(user_id, timezone.now(), after)
    if not rows:
        return []
    up_to = _READ_UP_TO.value(user_id, default=0)
    marked = {i for (i,) in _MARKED_BETWEEN.rows(user_id, after, rows[-1].id)}
    return [wire.to_wire(n, read=n.id <= up_to or n.id in marked) for n in rows]


areplay_batch = sync_to_async(replay_batch)
