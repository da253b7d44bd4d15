"""``send_event`` with django-eventstream's signature, so its users switch
with one import::

    from notify.compat import send_event   # was: from django_eventstream import send_event

    send_event("user-alice", "Build finished", {"body": "main is green", "level": "success"})

A django-eventstream *channel* becomes a notify *audience*:

=============================  ==============================================
channel                        audience
=============================  ==============================================
``""``, ``"all"``,             ``"all"``: every signed-in user
``"broadcast"``
``"user-<username>"``          ``{"users": ["<username>"]}``
``"group-<name>"``             ``{"groups": ["<name>"]}``
anything else                  ``ValueError`` naming the channel
=============================  ==============================================

notify sends every notification as ``event: notification`` with one wire JSON
shape, so ``event_type`` becomes the notification's title, unless ``data`` is
a dict with a non-null ``"title"``. From a dict ``data``, the keys ``title``, ``body``,
``level``, ``url`` and ``expires_at`` become those fields and the remaining keys
become the notification's ``data`` object; any other ``data`` is sent as
``{"value": data}``. Values are first encoded as django-eventstream encodes them
(``DjangoJSONEncoder``: datetimes, dates, decimals and UUIDs become strings).
With ``json_encode=False``, ``data`` is already JSON text and is decoded (text
that is not JSON is sent as ``{"value": text}``).

``skip_user_ids`` is accepted for signature compatibility but not supported: a
notification belongs to its whole audience (and is kept in each member's
inbox), so a non-empty value raises ``ValueError``. ``async_publish`` is
accepted and ignored: the notification is committed before this returns and
is broadcast when the surrounding transaction (if any) commits.

Errors: ``ValueError`` for an unknown channel or ``skip_user_ids``, and
:class:`notify.exceptions.ValidationError` (also a ``ValueError``) for bad
fields, unknown users or groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from notify.models import Notification
from notify.publishing import publish

ALL_CHANNELS = frozenset({"", "all", "broadcast"})
FIELDS = ("title", "body", "level", "url", "expires_at")


def audience_for(channel: str) -> str | dict[str, list[str]]:
    """The notify audience of a django-eventstream channel name."""
    if not isinstance(channel, str):
        raise ValueError(f"channel must be a string, got {channel!r}")
    if channel in ALL_CHANNELS:
        return "all"
    for prefix, key in (("user-", "users"), ("group-", "groups")):
        if channel.startswith(prefix) and channel[len(prefix) :].strip():
            return {key: [channel[len(prefix) :]]}
    raise ValueError(
        f"unknown channel {channel!r}: use '' / 'all' / 'broadcast', "
        "'user-<username>' or 'group-<name>'"
    )


def _decode(data: Any, json_encode: bool) -> Any:
    if json_encode:
        return json.loads(json.dumps(data, cls=DjangoJSONEncoder))
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8")
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


def send_event(
    channel: str,
    event_type: str,
    data: Any,
    skip_user_ids: Iterable[Any] | None = None,
    async_publish: bool = True,
    json_encode: bool = True,
) -> Notification:
    """Publish ``data`` to ``channel`` as a notification; return it.

    See the module docstring for how channels, ``event_type`` and ``data`` map
    to a notification.
    """
    if skip_user_ids:
        raise ValueError(
            "skip_user_ids is not supported: a notification goes to its whole "
            "audience; address the users you mean with 'user-<username>' instead"
        )
    audience = audience_for(channel)
    value = _decode(data, json_encode)
    fields: dict[str, Any] = {"title": event_type}
    if isinstance(value, dict):
        fields.update({k: value[k] for k in FIELDS if value.get(k) is not None})
        extra = {k: v for k, v in value.items() if k not in FIELDS}
    else:
        extra = {"value": value}
    return publish(audience=audience, data=extra, **fields)
