"""One measured scenario: N streams on one fresh worker, B broadcasts.

Two fresh uvicorn workers per target, as in a deployment with several: the
*streaming* worker, which is measured, holds the streams and is fed through
Redis; the *publishing* worker takes the publish requests. Phases, each
bounded: start both; open 10 streams and publish a few times (warm-up, then
the CPU of one publish request, on the publishing worker); sample the
baseline; open streams up to N (through 2,000 on the way, for the flatness
figures), sampling at each checkpoint; broadcast B times, ``spacing`` apart,
and wait until every stream has every event (or the timeout); stop everything.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import probes, procstat, servers
from bench.load import StreamClient, Streams, post_json

BASELINE = 10
FLAT_CHECKPOINT = 2000
WARMUP_PUBLISHES = 2
PROBE_PUBLISHES = 200  # CPU is counted in 10 ms ticks: 200 give 0.05 ms steps


@dataclass
class Target:
    name: str
    app: str
    env: dict[str, str]
    db_path: Path | None
    publisher: str
    viewers: list[str]
    profile: bool = False


@dataclass
class Plan:
    streams: int
    broadcasts: int
    spacing: float
    open_timeout: float
    deliver_timeout: float
    workdir: Path
    results_dir: Path
    gc_threshold: int | None = None
    payload_body: str = field(default="x" * 120)
    open_concurrency: int = 64  # streams being opened at once


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Scenario:
    def __init__(self, target: Target, plan: Plan) -> None:
        self.target, self.plan = target, plan
        self.sequence = 0
        self.gc_file = plan.workdir / f"gc-{target.name}-{plan.streams}.json"
        self.profiler = probes.Profiler(target.profile, plan.results_dir)

    async def run(self) -> dict[str, Any]:
        target, plan = self.target, self.plan
        env = target.env | probes.gc_env(self.gc_file, plan.gc_threshold)
        child, url = await servers.start_uvicorn(
            target.name, target.app, env, plan.workdir
        )
        try:
            publisher, publisher_url = await servers.start_uvicorn(
                f"{target.name}-publisher", target.app, target.env, plan.workdir
            )
        except BaseException:
            await asyncio.to_thread(child.stop)
            raise
        streams = Streams(_port(url), target.viewers)
        try:
            return await self._measure(
                child.pid, streams, publisher.pid, _port(publisher_url)
            )
        finally:
            await self.profiler.stop()
            streams.close()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(child.stop)
            await asyncio.to_thread(publisher.stop)

    async def _publish(self, port: int) -> tuple[float, int]:
        self.sequence += 1
        payload = {
            "audience": "all",
            "title": f"bench {self.sequence}",
            "body": self.plan.payload_body,
        }
        path = "/api/notifications"
        sent, status, reply = await post_json(
            port, path, self.target.publisher, payload
        )
        if status != 201:
            raise RuntimeError(f"publish answered {status}: {reply}")
        return sent, int(reply["id"])

    async def _wait_delivered(self, streams: Streams, count: int) -> bool:
        deadline = time.monotonic() + self.plan.deliver_timeout
        while time.monotonic() < deadline:
            if streams.received_at_least(count):
                return True
            await asyncio.sleep(0.02)
        return streams.received_at_least(count)

    async def _measure(
        self, pid: int, streams: Streams, publisher: int, port: int
    ) -> dict[str, Any]:
        """``pid``: the streaming worker; ``publisher``, ``port``: the
        publishing worker."""
        plan, db = self.plan, self.target.db_path
        async with asyncio.timeout(plan.open_timeout):
            await streams.open(BASELINE)
        probe_start = loop_start = 0.0
        for i in range(WARMUP_PUBLISHES + PROBE_PUBLISHES):
            if i == WARMUP_PUBLISHES:
                probe_start = procstat.cpu_seconds(publisher)
                loop_start = procstat.main_thread_cpu_seconds(publisher)
            streams.forget_arrivals()
            await self._publish(port)
            await self._wait_delivered(streams, 1)
        publish_cpu = (procstat.cpu_seconds(publisher) - probe_start) / PROBE_PUBLISHES
        # Of which the event loop's thread; the rest is the other threads'.
        publish_loop_cpu = (
            procstat.main_thread_cpu_seconds(publisher) - loop_start
        ) / PROBE_PUBLISHES
        await asyncio.sleep(1)
        samples = {BASELINE: procstat.sample(pid, db)}

        checkpoints = [c for c in (FLAT_CHECKPOINT,) if BASELINE < c < plan.streams]
        setup_cpu = setup_loop_cpu = 0.0
        opened_at = time.monotonic()
        for checkpoint in [*checkpoints, plan.streams]:
            if checkpoint == plan.streams:
                await self.profiler.start(pid, f"{self.target.name}-{checkpoint}-setup")
            before = procstat.cpu_seconds(pid)
            loop_before = procstat.main_thread_cpu_seconds(pid)
            async with asyncio.timeout(plan.open_timeout):
                await streams.open(checkpoint, concurrency=plan.open_concurrency)
            setup_cpu += procstat.cpu_seconds(pid) - before
            setup_loop_cpu += procstat.main_thread_cpu_seconds(pid) - loop_before
            await self.profiler.stop()
            await asyncio.sleep(1)
            samples[checkpoint] = procstat.sample(pid, db)
        open_seconds = time.monotonic() - opened_at

        streams.forget_arrivals()
        gc_before = await asyncio.to_thread(
            probes.gc_totals, pid, self.gc_file, objects=False
        )
        await self.profiler.start(pid, f"{self.target.name}-{plan.streams}-broadcast")
        sent: dict[int, float] = {}
        cpu_before, phase_start = procstat.cpu_seconds(pid), time.monotonic()
        publisher_before = procstat.cpu_seconds(publisher)
        for b in range(plan.broadcasts):
            when, notification_id = await self._publish(port)
            sent[notification_id] = when
            next_at = phase_start + (b + 1) * plan.spacing
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        complete = await self._wait_delivered(streams, plan.broadcasts)
        broadcast_cpu = procstat.cpu_seconds(pid) - cpu_before
        publisher_cpu = procstat.cpu_seconds(publisher) - publisher_before
        broadcast_seconds = time.monotonic() - phase_start
        await self.profiler.stop()
        gc_after = await asyncio.to_thread(
            probes.gc_totals, pid, self.gc_file, objects=True
        )

        n, b = plan.streams, plan.broadcasts
        return {
            "target": self.target.name,
            "streams": n,
            "broadcasts": b,
            "samples": {str(k): v.as_dict() for k, v in samples.items()},
            "rss_per_stream_kib": (samples[n].rss_kb - samples[BASELINE].rss_kb)
            / (n - BASELINE),
            "setup_cpu_ms_per_stream": setup_cpu * 1000 / (n - BASELINE),
            "setup_loop_cpu_ms_per_stream": setup_loop_cpu * 1000 / (n - BASELINE),
            "open_seconds": open_seconds,
            "publish_cpu_ms": publish_cpu * 1000,
            "publish_loop_cpu_ms": publish_loop_cpu * 1000,
            "broadcast_cpu_s": broadcast_cpu,
            "publisher_cpu_s": publisher_cpu,
            "broadcast_seconds": broadcast_seconds,
            "complete": complete,
            "gc": probes.gc_delta(gc_before, gc_after),
            **_deliveries(streams.clients, sent, n * b, broadcast_cpu, publisher_cpu),
        }


def _deliveries(
    clients: list[StreamClient],
    sent: dict[int, float],
    expected: int,
    cpu: float,
    publisher_cpu: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    received = duplicates = lost = 0
    problems: list[str] = []
    for client in clients:
        ids = [i for i, _ in client.arrivals if i in sent]
        received += len(set(ids))
        duplicates += len(ids) - len(set(ids))
        latencies.extend(t - sent[i] for i, t in client.arrivals if i in sent)
        problems.extend(client.problems)
        lost += client.lost
    return {
        "deliveries": received,
        "deliveries_per_cpu_s": received / max(cpu, 1e-9),
        "all_in_deliveries_per_cpu_s": received / max(cpu + publisher_cpu, 1e-9),
        "latency_p50_ms": _percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": _percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies, default=float("nan")) * 1000,
        "missing": expected - received,
        "duplicates": duplicates,
        "lost_connections": lost,
        "problems": problems[:10],
    }
