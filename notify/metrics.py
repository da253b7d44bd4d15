"""The service's counters and gauges, rendered by prometheus-client.

They live in a private registry, so a host project's own metrics (in
prometheus-client's global ``REGISTRY``) never show up in ``/metrics`` and ours
never show up in theirs.

With ``PROMETHEUS_MULTIPROC_DIR`` set, every process writes its values into
files in that directory and ``render()`` reports the sum over the processes
sharing it, whichever one answers: counters over every process since the
directory was emptied, gauges (``livesum``) over the processes still running.
Without it, ``render()`` reports this process alone.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger(__name__)

# prometheus-client chooses where values live (memory or files) from this
# variable when it is imported, so it is its convention, not a Django setting:
# a setting could not change that choice.
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR and not os.path.isdir(MULTIPROC_DIR):
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={MULTIPROC_DIR!r} is not a directory"
    )

# How often each process writes its memory, files and CPU time, so that the
# sum rendered by any one of them is at most this old for the others.
PROCESS_REFRESH_SECONDS = 5.0


def _own_value(metric: MetricWrapperBase) -> float:
    """This process's own value, whatever the mode."""
    return next(iter(metric.collect())).samples[0].value


# In no registry: _Collector below renders them.
class Counter(prometheus_client.Counter):
    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation, registry=None)

    value = property(_own_value)


class Gauge(prometheus_client.Gauge):
    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(
            name, documentation, registry=None, multiprocess_mode="livesum"
        )

    value = property(_own_value)


class Tally:
    """A count kept as a plain number and added to ``counter`` once per turn
    of the event loop that counted it (or when the process exits).

    In multiprocess mode every ``inc()`` of a counter writes its file under a
    lock, about 2.3 µs here: a broadcast to 50,000 streams made 50,000 such
    writes. Through a tally, each stream adds to a number, and the loop's
    next turn writes the sum once.
    """

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending = 0
        self._lock = threading.Lock()  # streams may count on several loops
        self._flush_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def inc(self, amount: int = 1) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending += amount
            if loop is not None and loop is self._flush_on:
                return  # this loop's next turn writes it
            self._flush_on = loop
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Add what was counted to the counter now."""
        with self._lock:
            amount, self._pending = self._pending, 0
            self._flush_on = None
        if amount:
            self._counter.inc(amount)


OPEN_STREAMS = Gauge("notify_open_streams", "Open event streams and long polls.")
PUBLISHED = Counter("notify_notifications_published_total", "Notifications published.")
DELIVERED = Counter(
    "notify_events_delivered_total", "Notifications written to streams."
)
SLOW_DISCONNECTS = Counter(
    "notify_slow_client_disconnects_total",
    "Streams ended because the client could not keep up.",
)
REPLAYED = Counter(
    "notify_replayed_events_total", "Notifications sent from the database on resume."
)
RECOVERED = Counter(
    "notify_recovered_events_total",
    "Notifications a server process read from the database to fill a gap.",
)
REVOKED = Counter(
    "notify_revoked_streams_total",
    "Streams ended because their credential stopped being valid.",
)
REFUSED = Counter(
    "notify_refused_streams_total",
    "Streams and long polls refused by the per-user cap.",
)
BROKER_RECONNECTS = Counter(
    "notify_broker_reconnects_total", "Broker connections re-established."
)

# What live streams deliver, one message at a time on every stream.
DELIVERED_LIVE = Tally(DELIVERED)

PROCESSES = Gauge("notify_processes", "Server processes reporting these metrics.")
RESIDENT_MEMORY = Gauge(
    "notify_process_resident_memory_bytes",
    "Resident memory of the server processes, in bytes.",
)
OPEN_FDS = Gauge(
    "notify_process_open_fds", "Open file descriptors of the server processes."
)
CPU_SECONDS = Gauge(
    "notify_process_cpu_seconds_total",
    "CPU time (user and system) the running server processes have used, in seconds.",
)

ALL = (
    OPEN_STREAMS,
    PUBLISHED,
    DELIVERED,
    SLOW_DISCONNECTS,
    REPLAYED,
    RECOVERED,
    REVOKED,
    REFUSED,
    BROKER_RECONNECTS,
    PROCESSES,
    RESIDENT_MEMORY,
    OPEN_FDS,
    CPU_SECONDS,
)
# Family names: counters without "_total" (prometheus-client adds it).
_NAMES = tuple(family.name for metric in ALL for family in metric.describe())

try:
    _TICKS = os.sysconf("SC_CLK_TCK")
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # no sysconf: no /proc either
    _TICKS = _PAGE_SIZE = 0


def refresh_process() -> None:
    """Set this process's memory, open files and CPU time from ``/proc/self``
    (as prometheus-client's ``ProcessCollector`` reads them); without
    ``/proc`` (not Linux) they stay at 0."""
    if not _TICKS:
        return
    try:
        with open("/proc/self/stat", "rb") as file:
            stat = file.read()
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        return
    # proc(5): the fields after the command name, which may hold ") ".
    fields = stat[stat.rfind(b")") + 2 :].split()
    CPU_SECONDS.set((int(fields[11]) + int(fields[12])) / _TICKS)  # utime + stime
    RESIDENT_MEMORY.set(int(fields[21]) * _PAGE_SIZE)  # rss, in pages
    OPEN_FDS.set(fds)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].startswith(b"Z")


def _forget_dead_processes() -> None:
    """Take the processes that ended without marking themselves dead out of the
    livesum gauges: uvicorn ends on SIGTERM by raising it again once it has shut
    down, so atexit never runs; nor does it after kill -9 or the OOM killer.
    (prometheus-client already assumes the processes sharing the directory
    share process ids: its files are named by pid.)"""
    for path in Path(MULTIPROC_DIR).glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and _gone(int(pid)):
            mark_process_dead(int(pid), MULTIPROC_DIR)


class _Collector:
    """Our metrics, in the order of ALL, without the ``_created`` series
    prometheus-client adds to counters outside multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        refresh_process()
        if MULTIPROC_DIR:
            _forget_dead_processes()
            # Also holds the host project's metrics if they share the directory.
            families = MultiProcessCollector(None, MULTIPROC_DIR).collect()
        else:
            families = [family for metric in ALL for family in metric.collect()]
        by_name = {family.name: family for family in families}
        for name in _NAMES:
            family = by_name.get(name)
            if family is None:
                continue
            family.samples = [
                sample
                for sample in family.samples
                if not sample.name.endswith("_created")
            ]
            yield family


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(_Collector())


def render() -> bytes:
    """Every metric in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
    DELIVERED_LIVE.flush()
    return generate_latest(REGISTRY)


def _refresh_forever() -> None:
    while True:
        time.sleep(PROCESS_REFRESH_SECONDS)
        try:
            refresh_process()
        except Exception:
            logger.exception("could not refresh the process metrics")


def _start_process_metrics() -> None:
    """This process's share of the livesum gauges: counted as one process from
    now, refreshed on a timer (whichever process renders reads the others'
    files), dropped when it exits (atexit) or, failing that, at the first
    render after it is gone."""
    PROCESSES.set(1)
    refresh_process()
    # A thread rather than a task: it runs in every process, with or without a
    # running event loop and before any request.
    threading.Thread(
        target=_refresh_forever, name="notify-process-metrics", daemon=True
    ).start()


def _mark_dead() -> None:
    mark_process_dead(os.getpid(), MULTIPROC_DIR)


if MULTIPROC_DIR:
    _start_process_metrics()
    atexit.register(_mark_dead)
    # A forked child keeps neither the thread nor the parent's files.
    os.register_at_fork(after_in_child=_start_process_metrics)
else:
    PROCESSES.set(1)
