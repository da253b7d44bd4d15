"""The number of active users: ``recipients`` of a notification to all.

Counting them scans the user table on every database, about 0.1 ms per 1,000
users on SQLite and as much as the rest of a publish at 10,000
(docs/PERFORMANCE.md), and every publish to everyone needs the number. So a
process keeps it for up to ``KEEP_SECONDS``. A user created, deleted,
activated or deactivated through the ORM in this process drops it at once
(``notify/receivers.py``), and again when that change commits; a change made
by another process is counted within ``KEEP_SECONDS``.

Inside a transaction of the caller's (``transaction.atomic()`` around
``notify.publish``) the count is made afresh: the transaction may hold changes
no other one sees yet.
"""

from __future__ import annotations

import threading
import time

from django.contrib.auth import get_user_model
from django.db import connection

KEEP_SECONDS = 1.0

_lock = threading.Lock()
_generation = 0  # bumped by every forget(), which also drops what is kept
_kept: tuple[int, float] | None = None  # (count, when)


def count(*, in_transaction: bool) -> int:
    """Active users now, or as of at most ``KEEP_SECONDS`` ago when not
    ``in_transaction`` and nothing in this process changed them since."""
    if in_transaction:
        return _count()
    kept = _kept
    now = time.monotonic()
    if kept is not None and now - kept[1] < KEEP_SECONDS:
        return kept[0]
    generation = _generation
    found = _count()
    _keep(found, now, generation)
    return found


def forget() -> None:
    """Users were created, deleted, activated or deactivated."""
    global _generation, _kept
    with _lock:
        _generation += 1
        _kept = None


def _keep(found: int, at: float, generation: int) -> None:
    global _kept
    with _lock:
        # A count that raced with a change is not kept.
        if generation == _generation:
            _kept = (found, at)


def _count() -> int:
    """A plain ``COUNT(*)``: the ORM's ``count()`` costs more to build than
    this takes to run on SQLite."""
    model = get_user_model()
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    active = quote(str(model._meta.get_field("is_active").column))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {active}")
        row = cursor.fetchone()
    return int(row[0])
