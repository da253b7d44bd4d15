"""A user's read state: everything up to their read cursor, plus single
read marks above it."""

from __future__ import annotations

from django.db.models import QuerySet

from notify.models import Notification, ReadCursor, ReadMark
from notify.visibility import visible


def read_up_to(user_id: int) -> int:
    cursor = ReadCursor.objects.filter(user_id=user_id).values_list("up_to", flat=True)
    return next(iter(cursor), 0)


def unread(user_id: int) -> QuerySet[Notification]:
    marks = ReadMark.objects.filter(user_id=user_id).values("notification_id")
    return visible(user_id).filter(id__gt=read_up_to(user_id)).exclude(id__in=marks)


def read_flags(user_id: int, ids: list[int]) -> dict[int, bool]:
    up_to = read_up_to(user_id)
    marked = set(
        ReadMark.objects.filter(user_id=user_id, notification_id__in=ids).values_list(
            "notification_id", flat=True
        )
    )
    return {i: i <= up_to or i in marked for i in ids}
