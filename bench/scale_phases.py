"""Publishing, probing and delivery accounting for ``bench.scale``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import Fleet
from bench.scale_http import request

BODY = "x" * 120
PROBES = {
    "healthz": "/healthz",
    "inbox": "/api/notifications?limit=50",
    "page": "/accounts/login/",
    "static": "/static/notify/css/notify.css",
}


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(seconds: list[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "count": len(seconds),
        "p50_ms": ms(quantile(seconds, 0.5)),
        "p99_ms": ms(quantile(seconds, 0.99)),
        "max_ms": ms(max(seconds, default=None)),
    }


@dataclass
class Publisher:
    """Broadcasts to everyone through nginx; remembers each id's send time."""

    port: int
    token: str
    sent: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    sequence: int = 0

    async def publish(self) -> None:
        self.sequence += 1
        payload = {"audience": "all", "title": f"scale {self.sequence}", "body": BODY}
        reply = await request(
            self.port, "POST", "/api/notifications", token=self.token, payload=payload
        )
        self.latencies.append(reply.seconds)
        if reply.status == 201:
            self.sent[int(reply.json()["id"])] = reply.sent_ns
        else:
            key = str(reply.status)
            self.failures[key] = self.failures.get(key, 0) + 1

    async def every(
        self, interval: float, count: int | None, stop: asyncio.Event
    ) -> None:
        """Publish every ``interval`` s (``count`` times, or until ``stop``);
        each publish is its own task so a slow one does not delay the next."""
        tasks: list[asyncio.Task[None]] = []
        start, k = time.monotonic(), 0
        while (count is None or k < count) and not stop.is_set():
            tasks.append(asyncio.create_task(self.publish()))
            k += 1
            delay = start + k * interval - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))
        await asyncio.gather(*tasks)

    def take(self) -> tuple[dict[int, int], list[float], dict[str, int]]:
        got = self.sent, self.latencies, self.failures
        self.sent, self.latencies, self.failures = {}, [], {}
        return got


PROBE_NICE = -10


class Prober:
    """Health check, inbox, a page and a static file, once per ``interval``;
    the first round is not timed (a fresh worker's first page compiles its
    template), but its errors count.

    The probes stand for clients on other machines, so they run on a thread
    of their own with an event loop of its own, at ``PROBE_NICE`` when the
    bench may raise its priority (root): their timings are the server's
    answer, not this process waiting for its turn on the CPU behind the
    load generators. (Linux priorities are per thread, so processes this one
    starts keep the normal priority.)
    """

    def __init__(self, port: int, token: str, interval: float = 1.0) -> None:
        self.port, self.token, self.interval = port, token, interval
        self.seconds: dict[str, list[float]] = {name: [] for name in PROBES}
        self.errors: dict[str, int] = dict.fromkeys(PROBES, 0)
        self.raised = False

    async def run(self, stop: asyncio.Event) -> None:
        stopping = threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._probe(stopping)), name="prober"
        )
        thread.start()
        try:
            await stop.wait()
        finally:
            stopping.set()
            await asyncio.to_thread(thread.join, 30)

    async def _probe(self, stopping: threading.Event) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROBE_NICE)
            self.raised = True
        except PermissionError:
            pass
        timed = False  # the first round warms each path up (templates, URLs)
        while not stopping.is_set():
            for name, path in PROBES.items():
                token = self.token if name == "inbox" else None
                reply = await request(self.port, "GET", path, token=token, within=10)
                if timed:
                    self.seconds[name].append(reply.seconds)
                if reply.status != 200:
                    self.errors[name] += 1
            timed = True
            await asyncio.to_thread(stopping.wait, self.interval)

    def result(self) -> dict[str, Any]:
        return {
            name: summary_ms(values) | {"errors": self.errors[name]}
            for name, values in self.seconds.items()
        }


async def wait_delivered(
    fleet: Fleet, ids: list[int], streams: int, within: float
) -> bool:
    """Until every stream has every id in ``ids`` (or the timeout)."""
    deadline = time.monotonic() + within
    while True:
        counts = await fleet.counts()
        if all(counts.get(i, 0) >= streams for i in ids):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


def deliveries(
    arrivals: list[dict[str, Any]], sent: dict[int, int], streams: int
) -> dict[str, Any]:
    """Broadcast latency (weighted over every delivery), time until the last
    client per broadcast, and missing deliveries, from the generators'
    per-id arrival histograms (a bucket counts at its lower bound)."""
    weighted: list[tuple[float, int]] = []
    received: dict[int, int] = dict.fromkeys(sent, 0)
    last: dict[int, int] = {}
    for record in arrivals:
        id_ = record["id"]
        if id_ not in sent:
            continue
        received[id_] += record["n"]
        last[id_] = max(last.get(id_, 0), record["last"])
        base_ms = (record["first"] - sent[id_]) / 1e6
        weighted.extend((base_ms + lo, n) for lo, n in record["h"])
    to_last = [(last[i] - sent[i]) / 1e9 for i in last]
    return {
        "broadcasts": len(sent),
        "latency_p50_ms": _weighted_quantile(weighted, 0.5),
        "latency_p99_ms": _weighted_quantile(weighted, 0.99),
        "last_client_p50_ms": _ms(quantile(to_last, 0.5)),
        "last_client_max_ms": _ms(max(to_last, default=None)),
        "delivered": sum(received.values()),
        "missing": sum(max(0, streams - n) for n in received.values()),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _weighted_quantile(values: list[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in values)
    if not total:
        return None
    rank, seen = q * (total - 1), 0
    for value, n in sorted(values):
        seen += n
        if seen > rank:
            return round(value, 1)
    return round(max(v for v, _ in values), 1)
