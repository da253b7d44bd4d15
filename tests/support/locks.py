"""Another process holding a database lock, as a busy deployment would."""

from __future__ import annotations

import subprocess
import sys

from tests.support.servers import ROOT

_SQLITE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""
_POSTGRES = """
import psycopg, sys, time
with psycopg.connect(sys.argv[1]) as db:
    db.execute(sys.argv[3])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""
# What each lock is on PostgreSQL; on SQLite every write takes the one lock.
PUBLISHERS = "SELECT pg_advisory_xact_lock({})"
TOKENS = "LOCK TABLE notify_apitoken IN EXCLUSIVE MODE"  # reads still pass


def hold_lock(database_url: str, seconds: float, lock: str) -> subprocess.Popen[str]:
    """A process holding the write lock (SQLite) or ``lock`` (PostgreSQL, in
    a transaction) for ``seconds``; returns once it is held."""
    if database_url.startswith("sqlite:"):
        path = "/" + database_url.removeprefix("sqlite:///").lstrip("/")
        argv = [sys.executable, "-c", _SQLITE, path, str(seconds)]
    else:
        argv = [sys.executable, "-c", _POSTGRES, database_url, str(seconds), lock]
    holder = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(10)
    if holder.stdout is not None:
        holder.stdout.close()
