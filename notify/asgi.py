"""Django's ASGI handler, minus the OS thread per open stream.

Django enters a fresh ``ThreadSensitiveContext`` for every request. The first
``sync_to_async`` call inside it (the ``request_started`` receivers, session and
auth middleware, the ORM) creates a one-thread executor that lives until the
response ends, so every open event stream pins a thread, and with it that
thread's database connection.

Here each request instead enters a context bound to one of a small, fixed
pool of single-thread executors (asgiref's ``ThreadSensitiveContext(executor=)``).
Django's own inner context then reuses it. Sync work of a request still runs
on one thread, as Django expects, but threads and database connections stay
at ``NOTIFY_SYNC_THREADS`` however many streams are open.
"""

from __future__ import annotations

import gc
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler


class ThreadPoolASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"notify-sync-{i}")
            for i in range(threads)
        ]
        self._next = itertools.cycle(self.executors)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with ThreadSensitiveContext(executor=next(self._next)):
            await super().__call__(scope, receive, send)


# Fan-out to thousands of streams allocates many short-lived objects per
# message; at CPython's default first-generation threshold (700) the cyclic
# collector then runs over and over and takes about a third of the broadcast
# CPU (docs/PERFORMANCE.md). A deployment that set its own threshold keeps it.
_GC_DEFAULT, _GC_SERVER = (700, 10, 10), (7000, 10, 10)


def get_asgi_application() -> ThreadPoolASGIHandler:
    if gc.get_threshold() == _GC_DEFAULT:
        gc.set_threshold(*_GC_SERVER)
    django.setup(set_prefix=False)
    from notify.conf import conf

    return ThreadPoolASGIHandler(conf.sync_threads)
