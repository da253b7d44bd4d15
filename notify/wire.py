"""The wire JSON of a notification and the broker message built from it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from notify import sse
from notify.broker import Message
from notify.models import Audience, Notification


class WireNotification(TypedDict):
    id: int
    level: str
    title: str
    body: str
    url: str | None
    data: dict[str, Any]
    audience: Literal["all", "user", "group"]
    created_at: str
    expires_at: str | None
    read: bool


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_wire(n: Notification, *, read: bool = False) -> WireNotification:
    return {
        "id": n.id,
        "level": n.level,
        "title": n.title,
        "body": n.body,
        "url": n.url or None,
        "data": n.data if isinstance(n.data, dict) else {},
        "audience": n.audience,  # type: ignore[typeddict-item]
        "created_at": iso(n.created_at) or "",
        "expires_at": iso(n.expires_at),
        "read": read,
    }


def frame(n: Notification, *, read: bool = False) -> bytes:
    return sse.event("notification", to_wire(n, read=read), id=n.id)


def channels(
    n: Notification, user_ids: Iterable[int], group_ids: Iterable[int]
) -> tuple[str, ...]:
    if n.audience == Audience.ALL:
        return ("all",)
    if n.audience == Audience.USER:
        return tuple(f"user:{pk}" for pk in sorted(set(user_ids)))
    return tuple(f"group:{pk}" for pk in sorted(set(group_ids)))


def message(
    n: Notification, user_ids: Iterable[int], group_ids: Iterable[int]
) -> Message:
    expires = n.expires_at.timestamp() if n.expires_at else None
    return Message(n.id, channels(n, user_ids, group_ids), frame(n), expires)


def read_frame(payload: dict[str, Any]) -> bytes:
    return sse.event("read", payload)
