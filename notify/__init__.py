"""notify: real-time browser notifications for Django over Server-Sent Events.

``notify.publish(...)`` (sync) and ``await notify.apublish(...)`` (async) send
a notification from any process; ``notify.publishing.Fields`` lists the
arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"

if TYPE_CHECKING:
    from typing import Unpack

    from django.contrib.auth.base_user import AbstractBaseUser

    from notify.models import Notification
    from notify.publishing import Fields


# Imported when called: this package is imported before Django's app
# registry is ready for models (by a host's INSTALLED_APPS, by manage.py).
def publish(
    *, sender: AbstractBaseUser | None = None, **fields: Unpack[Fields]
) -> Notification:
    """Publish from sync code (a shell, a management command, a worker); see
    :func:`notify.publishing.publish`."""
    from notify.publishing import publish as _publish

    return _publish(sender=sender, **fields)


async def apublish(
    *, sender: AbstractBaseUser | None = None, **fields: Unpack[Fields]
) -> Notification:
    """Publish from async code; see :func:`notify.publishing.apublish`."""
    from notify.publishing import apublish as _apublish

    return await _apublish(sender=sender, **fields)


__all__ = ["apublish", "publish"]
