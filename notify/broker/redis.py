"""Redis backend: pub/sub across server processes.

Per event loop (so per server process) there is one publishing connection
pool, one ``PubSub`` connection subscribed to a single channel
(``<prefix>events``) and one reader task that decodes each message once and
hands it to the fanout. The reader survives bad messages (logged, skipped) and
lost connections (reconnect with backoff, then resync from the database), and
every ``resync_seconds`` it also refreshes this process's presence set
(``<prefix>presence:<instance>``), which tells the console who is connected.

The per-user stream cap is counted in Redis too: each process keeps a hash of
how many streams each user holds there (``<prefix>slots:<instance>``, listed
in the set ``<prefix>slots``), rewritten from its own counts and kept alive by
a refresh every third of ``resync_seconds``. A process that dies, even by
``kill -9``, stops refreshing, and its counts expire ``resync_seconds`` later.
A new stream is admitted by one Lua script that sums the live hashes.
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
from redis.exceptions import RedisError, ResponseError

from notify import metrics
from notify.broker.base import Broker, History, Message, stop_task
from notify.broker.pipelined import LuaScript, pipelined_for
from notify.exceptions import BrokerUnavailableError

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0
# Seconds: to connect, for a reply, and of idleness after which a connection
# is checked before use (redis-py's client and the pipelined connection).
_CONNECT_TIMEOUT, _TIMEOUT, _HEALTH_CHECK = 2, 5, 30

# Admits a batch of streams. KEYS: the set of slot hashes, this process's
# hash. ARGV: ttl in ms, then (user id, cap) pairs. One result per pair: 0
# refused; 1 admitted; 2 admitted, but this process's hash had expired (so it
# must be written again in full).
_ADMIT = """
local others = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if key ~= KEYS[2] then
    if redis.call('EXISTS', key) == 1 then
      others[#others + 1] = key
    else
      redis.call('SREM', KEYS[1], key)
    end
  end
end
local admitted = redis.call('EXISTS', KEYS[2]) == 1 and 1 or 2
local results = {}
for i = 2, #ARGV, 2 do
  local user = ARGV[i]
  local total = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  for _, key in ipairs(others) do
    total = total + tonumber(redis.call('HGET', key, user) or '0')
  end
  if total < tonumber(ARGV[i + 1]) then
    redis.call('HINCRBY', KEYS[2], user, 1)
    results[#results + 1] = admitted
  else
    results[#results + 1] = 0
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[1], KEYS[2])
return results
"""
_ADMIT_SCRIPT = LuaScript(_ADMIT)


def encode(message: Message) -> bytes:
    """``id|expires|channels[|control]`` on the first line, then the frame."""
    expires = b"" if message.expires_at is None else repr(message.expires_at).encode()
    header = b"%d|%s|%s" % (message.id, expires, ",".join(message.channels).encode())
    if message.control is not None:
        header += b"|" + message.control.encode()
    return header + b"\n" + message.frame


def decode(raw: bytes) -> Message:
    header, newline, frame = raw.partition(b"\n")
    parts = header.split(b"|")
    if not newline or len(parts) not in (3, 4):
        raise ValueError("not a notify message")
    control = parts[3].decode() if len(parts) == 4 else None
    if not (frame.endswith(b"\n\n") or (control is not None and not frame)):
        raise ValueError("not a notify message")
    id_, expires, channels = parts[:3]
    message_id = int(id_)
    if message_id < 0 or not channels or (control is not None and message_id):
        raise ValueError("bad id, channels or control")
    return Message(
        id=message_id,
        channels=tuple(channels.decode().split(",")),
        frame=frame,
        expires_at=float(expires) if expires else None,
        control=control,
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
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_TIMEOUT,
            health_check_interval=_HEALTH_CHECK,
            retry=Retry(NoBackoff(), 1),
        )
        # Messages, stream admissions and the counts of closed streams go out
        # on a lean connection of their own, with the same settings, when the
        # URL is a plain one (notify/broker/pipelined.py).
        self._pipelined = pipelined_for(
            url,
            connect_timeout=_CONNECT_TIMEOUT,
            timeout=_TIMEOUT,
            health_check_seconds=_HEALTH_CHECK,
        )
        self._channel = self.channel.encode()
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._resync_due = False
        self._next_resync = 0.0
        self._presence: set[str] | None = None  # the set last written, if known
        self._slot_set = f"{prefix}slots"
        self._slot_key = f"{prefix}slots:{self.instance}"
        self._admit_script = self._client.register_script(_ADMIT)
        self._admissions: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._admitting: asyncio.Task[None] | None = None
        self._admitting_batch: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._slots_changed: set[int] = set()
        self._slots_rewrite = False
        self._slots_task: asyncio.Task[None] | None = None
        self._slots_wakeup = asyncio.Event()
        self._slots_lock = asyncio.Lock()

    async def _send(self, message: Message) -> None:
        try:
            if self._pipelined is not None:
                await self._pipelined.publish(self._channel, encode(message))
            else:
                await self._client.publish(self.channel, encode(message))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailableError(f"Redis: {exc}") from exc

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
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(
            self._read_forever(), context=contextvars.Context()
        )
        self._slots_task = loop.create_task(
            self._keep_slots(), context=contextvars.Context()
        )

    @property
    def _slots_ttl_ms(self) -> int:
        return max(int(self.resync_seconds * 1000), 1000)

    async def acquire_slot(self, user_id: int, cap: int) -> bool:
        """Admissions that arrive while a batch is at Redis go together in
        the next one: one script call per batch, not per stream."""
        await self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._admissions.append((user_id, cap, future))
        if self._admitting is None:
            self._admitting = loop.create_task(
                self._admit(), context=contextvars.Context()
            )
        try:
            return await future
        except asyncio.CancelledError:
            # Admitted just as the request went away: nobody will release it.
            if future.done() and not future.cancelled() and future.result():
                self.release_slot(user_id)
            raise

    async def _admit(self) -> None:
        try:
            while self._admissions:
                batch, self._admissions = self._admissions, []
                self._admitting_batch = batch
                # Not while counts are written: each is this process's count
                # as it stands, which an admission in flight would make stale.
                async with self._slots_lock:
                    results = await self._run_admit(batch)
                    for (user_id, cap, future), result in zip(
                        batch, results, strict=True
                    ):
                        if result is None:  # Redis away: count our own
                            admitted = self._admit_locally(user_id, cap)
                        else:
                            admitted = bool(result)
                            if admitted:
                                self._slots[user_id] = self._slots.get(user_id, 0) + 1
                            if result == 2 and self._slots != {user_id: 1}:
                                self._slots_rewrite = True  # counts were lost
                        if future.done():  # the request went away meanwhile
                            if admitted:
                                self.release_slot(user_id)
                        else:
                            future.set_result(admitted)
        finally:
            # Stopped mid-batch (the broker closing): nobody is left waiting.
            for _, _, future in self._admitting_batch:
                if not future.done():
                    future.cancel()
            self._admitting_batch = []
            self._admitting = None

    async def _run_admit(
        self, batch: list[tuple[int, int, asyncio.Future[bool]]]
    ) -> list[int | None]:
        args: list[int] = [self._slots_ttl_ms]
        for user_id, cap, _ in batch:
            args += (user_id, cap)
        keys = [self._slot_set, self._slot_key]
        try:
            async with asyncio.timeout(1):
                if self._pipelined is not None:
                    found = await self._pipelined.run_script(_ADMIT_SCRIPT, keys, args)
                else:
                    found = await self._admit_script(keys=keys, args=args)
            if not isinstance(found, list) or len(found) != len(batch):
                raise ResponseError(f"unexpected reply to the admission: {found!r}")
            return [int(r) for r in found]
        except (RedisError, OSError, TimeoutError, ValueError, TypeError) as exc:
            # Without Redis each process can only count its own streams.
            logger.debug("counting streams locally (%s)", exc)
            self._slots_rewrite = True
            return [None] * len(batch)

    def release_slot(self, user_id: int) -> None:
        super().release_slot(user_id)
        self._slots_changed.add(user_id)
        self._slots_wakeup.set()

    async def _keep_slots(self) -> None:
        """Write changed counts soon, and keep this process's hash alive."""
        every = self._slots_ttl_ms / 3000
        next_refresh = 0.0
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self._slots_wakeup.wait()
            except TimeoutError:
                pass
            self._slots_wakeup.clear()
            try:
                # Not while a script admits a stream: what is written here
                # is this process's counts as they are.
                # Bounded: admissions wait for this lock.
                async with self._slots_lock, asyncio.timeout(1):
                    if time.monotonic() >= next_refresh:
                        next_refresh = time.monotonic() + every
                        await self._refresh_slots()
                    elif self._slots_changed:
                        await self._write_slots()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("stream counts not written (%s)", exc)
                self._slots_rewrite = True
                await asyncio.sleep(min(every, 1.0))

    async def _write_slots(self) -> None:
        changed, self._slots_changed = self._slots_changed, set()
        held = {user_id: self._slots.get(user_id, 0) for user_id in changed}
        counts = [x for user_id, n in held.items() if n for x in (user_id, n)]
        gone = [user_id for user_id, n in held.items() if not n]
        if counts:
            await self._command(b"HSET", self._slot_key, *counts)
        if gone:
            await self._command(b"HDEL", self._slot_key, *gone)

    async def _command(self, *parts: bytes | str | int) -> Any:
        """One command on the pipelined connection, or through redis-py
        where the URL needs it."""
        if self._pipelined is not None:
            return await self._pipelined.execute(*parts)
        # redis-py's asyncio execute_command() carries no annotations.
        return await self._client.execute_command(*parts)  # type: ignore[no-untyped-call]

    async def _refresh_slots(self) -> None:
        if not self._slots and not self._slots_rewrite:
            if self._slots_changed:
                await self._write_slots()  # the last ones to remove
            return
        if not self._slots_rewrite and await self._client.pexpire(
            self._slot_key, self._slots_ttl_ms
        ):
            if self._slots_changed:
                await self._write_slots()
            return
        # Gone (Redis restarted, or this loop stalled past the ttl) or
        # unknown: write every count again.
        self._slots_rewrite = False
        self._slots_changed.clear()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._slot_key)
            if self._slots:
                counts = [x for pair in self._slots.items() for x in pair]
                pipe.hset(self._slot_key, items=counts)
                pipe.pexpire(self._slot_key, self._slots_ttl_ms)
                pipe.sadd(self._slot_set, self._slot_key)
            await pipe.execute()

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
        self._recheck_all()

    def _recheck_all(self) -> None:
        """Access changes announced while Redis was away never arrived: look
        at every open stream again (notify.access)."""
        subs = list(self.fanout.subscriptions)
        if subs and self.fanout.on_recheck is not None:
            self.fanout.on_recheck(subs, "")

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
                    self._recheck_all()
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
        """Bring this process's presence set up to date and keep it alive.

        Only the users who came or went since the last refresh are written
        (with tens of thousands of streams the whole set was as many
        arguments to encode every few seconds, on the event loop); the whole
        set again when the key was gone (Redis restarted, or this loop
        stalled past its expiry) or the last write failed."""
        key = f"{self.prefix}presence:{self.instance}"
        ttl = max(int(self.resync_seconds * 3), 3)
        channels = await super().present_channels()
        written, self._presence = self._presence, None  # unknown until written
        if written is not None:
            added, removed = channels - written, written - channels
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.expire(key, ttl)  # 0: no key, so not what was written
                if added:
                    pipe.sadd(key, *added)
                if removed:
                    pipe.srem(key, *removed)
                pipe.expire(key, ttl)
                kept = (await pipe.execute())[0]
            if kept or not written:  # an empty set is no key in Redis
                self._presence = channels
                return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if channels:
                pipe.sadd(key, *channels)
                pipe.expire(key, ttl)
            await pipe.execute()
        self._presence = channels

    async def present_channels(self) -> set[str]:
        """User channels with an open stream in any process (a few seconds stale)."""
        found = await super().present_channels()
        keys = [k async for k in self._client.scan_iter(f"{self.prefix}presence:*")]
        if keys:
            for member in await self._client.sunion(keys):
                found.add(member.decode() if isinstance(member, bytes) else member)
        return found

    async def aclose(self) -> None:
        for task in (self._task, self._slots_task, self._admitting):
            if task is not None:
                await stop_task(task)
        self._task = self._slots_task = self._admitting = None
        for _, _, future in self._admissions:
            future.cancel()
        self._admissions.clear()
        if self._started:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(
                    f"{self.prefix}presence:{self.instance}", self._slot_key
                )
                await self._client.srem(self._slot_set, self._slot_key)
        await self._drop_pubsub()
        if self._pipelined is not None:
            await self._pipelined.aclose()
        await self._client.aclose()
