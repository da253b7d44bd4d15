"""One implementation of "what this viewer receives", two transports.

``event_stream`` is the body of ``GET /events/``: one async generator per
connection that owns its subscription. ``poll`` answers ``GET /events/poll``.
Both subscribe *first*, then read the database, then use live messages,
skipping ids already sent, so nothing published meanwhile is lost or doubled.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from notify import metrics, sse
from notify.access import rechecker
from notify.broker import Message, Subscription, get_broker
from notify.conf import conf
from notify.opening import Opening
from notify.replay import areplay_batch
from notify.visibility import Viewer, anewest_visible_id
from notify.wire import WireNotification

logger = logging.getLogger(__name__)

_MAX_COALESCE = 64  # live frames written in one send


def _prelude() -> bytes:
    return sse.padding(conf.padding_bytes) + sse.retry(conf.retry_ms)


def _notification(w: WireNotification) -> bytes:
    return sse.event("notification", w, id=w["id"])


_PING = Message(0, (), sse.PING)
_EARLY = 0.01  # the loop may run a timer a clock tick before it is due


class _Heartbeat:
    """One stream's silence: a ping is due once it has been silent for
    ``seconds`` (the stream sets ``last_output`` on each write)."""

    __slots__ = ("sub", "seconds", "last_output", "due")

    def __init__(self, sub: Subscription, seconds: float, now: float) -> None:
        self.sub: Subscription | None = sub
        self.seconds = seconds
        self.last_output = now
        self.due = now + seconds

    def __lt__(self, other: _Heartbeat) -> bool:
        return self.due < other.due

    def cancel(self) -> None:
        self.sub = None  # dropped from the schedule when next due


class _Heartbeats:
    """Every stream's heartbeat in one event loop, on one timer.

    A heap of heartbeats ordered by when each is next due, and one timer for
    the earliest, rather than a timer per stream: with thousands of open
    streams, a timer handle each (and its callback) was about half a KiB per
    stream. A heartbeat is looked at once per ``seconds`` of silence, not per
    message, and the ping travels through the stream's own queue, so one
    generator still does all the writing.
    """

    __slots__ = ("_heap", "_timer", "_at")

    def __init__(self) -> None:
        self._heap: list[_Heartbeat] = []
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def start(self, sub: Subscription, seconds: float) -> _Heartbeat:
        now = asyncio.get_running_loop().time()
        beat = _Heartbeat(sub, seconds, now)
        heapq.heappush(self._heap, beat)
        if beat.due < self._at:
            self._arm()
        return beat

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            self._at = math.inf
            return
        self._at = self._heap[0].due
        self._timer = asyncio.get_running_loop().call_at(self._at, self._due)

    def _due(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        heap = self._heap
        again = []
        while heap and heap[0].due <= now + _EARLY:
            beat = heapq.heappop(heap)
            sub = beat.sub
            if sub is None or sub.ended:
                continue
            if now >= beat.last_output + beat.seconds - _EARLY:
                # A full queue already holds output; the ping would add nothing.
                if not sub.full():
                    sub.deliver(_PING)
                beat.last_output = now
            beat.due = beat.last_output + beat.seconds
            again.append(beat)
        for beat in again:
            heapq.heappush(heap, beat)
        self._arm()


_heartbeats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Heartbeats] = (
    weakref.WeakKeyDictionary()
)


def _start_heartbeat(sub: Subscription, seconds: float) -> _Heartbeat:
    loop = asyncio.get_running_loop()
    beats = _heartbeats.get(loop)
    if beats is None:
        beats = _heartbeats[loop] = _Heartbeats()
    return beats.start(sub, seconds)


async def event_stream(
    opening: Opening, since: float | None = None
) -> AsyncIterator[bytes]:
    """The bytes of one event stream, from prelude to disconnect.

    ``since``: the loop time before its credential was read (revocations
    that arrive after it apply to this stream)."""
    broker = get_broker()
    heartbeat = conf.heartbeat_seconds
    viewer = opening.viewer
    try:
        async with broker.subscribe(
            viewer.channels, owner=asyncio.current_task(), credential=opening.credential
        ) as sub:
            # Read at the moment of subscribing (no await in between): every
            # id above it reaches the subscription from now on.
            dispatched = broker.fanout.last_id
            checker = rechecker(broker)
            if opening.expires is not None:
                checker.expire_at(sub, opening.expires)
            if since is not None:
                checker.missed(sub, since)
            del checker
            head = _prelude()
            if opening.reset:
                head += sse.event("reset", {"reason": opening.reset})
            beat = int(heartbeat) if heartbeat.is_integer() else heartbeat
            head += sse.event("ready", {"last_id": opening.last_id, "heartbeat": beat})
            after = opening.newest if opening.cursor is None else opening.cursor
            replayed = opening.replayed
            if replayed is not None:  # behind: its first replay came with it
                after = replayed.through
                if replayed.count:
                    metrics.REPLAYED.inc(replayed.count)
                    metrics.DELIVERED.inc(replayed.count)
                    head += replayed.frames
            yield head
            del head, replayed  # held by the frame for as long as the stream

            last_sent = after
            # The database is read only when the client is behind, or when
            # something was dispatched between the opening read and the
            # subscription (it is in neither the read nor the queue).
            if after < opening.newest or dispatched > opening.latest:
                async for chunk, replayed_through in _replay(viewer, after):
                    last_sent = replayed_through
                    yield chunk
                    if sub.ended:
                        break  # revoked meanwhile: say so now
            # Ended already (revoked, a server stopping): the queue may hold
            # live notifications above rows the replay never sent. Sent, they
            # would move the client's cursor past those rows; it gets them
            # all from its cursor when it reconnects. Only the end goes out.
            ended = sub.ended
            del opening, viewer  # the live loop needs only its subscription

            keepalive = _start_heartbeat(sub, heartbeat)
            loop = asyncio.get_running_loop()
            try:
                while True:
                    batch = sub.drain(_MAX_COALESCE)
                    if not batch:
                        await sub.wait()
                        continue
                    chunks: list[bytes] = []
                    delivered = 0
                    last = False
                    for message in batch:
                        if message.id == 0:  # pings, read-state changes
                            chunks.append(message.frame)
                            if message.control is not None:
                                last = True  # revoked, or reconnect: see access
                                kind, _, mark = message.control.partition(" ")
                                if kind == "reconnect":
                                    # The cursor, even for a client that was
                                    # sent no id yet: it resumes from here.
                                    back = last_sent
                                    if mark.isdigit():
                                        back = min(int(mark), back)
                                    chunks[-1] = b"id: %d\n" % back + message.frame
                                break
                        elif (
                            message.id > last_sent
                            and not ended
                            and (
                                message.expires_at is None
                                or message.expires_at > time.time()
                            )
                        ):
                            chunks.append(message.frame)
                            last_sent = message.id
                            delivered += 1
                    if delivered:
                        metrics.DELIVERED_LIVE.inc(delivered)
                    if chunks:
                        yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                        keepalive.last_output = loop.time()
                    if last:
                        return
            finally:
                keepalive.cancel()
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception:
        # Headers are gone: the error becomes one event and the stream ends;
        # the client reconnects with its cursor.
        logger.exception("event stream failed")
        yield sse.event("stream-error", {"reason": "server-error"})


async def _replay(viewer: Viewer, after: int) -> AsyncIterator[tuple[bytes, int]]:
    batch = conf.replay_batch
    while True:
        rows = await areplay_batch(viewer.user_id, after, batch)
        if rows:
            after = rows[-1]["id"]
            metrics.REPLAYED.inc(len(rows))
            metrics.DELIVERED.inc(len(rows))
            yield b"".join(_notification(w) for w in rows), after
        if len(rows) < batch:
            return


async def poll(
    viewer: Viewer, after: int | None, wait: float, credential: int | str | None
) -> dict[str, Any]:
    """Notifications newer than ``after``, waiting up to ``wait`` seconds.

    A revocation ends the wait (the next poll then gets 401)."""
    broker = get_broker()
    deadline = time.monotonic() + wait
    rechecker(broker)
    async with broker.subscribe(viewer.channels, credential=credential) as sub:
        if after is None:
            after = await anewest_visible_id(viewer.user_id)
        rows = await areplay_batch(viewer.user_id, after, conf.replay_batch)
        while not rows:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    message = await sub.get()
            except TimeoutError:
                break
            if message.control is not None:
                break
            if message.id > after:
                rows = await areplay_batch(viewer.user_id, after, conf.replay_batch)
    metrics.DELIVERED.inc(len(rows))
    return {
        "events": [{"id": w["id"], "event": "notification", "data": w} for w in rows],
        "last_id": rows[-1]["id"] if rows else after,
    }
