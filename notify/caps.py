"""The per-user stream cap (``NOTIFY_MAX_STREAMS_PER_USER``).

Streams and long polls each hold a slot while open; the broker counts them,
across processes when it can see them (Redis). A refused request gets 429 with
``Retry-After``; see ``Broker.acquire_slot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from notify import metrics
from notify.broker import Broker, get_broker
from notify.conf import conf


class Slot:
    """One held slot. :meth:`release` is idempotent and may be called from any
    thread (a response's closers run on a worker thread)."""

    __slots__ = ("_broker", "_user_id", "_loop")

    def __init__(
        self, broker: Broker | None, user_id: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._broker = broker
        self._user_id = user_id
        self._loop = loop

    def __del__(self) -> None:
        # A response dropped without being closed (cancelled in a middleware)
        # still frees its slot.
        self.release()

    def release(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            broker.release_slot(self._user_id)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._loop.call_soon_threadsafe(broker.release_slot, self._user_id)


async def acquire(user_id: int) -> Slot | None:
    """A slot for one more stream of ``user_id``, or None past the cap."""
    loop = asyncio.get_running_loop()
    cap = conf.max_streams_per_user
    if not cap:
        return Slot(None, user_id, loop)
    broker = get_broker()
    if not await broker.acquire_slot(user_id, cap):
        metrics.REFUSED.inc()
        return None
    return Slot(broker, user_id, loop)


def retry_after() -> str:
    """Seconds after which a freed slot is certainly counted as free."""
    return str(math.ceil(conf.resync_seconds) + 1)
