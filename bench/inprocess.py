"""The ASGI application in this process, against a real Redis and a fresh
SQLite database: the harness of ``bench.calls`` and ``bench.floors``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bench import servers
from bench.run import ROOT, _prepare_database, notify_env

BODY = json.dumps({"title": "Deploy at 5", "body": "All hands", "audience": "all"})
WARMUP = 50  # requests of each kind before anything is measured
T = TypeVar("T")


def run(
    users: int,
    measure: Callable[[str], Coroutine[Any, Any, T]],
    *,
    settings: str = "project.settings",
    env: dict[str, str] | None = None,
) -> T:
    """Start Redis and a fresh SQLite database with ``users`` users, point
    this process's settings at them, and run ``measure(token)`` on uvloop,
    ``token`` being a staff user's that may publish. ``measure`` loads the
    application (``from project.asgi import application``)."""
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        workdir = Path(tmp)
        redis, redis_url = asyncio.run(servers.start_redis(workdir))
        try:
            environ = notify_env(workdir / "bench.sqlite3", redis_url) | (env or {})
            seeded = _prepare_database(environ, users, "token")
            os.environ.update(environ | {"DJANGO_SETTINGS_MODULE": settings})
            sys.path.insert(0, str(ROOT))
            import uvloop

            found = uvloop.run(measure(seeded["publisher"]))
            from notify.tokens import write_used

            write_used()  # now, while the database exists, not by its thread later
            return found
        finally:
            redis.stop()


def asgi_scope(path: str, token: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]
    publish = path.rstrip("/") == "/api/notifications"
    if publish:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if publish else "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(app: Any, scope: dict[str, Any], body: bytes) -> int:
    """One request through the application, as uvicorn would send it."""
    done = asyncio.Event()
    status: list[int] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif not message.get("more_body") or b"event: ready" in message["body"]:
            done.set()  # the response, or a stream once open: the client leaves

    async with asyncio.timeout(30):
        await app(scope, receive, send)
    return status[0]


async def warm_up(app: Any, scopes: dict[str, dict[str, Any]], body: bytes) -> None:
    """``WARMUP`` requests to each path, each of which must succeed, then a
    moment for their closes on the request threads."""
    for path, scope in scopes.items():
        for _ in range(WARMUP):
            if (status := await asgi_request(app, dict(scope), body)) >= 400:
                raise RuntimeError(f"{path} answered {status}")
    await asyncio.sleep(0.2)
