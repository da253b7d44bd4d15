"""The threads that run requests' synchronous work, and which one a request gets.

A request's synchronous calls (sessions, the ORM) must all run on one thread,
as Django expects; which thread is chosen at its first call, not when it
starts. A thread that is waiting for a database lock (a publish behind another
process's write, for up to ``DATABASE_LOCK_TIMEOUT``) is then passed over:
new requests go to an idle thread, the one idle longest first (the thread a
request has just left between two of its calls is its own), so a request
waiting for a lock holds up no one else. Only when every thread has been busy
for longer than a request normally takes does the pool grow, one thread at a
time, up to four times ``NOTIFY_SYNC_THREADS``; the threads it adds stay,
like the first ones, with their database connections.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Busier than this, a thread is taken to be waiting (for a lock, most often).
STUCK_SECONDS = 0.25
GROWTH = 4


class Worker(ThreadPoolExecutor):
    """One thread, which knows how many calls it has queued or running and
    since when it has been running the current one."""

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self.load = 0
        self.busy_since = 0.0  # monotonic time the running call started; 0: none
        self.idle_since = time.monotonic()
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.load += 1
        try:
            future = super().submit(self._run, fn, args, kwargs)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _: self._done())
        return future

    def _run(self, fn: Any, args: Any, kwargs: Any) -> Any:
        self.busy_since = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.busy_since = 0.0

    def _done(self) -> None:
        with self._lock:
            self.load -= 1
            if not self.load:
                self.idle_since = time.monotonic()

    def stuck(self, now: float) -> bool:
        since = self.busy_since
        return bool(since) and now - since > STUCK_SECONDS


class WorkerPool:
    """``pick()`` is called on the event loop's thread only."""

    def __init__(self, threads: int) -> None:
        self.workers = [Worker(f"notify-sync-{i}") for i in range(threads)]
        self.most = threads * GROWTH

    def pick(self) -> Worker:
        workers = self.workers
        idle = [w for w in workers if not w.load]
        if idle:
            return min(idle, key=lambda w: w.idle_since)
        now = time.monotonic()
        moving = [w for w in workers if not w.stuck(now)]
        if moving:
            return min(moving, key=lambda w: w.load)
        if len(workers) < self.most:
            worker = Worker(f"notify-sync-{len(workers)}")
            workers.append(worker)
            return worker
        return min(workers, key=lambda w: w.load)
