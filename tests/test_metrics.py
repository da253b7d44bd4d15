"""GET /metrics: names and types, counters that move, and the sum over the
server processes that share a ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import prometheus_client
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from notify import metrics
from tests.support.metrics import samples, scrape
from tests.support.servers import ROOT, auth
from tests.support.sse import Event, events

WAIT = 10.0
METRICS_TOKEN = "metrics-tests-token"
PUBLISHED = "notify_notifications_published_total"
DELIVERED = "notify_events_delivered_total"

COUNTERS = (
    "notify_notifications_published",
    "notify_events_delivered",
    "notify_slow_client_disconnects",
    "notify_replayed_events",
    "notify_recovered_events",
    "notify_revoked_streams",
    "notify_refused_streams",
    "notify_broker_reconnects",
)
GAUGES = (
    "notify_open_streams",
    "notify_processes",
    "notify_process_resident_memory_bytes",
    "notify_process_open_fds",
    "notify_process_cpu_seconds_total",
)


def test_every_metric_keeps_its_name_type_and_help():
    families = list(text_string_to_metric_families(metrics.render().decode()))
    types = {family.name: family.type for family in families}
    assert types == dict.fromkeys(COUNTERS, "counter") | dict.fromkeys(GAUGES, "gauge")
    names = [sample.name for family in families for sample in family.samples]
    # One sample each: counters end in _total, and no _created series.
    assert sorted(names) == sorted(
        [f"{name}_total" for name in COUNTERS] + list(GAUGES)
    )
    assert all(family.documentation for family in families)


def test_the_host_projects_metrics_and_ours_stay_apart():
    host = prometheus_client.Counter("host_requests", "A host project's own metric.")
    try:
        assert "host_requests_total" not in samples(metrics.render().decode())
        theirs = samples(prometheus_client.generate_latest().decode())
        assert "host_requests_total" in theirs
        assert not [name for name in theirs if name.startswith("notify_")]
    finally:
        prometheus_client.REGISTRY.unregister(host)


def test_process_metrics_describe_this_process():
    values = samples(metrics.render().decode())
    assert values["notify_processes"] == 1
    assert values["notify_process_resident_memory_bytes"] > 1_000_000
    assert values["notify_process_open_fds"] >= 3  # stdin, stdout, stderr
    assert values["notify_process_cpu_seconds_total"] > 0


async def _until(
    client: httpx.AsyncClient, url: str, done: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    """Scrape until done() holds, for WAIT seconds at most."""
    values: dict[str, float] = {}
    try:
        async with asyncio.timeout(WAIT):
            while True:
                values = await scrape(client, url, METRICS_TOKEN)
                if done(values):
                    return values
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT}s: {values}") from None


@contextlib.asynccontextmanager
async def _stream(
    client: httpx.AsyncClient, url: str, token: str
) -> AsyncIterator[AsyncIterator[Event]]:
    """An open stream, past its ``ready`` event."""
    async with client.stream("GET", url + "/events/", headers=auth(token)) as response:
        assert response.status_code == 200
        reader = events(response)
        try:
            async with asyncio.timeout(WAIT):
                assert (await anext(reader)).event == "ready"
            yield reader
        finally:
            await reader.aclose()  # type: ignore[attr-defined]


async def _notification(reader: AsyncIterator[Event]) -> Event:
    async with asyncio.timeout(WAIT):
        async for event in reader:
            if event.event == "notification":
                return event
    raise AssertionError("the stream ended")


async def _publish(client: httpx.AsyncClient, url: str, token: str) -> None:
    response = await client.post(
        url + "/api/notifications",
        json={"audience": "all", "title": "Counted"},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text


async def test_counters_move_when_a_notification_is_published_and_delivered(
    start_server, tokens
):
    server = start_server(NOTIFY_METRICS_TOKEN=METRICS_TOKEN)
    async with httpx.AsyncClient(timeout=WAIT) as client:
        before = await scrape(client, server.url, METRICS_TOKEN)
        assert before["notify_open_streams"] == 0
        async with _stream(client, server.url, tokens["alice"]) as reader:
            now = await scrape(client, server.url, METRICS_TOKEN)
            assert now["notify_open_streams"] == 1
            await _publish(client, server.url, tokens["admin"])
            await _notification(reader)
            after = await _until(
                client,
                server.url,
                lambda v: v[DELIVERED] > before[DELIVERED],
            )
        assert after[PUBLISHED] == before[PUBLISHED] + 1
        assert after[DELIVERED] == before[DELIVERED] + 1
        await _until(client, server.url, lambda v: v["notify_open_streams"] == 0)


async def test_a_tally_reaches_its_counter_once_per_turn_of_the_loop():
    counter = metrics.Counter("tally_test_total", "A tally's counter.")
    tally = metrics.Tally(counter)
    for _ in range(1000):
        tally.inc(2)
    assert counter.value == 0  # counted, not written yet
    await asyncio.sleep(0)
    assert counter.value == 2000
    tally.inc()
    tally.flush()  # as render() does before it reads
    assert counter.value == 2001
    await asyncio.sleep(0)
    assert counter.value == 2001  # nothing counted twice


def test_a_tally_counts_what_a_loop_counted_as_it_ended_and_outside_any_loop():
    counter = metrics.Counter("tally_ending_total", "A tally's counter.")
    tally = metrics.Tally(counter)

    async def count() -> None:
        tally.inc(5)  # the last thing this loop runs

    asyncio.run(count())
    assert counter.value == 5
    asyncio.run(count())  # another loop
    assert counter.value == 10
    tally.inc(1)  # outside any loop: written at once
    assert counter.value == 11


async def test_render_includes_what_live_streams_counted_this_turn():
    before = metrics.DELIVERED.value
    metrics.DELIVERED_LIVE.inc(3)  # on a loop: held until the loop's next turn
    assert metrics.DELIVERED.value == before
    assert samples(metrics.render().decode())[DELIVERED] == before + 3


def _resident_bytes(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[21]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(120)
async def test_servers_sharing_a_multiprocess_directory_report_their_sum(
    start_server, redis_url, tokens, tmp_path
):
    shared = {
        "REDIS_URL": redis_url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "NOTIFY_METRICS_TOKEN": METRICS_TOKEN,
    }
    one = start_server("one", **shared)
    two = start_server("two", **shared)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=WAIT))
        alice = await stack.enter_async_context(
            _stream(client, one.url, tokens["alice"])
        )
        bob = await stack.enter_async_context(_stream(client, two.url, tokens["bob"]))
        await _publish(client, one.url, tokens["admin"])
        await _notification(alice)
        await _notification(bob)

        for server in (one, two):
            values = await _until(client, server.url, lambda v: v[DELIVERED] == 2)
            assert values["notify_open_streams"] == 2
            assert values["notify_processes"] == 2
            assert values[PUBLISHED] == 1
            assert values["notify_process_resident_memory_bytes"] > max(
                _resident_bytes(one.proc.pid), _resident_bytes(two.proc.pid)
            )

        # A process that exits leaves the gauges; its counts stay.
        await asyncio.to_thread(two.stop)
        values = await _until(client, one.url, lambda v: v["notify_processes"] == 1)
        assert values["notify_open_streams"] == 1
        assert values["notify_events_delivered_total"] == 2


def test_a_process_that_exits_leaves_the_gauges_and_keeps_its_counts(tmp_path):
    script = (
        "import django; django.setup()\n"
        "from notify import metrics\n"
        "metrics.OPEN_STREAMS.inc(); metrics.PUBLISHED.inc()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    env |= {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, timeout=60, cwd=ROOT
    )
    assert [path.name.split("_")[0] for path in tmp_path.iterdir()] == ["counter"]
    families = {f.name: f for f in MultiProcessCollector(None, str(tmp_path)).collect()}
    assert families["notify_notifications_published"].samples[0].value == 1
