"""Retention inside a server process: a thread that deletes notifications
past ``NOTIFY_RETENTION_DAYS`` every ``NOTIFY_PRUNE_SECONDS``.

It is started by the ASGI handler at a process's first request (so a server
forked after importing the application gets its own), never by a publish or
a ``manage.py`` command; ``manage.py notify_prune`` does the same work once,
for cron. Pruning takes the write lock on SQLite, so it runs on its own thread
rather than in any request, and the first run waits a full interval: a
process that is only starting has requests to answer.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from django.db import connections

from notify.conf import conf

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_started_in: int | None = None  # the process id the thread was started in


def start_pruner() -> bool:
    """Start this process's pruning thread, unless it runs already or
    ``NOTIFY_PRUNE_SECONDS`` is 0; True when it started one."""
    global _started_in
    if not conf.prune_seconds:
        return False
    with _lock:
        if _started_in == os.getpid():
            return False
        _started_in = os.getpid()
    threading.Thread(target=_run, name="notify-prune", daemon=True).start()
    return True


def _run() -> None:
    while interval := conf.prune_seconds:
        # Up to a tenth later, so that the processes of one host spread out.
        time.sleep(interval * random.uniform(1.0, 1.1))
        prune_once()


def prune_once() -> int:
    """Prune now; how many notifications were removed (0 after a failure,
    which is logged: the next run tries again)."""
    from notify import retention  # models: not before Django is set up

    try:
        removed = retention.prune()
    except Exception:
        logger.exception("pruning old notifications failed")
        return 0
    finally:
        # Not kept for an hour between runs.
        connections.close_all()
    if removed:
        logger.info("removed %d notifications past retention", removed)
    return removed
