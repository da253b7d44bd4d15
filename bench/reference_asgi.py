"""The reference: a minimal SSE broadcaster in raw ASGI, without Django.

``uvicorn bench.reference_asgi:app``. It does what notify's live path does and
nothing else: one Redis ``PubSub`` and one reader task per process that hands
each message to a bounded per-connection queue; per connection, one coroutine
that waits on its queue and writes frames (coalescing a backlog the same way),
a heartbeat timer that queues a ping after a silent period (re-armed once per
heartbeat, as notify's), and a watcher that cancels it on ``http.disconnect``.
``POST /api/notifications`` numbers the JSON body with a Redis counter, encodes
the SSE frame once and publishes it. No auth, no database, no history.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import redis.asyncio as redis

HEARTBEAT = float(os.environ.get("NOTIFY_HEARTBEAT_SECONDS", "15"))
QUEUE_SIZE = int(os.environ.get("NOTIFY_QUEUE_SIZE", "256"))
CHANNEL = "reference:events"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]

_queues: set[asyncio.Queue[bytes]] = set()
_state: dict[str, Any] = {}


def _client() -> redis.Redis:
    if "client" not in _state:
        _state["client"] = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _state["client"]  # type: ignore[no-any-return]


async def _read_forever(pubsub: Any) -> None:
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        frame = message["data"]
        for queue in tuple(_queues):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                _queues.discard(queue)  # the stream ends at its next get


async def _ensure_reader() -> None:
    if "reader" in _state:
        return
    pubsub = _client().pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    if "reader" not in _state:
        _state["reader"] = asyncio.create_task(_read_forever(pubsub))


class _Heartbeat:
    """A ping into the queue after HEARTBEAT seconds without output: one timer
    per connection, re-armed once per heartbeat (as notify does)."""

    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.last_output = self.loop.time()
        self.timer = self.loop.call_at(self.last_output + HEARTBEAT, self._due)

    def _due(self) -> None:
        now = self.loop.time()
        if now >= self.last_output + HEARTBEAT - 0.01:
            if not self.queue.full():
                self.queue.put_nowait(b": ping\n\n")
            self.last_output = now
        self.timer = self.loop.call_at(self.last_output + HEARTBEAT, self._due)


async def _watch(receive: Any, task: asyncio.Task[Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def _events(receive: Any, send: Any) -> None:
    await _ensure_reader()
    queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
    _queues.add(queue)
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("not in a task")
    watcher = asyncio.create_task(_watch(receive, task))
    heartbeat: _Heartbeat | None = None
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        ready = b'event: ready\ndata: {"last_id":0,"heartbeat":%d}\n\n' % HEARTBEAT
        await send(
            {
                "type": "http.response.body",
                "body": b"retry: 3000\n\n" + ready,
                "more_body": True,
            }
        )
        heartbeat = _Heartbeat(queue)
        while queue in _queues:
            chunks = [await queue.get()]
            while not queue.empty() and len(chunks) < 64:
                chunks.append(queue.get_nowait())
            await send(
                {
                    "type": "http.response.body",
                    "body": b"".join(chunks),
                    "more_body": True,
                }
            )
            heartbeat.last_output = heartbeat.loop.time()
    except asyncio.CancelledError:
        if not watcher.done():  # a server shutdown, not a client leaving
            raise
    finally:
        _queues.discard(queue)
        watcher.cancel()
        if heartbeat is not None:
            heartbeat.timer.cancel()


async def _publish(receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.loads(body)
    client = _client()
    notification_id = int(await client.incr("reference:id"))
    wire = json.dumps({"id": notification_id, **payload}, separators=(",", ":"))
    frame = b"id: %d\nevent: notification\ndata: %s\n\n" % (
        notification_id,
        wire.encode(),
    )
    await client.publish(CHANNEL, frame)
    await _respond(send, 201, json.dumps({"id": notification_id}).encode())


async def _respond(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    route = (scope["method"], scope["path"])
    if route == ("GET", "/events/"):
        await _events(receive, send)
    elif route == ("POST", "/api/notifications"):
        await _publish(receive, send)
    elif route == ("GET", "/healthz"):
        await _respond(send, 200, b'{"status":"ok"}')
    else:
        await _respond(send, 404, b'{"error":"not found"}')
