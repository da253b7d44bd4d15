"""Replay for a resuming stream or a long-poll: the next visible
notifications after a cursor, oldest first, with their read flags.

:func:`replay_batch` reads one viewer's. :func:`replay_openings` reads the
first batch of many resuming streams at once, on the Opener's thread with
their openings: a reconnect storm is thousands of streams resuming from the
same few cursors, and one query per cursor serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from notify import accounts, wire
from notify.models import Audience, ReadCursor, ReadMark
from notify.prepared import Prepared, PreparedIn
from notify.visibility import Viewer, links, visible, visible_to_any


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


@dataclass(frozen=True, slots=True)
class Replayed:
    """A resuming stream's first replay, read with its opening: the frames
    of the next visible notifications after its cursor (``count`` of them),
    and ``through``, the id up to which nothing visible is left out."""

    frames: bytes
    count: int
    through: int


@cache
def _replay_any(limit: int) -> PreparedIn:
    return PreparedIn(
        lambda users, now, after: (
            visible_to_any(users, now).filter(id__gt=after).order_by("id")[:limit]
        ),
        int,
        [datetime, int],
    )


def _user_links(users: list[int], after: int, through: int) -> Any:
    to_user, _ = links("__in", users)
    between = to_user.filter(notification_id__gt=after, notification_id__lte=through)
    return between.values_list("notification_id", accounts.names().addressed_user)


def _group_links(users: list[int], after: int, through: int) -> Any:
    _, to_group = links("__in", users)
    between = to_group.filter(notification_id__gt=after, notification_id__lte=through)
    member = f"group__{accounts.names().group_members}"
    return between.values_list("notification_id", member)


# (notification id, user id): addressed to that user, directly or by a group
# the user is in now, as visible() decides it.
_USER_LINKS = PreparedIn(_user_links, int, [int, int])
_GROUP_LINKS = PreparedIn(_group_links, int, [int, int])
_READ_CURSORS = PreparedIn(
    lambda users: ReadCursor.objects.filter(user_id__in=users).values_list(
        "user_id", "up_to"
    ),
    int,
)
_READ_MARKS = PreparedIn(
    lambda users, after, through: ReadMark.objects.filter(
        user_id__in=users, notification_id__gt=after, notification_id__lte=through
    ).values_list("user_id", "notification_id"),
    int,
    [int, int],
)


def replay_openings(
    resuming: Sequence[tuple[Viewer, int]], limit: int
) -> list[Replayed]:
    """The first :func:`replay_batch` of each ``(viewer, after)``, read
    together: per distinct cursor (and per 64 users) one query for what any of
    them can see, then who each row is addressed to and the read flags. Each
    frame is encoded once, however many streams send it.

    A viewer gets the rows among those it can see, at most ``limit``. When
    the shared query came back full, rows past its last one may be missing:
    ``through`` is then that last row's id, and the stream reads on from it.
    """
    now = timezone.now()
    by_cursor: dict[int, list[int]] = {}
    for index, (_, after) in enumerate(resuming):
        by_cursor.setdefault(after, []).append(index)
    found: dict[int, Replayed] = {}
    frames: dict[tuple[int, bool], bytes] = {}
    largest = PreparedIn.SIZES[-1]
    for after, indexes in by_cursor.items():
        for start in range(0, len(indexes), largest):
            chunk = indexes[start : start + largest]
            users = sorted({resuming[i][0].user_id for i in chunk})
            rows = _replay_any(limit).instances(users, now, after)
            last = rows[-1].id if rows else after
            audiences = {n.audience for n in rows}
            addressed: set[tuple[int, int]] = set()
            if Audience.USER in audiences:
                addressed.update(_USER_LINKS.rows(users, after, last))
            if Audience.GROUP in audiences:
                addressed.update(_GROUP_LINKS.rows(users, after, last))
            up_to: dict[int, int] = {}
            marked: set[tuple[int, int]] = set()
            if rows:
                up_to = dict(_READ_CURSORS.rows(users))
                marked = set(_READ_MARKS.rows(users, after, last))
            for i in chunk:
                user_id = resuming[i][0].user_id
                sent = []
                through = after
                for n in rows:
                    if n.audience != Audience.ALL and (n.id, user_id) not in addressed:
                        continue
                    read = n.id <= up_to.get(user_id, 0) or (user_id, n.id) in marked
                    frame = frames.get((n.id, read))
                    if frame is None:
                        frame = frames[n.id, read] = wire.frame(n, read=read)
                    sent.append(frame)
                    through = n.id
                if len(rows) == limit:
                    through = last  # complete only up to the shared query's end
                found[i] = Replayed(b"".join(sent), len(sent), through)
    return [found[i] for i in range(len(resuming))]
