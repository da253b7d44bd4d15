"""Counts the CPU time a benchmarked server spends in the cyclic GC.

The benchmark puts this directory first on the servers' ``PYTHONPATH``, so
Python imports it at start-up; it does nothing unless ``BENCH_GC_STATS``
names a file. The app itself is served unwrapped. On SIGUSR1 the totals so
far are written to that file as JSON; on SIGUSR2 also the number of objects
the GC tracks (slow with a large heap, so only after the measurements).
``BENCH_GC_THRESHOLD`` (``python -m bench.run --gc-threshold N``) sets the
first-generation threshold, an experiment the benchmark applies to every target.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

_PATH = os.environ.get("BENCH_GC_STATS", "")
_totals = {g: {"collections": 0, "cpu_s": 0.0, "collected": 0} for g in range(3)}
_started = threading.local()


def _callback(phase: str, info: dict[str, Any]) -> None:
    # The GC runs in whichever thread allocated; thread_time is that thread's CPU.
    if phase == "start":
        _started.at = time.thread_time()
        return
    total = _totals[info["generation"]]
    total["collections"] += 1
    total["cpu_s"] += time.thread_time() - getattr(_started, "at", time.thread_time())
    total["collected"] += info["collected"]


def _dump(signum: int, _frame: FrameType | None) -> None:
    report: dict[str, Any] = {"gc": _totals}
    if signum == signal.SIGUSR2:
        report["tracked_objects"] = len(gc.get_objects())
    with open(_PATH + ".tmp", "w") as out:
        json.dump(report, out)
    os.replace(_PATH + ".tmp", _PATH)


if os.environ.get("BENCH_GC_THRESHOLD"):
    _, _second, _third = gc.get_threshold()
    gc.set_threshold(int(os.environ["BENCH_GC_THRESHOLD"]), _second, _third)

if _PATH:
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _dump)
