"""``python -m bench.resume``: what a reconnect storm costs one worker.

After a worker dies or a network blip, its browsers come back together, each
with the ``Last-Event-ID`` it had, most of them behind by whatever was
published while they were away. This measures the streaming worker's CPU per
stream for two kinds of opening, in alternating rounds on the same worker:

- *fresh*: no ``Last-Event-ID``, the stream starts from now (the reference);
- *resume*: ``Last-Event-ID`` set ``--behind`` notifications back, so every
  stream replays them from the database before it goes live.

A round opens ``--streams`` streams, ``--concurrency`` at a time, waits until
each has sent ``ready`` (and, resuming, every missed notification), and closes
them all. The CPU counted is the streaming worker's from the first connect to
the last stream complete; the notifications are published through a second
worker beforehand. Every wait is bounded; every child is stopped at the end.
Writes ``bench/results/resume-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat, report, servers
from bench.load import Streams, post_json
from bench.run import RESULTS, ROOT, _prepare_database, notify_env

SETTLE_SECONDS = 1.5  # after closing a round's streams, before the next


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.resume", description=__doc__)
    p.add_argument("--streams", type=int, default=3000, help="per round")
    p.add_argument("--behind", type=int, default=5, help="notifications missed")
    p.add_argument("--rounds", type=int, default=3, help="of each kind, alternating")
    p.add_argument("--concurrency", type=int, default=64, help="opens in flight")
    p.add_argument("--auth", choices=("token", "session"), default="token")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NOTIFY_NAME=VALUE",
        help="a setting for both workers (repeatable)",
    )
    p.add_argument("--max-seconds", type=float, default=900)
    args = p.parse_args(argv)
    if args.streams < 1 or args.behind < 1 or args.rounds < 1:
        p.error("--streams, --behind and --rounds must be at least 1")
    for setting in args.setting:
        name, equals, _ = setting.partition("=")
        if not (equals and name.startswith("NOTIFY_")):
            p.error(f"--setting takes NOTIFY_NAME=VALUE, not {setting!r}")
    return args


def _log(message: str) -> None:
    print(
        f"[resume {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True
    )


async def _publish(port: int, token: str, n: int) -> int:
    """Publish ``n`` notifications to everyone; the last one's id."""
    last = 0
    for i in range(n):
        payload = {"audience": "all", "title": f"resume {i}", "body": "x" * 120}
        _, status, reply = await post_json(port, "/api/notifications", token, payload)
        if status != 201:
            raise RuntimeError(f"publish answered {status}: {reply}")
        last = int(reply["id"])
    return last


async def _round(
    pid: int,
    port: int,
    viewers: list[str],
    args: argparse.Namespace,
    cursor: int | None,
) -> dict[str, float]:
    streams = Streams(port, viewers)
    want = 0 if cursor is None else args.behind
    try:
        cpu, loop_cpu = procstat.cpu_seconds(pid), procstat.main_thread_cpu_seconds(pid)
        started = time.monotonic()
        async with asyncio.timeout(60 + args.streams * 0.03):
            await streams.open(
                args.streams, concurrency=args.concurrency, last_event_id=cursor
            )
            while True:  # bounded by the timeout above
                if streams.received_at_least(want):
                    break
                await asyncio.sleep(0.01)
        seconds = time.monotonic() - started
        cpu = procstat.cpu_seconds(pid) - cpu
        loop_cpu = procstat.main_thread_cpu_seconds(pid) - loop_cpu
        extra = sum(len(c.arrivals) for c in streams.clients) - want * args.streams
        problems = sum(len(c.problems) for c in streams.clients)
    finally:
        streams.close()
    await asyncio.sleep(SETTLE_SECONDS)
    if extra or problems:
        raise RuntimeError(f"{extra} unexpected events, {problems} problems")
    n = args.streams
    return {
        "cpu_ms_per_stream": cpu * 1000 / n,
        "loop_cpu_ms_per_stream": loop_cpu * 1000 / n,
        "streams_per_second": n / seconds,
    }


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    redis, redis_url = await servers.start_redis(workdir)
    children = []
    try:
        env = notify_env(workdir / "bench.sqlite3", redis_url)
        env.update(setting.split("=", 1) for setting in args.setting)
        _log(f"database: migrate and {args.streams} users")
        seeded = await asyncio.to_thread(
            _prepare_database, env, args.streams, args.auth
        )
        worker, url = await servers.start_uvicorn(
            "streams", "project.asgi:application", env, workdir
        )
        children.append(worker)
        publisher, publisher_url = await servers.start_uvicorn(
            "publisher", "project.asgi:application", env, workdir
        )
        children.append(publisher)
        port = int(url.rsplit(":", 1)[1])
        publish_port = int(publisher_url.rsplit(":", 1)[1])
        token, viewers = seeded["publisher"], seeded["viewers"]
        # Warm-up: a round of each kind, small and not counted.
        newest = await _publish(publish_port, token, args.behind + 1)
        warm = argparse.Namespace(**{**vars(args), "streams": min(64, args.streams)})
        await _round(worker.pid, port, viewers, warm, None)
        await _round(worker.pid, port, viewers, warm, newest - args.behind)
        rounds: dict[str, list[dict[str, float]]] = {"fresh": [], "resume": []}
        for r in range(args.rounds):
            newest = await _publish(publish_port, token, args.behind)
            for kind in ("fresh", "resume"):
                cursor = None if kind == "fresh" else newest - args.behind
                result = await _round(worker.pid, port, viewers, args, cursor)
                rounds[kind].append(result)
                _log(
                    f"round {r + 1} {kind}: {result['cpu_ms_per_stream']:.3f} ms/stream "
                    f"({result['loop_cpu_ms_per_stream']:.3f} on the event loop), "
                    f"{result['streams_per_second']:.0f} streams/s"
                )
        return rounds
    finally:
        for child in children:
            await asyncio.to_thread(child.stop)
        await asyncio.to_thread(redis.stop)


def _summary(rounds: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[kind])

    fresh, resume = (
        median("fresh", "cpu_ms_per_stream"),
        median("resume", "cpu_ms_per_stream"),
    )
    ratios = [
        b["cpu_ms_per_stream"] / a["cpu_ms_per_stream"]
        for a, b in zip(rounds["fresh"], rounds["resume"], strict=True)
    ]
    return {
        "fresh_cpu_ms": fresh,
        "resume_cpu_ms": resume,
        "fresh_loop_cpu_ms": median("fresh", "loop_cpu_ms_per_stream"),
        "resume_loop_cpu_ms": median("resume", "loop_cpu_ms_per_stream"),
        "resume_over_fresh": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if servers.raise_fd_limit() < args.streams + 200:
        _log(f"the open-file limit is too low for {args.streams} streams")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = report.machine_info()
    with tempfile.TemporaryDirectory(prefix="notify-resume-") as tmp:
        try:
            rounds = asyncio.run(
                asyncio.wait_for(_run(args, Path(tmp)), args.max_seconds)
            )
        except KeyboardInterrupt:
            _log("interrupted; every server has been stopped")
            return 130
    summary = _summary(rounds)
    settings = {k: v for k, v in vars(args).items() if k != "max_seconds"}
    out = RESULTS / f"resume-{time.strftime('%Y%m%dT%H%M%S')}.json"
    document = {"machine": info, "settings": settings, "rounds": rounds}
    out.write_text(json.dumps(document | {"summary": summary}, indent=2))
    _log(
        f"fresh {summary['fresh_cpu_ms']:.3f} ms/stream, resuming "
        f"{args.behind} behind {summary['resume_cpu_ms']:.3f} ms/stream: "
        f"{summary['resume_over_fresh']:.2f}x (median of {args.rounds} rounds); "
        f"{out.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
