"""Reconnect storms at the top step, with a broadcast every few seconds:
``kill -9`` of one worker brought back by ``scripts/stack start`` (as a
supervisor would), and ``scripts/stack rolling-restart``."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from bench.loadgen import Fleet, hist_quantile
from bench.probes import Profiler
from bench.scale_phases import (
    Prober,
    Publisher,
    deliveries,
    summary_ms,
    wait_delivered,
)
from bench.scale_stack import Stack, established
from bench.scale_steps import Settings, wait_ready


async def _disturb(kind: str, stack: Stack, s: Settings) -> dict[str, Any]:
    if kind == "kill":
        port, pid = next(iter(sorted(stack.worker_pids().items())))
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(s.restart_delay)
        started = time.monotonic()
        await stack.arun("start")
        return {
            "killed_port": port,
            "start_seconds": round(time.monotonic() - started, 1),
        }
    started = time.monotonic()
    await stack.arun("rolling-restart", within=600)
    return {"command_seconds": round(time.monotonic() - started, 1)}


async def storm(
    kind: str,
    stack: Stack,
    fleet: Fleet,
    publisher: Publisher,
    prober: Prober,
    n: int,
    s: Settings,
    profiler: Profiler | None = None,
) -> dict[str, Any]:
    """With ``profiler``, py-spy the restarted worker of a ``kill`` until
    every stream is back."""
    await wait_ready(fleet, n, within=60 + n * 0.01)
    await fleet.reset()
    publisher.take()
    stack.mark_log()
    stop = asyncio.Event()
    publishing = asyncio.create_task(publisher.every(s.interval, None, stop))
    probing = asyncio.create_task(prober.run(stop))
    result: dict[str, Any] = {"kind": kind}
    try:
        await asyncio.sleep(s.interval + 0.5)
        began = time.time_ns()
        result |= await _disturb(kind, stack, s)
        if profiler is not None and kind == "kill":
            port = result["killed_port"]
            await profiler.start(stack.worker_pids()[port], f"scale-{n}-kill-{port}")
        timeline: list[list[float]] = []
        try:
            stats = await wait_ready(fleet, n, within=120 + n * 0.01, timeline=timeline)
        finally:
            if profiler is not None:
                await profiler.stop()
        # streaming over time, from the end of the kill/restart command
        result["timeline"] = timeline[:: max(1, -(-len(timeline) // 60))]
        recovered = stats["last_ready_ns"] if stats["reconnects"] else began
        result["recovery_seconds"] = round(max(0, recovered - began) / 1e9, 2)
        result["recovered"] = not stats.get("timed_out", False)
        await asyncio.sleep(2 * s.interval)  # keep broadcasting after recovery
    finally:
        stop.set()
        await publishing
        await probing
    sent, latencies, failures = publisher.take()
    complete = await wait_delivered(fleet, list(sent), n, s.deliver_timeout)
    stats = await fleet.stats()
    return (
        result
        | deliveries(await fleet.arrivals(), sent, n)
        | {
            "complete": complete,
            "duplicates": stats["dups"],
            "gaps": stats["gaps"],
            "losses": stats["losses"],
            # of the losses, responses the server ended (NOTIFY_DRAIN_RATE)
            "ended": stats["ended"],
            "reconnects": stats["reconnects"],
            "reconnect_p50_ms": hist_quantile(stats["reconnect_ms"], 0.5),
            "reconnect_p99_ms": hist_quantile(stats["reconnect_ms"], 0.99),
            "reconnect_max_ms": hist_quantile(stats["reconnect_ms"], 1.0),
            # connect() → ready of the attempts that succeeded: the server's share
            "ready_p50_ms": hist_quantile(stats["ready_ms"], 0.5),
            "ready_p99_ms": hist_quantile(stats["ready_ms"], 0.99),
            "loadgen_statuses": stats["status"],
            "connect_errors": stats["conn_errors"],
            "nginx_statuses": stack.statuses_since_mark(),
            "nginx_errors": stack.errors_since_mark(),
            "publish": summary_ms(latencies) | {"failures": failures},
            "probes": prober.result(),
            "streams_per_worker": {
                str(p): established(p) for p in sorted(stack.worker_pids())
            },
        }
    )
