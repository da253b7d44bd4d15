"""The broker contract, one suite for every backend (the Redis one against a real
redis-server).

Each test builds its brokers directly, with a small in-memory history standing
in for the database, and uses channel names and Redis prefixes of its own.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import redis.asyncio as aredis

import notify
from notify import metrics
from notify.broker import Broker, Message, Subscription
from notify.broker.base import Fanout
from notify.broker.memory import MemoryBroker
from notify.broker.redis import RedisBroker
from notify.exceptions import BrokerUnavailableError, NotifyError
from tests.support.servers import RedisServer

WAIT = 10.0  # seconds; the bound on every wait for a delivery


class ListHistory:
    """A real, in-memory History: what the database would hold."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def add(self, message: Message) -> Message:
        self.messages.append(message)
        return message

    async def latest_id(self) -> int:
        return max((m.id for m in self.messages), default=0)

    async def since(self, after: int, limit: int) -> list[Message]:
        newer = sorted((m for m in self.messages if m.id > after), key=lambda m: m.id)
        return newer[:limit]


MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def channel() -> Callable[[str], str]:
    """Channel names no other test uses."""
    run = uuid.uuid4().hex[:8]
    return lambda name: f"{name}:{run}"


@pytest.fixture
async def make_broker(
    kind: str, request: pytest.FixtureRequest, prefix: str
) -> AsyncIterator[MakeBroker]:
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    made: list[Broker] = []

    def make(**options: object) -> Broker:
        options.setdefault("history", ListHistory())
        options.setdefault("resync_seconds", 30.0)
        broker: Broker
        if kind == "redis":
            options.setdefault("url", url)
            options.setdefault("prefix", prefix)
            broker = RedisBroker(**options)  # type: ignore[arg-type]
        else:
            broker = MemoryBroker(**options)  # type: ignore[arg-type]
        made.append(broker)
        return broker

    yield make
    async with asyncio.timeout(WAIT):
        for broker in made:
            await broker.aclose()


def msg(id: int, *channels: str, body: str = "") -> Message:
    frame = f"id: {id}\nevent: notification\ndata: {body or id}\n\n".encode()
    return Message(id, channels, frame)


async def send(broker: Broker, history: ListHistory, message: Message) -> None:
    """Commit, then broadcast: the order notify.publish uses."""
    history.add(message)
    await broker.publish(message)


async def receive(sub: Subscription, count: int) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got.append(await sub.get())
    return got


async def receive_until(sub: Subscription, fence: Message) -> list[Message]:
    """Everything up to and including ``fence``; then nothing else is queued.

    Each backend dispatches in one task, in order, so once a later message has
    arrived an earlier one that was going to arrive is already queued."""
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        while not got or got[-1].frame != fence.frame:
            got.append(await sub.get())
    assert sub.get_nowait() is None
    return got


def ids(messages: Iterable[Message]) -> list[int]:
    return [m.id for m in messages]


# -- delivery -----------------------------------------------------------------


async def test_subscriber_receives_a_message_once_on_matching_channels_only(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history)
    a, b, fence = channel("a"), channel("b"), channel("fence")
    async with (
        broker.subscribe([a, fence]) as on_a,
        broker.subscribe([b, fence]) as on_b,
    ):
        first = msg(1, a)
        await send(broker, history, first)
        done = msg(2, fence)
        await send(broker, history, done)

        got_a = await receive_until(on_a, done)
        got_b = await receive_until(on_b, done)
    assert ids(got_a) == [1, 2]
    assert got_a[0].frame == first.frame
    assert got_a[0].channels == (a,)
    assert ids(got_b) == [2]


async def test_message_for_several_channels_reaches_each_subscription_once(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history)
    a, b, c, other = channel("a"), channel("b"), channel("c"), channel("other")
    async with (
        broker.subscribe([a, b, c]) as all_three,
        broker.subscribe([b]) as only_b,
        broker.subscribe([other]) as unrelated,
    ):
        await send(broker, history, msg(1, a, b, c))
        done = msg(2, a, b, c, other)
        await send(broker, history, done)

        assert ids(await receive_until(all_three, done)) == [1, 2]
        assert ids(await receive_until(only_b, done)) == [1, 2]
        assert ids(await receive_until(unrelated, done)) == [2]


async def test_messages_arrive_in_id_order(make_broker, channel):
    history = ListHistory()
    broker = make_broker(history=history)
    a, b = channel("a"), channel("b")
    async with broker.subscribe([a, b]) as sub:
        for i in range(1, 31):
            await send(broker, history, msg(i, a if i % 2 else b))
        assert ids(await receive(sub, 30)) == list(range(1, 31))
        assert sub.get_nowait() is None


async def test_shuffled_publishes_are_delivered_in_id_order_without_gaps_or_duplicates(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history)
    a = channel("a")
    order = [7, 3, 20, 1, 12, 12, 5, 19, 2]
    async with broker.subscribe([a]) as sub:
        # All committed, broadcasts arriving out of order and some twice.
        messages = [history.add(msg(i, a)) for i in range(1, 21)]
        for i in order:
            await broker.publish(messages[i - 1])
        done = msg(21, a)
        await send(broker, history, done)
        assert ids(await receive_until(sub, done)) == list(range(1, 22))


async def test_a_gap_is_filled_from_history_before_the_next_message(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history)
    a = channel("a")
    async with broker.subscribe([a]) as sub:
        await send(broker, history, msg(1, a))
        assert ids(await receive(sub, 1)) == [1]

        # Committed, but its broadcast never arrived (a publisher that could
        # not reach the broker).
        missed = history.add(msg(2, a, body="missed"))
        await send(broker, history, msg(3, a))

        got = await receive(sub, 2)
        assert ids(got) == [2, 3]
        assert got[0].frame == missed.frame
        assert sub.get_nowait() is None


async def test_gap_messages_for_other_channels_are_not_delivered(make_broker, channel):
    history = ListHistory()
    broker = make_broker(history=history)
    mine, theirs = channel("mine"), channel("theirs")
    async with broker.subscribe([mine]) as sub:
        await send(broker, history, msg(1, mine))
        history.add(msg(2, theirs))
        history.add(msg(3, mine))
        done = msg(4, mine)
        await send(broker, history, done)
        assert ids(await receive_until(sub, done)) == [1, 3, 4]


async def test_duplicate_and_old_ids_are_dropped(make_broker, channel):
    history = ListHistory()
    broker = make_broker(history=history)
    a = channel("a")
    async with broker.subscribe([a]) as sub:
        one, two = msg(1, a), msg(2, a)
        await send(broker, history, one)
        await send(broker, history, two)
        await broker.publish(two)
        await broker.publish(one)
        await broker.publish(two)
        done = msg(3, a)
        await send(broker, history, done)
        assert ids(await receive_until(sub, done)) == [1, 2, 3]


async def test_ids_already_in_history_at_start_are_not_delivered(make_broker, channel):
    history = ListHistory()
    a = channel("a")
    old = history.add(msg(1, a))
    history.add(msg(2, a))
    broker = make_broker(history=history)
    async with broker.subscribe([a]) as sub:
        await broker.publish(old)
        done = msg(3, a)
        await send(broker, history, done)
        assert ids(await receive_until(sub, done)) == [3]


async def test_unsequenced_messages_pass_through_every_time(make_broker, channel):
    history = ListHistory()
    broker = make_broker(history=history)
    a = channel("a")
    async with broker.subscribe([a]) as sub:
        await send(broker, history, msg(5, a))
        read_one = msg(0, a, body="read 1")
        read_two = msg(0, a, body="read 2")
        await broker.publish(read_one)
        await broker.publish(read_one)
        await broker.publish(read_two)
        done = msg(6, a)
        await send(broker, history, done)
        got = await receive_until(sub, done)
    assert [m.frame for m in got] == [
        msg(5, a).frame,
        read_one.frame,
        read_one.frame,
        read_two.frame,
        done.frame,
    ]


async def test_history_only_messages_arrive_with_the_periodic_resync(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history, resync_seconds=0.2)
    a = channel("a")
    async with broker.subscribe([a]) as sub:
        # Nothing is broadcast: e.g. a worker without a broker wrote these.
        history.add(msg(1, a))
        history.add(msg(2, a))
        assert ids(await receive(sub, 2)) == [1, 2]
        assert sub.get_nowait() is None


# -- subscriptions ------------------------------------------------------------


async def test_leaving_the_block_removes_every_trace_of_the_subscription(
    make_broker, channel
):
    history = ListHistory()
    broker = make_broker(history=history)
    a, b, stay = channel("a"), channel("b"), channel("stay")
    open_before = metrics.OPEN_STREAMS.value
    async with broker.subscribe([stay]) as staying:
        async with broker.subscribe([a, b]) as leaving:
            assert broker.fanout.subscriptions == {staying, leaving}
            assert metrics.OPEN_STREAMS.value == open_before + 2
        assert broker.fanout.subscriptions == {staying}
        assert broker.fanout.channels() == {stay}
        assert metrics.OPEN_STREAMS.value == open_before + 1

        await send(broker, history, msg(1, a, b))
        done = msg(2, stay)
        await send(broker, history, done)
        await receive_until(staying, done)
        assert leaving.get_nowait() is None
    assert broker.fanout.subscriptions == set()
    assert broker.fanout.channels() == set()
    assert metrics.OPEN_STREAMS.value == open_before


async def test_subscription_is_released_when_its_task_is_cancelled(
    make_broker, channel
):
    broker = make_broker()
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with broker.subscribe([channel("a")]) as sub:
            subscribed.set()
            await sub.get()

    task = asyncio.create_task(listen())
    async with asyncio.timeout(WAIT):
        await subscribed.wait()
    assert len(broker.fanout.subscriptions) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert broker.fanout.subscriptions == set()


async def test_full_queue_cancels_only_the_slow_subscriber(make_broker, channel):
    history = ListHistory()
    broker = make_broker(history=history, queue_size=3)
    a = channel("a")
    subscribed = asyncio.Event()
    slow_sub: list[Subscription] = []

    async def never_reads() -> None:
        async with broker.subscribe([a], owner=asyncio.current_task()) as sub:
            slow_sub.append(sub)
            subscribed.set()
            await asyncio.Event().wait()

    slow = asyncio.create_task(never_reads())
    async with asyncio.timeout(WAIT):
        await subscribed.wait()
    disconnects_before = metrics.SLOW_DISCONNECTS.value

    async with broker.subscribe([a]) as fast:
        got: list[Message] = []
        for i in range(1, 11):
            await send(broker, history, msg(i, a))
            got.extend(await receive(fast, 1))
        assert ids(got) == list(range(1, 11))

        async with asyncio.timeout(WAIT):
            with pytest.raises(asyncio.CancelledError):
                await slow
        assert slow.cancelled()
        assert slow_sub[0].lagged
        assert metrics.SLOW_DISCONNECTS.value == disconnects_before + 1
        assert broker.fanout.subscriptions == {fast}

        await send(broker, history, msg(11, a))
        assert ids(await receive(fast, 1)) == [11]


@pytest.mark.parametrize("turns", [0, 3, 6, 9, 12])
async def test_aclose_stops_every_background_task(make_broker, channel, turns):
    # Closing at different points of the reader's first round (resync,
    # presence, the first read) must always stop it.
    broker = make_broker(resync_seconds=0.1)
    async with broker.subscribe([channel("a")]):
        pass
    for _ in range(turns):
        await asyncio.sleep(0)
    # Not under asyncio.timeout: an aclose that swallowed cancellation would
    # swallow the timeout's too.
    closing = asyncio.create_task(broker.aclose())
    done, _ = await asyncio.wait([closing], timeout=WAIT)
    assert closing in done, "aclose() did not return"
    closing.result()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert [t for t in others if not t.done()] == []


# -- Redis only ---------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _redis(url: str, prefix: str, history: ListHistory, **options: object) -> Broker:
    return RedisBroker(url=url, prefix=prefix, history=history, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _closing(*brokers: Broker) -> AsyncIterator[None]:
    try:
        yield
    finally:
        async with asyncio.timeout(WAIT):
            for broker in brokers:
                await broker.aclose()


async def test_redis_brokers_with_one_prefix_share_messages(redis_url, channel):
    history = ListHistory()
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    one = _redis(redis_url, prefix, history, resync_seconds=30.0)
    two = _redis(redis_url, prefix, history, resync_seconds=30.0)
    a = channel("a")
    async with (
        _closing(one, two),
        one.subscribe([a]) as on_one,
        two.subscribe([a]) as on_two,
    ):
        await send(one, history, msg(1, a))
        await send(two, history, msg(2, a))
        assert ids(await receive(on_one, 2)) == [1, 2]
        assert ids(await receive(on_two, 2)) == [1, 2]


async def _until_present(broker: Broker, want: set[str]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if await broker.present_channels() == want:
                return
            await asyncio.sleep(0.05)


async def test_presence_follows_a_process_streams_and_survives_a_lost_key(
    redis_url, redis_client
):
    """What one process writes of who is connected there, as another one
    reads it: users who come and go, and the whole set again once the key
    was lost (as after a Redis restart)."""
    history = ListHistory()
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    one = _redis(redis_url, prefix, history, resync_seconds=0.2)
    two = _redis(redis_url, prefix, history, resync_seconds=30.0)
    async with _closing(one, two):
        async with one.subscribe(["all", "user:1"]):
            async with one.subscribe(["all", "user:2"]):
                await _until_present(two, {"user:1", "user:2"})
            await _until_present(two, {"user:1"})
            assert isinstance(one, RedisBroker)
            await redis_client.delete(f"{prefix}presence:{one.instance}")
            await _until_present(two, {"user:1"})
            async with one.subscribe(["user:3"]):
                await _until_present(two, {"user:1", "user:3"})
        await _until_present(two, set())


async def test_redis_brokers_with_different_prefixes_are_isolated(redis_url, channel):
    history_one, history_two = ListHistory(), ListHistory()
    one = _redis(redis_url, "test:one:" + uuid.uuid4().hex[:8], history_one)
    two = _redis(redis_url, "test:two:" + uuid.uuid4().hex[:8], history_two)
    a = channel("a")
    async with (
        _closing(one, two),
        one.subscribe([a]) as on_one,
        two.subscribe([a]) as on_two,
    ):
        from_one = msg(1, a, body="from one")
        from_two = msg(1, a, body="from two")
        await send(one, history_one, from_one)
        await send(two, history_two, from_two)
        fence_one, fence_two = msg(2, a, body="one"), msg(2, a, body="two")
        await send(one, history_one, fence_one)
        await send(two, history_two, fence_two)

        got_one = await receive_until(on_one, fence_one)
        got_two = await receive_until(on_two, fence_two)
    assert [m.frame for m in got_one] == [from_one.frame, fence_one.frame]
    assert [m.frame for m in got_two] == [from_two.frame, fence_two.frame]


async def test_redis_reader_skips_malformed_messages(
    redis_url, redis_client, channel, caplog
):
    history = ListHistory()
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    broker = _redis(redis_url, prefix, history, resync_seconds=30.0)
    a = channel("a")
    junk = [
        b"garbage",
        b"",
        b"1|not-a-float|" + a.encode() + b"\ndata: x\n\n",
        b"-4||" + a.encode() + b"\ndata: x\n\n",
        b"x||" + a.encode() + b"\ndata: x\n\n",
        b"1||\ndata: x\n\n",
        b"1||" + a.encode() + b"\nno blank line",
        b"1||\xff\xfe\ndata: x\n\n",
    ]
    with caplog.at_level(logging.WARNING, logger="notify.broker.redis"):
        async with _closing(broker), broker.subscribe([a]) as sub:
            for raw in junk:
                await redis_client.publish(f"{prefix}events", raw)
            good = msg(1, a)
            await send(broker, history, good)
            got = await receive_until(sub, good)
    assert [m.frame for m in got] == [good.frame]
    skipped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(skipped) == len(junk)


async def test_redis_reader_resyncs_after_a_redis_restart(workdir, channel):
    server = RedisServer(workdir)
    await asyncio.to_thread(server.start)
    try:
        history = ListHistory()
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        broker = _redis(server.url, prefix, history, resync_seconds=30.0)
        a = channel("a")
        reconnects_before = metrics.BROKER_RECONNECTS.value
        async with _closing(broker), broker.subscribe([a]) as sub:
            await send(broker, history, msg(1, a))
            assert ids(await receive(sub, 1)) == [1]

            await asyncio.to_thread(server.stop)
            # Committed while Redis is down: nobody could broadcast these.
            history.add(msg(2, a))
            history.add(msg(3, a))
            await asyncio.to_thread(server.start)

            # The same subscription, never renewed, gets them through the
            # resync that follows the reconnect (the periodic one is 30 s away).
            async with asyncio.timeout(30):
                got = [await sub.get(), await sub.get()]
            assert ids(got) == [2, 3]
            assert metrics.BROKER_RECONNECTS.value > reconnects_before

            await send(broker, history, msg(4, a))
            assert ids(await receive(sub, 1)) == [4]
            assert sub.get_nowait() is None
    finally:
        await asyncio.to_thread(server.stop)


async def test_an_unreachable_redis_is_a_broker_unavailable_error(workdir, channel):
    """Callers above the broker see one backend-neutral error, never redis-py's."""
    server = RedisServer(workdir)
    await asyncio.to_thread(server.start)
    url = server.url
    await asyncio.to_thread(server.stop)
    broker = _redis(url, f"test:{uuid.uuid4().hex[:12]}:", ListHistory())
    async with _closing(broker):
        with pytest.raises(BrokerUnavailableError) as caught:
            async with asyncio.timeout(WAIT):
                await broker.publish(msg(1, channel("a")))
    assert isinstance(caught.value, NotifyError)


def test_nothing_above_the_broker_imports_redis():
    root = Path(notify.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "broker"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "redis" or n.startswith("redis.") for n in names):
                importers.add(str(path.relative_to(root)))
    assert importers == set()


async def test_a_broadcast_to_many_yields_to_the_loop_between_slices():
    """Routing hands a message to a slice of subscriptions at a time, and
    marks it dispatched before the first slice: a subscription made while it
    is routed knows it was not among the targets."""
    fanout = Fanout(None)
    subs = [Subscription(frozenset({"all"}), 8) for _ in range(2500)]
    for sub in subs:
        fanout.add(sub)
    routing = asyncio.create_task(fanout.dispatch(Message(1, ("all",), b"x")))
    await asyncio.sleep(0)  # the first slice is handed out, then routing yields
    assert fanout.last_id == 1
    reached = sum(1 for sub in subs if sub.get_nowait() is not None)
    assert 0 < reached < len(subs)
    await asyncio.wait_for(routing, 5)
    assert sum(1 for sub in subs if sub.get_nowait() is not None) == len(subs) - reached
