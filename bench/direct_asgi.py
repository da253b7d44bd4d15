"""A measurement of a proposal, not a product: notify with ``GET /events/``
served outside Django's request/response cycle.

``uvicorn bench.direct_asgi:app``. Every other request goes to
``project.asgi.application`` unchanged. For the stream, Django still
authenticates (the same ``acaller`` and ``aload_viewer`` as the view, on a
request object that is dropped once they return), and the body is notify's own
``event_stream`` generator, written straight to ASGI ``send`` with a watcher
that cancels it on ``http.disconnect``, as the reference does. What goes away
per stream is Django's ``HttpRequest``/``StreamingHttpResponse``, the handler's
two extra tasks, and two async-generator layers per message. Bearer tokens
only, no cursor (the benchmark sends neither a cookie nor ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # the models must be ready before notify imports

from asgiref.sync import ThreadSensitiveContext  # noqa: E402
from django.core.handlers.asgi import ASGIRequest  # noqa: E402

from notify.history import Viewer, aload_viewer  # noqa: E402
from notify.permissions import acaller  # noqa: E402
from notify.streams import event_stream  # noqa: E402
from project.asgi import application  # noqa: E402

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]


async def _viewer(scope: dict[str, Any]) -> Viewer | None:
    async with ThreadSensitiveContext(executor=next(application._next)):
        request = ASGIRequest(scope, io.BytesIO())
        caller = await acaller(request)
        if not caller.authenticated:
            return None
        return await aload_viewer(caller.user)


async def _watch(receive: Any, task: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def _stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    viewer = await _viewer(scope)
    if viewer is None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
        return
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("not in a task")
    watcher = asyncio.create_task(_watch(receive, task))
    body = event_stream(viewer, None)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except asyncio.CancelledError:
        if not watcher.done():
            raise
    finally:
        await body.aclose()
        watcher.cancel()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and (scope["method"], scope["path"]) == (
        "GET",
        "/events/",
    ):
        await _stream(scope, receive, send)
    else:
        await application(scope, receive, send)
