"""The broker contract: how a published message reaches every open stream.

A server process keeps one :class:`Fanout` per event loop. Every message
published anywhere reaches that fanout once (through Redis, or directly for the
in-process backend), is dispatched **in id order**, and is copied by reference
into the bounded queue of each local :class:`Subscription` whose channels it
names. Nothing is serialized per connection.

Sequenced messages (``id > 0``) are notifications. Their ids come from the
database, which commits them in id order, so a fanout that sees id ``N`` while
its last id is below ``N - 1`` knows it missed something and asks its
:class:`History` for the gap before dispatching ``N``. The same history is
asked after a reconnect and every ``resync_seconds`` of silence, so a message
lost in transit (Redis restarting, a publisher that could not reach Redis)
still reaches every stream. Unsequenced messages (``id == 0``, e.g. read-state
changes) are best-effort and dispatched as they come.

A message with a ``control`` word is for the streams themselves rather than
their readers (see :mod:`notify.access`): ``revoke <target>`` queues its frame
(``event: revoked``) as the last thing the matching streams of its users send;
``recheck`` hands their subscriptions to :attr:`Fanout.on_recheck`.

A subscription whose queue is full is *lagged*: its owning task is cancelled,
which ends that one HTTP response; the client reconnects with its cursor and
replays from the database. Nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from notify import metrics

logger = logging.getLogger(__name__)

_SLICE = 1000  # subscriptions handed a message between two looks at the loop
RECENT = 60.0  # seconds control messages are kept for late subscribers


@dataclass(frozen=True, slots=True)
class Message:
    """What travels through the broker.

    ``id``: the notification id (0 for unsequenced messages). ``channels``: the
    local routing keys it is for (``"all"``, ``"user:<pk>"``, ``"group:<pk>"``).
    ``frame``: the SSE bytes sent to every matching stream, encoded once.
    ``expires_at``: POSIX time after which it must not be delivered.
    ``control``: None for messages to read; see the module docstring.
    """

    id: int
    channels: tuple[str, ...]
    frame: bytes
    expires_at: float | None = None
    control: str | None = None


class History(Protocol):
    """The source of truth a fanout reads gaps from (the database)."""

    async def latest_id(self) -> int:
        """The newest committed id (0 when there is none)."""

    async def since(self, after: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with ``id > after``, in id order."""


class Subscription:
    """One connection's view of the broker: a bounded mailbox of messages.

    Each subscription has exactly one reader (its stream), so instead of an
    ``asyncio.Queue`` (three deques and an event, about 2 KiB per open stream)
    it keeps a plain list and at most one waiting future, and hands the reader
    everything pending in one call.
    """

    __slots__ = (
        "channels",
        "maxsize",
        "owner",
        "credential",
        "expires",
        "lagged",
        "ended",
        "_items",
        "_waiter",
    )

    def __init__(
        self,
        channels: Iterable[str],
        maxsize: int,
        owner: asyncio.Task[Any] | None = None,
        credential: int | str | None = None,
    ) -> None:
        # A tuple, not a set: two or three names, held by every open stream.
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
        self.maxsize = maxsize
        self.owner = owner
        self.credential = credential  # see notify.access.credential_key
        self.expires: float | None = None  # when notify.access looks again
        self.lagged = False
        self.ended = False
        self._items: list[Message] = []
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def drain(self, limit: int) -> Sequence[Message]:
        """Up to ``limit`` queued messages, oldest first, without waiting."""
        items = self._items
        if not items:
            return ()
        if len(items) <= limit:
            self._items = []
            return items
        batch = items[:limit]
        del items[:limit]
        return batch

    def wait(self) -> asyncio.Future[None]:
        """A future that is done once a message is queued (``await sub.wait()``).

        A future rather than a coroutine: the stream awaits it once per
        message, so this spares a coroutine object each time.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._items:
                waiter.set_result(None)
        return waiter

    async def get(self) -> Message:
        """Wait for the next message."""
        while not (batch := self.drain(1)):
            await self.wait()
        return batch[0]

    def get_nowait(self) -> Message | None:
        """The next message if one is queued, else None."""
        return self._items.pop(0) if self._items else None

    def deliver(self, message: Message) -> None:
        if self.lagged or self.ended:
            return
        if len(self._items) >= self.maxsize:
            self.lagged = True
            metrics.SLOW_DISCONNECTS.inc()
            logger.info("disconnecting a client %d messages behind", self.maxsize)
            if self.owner is not None:
                self.owner.cancel()
            return
        self._queue(message)

    def _queue(self, message: Message) -> None:
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def end(self, message: Message) -> None:
        """Queue ``message`` as the last one: nothing is queued after it.
        A full queue takes it too: the stream then ends as told (a revocation,
        a server stopping, with its cursor) rather than being cut."""
        if not (self.lagged or self.ended):
            self._queue(message)
        self.ended = True

    def close(self) -> None:
        """Unsubscribed: keep nothing alive (a late reference may remain)."""
        self.ended = True
        self.owner = None
        self._items = []
        self._waiter = None


Recheck = Callable[[Sequence[Subscription], str], None]
Matches = Callable[[Subscription, str], bool]


class Fanout:
    """Routes messages to local subscriptions, in id order, filling gaps.

    ``on_recheck`` receives the subscriptions a ``recheck`` message names,
    and its argument;
    ``matches`` tells whether a subscription is the target of a ``revoke``.
    Both are set by :mod:`notify.access`.
    """

    def __init__(self, history: History | None, *, batch: int = 500) -> None:
        self.history = history
        self.batch = batch
        self.last_id = 0
        # A channel's one subscription, or a set of them: most channels
        # ("user:<pk>") have one, and a set for it was some 200 bytes per stream.
        self._by_channel: dict[str, Subscription | set[Subscription]] = {}
        self._lock = asyncio.Lock()
        self.on_recheck: Recheck | None = None
        self.matches: Matches | None = None
        # Control messages of the last RECENT seconds (loop time, message): a
        # stream authenticated just before one arrived, and subscribed just
        # after, looks here for what it missed (see notify.access).
        self.recent: collections.deque[tuple[float, Message]] = collections.deque()

    @property
    def subscriptions(self) -> set[Subscription]:
        found: set[Subscription] = set()
        for subs in self._by_channel.values():
            if isinstance(subs, Subscription):
                found.add(subs)
            else:
                found |= subs
        return found

    def _members(self, channel: str) -> Iterable[Subscription]:
        subs = self._by_channel.get(channel)
        if subs is None:
            return ()
        return (subs,) if isinstance(subs, Subscription) else subs

    def channels(self) -> set[str]:
        """Channels with at least one local subscription."""
        return set(self._by_channel)

    def add(self, sub: Subscription) -> None:
        by_channel = self._by_channel
        for channel in sub.channels:
            subs = by_channel.get(channel)
            if subs is None:
                by_channel[channel] = sub
            elif isinstance(subs, Subscription):
                if subs is not sub:
                    by_channel[channel] = {subs, sub}
            else:
                subs.add(sub)

    def remove(self, sub: Subscription) -> None:
        by_channel = self._by_channel
        for channel in sub.channels:
            subs = by_channel.get(channel)
            if subs is sub:
                del by_channel[channel]
            elif isinstance(subs, set):
                subs.discard(sub)
                if len(subs) == 1:
                    by_channel[channel] = next(iter(subs))
                elif not subs:
                    del by_channel[channel]

    async def start(self) -> None:
        if self.history is not None:
            self.last_id = await self.history.latest_id()

    async def dispatch(self, message: Message) -> None:
        if message.id == 0:
            await self._route(message)
            return
        async with self._lock:
            if message.id <= self.last_id:
                return
            if message.id > self.last_id + 1 and self.history is not None:
                await self._catch_up(through=message.id - 1)
            # Before routing, which yields to the loop: a subscription made
            # meanwhile is not among the targets, and this tells it so (its
            # stream then reads the database; see streams.event_stream).
            self.last_id = message.id
            await self._route(message)

    async def resync(self) -> None:
        """Deliver whatever the history holds past our last id."""
        if self.history is None:
            return
        async with self._lock:
            await self._catch_up(through=None)

    async def _catch_up(self, *, through: int | None) -> None:
        history = self.history
        if history is None:
            return
        while True:
            found = await history.since(self.last_id, self.batch)
            for message in found:
                if through is not None and message.id > through:
                    return
                metrics.RECOVERED.inc()
                self.last_id = message.id
                await self._route(message)
            if len(found) < self.batch:
                return

    async def _route(self, message: Message) -> None:
        """Hand ``message`` to every subscription on its channels, yielding to
        the event loop every ``_SLICE`` of them: a broadcast to tens of
        thousands of streams then never holds other requests of this process
        (the API, health checks) for longer than one slice takes."""
        if len(message.channels) == 1:
            targets: tuple[Subscription, ...] = tuple(
                self._members(message.channels[0])
            )
        else:
            found: set[Subscription] = set()
            for channel in message.channels:
                found.update(self._members(channel))
            targets = tuple(found)
        if message.control is not None:
            self._control(message, targets)
            return
        for start in range(0, len(targets), _SLICE):
            if start:
                await asyncio.sleep(0)
            for sub in targets[start : start + _SLICE]:
                sub.deliver(message)

    def _control(self, message: Message, targets: Sequence[Subscription]) -> None:
        now = asyncio.get_running_loop().time()
        recent = self.recent
        while recent and recent[0][0] < now - RECENT:
            recent.popleft()
        recent.append((now, message))
        self.apply_control(message, targets)

    def apply_control(self, message: Message, targets: Iterable[Subscription]) -> None:
        """Act on a control message for ``targets`` (its subscriptions)."""
        assert message.control is not None
        kind, _, target = message.control.partition(" ")
        if kind == "revoke":
            matches = self.matches
            for sub in targets:
                if target == "*" or (matches is not None and matches(sub, target)):
                    sub.end(message)
                    metrics.REVOKED.inc()
        elif kind == "recheck":
            subs = list(targets)
            if self.on_recheck is not None and subs:
                self.on_recheck(subs, target)
        else:
            logger.warning("skipping an unknown control message %.40r", message.control)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait until it has really finished.

    Cancelling again is deliberate: on Python 3.11, the ``asyncio.wait_for``
    that redis-py puts around socket writes can swallow a cancellation that
    lands just as the write completes. A cancellation of the caller itself is
    not suppressed.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task failed", exc_info=task.exception())


class Subscribing:
    """``async with broker.subscribe(...) as sub``: registered on entry,
    removed on exit. A small class rather than an ``asynccontextmanager``,
    which would keep an async generator and its frame per open stream."""

    __slots__ = ("_broker", "_sub")

    def __init__(self, broker: Broker, sub: Subscription) -> None:
        self._broker = broker
        self._sub = sub

    async def __aenter__(self) -> Subscription:
        await self._broker._ensure_started()
        self._broker.fanout.add(self._sub)
        metrics.OPEN_STREAMS.inc()
        return self._sub

    async def __aexit__(self, *exc: object) -> None:
        self._broker.fanout.remove(self._sub)
        self._sub.close()
        metrics.OPEN_STREAMS.dec()


class Broker:
    """Base of every backend: one instance per event loop (see ``get_broker``).

    Backends implement :meth:`_start` (connect and begin receiving, called once
    before the first subscription), :meth:`_send` (hand a message to every
    process) and :meth:`aclose`.
    """

    name = "base"

    def __init__(
        self,
        *,
        history: History | None = None,
        queue_size: int = 256,
        resync_seconds: float = 5.0,
    ) -> None:
        self.fanout = Fanout(history)
        self.queue_size = queue_size
        self.resync_seconds = resync_seconds
        self._started = False
        self._start_lock = asyncio.Lock()
        self._slots: dict[int, int] = {}  # user id: streams held here

    async def publish(self, message: Message) -> None:
        """Send ``message`` to every subscriber in every process.

        Raises :class:`~notify.exceptions.BrokerUnavailableError` when the
        backend cannot take it now, whatever the backend's own error was.
        """
        await self._send(message)

    def subscribe(
        self,
        channels: Iterable[str],
        *,
        owner: asyncio.Task[Any] | None = None,
        credential: int | str | None = None,
    ) -> Subscribing:
        """Receive messages for ``channels`` while in ``async with`` the result.

        ``owner`` is the task cancelled if this subscription falls behind;
        ``credential`` is what access re-checks look at (see notify.access).
        """
        return Subscribing(
            self, Subscription(channels, self.queue_size, owner, credential)
        )

    def resubscribe(self, sub: Subscription, channels: Iterable[str]) -> None:
        """Route ``channels`` to ``sub`` from now on instead of its own."""
        self.fanout.remove(sub)
        sub.channels = tuple(dict.fromkeys(channels))
        self.fanout.add(sub)

    async def acquire_slot(self, user_id: int, cap: int) -> bool:
        """Count one more stream of ``user_id`` unless it has ``cap`` already
        (in this process; backends that see other processes count those)."""
        return self._admit_locally(user_id, cap)

    def _admit_locally(self, user_id: int, cap: int) -> bool:
        held = self._slots.get(user_id, 0)
        if held >= cap:
            return False
        self._slots[user_id] = held + 1
        return True

    def release_slot(self, user_id: int) -> None:
        held = self._slots.get(user_id, 0) - 1
        if held > 0:
            self._slots[user_id] = held
        else:
            self._slots.pop(user_id, None)

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self._start()
                self._started = True

    async def _start(self) -> None:
        raise NotImplementedError

    async def _send(self, message: Message) -> None:
        raise NotImplementedError

    async def ping(self) -> bool:
        """True when the backend can deliver right now."""
        return True

    async def present_channels(self) -> set[str]:
        """``user:<pk>`` channels with an open stream (in every process the
        backend can see)."""
        return {c for c in self.fanout.channels() if c.startswith("user:")}

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
