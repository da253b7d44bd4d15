"""notify: real-time browser notifications for Django over Server-Sent Events.

``notify.publish(...)`` (sync) and ``await notify.apublish(...)`` (async) send
a notification from any process; see ``notify.publish`` for the arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from notify.models import Notification


# Imported lazily: this package is imported by the settings, before Django's
# app registry is ready for models.
def publish(**kwargs: Any) -> Notification:
    from notify.publish import publish as _publish

    return _publish(**kwargs)


async def apublish(**kwargs: Any) -> Notification:
    from notify.publish import apublish as _apublish

    return await _apublish(**kwargs)


__all__ = ["apublish", "publish"]
