"""Publish throughput on SQLite and on PostgreSQL.

``python -m bench.publish [--databases sqlite,postgres] [--seconds 10]
[--concurrency 8] [--gap-ms 0] [--users 1000]``

For each database: a fresh database (a SQLite file, or a throwaway
PostgreSQL cluster started as the tests start theirs), ``--users`` users, one
uvicorn worker (uvloop, httptools) with Redis, then three timed phases with
``--concurrency`` clients sending one request after another, each waiting
``--gap-ms`` after its answer before the next:

- reference: ``GET /healthz`` (Django's request handling and one database
  round trip, the same process and database);
- publish: ``POST /api/notifications`` to everyone, with a bearer token;
- the pure-ASGI reference's publish (``bench/reference_asgi.py``: a Redis
  counter and a ``PUBLISH``, no Django, no database), on a worker of its own
  started for the phase.

It reports requests per second, the worker's CPU per request (and how much
of it its event loop's thread used), the latency percentiles of each phase,
the ratio publish/``/healthz`` throughput, and notify's CPU per publish over
the pure-ASGI reference's: those ratios are what compares across machines.
With a gap, the worker sleeps between requests and each one comes to a cold
process, as an occasional publish does. Writes
``bench/results/publish-<time>.json``.
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

import httpx

from bench import probes, procstat, servers
from bench.run import ROOT, _prepare_database, notify_env, reference_env

RESULTS = ROOT / "bench" / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__)
    p.add_argument("--databases", default="sqlite,postgres")
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="each client's pause after an answer (0: back to back)",
    )
    p.add_argument("--users", type=int, default=1000)
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker while it publishes (bench/results/profile-*.txt)",
    )
    args = p.parse_args(argv)
    args.database_names = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not args.database_names or set(args.database_names) - {"sqlite", "postgres"}:
        p.error("--databases takes sqlite and/or postgres")
    return args


def _log(message: str) -> None:
    print(
        f"[publish {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True
    )


async def _phase(
    url: str, pid: int, seconds: float, concurrency: int, request: Any, gap: float
) -> dict[str, Any]:
    """``concurrency`` clients repeating ``request`` for ``seconds``, each
    pausing ``gap`` seconds after an answer."""
    latencies: list[float] = []
    failures: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await request(http)
                if response.status_code in (200, 201):
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[response.status_code] = (
                        failures.get(response.status_code, 0) + 1
                    )
                if gap:
                    await asyncio.sleep(gap)

    cpu, loop = procstat.cpu_seconds(pid), procstat.main_thread_cpu_seconds(pid)
    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    cpu = procstat.cpu_seconds(pid) - cpu
    loop = procstat.main_thread_cpu_seconds(pid) - loop
    done = len(latencies)
    cuts = statistics.quantiles(latencies, n=100) if done > 1 else [0.0] * 99
    return {
        "requests": done,
        "per_second": done / elapsed,
        "cpu_ms_per_request": cpu / done * 1000 if done else None,
        # Of which the event loop's thread; the rest is the other threads'.
        "loop_cpu_ms_per_request": loop / done * 1000 if done else None,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "failures": failures,
    }


async def _measure(
    database: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    redis, redis_url = await servers.start_redis(workdir)
    cluster = None
    worker = None
    try:
        env = notify_env(workdir / "bench.sqlite3", redis_url)
        env["NOTIFY_PUBLISH_RATE"] = "100000/s"
        if database == "postgres":
            sys.path.insert(0, str(ROOT))
            from tests.support.postgres import PostgresCluster

            cluster = PostgresCluster()
            await asyncio.to_thread(cluster.start)
            env["DATABASE_URL"] = cluster.url("postgres")
        _log(f"{database}: migrate and {args.users} users")
        seeded = await asyncio.to_thread(_prepare_database, env, args.users, "token")
        worker, url = await servers.start_uvicorn(
            "notify", "project.asgi:application", env, workdir
        )
        pid = worker.pid
        headers = {"Authorization": f"Bearer {seeded['publisher']}"}
        body = {"audience": "all", "title": "Throughput", "body": "x" * 200}

        async def healthz(http: httpx.AsyncClient) -> httpx.Response:
            return await http.get("/healthz")

        async def publish(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post("/api/notifications", json=body, headers=headers)

        gap, n = args.gap_ms / 1000, args.concurrency
        await _phase(url, pid, 1.0, n, healthz, gap)  # warm up
        await _phase(url, pid, 1.0, n, publish, gap)
        _log(f"{database}: reference (GET /healthz) for {args.seconds:g} s")
        reference = await _phase(url, pid, args.seconds, n, healthz, gap)
        _log(f"{database}: publish for {args.seconds:g} s")
        profiler = probes.Profiler(args.profile, RESULTS)
        await profiler.start(pid, f"publish-{database}")
        try:
            published = await _phase(url, pid, args.seconds, n, publish, gap)
        finally:
            await profiler.stop()
        await asyncio.to_thread(worker.stop)
        worker = None
        _log(f"{database}: the pure-ASGI reference's publish for {args.seconds:g} s")
        asgi = await _reference_publish(redis_url, workdir, args, body)
        ratio = published["per_second"] / reference["per_second"]
        cpu_ratio = published["cpu_ms_per_request"] / asgi["cpu_ms_per_request"]
        _log(
            f"{database}: {published['per_second']:.0f} publishes/s "
            f"({published['cpu_ms_per_request']:.2f} ms CPU each, "
            f"{published['loop_cpu_ms_per_request']:.2f} on the event loop; p99 "
            f"{published['p99_ms']:.0f} ms) = {ratio:.2f} x the reference's "
            f"{reference['per_second']:.0f} requests/s; {cpu_ratio:.2f} x the "
            f"pure-ASGI reference's {asgi['cpu_ms_per_request']:.2f} ms CPU"
        )
        return {
            "database": database,
            "reference": reference,
            "publish": published,
            "ratio": ratio,
            "asgi_reference": asgi,
            "cpu_ratio_to_asgi_reference": cpu_ratio,
        }
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(redis.stop)


async def _reference_publish(
    redis_url: str, workdir: Path, args: argparse.Namespace, body: dict[str, Any]
) -> dict[str, Any]:
    """The pure-ASGI reference's publish phase, on a worker of its own."""
    worker, url = await servers.start_uvicorn(
        "reference", "bench.reference_asgi:app", reference_env(redis_url), workdir
    )
    try:

        async def publish(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post("/api/notifications", json=body)

        gap, n = args.gap_ms / 1000, args.concurrency
        await _phase(url, worker.pid, 1.0, n, publish, gap)  # warm up
        return await _phase(url, worker.pid, args.seconds, n, publish, gap)
    finally:
        await asyncio.to_thread(worker.stop)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    found = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for database in args.database_names:
        with tempfile.TemporaryDirectory(prefix="notify-publish-") as tmp:
            found.append(asyncio.run(_measure(database, args, Path(tmp))))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"publish-{time.strftime('%Y%m%dT%H%M%S')}.json"
    settings = {
        k: getattr(args, k) for k in ("seconds", "concurrency", "gap_ms", "users")
    }
    out.write_text(json.dumps({"settings": settings, "results": found}, indent=2))
    print(
        "| database | publishes/s | CPU per publish (event loop) | p50 | p99 "
        "| /healthz req/s | ratio | pure-ASGI publish CPU | × it |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in found:
        p, ref, asgi = r["publish"], r["reference"], r["asgi_reference"]
        print(
            f"| {r['database']} | {p['per_second']:.0f} | "
            f"{p['cpu_ms_per_request']:.2f} ms ({p['loop_cpu_ms_per_request']:.2f}) | "
            f"{p['p50_ms']:.1f} ms | "
            f"{p['p99_ms']:.1f} ms | {ref['per_second']:.0f} | {r['ratio']:.2f} | "
            f"{asgi['cpu_ms_per_request']:.2f} ms | "
            f"{r['cpu_ratio_to_asgi_reference']:.2f} |"
        )
    _log(f"raw results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
