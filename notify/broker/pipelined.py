"""The broker's per-request Redis commands on a pipelined connection of its own.

Two commands are paid for by requests: the ``PUBLISH`` that ends every
notification, and the script that admits every new stream under the per-user
cap (and, once the stream closes, the write of its user's new count). Inside
a request, redis-py's asyncio client spends about 0.5 ms of the
event loop's CPU on one command (a connection taken from the pool and given
back, retry and observability wrappers, a buffered stream reader), where
writing the command and reading its short reply takes about 0.2 ms
(docs/PERFORMANCE.md). :class:`PipelinedConnection` keeps one connection per
event loop for those commands alone: they are written as they come,
pipelined, and their replies are matched to them in order.

Only plain connections take this path: ``redis://`` and ``unix://`` URLs,
with or without a user name and password. :func:`pipelined_for` answers None
for anything else (TLS, URL options such as timeouts or RESP3), and the broker
then sends them through redis-py. Pub/sub, presence and the periodic
refresh of the stream counts always go through redis-py.

As with the broker's redis-py client: 2 s to connect and 5 s for a reply
(then the connection is dropped, and every command still waiting on it
fails); a connection idle for 30 s is checked with a ``PING`` before it is
used again; a command that finds its connection dead (Redis restarted) is
sent once more on a new one at once, a script only if it had not been
written yet (it may have run). Unlike redis-py, a command that timed out is
not sent again: Redis is then stalled, and a second try would double the
wait. The URL's database is selected for the scripts and writes. Failures
are those of any socket, ``ConnectionError`` and ``TimeoutError``, and
redis-py's ``ResponseError`` for an error reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError

_PLAIN = {"host", "port", "db", "username", "password", "path"}


def pipelined_for(
    url: str, *, connect_timeout: float, timeout: float, health_check_seconds: float
) -> PipelinedConnection | None:
    """A :class:`PipelinedConnection` for ``url``, or None when it needs more
    than a plain connection (see the module docstring)."""
    if not url.startswith(("redis://", "unix://")):
        return None
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("connection_class", None)  # unix:// names its own
    if set(options) - _PLAIN:
        return None
    return PipelinedConnection(
        host=options.get("host", "localhost"),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        username=options.get("username"),
        password=options.get("password"),
        db=int(options.get("db") or 0),
        connect_timeout=connect_timeout,
        timeout=timeout,
        health_check_seconds=health_check_seconds,
    )


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


_PING = _command(b"PING")


def _parse(buffer: bytearray, start: int) -> tuple[Any, int] | None:
    """The RESP2 reply at ``start`` and where it ends, or None when it has
    not arrived in full. A reply is an integer, bytes (a status or bulk
    string), None (a nil), a list (an array) or a :class:`ResponseError` (an
    error). ``ValueError`` when the bytes are not RESP2."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return None
    kind, line, after = buffer[start], bytes(buffer[start + 1 : end]), end + 2
    if kind == 0x3A:  # ":"
        return int(line), after
    if kind == 0x2B:  # "+"
        return line, after
    if kind == 0x2D:  # "-"
        return ResponseError(line.decode(errors="replace")), after
    if kind == 0x24:  # "$"
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        if buffer[after + size : after + size + 2] != b"\r\n":
            raise ValueError("bulk string without its CRLF")
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == 0x2A:  # "*"
        count = int(line)
        if count < 0:
            return None, after
        items: list[Any] = []
        for _ in range(count):
            found = _parse(buffer, after)
            if found is None:
                return None
            items.append(found[0])
            after = found[1]
        return items, after
    raise ValueError(f"not a RESP2 reply: {bytes(buffer[start:end])!r}")


class LuaScript:
    """A Lua script, run by its SHA1 once Redis has it."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()


class _Connection(asyncio.Protocol):
    """One socket to Redis: commands out, replies back in order."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self.last_reply = self._loop.time()
        self._buffer = bytearray()
        # (future of the reply, when it is due), in the order sent.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = (
            collections.deque()
        )
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write ``command``; the future of its reply (see :func:`_parse`)."""
        if self.lost or self.transport is None:
            raise ConnectionError("the connection to Redis is closed")
        loop = self._loop
        reply: asyncio.Future[Any] = loop.create_future()
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
        while start < len(buffer):
            try:
                found = _parse(buffer, start)
            except ValueError as exc:
                # Not RESP: this connection can no longer be trusted.
                self.fail(ConnectionError(f"unexpected reply from Redis: {exc}"))
                return
            if found is None:
                break
            if not self._waiting:  # nor after a reply nothing asked for
                unasked = bytes(buffer[start : found[1]])
                self.fail(ConnectionError(f"unexpected reply from Redis: {unasked!r}"))
                return
            value, start = found
            reply, _ = self._waiting.popleft()
            if reply.done():  # its caller stopped waiting
                continue
            if isinstance(value, ResponseError):
                reply.set_exception(value)
            else:
                reply.set_result(value)
        del buffer[:start]
        self.last_reply = self._loop.time()

    def idle_for(self) -> float:
        """Seconds since Redis last answered on this connection (or since
        it was opened)."""
        return self._loop.time() - self.last_reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(ConnectionError(f"lost the connection to Redis ({exc})"))

    def _check_due(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        due = self._waiting[0][1]
        if self._loop.time() >= due:
            self.fail(TimeoutError(f"Redis did not answer within {self.timeout}s"))
        else:
            self._timer = self._loop.call_at(due, self._check_due)

    def fail(self, exc: Exception) -> None:
        """Drop the connection; every command waiting on it fails with ``exc``."""
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


class PipelinedConnection:
    """``PUBLISH`` and Lua scripts over one pipelined connection, opened at
    the first call and again at the first call after it was lost."""

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        health_check_seconds: float = 30.0,
    ) -> None:
        self._address = (host, port)
        self._path = path
        # As redis-py authenticates: AUTH [user] password, the password ""
        # for a user without one.
        self._auth: list[bytes] = []
        if username:
            self._auth = [b"AUTH", username.encode(), (password or "").encode()]
        elif password is not None:
            self._auth = [b"AUTH", password.encode()]
        # PUBLISH reaches every database's subscribers; the stream counts live
        # in the URL's database, as redis-py's do.
        self._select = _command(b"SELECT", b"%d" % db) if db else None
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._health_check_seconds = health_check_seconds
        self._connection: _Connection | None = None
        # The one attempt to connect that every caller waits for.
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closes = 0  # how many times aclose() ran

    async def publish(self, channel: bytes, payload: bytes) -> int:
        """Publish ``payload`` on ``channel``; the number of subscribers that
        got it."""
        connection, reply = await self._call(_command(b"PUBLISH", channel, payload))
        if type(reply) is not int:
            # Not what PUBLISH answers: nor can the next reply be trusted.
            error = ConnectionError(f"unexpected reply to PUBLISH: {reply!r}")
            connection.fail(error)
            raise error
        return reply

    async def run_script(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[int | str]
    ) -> Any:
        """``script``'s reply (see :func:`_parse`): by its SHA1, and by its
        source when Redis does not have it (first use, or Redis restarted)."""
        parts = [len(keys), *keys, *args]
        # Not sent again once written: the script may have run.
        try:
            return await self.execute(b"EVALSHA", script.sha, *parts, again=False)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.execute(b"EVAL", script.source, *parts, again=False)

    async def execute(self, *parts: bytes | str | int, again: bool = True) -> Any:
        """Send one command; its reply (see :func:`_parse`). An error reply
        raises :class:`ResponseError`. ``again``: see :meth:`_call`."""
        encoded = [p if isinstance(p, bytes) else str(p).encode() for p in parts]
        _, reply = await self._call(_command(*encoded), again=again)
        return reply

    async def _call(
        self, command: bytes, *, again: bool = True
    ) -> tuple[_Connection, Any]:
        """Send ``command``; its reply, and the connection it came on. A
        command that finds its connection dead before it is written (Redis
        restarted) goes out on a new one; one whose connection is lost after
        it was written, only if ``again`` (Redis may have run it)."""
        closes = self._closes
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
            return connection, await connection.send(command)
        if connection.idle_for() > self._health_check_seconds:
            connection = await self._checked(connection)
        try:
            written = connection.send(command)
        except ConnectionError:
            written = None
        if written is not None:
            try:
                return connection, await written
            except ConnectionError:
                if not again or self._closes != closes:
                    raise
        elif self._closes != closes:  # not sent again once closed
            raise ConnectionError("the connection was closed")
        connection = await self._connect()
        return connection, await connection.send(command)

    async def _checked(self, connection: _Connection) -> _Connection:
        """``connection``, or a new one if it does not answer a ``PING``
        (dropped while idle, somewhere between here and Redis)."""
        try:
            await connection.send(_PING)
            return connection
        except (ConnectionError, TimeoutError):
            connection.fail(ConnectionError("failed its health check"))
            return await self._connect()

    async def _connect(self) -> _Connection:
        """The current connection once open: every caller shares one attempt
        (and its failure), so callers queued behind an unreachable Redis wait
        for one timeout, not one each."""
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        attempt = self._connecting
        if attempt is None or attempt.done():
            # In a context of its own: the connection's callbacks outlive the
            # request that happened to open it.
            attempt = self._connecting = asyncio.get_running_loop().create_task(
                self._open(self._closes), context=contextvars.Context()
            )
            attempt.add_done_callback(_retrieve)
        return await asyncio.shield(attempt)

    async def _open(self, closes: int) -> _Connection:
        loop = asyncio.get_running_loop()
        made = _Connection(self._timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    await loop.create_unix_connection(lambda: made, self._path)
                else:
                    await loop.create_connection(lambda: made, *self._address)
            if self._auth:
                try:
                    await made.send(_command(*self._auth))
                except ResponseError as exc:
                    if len(self._auth) != 3 or "wrong number of arguments" not in str(
                        exc
                    ):
                        raise
                    # Redis before 6 knows no users: the password alone.
                    await made.send(_command(b"AUTH", self._auth[2]))
            if self._select is not None:
                await made.send(self._select)
            if self._closes != closes:
                raise ConnectionError("the connection was closed")
        except BaseException:
            made.fail(ConnectionError("not connected"))
            raise
        self._connection = made
        return made

    async def aclose(self) -> None:
        """Close the connection (a later call opens another); commands
        waiting on it fail and are not sent again."""
        self._closes += 1
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(ConnectionError("the connection was closed"))


def _retrieve(attempt: asyncio.Task[_Connection]) -> None:
    """Mark a failed attempt's error as seen: its callers may all have left."""
    if not attempt.cancelled():
        attempt.exception()
