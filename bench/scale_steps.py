"""One step of ``bench.scale``: open streams up to N, then broadcast to them;
and the broadcast-rate ladder at the top step."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Fleet, hist_quantile
from bench.probes import Profiler
from bench.scale_phases import Prober, Publisher, deliveries, summary_ms, wait_delivered
from bench.scale_stack import Stack, established

RATE_LADDER = (0.5, 1, 2, 5, 10, 20, 50)
RATE_P99_LIMIT_MS = 2000


@dataclass
class Settings:
    broadcasts: int
    interval: float
    rate_seconds: float
    deliver_timeout: float
    restart_delay: float


async def wait_ready(
    fleet: Fleet, streams: int, within: float, timeline: list[list[float]] | None = None
) -> dict[str, Any]:
    """Until ``streams`` are streaming and none is (re)connecting; appends
    [seconds, streaming] to ``timeline`` at each poll."""
    started = deadline = time.monotonic()
    deadline += within
    while True:
        stats = await fleet.stats()
        if timeline is not None:
            timeline.append([round(time.monotonic() - started, 2), stats["ready"]])
        settled = stats["waiting"] == 0 and stats["connecting"] == 0
        if stats["ready"] >= streams and settled:
            return stats
        if time.monotonic() > deadline:
            stats["timed_out"] = True
            return stats
        await asyncio.sleep(0.25)


def worker_table(stack: Stack) -> list[dict[str, Any]]:
    rows = []
    for port, sample in sorted(stack.samples().items()):
        rows.append({"port": port, "streams": established(port)} | sample.as_dict())
    return rows


async def open_step(
    stack: Stack, fleet: Fleet, n: int, before: int, profiler: Profiler | None = None
) -> dict[str, Any]:
    """Open streams up to ``n``; with ``profiler``, py-spy the first worker
    meanwhile."""
    base_rss = sum(s.rss_kb for s in stack.samples().values())
    base_nginx = stack.nginx_rss_kb()
    workers_cpu, nginx_cpu = stack.cpu()
    gen_cpu = (await fleet.stats())["cpu_s"]
    await fleet.reset()
    if profiler is not None:
        port, pid = min(stack.worker_pids().items())
        await profiler.start(pid, f"scale-{n}-open-{port}")
    started = time.time_ns()
    try:
        await fleet.open(n)
        stats = await wait_ready(fleet, n, within=60 + n * 0.02)
    finally:
        if profiler is not None:
            await profiler.stop()
    workers_cpu2, nginx_cpu2 = stack.cpu()
    added = max(1, n - before)
    last_ready = stats["last_ready_ns"] or time.time_ns()  # none ready: until now
    seconds = max(1e-9, (last_ready - started) / 1e9)
    await asyncio.sleep(2)
    workers = worker_table(stack)
    rss = sum(w["rss_kb"] for w in workers)
    return {
        "streams": n,
        "ready": stats["ready"],
        "timed_out": stats.get("timed_out", False),
        "open_seconds": round(seconds, 2),
        "connect_rate": round(added / seconds, 1),
        "ready_p50_ms": hist_quantile(stats["ready_ms"], 0.5),
        "ready_p99_ms": hist_quantile(stats["ready_ms"], 0.99),
        "worker_cpu_ms_per_stream": round(
            (workers_cpu2 - workers_cpu) * 1000 / added, 2
        ),
        "nginx_cpu_ms_per_stream": round((nginx_cpu2 - nginx_cpu) * 1000 / added, 2),
        "loadgen_cpu_ms_per_stream": round(
            (stats["cpu_s"] - gen_cpu) * 1000 / added, 3
        ),
        "worker_rss_kib_per_stream": round((rss - base_rss) / added, 1),
        "nginx_rss_kib_per_stream": round(
            (stack.nginx_rss_kb() - base_nginx) / added, 1
        ),
        "worker_rss_mib": round(rss / 1024, 1),
        "nginx_rss_mib": round(stack.nginx_rss_kb() / 1024, 1),
        "statuses": stats["status"],
        "workers": workers,
    }


async def broadcast_step(
    stack: Stack,
    fleet: Fleet,
    publisher: Publisher,
    prober: Prober,
    n: int,
    s: Settings,
) -> dict[str, Any]:
    await fleet.reset()
    publisher.take()
    stack.mark_log()
    gen_cpu = (await fleet.stats())["cpu_s"]
    workers_cpu, nginx_cpu = stack.cpu()
    stop = asyncio.Event()
    probing = asyncio.create_task(prober.run(stop))
    try:
        await publisher.every(s.interval, s.broadcasts, asyncio.Event())
        sent, latencies, failures = publisher.take()
        complete = await wait_delivered(fleet, list(sent), n, s.deliver_timeout)
    finally:
        stop.set()
        await probing
    workers_cpu2, nginx_cpu2 = stack.cpu()
    stats = await fleet.stats()
    result = deliveries(await fleet.arrivals(), sent, n)
    delivered = max(1, result["delivered"])
    return result | {
        "complete": complete,
        "duplicates": stats["dups"],
        "gaps": stats["gaps"],
        "losses": stats["losses"],
        "publish": summary_ms(latencies) | {"failures": failures},
        "probes": prober.result(),
        "worker_cpu_us_per_delivery": round(
            (workers_cpu2 - workers_cpu) * 1e6 / delivered, 1
        ),
        "nginx_cpu_us_per_delivery": round(
            (nginx_cpu2 - nginx_cpu) * 1e6 / delivered, 1
        ),
        "loadgen_cpu_us_per_delivery": round(
            (stats["cpu_s"] - gen_cpu) * 1e6 / delivered, 2
        ),
        "nginx_statuses": stack.statuses_since_mark(),
    }


async def rate_ladder(
    fleet: Fleet, publisher: Publisher, n: int, s: Settings, top: float | None = None
) -> dict[str, Any]:
    """Raise the broadcast rate until p99 > 2 s or deliveries go missing."""
    rungs: list[dict[str, Any]] = []
    sustained = None
    for rate in RATE_LADDER:
        if top is not None and rate > top:
            break
        await fleet.reset()
        publisher.take()
        count = max(3, round(rate * s.rate_seconds))
        await publisher.every(1 / rate, count, asyncio.Event())
        sent, latencies, failures = publisher.take()
        await wait_delivered(fleet, list(sent), n, within=10)
        result = deliveries(await fleet.arrivals(), sent, n)
        stats = await fleet.stats()
        p99 = result["latency_p99_ms"]
        ok = (
            result["missing"] == 0
            and stats["dups"] == 0
            and not failures
            and p99 is not None
            and p99 <= RATE_P99_LIMIT_MS
        )
        rungs.append(
            {
                "rate": rate,
                "ok": ok,
                "duplicates": stats["dups"],
                "losses": stats["losses"],
            }
            | result
            | {"publish": summary_ms(latencies) | {"failures": failures}}
        )
        if not ok:
            break
        sustained = rate
        # let a backlog drain before the next rung
        await asyncio.sleep(1)
    return {"sustained_per_s": sustained, "rungs": rungs}
