"""PUBLISH over a connection of its own, without redis-py's command layers.

Every notification ends in one Redis ``PUBLISH``. Through redis-py's asyncio
client that costs about 0.35 ms of CPU on an otherwise idle server process
(a connection taken from the pool and given back, retry and observability
wrappers, a buffered stream reader): a tenth of a whole publish request,
where writing the command and reading its one-line reply costs about 0.1 ms
(docs/PERFORMANCE.md). :class:`Publisher` keeps one connection per event loop
for that command alone: commands are written as they come, pipelined, and
their replies (``:<receivers>``) are matched to them in order.

Only plain connections take this path: ``redis://`` and ``unix://`` URLs,
with or without a user name and password. :func:`publisher_for` answers None
for anything else (TLS, URL options such as timeouts or RESP3), and the broker
then publishes through redis-py as before. Pub/sub, the stream caps and
presence always go through redis-py.

Failures are those of any socket: ``ConnectionError`` when Redis cannot be
reached or the connection is lost, ``TimeoutError`` when it does not answer
in time (the connection is then dropped, and every command still waiting on
it fails), and redis-py's ``ResponseError`` for an error reply.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError

_PLAIN = {"host", "port", "db", "username", "password", "path"}


def publisher_for(
    url: str, *, connect_timeout: float, timeout: float
) -> Publisher | None:
    """A :class:`Publisher` for ``url``, or None when it needs more than a
    plain connection (see the module docstring)."""
    if not url.startswith(("redis://", "unix://")):
        return None
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("connection_class", None)  # unix:// names its own
    if set(options) - _PLAIN:
        return None
    return Publisher(
        host=options.get("host", "localhost"),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        username=options.get("username"),
        password=options.get("password"),
        connect_timeout=connect_timeout,
        timeout=timeout,
    )


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One socket to Redis: commands out, one-line replies back in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._buffer = bytearray()
        # (future of the reply, when it is due), in the order sent.
        self._waiting: collections.deque[tuple[asyncio.Future[bytes], float]] = (
            collections.deque()
        )
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[bytes]:
        """Write ``command``; the future of its reply line."""
        if self.lost or self.transport is None:
            raise ConnectionError("the connection to Redis is closed")
        loop = self._loop
        reply: asyncio.Future[bytes] = loop.create_future()
        due = loop.time() + self.timeout
        self._waiting.append((reply, due))
        if self._timer is None:
            self._timer = loop.call_at(due, self._check_due)
        self.transport.write(command)
        return reply

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\r\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 2
            if not self._waiting or line[:1] not in (b":", b"+", b"-"):
                # Nothing asked for this, or a reply no command sent here
                # gives: this connection can no longer be trusted.
                self._fail(ConnectionError(f"unexpected reply from Redis: {line!r}"))
                return
            reply, _ = self._waiting.popleft()
            if reply.done():  # its caller stopped waiting
                continue
            if line[:1] == b"-":
                reply.set_exception(ResponseError(line[1:].decode(errors="replace")))
            else:
                reply.set_result(line)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(ConnectionError(f"lost the connection to Redis ({exc})"))

    def _check_due(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        due = self._waiting[0][1]
        if self._loop.time() >= due:
            self._fail(TimeoutError(f"Redis did not answer within {self.timeout}s"))
        else:
            self._timer = self._loop.call_at(due, self._check_due)

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(exc)

    def _fail_waiting(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            reply, _ = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(exc)

    def close(self) -> None:
        self._fail(ConnectionError("the publisher was closed"))


class Publisher:
    """``PUBLISH`` over one pipelined connection, opened at the first call
    and again at the first call after it was lost."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        self._address = (host, port)
        self._path = path
        self._auth: list[bytes] = []
        if password is not None:
            self._auth = [b"AUTH", password.encode()]
            if username:
                self._auth.insert(1, username.encode())
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def publish(self, channel: bytes, payload: bytes) -> int:
        """Publish ``payload`` on ``channel``; the number of subscribers that
        got it. A connection that was found dead when written to is replaced
        once, at once (after Redis restarted, the old one is)."""
        connection = self._connection
        fresh = connection is None or connection.lost
        if fresh:
            connection = await self._connect()
        assert connection is not None
        command = _command(b"PUBLISH", channel, payload)
        try:
            reply = await connection.send(command)
        except ConnectionError:
            if fresh:
                raise
            reply = await (await self._connect()).send(command)
        return int(reply[1:])

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection  # another caller connected meanwhile
            loop = asyncio.get_running_loop()
            made = _Connection(self._timeout)
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    await loop.create_unix_connection(lambda: made, self._path)
                else:
                    await loop.create_connection(lambda: made, *self._address)
            if self._auth:
                try:
                    await made.send(_command(*self._auth))
                except BaseException:
                    made.close()
                    raise
            self._connection = made
            return made

    async def aclose(self) -> None:
        """Close the connection (a later call opens another)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
