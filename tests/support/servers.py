"""Real servers for the tests: redis-server and uvicorn, on free loopback ports.

Every wait is bounded; every process is stopped (and reaped) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import forkserver

ROOT = Path(__file__).resolve().parents[2]


def server_base_env() -> dict[str, str]:
    """This process's environment without the settings a server is given
    explicitly: notify's, Redis', the database's, Django's, Prometheus'."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_", "PROMETHEUS_")
        )
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def manage(env: dict[str, str], *argv: str) -> str:
    """Run ``manage.py`` in a process of its own; its output, once it succeeded."""
    result = forkserver.run([sys.executable, "manage.py", *argv], env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def slot_counts(url: str) -> dict[str, str]:
    """The open streams per user that server processes report to Redis."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        found: dict[str, str] = {}
        for key in client.keys("notify:slots:*"):
            found |= {str(k): str(v) for k, v in client.hgetall(key).items()}
        return found
    finally:
        client.close()


def port_range() -> range:
    """The ports this test run's servers listen on: ``NOTIFY_TEST_PORTS``
    (``"24000-27999"``, both ends included), or 20000-31999.

    Below Linux's ephemeral range (32768 and up), so that no outgoing
    connection takes a chosen port before its server has bound it. Runs going
    at the same time (``.ci/run``) get a range each: a port chosen by one run
    is then never chosen by another in the moment before its server binds it,
    when the other run's health check would be answered by the wrong server.
    """
    spec = os.environ.get("NOTIFY_TEST_PORTS", "")
    low, _, high = spec.partition("-")
    if not spec:
        return range(20000, 32000)
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) < 65536):
        raise ValueError(f"NOTIFY_TEST_PORTS must be LOW-HIGH, not {spec!r}")
    return range(int(low), int(high) + 1)


# Not the module's random: pytest-randomly seeds that one alike for every test.
_ports = random.SystemRandom()
# Ports this process has handed out: a server given one may not have bound it
# yet when the next is chosen, and two servers must never get the same port.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port of :func:`port_range` that nothing is bound to now."""
    return free_ports(1)[0]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports of :func:`port_range`, none handed
    out before by this process (``scripts/stack`` puts its workers on
    consecutive ports)."""
    ports = port_range()
    for _ in range(200):
        base = _ports.randrange(ports.start, ports.stop - count + 1)
        chosen = list(range(base, base + count))
        if _handed_out.isdisjoint(chosen) and all(port_free(p) for p in chosen):
            _handed_out.update(chosen)
            return chosen
    raise RuntimeError(f"no {count} free ports in {ports}")


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout}s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def need(binary: str, package: str) -> str:
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if not found:
        raise RuntimeError(
            f"{binary} is not installed: run scripts/test (it installs it), "
            f"or `apt-get install {package}`"
        )
    return found


class Process:
    """A child process with a bounded, reaping stop()."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None

    def start(self) -> None:
        self._log_file = self.log.open("ab")
        self._log_start = self._log_file.tell()  # where this start's output begins
        # A Python server is forked from an interpreter that has imported its
        # dependencies already (tests/support/forkserver.py).
        self.proc = forkserver.popen(self.argv, self.env, ROOT, self._log_file)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def said(self, text: str) -> bool:
        """Whether this start's output (not an earlier start's) has ``text``."""
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return text.encode() in log.read()


class RedisServer(Process):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        binary = need("redis-server", "redis-server")
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        super().__init__(argv, dict(os.environ), workdir / f"redis-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        # Its own log first: whatever else answers on the port is not it.
        wait_for(
            lambda: self.said("Ready to accept connections") and _port_open(self.port),
            10,
            "redis-server",
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        super().stop(sig, timeout)
        wait_for(lambda: not _port_open(self.port), 10, "redis-server shutdown")


class UvicornServer(Process):
    """``uvicorn project.asgi:application`` as deployed, on its own port."""

    health_path = "/healthz"  # where notify's URLs are mounted, plus healthz

    def __init__(
        self, workdir: Path, env: dict[str, str], name: str = "app", grace: int = 2
    ) -> None:
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--timeout-graceful-shutdown",
            str(grace),
            "--no-access-log",
        ]
        super().__init__(argv, env, workdir / f"uvicorn-{name}-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def healthy() -> bool:
            if not self.running:
                raise RuntimeError(f"uvicorn exited:\n{self.output()[-3000:]}")
            if not self.said(f"Uvicorn running on {self.url}"):
                return False  # not bound yet: whatever answers is not this one
            with contextlib.suppress(httpx.HTTPError):
                url = self.url + self.health_path
                return httpx.get(url, timeout=1).status_code == 200
            return False

        wait_for(healthy, 30, f"uvicorn on {self.port}")
