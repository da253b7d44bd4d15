"""Who sees what: a viewer's channels, the notifications addressed to a
user (directly, by group or to all) that have not expired, and the newest
of them.

Synchronous ORM code; async callers use the ``a*`` wrappers, each one
``sync_to_async`` hop doing all of its queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import DateTimeField, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from notify import accounts
from notify.models import Audience, Notification
from notify.prepared import Prepared, PreparedIn


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is reading: fixed when a stream or poll starts."""

    user_id: int
    group_ids: frozenset[int]

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(
            {"all", f"user:{self.user_id}"} | {f"group:{g}" for g in self.group_ids}
        )


def visible(user_id: int, now: datetime | None = None) -> QuerySet[Notification]:
    """Notifications addressed to this user, directly, by group or to all,
    that have not expired."""
    addressed = _addressed("", user_id)
    return unexpired(Notification.objects.all(), now or timezone.now()).filter(
        addressed
    )


def visible_to_any(user_ids: list[int], now: datetime) -> QuerySet[Notification]:
    """What :func:`visible` finds for any one of ``user_ids``."""
    addressed = _addressed("__in", user_ids)
    return unexpired(Notification.objects.all(), now).filter(addressed)


def links(lookup: str, users: Any) -> tuple[QuerySet[Any], QuerySet[Any]]:
    """The rows that address notifications to the users that ``lookup`` (on
    a user id) matches ``users`` with: directly, and by one of their groups
    (as the group is now)."""
    names = accounts.names()
    to_user = Notification.users.through.objects.filter(
        **{names.addressed_user + lookup: users}
    )
    to_group = Notification.groups.through.objects.filter(
        **{f"group__{names.group_members}{lookup}": users}
    )
    return to_user, to_group


def _addressed(lookup: str, users: Any) -> Q:
    """To all, or to the users that ``lookup`` matches ``users`` with
    (:func:`links`)."""
    to_user, to_group = links(lookup, users)
    return (
        Q(audience=Audience.ALL)
        | Q(audience=Audience.USER, id__in=to_user.values("notification_id"))
        | Q(audience=Audience.GROUP, id__in=to_group.values("notification_id"))
    )


# After every real expiry: "never expires" compared as a date.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


def unexpired(
    notifications: QuerySet[Notification], now: datetime
) -> QuerySet[Notification]:
    """Those not expired at ``now``. Written as one comparison on an
    expression, not "no expiry OR expiry after now": for that OR, SQLite reads
    every unexpired row through the expiry index and sorts them, so finding
    the newest, or the next few after a cursor, took time in proportion to
    the whole table (5.5 ms at 16,000 notifications) instead of walking the
    primary key from the right end."""
    return notifications.alias(
        _expires=Coalesce("expires_at", Value(_NEVER, output_field=DateTimeField()))
    ).filter(_expires__gt=now)


def _memberships(user_ids: list[int]) -> QuerySet[Any, Any]:
    names = accounts.names()
    links: QuerySet[Any, Any] = accounts.memberships().objects.filter(
        **{f"{names.member_user}__in": user_ids}
    )
    return links.values_list(names.member_user, names.member_group)


_MEMBERSHIPS = PreparedIn(_memberships, int)
_NEWEST_VISIBLE = Prepared(
    lambda user_id, now: visible(user_id, now).order_by("-id").values_list("id")[:1],
    [int, datetime],
)


def load_viewer(user_id: int) -> Viewer:
    return load_viewers([user_id])[user_id]


def load_viewers(user_ids: Iterable[int]) -> dict[int, Viewer]:
    """Each user's :class:`Viewer`, their groups read in one query."""
    groups: dict[int, set[int]] = {user_id: set() for user_id in user_ids}
    if groups:
        for user_id, group_id in _MEMBERSHIPS.rows(sorted(groups)):
            groups[user_id].add(group_id)
    return {user_id: Viewer(user_id, frozenset(ids)) for user_id, ids in groups.items()}


def newest_visible_id(user_id: int) -> int:
    return int(_NEWEST_VISIBLE.value(user_id, timezone.now(), default=0))


aload_viewer = sync_to_async(load_viewer)
anewest_visible_id = sync_to_async(newest_visible_id)
