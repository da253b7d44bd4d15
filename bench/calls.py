"""Python function calls per request, by package: a count, not a timing.

``python -m bench.calls [--path /api/notifications] [--requests 200] [--users 1000]``

Timings on a shared 2-core machine vary by a fifth from run to run; the
number of Python calls a request makes does not, and it is where a request's
CPU goes when, as here, the interpreter runs most of it. This starts Redis
and a fresh SQLite database (``--users`` users, a staff token that may
publish), loads the ASGI application into this process, sends 50 warm-up
requests, then counts every function call on every thread
(``sys.setprofile``, ``threading.setprofile``; a coroutine's every resumption
counts as a call) over ``--requests`` more, one at a time. ``POST
/api/notifications`` publishes to everyone with the staff token; any other
path is a ``GET`` with it, and a stream (``/events/``) is left once it sent
``ready``, so that its count is the opening and the closing. Prints the calls
per request by package (notify, django, asgiref, redis, the standard library
and the rest) and the busiest functions, and writes
``bench/results/calls-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench import inprocess
from bench.inprocess import BODY, asgi_request, asgi_scope, warm_up
from bench.run import ROOT

RESULTS = ROOT / "bench" / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__)
    p.add_argument("--path", default="/api/notifications")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--users", type=int, default=1000)
    return p.parse_args(argv)


def _package(filename: str) -> str:
    if filename.startswith(str(ROOT / "notify")):
        return "notify"
    for name in ("django", "asgiref", "redis"):
        if f"site-packages/{name}/" in filename:
            return name
    if "site-packages" in filename or filename.startswith(str(ROOT)):
        return "other"
    return "stdlib"  # the interpreter's own library, frozen modules


class Counter:
    def __init__(self) -> None:
        self.on = False
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and self.on:
            code = frame.f_code
            self.calls[(code.co_filename, code.co_qualname)] += 1


async def _count(args: argparse.Namespace, token: str, counter: Counter) -> None:
    # Before the first request: the request threads start with it, and
    # threading.setprofile reaches only threads started after it.
    sys.setprofile(counter)
    threading.setprofile(counter)
    try:
        from project.asgi import application

        scope, body = asgi_scope(args.path, token, BODY.encode()), BODY.encode()
        await warm_up(application, {args.path: scope}, body)
        counter.on = True
        for _ in range(args.requests):
            await asgi_request(application, dict(scope), body)
        await asyncio.sleep(0.2)
        counter.on = False
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def _report(args: argparse.Namespace, counter: Counter) -> dict[str, Any]:
    n = args.requests
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _), calls in counter.calls.items():
        by_package[_package(filename)] += calls
    busiest = [
        {"function": f"{_package(f)}:{Path(f).name}:{name}", "per_request": c / n}
        for (f, name), c in counter.calls.most_common(25)
    ]
    return {
        "path": args.path,
        "requests": n,
        "users": args.users,
        "calls_per_request": sum(by_package.values()) / n,
        "by_package": {k: v / n for k, v in by_package.most_common()},
        "busiest": busiest,
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    counter = Counter()
    inprocess.run(args.users, lambda token: _count(args, token, counter))
    report = _report(args, counter)
    print(f"{report['calls_per_request']:.0f} Python calls per request to {args.path}")
    for package, calls in report["by_package"].items():
        print(f"  {package:8} {calls:7.1f}")
    for row in report["busiest"][:10]:
        print(f"  {row['per_request']:7.1f}  {row['function']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"calls-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"raw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
