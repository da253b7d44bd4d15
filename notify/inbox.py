"""A user's inbox: listing and read state, announced to all their streams."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import Max

from notify import wire
from notify.broker import Message
from notify.models import ReadCursor, ReadMark
from notify.publishing import send
from notify.readstate import read_flags, unread
from notify.visibility import visible


def page(
    user_id: int, *, unread_only: bool, before: int | None, limit: int
) -> dict[str, Any]:
    rows = unread(user_id) if unread_only else visible(user_id)
    if before is not None:
        rows = rows.filter(id__lt=before)
    found = list(rows.order_by("-id")[: limit + 1])
    more = len(found) > limit
    found = found[:limit]
    flags = read_flags(user_id, [n.id for n in found])
    return {
        "results": [wire.to_wire(n, read=flags[n.id]) for n in found],
        "unread_count": unread(user_id).count(),
        "next": found[-1].id if more else None,
    }


def mark_read(user_id: int, notification_id: int) -> bool:
    """Mark one notification read; False if this user cannot see it."""
    if not visible(user_id).filter(id=notification_id).exists():
        return False
    try:
        with transaction.atomic():
            ReadMark.objects.get_or_create(
                user_id=user_id, notification_id=notification_id
            )
    except IntegrityError:  # marked by a concurrent request
        pass
    return True


def mark_all_read(user_id: int) -> int:
    """Mark everything visible now as read; return the id it reaches."""
    up_to = visible(user_id).aggregate(m=Max("id"))["m"] or 0
    with transaction.atomic():
        cursor, _ = ReadCursor.objects.select_for_update().get_or_create(
            user_id=user_id
        )
        if up_to > cursor.up_to:
            cursor.up_to = up_to
            cursor.save(update_fields=["up_to"])
        up_to = cursor.up_to
        ReadMark.objects.filter(user_id=user_id, notification_id__lte=up_to).delete()
    return up_to


apage = sync_to_async(page)
_amark_read = sync_to_async(mark_read)
_amark_all_read = sync_to_async(mark_all_read)


def _read_message(user_id: int, payload: dict[str, Any]) -> Message:
    return Message(0, (f"user:{user_id}",), wire.read_frame(payload))


async def amark_read(user_id: int, notification_id: int) -> bool:
    if not await _amark_read(user_id, notification_id):
        return False
    await send(_read_message(user_id, {"ids": [notification_id]}), count=False)
    return True


async def amark_all_read(user_id: int) -> int:
    up_to = await _amark_all_read(user_id)
    await send(_read_message(user_id, {"all": True, "up_to": up_to}), count=False)
    return up_to
