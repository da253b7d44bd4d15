"""A stopping server process ends its streams a few at a time.

Told to stop (SIGTERM from a supervisor or ``scripts/stack``, Ctrl-C),
uvicorn stops accepting at once, waits up to ``--timeout-graceful-shutdown``
for the responses in progress, then cancels all that are left. Streams never
finish by themselves, so every stream of the process ends in that one
instant, cut off mid-response, and all its browsers come back together after
the same ``retry:`` delay: a herd that queues in the other workers' listen
queues for tens of seconds (docs/PERFORMANCE.md, "Scale").

Here the process, once told to stop, ends its open streams and long polls
itself, ``NOTIFY_DRAIN_RATE`` (200) a second; 0 leaves them to uvicorn. Each
stream gets a short random ``retry:`` and a complete end of its response, so
the proxy ends the browser's response cleanly too; the browser reconnects
through the proxy to a worker still running and resumes from its cursor. A
long poll answers at once with what it has. Streams not yet ended go on
receiving notifications meanwhile. Whatever is still open when the server's
grace period ends is cancelled, as before: the grace period should cover a
worker's streams divided by the rate (``scripts/stack`` sizes it so).

The hook: the first request wraps the process's SIGTERM and SIGINT handlers
(uvicorn installs its own with ``signal.signal`` before it loads the
application). The wrapper calls the handler it replaced first, so the server
stops exactly as before, then starts the drain on the server's event loop.
A handler that is not callable (``SIG_DFL``, ``SIG_IGN``) is left as it is,
and so is a process whose event loop is not on its main thread (only that
thread may set handlers). Python's own SIGINT handler is callable and so is
wrapped too; it raises ``KeyboardInterrupt`` first, as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from notify.broker import Broker, get_broker, has_broker, serving_loop
from notify.conf import conf

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_AHEAD = 0.05  # seconds ahead of its pace before the drain pauses
_IDLE = 0.1  # seconds between two looks for streams opened meanwhile

_installed_in: int | None = None  # the process whose handlers are wrapped
_drains: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def install() -> bool:
    """Drain this process's streams when it is told to stop. Called on the
    server's event loop; True when it wrapped a handler now."""
    global _installed_in
    if _installed_in == os.getpid():
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    _installed_in = os.getpid()
    wrapped = False
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if callable(previous):
            signal.signal(sig, _chained(previous))
            wrapped = True
    return wrapped


def _chained(previous: Callable[[int, FrameType | None], Any]) -> Any:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        previous(signum, frame)
        loop = serving_loop()
        if loop is not None:
            # RuntimeError: closed meanwhile, nothing left to end.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(start)

    return on_signal


def start() -> asyncio.Task[None] | None:
    """Begin ending this loop's streams (once), unless ``NOTIFY_DRAIN_RATE``
    is 0."""
    loop = asyncio.get_running_loop()
    if loop in _drains or not conf.drain_rate:
        return _drains.get(loop)
    # A context of its own, not that of whatever the signal interrupted.
    task = _drains[loop] = loop.create_task(
        drain(conf.drain_rate), context=contextvars.Context()
    )
    task.add_done_callback(lambda _: _drains.pop(loop, None))
    return task


async def drain(rate: int, broker: Broker | None = None) -> None:
    """End every open stream and long poll of ``broker`` (this loop's, by
    default), ``rate`` a second, and any opened later (a request the server
    took before it stopped accepting), until the server's loop ends."""
    from notify.access import reconnect_message  # models: not before setup

    loop = asyncio.get_running_loop()
    while True:
        # No broker yet: no stream either, but one may be opening.
        found = broker or (get_broker() if has_broker() else None)
        subs = found.fanout.subscriptions if found is not None else ()
        pending = [sub for sub in subs if not sub.ended]
        if not pending:
            await asyncio.sleep(_IDLE)
            continue
        logger.info("stopping: ending %d open streams, %d a second", len(pending), rate)
        began = loop.time()
        ended = 0
        for n, sub in enumerate(pending):
            # The n-th stream of the pass at n / rate seconds from its start,
            # give or take the pause's granularity.
            wait = began + n / rate - loop.time()
            if wait >= _AHEAD:
                await asyncio.sleep(wait)
            if not sub.ended:
                sub.end(reconnect_message(None))
                ended += 1
        logger.info("stopping: ended %d streams in %.1f s", ended, loop.time() - began)
