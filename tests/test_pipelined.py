"""The broker's pipelined connection (notify/broker/pipelined.py), against a
real redis-server: replies matched to their commands, scripts, authentication,
Unix sockets, and what a caller sees when Redis is gone, restarted or
stalled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from notify.broker import Message
from notify.broker.pipelined import LuaScript, PipelinedConnection, pipelined_for
from notify.broker.redis import RedisBroker
from notify.exceptions import BrokerUnavailableError
from tests.support.servers import RedisServer

WAIT = 10.0


def _pipelined(url: str, timeout: float = 5.0) -> PipelinedConnection:
    found = pipelined_for(
        url, connect_timeout=2, timeout=timeout, health_check_seconds=30
    )
    assert found is not None
    return found


@contextlib.asynccontextmanager
async def _subscribed(url: str, *channels: str) -> AsyncIterator[Any]:
    client = aredis.Redis.from_url(url)
    pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(*channels)
    try:
        yield pubsub
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _received(pubsub: Any, count: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            raw = await pubsub.get_message(timeout=1)
            if raw is not None:
                got.append((raw["channel"].decode(), raw["data"]))
    return got


@contextlib.asynccontextmanager
async def _server(workdir: Path, *extra: str) -> AsyncIterator[RedisServer]:
    server = RedisServer(workdir)
    server.argv += list(extra)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def test_plain_urls_get_the_lean_connection_and_others_redis_py():
    settings = {"connect_timeout": 1, "timeout": 1, "health_check_seconds": 30}
    assert pipelined_for("redis://127.0.0.1:6379/0", **settings)
    assert pipelined_for("redis://u:p@host", **settings)
    assert pipelined_for("unix:///run/redis.sock?db=2", **settings)
    for url in (
        "rediss://host:6380/0",  # TLS
        "redis://host/0?socket_timeout=3",
        "redis://host/0?protocol=3",
    ):
        assert pipelined_for(url, **settings) is None, url


async def test_each_reply_reaches_its_own_command_even_when_callers_leave(redis_url):
    """Channel ``one`` has one subscriber and ``two`` two, so every reply
    says which command it answers. Callers that stop waiting leave their
    replies behind without shifting anyone else's."""
    one, two = f"one:{uuid.uuid4().hex}", f"two:{uuid.uuid4().hex}"
    connection = _pipelined(redis_url)
    async with (
        _subscribed(redis_url, one, two) as first,
        _subscribed(redis_url, two) as second,
    ):
        try:
            assert await connection.publish(one.encode(), b"first") == 1
            tasks = [
                asyncio.create_task(connection.publish(name.encode(), b"%d" % i))
                for i, name in enumerate([one, two] * 50)
            ]
            await asyncio.sleep(0)  # each has written its command
            for task in tasks[::7]:
                task.cancel()
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, result in enumerate(results):
                if i % 7 == 0:
                    assert isinstance(result, asyncio.CancelledError)
                else:
                    assert result == (1 if i % 2 == 0 else 2), i
            # A cancelled caller's command was sent all the same, in order.
            got = await _received(first, 101)
            assert [data for _, data in got] == [b"first"] + [
                b"%d" % i for i in range(100)
            ]
            assert len(await _received(second, 50)) == 50
            assert await connection.publish(two.encode(), b"after") == 2
        finally:
            await connection.aclose()


async def test_password_and_acl_user(workdir):
    async with _server(
        workdir,
        "--requirepass",
        "s3cret",
        "--user",
        "pub",
        "on",
        ">other",
        "resetchannels",
        "&news",
        "+publish",
        "--user",
        "open",
        "on",
        "nopass",
        "resetchannels",
        "&news",
        "+publish",
    ) as server:
        base = f"127.0.0.1:{server.port}"
        channel = b"news"
        for url in (
            f"redis://:s3cret@{base}/0",
            f"redis://pub:other@{base}/0",
            f"redis://open@{base}/0",  # a user without a password
        ):
            connection = _pipelined(url)
            try:
                assert await connection.publish(channel, b"x") == 0
            finally:
                await connection.aclose()
        for url, error in (
            (f"redis://{base}/0", "NOAUTH"),
            (f"redis://:wrong@{base}/0", "WRONGPASS"),
            (f"redis://pub:other@{base}/0", "NOPERM"),  # not this channel
        ):
            connection = _pipelined(url)
            try:
                with pytest.raises(ResponseError, match=error):
                    async with asyncio.timeout(WAIT):
                        await connection.publish(b"elsewhere", b"x")
            finally:
                await connection.aclose()


async def test_unix_socket(workdir):
    path = workdir / f"redis-{uuid.uuid4().hex[:8]}.sock"
    async with _server(workdir, "--unixsocket", str(path), "--unixsocketperm", "700"):
        url = f"unix://{path}"
        async with _subscribed(url, "news") as pubsub:
            connection = _pipelined(url)
            try:
                assert await connection.publish(b"news", b"hello") == 1
                assert await _received(pubsub, 1) == [("news", b"hello")]
            finally:
                await connection.aclose()


async def test_redis_down_restarted_and_stalled(workdir):
    server = RedisServer(workdir)
    url = server.url
    connection = _pipelined(url, timeout=0.5)
    try:
        # Down: refused at once, and nothing is left half-open.
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(WAIT):
                await connection.publish(b"news", b"x")

        await asyncio.to_thread(server.start)
        assert await connection.publish(b"news", b"x") == 0

        # Restarted: the next command goes out on a new connection.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        async with _subscribed(url, "news") as pubsub:
            assert await connection.publish(b"news", b"again") == 1
            assert await _received(pubsub, 1) == [("news", b"again")]

        # Stalled: every waiting command fails once the timeout passes, and
        # the next one after Redis recovers is answered on a new connection.
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(
                    *(connection.publish(b"news", b"%d" % i) for i in range(5)),
                    return_exceptions=True,
                )
            assert all(isinstance(r, TimeoutError) for r in results), results
            # One reply timeout for all of them (0.5 s), not one each.
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        async with asyncio.timeout(WAIT):
            assert await connection.publish(b"news", b"x") == 0
    finally:
        await connection.aclose()
        await asyncio.to_thread(server.stop)


class _Peer:
    """A peer that accepts connections and answers the first reads, on
    whichever connection, with ``replies`` in turn; then it reads whatever
    comes and never answers: a stalled Redis, or one behind a network that
    lost the way."""

    def __init__(self, *replies: bytes) -> None:
        self.replies = list(replies)
        self.accepted = 0
        self.received = asyncio.Event()  # some bytes arrived
        self._handlers: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        self._handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    if self.replies:
                        writer.write(self.replies.pop(0))
                        continue
                    self.received.set()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*self._handlers)
            await self._server.wait_closed()


async def test_callers_queued_behind_one_connect_share_its_failure():
    """Redis stalled while a connection authenticates: every publish waiting
    for that connection fails with the one attempt, after one timeout, and
    none of them opens a connection of its own meanwhile."""
    silent = _Peer()
    async with silent as port:
        connection = PipelinedConnection(
            host="127.0.0.1", port=port, password="x", timeout=0.5
        )
        try:
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(
                    *(connection.publish(b"news", b"%d" % i) for i in range(6)),
                    return_exceptions=True,
                )
            assert all(isinstance(r, TimeoutError) for r in results), results
            assert silent.accepted == 1
        finally:
            await connection.aclose()


async def test_closing_fails_what_waits_and_sends_nothing_again():
    silent = _Peer(b":0\r\n")
    async with silent as port:
        connection = PipelinedConnection(host="127.0.0.1", port=port, timeout=WAIT)
        async with asyncio.timeout(WAIT):
            assert await connection.publish(b"news", b"first") == 0
        waiting = asyncio.create_task(connection.publish(b"news", b"x"))
        async with asyncio.timeout(WAIT):
            await silent.received.wait()  # the command is written
        await connection.aclose()
        with pytest.raises(ConnectionError, match="closed"):
            async with asyncio.timeout(WAIT):
                await waiting
        assert silent.accepted == 1  # not sent again on a new connection
        assert connection._connection is None


async def test_a_connection_idle_too_long_is_checked_before_use(redis_url):
    """A connection dropped silently while idle (by a firewall, a NAT, a load
    balancer) is found out by a PING and replaced, not written to blindly."""
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    accepted: list[asyncio.StreamWriter] = []
    dropped: set[int] = set()  # the connections whose path says nothing now
    tasks: list[asyncio.Task[None]] = []

    async def pipe(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if number not in dropped:
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(accepted)
        accepted.append(writer)
        upstream = await asyncio.open_connection("127.0.0.1", redis_port)
        tasks.append(asyncio.create_task(pipe(number, reader, upstream[1])))
        tasks.append(asyncio.create_task(pipe(number, upstream[0], writer)))

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = PipelinedConnection(
        host="127.0.0.1", port=port, timeout=0.5, health_check_seconds=0.2
    )
    try:
        async with asyncio.timeout(WAIT):
            assert await connection.publish(b"news", b"x") == 0
            first = connection._connection
            dropped.add(0)
            await asyncio.sleep(0.3)
            # Written to the first connection, this would time out.
            assert await connection.publish(b"news", b"y") == 0
        assert connection._connection is not first
        assert len(accepted) == 2
    finally:
        await connection.aclose()
        server.close()
        for writer in accepted:
            writer.close()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()


async def test_a_reply_nothing_asked_for_drops_the_connection():
    """A peer that answers in a way PUBLISH never is (a bulk string, a status
    line) is not trusted with the next command either."""
    bad = [b"$3\r\nfoo\r\n", b"+OK\r\n"]
    async with _Peer(*bad, b":0\r\n") as port:
        connection = PipelinedConnection(host="127.0.0.1", port=port, timeout=2)
        try:
            for _ in bad:
                with pytest.raises(ConnectionError, match="unexpected reply"):
                    async with asyncio.timeout(WAIT):
                        await connection.publish(b"news", b"x")
            async with asyncio.timeout(WAIT):
                assert await connection.publish(b"news", b"x") == 0
        finally:
            await connection.aclose()


async def test_the_broker_publishes_through_it_and_maps_its_errors(workdir):
    server = RedisServer(workdir)
    await asyncio.to_thread(server.start)
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    broker = RedisBroker(url=server.url, prefix=prefix)
    assert broker._pipelined is not None
    message = Message(1, ("all",), b"id: 1\nevent: notification\ndata: {}\n\n")
    try:
        async with _subscribed(server.url, f"{prefix}events") as pubsub:
            await broker.publish(message)
            [(_, data)] = await _received(pubsub, 1)
            assert data.endswith(message.frame)
        await asyncio.to_thread(server.stop)
        with pytest.raises(BrokerUnavailableError):
            async with asyncio.timeout(WAIT):
                await broker.publish(message)
    finally:
        await broker.aclose()
        await asyncio.to_thread(server.stop)


_SUM = LuaScript(
    """
local total = 0
for _, arg in ipairs(ARGV) do total = total + tonumber(arg) end
redis.call('INCRBY', KEYS[1], total)
return {total, #ARGV, KEYS[1], false, {1, 'two'}}
"""
)

_COUNT_THEN_SUM = LuaScript(
    """
redis.call('INCR', KEYS[1])
return redis.call('INCRBY', KEYS[2], ARGV[1])
"""
)


async def test_a_script_runs_by_its_sha_and_again_when_redis_forgot_it(redis_url):
    key = f"sum:{uuid.uuid4().hex}"
    connection = _pipelined(redis_url)
    client = aredis.Redis.from_url(redis_url)
    try:
        expected = [6, 3, key.encode(), None, [1, b"two"]]
        assert await connection.run_script(_SUM, [key], [1, 2, 3]) == expected
        assert await client.script_exists(_SUM.sha.decode()) == [True]
        assert await connection.run_script(_SUM, [key], [4]) == [
            4,
            1,
            key.encode(),
            None,
            [1, b"two"],
        ]
        await client.script_flush()  # as after a restart of Redis
        assert await connection.run_script(_SUM, [key], [5]) == [
            5,
            1,
            key.encode(),
            None,
            [1, b"two"],
        ]
        assert await client.get(key) == b"15"  # each ran once
        # An error of the script's own is the caller's, raised once the
        # script ran once, and the connection goes on.
        runs = [f"{key}:runs", key]
        assert await connection.run_script(_COUNT_THEN_SUM, runs, [1]) == 16
        await client.set(key, "not a number")
        with pytest.raises(ResponseError, match="not an integer"):
            await connection.run_script(_COUNT_THEN_SUM, runs, [1])
        assert await client.get(f"{key}:runs") == b"2"
        assert await connection.publish(b"news", b"x") == 0
    finally:
        await connection.aclose()
        await client.delete(key, f"{key}:runs")
        await client.aclose()


def test_replies_of_every_kind_are_read_whole_however_they_arrive():
    """Redis may send a reply in any number of pieces: every prefix of one
    is incomplete, and the whole is read as its kind."""
    from notify.broker.pipelined import _parse

    cases: list[tuple[bytes, Any]] = [
        (b":42\r\n", 42),
        (b":-1\r\n", -1),
        (b"+OK\r\n", b"OK"),
        (b"$5\r\nab\r\nc\r\n", b"ab\r\nc"),  # CRLF inside a bulk string
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n-ERR inner\r\n", None),
    ]
    for raw, expected in cases:
        buffer = bytearray(b"junk" + raw + b":7\r\n")
        for cut in range(4, 4 + len(raw)):
            assert _parse(bytearray(buffer[:cut]), 4) is None, (raw, cut)
        found = _parse(buffer, 4)
        assert found is not None
        value, end = found
        assert end == 4 + len(raw)
        if expected is None and raw.startswith(b"*3"):
            assert value[:2] == [1, [b"x", None]]
            assert isinstance(value[2], ResponseError)
            assert str(value[2]) == "ERR inner"
        else:
            assert value == expected
        assert _parse(buffer, end) == (7, len(buffer))
    found = _parse(bytearray(b"-NOSCRIPT No matching script\r\n"), 0)
    assert found is not None
    assert isinstance(found[0], ResponseError)
    assert str(found[0]).startswith("NOSCRIPT")
    for bad in (b"?what\r\n", b":x\r\n", b"$3\r\nabcd\r\n"):
        with pytest.raises(ValueError):
            _parse(bytearray(bad), 0)


async def test_streams_are_admitted_through_it_and_through_redis_py_alike(workdir):
    """One process admits on the pipelined connection, one whose URL needs
    redis-py (an option in the URL) through redis-py: both count the same
    streams, and the lean one still admits after Redis forgot its script."""
    server = RedisServer(workdir)
    await asyncio.to_thread(server.start)
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    url = server.url.rsplit("/", 1)[0] + "/3"  # the counts live in database 3
    lean = RedisBroker(url=url, prefix=prefix)
    other = RedisBroker(url=f"{url}?socket_timeout=5", prefix=prefix)
    assert lean._pipelined is not None and other._pipelined is None
    try:
        async with asyncio.timeout(WAIT):
            assert await lean.acquire_slot(7, 3)
            assert await other.acquire_slot(7, 3)
            client = aredis.Redis.from_url(url)
            await client.script_flush()
            await client.aclose()
            assert await lean.acquire_slot(7, 3)
            assert not await lean.acquire_slot(7, 3)
            assert not await other.acquire_slot(7, 3)
            assert await lean.acquire_slot(8, 3)  # another user's own count
            lean.release_slot(7)
            deadline = asyncio.get_running_loop().time() + 5
            while not await other.acquire_slot(7, 3):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
        assert lean._slots == {7: 1, 8: 1} and other._slots == {7: 2}
        # Closed streams are written back by each, as counts and removals.
        lean.release_slot(8)
        other.release_slot(7)
        client = aredis.Redis.from_url(url)
        try:
            expected: list[dict[str, dict[bytes, bytes]]] = [
                {
                    f"{prefix}slots:{lean.instance}": {b"7": b"1"},
                    f"{prefix}slots:{other.instance}": {b"7": b"1"},
                },
                {f"{prefix}slots:{other.instance}": {}},
            ]
            for written in expected:
                # Written at once: well before a hash left alone expires (5 s).
                async with asyncio.timeout(2):
                    while {k: await client.hgetall(k) for k in written} != written:  # noqa: ASYNC110 - in Redis
                        await asyncio.sleep(0.05)
                other.release_slot(7)
            assert await client.sismember(
                f"{prefix}slots", f"{prefix}slots:{lean.instance}"
            )
            # Nothing of it in the database the URL did not name.
            zero = aredis.Redis.from_url(server.url)
            assert await zero.keys(f"{prefix}*") == []
            await zero.aclose()
        finally:
            await client.aclose()
    finally:
        await lean.aclose()
        await other.aclose()
        await asyncio.to_thread(server.stop)


async def test_a_reply_that_is_not_resp_fails_every_command_waiting_at_once():
    """Whatever follows a reply that is not RESP cannot be matched to a
    command: the commands already answered keep their replies, the others
    fail now rather than at the reply timeout, and the next command goes out
    on a new connection."""
    async with _Peer(b":1\r\n?what\r\n:2\r\n", b":0\r\n") as port:
        connection = PipelinedConnection(host="127.0.0.1", port=port, timeout=WAIT)
        try:
            async with asyncio.timeout(2):
                results = await asyncio.gather(
                    *(connection.publish(b"news", b"%d" % i) for i in range(3)),
                    return_exceptions=True,
                )
            assert results[0] == 1
            for result in results[1:]:
                assert isinstance(result, ConnectionError), results
            async with asyncio.timeout(WAIT):
                assert await connection.publish(b"news", b"x") == 0
        finally:
            await connection.aclose()


async def test_a_reply_nothing_asked_for_is_not_given_to_the_next_command():
    """Two replies to one command: the second must not answer the next."""
    peer = _Peer(b":1\r\n:2\r\n", b":3\r\n")
    async with peer as port:
        connection = PipelinedConnection(host="127.0.0.1", port=port, timeout=WAIT)
        try:
            async with asyncio.timeout(WAIT):
                assert await connection.publish(b"news", b"x") == 1
                while not connection._connection.lost:  # type: ignore[union-attr]  # noqa: ASYNC110 - a protocol flag
                    await asyncio.sleep(0.01)
                assert await connection.publish(b"news", b"y") == 3
            assert peer.accepted == 2
        finally:
            await connection.aclose()


async def test_a_script_is_not_sent_again_once_written_but_a_publish_is():
    """The connection is lost after the command went out: Redis may have run
    it. A PUBLISH goes out again on a new connection (a notification is
    better twice than late: streams skip ids they sent); a script, which may
    have counted a stream, is not."""
    received: list[list[bytes]] = []  # what each connection read
    tasks: list[asyncio.Task[None]] = []

    async def hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers a first "warm" PUBLISH, then hangs up on whatever comes.
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        seen = [await reader.read(65536)]
        received.append(seen)
        if b"warm" in seen[0]:
            writer.write(b":0\r\n")
            seen.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publishing = PipelinedConnection(host="127.0.0.1", port=port, timeout=WAIT)
    scripting = PipelinedConnection(host="127.0.0.1", port=port, timeout=WAIT)
    try:
        async with asyncio.timeout(WAIT):
            assert await publishing.publish(b"news", b"warm") == 0
            with pytest.raises(ConnectionError):
                await publishing.publish(b"news", b"again")
            assert len(received) == 2  # sent once more, on a new connection
            assert all(b"again" in seen[-1] for seen in received)
            assert await scripting.publish(b"news", b"warm") == 0
            with pytest.raises(ConnectionError):
                await scripting.run_script(_SUM, ["k"], [1])
            assert len(received) == 3  # not sent again
            assert b"EVALSHA" in received[2][1]
    finally:
        await publishing.aclose()
        await scripting.aclose()
        server.close()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()


async def test_an_admission_answered_oddly_is_counted_locally():
    """A reply to the admission that does not give one result per stream is
    no answer: those streams are counted by this process alone, and its
    counts are written again in full later, as when Redis is away."""
    odd = [
        b"*1\r\n:1\r\n",
        b"*2\r\n$1\r\nx\r\n:1\r\n",
        b"+OK\r\n",
        b"*2\r\n:1\r\n:0\r\n",
    ]
    async with _Peer(*odd) as port:
        broker = RedisBroker(url=f"redis://127.0.0.1:{port}/0")
        loop = asyncio.get_running_loop()
        batch = [(7, 3, loop.create_future()), (8, 3, loop.create_future())]
        try:
            async with asyncio.timeout(WAIT):
                for _ in odd[:-1]:
                    broker._slots_rewrite = False
                    assert await broker._run_admit(batch) == [None, None]
                    assert broker._slots_rewrite
                broker._slots_rewrite = False
                assert await broker._run_admit(batch) == [1, 0]
                assert not broker._slots_rewrite
        finally:
            await broker.aclose()
