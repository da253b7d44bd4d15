"""scripts/stack and the nginx.conf it renders: the CPU weight of the workers'
sessions, nginx's idle upstream connections against uvicorn's, and a rolling
restart under open streams."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from uvicorn.config import Config

from notify.conf import SETTINGS
from tests.support.servers import ROOT, auth, free_ports, manage

STACK = ROOT / "scripts" / "stack"


def _stack(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        # Another virtualenv's run (scripts/setup-combo): the stack would
        # still run .venv's Python and Django, as the run on .venv does.
        pytest.skip("scripts/stack runs .venv, not this interpreter's virtualenv")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    clean["NOTIFY_STACK_DIR"] = str(tmp_path / "stack")
    return subprocess.run(
        ["bash", str(STACK), *args],
        env=clean | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _sized_nice(tmp_path: Path, **env: str) -> int:
    sizing = _stack(tmp_path, "sizing", **env)
    assert sizing.returncode == 0, sizing.stderr
    found = re.search(r"stream worker's session at nice (\d+)", sizing.stdout)
    assert found, sizing.stdout
    return int(found.group(1))


@pytest.mark.parametrize(
    ("workers", "nice"),
    # The least nice at which workers × the kernel's weight for it is at most
    # 1.5 × 1024, the weight of one session at nice 0 (nginx's).
    [("1", 0), ("2", 2), ("4", 5), ("8", 8)],
)
def test_stream_workers_together_weigh_at_most_one_and_a_half_nginx(
    tmp_path: Path, workers: str, nice: int
) -> None:
    assert _sized_nice(tmp_path, NOTIFY_STACK_WORKERS=workers) == nice


def test_the_default_sizing_weighs_its_four_workers_as_one_and_a_half_nginx(
    tmp_path: Path,
) -> None:
    assert _sized_nice(tmp_path) == 5


def test_a_chosen_worker_nice_is_kept_and_a_wrong_one_refused(tmp_path: Path) -> None:
    assert _sized_nice(tmp_path, NOTIFY_STACK_WORKER_NICE="2") == 2
    for wrong in ("20", "-1", "x"):
        refused = _stack(tmp_path, "sizing", NOTIFY_STACK_WORKER_NICE=wrong)
        assert refused.returncode == 1
        assert "NOTIFY_STACK_WORKER_NICE must be a whole number from 0 to 19" in (
            refused.stderr
        )


def test_the_stack_sizes_stopping_for_the_servers_default_drain_rate(
    tmp_path: Path,
) -> None:
    """Unset, NOTIFY_DRAIN_RATE is the same number to the stack, which sizes
    uvicorn's grace period for it, as to the servers, which drain at it."""
    [default] = [s.default for s in SETTINGS if s.name == "NOTIFY_DRAIN_RATE"]
    sizing = _stack(tmp_path, "sizing")
    assert sizing.returncode == 0, sizing.stderr
    found = re.search(r"ends its streams (\d+) a second", sizing.stdout)
    assert found, sizing.stdout
    assert int(found.group(1)) == default


def _small_stack(tmp_path: Path) -> tuple[dict[str, str], int]:
    """Settings of a stack of two stream workers and one API worker, on free
    ports, with its database and static files in ``tmp_path``; and the first
    worker's port."""
    # nginx, Redis, then the two stream workers and the API worker in a row
    nginx_port, redis_port, first = free_ports(5)[:3]
    return {
        "NOTIFY_STACK_STREAMS": "100",
        "NOTIFY_STACK_WORKERS": "2",
        "NOTIFY_STACK_PORT": str(nginx_port),
        "NOTIFY_STACK_REDIS_PORT": str(redis_port),
        "NOTIFY_STACK_WORKER_PORT": str(first),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'stack.sqlite3'}",
        "STATIC_ROOT": str(tmp_path / "static"),
    }, first


def _autogroup(pid: int) -> tuple[str, int]:
    """The session's autogroup and its nice value ("/autogroup-123 nice 4").

    A session that never had one of its own (a container's first, say) is in
    the root group: the kernel shows nothing for it, and its weight is nice 0.
    """
    shown = Path(f"/proc/{pid}/autogroup").read_text().split()
    if not shown:
        return "/", 0
    name, _, nice = shown
    return name, int(nice)


def _autogroup_nice(pid: int) -> int:
    return _autogroup(pid)[1]


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroups"
)
@pytest.mark.timeout(170)  # start migrates a database and collects static files
def test_a_started_stack_gives_each_stream_worker_its_weight(tmp_path: Path) -> None:
    env, first = _small_stack(tmp_path)
    caller = _autogroup(os.getpid())
    try:
        started = _stack(tmp_path, "start", **env)
        assert started.returncode == 0, started.stdout + started.stderr
        pids = {
            port: int((tmp_path / "stack" / f"uvicorn-{port}.pid").read_text())
            for port in (first, first + 1, first + 2)
        }
        # Two stream workers at nice 2 (2 × 655 ≤ 1.5 × 1024), the API worker
        # at 0; each in a session of its own, so that the weight is its alone.
        assert [_autogroup_nice(pids[p]) for p in (first, first + 1)] == [2, 2]
        assert _autogroup_nice(pids[first + 2]) == 0
        assert len({_autogroup(pid)[0] for pid in pids.values()}) == 3
        assert _autogroup(os.getpid()) == caller  # the caller's is untouched
        # nginx relays in batches: no preempting a worker as its data comes in.
        nginx = int((tmp_path / "stack" / "nginx.pid").read_text())
        assert os.sched_getscheduler(nginx) == os.SCHED_BATCH
        assert os.sched_getscheduler(pids[first]) == os.SCHED_OTHER
    finally:
        _stack(tmp_path, "stop", **env)


def test_a_worker_that_cannot_start_stops_the_start_at_once(tmp_path: Path) -> None:
    env, first = _small_stack(tmp_path)
    # Bound but not listening: nothing answers there, and uvicorn cannot bind.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first + 1))
        try:
            started = _stack(tmp_path, "start", **env)
        finally:
            _stack(tmp_path, "stop", **env)
    assert started.returncode == 1
    assert f"uvicorn on {first + 1} exited" in started.stderr
    assert "address already in use" in started.stderr.lower()


def _upstream_block(name: str) -> str:
    conf = (ROOT / "nginx.conf").read_text()
    found = re.search(rf"upstream {name} \{{(.*?)\n    \}}", conf, re.S)
    assert found, f"no upstream {name} in nginx.conf"
    return found.group(1)


def test_nginx_lets_idle_worker_connections_go_before_uvicorn_does() -> None:
    """Otherwise nginx may send a request down a connection the worker is
    closing: a GET is retried elsewhere, a publish (POST) gets a 502."""
    block = _upstream_block("notify_app")
    assert re.search(r"^\s*keepalive \d+;", block, re.M)
    nginx_idle = re.search(r"^\s*keepalive_timeout (\d+)s;", block, re.M)
    assert nginx_idle, "notify_app keeps connections without a keepalive_timeout"
    command = STACK.read_text().split(".venv/bin/uvicorn project.asgi:application")[1]
    command = command.split(")")[0]
    given = re.search(r"--timeout-keep-alive\s+(\d+)", command)
    uvicorn_idle = (
        int(given.group(1))
        if given
        else Config("project.asgi:application").timeout_keep_alive
    )
    assert int(nginx_idle.group(1)) < uvicorn_idle


@dataclass
class _Client:
    """One browser's EventSource: reconnects after ``retry:`` with its last
    id, and notes every connection it made and every notification it got."""

    token: str
    url: str
    connections: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    notifications: list[int] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)  # statuses other than 200

    async def run(self) -> None:
        last_id: str | None = None
        retry = 3.0
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=60)) as client:
            while True:
                headers = auth(self.token) | {"Accept": "text/event-stream"}
                if last_id is not None:
                    headers["Last-Event-ID"] = last_id
                try:
                    async with client.stream(
                        "GET", self.url + "/events/", headers=headers
                    ) as response:
                        if response.status_code != 200:
                            self.refusals.append(response.status_code)
                            await asyncio.sleep(retry)
                            continue
                        self.connections += 1
                        event, data, event_id = "", "", None
                        async for line in response.aiter_lines():
                            name, _, value = line.partition(": ")
                            if name == "retry":
                                retry = int(value) / 1000
                            elif name == "id":
                                event_id = value
                            elif name == "event":
                                event = value
                            elif name == "data":
                                data = value
                            elif not line:  # dispatch, as EventSource does
                                if event_id is not None:
                                    last_id = event_id  # even with no data
                                if data and event == "ready":
                                    self.ready.set()
                                elif data and event == "notification":
                                    self.notifications.append(json.loads(data)["id"])
                                event, data, event_id = "", "", None
                except httpx.TransportError:
                    pass
                await asyncio.sleep(retry)


def _streams_per_worker(ports: list[int]) -> list[int]:
    """Established connections from nginx on each stream worker's port."""
    counts = []
    for port in ports:
        shown = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        counts.append(len(shown.splitlines()))
    return counts


@pytest.mark.timeout(240)  # start migrates; each stream worker drains for 10 s
async def test_a_rolling_restart_moves_each_stream_once_and_leaves_them_balanced(
    tmp_path: Path,
) -> None:
    """Each worker's replacement takes its port while the old one ends its
    streams, so they come back to it: nobody is moved twice, no worker is
    left empty, nothing is missed or repeated."""
    env, first = _small_stack(tmp_path)
    # 20 streams a worker, ended 2 a second: a drain of 10 s, of which the
    # replacement's start (1-2 s) lets a few browsers go to the other port.
    env |= {"NOTIFY_DRAIN_RATE": "2", "NOTIFY_MAX_STREAMS_PER_USER": "100"}
    stream_ports = [first, first + 1]
    started = await asyncio.to_thread(_stack, tmp_path, "start", **env)
    assert started.returncode == 0, started.stdout + started.stderr
    clients: list[_Client] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        manage_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")},
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": env["DATABASE_URL"],
            "SECRET_KEY": (tmp_path / "stack" / "secret_key").read_text().strip(),
            "DJANGO_SUPERUSER_PASSWORD": "correct-horse-battery",
        }

        await asyncio.to_thread(
            manage, manage_env, "createsuperuser", "--noinput",
            "--username", "ops", "--email", "ops@example.com",
        )  # fmt: skip
        token = await asyncio.to_thread(
            manage, manage_env, "notify_token", "create", "ops", "--publish"
        )
        token = token.strip()
        url = f"http://127.0.0.1:{env['NOTIFY_STACK_PORT']}"
        clients = [_Client(token, url) for _ in range(40)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        async with asyncio.timeout(30):
            await asyncio.gather(*(c.ready.wait() for c in clients))
        assert _streams_per_worker(stream_ports) == [20, 20]

        async def publish(api: httpx.AsyncClient, title: str) -> int:
            sent = await api.post(
                "/api/notifications",
                headers=auth(token),
                json={"audience": "all", "title": title},
            )
            assert sent.status_code == 201, sent.text
            return int(sent.json()["id"])

        async with httpx.AsyncClient(base_url=url, timeout=10) as api:
            restart = asyncio.create_task(
                asyncio.to_thread(
                    _stack,
                    tmp_path,
                    "rolling-restart",
                    **env,
                    NOTIFY_STACK_RESTART_PAUSE="0",
                )
            )
            ids: list[int] = []
            while not restart.done():  # published while the streams move
                ids.append(await publish(api, f"during {len(ids)}"))
                await asyncio.wait([restart], timeout=1.5)
            restarted = await restart
            ids.append(await publish(api, "after"))
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "stopped the replaced uvicorn" in restarted.stdout
        assert len(ids) >= 5

        for _ in range(200):
            if all(len(c.notifications) >= len(ids) for c in clients):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a repeat would have come by now
        assert [c.notifications for c in clients] == [ids] * 40
        assert not any(c.refusals for c in clients)
        # Every client was moved by the restart of its own worker, and came
        # back to that port's new worker, but for the few its worker ended
        # before the new one listened: those moved twice. (Replaced only once
        # the old worker had exited: 60 moves, and 38 and 2 streams.)
        moves = sum(c.connections - 1 for c in clients)
        balance = _streams_per_worker(stream_ports)
        assert 40 <= moves <= 46, [c.connections for c in clients]
        assert min(balance) >= 14, balance
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(_stack, tmp_path, "stop", **env)
