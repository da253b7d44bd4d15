"""Child processes of a benchmark run: redis-server and uvicorn.

Every child gets the hard ``RLIMIT_NOFILE`` as its soft limit and dies with
the benchmark (``PR_SET_PDEATHSIG``), so an interrupted run leaves nothing
behind; ``stop()`` is bounded and reaps.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_setup() -> None:
    raise_fd_limit()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def tail(self, chars: int = 3000) -> str:
        return (
            self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
        )

    def wait_until(self, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout}s:\n{self.tail()}")


async def start_redis(workdir: Path) -> tuple[Child, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    child = Child("redis-server", argv, dict(os.environ), workdir / "redis.log")
    await _started(child, lambda: _port_open(port), 10)
    return child, f"redis://127.0.0.1:{port}/0"


async def _started(child: Child, ready: object, within: float) -> None:
    # Popen from the event loop's thread: PR_SET_PDEATHSIG fires when the
    # *thread* that started the child exits, and worker threads come and go.
    child.start()
    try:
        await asyncio.to_thread(child.wait_until, ready, within)
    except BaseException:
        await asyncio.to_thread(child.stop)
        raise


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def start_uvicorn(
    name: str, app: str, env: dict[str, str], workdir: Path
) -> tuple[Child, str]:
    """One uvicorn worker serving ``app``, started as it is deployed."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--lifespan", "off"]
    # uvicorn[standard] (uvloop and httptools), as deployed
    argv += ["--loop", "uvloop", "--http", "httptools"]
    argv += ["--timeout-graceful-shutdown", "2", "--no-access-log"]
    child = Child(name, argv, env, workdir / f"{name}-{port}.log")
    url = f"http://127.0.0.1:{port}"
    await _started(child, lambda: _healthy(url), 60)
    return child, url


def pyspy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if not found.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return str(found)
