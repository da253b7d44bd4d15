"""``python -m bench.scale``: the shipped stack (nginx + uvicorn workers +
Redis, ``scripts/stack``) under tens of thousands of streams.

Per step: how fast the streams open and what they cost (CPU, RSS), then
broadcasts to everyone with latency, completeness and probe latency. At the
top step: the highest broadcast rate sustained, and two reconnect storms
(a worker killed, a rolling restart). The streams come from ``bench/loadgen.c``
(compiled here), several processes of at most 12,500 streams each. Writes
``bench/results/scale-<timestamp>.json``; ``--doc`` also rewrites the
``bench:scale`` block of docs/PERFORMANCE.md. See the "Scale" section there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, scale_report, servers
from bench.loadgen import PER_PROCESS, Fleet
from bench.probes import Profiler
from bench.scale_phases import Prober, Publisher
from bench.scale_stack import Stack
from bench.scale_steps import Settings, broadcast_step, open_step, rate_ladder
from bench.scale_storms import storm

RESULTS = servers.ROOT / "bench" / "results"
DOC = servers.ROOT / "docs" / "PERFORMANCE.md"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--steps", default="10000,25000,50000", help="stream counts")
    p.add_argument(
        "--workers", type=int, help="uvicorn workers (default: the stack's sizing)"
    )
    p.add_argument("--broadcasts", type=int, default=6, help="per step")
    p.add_argument("--interval", type=float, default=5.0, help="s between broadcasts")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="per rate rung")
    p.add_argument("--no-rate", action="store_true", help="skip the rate ladder")
    p.add_argument("--storms", action="store_true", help="kill -9 and rolling restart")
    p.add_argument("--restart-delay", type=float, default=2.0, help="s before start")
    p.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    p.add_argument("--jitter-ms", type=int, default=1000, help="reconnect jitter")
    p.add_argument("--quick", action="store_true", help="2,000 streams, smoke run")
    p.add_argument("--doc", action="store_true", help="rewrite docs' bench:scale block")
    p.add_argument("--max-seconds", type=float, default=3600)
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NOTIFY_NAME=VALUE",
        help="a setting for the workers (repeatable), e.g. NOTIFY_OPEN_BACKLOG=100",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the first worker while the top step opens, and the restarted "
        "worker of the kill storm until every stream is back",
    )
    p.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy the stack's logs (nginx's, the workers') into DIR at the end",
    )
    p.add_argument(
        "--render",
        type=Path,
        help="print (with --doc: publish) a saved result, run nothing",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.broadcasts, args.interval = "2000", 3, 2.0
        args.rate_seconds, args.storms = 3.0, True
        args.workers = args.workers or 2
    for setting in args.worker_env:
        name, equals, _ = setting.partition("=")
        if not (equals and name.startswith("NOTIFY_")):
            p.error(f"--worker-env takes NOTIFY_NAME=VALUE, not {setting!r}")
    args.counts = sorted({int(n) for n in args.steps.split(",") if n.strip()})
    if not args.counts or args.counts[0] < 10:
        p.error("--steps must be at least 10")
    return args


def _log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    top = args.counts[-1]
    stack = Stack(workdir, args.workers, top)
    stack.worker_env = dict(s.split("=", 1) for s in args.worker_env)
    settings = Settings(
        broadcasts=args.broadcasts,
        interval=args.interval,
        rate_seconds=args.rate_seconds,
        deliver_timeout=30 + top * 0.0006,
        restart_delay=args.restart_delay,
    )
    profiler = Profiler(True, RESULTS) if args.profile else None
    _log(f"seeding {top} users; stack in {stack.dir}")
    viewers, publisher_token = await asyncio.to_thread(stack.seed, top)
    fleet: Fleet | None = None
    try:
        _log(f"scripts/stack start, nginx on {stack.port}")
        await stack.arun("start")
        out["ports"] = {"nginx": stack.port, "workers": stack.worker_ports}
        _log(f"{len(stack.worker_ports)} workers on {stack.worker_ports}")
        fleet = await Fleet.start(
            stack.port,
            viewers,
            workdir,
            concurrency=args.concurrency,
            jitter_ms=args.jitter_ms,
        )
        publisher = Publisher(stack.port, publisher_token)
        before = 0
        for n in args.counts:
            _log(f"opening {n} streams")
            profiling = profiler if n == top else None
            step: dict[str, Any] = {
                "open": await open_step(stack, fleet, n, before, profiling)
            }
            _log(scale_report.open_line(step["open"]))
            out["steps"].append(step)
            before = n
            _log(f"{args.broadcasts} broadcasts, {args.interval:g} s apart")
            step["broadcast"] = await broadcast_step(
                stack, fleet, publisher, Prober(stack.port, viewers[0]), n, settings
            )
            _log(scale_report.broadcast_line(step["broadcast"]))
        if not args.no_rate:
            _log("broadcast rate ladder")
            out["rate"] = await rate_ladder(
                fleet, publisher, top, settings, top=2 if args.quick else None
            )
            _log(f"sustained: {out['rate']['sustained_per_s']}/s")
        if args.storms:
            for kind in ("kill", "rolling"):
                _log(f"storm: {kind}")
                try:
                    prober = Prober(stack.port, viewers[0])
                    found = await storm(
                        kind, stack, fleet, publisher, prober, top, settings, profiler
                    )
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    found = {"kind": kind, "error": f"{type(exc).__name__}: {exc}"}
                out["storms"][kind] = found
                _log(scale_report.storm_line(found))
    finally:
        if fleet is not None:
            await fleet.stop()
        _log("scripts/stack stop")
        try:
            await stack.arun("stop", within=60)
        except (RuntimeError, TimeoutError, OSError) as exc:
            _log(f"stop failed: {exc}")
        stack.kill_leftovers()
        if args.keep_logs is not None:
            stack.keep_logs(args.keep_logs)
            _log(f"logs kept in {args.keep_logs}")


async def _main(args: argparse.Namespace, out: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="notify-scale-") as tmp:
        try:
            async with asyncio.timeout(args.max_seconds):
                await _run(args, Path(tmp), out)
        except TimeoutError:
            out["error"] = f"stopped after --max-seconds {args.max_seconds:g}"
        except Exception as exc:  # record it, then the finally blocks clean up
            out["error"] = f"{type(exc).__name__}: {exc}"
        if "error" in out:
            _log(out["error"])


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _publish(out: dict[str, Any], path: Path, doc: bool) -> None:
    raw = path.resolve().relative_to(servers.ROOT)
    print(scale_report.render(out, raw))
    if doc:
        scale_report.update_doc(DOC, scale_report.render(out, raw))
        _log(f"bench:scale block written to {DOC.relative_to(servers.ROOT)}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.render:
        _publish(json.loads(args.render.read_text()), args.render, args.doc)
        return 0
    limit = servers.raise_fd_limit()
    per = -(-args.counts[-1] // math.ceil(args.counts[-1] / PER_PROCESS))
    if limit < per + 100:
        _log(f"RLIMIT_NOFILE hard limit {limit} is too low for {per} streams a process")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "machine": report.machine_info(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k != "doc"
        },
        "steps": [],
        "storms": {},
    }
    started, interrupted = time.monotonic(), False
    try:
        asyncio.run(_main(args, out))
    except KeyboardInterrupt:
        _log("interrupted; the stack has been stopped")
        out["error"], interrupted = "interrupted", True
    out["machine"]["duration_s"] = round(time.monotonic() - started, 1)
    out["machine"]["load_after"] = list(os.getloadavg())
    path = RESULTS / f"scale-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    _log(f"raw results: {path.relative_to(servers.ROOT)}")
    if interrupted:
        return 130
    _publish(out, path, args.doc)
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
