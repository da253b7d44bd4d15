"""Where a request's CPU goes: notify's requests against floors, one process.

``python -m bench.floors [--rounds 7] [--requests 200] [--gap-ms 2] [--users 1000]``

A publish's CPU is made of parts that any request of this shape pays. This
measures them side by side. It starts Redis and a fresh SQLite database
(``--users`` users, a staff token that may publish) and loads the ASGI
application into this process, with the demo's URLconf plus three floors
(``bench/floor_urls.py``):

- ``/floor/empty``: an async view that answers ``{}``: Django's request
  handling, notify's ASGI handler and middleware, and the response's close,
  handed to the request's thread (where Django's ``request_started`` and
  ``request_finished`` receivers run), nothing else;
- ``/floor/thread``: the same plus one trip to the request's thread and back;
- ``/floor/redis``: the same as ``empty`` plus one Redis round trip (PING).

Then, in ``--rounds`` rounds, it sends ``--requests`` of each of these, of
``GET /healthz`` and of ``POST /api/notifications`` to everyone with the
token, one at a time, ``--gap-ms`` apart: a publish comes to a quiet process,
not to one still warm from the previous request. It reports the median over
the rounds of the CPU per request (``time.process_time``: every thread of
this process, the sleeps between requests subtracted as measured without a
request) and the ratio to the empty floor. There is no HTTP server:
uvicorn's parsing and writing are not in these figures. Writes
``bench/results/floors-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from bench import inprocess
from bench.inprocess import BODY, asgi_request, asgi_scope, warm_up
from bench.run import ROOT

RESULTS = ROOT / "bench" / "results"
PATHS = (
    "/floor/empty",
    "/floor/thread",
    "/floor/redis",
    "/healthz",
    "/api/notifications",
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=200, help="per path and round")
    p.add_argument("--gap-ms", type=float, default=2.0)
    p.add_argument("--users", type=int, default=1000)
    return p.parse_args(argv)


async def _idle(seconds: float, count: int) -> float:
    """CPU of ``count`` sleeps of ``seconds`` with nothing else to do."""
    started = time.process_time()
    for _ in range(count):
        await asyncio.sleep(seconds)
    return time.process_time() - started


async def _measure(args: argparse.Namespace, token: str) -> dict[str, list[float]]:
    from project.asgi import application

    body = BODY.encode()
    scopes = {path: asgi_scope(path, token, body) for path in PATHS}
    await warm_up(application, scopes, body)
    gap, n = args.gap_ms / 1000, args.requests
    found: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(args.rounds):
        idle = await _idle(gap, n)
        for path, scope in scopes.items():
            started = time.process_time()
            for _ in range(n):
                await asgi_request(application, dict(scope), body)
                await asyncio.sleep(gap)
            await asyncio.sleep(0.05)  # the last close, on its thread
            spent = time.process_time() - started - idle
            found[path].append(spent / n * 1000)
    return found


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    found = inprocess.run(
        args.users,
        lambda token: _measure(args, token),
        settings="bench.floor_settings",
        env={"NOTIFY_PUBLISH_RATE": "1000000/s"},
    )
    medians = {path: statistics.median(values) for path, values in found.items()}
    floor = medians["/floor/empty"]
    rows = [
        {
            "path": path,
            "cpu_ms": medians[path],
            "rounds_ms": found[path],
            "ratio_to_empty": medians[path] / floor,
        }
        for path in PATHS
    ]
    print("| request | CPU per request (median) | × empty floor |")
    print("|---|---|---|")
    for row in rows:
        print(
            f"| `{row['path']}` | {row['cpu_ms']:.2f} ms | {row['ratio_to_empty']:.2f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"floors-{time.strftime('%Y%m%dT%H%M%S')}.json"
    settings = {k: getattr(args, k) for k in ("rounds", "requests", "gap_ms", "users")}
    out.write_text(json.dumps({"settings": settings, "results": rows}, indent=1))
    print(f"raw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
