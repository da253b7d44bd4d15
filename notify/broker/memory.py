"""In-process backend: for development, tests and a single server process.

Messages published in this process go straight to its fanout. Messages
published by other processes (``manage.py notify_send``, a worker) are picked
up from the database by the periodic resync, within ``resync_seconds``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from notify.broker.base import Broker, Message, stop_task

logger = logging.getLogger(__name__)


class MemoryBroker(Broker):
    name = "memory"
    _task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        await self.fanout.start()
        if self.fanout.history is not None:
            # A fresh context: the task outlives the request that started it and
            # must not inherit that request's thread-sensitive executor.
            self._task = asyncio.get_running_loop().create_task(
                self._resync_forever(), context=contextvars.Context()
            )

    async def _send(self, message: Message) -> None:
        if self._started:
            await self.fanout.dispatch(message)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:
                await self.fanout.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("resync from the database failed; retrying")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
