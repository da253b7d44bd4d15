"""Redis backend: pub/sub across server processes.

Per event loop (so per server process) there is one publishing connection
pool, one ``PubSub`` connection subscribed to a single channel
(``<prefix>events``) and one reader task that decodes each message once and
hands it to the fanout. The reader survives bad messages (logged, skipped) and
lost connections (reconnect with backoff, then resync from the database), and
every ``resync_seconds`` it also refreshes this process's presence set
(``<prefix>presence:<instance>``), which tells the console who is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from notify import metrics
from notify.broker.base import Broker, History, Message, stop_task

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0


def encode(message: Message) -> bytes:
    expires = b"" if message.expires_at is None else repr(message.expires_at).encode()
    header = b"%d|%s|%s\n" % (message.id, expires, ",".join(message.channels).encode())
    return header + message.frame


def decode(raw: bytes) -> Message:
    header, newline, frame = raw.partition(b"\n")
    parts = header.split(b"|")
    if not newline or len(parts) != 3 or not frame.endswith(b"\n\n"):
        raise ValueError("not a notify message")
    id_, expires, channels = parts
    message_id = int(id_)
    if message_id < 0 or not channels:
        raise ValueError("bad id or channels")
    return Message(
        id=message_id,
        channels=tuple(channels.decode().split(",")),
        frame=frame,
        expires_at=float(expires) if expires else None,
    )


class RedisBroker(Broker):
    name = "redis"

    def __init__(
        self,
        *,
        url: str,
        prefix: str = "notify:",
        history: History | None = None,
        queue_size: int = 256,
        resync_seconds: float = 5.0,
    ) -> None:
        super().__init__(
            history=history, queue_size=queue_size, resync_seconds=resync_seconds
        )
        if not url:
            raise ValueError("RedisBroker needs a url")
        self.url = url
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self.instance = uuid.uuid4().hex
        # One immediate retry on a fresh connection: after Redis restarts, every
        # pooled connection is dead and would otherwise fail one command each.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._resync_due = False
        self._next_resync = 0.0

    async def _send(self, message: Message) -> None:
        await self._client.publish(self.channel, encode(message))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(1):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def _start(self) -> None:
        # Subscribe before reading the latest id, so nothing published in
        # between is missed; the reader starts only once the id is known.
        # Redis unreachable now: streams start anyway, fed from the database
        # every resync_seconds, and the reader connects once Redis is back.
        try:
            await self._connect()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "Redis unavailable at start (%s); delivering from the database", exc
            )
        await self.fanout.start()
        self._task = asyncio.get_running_loop().create_task(
            self._read_forever(), context=contextvars.Context()
        )

    async def _connect(self) -> None:
        pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            await pubsub.aclose()
            raise
        # redis-py may reconnect this connection by itself; whatever was
        # published meanwhile is then read back from the database.
        pubsub.connection.register_connect_callback(self._on_reconnect)
        self._pubsub = pubsub

    async def _on_reconnect(self, _connection: object) -> None:
        metrics.BROKER_RECONNECTS.inc()
        self._resync_due = True

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                logger.debug("closing a broken pubsub failed", exc_info=True)

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    metrics.BROKER_RECONNECTS.inc()
                    logger.info("connected to Redis")
                    self._resync_due = True
                if self._resync_due or time.monotonic() >= self._next_resync:
                    await self._resync()
                    await self._refresh_presence()
                raw = await self._pubsub.get_message(timeout=self.resync_seconds)
                backoff = 0.1
                if raw is None or raw.get("type") != "message":
                    continue
                try:
                    message = decode(raw["data"])
                except (ValueError, UnicodeDecodeError, TypeError):
                    logger.warning("skipping a malformed message: %.80r", raw["data"])
                    continue
                await self.fanout.dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning(
                    "Redis unavailable (%s); retrying in %.1fs", exc, backoff
                )
                await self._drop_pubsub()
                await self._resync_while_away()
                await asyncio.sleep(min(backoff, self.resync_seconds))
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception:
                logger.exception("broker reader failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _resync(self) -> None:
        self._resync_due = False
        self._next_resync = time.monotonic() + self.resync_seconds
        await self.fanout.resync()

    async def _resync_while_away(self) -> None:
        """While Redis is away, the database is the only way notifications
        arrive: read it every resync_seconds between connection attempts."""
        if time.monotonic() < self._next_resync:
            return
        try:
            await self._resync()
        except Exception:
            logger.exception("resync from the database failed")

    async def _refresh_presence(self) -> None:
        key = f"{self.prefix}presence:{self.instance}"
        channels = sorted(await super().present_channels())
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if channels:
                pipe.sadd(key, *channels)
                pipe.expire(key, max(int(self.resync_seconds * 3), 3))
            await pipe.execute()

    async def present_channels(self) -> set[str]:
        """User channels with an open stream in any process (a few seconds stale)."""
        found = await super().present_channels()
        keys = [k async for k in self._client.scan_iter(f"{self.prefix}presence:*")]
        if keys:
            for member in await self._client.sunion(keys):
                found.add(member.decode() if isinstance(member, bytes) else member)
        return found

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
        if self._started:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(f"{self.prefix}presence:{self.instance}")
        await self._drop_pubsub()
        await self._client.aclose()
